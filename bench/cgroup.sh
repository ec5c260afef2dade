# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts
# cgroup.sh — a CPU limit per PostgreSQL node, so that on one small machine
# a primary and its replicas behave like separate servers (sourced, after
# bench/lib.sh, by the benchmarks and scripts/demo.sh; it starts nothing).
#
# One cgroup per node (postmaster and every process it has; backends it
# starts later inherit the cgroup), named CG_NAME-<node> directly under the
# cpu hierarchy's root: cgroup v2 cpu.max when the unified hierarchy has the
# cpu controller, else cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us under
# /sys/fs/cgroup/cpu. When neither can be written (not root, no cpu
# controller) the nodes run unlimited: CG_KIND stays empty and CG_WHY says
# why. The caller sets CG_CPU (each node's limit, % of one core; 0: none)
# and CG_NAME before cg_setup, and calls cg_cleanup from its exit trap once
# the servers are stopped (or earlier, to lift the limits).

CG_CPU=${CG_CPU:-50}
CG_NAME=${CG_NAME:-pgscale-bench-$$}
CG_PERIOD=100000    # µs
CG_KIND=            # v2, v1 or empty: no limit
CG_ROOT=
CG_WHY=
declare -A CG_DIR=()
# Where each node's CPU time is counted: the same cgroup on v2 (cpu.stat
# usage_usec), a second one in the cpuacct hierarchy on v1 (cpuacct.usage).
CG_ACCT_ROOT=
declare -A CG_ACCT=()

cg_write() {  # cg_write FILE VALUE — false (quietly) when the kernel refuses
    { printf '%s\n' "$2" >"$1"; } 2>/dev/null
}

cg_set_quota() {  # cg_set_quota DIR
    local quota=$((CG_CPU * CG_PERIOD / 100))
    case $CG_KIND in
        v2) cg_write "$1/cpu.max" "$quota $CG_PERIOD" ;;
        v1) cg_write "$1/cpu.cfs_period_us" "$CG_PERIOD" && cg_write "$1/cpu.cfs_quota_us" "$quota" ;;
    esac
}

cg_try() {  # cg_try KIND ROOT — can we make a limited cgroup there?
    local probe=$2/$CG_NAME-probe ok=1
    CG_KIND=$1
    mkdir "$probe" 2>/dev/null || { CG_KIND=; return 1; }
    cg_set_quota "$probe" || ok=
    rmdir "$probe" 2>/dev/null || true
    if [ -z "$ok" ]; then CG_KIND=; return 1; fi
    CG_ROOT=$2
}

cg_setup() {  # sets CG_KIND and CG_ROOT, or CG_WHY
    if [ "$CG_CPU" = 0 ]; then CG_WHY="no limit asked for"; return; fi
    local r
    # v2: the unified hierarchy on its own (/sys/fs/cgroup) or beside v1
    # (/sys/fs/cgroup/unified); its children get the cpu controller only if
    # the root hands it down.
    for r in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        grep -qsw cpu "$r/cgroup.controllers" || continue
        grep -qw cpu "$r/cgroup.subtree_control" 2>/dev/null || cg_write "$r/cgroup.subtree_control" +cpu || true
        if cg_try v2 "$r"; then CG_ACCT_ROOT=$r; return; fi
    done
    if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && cg_try v1 /sys/fs/cgroup/cpu; then
        if [ -f /sys/fs/cgroup/cpu/cpuacct.usage ]; then
            CG_ACCT_ROOT=/sys/fs/cgroup/cpu        # cpu and cpuacct mounted together
        elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ] && mkdir "/sys/fs/cgroup/cpuacct/$CG_NAME-probe" 2>/dev/null; then
            rmdir "/sys/fs/cgroup/cpuacct/$CG_NAME-probe" 2>/dev/null || true
            CG_ACCT_ROOT=/sys/fs/cgroup/cpuacct
        fi
        return
    fi
    CG_WHY="no writable cgroup with a CPU limit (v2 cpu.max: the unified hierarchy has no cpu controller or it cannot be written; v1: /sys/fs/cgroup/cpu missing or not writable$([ "$(id -u)" -ne 0 ] && echo '; not running as root'))"
}

cg_how() {  # one line: how the limit is applied, or why it is not
    case $CG_KIND in
        v2) echo "cgroup v2 cpu.max ($CG_ROOT/$CG_NAME-<node>)" ;;
        v1) echo "cgroup v1 cpu.cfs_quota_us ($CG_ROOT/$CG_NAME-<node>)" ;;
        *)  if [ "$CG_CPU" = 0 ]; then echo "nodes share the machine uncapped (no cap asked for)"
            else echo "no cgroup available: nodes share the machine uncapped ($CG_WHY)"; fi ;;
    esac
}

cg_limit() {  # cg_limit NODE DATADIR — put NODE's postmaster and all its processes in its cgroup
    local node=$1 dir pm child n=0
    [ -n "$CG_KIND" ] || return 0
    dir=$CG_ROOT/$CG_NAME-$node
    if [ -z "${CG_DIR[$node]:-}" ]; then
        mkdir "$dir" || die "could not create cgroup $dir"
        CG_DIR[$node]=$dir
        cg_set_quota "$dir" || die "could not set the CPU limit in $dir"
    fi
    local acct=${CG_ACCT[$node]:-}
    if [ -z "$acct" ] && [ -n "$CG_ACCT_ROOT" ]; then
        acct=$dir
        if [ "$CG_ACCT_ROOT" != "$CG_ROOT" ]; then
            acct=$CG_ACCT_ROOT/$CG_NAME-$node
            mkdir "$acct" 2>/dev/null || acct=
        fi
        CG_ACCT[$node]=$acct
    fi
    pm=$(head -n1 "$2/postmaster.pid")
    # The postmaster first: whatever it forks from now on starts inside.
    cg_write "$dir/cgroup.procs" "$pm" || die "could not move $node's postmaster (pid $pm) into $dir"
    [ -z "$acct" ] || [ "$acct" = "$dir" ] || cg_write "$acct/cgroup.procs" "$pm" || true
    for child in $(ps -o pid= --ppid "$pm"); do
        # it may have exited meanwhile
        cg_write "$dir/cgroup.procs" "$child" || true
        [ -z "$acct" ] || [ "$acct" = "$dir" ] || cg_write "$acct/cgroup.procs" "$child" || true
    done
    n=$(wc -l <"$dir/cgroup.procs")
    log "   $node: postmaster $pm and its processes ($n now) limited to $CG_CPU% of a core ($CG_KIND, $dir)"
}

cg_throttle() {  # cg_throttle NODE — "periods throttled" so far, from cpu.stat
    local dir=${CG_DIR[$1]:-}
    if [ -z "$dir" ]; then echo "0 0"; return; fi
    awk '$1 == "nr_periods" { p = $2 } $1 == "nr_throttled" { t = $2 } END { print p + 0, t + 0 }' "$dir/cpu.stat"
}

cg_usage() {  # cg_usage NODE — its CPU time so far in µs, or nothing when not counted
    local dir=${CG_ACCT[$1]:-}
    [ -n "$dir" ] || return 0
    if [ "$CG_KIND" = v2 ]; then
        awk '$1 == "usage_usec" { print $2 }' "$dir/cpu.stat"
    else
        awk '{ printf "%d\n", $1 / 1000 }' "$dir/cpuacct.usage"
    fi
}

cg_remove() {  # cg_remove DIR — anything still inside goes back to the hierarchy's root
    local dir=$1 pid
    [ -d "$dir" ] || return 0
    for _ in $(seq 50); do
        rmdir "$dir" 2>/dev/null && return 0
        while read -r pid; do cg_write "${dir%/*}/cgroup.procs" "$pid" || true; done <"$dir/cgroup.procs"
        sleep 0.1
    done
    warn "could not remove cgroup $dir"
}

cg_cleanup() {  # remove every cgroup made; processes still inside are no longer limited
    local node
    for node in "${!CG_DIR[@]}"; do
        [ "${CG_ACCT[$node]:-}" = "${CG_DIR[$node]}" ] || [ -z "${CG_ACCT[$node]:-}" ] || cg_remove "${CG_ACCT[$node]}"
        cg_remove "${CG_DIR[$node]}"
    done
    CG_DIR=() CG_ACCT=()
}
