# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts
# lib.sh — shell helpers shared by the benchmarks in bench/ and by
# scripts/demo.sh (sourced, not run): messages, ports, bounded child
# processes, the exit trap, CPU time from /proc, psql and pgbench output.
# It starts nothing and sets no trap by itself: each script owns its
# clean-up, hands it to on_exit, and calls stop_pid "$CHILD" from it.
#
# A script sets APP_USER and APP_PASSWORD (for psql_at) and, for
# raise_fd_limit, FD_LIMIT before using them; `set -euo pipefail` is assumed.

log()  { printf '%s\n' "$*"; }
warn() { printf 'bench: %s\n' "$*" >&2; }
die()  { warn "$*"; exit 1; }

raise_fd_limit() {  # raise_fd_limit N — the soft open-files limit to N, or as high as allowed
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then
        ulimit -Sn "$want"
    elif ! ulimit -n "$want" 2>/dev/null; then
        ulimit -Sn "$hard"
        warn "could not raise the open-files limit to $want (hard limit $hard); large client counts may fail"
    fi
}

stop_pid() {  # stop_pid PID — TERM, up to 5 s, then KILL
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# on_exit FUNC — when the script ends (normally, by `set -e`, or on Ctrl-C
# or TERM, which exit 130 and 143) run FUNC once, with the exit status as
# $1, then exit with that status. FUNC writes to the original stdout and
# stderr (kept on fds 3 and 4): a signal can arrive inside run_child, whose
# output is redirected to a log.
EXIT_FUNC= EXIT_DONE=0
on_exit() {
    EXIT_FUNC=$1
    exec 3>&1 4>&2
    trap exit_trap EXIT
    trap 'warn "interrupted" 2>&4; exit 130' INT
    trap 'warn "terminated" 2>&4; exit 143' TERM
}
exit_trap() {
    local rc=$?
    exec 1>&3 2>&4
    [ "$EXIT_DONE" = 1 ] && return
    EXIT_DONE=1
    trap '' INT TERM
    "$EXIT_FUNC" "$rc"
    exit "$rc"
}

# drop_workdir — stop the cluster under $TMP/cluster (scripts/pgcluster.sh),
# then remove $TMP, or keep it when BENCH_KEEP is 1; for a clean-up.
drop_workdir() {
    [ -n "$TMP" ] && [ -d "$TMP" ] || return 0
    "$ROOT/scripts/pgcluster.sh" stop "$TMP/cluster" >/dev/null 2>&1 || warn "could not stop the cluster in $TMP/cluster"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "bench: kept $TMP (logs in $TMP/logs)"; else rm -rf "$TMP"; fi
}

# Run a command in the background and wait for it, so a Ctrl-C reaches the
# script's trap at once instead of after the run; the trap stops "$CHILD".
CHILD=
run_child() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# Ports below the ephemeral range, so 10,000 client sockets cannot take them.
next_port=$((20000 + RANDOM % 10000))
free_port() {  # free_port VAR — sets VAR to a free port (no subshell: next_port must advance)
    local tries=0
    while ! port_free "$next_port"; do
        next_port=$((next_port + 1)); tries=$((tries + 1))
        [ "$tries" -lt 1000 ] || die "no free TCP port found"
    done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + 1))
}

free_ports() {  # free_ports VAR N — sets VAR to the first of N consecutive free ports
    local n=$2 i tries=0
    while :; do
        for ((i = 0; i < n; i++)); do port_free $((next_port + i)) || break; done
        [ "$i" -lt "$n" ] || break
        next_port=$((next_port + i + 1)); tries=$((tries + 1))
        [ "$tries" -lt 1000 ] || die "no $n consecutive free TCP ports found"
    done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + n))
}

wait_port() {  # wait_port PORT SECONDS [PID] — until PORT accepts TCP
    local port=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    until timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

status_page() {  # status_page PORT — pgscale's status page URL, once its HTTP listener on PORT answers /healthz (up to 3 s); false if it does not
    local deadline=$((SECONDS + 3))
    until timeout 2 curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
    echo "http://127.0.0.1:$1/"
}

cpu_ticks() {  # "utime stime" of every thread of PID, in clock ticks
    # Fields after "pid (comm) ": state is $1, so utime/stime are $12/$13.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'
}
CLK_TCK=$(getconf CLK_TCK)

psql_at() {  # psql_at PORT DB SQL — as APP_USER, unaligned, no header
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=10 timeout 30 \
        psql -X -w -At -h 127.0.0.1 -p "$1" -U "$APP_USER" -d "$2" -c "$3" </dev/null
}

psql_su() {  # psql_su PORT DB SQL — as the superuser postgres (trust on loopback)
    PGCONNECT_TIMEOUT=10 timeout 30 psql -X -w -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" \
        -U postgres -d "$2" -c "$3" </dev/null
}

replayed() {  # replayed PORT N — the N replicas on the ports after PORT's primary have replayed its current WAL
    local lsn r
    lsn=$(psql_su "$1" postgres 'SELECT pg_current_wal_lsn()') || return 1
    for ((r = 1; r <= $2; r++)); do
        [ "$(psql_su $(($1 + r)) postgres "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ] || return 1
    done
}

wait_until() {  # wait_until SECONDS COMMAND… — poll, bounded
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

ratio() {  # ratio A B — A/B with 2 decimals, or - when either is not a number
    if ! [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]] || [ "$2" -eq 0 ]; then echo -; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
}

# pgbench_figures FILE — from a pgbench log, sets PB_TPS (without the initial
# connection time), PB_TXNS (transactions processed) and PB_CONN_MS (initial
# connection time); each empty when the log lacks it.
pgbench_figures() {
    PB_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p; s/^tps = \([0-9.]*\) (excluding connections establishing)$/\1/p' "$1" | head -n1)
    PB_TXNS=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1" | head -n1)
    PB_CONN_MS=$(sed -n 's/^initial connection time = \([0-9.]*\) ms$/\1/p' "$1" | head -n1)
}

# pgbouncer_launch DIR PORT HOST PG_PORT POOL_SIZE OUT [INI-LINES…] — writes
# DIR/pgbouncer.ini (transaction mode, trust for clients, the app password
# in DIR/userlist.txt for PgBouncer's own login to the server at HOST, which
# is 127.0.0.1 or a socket directory) and starts PgBouncer on 127.0.0.1:PORT
# with its output in OUT; sets BOUNCER_PID. PgBouncer refuses to run as
# root: as root it runs as postgres, exec'd in place by setpriv (no PAM
# session resetting the open-files limit, unlike runuser), so BOUNCER_PID is
# PgBouncer itself and its /proc entries are what a caller measures. Extra
# arguments are added to the [pgbouncer] section as they are.
pgbouncer_launch() {
    local dir=$1 port=$2 host=$3 pg_port=$4 pool=$5 out=$6 line
    shift 6
    mkdir -p "$dir"
    printf '"%s" "%s"\n' "$APP_USER" "$APP_PASSWORD" >"$dir/userlist.txt"
    {
        printf '[databases]\n%s = host=%s port=%s dbname=%s\n\n[pgbouncer]\n' "$APP_DB" "$host" "$pg_port" "$APP_DB"
        printf '%s\n' "listen_addr = 127.0.0.1" "listen_port = $port" "unix_socket_dir =" \
            "auth_type = trust" "auth_file = $dir/userlist.txt" "pool_mode = transaction" \
            "default_pool_size = $pool" "logfile = $dir/pgbouncer.log"
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$dir/pgbouncer.ini"
    chmod 600 "$dir/userlist.txt"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres:postgres "$dir"
        (cd / && exec setpriv --reuid postgres --regid postgres --init-groups -- \
            pgbouncer "$dir/pgbouncer.ini") >"$out" 2>&1 &
    else
        pgbouncer "$dir/pgbouncer.ini" >"$out" 2>&1 &
    fi
    BOUNCER_PID=$!
}
