#!/usr/bin/env bash
# read_scaling.sh — how far reads scale over streaming replicas through
# pgscale, and what read-your-writes costs (what `make bench-replicas` runs).
#
# Starts a throw-away PostgreSQL 15 primary with 2 streaming replicas
# (scripts/pgcluster.sh) and limits each node to half a core (see below), so
# that on a small machine the three behave like three separate servers. Then:
#
#  1. Read scaling: pgbench -S (scale BENCH_SCALE) for each protocol mode and
#     client count, one run after another:
#       a  direct      the primary alone, no proxy (one node)
#       b  replicas    pgscale, DATABASE_URL=primary, READ_REPLICA_URLS=the
#                      2 replicas, default settings: reads go to the replicas
#       c  all-nodes   as b with PGSCALE_READ_FROM_PRIMARY=on: 3 nodes read
#       d  one-node    pgscale with no replicas: the proxy's own overhead
#     tps, the ratio to a, pgscale's and pgbench's CPU time per transaction,
#     how often each node hit its CPU limit, and SHOW NODES reads per node
#     after b and c (the spread).
#  2. Read-your-writes: a write+read workload (UPDATE a random account, then
#     SELECT it, each statement its own transaction) through pgscale with the
#     replicas, under PGSCALE_CONSISTENCY=session, eventual and strict: tps,
#     the share of reads the replicas served (SHOW NODES) and the statements
#     the primary ran per transaction (pg_stat_statements, loaded for this
#     part only, and pg_stat_database.xact_commit).
#  3. The classifier's cost: build/classify_bench.
#
# CPU limit per node: a cgroup per PostgreSQL instance (postmaster and every
# process it has; backends it starts later inherit the cgroup), cgroup v2
# cpu.max when the unified hierarchy has the cpu controller, else cgroup v1
# cpu.cfs_quota_us / cpu.cfs_period_us under /sys/fs/cgroup/cpu. When
# neither can be written (not root, no cpu controller) the nodes run
# unlimited and the output says so: the scaling figures then mean little on
# one machine. pgscale and pgbench are not limited: they share what is left.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS   [10]               length of each pgbench run
#   BENCH_CLIENTS   ["16 64"]          client counts for part 1
#   BENCH_MODES     ["simple prepared"] pgbench -M protocol modes for part 1
#   BENCH_RW_CLIENTS [16]              clients for part 2 (simple protocol)
#   BENCH_JOBS      [2]                pgbench -j (threads)
#   BENCH_SCALE     [10]               pgbench -i -s
#   BENCH_NODE_CPU  [50]               each node's CPU limit, % of one core; 0: no limit
#   BENCH_KEEP      [0]                1 keeps the temp dir (logs, data) for a look
#   PGSCALE_BIN     [build/pgscale]    PGSCALE_WORKERS and PGSCALE_LOG_LEVEL pass through
# Quick smoke run: BENCH_SECONDS=3 BENCH_CLIENTS=16 BENCH_MODES=simple bench/read_scaling.sh
#
# Needs what scripts/install-deps.sh installs (postgresql-15 with its
# pg_stat_statements). Installs nothing itself. Loopback only; every server,
# proxy and cgroup it made is stopped and removed on exit, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PGCLUSTER=$ROOT/scripts/pgcluster.sh

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"16 64"}
BENCH_MODES=${BENCH_MODES:-"simple prepared"}
BENCH_RW_CLIENTS=${BENCH_RW_CLIENTS:-16}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_NODE_CPU=${BENCH_NODE_CPU:-50}
BENCH_KEEP=${BENCH_KEEP:-0}
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}

REPLICAS=2
NODES="primary replica1 replica2"
POOL_SIZE=20        # pgscale DB_POOL_SIZE (per node)
MAX_OVERFLOW=10     # pgscale DB_MAX_OVERFLOW
TARGET=2.7          # read tps with 3 nodes against one node
APP_USER=app APP_PASSWORD=secret APP_DB=app
FD_LIMIT=4096
CONFIGS="direct replicas all-nodes one-node"
declare -A CONFIG_TAG=([direct]=a [replicas]=b [all-nodes]=c [one-node]=d)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- checks
for m in $BENCH_MODES; do
    case $m in simple|extended|prepared) ;; *) die "unknown pgbench mode '$m' in BENCH_MODES" ;; esac
done
for c in $BENCH_CLIENTS $BENCH_RW_CLIENTS; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad client count '$c' in BENCH_CLIENTS or BENCH_RW_CLIENTS"
done
[[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ $BENCH_NODE_CPU =~ ^[0-9]+$ ]] || die "BENCH_NODE_CPU must be a percentage of one core (0: no limit)"
command -v pgbench >/dev/null || die "pgbench not found; run scripts/install-deps.sh"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 not found in $PGBIN; run scripts/install-deps.sh"
[ -x "$PGSCALE_BIN" ] || die "$PGSCALE_BIN not found; run make"
raise_fd_limit "$FD_LIMIT"

# ---------------------------------------------------------------- CPU limits
# One cgroup per node, pgscale-bench-<our pid>-<node> (bench/cgroup.sh).
CG_CPU=$BENCH_NODE_CPU CG_NAME=pgscale-bench-$$
# shellcheck source=bench/cgroup.sh
. "$ROOT/bench/cgroup.sh"

# ---------------------------------------------------------------- cleanup
TMP=
PGSCALE_PID=
cleanup() {  # on exit (on_exit): stop what was started
    stop_pid "$CHILD"
    stop_pid "$PGSCALE_PID"
    drop_workdir
    cg_cleanup
}
on_exit cleanup

# ---------------------------------------------------------------- helpers
children_cpu() {  # children_cpu VAR — user+system seconds of this shell's finished children so far
    # `times` must run in this shell, not in a pipe or $(...): a subshell
    # would report its own children, none.
    times >"$TMP/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TMP/times")"
}

machine_ticks() {  # "busy total" jiffies of the whole machine (/proc/stat)
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

show_nodes() {  # show_nodes PORT — "node state role reads writes" per node, from the admin console
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=10 timeout 30 \
        psql -X -w -A -F '|' -h 127.0.0.1 -p "$1" -U "$APP_USER" -d pgscale -c 'SHOW NODES' </dev/null |
        awk -F '|' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                    /^\([0-9]+ rows?\)$/ { next }
                    { print $col["node"], $col["state"], $col["role"], $col["reads"], $col["writes"] }'
}

# ---------------------------------------------------------------- set-up
TMP=$(mktemp -d /tmp/pgscale-rbench.XXXXXX)
chmod 711 "$TMP"          # the postgres user must reach $TMP/cluster
mkdir -p "$TMP/logs"
free_ports PG_PORT $((REPLICAS + 1))
free_port PGSCALE_PORT
PRIMARY_URL="postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB"
REPLICA_URLS="postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$((PG_PORT + 1))/$APP_DB,postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$((PG_PORT + 2))/$APP_DB"

log "== pgscale read scaling: pgbench -S, ${BENCH_SECONDS}s per run, clients: $BENCH_CLIENTS, modes: $BENCH_MODES"
log "   $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start; primary on :$PG_PORT, replicas on :$((PG_PORT + 1)) and :$((PG_PORT + 2)), pgscale on :$PGSCALE_PORT; work dir $TMP"

run_child "$PGCLUSTER" start "$TMP/cluster" "$PG_PORT" "$REPLICAS" >"$TMP/logs/pgcluster.log" 2>&1 \
    || { cat "$TMP/logs/pgcluster.log" >&2; die "could not start PostgreSQL"; }
log "-- PostgreSQL 15: a primary and $REPLICAS streaming replicas started"
cg_setup
if [ -n "$CG_KIND" ]; then
    for node in $NODES; do cg_limit "$node" "$TMP/cluster/$node"; done
else
    log "   !! NOT limiting the nodes' CPU: $CG_WHY."
    log "   !! The nodes share the whole machine, so the ratios below do not show what separate servers would do."
fi

log "-- loading pgbench -i -s $BENCH_SCALE on the primary"
PGPASSWORD=$APP_PASSWORD run_child timeout 900 pgbench -i -q -s "$BENCH_SCALE" \
    -h 127.0.0.1 -p "$PG_PORT" -U "$APP_USER" "$APP_DB" >"$TMP/logs/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$TMP/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
wait_until 120 replayed "$PG_PORT" "$REPLICAS" || die "the replicas did not replay the loaded data within 120 s"
# Warm every node's cache: each reads the whole accounts table once.
for ((r = 0; r <= REPLICAS; r++)); do
    psql_at $((PG_PORT + r)) "$APP_DB" 'SELECT count(*) FROM pgbench_accounts' >/dev/null
done

start_pgscale() {  # start_pgscale LABEL VAR=VALUE… — pgscale with these settings on PGSCALE_PORT
    local label=$1; shift
    # Only what the benchmark means to configure: a caller's replica,
    # consistency or Redis settings would change what is measured.
    env -u READ_REPLICA_URLS -u REDIS_URL -u PGSCALE_CONSISTENCY -u PGSCALE_READ_FROM_PRIMARY \
        -u PGSCALE_LOAD_BALANCE -u PGSCALE_MAX_REPLICA_LAG -u PGSCALE_MONITOR_INTERVAL \
        DATABASE_URL="$PRIMARY_URL" \
        PGSCALE_LISTEN="127.0.0.1:$PGSCALE_PORT" \
        PGSCALE_POOL_MODE=transaction \
        DB_POOL_SIZE=$POOL_SIZE DB_MAX_OVERFLOW=$MAX_OVERFLOW \
        "$@" "$PGSCALE_BIN" >"$TMP/logs/pgscale-$label.log" 2>&1 &
    PGSCALE_PID=$!
    if ! wait_port "$PGSCALE_PORT" 15 "$PGSCALE_PID" \
        || [ "$(psql_at "$PGSCALE_PORT" "$APP_DB" 'SELECT 1' 2>>"$TMP/logs/pgscale-$label.log")" != 1 ]; then
        tail -n 20 "$TMP/logs/pgscale-$label.log" >&2; die "pgscale ($label) did not come up"
    fi
    if [[ " $* " == *" READ_REPLICA_URLS="* ]]; then
        # Reads go to a replica only once the monitor has seen it up.
        wait_until 15 replicas_up || { show_nodes "$PGSCALE_PORT" >&2 || true; die "pgscale ($label): the replicas are not up in SHOW NODES after 15 s"; }
    fi
}
replicas_up() {
    [ "$(show_nodes "$PGSCALE_PORT" | awk '$1 != "primary" && $2 == "up" && $3 == "replica"' | wc -l)" -eq "$REPLICAS" ]
}
stop_pgscale() {
    if ! kill -0 "$PGSCALE_PID" 2>/dev/null; then
        log "   !! pgscale (pid $PGSCALE_PID) exited by itself; its last log lines:"
        tail -n 15 "$TMP/logs/pgscale-$1.log" | sed 's/^/      /'
    fi
    stop_pid "$PGSCALE_PID"; PGSCALE_PID=
}

# ---------------------------------------------------------------- one run
# pgbench's -T counts from before its clients connect; the allowance for
# connecting grows with the time per client measured in the last run.
declare -A CONN_MS=([direct]=25)
declare -A TPS=() PGS_US=() PGS_SPLIT=() PGB_US=() THR=() NODE_CORES=() OTHER=()

# bench_run KEY PORT LABEL PGBENCH-ARGS… — one bounded pgbench run; sets
# TPS, PGS_US (pgscale's CPU µs per transaction) and PGS_SPLIT (user+system),
# PGB_US (pgbench's), THR and NODE_CORES (per node: % of the CPU periods it
# was throttled in, cores it used) and OTHER (cores busy with work outside
# the benchmark) under KEY, and R_TXNS.
bench_run() {
    local key=$1 port=$2 label=$3; shift 3
    local out=$TMP/logs/pgbench-${key//\//-}.log rc=0 secs t0 t1 c0 c1 m0 m1 node
    local -A th0=() u0=()
    secs=$(awk -v c="$BENCH_CLIENTS_NOW" -v ms="${CONN_MS[$label]:-5}" -v s="$BENCH_SECONDS" \
        'BEGIN { a = c * ms * 1.5 / 1000; printf "%d", s + (a >= 1 ? a + 0.999 : 0) }')
    for node in $NODES; do th0[$node]=$(cg_throttle "$node") u0[$node]=$(cg_usage "$node"); done
    [ -z "$PGSCALE_PID" ] || t0=$(cpu_ticks "$PGSCALE_PID")
    children_cpu c0; m0=$(machine_ticks)
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=30 run_child timeout -k 5 $((secs + 90)) \
        pgbench -n -T "$secs" -j "$BENCH_JOBS" -h 127.0.0.1 -p "$port" -U "$APP_USER" "$@" "$APP_DB" \
        >"$out" 2>&1 || rc=$?
    children_cpu c1; m1=$(machine_ticks)
    R_TXNS=0
    if [ -n "$PGSCALE_PID" ]; then
        kill -0 "$PGSCALE_PID" 2>/dev/null || die "pgscale exited during $key; its log: $(tail -n 15 "$TMP/logs/pgscale-$label.log")"
        t1=$(cpu_ticks "$PGSCALE_PID")
    fi
    pgbench_figures "$out"
    if [ "$rc" -ne 0 ] || [ -z "$PB_TPS" ] || grep -q aborted "$out"; then
        TPS[$key]=ERR PGS_US[$key]=- PGB_US[$key]=- THR[$key]=- NODE_CORES[$key]=- OTHER[$key]=-
        log "   $(printf '%-28s' "$key")  FAILED (exit $rc): $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-110 || true)"
        return
    fi
    R_TXNS=$PB_TXNS
    [ -z "$PB_CONN_MS" ] || CONN_MS[$label]=$(awk -v m="$PB_CONN_MS" -v c="$BENCH_CLIENTS_NOW" 'BEGIN { printf "%.3f", m / c }')
    TPS[$key]=$(printf '%.0f' "$PB_TPS")
    PGS_US[$key]=- PGS_SPLIT[$key]=
    if [ -n "$PGSCALE_PID" ]; then
        # user time is pgscale's own code, system time mostly the kernel's TCP work
        read -r "PGS_US[$key]" "PGS_SPLIT[$key]" < <(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$PB_TXNS" \
            'BEGIN { split(a, x, " "); split(b, y, " "); u = (y[1] - x[1]) / hz * 1e6 / n; s = (y[2] - x[2]) / hz * 1e6 / n
                     printf "%.1f %.1fu+%.1fs\n", u + s, u, s }')
    fi
    PGB_US[$key]=$(awk -v a="$c0" -v b="$c1" -v n="$PB_TXNS" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
    local thr=
    for node in $NODES; do
        thr="$thr $(awk -v a="${th0[$node]}" -v b="$(cg_throttle "$node")" \
            'BEGIN { split(a, x, " "); split(b, y, " "); p = y[1] - x[1]; printf "%s", (p > 0 ? sprintf("%.0f", (y[2] - x[2]) * 100 / p) : "-") }')"
    done
    THR[$key]=${thr# }
    # Cores used over the run (elapsed time from the machine's jiffies):
    # each node, and what is left of the machine's busy time once the nodes,
    # pgscale and pgbench are taken out, i.e. other work on the machine.
    local cores='' ours u1
    for node in $NODES; do
        u1=$(cg_usage "$node")
        if [ -n "$u1" ] && [ -n "${u0[$node]}" ]; then
            cores="$cores $(awk -v a="${u0[$node]}" -v b="$u1" -v m0="$m0" -v m1="$m1" -v hz="$CLK_TCK" -v n="$(nproc)" \
                'BEGIN { split(m0, x, " "); split(m1, y, " "); printf "%.2f", (b - a) / 1e6 / ((y[2] - x[2]) / hz / n) }')"
        else
            cores="$cores -"
        fi
    done
    NODE_CORES[$key]=${cores# }
    ours=$(awk -v c="${NODE_CORES[$key]}" -v pgs="${PGS_US[$key]}" -v pgb="${PGB_US[$key]}" -v tps="$PB_TPS" -v n="$PB_TXNS" \
        -v m0="$m0" -v m1="$m1" -v hz="$CLK_TCK" -v np="$(nproc)" 'BEGIN {
        split(m0, x, " "); split(m1, y, " "); secs = (y[2] - x[2]) / hz / np; busy = (y[1] - x[1]) / hz / secs
        k = split(c, a, " "); nodes = 0; for (i = 1; i <= k; i++) { if (a[i] == "-") { print "-"; exit } nodes += a[i] }
        mine = nodes + (pgs == "-" ? 0 : pgs * n / 1e6 / secs) + pgb * n / 1e6 / secs
        printf "%.2f\n", busy - mine }')
    OTHER[$key]=$ours
    log "   $(printf '%-22s %6s tps  pgscale %5s µs/txn %-13s pgbench %5s µs/txn  node cores p/r1/r2 %-14s (throttled %% %-9s)  other work %5s cores' \
        "$key" "${TPS[$key]}" "${PGS_US[$key]}" "${PGS_SPLIT[$key]:+(${PGS_SPLIT[$key]})}" "${PGB_US[$key]}" "${NODE_CORES[$key]// //}" "${THR[$key]// //}" "${OTHER[$key]}")"
}

# ---------------------------------------------------------------- 1. read scaling
log ""
log "== 1. Read scaling: pgbench -n -S -j $BENCH_JOBS, each node limited to ${BENCH_NODE_CPU}% of a core$([ -n "$CG_KIND" ] && echo " ($CG_KIND cgroup)" || echo " (NOT limited: $CG_WHY)")"
log "   pgscale: transaction mode, DB_POOL_SIZE=$POOL_SIZE DB_MAX_OVERFLOW=$MAX_OVERFLOW per node, workers ${PGSCALE_WORKERS:-default}"
declare -A NODE_READS=()
for cfg in $CONFIGS; do
    port=$PGSCALE_PORT
    case $cfg in
        direct)    port=$PG_PORT
                   log "-- a. direct: the primary alone" ;;
        replicas)  log "-- b. pgscale, reads to the 2 replicas (default settings)"
                   start_pgscale "$cfg" READ_REPLICA_URLS="$REPLICA_URLS" ;;
        all-nodes) log "-- c. pgscale, PGSCALE_READ_FROM_PRIMARY=on: all 3 nodes read"
                   start_pgscale "$cfg" READ_REPLICA_URLS="$REPLICA_URLS" PGSCALE_READ_FROM_PRIMARY=on ;;
        one-node)  log "-- d. pgscale, no replicas: the proxy's own overhead"
                   start_pgscale "$cfg" ;;
    esac
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            BENCH_CLIENTS_NOW=$c
            bench_run "$cfg/$mode/$c" "$port" "$cfg" -S -M "$mode" -c "$c"
            sleep 1   # let the previous run's connections finish closing
        done
    done
    if [ "$cfg" != direct ]; then
        NODE_READS[$cfg]=$(show_nodes "$PGSCALE_PORT")
        stop_pgscale "$cfg"
    fi
done

log ""
log "== Results: pgbench -S, ${BENCH_SECONDS}s per run, $(nproc) cores shared by everything; nodes $([ -n "$CG_KIND" ] && echo "limited to ${BENCH_NODE_CPU}% of a core each" || echo "NOT limited")"
log "   vs a: tps against the primary alone; pgscale / pgbench: their own CPU time (user+system) per transaction;"
log "   node cores: CPU each node used (primary/replica1/replica2); throttled: % of its CPU periods in which it hit its limit;"
log "   other: cores busy with work outside this benchmark (the machine's busy time minus nodes, pgscale and pgbench)"
fmt='%-2s %-10s %-8s %7s %7s %6s %14s %-13s %14s %-15s %-11s %6s\n'
hfmt='%-2s %-10s %-8s %7s %7s %6s %15s %-13s %15s %-15s %-11s %6s\n'   # "µ" is two bytes wide for printf
# shellcheck disable=SC2059
printf "$hfmt" "" config mode clients tps "vs a" "pgscale µs/txn" "(user+sys)" "pgbench µs/txn" "node cores" "throttled %" "other"
for cfg in $CONFIGS; do
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            k=$cfg/$mode/$c
            vs=-; [ "$cfg" = direct ] || vs=$(ratio "${TPS[$k]}" "${TPS[direct/$mode/$c]}")
            # shellcheck disable=SC2059
            printf "$fmt" "${CONFIG_TAG[$cfg]}" "$cfg" "$mode" "$c" "${TPS[$k]}" "$vs" "${PGS_US[$k]}" "${PGS_SPLIT[$k]:--}" "${PGB_US[$k]}" "${NODE_CORES[$k]// //}" "${THR[$k]// //}" "${OTHER[$k]}"
        done
    done
done
for cfg in replicas all-nodes; do
    log ""
    log "   SHOW NODES after ${CONFIG_TAG[$cfg]} ($cfg), all its runs: transactions routed per node"
    printf '%s\n' "${NODE_READS[$cfg]}" | awk '{ n[NR] = $1; r[NR] = $4; w[NR] = $5; tot += $4 }
        END { for (i = 1; i <= NR; i++) printf "     %-9s reads %9d (%5.1f%%)  writes %d\n", n[i], r[i], tot ? r[i] * 100 / tot : 0, w[i] }'
done

log ""
log "== Read scaling against the target (>= ${TARGET}x one node)"
best_key='' best=0
for cfg in replicas all-nodes; do
    for mode in $BENCH_MODES; do
        for c in $BENCH_CLIENTS; do
            k=$cfg/$mode/$c
            r=$(ratio "${TPS[$k]}" "${TPS[direct/$mode/$c]}"); r=${r%x}
            [ "$r" != - ] || continue
            if awk -v r="$r" -v b="$best" 'BEGIN { exit !(r > b) }'; then best=$r best_key=$k; fi
        done
    done
done
if [ -z "$best_key" ]; then
    log "   n/a   no comparable run"
else
    v=$(awk -v r="$best" -v t="$TARGET" 'BEGIN { print (r >= t) ? "PASS" : "FAIL" }')
    log "   $v  best: ${best}x ($best_key: ${TPS[$best_key]} tps against ${TPS[direct/${best_key#*/}]} direct)"
    # Where the CPU went in that run: cores = µs per transaction × tps.
    IFS=/ read -r bcfg bmode bc <<<"$best_key"
    read -r pgs_cores pgb_cores < <(awk -v t="${TPS[$best_key]}" -v a="${PGS_US[$best_key]}" -v b="${PGB_US[$best_key]}" \
        'BEGIN { printf "%.2f %.2f\n", a * t / 1e6, b * t / 1e6 }')
    nodes_cores=$([ "$bcfg" = all-nodes ] && echo 3 || echo 2)
    log "   CPU in that run: pgscale ${pgs_cores} cores (${PGS_US[$best_key]} µs/txn: ${PGS_SPLIT[$best_key]}), pgbench ${pgb_cores} cores (${PGB_US[$best_key]} µs/txn),"
    log "   the $nodes_cores reading nodes at most $(awk -v n="$nodes_cores" -v p="$BENCH_NODE_CPU" 'BEGIN { printf "%.1f", n * p / 100 }') cores${CG_KIND:+ (throttled % p/r1/r2: ${THR[$best_key]// //})}; node cores ${NODE_CORES[$best_key]// //}; other work on the machine ${OTHER[$best_key]} cores of $(nproc)"
    # What the target would take at this run's CPU cost per transaction.
    awk -v d="${TPS[direct/$bmode/$bc]}" -v t="$TARGET" -v a="${PGS_US[$best_key]}" -v b="${PGB_US[$best_key]}" \
        -v n=3 -v p="$BENCH_NODE_CPU" -v cores="$(nproc)" 'BEGIN {
        need = d * t; c = need * (a + b) / 1e6
        printf "   %.1fx of %d tps is %.0f tps: at %.0f µs/txn for pgscale and pgbench together that is %.2f cores for them,\n", t, d, need, a + b, c
        printf "   beside %.1f cores for the 3 nodes: %.2f of the %d cores here%s\n", n * p / 100, c + n * p / 100, cores,
            (c + n * p / 100 > cores) ? " -- more than the machine has, so the client side, not the nodes, is the limit" : "" }' </dev/null
    pd=$(ratio "${TPS[one-node/$bmode/$bc]}" "${TPS[direct/$bmode/$bc]}")
    log "   pgscale alone in front of one node (d): $pd of direct at $bmode/$bc (${PGS_US[one-node/$bmode/$bc]} µs/txn of pgscale CPU)"
fi

# ---------------------------------------------------------------- 2. read-your-writes
log ""
log "== 2. Read-your-writes: UPDATE a random account, then SELECT it (autocommit, simple protocol), $BENCH_RW_CLIENTS clients, replicas as in b"
cat >"$TMP/rw.sql" <<EOF
\\set aid random(1, $((100000 * BENCH_SCALE)))
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF
# pg_stat_statements counts what the primary runs; it needs a restart to
# load, so it is loaded for this part only (part 1 ran without it).
PGSS=1
as_pg=(); [ "$(id -u)" -ne 0 ] || as_pg=(runuser -u postgres --)   # pg_ctl refuses to run as root
(cd / && exec timeout 120 "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$TMP/cluster/primary" -w -t 60 -m fast \
    -l "$TMP/cluster/primary.log" -o "-c shared_preload_libraries=pg_stat_statements" restart) \
    >"$TMP/logs/restart.log" 2>&1 </dev/null || { cat "$TMP/logs/restart.log" >&2; die "could not restart the primary"; }
cg_limit primary "$TMP/cluster/primary"
psql_su "$PG_PORT" "$APP_DB" 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null 2>>"$TMP/logs/pgss.log" || PGSS=
[ -n "$PGSS" ] || log "   pg_stat_statements not available ($(head -n1 "$TMP/logs/pgss.log")); xact_commit only"
wait_until 60 replayed "$PG_PORT" "$REPLICAS" || die "the replicas do not stream after the primary's restart"

xact_commit() { psql_su "$PG_PORT" postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$APP_DB'"; }
no_app_backends() {
    [ "$(psql_su "$PG_PORT" postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = '$APP_DB' AND usename = '$APP_USER'")" = 0 ]
}
BENCH_CLIENTS_NOW=$BENCH_RW_CLIENTS
for cons in session eventual strict; do
    # A backend publishes its counters to pg_stat_database only now and
    # then, and surely when it exits: read xact_commit with no pgscale
    # running (its start-up queries and the monitor's checks are included).
    x0=$(xact_commit)
    start_pgscale "rw-$cons" READ_REPLICA_URLS="$REPLICA_URLS" PGSCALE_CONSISTENCY=$cons
    [ -z "$PGSS" ] || psql_su "$PG_PORT" "$APP_DB" 'SELECT pg_stat_statements_reset()' >/dev/null
    before=$(show_nodes "$PGSCALE_PORT")
    bench_run "rw/$cons" "$PGSCALE_PORT" "rw-$cons" -f "$TMP/rw.sql" -M simple -c "$BENCH_RW_CLIENTS"
    after=$(show_nodes "$PGSCALE_PORT")
    stop_pgscale "rw-$cons"
    wait_until 10 no_app_backends || true
    x1=$(xact_commit)
    [ "$R_TXNS" -gt 0 ] || continue
    log "     reads and writes routed per node during the run (SHOW NODES after minus before):"
    paste -d' ' <(printf '%s\n' "$before") <(printf '%s\n' "$after") | awk -v n="$R_TXNS" '
        { node[NR] = $1; r[NR] = $9 - $4; w[NR] = $10 - $5; tot += $9 - $4; if ($1 != "primary") rep += $9 - $4 }
        END { for (i = 1; i <= NR; i++) printf "       %-9s reads %8d  writes %8d\n", node[i], r[i], w[i]
              printf "       reads on the replicas: %.1f%% of %d (pgbench transactions: %d, each one read and one write)\n", tot ? rep * 100 / tot : 0, tot, n }'
    log "     primary, pg_stat_database.xact_commit: $((x1 - x0)) commits, $(awk -v d=$((x1 - x0)) -v n="$R_TXNS" 'BEGIN { printf "%.2f", d / n }') per pgbench transaction (pgscale's start-up and the monitor's checks included)"
    if [ -n "$PGSS" ]; then
        log "     primary, pg_stat_statements: statements per pgbench transaction"
        psql_su "$PG_PORT" "$APP_DB" "SELECT calls, regexp_replace(query, '\\s+', ' ', 'g')
              FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$APP_DB')
              ORDER BY calls DESC LIMIT 6" | awk -F '|' -v n="$R_TXNS" '
            { printf "       %6.3f  %8d  %s\n", $1 / n, $1, substr($2, 1, 90) }'
    fi
done

# ---------------------------------------------------------------- 3. classifier
log ""
log "== 3. The classifier's cost: build/classify_bench (per statement text; a hit is the per-worker cache)"
if [ -x "$ROOT/build/classify_bench" ]; then
    run_child timeout 300 "$ROOT/build/classify_bench" >"$TMP/logs/classify_bench.log" 2>&1 \
        || warn "classify_bench failed"
    sed 's/^/   /' "$TMP/logs/classify_bench.log"
else
    log "   build/classify_bench not found (run make)"
fi
log ""
log "   load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
