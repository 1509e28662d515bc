"""A sans-IO RTP session for one plain-RTP leg (the SIP side of the bridge), shaped like aioquic's QuicConnection.

The adapter feeds `receive_datagram(data, addr, now)` with what arrives on the leg's RTP socket (and,
when RTCP is not muxed, on its RTCP socket with `rtcp_port=True`), sends what `datagrams_to_send(now)`
hands back, arms one timer from `get_timer()` and calls `handle_timer(now)` when it fires, and drains
typed events from `next_event()`.

Symmetric RTP (RFC 4961) with rtpengine-style learning: the SDP address is only a hint. The first RTP
packet from an acceptable source latches the session onto that address and media is sent there. With
`latch_ip_only`, only sources on the SDP's IP are acceptable (NAT may still change the port). A packet
from another address re-latches when the latched source has been silent for `relatch_timeout`, or when
it carries a new SSRC (a new source replaced the old: transfer, re-INVITE to another box); anything else
from another address is a stray and is dropped.

RTCP (RFC 3550 §6) goes out on the randomised interval: an SR while we send, else an RR, with report
blocks from `ReceptionStats`, plus an SDES CNAME; BYE on `close`. Wall-clock NTP time is `now +
ntp_offset`, so tests pin it.
"""
from __future__ import annotations

import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpInterval,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_from_unix,
    parse_compound,
    round_trip_time,
)
from .rtp import RtpError, RtpSender, is_rtcp, peek_header

__all__ = [
    "Datagram",
    "LatchChanged",
    "MediaTimeout",
    "RtcpReceived",
    "RtpReceived",
    "RtpSession",
    "SessionEvent",
    "SessionStats",
]

Addr = tuple[str, int]


class Datagram(NamedTuple):
    """A datagram to send; `rtcp` means: from the RTCP socket (only when RTCP is not muxed)."""

    data: bytes
    addr: Addr
    rtcp: bool = False


# -- events ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class RtpReceived:
    """An RTP packet accepted from the latched source (the datagram itself, and its header fields)."""

    data: bytes
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    addr: Addr
    arrival: float


@dataclass(slots=True)
class LatchChanged:
    """The session now sends to `new` (reason: "first" packet, "timeout" of the old source, new "ssrc")."""

    old: Addr | None
    new: Addr
    ssrc: int
    reason: str


@dataclass(slots=True)
class MediaTimeout:
    """No RTP accepted for `idle` seconds (raised once until RTP comes back)."""

    idle: float
    last_received: float | None


@dataclass(slots=True)
class RtcpReceived:
    """An RTCP compound packet from the peer, with the report about our stream and the round-trip time it gives."""

    packets: list[RtcpPacket]
    addr: Addr
    report: ReportBlock | None = None
    rtt: float | None = None


SessionEvent = RtpReceived | LatchChanged | MediaTimeout | RtcpReceived


@dataclass(slots=True)
class SessionStats:
    """Counters of one session."""

    rtp_received: int = 0
    rtcp_received: int = 0
    strays: int = 0          # datagrams from addresses we did not accept
    malformed: int = 0
    unsent: int = 0          # packets dropped because no remote address is known yet
    rtcp_sent: int = 0
    last_rtt: float | None = None
    remote_reports: list[ReportBlock] = field(default_factory=list)


class RtpSession:
    """One plain-RTP leg: latching, RTCP on the interval, timeout detection; sans-IO."""

    def __init__(
        self,
        *,
        clock_rate: int,
        now: float,
        payload_type: int | None = None,
        remote: Addr | None = None,
        remote_rtcp: Addr | None = None,
        rtcp_mux: bool = True,
        latch_ip_only: bool = False,
        relatch_timeout: float = 1.0,
        relatch_on_ssrc: bool = True,
        media_timeout: float | None = 30.0,
        rtcp_interval: float = 5.0,
        frame_ms: int = 20,
        cname: str | None = None,
        ssrc: int | None = None,
        rng: random.Random | None = None,
        ntp_offset: float | None = None,
    ) -> None:
        rng = rng or random.SystemRandom()
        self.clock_rate = clock_rate
        self.rtcp_mux = rtcp_mux
        self.latch_ip_only = latch_ip_only
        self.relatch_timeout = relatch_timeout
        self.relatch_on_ssrc = relatch_on_ssrc
        self.media_timeout = media_timeout
        self.cname = cname or f"{secrets.token_hex(8)}@callpath"
        self.sender = RtpSender(payload_type, clock_rate, frame_ms=frame_ms, ssrc=ssrc, rng=rng)
        self.ntp_offset = time.time() - time.monotonic() if ntp_offset is None else ntp_offset
        self.stats = SessionStats()
        self.sources: dict[int, ReceptionStats] = {}
        self._hint = remote
        self._rtcp_hint = remote_rtcp
        self._remote: Addr | None = remote
        self._remote_rtcp: Addr | None = None          # learned from RTCP received on the RTCP port
        self._latched = False
        self._latched_ssrc: int | None = None
        self._last_rtp: float | None = None
        self._timed_out = False
        self._media_expected = True                # False while the peer's SDP says it does not send (hold)
        self._timeout_from = now                   # the media timeout counts from here or the last packet
        self._interval = RtcpInterval(rtcp_interval, rng=rng.random)
        self._rtcp_at: float | None = now + self._interval.next_interval()
        self._last_report_at = now
        self._sent_at_last_report = 0
        self._closed = False
        self._out: list[Datagram] = []
        self._events: deque[SessionEvent] = deque()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def ssrc(self) -> int:
        """Our SSRC."""
        return self.sender.ssrc

    @property
    def remote(self) -> Addr | None:
        """Where RTP goes: the latched address, else the SDP hint."""
        return self._remote

    @property
    def latched(self) -> bool:
        """Whether the remote address was learned from received RTP."""
        return self._latched

    @property
    def remote_rtcp(self) -> Addr | None:
        """Where RTCP goes: the RTP address when muxed, else the learned/hinted RTCP address or RTP port + 1."""
        if self.rtcp_mux:
            return self._remote
        if self._remote_rtcp is not None:
            return self._remote_rtcp
        if self._rtcp_hint is not None and not self._latched:
            return self._rtcp_hint
        if self._remote is None:
            return None
        return (self._remote[0], self._remote[1] + 1)

    @property
    def latched_source(self) -> tuple[Addr, int] | None:
        """(address, SSRC) whose RTP is taken without any latching decision, once latched (None before)."""
        if not self._latched or self._remote is None or self._latched_ssrc is None or self._closed:
            return None
        return self._remote, self._latched_ssrc

    def forwarded(self, packets: int, last_arrival: float) -> None:
        """Account RTP of the latched source that a data plane took (and relayed) without this session."""
        if packets:
            self.stats.rtp_received += packets
            self._last_rtp = last_arrival
            self._timed_out = False

    def set_remote(self, remote: Addr | None, remote_rtcp: Addr | None = None) -> None:
        """New SDP address (re-INVITE): a fresh hint, and learning starts over."""
        self._hint = self._remote = remote
        self._rtcp_hint = remote_rtcp
        self._remote_rtcp = None
        self._latched = False
        self._latched_ssrc = None

    def _acceptable(self, addr: Addr) -> bool:
        """Whether a source address may be latched onto."""
        return not (self.latch_ip_only and self._hint is not None and addr[0] != self._hint[0])

    # -- input -------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Addr, now: float, *, rtcp_port: bool = False) -> None:
        """Handle a datagram that arrived from addr (on the RTCP socket when rtcp_port)."""
        if self._closed:
            return
        if len(addr) != 2:
            addr = (addr[0], addr[1])                   # IPv6 sockaddr (host, port, flowinfo, scope_id)
        if rtcp_port or is_rtcp(data):
            self._receive_rtcp(data, addr, now, rtcp_port)
            return
        try:
            pt, seq, ts, ssrc, marker = peek_header(data)
        except RtpError:
            self.stats.malformed += 1
            return
        if addr != self._remote or not self._latched:
            if not self._latch(addr, ssrc, now):
                self.stats.strays += 1
                return
        elif ssrc != self._latched_ssrc:
            self._latched_ssrc = ssrc                   # a new source at the same address
        self._last_rtp = now
        self._timed_out = False
        stats = self.sources.get(ssrc)
        if stats is None:
            stats = self.sources[ssrc] = ReceptionStats(ssrc, self.clock_rate)
        stats.update(seq, ts, now)
        self.stats.rtp_received += 1
        self._events.append(RtpReceived(data, pt, seq, ts, ssrc, marker, addr, now))

    def _latch(self, addr: Addr, ssrc: int, now: float) -> bool:
        """Decide on RTP from an address that is not the latched one; True when it is accepted."""
        if not self._acceptable(addr):
            return False
        if not self._latched:
            reason = "first"
        elif self._last_rtp is None or now - self._last_rtp >= self.relatch_timeout:
            reason = "timeout"
        elif self.relatch_on_ssrc and ssrc != self._latched_ssrc:
            reason = "ssrc"
        else:
            return False
        old = self._remote
        self._remote = addr
        self._latched = True
        self._latched_ssrc = ssrc
        if self._remote_rtcp is not None and self._remote_rtcp[0] != addr[0]:
            self._remote_rtcp = None
        self._events.append(LatchChanged(old, addr, ssrc, reason))
        return True

    def _receive_rtcp(self, data: bytes, addr: Addr, now: float, rtcp_port: bool) -> None:
        """Parse an RTCP compound packet, feed LSR/RTT bookkeeping, raise RtcpReceived."""
        remote = self._remote
        if self._latched and remote is not None:
            if addr[0] != remote[0]:
                self.stats.strays += 1
                return
        elif not self._acceptable(addr):
            self.stats.strays += 1
            return
        try:
            packets = parse_compound(data)
        except RtcpError:
            self.stats.malformed += 1
            return
        if rtcp_port and not self.rtcp_mux:
            self._remote_rtcp = addr                    # symmetric RTCP
        self.stats.rtcp_received += 1
        self._interval.on_packet(len(data))
        report = rtt = None
        for p in packets:
            if isinstance(p, SenderReport):
                stats = self.sources.get(p.ssrc)
                if stats is None:
                    stats = self.sources[p.ssrc] = ReceptionStats(p.ssrc, self.clock_rate)
                stats.on_sender_report(p.ntp_timestamp, now)
            if isinstance(p, (SenderReport, ReceiverReport)):
                for block in p.reports:
                    if block.ssrc == self.sender.ssrc:
                        report = block
                        rtt = round_trip_time(block, ntp_from_unix(now + self.ntp_offset))
        if report is not None:
            self.stats.remote_reports.append(report)
            del self.stats.remote_reports[:-8]
            if rtt is not None:
                self.stats.last_rtt = rtt
        self._events.append(RtcpReceived(packets, addr, report, rtt))

    # -- output ------------------------------------------------------------------------------------
    def send_rtp(self, payload: bytes, now: float, *, samples: int | None = None, marker: bool = False) -> None:
        """Send a frame we produced as the next packet of our stream."""
        self._send(self.sender.packetize(payload, now, samples=samples, marker=marker))

    def relay(self, data: bytes, now: float, pt: int | None = None) -> None:
        """Send a packet received elsewhere, rewritten onto our SSRC/seq/timestamp (continuous across sources)."""
        self._send(self.sender.relay(data, now, pt))

    def _send(self, data: bytes) -> None:
        """Queue an RTP datagram to the remote address, if one is known."""
        if self._closed:
            return
        if self._remote is None:
            self.stats.unsent += 1
            return
        self._out.append(Datagram(data, self._remote))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Datagrams queued since the last call, as (data, addr, rtcp)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> SessionEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    # -- timers ------------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When handle_timer should be called next (the earliest of the RTCP report and the media timeout)."""
        if self._closed:
            return None
        timer = self._rtcp_at
        if self.media_timeout is not None and self._media_expected and not self._timed_out:
            at = self._quiet_since() + self.media_timeout
            if timer is None or at < timer:
                timer = at
        return timer

    def _quiet_since(self) -> float:
        """Since when media was expected and none came: the last packet, or the start/resume if later."""
        return self._timeout_from if self._last_rtp is None else max(self._last_rtp, self._timeout_from)

    def expect_media(self, expected: bool, now: float) -> None:
        """Whether the peer sends media (its SDP direction: sendrecv/sendonly yes, recvonly/inactive no, as on
        hold): the media timeout only runs while it does, and counts afresh from ``now`` when it resumes."""
        if expected and not self._media_expected:
            self._timeout_from = now
            self._timed_out = False
        self._media_expected = expected

    def handle_timer(self, now: float) -> None:
        """Send the RTCP report and raise MediaTimeout when due."""
        if self._closed:
            return
        if self._rtcp_at is not None and now >= self._rtcp_at:
            self._send_rtcp(now)
            self._rtcp_at = now + self._interval.next_interval(members=1 + max(1, len(self.sources)))
        if self.media_timeout is not None and self._media_expected and not self._timed_out:
            last = self._quiet_since()
            if now - last >= self.media_timeout:
                self._timed_out = True
                self._events.append(MediaTimeout(now - last, self._last_rtp))

    def _report(self, now: float) -> list[RtcpPacket]:
        """SR (if we sent since the last report) or RR, with blocks for sources heard since, then SDES CNAME."""
        blocks = [
            s.report_block(now) for s in self.sources.values()
            if s.received and s.last_arrival is not None and s.last_arrival >= self._last_report_at
        ][:31]
        sender = self.sender
        first: RtcpPacket
        if sender.packets_sent > self._sent_at_last_report and sender.last_timestamp is not None:
            rtp_ts = sender.last_timestamp
            if sender.last_sent_at is not None:
                rtp_ts = (rtp_ts + round((now - sender.last_sent_at) * self.clock_rate)) & 0xFFFFFFFF
            first = SenderReport(sender.ssrc, ntp_from_unix(now + self.ntp_offset), rtp_ts,
                                 sender.packets_sent & 0xFFFFFFFF, sender.octets_sent & 0xFFFFFFFF, blocks)
        else:
            first = ReceiverReport(sender.ssrc, blocks)
        self._sent_at_last_report = sender.packets_sent
        self._last_report_at = now
        return [first, SourceDescription.cname(sender.ssrc, self.cname)]

    def _send_rtcp(self, now: float, extra: list[RtcpPacket] | None = None) -> None:
        """Queue one compound RTCP packet to the peer's RTCP address."""
        packets = self._report(now) + (extra or [])
        dest = self.remote_rtcp
        if dest is None:
            return
        data = build_compound(packets)
        self._interval.on_packet(len(data))
        self.stats.rtcp_sent += 1
        self._out.append(Datagram(data, dest, not self.rtcp_mux))

    def close(self, now: float, reason: bytes = b"") -> None:
        """End the session: a last report with BYE, then nothing more is sent or received."""
        if self._closed:
            return
        self._send_rtcp(now, [Bye([self.sender.ssrc], reason)])
        self._closed = True
        self._rtcp_at = None

    def reception(self) -> ReceptionStats | None:
        """Receiver statistics of the latched source."""
        return None if self._latched_ssrc is None else self.sources.get(self._latched_ssrc)
