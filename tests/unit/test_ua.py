"""UserAgent over real UDP sockets on 127.0.0.1: two SipStacks in one event loop, caller and callee."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import pytest

from sipcore.message import Request, Response, parse_message
from media.sdp import SessionDescription, create_answer, create_offer
from sipcore.stack import SipStack
from sipcore.transaction import Flow
from sipcore.ua import (
    Answered, CallState, Confirmed, Ended, Failed, IncomingCall, InfoReceived, OutgoingCall, ReinviteReceived,
    Ringing, UserAgent,
)

CODECS = [("PCMU", 8000), ("telephone-event", 8000)]
OFFER = create_offer("127.0.0.1", 40000, CODECS, username="alice", session_id="1").to_bytes()
ANSWER = create_answer(SessionDescription.parse(OFFER), CODECS, "127.0.0.1", 50000, username="bob",
                       session_id="2").to_bytes()
T = 2.0  # per-step timeout


class Endpoint:
    """A SipStack on 127.0.0.1 with a UserAgent as its TU, recording (and optionally dropping) what it sends."""

    def __init__(self, stack: SipStack, ua: UserAgent, port: int) -> None:
        self.stack = stack
        self.ua = ua
        self.port = port
        self.sent: list[bytes] = []
        self.drop: Callable[[bytes], bool] | None = None
        orig = stack.send_raw

        def send_raw(data: bytes, flow: Flow) -> None:
            self.sent.append(data)
            if self.drop is not None and self.drop(data):
                return
            orig(data, flow)

        stack.send_raw = send_raw  # type: ignore[method-assign]

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def sent_lines(self) -> list[str]:
        return [d.split(b"\r\n", 1)[0].decode() for d in self.sent]

    def count(self, start: str) -> int:
        return sum(1 for line in self.sent_lines() if line.startswith(start))


async def make_endpoint(**ua_kwargs) -> Endpoint:
    stack = SipStack("127.0.0.1")
    port = await stack.listen_udp("127.0.0.1", 0)
    ua = UserAgent(stack, **ua_kwargs)
    stack.tu = ua
    return Endpoint(stack, ua, port)


@pytest.fixture
async def pair():
    a = await make_endpoint()
    b = await make_endpoint()
    yield a, b
    for ep in (a, b):
        ep.ua.close()
        await ep.stack.close()


async def expect(call, kind, timeout: float = T):
    ev = await call.next_event(timeout)
    assert isinstance(ev, kind), f"expected {kind.__name__}, got {ev!r}"
    return ev


async def until(pred: Callable[[], bool], timeout: float = T) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def setup_call(a: Endpoint, b: Endpoint) -> tuple[OutgoingCall, IncomingCall]:
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    inc.ring()
    await expect(call, Ringing)
    inc.answer(ANSWER)
    await expect(call, Answered)
    await expect(inc, Confirmed)
    return call, inc


async def test_invite_180_200_ack_bye(pair):
    a, b = pair
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", '"Alice" <sip:alice@127.0.0.1>', OFFER)
    assert call.state is CallState.CALLING
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    assert inc.request.body == OFFER and inc.remote_sdp == OFFER and inc.peer_100rel
    assert inc.request.from_.display == "Alice"
    await inc.ring(180)
    ev = await expect(call, Ringing)
    assert ev.status == 180 and ev.sdp is None and not ev.reliable and ev.remote_tag == inc.local_tag
    assert call.state is CallState.EARLY
    inc.answer(ANSWER)
    ans = await expect(call, Answered)
    assert ans.sdp == ANSWER and call.state is CallState.CONFIRMED and call.remote_sdp == ANSWER
    conf = await expect(inc, Confirmed)
    assert conf.sdp is None and inc.state is CallState.CONFIRMED
    # both sides agree on the dialog
    assert call.dialog.id.call_id == inc.dialog.id.call_id
    assert call.dialog.local_tag == inc.dialog.remote_tag and call.dialog.remote_tag == inc.dialog.local_tag
    assert a.count("ACK ") == 1
    call.hangup()
    assert (await expect(call, Ended)).by == "local"
    ended = await expect(inc, Ended)
    assert ended.by == "remote" and ended.reason == "BYE" and inc.state is CallState.ENDED
    await until(lambda: b.count("SIP/2.0 200") >= 2)  # 200 to INVITE, 200 to BYE


async def test_callee_hangs_up(pair):
    a, b = pair
    call, inc = await setup_call(a, b)
    inc.hangup()
    assert (await expect(call, Ended)).by == "remote"
    assert b.count("BYE ") == 1 and call.state is CallState.ENDED


async def test_cancel_before_answer_gets_487(pair):
    a, b = pair
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    call.cancel()  # no provisional yet: CANCEL must wait (§9.1)
    await asyncio.sleep(0.05)
    assert a.count("CANCEL ") == 0
    inc.ring(180)
    ended = await expect(inc, Ended)
    assert ended.by == "remote" and ended.reason == "CANCEL" and ended.status == 487
    failed = await expect(call, Failed)
    assert failed.status == 487 and call.state is CallState.FAILED
    assert a.count("CANCEL ") == 1 and a.count("ACK ") == 1  # the transaction ACKs the 487
    assert b.count("SIP/2.0 487") == 1
    with pytest.raises(Exception):
        inc.answer(ANSWER)


async def test_reject_486(pair):
    a, b = pair
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    inc.reject(486)
    failed = await expect(call, Failed)
    assert failed.status == 486 and failed.response is not None


async def test_100rel_prack(pair):
    a, b = pair
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    prack_done = inc.ring(183, ANSWER, reliable=True)
    ev = await expect(call, Ringing)
    assert ev.status == 183 and ev.reliable and ev.sdp == ANSWER
    assert await asyncio.wait_for(prack_done, T) is True
    prov = next(d for d in b.sent if d.startswith(b"SIP/2.0 183"))
    msg = parse_message(prov)
    assert msg.get("Require") == "100rel" and msg.get("RSeq") is not None
    prack = parse_message(next(d for d in a.sent if d.startswith(b"PRACK ")))
    assert prack.get("RAck") == f"{msg.get('RSeq')} {msg.cseq.seq} INVITE"
    assert prack.to.tag == inc.local_tag
    await until(lambda: b.count("SIP/2.0 200") >= 1)  # 200 to the PRACK
    inc.answer(ANSWER)
    assert (await expect(call, Answered)).sdp == ANSWER
    await expect(inc, Confirmed)
    assert b.count("SIP/2.0 183") == 1  # PRACKed in time: never re-sent


async def test_reliable_provisional_retransmitted_until_prack():
    a = await make_endpoint()
    b = await make_endpoint(t1=0.05)
    try:
        dropped = []

        def drop_first_prack(data: bytes) -> bool:
            if data.startswith(b"PRACK ") and not dropped:
                dropped.append(data)
                return True
            return False

        a.drop = drop_first_prack
        call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        done = inc.ring(180, reliable=True)
        inc.answer(ANSWER)  # deferred until the PRACK arrives (RFC 3262 §3)
        assert await asyncio.wait_for(done, T) is True
        assert b.count("SIP/2.0 180") >= 2  # re-sent while the PRACK was lost
        await expect(call, Ringing)
        assert (await expect(call, Answered)).sdp == ANSWER
        await expect(inc, Confirmed)
    finally:
        for ep in (a, b):
            ep.ua.close()
            await ep.stack.close()


async def test_reinvite_auto_and_app_answered(pair):
    a, b = pair
    call, inc = await setup_call(a, b)
    # the callee auto-answers with its current SDP
    new_offer = OFFER.replace(b"40000", b"40002").replace(b"o=alice 1 1", b"o=alice 1 2")
    assert new_offer != OFFER
    resp = await asyncio.wait_for(call.reinvite(new_offer), T)
    assert resp.status == 200 and resp.body == ANSWER
    ev = await expect(inc, ReinviteReceived)
    assert ev.offer == new_offer and ev.answered and inc.remote_sdp == new_offer
    assert call.local_sdp == new_offer
    # the caller answers a re-INVITE from the callee itself
    call.auto_answer_reinvite = False
    fut = inc.reinvite(ANSWER)
    ev = await expect(call, ReinviteReceived)
    assert ev.method == "INVITE" and ev.offer == ANSWER and not ev.answered
    reply = OFFER.replace(b"o=alice 1 1", b"o=alice 1 3")
    assert reply != OFFER
    ev.answer(reply)
    resp = await asyncio.wait_for(fut, T)
    assert resp.status == 200 and resp.body == reply
    await until(lambda: not call._unacked)  # our 2xx was ACKed
    # rejected offer: the session stays up
    fut = inc.reinvite(ANSWER)
    ev = await expect(call, ReinviteReceived)
    ev.reject(488)
    assert (await asyncio.wait_for(fut, T)).status == 488
    assert call.state is CallState.CONFIRMED and inc.state is CallState.CONFIRMED
    # UPDATE with an offer goes the same way
    call.auto_answer_reinvite = True
    resp = await asyncio.wait_for(inc.update(ANSWER), T)
    assert resp.status == 200 and resp.body == reply
    assert (await expect(call, ReinviteReceived)).method == "UPDATE"


async def test_reinvite_glare_gets_491(pair):
    a, b = pair
    call, inc = await setup_call(a, b)
    call.auto_answer_reinvite = False
    inc.auto_answer_reinvite = False
    f1 = call.reinvite(OFFER, retry_glare=False)
    ev = await expect(inc, ReinviteReceived)  # the callee holds the caller's offer unanswered ...
    with pytest.raises(Exception):
        inc.reinvite(ANSWER)  # ... and may not start its own INVITE meanwhile
    ev.answer(ANSWER)
    assert (await asyncio.wait_for(f1, T)).status == 200
    # simultaneous offers: each side has its own outstanding INVITE -> 491 to the other's
    call.dialog.offer_out = True  # pretend our re-INVITE is in flight
    f2 = inc.reinvite(ANSWER, retry_glare=False)
    assert (await asyncio.wait_for(f2, T)).status == 491


async def test_info_dtmf(pair):
    a, b = pair
    call, inc = await setup_call(a, b)
    resp = await asyncio.wait_for(call.info(b"Signal=5\r\nDuration=160\r\n"), T)
    assert resp.status == 200
    ev = await expect(inc, InfoReceived)
    assert ev.body == b"Signal=5\r\nDuration=160\r\n" and ev.content_type == "application/dtmf-relay"
    resp = await asyncio.wait_for(inc.send_request("OPTIONS"), T)
    assert resp.status == 200 and "INFO" in (resp.get("Allow") or "")
    resp = await asyncio.wait_for(inc.send_request("FOOBAR"), T)
    assert resp.status == 501


async def test_2xx_retransmitted_until_ack():
    a = await make_endpoint()
    b = await make_endpoint(t1=0.1)
    try:
        acks = []

        def drop_first_ack(data: bytes) -> bool:
            if data.startswith(b"ACK "):
                acks.append(data)
                return len(acks) == 1
            return False

        a.drop = drop_first_ack
        call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        inc.answer(ANSWER)
        await expect(call, Answered)
        await expect(inc, Confirmed)
        assert b.count("SIP/2.0 200") == 2  # the original and one retransmission
        assert len(acks) == 2 and acks[0] == acks[1]  # the same ACK re-sent for the retransmitted 2xx
        assert parse_message(acks[0]).top_via.branch != parse_message(
            next(d for d in a.sent if d.startswith(b"INVITE "))).top_via.branch
        await asyncio.sleep(0.25)
        assert b.count("SIP/2.0 200") == 2  # stopped once ACKed
    finally:
        for ep in (a, b):
            ep.ua.close()
            await ep.stack.close()


async def test_no_ack_gives_up_with_bye():
    a = await make_endpoint()
    b = await make_endpoint(t1=0.015)  # 64*T1 = 0.96 s
    try:
        a.drop = lambda data: data.startswith(b"ACK ")
        call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        inc.answer(ANSWER)
        await expect(call, Answered)
        ended = await expect(inc, Ended)
        assert ended.by == "timeout" and ended.reason == "no ACK"
        assert b.count("SIP/2.0 200") > 4 and b.count("BYE ") == 1
        assert (await expect(call, Ended)).by == "remote"
    finally:
        for ep in (a, b):
            ep.ua.close()
            await ep.stack.close()


class Collector:
    """A transaction owner that keeps the final responses it gets."""

    def __init__(self) -> None:
        self.responses: list[Response] = []

    def on_response(self, tx, resp: Response) -> None:
        self.responses.append(resp)

    def on_timeout(self, tx) -> None:
        pass

    def on_transport_failure(self, tx) -> None:
        pass


async def test_481_for_unknown_dialog_and_out_of_dialog_requests(pair):
    a, b = pair
    col = Collector()
    for method, to in (("BYE", "<sip:bob@x>;tag=nope"), ("INFO", "<sip:bob@x>;tag=nope"), ("BYE", "<sip:bob@x>"),
                       ("OPTIONS", "<sip:bob@x>"), ("SUBSCRIBE", "<sip:bob@x>"), ("FOO", "<sip:bob@x>")):
        r = Request(method, f"sip:bob@127.0.0.1:{b.port}")
        kind = "tagged" if "tag" in to else "plain"
        for n, v in (("From", "<sip:alice@x>;tag=a1"), ("To", to), ("Call-ID", f"unknown-{method}-{kind}"),
                     ("CSeq", f"1 {method}"), ("Max-Forwards", "70")):
            r.add(n, v)
        a.stack.send_request(r, Flow("udp", ("127.0.0.1", b.port)), owner=col)
    await until(lambda: len(col.responses) == 6)
    got = {(r.cseq.method, r.call_id): r.status for r in col.responses}
    assert got[("BYE", "unknown-BYE-tagged")] == 481
    assert got[("INFO", "unknown-INFO-tagged")] == 481
    assert got[("BYE", "unknown-BYE-plain")] == 481
    assert got[("OPTIONS", "unknown-OPTIONS-plain")] == 200
    assert got[("SUBSCRIBE", "unknown-SUBSCRIBE-plain")] == 405
    assert got[("FOO", "unknown-FOO-plain")] == 501


async def test_in_dialog_request_with_lower_cseq_gets_500(pair):
    a, b = pair
    call, inc = await setup_call(a, b)
    assert (await asyncio.wait_for(call.info(b"Signal=1\r\n"), T)).status == 200  # remote CSeq now 2
    req = call.dialog.create_request("INFO", cseq=1)  # lower than the last one the callee accepted
    col = Collector()
    a.stack.send_request(req, Flow("udp", ("127.0.0.1", b.port)), owner=col)
    await until(lambda: bool(col.responses))
    assert col.responses[0].status == 500


async def test_auth_retry_with_credentials():
    from sipcore.auth import DigestAuthenticator

    a = await make_endpoint(credentials=("alice", "secret"))
    b = await make_endpoint()
    auth = DigestAuthenticator(b"k" * 32, realm="callpath.test")
    inner = b.ua.on_request
    seen = []

    def on_request(tx, req, cancelled=None):
        if req.method == "INVITE" and not req.to.tag:
            seen.append(req)
            if not req.has("Proxy-Authorization"):
                tx.reply(407, headers=[("Proxy-Authenticate", c) for c in auth.challenges(0)[:1]])
                b.stack.flush()
                return
        inner(tx, req, cancelled)

    b.stack.tu.on_request = on_request  # type: ignore[method-assign]
    try:
        call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        assert len(seen) == 2 and seen[1].cseq.seq == seen[0].cseq.seq + 1
        assert seen[1].call_id == seen[0].call_id and seen[1].from_.tag == seen[0].from_.tag
        assert seen[1].get("Proxy-Authorization", ).startswith("Digest ")
        inc.answer(ANSWER)
        await expect(call, Answered)
        ack = parse_message(next(d for d in a.sent if d.startswith(b"ACK ") and b"Proxy-Authorization" in d))
        assert ack.cseq.seq == seen[1].cseq.seq  # the 2xx ACK carries the INVITE's credentials and CSeq
        await expect(inc, Confirmed)
    finally:
        for ep in (a, b):
            ep.ua.close()
            await ep.stack.close()


async def test_handles_and_logging_call_id(pair, caplog):
    a, b = pair
    caplog.set_level(logging.INFO, logger="callpath.sip.ua")
    call, inc = await setup_call(a, b)
    bye = call.dialog.create_request("BYE")
    assert b.ua.handles(bye) and not a.ua.handles(bye)
    bye.set("To", bye.get("To").replace(inc.local_tag, "other"))
    assert not b.ua.handles(bye)
    assert any(getattr(r, "call_id", None) == call.call_id for r in caplog.records)


def expire_client_transactions(ep: Endpoint) -> None:
    """Fire every transaction timer of an endpoint as if 33 s had passed (Timer B / M)."""
    ep.stack.layer.handle_timer(ep.stack.clock() + 33.0)
    ep.stack.flush()


async def test_calls_ringing_longer_than_timer_b_are_answered_and_rejected(pair):
    # Timer B guards only the Calling state (RFC 3261 §17.1.1.2): a call ringing for more than 32 s
    # keeps its INVITE transaction, and its final response (2xx or not) is handled normally.
    a, b = pair
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    inc.ring(180)
    await expect(call, Ringing)
    expire_client_transactions(a)
    assert a.stack.layer.client and call.state is CallState.EARLY
    inc.answer(ANSWER)
    assert (await expect(call, Answered)).sdp == ANSWER
    await expect(inc, Confirmed)
    # and a rejection after the same loss is ACKed by the UA itself
    call2 = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc2 = await asyncio.wait_for(b.ua.incoming.get(), T)
    inc2.ring(180)
    await expect(call2, Ringing)
    expire_client_transactions(a)
    inc2.reject(603)
    assert (await expect(call2, Failed)).status == 603
    await until(lambda: not b.stack.layer.server or all(t.state != "Completed" for t in b.stack.layer.server.values()))


async def test_late_2xx_retransmission_reacked_after_timer_m():
    a = await make_endpoint()
    b = await make_endpoint(t1=0.1)
    try:
        acks = []
        a.drop = lambda data: data.startswith(b"ACK ") and (acks.append(data) or len(acks) == 1)
        call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        inc.answer(ANSWER)
        await expect(call, Answered)
        expire_client_transactions(a)  # Timer M: the INVITE transaction is gone
        assert not a.stack.layer.client
        await expect(inc, Confirmed)  # the retransmitted 2xx arrived stray and was re-ACKed
        assert len(acks) == 2 and acks[0] == acks[1]
    finally:
        for ep in (a, b):
            ep.ua.close()
            await ep.stack.close()


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket that records datagrams and sends hand-built responses (a forking proxy stand-in)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)

    def reply(self, req: Request, status: int, tag: str, port: int, to_port: int, body: bytes = b"") -> None:
        from sipcore.message import make_response

        resp = make_response(req, status, to_tag=tag, headers=[("Contact", f"<sip:{tag}@127.0.0.1:{port}>")], body=body)
        if body:
            resp.set("Content-Type", "application/sdp")
        self.transport.sendto(resp.to_bytes(), ("127.0.0.1", to_port))


async def test_forked_early_dialogs_and_second_2xx_acked_then_byed():
    a = await make_endpoint()
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        call = a.ua.invite(f"sip:bob@127.0.0.1:{port}", "sip:alice@127.0.0.1", OFFER)
        await until(lambda: peer.received)
        inv = parse_message(peer.received[0])
        peer.reply(inv, 180, "fork1", port, a.port)
        peer.reply(inv, 183, "fork2", port, a.port, ANSWER)
        r1 = await expect(call, Ringing)
        r2 = await expect(call, Ringing)
        assert (r1.remote_tag, r2.remote_tag) == ("fork1", "fork2") and r2.sdp == ANSWER
        assert set(call.dialogs) == {"fork1", "fork2"}
        peer.reply(inv, 200, "fork2", port, a.port, ANSWER)
        ans = await expect(call, Answered)
        assert ans.remote_tag == "fork2" and call.dialog is call.dialogs["fork2"]
        peer.reply(inv, 200, "fork1", port, a.port, ANSWER)  # the other fork answered too
        await until(lambda: any(d.startswith(b"BYE ") for d in peer.received))
        bye = parse_message(next(d for d in peer.received if d.startswith(b"BYE ")))
        acks = [parse_message(d) for d in peer.received if d.startswith(b"ACK ")]
        assert {x.to.tag for x in acks} == {"fork1", "fork2"}
        assert bye.to.tag == "fork1" and str(bye.uri) == f"sip:fork1@127.0.0.1:{port}"
        assert call.state is CallState.CONFIRMED and call.dialogs["fork1"].state.value == "terminated"
    finally:
        transport.close()
        a.ua.close()
        await a.stack.close()


async def test_cancel_routed_like_the_proxy_does(pair):
    # the proxy answers the CANCEL itself, then hands it to the INVITE transaction's owner
    a, b = pair
    seen = []
    inner = b.ua.on_request

    def proxy_like(tx, req, cancelled=None):
        if req.method == "CANCEL":
            seen.append(b.ua.handles(req))
            tx.reply(200)
            cancelled.owner.on_cancel(tx, cancelled)
            return
        inner(tx, req, cancelled)

    b.stack.tu.on_request = proxy_like  # type: ignore[method-assign]
    call = a.ua.invite(f"sip:bob@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
    inc = await asyncio.wait_for(b.ua.incoming.get(), T)
    inc.ring(180)
    await expect(call, Ringing)
    call.hangup()  # unanswered: hangup = CANCEL
    assert (await expect(call, Failed)).status == 487
    assert (await expect(inc, Ended)).reason == "CANCEL"
    assert seen == [True] and b.count("SIP/2.0 200") == 1 and b.count("SIP/2.0 487") == 1


async def test_active_calls_leave_out_the_lingering_finished_ones(pair):
    """max_calls counts calls in progress: a finished call lingers 32 s for retransmissions, uncounted."""
    a, b = pair
    call, inc = await setup_call(a, b)
    assert a.ua.active_calls == 1 and b.ua.active_calls == 1
    call.hangup()
    await expect(inc, Ended)
    await until(lambda: a.ua.active_calls == 0 and b.ua.active_calls == 0)
    assert len(a.ua.calls) == 1 and len(b.ua.calls) == 1     # still there for late retransmissions
