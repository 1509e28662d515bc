"""Strict, crash-free parsing: message.validate, the answerable parse errors, and the stack's receive path.

Each crash path found by the wire tests (tests/integration/test_torture_wire.py, test_fuzz_wire.py) has a test
here: what the parser or the stack now does instead of raising something other than SipParseError, answering
500, or sending somewhere it must not.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sipcore.errors import SipParseError
from sipcore.headers import CSeq, Via
from sipcore.message import Request, StreamFramer, parse_message, validate
from sipcore.stack import Listener, SipStack, reason_for
from sipcore.transaction import Flow
from sipcore.uri import NameAddr, SipUri, split_hostport

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
EXPECT = json.loads((DATA / "expectations.json").read_text("utf-8"))["messages"]


def request(extra: str = "", *, method: str = "OPTIONS", uri: str = "sip:bob@127.0.0.1",
            via: str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport", drop: tuple[str, ...] = ()) -> bytes:
    headers = [f"Via: {via}", "From: <sip:alice@127.0.0.1>;tag=a1", "To: <sip:bob@127.0.0.1>",
               "Call-ID: c1@127.0.0.1", f"CSeq: 1 {method}", "Max-Forwards: 70"]
    headers = [h for h in headers if h.split(":", 1)[0] not in drop]
    text = f"{method} {uri} SIP/2.0\r\n" + "\r\n".join(headers) + "\r\n" + extra + "Content-Length: 0\r\n\r\n"
    return text.encode("utf-8", "surrogateescape")


def status_of(data: bytes) -> int | None:
    """The status validate() (or parse_message) gives: None when the message passes."""
    try:
        validate(parse_message(data))
    except SipParseError as exc:
        return exc.status
    return None


# -- validate -----------------------------------------------------------------------------------------------
# What the stack answers before any transaction user, for the RFC 4475 messages it rejects (the wire test
# checks the same answers end to end); every other message passes validate() and is the TU's to answer.
STACK_ANSWERS = {"badinv01": 400, "badvers": 505, "clerr": 400, "ncl": 400, "scalar02": 400, "quotbal": 400,
                 "ltgtruri": 400, "lwsruri": 400, "escruri": 400, "regbadct": 400, "baddn": 400, "mismatch01": 400,
                 "mismatch02": 501, "insuf": 400, "unkscm": 416, "novelsc": 416, "multi01": 400, "mcl01": 400,
                 "unksm2": 400, "scalarlg": 400, "bigcode": 400, "test": 400}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_rfc4475_stack_level_answer(name):
    assert status_of((DATA / f"{name}.dat").read_bytes()) == STACK_ANSWERS.get(name)


def test_well_formed_request_passes_and_keeps_parsed_headers():
    msg = parse_message(request())
    validate(msg)
    assert {"topvia", "cseq", "call-id", "from", "to"} <= set(msg._cache)  # the TU reuses them


@pytest.mark.parametrize("mutate,status,words", [
    (lambda r: r.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS"), 400, "more than one CSeq"),
    (lambda r: r.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nMax-Forwards: 5"), 400, "Max-Forwards"),
    (lambda r: r.replace(b"Max-Forwards: 70", b"Max-Forwards: 7x"), 400, "bad Max-Forwards"),
    (lambda r: r.replace(b"CSeq: 1 OPTIONS", b"CSeq: " + b"9" * 5000 + b" OPTIONS"), 400, "CSeq number"),
    (lambda r: r.replace(b"Call-ID: c1", b"Call-ID: c\x011"), 400, "Call-ID"),
    (lambda r: r.replace(b"To: <sip:bob", b"To: \xff<sip:bob"), 400, "To header is not valid UTF-8"),
    (lambda r: r.replace(b"sip:bob@127.0.0.1 SIP", b"sip:b\xc3\xa9b@127.0.0.1 SIP"), 400, "Request-URI is not ASCII"),
    (lambda r: r.replace(b";rport", b";rport;;"), 400, "empty parameter"),
    (lambda r: r.replace(b";rport", b";rport=99999999"), 400, "rport"),
    (lambda r: r.replace(b";branch=z9hG4bK1", b";branch="), 400, "branch"),
    (lambda r: r.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5070", b"Via: SIP/2.0/UDP 127.0.\x000.1:5070"), 400, "host"),
    (lambda r: r.replace(b"Content-Length: 0", b"Route: \r\nContent-Length: 0"), 400, "empty Route"),
    (lambda r: r.replace(b"Content-Length: 0", b"Route: <sip:p1;lr>,,<sip:p2;lr>\r\nContent-Length: 0"), 400,
     "empty Route"),
    (lambda r: r.replace(b"tag=a1", b"tag=a1;"), 400, "empty parameter"),
])
def test_malformed_request_status_and_reason(mutate, status, words):
    with pytest.raises(SipParseError) as info:
        validate(parse_message(mutate(request())))
    assert info.value.status == status and words in info.value.reason, info.value.reason


def test_missing_headers_are_named_together():
    with pytest.raises(SipParseError, match="missing Call-ID, From and To headers"):
        validate(parse_message(request(drop=("Call-ID", "From", "To"))))


def test_responses_are_checked_lightly():
    resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nFrom: x\r\nTo: y\r\n" \
           b"Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    validate(parse_message(resp))  # From/To are not parsed for a response: a proxy forwards them as they are
    with pytest.raises(SipParseError):
        validate(parse_message(resp.replace(b"CSeq: 1 INVITE", b"CSeq: 1 INVITE\r\nCSeq: 2 INVITE")))


# -- parse_message: liberal start line, answerable framing errors ----------------------------------------
def test_extra_spaces_in_the_start_line_are_ignored_and_never_forwarded():
    msg = parse_message(request(uri="sip:bob@127.0.0.1").replace(b"OPTIONS sip:bob@127.0.0.1 SIP/2.0",
                                                                   b"OPTIONS  sip:bob@127.0.0.1  SIP/2.0  "))
    assert msg.start_line() == "OPTIONS sip:bob@127.0.0.1 SIP/2.0"


@pytest.mark.parametrize("data,reason", [
    (request().replace(b"Content-Length: 0", b"Content-Length: 99"), "larger than"),
    (request().replace(b"Content-Length: 0", b"Content-Length: -1"), "bad Content-Length"),
    (request().replace(b"Content-Length: 0", b"Content-Length: " + b"1" * 5000), "bad Content-Length"),
    (request().replace(b"Content-Length: 0", b"Content-Length: 1\r\nContent-Length: 0"), "conflicting"),
    (request().replace(b"OPTIONS sip:bob@127.0.0.1 SIP", b"OPTIONS sip:bob@127.0.0.1; lr SIP"), "whitespace"),
    (request().replace(b"Max-Forwards: 70", b"no colon on this line"), "bad header line"),
    (request()[:-4], None),  # a truncated datagram: no end of headers
])
def test_parse_errors_of_requests_carry_the_request_to_answer(data, reason):
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert reason is None or reason in info.value.reason
    salvaged = info.value.message
    assert isinstance(salvaged, Request) and salvaged.method == "OPTIONS"
    assert salvaged.get("call-id") == "c1@127.0.0.1"


def test_unparseable_bytes_and_responses_carry_nothing_to_answer():
    for data in (b"\x00\xff garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"SIP/2.0 4294967301 big\r\nCall-ID: c\r\n\r\n"):
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert info.value.message is None


def test_stream_framer_answers_then_fails_and_keeps_earlier_frames():
    framer = StreamFramer()
    good = request()
    frames = framer.feed(good + b"\r\n" + request().replace(b"Content-Length: 0", b"Content-Length: -5"))
    assert frames == [good] and framer.error is not None
    assert isinstance(framer.error.message, Request)
    with pytest.raises(SipParseError):
        framer.feed(b"more")
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: " + b"9" * 50 + b"\r\n\r\n")
    assert info.value.status == 513  # a huge length: no int() of 50 digits per message, and no ValueError


# -- headers and URIs: every failure is a SipParseError --------------------------------------------------
@pytest.mark.parametrize("parse,text", [
    (Via.parse, "SIP/2.0/UDP host;;"), (Via.parse, "SIP/2.0/UDP host;rport=x"), (Via.parse, "SIP/2.0/U@P host"),
    (Via.parse, "SIP/2.0/UDP host;received="), (Via.parse, "SIP/2.0/UDP h\u00e9st"), (Via.parse, "SIP/2.0/UDP [zz]:5"),
    (CSeq.parse, "1 IN VITE"), (CSeq.parse, "1" * 5000 + " INVITE"), (CSeq.parse, "1 INV\u00c9TE"),
    (NameAddr.parse, "<sip:a@b>;"), (NameAddr.parse, "<sip:a@b>;;tag=1"), (NameAddr.parse, "<sip:a@b>;t ag=1"),
    (lambda t: SipUri.parse(t), "sip:a@ex\x00ample.com"), (split_hostport, "host:" + "9" * 5000),
])
def test_bad_header_values_raise_only_sip_parse_error(parse, text):
    with pytest.raises(SipParseError):
        parse(text)


def test_reason_phrase_never_carries_control_characters():
    assert reason_for(SipParseError("bad \r\n\x00 value" + "x" * 500)) == "Bad Request (bad ??? value" + "x" * 94


# -- the stack's receive path ---------------------------------------------------------------------------
class Wire:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[bytes, tuple]] = []
        self.fail = fail

    def sendto(self, data: bytes, addr) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((data, addr))


class Recorder:
    """A transaction user that records what reaches it."""

    def __init__(self) -> None:
        self.requests: list = []

    def on_request(self, tx, req, cancelled) -> None:
        self.requests.append(req)
        tx.reply(200)

    def on_ack(self, req, flow) -> None:
        self.requests.append(req)

    def on_stray_response(self, resp, flow) -> None:
        self.requests.append(resp)


async def make_stack(wire: Wire | None = None) -> tuple[SipStack, Wire, Recorder]:
    stack = SipStack("127.0.0.1")
    stack._loop = asyncio.get_running_loop()
    stack.listeners["udp"] = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
    wire = wire or Wire()
    stack._udp = wire  # type: ignore[assignment]
    tu = Recorder()
    stack.tu = tu  # type: ignore[assignment]
    return stack, wire, tu


SRC = Flow("udp", ("127.0.0.1", 5070))


async def test_invalid_request_is_answered_before_the_tu_with_a_stable_tag():
    stack, wire, tu = await make_stack()
    bad = request().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS")
    stack.receive(bad, SRC)
    stack.receive(bad, SRC)
    assert tu.requests == [] and len(wire.sent) == 2
    first, second = (d for d, _ in wire.sent)
    assert first.startswith(b"SIP/2.0 400 Bad Request (more than one CSeq header)")
    assert first == second and b";tag=sl" in first  # a retransmission gets the same answer
    assert wire.sent[0][1] == ("127.0.0.1", 5070)
    assert stack.counters["bad_requests"] == 2


async def test_insufficient_headers_get_400_not_a_crash():
    stack, wire, tu = await make_stack()
    stack.receive((DATA / "insuf.dat").read_bytes(), SRC)
    (data, addr), = wire.sent
    assert data.startswith(b"SIP/2.0 400 Bad Request (missing Call-ID, From and To headers)")
    assert addr == ("127.0.0.1", 5060)  # the Via names no port and no rport: the source IP, port 5060


async def test_bad_via_is_answered_at_the_source_address():
    stack, wire, tu = await make_stack()
    stack.receive(request(via="SIP/2.0/UDP 192.0.2.15;;,;,,"), SRC)
    (data, addr), = wire.sent
    assert data.startswith(b"SIP/2.0 400") and addr == ("127.0.0.1", 5070)


async def test_answers_never_follow_a_received_or_host_naming_another_address():
    stack, wire, tu = await make_stack()
    stack.receive(request(via="SIP/2.0/UDP 192.0.2.99:5099;branch=z9hG4bKq;received=192.0.2.7",
                          method="INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), SRC)
    (data, addr), = wire.sent
    assert data.startswith(b"SIP/2.0 400") and addr == ("127.0.0.1", 5099)
    stack.receive(request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr;received=192.0.2.7"), SRC)
    assert "received=127.0.0.1" in tu.requests[-1].get("via")


async def test_ack_and_responses_are_never_answered_but_counted():
    stack, wire, tu = await make_stack()
    stack.receive(request(method="ACK").replace(b"CSeq: 1 ACK", b"CSeq: 1 ACK\r\nCSeq: 1 ACK"), SRC)
    stack.receive(request(method="ACK").replace(b"Content-Length: 0", b"Content-Length: 5"), SRC)
    stack.receive((DATA / "scalarlg.dat").read_bytes(), SRC)
    stack.receive((DATA / "bigcode.dat").read_bytes(), SRC)
    assert wire.sent == [] and tu.requests == []
    counters = stack.counters
    assert counters["dropped_invalid"] == 3 and counters["parse_errors"] == 1  # bigcode: no SIP message


async def test_framing_errors_over_udp_are_answered():
    stack, wire, tu = await make_stack()
    for name in ("clerr", "ncl", "mcl01"):
        stack.receive((DATA / f"{name}.dat").read_bytes(), SRC)
    assert [d.split(b"\r\n", 1)[0][:15] for d, _ in wire.sent] == [b"SIP/2.0 400 Bad"] * 3


async def test_udp_send_to_a_name_or_a_failing_transport_is_counted_not_raised():
    stack, wire, tu = await make_stack()
    stack.send_raw(b"x", Flow("udp", ("not-an-address.example", 5060)))  # would block in a DNS query
    assert wire.sent == [] and stack.counters["send_errors"] == 1
    stack, wire, tu = await make_stack(Wire(RuntimeError("uvloop: transport is closing")))
    stack.receive(request(), SRC)  # the TU's 200 cannot be sent: counted, nothing raised
    assert stack.counters["send_errors"] == 1


class FakeConn:
    transport_name = "tcp"
    remote = ("127.0.0.1", 5071)
    conn_id = 7
    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


async def test_stream_framing_error_is_answered_then_the_connection_closed():
    stack, wire, tu = await make_stack()
    conn = FakeConn()
    stack._conns[7] = conn  # type: ignore[assignment]
    framer = StreamFramer()
    with pytest.raises(SipParseError) as info:
        framer.feed((DATA / "ncl.dat").read_bytes())
    stack.stream_error(conn, info.value)  # type: ignore[arg-type]
    assert conn.sent[0].startswith(b"SIP/2.0 400 Bad Request (missing or bad Content-Length")
    assert conn.closed


async def test_tu_reply_that_raises_is_contained():
    class Broken(Recorder):
        def on_request(self, tx, req, cancelled) -> None:
            raise SipParseError("late problem")

    stack, wire, tu = await make_stack()
    stack.tu = Broken()  # type: ignore[assignment]
    stack.receive(request(), SRC)
    assert wire.sent[0][0].startswith(b"SIP/2.0 400 Bad Request (late problem)")


def test_pop_own_routes_survives_an_empty_route_value():
    from sipcore.proxy import Proxy

    class Stub:
        stack = type("S", (), {"is_local": staticmethod(lambda uri, domains: True),
                               "connection_alive": staticmethod(lambda flow: True)})()
        domains = frozenset()

    req = parse_message(request(extra="Route: \r\n"))
    assert Proxy._pop_own_routes(Stub(), req) is None  # type: ignore[arg-type]
    assert not req.has("route")
