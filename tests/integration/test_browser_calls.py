"""JsSIP in headless Chromium against callpath with its default settings (issue 9, "Proof").

- The browser agent registers over /ws (digest MD5, the default) and its REGISTER gets a 200.
- Two browser agents call each other by extension: each browser's fake microphone plays a tone and each
  hears the other's (WebAudio FFT in the page). Until call control's media legs land the call is proxied and
  DTLS-SRTP runs browser to browser; once the router anchors browser calls, each browser talks DTLS-SRTP to
  the media plane instead; the checks hold either way.
- A baresip phone calls the browser's extension, and the browser calls the phone: the default router
  anchors these calls through the media plane (plain RTP on the phone's side, WebRTC on the browser's,
  Opus or PCMU transcoded or passed through), as Kamailio + rtpengine deployments do.
"""
from __future__ import annotations

import time

import pytest

from peers.baresip import BaresipPhone, account_line, baresip_phones  # noqa: F401  (fixture)
from peers.jssip_browser import JsSipBrowser, jssip_browsers  # noqa: F401  (fixture)
from sipp_harness import callpath_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

CAROL = ("carol", "carolsecret", "1003")     # browser
DAVE = ("dave", "davesecret", "1004")        # browser
ALICE = ("alice", "secret", "1001")          # baresip phone
CAROL_HZ, DAVE_HZ, ALICE_HZ = 500.0, 900.0, 700.0
#: WebAudio's analyser at 48 kHz with 8192 points: 5.9 Hz bins (interpolated), Opus/G.711 in between
TOLERANCE_HZ = 20.0


def assert_browser_hears(agent: JsSipBrowser, frequency: float) -> None:
    heard = agent.measure(seconds=1.0)
    print(agent.name, "heard", {k: v for k, v in heard.items() if k != "peaks"})
    assert heard.get("inbound", {}).get("packetsReceived", 0) > 0, f"{agent.name} received no RTP: {heard}"
    assert heard["db"] > -60, f"{agent.name} heard nothing loud: {heard}\n{agent.log()}"
    assert abs(heard["hz"] - frequency) < TOLERANCE_HZ, \
        f"{agent.name} heard {heard['hz']:.1f} Hz, wanted {frequency} Hz: {heard}"


def assert_phone_hears(phone: BaresipPhone, frequency: float) -> None:
    heard = phone.heard_tone(seconds=1.0)
    assert abs(heard - frequency) < TOLERANCE_HZ, f"{phone.name} heard {heard:.1f} Hz, wanted {frequency} Hz"


def _with_server_log(server, check) -> None:
    try:
        check()
    except AssertionError:
        print(f"--- callpath ---\n{server.output()[-30000:]}")
        raise


def test_jssip_in_chromium_registers_with_the_default_settings(callpath_factory, jssip_browsers):
    server = callpath_factory(users=[CAROL], sip_trace=True)
    carol = jssip_browsers("carol", server, CAROL[0], CAROL[1], tone_hz=CAROL_HZ)

    def check() -> None:
        registered = carol.wait_registered()
        assert registered["status"] == 200, registered
        assert any("transport=ws" in c for c in registered["contacts"]), registered
        assert "algorithm=MD5" in server.output()

    _with_server_log(server, check)


def test_two_browsers_call_each_other_with_tones_both_ways(callpath_factory, jssip_browsers):
    """carol (Chromium) calls dave (Chromium) by extension; dave answers; each hears the other's tone."""
    server = callpath_factory(users=[CAROL, DAVE], sip_trace=True)
    carol = jssip_browsers("carol", server, CAROL[0], CAROL[1], tone_hz=CAROL_HZ)
    dave = jssip_browsers("dave", server, DAVE[0], DAVE[1], tone_hz=DAVE_HZ)

    def check() -> None:
        carol.wait_registered()
        dave.wait_registered()
        carol.call(DAVE[2])
        incoming = dave.wait_incoming()
        assert incoming["from_user"] == CAROL[0], incoming
        dave.answer()
        for confirmed in (carol.wait_confirmed(), dave.wait_confirmed()):   # WebRTC end to end: DTLS-SRTP
            assert "a=fingerprint:" in confirmed["remote_sdp"] and "UDP/TLS/RTP/SAVPF" in confirmed["remote_sdp"]
        time.sleep(1.0)      # jitter buffers fill, the analysers see steady audio
        assert_browser_hears(carol, DAVE_HZ)
        assert_browser_hears(dave, CAROL_HZ)
        carol.hangup()
        carol.wait_ended()
        ended = dave.wait_ended()
        assert ended["event"] == "ended" and ended["originator"] == "remote", ended

    _with_server_log(server, check)


def test_a_baresip_phone_calls_a_browser_by_extension(callpath_factory, jssip_browsers, baresip_phones):
    """alice (baresip, plain RTP) dials carol's extension; carol (Chromium) answers; tones both ways."""
    server = callpath_factory(users=[ALICE, CAROL], sip_trace=True)
    carol = jssip_browsers("carol", server, CAROL[0], CAROL[1], tone_hz=CAROL_HZ, answer="auto")
    alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                           tone_hz=ALICE_HZ)

    def check() -> None:
        carol.wait_registered()
        alice.wait_registered()
        alice.dial(CAROL[2])
        carol.wait_incoming()
        alice.wait_established(timeout=20)
        carol.wait_confirmed()
        time.sleep(2.0)
        assert_browser_hears(carol, ALICE_HZ)
        alice.hangup()
        alice.wait_closed()
        carol.wait_ended()
        assert_phone_hears(alice, CAROL_HZ)

    _with_server_log(server, check)


def test_a_browser_calls_a_baresip_phone_by_extension(callpath_factory, jssip_browsers, baresip_phones):
    """carol (Chromium) dials alice's extension; alice (baresip) auto-answers; tones both ways."""
    server = callpath_factory(users=[ALICE, CAROL], sip_trace=True)
    carol = jssip_browsers("carol", server, CAROL[0], CAROL[1], tone_hz=CAROL_HZ)
    alice = baresip_phones("alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port,
                                                 params=";answermode=auto"), tone_hz=ALICE_HZ)

    def check() -> None:
        carol.wait_registered()
        alice.wait_registered()
        carol.call(ALICE[2])
        alice.wait_established(timeout=20)
        carol.wait_confirmed()
        time.sleep(2.0)
        assert_browser_hears(carol, ALICE_HZ)
        carol.hangup()
        carol.wait_ended()
        alice.wait_closed()
        assert_phone_hears(alice, CAROL_HZ)

    _with_server_log(server, check)
