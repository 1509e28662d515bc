"""Adaptive jitter buffer: reordering, loss, duplicates, wrap, late packets, spikes, DTX, resync; a fake clock.

Every test runs on the Python reference and on the C buffer (``FastJitterBuffer``); the random differential
tests at the end compare the two call by call."""
from __future__ import annotations

import random

import pytest

from media import jitter as jitter_module
from media.jitter import Frame, JitterBuffer, Missing

IMPLEMENTATIONS = [jitter_module.JitterBuffer]
if jitter_module.fast_available():
    IMPLEMENTATIONS.append(jitter_module.FastJitterBuffer)


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS, ids=lambda cls: "c" if cls is not JitterBuffer else "python")
def implementation(request, monkeypatch):
    """Run the test with ``JitterBuffer`` bound to each implementation."""
    monkeypatch.setitem(globals(), "JitterBuffer", request.param)
    return request.param

RATE = 8000
FS = 160          # samples per 20 ms frame
TICK = 0.02


def stream(n: int, *, seq0: int = 1000, ts0: int = 50_000, t0: float = 0.005, jitter=None, skip=(), seed: int = 1):
    """Packets (arrival, seq, ts, payload) for n frames; payload = frame index as text; `jitter(i)` adds delay."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i in skip:
            continue
        extra = jitter(i, rng) if jitter else 0.0
        out.append((t0 + TICK * i + extra, (seq0 + i) & 0xFFFF, (ts0 + FS * i) & 0xFFFFFFFF, str(i).encode()))
    return out


def run(jb: JitterBuffer, packets, ticks: int, t0: float = 0.0, ssrc=None):
    """Feed packets by arrival time and call get() on a 20 ms media clock; returns [(tick time, result)]."""
    pending = sorted(packets, key=lambda p: p[0])
    out, k = [], 0
    for n in range(ticks):
        now = t0 + n * TICK
        while k < len(pending) and pending[k][0] <= now:
            arr, seq, ts, payload = pending[k][:4]
            jb.put(seq, ts, payload, arr, *(pending[k][4:] or ((ssrc,) if ssrc is not None else ())))
            k += 1
        out.append((now, jb.get(now)))
    return out


def frames(out) -> list[int]:
    return [int(r.payload) for _, r in out if isinstance(r, Frame)]


def missing(out) -> list[Missing]:
    """Missing results before the last Frame (the ones after it are the concealment of the stream's end)."""
    last = max((i for i, (_, r) in enumerate(out) if isinstance(r, Frame)), default=-1)
    return [r for _, r in out[:last] if isinstance(r, Missing)]


def test_in_order_stream_plays_every_frame_at_min_delay() -> None:
    jb = JitterBuffer(RATE)
    pkts = stream(100)
    out = run(jb, [p for p in pkts if p[0] <= 59 * TICK], 60)
    # playout of frame i at tick 0.04 + 0.02 i: arrived 0.005, +20 ms target, next tick; 35 ms after the fastest transit
    assert jb.stats.current_delay_ms == pytest.approx(35.0, abs=0.01)
    out += run(jb, [p for p in pkts if p[0] > 59 * TICK], 50, t0=60 * TICK)
    assert frames(out) == list(range(100))
    assert not missing(out)
    first = next(t for t, r in out if isinstance(r, Frame))
    assert first == pytest.approx(0.04)
    assert jb.stats.target_delay_ms == pytest.approx(20.0)
    assert jb.stats.lost == jb.stats.late == jb.stats.duplicate == 0


def test_frames_carry_seq_and_timestamp() -> None:
    jb = JitterBuffer(RATE)
    out = run(jb, stream(3), 6)
    got = [r for _, r in out if isinstance(r, Frame)]
    assert [(f.seq, f.timestamp) for f in got] == [(1000, 50_000), (1001, 50_160), (1002, 50_320)]


def test_reordering_is_undone() -> None:
    pkts = stream(100)
    swapped = []
    for i in range(0, 100, 2):                               # each pair arrives the wrong way round
        a, b = pkts[i], pkts[i + 1]
        swapped += [(b[0], *b[1:]), (b[0] + 0.001, *a[1:])]
    jb = JitterBuffer(RATE)
    out = run(jb, swapped, 120)
    assert frames(out) == list(range(100))
    assert not missing(out)
    assert jb.stats.reordered == 50 and jb.stats.late == 0


def test_loss_is_reported_with_next_payload_for_fec() -> None:
    jb = JitterBuffer(RATE, min_delay_ms=60)
    out = run(jb, stream(60, skip={10, 20, 21}), 80)
    assert frames(out) == [i for i in range(60) if i not in (10, 20, 21)]
    gaps = missing(out)
    assert [(m.seq, m.next_payload) for m in gaps] == [(1010, b"11"), (1020, None), (1021, b"22")]
    assert [m.timestamp for m in gaps] == [50_000 + FS * i for i in (10, 20, 21)]
    assert jb.stats.lost == 3
    # the media clock never sees a hole: Frame/Missing every tick once playing
    results = [r for _, r in out]
    first = next(i for i, r in enumerate(results) if isinstance(r, Frame))
    assert None not in results[first:first + 60]


def test_duplicates_are_dropped() -> None:
    pkts = stream(50)
    dup = pkts + [(a + 0.003, s, t, p) for a, s, t, p in pkts] + [(a + 0.5, s, t, p) for a, s, t, p in pkts[:5]]
    jb = JitterBuffer(RATE)
    out = run(jb, dup, 80)
    assert frames(out) == list(range(50))
    assert jb.stats.duplicate == 55 and jb.stats.late == 0


def test_sequence_and_timestamp_wrap_around() -> None:
    jb = JitterBuffer(RATE)
    out = run(jb, stream(100, seq0=65500, ts0=0xFFFFFFFF - 160 * 50), 110)
    assert frames(out) == list(range(100))
    got = [r for _, r in out if isinstance(r, Frame)]
    assert got[35].seq == 65535 and got[36].seq == 0
    assert jb.stats.resyncs == 0 and not missing(out)


def test_late_packet_is_concealed_then_counted_late_not_lost() -> None:
    jb = JitterBuffer(RATE)
    pkts = stream(60, jitter=lambda i, rng: 0.2 if i == 10 else 0.0)
    out = run(jb, pkts, 80)
    assert 10 not in frames(out)
    assert frames(out) == [i for i in range(60) if i != 10]
    assert missing(out)[0].seq == 1010 and missing(out)[0].next_payload == b"11"
    assert jb.stats.late == 1 and jb.stats.lost == 0


def test_random_jitter_within_max_delay_loses_nothing_after_warmup() -> None:
    jb = JitterBuffer(RATE)
    pkts = stream(1500, jitter=lambda i, rng: rng.uniform(0.0, 0.04))
    out = run(jb, pkts, 1600)
    assert 40.0 <= jb.stats.target_delay_ms <= 65.0
    late = jb.stats.late
    assert late <= 10                                          # only while the target is learned
    assert frames(out) == sorted(frames(out))
    assert len(frames(out)) >= 1500 - late - jb.stats.dropped - jb.stats.lost


def test_delay_grows_fast_on_a_spike_then_shrinks_slowly() -> None:
    # steady, then packets sent in [5.0, 5.1) are held by the network and arrive together at 5.15
    def spike(i, rng):
        nominal = 0.005 + TICK * i
        base = rng.uniform(0.0, 0.005)
        return (5.15 - nominal + 0.0001 * (i - 250)) if 5.0 <= nominal < 5.15 else base   # a FIFO queue holds them

    jb = JitterBuffer(RATE)
    pkts = stream(2500, jitter=spike)
    targets = []
    pending = sorted(pkts)
    k = 0
    seen = []
    for n in range(2600):
        now = n * TICK
        while k < len(pending) and pending[k][0] <= now:
            a, s, t, p = pending[k]
            jb.put(s, t, p, a)
            k += 1
        r = jb.get(now)
        if isinstance(r, Frame):
            seen.append(int(r.payload))
        targets.append((now, jb.stats.target_delay_ms, jb.stats.current_delay_ms))
    before = [tg for t, tg, _ in targets if 4.0 < t < 5.0]
    after = [(tg, cur) for t, tg, cur in targets if 5.2 < t < 5.5]
    assert max(before) < 35
    assert max(tg for tg, _ in after) > 120                   # grew at once
    assert max(cur for _, cur in after) > 120                 # and playout followed
    mid = [tg for t, tg, _ in targets if 7.0 < t < 7.5]
    assert min(mid) > 40                                      # still shrinking two seconds later
    end = [(tg, cur) for t, tg, cur in targets if 49.0 < t < 50.0]
    assert max(tg for tg, _ in end) < 35 and max(cur for _, cur in end) < 60   # back down
    assert seen == sorted(seen) and jb.stats.late == 0 and jb.stats.lost == 0 and jb.stats.reordered == 0
    assert jb.stats.dropped > 0                               # the shrink dropped frames, one at a time


def test_dtx_gap_is_silence_not_a_missing_storm() -> None:
    talk1 = stream(50)
    gap_frames = 100                                          # 2 s of DTX: sender stops, timestamps advance
    talk2 = [(a + TICK * (50 + gap_frames), (1050 + i) & 0xFFFF, 50_000 + FS * (50 + gap_frames + i),
              str(50 + i).encode()) for i, (a, _, _, _) in enumerate(stream(50))]
    jb = JitterBuffer(RATE)
    out = run(jb, talk1 + talk2, 220)
    assert frames(out) == list(range(100))
    assert len(missing(out)) <= 3                             # bounded concealment at the silence onset
    assert jb.stats.lost == 0 and jb.stats.late == 0
    nones = [t for t, r in out if r is None and 1.2 < t < 2.8]
    assert len(nones) > 70                                    # silence, not "missing"


def test_short_dtx_gap_with_next_packet_buffered_gives_silence() -> None:
    # a 3-frame silence inside a talkspurt, with the jitter buffer deep enough to already hold the next packet
    pkts = stream(20) + [(0.005 + TICK * (23 + i), 1020 + i, 50_000 + FS * (23 + i), str(20 + i).encode())
                         for i in range(20)]
    jb = JitterBuffer(RATE, min_delay_ms=100)
    out = run(jb, pkts, 60)
    assert frames(out) == list(range(40))
    assert not missing(out) and jb.stats.lost == 0


def test_ssrc_change_resyncs() -> None:
    jb = JitterBuffer(RATE)
    a = [p + (0xA,) for p in stream(50)]
    b = [p + (0xB,) for p in stream(50, seq0=7, ts0=123456789, t0=1.205)]
    out = run(jb, a + b, 130)
    assert jb.stats.resyncs == 1
    assert frames(out) == list(range(50)) + list(range(50))
    assert jb.stats.late == 0


def test_sequence_jump_and_timestamp_reset_resync_without_ssrc() -> None:
    jb = JitterBuffer(RATE)
    pkts = stream(30) + stream(30, seq0=40000, ts0=50_000 + FS * 30, t0=0.605)
    run(jb, pkts, 80)
    assert jb.stats.resyncs == 1
    jb2 = JitterBuffer(RATE)
    pkts = stream(30) + stream(30, seq0=1030, ts0=999, t0=0.605)     # seq continues, timestamp goes back
    out = run(jb2, pkts, 80)
    assert jb2.stats.resyncs == 1 and jb2.stats.late == 0
    assert frames(out)[-20:] == list(range(10, 30))


def test_burst_after_outage_overflows_to_target_depth() -> None:
    jb = JitterBuffer(RATE)
    pkts = [(1.0, 1000 + i, FS * i, str(i).encode()) for i in range(100)]
    out = run(jb, pkts, 80)
    assert jb.stats.dropped > 0 and len(jb) <= jb.capacity
    assert frames(out) == sorted(frames(out)) and frames(out)[-1] == 99


def test_nothing_before_the_first_packet() -> None:
    jb = JitterBuffer(RATE)
    assert [jb.get(t * TICK) for t in range(5)] == [None] * 5


def test_timestamp_jump_forward_resyncs_instead_of_waiting() -> None:
    # consecutive sequence numbers, but the timestamp leaps 20 s ahead while packets keep arriving every 20 ms
    jb = JitterBuffer(RATE)
    pkts = stream(30) + [(0.605 + TICK * i, 1030 + i, 50_000 + FS * 30 + 20 * RATE + FS * i, str(30 + i).encode())
                         for i in range(30)]
    out = run(jb, pkts, 80)
    assert jb.stats.resyncs == 1
    # what was still buffered from the old timeline is flushed (one frame here), the new one plays at once
    assert frames(out) == list(range(29)) + list(range(30, 60)) and jb.stats.dropped == 1
    resumed = next(t for t, r in out if isinstance(r, Frame) and r.payload == b"30")
    assert resumed < 0.7


def test_sequence_jump_with_continuous_timeline_is_skipped_not_a_missing_storm() -> None:
    # the sender renumbers (+1000) without touching timestamps or SSRC
    jb = JitterBuffer(RATE)
    pkts = stream(30) + [(0.605 + TICK * i, 2030 + i, 50_000 + FS * (30 + i), str(30 + i).encode()) for i in range(30)]
    out = run(jb, pkts, 80)
    assert frames(out) == list(range(60))
    assert not missing(out) and jb.stats.resyncs == 0


# -- non-audio packets sharing the sequence numbers (RFC 4733 telephone-events) ------------------------

def with_event(n_before: int, n_event: int, n_after: int, *, end_retransmits: int = 2, seq0: int = 1000,
               ts0: int = 50_000, t0: float = 0.005):
    """A talkspurt, a key press, a talkspurt, as a browser sends them: (arrival, seq, ts, payload or None).

    The event replaces the audio for n_event frames: one event packet per 20 ms, all with the event's start
    timestamp, the final one sent 1 + end_retransmits times at once; the audio after it resumes on the
    sender's clock. payload None marks a telephone-event packet; audio payloads are the frame index."""
    out, seq = [], seq0
    for i in range(n_before):
        out.append((t0 + TICK * i, seq & 0xFFFF, ts0 + FS * i, str(i).encode()))
        seq += 1
    start = ts0 + FS * n_before
    for k in range(n_event):
        for _ in range(1 + (end_retransmits if k == n_event - 1 else 0)):
            out.append((t0 + TICK * (n_before + k), seq & 0xFFFF, start, None))
            seq += 1
    for j in range(n_after):
        i = n_before + n_event + j
        out.append((t0 + TICK * i, seq & 0xFFFF, ts0 + FS * i, str(i).encode()))
        seq += 1
    return out


def run_marked(jb: JitterBuffer, packets, ticks: int):
    """Like run(), with payload None fed to mark_non_audio."""
    pending = sorted(packets, key=lambda p: p[0])
    out, k = [], 0
    for n in range(ticks):
        now = n * TICK
        while k < len(pending) and pending[k][0] <= now:
            arr, seq, ts, payload = pending[k]
            if payload is None:
                jb.mark_non_audio(seq, ts, arr, 0x5)
            else:
                jb.put(seq, ts, payload, arr, 0x5)
            k += 1
        out.append((now, jb.get(now)))
    return out


def test_marked_non_audio_packets_are_neither_lost_nor_concealed() -> None:
    pkts = with_event(30, 10, 30)
    assert len(pkts) == 72                                   # 12 event packets inside the audio's numbering
    jb = JitterBuffer(RATE)
    out = run_marked(jb, pkts, 90)
    audio = [int(p[3]) for p in pkts if p[3] is not None]
    assert frames(out) == audio
    assert not missing(out)
    st = jb.stats
    assert st.lost == 0 and st.late == 0 and st.duplicate == 0 and st.resyncs == 0
    assert st.received == 60 and st.played == 60            # the events are not received audio
    # no drift: the audio after the event plays as late after its send time as the audio before it
    when = {int(r.payload): t for t, r in out if isinstance(r, Frame)}
    assert when[45] - when[25] == pytest.approx(20 * TICK)
    # the event's ticks are silence (None), not a Missing; the clock sees a frame every tick otherwise
    during = [r for t, r in out if when[29] < t < when[40]]
    assert len(during) == 10 and all(r is None for r in during)


def test_without_marks_the_event_numbers_count_as_lost() -> None:
    # what the bridge did before marking them: the same stream, event packets simply not given to the buffer
    pkts = [p for p in with_event(30, 10, 30) if p[3] is not None]
    jb = JitterBuffer(RATE)
    run_marked(jb, pkts, 90)
    assert jb.stats.lost == 12


def test_marked_packets_reordered_with_audio() -> None:
    pkts = with_event(31, 10, 29)
    # swap every pair of consecutive packets (audio/audio, audio/event, event/event) across the whole call
    swapped = []
    for i in range(0, len(pkts) - 1, 2):
        a, b = pkts[i], pkts[i + 1]
        swapped += [(b[0], *b[1:]), (b[0] + 0.001, *a[1:])]
    assert len(swapped) == len(pkts)
    kinds = [(swapped[i][3] is None, swapped[i + 1][3] is None) for i in range(0, len(swapped), 2)]
    assert (True, False) in kinds and (False, True) in kinds   # an event packet overtakes audio, and the reverse
    jb = JitterBuffer(RATE)
    out = run_marked(jb, swapped, 100)
    assert frames(out) == [int(p[3]) for p in pkts if p[3] is not None]
    assert not missing(out)
    assert jb.stats.lost == 0 and jb.stats.late == 0 and jb.stats.duplicate == 0
    assert jb.stats.reordered > 0


def test_marks_interleaved_with_continuing_audio_play_every_frame() -> None:
    # a sender that keeps sending audio during the event, its event packets taking numbers in between
    pkts, seq = [], 1000
    for i in range(60):
        pkts.append((0.005 + TICK * i, seq, 50_000 + FS * i, str(i).encode()))
        seq += 1
        if 20 <= i < 30:
            pkts.append((0.006 + TICK * i, seq, 50_000 + FS * 20, None))   # the event's start timestamp
            seq += 1
    jb = JitterBuffer(RATE)
    out = run_marked(jb, pkts, 70)
    assert frames(out) == list(range(60))
    assert not missing(out)
    assert jb.stats.lost == 0 and jb.stats.resyncs == 0
    results = [r for _, r in out]
    first = next(i for i, r in enumerate(results) if isinstance(r, Frame))
    assert None not in results[first:first + 60]          # marks take no playout time


def test_lost_audio_next_to_marks_is_still_lost_and_a_late_mark_is_not() -> None:
    pkts = with_event(30, 10, 30)
    event = [i for i, p in enumerate(pkts) if p[3] is None]
    lost_audio = event[-1] + 1                              # the first audio packet after the event
    late_mark = event[4]                                    # an event packet held 300 ms by the network
    pkts = [p for i, p in enumerate(pkts) if i != lost_audio]
    pkts = [(p[0] + 0.3, *p[1:]) if i == late_mark else p for i, p in enumerate(pkts)]
    jb = JitterBuffer(RATE)
    out = run_marked(jb, pkts, 90)
    assert jb.stats.lost == 1
    assert jb.stats.late == 1                               # the held event packet: its number was passed over
    assert [m.seq for m in missing(out)] in ([], [1000 + lost_audio])
    assert frames(out) == [int(p[3]) for p in pkts if p[3] is not None]


def test_marks_from_another_ssrc_do_not_resync() -> None:
    jb = JitterBuffer(RATE)
    for i in range(5):
        jb.put(1000 + i, 50_000 + FS * i, str(i).encode(), 0.005 + TICK * i, 0xA)
    jb.mark_non_audio(7, 123, 0.1, 0xB)
    assert jb.stats.resyncs == 0 and len(jb) == 5


def _random_ops(seed: int, n: int = 3000):
    """A hostile stream: jitter spikes, reordering, loss, duplicates, DTX gaps, telephone-events, sequence and
    timestamp jumps, SSRC changes, bursts after outages; as (kind, args) calls on a 20 ms media clock."""
    rng = random.Random(seed)
    k = 0.1 if seed % 2 else 1.0                               # odd seeds: a calmer network
    ops = []
    seq, ts, ssrc = rng.randrange(65536), rng.randrange(1 << 32), rng.randrange(1 << 32)
    now = 0.0
    pending: list[tuple[float, tuple]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.01 * k:
            ssrc = rng.randrange(1 << 32)
        elif r < 0.02 * k:
            seq = (seq + rng.choice((200, 4000, 30000, -150))) & 0xFFFF
        elif r < 0.03 * k:
            ts = (ts + rng.choice((8000 * 40, -16000, 160 * 7))) & 0xFFFFFFFF
        delay = 0.003 + (rng.expovariate(30) if rng.random() < 0.3 * k else rng.random() * 0.01)
        if rng.random() < 0.01 * k:
            delay += rng.random() * 0.5                       # an outage: a burst later
        if rng.random() < 0.05:
            pending.append((now + delay, ("mark", (seq, ts, now + delay, ssrc))))
        elif rng.random() < 0.06:
            pass                                               # lost
        else:
            args = (seq, ts, bytes([seq & 0xFF, rng.randrange(256)]), now + delay, ssrc)
            pending.append((now + delay, ("put", args)))
            if rng.random() < 0.03:
                pending.append((now + delay + rng.random() * 0.1, ("put", args)))   # a duplicate
        seq = (seq + 1) & 0xFFFF
        ts = (ts + (160 if rng.random() > 0.05 else 160 * rng.randrange(2, 20))) & 0xFFFFFFFF
        now += TICK
        pending.sort(key=lambda p: p[0])
        while pending and pending[0][0] <= now:
            ops.append(pending.pop(0)[1])
        ops.append(("get", (now,)))
        if rng.random() < 0.002:
            ops.append(("reset", ()))
    return ops


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if a is None:
        return True
    return (a.seq, a.timestamp, getattr(a, "payload", None), getattr(a, "next_payload", None)) == \
        (b.seq, b.timestamp, getattr(b, "payload", None), getattr(b, "next_payload", None))


@pytest.mark.skipif(not jitter_module.fast_available(), reason="media._relay (C) is not built")
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("settings", [{}, {"min_delay_ms": 60, "max_delay_ms": 120}, {"max_conceal_ms": 0},
                                      {"frame_ms": 10, "shrink_interval": 0.1}])
def test_c_buffer_matches_the_reference_on_random_streams(seed: int, settings: dict) -> None:
    """Same calls, same results: every get() and the statistics after every call, bit for bit."""
    ref = jitter_module.JitterBuffer(RATE, **settings)
    fast = jitter_module.FastJitterBuffer(RATE, **settings)
    for i, (kind, args) in enumerate(_random_ops(seed)):
        if kind == "put":
            ref.put(*args)
            fast.put(*args)
        elif kind == "mark":
            ref.mark_non_audio(*args)
            fast.mark_non_audio(*args)
        elif kind == "reset":
            ref.reset()
            fast.reset()
        else:
            a, b = ref.get(*args), fast.get(*args)
            assert _same(a, b), (i, a, b)
        assert ref.stats == fast.stats, (i, kind)
        assert (len(ref), ref.ssrc, ref.current_delay, ref.target_delay) == \
            (len(fast), fast.ssrc, fast.current_delay, fast.target_delay), i
