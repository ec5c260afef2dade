/* The failover lock and fencing epoch in Redis (see failover_lock.h).
 * Owns the keys and the scripts; when to take the lock and what to do
 * without it is the monitor's (promote() in monitor.c).
 *
 * Each step that must not be split is one Lua script, which Redis runs
 * atomically: "take the lock if free and raise the epoch", and "the lock
 * is still ours at the current epoch: go (and extend it)".  What Redis
 * cannot do is fence PostgreSQL: between the check and pg_promote() on the
 * replica, a holder stalled past the TTL (a paused VM, SIGSTOP) may still
 * promote after another instance took the lock.  The TTL is kept far above
 * the time a promotion takes to make that a matter of a stall of tens of
 * seconds at exactly that moment; docs/operations.md says so. */
#include "failover_lock.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "redis.h"

/* KEYS: epoch, lock.  ARGV: instance id, ttl ms, highest epoch seen here.
 * Returns {taken 1|0, the lock's value, its ttl ms, the epoch}. */
static const char take_script[] =
    "local cur = redis.call('GET', KEYS[2])\n"
    "if cur and string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. ':' then\n"
    "  return {0, cur, tostring(redis.call('PTTL', KEYS[2])),\n"
    "          redis.call('GET', KEYS[1]) or '0'}\n"
    "end\n"
    "local e = redis.call('INCR', KEYS[1])\n"
    "if e <= tonumber(ARGV[3]) then\n"
    "  e = tonumber(ARGV[3]) + 1\n"
    "  redis.call('SET', KEYS[1], tostring(e))\n"
    "end\n"
    "local v = ARGV[1] .. ':' .. e\n"
    "redis.call('SET', KEYS[2], v, 'PX', ARGV[2])\n"
    "return {1, v, ARGV[2], tostring(e)}\n";

/* KEYS: epoch, lock.  ARGV: the lock's value, its epoch, ttl ms. */
static const char check_script[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end\n"
    "local e = redis.call('GET', KEYS[1])\n"
    "if e ~= ARGV[2] then return 'superseded:' .. (e or '0') end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[3])\n"
    "return 'ok'\n";

/* The highest epoch this instance has seen (taken, or read from Redis). */
static _Atomic uint64_t highest_epoch;

static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static char instance_id[256];

static void make_id(void)
{
    char host[200];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "unknown");
    host[sizeof(host) - 1] = '\0';
    struct timeval tv;
    gettimeofday(&tv, NULL);
    snprintf(instance_id, sizeof(instance_id), "%s:%ld:%lld", host, (long)getpid(),
             (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
}

const char *failover_lock_instance_id(void)
{
    pthread_once(&id_once, make_id);
    return instance_id;
}

static void seen(uint64_t e)
{
    uint64_t cur = atomic_load(&highest_epoch);
    while (e > cur && !atomic_compare_exchange_weak(&highest_epoch, &cur, e)) {
    }
}

static uint64_t parse_u64(const char *s)
{
    return s ? strtoull(s, NULL, 10) : 0;
}

static void keys(const char *sysid, char *epoch, char *lockk, size_t len)
{
    snprintf(epoch, len, "pgscale:%s:epoch", sysid);
    snprintf(lockk, len, "pgscale:%s:failover", sysid);
}

static redisReply *eval(redisContext *c, const char *script, const char *k1, const char *k2,
                        const char *a1, const char *a2, const char *a3)
{
    const char *argv[] = {"EVAL", script, "2", k1, k2, a1, a2, a3};
    return redisCommandArgv(c, (int)PGS_ARRAY_LEN(argv), argv, NULL);
}

static const char unreachable[] =
    "auto with REDIS_URL needs Redis to take the failover lock; Redis is "
    "unreachable: not promoting";

int failover_lock_take(const char *redis_url, const char *sysid, uint32_t ttl_ms,
                       uint32_t timeout_ms, failover_grant *g, char *msg, size_t msglen)
{
    memset(g, 0, sizeof(*g));
    snprintf(g->sysid, sizeof(g->sysid), "%s", sysid);
    pgs_redis_url u;
    char err[400];
    if (redis_url_parse(redis_url, &u, err, sizeof(err)) != 0) {
        /* the config reader parsed it already: cannot happen */
        snprintf(msg, msglen, "%s (REDIS_URL: %s)", unreachable, err);
        return FAILOVER_LOCK_UNREACHABLE;
    }
    redisContext *c = NULL;
    int rc = redis_connect(&u, timeout_ms, &c, err, sizeof(err));
    redis_url_free(&u);
    if (rc != 0) {
        snprintf(msg, msglen, "%s (%s)", unreachable, err);
        return FAILOVER_LOCK_UNREACHABLE;
    }
    char ek[64], lk[64], ttl[16], hi[24];
    keys(sysid, ek, lk, sizeof(ek));
    snprintf(ttl, sizeof(ttl), "%" PRIu32, ttl_ms);
    snprintf(hi, sizeof(hi), "%" PRIu64, atomic_load(&highest_epoch));
    redisReply *r = eval(c, take_script, ek, lk, failover_lock_instance_id(), ttl, hi);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        snprintf(msg, msglen, "%s (%s)", unreachable,
                 !r ? (c->errstr[0] ? c->errstr : "no reply")
                    : r->type == REDIS_REPLY_ERROR ? r->str : "an unexpected reply to EVAL");
        if (r) freeReplyObject(r);
        redisFree(c);
        return FAILOVER_LOCK_UNREACHABLE;
    }
    bool taken = r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 1;
    const char *value = r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "?";
    uint64_t epoch = parse_u64(r->element[3]->type == REDIS_REPLY_STRING ? r->element[3]->str
                                                                        : NULL);
    seen(epoch);
    if (!taken) {
        /* no TTL in the text: said once while the same holder has it */
        snprintf(msg, msglen, "the failover lock %s is held by another pgscale instance "
                 "(%s): not promoting; following the node it promotes",
                 lk, value);
        freeReplyObject(r);
        redisFree(c);
        return FAILOVER_LOCK_HELD;
    }
    g->conn = c;
    g->epoch = epoch;
    snprintf(g->value, sizeof(g->value), "%s", value);
    freeReplyObject(r);
    return FAILOVER_LOCK_TAKEN;
}

int failover_lock_check(failover_grant *g, uint32_t ttl_ms, char *msg, size_t msglen)
{
    if (g->epoch < atomic_load(&highest_epoch)) {
        snprintf(msg, msglen, "the failover lock's epoch %" PRIu64 " is older than epoch %"
                 PRIu64 " seen since: not promoting", g->epoch, atomic_load(&highest_epoch));
        return -ESTALE;
    }
    char ek[64], lk[64], ttl[16], e[24];
    keys(g->sysid, ek, lk, sizeof(ek));
    snprintf(ttl, sizeof(ttl), "%" PRIu32, ttl_ms);
    snprintf(e, sizeof(e), "%" PRIu64, g->epoch);
    redisReply *r = eval(g->conn, check_script, ek, lk, g->value, e, ttl);
    int rc = -ESTALE;
    if (!r || r->type != REDIS_REPLY_STRING) {
        snprintf(msg, msglen, "%s (checking the lock before pg_promote(): %s)", unreachable,
                 !r ? (g->conn->errstr[0] ? g->conn->errstr : "no reply")
                    : r->type == REDIS_REPLY_ERROR ? r->str : "an unexpected reply to EVAL");
        rc = -EIO;
    } else if (strcmp(r->str, "ok") == 0) {
        rc = 0;
    } else if (strcmp(r->str, "lost") == 0) {
        snprintf(msg, msglen, "the failover lock %s (epoch %" PRIu64 ") expired or was taken "
                 "by another instance before pg_promote(): not promoting", lk, g->epoch);
    } else {
        uint64_t now = parse_u64(strchr(r->str, ':') ? strchr(r->str, ':') + 1 : NULL);
        seen(now);
        snprintf(msg, msglen, "the failover epoch is %" PRIu64 " now, not this lock's %" PRIu64
                 ": not promoting", now, g->epoch);
    }
    if (r) freeReplyObject(r);
    return rc;
}

void failover_lock_announce(failover_grant *g, const char *primary)
{
    char key[64], val[320];
    snprintf(key, sizeof(key), "pgscale:%s:primary", g->sysid);
    snprintf(val, sizeof(val), "%s:%" PRIu64, primary, g->epoch);
    redisReply *r = redisCommand(g->conn, "SET %s %s", key, val);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (r) freeReplyObject(r);
    if (ok) {
        snprintf(key, sizeof(key), "pgscale:%s:failover", g->sysid);
        r = redisCommand(g->conn, "PUBLISH %s %s", key, val);
        ok = r && r->type != REDIS_REPLY_ERROR;
        if (r) freeReplyObject(r);
    }
    if (!ok)
        log_warn("failover: could not record the new primary in Redis (pgscale:%s:primary): "
                 "%s; the promotion itself is done", g->sysid,
                 g->conn->errstr[0] ? g->conn->errstr : "Redis refused it");
}

void failover_lock_done(failover_grant *g)
{
    if (g->conn) redisFree(g->conn);
    g->conn = NULL;
}
