"""SIP over WebSocket (RFC 7118) through a real callpath process, with a handcrafted WebSocket client.

The client side is independent of callpath's SIP code: its messages are SIP text written here, exactly
as JsSIP writes them (``Via: SIP/2.0/WSS df7jal23ls0d.invalid``, ``Contact:
<sip:alice@df7jal23ls0d.invalid;transport=ws>``: a browser has no address of its own to give, so the
connection is the only way back), its digest responses are computed with hashlib, and what it receives
is parsed by the small parser below. The other end of every call is SIPp (tests/sipp) or a raw UDP peer.

What is proved:

- REGISTER over ``ws://.../ws`` with subprotocol "sip": 401, digest MD5, 200 echoing the Contact;
- a SIPp caller (uac.xml, authenticated) reaches the WebSocket client: the INVITE arrives on the
  WebSocket with alice's contact as Request-URI, callpath's Via on top and a Record-Route that points
  at callpath's WebSocket listener; 180/200 from the client reach SIPp; SIPp's ACK and BYE, sent along
  the route set, come back over the WebSocket; SIPp counts one successful call;
- the reverse direction: the WebSocket client calls a SIPp UAS registered over UDP, answering the 407
  with Proxy-Authorization, and ACK/BYE along the route set it learnt;
- a WebSocket upgrade without the "sip" subprotocol is refused (RFC 7118 §4);
- unregistering (Expires: 0) removes the binding: a later INVITE to 1001 gets 480;
- once the WebSocket is closed (close frame, or TCP dropped), calls to that user fail at once (no 32 s
  transaction timeout), and a WebSocket dropping while its INVITE rings ends the call for the caller.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from sipp_harness import CallpathServer, arun_sipp, free_udp_port, require_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")     # the WebSocket client
BOB = ("bob", "bobsecret", "1002")      # SIPp (caller, or a registered UAS)

#: what JsSIP puts in Via and Contact: a host name nobody can resolve (RFC 7118 §5.2)
WS_HOST = "df7jal23ls0d.invalid"
ALICE_CONTACT = f"sip:alice@{WS_HOST};transport=ws"
#: how long any single expected message may take to arrive
STEP_TIMEOUT = 5.0



# ----------------------------------------------------------------------------------- SIP text helpers

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "r": "refer-to"}


def split_values(value: str) -> list[str]:
    """Split a comma-separated header value, respecting <...> and "..." (RFC 3261 §7.3.1)."""
    out, cur, depth, quoted = [], [], 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def param(value: str, name: str) -> str | None:
    """A ;name=value parameter of a header value outside its <uri> (None when absent, "" when flag)."""
    rest = value[value.rfind(">") + 1:] if ">" in value else value
    for part in rest.split(";")[1:]:
        key, _, val = part.partition("=")
        if key.strip().lower() == name:
            return val.strip()
    return None


def uri_of(value: str) -> str:
    """The URI of a name-addr (<...>) or addr-spec header value."""
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";", 1)[0].strip()


def uri_params(uri: str) -> dict[str, str | None]:
    """The ;params of a SIP URI (before any ?headers)."""
    out: dict[str, str | None] = {}
    for part in uri.split("?", 1)[0].split(";")[1:]:
        key, eq, val = part.partition("=")
        out[key.lower()] = val if eq else None
    return out


def uri_hostport(uri: str) -> tuple[str, int | None]:
    """host and port of sip:[user@]host[:port][;params]."""
    rest = uri.split(":", 1)[1].split(";", 1)[0].split("?", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    host, _, port = rest.partition(":")
    return host, int(port) if port else None


@dataclass
class Sip:
    """A received SIP message, parsed just enough for the assertions of these tests."""

    first_line: str
    headers: list[tuple[str, str]]
    body: str
    raw: str

    @classmethod
    def parse(cls, text: str) -> Sip:
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded line
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((COMPACT.get(name, name), value.strip()))
        return cls(lines[0], headers, body, text)

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.first_line.split(" ", 1)[0] if self.is_request else self.cseq[1]

    @property
    def uri(self) -> str:
        return self.first_line.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ")[1]) if not self.is_request else 0

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split."""
        name = name.lower()
        out: list[str] = []
        for n, v in self.headers:
            if n == name:
                out.extend(split_values(v) if name not in ("www-authenticate", "proxy-authenticate",
                                                           "authorization", "proxy-authorization") else [v])
        return out

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        seq, method = (self.get("cseq") or "0 NONE").split()
        return int(seq), method.upper()

    def tag(self, header: str) -> str | None:
        value = self.get(header)
        return param(value, "tag") if value else None

    def __str__(self) -> str:
        return self.raw


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:20]


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


def sip_text(first_line: str, headers: list[tuple[str, str]], body: str = "") -> str:
    """Serialise a message with a correct Content-Length."""
    lines = [first_line, *(f"{name}: {value}" for name, value in headers)]
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def response_to(req: Sip, status: int, reason: str, *, to_tag: str | None = None, contact: str | None = None,
                copy_record_route: bool = False, body: str = "", extra: list[tuple[str, str]] | None = None) -> str:
    """A UAS response to `req` (RFC 3261 §8.2.6): Vias, From, To (+tag), Call-ID, CSeq copied."""
    headers = [("Via", v) for v in req.get_all("via")]
    if copy_record_route:
        headers += [("Record-Route", rr) for rr in req.get_all("record-route")]
    headers.append(("From", req.get("from") or ""))
    to = req.get("to") or ""
    if to_tag and param(to, "tag") is None:
        to += f";tag={to_tag}"
    headers += [("To", to), ("Call-ID", req.call_id), ("CSeq", req.get("cseq") or "")]
    if contact:
        headers.append(("Contact", f"<{contact}>"))
    headers += extra or []
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return sip_text(f"SIP/2.0 {status} {reason}", headers, body)


def sdp(user: str, port: int, ip: str = "127.0.0.1") -> str:
    """A small PCMU/telephone-event offer or answer (the media bridge is not part of these tests)."""
    return (f"v=0\r\no={user} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-16\r\na=sendrecv\r\n")


# ------------------------------------------------------------------------------------------ digest


def parse_challenge(value: str) -> dict[str, str]:
    """The parameters of a `Digest k=v, k="v"` challenge (keys lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    assert scheme.lower() == "digest", value
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'([\w-]+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', rest)}


def md5_challenge(resp: Sip, header: str) -> str:
    """The MD5 challenge among a 401/407's (MD5 alone by default; SHA-256 too when configured)."""
    for value in resp.get_all(header):
        if parse_challenge(value).get("algorithm", "MD5").upper() == "MD5":
            return value
    raise AssertionError(f"no MD5 {header} in\n{resp}")


def digest_credentials(challenge: str, method: str, uri: str, username: str, password: str,
                       nc: int = 1) -> str:
    """The Authorization / Proxy-Authorization value answering an MD5 challenge (RFC 7616 / 2617)."""
    ch = parse_challenge(challenge)
    realm, nonce = ch["realm"], ch["nonce"]

    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
             "algorithm=MD5"]
    qops = [q.strip() for q in ch.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce, ncv = uuid.uuid4().hex[:16], f"{nc:08x}"
        response = h(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
        parts += [f'response="{response}"', "qop=auth", f'cnonce="{cnonce}"', f"nc={ncv}"]
    else:
        parts.append(f'response="{h(f"{ha1}:{nonce}:{ha2}")}"')
    if "opaque" in ch:
        parts.append(f'opaque="{ch["opaque"]}"')
    return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------------------------------- SIP peers


class SipPeer:
    """Sends SIP text and collects what arrives; `expect` takes the first message matching a test."""

    def __init__(self) -> None:
        self.inbox: list[Sip] = []
        self.seen: list[Sip] = []
        self._arrived = asyncio.Event()
        self.closed = False

    def deliver(self, text: str) -> None:
        if not text.strip():
            return  # CRLF keep-alive
        msg = Sip.parse(text)
        self.inbox.append(msg)
        self.seen.append(msg)
        self._arrived.set()

    async def send(self, text: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def expect(self, test: Callable[[Sip], bool], what: str, timeout: float = STEP_TIMEOUT) -> Sip:
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if test(msg):
                    return self.inbox.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.closed and not self.inbox):
                seen = "\n---\n".join(m.raw for m in self.seen[-10:]) or "(nothing)"
                raise AssertionError(f"no {what} within {timeout}s; last messages received:\n{seen}")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))

    async def final_response(self, method: str, call_id: str, cseq: int | None = None,
                             timeout: float = STEP_TIMEOUT) -> Sip:
        """The first final (>= 200) response to method/call_id[/cseq] (provisionals are dropped)."""
        def test(m: Sip) -> bool:
            return (not m.is_request and m.status >= 200 and m.call_id == call_id and m.cseq[1] == method
                    and (cseq is None or m.cseq[0] == cseq))
        resp = await self.expect(test, f"final response to {method} {cseq or ''}", timeout)
        self.inbox = [m for m in self.inbox
                      if not (not m.is_request and m.status < 200 and m.call_id == call_id)]
        return resp

    def requests(self, method: str) -> list[Sip]:
        return [m for m in self.seen if m.is_request and m.method == method]


class WsPeer(SipPeer):
    """A SIP-over-WebSocket client connection (text frames, one SIP message each)."""

    # JsSIP before 3.x wrote WSS even on ws:// (3.13 writes WS; test_jssip.py covers that): the Via's
    # transport need not match the connection's, the connection is the way back (RFC 7118 §5.2)
    via_transport = "WSS"
    sent_by = WS_HOST

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.deliver(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._arrived.set()

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 2)


class UdpPeer(SipPeer, asyncio.DatagramProtocol):
    """A raw SIP peer on a UDP socket of its own, talking to callpath's UDP port."""

    via_transport = "UDP"

    def __init__(self, server: CallpathServer) -> None:
        SipPeer.__init__(self)
        self.server_addr = (server.sip_host, server.sip_port)
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @property
    def sent_by(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def open(cls, server: CallpathServer) -> UdpPeer:
        peer = cls(server)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.deliver(data.decode("utf-8", "replace"))

    async def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.sendto(text.encode(), self.server_addr)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def ws_url(server: CallpathServer) -> str:
    web = server.settings["web"]
    return f"ws://{web['listen']}:{web['port']}/ws"


@contextlib.asynccontextmanager
async def ws_peer(server: CallpathServer) -> AsyncIterator[WsPeer]:
    ws = await connect(ws_url(server), subprotocols=["sip"], open_timeout=STEP_TIMEOUT, close_timeout=2)
    assert ws.subprotocol == "sip"
    peer = WsPeer(ws)
    try:
        yield peer
    finally:
        await peer.close()


# --------------------------------------------------------------------------------------- UA actions


@dataclass
class Registration:
    """The REGISTER dialog-less state a UA keeps: Call-ID, CSeq, From tag (JsSIP reuses them)."""

    user: tuple[str, str, str]
    domain: str
    contact: str = ALICE_CONTACT
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0


async def register(peer: SipPeer, reg: Registration, expires: int = 600) -> Sip:
    """REGISTER (as JsSIP writes it) -> 401 -> REGISTER + Authorization -> final response."""
    user = reg.user[0]
    instance = "<urn:uuid:5f1c2a8e-2c1f-4a55-9b0e-0f7fb3a4c1d2>"

    def request(extra: list[tuple[str, str]]) -> str:
        reg.cseq += 1
        return sip_text(f"REGISTER sip:{reg.domain} SIP/2.0", [
            ("Via", f"SIP/2.0/{peer.via_transport} {peer.sent_by};branch={new_branch()}"),
            ("Max-Forwards", "69"),
            ("To", f"<sip:{user}@{reg.domain}>"),
            ("From", f"<sip:{user}@{reg.domain}>;tag={reg.from_tag}"),
            ("Call-ID", reg.call_id),
            ("CSeq", f"{reg.cseq} REGISTER"),
            *extra,
            ("Contact", f'<{reg.contact}>;+sip.ice;reg-id=1;+sip.instance="{instance}";expires={expires}'),
            ("Expires", str(expires)),
            ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
            ("Supported", "path,gruu,outbound"),
            ("User-Agent", "JsSIP 3.13.8 (callpath handcrafted test client)"),
        ])

    await peer.send(request([]))
    resp = await peer.final_response("REGISTER", reg.call_id, reg.cseq)
    if resp.status != 401:
        return resp
    challenge = md5_challenge(resp, "www-authenticate")
    auth = digest_credentials(challenge, "REGISTER", f"sip:{reg.domain}", user, reg.user[1])
    await peer.send(request([("Authorization", auth)]))
    return await peer.final_response("REGISTER", reg.call_id, reg.cseq)


def bound_contacts(resp: Sip) -> dict[str, int]:
    """URI -> expires of the Contacts a 200 to REGISTER lists."""
    return {uri_of(c): int(param(c, "expires") or -1) for c in resp.get_all("contact")}


@dataclass
class OutgoingCall:
    """A caller's INVITE dialog, built by hand."""

    peer: SipPeer
    caller: tuple[str, str, str]
    target: str
    domain: str
    contact: str
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    invite: str = ""

    @property
    def request_uri(self) -> str:
        return f"sip:{self.target}@{self.domain}"

    def _invite_text(self, branch: str, extra: list[tuple[str, str]]) -> str:
        return sip_text(f"INVITE {self.request_uri} SIP/2.0", [
            ("Via", f"SIP/2.0/{self.peer.via_transport} {self.peer.sent_by};branch={branch}"
                    + (";rport" if self.peer.via_transport == "UDP" else "")),
            ("Max-Forwards", "69"),
            ("To", f"<{self.request_uri}>"),
            ("From", f'"{self.caller[0]}" <sip:{self.caller[0]}@{self.domain}>;tag={self.from_tag}'),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} INVITE"),
            ("Contact", f"<{self.contact};ob>"),
            *extra,
            ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
            ("Supported", "outbound"),
            ("Content-Type", "application/sdp"),
        ], sdp(self.caller[0], 40000))

    async def _ack_failure(self, branch: str, resp: Sip) -> None:
        """ACK of a non-2xx final response: the INVITE's branch, To with the response's tag (§17.1.1.3)."""
        await self.peer.send(sip_text(f"ACK {self.request_uri} SIP/2.0", [
            ("Via", f"SIP/2.0/{self.peer.via_transport} {self.peer.sent_by};branch={branch}"
                    + (";rport" if self.peer.via_transport == "UDP" else "")),
            ("Max-Forwards", "69"),
            ("To", resp.get("to") or ""),
            ("From", f'"{self.caller[0]}" <sip:{self.caller[0]}@{self.domain}>;tag={self.from_tag}'),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} ACK"),
        ]))

    async def start(self, timeout: float = STEP_TIMEOUT) -> Sip:
        """INVITE -> 407 -> ACK -> INVITE + Proxy-Authorization -> the final response (ACKed if not 2xx)."""
        self.cseq += 1
        branch = new_branch()
        await self.peer.send(self._invite_text(branch, []))
        resp = await self.peer.final_response("INVITE", self.call_id, self.cseq, timeout)
        if resp.status == 407:
            await self._ack_failure(branch, resp)
            challenge = md5_challenge(resp, "proxy-authenticate")
            auth = digest_credentials(challenge, "INVITE", self.request_uri, self.caller[0], self.caller[1])
            self.cseq += 1
            branch = new_branch()
            await self.peer.send(self._invite_text(branch, [("Proxy-Authorization", auth)]))
            resp = await self.peer.final_response("INVITE", self.call_id, self.cseq, timeout)
        if resp.status >= 300:
            await self._ack_failure(branch, resp)
        else:
            # dialog state, UAC side (§12.1.2): route set = Record-Route reversed, target = Contact
            self.remote_tag = resp.tag("to")
            self.remote_target = uri_of(resp.get("contact") or "")
            self.route_set = list(reversed(resp.get_all("record-route")))
        return resp

    def in_dialog(self, method: str, cseq: int) -> str:
        assert self.remote_target and self.remote_tag
        return sip_text(f"{method} {self.remote_target} SIP/2.0", [
            ("Via", f"SIP/2.0/{self.peer.via_transport} {self.peer.sent_by};branch={new_branch()}"),
            ("Max-Forwards", "69"),
            *[("Route", r) for r in self.route_set],
            ("To", f"<{self.request_uri}>;tag={self.remote_tag}"),
            ("From", f'"{self.caller[0]}" <sip:{self.caller[0]}@{self.domain}>;tag={self.from_tag}'),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ])


async def call_over_udp(server: CallpathServer, caller: tuple[str, str, str], target: str,
                        timeout: float = 10.0) -> tuple[Sip, float]:
    """A raw UDP caller's authenticated INVITE to `target`: its final response and how long it took."""
    peer = await UdpPeer.open(server)
    try:
        call = OutgoingCall(peer, caller, target, server.domain, f"sip:{caller[0]}@127.0.0.1:{peer.port}")
        started = time.monotonic()
        resp = await call.start(timeout=timeout)
        elapsed = time.monotonic() - started
        if resp.status < 300:  # not expected by the callers of this helper; clean up anyway
            await peer.send(call.in_dialog("ACK", call.cseq))
            await peer.send(call.in_dialog("BYE", call.cseq + 1))
        return resp, elapsed
    finally:
        await peer.close()


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def server(tmp_path, request):
    # these peers speak SIP over WebSocket with plain-RTP SDP and no WebRTC stack: the proxy path is under test
    # (Via/Record-Route over WS), so calls stay proxied; anchored browser calls: test_browser_calls.py
    srv = start_callpath(tmp_path, users=[ALICE, BOB], sip={"auth": True}, calls={"anchor": "never"},
                         sip_trace=True)
    yield srv
    srv.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("--- callpath output (end) ---\n" + srv.output()[-30000:])


def web_port(server: CallpathServer) -> int:
    return int(server.settings["web"]["port"])


# ------------------------------------------------------------------------------------------------ tests


async def test_ws_client_registers_and_receives_a_call_from_sipp(server, tmp_path):
    require_sipp()
    async with ws_peer(server) as alice:
        reg = await register(alice, Registration(ALICE, server.domain))
        assert reg.status == 200, reg
        bound = bound_contacts(reg)
        assert ALICE_CONTACT in bound, reg
        assert 0 < bound[ALICE_CONTACT] <= 600, reg

        sipp = asyncio.get_running_loop().create_task(arun_sipp(
            "uac.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]], service=ALICE[2],
            duration_ms=300, keys=server.sipp_keys(), timeout=15, workdir=tmp_path / "sipp-uac"))
        try:
            invite = await alice.expect(lambda m: m.is_request and m.method == "INVITE", "INVITE", 10)
            # addressed to the registered contact, through callpath's WebSocket listener
            assert invite.uri == ALICE_CONTACT, invite
            top_via = invite.get("via") or ""
            assert top_via.upper().startswith(f"SIP/2.0/WS 127.0.0.1:{web_port(server)};"), invite
            assert (param(top_via, "branch") or "").startswith("z9hG4bK"), invite
            assert len(invite.get_all("via")) == 2, invite  # callpath's, then SIPp's
            rr = invite.get_all("record-route")
            assert rr, invite
            rr_uri = uri_of(rr[0])
            assert uri_hostport(rr_uri) == ("127.0.0.1", web_port(server)), invite
            assert uri_params(rr_uri).get("transport") == "ws" and "lr" in uri_params(rr_uri), invite
            assert uri_hostport(uri_of(invite.get("from") or ""))[0] == server.domain
            assert (uri_of(invite.get("from") or "").split(":", 1)[1].split("@")[0]) == "bob", invite
            assert not any(f'realm="{server.domain}"' in v for v in invite.get_all("proxy-authorization")), \
                "callpath must strip the credentials meant for its realm"
            assert "m=audio" in invite.body

            tag = new_tag()
            await alice.send(response_to(invite, 180, "Ringing", to_tag=tag, contact=ALICE_CONTACT,
                                         copy_record_route=True))
            await alice.send(response_to(invite, 200, "OK", to_tag=tag, contact=ALICE_CONTACT,
                                         copy_record_route=True, body=sdp("alice", 41000)))

            ack = await alice.expect(
                lambda m: m.is_request and m.method == "ACK" and m.call_id == invite.call_id,
                "ACK of the 200 over the WebSocket", timeout=3)
            assert "cpflow=" in rr[0], rr  # the Record-Route facing the WebSocket names its connection
            assert ack.uri == ALICE_CONTACT, ack
            assert ack.tag("to") == tag, ack
            assert not ack.get_all("route"), f"callpath's own Route entries must be consumed\n{ack}"

            bye = await alice.expect(lambda m: m.is_request and m.method == "BYE" and m.call_id == invite.call_id,
                                     "BYE from SIPp over the WebSocket")
            assert bye.uri == ALICE_CONTACT, bye
            assert not bye.get_all("route"), bye
            await alice.send(response_to(bye, 200, "OK"))
        finally:
            result = await asyncio.wait_for(sipp, 45)
    result.check(calls=1)
    assert result.successful == 1 and result.failed == 0, result.log


async def test_ws_client_calls_a_registered_sipp_uas(server, tmp_path):
    require_sipp()
    uas_port = free_udp_port()
    with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20, workdir=tmp_path / "sipp-uas") as uas:
        (await arun_sipp("register_loop.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]],
                         keys=server.sipp_keys(contact_port=uas_port), timeout=10,
                         workdir=tmp_path / "sipp-register")).check(calls=1)
        async with ws_peer(server) as alice:
            reg = await register(alice, Registration(ALICE, server.domain))
            assert reg.status == 200, reg
            call = OutgoingCall(alice, ALICE, BOB[2], server.domain, ALICE_CONTACT)
            resp = await call.start()
            assert resp.status == 200, resp
            # the challenge was answered: two INVITEs, the second with our credentials
            assert call.cseq == 2
            assert call.remote_target and uri_hostport(call.remote_target) == ("127.0.0.1", uas_port), resp
            # the route set runs through callpath: the entry facing us is its WebSocket listener
            assert call.route_set, resp
            first = uri_of(call.route_set[0])
            assert uri_hostport(first) == ("127.0.0.1", web_port(server)), resp
            assert uri_params(first).get("transport") == "ws", resp
            await alice.send(call.in_dialog("ACK", call.cseq))
            await asyncio.sleep(0.2)
            await alice.send(call.in_dialog("BYE", call.cseq + 1))
            bye_ok = await alice.final_response("BYE", call.call_id, call.cseq + 1)
            assert bye_ok.status == 200, bye_ok
        uas_result = await asyncio.to_thread(uas.wait, 10)
    uas_result.check(calls=1)
    # the UAS saw alice's request arrive through callpath (its Via on top, alice's WSS Via below)
    assert f"SIP/2.0/WSS {WS_HOST}" in uas_result.log, uas_result.log


@pytest.mark.parametrize("subprotocols", [None, ["chat"]], ids=["no-subprotocol", "other-subprotocol"])
async def test_websocket_without_sip_subprotocol_is_refused(server, subprotocols):
    # RFC 7118 §4: the handshake itself is refused (an HTTP 4xx), not accepted and then closed
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(ws_url(server), subprotocols=subprotocols, open_timeout=STEP_TIMEOUT) as ws:
            await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    assert 400 <= refused.value.response.status_code < 500, refused.value
    # and with "sip" it is accepted, the subprotocol confirmed
    async with connect(ws_url(server), subprotocols=["sip"], open_timeout=STEP_TIMEOUT) as ws:
        assert ws.subprotocol == "sip"


async def test_unregister_removes_the_binding(server):
    async with ws_peer(server) as alice:
        reg = Registration(ALICE, server.domain)
        ok = await register(alice, reg)
        assert ok.status == 200 and ALICE_CONTACT in bound_contacts(ok), ok
        gone = await register(alice, reg, expires=0)
        assert gone.status == 200, gone
        assert ALICE_CONTACT not in bound_contacts(gone), gone

        resp, _ = await call_over_udp(server, BOB, ALICE[2])
        assert resp.status == 480, resp
        assert not alice.requests("INVITE"), "the unregistered WebSocket client was still called"


@pytest.mark.parametrize("how", ["close-frame", "abort"])
async def test_calls_to_a_closed_websocket_fail_fast(server, how):
    async with ws_peer(server) as alice:
        ok = await register(alice, Registration(ALICE, server.domain))
        assert ok.status == 200 and ALICE_CONTACT in bound_contacts(ok), ok
        if how == "abort":  # the browser tab is killed: TCP goes away without a WebSocket close frame
            alice.ws.transport.abort()
    await asyncio.sleep(0.2)  # the server sees the connection go
    resp, elapsed = await call_over_udp(server, BOB, ALICE[2], timeout=20)
    assert 400 <= resp.status < 700 and resp.status != 408, resp
    assert elapsed < 3.0, f"the call took {elapsed:.1f}s to fail ({resp.status})"


async def test_websocket_closing_while_ringing_ends_the_call(server):
    async with ws_peer(server) as alice:
        ok = await register(alice, Registration(ALICE, server.domain))
        assert ok.status == 200, ok
        call = asyncio.get_running_loop().create_task(call_over_udp(server, BOB, ALICE[2], timeout=20))
        try:
            invite = await alice.expect(lambda m: m.is_request and m.method == "INVITE", "INVITE", 10)
            await alice.send(response_to(invite, 180, "Ringing", to_tag=new_tag(), contact=ALICE_CONTACT,
                                         copy_record_route=True))
            await asyncio.sleep(0.2)
            dropped = time.monotonic()
            alice.ws.transport.abort()
            resp, _ = await asyncio.wait_for(call, 25)
        finally:
            if not call.done():
                call.cancel()
    waited = time.monotonic() - dropped
    # the caller is not left ringing until Timer C (3 min): the dead connection fails the branch
    assert 400 <= resp.status < 700 and resp.status != 408, resp
    assert waited < 3.0, f"the caller got {resp.status} {waited:.1f}s after the WebSocket dropped"
