"""RTCP (RFC 3550 §6): SR, RR, SDES, BYE and compound packets; reception and sender statistics; the report interval.

Everything is sans-IO: `ReceptionStats` is fed (seq, RTP timestamp, arrival time) by the caller and turns
them into report blocks with the algorithms of RFC 3550 Appendix A.1 (sequence validation), A.3 (loss)
and A.8 (interarrival jitter); `SenderStats` keeps the counts and the NTP/RTP timestamp mapping an SR
carries; `RtcpInterval` draws the randomised report interval (§6.3, simplified) from an injectable RNG.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Callable, Union

__all__ = [
    "Bye",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpInterval",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SenderStats",
    "SourceDescription",
    "UnknownRtcp",
    "build_compound",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_compound",
    "round_trip_time",
    "unix_from_ntp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
SDES_CNAME = 1

NTP_EPOCH_OFFSET = 2_208_988_800        # seconds from 1900-01-01 to 1970-01-01

_COMMON = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")       # ssrc, ntp, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")        # ssrc, fraction|cumulative, ext highest seq, jitter, lsr, dlsr


class RtcpError(ValueError):
    """A datagram that is not a valid RTCP (compound) packet."""


# -- NTP time --------------------------------------------------------------------------------------
def ntp_from_unix(t: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) for a Unix time in seconds."""
    return int((t + NTP_EPOCH_OFFSET) * 4294967296.0) & 0xFFFFFFFFFFFFFFFF


def unix_from_ntp(ntp: int) -> float:
    """Unix time in seconds for a 64-bit NTP timestamp."""
    return ntp / 4294967296.0 - NTP_EPOCH_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, the unit of LSR (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip_time(block: "ReportBlock", arrival_ntp: int) -> float | None:
    """Round-trip time (s) from a report block about us and its NTP arrival time: A - LSR - DLSR; None without LSR."""
    if not block.lsr:
        return None
    rtt = (ntp_middle32(arrival_ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt > 0x80000000:           # negative: clocks or DLSR off; report nothing rather than garbage
        return None
    return rtt / 65536.0


# -- packets ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1) about the source `ssrc`."""

    ssrc: int
    fraction_lost: int = 0          # 8-bit fixed point, lost/expected * 256 over the last interval
    cumulative_lost: int = 0        # signed 24 bits (duplicates can make it negative)
    highest_seq: int = 0            # extended highest sequence number received
    jitter: int = 0                 # interarrival jitter in timestamp units
    lsr: int = 0                    # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0                   # delay since that SR, 1/65536 s

    def serialize(self) -> bytes:
        """Wire form (24 bytes)."""
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(self.ssrc, (self.fraction_lost & 0xFF) << 24 | lost, self.highest_seq & 0xFFFFFFFF,
                           self.jitter & 0xFFFFFFFF, self.lsr & 0xFFFFFFFF, self.dlsr & 0xFFFFFFFF)

    @classmethod
    def parse(cls, data: bytes, pos: int) -> "ReportBlock":
        """Read a block at pos."""
        ssrc, fl, hs, jit, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = fl & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, fl >> 24, lost, hs, jit, lsr, dlsr)


def _header(count: int, pt: int, body_len: int, padding: bool = False) -> bytes:
    """Common RTCP header for a body of body_len bytes (a multiple of 4)."""
    return _COMMON.pack(0x80 | (0x20 if padding else 0) | count, pt, body_len // 4)


@dataclass(slots=True)
class SenderReport:
    """SR (PT 200): sender info plus report blocks."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        """Wire form."""
        if len(self.reports) > 31:
            raise RtcpError("at most 31 report blocks fit in one SR")
        body = _SR_INFO.pack(self.ssrc, self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF, self.rtp_timestamp & 0xFFFFFFFF,
                             self.packet_count & 0xFFFFFFFF, self.octet_count & 0xFFFFFFFF)
        body += b"".join(r.serialize() for r in self.reports)
        return _header(len(self.reports), RTCP_SR, len(body)) + body


@dataclass(slots=True)
class ReceiverReport:
    """RR (PT 201): report blocks from a participant that did not send."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        """Wire form."""
        if len(self.reports) > 31:
            raise RtcpError("at most 31 report blocks fit in one RR")
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return _header(len(self.reports), RTCP_RR, len(body)) + body


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: a source and its (item type, value) items."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> bytes | None:
        """The CNAME item, if any."""
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value
        return None


@dataclass(slots=True)
class SourceDescription:
    """SDES (PT 202): chunks of source description items (CNAME is the one that matters)."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def cname(cls, ssrc: int, cname: str | bytes) -> "SourceDescription":
        """An SDES with a single CNAME item."""
        value = cname.encode() if isinstance(cname, str) else cname
        return cls([SdesChunk(ssrc, [(SDES_CNAME, value)])])

    def serialize(self) -> bytes:
        """Wire form; each chunk is null-terminated and padded to 32 bits."""
        if len(self.chunks) > 31:
            raise RtcpError("at most 31 SDES chunks fit in one packet")
        parts = []
        for chunk in self.chunks:
            buf = bytearray(struct.pack("!I", chunk.ssrc))
            for kind, value in chunk.items:
                if len(value) > 255:
                    raise RtcpError(f"SDES item of {len(value)} bytes, at most 255")
                buf += bytes((kind, len(value))) + value
            buf += b"\x00" * (4 - len(buf) % 4)          # END item plus padding, always at least one null
            parts.append(bytes(buf))
        body = b"".join(parts)
        return _header(len(self.chunks), RTCP_SDES, len(body)) + body


@dataclass(slots=True)
class Bye:
    """BYE (PT 203): sources leaving, with an optional reason."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes = b""

    def serialize(self) -> bytes:
        """Wire form."""
        if len(self.ssrcs) > 31:
            raise RtcpError("at most 31 sources fit in one BYE")
        body = struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        if self.reason:
            if len(self.reason) > 255:
                raise RtcpError("BYE reason longer than 255 bytes")
            reason = bytes((len(self.reason),)) + self.reason
            body += reason + b"\x00" * (-len(reason) % 4)
        return _header(len(self.ssrcs), RTCP_BYE, len(body)) + body


@dataclass(slots=True)
class UnknownRtcp:
    """Any other RTCP packet (APP, RTPFB, PSFB, XR...), kept as its count/subtype field and body."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        """Wire form."""
        if len(self.body) % 4:
            raise RtcpError("RTCP packet body must be a multiple of 4 bytes")
        return _header(self.count, self.packet_type, len(self.body)) + self.body


RtcpPacket = Union[SenderReport, ReceiverReport, SourceDescription, Bye, UnknownRtcp]


def build_compound(packets: list[RtcpPacket]) -> bytes:
    """Concatenate RTCP packets into one compound datagram."""
    return b"".join(p.serialize() for p in packets)


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram (RFC 3550 §6.1); raises RtcpError on a malformed packet."""
    packets: list[RtcpPacket] = []
    pos, size = 0, len(data)
    if size < 4:
        raise RtcpError(f"RTCP datagram too short: {size} bytes")
    while pos < size:
        if pos + 4 > size:
            raise RtcpError(f"{size - pos} trailing bytes after the last RTCP packet")
        b0, pt, words = _COMMON.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6} at offset {pos}, expected 2")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpError(f"RTCP packet at offset {pos} claims {4 + 4 * words} bytes, {size - pos} left")
        body_end = end
        if b0 & 0x20:
            if end != size:
                raise RtcpError("padding bit set on an RTCP packet that is not the last one")
            pad = data[end - 1]
            if pad == 0 or pad > end - pos - 4:
                raise RtcpError(f"bad RTCP padding count {pad}")
            body_end = end - pad
        count = b0 & 0x1F
        packets.append(_parse_one(pt, count, data, pos + 4, body_end))
        pos = end
    return packets


def _parse_one(pt: int, count: int, data: bytes, pos: int, end: int) -> RtcpPacket:
    """One RTCP packet body between pos and end."""
    if pt == RTCP_SR:
        if pos + 24 + 24 * count > end:
            raise RtcpError(f"SR with {count} report blocks is too short ({end - pos} bytes)")
        ssrc, ntp, rtp_ts, pc, oc = _SR_INFO.unpack_from(data, pos)
        blocks = [ReportBlock.parse(data, pos + 24 + 24 * i) for i in range(count)]
        return SenderReport(ssrc, ntp, rtp_ts, pc, oc, blocks)
    if pt == RTCP_RR:
        if pos + 4 + 24 * count > end:
            raise RtcpError(f"RR with {count} report blocks is too short ({end - pos} bytes)")
        (ssrc,) = struct.unpack_from("!I", data, pos)
        return ReceiverReport(ssrc, [ReportBlock.parse(data, pos + 4 + 24 * i) for i in range(count)])
    if pt == RTCP_SDES:
        chunks = []
        for _ in range(count):
            if pos + 4 > end:
                raise RtcpError("SDES chunk runs past the packet end")
            (ssrc,) = struct.unpack_from("!I", data, pos)
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("SDES chunk without an END item")
                kind = data[pos]
                if kind == 0:
                    pos = (pos + 4) & ~3          # END item, skip to the next 32-bit boundary
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("SDES item runs past the packet end")
                length = data[pos + 1]
                items.append((kind, bytes(data[pos + 2:pos + 2 + length])))
                pos += 2 + length
            chunks.append(SdesChunk(ssrc, items))
        return SourceDescription(chunks)
    if pt == RTCP_BYE:
        if pos + 4 * count > end:
            raise RtcpError(f"BYE with {count} sources is too short")
        ssrcs = list(struct.unpack_from(f"!{count}I", data, pos))
        pos += 4 * count
        reason = b""
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise RtcpError("BYE reason runs past the packet end")
            reason = bytes(data[pos + 1:pos + 1 + length])
        return Bye(ssrcs, reason)
    return UnknownRtcp(pt, count, bytes(data[pos:end]))


# -- statistics ------------------------------------------------------------------------------------
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16


class ReceptionStats:
    """Receiver statistics for one remote source (RFC 3550 A.1, A.3, A.8), turned into report blocks."""

    __slots__ = (
        "ssrc", "clock_rate", "probation", "max_seq", "cycles", "base_seq", "bad_seq", "received",
        "expected_prior", "received_prior", "transit", "jitter", "last_sr", "last_sr_arrival",
        "last_arrival", "min_sequential",
    )

    def __init__(self, ssrc: int, clock_rate: int, *, min_sequential: int = 1) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.min_sequential = min_sequential
        self.probation = min_sequential
        self.max_seq = -1
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.transit: float | None = None
        self.jitter = 0.0                       # timestamp units
        self.last_sr = 0                        # middle 32 bits of the last SR's NTP timestamp
        self.last_sr_arrival: float | None = None
        self.last_arrival: float | None = None

    def _init_seq(self, seq: int) -> None:
        """A.1 init_seq: (re)start counting at seq."""
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, seq: int, rtp_timestamp: int, arrival: float) -> bool:
        """Account one packet (A.1 update_seq + A.8 jitter); False when it is not valid (probation, big jump)."""
        if self.max_seq < 0:
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self.probation = self.min_sequential
        max_seq = self.max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if self.probation:
            if seq == (max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received = 1
                    self._jitter(rtp_timestamp, arrival)
                    return True
            else:
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < max_seq:
                self.cycles += RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:                 # two sequential packets: the source restarted
                self._init_seq(seq)
                self.transit = None
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered, counted
        self.received += 1
        # A.8, inlined on the per-packet path (see _jitter)
        self.last_arrival = arrival
        transit = arrival * self.clock_rate - rtp_timestamp
        last = self.transit
        self.transit = transit
        if last is not None:
            d = transit - last
            if d < 0:
                d = -d
            if d > 2147483648.0:
                d = abs(4294967296.0 - d)
            self.jitter += (d - self.jitter) * 0.0625
        return True

    def _jitter(self, rtp_timestamp: int, arrival: float) -> None:
        """A.8: J += (|D(i-1,i)| - J) / 16 with transit times in timestamp units."""
        self.last_arrival = arrival
        transit = arrival * self.clock_rate - rtp_timestamp
        last = self.transit
        self.transit = transit
        if last is not None:
            d = transit - last
            if d < 0:
                d = -d
            if d > 2147483648.0:                   # the timestamp wrapped between the two packets
                d = abs(4294967296.0 - d)
            self.jitter += (d - self.jitter) / 16.0

    def seq_state(self) -> tuple[int, int, int, int, int, int, float | None, float, float | None, int, int]:
        """The A.1/A.8 state ``update`` works on, for a data plane that goes on counting (media._relay.Rule):
        (probation, max_seq, cycles, base_seq, bad_seq, received, transit, jitter, last_arrival, clock_rate,
        min_sequential)."""
        return (self.probation, self.max_seq, self.cycles, self.base_seq, self.bad_seq, self.received,
                self.transit, self.jitter, self.last_arrival, self.clock_rate, self.min_sequential)

    def set_seq_state(self, state: tuple[int, int, int, int, int, int, float | None, float, float | None, int]) -> None:
        """Take back what a data plane counted: (probation, max_seq, cycles, base_seq, bad_seq, received,
        transit, jitter, last_arrival, reinit); ``reinit`` (it restarted the count) resets the interval counters."""
        (self.probation, self.max_seq, self.cycles, self.base_seq, self.bad_seq, self.received, self.transit,
         self.jitter, self.last_arrival, reinit) = state
        if reinit:
            self.expected_prior = 0
            self.received_prior = 0

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected so far (A.3)."""
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def cumulative_lost(self) -> int:
        """Packets lost so far, clamped to the signed 24-bit field (duplicates can make it negative)."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    @property
    def jitter_seconds(self) -> float:
        """Interarrival jitter in seconds."""
        return self.jitter / self.clock_rate

    def on_sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        """Remember an SR from this source for LSR/DLSR."""
        self.last_sr = ntp_middle32(ntp_timestamp)
        self.last_sr_arrival = arrival

    def report_block(self, now: float) -> ReportBlock:
        """A report block for the interval since the previous one (advances the interval counters)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        dlsr = 0
        if self.last_sr_arrival is not None:
            dlsr = int((now - self.last_sr_arrival) * 65536) & 0xFFFFFFFF
        return ReportBlock(self.ssrc, min(fraction, 255), self.cumulative_lost, self.extended_max & 0xFFFFFFFF,
                           int(self.jitter), self.last_sr, dlsr)


class SenderStats:
    """What an SR says about our stream: packet/octet counts and the NTP <-> RTP timestamp mapping."""

    __slots__ = ("clock_rate", "packet_count", "octet_count", "last_rtp_timestamp", "last_sent_at")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.packet_count = 0
        self.octet_count = 0
        self.last_rtp_timestamp: int | None = None
        self.last_sent_at: float | None = None

    def on_sent(self, rtp_timestamp: int, payload_len: int, now: float) -> None:
        """Count one RTP packet sent at `now` (payload octets only, as §6.4.1 asks)."""
        self.packet_count += 1
        self.octet_count += payload_len
        self.last_rtp_timestamp = rtp_timestamp
        self.last_sent_at = now

    def rtp_timestamp_at(self, now: float) -> int:
        """RTP timestamp corresponding to `now`, extrapolated from the last packet sent."""
        if self.last_rtp_timestamp is None or self.last_sent_at is None:
            return 0
        return (self.last_rtp_timestamp + round((now - self.last_sent_at) * self.clock_rate)) & 0xFFFFFFFF

    def sender_report(self, ssrc: int, now: float, unix_time: float,
                      reports: list[ReportBlock] | None = None) -> SenderReport:
        """An SR for `now`, whose wall-clock time is `unix_time`."""
        return SenderReport(ssrc, ntp_from_unix(unix_time), self.rtp_timestamp_at(now),
                            self.packet_count, self.octet_count, reports or [])


# -- the report interval ---------------------------------------------------------------------------
class RtcpInterval:
    """RTCP report interval (RFC 3550 §6.3, simplified): max(Tmin, members * avg size / bandwidth) x U[0.5, 1.5]."""

    def __init__(self, minimum: float = 5.0, *, rtcp_bandwidth: float | None = None,
                 rng: Callable[[], float] | None = None) -> None:
        self.minimum = minimum
        self.rtcp_bandwidth = rtcp_bandwidth        # octets per second; None: the minimum decides
        self.avg_rtcp_size = 128.0                  # octets, running average (§6.3.3)
        self.initial = True
        self._random = rng or random.random

    def on_packet(self, size: int) -> None:
        """Fold an RTCP packet's size (sent or received, with UDP/IP overhead) into the running average."""
        self.avg_rtcp_size += (size + 28 - self.avg_rtcp_size) / 16.0

    def next_interval(self, members: int = 2) -> float:
        """Seconds until the next report; the first one uses half the minimum (§6.2)."""
        tmin = self.minimum / 2 if self.initial else self.minimum
        self.initial = False
        td = tmin
        if self.rtcp_bandwidth:
            td = max(tmin, members * self.avg_rtcp_size / self.rtcp_bandwidth)
        return td * (0.5 + self._random())

    def schedule(self, now: float, members: int = 2) -> float:
        """The time of the next report after `now` (the caller's clock)."""
        return now + self.next_interval(members)
