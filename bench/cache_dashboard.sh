#!/usr/bin/env bash
# cache_dashboard.sh — what the result cache does for a dashboard workload
# (what `make bench-cache` runs).
#
# Starts a throw-away PostgreSQL 15 (scripts/pgcluster.sh), loads an
# `orders` table of BENCH_ROWS rows (300,000) and runs pgbench with
# BENCH_CLIENTS (16) clients against each target, one after another:
#
#   direct          PostgreSQL itself
#   pgbouncer       PgBouncer in transaction mode (pooling only: no cache)
#   pgscale         pgscale, cache off
#   pgscale-cache   pgscale with PGSCALE_CACHE=on (the in-process tier)
#   pgscale-redis   as pgscale-cache, plus REDIS_URL (a redis-server started
#                   here): the shared tier, every hit checked against Redis
#
# Four workloads, simple protocol (-M simple; BENCH_MODE=extended for the
# extended protocol):
#   read        the "dashboard": revenue and order counts per region since a
#               day drawn from 1..30 (\set), a GROUP BY over the orders of
#               those days (30 distinct statements, most scan well over
#               100,000 rows)
#   latency     the same with one client: the time of one request when
#               nothing queues (for the cached targets: a hit's latency)
#   floor       (direct only) `SELECT 1` with one client: the round trip of
#               the smallest request on this machine, which no proxy can beat
#               (on an idle virtual machine a wake-up of an idle CPU alone
#               can take tens of µs)
#   mix-other   read with 10 % writes to another table (a user's last_seen,
#               as an application records a visit): the dashboard's entries
#               live on
#   mix-orders  read with 10 % writes to `orders` itself (one order's
#               amount): each write changes every dashboard answer, so every
#               entry dies and is filled again by the next reader. No cache
#               that never serves a stale answer can do much here; the run
#               shows what the cache costs when it cannot help
#
# Printed per target and workload: tps and the ratio to direct, latency
# p50/p99 from pgbench's per-transaction log (-l: every transaction, the
# writes too), and for pgscale the cache's hit ratio over the run (SHOW
# CACHE). The issue's targets are printed beside the figures: >= 10x direct
# for `read`, >= 3x for `mix`, hit p50 <= 50 µs in-process, <= 300 µs with
# Redis (hit latency: the p50 of the cached runs, which are nearly all hits;
# it includes pgbench's own time per transaction).
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]  length of each run      BENCH_CLIENTS [16]
#   BENCH_ROWS [300000] rows in orders          BENCH_JOBS [2] pgbench -j
#   BENCH_MODE [simple] pgbench -M              BENCH_KEEP [0] keep the temp dir
#   BENCH_TARGETS ["direct pgbouncer pgscale pgscale-cache pgscale-redis"]
#   PGSCALE_BIN [build/pgscale]
#
# Needs what scripts/install-deps.sh installs (postgresql-15, pgbouncer,
# redis-server). Installs nothing itself. Loopback only; everything it
# started is stopped on exit, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGCLUSTER=$ROOT/scripts/pgcluster.sh

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-16}
BENCH_ROWS=${BENCH_ROWS:-300000}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_MODE=${BENCH_MODE:-simple}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_TARGETS=${BENCH_TARGETS:-"direct pgbouncer pgscale pgscale-cache pgscale-redis"}
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}

APP_USER=app APP_PASSWORD=secret APP_DB=app
POOL_SIZE=20
FD_LIMIT=4096

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ $BENCH_CLIENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be a positive integer"
[[ $BENCH_ROWS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROWS must be a positive integer"
case $BENCH_MODE in simple|extended|prepared) ;; *) die "BENCH_MODE: simple, extended or prepared" ;; esac
for t in $BENCH_TARGETS; do
    case $t in direct|pgbouncer|pgscale|pgscale-cache|pgscale-redis) ;; *) die "unknown target '$t'" ;; esac
done
command -v pgbench >/dev/null || die "pgbench not found; run scripts/install-deps.sh"
[ -x "$PGSCALE_BIN" ] || die "$PGSCALE_BIN not found; run make"
raise_fd_limit "$FD_LIMIT"
want() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

TMP= PROXY_PID= REDIS_PID=
cleanup() {  # on exit (on_exit): stop what was started
    stop_pid "$CHILD"
    stop_pid "$PROXY_PID"
    stop_pid "$REDIS_PID"
    drop_workdir
}
on_exit cleanup

TMP=$(mktemp -d /tmp/pgscale-cbench.XXXXXX)
chmod 711 "$TMP"
mkdir -p "$TMP/logs" "$TMP/lat"
free_port PG_PORT
free_port PROXY_PORT
free_port REDIS_PORT
URL="postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB"

log "== pgscale result cache: dashboard workload, $BENCH_CLIENTS clients, ${BENCH_SECONDS}s per run, pgbench -M $BENCH_MODE"
log "   $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start; work dir $TMP"
run_child "$PGCLUSTER" start "$TMP/cluster" "$PG_PORT" 0 >"$TMP/logs/pgcluster.log" 2>&1 \
    || { cat "$TMP/logs/pgcluster.log" >&2; die "could not start PostgreSQL"; }

log "-- loading $BENCH_ROWS orders"
psql_at "$PG_PORT" "$APP_DB" "
    SET client_min_messages = warning;
    DROP TABLE IF EXISTS orders, users;
    CREATE TABLE orders (id int PRIMARY KEY, region int NOT NULL, day int NOT NULL,
                         amount numeric(10,2) NOT NULL, status text NOT NULL);
    INSERT INTO orders
        SELECT g, 1 + g % 8, 1 + (g::bigint * 7919) % 30, ((g * 31) % 10000) / 100.0,
               (ARRAY['new','paid','shipped','done'])[1 + g % 4]
        FROM generate_series(1, $BENCH_ROWS) g;" >/dev/null &&
    psql_at "$PG_PORT" "$APP_DB" "
    CREATE TABLE users (id int PRIMARY KEY, last_seen timestamptz);
    INSERT INTO users SELECT g, now() FROM generate_series(1, 10000) g;" >/dev/null &&
    psql_at "$PG_PORT" "$APP_DB" "VACUUM ANALYZE orders, users" >/dev/null || die "could not load the orders table"

cat >"$TMP/read.sql" <<'EOF'
\set day random(1, 30)
SELECT region, count(*) AS orders, sum(amount) AS revenue, round(avg(amount), 2) AS avg_order FROM orders WHERE day >= :day GROUP BY region ORDER BY region;
EOF
echo 'SELECT 1;' >"$TMP/floor.sql"
cat >"$TMP/write-orders.sql" <<EOF
\set id random(1, $BENCH_ROWS)
UPDATE orders SET amount = amount + 0.01 WHERE id = :id;
EOF
cat >"$TMP/write-other.sql" <<'EOF'
\set id random(1, 10000)
UPDATE users SET last_seen = now() WHERE id = :id;
EOF
one_ms=$(psql_at "$PG_PORT" "$APP_DB" "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON)
    SELECT region, count(*), sum(amount), round(avg(amount), 2) FROM orders WHERE day >= 1 GROUP BY region" |
    sed -n 's/.*"Execution Time": \([0-9.]*\).*/\1/p' | head -n1)
log "   the widest dashboard query (day >= 1, all rows) runs in ${one_ms:-?} ms on the server alone"

# ---------------------------------------------------------------- targets
start_redis() {
    command -v redis-server >/dev/null || { warn "redis-server not found: skipping pgscale-redis"; return 1; }
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$TMP" >"$TMP/logs/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT" 10 "$REDIS_PID" || { warn "redis-server did not start"; return 1; }
}

start_target() {  # start_target TARGET — sets TARGET_PORT
    local t=$1
    case $t in
    direct) TARGET_PORT=$PG_PORT; return 0 ;;
    pgbouncer)
        command -v pgbouncer >/dev/null || { warn "pgbouncer not found: skipping it"; return 1; }
        pgbouncer_launch "$TMP/pgbouncer" "$PROXY_PORT" 127.0.0.1 "$PG_PORT" "$POOL_SIZE" \
            "$TMP/logs/pgbouncer.out" "max_client_conn = 1000"
        PROXY_PID=$BOUNCER_PID ;;
    pgscale*)
        local extra=()
        [ "$t" = pgscale ] || extra+=(PGSCALE_CACHE=on)
        if [ "$t" = pgscale-redis ]; then
            [ -n "$REDIS_PID" ] || start_redis || return 1
            extra+=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
        fi
        env -u READ_REPLICA_URLS -u REDIS_URL -u PGSCALE_CACHE -u PGSCALE_CACHE_TTL \
            DATABASE_URL="$URL" PGSCALE_LISTEN="127.0.0.1:$PROXY_PORT" \
            PGSCALE_POOL_MODE=transaction DB_POOL_SIZE=$POOL_SIZE DB_MAX_OVERFLOW=10 \
            "${extra[@]}" "$PGSCALE_BIN" >"$TMP/logs/$t.log" 2>&1 &
        PROXY_PID=$! ;;
    esac
    TARGET_PORT=$PROXY_PORT
    if ! wait_port "$PROXY_PORT" 15 "$PROXY_PID" || [ "$(psql_at "$PROXY_PORT" "$APP_DB" 'SELECT 1' 2>/dev/null)" != 1 ]; then
        warn "$t did not come up; skipping it"
        stop_pid "$PROXY_PID"; PROXY_PID=
        return 1
    fi
    if [[ $t == pgscale-* ]]; then
        # the relation catalog must be loaded before anything is cached
        local i
        for i in $(seq 100); do
            [ "$(show_cache_col catalog_generation)" != 0 ] && break
            sleep 0.1
        done
    fi
}

show_cache_col() {  # show_cache_col COLUMN — the total row's value
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=10 timeout 30 \
        psql -X -w -A -F '|' -h 127.0.0.1 -p "$PROXY_PORT" -U "$APP_USER" -d pgscale -c 'SHOW CACHE' </dev/null |
        awk -F '|' -v want="$1" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next } NR == 2 { print $col[want] }'
}

# ---------------------------------------------------------------- runs
declare -A TPS=() P50=() P99=() HITR=()
WORKLOADS="read latency mix-other mix-orders"

run() {  # run TARGET WORKLOAD
    local t=$1 w=$2 key="$1/$2" out=$TMP/logs/pgbench-$1-$2.log rc=0 h0=0 m0=0 h1 m1
    local scripts=(-f "$TMP/read.sql") clients=$BENCH_CLIENTS jobs=$BENCH_JOBS
    case $w in
    latency) clients=1 jobs=1 ;;
    floor) clients=1 jobs=1 scripts=(-f "$TMP/floor.sql") ;;
    mix-other) scripts=(-f "$TMP/read.sql@9" -f "$TMP/write-other.sql@1") ;;
    mix-orders) scripts=(-f "$TMP/read.sql@9" -f "$TMP/write-orders.sql@1") ;;
    esac
    rm -f "$TMP"/lat/*
    if [[ $t == pgscale-* ]]; then h0=$(show_cache_col hits); m0=$(show_cache_col misses); fi
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=30 run_child timeout -k 5 $((BENCH_SECONDS + 90)) \
        pgbench -n -M "$BENCH_MODE" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" \
        -l --log-prefix="$TMP/lat/tx" -h 127.0.0.1 -p "$TARGET_PORT" -U "$APP_USER" \
        "${scripts[@]}" "$APP_DB" >"$out" 2>&1 || rc=$?
    pgbench_figures "$out"
    if [ "$rc" -ne 0 ] || [ -z "$PB_TPS" ]; then
        TPS[$key]=ERR
        log "   $key: FAILED (exit $rc): $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-110 || true)"
        return
    fi
    TPS[$key]=$(printf '%.0f' "$PB_TPS")
    # latency µs is the 3rd field of each per-transaction line
    read -r "P50[$key]" "P99[$key]" < <(cat "$TMP"/lat/tx* | awk '{ print $3 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
             printf "%d %d\n", v[int((NR - 1) * 0.50) + 1], v[int((NR - 1) * 0.99) + 1] }')
    HITR[$key]=-
    if [[ $t == pgscale-* ]]; then
        h1=$(show_cache_col hits); m1=$(show_cache_col misses)
        HITR[$key]=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.1f%%", (h + m) ? h * 100 / (h + m) : 0 }')
    fi
    log "   $(printf '%-26s' "$key") tps $(printf '%8s' "${TPS[$key]}")  p50 ${P50[$key]} µs  p99 ${P99[$key]} µs  hits ${HITR[$key]}"
}

for t in $BENCH_TARGETS; do
    start_target "$t" || continue
    log "-- $t (port $TARGET_PORT)"
    # one short warm-up: the server's buffers, and for pgscale its pools
    PGPASSWORD=$APP_PASSWORD run_child timeout 60 pgbench -n -M "$BENCH_MODE" -c 4 -j 2 -T 2 \
        -h 127.0.0.1 -p "$TARGET_PORT" -U "$APP_USER" -f "$TMP/read.sql" "$APP_DB" >/dev/null 2>&1 || true
    for w in $WORKLOADS; do run "$t" "$w"; done
    [ "$t" != direct ] || run direct floor
    stop_pid "$PROXY_PID"; PROXY_PID=
done

# ---------------------------------------------------------------- table
us_ms() { [[ $1 =~ ^[0-9]+$ ]] && awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }' || echo -; }
log ""
log "| target | workload | tps | vs direct | p50 ms | p99 ms | cache hits | target |"
log "|---|---|---|---|---|---|---|---|"
for t in $BENCH_TARGETS; do
    for w in $WORKLOADS floor; do
        key="$t/$w"
        [ -n "${TPS[$key]:-}" ] || continue
        goal=
        case "$t/$w" in
        pgscale-cache/read|pgscale-redis/read) goal=">= 10x direct" ;;
        pgscale-cache/latency) goal="p50 <= 0.050 ms" ;;
        pgscale-redis/latency) goal="p50 <= 0.300 ms" ;;
        pgscale-cache/mix-other|pgscale-redis/mix-other) goal=">= 3x direct" ;;
        esac
        log "| $t | $w | ${TPS[$key]} | $(ratio "${TPS[$key]}" "${TPS[direct/$w]:-}") | $(us_ms "${P50[$key]:-}") | $(us_ms "${P99[$key]:-}") | ${HITR[$key]} | $goal |"
    done
done
