"""pgscale logging in to servers that try to abuse it: a fake PostgreSQL
(plain sockets, one thread) that asks for 9,999,999 SCRAM iterations, asks
for the password in clear text over plain TCP, or offers only
SCRAM-SHA-256-PLUS over TLS and checks the channel binding against its own
certificate.  The real PostgreSQL's cleartext ("password") and TLS cases
are in test_clientauth.py and test_tls.py."""
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import pgwire
from helpers import APP_PASSWORD, LOCALHOST, free_port

PASSWORD = "fake-pw"


def _msg(t, payload=b""):
    return t + struct.pack("!I", len(payload) + 4) + payload


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class FakePG:
    """One listening socket; each connection runs `script(conn, fake)` after
    the startup packet (and TLS, when tls_ctx is given and asked for).
    Everything read from pgscale after the startup packet is in .received."""

    def __init__(self, script, tls_ctx=None):
        self.script = script
        self.tls_ctx = tls_ctx
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received = b""
        self.notes = {}
        self.logins = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def url(self):
        return "postgresql://app:%s@%s:%d/app" % (PASSWORD, LOCALHOST, self.port)

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        try:
            n = struct.unpack("!I", _recv_exact(c, 4))[0]
            body = _recv_exact(c, n - 4)
            if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest
                if self.tls_ctx is None:
                    c.sendall(b"N")
                else:
                    c.sendall(b"S")
                    c = self.tls_ctx.wrap_socket(c, server_side=True)
                n = struct.unpack("!I", _recv_exact(c, 4))[0]
                body = _recv_exact(c, n - 4)
            self.logins += 1
            self.script(c, self)
        except (EOFError, OSError, ssl.SSLError):
            pass
        finally:
            c.close()

    def read_msg(self, c):
        hdr = _recv_exact(c, 5)
        body = _recv_exact(c, struct.unpack("!I", hdr[1:])[0] - 4)
        self.received += hdr + body
        return hdr[:1], body

    def drain(self, c):
        """Reads until pgscale closes (or 5 s), keeping every byte."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                d = c.recv(4096)
            except socket.timeout:
                break
            if not d:
                break
            self.received += d

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)


def _sasl(c, mechs):
    c.sendall(_msg(b"R", struct.pack("!I", 10) + b"".join(m + b"\0" for m in mechs) + b"\0"))


def _client_first(body):
    """(mechanism, client-first-message) of a SASLInitialResponse."""
    mech, rest = body.split(b"\0", 1)
    n = struct.unpack("!i", rest[:4])[0]
    return mech, rest[4:4 + n]


def hostile_iterations(c, fake):
    _sasl(c, [b"SCRAM-SHA-256"])
    t, body = fake.read_msg(c)
    _, first = _client_first(body)
    nonce = first.split(b"r=", 1)[1]
    salt = base64.b64encode(os.urandom(16))
    c.sendall(_msg(b"R", struct.pack("!I", 11) + b"r=" + nonce + b"SRV,s=" + salt +
                   b",i=9999999"))
    fake.notes["asked_at"] = time.monotonic()
    fake.drain(c)


def cleartext(c, fake):
    c.sendall(_msg(b"R", struct.pack("!I", 3)))
    fake.drain(c)


def _finish_login(c):
    c.sendall(_msg(b"R", struct.pack("!I", 0)) +
              _msg(b"S", b"server_version\x0015.0\x00") +
              _msg(b"S", b"client_encoding\x00UTF8\x00") +
              _msg(b"K", struct.pack("!II", 4242, 1)) + _msg(b"Z", b"I"))


def _answer_queries(c, fake):
    """SELECT-ish answers to anything until Terminate."""
    while True:
        t, body = fake.read_msg(c)
        if t == b"X":
            return
        if t == b"Q":
            c.sendall(_msg(b"T", struct.pack("!H", 1) + b"x\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)) +
                      _msg(b"D", struct.pack("!HI", 1, 1) + b"1") +
                      _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I"))


def plus_only(c, fake):
    """SCRAM-SHA-256-PLUS as PostgreSQL runs it, checking c= against the
    hash of this server's own certificate."""
    _sasl(c, [b"SCRAM-SHA-256-PLUS"])
    t, body = fake.read_msg(c)
    mech, first = _client_first(body)
    fake.notes["mech"] = mech
    fake.notes["client_first"] = first
    gs2, bare = first.split(b",", 2)[:2], first.split(b",", 2)[2]
    gs2_header = b",".join(gs2) + b","
    cnonce = bare.split(b"r=", 1)[1]
    snonce = cnonce + b"SRV"
    salt = os.urandom(16)
    sfirst = b"r=" + snonce + b",s=" + base64.b64encode(salt) + b",i=4096"
    c.sendall(_msg(b"R", struct.pack("!I", 11) + sfirst))
    t, final = fake.read_msg(c)
    without_proof, proof = final.rsplit(b",p=", 1)
    cbind = base64.b64decode(without_proof.split(b",", 1)[0][2:])
    # RFC 5929: the certificate's own signature digest (the test's is
    # ECDSA with SHA-384)
    fake.notes["cbind_ok"] = cbind == gs2_header + hashlib.sha384(fake.cert_der).digest()
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, 4096)
    ck = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    sk = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    am = bare + b"," + sfirst + b"," + without_proof
    sig = hmac.new(hashlib.sha256(ck).digest(), am, hashlib.sha256).digest()
    fake.notes["proof_ok"] = bytes(a ^ b for a, b in zip(ck, sig)) == base64.b64decode(proof)
    if not (fake.notes["cbind_ok"] and fake.notes["proof_ok"]):
        c.sendall(_msg(b"E", b"SFATAL\0C28000\0Mfake: channel binding check failed\0\0"))
        return
    ssig = hmac.new(sk, am, hashlib.sha256).digest()
    c.sendall(_msg(b"R", struct.pack("!I", 12) + b"v=" + base64.b64encode(ssig)))
    _finish_login(c)
    _answer_queries(c, fake)


def login_error(pg, timeout=10):
    with pgwire.RawConn(LOCALHOST, pg.port, timeout=timeout) as c:
        msgs = c.login("app", "app", PASSWORD)
    errs = pgwire.errors(msgs)
    assert len(errs) == 1 and pgwire.ready_status(msgs) is None, msgs
    return errs[0]


@pytest.mark.deadline(60)
def test_hostile_iteration_count_is_refused_at_once_naming_the_setting(pgscale, primary):
    fake = FakePG(hostile_iterations)
    try:
        pg = pgscale(DATABASE_URL=fake.url(), PGSCALE_WORKERS=2)
        t0 = time.monotonic()
        err = login_error(pg)
        took = time.monotonic() - t0
        assert err["C"] == "28000", err
        assert "9999999 SCRAM iterations" in err["M"], err
        assert "server_scram_max_iterations" in err["M"], err
        # 9,999,999 PBKDF2 rounds take several seconds; the refusal does not
        assert took < 2.0, took
        # the fake server never got a client-final-message (no proof computed)
        assert b"p=" not in fake.received.split(b"SCRAM-SHA-256", 1)[1], fake.received
        # and a pool toward the real server, on the same pgscale's workers, is served
        pg2 = pgscale(PGSCALE_WORKERS=2)
        with pgwire.RawConn(LOCALHOST, pg2.port, timeout=10) as c:
            msgs = c.login("app", "app", APP_PASSWORD)
            assert pgwire.ready_status(msgs) == "I", msgs
    finally:
        fake.close()


@pytest.mark.deadline(60)
def test_iteration_bound_can_be_raised(pgscale, primary):
    fake = FakePG(hostile_iterations)
    try:
        pg = pgscale(DATABASE_URL=fake.url(), PGSCALE_SERVER_SCRAM_MAX_ITERATIONS="4096")
        err = login_error(pg)
        assert "(4096)" in err["M"], err
    finally:
        fake.close()


@pytest.mark.deadline(60)
def test_cleartext_request_over_plain_tcp_is_refused_and_no_password_sent(pgscale, primary):
    fake = FakePG(cleartext)
    try:
        pg = pgscale(DATABASE_URL=fake.url())
        err = login_error(pg)
        assert err["C"] == "28000", err
        assert "clear text" in err["M"] and "server_allow_cleartext_password" in err["M"], err
        time.sleep(0.3)
        assert PASSWORD.encode() not in fake.received, fake.received
        assert not fake.received.startswith(b"p"), fake.received
    finally:
        fake.close()


@pytest.mark.deadline(60)
def test_cleartext_over_plain_tcp_is_sent_when_allowed(pgscale, primary):
    fake = FakePG(cleartext)
    try:
        pg = pgscale(DATABASE_URL=fake.url(), PGSCALE_SERVER_ALLOW_CLEARTEXT_PASSWORD="on")
        with pgwire.RawConn(LOCALHOST, pg.port, timeout=10) as c:
            try:
                c.login("app", "app", PASSWORD)
            except Exception:
                pass
        deadline = time.monotonic() + 5
        while PASSWORD.encode() not in fake.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert PASSWORD.encode() in fake.received, fake.received
    finally:
        fake.close()


@pytest.fixture(scope="module")
def fake_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake-cert")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                        "c.pem", "-days", "2", "-sha384", "-subj", "/CN=localhost"],
                       cwd=d, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return d


def _tls_fake(script, d):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "c.pem"), str(d / "k.pem"))
    fake = FakePG(script, tls_ctx=ctx)
    pem = (d / "c.pem").read_text()
    fake.cert_der = ssl.PEM_cert_to_DER_cert(pem)
    return fake


@pytest.mark.deadline(60)
def test_scram_plus_binds_to_the_server_certificate(pgscale, primary, fake_cert):
    # a certificate signed with ECDSA-SHA384: RFC 5929 says hash with SHA-384
    fake = _tls_fake(plus_only, fake_cert)
    try:
        pg = pgscale(DATABASE_URL=fake.url() + "?sslmode=require&channel_binding=require")
        with pgwire.RawConn(LOCALHOST, pg.port, timeout=10) as c:
            msgs = c.login("app", "app", PASSWORD)
            assert pgwire.ready_status(msgs) == "I", (msgs, fake.notes)
        assert fake.notes["mech"] == b"SCRAM-SHA-256-PLUS"
        assert fake.notes["client_first"].startswith(b"p=tls-server-end-point,,n=,r=")
        assert fake.notes["cbind_ok"] and fake.notes["proof_ok"], fake.notes
    finally:
        fake.close()
