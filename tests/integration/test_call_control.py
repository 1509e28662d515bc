"""Call control on real sockets with real phones (issue 9, "Proof"): Debian's baresip phones against a
`callpath run` on its default settings plus the feature under test, audio checked by its content.

- A ring group parks the caller with music (a 440 Hz "music" file: heard by FFT), rings two agents in
  parallel, and connects the first to answer: the caller then hears that agent, the other stops ringing.
- A sequential ring group rings one agent after another.
- Hold: an agent puts the caller on hold (baresip's re-INVITE with sendonly), the caller hears the music,
  then the agent's voice again after the resume.
- A blind transfer from a phone (baresip's REFER): the caller ends up talking with the transfer target.
- A conference room: three phones from three calls, each hearing the other two.
- Transfers from Linphone (Debian's linphonec, a phone that can do an attended transfer): the agent holds the
  caller, calls a colleague, and transfers the caller to them (REFER with Replaces, on either call); a blind
  transfer; a Linphone transferee whose INVITE with Replaces takes the place of callpath's dialog; hold and
  resume from Linphone.

Each phone plays its own tone; `segments` cuts what a phone heard into windows and names the dominant
frequency of each, so a test can say "music first, then the agent".
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from media.audio import dominant_frequency
from peers.baresip import SAMPLE_RATE, BaresipPhone, account_line, baresip_phones, write_tone  # noqa: F401
from peers.jssip_browser import jssip_browsers  # noqa: F401  (fixture)
from peers.linphone import linphone_phones  # noqa: F401  (fixture)
from sipp_harness import callpath_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

ALICE = ("alice", "alicepw", "1001")      # the caller
BOB = ("bob", "bobpw", "1002")            # agents / other parties
CAROL = ("carol", "carolpw", "1003")
MUSIC_HZ, ALICE_HZ, BOB_HZ, CAROL_HZ = 440.0, 700.0, 1100.0, 1300.0
TOLERANCE_HZ = 15.0


def loud_windows(samples: np.ndarray, seconds: float = 0.5, threshold: float = 500.0) -> list[float]:
    """The dominant frequency of each ``seconds`` window of what a phone heard (quiet windows skipped)."""
    size = int(seconds * SAMPLE_RATE)
    out = []
    for start in range(0, len(samples) - size + 1, size):
        window = samples[start:start + size].astype(np.float64)
        if np.sqrt(np.mean(window ** 2)) > threshold:
            out.append(dominant_frequency(window, SAMPLE_RATE))
    return out


def near(freq: float, want: float) -> bool:
    return abs(freq - want) < TOLERANCE_HZ


def spectrum_peaks(samples: np.ndarray, *wanted: float) -> dict[float, float]:
    """The level (dB relative to the strongest bin) at each wanted frequency of ``samples``."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    top = spectrum.max()
    return {w: 20 * np.log10(spectrum[(freqs > w - 10) & (freqs < w + 10)].max() / top) for w in wanted}


def phone(phones, who: tuple[str, str, str], server, hz: float, params: str = "") -> BaresipPhone:
    return phones(who[0], account_line(who[0], "127.0.0.1", who[1], port=server.sip_port, params=params),
                  tone_hz=hz)


def music_file(tmp_path: Path) -> str:
    return str(write_tone(tmp_path / "music.wav", MUSIC_HZ, seconds=30.0, amplitude=0.4))


def test_ring_group_parks_with_music_then_connects_the_first_agent(callpath_factory, baresip_phones, tmp_path):
    server = callpath_factory(users=[ALICE, BOB, CAROL], calls={
        "music_on_hold": [music_file(tmp_path)],
        "groups": [{"number": "600", "members": [BOB[2], CAROL[2]], "park": True}]})
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ)
    carol = phone(baresip_phones, CAROL, server, CAROL_HZ)
    for p in (alice, bob, carol):
        p.wait_registered()
    alice.dial("600")
    alice.wait_established()              # parked: answered by callpath at once
    bob.wait_incoming()                   # both agents ring
    carol.wait_incoming()
    time.sleep(2.5)                       # the caller listens to the music meanwhile
    carol.accept()
    carol.wait_established()
    bob.wait_closed()                     # the other agent's ringing was cancelled
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    carol.wait_closed()
    heard = loud_windows(alice.heard())
    assert heard and near(heard[0], MUSIC_HZ), f"alice first heard {heard}"
    assert near(heard[-1], CAROL_HZ), f"alice last heard {heard}"
    assert abs(carol.heard_tone() - ALICE_HZ) < TOLERANCE_HZ


def test_sequential_ring_group_rings_one_agent_after_another(callpath_factory, baresip_phones, tmp_path):
    server = callpath_factory(users=[ALICE, BOB, CAROL], calls={
        "groups": [{"number": "601", "members": [BOB[2], CAROL[2]], "strategy": "sequential",
                    "ring_timeout": 3.0}]})
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ)
    carol = phone(baresip_phones, CAROL, server, CAROL_HZ, params=";answermode=auto")
    for p in (alice, bob, carol):
        p.wait_registered()
    alice.dial("601")
    bob.wait_incoming()                   # first bob, alone ...
    with pytest.raises(Exception):
        carol.wait_incoming(timeout=1.5)
    bob.wait_closed(timeout=10)           # ... for 3 s, then carol, who answers
    carol.wait_established(timeout=10)
    alice.wait_established()
    time.sleep(2.0)
    alice.hangup()
    alice.wait_closed()
    carol.wait_closed()
    assert abs(alice.heard_tone() - CAROL_HZ) < TOLERANCE_HZ
    assert abs(carol.heard_tone() - ALICE_HZ) < TOLERANCE_HZ


def test_hold_plays_music_to_the_other_party_and_resume_brings_the_voice_back(
        callpath_factory, baresip_phones, tmp_path):
    server = callpath_factory(users=[ALICE, BOB], calls={"anchor": "always", "music_on_hold": [music_file(tmp_path)]})
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(BOB[2])
    alice.wait_established()
    bob.wait_established()
    time.sleep(2.0)
    bob.command("hold")
    time.sleep(3.0)
    bob.command("resume")
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    heard = loud_windows(alice.heard())
    assert any(near(f, BOB_HZ) for f in heard[:3]), f"alice heard {heard}"
    music = [i for i, f in enumerate(heard) if near(f, MUSIC_HZ)]
    assert len(music) >= 3, f"alice heard no music on hold: {heard}"
    assert near(heard[-1], BOB_HZ), f"alice did not hear bob again after the resume: {heard}"


def test_blind_transfer_from_a_phone_connects_the_caller_to_the_target(callpath_factory, baresip_phones):
    server = callpath_factory(users=[ALICE, BOB, CAROL], calls={"anchor": "always"})
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    carol = phone(baresip_phones, CAROL, server, CAROL_HZ, params=";answermode=auto")
    for p in (alice, bob, carol):
        p.wait_registered()
    alice.dial(BOB[2])
    alice.wait_established()
    bob.wait_established()
    time.sleep(1.5)
    bob.command("transfer", f"sip:{CAROL[2]}@127.0.0.1")
    carol.wait_established(timeout=15)
    bob.wait_closed(timeout=15)           # the transferor is out
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    carol.wait_closed()
    heard = loud_windows(alice.heard())
    assert near(heard[-1], CAROL_HZ), f"alice ended up hearing {heard}"
    assert abs(carol.heard_tone() - ALICE_HZ) < TOLERANCE_HZ


def test_three_phones_in_a_conference_room_each_hear_the_other_two(callpath_factory, baresip_phones):
    server = callpath_factory(users=[ALICE, BOB, CAROL], calls={"conferences": [{"number": "700"}]})
    phones = [phone(baresip_phones, who, server, hz)
              for who, hz in ((ALICE, ALICE_HZ), (BOB, BOB_HZ), (CAROL, CAROL_HZ))]
    for p in phones:
        p.wait_registered()
    for p in phones:
        p.dial("700")
        p.wait_established()
    time.sleep(3.0)
    for p in phones:
        p.hangup()
        p.wait_closed()
    tones = {ALICE[0]: ALICE_HZ, BOB[0]: BOB_HZ, CAROL[0]: CAROL_HZ}
    for p in phones:
        others = [hz for name, hz in tones.items() if name != p.name]
        own = tones[p.name]
        levels = spectrum_peaks(p.heard()[-2 * SAMPLE_RATE:], *others, own)
        assert all(levels[hz] > -12 for hz in others), f"{p.name} heard {levels}"
        assert levels[own] < levels[others[0]] - 15, f"{p.name} heard itself: {levels}"


# -- transfers and hold from a browser (JsSIP in headless Chromium) -----------------------------------------

DAVE = ("dave", "davepw", "1004")         # a browser agent
DAVE_HZ = 500.0


def browser_hears(agent, frequency: float) -> None:
    heard = agent.measure(seconds=1.0)
    assert abs(heard["hz"] - frequency) < 20.0 and heard["db"] > -60, f"{agent.name} heard {heard}"


def test_blind_transfer_from_jssip(callpath_factory, baresip_phones, jssip_browsers):
    server = callpath_factory(users=[ALICE, BOB, DAVE])
    dave = jssip_browsers("dave", server, DAVE[0], DAVE[1], tone_hz=DAVE_HZ, answer="auto")
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    dave.wait_registered()
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(DAVE[2])                   # phone -> browser: anchored by the default router
    dave.wait_confirmed()
    alice.wait_established()
    time.sleep(1.0)
    browser_hears(dave, ALICE_HZ)
    dave.refer(f"sip:{BOB[2]}@127.0.0.1")
    dave.wait_for("referAccepted")
    bob.wait_established(timeout=15)
    dave.wait_ended()                     # callpath hangs the transferor up
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    heard = loud_windows(alice.heard())
    assert near(heard[-1], BOB_HZ), f"alice ended up hearing {heard}"
    assert abs(bob.heard_tone() - ALICE_HZ) < TOLERANCE_HZ


def test_attended_transfer_from_jssip(callpath_factory, baresip_phones, jssip_browsers):
    server = callpath_factory(users=[ALICE, BOB, DAVE])
    dave = jssip_browsers("dave", server, DAVE[0], DAVE[1], tone_hz=DAVE_HZ, answer="auto")
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    for p in (dave, alice, bob):
        p.wait_registered()
    alice.dial(DAVE[2])
    dave.wait_confirmed()
    alice.wait_established()
    start = len(dave.events)
    dave.call(BOB[2])                     # the consultation call, browser -> phone (anchored)
    bob.wait_established(timeout=15)
    dave.wait_for("confirmed", start=start)
    time.sleep(1.0)
    browser_hears(dave, BOB_HZ)
    dave.refer(f"sip:{BOB[2]}@127.0.0.1", session=0, replaces=1)
    dave.wait_for("referAccepted")
    for _ in range(2):                    # both of the transferor's calls end
        dave.wait_for("ended", start=start)
        start = next(i for i, e in enumerate(dave.events) if i >= start and e.get("event") == "ended") + 1
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    heard = loud_windows(alice.heard())
    assert near(heard[-1], BOB_HZ), f"alice ended up hearing {heard}"
    bob_heard = loud_windows(bob.heard())
    assert near(bob_heard[-1], ALICE_HZ), f"bob ended up hearing {bob_heard}"


def test_hold_from_jssip_plays_music_to_the_phone(callpath_factory, baresip_phones, jssip_browsers, tmp_path):
    server = callpath_factory(users=[ALICE, DAVE], calls={"music_on_hold": [music_file(tmp_path)]})
    dave = jssip_browsers("dave", server, DAVE[0], DAVE[1], tone_hz=DAVE_HZ, answer="auto")
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    dave.wait_registered()
    alice.wait_registered()
    alice.dial(DAVE[2])
    dave.wait_confirmed()
    alice.wait_established()
    time.sleep(1.5)
    dave.hold()
    time.sleep(2.5)
    dave.unhold()
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    heard = loud_windows(alice.heard())
    assert sum(1 for f in heard if near(f, MUSIC_HZ)) >= 3, f"alice heard no music on hold: {heard}"
    assert near(heard[-1], DAVE_HZ), f"alice did not hear dave again: {heard}"


# -- late offer ---------------------------------------------------------------------------------------------
def write_ulaw_wav(path: Path, frequency: float, seconds: float = 20.0) -> Path:
    """A WAV of 8-bit µ-law samples (format tag 7), what SIPp's rtp_stream plays as PCMU."""
    import struct

    from media.audio import tone
    from media.g711 import ulaw_encode

    data = bytes(ulaw_encode(tone(frequency, SAMPLE_RATE, seconds, 0.5).astype("<i2").tobytes()))
    fmt = struct.pack("<HHIIHH", 7, 1, SAMPLE_RATE, SAMPLE_RATE, 1, 8)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_a_late_offer_invite_gets_our_offer_and_its_answer_in_the_ack(callpath_factory, baresip_phones, tmp_path):
    """SIPp calls with an INVITE without SDP (anchored: `anchor = "always"`), takes callpath's offer from the
    200 and answers in the ACK, then streams a 1000 Hz tone: the callee (baresip) hears it."""
    from sipp_harness import free_udp_port, run_sipp, scenario_path

    server = callpath_factory(users=[ALICE, BOB], calls={"anchor": "always"})
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    bob.wait_registered()
    tone_file = write_ulaw_wav(tmp_path / "tone-ulaw.wav", 1000.0)
    result = run_sipp(scenario_path("uac_late_offer.xml"), server.target, local_port=free_udp_port(),
                      users_csv=[(ALICE[0], ALICE[1])], service=BOB[2], duration_ms=3000, timeout=30,
                      keys=server.sipp_keys(), extra_args=["-mp", str(free_udp_port())],
                      workdir=tmp_path)
    result.check(calls=1)
    ok = next(m for m in result.log.split("-----") if "SIP/2.0 200 OK" in m and "m=audio" in m)
    assert "RTP/AVP" in ok                 # callpath's offer, in the 200
    bob.wait_closed()
    assert abs(bob.heard_tone() - 1000.0) < TOLERANCE_HZ


# -- transfers from a Linphone phone (Debian's linphonec) ---------------------------------------------------
AGENT = ("agent", "agentpw", "1005")      # a desk phone that does attended transfers
AGENT_HZ = 500.0


@pytest.mark.parametrize("refer_on", ["held call", "consultation call"])
def test_attended_transfer_from_a_linphone_phone(callpath_factory, baresip_phones, linphone_phones, refer_on):
    """alice calls the agent (Linphone), who answers, holds her, calls bob (consultation) and transfers: a REFER
    on one of its calls whose Refer-To carries Replaces naming callpath's dialog of the other (on the held call:
    alice is the transferee; on the consultation call: bob is). Both of the agent's calls end; alice and bob end
    up talking to each other."""
    server = callpath_factory(users=[ALICE, BOB, AGENT], calls={"anchor": "always"})
    agent = linphone_phones("agent", server, AGENT[0], AGENT[1], tone_hz=AGENT_HZ)
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    agent.wait_registered()
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(AGENT[2])
    first = agent.wait_incoming().call_id
    agent.answer(first)
    agent.wait_streams_running(first)
    alice.wait_established()
    time.sleep(1.5)
    agent.hold()                          # linphonec places one call at a time: alice waits on hold
    agent.wait_paused(first)
    second = agent.call(BOB[2])           # the consultation call
    bob.wait_established(timeout=15)
    agent.wait_streams_running(second)
    time.sleep(1.5)
    if refer_on == "held call":
        agent.transfer_to_call(first, second)
    else:
        agent.transfer_to_call(second, first)
    agent.wait_ended(first, timeout=15)   # both of the transferor's calls end
    agent.wait_ended(second, timeout=15)
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    assert abs(agent.heard_tone(first) - ALICE_HZ) < TOLERANCE_HZ
    assert abs(agent.heard_tone(second) - BOB_HZ) < TOLERANCE_HZ
    heard = loud_windows(alice.heard())
    assert near(heard[-1], BOB_HZ), f"alice ended up hearing {heard}"
    bob_heard = loud_windows(bob.heard())
    assert near(bob_heard[0], AGENT_HZ), f"bob first heard {bob_heard}"
    assert near(bob_heard[-1], ALICE_HZ), f"bob ended up hearing {bob_heard}"


def test_blind_transfer_from_a_linphone_phone(callpath_factory, baresip_phones, linphone_phones):
    server = callpath_factory(users=[ALICE, BOB, AGENT], calls={"anchor": "always"})
    agent = linphone_phones("agent", server, AGENT[0], AGENT[1], tone_hz=AGENT_HZ)
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    agent.wait_registered()
    alice.wait_registered()
    bob.wait_registered()
    alice.dial(AGENT[2])
    call = agent.wait_incoming().call_id
    agent.answer(call)
    agent.wait_streams_running(call)
    alice.wait_established()
    time.sleep(1.5)
    agent.transfer(call, BOB[2])          # REFER with Refer-To: <sip:1002@domain>
    bob.wait_established(timeout=15)
    agent.wait_ended(call, timeout=15)    # the transferor is out
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    bob.wait_closed()
    assert abs(agent.heard_tone(call) - ALICE_HZ) < TOLERANCE_HZ
    heard = loud_windows(alice.heard())
    assert near(heard[0], AGENT_HZ), f"alice first heard {heard}"
    assert near(heard[-1], BOB_HZ), f"alice ended up hearing {heard}"
    assert abs(bob.heard_tone() - ALICE_HZ) < TOLERANCE_HZ


def test_invite_with_replaces_from_a_linphone_phone_takes_the_place_of_our_dialog(
        callpath_factory, baresip_phones, linphone_phones):
    """The transferee's side of an attended transfer: alice (Linphone) calls the agent (Linphone) directly (a
    proxied call: both offer G.711), the agent holds her and calls bob through ring group 600 (a call callpath
    answers itself), then REFERs alice with Replaces naming callpath's dialog of that second call. Alice's INVITE
    with Replaces reaches callpath, takes that dialog's place: bob now hears alice, the agent is out."""
    server = callpath_factory(users=[ALICE, BOB, AGENT], calls={"groups": [{"number": "600", "members": [BOB[2]]}]})
    alice = linphone_phones("alice", server, ALICE[0], ALICE[1], tone_hz=ALICE_HZ)
    agent = linphone_phones("agent", server, AGENT[0], AGENT[1], tone_hz=AGENT_HZ)
    bob = phone(baresip_phones, BOB, server, BOB_HZ, params=";answermode=auto")
    alice.wait_registered()
    agent.wait_registered()
    bob.wait_registered()
    to_agent = alice.call(AGENT[2])
    first = agent.wait_incoming().call_id
    agent.answer(first)
    agent.wait_streams_running(first)
    alice.wait_streams_running(to_agent)
    time.sleep(1.5)
    agent.hold()
    agent.wait_paused(first)
    second = agent.call("600")
    bob.wait_established(timeout=15)
    agent.wait_streams_running(second)
    time.sleep(1.5)
    start = len(alice.events)
    agent.transfer_to_call(first, second)   # the REFER goes to alice (proxied): she sends INVITE with Replaces
    replacing = alice.wait_event("outgoing", start=start, timeout=15).call_id
    alice.wait_streams_running(replacing)
    agent.wait_ended(first, timeout=15)
    agent.wait_ended(second, timeout=15)
    time.sleep(2.5)
    alice.terminate(replacing)
    alice.wait_ended(replacing)
    bob.wait_closed()
    bob_heard = loud_windows(bob.heard())
    assert near(bob_heard[0], AGENT_HZ), f"bob first heard {bob_heard}"
    assert near(bob_heard[-1], ALICE_HZ), f"bob ended up hearing {bob_heard}"
    assert abs(agent.heard_tone(first) - ALICE_HZ) < TOLERANCE_HZ


def test_hold_and_resume_from_a_linphone_phone(callpath_factory, baresip_phones, linphone_phones, tmp_path):
    server = callpath_factory(users=[ALICE, AGENT], calls={"anchor": "always", "music_on_hold": [music_file(tmp_path)]})
    agent = linphone_phones("agent", server, AGENT[0], AGENT[1], tone_hz=AGENT_HZ)
    alice = phone(baresip_phones, ALICE, server, ALICE_HZ)
    agent.wait_registered()
    alice.wait_registered()
    alice.dial(AGENT[2])
    call = agent.wait_incoming().call_id
    agent.answer(call)
    agent.wait_streams_running(call)
    alice.wait_established()
    time.sleep(2.0)
    start = len(agent.events)
    agent.hold()                          # re-INVITE with a=sendonly: callpath answers it, alice hears music
    agent.wait_paused(call)
    time.sleep(3.0)
    agent.resume(call)
    agent.wait_event("streams_running", call, start=start, fail_on=("ended", "error"))
    time.sleep(2.5)
    alice.hangup()
    alice.wait_closed()
    agent.wait_ended(call)
    heard = loud_windows(alice.heard())
    assert any(near(f, AGENT_HZ) for f in heard[:3]), f"alice heard {heard}"
    assert sum(1 for f in heard if near(f, MUSIC_HZ)) >= 3, f"alice heard no music on hold: {heard}"
    assert near(heard[-1], AGENT_HZ), f"alice did not hear the agent again after the resume: {heard}"
