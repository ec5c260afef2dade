#!/usr/bin/env bash
# pgcluster.sh — a throw-away PostgreSQL 15 primary with streaming replicas,
# for pgscale's tests, demo and benchmarks. Loopback only, fsync off: never
# put data you care about in it.
#
#   scripts/pgcluster.sh start  DIR PORT [REPLICAS]   primary on PORT, replicas on PORT+1..
#   scripts/pgcluster.sh stop   DIR                   stop every server under DIR
#   scripts/pgcluster.sh status DIR                   one line per server; exit 3 if any is down
#
# Layout: DIR/primary, DIR/replica1, DIR/replica2 … (data directories) and
# DIR/<node>.log (server logs). Every server listens on 127.0.0.1 only and has
# no Unix socket. Roles: `postgres` (superuser, trust from 127.0.0.1) and
# APP_USER (default app / APP_PASSWORD secret, scram-sha-256) owning database
# APP_DB (default app).
#
# Opt-in Unix sockets: with PGCLUSTER_SOCKET_DIR=/abs/dir every server also
# listens on a socket in that directory, /abs/dir/.s.PGSQL.<its port> (the
# nodes share it: their ports differ), with the same logins as over TCP
# (`local` lines: postgres trust, everyone else scram-sha-256). The directory
# is created if missing and, as root, handed to `postgres`; socket files are
# mode 0777, so any OS user that can reach the directory can connect (e.g.
# pgscale as root, PgBouncer as postgres). A socket path holds at most 107
# bytes, so keep the directory short (e.g. /tmp/x/sock).
#
# Re-running `start` is safe: existing data directories are reused, servers
# already running are left alone, missing replicas are created. initdb and
# pg_ctl refuse to run as root, so as root every server command runs as the
# `postgres` user and DIR is handed to it.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
APP_USER=${APP_USER:-app}
APP_PASSWORD=${APP_PASSWORD:-secret}
APP_DB=${APP_DB:-app}
# Every wait below is bounded by this many seconds.
PGCLUSTER_TIMEOUT=${PGCLUSTER_TIMEOUT:-60}
# Empty (the default): TCP only. See the header.
SOCKET_DIR=${PGCLUSTER_SOCKET_DIR:-}

export PGCONNECT_TIMEOUT=10
# A caller's PG* variables must not redirect the commands below.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS

header() {  # the comment at the top of this file, without the '# '
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
}

usage() {
    header >&2
    exit 2
}

die() { echo "pgcluster: $*" >&2; exit 1; }
say() { echo "pgcluster: $*"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a server-side command as the postgres user when we are root. cd to a
# directory postgres can read first, or initdb/pg_ctl warn about the cwd.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

node_port() {  # the port a node was last configured with
    sed -n "s/^port = \([0-9]*\)$/\1/p" "$1/pgcluster.conf" 2>/dev/null | tail -n1
}

node_running() { as_pg "$PGBIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

psql_su() {  # psql_su PORT SQL… — superuser query, unaligned, no header
    local port=$1; shift
    "$PGBIN/psql" -X -w -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U postgres -d postgres "$@"
}

# Settings pgscale's tests rely on, kept in a file of their own that
# postgresql.conf includes, so a re-run can rewrite them (e.g. a new port).
write_conf() {  # write_conf NODEDIR PORT
    local d=$1 port=$2
    as_pg tee "$d/pgcluster.conf" >/dev/null <<EOF
# Written by scripts/pgcluster.sh; rewritten on every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCKET_DIR'
max_connections = 1100
shared_buffers = 128MB
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 512MB
hot_standby = on
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if ! grep -q "^include_if_exists = 'pgcluster.conf'" "$d/postgresql.conf"; then
        echo "include_if_exists = 'pgcluster.conf'" | as_pg tee -a "$d/postgresql.conf" >/dev/null
    fi
}

write_hba() {
    if [ -z "$SOCKET_DIR" ]; then
        as_pg tee "$1/pg_hba.conf" >/dev/null <<EOF
# Written by scripts/pgcluster.sh. TCP on 127.0.0.1 only; no Unix socket.
host  all          postgres  127.0.0.1/32  trust
host  replication  postgres  127.0.0.1/32  trust
host  all          all       127.0.0.1/32  scram-sha-256
EOF
    else
        as_pg tee "$1/pg_hba.conf" >/dev/null <<EOF
# Written by scripts/pgcluster.sh. TCP on 127.0.0.1 and a Unix socket in
# $SOCKET_DIR (PGCLUSTER_SOCKET_DIR), with the same logins on both.
local all          postgres                trust
local all          all                     scram-sha-256
host  all          postgres  127.0.0.1/32  trust
host  replication  postgres  127.0.0.1/32  trust
host  all          all       127.0.0.1/32  scram-sha-256
EOF
    fi
}

# PGCLUSTER_SOCKET_DIR must be absolute, fit the longest socket file name in
# the 107 bytes of a socket path (PostgreSQL would refuse to start, with a
# less direct message) and be writable by the user the servers run as.
prepare_socket_dir() {
    [ -n "$SOCKET_DIR" ] || return 0
    [[ $SOCKET_DIR == /* ]] || die "PGCLUSTER_SOCKET_DIR must be an absolute path, not '$SOCKET_DIR'"
    # It goes into a quoted, comma-separated setting and into URLs.
    [[ $SOCKET_DIR =~ ^[A-Za-z0-9/._-]+$ ]] \
        || die "PGCLUSTER_SOCKET_DIR may hold only letters, digits and / . _ -, not '$SOCKET_DIR'"
    SOCKET_DIR=${SOCKET_DIR%/}
    local longest=$SOCKET_DIR/.s.PGSQL.65000
    [ "${#longest}" -le 107 ] \
        || die "PGCLUSTER_SOCKET_DIR is too long: $longest is ${#longest} bytes, a Unix socket path holds at most 107; use a shorter directory"
    mkdir -p "$SOCKET_DIR"
    chmod 755 "$SOCKET_DIR"
    if is_root; then
        chown postgres:postgres "$SOCKET_DIR"
        runuser -u postgres -- test -w "$SOCKET_DIR" -a -x "$SOCKET_DIR" \
            || die "user postgres cannot write $SOCKET_DIR (a parent directory is private?); use a directory under /tmp"
    fi
}

start_node() {  # start_node NAME PORT
    local name=$1 port=$2 d=$DIR/$1
    if node_running "$d"; then
        local cur; cur=$(node_port "$d")
        [ "$cur" = "$port" ] || die "$name is already running on port $cur, not $port; run '$0 stop $DIR' first or use port $cur"
        [ -z "$SOCKET_DIR" ] || grep -qxF "unix_socket_directories = '$SOCKET_DIR'" "$d/pgcluster.conf" \
            || die "$name is already running without a socket in PGCLUSTER_SOCKET_DIR=$SOCKET_DIR; run '$0 stop $DIR' first"
        return 0
    fi
    port_in_use "$port" && die "port $port is in use by another process; pick another PORT"
    write_conf "$d" "$port"
    # A cluster first started without a socket gains its `local` lines.
    [ -z "$SOCKET_DIR" ] || write_hba "$d"
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$DIR/$name.log" -w -t "$PGCLUSTER_TIMEOUT" start >/dev/null \
        || { tail -n 20 "$DIR/$name.log" >&2 || true; die "$name did not start; log: $DIR/$name.log"; }
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND… — poll until COMMAND succeeds
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

replica_streaming() {  # in recovery and receiving WAL from the primary
    [ "$(psql_su "$1" -c "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")" = t ]
}

cmd_start() {
    [ $# -ge 2 ] && [ $# -le 3 ] || usage
    DIR=$1; local port=$2 replicas=${3:-0}
    [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1024 ] && [ "$port" -le 65000 ] || die "PORT must be a number in 1024..65000"
    [[ $replicas =~ ^[0-9]+$ ]] && [ "$replicas" -le 9 ] || die "REPLICAS must be 0..9"
    [ -x "$PGBIN/initdb" ] || die "$PGBIN/initdb not found; run scripts/install-deps.sh (postgresql-15)"
    prepare_socket_dir

    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if is_root; then
        chown postgres:postgres "$DIR"
        runuser -u postgres -- test -w "$DIR" -a -x "$DIR" \
            || die "user postgres cannot write $DIR (a parent directory is private, e.g. /root?); use a directory under /tmp"
    fi

    local p=$DIR/primary
    if [ ! -f "$p/PG_VERSION" ]; then
        as_pg rm -rf "$p"
        say "initdb primary in $p"
        as_pg "$PGBIN/initdb" -D "$p" -U postgres -E UTF8 --locale=C \
            --auth-host=scram-sha-256 --auth-local=trust --no-instructions >"$DIR/initdb.log" 2>&1 \
            || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
        write_hba "$p"
    fi
    start_node primary "$port"
    say "primary   running on 127.0.0.1:$port"

    # The application role and database; ALTER keeps the password in sync on re-runs.
    psql_su "$port" <<SQL >/dev/null
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE %I LOGIN', '$APP_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_USER') \gexec
ALTER ROLE "$APP_USER" LOGIN PASSWORD '$APP_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$APP_DB', '$APP_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$APP_DB') \gexec
SQL

    local i
    for ((i = 1; i <= replicas; i++)); do
        local name=replica$i rport=$((port + i)) r=$DIR/replica$i
        if [ ! -f "$r/PG_VERSION" ]; then
            say "pg_basebackup $name from the primary"
            # Into a scratch directory first, so an interrupted copy is never
            # mistaken for a replica on the next run.
            as_pg rm -rf "$r.partial" "$r"
            as_pg "$PGBIN/pg_basebackup" -D "$r.partial" -R -X stream -c fast \
                -d "host=127.0.0.1 port=$port user=postgres application_name=$name" \
                >"$DIR/$name.basebackup.log" 2>&1 \
                || { cat "$DIR/$name.basebackup.log" >&2; die "pg_basebackup for $name failed"; }
            as_pg mv "$r.partial" "$r"
        fi
        # The primary may have moved to another port since the copy was made.
        if ! node_running "$r"; then
            as_pg sed -i -E "/^primary_conninfo/ s/port=[0-9]+/port=$port/" "$r/postgresql.auto.conf"
        fi
        start_node "$name" "$rport"
        wait_for "$PGCLUSTER_TIMEOUT" "$name to stream from the primary" replica_streaming "$rport"
        say "$name  running on 127.0.0.1:$rport (in recovery, streaming)"
    done
    say "primary URL: postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$port/$APP_DB"
    [ -z "$SOCKET_DIR" ] \
        || say "primary socket URL: postgresql://$APP_USER:$APP_PASSWORD@/$APP_DB?host=$SOCKET_DIR&port=$port"
}

nodes() {  # nodes [primary-first]; replicas first by default, so stop does not
           # leave them reconnecting to a dead primary
    local d globs=("$DIR"/replica*/ "$DIR"/primary/)
    [ "${1:-}" = primary-first ] && globs=("$DIR"/primary/ "$DIR"/replica*/)
    for d in "${globs[@]}"; do
        d=${d%/}
        [ -f "$d/PG_VERSION" ] && echo "$d"
    done
    return 0
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    DIR=$1
    [ -d "$DIR" ] || { say "nothing to stop: $DIR does not exist"; return 0; }
    local d rc=0 list
    mapfile -t list < <(nodes)
    for d in "${list[@]}"; do
        node_running "$d" || continue
        if as_pg "$PGBIN/pg_ctl" -D "$d" -m fast -w -t 30 stop >/dev/null 2>&1; then
            say "stopped $(basename "$d")"
        elif as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1; then
            say "stopped $(basename "$d") (immediate)"
        else
            echo "pgcluster: could not stop $d" >&2; rc=1
        fi
    done
    return $rc
}

cmd_status() {
    [ $# -eq 1 ] || usage
    DIR=$1
    [ -d "$DIR" ] || die "$DIR does not exist"
    local d name port state role rc=0 n=0 list
    mapfile -t list < <(nodes primary-first)
    printf '%-10s %-6s %-8s %s\n' node port state role
    for d in "${list[@]}"; do
        n=$((n + 1))
        name=$(basename "$d"); port=$(node_port "$d"); role=-
        if node_running "$d"; then
            state=running
            case "$(psql_su "$port" -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)" in
                t) role="replica ($(psql_su "$port" -c "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'not streaming')" 2>/dev/null || echo '?'))" ;;
                f) role="primary ($(psql_su "$port" -c 'SELECT count(*) FROM pg_stat_replication' 2>/dev/null || echo '?') replicas attached)" ;;
                *) role="not answering" ; rc=3 ;;
            esac
        else
            state=stopped; rc=3
        fi
        printf '%-10s %-6s %-8s %s\n' "$name" "${port:-?}" "$state" "$role"
    done
    [ "$n" -gt 0 ] || { echo "(no servers under $DIR)"; rc=3; }
    return $rc
}

[ $# -ge 1 ] || usage
sub=$1; shift
case "$sub" in
    start)  cmd_start "$@" ;;
    stop)   cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    -h|--help|help) header; exit 0 ;;
    *) usage ;;
esac
