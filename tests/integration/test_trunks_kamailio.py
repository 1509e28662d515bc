"""SIP trunks against a real carrier: Debian's Kamailio (tests/integration/kamailio/carrier.cfg) over loopback.

callpath's stack registers to Kamailio with digest auth and refreshes; a wrong password gives the failed state
with the reason and a growing back-off; OPTIONS qualify goes up, down while Kamailio is stopped, and up again;
a DID call from the "PSTN" reaches callpath through the registration and is matched to its trunk; an outbound
call through the trunks fails over from a carrier answering 503 to one that relays to a SIPp UAS; and a
`callpath run` process shows all of it in /api/v1/status and unREGISTERs at shutdown.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid

import pytest

from kamailio_harness import carrier_factory, require_kamailio  # noqa: F401 - fixture
from sipcore.outbound_registration import RegistrationState
from sipcore.qualify import QualifyState
from sipcore.stack import SipStack
from sipcore.trunk import TrunkConfig, TrunkGroup
from sipcore.trunk_link import TrunkLink, start_trunks, stop_trunks
from sipcore.ua import Answered, Failed, UserAgent
from sipp_harness import free_udp_port, require_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration

USER, PASSWORD = "acme", "s3cret"
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\n")


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll ``predicate`` (generous timeout: the machine may be loaded) and return its truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def stack():
    require_kamailio()
    s = SipStack("127.0.0.1")
    await s.listen_udp("127.0.0.1", 0)
    await s.listen_stream("tcp", "127.0.0.1", 0)
    yield s
    await s.close()


def trunk_config(carrier, **kw) -> TrunkConfig:
    values = dict(name="carrier", host=carrier.address, username=USER, password=PASSWORD)
    values.update(kw)
    return TrunkConfig(**values)


async def test_registers_with_digest_refreshes_and_unregisters(stack, carrier_factory):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    group = TrunkGroup.from_configs([trunk_config(carrier, register=True, register_expires=10)])
    links = await start_trunks(stack, group)
    reg = group.get("carrier").registration
    await wait_for(lambda: reg.state is RegistrationState.REGISTERED, what="registered")
    assert reg.granted == 10 and reg.last_error == ""
    first = reg.registered_at
    # refresh at refresh_delay(10) = 5 s: the binding is renewed before it lapses, with no failure between
    await wait_for(lambda: reg.registered_at != first and reg.state is RegistrationState.REGISTERED, timeout=30,
                   what="a refresh")
    assert reg.failures == 0
    saved = [line for line in carrier.log().splitlines() if f"REGISTER of sip:{USER}@" in line]
    assert len(saved) >= 2 and all("expires 10" in line for line in saved), saved
    assert f";line={group.get('carrier').line}" in saved[0]
    await stop_trunks(links)
    assert reg.state is RegistrationState.UNREGISTERED
    await wait_for(lambda: "expires 0" in last_register(carrier), what="the unREGISTER in Kamailio's log")


def last_register(carrier) -> str:
    """Kamailio's log line for the last REGISTER it saved (carrier.cfg logs contact and expires)."""
    lines = [line for line in carrier.log().splitlines() if "REGISTER of" in line]
    return lines[-1] if lines else ""


async def test_tcp_registration(stack, carrier_factory):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    group = TrunkGroup.from_configs([trunk_config(carrier, register=True, transport="tcp", register_expires=60)])
    links = await start_trunks(stack, group)
    reg = group.get("carrier").registration
    await wait_for(lambda: reg.state is RegistrationState.REGISTERED, what="registered over TCP")
    await wait_for(lambda: "transport=tcp" in last_register(carrier), what="a TCP contact at Kamailio")
    await stop_trunks(links)


async def test_wrong_password_fails_with_reason_and_backs_off(stack, carrier_factory):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    group = TrunkGroup.from_configs([trunk_config(carrier, register=True, password="wrong")])
    trunk = group.get("carrier")
    link = TrunkLink(stack, trunk, retry_base=1.0, retry_max=8.0)
    await link.start()
    reg = trunk.registration
    await wait_for(lambda: reg.state is RegistrationState.FAILED, what="failed")
    assert reg.last_error.startswith("401") and "credentials rejected" in reg.last_error, reg.last_error
    assert reg.status(link.clock())["retry_in"] is not None and not trunk.up
    await wait_for(lambda: reg.failures >= 3, timeout=30, what="two retries (1 s, then 2 s)")
    assert reg.state is RegistrationState.FAILED
    assert reg.retry_at - link.clock() > 2.0            # the third failure waits 4 s
    await link.stop()


async def test_qualify_up_down_up(stack, carrier_factory):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    group = TrunkGroup.from_configs([trunk_config(carrier, qualify_interval=1)])
    trunk = group.get("carrier")
    link = TrunkLink(stack, trunk)
    await link.start()
    q = trunk.qualify
    await wait_for(lambda: q.state is QualifyState.UP, what="qualify up")
    assert q.rtt is not None and 0 <= q.rtt < 1.0
    assert [r.name for r in group.candidates("100")] == ["carrier"]
    carrier.stop()
    await wait_for(lambda: q.state is QualifyState.DOWN, timeout=30, what="qualify down")
    assert q.misses >= 2 and group.candidates("100") == [] and not trunk.up
    carrier.start()
    await wait_for(lambda: q.state is QualifyState.UP, timeout=30, what="qualify up again")
    assert q.misses == 0 and [r.name for r in group.candidates("100")] == ["carrier"]
    await link.stop()


def pstn_invite(carrier, did: str, timeout: float = 10.0) -> str:
    """The "PSTN" calls ``did`` at the carrier (a raw UDP INVITE); returns the final response's text."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    port = sock.getsockname()[1]
    call_id = uuid.uuid4().hex
    msg = (f"INVITE sip:{did}@127.0.0.1:{carrier.port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
           f"From: <sip:pstn@127.0.0.1>;tag=pstn1\r\nTo: <sip:{did}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
           f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:pstn@127.0.0.1:{port}>\r\n"
           f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP
    try:
        sock.sendto(msg, ("127.0.0.1", carrier.port))
        while True:
            text = sock.recv(65535).decode(errors="replace")
            if int(text.split(" ", 2)[1]) >= 200:
                if text.startswith("SIP/2.0 4") or text.startswith("SIP/2.0 5") or text.startswith("SIP/2.0 6"):
                    to = next(line for line in text.split("\r\n") if line.lower().startswith("to:"))
                    ack = (f"ACK sip:{did}@127.0.0.1:{carrier.port} SIP/2.0\r\n"
                           f"{next(line for line in text.split(chr(13) + chr(10)) if line.startswith('Via:'))}\r\n"
                           f"From: <sip:pstn@127.0.0.1>;tag=pstn1\r\n{to}\r\nCall-ID: {call_id}\r\n"
                           "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
                    sock.sendto(ack.encode(), ("127.0.0.1", carrier.port))
                return text
    finally:
        sock.close()


async def test_did_call_arrives_through_the_registration_and_matches_the_trunk(stack, carrier_factory):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    group = TrunkGroup.from_configs([
        TrunkConfig(name="other", host="192.0.2.99"),                       # never matches
        trunk_config(carrier, register=True, did_source="to", priority=1),
    ])
    seen: list = []

    def on_invite(tx, request):
        seen.append((request, tx.flow, group.match_inbound(request, tx.flow)))
        tx.reply(486)
        stack.flush()

    ua = UserAgent(stack, on_invite=on_invite)
    stack.tu = ua
    links = await start_trunks(stack, group)
    await wait_for(lambda: group.get("carrier").registration.state is RegistrationState.REGISTERED,
                   what="registered")
    final = await asyncio.to_thread(pstn_invite, carrier, "+3225550100")
    assert final.startswith("SIP/2.0 486"), final
    request, flow, match = (await wait_for(lambda: seen, what="the INVITE at callpath"))[0]
    assert match is not None, str(request)
    trunk, did = match
    assert trunk.name == "carrier" and did == "+3225550100"
    assert request.uri.params.get("line") == trunk.line and request.uri.user == USER
    assert flow.remote == ("127.0.0.1", carrier.port) and group.is_trunk_source(flow.remote[0])
    await stop_trunks(links)


async def call_through_trunks(ua: UserAgent, group: TrunkGroup, number: str, timeout: float = 20.0):
    """What the call control does: each candidate in order, a channel held per attempt, failover on
    408/5xx. Returns (route, answered call or None, [(trunk, status), ...])."""
    attempts = []
    for route in group.candidates(number):
        if not route.acquire():
            continue
        call = ua.invite(route.request_uri, route.from_uri, SDP, flow=route.flow, credentials=route.credentials)
        while True:
            event = await call.next_event(timeout)
            if isinstance(event, Answered):
                attempts.append((route.name, 200))
                return route, call, attempts
            if isinstance(event, Failed):
                break
        route.release()
        attempts.append((route.name, event.status))
        if not group.is_failover_status(event.status):
            break
    return None, None, attempts


async def test_outbound_call_fails_over_from_503_to_the_next_trunk(stack, carrier_factory):
    require_sipp()
    uas_port = free_udp_port()
    failing = carrier_factory(user=USER, password=PASSWORD, reject_all=True)
    working = carrier_factory(user=USER, password=PASSWORD, uas=f"sip:127.0.0.1:{uas_port}")
    group = TrunkGroup.from_configs([
        trunk_config(working, name="backup", priority=2, caller_id="ACME <+3225550000>"),
        trunk_config(failing, name="primary", priority=1, max_channels=1),
    ])
    ua = UserAgent(stack)
    stack.tu = ua
    with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=30) as uas:
        route, call, attempts = await call_through_trunks(ua, group, "003247000000")
        assert attempts == [("primary", 503), ("backup", 200)], attempts
        assert route.name == "backup" and group.get("backup").channels == 1 and group.get("primary").channels == 0
        call.hangup()
        await asyncio.sleep(0.5)
        route.release()
        result = await asyncio.to_thread(uas.wait, 15)
    result.check(calls=1)
    log = result.log
    invite = log[log.index("INVITE sip:003247000000@"):]
    assert 'From: "ACME" <sip:+3225550000@127.0.0.1>' in invite[:2000], invite[:2000]
    assert "Proxy-Authorization: Digest" not in invite[:2000]   # the carrier consumed our credentials


async def test_callpath_status_shows_trunks_and_unregisters_at_shutdown(carrier_factory, tmp_path):
    carrier = carrier_factory(user=USER, password=PASSWORD)
    server = start_callpath(tmp_path, media={"enabled": False}, trunks=[
        {"name": "carrier", "host": carrier.address, "username": USER, "password": PASSWORD, "register": True,
         "register_expires": 60, "qualify_interval": 1, "did_source": "to", "max_channels": 4},
        {"name": "broken", "host": carrier.address, "username": USER, "password": "wrong", "register": True},
    ])
    try:
        def status():
            data = json.load(urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5))
            trunks = {t["name"]: t for t in data["trunks"]}
            good, bad = trunks["carrier"], trunks["broken"]
            if good["registration"]["state"] == "registered" and good["qualify"]["state"] == "up" and \
                    bad["registration"]["state"] == "failed":
                return trunks
            return None

        trunks = await wait_for(status, what="/api/v1/status: carrier registered and up, broken failed")
        good, bad = trunks["carrier"], trunks["broken"]
        assert good["qualify"]["rtt_ms"] is not None and good["channels"] == {
            "in_use": 0, "max": 4, "total": 0, "refused_full": 0}
        assert good["registration"]["expires_in"] > 0 and good["up"] is True
        assert "credentials rejected" in bad["registration"]["last_error"] and bad["up"] is False
        assert bad["registration"]["retry_in"] > 0
        # a DID call from the carrier is not challenged by callpath's proxy (carriers do not answer 407):
        # with no route for it yet it gets 404, where an unknown source would get 407
        final = await asyncio.to_thread(pstn_invite, carrier, "+3225550100")
        assert final.startswith("SIP/2.0 404"), final
    finally:
        server.stop()
    await wait_for(lambda: "expires 0" in last_register(carrier), what="the unREGISTER at shutdown")


class RecordingMedia:
    """The media verbs sipcore.callcontrol needs, answered with valid SDP and recorded (audio through real workers
    is the media tests' job; this test is about the trunk signalling)."""

    def __init__(self) -> None:
        self.log: list[tuple] = []

    async def leg_offer(self, leg, *, group, transport=None, direction="sendrecv", owner=None, codecs=None,
                        dtmf=None, timeout=None):
        from sipcore.routing import LegDescription
        self.log.append(("leg_offer", leg, transport, tuple(codecs or ()), dtmf))
        return LegDescription(SDP, "PCMA", direction)

    async def leg_answer(self, leg, sdp):
        from sipcore.routing import LegDescription
        self.log.append(("leg_answer", leg))
        return LegDescription(None, "PCMA")

    async def leg_remote_offer(self, leg, sdp, *, group, owner=None, timeout=None):
        from sipcore.routing import LegDescription
        self.log.append(("leg_remote_offer", leg))
        return LegDescription(None, "PCMA")

    async def leg_create_answer(self, leg, *, prefer=None):
        from sipcore.routing import LegDescription
        self.log.append(("leg_create_answer", leg))
        return LegDescription(SDP, "PCMA")

    async def leg_close(self, leg):
        self.log.append(("leg_close", leg))

    async def connect(self, a, b):
        self.log.append(("connect", a, b))

    async def disconnect(self, leg):
        self.log.append(("disconnect", leg))

    async def play(self, leg, files, *, loop=False, mix=False):
        self.log.append(("play", leg))

    async def stop_play(self, leg):
        self.log.append(("stop_play", leg))


async def test_call_control_dials_out_through_the_trunks_with_failover(stack, carrier_factory):
    """A caller reaches callpath; its call control rings the number through the trunks in failover order
    (route.target()), as the ACD will: the primary carrier answers 503, the backup relays to a SIPp UAS that
    answers; the caller is connected, hangs up, and the channel goes back to the trunk."""
    from sipcore.b2bua import mirror_status
    from sipcore.callcontrol import CallControl

    require_sipp()
    uas_port = free_udp_port()
    failing = carrier_factory(user=USER, password=PASSWORD, reject_all=True)
    working = carrier_factory(user=USER, password=PASSWORD, uas=f"sip:127.0.0.1:{uas_port}")
    trunks = TrunkGroup.from_configs([
        trunk_config(failing, name="primary", priority=1),
        trunk_config(working, name="backup", priority=2, caller_id="ACME Sales <+3225550000>", max_channels=1),
    ])
    middle = UserAgent(stack)
    stack.tu = middle
    media = RecordingMedia()
    control = CallControl(middle, media, None, domain="callpath.test")
    attempts: list[tuple[str, int]] = []

    async def dial_out(call):
        number = call.request.uri.user
        for route in trunks.candidates(number):
            if not route.acquire():
                continue
            result = await call.ring([route.target(timeout=15)])
            if result.channel is not None:
                attempts.append((route.name, 200))
                await call.ended()
                route.release()
                return
            route.release()
            attempts.append((route.name, result.status))
            if not trunks.is_failover_status(result.status):
                call.reject(mirror_status(result.status))
                return
        call.reject(503)

    middle.on_invite = lambda tx, request: control.accept(tx, request, dial_out)
    caller_stack = SipStack("127.0.0.1")
    await caller_stack.listen_udp("127.0.0.1", 0)
    caller = UserAgent(caller_stack)
    caller_stack.tu = caller
    port = stack.listeners["udp"].port
    try:
        with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=30) as uas:
            out = caller.invite(f"sip:003247000000@127.0.0.1:{port}", '"Alice" <sip:alice@127.0.0.1>', SDP)
            while not isinstance(event := await out.next_event(20), (Answered, Failed)):
                pass
            assert isinstance(event, Answered), (event, attempts)
            assert attempts == [("primary", 503), ("backup", 200)]
            assert trunks.get("backup").channels == 1 and not trunks.get("backup").usable   # max_channels 1
            out.hangup()
            await wait_for(lambda: trunks.get("backup").channels == 0, what="the channel released at hang-up")
            result = await asyncio.to_thread(uas.wait, 15)
        result.check(calls=1)
        invite = result.log[result.log.index("INVITE sip:003247000000@"):][:2000]
        assert 'From: "ACME Sales" <sip:+3225550000@127.0.0.1>' in invite, invite
        assert "To: <sip:003247000000@127.0.0.1:" in invite, invite
    finally:
        await control.close()
        caller.close()
        await caller_stack.close()
