# Thin wrapper over meson/ninja.  `make` builds build/pgscale; `make check`
# runs every test; `make demo` and `make bench` run the demo and benchmarks.
# check, demo and bench install their dependencies first (Debian 12, root).

PYTHON     ?= /usr/bin/python3
FUZZ_SECS  ?= 20
PYTEST_ARGS ?=

.PHONY: all deps check unit asan fuzz integration integration-asan demo bench clean

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
# inputs go to a scratch directory, not into the repository).
fuzz:
	[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true -Dtests=false \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
	ninja -C build-fuzz
	set -e; for t in proto config config_yaml sqlscan auth relay; do \
	    scratch=$$(mktemp -d); \
	    echo "fuzz_$$t: $(FUZZ_SECS) s"; \
	    build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECS) -print_final_stats=0 $$scratch fuzz/corpus/$$t 2>&1 | tail -n 3; \
	    rm -rf $$scratch; \
	done

integration: all
	$(PYTHON) -m pytest -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# The integration tests again against pgscale built with ASan+UBSan (a
# sanitizer report fails the test that ran it).
integration-asan: asan
	PGSCALE_BIN=build-asan/pgscale ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(PYTHON) -m pytest -p no:cacheprovider tests/integration $(PYTEST_ARGS)

check: deps all unit asan fuzz integration integration-asan

demo: deps all
	bash scripts/demo.sh

bench: deps all
	bash bench/pgbench_compare.sh

clean:
	rm -rf build build-asan build-fuzz
