"""node-postgres (npm `pg`, installed under tests/node by
scripts/install-deps.sh) through pgscale: its Pool, parameterised queries,
a named prepared statement reused across the pool's clients, an error and
the recovery after it.  tests/node/pool.js does the work and prints JSON."""
import json
import shutil

import pytest

from differential import NODE_DIR, node_modules_missing
from helpers import APP_DB, APP_PASSWORD, APP_USER, BOTH_MODES, BackendSampler, run

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.deadline(90),
]

SERVER_POOL = 3


def _run_pool_js(pg, node_max, queries):
    if node_modules_missing():
        pytest.fail("tests/node/node_modules lacks %s: run scripts/install-deps.sh"
                    % ", ".join(node_modules_missing()))
    cfg = dict(host=pg.host, port=pg.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB,
               max=node_max, queries=queries)
    r = run(["node", str(NODE_DIR / "pool.js"), json.dumps(cfg)], timeout=60)
    lines = r.stdout.strip().splitlines()
    assert lines, "pool.js printed nothing (rc=%d): %s" % (r.returncode, r.stderr[-3000:])
    out = json.loads(lines[-1])
    assert r.returncode == 0 and "fatal" not in out, out
    return out


@BOTH_MODES
def test_node_pg_pool_through_pgscale(pgscale, primary, pool_mode):
    pg = pgscale(PGSCALE_POOL_MODE=pool_mode, DB_POOL_SIZE=SERVER_POOL, DB_MAX_OVERFLOW=0)
    # In transaction mode the node pool is four times pgscale's server pool;
    # in session mode each of its clients keeps a server, so it may not be
    # bigger than the server pool.
    node_max = 4 * SERVER_POOL if pool_mode == "transaction" else SERVER_POOL
    with BackendSampler(primary) as sampler:
        out = _run_pool_js(pg, node_max, queries=60)

    assert sorted(out["concurrent"]) == list(range(60))
    if pool_mode == "transaction":
        assert out["poolClients"] > SERVER_POOL, out["poolClients"]
    assert 0 < sampler.max <= SERVER_POOL, sampler.samples

    assert out["params"] == {
        "i": 7, "t": "it's", "n": "3.14", "ts": "2024-02-29T12:30:15.123Z", "b": "0001ff",
        "j": {"k": [1, None]}, "a": [1, 2, 3], "nul": None,
    }
    assert out["prepared"] == [[2 * i, "s%d" % i] for i in range(80)]

    assert out["error"] == "22012"
    assert out["afterError"] == "fine"
    assert out["txError"] == "22P02"
    assert out["inFailedTx"] == "25P02"
    assert out["afterRollback"] == [42, "ok"]
