/* The scripted PostgreSQL server (fakepg.h). */
#include "fakepg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

size_t fakepg_msg(uint8_t *buf, size_t cap, char type, const void *body, size_t len)
{
    if (cap < len + 5) return 0;
    buf[0] = (uint8_t)type;
    put32(buf + 1, (uint32_t)(len + 4));
    if (len) memcpy(buf + 5, body, len);
    return len + 5;
}

size_t fakepg_startup(uint8_t *buf, size_t cap, const char *user, const char *db)
{
    size_t ul = strlen(user), dl = strlen(db);
    size_t len = 4 + 4 + 5 + ul + 1 + 9 + dl + 1 + 1;
    if (cap < len) return 0;
    put32(buf, (uint32_t)len);
    put32(buf + 4, 3u << 16);
    size_t o = 8;
    memcpy(buf + o, "user", 5), o += 5;
    memcpy(buf + o, user, ul + 1), o += ul + 1;
    memcpy(buf + o, "database", 9), o += 9;
    memcpy(buf + o, db, dl + 1), o += dl + 1;
    buf[o++] = 0;
    return o;
}

void fakepg_send(fakepg *pg, char type, const void *body, size_t len)
{
    uint8_t hdr[5];
    hdr[0] = (uint8_t)type;
    put32(hdr + 1, (uint32_t)(len + 4));
    fakenet_send(pg->c, hdr, 5);
    if (len) fakenet_send(pg->c, body, len);
}

void fakepg_ready(fakepg *pg, char status)
{
    fakepg_send(pg, 'Z', &status, 1);
}

static void param(fakepg *pg, const char *name, const char *value)
{
    uint8_t b[128];
    size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
    memcpy(b, name, nl);
    memcpy(b + nl, value, vl);
    fakepg_send(pg, 'S', b, nl + vl);
}

static void answer_login(fakepg *pg)
{
    pg->answered = true;
    if (pg->login_mode == FAKEPG_LOGIN_SILENT) return;
    if (pg->login_mode == FAKEPG_LOGIN_ERROR) {
        static const char e[] = "SFATAL\0C28000\0Mrole does not exist\0";
        fakepg_send(pg, 'E', e, sizeof(e));
        fakenet_peer_close(pg->c);
        return;
    }
    uint8_t ok[4] = {0, 0, 0, 0};
    fakepg_send(pg, 'R', ok, 4);
    param(pg, "server_version", "15.0");
    param(pg, "client_encoding", "UTF8");
    param(pg, "DateStyle", "ISO, MDY");
    param(pg, "TimeZone", "UTC");
    uint8_t key[8];
    put32(key, 4242u + (uint32_t)pg->c->id);
    put32(key + 4, 0x5eed);
    fakepg_send(pg, 'K', key, 8);
    fakepg_ready(pg, 'I');
}

/* Feeds bytes to a framer; calls done(pg, framer) for each whole message. */
static void feed(fakepg *pg, fakepg_framer *f, const uint8_t *p, size_t n,
                 void (*done)(fakepg *pg, fakepg_framer *f))
{
    while (n > 0 && !f->bad) {
        if (f->remaining == 0 && f->have < (f->untyped ? 4 : 5)) {
            int want = f->untyped ? 4 : 5;
            while (n > 0 && f->have < want) {
                f->hdr[f->have++] = *p++;
                n--;
            }
            if (f->have < want) return;
            uint32_t len = get32(f->untyped ? f->hdr : f->hdr + 1);
            f->type = f->untyped ? 0 : f->hdr[0];
            if (len < 4) {
                f->bad = true;
                return;
            }
            f->remaining = len - 4;
            f->body_len = 0;
            if (f->remaining == 0) {
                f->have = 0;
                done(pg, f);
                continue;
            }
        }
        uint32_t k = f->remaining < n ? f->remaining : (uint32_t)n;
        uint32_t keep = PGS_MIN(k, (uint32_t)sizeof(f->body) - f->body_len);
        memcpy(f->body + f->body_len, p, keep);
        f->body_len += keep;
        f->remaining -= k;
        p += k;
        n -= k;
        if (f->remaining == 0) {
            f->have = 0;
            done(pg, f);
        }
    }
}

static void frontend_done(fakepg *pg, fakepg_framer *f)
{
    if (f->untyped) {
        f->untyped = false;
        if (!pg->answered) answer_login(pg);
        return;
    }
    /* PostgreSQL answers nothing to these and changes no state when it is
     * not copying (CopyData, CopyDone and CopyFail are ignored outside
     * COPY by the protocol's rules): the server is as idle after them. */
    if (f->type != 'H' && f->type != 'd' && f->type != 'c' && f->type != 'f')
        pg->wrote_after_ready = true;
    switch (f->type) {
    case 'Q':
        pg->owed++;
        pg->unsynced = false;
        pg->n_queries++;
        snprintf(pg->last_query, sizeof(pg->last_query), "%.*s", (int)f->body_len,
                 (const char *)f->body);
        break;
    case 'F':
        pg->owed++;
        pg->unsynced = false;
        break;
    case 'S':
        pg->owed++;
        pg->n_syncs++;
        pg->unsynced = false;
        break;
    case 'P':
    case 'B':
    case 'E':
    case 'D':
    case 'C':
        pg->unsynced = true;
        break;
    case 'X':
        pg->n_terminate++;
        break;
    default:
        break;
    }
}

static void backend_done(fakepg *pg, fakepg_framer *f)
{
    /* Notices, notifications and parameter changes may come at any time
     * and say nothing about where the conversation is. */
    if (f->type == 'N' || f->type == 'A' || f->type == 'S') return;
    pg->last_type = (char)f->type;
    if (f->type != 'Z') return;
    pg->last_status = f->body_len ? (char)f->body[0] : '?';
    pg->submitted_at_ready = pg->c->submitted;
    pg->wrote_after_ready = false;
    if (!pg->logged_in) {
        pg->logged_in = true;
        return;
    }
    if (pg->owed > 0) pg->owed--;
}

static void on_submit(fn_conn *c, const uint8_t *p, size_t n)
{
    fakepg *pg = c->user;
    feed(pg, &pg->fe, p, n, frontend_done);
}

static void on_deliver(fn_conn *c, const uint8_t *p, size_t n)
{
    fakepg *pg = c->user;
    feed(pg, &pg->be, p, n, backend_done);
}

fakepg *fakepg_attach(fn_conn *c, int login_mode)
{
    fakepg *pg = pgs_xcalloc(1, sizeof(*pg));
    pg->c = c;
    pg->login_mode = login_mode;
    pg->fe.untyped = true;
    c->role = FN_SERVER;
    c->user = pg;
    c->on_submit = on_submit;
    c->on_deliver = on_deliver;
    return pg;
}

void fakepg_free(fn_conn *c)
{
    if (c->role != FN_SERVER || !c->user) return;
    free(c->user);
    c->user = NULL;
}

bool fakepg_idle(const fakepg *pg)
{
    return pg->logged_in && !pg->fe.bad && !pg->be.bad && pg->fe.have == 0 &&
           pg->fe.remaining == 0 && pg->be.have == 0 && pg->be.remaining == 0 &&
           pg->last_type == 'Z' && pg->last_status == 'I' && pg->owed == 0 && !pg->unsynced &&
           !pg->wrote_after_ready;
}
