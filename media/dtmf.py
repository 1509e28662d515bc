"""DTMF for the media plane: RFC 4733 telephone-events, 48 kHz <-> 8 kHz mapping, in-band Goertzel detection, tones.

Everything here is sans-IO: the event sender is driven by the caller's packet clock (``tick()`` every
``packet_ms``), the event receiver is fed packets and a monotonic ``now`` and exposes ``get_timer()`` /
``handle_timer(now)`` / ``next_event()``, and the in-band detectors are fed 20 ms frames of 8 kHz int16 audio.

In-band detection has three interchangeable paths that the tests hold against each other:

* ``goertzel_powers_py``: the Goertzel recursion in pure Python (the reference/oracle);
* ``goertzel_powers_np``: one frame, numpy (a precomputed cos/sin basis, i.e. the same DFT bins, one matmul);
* ``goertzel_powers_batch``: many legs' frames as one 2-D array in one matmul, for the worker's media clock,
  with ``DtmfDetectorBank`` running the validity checks and the per-leg digit state machines vectorised too.
"""
from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

__all__ = [
    "DTMF_DIGITS",
    "ROW_FREQS",
    "COL_FREQS",
    "DETECTOR_FREQS",
    "KEYPAD",
    "DBM0_PEAK",
    "MAX_DURATION",
    "TelephoneEvent",
    "DtmfPacket",
    "DtmfDigitStarted",
    "DtmfDigitEnded",
    "DtmfEvent",
    "digit_to_event",
    "event_to_digit",
    "encode_telephone_event",
    "decode_telephone_event",
    "DtmfEventSender",
    "packets_for_press",
    "DtmfEventReceiver",
    "rescale_duration",
    "rescale_timestamp",
    "TelephoneEventTranslator",
    "goertzel_powers_py",
    "goertzel_powers_np",
    "goertzel_powers_batch",
    "DtmfDetectorConfig",
    "classify_frame_py",
    "classify_powers",
    "DtmfDetector",
    "DtmfDetectorBank",
    "dtmf_tone",
    "dtmf_frames",
]

# --------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------

DTMF_DIGITS = "0123456789*#ABCD"
"""RFC 4733 §3.2 event codes 0-15, in code order."""

ROW_FREQS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
COL_FREQS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD: tuple[str, ...] = ("123A", "456B", "789C", "*0#D")
DETECTOR_FREQS: tuple[float, ...] = ROW_FREQS + COL_FREQS + tuple(2 * f for f in ROW_FREQS + COL_FREQS)
"""The 8 DTMF frequencies followed by their 8 second harmonics (the bins the detectors evaluate)."""

DBM0_PEAK = 22656.0
"""Peak of a 0 dBm0 sine in 16-bit linear (G.711 mu-law digital milliwatt: 3.17 dB below 32636)."""

MAX_DURATION = 0xFFFF
"""Largest duration an RFC 4733 payload can carry; longer events are split into segments (§2.5.1.3)."""

_TS_MASK = 0xFFFFFFFF

# key (row, col) -> event code, and event code -> (row, col)
_CODE_OF_CELL = np.array([[DTMF_DIGITS.index(ch) for ch in row] for row in KEYPAD], dtype=np.int8)
_CELL_OF_CODE: dict[int, tuple[int, int]] = {
    DTMF_DIGITS.index(ch): (r, c) for r, row in enumerate(KEYPAD) for c, ch in enumerate(row)
}


def digit_to_event(digit: str) -> int:
    """Map a key ('0'-'9', '*', '#', 'A'-'D') to its RFC 4733 event code, so callers can speak in keys."""
    code = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return code


def event_to_digit(event: int) -> str:
    """Map an RFC 4733 event code 0-15 back to its key, the inverse of digit_to_event."""
    if not 0 <= event < 16:
        raise ValueError(f"not a DTMF event code: {event}")
    return DTMF_DIGITS[event]


def _ts_add(ts: int, delta: int) -> int:
    """Add to an RTP timestamp modulo 2**32, because timestamps wrap."""
    return (ts + delta) & _TS_MASK


def _ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between RTP timestamps (serial-number arithmetic), to order them across a wrap."""
    d = (a - b) & _TS_MASK
    return d - 0x100000000 if d >= 0x80000000 else d


# --------------------------------------------------------------------------------------------------------------
# RFC 4733 payload
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload: event code, end bit, volume (0-63, -dBm0) and duration in timestamp units."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str:
        """The key this event stands for (only for codes 0-15)."""
        return event_to_digit(self.event)


_PAYLOAD = struct.Struct("!BBH")


def encode_telephone_event(ev: TelephoneEvent) -> bytes:
    """Pack a TelephoneEvent into the 4-byte RFC 4733 payload (R bit zero), for an RTP packet body."""
    if not 0 <= ev.event <= 255:
        raise ValueError(f"event code out of range: {ev.event}")
    if not 0 <= ev.volume <= 63:
        raise ValueError(f"volume out of range (0-63): {ev.volume}")
    if not 0 <= ev.duration <= MAX_DURATION:
        raise ValueError(f"duration out of range (0-65535): {ev.duration}")
    return _PAYLOAD.pack(ev.event, (0x80 if ev.end else 0) | ev.volume, ev.duration)


def decode_telephone_event(payload: bytes) -> TelephoneEvent:
    """Unpack the first 4-byte RFC 4733 block of an RTP payload (the R bit is ignored, as the RFC asks)."""
    if len(payload) < 4:
        raise ValueError(f"telephone-event payload too short: {len(payload)} bytes")
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """A telephone-event packet to send: the event plus the RTP timestamp and marker bit the RTP session needs."""

    event: TelephoneEvent
    timestamp: int
    marker: bool = False

    @property
    def payload(self) -> bytes:
        """The 4-byte RTP payload."""
        return encode_telephone_event(self.event)


@dataclass(frozen=True, slots=True)
class DtmfDigitStarted:
    """A digit began (first packet of an RFC 4733 event, or a validated in-band tone); timestamp in clock units."""

    digit: str
    timestamp: int
    clock_rate: int = 8000


@dataclass(frozen=True, slots=True)
class DtmfDigitEnded:
    """A digit ended, reported once; duration in clock units; ended_by says how the end was decided."""

    digit: str
    timestamp: int
    duration: int
    clock_rate: int = 8000
    ended_by: Literal["end-bit", "timeout", "next-event", "silence"] = "end-bit"
    volume: int | None = None

    @property
    def duration_ms(self) -> float:
        """Duration in milliseconds."""
        return self.duration * 1000.0 / self.clock_rate


DtmfEvent = DtmfDigitStarted | DtmfDigitEnded

# --------------------------------------------------------------------------------------------------------------
# RFC 4733 sender
# --------------------------------------------------------------------------------------------------------------


class DtmfEventSender:
    """Emits the RFC 4733 packets of one key press per packet-clock tick, the way real endpoints do.

    First packet with the marker bit, one RTP timestamp for the whole event, duration growing by one packet
    every tick, then ``end_packets`` (3) packets with the E bit and the final duration. Events longer than
    0xFFFF timestamp units (8.19 s at 8 kHz, only 1.37 s at 48 kHz) are split into segments per RFC 4733
    §2.5.1.3: the segment closes with duration 0xFFFF, the next starts at timestamp + 0xFFFF with no marker,
    and only the last segment carries E. Sequence numbers and SSRC belong to the caller's RTP session.
    """

    def __init__(self, clock_rate: int = 8000, packet_ms: int = 20, volume: int = 10, end_packets: int = 3) -> None:
        """Configure the clock (8000 or 48000 for telephone-event/8000 or /48000) and the packet interval."""
        if clock_rate <= 0 or clock_rate * packet_ms % 1000:
            raise ValueError("packet_ms must be a whole number of clock units")
        if end_packets < 1:
            raise ValueError("end_packets must be >= 1")
        self.clock_rate = clock_rate
        self.packet_ms = packet_ms
        self.packet_samples = clock_rate * packet_ms // 1000
        self.volume = volume
        self.end_packets = end_packets
        self._code = -1
        self._timestamp = 0
        self._total: int | None = None
        self._elapsed = 0
        self._segment = 0
        self._ends_sent = 0
        self._first = False
        self._event_volume = volume

    @property
    def idle(self) -> bool:
        """True when no event is being sent, so start() may be called."""
        return self._code < 0

    def start(self, digit: str, timestamp: int, duration_ms: float | None = None, volume: int | None = None) -> None:
        """Begin a key press at RTP timestamp ``timestamp``; with no duration it lasts until stop()."""
        if not self.idle:
            raise RuntimeError("an event is already being sent")
        self._code = digit_to_event(digit)
        self._timestamp = timestamp & _TS_MASK
        if duration_ms is None:
            self._total = None
        else:
            total = round(duration_ms * self.clock_rate / 1000)
            if total <= 0:
                raise ValueError("duration must be positive")
            self._total = total
        self._elapsed = 0
        self._segment = 0
        self._ends_sent = 0
        self._first = True
        self._event_volume = self.volume if volume is None else volume

    def stop(self) -> None:
        """End an open-ended press: the next tick carries the final duration with the E bit."""
        if self.idle or self._ends_sent:
            return
        self._total = self._elapsed + self.packet_samples if self._total is None else min(
            self._total, self._elapsed + self.packet_samples
        )

    def _packet(self, segment: int, duration: int, end: bool) -> DtmfPacket:
        """Build one packet of the current event for the given segment."""
        marker = self._first
        self._first = False
        ev = TelephoneEvent(self._code, end, self._event_volume, duration)
        return DtmfPacket(ev, _ts_add(self._timestamp, segment * MAX_DURATION), marker)

    def tick(self) -> list[DtmfPacket]:
        """Advance one packet interval and return the packets to send now (usually one, none when idle)."""
        if self._code < 0:
            return []
        if self._ends_sent:
            # retransmission of the end packet, same timestamp and final duration
            seg_duration = self._elapsed - self._segment * MAX_DURATION
            out = [self._packet(self._segment, seg_duration, True)]
            self._ends_sent += 1
            if self._ends_sent >= self.end_packets:
                self._code = -1
            return out
        self._elapsed += self.packet_samples
        final = self._total is not None and self._elapsed >= self._total
        if final:
            assert self._total is not None
            self._elapsed = self._total
        out: list[DtmfPacket] = []
        segment = (self._elapsed - 1) // MAX_DURATION
        while self._segment < segment:
            # close the full segment at 0xFFFF before the next one starts (RFC 4733 §2.5.1.3)
            out.append(self._packet(self._segment, MAX_DURATION, False))
            self._segment += 1
        out.append(self._packet(segment, self._elapsed - segment * MAX_DURATION, final))
        if final:
            self._ends_sent = 1
            if self._ends_sent >= self.end_packets:
                self._code = -1
        return out


def packets_for_press(
    digit: str,
    duration_ms: float,
    timestamp: int,
    clock_rate: int = 8000,
    packet_ms: int = 20,
    volume: int = 10,
    end_packets: int = 3,
) -> list[list[DtmfPacket]]:
    """All packets of one press, grouped by packet-clock tick; a convenience over DtmfEventSender."""
    sender = DtmfEventSender(clock_rate, packet_ms, volume, end_packets)
    sender.start(digit, timestamp, duration_ms)
    ticks: list[list[DtmfPacket]] = []
    while not sender.idle:
        ticks.append(sender.tick())
    return ticks


# --------------------------------------------------------------------------------------------------------------
# RFC 4733 receiver
# --------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _RxEvent:
    """The event the receiver is currently tracking."""

    code: int
    start_ts: int
    segments: list[int]
    duration: int
    volume: int
    last_seen: float


class DtmfEventReceiver:
    """Turns received telephone-event packets into DtmfDigitStarted/DtmfDigitEnded, each exactly once.

    Robust to: loss of the first packet (any new timestamp starts an event, marker or not), loss of all end
    packets (``timeout_ms`` after the last packet ends it, or the next event does), retransmitted end packets
    and duplicates (ended events are remembered by (timestamp, code)), reordering (duration is the maximum
    seen; packets older than the current event are dropped), and long events split in segments (§2.5.1.3).
    Events with codes above 15 (flash, tones) are ignored. Times ``now`` are monotonic seconds.
    """

    def __init__(
        self, clock_rate: int = 8000, timeout_ms: float = 200.0, history: int = 32, stale_window_ms: float = 5000.0
    ) -> None:
        """Configure the clock rate, the end timeout, the dedup memory and how far back a packet counts as late."""
        self.clock_rate = clock_rate
        self.timeout = timeout_ms / 1000.0
        self.stale_window = round(stale_window_ms * clock_rate / 1000)
        self._events: deque[DtmfEvent] = deque()
        self._init_state(history)

    def reset(self) -> None:
        """Forget event state (new SSRC or timestamp jump); queued events stay, a pending digit is not reported."""
        self._init_state(self._history)

    def _init_state(self, history: int) -> None:
        """Empty event state."""
        self._current: _RxEvent | None = None
        self._finished: set[tuple[int, int]] = set()
        self._finished_order: deque[tuple[int, int]] = deque()
        self._history = history
        self._newest_ts: int | None = None

    def next_event(self) -> DtmfEvent | None:
        """Pop the next digit event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When handle_timer must next be called (end of the current event by timeout), or None."""
        cur = self._current
        return None if cur is None else cur.last_seen + self.timeout

    def handle_timer(self, now: float) -> None:
        """End the current event if no packet for it arrived within the timeout."""
        cur = self._current
        if cur is not None and now >= cur.last_seen + self.timeout:
            self._finish("timeout")

    def _remember(self, key: tuple[int, int]) -> None:
        """Record an ended event's (timestamp, code) so late duplicates are dropped."""
        if key in self._finished:
            return
        self._finished.add(key)
        self._finished_order.append(key)
        while len(self._finished_order) > self._history:
            self._finished.discard(self._finished_order.popleft())

    def _finish(self, ended_by: Literal["end-bit", "timeout", "next-event"]) -> None:
        """Report the current event's end once and forget it."""
        cur = self._current
        assert cur is not None
        self._current = None
        for ts in cur.segments:
            self._remember((ts, cur.code))
        self._events.append(
            DtmfDigitEnded(
                DTMF_DIGITS[cur.code], cur.start_ts, cur.duration, self.clock_rate, ended_by, cur.volume
            )
        )

    def receive_packet(self, payload: bytes, timestamp: int, seq: int, marker: bool, now: float) -> None:
        """Feed one telephone-event RTP packet (payload, RTP timestamp, sequence number, marker bit)."""
        del seq  # timestamps and durations decide (RFC 4733 §2.5.2); seq is taken for the RTP layer's symmetry
        ev = decode_telephone_event(payload)
        if ev.event > 15:
            return
        timestamp &= _TS_MASK
        self.handle_timer(now)
        key = (timestamp, ev.event)
        if key in self._finished:
            return  # retransmitted end packet or a late packet of an ended event
        cur = self._current
        segment = -1
        if cur is not None and ev.event == cur.code:
            if timestamp in cur.segments:
                segment = cur.segments.index(timestamp)
            elif timestamp == _ts_add(cur.segments[-1], MAX_DURATION) and not marker:
                cur.segments.append(timestamp)  # next segment of a long event
                segment = len(cur.segments) - 1
        if segment < 0:
            newest = self._newest_ts
            if newest is not None and -self.stale_window <= _ts_diff(timestamp, newest) < 0:
                return  # a little older than the newest event seen: a reordered leftover, too late to report
            if cur is not None:
                self._finish("next-event")
            cur = self._current = _RxEvent(ev.event, timestamp, [timestamp], 0, ev.volume, now)
            self._events.append(DtmfDigitStarted(DTMF_DIGITS[ev.event], timestamp, self.clock_rate))
            segment = 0
        self._newest_ts = cur.segments[-1]
        cur.duration = max(cur.duration, segment * MAX_DURATION + ev.duration)
        cur.volume = ev.volume
        cur.last_seen = now
        if ev.end:
            self._finish("end-bit")


# --------------------------------------------------------------------------------------------------------------
# 48 kHz <-> 8 kHz
# --------------------------------------------------------------------------------------------------------------


def rescale_duration(duration: int, from_rate: int, to_rate: int) -> int:
    """Convert an event duration between clock rates (x6 from 8 kHz to 48 kHz, /6 back), rounding to nearest."""
    return (duration * to_rate + from_rate // 2) // from_rate


def rescale_timestamp(timestamp: int, from_rate: int, to_rate: int, from_base: int = 0, to_base: int = 0) -> int:
    """Map an RTP timestamp from one leg's clock to another's through a pair of matching anchors, wrap-safe."""
    delta = _ts_diff(timestamp, from_base)
    scaled = (abs(delta) * to_rate + from_rate // 2) // from_rate
    if delta < 0:
        scaled = -scaled
    return (to_base + scaled) & _TS_MASK


@dataclass(slots=True)
class _TxlEvent:
    """State of the event a translator is relaying."""

    code: int
    in_segments: list[int]
    out_start: int
    out_segment: int = 0
    first: bool = True


class TelephoneEventTranslator:
    """Relays telephone-events from one clock rate to another (browser /48000 <-> trunk /8000).

    Durations and timestamps are scaled by to_rate/from_rate (1/6 or 6). Timestamps map through an anchor
    pair (``from_base`` on the input leg matches ``to_base`` on the output leg, e.g. the two legs' RTP
    timestamps of the same media instant; ``rebase`` moves it). Long events are re-segmented for the output
    clock: input segments are joined, and an output duration beyond 0xFFFF opens a new output segment, so a
    1.5 s press from a trunk becomes two /48000 segments and a browser's segmented press becomes one /8000 event.
    """

    def __init__(self, from_rate: int, to_rate: int, from_base: int = 0, to_base: int = 0) -> None:
        """Configure the two clock rates and the timestamp anchor pair."""
        self.from_rate = from_rate
        self.to_rate = to_rate
        self.from_base = from_base & _TS_MASK
        self.to_base = to_base & _TS_MASK
        self.stale_window = 5 * from_rate  # packets up to 5 s older than the current event are stragglers
        self._cur: _TxlEvent | None = None

    def reset(self) -> None:
        """Forget the event being relayed (new SSRC on the input leg)."""
        self._cur = None

    def rebase(self, from_base: int, to_base: int) -> None:
        """Move the timestamp anchor pair (after either leg's timestamps jump)."""
        self.from_base = from_base & _TS_MASK
        self.to_base = to_base & _TS_MASK

    def map_timestamp(self, timestamp: int) -> int:
        """Map an input-leg timestamp to the output leg."""
        return rescale_timestamp(timestamp, self.from_rate, self.to_rate, self.from_base, self.to_base)

    def translate(self, payload: bytes, timestamp: int, marker: bool) -> list[DtmfPacket]:
        """Map one received packet to the packets to send on the other leg (one, or two at a segment edge)."""
        ev = decode_telephone_event(payload)
        timestamp &= _TS_MASK
        cur = self._cur
        segment = -1
        if cur is not None and ev.event == cur.code:
            if timestamp in cur.in_segments:
                segment = cur.in_segments.index(timestamp)
            elif timestamp == _ts_add(cur.in_segments[-1], MAX_DURATION) and not marker:
                cur.in_segments.append(timestamp)
                segment = len(cur.in_segments) - 1
        if segment < 0:
            if cur is not None and -self.stale_window <= _ts_diff(timestamp, cur.in_segments[0]) < 0:
                # a straggler of an older event: map it on its own, the far receiver will drop it
                dur = min(rescale_duration(ev.duration, self.from_rate, self.to_rate), MAX_DURATION)
                ev2 = TelephoneEvent(ev.event, ev.end, ev.volume, dur)
                return [DtmfPacket(ev2, self.map_timestamp(timestamp), False)]
            cur = self._cur = _TxlEvent(ev.event, [timestamp], self.map_timestamp(timestamp))
            segment = 0
        total = rescale_duration(segment * MAX_DURATION + ev.duration, self.from_rate, self.to_rate)
        out_segment = max(0, (total - 1) // MAX_DURATION)
        out: list[DtmfPacket] = []
        while cur.out_segment < out_segment:
            closing = TelephoneEvent(ev.event, False, ev.volume, MAX_DURATION)
            out.append(DtmfPacket(closing, _ts_add(cur.out_start, cur.out_segment * MAX_DURATION), cur.first))
            cur.first = False
            cur.out_segment += 1
        mapped = TelephoneEvent(ev.event, ev.end, ev.volume, total - out_segment * MAX_DURATION)
        out.append(DtmfPacket(mapped, _ts_add(cur.out_start, out_segment * MAX_DURATION), cur.first))
        cur.first = False
        return out


# --------------------------------------------------------------------------------------------------------------
# Goertzel: pure Python, numpy, numpy batched
# --------------------------------------------------------------------------------------------------------------


def goertzel_powers_py(
    frame: Sequence[float], freqs: Sequence[float] = DETECTOR_FREQS, sample_rate: int = 8000
) -> list[float]:
    """|DFT|^2 of a frame at each frequency by the Goertzel recursion in pure Python (the reference path)."""
    out = []
    for f in freqs:
        coeff = 2.0 * math.cos(2.0 * math.pi * f / sample_rate)
        s1 = s2 = 0.0
        for x in frame:
            s1, s2 = x + coeff * s1 - s2, s1
        out.append(s1 * s1 + s2 * s2 - coeff * s1 * s2)
    return out


_BASIS_CACHE: dict[tuple[int, int, tuple[float, ...], str], np.ndarray] = {}


def _basis(n: int, sample_rate: int, freqs: Sequence[float], dtype: str = "float64") -> np.ndarray:
    """The (2F, n) cos/sin basis whose products with a frame are the Goertzel bins' real/imaginary parts."""
    key = (n, sample_rate, tuple(freqs), dtype)
    b = _BASIS_CACHE.get(key)
    if b is None:
        w = 2.0 * np.pi * np.asarray(freqs, dtype=np.float64)[:, None] / sample_rate
        t = np.arange(n, dtype=np.float64)[None, :]
        b = np.ascontiguousarray(np.vstack([np.cos(w * t), np.sin(w * t)]).astype(dtype))
        b.setflags(write=False)
        _BASIS_CACHE[key] = b
    return b


def goertzel_powers_np(
    frame: np.ndarray, freqs: Sequence[float] = DETECTOR_FREQS, sample_rate: int = 8000
) -> np.ndarray:
    """The same |DFT|^2 bins for one frame with numpy: one (2F, n) x (n,) product with a cached basis."""
    x = np.asarray(frame, dtype=np.float64)
    y = _basis(x.shape[0], sample_rate, freqs) @ x
    nf = len(freqs)
    re, im = y[:nf], y[nf:]
    return re * re + im * im


def _goertzel_bins_t(x: np.ndarray, freqs: Sequence[float], sample_rate: int, dtype: str) -> np.ndarray:
    """Bins in (F, L) layout (each bin a contiguous row over the legs), the form the vectorised checks want."""
    y = _basis(x.shape[1], sample_rate, freqs, dtype) @ x.T
    nf = len(freqs)
    re, im = y[:nf], y[nf:]
    return re * re + im * im


def goertzel_powers_batch(
    frames: np.ndarray, freqs: Sequence[float] = DETECTOR_FREQS, sample_rate: int = 8000, dtype: str = "float64"
) -> np.ndarray:
    """The |DFT|^2 bins of many legs' frames (L, n) in one matmul -> (L, F); the media clock's per-tick call."""
    return _goertzel_bins_t(np.asarray(frames, dtype=dtype), freqs, sample_rate, dtype).T


# --------------------------------------------------------------------------------------------------------------
# Validity checks
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtmfDetectorConfig:
    """Thresholds of the in-band detector (defaults in the spirit of ITU-T Q.24 / spandsp / Asterisk).

    Twist naming follows spandsp: forward (normal) twist = low/row group louder than the high/column group,
    reverse twist = high group louder.
    """

    min_level_dbm0: float = -30.0  # each tone at least this loud
    forward_twist_db: float = 8.0  # row may exceed column by this much
    reverse_twist_db: float = 4.0  # column may exceed row by this much
    relative_peak_db: float = 8.0  # the best row (column) must beat the other rows (columns) by this much
    min_signal_ratio: float = 0.7  # (row + column tone energy) / frame energy
    row_harmonic_db: float = 6.0  # 2nd harmonic of the row tone must be this far below it (near columns: lenient)
    col_harmonic_db: float = 12.0  # same for the column tone
    min_frames: int = 2  # 40 ms at 20 ms frames
    pause_frames: int = 2  # 40 ms of anything else ends a digit (inter-digit pause)


def _db(x: float) -> float:
    """Power ratio for a decibel figure."""
    return 10.0 ** (x / 10.0)


def _thresholds(cfg: DtmfDetectorConfig, n: int) -> tuple[float, float, float, float, float, float, float]:
    """Linear thresholds for a frame of n samples (tone powers are normalised to the tone's energy)."""
    amp = DBM0_PEAK * 10.0 ** (cfg.min_level_dbm0 / 20.0)
    return (
        amp * amp * n / 2.0,
        _db(cfg.forward_twist_db),
        _db(cfg.reverse_twist_db),
        _db(cfg.relative_peak_db),
        cfg.min_signal_ratio,
        _db(cfg.row_harmonic_db),
        _db(cfg.col_harmonic_db),
    )


def _judge(
    p: Sequence[float], energy: float, th: tuple[float, ...], harmonics: Callable[[int, int], tuple[float, float]]
) -> int:
    """The validity checks on one frame's 8 normalised tone powers; harmonics(r, c) is asked only if needed."""
    min_energy, fwd, rev, rel, ratio, hrow, hcol = th
    rows, cols = p[:4], p[4:8]
    r = max(range(4), key=rows.__getitem__)
    c = max(range(4), key=cols.__getitem__)
    pr, pc = rows[r], cols[c]
    if pr < min_energy or pc < min_energy:
        return -1
    if pr > pc * fwd or pc > pr * rev:
        return -1
    if any(rows[i] * rel > pr for i in range(4) if i != r) or any(cols[i] * rel > pc for i in range(4) if i != c):
        return -1
    if pr + pc < ratio * energy:
        return -1
    h_row, h_col = harmonics(r, c)
    if h_row * hrow > pr or h_col * hcol > pc:
        return -1
    return int(_CODE_OF_CELL[r, c])


def classify_frame_py(
    frame: Sequence[float], cfg: DtmfDetectorConfig = DtmfDetectorConfig(), sample_rate: int = 8000
) -> int:
    """The event code (0-15) a frame holds under the validity checks, or -1; pure Python reference."""
    n = len(frame)
    scale = 2.0 / n
    p = [v * scale for v in goertzel_powers_py(frame, ROW_FREQS + COL_FREQS, sample_rate)]
    energy = 0.0
    for x in frame:
        energy += x * x

    def harmonics(r: int, c: int) -> tuple[float, float]:
        """Second-harmonic powers of the chosen row and column, computed only for candidate frames."""
        h = goertzel_powers_py(frame, (2 * ROW_FREQS[r], 2 * COL_FREQS[c]), sample_rate)
        return h[0] * scale, h[1] * scale

    return _judge(p, energy, _thresholds(cfg, n), harmonics)


def classify_powers(
    powers: np.ndarray, energy: np.ndarray, n: int, cfg: DtmfDetectorConfig = DtmfDetectorConfig()
) -> np.ndarray:
    """Vectorised validity checks: (L, 16) bins + (L,) frame energies -> (L,) event codes, -1 for none."""
    return _classify_bins_t(np.ascontiguousarray(np.asarray(powers).T), np.asarray(energy), n, cfg)


def _classify_bins_t(pt: np.ndarray, energy: np.ndarray, n: int, cfg: DtmfDetectorConfig) -> np.ndarray:
    """classify_powers on (16, L) bins: every check is a handful of whole-row numpy operations."""
    min_energy, fwd, rev, rel, ratio, hrow, hcol = _thresholds(cfg, n)
    p = pt * (2.0 / n)
    rows, cols = p[0:4], p[4:8]
    r = rows.argmax(axis=0)
    c = cols.argmax(axis=0)
    pr = rows.max(axis=0)
    pc = cols.max(axis=0)
    ok = (pr >= min_energy) & (pc >= min_energy)
    ok &= (pr <= pc * fwd) & (pc <= pr * rev)
    # relative peak: no other tone of the group within rel of the best (the best itself is discounted)
    ok &= (rows * rel > pr).sum(axis=0) == (pr * rel > pr)
    ok &= (cols * rel > pc).sum(axis=0) == (pc * rel > pc)
    ok &= pr + pc >= ratio * energy
    legs = np.arange(p.shape[1])
    ok &= (p[8 + r, legs] * hrow <= pr) & (p[12 + c, legs] * hcol <= pc)
    return np.where(ok, _CODE_OF_CELL[r, c], -1).astype(np.int8)


# --------------------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------------------


class DtmfDetector:
    """In-band DTMF detector for one leg: 20 ms frames of 8 kHz int16 in, digit events out, each digit once.

    A digit starts after ``min_frames`` consecutive valid frames of the same key (40 ms) and ends after
    ``pause_frames`` frames without it (or when another key holds for ``min_frames``). A single dropped frame
    inside a tone does not split it. Timestamps are sample counts since the detector started (8 kHz units).
    Frames are judged whole, so a 40 ms tone straddling three frames may be missed; tones of 50 ms or more are
    always seen (Q.24 senders use >= 40 ms, typically 70-100 ms).
    """

    def __init__(
        self,
        config: DtmfDetectorConfig | None = None,
        backend: Literal["numpy", "python"] = "numpy",
        sample_rate: int = 8000,
    ) -> None:
        """Pick the thresholds and the Goertzel path (numpy by default, pure Python as the reference)."""
        if backend not in ("numpy", "python"):
            raise ValueError(f"unknown backend {backend!r}")
        self.config = config or DtmfDetectorConfig()
        self.backend = backend
        self.sample_rate = sample_rate
        self._frame = 0
        self._samples = 0
        self._last = -1
        self._run = 0
        self._active = -1
        self._start = 0
        self._last_hit = 0
        self._miss = 0
        self._n = 0
        self._th: tuple[float, ...] = ()
        self._th_n = -1

    def classify(self, frame: np.ndarray | Sequence[int]) -> int:
        """The event code one frame holds, or -1 (no state change)."""
        if self.backend == "python":
            return classify_frame_py([float(v) for v in frame], self.config, self.sample_rate)
        x = np.asarray(frame, dtype=np.float64)
        n = x.shape[0]
        p = (goertzel_powers_np(x, DETECTOR_FREQS, self.sample_rate) * (2.0 / n)).tolist()
        th = self._th if self._th_n == n else self._thresholds_for(n)
        return _judge(p, float(x @ x), th, lambda r, c: (p[8 + r], p[12 + c]))

    def thresholds(self, n: int = 160) -> tuple[float, ...]:
        """The linear thresholds of the validity checks for frames of n samples (min energy, forward and
        reverse twist, relative peak, signal ratio, row and column harmonic): what the C tick judges with."""
        return self._th if self._th_n == n else self._thresholds_for(n)

    def _thresholds_for(self, n: int) -> tuple[float, ...]:
        """Cache the linear thresholds for frames of n samples."""
        self._th = _thresholds(self.config, n)
        self._th_n = n
        return self._th

    def process_frame(self, frame: np.ndarray | Sequence[int]) -> list[DtmfEvent]:
        """Feed the next frame; returns the DtmfDigitStarted/DtmfDigitEnded events it completes."""
        n = len(frame)
        self._n = n
        return self.step(self.classify(frame), n)

    def step(self, code: int, n: int = 160) -> list[DtmfEvent]:
        """Advance the digit state machine with one frame's classification (code or -1) of n samples."""
        cfg = self.config
        out: list[DtmfEvent] = []
        f = self._frame
        if code == self._last:
            self._run += 1
        else:
            self._last = code
            self._run = 1
        if self._active >= 0:
            if code == self._active:
                self._miss = 0
                self._last_hit = f
            else:
                self._miss += 1
                if self._miss >= cfg.pause_frames or (code >= 0 and self._run >= cfg.min_frames):
                    out.append(self._ended(n))
        if self._active < 0 and code >= 0 and self._run >= cfg.min_frames:
            self._active = code
            self._start = f - self._run + 1
            self._last_hit = f
            self._miss = 0
            out.append(DtmfDigitStarted(DTMF_DIGITS[code], self._start * n, self.sample_rate))
        self._frame += 1
        return out

    @property
    def idle(self) -> bool:
        """No digit is sounding (frames judged silent change nothing but the counters: ``advance_silent``)."""
        return self._active < 0

    def advance_silent(self, frames: int, n: int = 160) -> None:
        """What ``step(-1)`` does ``frames`` times while ``idle``: the C transcoding tick judges frames itself
        and hands the path back only for one that holds a key (then ``step`` is called with its code)."""
        if frames <= 0:
            return
        if not self.idle:
            raise ValueError("advance_silent needs an idle detector (a digit is sounding)")
        if self._last == -1:
            self._run += frames
        else:
            self._last = -1
            self._run = frames
        self._frame += frames
        self._n = n

    def _ended(self, n: int) -> DtmfDigitEnded:
        """Close the active digit."""
        code = self._active
        self._active = -1
        dur = (self._last_hit - self._start + 1) * n
        return DtmfDigitEnded(DTMF_DIGITS[code], self._start * n, dur, self.sample_rate, "silence")

    def flush(self) -> list[DtmfEvent]:
        """End a digit still sounding (at end of call), so every Started gets its Ended."""
        return [self._ended(self._n or 160)] if self._active >= 0 else []


class DtmfDetectorBank:
    """In-band detection for many legs at once: one (L, 160) frame matrix per media tick, all of it vectorised.

    Goertzel bins (one matmul), validity checks and the per-leg digit state machines run as numpy array
    operations; Python only loops over the legs that produced an event this tick. Same rules as DtmfDetector.
    """

    def __init__(
        self, legs: int, config: DtmfDetectorConfig | None = None, sample_rate: int = 8000, dtype: str = "float64"
    ) -> None:
        """Allocate state for ``legs`` legs (rows of the frame matrix)."""
        self.config = config or DtmfDetectorConfig()
        self.sample_rate = sample_rate
        self.dtype = dtype
        self.legs = legs
        self._frame = 0
        self._last = np.full(legs, -1, np.int8)
        self._run = np.zeros(legs, np.int64)
        self._active = np.full(legs, -1, np.int8)
        self._start = np.zeros(legs, np.int64)
        self._last_hit = np.zeros(legs, np.int64)
        self._miss = np.zeros(legs, np.int64)

    def reset_leg(self, leg: int) -> None:
        """Clear one leg's state (a new call reuses the row)."""
        self._last[leg] = -1
        self._run[leg] = 0
        self._active[leg] = -1
        self._miss[leg] = 0

    def classify(self, frames: np.ndarray) -> np.ndarray:
        """Event code per leg for one tick's (L, n) frames, -1 where none."""
        x = np.asarray(frames, dtype=self.dtype)
        pt = _goertzel_bins_t(x, DETECTOR_FREQS, self.sample_rate, self.dtype)
        energy = np.einsum("ij,ij->i", x, x)
        return _classify_bins_t(pt, energy, x.shape[1], self.config)

    def process(self, frames: np.ndarray) -> list[tuple[int, DtmfEvent]]:
        """Feed one tick of frames (L, n); returns (leg, event) pairs for the legs whose digit started or ended."""
        frames = np.asarray(frames)
        if frames.shape[0] != self.legs:
            raise ValueError(f"expected {self.legs} rows, got {frames.shape[0]}")
        return self.step(self.classify(frames), frames.shape[1])

    def step(self, codes: np.ndarray, n: int = 160) -> list[tuple[int, DtmfEvent]]:
        """Advance all legs' state machines with one tick's classifications."""
        cfg = self.config
        f = self._frame
        c = np.asarray(codes, dtype=np.int8)
        same = c == self._last
        self._run = np.where(same, self._run + 1, 1)
        self._last = c
        act = self._active >= 0
        hit = act & (c == self._active)
        self._miss = np.where(hit, 0, np.where(act, self._miss + 1, self._miss))
        self._last_hit = np.where(hit, f, self._last_hit)
        out: list[tuple[int, DtmfEvent]] = []
        end = act & ~hit & ((self._miss >= cfg.pause_frames) | ((c >= 0) & (self._run >= cfg.min_frames)))
        if end.any():
            for leg in np.flatnonzero(end).tolist():
                start = int(self._start[leg])
                dur = (int(self._last_hit[leg]) - start + 1) * n
                digit = DTMF_DIGITS[int(self._active[leg])]
                out.append((leg, DtmfDigitEnded(digit, start * n, dur, self.sample_rate, "silence")))
            self._active[end] = -1
        begin = (self._active < 0) & (c >= 0) & (self._run >= cfg.min_frames)
        if begin.any():
            legs = np.flatnonzero(begin)
            self._active[legs] = c[legs]
            self._start[legs] = f - self._run[legs] + 1
            self._last_hit[legs] = f
            self._miss[legs] = 0
            for leg in legs.tolist():
                digit = DTMF_DIGITS[int(c[leg])]
                out.append((leg, DtmfDigitStarted(digit, int(self._start[leg]) * n, self.sample_rate)))
        self._frame += 1
        return out


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------


def dtmf_tone(
    digit: str,
    duration_ms: float,
    sample_rate: int = 8000,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
) -> np.ndarray:
    """A DTMF key as int16 samples: row + column sines, each at level_dbm0; twist_db > 0 makes the column quieter."""
    r, c = _CELL_OF_CODE[digit_to_event(digit)]
    n = round(duration_ms * sample_rate / 1000)
    t = np.arange(n, dtype=np.float64) / sample_rate
    a_row = DBM0_PEAK * 10.0 ** (level_dbm0 / 20.0)
    a_col = DBM0_PEAK * 10.0 ** ((level_dbm0 - twist_db) / 20.0)
    x = a_row * np.sin(2 * np.pi * ROW_FREQS[r] * t) + a_col * np.sin(2 * np.pi * COL_FREQS[c] * t)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def dtmf_frames(
    digits: Iterable[str],
    tone_ms: float = 100.0,
    pause_ms: float = 100.0,
    sample_rate: int = 8000,
    frame_ms: int = 20,
    level_dbm0: float = -10.0,
    lead_ms: float = 0.0,
) -> Iterator[np.ndarray]:
    """20 ms int16 frames playing a digit sequence with pauses (after lead_ms of silence); the last is zero-padded."""
    frame_n = sample_rate * frame_ms // 1000
    parts = [np.zeros(round(lead_ms * sample_rate / 1000), np.int16)]
    for d in digits:
        parts.append(dtmf_tone(d, tone_ms, sample_rate, level_dbm0))
        parts.append(np.zeros(round(pause_ms * sample_rate / 1000), np.int16))
    signal = np.concatenate(parts)
    pad = (-len(signal)) % frame_n
    if pad:
        signal = np.concatenate([signal, np.zeros(pad, np.int16)])
    for i in range(0, len(signal), frame_n):
        yield signal[i : i + frame_n]
