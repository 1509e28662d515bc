"""The SIPp scenario suite (tests/sipp) against SIPp and small Python peers, without callpath.

Proves that the scenarios the callpath integration tests and benchmarks rely on are well-formed:
uac_noauth -> uas (INVITE/100/180/200/ACK/BYE), uac_cancel_noauth -> uas_cancel, the authenticating
uac/uac_cancel against mock callees that challenge with 407 and check ACK/CANCEL branches and the
route set, uas's Record-Route copying against a raw UDP "proxy", and the REGISTER scenarios against a
Python registrar that verifies the MD5 digests, CSeq, Call-ID, Contact and Expires of every request.
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sipp_harness import (
    SippResult,
    dump_toml,
    free_udp_port,
    read_users_csv,
    run_sipp,
    start_sipp,
    write_callpath_config,
    write_users_csv,
)

pytestmark = pytest.mark.integration
# run_sipp/start_sipp skip a test when sipp is missing (and fail it under CI=true)

LOCAL = "127.0.0.1"
ALICE = ("alice", "s3cret")


# ------------------------------------------------------------------------------------ SIP text helpers


@dataclass
class Sip:
    """A SIP message parsed just enough to check what SIPp sent."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> Sip:
        head, sep, body = data.partition(b"\r\n\r\n")
        assert sep, f"no blank line after the headers:\n{data!r}"
        lines = head.decode().split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded continuation
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            assert colon, f"malformed header line {line!r}"
            headers.append((name.strip(), value.strip()))
        msg = cls(lines[0], headers, body, data)
        declared = msg.get("Content-Length")
        assert declared is not None and int(declared) == len(body), (
            f"Content-Length {declared} but a {len(body)}-byte body:\n{data.decode(errors='replace')}")
        return msg

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def status(self) -> int:
        assert self.start.startswith("SIP/2.0 "), self.start
        return int(self.start.split(" ")[1])

    @property
    def cseq(self) -> tuple[int, str]:
        number, method = (self.get("CSeq") or "").split()
        return int(number), method

    def text(self) -> str:
        return self.raw.decode(errors="replace")


def response_to(request: Sip, status: int, reason: str, *, to_tag: str | None = None,
                extra: list[str] = ()) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in request.get_all("Via")]
    lines.append(f"From: {request.get('From')}")
    to = request.get("To") or ""
    lines.append(f"To: {to};tag={to_tag}" if to_tag and "tag=" not in to else f"To: {to}")
    lines.append(f"Call-ID: {request.get('Call-ID')}")
    lines.append(f"CSeq: {request.get('CSeq')}")
    lines += list(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def digest_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    assert scheme.lower() == "digest", header
    return {m[0].lower(): m[1] or m[2] for m in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', rest)}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_ok(params: dict[str, str], method: str, password: str) -> bool:
    """RFC 2617 MD5 check of an Authorization answer, with the uri it names (as SIPp computes it)."""
    ha1 = md5(f"{params['username']}:{params['realm']}:{password}")
    ha2 = md5(f"{method}:{params['uri']}")
    if params.get("qop"):
        expected = md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")
    else:
        expected = md5(f"{ha1}:{params['nonce']}:{ha2}")
    return expected == params.get("response")


# -------------------------------------------------------------------------------- Python registrar


@dataclass
class MockRegistrar:
    """A UDP registrar on 127.0.0.1 for the register_*.xml scenarios.

    With ``auth`` it challenges (401, MD5, qop=auth) and verifies the digests; ``single_use_nonce``
    re-challenges any request carrying a nonce that already served, so the scenarios' optional
    "answer a new challenge" branches run. Everything received is kept in ``requests``.
    """

    users: dict[str, str]
    auth: bool = True
    single_use_nonce: bool = False
    realm: str = "selfcheck.test"
    max_expires: int = 3600
    requests: list[Sip] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    challenges: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._nonces: set[str] = set()
        self._used: set[str] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def target(self) -> str:
        return f"{LOCAL}:{self.port}"

    def __enter__(self) -> MockRegistrar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._handle(Sip.parse(data))
            except AssertionError as exc:
                self.problems.append(str(exc))
                continue
            self.sock.sendto(reply, addr)

    def _challenge(self, req: Sip, stale: bool = False) -> bytes:
        self.challenges += 1
        nonce = uuid.uuid4().hex
        self._nonces.add(nonce)
        value = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
        if stale:
            value += ", stale=true"
        return response_to(req, 401, "Unauthorized", to_tag="reg401", extra=[f"WWW-Authenticate: {value}"])

    def _handle(self, req: Sip) -> bytes:
        self.requests.append(req)
        if req.method != "REGISTER":
            self.problems.append(f"unexpected {req.method}")
            return response_to(req, 405, "Method Not Allowed")
        if self.auth:
            header = req.get("Authorization")
            if header is None:
                return self._challenge(req)
            params = digest_params(header)
            nonce = params.get("nonce", "")
            if nonce not in self._nonces:
                self.problems.append(f"unknown nonce in {header}")
                return self._challenge(req, stale=True)
            if self.single_use_nonce and nonce in self._used:
                return self._challenge(req, stale=True)
            if params.get("username") not in self.users or params.get("realm") != self.realm or not digest_ok(
                    params, "REGISTER", self.users[params["username"]]):
                self.problems.append(f"bad digest answer {header}")
                return response_to(req, 403, "Forbidden", to_tag="reg403")
            if params.get("algorithm", "MD5").upper() != "MD5":
                self.problems.append(f"algorithm {params.get('algorithm')}")
            self._used.add(nonce)
        expires = int(req.get("Expires") or 3600)
        contact = req.get("Contact") or ""
        extra = [f"Contact: {contact};expires={min(expires, self.max_expires)}"] if expires else []
        return response_to(req, 200, "OK", to_tag="reg200", extra=extra)


# ---------------------------------------------------------------------------------------- calls


def test_uac_noauth_calls_uas(tmp_path: Path) -> None:
    """Two full calls: INVITE/100/180/200(SDP)/ACK/BYE/200, the UAS a long-running background SIPp."""
    uas_port = free_udp_port()
    with start_sipp("uas", local_port=uas_port, workdir=tmp_path / "uas", sets={"ring_ms": 50}) as uas:
        uac = run_sipp("uac_noauth", uas.address, local_port=free_udp_port(), service="1001", calls=2,
                       rate=20, duration_ms=100, workdir=tmp_path / "uac")
    uac.check(calls=2)
    assert uas.result is not None
    uas.result.check(calls=2)
    assert uac.response_time_ms("setup") is not None and uac.response_time_ms("setup") >= 50

    trace = (tmp_path / "uac").glob("*-messages.log")
    messages = next(trace).read_text()
    assert "m=audio" in messages and "a=rtpmap:101 telephone-event/8000" in messages
    assert re.search(r"^ACK sip:uas@127\.0\.0\.1:\d+;transport=UDP SIP/2\.0", messages, re.M), (
        "the ACK goes to the callee's Contact ([next_url])")


def test_uas_exits_after_its_call_count(tmp_path: Path) -> None:
    """run_sipp as a UAS (no target) with calls=1 returns once the call is done."""
    uas_port = free_udp_port()
    uas = start_sipp("uas", local_port=uas_port, calls=1, timeout=20, workdir=tmp_path / "uas")
    run_sipp("uac_noauth", uas.address, local_port=free_udp_port(), service="7000",
             workdir=tmp_path / "uac").check(calls=1)
    result = uas.wait(timeout=20)
    result.check(calls=1)
    assert result.returncode == 0 and not uas.running


def test_uac_cancel_noauth_against_uas_cancel(tmp_path: Path) -> None:
    """INVITE/180 ... CANCEL (same branch) -> 200 + 487 -> ACK (same branch), checked on both sides."""
    with start_sipp("uas_cancel", local_port=free_udp_port(), workdir=tmp_path / "uas") as uas:
        uac = run_sipp("uac_cancel_noauth", uas.address, local_port=free_udp_port(), service="1002",
                       duration_ms=200, calls=2, rate=20, workdir=tmp_path / "uac")
    uac.check(calls=2)
    assert uas.result is not None
    uas.result.check(calls=2)
    assert uas.result.failed == 0


def test_uac_with_auth_against_challenging_callee(tmp_path: Path) -> None:
    """uac.xml: 407 -> ACK (INVITE's branch, 407's tag) -> INVITE+Proxy-Authorization -> 200 (Record-Route)
    -> ACK/BYE to the Contact with a Route header; the mock fails the call on any deviation."""
    with start_sipp("mock_auth_uas", local_port=free_udp_port(), workdir=tmp_path / "mock") as mock:
        uac = run_sipp("uac", mock.address, local_port=free_udp_port(), service="1003", users_csv=[ALICE],
                       keys={"domain": "selfcheck.test"}, duration_ms=50, workdir=tmp_path / "uac")
    uac.check(calls=1)
    assert mock.result is not None
    mock.result.check(calls=1)
    messages = next((tmp_path / "uac").glob("*-messages.log")).read_text()
    auth = re.search(r"^Proxy-Authorization: (Digest .*)$", messages, re.M)
    assert auth, messages
    params = digest_params(auth.group(1).strip())
    assert params["username"] == "alice" and params["realm"] == "selfcheck.test"
    assert digest_ok(params, "INVITE", "s3cret"), auth.group(1)
    assert "From: \"alice\" <sip:alice@selfcheck.test>" in messages


def test_uac_cancel_with_auth_against_challenging_callee(tmp_path: Path) -> None:
    """uac_cancel.xml: the CANCEL and the ACK of the 487 carry the authenticated INVITE's branch."""
    with start_sipp("mock_auth_uas_cancel", local_port=free_udp_port(), workdir=tmp_path / "mock") as mock:
        uac = run_sipp("uac_cancel", mock.address, local_port=free_udp_port(), service="1004",
                       users_csv=[ALICE], workdir=tmp_path / "uac")
    uac.check(calls=1)
    assert mock.result is not None
    mock.result.check(calls=1)


# ------------------------------------------------------------------- uas.xml against a raw "proxy"


class RawPeer:
    """A UDP socket that sends hand-written SIP and reads the answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]

    def send(self, text: str, to: tuple[str, int], body: str = "") -> None:
        head = text.strip("\n").replace("\n", "\r\n")
        data = f"{head}\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}".encode()
        self.sock.sendto(data, to)

    def recv(self) -> Sip:
        data, _ = self.sock.recvfrom(65535)
        return Sip.parse(data)

    def recv_status(self, status: int) -> Sip:
        """The next response with ``status``, skipping others (e.g. retransmissions)."""
        for _ in range(10):
            msg = self.recv()
            if msg.status == status:
                return msg
        raise AssertionError(f"no {status} received")

    def close(self) -> None:
        self.sock.close()


SDP_OFFER = ("v=0\r\no=proxy 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
             "a=rtpmap:101 telephone-event/8000\r\n")


@pytest.fixture
def peer() -> Iterator[RawPeer]:
    p = RawPeer()
    yield p
    p.close()


def test_uas_copies_record_route_into_its_responses(tmp_path: Path, peer: RawPeer) -> None:
    """What SIPp's stock uas does not do: 180 and 200 carry the INVITE's Record-Route set, in order,
    with its whole Via stack; the call then completes through ACK and BYE."""
    with start_sipp("uas", local_port=free_udp_port(), workdir=tmp_path / "uas") as uas:
        dest = (LOCAL, uas.port)
        rr = [f"<sip:{LOCAL}:{peer.port};lr;ftag=t1>", "<sip:10.9.9.9;lr>"]
        vias = [f"SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKproxy1;rport",
                "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bKphone1;received=10.0.0.7;rport=5062"]
        common = (f"From: <sip:caller@example.test>;tag=t1\nCall-ID: rr-{uuid.uuid4().hex}\n"
                  f"Max-Forwards: 69")
        peer.send(f"INVITE sip:uas@{LOCAL}:{uas.port} SIP/2.0\nVia: {vias[0]}\nVia: {vias[1]}\n"
                  f"Record-Route: {rr[0]}\nRecord-Route: {rr[1]}\n{common}\nTo: <sip:uas@example.test>\n"
                  f"CSeq: 10 INVITE\nContact: <sip:caller@10.0.0.7:5062>\nContent-Type: application/sdp",
                  dest, SDP_OFFER)
        trying = peer.recv_status(100)
        assert "tag=" not in (trying.get("To") or "")
        ringing = peer.recv_status(180)
        ok = peer.recv_status(200)
        for resp in (ringing, ok):
            route_set = [r.strip() for v in resp.get_all("Record-Route") for r in v.split(",")]
            assert route_set == rr, resp.text()
            stack = [v.strip() for h in resp.get_all("Via") for v in h.split(",")]
            assert stack == vias, resp.text()
            assert resp.cseq == (10, "INVITE")
            assert "tag=" in (resp.get("To") or "")
        assert ok.get("Content-Type") == "application/sdp"
        assert b"m=audio " in ok.body and b"a=rtpmap:101 telephone-event/8000" in ok.body
        to = ok.get("To")
        contact = re.search(r"<([^>]+)>", ok.get("Contact") or "")
        assert contact, ok.text()
        peer.send(f"ACK {contact.group(1)} SIP/2.0\nVia: SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKack1\n"
                  f"{common}\nTo: {to}\nCSeq: 10 ACK", dest)
        peer.send(f"BYE {contact.group(1)} SIP/2.0\nVia: SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKbye1\n"
                  f"{common}\nTo: {to}\nCSeq: 11 BYE", dest)
        assert peer.recv_status(200).cseq == (11, "BYE")
    assert uas.result is not None
    uas.result.check(calls=1)


def test_uas_cancel_fails_a_cancel_with_another_branch(tmp_path: Path, peer: RawPeer) -> None:
    """uas_cancel.xml's RFC 3261 9.1 check bites: a CANCEL whose branch differs from the INVITE's
    fails the call (so a callpath proxy that gets it wrong fails its test)."""
    with start_sipp("uas_cancel", local_port=free_udp_port(), workdir=tmp_path / "uas") as uas:
        dest = (LOCAL, uas.port)
        common = f"From: <sip:caller@example.test>;tag=t2\nTo: <sip:uas@example.test>\nCall-ID: c-{uuid.uuid4().hex}"
        peer.send(f"INVITE sip:uas@{LOCAL}:{uas.port} SIP/2.0\n"
                  f"Via: SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKinv9;rport\n{common}\n"
                  f"CSeq: 3 INVITE\nMax-Forwards: 70\nContact: <sip:caller@{LOCAL}:{peer.port}>\n"
                  f"Content-Type: application/sdp", dest, SDP_OFFER)
        peer.recv_status(180)
        peer.send(f"CANCEL sip:uas@{LOCAL}:{uas.port} SIP/2.0\n"
                  f"Via: SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKother;rport\n{common}\n"
                  f"CSeq: 3 CANCEL\nMax-Forwards: 70", dest)
        terminated = peer.recv_status(487)
        peer.send(f"ACK sip:uas@{LOCAL}:{uas.port} SIP/2.0\n"
                  f"Via: SIP/2.0/UDP {LOCAL}:{peer.port};branch=z9hG4bKinv9;rport\n{common}\n"
                  f"CSeq: 3 ACK\nMax-Forwards: 70", dest)
        assert terminated.cseq == (3, "INVITE")
    assert uas.result is not None
    assert uas.result.failed == 1 and not uas.result.ok, uas.result.log


# ------------------------------------------------------------------------------------- REGISTER


def _register_checks(reg: MockRegistrar, *, contact_port: int, domain: str, user: str) -> list[Sip]:
    assert not reg.problems, reg.problems
    requests = reg.requests
    assert requests, "no REGISTER received"
    for req in requests:
        assert req.start == f"REGISTER sip:{domain} SIP/2.0", req.start
        via = req.get("Via") or ""
        assert ";rport" in via and "branch=z9hG4bK" in via, via
        assert f"<sip:{user}@{LOCAL}:{contact_port};transport=UDP>" == req.get("Contact"), req.text()
        assert req.get("To") == f"<sip:{user}@{domain}>"
        assert (req.get("From") or "").startswith(f"<sip:{user}@{domain}>;tag=")
    branches = [re.search(r"branch=([^;]+)", r.get("Via") or "").group(1) for r in requests]
    assert len(set(branches)) == len(branches), f"a branch was reused: {branches}"
    return requests


@pytest.mark.parametrize("single_use_nonce", [False, True], ids=["nonce-reused", "rechallenged"])
def test_register_auth_lifecycle(tmp_path: Path, single_use_nonce: bool) -> None:
    """401 -> authorised REGISTER -> 200; refresh (same Call-ID, CSeq+1) -> 200, or 401 answered;
    Expires: 0 -> 200. Every digest verified (MD5, qop=auth)."""
    contact_port = 5999
    with MockRegistrar(users=dict([ALICE]), single_use_nonce=single_use_nonce) as reg:
        result = run_sipp("register_auth", reg.target, local_port=free_udp_port(), users_csv=[ALICE],
                          keys={"domain": "selfcheck.test", "contact_port": contact_port, "expires": 600},
                          workdir=tmp_path)
    result.check(calls=1)
    requests = _register_checks(reg, contact_port=contact_port, domain="selfcheck.test", user="alice")
    assert len({r.get("Call-ID") for r in requests}) == 1
    assert len({r.get("From") for r in requests}) == 1
    cseqs = [r.cseq[0] for r in requests]
    assert cseqs == list(range(cseqs[0], cseqs[0] + len(cseqs))), f"CSeq must grow by one: {cseqs}"
    expires = [r.get("Expires") for r in requests]
    authorised = [r.get("Authorization") is not None for r in requests]
    if single_use_nonce:  # every request with a spent nonce is challenged again
        assert expires == ["600", "600", "600", "600", "0", "0"]
        assert authorised == [False, True, True, True, True, True]
        assert reg.challenges == 3
    else:
        assert expires == ["600", "600", "600", "0"]
        assert authorised == [False, True, True, True]
        assert reg.challenges == 1
    assert "registered: ;expires=600" in result.log


def test_register_auth_fails_without_expires_in_contact(tmp_path: Path) -> None:
    """The scenario's check_it regexp: a 200 whose Contact has no ;expires= fails the call."""

    class NoExpires(MockRegistrar):
        def _handle(self, req: Sip) -> bytes:
            reply = super()._handle(req)
            return re.sub(rb";expires=\d+", b"", reply)

    with NoExpires(users=dict([ALICE])) as reg:
        result = run_sipp("register_auth", reg.target, local_port=free_udp_port(), users_csv=[ALICE],
                          keys={"domain": "selfcheck.test"}, timeout=10, workdir=tmp_path)
    assert not result.ok and result.failed == 1, result.log


def test_register_noauth_lifecycle(tmp_path: Path) -> None:
    with MockRegistrar(users={}, auth=False) as reg:
        result = run_sipp("register_noauth", reg.target, local_port=free_udp_port(), users_csv=[("bob", "")],
                          keys={"domain": "example.test", "contact_port": 5070}, workdir=tmp_path)
    result.check(calls=1)
    requests = _register_checks(reg, contact_port=5070, domain="example.test", user="bob")
    assert [r.get("Expires") for r in requests] == ["3600", "3600", "0"]
    assert [r.cseq[0] for r in requests] == [1, 2, 3]
    assert all(r.get("Authorization") is None for r in requests)


def test_register_loop_with_users_csv(tmp_path: Path) -> None:
    """One authenticated registration per call, users taken in sequence from the -inf file."""
    users = [("user1", "secret"), ("user2", "secret"), ("user3", "other")]
    csv_path = write_users_csv(tmp_path / "users.csv", users)
    local_port = free_udp_port()
    with MockRegistrar(users=dict(users)) as reg:
        result = run_sipp("register_loop", reg.target, local_port=local_port, users_csv=csv_path, calls=6,
                          rate=50, keys={"domain": "selfcheck.test"}, workdir=tmp_path)
    result.check(calls=6)
    assert not reg.problems, reg.problems
    authorised = [r for r in reg.requests if r.get("Authorization")]
    assert [digest_params(r.get("Authorization") or "")["username"] for r in authorised] == [
        "user1", "user2", "user3", "user1", "user2", "user3"]
    assert len({r.get("Call-ID") for r in reg.requests}) == 6
    # contact_port defaults to SIPp's own port
    assert all(f"@{LOCAL}:{local_port};" in (r.get("Contact") or "") for r in reg.requests)
    assert result.response_time_ms("register") is not None


def test_register_loop_noauth_and_shipped_users_csv(tmp_path: Path) -> None:
    """register_loop_noauth with tests/sipp/users.csv (the default injection file)."""
    shipped = read_users_csv()
    assert shipped[0] == ("user1", "secret") and shipped[-1] == ("user100", "secret") and len(shipped) == 100
    with MockRegistrar(users={}, auth=False) as reg:
        result = run_sipp("register_loop_noauth", reg.target, local_port=free_udp_port(), calls=5, rate=100,
                          trace_messages=False, workdir=tmp_path)
    result.check(calls=5)
    assert [r.get("To") for r in reg.requests] == [f"<sip:user{i}@{LOCAL}>" for i in range(1, 6)]


def test_failed_run_reports_its_messages(tmp_path: Path) -> None:
    """A call that cannot complete: SippResult says so and its log carries the trace for debugging."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOCAL, 0))
    try:
        result: SippResult = run_sipp("uac_noauth", f"{LOCAL}:{silent.getsockname()[1]}",
                                      local_port=free_udp_port(), timeout=2, workdir=tmp_path)
    finally:
        silent.close()
    assert not result.ok
    assert result.returncode != 0
    assert result.retransmissions >= 1, result.log
    assert "INVITE sip:service@" in result.log and "$ " in result.log


# ------------------------------------------------------------------------------------ the harness


def test_callpath_config_is_toml_the_settings_accept(tmp_path: Path) -> None:
    """start_callpath's config file: free ports, data under tmp_path, overrides in both spellings."""
    import tomllib

    from web.settings import load_settings

    path, written = write_callpath_config(
        tmp_path, sip={"auth": False, "b2bua": [{"number": "9000", "target": "sip:bob@127.0.0.1:5070"}]},
        sip_min_expires=30, server_log_level="debug")
    parsed = tomllib.loads(path.read_text())
    assert parsed == written
    assert parsed["sip"]["udp_port"] == parsed["sip"]["tcp_port"] > 0 and parsed["sip"]["tls_port"] == 0
    assert parsed["sip"]["b2bua"] == [{"number": "9000", "target": "sip:bob@127.0.0.1:5070"}]
    settings = load_settings(path, {})
    assert settings.sip.auth is False and settings.sip.min_expires == 30
    assert settings.server.data_dir == str(tmp_path / "data") and settings.server.log_level == "debug"
    assert [(e.number, e.target) for e in settings.sip.b2bua] == [("9000", "sip:bob@127.0.0.1:5070")]
    assert dump_toml({"s": {"text": 'a "quoted" \\ path', "on": True}}) == (
        '[s]\ntext = "a \\"quoted\\" \\\\ path"\non = true\n')
