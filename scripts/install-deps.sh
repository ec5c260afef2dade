#!/usr/bin/env bash
# Installs everything pgscale's build, tests, demo and benchmarks need on
# Debian 12. Idempotent: packages already present are left as they are.
set -euo pipefail

PKGS=(
  build-essential pkg-config meson ninja-build clang libclang-rt-14-dev
  libuv1-dev libpg-query-dev libprotobuf-c-dev libssl-dev libpq-dev
  libhiredis-dev libxxhash-dev libyaml-dev libmicrohttpd-dev libcmocka-dev libsystemd-dev
  systemd strace
  postgresql-15 postgresql-client-15 redis-server pgbouncer
  python3 python3-pytest python3-psycopg2 python3-psycopg python3-asyncpg python3-sqlalchemy
  chromium chromium-driver python3-selenium prometheus haproxy
  procps psmisc sudo
  # tests/integration/test_patroni.py: pgscale following a Patroni cluster
  # (Patroni's etcd3 DCS module imports python3-etcd)
  patroni etcd-server python3-etcd
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js for the node-postgres tests.  Debian 12 packages node and npm
# separately; a Node.js from elsewhere (NodeSource, nvm) brings its own npm,
# which Debian's npm package would conflict with: ask only for what is absent.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# node-postgres and pg-copy-streams at the versions in tests/node's
# package-lock.json; skipped when node_modules was installed from this very
# lock file (the stamp is a copy of it).
node_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/node"
stamp="$node_dir/node_modules/.installed-package-lock.json"
if ! cmp -s "$node_dir/package-lock.json" "$stamp"; then
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$node_dir/package-lock.json" "$stamp"
fi

# The Debian packages start clusters/services on install (where an init
# system lets them); tests and the demo run their own servers on free
# ports, so the stock ones are not needed.
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "${CI:-}" ]; then
  pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    pg_ctlcluster "$v" "$c" stop || true
  done
fi
if [ -n "${CI:-}" ]; then
  for svc in prometheus haproxy etcd patroni redis-server; do
    if command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi
exit 0
