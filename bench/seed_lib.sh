# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts
# seed_lib.sh — the seed's scaling table, stage by stage (sourced, after
# bench/lib.sh and bench/cgroup.sh, by bench/seed_table.sh and
# scripts/demo.sh; it starts only what a stage needs and stops it again).
#
# The seed's table: single database 1,000 reads/s, with a Redis cache
# 10,000, primary + 2 replicas 5,000, + 5 replicas and cache 50,000. The
# same read-heavy workload (bench/seed/: the dashboard, a GROUP BY over the
# sales; a product list page; and a small share of writes, adding to a cart)
# runs through pgscale in four stages:
#   1  DATABASE_URL only                     the single database
#   2  + PGSCALE_CACHE=on, REDIS_URL          the result cache
#   3  + READ_REPLICA_URLS (the replicas)     reads spread over the replicas
#   4  replicas and cache
# Reads/s counts read statements (one per pgbench transaction of the two
# read scripts), not transactions of the whole mix.
#
# The caller has a running cluster (scripts/pgcluster.sh) under
# $TMP/cluster with the primary on PG_PORT and SEED_REPLICAS replicas on the
# ports after it, and sets TMP, PG_PORT, APP_USER, APP_PASSWORD, APP_DB,
# PGSCALE_BIN, and SEED_REDIS_PORT (empty: no Redis; the cache is then only
# in-process). seed_run_stages leaves SEED_READS, SEED_WRITES and
# SEED_NOTE per stage for seed_table.

SEED_DIR=$ROOT/bench/seed
SEED_SECONDS=${SEED_SECONDS:-10}
SEED_CLIENTS=${SEED_CLIENTS:-16}
SEED_REPLICAS=${SEED_REPLICAS:-2}
SEED_PRODUCTS=10000
SEED_SALES=${SEED_SALES:-20000}
# pgbench weights: dashboard, product list, add to cart (writes)
SEED_W_DASH=${SEED_W_DASH:-10} SEED_W_LIST=${SEED_W_LIST:-85} SEED_W_CART=${SEED_W_CART:-5}
SEED_STAGES="1 2 3 4"
SEED_PGSCALE_PID=
declare -A SEED_READS=() SEED_WRITES=() SEED_NOTE=()

seed_load() {  # the shop's tables into the primary, replayed on every replica and read once on each node
    local r
    PGCONNECT_TIMEOUT=10 timeout 300 psql -X -q -w -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
        -U postgres -d "$APP_DB" -v app="$APP_USER" -v products="$SEED_PRODUCTS" -v sales="$SEED_SALES" \
        -f "$SEED_DIR/schema.sql" </dev/null >"$TMP/logs/seed-load.log" 2>&1 \
        || { cat "$TMP/logs/seed-load.log" >&2; die "could not load the shop's tables"; }
    wait_until 120 replayed "$PG_PORT" "$SEED_REPLICAS" || die "the replicas did not replay the shop's tables within 120 s"
    for ((r = 0; r <= SEED_REPLICAS; r++)); do
        psql_su $((PG_PORT + r)) "$APP_DB" 'SELECT count(*) FROM sales, (SELECT count(*) FROM products) p' >/dev/null
    done
}

seed_admin() {  # seed_admin SQL — the stage's pgscale admin console, unaligned with a header
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=10 timeout 20 psql -X -w -A -F '|' -h 127.0.0.1 \
        -p "$SEED_PORT" -U "$APP_USER" -d pgscale -c "$1" </dev/null
}

seed_col() {  # seed_col SQL COLUMN — that column of every row, one a line ("node" first for SHOW NODES)
    seed_admin "$1" 2>/dev/null | awk -F'|' -v w="$2" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
        /^\([0-9]+ rows?\)$/ { next } { print $c[w] }'
}

seed_replicas_up() {
    [ "$(seed_admin 'SHOW NODES' 2>/dev/null | awk -F'|' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
        $c["role"] == "replica" && $c["state"] == "up"' | wc -l)" -eq "$SEED_REPLICAS" ]
}

seed_catalog_loaded() {
    local g
    g=$(seed_col 'SHOW CACHE' catalog_generation | head -n1)
    [ -n "$g" ] && [ "$g" != 0 ]
}

seed_stage_env() {  # seed_stage_env STAGE — the stage's settings, one VAR=VALUE a line
    local s=$1 r urls=
    echo "DATABASE_URL=postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$APP_DB"
    if [ "$s" = 3 ] || [ "$s" = 4 ]; then
        for ((r = 1; r <= SEED_REPLICAS; r++)); do
            urls+="${urls:+,}postgresql://$APP_USER:$APP_PASSWORD@127.0.0.1:$((PG_PORT + r))/$APP_DB"
        done
        echo "READ_REPLICA_URLS=$urls"
    fi
    if [ "$s" = 2 ] || [ "$s" = 4 ]; then
        echo PGSCALE_CACHE=on
        [ -z "$SEED_REDIS_PORT" ] || echo "REDIS_URL=redis://127.0.0.1:$SEED_REDIS_PORT/0"
    fi
}

seed_setup() {  # seed_setup STAGE — what stage STAGE runs here
    case $1 in
        1) echo "single database" ;;
        2) echo "+ cache$([ -n "$SEED_REDIS_PORT" ] && echo ' (Redis)' || echo ' (in-process, no Redis)')" ;;
        3) echo "primary + $SEED_REPLICAS replicas" ;;
        4) echo "primary + $SEED_REPLICAS replicas + cache" ;;
    esac
}

seed_start_pgscale() {  # seed_start_pgscale STAGE — pgscale with the stage's settings on SEED_PORT
    local s=$1 log=$TMP/logs/pgscale-seed-$1.log vars
    mapfile -t vars < <(seed_stage_env "$s")
    # Only what the stage means to configure: a caller's replica, cache or
    # Redis settings would change what is measured.
    env -u READ_REPLICA_URLS -u REDIS_URL -u PGSCALE_CACHE -u PGSCALE_CONSISTENCY \
        -u PGSCALE_READ_FROM_PRIMARY -u PGSCALE_MAX_REPLICA_LAG \
        PGSCALE_LISTEN="127.0.0.1:$SEED_PORT" PGSCALE_HTTP_LISTEN="127.0.0.1:$SEED_HTTP_PORT" \
        PGSCALE_POOL_MODE=transaction "${vars[@]}" "$PGSCALE_BIN" >"$log" 2>&1 &
    SEED_PGSCALE_PID=$!
    if ! wait_port "$SEED_PORT" 15 "$SEED_PGSCALE_PID" \
        || [ "$(psql_at "$SEED_PORT" "$APP_DB" 'SELECT 1' 2>>"$log")" != 1 ]; then
        tail -n 20 "$log" >&2; die "pgscale (stage $s) did not come up"
    fi
    if [ "$s" = 3 ] || [ "$s" = 4 ]; then   # reads go to a replica only once the monitor has seen it up
        wait_until 30 seed_replicas_up || die "pgscale (stage $s): the replicas are not up in SHOW NODES after 30 s"
    fi
    if [ "$s" = 2 ] || [ "$s" = 4 ]; then   # nothing is cached before the relation catalog is read
        wait_until 30 seed_catalog_loaded || die "pgscale (stage $s): the cache's catalog is not loaded after 30 s"
    fi
}

# seed_stage STAGE — one stage: pgscale with its settings, the workload for
# SEED_SECONDS, pgscale stopped; sets SEED_READS, SEED_WRITES and SEED_NOTE.
seed_stage() {
    local s=$1 out=$TMP/logs/pgbench-seed-$1.log rc=0 h1 m1 before after url
    # each cached stage starts cold: nothing left in Redis from the one before
    [ -z "$SEED_REDIS_PORT" ] || timeout 10 redis-cli -h 127.0.0.1 -p "$SEED_REDIS_PORT" FLUSHALL >/dev/null
    seed_start_pgscale "$s"
    log "   $s  $(seed_setup "$s"): $(seed_stage_env "$s" | sed 's/=.*//' | paste -sd' ')"
    url=$(status_page "$SEED_HTTP_PORT") && log "      watch it live: $url"
    before=$(seed_col 'SHOW NODES' reads | paste -sd' ')
    PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=30 run_child timeout -k 5 $((SEED_SECONDS + 90)) \
        pgbench -n -T "$SEED_SECONDS" -c "$SEED_CLIENTS" -j 2 -D products="$SEED_PRODUCTS" \
        -f "$SEED_DIR/dashboard.sql@$SEED_W_DASH" -f "$SEED_DIR/products.sql@$SEED_W_LIST" \
        -f "$SEED_DIR/cart.sql@$SEED_W_CART" \
        -h 127.0.0.1 -p "$SEED_PORT" -U "$APP_USER" "$APP_DB" >"$out" 2>&1 || rc=$?
    kill -0 "$SEED_PGSCALE_PID" 2>/dev/null || die "pgscale exited during stage $s; its log: $(tail -n 15 "$TMP/logs/pgscale-seed-$s.log")"
    after=$(seed_col 'SHOW NODES' reads | paste -sd' ')
    SEED_NOTE[$s]=
    if [ "$s" = 2 ] || [ "$s" = 4 ]; then
        h1=$(seed_col 'SHOW CACHE' hits | head -n1) m1=$(seed_col 'SHOW CACHE' misses | head -n1)
        SEED_NOTE[$s]=$(awk -v h="${h1:-0}" -v m="${m1:-0}" 'BEGIN { printf "cache hit ratio %.1f%%", (h + m) ? h * 100 / (h + m) : 0 }')
    fi
    if [ "$s" = 3 ] || [ "$s" = 4 ]; then   # where the reads that reached PostgreSQL went
        SEED_NOTE[$s]+="${SEED_NOTE[$s]:+; }$(awk -v a="$before" -v b="$after" -v n="$(seed_col 'SHOW NODES' node | paste -sd' ')" 'BEGIN {
            k = split(n, name, " "); split(a, x, " "); split(b, y, " ")
            for (i = 1; i <= k; i++) { d[i] = y[i] - x[i]; t += d[i] }
            printf "reads on nodes:"; for (i = 1; i <= k; i++) printf " %s %.0f%%", name[i], t ? d[i] * 100 / t : 0 }')"
    fi
    stop_pid "$SEED_PGSCALE_PID"; SEED_PGSCALE_PID=
    # reads/s: the two read scripts' transactions per second (one statement each)
    read -r SEED_READS[$s] SEED_WRITES[$s] < <(awk '
        /^SQL script [0-9]+:/ { n = $3 + 0 }
        /^ - [0-9]+ transactions .*tps = / { sub(/.*tps = /, ""); sub(/\).*/, ""); tps[n] = $0 }
        END { if (1 in tps && 2 in tps && 3 in tps) printf "%.0f %.0f\n", tps[1] + tps[2], tps[3]; else print "- -" }' "$out")
    if [ "$rc" -ne 0 ] || grep -q aborted "$out" || [ "${SEED_READS[$s]}" = - ]; then
        SEED_READS[$s]=ERR
        warn "stage $s: pgbench failed (exit $rc): $(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-140 || true)"
    fi
    log "      ${SEED_READS[$s]} reads/s, ${SEED_WRITES[$s]} writes/s${SEED_NOTE[$s]:+; ${SEED_NOTE[$s]}}"
}

seed_run_stages() {  # the four stages, one after another (SEED_PORT, SEED_HTTP_PORT free)
    local s
    for s in $SEED_STAGES; do
        seed_stage "$s"
        sleep 1   # the previous stage's server connections finish closing
    done
}

seed_machine() {  # one line: the machine, and the nodes' CPU cap or why there is none
    printf '%s cores (%s); ' "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
    if [ -n "$CG_KIND" ]; then
        printf 'each PostgreSQL node capped at %s core by %s; pgscale and pgbench uncapped\n' \
            "$(awk -v p="$CG_CPU" 'BEGIN { printf "%.2f", p / 100 }')" "$(cg_how)"
    else
        cg_how
    fi
}

seed_table() {  # the table, the seed's figures beside the measured ones
    local s fmt='   %-1s  %-24s %9s  %6s   %-32s %9s  %7s\n'
    local -a seed_setup=("" "single database" "+ Redis cache" "primary + 2 replicas" "+ 5 replicas and cache")
    local -a seed_reads=(0 1000 10000 5000 50000) seed_shown=("" 1,000 10,000 5,000 50,000)
    # shellcheck disable=SC2059
    printf "$fmt" "" "seed's setup" "seed's" "ratio" "measured here" "reads/s" "ratio"
    for s in $SEED_STAGES; do
        # shellcheck disable=SC2059
        printf "$fmt" "$s" "${seed_setup[$s]}" "${seed_shown[$s]}" \
            "$((seed_reads[s] / 1000))x" "$(seed_setup "$s")" "${SEED_READS[$s]}" \
            "$(ratio "${SEED_READS[$s]}" "${SEED_READS[1]}")"
    done
    log "   machine: $(seed_machine); load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    log "   workload: $SEED_CLIENTS clients, ${SEED_SECONDS}s per stage; pgbench weights: dashboard (GROUP BY over $SEED_SALES sales) $SEED_W_DASH,"
    log "   product list $SEED_W_LIST, add to cart (a write) $SEED_W_CART; reads/s = read statements per second"
}
