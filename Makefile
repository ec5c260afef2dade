# Thin wrapper over meson/ninja.  `make` builds build/pgscale; `make check`
# runs every test; `make demo` and `make bench` run the demo and benchmarks;
# `make bench-unix` compares server connections over TCP and a Unix socket;
# `make bench-replicas` measures read scaling over streaming replicas;
# `make bench-cache` measures the result cache on a dashboard workload;
# `make bench-seed` runs the seed's scaling table (the demo's, longer).
# check, demo and bench install their dependencies first (Debian 12, root).
# `make install` installs the binary and the systemd unit (PREFIX, DESTDIR;
# see docs/deployment.md).

PYTHON     ?= /usr/bin/python3
FUZZ_SECS  ?= 20
PYTEST_ARGS ?=

.PHONY: all deps check unit asan tsan fuzz integration integration-asan integration-tsan demo bench \
	bench-unix bench-replicas bench-cache bench-seed install clean

all: build/build.ninja
	ninja -C build

build/build.ninja:
	meson setup build

deps:
	bash scripts/install-deps.sh

unit: all
	meson test -C build --suite unit --print-errorlogs

# The unit tests again, built with AddressSanitizer and UBSan.
asan:
	[ -f build-asan/build.ninja ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C build-asan
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 meson test -C build-asan --suite unit --print-errorlogs

# Each libFuzzer target for FUZZ_SECS seconds, from its seed corpus (new
# inputs go to a scratch directory, not into the repository).  Quiet on
# success; a crash (or leak, or timeout) prints the report, keeps the input
# that caused it and fails.
fuzz:
	[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true -Dtests=false \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
	ninja -C build-fuzz
	@set -e; for t in proto config config_yaml sqlscan auth relay classify feedparse; do \
	    scratch=$$(mktemp -d); mkdir $$scratch/corpus; \
	    echo "fuzz_$$t: $(FUZZ_SECS) s"; \
	    if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build-fuzz/fuzz_$$t \
	            -max_total_time=$(FUZZ_SECS) -print_final_stats=0 -artifact_prefix=$$scratch/ \
	            $$scratch/corpus fuzz/corpus/$$t >$$scratch/log 2>&1; then \
	        tail -n 1 $$scratch/log; rm -rf $$scratch; \
	    else \
	        tail -n 120 $$scratch/log; \
	        echo "fuzz_$$t FAILED; the input and the whole log are in $$scratch"; \
	        exit 1; \
	    fi; \
	done

integration: all
	$(PYTHON) -m pytest -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# The integration tests again against pgscale built with ASan+UBSan (a
# sanitizer report, a leak report at exit included, fails the test that ran
# it).  Only leaks inside third-party libraries are suppressed, in
# tests/lsan.supp.  Left out: the tests that drive other programs end to
# end (a browser, Patroni, HAProxy) through paths of pgscale the rest
# already cover, and the ones whose minutes go to waiting out failovers,
# timeouts and restarts (monitor, failover, lifecycle, Unix-socket servers,
# HTTP, systemd), which run under ThreadSanitizer below instead; what they
# add to the sanitizers' coverage is there, and make check stays near half
# an hour on 2 cores.
ASAN_SKIP ?= --ignore=tests/integration/test_status_page.py \
	--ignore=tests/integration/test_patroni.py --ignore=tests/integration/test_haproxy.py \
	--ignore=tests/integration/test_monitor.py --ignore=tests/integration/test_failover_wait.py \
	--ignore=tests/integration/test_failover_lock.py --ignore=tests/integration/test_lifecycle.py \
	--ignore=tests/integration/test_unix_server.py --ignore=tests/integration/test_http.py \
	--ignore=tests/integration/test_systemd.py
integration-asan: asan
	PGSCALE_BIN=build-asan/pgscale ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(PYTHON) -m pytest -p no:cacheprovider tests/integration $(ASAN_SKIP) $(PYTEST_ARGS)

# pgscale built with ThreadSanitizer, and the integration tests where
# workers share pools, hand servers over, free unused pools, reload and
# answer the admin console under load, and where the monitor's threads
# fill the nodes that SHOW NODES reads, where the change feed's thread
# bumps the versions the workers read, and where reloads report to systemd
# and its watchdog asks the workers (about 3.5 min on 2 cores).  Any
# report fails the test that ran that pgscale; tests/tsan.supp holds the
# few third-party reports, each with its reason.
TSAN_TESTS ?= tests/integration/test_pooling.py tests/integration/test_admin.py \
	tests/integration/test_admin_full.py tests/integration/test_lifecycle.py \
	tests/integration/test_clientauth.py tests/integration/test_hardening_pool.py \
	tests/integration/test_dirty_server.py tests/integration/test_security_authquery.py \
	tests/integration/test_pinning.py tests/integration/test_session_fidelity.py \
	tests/integration/test_session_state_leaks.py tests/integration/test_sequence_state.py \
	tests/integration/test_unix_server.py tests/integration/test_monitor.py \
	tests/integration/test_failover_lock.py tests/integration/test_failover_wait.py \
	tests/integration/test_cache_feed.py tests/integration/test_cache_redis.py \
	tests/integration/test_http.py tests/integration/test_systemd.py

tsan:
	[ -f build-tsan/build.ninja ] || meson setup build-tsan -Db_sanitize=thread -Db_lundef=false \
	    -Dtests=false
	ninja -C build-tsan

integration-tsan: tsan
	PGSCALE_BIN=build-tsan/pgscale \
	    TSAN_OPTIONS=suppressions=$(CURDIR)/tests/tsan.supp:second_deadlock_stack=1:print_suppressions=0 \
	    $(PYTHON) -m pytest -p no:cacheprovider $(TSAN_TESTS) $(PYTEST_ARGS)

check: deps all unit asan fuzz integration integration-asan integration-tsan

demo: deps all
	bash scripts/demo.sh

bench: deps all
	bash bench/pgbench_compare.sh

# pgscale and PgBouncer each twice, one reaching PostgreSQL over TCP and one
# over its Unix socket, beside direct PostgreSQL; pgbench reaches them all
# over TCP. BENCH_SECONDS and BENCH_MODES pass through.
bench-unix: deps all
	BENCH_TARGETS="direct pgbouncer pgbouncer-unix pgscale pgscale-unix" BENCH_CLIENTS="16 64" \
	    BENCH_IDLE_CLIENTS=0 bash bench/pgbench_compare.sh

# Read scaling over 2 streaming replicas, each node limited to half a core
# (a cgroup, where one can be written), and the cost of read-your-writes; see the header of
# bench/read_scaling.sh. BENCH_SECONDS and the other BENCH_* pass through.
BENCH_SECONDS ?= 10
bench-replicas: deps all
	BENCH_SECONDS=$(BENCH_SECONDS) bash bench/read_scaling.sh

# The result cache on a dashboard workload (GROUP BY over 300,000 rows, 16
# clients): direct, PgBouncer, pgscale without and with the cache, in-process
# and with Redis; see the header of bench/cache_dashboard.sh.
bench-cache: deps all
	BENCH_SECONDS=$(BENCH_SECONDS) bash bench/cache_dashboard.sh

# The binary, the systemd unit (its ExecStart pointed at BINDIR), the
# sysusers.d entry that creates the pgscale user, and the example .env file
# beside the docs.  /etc is left alone: the .env file
# holds a password and is copied there by hand (docs/deployment.md).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR     ?= $(PREFIX)/share/doc/pgscale

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 build/pgscale $(DESTDIR)$(BINDIR)/pgscale
	sed -e 's|/usr/local/bin/pgscale|$(BINDIR)/pgscale|' \
	    -e 's|/usr/local/share/doc/pgscale|$(DOCDIR)|' \
	    packaging/systemd/pgscale.service >$(DESTDIR)$(UNITDIR)/pgscale.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/pgscale.service
	install -m 0644 packaging/systemd/pgscale.sysusers $(DESTDIR)$(SYSUSERSDIR)/pgscale.conf
	install -m 0644 packaging/systemd/pgscale.env docs/*.md $(DESTDIR)$(DOCDIR)/

# The seed's table: single database, + cache, primary + replicas, replicas
# + cache, the same read-heavy workload, each PostgreSQL node capped at the
# same CPU share; see the header of bench/seed_table.sh. BENCH_SECONDS
# (30 s a stage unless given: the demo runs 10), BENCH_CLIENTS,
# BENCH_NODE_CPU and BENCH_REPLICAS (up to 5, the seed's last row) pass
# through from the environment or make's command line.
bench-seed: deps all
	bash bench/seed_table.sh

clean:
	rm -rf build build-asan build-tsan build-fuzz
