// node-postgres connections driven over stdin/stdout, one JSON object a
// line, so that the integration tests' driver-independent scenarios
// (tests/integration/differential.py) run through node-postgres as they do
// through the Python drivers.  One process serves many connections (starting
// node costs more than a scenario), one request at a time.
//
// Requests, each with "client" (an id the caller chooses): {"op":
// "connect", "config": {...}}, {"op": "query", "text", "values", "name"},
// {"op": "copyIn", "text", "data"}, {"op": "copyOut", "text"}, {"op":
// "end"}.  Every answer carries the notices and notifications that client
// received since its previous answer.  Values go back as
// [type name, text] pairs, the type being what node-postgres returned
// (string, number, boolean, Date, Buffer, Array, object, null).
'use strict';
const readline = require('readline');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

const clients = new Map();  // id -> {client, notices, notifications}

function enc(v) {
  if (v === null || v === undefined) return ['null', null];
  if (Buffer.isBuffer(v)) return ['Buffer', v.toString('hex')];
  if (v instanceof Date) return ['Date', v.toISOString()];
  if (Array.isArray(v)) return ['Array', v.map(enc)];
  if (typeof v === 'object') return ['object', JSON.stringify(v)];
  return [typeof v, String(v)];
}

// Tagged parameters from the Python side: {"$bytes": hex}, {"$date": iso},
// {"$json": value}; anything else is passed as it is.
function dec(v) {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(dec);
  if ('$bytes' in v) return Buffer.from(v.$bytes, 'hex');
  if ('$date' in v) return new Date(v.$date);
  if ('$json' in v) return v.$json;
  return v;
}

function drained(id, obj) {
  const st = clients.get(id);
  obj.notices = st ? st.notices : [];
  obj.notifications = st ? st.notifications : [];
  if (st) {
    st.notices = [];
    st.notifications = [];
  }
  return obj;
}

async function handle(req) {
  const drained_ = (obj) => drained(req.client, obj);
  if (req.op === 'connect') {
    const st = { client: new Client(req.config), notices: [], notifications: [] };
    clients.set(req.client, st);
    st.client.on('notice', (m) => st.notices.push([m.severity, m.code, m.message]));
    st.client.on('notification', (m) => st.notifications.push([m.channel, m.payload]));
    st.client.on('error', () => {});
    await st.client.connect();
    return drained_({ ok: true });
  }
  const client = clients.get(req.client).client;
  switch (req.op) {
    case 'query': {
      const q = { text: req.text, values: dec(req.values || []), rowMode: 'array' };
      if (req.name) q.name = req.name;
      const r = await client.query(q);
      return drained_({
        ok: true,
        command: r.command,
        rowCount: r.rowCount,
        rows: r.rows.map((row) => row.map(enc)),
      });
    }
    case 'copyIn': {
      const stream = client.query(copyFrom(req.text));
      await new Promise((resolve, reject) => {
        stream.on('finish', resolve);
        stream.on('error', reject);
        stream.end(Buffer.from(req.data));
      });
      return drained_({ ok: true, command: 'COPY', rowCount: stream.rowCount, rows: [] });
    }
    case 'copyOut': {
      const stream = client.query(copyTo(req.text));
      const chunks = [];
      await new Promise((resolve, reject) => {
        stream.on('data', (c) => chunks.push(c));
        stream.on('end', resolve);
        stream.on('error', reject);
      });
      return drained_({ ok: true, command: 'COPY', rowCount: stream.rowCount,
                       data: Buffer.concat(chunks).toString() });
    }
    case 'end':
      try {
        await client.end();
      } finally {
        clients.delete(req.client);
      }
      return { ok: true, notices: [], notifications: [] };
    default:
      return { ok: false, code: null, message: 'unknown op ' + req.op };
  }
}

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  const req = JSON.parse(line);
  chain = chain
    .then(() => handle(req))
    .catch((err) => drained(req.client, { ok: false, code: err.code || null,
                                          message: String(err.message) }))
    .then((res) => process.stdout.write(JSON.stringify(res) + '\n'));
});
rl.on('close', () => chain.then(() => process.exit(0)));
