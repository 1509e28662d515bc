"""sipcore.callcontrol over real UDP stacks: a caller, callpath in the middle (CallControl), callees.

The media plane is a recording fake (`FakeMedia`) that answers every verb with valid SDP, so these tests
pin down the signalling and the sequence of media verbs; audio through real workers is proven by the
integration tests.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from media.sdp import SessionDescription, create_offer
from sipcore.b2bua import mirror_status
from sipcore.callcontrol import CallControl
from sipcore.channel import ChannelAnswered, ChannelEnded, ChannelHeld, ChannelResumed, DtmfReceived
from sipcore.routing import Contact, LegDescription, Target
from sipcore.ua import Answered, Confirmed, Ended, Failed, Ringing, parse_replaces
from sipcore.uri import SipUri

from test_ua import ANSWER, CODECS, OFFER, T, Endpoint, expect, make_endpoint, until


class FakeMedia:
    """Records the media verbs; every leg gets its own port in the SDP it makes."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.owners: dict[str, Any] = {}
        self.fail: set[str] = set()
        self._ports = iter(range(30000, 40000, 2))
        self.hold_next = False
        self.timeouts: dict[str, float | None] = {}   # leg -> the RTP timeout it was opened with

    def _sdp(self, leg: str, direction: str = "sendrecv") -> bytes:
        sd = create_offer("127.0.0.1", next(self._ports), CODECS, username="callpath", session_id="7")
        body = sd.to_bytes()
        if direction != "sendrecv":
            body = body.replace(b"a=sendrecv", b"a=" + direction.encode())
        return body

    def _check(self, verb: str) -> None:
        if verb in self.fail:
            raise RuntimeError(f"{verb} failed (test)")

    async def leg_offer(self, leg, *, group, transport=None, direction="sendrecv", owner=None, codecs=None,
                        dtmf=None, timeout=None):
        self._check("leg_offer")
        self.log.append(("leg_offer", leg, transport) + ((tuple(codecs), dtmf) if codecs or dtmf else ()))
        self.timeouts[leg] = timeout
        if owner is not None:
            self.owners[leg] = owner
        return LegDescription(self._sdp(leg, direction), "PCMU", direction)

    async def leg_answer(self, leg, sdp):
        self._check("leg_answer")
        self.log.append(("leg_answer", leg))
        return LegDescription(None, "PCMU")

    async def leg_remote_offer(self, leg, sdp, *, group, owner=None, timeout=None):
        self._check("leg_remote_offer")
        self.log.append(("leg_remote_offer", leg))
        self.timeouts.setdefault(leg, timeout)
        if owner is not None:
            self.owners[leg] = owner
        direction = SessionDescription.parse(sdp).media[0].direction
        return LegDescription(None, "PCMU", direction, direction in ("sendonly", "inactive"))

    async def leg_create_answer(self, leg, *, prefer=None):
        self._check("leg_create_answer")
        self.log.append(("leg_create_answer", leg, prefer))
        return LegDescription(self._sdp(leg), "PCMU")

    async def leg_close(self, leg):
        self.log.append(("leg_close", leg))
        self.owners.pop(leg, None)                      # a closed leg has no owner (as in media.pool)

    async def connect(self, a, b):
        self._check("connect")
        self.log.append(("connect", a, b))

    async def disconnect(self, leg):
        self.log.append(("disconnect", leg))

    async def play(self, leg, files, *, loop=False, mix=False):
        self.log.append(("play", leg, tuple(files), loop))

    async def stop_play(self, leg):
        self.log.append(("stop_play", leg))

    async def conference_join(self, conference, leg, mode="talk", to=None):
        self.log.append(("conference_join", conference, leg, mode, to))

    async def conference_leave(self, leg):
        self.log.append(("conference_leave", leg))

    def verbs(self, name: str) -> list[tuple]:
        return [e for e in self.log if e[0] == name]

    def connected(self, a: str, b: str) -> bool:
        """Whether ``connect`` joined the two legs (in either order)."""
        return ("connect", a, b) in self.log or ("connect", b, a) in self.log


class Contacts:
    def __init__(self) -> None:
        self.users: dict[str, list[Contact]] = {}

    async def contacts_of(self, user: str) -> list[Contact]:
        return self.users.get(user, [])


class Setup:
    def __init__(self, caller: Endpoint, middle: Endpoint, callees: list[Endpoint], control: CallControl,
                 media: FakeMedia, contacts: Contacts) -> None:
        self.caller, self.middle, self.callees = caller, middle, callees
        self.control, self.media, self.contacts = control, media, contacts
        self.handler: Any = None
        self.calls: list[Any] = []

    def dial(self, sdp: bytes | None = OFFER):
        return self.caller.ua.invite(f"sip:100@127.0.0.1:{self.middle.port}", '"Alice" <sip:alice@127.0.0.1>', sdp)

    async def incoming(self, index: int):
        return await asyncio.wait_for(self.callees[index].ua.incoming.get(), T)


@pytest.fixture
async def setup():
    caller = await make_endpoint()
    middle = await make_endpoint()
    callees = [await make_endpoint() for _ in range(3)]
    media, contacts = FakeMedia(), Contacts()
    for i, ep in enumerate(callees):
        contacts.users[f"agent{i}"] = [Contact(SipUri.parse(f"sip:agent{i}@127.0.0.1:{ep.port}"),
                                               f"sip:agent{i}@example.test")]
    control = CallControl(middle.ua, media, contacts, domain="example.test", music_on_hold=["moh.wav"],
                          rtp_timeout=60.0)
    s = Setup(caller, middle, callees, control, media, contacts)

    def on_invite(tx, request):
        if request.has("replaces"):                     # what the proxy does (Proxy._route_invite)
            old = control.find_channel(*parse_replaces(request.get("replaces"))[:3])
            if old is not None:
                control.accept_replacing(tx, request, old)
                return
        call = control.accept(tx, request, lambda c: s.handler(c))
        s.calls.append(call)

    middle.ua.on_invite = on_invite
    yield s
    await control.close()
    for ep in (caller, middle, *callees):
        ep.ua.close()
        await ep.stack.close()


async def test_park_with_music_then_the_first_of_parallel_agents_is_connected(setup):
    s = setup
    rung: dict[str, Any] = {}

    async def handler(call):
        await call.answer()
        await call.play(["moh.wav"], loop=True)
        rung["result"] = await call.ring([Target.user("agent0"), Target.user("agent1")], timeout=10)
        await call.ended()

    s.handler = handler
    out = s.dial()
    ans = await expect(out, Answered)                 # parked: answered by callpath itself
    assert ans.sdp and b"m=audio 3" in ans.sdp
    a0, a1 = await s.incoming(0), await s.incoming(1)
    assert a0.request.to.uri.user == "agent0" and str(a0.request.to.uri) == "sip:agent0@example.test"
    assert a0.request.from_.uri.user == "alice" and a0.request.from_.display == "Alice"
    a0.ring(180)
    a1.ring(180)
    a1.answer(ANSWER)
    await expect(a1, Confirmed)
    ended = await expect(a0, Ended)                   # the other agent's INVITE was cancelled
    assert ended.reason == "CANCEL"
    await until(lambda: "result" in rung)
    result = rung["result"]
    assert result.channel is not None and result.channel.label == "agent1"
    call = s.calls[0]
    leg_a, leg_1 = call.inbound.leg, result.channel.leg
    await until(lambda: s.media.connected(leg_a, leg_1))
    assert ("play", leg_a, ("moh.wav",), True) in s.media.log
    assert ("stop_play", leg_a) in s.media.log        # the music stops when the agent is connected
    out.hangup()
    await expect(a1, Ended)
    await asyncio.wait_for(call.ended(), T)
    closed = {e[1] for e in s.media.verbs("leg_close")}
    assert {leg_a, leg_1} <= closed and not s.control.calls
    assert s.media.timeouts[leg_a] == s.media.timeouts[leg_1] == 60.0     # every leg has the RTP timeout


async def test_ring_before_answer_like_a_pbx(setup):
    s = setup

    async def handler(call):
        result = await call.ring([Target.user("agent0")], timeout=10)
        if result.channel is None:
            call.reject(mirror_status(result.status))
            return
        await call.ended()

    s.handler = handler
    out = s.dial()
    inc = await s.incoming(0)
    inc.ring(180)
    ring = await expect(out, Ringing)
    assert ring.status == 180 and ring.sdp is None
    inc.answer(ANSWER)
    ans = await expect(out, Answered)                 # the caller is answered only once the agent has
    assert ans.sdp
    call = s.calls[0]
    out_leg = call.channels[1].leg
    assert ("leg_create_answer", call.inbound.leg, "PCMU") in s.media.log   # prefer the agent's codec
    await until(lambda: s.media.connected(call.inbound.leg, out_leg))
    inc.hangup()                                      # the agent hangs up: the caller is hung up too
    await expect(out, Ended)
    await asyncio.wait_for(call.ended(), T)


async def test_sequential_ringing_moves_on_after_busy_and_failure_is_mirrored(setup):
    s = setup
    results = []

    async def handler(call):
        result = await call.ring([Target.user("agent0", timeout=5), Target.user("agent1", timeout=5)],
                                 strategy="sequential")
        results.append(result)
        if result.channel is None:
            call.reject(mirror_status(result.status))

    s.handler = handler
    out = s.dial()
    first = await s.incoming(0)
    assert s.callees[1].ua.incoming.empty()          # one after another
    first.reject(486)
    second = await s.incoming(1)
    second.reject(603)
    failed = await expect(out, Failed)
    assert failed.status == 603 and results[0].status == 603      # 6xx beats 486


async def test_unreachable_target_gives_480_and_ring_timeout_cancels(setup):
    s = setup
    results = []

    async def handler(call):
        results.append(await call.ring([Target.user("nobody")]))
        results.append(await call.ring([Target.user("agent2")], timeout=0.5))
        call.reject(mirror_status(results[-1].status))

    s.handler = handler
    out = s.dial()
    inc = await s.incoming(2)
    inc.ring(180)
    ended = await expect(inc, Ended)                  # cancelled after the ring timeout
    assert ended.reason == "CANCEL"
    await expect(out, Ringing)
    failed = await expect(out, Failed)
    assert results[0].channel is None and results[0].status == 480
    assert results[1].status == 487 and failed.status == 487


async def test_hold_is_answered_locally_and_the_partner_hears_music(setup):
    s = setup
    events: list[Any] = []

    async def handler(call):
        call.on_event = events.append
        result = await call.ring([Target.user("agent0")])
        assert result.channel is not None
        await call.ended()

    s.handler = handler
    out = s.dial()
    inc = await s.incoming(0)
    inc.answer(ANSWER)
    await expect(out, Answered)
    await expect(inc, Confirmed)
    call = s.calls[0]
    agent_leg = call.channels[1].leg
    held = ANSWER.replace(b"a=sendrecv", b"a=sendonly")
    fut = inc.reinvite(held)
    resp = await asyncio.wait_for(fut, T)
    assert resp.status == 200 and resp.body
    await until(lambda: any(isinstance(e, ChannelHeld) for e in events))
    assert ("play", call.inbound.leg, ("moh.wav",), True) in s.media.log
    assert s.caller.count("INVITE ") == 1              # the caller saw no re-INVITE: nothing was relayed
    resp = await asyncio.wait_for(inc.reinvite(ANSWER), T)
    assert resp.status == 200
    await until(lambda: any(isinstance(e, ChannelResumed) for e in events))
    assert ("stop_play", call.inbound.leg) in s.media.log
    assert [e[1] for e in s.media.verbs("leg_remote_offer")].count(agent_leg) == 2
    out.hangup()
    await expect(inc, Ended)
    await asyncio.wait_for(call.ended(), T)
    assert [type(e) for e in events if isinstance(e, ChannelEnded)] == [ChannelEnded, ChannelEnded]


async def test_late_offer_invite_gets_our_offer_and_the_ack_answer(setup):
    s = setup

    async def handler(call):
        await call.answer()
        await call.ended()

    s.handler = handler
    out = s.dial(sdp=None)
    ans = await expect(out, Answered)
    assert ans.offer and ans.sdp and b"m=audio" in ans.sdp          # our offer in the 200
    out.ack(ANSWER)
    call = s.calls[0]
    assert s.media.verbs("leg_offer")[0][1] == call.inbound.leg
    await until(lambda: ("leg_answer", call.inbound.leg) in s.media.log)   # the ACK carried the answer
    out.hangup()
    await asyncio.wait_for(call.ended(), T)


async def test_caller_cancel_cancels_the_agents_and_closes_legs(setup):
    s = setup

    async def handler(call):
        await call.ring([Target.user("agent0"), Target.user("agent1")])

    s.handler = handler
    out = s.dial()
    a0, a1 = await s.incoming(0), await s.incoming(1)
    a0.ring(180)
    await expect(out, Ringing)
    out.cancel()
    assert (await expect(out, Failed)).status == 487
    assert (await expect(a0, Ended)).reason == "CANCEL"
    assert (await expect(a1, Ended)).reason == "CANCEL"
    call = s.calls[0]
    await asyncio.wait_for(call.ended(), T)
    assert len(s.media.verbs("leg_close")) == 2    # the caller's leg was never opened (not answered)


async def test_early_media_is_connected_and_the_200_repeats_the_answer(setup):
    s = setup

    async def handler(call):
        await call.ring([Target.user("agent0")])
        await call.ended()

    s.handler = handler
    out = s.dial()
    inc = await s.incoming(0)
    inc.ring(183, ANSWER)
    ring = await expect(out, Ringing)
    assert ring.status == 183 and ring.sdp
    call = s.calls[0]
    await until(lambda: s.media.connected(call.inbound.leg, call.channels[1].leg))
    inc.answer(ANSWER)
    ans = await expect(out, Answered)
    assert ans.sdp == ring.sdp                        # the same answer as the 183's
    assert len(s.media.verbs("leg_create_answer")) == 1
    out.hangup()
    await asyncio.wait_for(call.ended(), T)


async def test_info_digits_are_events(setup):
    s = setup
    events: list[Any] = []

    async def handler(call):
        call.on_event = events.append
        await call.answer()
        await call.ended()

    s.handler = handler
    out = s.dial()
    await expect(out, Answered)
    await asyncio.wait_for(out.info(b"Signal=5\r\nDuration=160\r\n"), T)
    await until(lambda: any(isinstance(e, DtmfReceived) for e in events))
    dtmf = next(e for e in events if isinstance(e, DtmfReceived))
    assert (dtmf.digit, dtmf.source) == ("5", "info")
    assert isinstance(events[0], ChannelAnswered)
    out.hangup()


async def test_media_failure_at_answer_gives_500_and_a_lost_worker_ends_the_channel(setup):
    s = setup
    s.media.fail.add("leg_create_answer")

    async def handler(call):
        await call.answer()

    s.handler = handler
    out = s.dial()
    assert (await expect(out, Failed)).status == 500
    s.media.fail.clear()

    async def parked(call):
        await call.answer()
        await call.ended()

    s.handler = parked
    out = s.dial()
    await expect(out, Answered)
    call = s.calls[-1]

    class WorkerLost:
        def __init__(self, leg: str) -> None:
            self.leg = leg

    s.media.owners[call.inbound.leg](WorkerLost(call.inbound.leg))
    ended = await expect(out, Ended)                  # callpath hung the caller up
    assert ended.by == "remote"
    await asyncio.wait_for(call.ended(), T)


def notifies(ep: Endpoint) -> list[bytes]:
    """The sipfrag bodies of the NOTIFYs an endpoint sent."""
    return [d.split(b"\r\n\r\n", 1)[1] for d in ep.sent if d.startswith(b"NOTIFY ")]


async def connected_to_agent0(s: Setup):
    """A caller connected through callpath to agent0 (the handler rings agent0 and waits)."""

    async def handler(call):
        if call.request.uri.user == "200":               # a consultation call from agent0: to agent1
            result = await call.ring([Target.user("agent1")])
        else:
            result = await call.ring([Target.user("agent0")])
        if result.channel is None:
            call.reject(mirror_status(result.status))
            return
        await call.ended()

    s.handler = handler
    out = s.dial()
    inc = await s.incoming(0)
    inc.answer(ANSWER)
    await expect(out, Answered)
    await expect(inc, Confirmed)
    return out, inc, s.calls[-1]


async def test_blind_transfer_by_refer_rings_the_target_and_connects_the_caller(setup):
    s = setup
    out, agent0, call = await connected_to_agent0(s)
    resp = await asyncio.wait_for(agent0.send_request("REFER", headers=[("Refer-To", "<sip:agent1@example.test>")]), T)
    assert resp.status == 202
    agent1 = await s.incoming(1)
    assert agent1.request.from_.uri.user == "alice"     # the transferee's identity
    agent1.answer(ANSWER)
    await expect(agent1, Confirmed)
    await expect(agent0, Ended)                          # callpath hangs the transferor up
    await until(lambda: len(notifies(s.middle)) == 2)
    assert [n.split(b"\r\n")[0] for n in notifies(s.middle)] == [b"SIP/2.0 100 Trying", b"SIP/2.0 200 OK"]
    new_leg = call.channels[-1].leg
    await until(lambda: s.media.connected(new_leg, call.inbound.leg))
    assert ("play", call.inbound.leg, ("moh.wav",), True) in s.media.log      # music while the target rang
    assert not out.is_final
    out.hangup()
    await expect(agent1, Ended)
    await asyncio.wait_for(call.ended(), T)


async def test_blind_transfer_to_a_busy_target_reports_it_and_reconnects(setup):
    s = setup
    out, agent0, call = await connected_to_agent0(s)
    resp = await asyncio.wait_for(agent0.send_request("REFER", headers=[("Refer-To", "<sip:agent1@example.test>")]), T)
    assert resp.status == 202
    agent1 = await s.incoming(1)
    agent1.reject(486)
    await until(lambda: len(notifies(s.middle)) == 2)
    assert notifies(s.middle)[1].startswith(b"SIP/2.0 486 ")
    pair = {call.channels[1].leg, call.inbound.leg}
    await until(lambda: sum(1 for e in s.media.verbs("connect") if set(e[1:]) == pair) == 2)   # back together
    assert not agent0.is_final and not out.is_final
    out.hangup()
    await expect(agent0, Ended)


async def test_attended_transfer_with_replaces_joins_the_caller_and_the_consulted_agent(setup):
    s = setup
    out, agent0, call1 = await connected_to_agent0(s)
    consult = s.callees[0].ua.invite(f"sip:200@127.0.0.1:{s.middle.port}", "<sip:agent0@127.0.0.1>", OFFER)
    agent1 = await s.incoming(1)
    agent1.answer(ANSWER)
    await expect(consult, Answered)
    call2 = s.calls[-1]
    await until(lambda: call2.channels[-1].partner is not None)
    replaces = f"{consult.call_id};to-tag={consult.dialog.remote_tag};from-tag={consult.local_tag}"
    from urllib.parse import quote
    refer_to = f"<sip:agent1@example.test?Replaces={quote(replaces, safe='')}>"
    resp = await asyncio.wait_for(agent0.send_request("REFER", headers=[("Refer-To", refer_to)]), T)
    assert resp.status == 202
    await expect(agent0, Ended)                          # both of the transferor's dialogs end
    await expect(consult, Ended)
    await until(lambda: s.media.connected(call1.inbound.leg, call2.channels[-1].leg))
    assert notifies(s.middle)[-1].startswith(b"SIP/2.0 200 OK")
    assert not out.is_final and not agent1.is_final
    agent1.hangup()                                      # the consulted agent hangs up: the caller follows
    await expect(out, Ended)
    await asyncio.wait_for(call1.ended(), T)
    await asyncio.wait_for(call2.ended(), T)


async def test_invite_with_replaces_takes_over_a_dialog(setup):
    s = setup
    out, agent0, call = await connected_to_agent0(s)
    replaced = call.channels[1].sip                      # callpath's dialog with agent0
    replaces = f"{replaced.call_id};to-tag={replaced.local_tag};from-tag={replaced.dialog.remote_tag}"
    pickup = s.callees[2].ua.invite(f"sip:alice@127.0.0.1:{s.middle.port}", "<sip:agent2@127.0.0.1>", OFFER,
                                    headers=[("Replaces", replaces)])
    await expect(pickup, Answered)
    await expect(agent0, Ended)                          # the replaced dialog got a BYE
    await until(lambda: s.media.connected(call.channels[-1].leg, call.inbound.leg))
    out.hangup()
    await expect(pickup, Ended)


async def test_conference_of_two_callers_and_a_trunk_contact_offers_its_codecs(setup):
    s = setup
    s.contacts.users["carrier"] = [Contact(SipUri.parse(f"sip:5551234@127.0.0.1:{s.callees[0].port}"),
                                           "sip:5551234@carrier.test", codecs=("PCMA", "PCMU"), dtmf="info",
                                           from_uri='"ACME" <sip:+3225550000@carrier.test>')]

    async def handler(call):
        if call.request.uri.user == "700":
            await call.conference("room-700")
            await call.ended()
        else:
            result = await call.ring([Target.user("carrier")])
            if result.channel is not None:
                await call.ended()

    s.handler = handler
    first = s.caller.ua.invite(f"sip:700@127.0.0.1:{s.middle.port}", "<sip:alice@127.0.0.1>", OFFER)
    second = s.callees[2].ua.invite(f"sip:700@127.0.0.1:{s.middle.port}", "<sip:carol@127.0.0.1>", OFFER)
    await expect(first, Answered)
    await expect(second, Answered)
    legs = [c.inbound.leg for c in s.calls]
    await until(lambda: all(("conference_join", "room-700", leg, "talk", None) in s.media.log for leg in legs))
    first.hangup()
    second.hangup()
    await until(lambda: not s.control.calls)
    # the trunk contact: its codecs, DTMF mode and caller id
    out = s.dial()
    inc = await s.incoming(0)
    assert inc.request.from_.display == "ACME" and inc.request.from_.uri.user == "+3225550000"
    offer = next(e for e in s.media.verbs("leg_offer") if len(e) > 3)
    assert offer[3:] == (("PCMA", "PCMU"), "info")
    inc.answer(ANSWER)
    await expect(out, Answered)
    await expect(inc, Confirmed)
    out.hangup()
    await expect(inc, Ended)


async def test_an_answer_the_media_plane_refuses_fails_that_channel_with_488(setup):
    s = setup
    results = []

    async def handler(call):
        result = await call.ring([Target.user("agent0")])
        results.append(result)
        call.reject(mirror_status(result.status))

    s.handler = handler
    s.media.fail.add("leg_answer")
    out = s.dial()
    inc = await s.incoming(0)
    inc.answer(ANSWER)
    await expect(inc, Confirmed)
    assert (await expect(inc, Ended)).reason == "BYE"      # the unusable callee is hung up
    failed = await expect(out, Failed)
    assert failed.status == 488 and results[0].status == 488


async def test_a_contact_that_never_responds_fails_with_408_after_its_response_timeout(setup):
    """A dead trunk (nothing answers, not even 100 Trying) fails in its response_timeout, not at Timer B."""
    import socket

    s = setup
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))                     # bound, never read: the INVITE goes nowhere
    port = dead.getsockname()[1]
    results = []

    async def handler(call):
        contact = Contact(SipUri.parse(f"sip:555@127.0.0.1:{port}"), "sip:555@carrier.test", response_timeout=0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        results.append((await call.ring([Target.contacts([contact])]), loop.time() - start))
        call.reject(mirror_status(results[0][0].status))

    s.handler = handler
    try:
        out = s.dial()
        failed = await expect(out, Failed)
        result, elapsed = results[0]
        assert result.status == 408 and "no response" in result.reason
        assert elapsed < 2.0 and failed.status == 408
    finally:
        dead.close()



async def test_finished_calls_leave_no_cyclic_garbage():
    """Parked, rung, connected, held, transferred, cancelled and busy calls are freed by reference counting once
    the UAs forget them: the server collects the old generation rarely (web/runtime.py tune_gc), so a cycle per
    call would grow memory by its size until then (tests/integration/test_soak.py caught 37 KB per call)."""
    from gc_checks import collector_off, cyclic_garbage, live
    from sipcore.call import Call as UaCall
    from sipcore.callcontrol import Call
    from sipcore.channel import Channel
    from test_memory import expire_transactions

    caller, middle = await make_endpoint(linger=0.01), await make_endpoint(linger=0.01)
    callees = [await make_endpoint(linger=0.01) for _ in range(2)]
    media, contacts = FakeMedia(), Contacts()
    for i, ep in enumerate(callees):
        contacts.users[f"agent{i}"] = [Contact(SipUri.parse(f"sip:agent{i}@127.0.0.1:{ep.port}"),
                                               f"sip:agent{i}@example.test")]
    control = CallControl(middle.ua, media, contacts, domain="example.test", music_on_hold=["moh.wav"])

    async def handler(call):
        await call.answer()
        await call.play(["moh.wav"], loop=True)
        result = await call.ring([Target.user("agent0"), Target.user("agent1")])
        if result.channel is not None:
            await call.ended()

    middle.ua.on_invite = lambda tx, request: control.accept(tx, request, handler)
    eps = [caller, middle, *callees]
    try:
        with collector_off():
            for n in range(12):
                out = caller.ua.invite(f"sip:100@127.0.0.1:{middle.port}", "<sip:alice@127.0.0.1>", OFFER)
                await expect(out, Answered)
                a0, a1 = await asyncio.wait_for(callees[0].ua.incoming.get(), T), \
                    await asyncio.wait_for(callees[1].ua.incoming.get(), T)
                if n % 3 == 0:                      # agent 1 answers, agent 0 is cancelled; hold, then the caller ends
                    a1.answer(ANSWER)
                    await expect(a1, Confirmed)
                    await expect(a0, Ended)
                    await asyncio.wait_for(a1.reinvite(ANSWER.replace(b"a=sendrecv", b"a=sendonly")), T)
                    out.hangup()
                    await expect(a1, Ended)
                elif n % 3 == 1:                    # both busy: the parked caller is hung up... by the handler end
                    a0.reject(486)
                    a1.reject(486)
                    out.hangup()
                else:                               # agent 0 answers then transfers the caller to agent... itself gone
                    a0.answer(ANSWER)
                    await expect(a0, Confirmed)
                    await expect(a1, Ended)
                    a0.hangup()
                    await expect(out, Ended)
                await until(lambda: not control.calls)
            for ep in eps:
                ep.sent.clear()
            await asyncio.sleep(0.05)
            expire_transactions(*(ep.stack for ep in eps))
            await until(lambda: all(not ep.ua.calls for ep in eps))
            del out, a0, a1
            assert live(Call, Channel, UaCall) == 0
            garbage = cyclic_garbage()
            assert garbage == Counter(), garbage.most_common(12)
    finally:
        await control.close()
        for ep in eps:
            ep.ua.close()
            await ep.stack.close()
