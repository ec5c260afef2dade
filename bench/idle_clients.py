#!/usr/bin/python3
"""Idle-client memory test: how much memory a proxy spends per idle client.

Opens COUNT client connections to HOST:PORT, takes each through the startup
handshake (StartupMessage, authentication, until ReadyForQuery) and leaves it
idle; measures the proxy's resident memory (VmRSS of --pid, all threads)
before and after, prints KiB per idle client, then closes every connection.

Raw sockets on asyncio, so the client side is cheap and nothing but the
handshake is sent. Trust, cleartext, md5 and SCRAM-SHA-256 authentication are
understood (the last three need --password).

Prints a human-readable report and one machine-readable line:
    RESULT label=... clients=N failed=F rss_before_kib=B rss_after_kib=A kib_per_client=K
Exit status: 0 when every client got in, 1 otherwise.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import resource
import struct
import sys
import time


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


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
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
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


async def run(args):
    before = vmrss_kib(args.pid)
    conns, errors = [], {}
    sem = asyncio.Semaphore(args.concurrency)
    progress_every = max(1, args.count // 5)

    async def one(i):
        async with sem:
            try:
                conns.append(await asyncio.wait_for(connect_one(args), args.connect_timeout))
            except (OSError, ConnectionError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                key = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                errors[key] = errors.get(key, 0) + 1
            done = len(conns) + sum(errors.values())
            if done % progress_every == 0 and not args.quiet:
                print(f"  {args.label}: {done}/{args.count} handshakes done ({len(conns)} ok)", flush=True)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(args.count)))
    elapsed = time.monotonic() - t0

    # Let the proxy settle (deferred frees, buffers returned), then sample.
    await asyncio.sleep(args.hold)
    after = vmrss_kib(args.pid)
    n = len(conns)
    per_client = (after - before) / n if n else float("nan")

    for _, w in conns:
        try:
            w.write(message(b"X", b""))
            w.close()
        except OSError:
            pass
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)

    failed = sum(errors.values())
    print(f"  {args.label}: {n} idle clients in {elapsed:.1f}s; RSS {before} KiB -> {after} KiB; "
          f"{per_client:.2f} KiB per idle client")
    for e, c in sorted(errors.items(), key=lambda x: -x[1]):
        print(f"  {args.label}: {c} clients failed: {e}")
    print(f"RESULT label={args.label} clients={n} failed={failed} rss_before_kib={before} "
          f"rss_after_kib={after} kib_per_client={per_client:.3f}", flush=True)
    return 0 if failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="app")
    ap.add_argument("--database", default="app")
    ap.add_argument("--password", default=None)
    ap.add_argument("--pid", type=int, required=True, help="the proxy process whose VmRSS is measured")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--label", default="proxy")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight at once")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="seconds per handshake")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to stay idle before measuring")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on the whole run, seconds")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < want:
            sys.exit(f"idle_clients: need {want} file descriptors, limit is {soft}; raise `ulimit -n`")

    try:
        return asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"idle_clients: {args.label}: gave up after {args.timeout:.0f}s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
