"""Differential scenarios: the same steps run through one driver directly
against PostgreSQL and through pgscale, and the two traces compared.

A scenario is a function taking a connection factory: `connect()` returns a
`Session`, the same small interface over psycopg2, psycopg 3, asyncpg and
node-postgres (through tests/node/rpc.js).  Every call of a session records
one step in the run's trace, under a label the scenario gives: the outcome
(rows as the driver returned them, each value as (type name, text), and the
command status; or the error's SQLSTATE) and the notices that arrived with it
(severity, SQLSTATE, message).  Errors never stop a scenario, so a direct run
and a run through pgscale record the same labels in the same order and can
be compared step by step.

SQL is written with $1, $2 ... placeholders (used in order); the psycopg
sessions turn them into %s.  Parameters are plain Python values, `Json(...)`
for a json parameter.

Only what must differ is normalised: no scenario returns a backend pid or
now(); they compare facts about them instead.
"""
import asyncio
import datetime
import decimal
import hashlib
import io
import json
import re
import select
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
STEP_TIMEOUT = 20


class Json:
    """A json parameter (each driver wraps it its own way)."""

    def __init__(self, obj):
        self.obj = obj


# --------------------------------------------------------------------------
# Values and outcomes
# --------------------------------------------------------------------------
def py_value(v):
    """(type name, text) of a value a Python driver returned."""
    t = type(v).__name__
    if v is None:
        return (t, None)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (t, bytes(v).hex())
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return (t, v.isoformat())
    if isinstance(v, (list, tuple)):
        return (t, [py_value(x) for x in v])
    if isinstance(v, dict):
        return (t, json.dumps(v, sort_keys=True))
    return (t, str(v))


def ok(status, rows):
    return ("ok", status, rows)


def error(sqlstate):
    return ("error", sqlstate)


def text_of(outcome):
    """The rows of an outcome without the type names (None for an error):
    what the expected-differences table states, the same for every driver."""
    if outcome[0] != "ok":
        return None

    def plain(cell):
        t, v = cell
        return [plain(x) for x in v] if isinstance(v, list) else v
    return [tuple(plain(c) for c in row) for row in outcome[2]]


class Trace:
    def __init__(self):
        self.steps = []   # (label, outcome, notices)

    def add(self, label, outcome, notices):
        self.steps.append((label, outcome, tuple(notices)))

    def labels(self):
        return [s[0] for s in self.steps]


# --------------------------------------------------------------------------
# Sessions: one per driver
# --------------------------------------------------------------------------
class Session:
    """What scenarios call.  Subclasses implement _run/_copy_in/_copy_out/
    _listen/_notifications/_prepared/_close; this class records steps."""

    def __init__(self, trace, tag):
        self.trace, self.tag = trace, tag

    def _record(self, label, fn):
        try:
            outcome = fn()
        except DriverError as e:
            outcome = error(e.sqlstate)
        self.trace.add("%s:%s" % (self.tag, label), outcome, self._drain_notices())
        return outcome

    def run(self, label, sql, params=()):
        return self._record(label, lambda: self._run(sql, list(params)))

    def prepared(self, label, name, sql, params):
        """Runs a statement prepared once under `name` (protocol level where
        the driver can; SQL PREPARE/EXECUTE for psycopg2)."""
        return self._record(label, lambda: self._prepared(name, sql, list(params)))

    def copy_in(self, label, sql, data):
        return self._record(label, lambda: self._copy_in(sql, data))

    def copy_out(self, label, sql):
        return self._record(label, lambda: self._copy_out(sql))

    def listen(self, label, channel):
        return self._record(label, lambda: self._listen(channel))

    def notifications(self, label):
        """The notifications received so far, as rows (channel, payload),
        after a round trip that lets them arrive."""
        def go():
            self._run("SELECT 1", [])
            return ok("notifications", [(("str", c), ("str", p)) for c, p in self._notifications()])
        return self._record(label, go)

    def large(self, label, sql):
        """A big result: the row count and a digest of the rows instead of
        the rows."""
        def go():
            o = self._run(sql, [])
            if o[0] != "ok":
                return o
            h = hashlib.sha256(repr(o[2]).encode()).hexdigest()[:16]
            return ok(o[1], [(("int", str(len(o[2]))), ("sha256", h))])
        return self._record(label, go)

    def close(self):
        try:
            self._close()
        except Exception:
            pass


class DriverError(Exception):
    def __init__(self, sqlstate):
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def to_pyformat(sql, params):
    if not params:
        return sql
    return re.sub(r"\$\d+", "%s", sql.replace("%", "%%"))


class Psycopg2Session(Session):
    def __init__(self, trace, tag, dsn):
        import psycopg2
        super().__init__(trace, tag)
        self.pg2 = psycopg2
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.conn.notices = []
        self.prepared_names = set()

    def _drain_notices(self):
        # psycopg2 gives notices as text ("NOTICE:  message\n"): severity and
        # message only, no SQLSTATE.
        out = []
        for n in self.conn.notices:
            sev, _, msg = n.partition(":  ")
            out.append((sev, None, msg.rstrip("\n")))
        del self.conn.notices[:]
        return out

    def _params(self, params):
        from psycopg2.extras import Json as J
        return [J(p.obj) if isinstance(p, Json) else p for p in params]

    def _run(self, sql, params):
        try:
            with self.conn.cursor() as cur:
                cur.execute(to_pyformat(sql, params), self._params(params) if params else None)
                rows = [tuple(py_value(v) for v in r) for r in cur.fetchall()] \
                    if cur.description else []
                return ok(cur.statusmessage, rows)
        except self.pg2.Error as e:
            if e.pgcode is None:
                raise
            raise DriverError(e.pgcode)

    def _prepared(self, name, sql, params):
        if name not in self.prepared_names:
            self._run("PREPARE %s AS %s" % (name, sql), [])
            self.prepared_names.add(name)
        return self._run("EXECUTE %s (%s)" % (name, ", ".join("$%d" % (i + 1) for i in range(len(params)))),
                         params)

    def _copy_in(self, sql, data):
        try:
            with self.conn.cursor() as cur:
                cur.copy_expert(sql, io.StringIO(data))
                return ok(cur.statusmessage, [])
        except self.pg2.Error as e:
            raise DriverError(e.pgcode)

    def _copy_out(self, sql):
        try:
            with self.conn.cursor() as cur:
                buf = io.StringIO()
                cur.copy_expert(sql, buf)
                return ok(cur.statusmessage, [(("str", buf.getvalue()),)])
        except self.pg2.Error as e:
            raise DriverError(e.pgcode)

    def _listen(self, channel):
        return self._run("LISTEN %s" % channel, [])

    def _notifications(self):
        self.conn.poll()
        out = [(n.channel, n.payload) for n in self.conn.notifies]
        del self.conn.notifies[:]
        return out

    def _close(self):
        self.conn.close()


class Psycopg3Session(Session):
    def __init__(self, trace, tag, dsn):
        import psycopg
        super().__init__(trace, tag)
        self.pg = psycopg
        self.conn = psycopg.connect(dsn, autocommit=True)
        self._notices, self._notifies = [], []
        self.conn.add_notice_handler(
            lambda d: self._notices.append((d.severity, d.sqlstate, d.message_primary)))
        self.conn.add_notify_handler(lambda n: self._notifies.append((n.channel, n.payload)))

    def _drain_notices(self):
        out, self._notices = self._notices, []
        return out

    def _params(self, params):
        from psycopg.types.json import Json as J
        return [J(p.obj) if isinstance(p, Json) else p for p in params]

    def _run(self, sql, params, prepare=None):
        try:
            with self.conn.cursor() as cur:
                cur.execute(to_pyformat(sql, params), self._params(params) if params else None,
                            prepare=prepare)
                rows = [tuple(py_value(v) for v in r) for r in cur.fetchall()] \
                    if cur.description else []
                return ok(cur.statusmessage, rows)
        except self.pg.Error as e:
            if e.sqlstate is None:
                raise
            raise DriverError(e.sqlstate)

    def _prepared(self, name, sql, params):
        return self._run(sql, params, prepare=True)

    def _copy_in(self, sql, data):
        try:
            with self.conn.cursor() as cur:
                with cur.copy(sql) as cp:
                    cp.write(data)
                return ok(cur.statusmessage, [])
        except self.pg.Error as e:
            raise DriverError(e.sqlstate)

    def _copy_out(self, sql):
        try:
            with self.conn.cursor() as cur:
                with cur.copy(sql) as cp:
                    data = b"".join(bytes(b) for b in cp)
                return ok(cur.statusmessage, [(("str", data.decode()),)])
        except self.pg.Error as e:
            raise DriverError(e.sqlstate)

    def _listen(self, channel):
        return self._run("LISTEN %s" % channel, [])

    def _notifications(self):
        out, self._notifies = self._notifies, []
        return out

    def _close(self):
        self.conn.close()


class AsyncpgSession(Session):
    """asyncpg on an event loop shared by the run's sessions.  Every
    statement is prepared (asyncpg's own way) so that the command status can
    be read back."""

    def __init__(self, trace, tag, loop, kw):
        import asyncpg
        super().__init__(trace, tag)
        self.apg, self.loop = asyncpg, loop
        self._notices, self._notifies = [], []
        self.stmts = {}
        self.conn = self._wait(asyncpg.connect(timeout=10, command_timeout=STEP_TIMEOUT, **kw))
        self.conn.add_log_listener(
            lambda c, m: self._notices.append((m.severity, m.sqlstate, m.message)))

    def _wait(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, STEP_TIMEOUT))

    def _drain_notices(self):
        out, self._notices = self._notices, []
        return out

    def _params(self, params):
        return [json.dumps(p.obj) if isinstance(p, Json) else p for p in params]

    def _guard(self, coro):
        try:
            return self._wait(coro)
        except self.apg.PostgresError as e:
            raise DriverError(e.sqlstate)

    def _run(self, sql, params):
        async def go():
            stmt = await self.conn.prepare(sql)
            rows = await stmt.fetch(*self._params(params))
            return ok(stmt.get_statusmsg(), [tuple(py_value(v) for v in r) for r in rows])
        return self._guard(go())

    def _prepared(self, name, sql, params):
        async def go():
            if name not in self.stmts:
                self.stmts[name] = await self.conn.prepare(sql)
            stmt = self.stmts[name]
            rows = await stmt.fetch(*self._params(params))
            return ok(stmt.get_statusmsg(), [tuple(py_value(v) for v in r) for r in rows])
        return self._guard(go())

    def _copy_in(self, sql, data):
        # asyncpg copies into a table by name: "COPY <table> FROM STDIN"
        table = sql.split()[1]
        return ok(self._guard(self.conn.copy_to_table(table, source=io.BytesIO(data.encode()))), [])

    def _copy_out(self, sql):
        query = re.match(r"COPY \((.*)\) TO STDOUT", sql, re.S).group(1)
        buf = io.BytesIO()
        status = self._guard(self.conn.copy_from_query(query, output=buf))
        return ok(status, [(("str", buf.getvalue().decode()),)])

    def _listen(self, channel):
        # asyncpg delivers notifications only to a listener, and sends the
        # LISTEN itself
        self._guard(self.conn.add_listener(
            channel, lambda c, pid, ch, payload: self._notifies.append((ch, payload))))
        return ok("LISTEN", [])

    def _notifications(self):
        out, self._notifies = self._notifies, []
        return out

    def _close(self):
        self._wait(self.conn.close(timeout=5))


def _node_param(p):
    if isinstance(p, Json):
        return {"$json": p.obj}
    if isinstance(p, (bytes, bytearray)):
        return {"$bytes": bytes(p).hex()}
    if isinstance(p, datetime.datetime):
        return {"$date": p.isoformat()}
    if isinstance(p, decimal.Decimal):
        return str(p)
    if isinstance(p, list):
        return [_node_param(x) for x in p]
    return p


class NodeHost:
    """The one `node rpc.js` process that serves every node-postgres session
    (started on first use, stopped by stop_node())."""
    proc = None
    next_id = 0

    @classmethod
    def call(cls, req):
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen(["node", str(NODE_DIR / "rpc.js")], cwd=str(NODE_DIR),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        cls.proc.stdin.write(json.dumps(req) + "\n")
        cls.proc.stdin.flush()
        ready, _, _ = select.select([cls.proc.stdout], [], [], STEP_TIMEOUT)
        if not ready:
            cls.stop()
            raise RuntimeError("node-postgres did not answer %r within %d s" % (req, STEP_TIMEOUT))
        line = cls.proc.stdout.readline()
        if not line:
            err = cls.proc.stderr.read()
            cls.stop()
            raise RuntimeError("node rpc.js exited: %s" % err[-2000:])
        return json.loads(line)

    @classmethod
    def stop(cls):
        if cls.proc is not None:
            cls.proc.kill()
            cls.proc.wait(5)
            cls.proc = None


def stop_node():
    NodeHost.stop()


class NodeSession(Session):
    """A node-postgres Client in the shared `node rpc.js` process."""

    def __init__(self, trace, tag, config):
        super().__init__(trace, tag)
        NodeHost.next_id += 1
        self.id = NodeHost.next_id
        self._notices, self._notifies = [], []
        r = self._call({"op": "connect", "config": config})
        if not r["ok"]:
            raise RuntimeError("node-postgres could not connect: %s" % r)

    def _call(self, req):
        req["client"] = self.id
        r = NodeHost.call(req)
        self._notices += [tuple(n) for n in r.get("notices", [])]
        self._notifies += [tuple(n) for n in r.get("notifications", [])]
        return r

    def _drain_notices(self):
        out, self._notices = self._notices, []
        return out

    @staticmethod
    def _row(row):
        return tuple((t, [tuple(x) for x in v] if isinstance(v, list) else v) for t, v in row)

    def _result(self, r):
        if not r["ok"]:
            if r.get("code") is None:
                raise RuntimeError("node-postgres failed without SQLSTATE: %s" % r.get("message"))
            raise DriverError(r["code"])
        status = "%s %s" % (r.get("command"), r.get("rowCount"))
        if "data" in r:
            return ok(status, [(("string", r["data"]),)])
        return ok(status, [self._row(row) for row in r["rows"]])

    def _run(self, sql, params, name=None):
        req = {"op": "query", "text": sql, "values": [_node_param(p) for p in params]}
        if name:
            req["name"] = name
        return self._result(self._call(req))

    def _prepared(self, name, sql, params):
        return self._run(sql, params, name=name)

    def _copy_in(self, sql, data):
        return self._result(self._call({"op": "copyIn", "text": sql, "data": data}))

    def _copy_out(self, sql):
        return self._result(self._call({"op": "copyOut", "text": sql}))

    def _listen(self, channel):
        return self._run("LISTEN %s" % channel, [])

    def _notifications(self):
        out, self._notifies = self._notifies, []
        return out

    def _close(self):
        self._call({"op": "end"})


DRIVERS = ("psycopg2", "psycopg3", "asyncpg", "node-postgres")


def node_available():
    from shutil import which
    return which("node") is not None


def node_modules_missing():
    """The tests/node packages that are not installed (scripts/install-deps.sh
    installs them)."""
    return [m for m in ("pg", "pg-copy-streams") if not (NODE_DIR / "node_modules" / m).is_dir()]


class Target:
    """Where a run connects: host, port, user, password, database."""

    def __init__(self, host, port, user, password, db):
        self.host, self.port, self.user, self.password, self.db = host, port, user, password, db

    def dsn(self):
        return "host=%s port=%d user=%s password=%s dbname=%s connect_timeout=10" % (
            self.host, self.port, self.user, self.password, self.db)


class Run:
    """One scenario run: a trace, a connection factory, unique names."""

    def __init__(self, driver, target, prefix):
        self.driver, self.target, self.prefix = driver, target, prefix
        self.trace = Trace()
        self.sessions = []
        self.loop = asyncio.new_event_loop() if driver == "asyncpg" else None

    def name(self, base):
        """A table/channel/sequence name unique to this run."""
        return "%s_%s" % (base, self.prefix)

    def connect(self):
        tag = "ABCDEFGH"[len(self.sessions)]
        t = self.target
        if self.driver == "psycopg2":
            s = Psycopg2Session(self.trace, tag, t.dsn())
        elif self.driver == "psycopg3":
            s = Psycopg3Session(self.trace, tag, t.dsn())
        elif self.driver == "asyncpg":
            s = AsyncpgSession(self.trace, tag, self.loop,
                               dict(host=t.host, port=t.port, user=t.user, password=t.password,
                                    database=t.db))
        else:
            s = NodeSession(self.trace, tag, dict(host=t.host, port=t.port, user=t.user,
                                                  password=t.password, database=t.db))
        self.sessions.append(s)
        return s

    def close(self):
        for s in self.sessions:
            s.close()
        if self.loop is not None:
            self.loop.close()


def run_scenario(scenario, driver, target, prefix):
    run = Run(driver, target, prefix)
    try:
        scenario(run)
    finally:
        run.close()
    return run.trace


def compare(direct, through):
    """[(label, direct step, through-pgscale step)] where they differ."""
    assert direct.labels() == through.labels(), (direct.labels(), through.labels())
    return [(d[0], d[1:], t[1:]) for d, t in zip(direct.steps, through.steps) if d != t]
