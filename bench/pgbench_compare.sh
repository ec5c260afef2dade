#!/usr/bin/env bash
# pgbench_compare.sh — pgscale side by side with PgBouncer and direct
# PostgreSQL (what `make bench` runs).
#
# Starts a throw-away PostgreSQL 15 (scripts/pgcluster.sh), loads
# `pgbench -i -s 10`, starts PgBouncer and pgscale in transaction mode with
# the same pool size, then runs the read-only pgbench workload (-S) through
# each, for every protocol mode and client count. Prints one table of tps,
# ratios and the proxy's CPU time per transaction (user and system), then the
# idle-client memory test (bench/idle_clients.py: 10,000 clients that log in
# and sit idle), then the figures against pgscale's targets. Everything it
# started is stopped and removed on exit, Ctrl-C included.
#
# Targets: `direct` is PostgreSQL itself; `pgbouncer` and `pgscale` reach
# the server over TCP; `pgbouncer-unix` and `pgscale-unix` are a second
# PgBouncer and pgscale that reach it over its Unix socket (the cluster then
# gets a socket directory). pgbench always reaches every target over loopback
# TCP: only the proxy-to-server leg differs. The Unix-socket comparison is
# `make bench-unix`, i.e.
#   BENCH_TARGETS="direct pgbouncer pgbouncer-unix pgscale pgscale-unix" \
#   BENCH_CLIENTS="16 64" BENCH_IDLE_CLIENTS=0 bench/pgbench_compare.sh
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]                 length of each pgbench run
#   BENCH_CLIENTS ["1 16 64 256 1000"] client counts
#   BENCH_MODES   ["simple prepared"]  pgbench -M protocol modes
#   BENCH_TARGETS ["direct pgbouncer pgscale"]  any of direct pgbouncer
#                                      pgbouncer-unix pgscale pgscale-unix
#   BENCH_JOBS    [2]                  pgbench -j (threads)
#   BENCH_SCALE   [10]                 pgbench -i -s
#   BENCH_IDLE_CLIENTS [10000]         idle-client test size; 0 skips it
#   BENCH_KEEP    [0]                  1 keeps the temp dir (logs, data) for a look
#   BENCH_RESULTS [unset]              also write the table as TSV (one row
#                                      per mode, client count and target) to this file
#   PGSCALE_BIN   [build/pgscale]      PGSCALE_WORKERS and PGSCALE_LOG_LEVEL pass through
# Quick smoke run: BENCH_SECONDS=3 BENCH_CLIENTS="16 64" bench/pgbench_compare.sh
#
# Needs what scripts/install-deps.sh installs (postgresql-15, pgbouncer,
# python3). Installs nothing itself. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PYTHON=/usr/bin/python3
PGCLUSTER=$ROOT/scripts/pgcluster.sh

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 16 64 256 1000"}
BENCH_MODES=${BENCH_MODES:-"simple prepared"}
BENCH_TARGETS=${BENCH_TARGETS:-"direct pgbouncer pgscale"}
BENCH_JOBS=${BENCH_JOBS:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-10000}
BENCH_KEEP=${BENCH_KEEP:-0}
PGSCALE_BIN=${PGSCALE_BIN:-$ROOT/build/pgscale}

POOL_SIZE=20        # PgBouncer default_pool_size and pgscale DB_POOL_SIZE
MAX_OVERFLOW=10     # pgscale DB_MAX_OVERFLOW
APP_USER=app APP_PASSWORD=secret APP_DB=app
FD_LIMIT=20000
# Every target, in the order runs and table rows go.
ALL_TARGETS="direct pgbouncer pgbouncer-unix pgscale pgscale-unix"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- checks
for t in $BENCH_TARGETS; do
    case $t in direct|pgbouncer|pgbouncer-unix|pgscale|pgscale-unix) ;;
        *) die "unknown target '$t' in BENCH_TARGETS (known: $ALL_TARGETS)" ;; esac
done
for m in $BENCH_MODES; do
    case $m in simple|extended|prepared) ;; *) die "unknown pgbench mode '$m' in BENCH_MODES" ;; esac
done
for c in $BENCH_CLIENTS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad client count '$c' in BENCH_CLIENTS"; done
[[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
command -v pgbench >/dev/null || die "pgbench not found; run scripts/install-deps.sh"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 not found in $PGBIN; run scripts/install-deps.sh"
[ -x "$PYTHON" ] || die "$PYTHON not found"
want() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }
if { want pgbouncer || want pgbouncer-unix; } && ! command -v pgbouncer >/dev/null; then
    warn "pgbouncer not found (scripts/install-deps.sh installs it); skipping it"
    kept=
    for t in $BENCH_TARGETS; do [[ $t == pgbouncer* ]] || kept="$kept $t"; done
    BENCH_TARGETS=$kept
fi
leg() {  # leg TARGET — how the target reaches PostgreSQL
    case $1 in direct) echo - ;; *-unix) echo unix ;; *) echo tcp ;; esac
}
bouncer_of() {  # bouncer_of TARGET — the PgBouncer on the same server leg
    case $1 in pgscale) echo pgbouncer ;; pgscale-unix) echo pgbouncer-unix ;; *) echo "" ;; esac
}

# pgbench with 1000 clients, and 10,000 idle clients, need many descriptors;
# children (pgbench, PgBouncer, the idle-client script) inherit this limit.
raise_fd_limit "$FD_LIMIT"

# ---------------------------------------------------------------- cleanup
TMP=
declare -A PID=() PORT=()   # per proxy target: its process and listening port

cleanup() {  # on exit (on_exit): stop what was started
    stop_pid "$CHILD"
    local t
    for t in "${!PID[@]}"; do stop_pid "${PID[$t]}"; done
    drop_workdir
}
on_exit cleanup

# ---------------------------------------------------------------- set-up
TMP=$(mktemp -d /tmp/pgscale-bench.XXXXXX)
chmod 711 "$TMP"          # the postgres user must reach $TMP/cluster and $TMP/pgbouncer
mkdir -p "$TMP/logs"

free_port PG_PORT
PORT[direct]=$PG_PORT
for t in $ALL_TARGETS; do
    [ "$t" != direct ] && want "$t" && free_port "PORT[$t]"
done
# The -unix targets need the server's socket: a short directory (a socket
# path holds at most 107 bytes) that root-run pgscale and postgres-run
# PgBouncer both reach ($TMP is mode 711).
SOCK_DIR=
if want pgbouncer-unix || want pgscale-unix; then SOCK_DIR=$TMP/sock; fi

log "== pgscale benchmark: pgbench -S, ${BENCH_SECONDS}s per run, clients: $BENCH_CLIENTS, modes: $BENCH_MODES"
ports="PostgreSQL on :$PG_PORT${SOCK_DIR:+ and $SOCK_DIR/.s.PGSQL.$PG_PORT}"
for t in $ALL_TARGETS; do [ -n "${PORT[$t]:-}" ] && [ "$t" != direct ] && ports="$ports, $t on :${PORT[$t]}"; done
log "   $(nproc) cores; $ports; work dir $TMP"

PGCLUSTER_SOCKET_DIR=$SOCK_DIR "$PGCLUSTER" start "$TMP/cluster" "$PG_PORT" 0 >"$TMP/logs/pgcluster.log" 2>&1 \
    || { cat "$TMP/logs/pgcluster.log" >&2; die "could not start PostgreSQL"; }
log "-- PostgreSQL 15 started${SOCK_DIR:+ (also on its Unix socket)}; loading pgbench -i -s $BENCH_SCALE"
PGPASSWORD=$APP_PASSWORD run_child timeout 600 pgbench -i -q -s "$BENCH_SCALE" \
    -h 127.0.0.1 -p "$PG_PORT" -U "$APP_USER" "$APP_DB" >"$TMP/logs/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$TMP/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }

declare -A AVAILABLE=([direct]=1) DEAD=()

start_pgbouncer() {  # start_pgbouncer TARGET HOST — HOST: 127.0.0.1 or the socket directory
    local t=$1 host=$2 dir=$TMP/$1 how
    how=$([ "$host" = 127.0.0.1 ] && echo "server over TCP" || echo "server over the Unix socket")
    # Clients log in with trust (as they do with pgscale); the userlist gives
    # PgBouncer the app password for its own scram-sha-256 login to the server.
    pgbouncer_launch "$dir" "${PORT[$t]}" "$host" "$PG_PORT" "$POOL_SIZE" "$TMP/logs/$t.out" \
        "max_client_conn = 12000" "ignore_startup_parameters = extra_float_digits" \
        "log_connections = 0" "log_disconnections = 0"
    PID[$t]=$BOUNCER_PID
    if wait_port "${PORT[$t]}" 15 "${PID[$t]}" && [ "$(psql_at "${PORT[$t]}" "$APP_DB" 'SELECT 1' 2>>"$TMP/logs/$t.out")" = 1 ]; then
        AVAILABLE[$t]=1
        log "-- $t: PgBouncer $(pgbouncer --version | head -n1 | awk '{print $2}') started (transaction mode, default_pool_size $POOL_SIZE, $how), pid ${PID[$t]}"
    else
        warn "$t (PgBouncer) did not come up; skipping it. Log:"
        tail -n 20 "$TMP/logs/$t.out" "$dir/pgbouncer.log" >&2 2>/dev/null || true
        stop_pid "${PID[$t]}"; unset "PID[$t]"
    fi
}

start_pgscale() {  # start_pgscale TARGET DATABASE_URL
    local t=$1 url=$2 how
    how=$([[ $t == *-unix ]] && echo "server over the Unix socket" || echo "server over TCP")
    # Only what the benchmark means to configure; a caller's replica or
    # Redis settings would change what is measured.
    env -u READ_REPLICA_URLS -u REDIS_URL \
        DATABASE_URL="$url" \
        PGSCALE_LISTEN="127.0.0.1:${PORT[$t]}" \
        PGSCALE_POOL_MODE=transaction \
        DB_POOL_SIZE=$POOL_SIZE DB_MAX_OVERFLOW=$MAX_OVERFLOW \
        PGSCALE_MAX_CLIENT_CONN=12000 \
        "$PGSCALE_BIN" >"$TMP/logs/$t.log" 2>&1 &
    PID[$t]=$!
    if wait_port "${PORT[$t]}" 15 "${PID[$t]}" && [ "$(psql_at "${PORT[$t]}" "$APP_DB" 'SELECT 1' 2>>"$TMP/logs/$t.log")" = 1 ]; then
        AVAILABLE[$t]=1
        log "-- $t: pgscale started (transaction mode, DB_POOL_SIZE=$POOL_SIZE DB_MAX_OVERFLOW=$MAX_OVERFLOW, workers ${PGSCALE_WORKERS:-default}, $how), pid ${PID[$t]}"
    else
        warn "$t (pgscale) did not come up or does not answer SELECT 1; skipping it. Log:"
        tail -n 20 "$TMP/logs/$t.log" >&2 || true
        stop_pid "${PID[$t]}"; unset "PID[$t]"
    fi
}

want pgbouncer && start_pgbouncer pgbouncer 127.0.0.1
want pgbouncer-unix && start_pgbouncer pgbouncer-unix "$SOCK_DIR"
if want pgscale || want pgscale-unix; then
    if [ ! -x "$PGSCALE_BIN" ]; then
        warn "$PGSCALE_BIN not found (run make); skipping pgscale"
    else
        want pgscale && start_pgscale pgscale \
            "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB"
        want pgscale-unix && start_pgscale pgscale-unix \
            "postgresql://$APP_USER:$APP_PASSWORD@/$APP_DB?host=$SOCK_DIR&port=$PG_PORT"
    fi
fi

target_port() { echo "${PORT[$1]}"; }
target_pid() { echo "${PID[$1]:-}"; }

# A short run so the first measured run does not pay for cold caches.
PGPASSWORD=$APP_PASSWORD run_child timeout 60 pgbench -n -S -c 4 -j 2 -T 2 \
    -h 127.0.0.1 -p "$PG_PORT" -U "$APP_USER" "$APP_DB" >"$TMP/logs/warmup.log" 2>&1 || true

# ---------------------------------------------------------------- pgbench runs
declare -A TPS CPU USR SYS
NOTES=()

proxy_died() {  # proxy_died TARGET WHEN — say so once, with the end of its log
    AVAILABLE[$1]='' DEAD[$1]=dead
    local pid st=0; pid=$(target_pid "$1")
    wait "$pid" 2>/dev/null || st=$?
    NOTES+=("$1 exited $2 (wait status $st); its last log lines were printed above")
    log "   !! $1 (pid $pid) is gone ($2, wait status $st). Last lines of its log:"
    tail -n 15 "$TMP/logs/$1.log" "$TMP/logs/$1.out" "$TMP/$1/pgbouncer.log" 2>/dev/null | sed 's/^/      /' || true
}

# pgbench's -T counts from before its clients connect, and 1000 direct
# scram-sha-256 logins take many seconds on 2 cores: without an allowance the
# measured window would shrink to nothing. So -T is BENCH_SECONDS plus the
# connection time expected from the last run against the same target
# (milliseconds per client; first guesses below), with 50% to spare.
declare -A CONN_MS=([direct]=25 [pgbouncer]=5 [pgbouncer-unix]=5 [pgscale]=5 [pgscale-unix]=5)

run_one() {  # run_one MODE CLIENTS TARGET
    local mode=$1 c=$2 t=$3 key="$1/$2/$3"
    local port pid out jobs t0 t1 txns tps conn_ms secs window rc=0
    port=$(target_port "$t"); pid=$(target_pid "$t")
    out="$TMP/logs/pgbench-$mode-$c-$t.log"
    jobs=$BENCH_JOBS; [ "$c" -lt "$jobs" ] && jobs=$c
    USR[$key]=- SYS[$key]=-
    if [ -z "${AVAILABLE[$t]:-}" ]; then TPS[$key]=${DEAD[$t]:--}; CPU[$key]=-; return; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        proxy_died "$t" "before $mode/$c"
        TPS[$key]=dead; CPU[$key]=-; return
    fi
    secs=$(awk -v c="$c" -v ms="${CONN_MS[$t]}" -v s="$BENCH_SECONDS" \
        'BEGIN { a = c * ms * 1.5 / 1000; printf "%d", s + (a >= 1 ? a + 0.999 : 0) }')
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    # Bounded: the run itself, plus time to open (and time out) the connections.
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=30 run_child \
        timeout -k 5 $((secs + 90)) \
        pgbench -n -S -M "$mode" -c "$c" -j "$jobs" -T "$secs" \
        -h 127.0.0.1 -p "$port" -U "$APP_USER" "$APP_DB" >"$out" 2>&1 || rc=$?
    if [ -n "$pid" ]; then
        if kill -0 "$pid" 2>/dev/null; then
            t1=$(cpu_ticks "$pid")
        else
            proxy_died "$t" "during $mode/$c"
            t1=$t0
        fi
    fi
    pgbench_figures "$out"
    tps=$PB_TPS txns=$PB_TXNS conn_ms=$PB_CONN_MS
    if [ -n "$conn_ms" ]; then
        CONN_MS[$t]=$(awk -v m="$conn_ms" -v c="$c" 'BEGIN { printf "%.3f", m / c }')
        window=$(awk -v m="$conn_ms" -v s="$secs" 'BEGIN { printf "%.1f", s - m / 1000 }')
    fi
    if [ -z "$tps" ] && [ "${txns:-}" = 0 ]; then
        [ "$rc" -ne 0 ] || rc=1
        echo "error: no transaction finished within -T $secs (connecting took ${conn_ms:-?} ms)" >>"$out"
    fi
    if [ "$rc" -ne 0 ] || grep -q 'aborted' "$out" || [ -z "$tps" ]; then
        local why
        why=$(grep -m1 -iE 'error|fatal|abort' "$out" | sed 's/^pgbench: //' | cut -c1-110 || true)
        [ "$rc" -eq 124 ] && why="timed out; ${why}"
        TPS[$key]=ERR; CPU[$key]=-
        if [[ $t == pgbouncer* ]] && [ "$mode" = prepared ] && [[ $why == *"prepared statement"* ]]; then
            why="$why — PgBouncer before 1.21 cannot keep protocol-level prepared statements in transaction mode"
        fi
        NOTES+=("$t $mode $c clients: pgbench failed (exit $rc): ${why:-see $out}")
        log "   $(printf '%-8s %5s clients  %-14s' "$mode" "$c" "$t")  FAILED (exit $rc) ${why}"
        return
    fi
    TPS[$key]=$(printf '%.0f' "$tps")
    if [ -n "$pid" ] && [ "${txns:-0}" -gt 0 ]; then
        # user time (the proxy's own code) and system time (mostly the
        # kernel's socket work: what a Unix-socket server leg changes), each
        # per transaction
        local cpu usr sys
        read -r cpu usr sys < <(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$txns" \
            'BEGIN { split(a, x, " "); split(b, y, " "); u = (y[1] - x[1]) / hz * 1e6 / n; s = (y[2] - x[2]) / hz * 1e6 / n
                     printf "%.2f %.2f %.2f\n", u + s, u, s }')
        CPU[$key]=$cpu USR[$key]=$usr SYS[$key]=$sys
    else
        CPU[$key]=- USR[$key]=- SYS[$key]=-
    fi
    log "   $(printf '%-8s %5s clients  %-14s' "$mode" "$c" "$t")  $(printf '%8s tps' "${TPS[$key]}")$( [ "${CPU[$key]}" != - ] && printf '  %6s µs proxy CPU/txn (%s user + %s sys)' "${CPU[$key]}" "${USR[$key]}" "${SYS[$key]}")$(printf '   (%s s measured after %.1f s connecting)' "${window:-?}" "$(awk -v m="${conn_ms:-0}" 'BEGIN { print m / 1000 }')")"
    if [ -n "${window:-}" ] && awk -v w="$window" -v s="$BENCH_SECONDS" 'BEGIN { exit !(w < 0.7 * s) }'; then
        NOTES+=("$t $mode $c clients: measured over only ${window}s (connecting took $((${conn_ms%.*} / 1000))s)")
    fi
}

log ""
log "-- pgbench -n -S -j $BENCH_JOBS -T $BENCH_SECONDS (tps without initial connection time)"
for mode in $BENCH_MODES; do
    for c in $BENCH_CLIENTS; do
        for t in $ALL_TARGETS; do
            want "$t" || { TPS["$mode/$c/$t"]=-; CPU["$mode/$c/$t"]=-; USR["$mode/$c/$t"]=-; SYS["$mode/$c/$t"]=-; continue; }
            run_one "$mode" "$c" "$t"
            sleep 1   # let the previous run's connections finish closing
        done
    done
done

log ""
log "== Results: pgbench -S, ${BENCH_SECONDS}s per run, pool size $POOL_SIZE (pgscale +$MAX_OVERFLOW overflow), $(nproc) cores shared by everything"
log "   server: how the target reaches PostgreSQL (pgbench reaches every target over TCP);"
log "   vs pgbouncer: against the PgBouncer with the same server leg; vs tcp: against the same proxy"
log "   with its server over TCP; CPU: the proxy's own user+system time per transaction (/proc/PID/stat)"
fmt='%-8s %7s  %-14s %6s %8s %9s %12s %7s %12s %9s %9s\n'
hfmt='%-8s %7s  %-14s %6s %8s %9s %12s %7s %13s %10s %10s\n'   # "µ" is two bytes wide for printf
# shellcheck disable=SC2059
printf "$hfmt" mode clients target server tps "vs direct" "vs pgbouncer" "vs tcp" "CPU µs/txn" "user µs" "sys µs"
RESULTS_TSV=$TMP/results.tsv
printf 'mode\tclients\ttarget\tserver_leg\ttps\ttps_vs_direct\ttps_vs_pgbouncer\ttps_vs_tcp\tcpu_us_per_txn\tuser_us_per_txn\tsys_us_per_txn\n' >"$RESULTS_TSV"
for mode in $BENCH_MODES; do
    for c in $BENCH_CLIENTS; do
        for t in $ALL_TARGETS; do
            want "$t" || continue
            k=$mode/$c/$t tps=${TPS[$mode/$c/$t]} vd=- vb=- vt=-
            [ "$t" = direct ] || vd=$(ratio "$tps" "${TPS[$mode/$c/direct]}")
            b=$(bouncer_of "$t")
            [ -z "$b" ] || vb=$(ratio "$tps" "${TPS[$mode/$c/$b]}")
            [[ $t != *-unix ]] || vt=$(ratio "$tps" "${TPS[$mode/$c/${t%-unix}]}")
            # shellcheck disable=SC2059
            printf "$fmt" "$mode" "$c" "$t" "$(leg "$t")" "$tps" "$vd" "$vb" "$vt" "${CPU[$k]}" "${USR[$k]}" "${SYS[$k]}"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$c" "$t" "$(leg "$t")" "$tps" \
                "${vd%x}" "${vb%x}" "${vt%x}" "${CPU[$k]}" "${USR[$k]}" "${SYS[$k]}" >>"$RESULTS_TSV"
        done
    done
done
for n in "${NOTES[@]+"${NOTES[@]}"}"; do log "   note: $n"; done

# ---------------------------------------------------------------- idle clients
declare -A IDLE_KIB
if [ "$BENCH_IDLE_CLIENTS" -gt 0 ]; then
    log ""
    log "== Idle clients: $BENCH_IDLE_CLIENTS connections that log in and sit idle; proxy RSS before and after"
    # Measured as a user would see it: each proxy started fresh (the ones
    # above are stopped first, so the runs do not share the machine), the
    # clients opened by a separate process; see bench/idle_clients.py.
    for t in "${!PID[@]}"; do stop_pid "${PID[$t]}"; done
    PID=()
    targets=
    for t in pgbouncer pgscale; do
        if want "$t" && [ -n "${AVAILABLE[$t]:-}" ]; then targets=${targets:+$targets,}$t; fi
    done
    out=$TMP/logs/idle.log
    if [ -n "$targets" ]; then
        run_child timeout 900 "$PYTHON" "$ROOT/bench/idle_clients.py" compare --targets "$targets" \
            --database-url "postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB" \
            --user "$APP_USER" --database "$APP_DB" --pgscale "$PGSCALE_BIN" \
            --count "$BENCH_IDLE_CLIENTS" --timeout 300 >"$out" 2>&1 || true
        grep -v '^RESULT \|^RATIO ' "$out" | sed 's/^ */   /' || true
        for t in pgbouncer pgscale; do
            IDLE_KIB[$t]=$(sed -n "s/^RESULT label=$t .* failed=0 .*kib_per_client=\([0-9.]*\)$/\1/p" "$out")
        done
        [ -n "${IDLE_KIB[pgscale]}" ] || log "   pgscale: idle-client test incomplete (see above)"
    fi
fi

# ---------------------------------------------------------------- targets
log ""
log "== pgscale against its targets"
verdict() {  # verdict OK? — PASS/FAIL
    if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi
}
check_ratio() {  # check_ratio LABEL MIN A B
    local label=$1 min=$2 a=$3 b=$4 r ok
    r=$(ratio "$a" "$b")
    if [ "$r" = - ]; then log "   n/a   $label (pgscale: $a, other: $b)"; return; fi
    ok=$(awk -v a="$a" -v b="$b" -v m="$min" 'BEGIN { print (a / b >= m) ? 1 : 0 }')
    log "   $(verdict "$ok")  $label: $r (target >= ${min}x)"
}
for mode in $BENCH_MODES; do
    for c in 16 64 256; do
        [[ " $BENCH_CLIENTS " == *" $c "* ]] || continue
        check_ratio "tps vs PgBouncer, $mode, $c clients" 1.25 "${TPS[$mode/$c/pgscale]}" "${TPS[$mode/$c/pgbouncer]}"
    done
    if [[ " $BENCH_CLIENTS " == *" 16 "* ]]; then
        check_ratio "tps vs direct, $mode, 16 clients" 0.9 "${TPS[$mode/16/pgscale]}" "${TPS[$mode/16/direct]}"
    fi
done
worst=- where='' wkey=''
for mode in $BENCH_MODES; do
    for c in $BENCH_CLIENTS; do
        v=${CPU[$mode/$c/pgscale]}
        [ "$v" = - ] && continue
        if [ "$worst" = - ] || awk -v a="$v" -v b="$worst" 'BEGIN { exit !(a > b) }'; then
            worst=$v where="$mode, $c clients" wkey=$mode/$c/pgscale
        fi
    done
done
if [ "$worst" = - ]; then
    log "   n/a   CPU per transaction (no pgscale run)"
else
    log "   $(verdict "$(awk -v a="$worst" 'BEGIN { print (a <= 5) ? 1 : 0 }')")  CPU per transaction: worst ${worst} µs ($where) (target <= 5 µs)"
    log "         of which user time (pgscale's own code) ${USR[$wkey]} µs, system time (mostly the kernel's TCP work) ${SYS[$wkey]} µs"
fi
if [ -n "${IDLE_KIB[pgscale]:-}" ]; then
    log "   $(verdict "$(awk -v a="${IDLE_KIB[pgscale]}" -v b="${IDLE_KIB[pgbouncer]:-}" 'BEGIN { print (a <= 1 && (b == "" || a < b)) ? 1 : 0 }')")  memory per idle client: ${IDLE_KIB[pgscale]} KiB (target <= 1 KiB and below PgBouncer's ${IDLE_KIB[pgbouncer]:--} KiB)"
else
    log "   n/a   memory per idle client (no pgscale result)"
fi
if [ -n "${BENCH_RESULTS:-}" ]; then cp "$RESULTS_TSV" "$BENCH_RESULTS" && log "   results also written to $BENCH_RESULTS"; fi
