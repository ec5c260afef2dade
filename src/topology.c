/* The node list (see topology.h). */
#include "topology.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

static pgs_node nodes[PGS_MAX_NODES];
static int n_nodes;
static _Atomic int primary_index;

static void node_init(pgs_node *n, int index, const char *name, const pgs_url *url, int role)
{
    memset(n, 0, sizeof(*n));
    n->index = index;
    snprintf(n->name, sizeof(n->name), "%.15s", name);
    n->url = url;
    n->weight = 1;
    atomic_store(&n->role, role);
    atomic_store(&n->state, PGS_NODE_UP);
    pthread_mutex_init(&n->err_lock, NULL);
}

int topology_init(const pgs_config *cfg, char *err, size_t errlen)
{
    topology_free();
    if (cfg->n_replicas + 1 > PGS_MAX_NODES) {
        snprintf(err, errlen, "READ_REPLICA_URLS: %d replicas; pgscale supports at most %d",
                 cfg->n_replicas, PGS_MAX_NODES - 1);
        return -1;
    }
    char why[400];
    node_init(&nodes[0], 0, "primary", &cfg->primary, PGS_ROLE_PRIMARY);
    if (endpoint_resolve(&cfg->primary, &nodes[0].ep, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "DATABASE_URL: %s", why);
        return -1;
    }
    nodes[0].resolved = true;
    n_nodes = 1;
    for (int i = 0; i < cfg->n_replicas; i++) {
        pgs_node *n = &nodes[n_nodes];
        char name[24];
        snprintf(name, sizeof(name), "replica%d", (i + 1) % 100);
        node_init(n, n_nodes, name, &cfg->replicas[i], PGS_ROLE_REPLICA);
        if (cfg->replica_weights) n->weight = cfg->replica_weights[i];
        if (endpoint_resolve(&cfg->replicas[i], &n->ep, why, sizeof(why)) < 0) {
            /* a replica that cannot be found yet is down, not fatal */
            log_warn("READ_REPLICA_URLS: %s: %s; it gets no work until it resolves", name, why);
            topology_set_error(n, why);
            atomic_store(&n->state, PGS_NODE_DOWN);
        } else {
            n->resolved = true;
        }
        n_nodes++;
    }
    atomic_store(&primary_index, 0);
    return 0;
}

void topology_free(void)
{
    for (int i = 0; i < n_nodes; i++) pthread_mutex_destroy(&nodes[i].err_lock);
    n_nodes = 0;
}

int topology_count(void)
{
    return n_nodes;
}

pgs_node *topology_node(int i)
{
    return i >= 0 && i < n_nodes ? &nodes[i] : NULL;
}

pgs_node *topology_primary(void)
{
    return &nodes[atomic_load_explicit(&primary_index, memory_order_acquire)];
}

void topology_set_primary(int index)
{
    if (index < 0 || index >= n_nodes) return;
    atomic_store_explicit(&primary_index, index, memory_order_release);
}

int topology_parse_lsn(const char *s, uint64_t *out)
{
    uint64_t part[2] = {0, 0};
    const char *p = s;
    for (int k = 0; k < 2; k++) {
        int nd = 0;
        for (; *p; p++, nd++) {
            int d;
            if (*p >= '0' && *p <= '9') d = *p - '0';
            else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
            else if (*p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
            else break;
            if (nd == 8) return -1; /* each half is 32 bits */
            part[k] = part[k] << 4 | (uint64_t)d;
        }
        if (nd == 0) return -1;
        if (k == 0 && *p++ != '/') return -1;
    }
    if (*p) return -1;
    *out = part[0] << 32 | part[1];
    return 0;
}

void topology_format_lsn(uint64_t lsn, char *buf, size_t n)
{
    snprintf(buf, n, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
}

void topology_set_error(pgs_node *n, const char *msg)
{
    pthread_mutex_lock(&n->err_lock);
    snprintf(n->last_error, sizeof(n->last_error), "%s", msg);
    pthread_mutex_unlock(&n->err_lock);
}

void topology_get_error(pgs_node *n, char *buf, size_t len)
{
    pthread_mutex_lock(&n->err_lock);
    snprintf(buf, len, "%s", n->last_error);
    pthread_mutex_unlock(&n->err_lock);
}

const char *topology_role_name(int role)
{
    switch (role) {
    case PGS_ROLE_PRIMARY: return "primary";
    case PGS_ROLE_REPLICA: return "replica";
    default: return "unknown";
    }
}

const char *topology_state_name(int state)
{
    switch (state) {
    case PGS_NODE_UP: return "up";
    case PGS_NODE_DOWN: return "down";
    case PGS_NODE_FENCED: return "fenced";
    default: return "?";
    }
}

const char *topology_sync_name(int sync_state)
{
    switch (sync_state) {
    case PGS_SYNC_ASYNC: return "async";
    case PGS_SYNC_POTENTIAL: return "potential";
    case PGS_SYNC_SYNC: return "sync";
    case PGS_SYNC_QUORUM: return "quorum";
    case PGS_SYNC_UNKNOWN: return "unknown";
    default: return NULL;
    }
}
