"""A tiny PostgreSQL v3 wire-protocol client for tests that need to see (or
break) the protocol itself: exact SQLSTATEs of asynchronous errors, garbage
and oversized messages, half-sent messages, SSLRequest, CancelRequest.

Drivers hide most of this (psycopg2 turns a FATAL at login into a bare
OperationalError without a SQLSTATE), so tests that assert on the wire use
RawConn.  Every read is bounded by a timeout.
"""
import base64
import hashlib
import hmac
import os
import socket
import struct
import time

from helpers import APP_PASSWORD

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class ProtocolTimeout(AssertionError):
    """No (complete) message arrived within the timeout."""


def startup_packet(user="app", database="app", **params):
    body = struct.pack("!I", PROTOCOL_V3)
    items = {"user": user, "database": database}
    items.update(params)
    for k, v in items.items():
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request():
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request():
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid, key):
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def message(mtype, payload=b""):
    return mtype + struct.pack("!I", len(payload) + 4) + payload


def query(sql):
    if isinstance(sql, str):
        sql = sql.encode()
    return message(b"Q", sql + b"\0")


def terminate():
    return message(b"X")


def parse_fields(payload):
    """ErrorResponse / NoticeResponse payload -> {'C': sqlstate, 'M': msg, ...}."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def send_cancel(host, port, pid, key, timeout=5.0):
    """Sends a CancelRequest on a fresh connection and waits for the close."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cancel_request(pid, key))
        try:
            s.recv(1)
        except OSError:
            pass


class RawConn:
    """One raw protocol connection.  Messages are (type: bytes, payload: bytes)."""

    def __init__(self, host, port, timeout=10.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.eof = False
        self.backend_key = None   # (pid, key) from BackendKeyData
        self.params = {}          # ParameterStatus
        self.notices = []

    # -- low level ---------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProtocolTimeout("timed out waiting for data from %s:%d" % (self.host, self.port))
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise ProtocolTimeout("timed out waiting for data from %s:%d" % (self.host, self.port))
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def recv_byte(self, timeout=10.0):
        """One byte (the answer to SSLRequest / GSSENCRequest), or b'' at EOF."""
        deadline = time.monotonic() + timeout
        while not self.buf and not self.eof:
            self._fill(deadline)
        out, self.buf = self.buf[:1], self.buf[1:]
        return out

    def recv_msg(self, timeout=10.0):
        """Next message, or None when the peer closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 5:
                mtype = self.buf[:1]
                (length,) = struct.unpack("!I", self.buf[1:5])
                if length < 4:
                    raise AssertionError("peer sent a message with bad length %d" % length)
                if len(self.buf) >= 1 + length:
                    payload = self.buf[5:1 + length]
                    self.buf = self.buf[1 + length:]
                    self._note(mtype, payload)
                    return mtype, payload
            if self.eof:
                return None
            self._fill(deadline)

    def _note(self, mtype, payload):
        if mtype == b"K" and len(payload) >= 8:
            self.backend_key = struct.unpack("!II", payload[:8])
        elif mtype == b"S":
            parts = payload.split(b"\0")
            if len(parts) >= 2:
                self.params[parts[0].decode()] = parts[1].decode()
        elif mtype == b"N":
            self.notices.append(parse_fields(payload))

    # -- higher level ------------------------------------------------------
    def read_until_ready(self, timeout=10.0):
        """Messages up to and including ReadyForQuery (or until EOF)."""
        deadline = time.monotonic() + timeout
        msgs = []
        while True:
            m = self.recv_msg(timeout=max(0.001, deadline - time.monotonic()))
            if m is None:
                return msgs
            msgs.append(m)
            if m[0] == b"Z":
                return msgs

    def read_until_close(self, timeout=10.0):
        """Messages until the peer closes; raises ProtocolTimeout if it doesn't."""
        deadline = time.monotonic() + timeout
        msgs = []
        while True:
            m = self.recv_msg(timeout=max(0.001, deadline - time.monotonic()))
            if m is None:
                return msgs
            msgs.append(m)

    def startup(self, user="app", database="app", timeout=10.0, **params):
        """Startup, answering a password request with the application's
        password as `app` (pgscale's default asks for it) and with an empty
        one for anyone else; messages up to ReadyForQuery or the close."""
        return self.login(user, database, APP_PASSWORD if user == "app" else "", timeout,
                          **params)

    def login(self, user="app", database="app", password="", timeout=10.0, **params):
        """Startup with password authentication (cleartext, md5 or
        SCRAM-SHA-256, whichever the peer asks for).  Returns every message
        up to ReadyForQuery or the close, so that a refusal's ErrorResponse
        (with its SQLSTATE, which drivers do not expose at login) is seen."""
        self.send(startup_packet(user, database, **params))
        msgs = []
        scram = None
        while True:
            m = self.recv_msg(timeout)
            if m is None:
                return msgs
            msgs.append(m)
            mtype, payload = m
            if mtype in (b"Z", b"E"):
                if mtype == b"E":
                    msgs.extend(self.read_until_close(timeout))
                return msgs
            if mtype != b"R":
                continue
            (code,) = struct.unpack("!I", payload[:4])
            if code == 3:
                self.send(message(b"p", password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                scram = _Scram(password)
                first = scram.client_first()
                self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) +
                                  first))
            elif code == 11:
                self.send(message(b"p", scram.client_final(payload[4:])))

    def simple_query(self, sql, timeout=10.0):
        self.send(query(sql))
        return self.read_until_ready(timeout)

    def close(self, abort=False):
        """abort=True closes with RST (SO_LINGER 0) instead of a FIN."""
        try:
            if abort:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802/7677), without channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.first_bare = "n=,r=" + base64.b64encode(os.urandom(18)).decode()

    def client_first(self):
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first):
        server_first = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + attrs["r"]
        auth_msg = ",".join((self.first_bare, server_first, without_proof)).encode()
        sig = hmac.new(stored_key, auth_msg, "sha256").digest()
        proof = base64.b64encode(bytes(x ^ y for x, y in zip(client_key, sig))).decode()
        return (without_proof + ",p=" + proof).encode()


def errors(msgs):
    """ErrorResponse field dicts among msgs."""
    return [parse_fields(p) for t, p in msgs if t == b"E"]


def ready_status(msgs):
    """Transaction status byte of the last ReadyForQuery ('I', 'T', 'E'), or None."""
    for t, p in reversed(msgs):
        if t == b"Z":
            return p[:1].decode()
    return None


def raw_rows(msgs):
    """DataRow messages as lists of bytes/None (no decoding: for any encoding)."""
    rows = []
    for t, p in msgs:
        if t != b"D":
            continue
        (n,) = struct.unpack("!H", p[:2])
        off, row = 2, []
        for _ in range(n):
            (ln,) = struct.unpack("!i", p[off:off + 4])
            off += 4
            row.append(None if ln < 0 else p[off:off + ln])
            off += max(ln, 0)
        rows.append(row)
    return rows


def data_rows(msgs):
    """DataRow messages decoded as lists of str/None (text format)."""
    return [[None if v is None else v.decode() for v in row] for row in raw_rows(msgs)]
