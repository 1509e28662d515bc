"""BackToBack between a caller stack and a callee stack, with a third stack in the middle (real UDP sockets)."""
from __future__ import annotations

import asyncio

import pytest

from sipcore.b2bua import BackToBack, mirror_status
from sipcore.message import parse_message
from sipcore.ua import (
    Answered, CallState, Confirmed, Ended, Failed, InfoReceived, ReinviteReceived, Ringing,
)

from test_ua import ANSWER, OFFER, T, Endpoint, expect, make_endpoint, until

NUMBER = "9000"


class Trio:
    """caller -> middle (BackToBack) -> callee."""

    def __init__(self, caller: Endpoint, middle: Endpoint, callee: Endpoint, b2b: BackToBack) -> None:
        self.caller, self.middle, self.callee, self.b2b = caller, middle, callee, b2b

    def dial(self, number: str = NUMBER, sdp: bytes = OFFER):
        return self.caller.ua.invite(f"sip:{number}@127.0.0.1:{self.middle.port}",
                                     '"Alice" <sip:alice@127.0.0.1>', sdp)

    async def incoming(self):
        return await asyncio.wait_for(self.callee.ua.incoming.get(), T)


@pytest.fixture
async def trio():
    caller = await make_endpoint()
    middle = await make_endpoint()
    callee = await make_endpoint()
    b2b = BackToBack(middle.ua, {NUMBER: f"sip:bob@127.0.0.1:{callee.port}"})
    middle.ua.on_invite = b2b.on_invite
    yield Trio(caller, middle, callee, b2b)
    for ep in (caller, middle, callee):
        ep.ua.close()
        await ep.stack.close()


async def connect(t: Trio):
    call = t.dial()
    inc = await t.incoming()
    inc.ring(180)
    await expect(call, Ringing)
    inc.answer(ANSWER)
    await expect(call, Answered)
    await expect(inc, Confirmed)
    return call, inc


def test_mirror_status():
    assert [mirror_status(s) for s in (486, 480, 603, 404, 302, 407, 503, 488)] == [486, 480, 603, 404, 480, 403, 500, 488]
    b2b = BackToBack.__new__(BackToBack)
    b2b.number_map = {"9000": "sip:x@y"}
    assert b2b.handles_number("9000") and not b2b.handles_number("9001") and not b2b.handles_number(None)


async def test_call_through_b2bua_carries_sdp_exactly_and_separates_legs(trio):
    t = trio
    call = t.dial()
    inc = await t.incoming()
    assert inc.request.body == OFFER  # the caller's offer, byte for byte
    assert inc.request.from_.display == "Alice" and inc.request.from_.uri.user == "alice"
    a_invite = parse_message(next(d for d in t.caller.sent if d.startswith(b"INVITE ")))
    b_invite = inc.request
    assert a_invite.call_id != b_invite.call_id and a_invite.from_.tag != b_invite.from_.tag
    assert str(b_invite.uri) == f"sip:bob@127.0.0.1:{t.callee.port}"
    inc.ring(183, ANSWER)
    ring = await expect(call, Ringing)
    assert ring.status == 183 and ring.sdp == ANSWER
    inc.answer(ANSWER)
    ans = await expect(call, Answered)
    assert ans.sdp == ANSWER
    await expect(inc, Confirmed)
    assert len(t.b2b.calls) == 1
    bridge = next(iter(t.b2b.calls.values()))
    assert bridge.a.state is CallState.CONFIRMED or bridge.a.state is CallState.ANSWERED
    await until(lambda: bridge.a.state is CallState.CONFIRMED)
    # caller hangs up: BYE propagated to the callee
    call.hangup()
    ended = await expect(inc, Ended)
    assert ended.by == "remote" and ended.reason == "BYE"
    await until(lambda: not t.b2b.calls)
    assert t.middle.count("BYE ") == 1 and t.middle.count("SIP/2.0 200") >= 2


async def test_callee_hangup_propagates_to_caller(trio):
    t = trio
    call, inc = await connect(t)
    inc.hangup()
    ended = await expect(call, Ended)
    assert ended.by == "remote" and call.state is CallState.ENDED
    await until(lambda: not t.b2b.calls)


async def test_cancel_propagates_and_caller_gets_487(trio):
    t = trio
    call = t.dial()
    inc = await t.incoming()
    inc.ring(180)
    await expect(call, Ringing)
    call.cancel()
    failed = await expect(call, Failed)
    assert failed.status == 487
    ended = await expect(inc, Ended)  # the B leg was cancelled too
    assert ended.by == "remote" and ended.reason == "CANCEL"
    assert t.middle.count("CANCEL ") == 1
    await until(lambda: not t.b2b.calls)


@pytest.mark.parametrize("status", [486, 480, 603])
async def test_failure_codes_mirrored(trio, status):
    t = trio
    call = t.dial()
    inc = await t.incoming()
    inc.reject(status)
    failed = await expect(call, Failed)
    assert failed.status == status
    await until(lambda: not t.b2b.calls)


async def test_unknown_number_404(trio):
    t = trio
    call = t.dial(number="9999")
    assert (await expect(call, Failed)).status == 404


async def test_reinvite_and_info_relayed(trio):
    t = trio
    call, inc = await connect(t)
    # caller re-offers: relayed to the callee, whose answer comes back unchanged
    inc.auto_answer_reinvite = False
    new_offer = OFFER.replace(b"o=alice 1 1", b"o=alice 1 2").replace(b"40000", b"40010")
    assert new_offer != OFFER
    fut = call.reinvite(new_offer)
    ev = await expect(inc, ReinviteReceived)
    assert ev.offer == new_offer
    new_answer = ANSWER.replace(b"o=bob 2 1", b"o=bob 2 2")
    assert new_answer != ANSWER
    ev.answer(new_answer)
    resp = await asyncio.wait_for(fut, T)
    assert resp.status == 200 and resp.body == new_answer
    # callee re-offers the other way; the caller rejects it: the rejection is mirrored
    call.auto_answer_reinvite = False
    fut = inc.reinvite(ANSWER)
    ev = await expect(call, ReinviteReceived)
    assert ev.offer == ANSWER
    ev.reject(488)
    assert (await asyncio.wait_for(fut, T)).status == 488
    # UPDATE relayed too
    call.auto_answer_reinvite = True
    resp = await asyncio.wait_for(inc.update(ANSWER), T)
    assert resp.status == 200 and resp.body == new_offer
    assert (await expect(call, ReinviteReceived)).method == "UPDATE"
    # INFO (DTMF) both ways
    await asyncio.wait_for(call.info(b"Signal=7\r\nDuration=100\r\n"), T)
    info = await expect(inc, InfoReceived)
    assert info.body == b"Signal=7\r\nDuration=100\r\n" and info.content_type == "application/dtmf-relay"
    await asyncio.wait_for(inc.info(b"Signal=#\r\nDuration=100\r\n"), T)
    info = await expect(call, InfoReceived)
    assert info.body == b"Signal=#\r\nDuration=100\r\n"
    assert call.state is CallState.CONFIRMED and inc.state is CallState.CONFIRMED


async def test_reliable_early_media_through_b2bua(trio):
    t = trio
    call = t.dial()
    inc = await t.incoming()
    done = inc.ring(183, ANSWER, reliable=True)
    ring = await expect(call, Ringing)
    assert ring.reliable and ring.sdp == ANSWER  # the caller supports 100rel: mirrored reliably
    assert await asyncio.wait_for(done, T)
    inc.answer(ANSWER)
    assert (await expect(call, Answered)).sdp == ANSWER
    assert t.caller.count("PRACK ") == 1 and t.middle.count("PRACK ") == 1
