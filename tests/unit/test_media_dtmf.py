"""Unit tests for media.dtmf: RFC 4733 payloads, sender, receiver, 48k<->8k mapping, in-band detection and tones."""
from __future__ import annotations

import random

import numpy as np
import pytest

from media.dtmf import (
    COL_FREQS,
    DETECTOR_FREQS,
    DTMF_DIGITS,
    KEYPAD,
    MAX_DURATION,
    ROW_FREQS,
    DtmfDetector,
    DtmfDetectorBank,
    DtmfDetectorConfig,
    DtmfDigitEnded,
    DtmfDigitStarted,
    DtmfEventReceiver,
    DtmfEventSender,
    DtmfPacket,
    TelephoneEvent,
    TelephoneEventTranslator,
    classify_frame_py,
    classify_powers,
    decode_telephone_event,
    digit_to_event,
    dtmf_frames,
    dtmf_tone,
    encode_telephone_event,
    event_to_digit,
    goertzel_powers_batch,
    goertzel_powers_np,
    goertzel_powers_py,
    packets_for_press,
    rescale_duration,
    rescale_timestamp,
)

# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def flat(ticks: list[list[DtmfPacket]]) -> list[DtmfPacket]:
    """Flatten per-tick packet lists."""
    return [p for t in ticks for p in t]


def drain(rx: DtmfEventReceiver) -> list:
    """All pending receiver events."""
    out = []
    while (ev := rx.next_event()) is not None:
        out.append(ev)
    return out


def feed(rx: DtmfEventReceiver, packets: list[DtmfPacket], seq0: int = 100, t0: float = 0.0, dt: float = 0.02) -> list:
    """Deliver packets to a receiver 20 ms apart (seq numbers in the given order) and return its events."""
    out = []
    for i, p in enumerate(packets):
        rx.receive_packet(p.payload, p.timestamp, seq0 + i, p.marker, t0 + i * dt)
        out += drain(rx)
    return out


def started(events: list) -> str:
    """Digits of the Started events, in order."""
    return "".join(e.digit for e in events if isinstance(e, DtmfDigitStarted))


def ended(events: list) -> list[DtmfDigitEnded]:
    """The Ended events."""
    return [e for e in events if isinstance(e, DtmfDigitEnded)]


def detect(signal: np.ndarray, backend: str = "numpy", config: DtmfDetectorConfig | None = None) -> list:
    """Run a per-leg detector over a signal in 20 ms frames (the tail shorter than a frame is dropped)."""
    det = DtmfDetector(config, backend=backend)
    out = []
    for i in range(0, len(signal) // 160 * 160, 160):
        out += det.process_frame(signal[i : i + 160])
    return out + det.flush()


def silence(ms: float) -> np.ndarray:
    """Zero samples at 8 kHz."""
    return np.zeros(round(ms * 8), np.int16)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """Add white Gaussian noise at the given SNR relative to the signal's mean power."""
    rng = np.random.default_rng(seed)
    xf = x.astype(np.float64)
    p = np.mean(xf[xf != 0] ** 2)
    noisy = xf + rng.normal(0.0, np.sqrt(p / 10 ** (snr_db / 10)), len(xf))
    return np.clip(np.rint(noisy), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------------
# RFC 4733 payload
# ----------------------------------------------------------------------------------------------------------------


def test_digit_codes() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(11) == "#"
    with pytest.raises(ValueError):
        digit_to_event("E")
    with pytest.raises(ValueError):
        event_to_digit(16)


def test_payload_known_bytes() -> None:
    assert encode_telephone_event(TelephoneEvent(5, True, 10, 800)) == b"\x05\x8a\x03\x20"
    assert decode_telephone_event(b"\x0b\x0a\x00\xa0") == TelephoneEvent(11, False, 10, 160)
    # R bit is ignored on receipt; trailing bytes (redundant blocks) are ignored
    assert decode_telephone_event(b"\x01\xc5\xff\xff\x00") == TelephoneEvent(1, True, 5, 0xFFFF)


@pytest.mark.parametrize("event", range(16))
def test_payload_round_trip(event: int) -> None:
    for end in (False, True):
        for volume in (0, 10, 63):
            for duration in (0, 1, 160, 960, 4800, 0xFFFF):
                ev = TelephoneEvent(event, end, volume, duration)
                data = encode_telephone_event(ev)
                assert len(data) == 4
                assert decode_telephone_event(data) == ev
    assert TelephoneEvent(event).digit == DTMF_DIGITS[event]


def test_payload_errors() -> None:
    with pytest.raises(ValueError):
        decode_telephone_event(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        encode_telephone_event(TelephoneEvent(1, False, 64, 0))
    with pytest.raises(ValueError):
        encode_telephone_event(TelephoneEvent(1, False, 10, 0x10000))
    with pytest.raises(ValueError):
        encode_telephone_event(TelephoneEvent(256))


# ----------------------------------------------------------------------------------------------------------------
# sender
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 48000])
def test_sender_100ms_press(rate: int) -> None:
    step = rate // 50
    ticks = packets_for_press("5", 100, timestamp=12345, clock_rate=rate)
    assert [len(t) for t in ticks] == [1] * 7  # one packet per 20 ms tick
    pkts = flat(ticks)
    assert [p.marker for p in pkts] == [True] + [False] * 6
    assert {p.timestamp for p in pkts} == {12345}
    assert [p.event.duration for p in pkts] == [step, 2 * step, 3 * step, 4 * step, 5 * step, 5 * step, 5 * step]
    assert [p.event.end for p in pkts] == [False] * 4 + [True] * 3
    assert {p.event.event for p in pkts} == {5}
    assert {p.event.volume for p in pkts} == {10}
    assert pkts[-1].payload == encode_telephone_event(TelephoneEvent(5, True, 10, 5 * step))


def test_sender_48k_is_8k_times_six() -> None:
    p8 = flat(packets_for_press("#", 130, 0, 8000))
    p48 = flat(packets_for_press("#", 130, 0, 48000))
    assert [p.event.duration * 6 for p in p8] == [p.event.duration for p in p48]
    assert p8[-1].event.duration == 1040  # not a multiple of the packet size: the last one carries the remainder


def test_sender_state_machine() -> None:
    s = DtmfEventSender(8000, 20)
    assert s.idle and s.tick() == []
    s.start("9", 0xFFFFFFF0)  # open-ended, timestamp near the wrap
    assert not s.idle
    with pytest.raises(RuntimeError):
        s.start("1", 0)
    first = s.tick()
    assert first[0].marker and first[0].event.duration == 160 and not first[0].event.end
    s.tick()
    s.stop()
    end = s.tick()
    assert end[0].event.end and end[0].event.duration == 480 and end[0].timestamp == 0xFFFFFFF0
    assert [p.event.end for p in s.tick() + s.tick()] == [True, True]
    assert s.idle and s.tick() == []
    s2 = DtmfEventSender(8000, 20, end_packets=1)
    s2.start("1", 0, 40)
    assert len(flat([s2.tick(), s2.tick()])) == 2 and s2.idle


@pytest.mark.parametrize("rate,ms", [(48000, 2000), (8000, 9000)])
def test_sender_long_event_segments(rate: int, ms: int) -> None:
    pkts = flat(packets_for_press("0", ms, timestamp=0xFFFF0000, clock_rate=rate))
    total = ms * rate // 1000
    segs = sorted({p.timestamp for p in pkts}, key=lambda ts: (ts - 0xFFFF0000) & 0xFFFFFFFF)
    assert len(segs) == (total - 1) // MAX_DURATION + 1 == 2
    assert segs[1] == (0xFFFF0000 + MAX_DURATION) & 0xFFFFFFFF
    first_seg = [p for p in pkts if p.timestamp == segs[0]]
    second_seg = [p for p in pkts if p.timestamp == segs[1]]
    assert first_seg[-1].event.duration == MAX_DURATION and not any(p.event.end for p in first_seg)
    assert [p.marker for p in pkts].count(True) == 1 and pkts[0].marker
    assert [p.event.end for p in second_seg].count(True) == 3
    assert second_seg[-1].event.duration == total - MAX_DURATION
    durs = [p.event.duration for p in second_seg]
    assert durs == sorted(durs)
    # the receiver joins the segments into one digit with the whole duration
    rx = DtmfEventReceiver(rate)
    events = feed(rx, pkts)
    assert started(events) == "0"
    (end,) = ended(events)
    assert end.duration == total and end.timestamp == 0xFFFF0000 and end.ended_by == "end-bit"
    assert end.duration_ms == ms


# ----------------------------------------------------------------------------------------------------------------
# receiver
# ----------------------------------------------------------------------------------------------------------------


def press(digit: str, ts: int, rate: int = 8000, ms: float = 100) -> list[DtmfPacket]:
    """The packets of one press."""
    return flat(packets_for_press(digit, ms, ts, rate))


def test_receiver_clean_press() -> None:
    rx = DtmfEventReceiver(8000)
    events = feed(rx, press("7", 1000))
    assert events[0] == DtmfDigitStarted("7", 1000, 8000)
    assert events[1:] == [DtmfDigitEnded("7", 1000, 800, 8000, "end-bit", 10)]
    assert rx.get_timer() is None


def test_receiver_lost_first_packet() -> None:
    rx = DtmfEventReceiver()
    events = feed(rx, press("3", 500)[1:])
    assert started(events) == "3" and ended(events)[0].duration == 800


def test_receiver_lost_end_packets_times_out() -> None:
    rx = DtmfEventReceiver(timeout_ms=200)
    pkts = [p for p in press("4", 0) if not p.event.end]
    events = feed(rx, pkts)  # last arrives at t=0.06
    assert started(events) == "4" and ended(events) == []
    assert rx.get_timer() == pytest.approx(0.26)
    rx.handle_timer(0.2)
    assert drain(rx) == []
    rx.handle_timer(0.27)
    (end,) = drain(rx)
    assert end.ended_by == "timeout" and end.duration == 640 and end.digit == "4"
    assert rx.get_timer() is None
    rx.handle_timer(1.0)
    assert drain(rx) == []


def test_receiver_retransmitted_and_duplicated_packets() -> None:
    rx = DtmfEventReceiver()
    pkts = press("*", 0)
    events = feed(rx, pkts + pkts[-3:] + pkts)  # everything again, after the end
    assert started(events) == "*" and len(ended(events)) == 1


def test_receiver_reordering() -> None:
    rx = DtmfEventReceiver()
    pkts = press("8", 0)
    order = [0, 2, 1, 4, 3, 6, 5]  # an end packet overtakes the last continuation
    events = feed(rx, [pkts[i] for i in order])
    assert started(events) == "8"
    (end,) = ended(events)
    assert end.duration == 800


def test_receiver_same_digit_twice_and_next_event() -> None:
    rx = DtmfEventReceiver()
    a = press("1", 0)
    b = press("1", 1600)
    c = press("2", 3200)
    events = feed(rx, a + b)
    assert started(events) == "11" and len(ended(events)) == 2
    # end packets of c's predecessor lost: the new timestamp ends it
    rx2 = DtmfEventReceiver()
    events = feed(rx2, [p for p in b if not p.event.end] + c)
    assert started(events) == "12"
    assert [e.ended_by for e in ended(events)] == ["next-event", "end-bit"]
    # a straggler of the old event after the new one started is dropped
    rx2.receive_packet(b[2].payload, b[2].timestamp, 1, False, 1.0)
    assert drain(rx2) == []


def test_receiver_timestamp_jump_and_reset() -> None:
    rx = DtmfEventReceiver()
    feed(rx, press("1", 1_000_000))
    events = feed(rx, press("2", 10), t0=1.0)  # far older timestamp: a restarted source, not a straggler
    assert started(events) == "2"
    events = feed(rx, press("3", 5))  # 5 units older: a straggler, dropped
    assert events == []
    rx.reset()
    events = feed(rx, press("3", 5), t0=2.0)
    assert started(events) == "3" and len(ended(events)) == 1


def test_receiver_ignores_non_dtmf_events() -> None:
    rx = DtmfEventReceiver()
    rx.receive_packet(encode_telephone_event(TelephoneEvent(16, False, 10, 160)), 0, 1, True, 0.0)  # flash
    assert drain(rx) == [] and rx.get_timer() is None


@pytest.mark.parametrize("seed", range(20))
def test_receiver_random_loss_dup_reorder(seed: int) -> None:
    rnd = random.Random(seed)
    digits = "".join(rnd.choice(DTMF_DIGITS) for _ in range(6))
    stream: list[DtmfPacket] = []
    ts = rnd.randrange(1 << 32)
    for d in digits:
        pkts = press(d, ts, ms=rnd.choice([60, 80, 100, 160]))
        keep = [p for p in pkts if rnd.random() > 0.3] or [rnd.choice(pkts)]  # never lose a whole event
        keep += [p for p in keep if rnd.random() < 0.2]  # duplicates
        stream += keep
        ts = (ts + 1600) & 0xFFFFFFFF
    # local reordering: swap neighbours within an event
    for i in range(len(stream) - 1):
        if stream[i].timestamp == stream[i + 1].timestamp and rnd.random() < 0.2:
            stream[i], stream[i + 1] = stream[i + 1], stream[i]
    rx = DtmfEventReceiver()
    events = feed(rx, stream)
    rx.handle_timer(1e9)
    events += drain(rx)
    assert started(events) == digits
    assert "".join(e.digit for e in ended(events)) == digits


# ----------------------------------------------------------------------------------------------------------------
# 48 kHz <-> 8 kHz
# ----------------------------------------------------------------------------------------------------------------


def test_rescale_helpers() -> None:
    assert rescale_duration(800, 8000, 48000) == 4800
    assert rescale_duration(4800, 48000, 8000) == 800
    assert rescale_duration(965, 48000, 8000) == 161  # rounds to nearest
    assert rescale_timestamp(960, 48000, 8000) == 160
    assert rescale_timestamp(1160, 8000, 48000, from_base=1000, to_base=50000) == 50960
    # across the 32-bit wrap on both sides
    assert rescale_timestamp(100, 48000, 8000, from_base=0xFFFFFF00, to_base=0xFFFFFFF0) == (0xFFFFFFF0 + 59) & 0xFFFFFFFF
    assert rescale_timestamp(0xFFFFFF00, 8000, 48000, from_base=0, to_base=0) == (-256 * 6) & 0xFFFFFFFF


def test_browser_press_reaches_trunk() -> None:
    """A 48 kHz press (browser, Opus leg) relayed to a /8000 trunk leg: durations and timestamps / 6."""
    src = press("5", 96000, rate=48000)
    tx = TelephoneEventTranslator(48000, 8000, from_base=96000, to_base=7000)
    out = [q for p in src for q in tx.translate(p.payload, p.timestamp, p.marker)]
    assert [q.event.duration for q in out] == [p.event.duration // 6 for p in src]
    assert {q.timestamp for q in out} == {7000}
    assert [q.marker for q in out] == [p.marker for p in src]
    assert [q.event.end for q in out] == [p.event.end for p in src]
    assert out == flat(packets_for_press("5", 100, 7000, 8000))
    rx = DtmfEventReceiver(8000)
    (start, end) = feed(rx, out)
    assert start.digit == "5" and end.duration == 800 and end.duration_ms == 100


def test_trunk_press_reaches_browser() -> None:
    src = press("A", 160, rate=8000)
    tx = TelephoneEventTranslator(8000, 48000, from_base=0, to_base=0)
    out = [q for p in src for q in tx.translate(p.payload, p.timestamp, p.marker)]
    assert out == flat(packets_for_press("A", 100, 960, 48000))


def test_translator_first_packet_lost_sets_marker() -> None:
    src = press("6", 0, rate=48000)[1:]
    tx = TelephoneEventTranslator(48000, 8000)
    out = [q for p in src for q in tx.translate(p.payload, p.timestamp, p.marker)]
    assert [q.marker for q in out] == [True] + [False] * (len(out) - 1)


def test_long_trunk_press_is_resegmented_for_48k() -> None:
    """A 2 s /8000 press (one segment) exceeds 0xFFFF at 48 kHz: it becomes two /48000 segments."""
    src = press("1", 8000, rate=8000, ms=2000)
    assert len({p.timestamp for p in src}) == 1
    tx = TelephoneEventTranslator(8000, 48000, from_base=8000, to_base=480000)
    out = [q for p in src for q in tx.translate(p.payload, p.timestamp, p.marker)]
    assert all(q.event.duration <= MAX_DURATION for q in out)
    assert sorted({q.timestamp for q in out}) == [480000, 480000 + MAX_DURATION]
    assert [q.marker for q in out].count(True) == 1
    first = [q for q in out if q.timestamp == 480000]
    assert first[-1].event.duration == MAX_DURATION and not any(q.event.end for q in first)
    rx = DtmfEventReceiver(48000)
    events = feed(rx, out)
    assert started(events) == "1"
    (end,) = ended(events)
    assert end.duration == 96000 and end.timestamp == 480000
    # and back: the segmented /48000 press becomes one /8000 event again
    back = TelephoneEventTranslator(48000, 8000, from_base=480000, to_base=8000)
    again = [q for p in out for q in back.translate(p.payload, p.timestamp, p.marker)]
    assert {q.timestamp for q in again} == {8000}
    assert max(q.event.duration for q in again) == 16000
    rx8 = DtmfEventReceiver(8000)
    events = feed(rx8, again)
    assert started(events) == "1" and ended(events)[0].duration == 16000


# ----------------------------------------------------------------------------------------------------------------
# Goertzel paths agree
# ----------------------------------------------------------------------------------------------------------------


def test_goertzel_paths_agree() -> None:
    rng = np.random.default_rng(7)
    frames = [rng.integers(-20000, 20000, 160).astype(np.int16) for _ in range(4)]
    frames += [dtmf_tone(d, 20) for d in "05#D"]
    batch = goertzel_powers_batch(np.stack(frames))
    assert batch.shape == (8, 16)
    for i, fr in enumerate(frames):
        ref = np.array(goertzel_powers_py([float(v) for v in fr]))
        assert np.allclose(goertzel_powers_np(fr), ref, rtol=1e-9, atol=1e-3)
        assert np.allclose(batch[i], ref, rtol=1e-9, atol=1e-3)
    b32 = goertzel_powers_batch(np.stack(frames), dtype="float32")
    assert np.allclose(b32, batch, rtol=1e-3, atol=batch.max() * 1e-6)


def test_goertzel_matches_dft() -> None:
    x = np.sin(2 * np.pi * 697 * np.arange(160) / 8000) * 1000
    expected = [abs(np.sum(x * np.exp(-2j * np.pi * f * np.arange(160) / 8000))) ** 2 for f in DETECTOR_FREQS]
    assert np.allclose(goertzel_powers_py(list(x)), expected, rtol=1e-9)


def test_classification_paths_agree() -> None:
    rng = np.random.default_rng(3)
    frames = []
    for d in DTMF_DIGITS:
        for twist in (-6, -3, 0, 4, 7, 10):
            frames.append(add_noise(dtmf_tone(d, 20, twist_db=twist), 12, seed=len(frames)))
    frames += [rng.integers(-8000, 8000, 160).astype(np.int16) for _ in range(20)]
    frames += [np.zeros(160, np.int16), dtmf_tone("1", 20, level_dbm0=-40)]
    arr = np.stack(frames)
    p = goertzel_powers_batch(arr)
    energy = np.einsum("ij,ij->i", arr.astype(np.float64), arr.astype(np.float64))
    fast = classify_powers(p, energy, 160)
    ref = [classify_frame_py([float(v) for v in fr]) for fr in frames]
    assert fast.tolist() == ref
    assert sum(c >= 0 for c in ref) > 40 and ref[-1] == -1 and ref[-2] == -1


# ----------------------------------------------------------------------------------------------------------------
# in-band detection
# ----------------------------------------------------------------------------------------------------------------

ALL_DIGITS_SIGNAL = np.concatenate(list(dtmf_frames(DTMF_DIGITS, tone_ms=100, pause_ms=100, lead_ms=40)))


@pytest.mark.parametrize("backend", ["numpy", "python"])
def test_detects_all_16_digits_once(backend: str) -> None:
    events = detect(ALL_DIGITS_SIGNAL, backend)
    assert started(events) == DTMF_DIGITS
    ends = ended(events)
    assert "".join(e.digit for e in ends) == DTMF_DIGITS
    assert all(e.duration_ms == 100 for e in ends)
    assert [e.timestamp for e in ends] == [320 + i * 1600 for i in range(16)]


@pytest.mark.parametrize("snr", [20, 15, 10])
def test_detects_with_white_noise(snr: int) -> None:
    events = detect(add_noise(ALL_DIGITS_SIGNAL, snr, seed=snr))
    assert started(events) == DTMF_DIGITS


@pytest.mark.parametrize("twist,detected", [(0, True), (3, True), (6, True), (7, True), (-3, True), (-5, False), (-7, False), (10, False), (12, False)])
def test_twist_limits(twist: float, detected: bool) -> None:
    """Row louder than column (forward twist) is accepted up to 8 dB, column louder (reverse) up to 4 dB."""
    for d in "1590#D":
        sig = np.concatenate([silence(20), dtmf_tone(d, 100, twist_db=twist), silence(100)])
        assert started(detect(sig)) == (d if detected else ""), (d, twist)


@pytest.mark.parametrize("twist", [6, -3])
def test_twist_within_limits_survives_noise(twist: float) -> None:
    sig = np.concatenate([np.concatenate([silence(40), dtmf_tone(d, 100, twist_db=twist)]) for d in DTMF_DIGITS])
    assert started(detect(add_noise(np.concatenate([sig, silence(100)]), 15, seed=twist + 50))) == DTMF_DIGITS


def test_level_threshold() -> None:
    assert started(detect(np.concatenate([dtmf_tone("2", 100, level_dbm0=-25), silence(60)]))) == "2"
    assert started(detect(np.concatenate([dtmf_tone("2", 100, level_dbm0=-36), silence(60)]))) == ""


@pytest.mark.parametrize("ms", [10, 20, 25])
def test_short_blips_rejected_at_any_alignment(ms: int) -> None:
    for offset in range(0, 160, 20):
        sig = np.concatenate([silence(offset / 8), dtmf_tone("5", ms), silence(100)])
        assert started(detect(sig)) == "", offset


def test_30ms_aligned_blip_rejected_and_min_duration_accepted() -> None:
    assert started(detect(np.concatenate([silence(20), dtmf_tone("5", 30), silence(100)]))) == ""
    assert started(detect(np.concatenate([silence(20), dtmf_tone("5", 40), silence(100)]))) == "5"
    for ms in (50, 60, 70):
        for offset in range(0, 160, 20):
            sig = np.concatenate([silence(offset / 8), dtmf_tone("5", ms), silence(100)])
            assert started(detect(sig)) == "5", (ms, offset)


def test_each_digit_reported_once() -> None:
    long_tone = np.concatenate([dtmf_tone("9", 1000), silence(100)])
    events = detect(long_tone)
    assert started(events) == "9" and ended(events)[0].duration_ms == 1000
    # a single 20 ms dropout inside a tone does not split it
    gap = np.concatenate([dtmf_tone("9", 100), silence(20), dtmf_tone("9", 100), silence(100)])
    events = detect(gap)
    assert started(events) == "9" and ended(events)[0].duration_ms == 220
    # a 40 ms pause does: two presses
    two = np.concatenate([dtmf_tone("9", 100), silence(40), dtmf_tone("9", 100), silence(100)])
    assert started(detect(two)) == "99"
    # a direct change of key is a new digit
    change = np.concatenate([dtmf_tone("1", 100), dtmf_tone("2", 100), silence(100)])
    assert started(detect(change)) == "12"


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced-speech stand-in: a gliding f0 with 1/k harmonics and slow amplitude modulation."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    f0 = 110 + 80 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(0, 60)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    x = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0.max() < 3900)
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (x / np.abs(x).max() * 16000).astype(np.int16)


@pytest.mark.parametrize("seed", range(4))
def test_speech_like_not_detected(seed: int) -> None:
    assert started(detect(_speech_like(3.0, seed))) == ""


def test_steady_harmonic_tones_not_detected() -> None:
    t = np.arange(16000) / 8000
    for f0 in np.arange(80, 400, 7.3):
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, int(3900 // f0)))
        assert started(detect((x / np.abs(x).max() * 12000).astype(np.int16))) == "", f0


def test_chirp_and_noise_not_detected() -> None:
    t = np.arange(16000) / 8000
    chirp = (10000 * np.sin(2 * np.pi * (500 * t + 375 * t * t))).astype(np.int16)  # 500 -> 2000 Hz in 2 s
    assert started(detect(chirp)) == ""
    noise = np.random.default_rng(1).normal(0, 6000, 16000).astype(np.int16)
    assert started(detect(noise)) == ""


def test_dtmf_pair_with_strong_harmonics_rejected() -> None:
    """Two notes rich in harmonics (music) on DTMF frequencies fail the second-harmonic check."""
    t = np.arange(800) / 8000
    no_harmonic_check = DtmfDetectorConfig(row_harmonic_db=0.0, col_harmonic_db=0.0)
    for d in DTMF_DIGITS:
        r, c = next((i, row.index(d)) for i, row in enumerate(KEYPAD) if d in row)
        fr, fc = ROW_FREQS[r], COL_FREQS[c]
        x = 7000 * (np.sin(2 * np.pi * fr * t) + np.sin(2 * np.pi * fc * t))
        x += 2800 * (np.sin(2 * np.pi * 2 * fr * t) + np.sin(2 * np.pi * 2 * fc * t))  # harmonics at -8 dB
        sig = np.concatenate([x.astype(np.int16), silence(60)])
        assert started(detect(sig)) == "", d
        assert started(detect(sig, "python")) == "", d
        assert started(detect(sig, config=no_harmonic_check)) == d  # it is the harmonic check that rejects


def test_per_leg_and_bank_detectors_agree() -> None:
    legs = 6
    rng = np.random.default_rng(11)
    streams = [
        ALL_DIGITS_SIGNAL,
        add_noise(ALL_DIGITS_SIGNAL, 12, seed=2),
        np.concatenate(list(dtmf_frames("0#9*", 60, 60, lead_ms=100))),
        _speech_like(1.0, 5),
        rng.normal(0, 3000, 8000).astype(np.int16),
        np.concatenate([dtmf_tone("7", 100), silence(20), dtmf_tone("7", 80), silence(40), dtmf_tone("3", 60)]),
    ]
    n_frames = max(len(s) for s in streams) // 160 + 3
    mat = np.zeros((legs, n_frames * 160), np.int16)
    for i, s in enumerate(streams):
        mat[i, : len(s)] = s
    bank = DtmfDetectorBank(legs)
    bank32 = DtmfDetectorBank(legs, dtype="float32")
    got: list[list] = [[] for _ in range(legs)]
    got32: list[list] = [[] for _ in range(legs)]
    for k in range(n_frames):
        tick = mat[:, k * 160 : (k + 1) * 160]
        for leg, ev in bank.process(tick):
            got[leg].append(ev)
        for leg, ev in bank32.process(tick):
            got32[leg].append(ev)
    for i in range(legs):
        want_np = detect(mat[i], "numpy")
        want_py = detect(mat[i], "python")
        assert want_np == want_py
        assert got[i] == want_np  # the trailing silent frames end every digit, so flush() adds nothing
        assert got32[i] == got[i]
    assert started(got[0]) == DTMF_DIGITS and started(got[2]) == "0#9*" and started(got[5]) == "73"  # the 20 ms gap does not split the 7
    assert got[3] == [] and got[4] == []
    with pytest.raises(ValueError):
        bank.process(mat[:2, :160])


# ----------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------


def test_dtmf_tone_shape_and_level() -> None:
    x = dtmf_tone("1", 100)
    assert x.dtype == np.int16 and len(x) == 800
    # each of the two tones at -10 dBm0: total power = 2 * (A^2 / 2) with A = 22656 * 10^(-0.5)
    a = 22656 * 10 ** (-10 / 20)
    assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(a * a, rel=0.02)
    assert len(dtmf_tone("1", 100, sample_rate=48000)) == 4800
    spectrum = np.abs(np.fft.rfft(x))
    peaks = sorted(np.argsort(spectrum)[-2:] * 8000 / 800)
    assert peaks == [700, 1210]  # nearest 10 Hz bins to 697 and 1209
    loud = dtmf_tone("D", 50, level_dbm0=0)
    assert loud.max() <= 32767 and loud.min() >= -32768
    with pytest.raises(ValueError):
        dtmf_tone("X", 100)


def test_dtmf_frames() -> None:
    frames = list(dtmf_frames("12", tone_ms=70, pause_ms=50))
    assert all(f.shape == (160,) and f.dtype == np.int16 for f in frames)
    assert len(frames) == 12  # 240 ms rounded up to 20 ms frames
    assert not frames[-1][80:].any()
    assert list(dtmf_frames("")) == []
    lead = list(dtmf_frames("5", lead_ms=40))
    assert not lead[0].any() and not lead[1].any() and lead[2].any()
