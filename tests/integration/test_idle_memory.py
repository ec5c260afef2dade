"""Idle clients are cheap: 10,000 logged-in idle clients grow pgscale's
memory by a few hundred bytes each (bench/idle_clients.py measures the exact
figure against PgBouncer; this test guards against a regression with a
generous bound)."""
import resource
import sys
import time

import pytest

from conftest import REPO_ROOT
from helpers import APP_DB, APP_PASSWORD, APP_USER, is_sanitized, proc_kb

sys.path.insert(0, str(REPO_ROOT / "bench"))
import idle_clients  # noqa: E402  (bench/: the client side of the measurement)

N_CLIENTS = 10000
KIB_PER_CLIENT_BOUND = 4.0


@pytest.mark.deadline(90)
def test_ten_thousand_idle_clients_cost_under_4_kib_each(pgscale):
    # pgscale raises its own soft open-files limit to the hard one (main.c);
    # the hard limit must leave room for 10,000 clients and the servers.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N_CLIENTS + 512:
        pytest.skip("open-files hard limit %d is below %d" % (hard, N_CLIENTS + 512))
    pg = pgscale(PGSCALE_MAX_CLIENT_CONN=N_CLIENTS + 1000, PGSCALE_LOG_LEVEL="warn")
    if is_sanitized(pg.pid):
        pytest.skip("AddressSanitizer's redzones and quarantine make VmRSS meaningless here")
    time.sleep(0.3)
    before = proc_kb(pg.pid, "VmRSS")
    # The clients live in another process (raw sockets on asyncio), so this
    # process's descriptors are not involved; it raises its own limit.
    hold_args = ["--port", pg.port, "--user", APP_USER, "--database", APP_DB,
                 "--password", APP_PASSWORD,
                 "--count", N_CLIENTS, "--timeout", 60]
    with idle_clients.held_clients(hold_args, wait=30) as fields:
        assert int(fields["ok"]) == N_CLIENTS, fields
        time.sleep(1.0)
        after = proc_kb(pg.pid, "VmRSS")
        per = (after - before) / N_CLIENTS
        print("%d idle clients: VmRSS %d -> %d KiB, %.2f KiB each" % (N_CLIENTS, before, after, per))
        assert per <= KIB_PER_CLIENT_BOUND, (
            "%d idle clients grew pgscale's VmRSS by %d KiB: %.2f KiB each (bound %.1f)"
            % (N_CLIENTS, after - before, per, KIB_PER_CLIENT_BOUND))
