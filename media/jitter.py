"""Adaptive jitter buffer for audio frames on receive paths, sans-IO.

`put` is called for every RTP packet with its arrival time; `get(now)` is called by the media clock once
per frame (20 ms) and returns the `Frame` to decode, `Missing` when the caller should conceal (PLC, or
FEC from `Missing.next_payload`), or None when there is nothing to play (before playout starts, in a
silence/DTX gap). Both take the caller's clock, so every behaviour is testable without sleeping.

How it works:
- packets are kept by extended sequence number (16-bit wrap unrolled) with extended timestamps;
- the playout point follows the sender's timeline: frame with timestamp T plays at T/rate + offset;
  the delay is measured against the smallest transit time (arrival - T/rate) seen in a sliding window;
- the target delay is the peak transit spread (that peak decays ~0.3 % per packet) plus half a frame, within
  [min_delay, max_delay]: it grows at once on a spike and shrinks over seconds;
- the playout delay follows the target: it grows by holding the playout point (the caller conceals a frame)
  and shrinks by dropping one frame at most every `shrink_interval`, or for free inside silence gaps;
- a gap in sequence numbers with later packets buffered is a loss (`Missing`); a timestamp jump with
  consecutive sequence numbers is DTX/silence (None, not `Missing`); an empty buffer is concealed for at
  most `max_conceal_ms`, then treated as silence until packets return and playout re-anchors;
- a sequence jump beyond RFC 3550's dropout/misorder limits, a timestamp running backwards or jumping
  against the arrival clock, or a new SSRC (when `put` is given one) resynchronises the buffer; a
  sequence jump with a continuous timeline is skipped over (counted lost) without a Missing per number;
- packets of the same stream that carry no audio (RFC 4733 telephone-events take sequence numbers of the
  audio stream they replace) are recorded with `mark_non_audio`: their numbers go through the same sequence
  tracking and resync as audio (one from another SSRC is ignored) but leave the delay estimate and the audio
  counters alone, and `get` passes over them without a loss or a Missing. They take no playout time: the
  audio after an event carries a later timestamp, so it plays like audio after a DTX gap (None until its
  time, or a re-anchor when the buffer ran dry during the event), which keeps playout on the sender's clock.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FastJitterBuffer", "Frame", "JitterBuffer", "JitterStats", "Missing", "fast_available"]

MAX_DROPOUT = 3000
MAX_MISORDER = 100
_MASK64 = (1 << 64) - 1

_BUFFERING, _PLAYING, _IDLE = 0, 1, 2
_INF = float("inf")


@dataclass(slots=True)
class Frame:
    """A frame to decode: the packet's 16-bit sequence number, 32-bit timestamp and payload."""

    seq: int
    timestamp: int
    payload: bytes


@dataclass(slots=True)
class Missing:
    """A frame to conceal: what was expected, and the following packet's payload when buffered (for in-band FEC)."""

    seq: int
    timestamp: int
    next_payload: bytes | None = None


@dataclass(slots=True)
class JitterStats:
    """Counters and delays of a jitter buffer (updated in place)."""

    received: int = 0
    played: int = 0
    late: int = 0              # arrived after their playout time
    lost: int = 0              # never arrived in time: concealed for a sequence gap, or skipped on re-anchor
    duplicate: int = 0
    reordered: int = 0         # arrived after a higher sequence number (in time or not)
    concealed: int = 0         # Missing returned
    dropped: int = 0           # frames discarded to shrink the delay or on overflow
    resyncs: int = 0
    target_delay_ms: float = 0.0
    current_delay_ms: float = 0.0
    jitter_ms: float = 0.0     # peak transit spread the target follows


class JitterBuffer:
    """Adaptive audio jitter buffer: reorders, drops duplicates and late packets, reports gaps, adapts its delay."""

    def __init__(
        self,
        clock_rate: int,
        frame_ms: int = 20,
        min_delay_ms: int = 20,
        max_delay_ms: int = 200,
        *,
        max_conceal_ms: int = 60,
        shrink_interval: float = 0.5,
        peak_decay: float = 0.997,
        window: float = 2.0,
    ) -> None:
        self.clock_rate = clock_rate
        self.frame_samples = clock_rate * frame_ms // 1000
        self.frame = frame_ms / 1000.0
        self.min_delay = min_delay_ms / 1000.0
        self.max_delay = max_delay_ms / 1000.0
        self.max_conceal = max(0, max_conceal_ms // frame_ms)
        self.shrink_interval = shrink_interval
        self.peak_decay = peak_decay
        self.window = window
        self.capacity = 2 * max_delay_ms // frame_ms + 4
        self.max_ts_jump = 30 * clock_rate
        self.max_skew = max(1.0, 4 * self.max_delay)   # transit this far off the stream's: a timestamp jump
        self._stats = JitterStats()
        self._delay = 0.0
        self._target = self.min_delay
        self._peak = 0.0
        self._reset()

    # -- state -------------------------------------------------------------------------------------
    def _reset(self) -> None:
        """Forget the stream (keeps stats and the learned delay target)."""
        self._buf: dict[int, tuple[int, bytes]] = {}
        self._marks: set[int] = set()         # extended sequences that carry no audio (mark_non_audio), not played yet
        self._state = _BUFFERING
        self._ssrc: int | None = None
        self._highest: int | None = None      # extended highest sequence received
        self._ref_ts = 0                      # extended timestamp of that packet
        self._next_seq: int | None = None     # extended sequence to play next
        self._play_ts = 0                     # extended timestamp of the current playout slot
        self._start_at = 0.0
        self._mt_cur = _INF                   # min transit, current and previous window
        self._mt_prev = _INF
        self._mt_until = 0.0
        self._empty_run = 0
        self._last_shrink = float("-inf")
        self._seen = 0                        # bit i: sequence next_seq-1-i was in hand (played or dropped)
        self._lostm = 0                       # bit i: sequence next_seq-1-i was counted lost

    def reset(self) -> None:
        """Resynchronise on a new stream (SSRC change, re-INVITE): flush buffered frames, keep stats."""
        self._stats.dropped += len(self._buf)
        self._stats.resyncs += 1
        self._reset()

    @property
    def stats(self) -> JitterStats:
        """Counters, with the delays as of the last get()."""
        st = self._stats
        st.current_delay_ms = self._delay * 1000.0
        st.target_delay_ms = self._target * 1000.0
        st.jitter_ms = self._peak * 1000.0
        return st

    @property
    def current_delay(self) -> float:
        """Playout delay (seconds) beyond the fastest transit, as of the last get()."""
        return self._delay

    @property
    def target_delay(self) -> float:
        """The delay (seconds) playout aims at."""
        return self._target

    def __len__(self) -> int:
        """Packets buffered."""
        return len(self._buf)

    # -- input -------------------------------------------------------------------------------------
    def _extend(self, seq: int, timestamp: int, ssrc: int | None, audio: bool) -> tuple[int, int, int]:
        """SSRC change, 16/32-bit unrolling and resync: (extended seq, extended timestamp, seq step from the highest).

        Non-audio packets (`audio` false) resync on an SSRC change or a sequence jump only: their timestamp is an
        event's start, which lags the audio timeline by design, and they do not move the timestamp reference.
        """
        if ssrc is not None and ssrc != self._ssrc:
            if self._ssrc is not None:
                self.reset()
            self._ssrc = ssrc
        hi = self._highest
        if hi is not None:
            d = ((seq - hi + 0x8000) & 0xFFFF) - 0x8000
            ref = self._ref_ts
            dts = ((timestamp - ref + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if not (d > MAX_DROPOUT or d < -MAX_MISORDER
                    or (audio and (dts > self.max_ts_jump or dts < -self.max_ts_jump or (d > 0 and dts < 0)))):
                ext, ets = hi + d, ref + dts
                if d > 0:
                    self._highest = ext
                    if audio:
                        self._ref_ts = ets
                return ext, ets, d
            keep = self._ssrc
            self.reset()
            self._ssrc = keep
        self._highest, self._ref_ts = seq, timestamp
        return seq, timestamp, 0

    @property
    def ssrc(self) -> int | None:
        """The SSRC of the stream being buffered (None before the first packet with one)."""
        return self._ssrc

    def put(self, seq: int, timestamp: int, payload: bytes, arrival: float, ssrc: int | None = None) -> None:
        """Queue a received packet (16-bit seq, 32-bit timestamp) that arrived at `arrival` (seconds)."""
        st = self._stats
        st.received += 1
        ext, ets, d = self._extend(seq, timestamp, ssrc, True)
        if d < 0:
            st.reordered += 1

        # transit, its windowed minimum, the peak spread and the target delay
        transit = arrival - ets / self.clock_rate
        base = self._mt_cur if self._mt_cur < self._mt_prev else self._mt_prev
        if base != _INF:
            if not -self.max_skew < transit - base < self.max_skew:
                # the timestamp jumped against the arrival clock (new timeline without a new SSRC)
                keep = self._ssrc
                self.reset()
                self._ssrc = keep
                ext, ets = seq, timestamp
                self._highest, self._ref_ts = ext, ets
                transit = arrival - ets / self.clock_rate
        if arrival >= self._mt_until:
            self._mt_prev = self._mt_cur
            self._mt_cur = transit
            self._mt_until = arrival + self.window
        elif transit < self._mt_cur:
            self._mt_cur = transit
        base = self._mt_cur if self._mt_cur < self._mt_prev else self._mt_prev
        spread = transit - base
        peak = self._peak * self.peak_decay
        if spread > peak:
            peak = spread
        self._peak = peak
        target = peak + self.frame / 2
        if target < self.min_delay:
            target = self.min_delay
        elif target > self.max_delay:
            target = self.max_delay
        self._target = target

        state = self._state
        ns = self._next_seq
        if ns is not None and ext < ns:
            i = ns - 1 - ext
            bit = 1 << i if i < 64 else 0
            if self._seen & bit:
                st.duplicate += 1
                return
            st.late += 1
            if self._lostm & bit:             # it was counted lost: it is late, not lost
                st.lost -= 1
                self._lostm ^= bit
            self._seen |= bit
            return
        buf = self._buf
        if ext in buf or ext in self._marks:
            st.duplicate += 1
            return
        buf[ext] = (ets, payload)
        if state == _IDLE or (state == _BUFFERING and len(buf) == 1):
            self._state = _BUFFERING
            self._start_at = ets / self.clock_rate + base + target
        if len(buf) > self.capacity:
            self._overflow()

    def mark_non_audio(self, seq: int, timestamp: int, arrival: float, ssrc: int | None = None) -> None:
        """Record that sequence `seq` of the stream carries no audio (an RFC 4733 telephone-event packet).

        The number goes through the same SSRC/sequence tracking and resync as `put` (timestamp checks aside),
        so `get` passes over it: not lost, not concealed, no playout time. It is not counted as received audio
        and does not feed the delay estimate (`arrival` is accepted for symmetry with `put`, and unused). If its
        slot was already given up (counted lost), it is counted late instead, like an audio packet. A packet
        from an SSRC other than the audio's (or before any audio, when `ssrc` is given) is ignored: it does not
        share the audio's sequence numbers, and resynchronising on it would flush the buffered audio.
        """
        if ssrc is not None and ssrc != self._ssrc:
            return
        ext, _, _ = self._extend(seq, timestamp, None, False)
        ns = self._next_seq
        if ns is not None and ext < ns:
            i = ns - 1 - ext
            bit = 1 << i if i < 64 else 0
            if not bit or self._seen & bit:
                return
            self._seen |= bit
            st = self._stats
            st.late += 1
            if self._lostm & bit:
                st.lost -= 1
                self._lostm ^= bit
            return
        if ext in self._buf:
            return
        marks = self._marks
        marks.add(ext)
        if len(marks) > 4 * self.capacity + MAX_MISORDER:   # no audio to play them against: keep the newest
            marks.discard(min(marks))

    def _eat_marks(self) -> bool:
        """Pass over the non-audio sequence numbers at the playout point; whether there were any."""
        marks = self._marks
        ns = self._next_seq
        if ns is None or ns not in marks:
            return False
        seen, lostm = self._seen, self._lostm
        while ns in marks:
            marks.discard(ns)
            ns += 1
            seen = ((seen << 1) | 1) & _MASK64
            lostm = (lostm << 1) & _MASK64
        self._seen, self._lostm = seen, lostm
        self._next_seq = ns
        return True

    def _drop_marks_below(self, seq: int) -> None:
        """Forget non-audio marks the playout point jumped over without counting them."""
        if self._marks:
            self._marks = {m for m in self._marks if m >= seq}

    def _overflow(self) -> None:
        """Too many frames buffered (a burst after an outage): drop the oldest down to the target depth."""
        keys = sorted(self._buf)
        keep = max(1, int(self._target / self.frame) + 1)
        for k in keys[:-keep]:
            del self._buf[k]
            self._stats.dropped += 1
        if self._state == _PLAYING:
            first = keys[-keep]
            self._seen = self._lostm = 0
            self._next_seq = first
            self._drop_marks_below(first)
            self._play_ts = self._buf[first][0]

    # -- output ------------------------------------------------------------------------------------
    def get(self, now: float) -> Frame | Missing | None:
        """The frame for this media-clock tick: a Frame, a Missing to conceal, or None (nothing to play)."""
        state = self._state
        buf = self._buf
        st = self._stats
        if state != _PLAYING:
            if self._marks:
                self._eat_marks()                 # non-audio numbers (an event) arriving while idle
            if state == _IDLE or not buf or now + 1e-6 < self._start_at:
                return None
            lowest = min(buf)
            ns = self._next_seq
            if ns is not None and lowest > ns:
                self._skip(ns, lowest - ns)
            self._next_seq = lowest
            self._drop_marks_below(lowest)
            self._play_ts = buf[lowest][0]
            self._state = _PLAYING
            self._empty_run = 0

        ate = self._eat_marks() if self._marks else False
        ns: int = self._next_seq  # type: ignore[assignment]  # set whenever playing
        rate = self.clock_rate
        base = self._mt_cur if self._mt_cur < self._mt_prev else self._mt_prev
        delay = now - self._play_ts / rate - base
        target = self._target
        frame = self.frame
        self._delay = delay

        pkt = buf.get(ns)
        if pkt is not None:
            ets, payload = pkt
            self._empty_run = 0
            if ets - self._play_ts >= self.frame_samples:
                # consecutive sequence, later timestamp: a silence (DTX) gap; adjust the delay for free
                if delay > target + 1.5 * frame:
                    self._play_ts += 2 * self.frame_samples
                elif delay >= target - frame / 2:
                    self._play_ts += self.frame_samples
                return None
            if delay < target - frame:
                st.concealed += 1                 # grow: hold the playout point one frame
                return Missing(ns & 0xFFFF, self._play_ts & 0xFFFFFFFF, None)
            del buf[ns]
            if (delay > target + 1.5 * frame and now - self._last_shrink >= self.shrink_interval
                    and ns + 1 in buf and buf[ns + 1][0] - ets <= self.frame_samples):
                self._last_shrink = now           # shrink: drop this frame, play the next
                st.dropped += 1
                self._seen = ((self._seen << 1) | 1) & _MASK64
                self._lostm = (self._lostm << 1) & _MASK64
                ns += 1
                ets, payload = buf.pop(ns)
            self._next_seq = ns + 1
            self._play_ts = ets + self.frame_samples
            self._seen = ((self._seen << 1) | 1) & _MASK64
            self._lostm = (self._lostm << 1) & _MASK64
            st.played += 1
            return Frame(ns & 0xFFFF, ets & 0xFFFFFFFF, payload)

        if buf:
            # a later packet is here: this one is lost (if it still comes, it is counted late) unless the
            # delay is short of the target, then hold the playout point and give it one more frame
            self._empty_run = 0
            lowest = min(buf)
            if buf[lowest][0] <= self._play_ts:
                # the sequence jumped but the timeline did not: nothing between is coming, skip to it
                self._skip(ns, lowest - ns)
                self._next_seq = lowest
                return self.get(now)
            if delay < target - frame:
                st.concealed += 1
                return Missing(ns & 0xFFFF, self._play_ts & 0xFFFFFFFF, None)
            nxt = buf.get(ns + 1)
            missing = Missing(ns & 0xFFFF, self._play_ts & 0xFFFFFFFF, None if nxt is None else nxt[1])
            self._next_seq = ns + 1
            self._play_ts += self.frame_samples
            self._skip(ns, 1)
            st.concealed += 1
            return missing

        if ate:
            # the slot carried no audio (a telephone-event replaces it for its duration) and no audio is here yet:
            # nothing to play, no concealment; like a silence gap, playout re-anchors on the audio that follows,
            # at its own timestamp, so the event costs no drift however its packets were spaced
            self._state = _IDLE
            return None

        # empty: late packets (a spike) or the start of silence; conceal a little, holding the playout point
        self._empty_run += 1
        if self._empty_run > self.max_conceal:
            self._state = _IDLE
            return None
        if delay >= self.max_delay:
            self._play_ts += self.frame_samples
        st.concealed += 1
        return Missing(ns & 0xFFFF, self._play_ts & 0xFFFFFFFF, None)

    def _skip(self, start: int, gap: int) -> None:
        """Pass over `gap` sequence numbers from `start` (late/duplicate bookkeeping): lost, unless marked non-audio."""
        if gap >= 64:
            seen, lostm = 0, _MASK64
        else:
            seen = (self._seen << gap) & _MASK64
            lostm = ((self._lostm << gap) | ((1 << gap) - 1)) & _MASK64
        hits = 0
        marks = self._marks
        if marks:
            end = start + gap
            for m in [m for m in marks if start <= m < end]:
                marks.discard(m)
                hits += 1
                i = end - 1 - m
                if i < 64:
                    seen |= 1 << i
                    lostm &= ~(1 << i)
        self._stats.lost += gap - hits
        self._seen, self._lostm = seen, lostm


try:
    from . import _relay as _c
except ImportError:  # pragma: no cover - built by setup.py where a compiler is present
    _c = None


def fast_available() -> bool:
    """Whether the C jitter buffer (``media._relay.Jitter``) is built."""
    return _c is not None


if _c is not None:
    _c.set_frame_types(Frame, Missing)

    class FastJitterBuffer(_c.Jitter):  # type: ignore[misc,name-defined]
        """``JitterBuffer`` in C: the same frames, gaps and statistics for the same calls (the tests compare
        them on random streams), and the buffer the C transcoding tick (``media._relay.Transcoder``) reads."""

        __slots__ = ()

        @property
        def stats(self) -> JitterStats:
            """Counters, with the delays as of the last get()."""
            (received, played, late, lost, duplicate, reordered, concealed, dropped, resyncs, delay, target,
             peak) = self.counters()
            return JitterStats(received, played, late, lost, duplicate, reordered, concealed, dropped, resyncs,
                               target * 1000.0, delay * 1000.0, peak * 1000.0)
else:  # pragma: no cover
    FastJitterBuffer = JitterBuffer  # type: ignore[misc,assignment]
