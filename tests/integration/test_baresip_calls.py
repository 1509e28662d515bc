"""Two Debian baresip phones call each other through callpath with its default settings (issue 9, "Proof").

Each phone's "microphone" is a tone (alice 700 Hz, bob 1100 Hz, played by aufile); each records what it
hears (sndfile). alice dials bob's extension, bob is told to accept (or auto-answers), both talk for a few
seconds, alice hangs up, and an FFT of each recording must show the other's tone. By default the call is
proxied (two SIP phones with G.711 in common: RTP flows phone to phone); with ``[calls] anchor = "always"``
the same call runs through callpath's media plane (the phones' RTP comes from callpath's ports).

The account lines have exactly the README quick start's shape (``<sip:alice@127.0.0.1>;auth_pass=secret``)
plus the server's free port (and ``;transport=tcp`` over TCP), so the quick start is proven as written.
"""
from __future__ import annotations

import time

import pytest

from media.audio import tone_to_noise_db
from peers.baresip import SAMPLE_RATE, BaresipPhone, account_line, baresip_phones  # noqa: F401  (fixture)
from sipp_harness import callpath_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

ALICE = ("alice", "secret", "1001")
BOB = ("bob", "secret", "1002")
ALICE_HZ, BOB_HZ = 700.0, 1100.0
TOLERANCE_HZ = 10.0
TALK_SECONDS = 3.0


def assert_hears(phone: BaresipPhone, frequency: float) -> None:
    """The phone heard ``frequency``, dominant and clean (the tone well above everything else)."""
    heard = phone.heard_tone(seconds=1.0)
    assert abs(heard - frequency) < TOLERANCE_HZ, f"{phone.name} heard {heard:.1f} Hz, wanted {frequency} Hz"
    samples = phone.heard()
    assert tone_to_noise_db(samples[SAMPLE_RATE // 2:], SAMPLE_RATE, frequency) > 15.0


def _call_both_ways_audible(alice: BaresipPhone, bob: BaresipPhone, dial: str, *, auto_answer: bool) -> None:
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(dial)
    if not auto_answer:
        incoming = bob.wait_incoming()
        assert incoming.peer and "alice" in incoming.peer, incoming
        bob.accept()
    alice.wait_established()
    bob.wait_established()
    time.sleep(TALK_SECONDS)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    assert_hears(alice, BOB_HZ)
    assert_hears(bob, ALICE_HZ)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_baresip_phones_call_each_other_with_the_default_settings(callpath_factory, baresip_phones,
                                                                      transport):
    """The README quick start: two accounts, default settings (MD5 digest, media on), alice dials 1002."""
    server = callpath_factory(users=[ALICE, BOB], sip_trace=True)
    tcp = "tcp" if transport == "tcp" else None
    alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port,
                                                 transport=tcp), tone_hz=ALICE_HZ)
    bob = baresip_phones("bob", account_line("bob", "127.0.0.1", "secret", port=server.sip_port,
                                             transport=tcp), tone_hz=BOB_HZ)
    if transport == "udp":   # exactly the README's line, plus the port
        assert alice.account == f"<sip:alice@127.0.0.1:{server.sip_port}>;auth_pass=secret"
    try:
        _call_both_ways_audible(alice, bob, BOB[2], auto_answer=False)
        received = [line for line in server.output().splitlines() if line.startswith("<<< ")]
        assert received and all(f" {transport} " in line for line in received), received
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


def test_baresip_calls_a_username_and_the_callee_auto_answers(callpath_factory, baresip_phones):
    """Dialing the username (``bob``) works as well as the extension; bob's account answers by itself."""
    server = callpath_factory(users=[ALICE, BOB], sip_trace=True)
    alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                           tone_hz=ALICE_HZ)
    bob = baresip_phones("bob", account_line("bob", "127.0.0.1", "secret", port=server.sip_port,
                                             params=";answermode=auto"), tone_hz=BOB_HZ)
    try:
        _call_both_ways_audible(alice, bob, "bob", auto_answer=True)
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


def test_two_baresip_phones_call_each_other_anchored_through_callpath(callpath_factory, baresip_phones):
    """With ``[calls] anchor = "always"`` the same call runs through callpath's media plane: each phone
    receives its RTP from the media workers' port range, and the tones still cross both ways."""
    server = callpath_factory(users=[ALICE, BOB], sip_trace=True, calls={"anchor": "always"})
    alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                           tone_hz=ALICE_HZ)
    bob = baresip_phones("bob", account_line("bob", "127.0.0.1", "secret", port=server.sip_port,
                                             params=";answermode=auto"), tone_hz=BOB_HZ)
    media = server.settings["media"]
    try:
        _call_both_ways_audible(alice, bob, BOB[2], auto_answer=True)
        for phone, other in ((alice, bob), (bob, alice)):
            source = phone.rtp_source()
            assert source is not None and media["rtp_port_min"] <= source[1] <= media["rtp_port_max"], \
                f"{phone.name} received RTP from {source}, not from callpath's media ports\n{phone.log()}"
            assert not other.rtp_ports[0] <= source[1] <= other.rtp_ports[1], f"{phone.name}: RTP from {other.name}"
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise
