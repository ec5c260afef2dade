// node-postgres's Pool through pgscale: many concurrent queries, typed
// parameters, a named prepared statement reused across the pool's clients,
// an error and the recovery after it.  Prints one JSON object with what it
// saw; tests/integration/test_node_pg.py checks it.
//
// Usage: node pool.js '{"host": ..., "port": ..., "user": ..., "password":
// ..., "database": ..., "max": 12, "queries": 60}'
'use strict';
const { Pool } = require('pg');

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const pool = new Pool({
    host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password,
    database: cfg.database, max: cfg.max, connectionTimeoutMillis: 20000,
    idleTimeoutMillis: 0, statement_timeout: 20000,
  });
  const out = {};
  try {
    // 1. concurrent queries: more at once than pgscale has server connections
    const clients = new Set();
    const concurrent = await Promise.all(Array.from({ length: cfg.queries }, async (_, i) => {
      const c = await pool.connect();
      try {
        clients.add(c);
        const r = await c.query('SELECT $1::int AS n, pg_sleep(0.02)', [i]);
        return r.rows[0].n;
      } finally {
        c.release();
      }
    }));
    out.concurrent = concurrent;
    out.poolClients = clients.size;

    // 2. parameter types as node-postgres sends and returns them
    const r = await pool.query(
      'SELECT $1::int AS i, $2::text AS t, $3::numeric AS n, $4::timestamptz AS ts, ' +
      '$5::bytea AS b, $6::json AS j, $7::int[] AS a, $8::text AS nul',
      [7, "it's", '3.14', new Date('2024-02-29T12:30:15.123Z'), Buffer.from([0, 1, 255]),
       { k: [1, null] }, [1, 2, 3], null]);
    const row = r.rows[0];
    out.params = {
      i: row.i, t: row.t, n: row.n, ts: row.ts.toISOString(), b: row.b.toString('hex'),
      j: row.j, a: row.a, nul: row.nul,
    };

    // 3. one named prepared statement, reused many times across clients
    const prepared = await Promise.all(Array.from({ length: 80 }, (_, i) => pool.query({
      name: 'double_it', text: 'SELECT $1::int * 2 AS d, $2::text AS s', values: [i, 's' + i],
    }).then((res) => [res.rows[0].d, res.rows[0].s])));
    out.prepared = prepared;

    // 4. an error, then the same client again
    const c = await pool.connect();
    try {
      try {
        await c.query('SELECT 1 / $1::int', [0]);
        out.error = null;
      } catch (e) {
        out.error = e.code;
      }
      out.afterError = (await c.query('SELECT $1::text AS s', ['fine'])).rows[0].s;
      await c.query('BEGIN');
      try {
        await c.query({ name: 'double_it', text: 'SELECT $1::int * 2 AS d, $2::text AS s',
                        values: ['not a number', 'x'] });
        out.txError = null;
      } catch (e) {
        out.txError = e.code;
      }
      try {
        await c.query('SELECT 1');
        out.inFailedTx = null;
      } catch (e) {
        out.inFailedTx = e.code;
      }
      await c.query('ROLLBACK');
      const again = await c.query({ name: 'double_it', text: 'SELECT $1::int * 2 AS d, $2::text AS s',
                                    values: [21, 'ok'] });
      out.afterRollback = [again.rows[0].d, again.rows[0].s];
    } finally {
      c.release();
    }
    out.totalCount = pool.totalCount;
  } finally {
    await pool.end();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: String(e.stack || e), code: e.code || null }) + '\n');
  process.exit(1);
});
