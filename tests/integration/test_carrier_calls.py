"""Kamailio (Debian) plays the carrier for a real `callpath run` (issue 9, "Proof"), with audio checked by content.

The carrier (tests/integration/kamailio/carrier.cfg) hosts the trunk account callpath registers with digest auth
and a "PSTN subscriber": a Debian baresip phone registered at Kamailio with a phone number as its user. On the
callpath side, a baresip phone is a local user. Every phone's microphone is a tone; an FFT of what each heard
must show the other's.

1. DID inbound: the subscriber dials the DID at the carrier; Kamailio forwards the call to the Contact callpath
   registered (the To keeps the DID, ``did_source = "to"``); callpath's default router sends it to the local
   user whose extension is the DID, anchored through the media plane; that phone auto-answers; tones both ways.
2. Outbound with failover: the local phone dials the subscriber's number; the first trunk's carrier answers 503,
   callpath fails over to the second carrier, which relays to the subscriber (auto-answer); the carrier sees the
   trunk's caller id in From; tones both ways; /api/v1/status shows both trunks' channels back to 0.
   Also: a first trunk that never answers (408 after its response_timeout) or that qualify marked down, and a busy callee (486)
   that stops the failover.
3. The DID over a TCP trunk, via ``[calls] inbound_target``, for a user with no phone (480 back), and cancelled
   by the carrier's caller while ringing: the channel is released each time.

Both trunks' carriers run on 127.0.0.1, like the phones: ``inbound_hosts`` is set to an address nobody uses,
otherwise every loopback phone would count as the carrier (docs/trunks.md); a DID call is recognised by the
``line`` token of the registration Contact instead.
"""
from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from kamailio_harness import carrier_factory, require_kamailio  # noqa: F401 - fixture
from peers.baresip import (  # noqa: F401 - fixture
    SAMPLE_RATE,
    BaresipPhone,
    PhoneEvent,
    account_line,
    baresip_phones,
)
from sipp_harness import CallpathServer, callpath_factory, free_udp_port  # noqa: F401 - fixture

from media.audio import tone_to_noise_db

pytestmark = pytest.mark.integration

TRUNK_USER, TRUNK_PASSWORD = "acme", "s3cret"
SUBSCRIBER, SUBSCRIBER_PASSWORD = "3225550199", "pstn"   # carrier.cfg's default subscriber password
DID = "3225550100"
CALLER_ID = "+3225550000"
NOBODY = ["192.0.2.1"]      # inbound_hosts: no phone on loopback may pass as the carrier
CARRIER_HZ, LOCAL_HZ = 700.0, 1100.0
TOLERANCE_HZ = 10.0
TALK_SECONDS = 3.0


def status(server: CallpathServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5) as response:
        return json.load(response)


def trunk_status(server: CallpathServer) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in status(server)["trunks"]}


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (a generous timeout: the machine may be loaded); its truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def assert_hears(phone: BaresipPhone, frequency: float) -> None:
    """The phone heard ``frequency``, dominant and clean."""
    heard = phone.heard_tone(seconds=1.0)
    assert abs(heard - frequency) < TOLERANCE_HZ, f"{phone.name} heard {heard:.1f} Hz, wanted {frequency} Hz"
    assert tone_to_noise_db(phone.heard()[SAMPLE_RATE // 2:], SAMPLE_RATE, frequency) > 15.0


def talk_and_hang_up(caller: BaresipPhone, callee: BaresipPhone, timeout: float = 30,
                     by_callee: bool = False) -> PhoneEvent:
    """Both sides established (the callee auto-answers), a few seconds of tones, the caller (or the callee)
    hangs up; the callee's CALL_ESTABLISHED event (its ``peer`` is the From the callee got)."""
    caller.wait_established(timeout=timeout)
    answered = callee.wait_established(timeout=timeout)
    time.sleep(TALK_SECONDS)
    (callee if by_callee else caller).hangup()
    caller.wait_closed(timeout=30)
    callee.wait_closed(timeout=30)
    return answered


def assert_anchored(server: CallpathServer, *phones: BaresipPhone) -> None:
    """Each phone's RTP came from callpath's media ports (the call went through the media plane)."""
    low, high = server.settings["media"]["rtp_port_min"], server.settings["media"]["rtp_port_max"]
    for phone in phones:
        source = phone.rtp_source()
        assert source is not None and low <= source[1] <= high, f"{phone.name}: RTP from {source}"


def sent_offers(server: CallpathServer, request_line: str) -> list[str]:
    """The payload types of the audio m= line of every request callpath sent (its --sip-trace) whose request
    line starts with ``request_line``."""
    trace = server.output().splitlines()
    offers = []
    for i, line in enumerate(trace[:-1]):
        if line.startswith(">>> ") and trace[i + 1].startswith(request_line):
            body = next(t for t in trace[i + 1:] if t.startswith("m=audio "))
            offers.append(" ".join(body.split()[3:]))
    return offers


def trunk(carrier, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "host": carrier.address, "username": TRUNK_USER, "password": TRUNK_PASSWORD,
            "inbound_hosts": NOBODY, **kw}


def subscriber(baresip_phones, carrier, tone_hz: float, *, auto_answer: bool = False) -> BaresipPhone:
    """A phone on the carrier's network, number SUBSCRIBER, registered at Kamailio with digest auth."""
    return baresip_phones("pstn", account_line(SUBSCRIBER, "127.0.0.1", SUBSCRIBER_PASSWORD, port=carrier.port,
                                               params=";answermode=auto" if auto_answer else ""), tone_hz=tone_hz)


@pytest.mark.parametrize("route", ["extension", "inbound_target", "tcp"])
def test_did_call_from_the_carrier_reaches_a_local_phone_with_audio_both_ways(
        carrier_factory, callpath_factory, baresip_phones, route):
    """``extension``: bob's extension is the DID (bob hangs up); ``inbound_target``: the DID is nobody's,
    [calls] inbound_target = "bob" takes it (the carrier's caller hangs up); ``tcp``: as ``extension`` with
    the trunk (registration and the DID call) over TCP."""
    require_kamailio()
    carrier = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD)
    extra: dict[str, Any] = {"calls": {"inbound_target": "bob"}} if route == "inbound_target" else {}
    server = callpath_factory(users=[("bob", "secret", "1002" if route == "inbound_target" else DID)],
                              sip_trace=True, trunks=[trunk(carrier, "carrier", register=True, did_source="to",
                                                            max_channels=2, transport="udp" if route != "tcp" else "tcp")],
                              **extra)
    try:
        wait_until(lambda: trunk_status(server)["carrier"]["registration"]["state"] == "registered",
                   what="the trunk registered at Kamailio (digest)")
        bob = baresip_phones("bob", account_line("bob", "127.0.0.1", "secret", port=server.sip_port,
                                                 params=";answermode=auto"), tone_hz=LOCAL_HZ)
        pstn = subscriber(baresip_phones, carrier, CARRIER_HZ)
        bob.wait_registered()
        pstn.wait_registered()

        pstn.dial(DID)
        answered = talk_and_hang_up(pstn, bob, by_callee=route != "inbound_target")
        assert_hears(bob, CARRIER_HZ)
        assert_hears(pstn, LOCAL_HZ)

        forwarded = [line for line in carrier.log().splitlines() if f"DID call {DID} forwarded to" in line]
        assert len(forwarded) == 1 and f"sip:{TRUNK_USER}@" in forwarded[0], forwarded
        assert ("transport=tcp" in forwarded[0]) == (route == "tcp"), forwarded
        trace = server.output().splitlines()
        received = [trace[i] for i in range(len(trace) - 1)
                    if trace[i].startswith("<<< ") and trace[i + 1].startswith(f"INVITE sip:{TRUNK_USER}@")]
        transport = "tcp" if route == "tcp" else "udp"
        # over UDP from the carrier's port; over TCP Kamailio opens its own connection to our Contact
        assert len(received) == 1 and received[0].split()[2] == transport, received
        if transport == "udp":
            assert f" 127.0.0.1:{carrier.port} -> " in received[0], received
        assert_anchored(server, bob, pstn)
        assert answered.peer == f"sip:{SUBSCRIBER}@127.0.0.1", answered   # the caller's number reaches bob
        channels = wait_until(lambda: (c := trunk_status(server)["carrier"]["channels"])["in_use"] == 0 and c,
                              what="the trunk's channel released")
        assert channels["total"] == 1, channels
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


@pytest.mark.parametrize("primary", ["503", "silent", "down"])
def test_outbound_call_fails_over_to_the_second_carrier_with_audio_both_ways(
        carrier_factory, callpath_factory, baresip_phones, primary):
    """The first trunk fails, the second carries the call.

    ``503``: the first carrier (Kamailio, REJECT_ALL) answers 503 to the INVITE -> next trunk at once.
    ``silent``: nothing listens at the first trunk's address and it has no qualify: no response at all within
    its ``response_timeout`` (5 s by default), a 408 -> next trunk (an ICMP port unreachable is not taken as a
    transport failure).
    ``down``: the same dead address with ``qualify_interval = 1``: two unanswered OPTIONS make the trunk
    down, and the call goes straight to the second trunk (the first never gets the INVITE); the far end
    hangs up this time.
    """
    require_kamailio()
    working = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD)
    if primary == "503":
        failing = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD, reject_all=True)
        first = trunk(failing, "primary", priority=1)
    else:
        failing = None
        first = trunk(working, "primary", priority=1, host=f"127.0.0.1:{free_udp_port()}",
                      qualify_interval=1 if primary == "down" else 0)
    server = callpath_factory(users=[("alice", "secret", "1001")], sip_trace=True, trunks=[
        first, trunk(working, "backup", priority=2, caller_id=f"ACME <{CALLER_ID}>", max_channels=1,
                     codecs=["PCMA"] if primary == "503" else ["PCMA", "PCMU"]),
    ])
    try:
        if primary == "down":
            wait_until(lambda: trunk_status(server)["primary"]["qualify"]["state"] == "down",
                       what="the dead primary trunk qualified down")
        alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                               tone_hz=LOCAL_HZ)
        far = subscriber(baresip_phones, working, CARRIER_HZ, auto_answer=True)
        alice.wait_registered()
        far.wait_registered()

        alice.dial(SUBSCRIBER)
        answered = talk_and_hang_up(alice, far, timeout=30,
                                    by_callee=primary == "down")
        assert_hears(far, LOCAL_HZ)
        assert_hears(alice, CARRIER_HZ)
        assert_anchored(server, alice, far)

        # the carrier sees the trunk's caller id, not alice
        assert answered.peer == f"sip:{CALLER_ID}@127.0.0.1", answered
        assert f"call from sip:{CALLER_ID}@127.0.0.1 to {SUBSCRIBER} relayed to subscriber" in working.log()
        if failing is not None:
            assert "relayed" not in failing.log()              # the primary answered 503 (REJECT_ALL)
        # the trunk's codec list, in order, is what the carrier is offered (with PCMA only, nothing else)
        offers = sent_offers(server, f"INVITE sip:{SUBSCRIBER}@{working.address}")
        assert offers and set(offers) == {"8 101" if primary == "503" else "8 0 101"}, offers
        trunks = wait_until(lambda: (t := trunk_status(server))["backup"]["channels"]["in_use"] == 0 and t,
                            what="the backup trunk's channel released")
        assert trunks["primary"]["channels"]["in_use"] == 0
        assert trunks["primary"]["channels"]["total"] == (0 if primary == "down" else 1), trunks["primary"]
        assert trunks["backup"]["channels"]["total"] == 1, trunks["backup"]
        tried = [line for line in server.output().splitlines() if "failed with" in line and "trying the next" in line]
        assert [("trunk primary failed with " + ("408" if primary == "silent" else "503")) in line
                for line in tried] == ([] if primary == "down" else [True]), tried
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


def test_did_call_unanswered_or_cancelled_releases_the_channel(carrier_factory, callpath_factory, baresip_phones):
    """A DID call for a user with no phone registered gets 480 back through the carrier; then the carrier's
    caller gives up while bob's phone rings (CANCEL through Kamailio): bob stops ringing. Each time the trunk's
    channel is released."""
    require_kamailio()
    carrier = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD)
    server = callpath_factory(users=[("bob", "secret", DID)], sip_trace=True, trunks=[
        trunk(carrier, "carrier", register=True, did_source="to", max_channels=1)])
    try:
        wait_until(lambda: trunk_status(server)["carrier"]["registration"]["state"] == "registered",
                   what="the trunk registered at Kamailio")
        pstn = subscriber(baresip_phones, carrier, CARRIER_HZ)
        pstn.wait_registered()
        pstn.dial(DID)
        closed = pstn.wait_closed(timeout=30)
        assert "480" in (closed.param or ""), closed
        channels = wait_until(lambda: (c := trunk_status(server)["carrier"]["channels"])["in_use"] == 0 and c,
                              what="the trunk's channel released after the 480")
        assert channels["total"] == 1, channels

        bob = baresip_phones("bob", account_line("bob", "127.0.0.1", "secret", port=server.sip_port),
                             tone_hz=LOCAL_HZ)
        bob.wait_registered()
        mark = len(pstn.events)
        pstn.dial(DID)
        bob.wait_incoming(timeout=30)
        assert trunk_status(server)["carrier"]["channels"]["in_use"] == 1
        pstn.hangup()
        pstn.wait_event("CALL_CLOSED", start=mark, timeout=30)
        bob.wait_closed(timeout=30)
        wait_until(lambda: trunk_status(server)["carrier"]["channels"]["in_use"] == 0,
                   what="the trunk's channel released")
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


def test_busy_callee_behind_a_trunk_stops_the_failover(carrier_factory, callpath_factory, baresip_phones):
    """503 from the first trunk fails over; the second carrier's 486 (the callee is busy) reaches the caller and
    the third trunk is not tried: the callee would be as busy through it."""
    require_kamailio()
    failing = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD, reject_all=True)
    working = carrier_factory(user=TRUNK_USER, password=TRUNK_PASSWORD)
    server = callpath_factory(users=[("alice", "secret", "1001")], sip_trace=True, trunks=[
        trunk(failing, "primary", priority=1), trunk(working, "backup", priority=2),
        trunk(working, "spare", priority=3)])
    try:
        alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                               tone_hz=LOCAL_HZ)
        alice.wait_registered()
        alice.dial("486123")
        closed = alice.wait_closed(timeout=30)
        assert "486" in (closed.param or ""), closed
        assert "call from sip:acme@127.0.0.1 to 486123: busy" in working.log()
        trunks = wait_until(lambda: (t := trunk_status(server))["backup"]["channels"]["in_use"] == 0 and t,
                            what="the channels released")
        assert [trunks[name]["channels"]["total"] for name in ("primary", "backup", "spare")] == [1, 1, 0], trunks
        assert all(t["channels"]["in_use"] == 0 for t in trunks.values()), trunks
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise
