#!/usr/bin/env bash
# seed_table.sh — the seed's scaling table, the longer and configurable run
# (what `make bench-seed` runs; `make demo` runs the same stages, shorter).
#
# The seed's table: single database 1,000 reads/s → with Redis cache 10,000
# → primary + 2 replicas 5,000 → + 5 replicas and cache 50,000. Starts a
# throw-away PostgreSQL 15 primary with BENCH_REPLICAS streaming replicas
# (scripts/pgcluster.sh) and a Redis, caps each PostgreSQL node at the same
# CPU share (bench/cgroup.sh: cgroup v2 cpu.max, else v1 cpu.cfs_quota_us;
# unlimited, and said so, when neither can be written), so that the nodes
# behave like separate servers, and runs the same read-heavy workload
# (bench/seed/: the dashboard, a product list, a few writes) through pgscale
# in 4 stages (bench/seed_lib.sh): (1) single database, (2) + cache with
# Redis, (3) primary + replicas, (4) primary + replicas + cache. Prints the
# reads/s of each stage and its ratio to stage 1 beside the seed's figures.
#
# With BENCH_REPLICAS=5, stages 3 and 4 are the seed's "+5 replicas"; on a
# small machine the 6 capped nodes then need more cores than it has, and
# the table's machine line says how many there are.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS   [30]   each stage's pgbench run
#   BENCH_CLIENTS   [16]   pgbench clients
#   BENCH_NODE_CPU  [40]   each node's CPU limit, % of one core; 0: no limit
#   BENCH_REPLICAS  [2]    replicas for stages 3 and 4 (1 to 5)
#   BENCH_SALES     [20000] rows the dashboard sums over
#   BENCH_KEEP      [0]    1 keeps the temp dir (logs, data) for a look
#   PGSCALE_BIN     [build/pgscale]
# Quick run: BENCH_SECONDS=5 bench/seed_table.sh
#
# Needs what scripts/install-deps.sh installs; installs nothing itself.
# Loopback only; every server, proxy and cgroup it made is stopped and
# removed on exit, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGCLUSTER=$ROOT/scripts/pgcluster.sh
BENCH_SECONDS=${BENCH_SECONDS:-30}
BENCH_CLIENTS=${BENCH_CLIENTS:-16}
BENCH_NODE_CPU=${BENCH_NODE_CPU:-40}
BENCH_REPLICAS=${BENCH_REPLICAS:-2}
BENCH_SALES=${BENCH_SALES:-20000}
BENCH_KEEP=${BENCH_KEEP:-0}
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}
APP_USER=app APP_PASSWORD=secret APP_DB=app
FD_LIMIT=4096

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ && $BENCH_CLIENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS and BENCH_CLIENTS must be positive integers"
[[ $BENCH_NODE_CPU =~ ^[0-9]+$ ]] || die "BENCH_NODE_CPU must be a percentage of one core (0: no limit)"
[[ $BENCH_REPLICAS =~ ^[1-5]$ ]] || die "BENCH_REPLICAS must be 1 to 5"
[[ $BENCH_SALES =~ ^[1-9][0-9]*$ ]] || die "BENCH_SALES must be a positive integer"
command -v pgbench >/dev/null || die "pgbench not found; run scripts/install-deps.sh"
[ -x "$PGSCALE_BIN" ] || die "$PGSCALE_BIN not found; run make"
raise_fd_limit "$FD_LIMIT"

CG_CPU=$BENCH_NODE_CPU CG_NAME=pgscale-seed-$$
# shellcheck source=bench/cgroup.sh
. "$ROOT/bench/cgroup.sh"
SEED_SECONDS=$BENCH_SECONDS SEED_CLIENTS=$BENCH_CLIENTS SEED_REPLICAS=$BENCH_REPLICAS SEED_SALES=$BENCH_SALES
# shellcheck source=bench/seed_lib.sh
. "$ROOT/bench/seed_lib.sh"

TMP='' REDIS_PID=''
cleanup() {  # on exit (on_exit): stop what was started
    stop_pid "$CHILD"
    stop_pid "$SEED_PGSCALE_PID"
    stop_pid "$REDIS_PID"
    drop_workdir
    cg_cleanup
}
on_exit cleanup

TMP=$(mktemp -d /tmp/pgscale-seed.XXXXXX)
chmod 711 "$TMP"          # the postgres user must reach $TMP/cluster
mkdir -p "$TMP/logs" "$TMP/redis"
free_ports PG_PORT $((BENCH_REPLICAS + 1))
free_port SEED_PORT
free_port SEED_HTTP_PORT
free_port SEED_REDIS_PORT

log "== The seed's table: 4 stages of ${BENCH_SECONDS}s, $BENCH_CLIENTS clients, $BENCH_REPLICAS replicas, each node capped at $BENCH_NODE_CPU% of a core"
log "   $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start; work dir $TMP"
run_child "$PGCLUSTER" start "$TMP/cluster" "$PG_PORT" "$BENCH_REPLICAS" >"$TMP/logs/pgcluster.log" 2>&1 \
    || { cat "$TMP/logs/pgcluster.log" >&2; die "could not start PostgreSQL"; }
log "-- PostgreSQL 15: a primary on :$PG_PORT and $BENCH_REPLICAS streaming replicas after it"
if command -v redis-server >/dev/null; then
    redis-server --bind 127.0.0.1 --port "$SEED_REDIS_PORT" --save '' --appendonly no \
        --dir "$TMP/redis" --logfile "$TMP/logs/redis.log" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_port "$SEED_REDIS_PORT" 10 "$REDIS_PID" || die "Redis did not start; see $TMP/logs/redis.log"
    log "-- Redis on :$SEED_REDIS_PORT, no persistence"
else
    SEED_REDIS_PORT=
    log "-- redis-server not installed: the cached stages use pgscale's in-process cache only"
fi
log "-- loading the shop: $SEED_PRODUCTS products, $BENCH_SALES sales"
seed_load

cg_setup
if [ -n "$CG_KIND" ]; then
    log "-- CPU caps"
    for node in primary $(seq -f 'replica%g' 1 "$BENCH_REPLICAS"); do cg_limit "$node" "$TMP/cluster/$node"; done
else
    log "   !! NOT limiting the nodes' CPU: $CG_WHY"
fi

log "-- the stages (pgscale on :$SEED_PORT, its HTTP listener on :$SEED_HTTP_PORT)"
seed_run_stages
log ""
log "== The seed's table, measured"
seed_table
