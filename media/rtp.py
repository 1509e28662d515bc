"""RTP packets (RFC 3550 §5, RFC 3551), sans-IO.

`RtpPacket` is the reference path: a full parse with every length check and a serializer. The relay
path avoids building objects: `peek_header` unpacks the fixed header with one struct call and
`rewrite_header` repacks it with a new sequence/timestamp/SSRC. `is_rtcp` demultiplexes rtcp-mux
(RFC 5761 §4). `RtpSender` holds the state of one outgoing stream, including the offset mapping that
keeps the bridge's SSRC/sequence/timestamp continuous when the source behind it changes.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

__all__ = [
    "RtpError",
    "RtpPacket",
    "RtpSender",
    "SequenceExtender",
    "is_rtcp",
    "peek_header",
    "rewrite_header",
    "seq_add",
    "seq_diff",
    "seq_lt",
    "ts_diff",
]

RTP_VERSION = 2
HEADER_SIZE = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

_HDR = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")
_unpack_hdr = _HDR.unpack_from
_pack_hdr = _HDR.pack


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet (the message says which check failed)."""


# -- sequence and timestamp arithmetic ------------------------------------------------------------
def seq_add(seq: int, n: int) -> int:
    """seq + n modulo 2^16 (sequence numbers wrap)."""
    return (seq + n) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_lt(a: int, b: int) -> bool:
    """Whether sequence number a comes before b, modulo 2^16."""
    return seq_diff(a, b) < 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class SequenceExtender:
    """Turns 16-bit sequence numbers into monotonic extended ones (cycles << 16 | seq), tolerating reordering."""

    __slots__ = ("highest",)

    def __init__(self) -> None:
        self.highest: int | None = None

    def extend(self, seq: int) -> int:
        """Extended sequence number of seq, taken as the nearest one to the highest seen so far."""
        highest = self.highest
        if highest is None:
            self.highest = seq
            return seq
        ext = highest + (((seq - highest + 0x8000) & 0xFFFF) - 0x8000)
        if ext > highest:
            self.highest = ext
        return ext


# -- the fixed header, fast path ------------------------------------------------------------------
def peek_header(data: bytes) -> tuple[int, int, int, int, bool]:
    """(payload_type, sequence, timestamp, ssrc, marker) of an RTP datagram, without building a packet."""
    if len(data) < HEADER_SIZE:
        raise RtpError(f"RTP packet too short: {len(data)} bytes, the fixed header needs {HEADER_SIZE}")
    b0, b1, seq, ts, ssrc = _unpack_hdr(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    return b1 & 0x7F, seq, ts, ssrc, b1 > 0x7F


def rtp_payload(packet: bytes) -> bytes:
    """The payload of an RTP packet (CSRCs, header extension and padding skipped)."""
    b0 = packet[0]
    if b0 == 0x80:
        return packet[HEADER_SIZE:]
    pos = HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10 and len(packet) >= pos + 4:
        pos += 4 + 4 * ((packet[pos + 2] << 8) | packet[pos + 3])
    end = len(packet) - (packet[-1] if b0 & 0x20 and packet[-1] <= len(packet) - pos else 0)
    return packet[pos:end]


def rewrite_header(data: bytes, seq: int, ts: int, ssrc: int, pt: int | None = None) -> bytes:
    """Copy of an RTP datagram with a new sequence number, timestamp, SSRC (and payload type); the rest is kept."""
    b1 = data[1] if pt is None else (data[1] & 0x80) | (pt & 0x7F)
    return _pack_hdr(data[0], b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF) + data[12:]


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on an rtcp-mux port is RTCP: second byte 192..223, RTP PT 64-95 (RFC 5761 §4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# -- the full packet, reference path ---------------------------------------------------------------
@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1); `padding` is the number of padding octets including the count octet."""

    payload_type: int = 0
    sequence: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrcs: list[int] = field(default_factory=list)
    extension: tuple[int, bytes] | None = None   # (profile-defined 16 bits, data: a multiple of 4 octets)
    padding: int = 0
    version: int = RTP_VERSION

    @classmethod
    def parse(cls, data: bytes) -> "RtpPacket":
        """Parse and validate one RTP datagram; raises RtpError naming the check that failed."""
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {size} bytes, the fixed header needs {HEADER_SIZE}")
        b0, b1, seq, ts, ssrc = _unpack_hdr(data)
        if b0 == 0x80:                      # the common case: no padding, extension or CSRCs
            return cls(b1 & 0x7F, seq, ts, ssrc, data[12:], b1 > 0x7F, [], None, 0, 2)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version {version}, expected 2")
        cc = b0 & 0x0F
        pos = HEADER_SIZE + 4 * cc
        if pos > size:
            raise RtpError(f"CSRC count {cc} needs {pos} bytes, packet has {size}")
        csrcs = list(struct.unpack_from(f"!{cc}I", data, HEADER_SIZE)) if cc else []
        extension = None
        if b0 & 0x10:
            if pos + 4 > size:
                raise RtpError(f"extension bit set but only {size - pos} bytes after the CSRCs, need 4")
            profile, words = _EXT.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > size:
                raise RtpError(f"extension length {words} words runs past the packet end ({end} > {size})")
            extension = (profile, data[pos:end])
            pos = end
        padding = 0
        end = size
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("padding bit set but the padding count octet is 0")
            if padding > size - pos:
                raise RtpError(f"padding count {padding} exceeds the {size - pos} bytes after the header")
            end = size - padding
        return cls(b1 & 0x7F, seq, ts, ssrc, data[pos:end], b1 > 0x7F, csrcs, extension, padding, version)

    def serialize(self) -> bytes:
        """Wire form of the packet; raises RtpError when a field cannot be encoded."""
        cc = len(self.csrcs)
        if cc > 15:
            raise RtpError(f"{cc} CSRCs, at most 15 fit")
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} is not 7 bits")
        b0 = (RTP_VERSION << 6) | cc
        if self.padding:
            if not 1 <= self.padding <= 255:
                raise RtpError(f"padding {self.padding} is not 1..255")
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        parts = [_pack_hdr(b0, (0x80 if self.marker else 0) | self.payload_type, self.sequence & 0xFFFF,
                           self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrcs))
        if self.extension is not None:
            profile, ext = self.extension
            if len(ext) % 4:
                raise RtpError(f"extension data is {len(ext)} bytes, not a multiple of 4")
            parts.append(_EXT.pack(profile, len(ext) // 4))
            parts.append(ext)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


# -- an outgoing stream ----------------------------------------------------------------------------
class RtpSender:
    """One outgoing RTP stream: random initial SSRC/seq/ts, timestamp advance, talkspurt markers, source switching.

    `relay` keeps the relayed packets' payload type (telephone-event stays telephone-event) unless told
    otherwise; `payload_type` is what `packetize` stamps (None: a relay-only stream).
    """

    def __init__(
        self,
        payload_type: int | None,
        clock_rate: int,
        *,
        frame_ms: int = 20,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.SystemRandom()
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.frame_samples = clock_rate * frame_ms // 1000
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        self.sequence = rng.getrandbits(16) if sequence is None else sequence & 0xFFFF   # next to send
        self.timestamp = rng.getrandbits(32) if timestamp is None else timestamp & 0xFFFFFFFF  # next to send
        self.packets_sent = 0
        self.octets_sent = 0                       # payload octets, as RTCP SR counts them
        self.last_timestamp: int | None = None     # RTP timestamp of the last packet sent
        self.last_sent_at: float | None = None     # `now` of the last packet sent
        self.marker_next = True                   # the first packet starts a talkspurt
        self._source: int | None = None            # SSRC being relayed
        self._previous: tuple[int, int, int] | None = None   # (ssrc, seq offset, ts offset) it replaced
        self._seq_offset = 0
        self._ts_offset = 0
        self._highest_out_seq: int | None = None

    def start_talkspurt(self) -> None:
        """Mark the next packet (first after silence/DTX) with the marker bit."""
        self.marker_next = True

    def forget_relayed_source(self) -> None:
        """Packets we numbered ourselves were sent: a relayed source coming back gets a fresh seq/ts mapping."""
        self._source = self._previous = None

    def packetize(self, payload: bytes, now: float | None = None, *, samples: int | None = None,
                  marker: bool = False) -> bytes:
        """Build the next packet of the stream for a frame we produced, then advance seq and timestamp."""
        m = marker or self.marker_next
        self.marker_next = False
        seq, ts = self.sequence, self.timestamp
        data = _pack_hdr(0x80, (0x80 if m else 0) | self.payload_type, seq, ts, self.ssrc) + payload
        self.sequence = (seq + 1) & 0xFFFF
        self.timestamp = (ts + (self.frame_samples if samples is None else samples)) & 0xFFFFFFFF
        self._account(ts, len(payload), now)
        self.forget_relayed_source()
        return data

    def skip(self, samples: int | None = None) -> None:
        """Advance the timestamp for a frame not sent (silence/DTX) so the timeline stays real time."""
        self.timestamp = (self.timestamp + (self.frame_samples if samples is None else samples)) & 0xFFFFFFFF
        self.marker_next = True

    def relay(self, data: bytes, now: float | None = None, pt: int | None = None) -> bytes:
        """Rewrite a received packet onto this stream: our SSRC, seq/ts continuous across source changes; PT kept."""
        if len(data) < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {len(data)} bytes, the fixed header needs {HEADER_SIZE}")
        b0, b1, seq, ts, ssrc = _unpack_hdr(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {b0 >> 6}, expected 2")
        if ssrc != self._source:
            prev = self._previous
            if prev is not None and prev[0] == ssrc:
                # a straggler of the source just replaced: map it as before (the receiver sees it as late)
                seq_off, ts_off = prev[1], prev[2]
                if pt is not None:
                    b1 = (b1 & 0x80) | pt
                self.packets_sent += 1
                self.octets_sent += len(data) - HEADER_SIZE
                return _pack_hdr(b0, b1, (seq + seq_off) & 0xFFFF, (ts + ts_off) & 0xFFFFFFFF, self.ssrc) + data[12:]
            self._switch_source(ssrc, seq, ts, now)
            b1 |= 0x80                                  # a new source starts a talkspurt for the receiver
        if pt is not None:
            b1 = (b1 & 0x80) | pt
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        out = _pack_hdr(b0, b1, out_seq, out_ts, self.ssrc) + data[12:]
        hi = self._highest_out_seq
        if hi is None or ((out_seq - hi + 0x8000) & 0xFFFF) - 0x8000 > 0:
            self._highest_out_seq = out_seq
            self.sequence = (out_seq + 1) & 0xFFFF
            self.timestamp = (out_ts + self.frame_samples) & 0xFFFFFFFF
            self.last_timestamp = out_ts
            if now is not None:
                self.last_sent_at = now
        self.packets_sent += 1
        self.octets_sent += len(data) - HEADER_SIZE   # header extension/CSRCs/padding included: close enough
        return out

    def relay_mapping(self) -> tuple[int, int, int, int | None] | None:
        """(source SSRC, sequence offset, timestamp offset, highest sequence sent or None) while a source is
        relayed onto this stream, else None: what a data plane needs to go on relaying it as ``relay`` does."""
        if self._source is None:
            return None
        return self._source, self._seq_offset, self._ts_offset, self._highest_out_seq

    def relayed(self, packets: int, octets: int, highest: int | None = None, last_timestamp: int = 0,
                sent_at: float | None = None) -> None:
        """Account packets of the current source that a data plane relayed by ``relay_mapping``; ``highest``
        is the new highest sequence number sent (with its timestamp and time) when it moved."""
        self.packets_sent += packets
        self.octets_sent += octets
        if highest is not None:
            self._highest_out_seq = highest
            self.sequence = (highest + 1) & 0xFFFF
            self.timestamp = (last_timestamp + self.frame_samples) & 0xFFFFFFFF
            self.last_timestamp = last_timestamp
            if sent_at is not None:
                self.last_sent_at = sent_at

    def _switch_source(self, ssrc: int, seq: int, ts: int, now: float | None) -> None:
        """Map a new source's seq/ts onto ours: next seq follows on, the timestamp advances by the time elapsed."""
        next_ts = self.timestamp
        if now is not None and self.last_sent_at is not None and self.last_timestamp is not None:
            elapsed = round((now - self.last_sent_at) * self.clock_rate)
            next_ts = (self.last_timestamp + max(elapsed, self.frame_samples)) & 0xFFFFFFFF
        if self._source is not None:
            self._previous = (self._source, self._seq_offset, self._ts_offset)
        self._source = ssrc
        self._seq_offset = (self.sequence - seq) & 0xFFFF
        self._ts_offset = (next_ts - ts) & 0xFFFFFFFF
        self._highest_out_seq = None
        self.marker_next = False

    def _account(self, ts: int, payload_len: int, now: float | None) -> None:
        """Count a sent packet for RTCP sender info."""
        self.packets_sent += 1
        self.octets_sent += payload_len
        self.last_timestamp = ts
        if now is not None:
            self.last_sent_at = now
