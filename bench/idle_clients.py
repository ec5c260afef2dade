#!/usr/bin/python3
"""Idle-client memory: how much memory a proxy spends per idle client.

Measured as a user would see it: the proxy is started fresh, COUNT clients
are opened from another process (each takes the real start-up: startup
packet, authentication, until ReadyForQuery, then sits idle), and the proxy's
VmRSS (all threads) is read before and after; the growth divided by COUNT is
the cost of one idle client.

    idle_clients.py compare [--database-url URL] [--count N]
        pgscale and PgBouncer side by side, each started fresh in transaction
        mode against the same PostgreSQL (DATABASE_URL, or a throw-away one
        from scripts/pgcluster.sh); prints KiB per client and the ratio.
    idle_clients.py measure --port P --pid PID [--count N]
        one proxy that is already running (it need not be fresh).
    idle_clients.py hold --port P [--count N]
        the client side alone: opens the connections, prints one line
        `HELD ok=N failed=F`, keeps them open until its stdin closes.

Raw sockets on asyncio, so the client side is cheap and nothing but the
handshake is sent.  Trust, cleartext, md5 and SCRAM-SHA-256 are understood
(the last three need --password).  Machine-readable lines:
    RESULT label=... clients=N failed=F rss_before_kib=B rss_after_kib=A kib_per_client=K
    RATIO pgscale/pgbouncer=R
Exit status: 0 when every client got in, 1 otherwise.
"""

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
FD_WANT_EXTRA = 256


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------- client side
def startup_message(user, database):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database), ("application_name", "idle_clients")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind, payload):
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def read_message(reader):
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack("!I", head[1:])[0]
    if length < 4 or length > 1 << 20:
        raise ValueError(f"bad message length {length} for type {kind!r}")
    return kind, await reader.readexactly(length - 4)


def error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('C', '?')} {fields.get('M', '?')}"


@functools.lru_cache(maxsize=64)
def salted_password(password, salt_b64, iterations):
    """PBKDF2 of the password, once per (password, salt, iterations): a
    server gives one user the same salt on every login (PostgreSQL, and
    pgscale for DATABASE_URL's user), so thousands of handshakes need one
    derivation -- the client's CPU is not what this measures."""
    return hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(salt_b64), iterations)


class Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677), without channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def first(self):
        data = ("n,," + self.first_bare).encode()
        return b"SCRAM-SHA-256\0" + struct.pack("!I", len(data)) + data

    def final(self, server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("SCRAM: server nonce does not extend ours")
        salted = salted_password(self.password, attrs["s"], int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_msg = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


async def connect_one(args):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        writer.write(startup_message(args.user, args.database))
        await writer.drain()
        scram = None
        while True:
            kind, payload = await read_message(reader)
            if kind == b"Z":
                return reader, writer
            if kind == b"E":
                raise ConnectionError(error_text(payload))
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!I", payload[:4])[0]
            if code == 0:
                continue
            if args.password is None:
                raise ConnectionError(f"server asks for a password (auth code {code}); pass --password")
            if code == 3:
                writer.write(message(b"p", args.password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5(args.password.encode() + args.user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                writer.write(message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                scram = Scram(args.password)
                writer.write(message(b"p", scram.first()))
            elif code == 11:
                writer.write(message(b"p", scram.final(payload[4:])))
            elif code == 12:
                continue
            else:
                raise ConnectionError(f"unsupported authentication request {code}")
            await writer.drain()
    except BaseException:
        writer.close()
        raise


async def hold(args):
    """Opens the connections, reports, keeps them until stdin closes."""
    conns, errors = [], {}
    sem = asyncio.Semaphore(args.concurrency)

    async def one():
        async with sem:
            try:
                conns.append(await asyncio.wait_for(connect_one(args), args.connect_timeout))
            except (OSError, ConnectionError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                key = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.count))), args.timeout)
    print(f"HELD ok={len(conns)} failed={sum(errors.values())} seconds={time.monotonic() - t0:.1f} "
          f"errors={json.dumps(errors)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for _, w in conns:
        try:
            w.write(message(b"X", b""))
            w.close()
        except OSError:
            pass
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    return 0


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < want:
        sys.exit(f"idle_clients: need {want} file descriptors, limit is {soft}; raise `ulimit -n`")


# ---------------------------------------------------------------- measuring
@contextlib.contextmanager
def held_clients(hold_args, label="clients", wait=60):
    """Runs `idle_clients.py hold HOLD_ARGS...` in a child process (so that
    the caller's descriptors are not involved) and yields its HELD line's
    fields (ok, failed, seconds, and errors as a dict) once every client has
    logged in or failed; the clients are closed when the block ends.  The
    integration test of idle-client memory uses it too."""
    child = subprocess.Popen(
        [sys.executable, "-B", str(Path(__file__).resolve()), "hold"] + [str(a) for a in hold_args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line.startswith("HELD "):
            raise RuntimeError(f"{label}: the client process failed ({line.strip() or 'no output'})")
        fields = dict(kv.split("=", 1) for kv in line.split(" ", 5)[1:5])
        fields["errors"] = json.loads(line.split("errors=", 1)[1])
        yield fields
    finally:
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(wait)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure_pid(args, pid, port, label):
    """Runs the client side in a child process against port; returns a dict."""
    before = vmrss_kib(pid)
    hold_args = ["--host", args.host, "--port", port, "--user", args.user,
                 "--database", args.database, "--count", args.count,
                 "--concurrency", args.concurrency, "--connect-timeout", args.connect_timeout,
                 "--timeout", args.timeout] + (["--password", args.password] if args.password else [])
    with held_clients(hold_args, label) as fields:
        errors = fields["errors"]
        time.sleep(args.hold)  # let the proxy settle (deferred frees, buffers returned)
        after = vmrss_kib(pid)
    n = int(fields["ok"])
    per = (after - before) / n if n else float("nan")
    print(f"  {label}: {n} idle clients in {fields['seconds']}s; RSS {before} KiB -> {after} KiB; "
          f"{per:.2f} KiB per idle client", flush=True)
    for e, c in sorted(errors.items(), key=lambda x: -x[1]):
        print(f"  {label}: {c} clients failed: {e}")
    print(f"RESULT label={label} clients={n} failed={fields['failed']} rss_before_kib={before} "
          f"rss_after_kib={after} kib_per_client={per:.3f}", flush=True)
    return {"n": n, "failed": int(fields["failed"]), "per": per}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_pgscale(args, url, tmp):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PGSCALE_", "DB_")) and k not in ("DATABASE_URL", "READ_REPLICA_URLS", "REDIS_URL")}
    env.update(DATABASE_URL=url, PGSCALE_LISTEN=f"127.0.0.1:{port}", PGSCALE_POOL_MODE="transaction",
               DB_POOL_SIZE="20", DB_MAX_OVERFLOW="10", PGSCALE_MAX_CLIENT_CONN=str(args.count + 2000),
               PGSCALE_LOG_LEVEL="warn")
    for k in ("PGSCALE_WORKERS", "PGSCALE_AUTH_TYPE"):
        if k in os.environ:
            env[k] = os.environ[k]
    log = open(tmp / "pgscale.log", "wb")
    proc = subprocess.Popen([str(args.pgscale)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    return proc, port


def start_pgbouncer(args, url, tmp):
    u = urlparse(url)
    port = free_port()
    d = tmp / "pgbouncer"
    d.mkdir()
    (d / "userlist.txt").write_text(f'"{unquote(u.username)}" "{unquote(u.password or "")}"\n')
    # Clients authenticate to both proxies the same way: SCRAM-SHA-256
    # against the URL's password (pgscale's default), unless
    # PGSCALE_AUTH_TYPE=trust asks for trust on both.
    auth = "trust" if os.environ.get("PGSCALE_AUTH_TYPE") == "trust" or not u.password \
        else "scram-sha-256"
    (d / "pgbouncer.ini").write_text(f"""[databases]
{args.database} = host={u.hostname} port={u.port or 5432} dbname={u.path.lstrip('/') or args.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = {auth}
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = {args.count + 2000}
logfile = {d}/pgbouncer.log
log_connections = 0
log_disconnections = 0
""")
    os.chmod(d / "userlist.txt", 0o600)
    argv = [args.pgbouncer, str(d / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; setpriv execs it in place, so
        # the pid is PgBouncer's own.
        shutil.chown(tmp, "postgres", "postgres")
        for p in (d, d / "userlist.txt", d / "pgbouncer.ini"):
            shutil.chown(p, "postgres", "postgres")
        argv = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"] + argv
    log = open(tmp / "pgbouncer.out", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/")
    return proc, port


def compare(args):
    tmp = Path(tempfile.mkdtemp(prefix="pgscale-idle."))
    os.chmod(tmp, 0o711)
    cluster = None
    url = args.database_url
    try:
        if not url:
            pgport = free_port()
            cluster = tmp / "cluster"
            r = subprocess.run([str(ROOT / "scripts" / "pgcluster.sh"), "start", str(cluster), str(pgport), "0"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"idle_clients: could not start PostgreSQL:\n{r.stdout}{r.stderr}")
            url = f"postgresql://{args.user}:{args.password_server}@127.0.0.1:{pgport}/{args.database}"
        if args.password is None:
            # pgscale asks clients for DATABASE_URL's password by default
            args.password = unquote(urlparse(url).password or "") or None
        print(f"== Idle clients: {args.count} connections opened by a separate process, each through "
              f"start-up to ReadyForQuery, then idle; each proxy started fresh; VmRSS before and after", flush=True)
        results = {}
        for label in args.targets.split(","):
            if label == "pgbouncer" and not shutil.which(args.pgbouncer):
                print("  pgbouncer: not installed, skipped")
                continue
            sub = tmp / label
            sub.mkdir()
            os.chmod(sub, 0o711)
            proc, port = (start_pgscale if label == "pgscale" else start_pgbouncer)(args, url, sub)
            try:
                if not wait_port(port, proc):
                    print(f"  {label}: did not start; see {sub}")
                    continue
                time.sleep(0.5)
                results[label] = measure_pid(args, proc.pid, port, label)
            finally:
                stop(proc)
            time.sleep(1)
        a, b = results.get("pgscale"), results.get("pgbouncer")
        if a and b and b["per"] > 0:
            print(f"  pgscale / PgBouncer: {a['per']:.2f} / {b['per']:.2f} KiB per client = {a['per'] / b['per']:.2f}")
            print(f"RATIO pgscale/pgbouncer={a['per'] / b['per']:.3f}", flush=True)
        return 0 if results and all(r["failed"] == 0 for r in results.values()) else 1
    finally:
        if cluster is not None:
            subprocess.run([str(ROOT / "scripts" / "pgcluster.sh"), "stop", str(cluster)], capture_output=True)
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"idle_clients: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", default="compare", choices=("compare", "measure", "hold"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--pid", type=int, help="measure: the proxy process whose VmRSS is read")
    ap.add_argument("--user", default="app")
    ap.add_argument("--database", default="app")
    ap.add_argument("--password", default=None, help="the clients' password, when the proxy asks for one")
    ap.add_argument("--password-server", default="secret", help="compare: app's password on the throw-away server")
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                    help="compare: the PostgreSQL both proxies use (default: a throw-away one)")
    ap.add_argument("--targets", default="pgbouncer,pgscale")
    ap.add_argument("--pgscale", default=os.environ.get("PGSCALE_BIN", str(ROOT / "build" / "pgscale")))
    ap.add_argument("--pgbouncer", default="pgbouncer")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--label", default="proxy")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight at once")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="seconds per handshake")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to stay idle before measuring")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on opening the connections, seconds")
    args = ap.parse_args()

    raise_fd_limit(args.count + FD_WANT_EXTRA)   # children (proxies, client process) inherit it
    if args.mode == "hold":
        if not args.port:
            ap.error("hold needs --port")
        return asyncio.run(hold(args))
    if args.mode == "measure":
        if not args.port or not args.pid:
            ap.error("measure needs --port and --pid")
        r = measure_pid(args, args.pid, args.port, args.label)
        return 0 if r["failed"] == 0 else 1
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
