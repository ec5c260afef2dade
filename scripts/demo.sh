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
# Needs build/pgscale (the Makefile builds it) and what scripts/install-deps.sh
# installs. Builds and installs nothing. Loopback only; no stdin needed.
#
# Environment: DEMO_CLIENTS [200], DEMO_SECONDS [15] per run,
#              DEMO_KEEP=1 keeps the temp dir, PGSCALE_BIN [build/pgscale].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}
PGCLUSTER=$ROOT/scripts/pgcluster.sh
DEMO_CLIENTS=${DEMO_CLIENTS:-200}
DEMO_SECONDS=${DEMO_SECONDS:-15}
DEMO_KEEP=${DEMO_KEEP:-0}
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
indent() { sed 's/^/     /'; }

[ -x "$PGSCALE_BIN" ] || die "$PGSCALE_BIN not found; build it first (make)"
[ -x /usr/lib/postgresql/15/bin/initdb ] || die "PostgreSQL 15 is missing; run scripts/install-deps.sh"
command -v pgbench >/dev/null || die "pgbench is missing; run scripts/install-deps.sh"
[[ $DEMO_CLIENTS =~ ^[1-9][0-9]*$ && $DEMO_SECONDS =~ ^[1-9][0-9]*$ ]] || die "DEMO_CLIENTS and DEMO_SECONDS must be positive integers"
HAVE_REDIS=1
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || HAVE_REDIS=0

# DEMO_CLIENTS sockets in pgbench; pgscale raises its own limit.
hard=$(ulimit -Hn)
want_fds=$((DEMO_CLIENTS + 256))
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want_fds" ]; then ulimit -Sn "$want_fds" 2>/dev/null || true; fi

# ------------------------------------------------------------ clean-up
TMP='' SCALE_PID='' CACHE_PID='' REDIS_PID='' MONITOR_PID='' CHILD='' CLEANED=0
stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# The traps write to the original stdout/stderr (fds 3 and 4): a signal can
# arrive inside run_child, whose output is redirected to a pgbench log.
exec 3>&1 4>&2
cleanup() {
    local rc=$?
    exec 1>&3 2>&4
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    trap '' INT TERM
    printf '\n%s== Stopping everything%s\n' "$B" "$R"
    stop_pid "$MONITOR_PID"
    stop_pid "$CHILD"
    stop_pid "$SCALE_PID"
    stop_pid "$CACHE_PID"
    stop_pid "$REDIS_PID"
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        "$PGCLUSTER" stop "$TMP/cluster" 2>&1 | indent || true
        if [ "$DEMO_KEEP" = 1 ]; then say "kept $TMP (logs in $TMP/logs)"; else rm -rf "$TMP"; fi
    fi
    [ "$rc" -eq 0 ] && say "done." || say "demo failed (exit $rc)."
    exit "$rc"
}
trap cleanup EXIT
trap 'printf "\ndemo: interrupted\n" >&4; exit 130' INT
trap 'exit 143' TERM

run_child() {  # in the background, so Ctrl-C reaches the trap at once
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
next_port=$((20000 + RANDOM % 10000))
free_ports() {  # free_ports VAR N — VAR = first of N consecutive free ports
    local n=$2 i ok tries=0
    while :; do
        ok=1
        for ((i = 0; i < n; i++)); do port_free $((next_port + i)) || { ok=0; break; }; done
        [ "$ok" = 1 ] && break
        next_port=$((next_port + i + 1)); tries=$((tries + 1))
        [ "$tries" -lt 1000 ] || die "no free TCP ports found"
    done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + n))
}
wait_port() {  # wait_port PORT SECONDS PID
    local deadline=$((SECONDS + $2))
    until timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

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
free_ports SCALE_PORT 1
free_ports CACHE_PORT 1
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
CACHE_VARS=("${ENV_VARS[@]/PGSCALE_LISTEN=*/PGSCALE_LISTEN=127.0.0.1:$CACHE_PORT}" PGSCALE_CACHE=on PGSCALE_CACHE_TTL=300s)
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
READ_SQL="SELECT sum(amount) FROM orders WHERE region = 1"
before=$(PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -At -h 127.0.0.1 -p "$CACHE_PORT" -U "$APP_USER" "$APP_DB" -c "$READ_SQL" </dev/null)
for g in $(seq 200); do
    printf '%s\n' "UPDATE orders SET amount = amount + 1 WHERE id = 8;" "$READ_SQL;" "$READ_SQL;"
done >"$TMP/ryw.sql"
h0=$(cache_col hits)
PGPASSWORD=$APP_PASSWORD timeout 120 psql -X -w -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CACHE_PORT" \
    -U "$APP_USER" -f "$TMP/ryw.sql" "$APP_DB" </dev/null >"$TMP/logs/ryw.out" 2>&1 || true
h1=$(cache_col hits)
STALE=$(grep -v '^UPDATE' "$TMP/logs/ryw.out" | awk -v b="$before" '{ want = b + int((NR + 1) / 2) } $1 + 0 != want { bad++ } END { print NR == 400 ? bad + 0 : "incomplete (" NR " reads)" }')
if [ "$STALE" = 0 ]; then
    CACHE_RYW="200 rounds of write then read twice through the cached pgscale: 400 reads, 0 stale, $((h1 - h0)) served from the cache"
else
    CACHE_RYW="the write-then-read check found stale or missing reads: $STALE (see $TMP/logs/ryw.out)"
fi
say "$CACHE_RYW"
say "${B}SHOW CACHE${R} (total): $(cache_admin 'SHOW CACHE' 2>/dev/null | awk -F'|' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    NR == 2 { printf "hits %s, misses %s, hit_ratio %s, entries %s (%s bytes), invalidations %s, writes that moved table versions %s", $c["hits"], $c["misses"], $c["hit_ratio"], $c["entries"], $c["bytes"], $c["invalidations"], $c["bumps"] }')"
stop_pid "$CACHE_PID"; CACHE_PID=

step "8. What pgscale saw (admin console: PGPASSWORD=$APP_PASSWORD psql -h 127.0.0.1 -p $SCALE_PORT -U $ADMIN_USER -d pgscale)"
for cmd in 'SHOW NODES' 'SHOW POOLS' 'SHOW STATS' 'SHOW SERVERS'; do
    say "${B}$cmd${R}"
    admin "$cmd" 2>&1 | indent || true
done

# statements per node after the two runs, before the steps below change them
NODE_SUMMARY=$(PGPASSWORD=$APP_PASSWORD timeout 20 psql -X -w -At -F '|' -h 127.0.0.1 \
    -p "$SCALE_PORT" -U "$ADMIN_USER" -d pgscale -c 'SHOW NODES' </dev/null 2>/dev/null |
    awk -F'|' 'NF >= 10 { printf "  %s: %s reads, %s writes\n", $1, $9, $10 }')

step "9. A lagging replica: replica2 applies WAL 30 s late; pgscale stops reading from it"
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
su_psql "$((PG_PORT + 2))" "ALTER SYSTEM RESET recovery_min_apply_delay" >/dev/null &&
    su_psql "$((PG_PORT + 2))" "SELECT pg_reload_conf()" >/dev/null

step "10. Failover: the primary is killed (pg_ctl stop -m immediate); pgscale promotes the most advanced replica"
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
say "Failover: $FAILOVER_MSG."
say "Result cache (the dashboard, 16 clients): ${DASH_TPS[nocache]} dashboards/s and ${DASH_P50[nocache]} ms median without it,"
say "  ${DASH_TPS[cache]} dashboards/s and ${DASH_P50[cache]} ms with it (hit ratio $CACHE_RATIO); $CACHE_RYW."
say "PostgreSQL connections per node at the busiest moment (primary, then replicas):"
say "  read-only run: ${NODES[read]// /, }; mixed run: ${NODES[mixed]// /, }."
