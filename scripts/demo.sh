#!/usr/bin/env bash
# demo.sh — pgscale in one minute (what `make demo` runs).
#
# Starts, in a temp dir: a PostgreSQL 15 primary with 2 streaming replicas
# (scripts/pgcluster.sh), a Redis with no persistence, and build/pgscale in
# front of them. Then 200 pgbench clients share a pool of at most 15 server
# connections, first read-only (-S), then a mixed read/write run (-N), while
# the admin console's SHOW POOLS is printed every few seconds; the reads go
# to the replicas, the transactions to the primary. Then a replica is made
# to lag (recovery_min_apply_delay) and gets no reads, and the primary is
# killed and pgscale promotes a replica (failover auto), with the time it
# took. Ends with a plain-English summary, and stops everything it started
# (also on Ctrl-C or an error).
#
# Between them: the result cache on a dashboard query (with read-your-writes
# through it), and the seed's scaling table (single database 1,000 reads/s,
# with a Redis cache 10,000, primary + 2 replicas 5,000, + 5 replicas and
# cache 50,000) measured on this box: each PostgreSQL node capped at the same
# CPU share by a cgroup (bench/cgroup.sh), the same read-heavy workload (the
# dashboard, a product list, 5 % writes; bench/seed/) run through pgscale in
# 4 stages (bench/seed_lib.sh; bench/seed_table.sh is the longer version):
# single database, + cache, primary + 2 replicas, primary + 2 replicas +
# cache, printed beside the seed's figures. While the lagging replica lags,
# 200 rounds of write-then-read through pgscale show read-your-writes.
# Every pgscale started gets an HTTP listener on a free port; when it
# answers /healthz, the status page's URL is printed to watch it live.
#
# Needs build/pgscale (the Makefile builds it) and what scripts/install-deps.sh
# installs. Builds and installs nothing. Loopback only; no stdin needed.
# As root it caps the nodes' CPU for the seed's table; otherwise, or without
# a writable cgroup, the table says the nodes ran uncapped.
#
# Environment: DEMO_CLIENTS [200], DEMO_SECONDS [15] per run,
#              DEMO_STAGE_SECONDS [10] per stage of the seed's table,
#              DEMO_NODE_CPU [40] each node's CPU cap there, % of one core,
#              DEMO_KEEP=1 keeps the temp dir, PGSCALE_BIN [build/pgscale].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}
PGCLUSTER=$ROOT/scripts/pgcluster.sh
DEMO_CLIENTS=${DEMO_CLIENTS:-200}
DEMO_SECONDS=${DEMO_SECONDS:-15}
DEMO_KEEP=${DEMO_KEEP:-0}
DEMO_STAGE_SECONDS=${DEMO_STAGE_SECONDS:-10}
DEMO_NODE_CPU=${DEMO_NODE_CPU:-40}
POOL_SIZE=10
MAX_OVERFLOW=5
SCALE=5
REPLICAS=2
APP_USER=app APP_PASSWORD=secret APP_DB=app
export PGCONNECT_TIMEOUT=10
unset PGHOST PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE

if [ -t 1 ]; then B=$'\e[1m' D=$'\e[2m' R=$'\e[0m'; else B='' D='' R=''; fi
step() { printf '\n%s== %s%s\n' "$B" "$*" "$R"; }
say()  { printf '   %s\n' "$*"; }
die()  { printf 'demo: %s\n' "$*" >&2; exit 1; }
warn() { printf 'demo: %s\n' "$*" >&2; }
indent() { sed 's/^/     /'; }

[ -x "$PGSCALE_BIN" ] || die "$PGSCALE_BIN not found; build it first (make)"
[ -x /usr/lib/postgresql/15/bin/initdb ] || die "PostgreSQL 15 is missing; run scripts/install-deps.sh"
command -v pgbench >/dev/null || die "pgbench is missing; run scripts/install-deps.sh"
[[ $DEMO_CLIENTS =~ ^[1-9][0-9]*$ && $DEMO_SECONDS =~ ^[1-9][0-9]*$ && $DEMO_STAGE_SECONDS =~ ^[1-9][0-9]*$ ]] \
    || die "DEMO_CLIENTS, DEMO_SECONDS and DEMO_STAGE_SECONDS must be positive integers"
[[ $DEMO_NODE_CPU =~ ^[0-9]+$ ]] || die "DEMO_NODE_CPU must be a percentage of one core (0: no limit)"
HAVE_REDIS=1
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || HAVE_REDIS=0

# DEMO_CLIENTS sockets in pgbench; pgscale raises its own limit.
raise_fd_limit $((DEMO_CLIENTS + 256))

# each node's CPU cap for the seed's table, and the table's stages
CG_CPU=$DEMO_NODE_CPU CG_NAME=pgscale-demo-$$
# shellcheck source=bench/cgroup.sh
. "$ROOT/bench/cgroup.sh"
SEED_SECONDS=$DEMO_STAGE_SECONDS SEED_CLIENTS=16 SEED_REPLICAS=$REPLICAS
# shellcheck source=bench/seed_lib.sh
. "$ROOT/bench/seed_lib.sh"

# ------------------------------------------------------------ clean-up
TMP='' SCALE_PID='' CACHE_PID='' REDIS_PID='' MONITOR_PID=''
cleanup() {  # cleanup STATUS — on exit (on_exit, also on Ctrl-C or an error)
    printf '\n%s== Stopping everything%s\n' "$B" "$R"
    stop_pid "$MONITOR_PID"
    stop_pid "$CHILD"
    stop_pid "$SCALE_PID"
    stop_pid "$CACHE_PID"
    stop_pid "$SEED_PGSCALE_PID"
    stop_pid "$REDIS_PID"
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        "$PGCLUSTER" stop "$TMP/cluster" 2>&1 | indent || true
    fi
    cg_cleanup
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$DEMO_KEEP" = 1 ]; then say "kept $TMP (logs in $TMP/logs)"; else rm -rf "$TMP"; fi
    fi
    [ "$1" -eq 0 ] && say "done." || say "demo failed (exit $1)."
}
on_exit cleanup

su_psql() {  # su_psql PORT SQL [DB] — superuser, straight to a PostgreSQL node
    timeout 20 psql -X -w -At -h 127.0.0.1 -p "$1" -U postgres -d "${3:-postgres}" -c "$2" </dev/null
}
node_reads() {  # node_reads — "name reads" per node, from SHOW NODES
    PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -At -F ' ' -h 127.0.0.1 -p "$SCALE_PORT" \
        -U "$ADMIN_USER" -d pgscale -c 'SHOW NODES' </dev/null 2>/dev/null | awk '{ print $1, $9 }'
}
ADMIN_USER=$APP_USER
admin() {  # admin SQL — pgscale's admin console
    PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -P pager=off -h 127.0.0.1 -p "$SCALE_PORT" \
        -U "$ADMIN_USER" -d pgscale -c "$1" </dev/null
}

# PostgreSQL connections opened by the application user on all nodes: what
# pgscale holds open on the clients' behalf (our own probes log in as postgres).
# Prints the total, then the count on each node (primary first).
server_conns() {
    local total=0 n p counts=()
    for p in "${NODE_PORTS[@]}"; do
        n=$(su_psql "$p" "SELECT count(*) FROM pg_stat_activity WHERE usename = '$APP_USER' AND backend_type = 'client backend'" 2>/dev/null || echo 0)
        total=$((total + n)); counts+=("$n")
    done
    echo "$total ${counts[*]}"
}

# ------------------------------------------------------------ start
TMP=$(mktemp -d /tmp/pgscale-demo.XXXXXX)
chmod 711 "$TMP"
mkdir -p "$TMP/logs" "$TMP/redis"
free_ports PG_PORT $((REPLICAS + 1))
free_ports REDIS_PORT 1
free_port SCALE_PORT
free_port CACHE_PORT
free_port HTTP_PORT
free_port CACHE_HTTP_PORT
free_port SEED_PORT
free_port SEED_HTTP_PORT
NODE_PORTS=()
for ((i = 0; i <= REPLICAS; i++)); do NODE_PORTS+=($((PG_PORT + i))); done

printf '%spgscale demo%s: %s clients share a pool of at most %s PostgreSQL connections.\n' "$B" "$R" "$DEMO_CLIENTS" $((POOL_SIZE + MAX_OVERFLOW))
printf '%sEverything runs on 127.0.0.1 from %s and is removed at the end.%s\n' "$D" "$TMP" "$R"

step "1. PostgreSQL 15: a primary and $REPLICAS streaming replicas"
"$PGCLUSTER" start "$TMP/cluster" "$PG_PORT" "$REPLICAS" >"$TMP/logs/pgcluster.log" 2>&1 \
    || { cat "$TMP/logs/pgcluster.log" >&2; die "could not start PostgreSQL"; }
"$PGCLUSTER" status "$TMP/cluster" | indent

step "2. Redis, no persistence (REDIS_URL: the failover lock, and the shared tier of the result cache)"
if [ "$HAVE_REDIS" = 1 ]; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$TMP/redis" --logfile "$TMP/logs/redis.log" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    deadline=$((SECONDS + 10))
    until [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; do
        [ "$SECONDS" -lt "$deadline" ] && kill -0 "$REDIS_PID" 2>/dev/null || die "Redis did not start; see $TMP/logs/redis.log"
        sleep 0.1
    done
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    say "redis-server $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p') on 127.0.0.1:$REDIS_PORT"
else
    REDIS_URL=
    say "redis-server not installed (scripts/install-deps.sh installs it); going on without it"
fi

step "3. pgscale, configured from the environment as an application's .env would be"
PRIMARY_URL="postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB"
REPLICA_URLS=
for ((i = 1; i <= REPLICAS; i++)); do
    REPLICA_URLS+="${REPLICA_URLS:+,}postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$((PG_PORT + i))/$APP_DB"
done
ENV_VARS=(
    DATABASE_URL="$PRIMARY_URL"
    READ_REPLICA_URLS="$REPLICA_URLS"
    "DB_POOL_SIZE=$POOL_SIZE"
    "DB_MAX_OVERFLOW=$MAX_OVERFLOW"
    PGSCALE_LISTEN="127.0.0.1:$SCALE_PORT"
    PGSCALE_HTTP_LISTEN="127.0.0.1:$HTTP_PORT"
    PGSCALE_POOL_MODE=transaction
    PGSCALE_MAX_REPLICA_LAG=2s
    PGSCALE_FAILOVER_TIMEOUT=3s
)
[ -n "$REDIS_URL" ] && ENV_VARS+=(REDIS_URL="$REDIS_URL")
printf '%s\n' "${ENV_VARS[@]}" | indent
env "${ENV_VARS[@]}" "$PGSCALE_BIN" >"$TMP/logs/pgscale.log" 2>&1 &
SCALE_PID=$!
if ! wait_port "$SCALE_PORT" 15 "$SCALE_PID"; then
    tail -n 30 "$TMP/logs/pgscale.log" >&2 || true
    die "pgscale did not start listening on 127.0.0.1:$SCALE_PORT"
fi
for u in "$APP_USER" postgres pgscale ""; do
    ADMIN_USER=${u:-$APP_USER}   # none answered: keep the app user, errors will show
    [ -n "$u" ] && admin 'SHOW POOLS' >/dev/null 2>&1 && break
done
say "pgscale (pid $SCALE_PID) listens on 127.0.0.1:$SCALE_PORT; applications connect there instead of to PostgreSQL."
say "admin console: PGPASSWORD=$APP_PASSWORD psql -h 127.0.0.1 -p $SCALE_PORT -U $ADMIN_USER -d pgscale -c 'SHOW POOLS'"
url=$(status_page "$HTTP_PORT") && say "${B}watch it live:${R} $url"

step "4. Sample data: pgbench -i -s $SCALE ($((SCALE * 100000)) accounts), loaded straight into the primary"
PGPASSWORD=$APP_PASSWORD run_child timeout 300 pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" \
    -U "$APP_USER" "$APP_DB" >"$TMP/logs/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$TMP/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
say "loaded in $(sed -n 's/^done in \([0-9.]* s\).*/\1/p' "$TMP/logs/pgbench-init.log")"

# Every second: count the PostgreSQL connections in use (keeping the peak);
# every 5 s: print pgbench's progress and SHOW POOLS.
monitor() {  # monitor PGBENCH_LOG PEAK_FILE — PEAK_FILE gets the sample with the most connections
    local log=$1 peak_file=$2 peak=0 n t start=$SECONDS next=5 prog sample
    set +e   # a failed probe must not end the monitor; it is only a view
    while :; do
        sleep 1; t=$((SECONDS - start))
        sample=$(server_conns); n=${sample%% *}
        if [ "$n" -gt "$peak" ]; then peak=$n; echo "$sample" >"$peak_file"; fi
        if [ "$t" -ge "$next" ]; then
            next=$((next + 5))
            prog=$(grep '^progress:' "$log" 2>/dev/null | tail -n1 | sed -E 's/^progress: ([0-9.]+) s, ([0-9.]+) tps, lat ([0-9.]+) ms.*/\2 tps, average latency \3 ms/')
            printf '%s\n%s\n' \
                "   ${B}[${t}s]${R} ${prog:-starting…} — $DEMO_CLIENTS clients connected to pgscale, $n PostgreSQL connections in use" \
                "$(admin 'SHOW POOLS' 2>&1 | indent)"
        fi
    done
}

run_workload() {  # run_workload NAME DESCRIPTION PGBENCH-ARGS…
    local name=$1 what=$2; shift 2
    local log=$TMP/logs/pgbench-$name.log peak_file=$TMP/logs/peak-$name rc=0
    echo "0 -" >"$peak_file"
    step "$what"
    say "${D}pgbench $* -c $DEMO_CLIENTS -j 2 -T $DEMO_SECONDS, through pgscale${R}"
    monitor "$log" "$peak_file" &
    MONITOR_PID=$!
    PGPASSWORD=$APP_PASSWORD run_child timeout $((DEMO_SECONDS + 120)) pgbench -n "$@" \
        -c "$DEMO_CLIENTS" -j 2 -T "$DEMO_SECONDS" -P 5 \
        -h 127.0.0.1 -p "$SCALE_PORT" -U "$APP_USER" "$APP_DB" >"$log" 2>&1 || rc=$?
    stop_pid "$MONITOR_PID"; MONITOR_PID=
    if [ "$rc" -ne 0 ] || grep -q 'aborted' "$log"; then
        grep -m3 -iE 'error|fatal|abort' "$log" | indent >&2 || true
        say "pgscale log (last lines):" >&2; tail -n 15 "$TMP/logs/pgscale.log" | indent >&2 || true
        die "the $name run through pgscale failed (pgbench exit $rc)"
    fi
    TPS[$name]=$(sed -n 's/^tps = \([0-9]*\).*without initial connection time.*/\1/p' "$log")
    LAT[$name]=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$log")
    TXN[$name]=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
    local peak nodes
    read -r peak nodes <"$peak_file"
    PEAK[$name]=$peak NODES[$name]=$nodes
    say "${B}result:${R} ${TPS[$name]} transactions/s, average latency ${LAT[$name]} ms, at most $peak PostgreSQL connections used"
}

declare -A TPS LAT TXN PEAK NODES
run_workload read "5. Read-only: $DEMO_CLIENTS clients running SELECTs by primary key" -S
run_workload mixed "6. Mixed: $DEMO_CLIENTS clients running BEGIN; UPDATE; SELECT; INSERT; END" -N

# ryw_rounds NAME PORT READS WRITE READ — 200 rounds in one session through
# the pgscale on PORT: WRITE (which adds 1 to what READ returns), then READ
# READS times at once. Prints how many reads missed their round's write, or
# "incomplete (N reads)"; the reads are in $TMP/logs/ryw-NAME.out.
ryw_rounds() {
    local name=$1 port=$2 reads=$3 write=$4 read=$5 before g i out=$TMP/logs/ryw-$1.out
    before=$(PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -At -h 127.0.0.1 -p "$port" -U "$APP_USER" "$APP_DB" -c "$read" </dev/null)
    for ((g = 0; g < 200; g++)); do
        printf '%s;\n' "$write"
        for ((i = 0; i < reads; i++)); do printf '%s;\n' "$read"; done
    done >"$TMP/ryw-$name.sql"
    PGPASSWORD=$APP_PASSWORD timeout 120 psql -X -w -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U "$APP_USER" -f "$TMP/ryw-$name.sql" "$APP_DB" </dev/null >"$out" 2>&1 || true
    awk -v b="$before" -v k="$reads" -v n=$((200 * reads)) '{ d = $1 - (b + int((NR - 1) / k) + 1) }
        d > 0.001 || d < -0.001 { bad++ } END { print NR == n ? bad + 0 : "incomplete (" NR " reads)" }' "$out"
}

# ------------------------------------------------------------ the result cache
step "7. The result cache: the same dashboard query through pgscale without and with PGSCALE_CACHE=on"
# the seed's "dashboard metrics": revenue per region over the orders of the
# last days, a GROUP BY over $DASH_ROWS rows, loaded straight into the primary
DASH_ROWS=300000
su_psql "$PG_PORT" "
    SET client_min_messages = warning;
    DROP TABLE IF EXISTS orders;
    CREATE TABLE orders (id int PRIMARY KEY, region int NOT NULL, day int NOT NULL,
                         amount numeric(10,2) NOT NULL);
    INSERT INTO orders SELECT g, 1 + g % 8, 1 + (g::bigint * 7919) % 30, ((g * 31) % 10000) / 100.0
        FROM generate_series(1, $DASH_ROWS) g;
    ALTER TABLE orders OWNER TO $APP_USER;" "$APP_DB" >/dev/null || die "could not load the orders table"
su_psql "$PG_PORT" "VACUUM ANALYZE orders" "$APP_DB" >/dev/null
for ((i = 1; i <= REPLICAS; i++)); do   # the replicas serve reads: wait until they have it
    for _ in $(seq 300); do
        [ "$(su_psql $((PG_PORT + i)) "SELECT count(*) FROM orders" "$APP_DB" 2>/dev/null)" = "$DASH_ROWS" ] && break
        sleep 0.1
    done
done
cat >"$TMP/dashboard.sql" <<'EOF'
\set day random(1, 30)
SELECT region, count(*) AS orders, sum(amount) AS revenue FROM orders WHERE day >= :day GROUP BY region ORDER BY region;
EOF
say "orders: $DASH_ROWS rows; the dashboard asks for revenue per region since one of 30 days"
# a second pgscale with the cache on, beside the first (same nodes, same Redis)
CACHE_VARS=("${ENV_VARS[@]/PGSCALE_LISTEN=*/PGSCALE_LISTEN=127.0.0.1:$CACHE_PORT}")
CACHE_VARS=("${CACHE_VARS[@]/PGSCALE_HTTP_LISTEN=*/PGSCALE_HTTP_LISTEN=127.0.0.1:$CACHE_HTTP_PORT}" PGSCALE_CACHE=on PGSCALE_CACHE_TTL=300s)
env "${CACHE_VARS[@]}" "$PGSCALE_BIN" >"$TMP/logs/pgscale-cache.log" 2>&1 &
CACHE_PID=$!
wait_port "$CACHE_PORT" 15 "$CACHE_PID" || { tail -n 20 "$TMP/logs/pgscale-cache.log" >&2; die "the cached pgscale did not start"; }
cache_admin() {  # cache_admin SQL — the cached pgscale's admin console, unaligned
    PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -A -F '|' -h 127.0.0.1 -p "$CACHE_PORT" \
        -U "$ADMIN_USER" -d pgscale -c "$1" </dev/null
}
cache_col() {  # cache_col COLUMN — SHOW CACHE's total row
    cache_admin 'SHOW CACHE' 2>/dev/null | awk -F'|' -v w="$1" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } NR == 2 { print $c[w] }'
}
for _ in $(seq 150); do [ "$(cache_col catalog_generation)" ] && [ "$(cache_col catalog_generation)" != 0 ] && break; sleep 0.1; done
say "a second pgscale (pid $CACHE_PID) on 127.0.0.1:$CACHE_PORT with PGSCALE_CACHE=on PGSCALE_CACHE_TTL=300s"
declare -A DASH_TPS DASH_P50
dash_run() {  # dash_run NAME PORT — 16 clients, DEMO_SECONDS; sets DASH_TPS and DASH_P50 (ms)
    local name=$1 port=$2 log=$TMP/logs/pgbench-dash-$1.log
    rm -rf "$TMP/lat"; mkdir -p "$TMP/lat"
    PGPASSWORD=$APP_PASSWORD run_child timeout $((DEMO_SECONDS + 60)) pgbench -n -c 16 -j 2 \
        -T "$DEMO_SECONDS" -f "$TMP/dashboard.sql" -l --log-prefix="$TMP/lat/tx" \
        -h 127.0.0.1 -p "$port" -U "$APP_USER" "$APP_DB" >"$log" 2>&1 \
        || { grep -m3 -iE 'error|fatal|abort' "$log" | indent >&2; die "the dashboard run ($name) failed"; }
    DASH_TPS[$name]=$(sed -n 's/^tps = \([0-9]*\).*without initial connection time.*/\1/p' "$log")
    DASH_P50[$name]=$(cat "$TMP"/lat/tx* | awk '{ print $3 }' | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.3f", NR ? v[int((NR - 1) / 2) + 1] / 1000 : 0 }')
}
say "${D}pgbench -c 16 -j 2 -T $DEMO_SECONDS -f dashboard.sql, first through the pgscale without the cache${R}"
dash_run nocache "$SCALE_PORT"
say "${B}without the cache:${R} ${DASH_TPS[nocache]} dashboards/s, median latency ${DASH_P50[nocache]} ms"
h0=$(cache_col hits); m0=$(cache_col misses)
say "${D}the same through the pgscale with the cache${R}"
dash_run cache "$CACHE_PORT"
h1=$(cache_col hits); m1=$(cache_col misses)
CACHE_RATIO=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.1f%%", (h + m) ? h * 100 / (h + m) : 0 }')
CACHE_X=$(awk -v a="${DASH_TPS[cache]}" -v b="${DASH_TPS[nocache]}" 'BEGIN { printf "%.0f", b ? a / b : 0 }')
say "${B}with the cache:${R} ${DASH_TPS[cache]} dashboards/s (${CACHE_X}x), median latency ${DASH_P50[cache]} ms, hit ratio $CACHE_RATIO"
# read-your-writes with the cache: each round writes an order through the
# cached pgscale, then reads the region's revenue twice (the first read
# fills the entry, the second is served from it): both must show the write
h0=$(cache_col hits)
STALE=$(ryw_rounds cache "$CACHE_PORT" 2 "UPDATE orders SET amount = amount + 1 WHERE id = 8" \
    "SELECT sum(amount) FROM orders WHERE region = 1")
h1=$(cache_col hits)
if [ "$STALE" = 0 ]; then
    CACHE_RYW="200 rounds of write then read twice through the cached pgscale: 400 reads, 0 stale, $((h1 - h0)) served from the cache"
else
    CACHE_RYW="the write-then-read check found stale or missing reads: $STALE (see $TMP/logs/ryw-cache.out)"
fi
say "$CACHE_RYW"
say "${B}SHOW CACHE${R} (total): $(cache_admin 'SHOW CACHE' 2>/dev/null | awk -F'|' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    NR == 2 { printf "hits %s, misses %s, hit_ratio %s, entries %s (%s bytes), invalidations %s, writes that moved table versions %s", $c["hits"], $c["misses"], $c["hit_ratio"], $c["entries"], $c["bytes"], $c["invalidations"], $c["bumps"] }')"
stop_pid "$CACHE_PID"; CACHE_PID=

# ------------------------------------------------------------ the seed's table
step "8. The seed's table on this box: the same read-heavy workload in 4 stages, each PostgreSQL node capped at $(awk -v p="$DEMO_NODE_CPU" 'BEGIN { printf "%.2f", p / 100 }') core"
say "the seed: single database 1,000 reads/s; with Redis cache 10,000; primary + 2 replicas 5,000; + 5 replicas and cache 50,000"
say "${D}here: $SEED_CLIENTS pgbench clients, ${DEMO_STAGE_SECONDS}s a stage, through a pgscale started for each stage on 127.0.0.1:$SEED_PORT:${R}"
say "${D}the dashboard ($SEED_W_DASH %), a product list page ($SEED_W_LIST %) and add-to-cart writes ($SEED_W_CART %) (scripts in bench/seed/)${R}"
SEED_REDIS_PORT=${REDIS_URL:+$REDIS_PORT}
seed_load
cg_setup
if [ -n "$CG_KIND" ]; then
    for node in primary $(seq -f 'replica%g' 1 "$REPLICAS"); do cg_limit "$node" "$TMP/cluster/$node"; done
else
    say "!! the nodes are NOT capped: $CG_WHY"
fi
seed_run_stages
cg_cleanup   # the steps below run uncapped
SEED_TABLE=$(seed_table)
echo
printf '%s\n' "$SEED_TABLE"

step "9. What pgscale saw (admin console: PGPASSWORD=$APP_PASSWORD psql -h 127.0.0.1 -p $SCALE_PORT -U $ADMIN_USER -d pgscale)"
for cmd in 'SHOW NODES' 'SHOW POOLS' 'SHOW STATS' 'SHOW SERVERS'; do
    say "${B}$cmd${R}"
    admin "$cmd" 2>&1 | indent || true
done

# statements per node after the two runs, before the steps below change them
NODE_SUMMARY=$(PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -At -F '|' -h 127.0.0.1 \
    -p "$SCALE_PORT" -U "$ADMIN_USER" -d pgscale -c 'SHOW NODES' </dev/null 2>/dev/null |
    awk -F'|' 'NF >= 10 { printf "  %s: %s reads, %s writes\n", $1, $9, $10 }')

step "10. A lagging replica: replica2 applies WAL 30 s late; pgscale stops reading from it"
su_psql "$((PG_PORT + 2))" "ALTER SYSTEM SET recovery_min_apply_delay = '30s'" >/dev/null &&
    su_psql "$((PG_PORT + 2))" "SELECT pg_reload_conf()" >/dev/null
# a few writes it cannot apply, then reads while it is behind
PGPASSWORD=$APP_PASSWORD run_child timeout 60 pgbench -n -N -c 4 -j 2 -T 4 -h 127.0.0.1 \
    -p "$SCALE_PORT" -U "$APP_USER" "$APP_DB" >"$TMP/logs/pgbench-lag-writes.log" 2>&1 || true
declare -A BEFORE=() AFTER=()
while read -r n r; do BEFORE[$n]=$r; done < <(node_reads)
PGPASSWORD=$APP_PASSWORD run_child timeout 60 pgbench -n -S -c 8 -j 2 -T 4 -h 127.0.0.1 \
    -p "$SCALE_PORT" -U "$APP_USER" "$APP_DB" >"$TMP/logs/pgbench-lag-reads.log" 2>&1 || true
while read -r n r; do AFTER[$n]=$r; done < <(node_reads)
admin 'SHOW NODES' 2>&1 | indent || true
LAG_LINE="reads during 4 s while replica2 lagged:"
for n in primary replica1 replica2; do
    LAG_LINE+=" $n $(( ${AFTER[$n]:-0} - ${BEFORE[$n]:-0} ))"
done
say "$LAG_LINE (PGSCALE_MAX_REPLICA_LAG=2s: a replica further behind gets no reads until it catches up)"
# read-your-writes while replica2 lags 30 s: each round writes through
# pgscale and reads the row back at once, in the same session
while read -r n r; do BEFORE[$n]=$r; done < <(node_reads)
STALE=$(ryw_rounds lag "$SCALE_PORT" 1 "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7" \
    "SELECT abalance FROM pgbench_accounts WHERE aid = 7")
while read -r n r; do AFTER[$n]=$r; done < <(node_reads)
LAG_RYW="read-your-writes while replica2 lagged: 200 rounds of write then read at once through pgscale,"
if [ "$STALE" = 0 ]; then LAG_RYW+=" 0 stale"; else LAG_RYW+=" stale or missing reads: $STALE (see $TMP/logs/ryw-lag.out)"; fi
LAG_RYW+="; reads per node:"
for n in primary replica1 replica2; do LAG_RYW+=" $n $(( ${AFTER[$n]:-0} - ${BEFORE[$n]:-0} ))"; done
say "$LAG_RYW"
su_psql "$((PG_PORT + 2))" "ALTER SYSTEM RESET recovery_min_apply_delay" >/dev/null &&
    su_psql "$((PG_PORT + 2))" "SELECT pg_reload_conf()" >/dev/null

step "11. Failover: the primary is killed (pg_ctl stop -m immediate); pgscale promotes the most advanced replica"
# what promoting and repointing need when pgscale's user is not a superuser
su_psql "$PG_PORT" "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO $APP_USER;
    GRANT EXECUTE ON FUNCTION pg_reload_conf() TO $APP_USER; GRANT pg_read_all_settings TO $APP_USER;
    GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO $APP_USER" "$APP_DB" >/dev/null || true
sleep 1   # the grants reach the replicas
FAILOVER_MSG="no failover seen"
t0=$SECONDS
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)   # pg_ctl refuses root
if (cd / && "${as_pg[@]}" /usr/lib/postgresql/15/bin/pg_ctl -D "$TMP/cluster/primary" \
        stop -m immediate >"$TMP/logs/kill-primary.log" 2>&1); then
    say "primary stopped at once (no shutdown checkpoint, as a crash)"
    new=''
    for _ in $(seq 300); do
        new=$(PGPASSWORD=$APP_PASSWORD timeout 10 psql -X -w -At -F ' ' -h 127.0.0.1 \
            -p "$SCALE_PORT" -U "$ADMIN_USER" -d pgscale -c 'SHOW NODES' </dev/null 2>/dev/null |
            awk '$1 != "primary" && $2 == "primary" && !found { print $1; found = 1 }')
        [ -n "$new" ] && break
        sleep 0.1
    done
    if [ -n "$new" ]; then
        FAILOVER_MSG="$new became the primary $((SECONDS - t0)) s after the old one was killed (PGSCALE_FAILOVER_TIMEOUT=3s of it waiting)"
        say "$FAILOVER_MSG"
        for _ in $(seq 20); do grep -q 'FAILOVER:' "$TMP/logs/pgscale.log" && break; sleep 0.1; done
        grep -m1 'FAILOVER:' "$TMP/logs/pgscale.log" | sed 's/^[^ ]* [^ ]* [^ ]* //' | fold -s -w 100 | indent || true
        out=$(PGPASSWORD=$APP_PASSWORD timeout 30 psql -X -w -At -h 127.0.0.1 -p "$SCALE_PORT" \
            -U "$APP_USER" -d "$APP_DB" -c "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
                VALUES (1, 1, 1, 0, now()) RETURNING inet_server_port()" </dev/null 2>&1 | sed -n 1p)
        say "a write through pgscale after the failover ran on port $out (the new primary)"
        admin 'SHOW NODES' 2>&1 | indent || true
    else
        say "no failover within 30 s; pgscale's log:"
        grep -E 'monitor|FAILOVER|promot' "$TMP/logs/pgscale.log" | tail -n 8 | indent || true
    fi
else
    say "could not stop the primary: $(tail -n1 "$TMP/logs/kill-primary.log")"
fi

step "In plain English"
say "$DEMO_CLIENTS client connections at a time (2 runs of ${DEMO_SECONDS}s) were served by at most $((PEAK[read] > PEAK[mixed] ? PEAK[read] : PEAK[mixed])) PostgreSQL connections"
say "  (pgscale's limit: DB_POOL_SIZE=$POOL_SIZE kept open + DB_MAX_OVERFLOW=$MAX_OVERFLOW opened under load)."
say "Read-only run: ${TPS[read]} transactions per second (${TXN[read]} in ${DEMO_SECONDS}s), average latency ${LAT[read]} ms."
say "Mixed run:     ${TPS[mixed]} transactions per second (${TXN[mixed]} in ${DEMO_SECONDS}s), average latency ${LAT[mixed]} ms."
say "Without a pooler the same clients would have needed $DEMO_CLIENTS PostgreSQL backend processes,"
say "each using several MB of memory; the clients queued briefly for a connection instead."
say "Reads and writes per node after the two runs (SHOW NODES): the read-only run's SELECTs went"
say "  to the replicas, the mixed run's transactions (BEGIN ... END may write) to the primary:"
printf '%s\n' "$NODE_SUMMARY" | indent
say "$LAG_LINE."
say "$LAG_RYW."
say "Failover: $FAILOVER_MSG."
say "Result cache (the dashboard, 16 clients): ${DASH_TPS[nocache]} dashboards/s and ${DASH_P50[nocache]} ms median without it,"
say "  ${DASH_TPS[cache]} dashboards/s and ${DASH_P50[cache]} ms with it (hit ratio $CACHE_RATIO); $CACHE_RYW."
say "PostgreSQL connections per node at the busiest moment (primary, then replicas):"
say "  read-only run: ${NODES[read]// /, }; mixed run: ${NODES[mixed]// /, }."
say "The seed's table, measured on this box (the seed's figures are the seed's; here everything shares $(nproc) cores):"
printf '%s\n' "$SEED_TABLE"
