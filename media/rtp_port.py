"""The asyncio adapter of one plain-RTP leg: its RTP (and RTCP) UDP sockets around a sans-IO ``RtpSession``.

Received datagrams go to ``RtpSession.receive_datagram``; accepted RTP is handed to ``on_rtp(packet, now)``
(the bridge), other session events (latching, media timeout, RTCP) to ``on_event``. Outgoing RTP is built by
the bridge on the session's own ``RtpSender`` (so RTCP sender reports count it) and sent with ``send_rtp`` to
the latched address. Timers are polled by the worker's media clock (``poll(now)`` every tick), so a leg costs
no timer handle of its own.

With ``srtp`` set (an SDES-keyed trunk or phone, RFC 4568: ``RTP/SAVP``) every datagram is unprotected on the
way in (a packet that fails authentication or is a replay is dropped and counted in ``srtp_errors``) and
protected on the way out, RTCP as SRTCP; the session only ever sees plain RTP/RTCP.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from .session import Datagram, RtpReceived, RtpSession, SessionEvent
from .srtp import SrtpContext, SrtpError, is_rtcp

__all__ = ["PlainRtpPort"]


class _Socket(asyncio.DatagramProtocol):
    """One bound UDP socket feeding the leg (``rtcp`` marks the RTCP port)."""

    def __init__(self, owner: PlainRtpPort, rtcp: bool) -> None:
        self.owner: PlainRtpPort | None = owner
        self.rtcp = rtcp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        # the links back (transport -> protocol -> transport, port -> socket -> port) would otherwise make
        # every closed leg cyclic garbage, freed only by a full collection: drop ours once the socket is gone
        self.transport = None
        self.owner = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        owner = self.owner
        if owner is not None:
            owner.datagram_received(data, addr, self.rtcp)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable while the peer is not up yet
        pass


class PlainRtpPort:
    """A plain-RTP leg bound on ``port`` (and ``port + 1`` for RTCP unless muxed), driving one RtpSession."""

    def __init__(self, session: RtpSession, on_rtp: Callable[[bytes, float], None],
                 on_event: Callable[[SessionEvent], None] | None, clock: Callable[[], float]) -> None:
        self.session = session
        self.on_rtp = on_rtp
        self.on_event = on_event
        self.clock = clock
        self.rtp: _Socket | None = None
        self.rtcp: _Socket | None = None
        self.port = 0
        self.srtp: SrtpContext | None = None       # SDES keys: SRTP/SRTCP on both sockets
        self.srtp_errors = 0

    @classmethod
    async def open(cls, host: str, port: int, session: RtpSession, on_rtp: Callable[[bytes, float], None],
                   on_event: Callable[[SessionEvent], None] | None = None, *,
                   endpoints: Any = None) -> PlainRtpPort:
        """Bind the RTP socket (and the RTCP one above it when the session does not mux RTCP).

        ``endpoints`` makes the sockets (``create_datagram_endpoint``): the loop by default, or a
        ``media.relay.MediaRelay`` whose C data plane reads them."""
        loop = asyncio.get_running_loop()
        endpoints = endpoints or loop
        self = cls(session, on_rtp, on_event, loop.time)
        _, self.rtp = await endpoints.create_datagram_endpoint(lambda: _Socket(self, False), local_addr=(host, port))
        if not session.rtcp_mux:
            try:
                _, self.rtcp = await endpoints.create_datagram_endpoint(lambda: _Socket(self, True),
                                                                        local_addr=(host, port + 1))
            except OSError:
                assert self.rtp.transport is not None
                self.rtp.transport.close()
                raise
        assert self.rtp.transport is not None
        self.port = self.rtp.transport.get_extra_info("sockname")[1]
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int], rtcp: bool) -> None:
        """Feed the session and dispatch what it accepted."""
        now = self.clock()
        session = self.session
        srtp = self.srtp
        if srtp is not None:
            try:
                data = srtp.unprotect_rtcp(data) if rtcp or is_rtcp(data) else srtp.unprotect(data)
            except SrtpError:
                self.srtp_errors += 1
                return
        session.receive_datagram(data, addr, now, rtcp_port=rtcp)
        self._drain(now)

    def _drain(self, now: float) -> None:
        """Send what the session queued (RTCP) and hand its events on."""
        session = self.session
        for datagram in session.datagrams_to_send(now):
            self._sendto(datagram)
        while (event := session.next_event()) is not None:
            if type(event) is RtpReceived:
                self.on_rtp(event.data, event.arrival)
            elif self.on_event is not None:
                self.on_event(event)

    def _sendto(self, datagram: Datagram) -> None:
        sock = self.rtcp if datagram.rtcp and self.rtcp is not None else self.rtp
        if sock is not None and sock.transport is not None:
            data = datagram.data if self.srtp is None else self.srtp.protect_rtcp(datagram.data)
            sock.transport.sendto(data, datagram.addr)

    def send_rtp(self, packet: bytes) -> bool:
        """Send an RTP packet the bridge built (on this session's sender) to the latched/SDP address."""
        remote = self.session.remote
        sock = self.rtp
        if remote is None or sock is None or sock.transport is None:
            self.session.stats.unsent += 1
            return False
        if self.srtp is None:
            sock.transport.sendto(packet, remote)
        else:
            self.srtp.sendto(sock.transport, packet, remote)
        return True

    def poll(self, now: float) -> None:
        """Run the session's timer (RTCP reports, media timeout) if due; called by the media clock."""
        timer = self.session.get_timer()
        if timer is not None and now >= timer:
            self.session.handle_timer(now)
            self._drain(now)

    def close(self) -> None:
        """RTCP BYE, then close the sockets."""
        now = self.clock()
        self.session.close(now)
        for datagram in self.session.datagrams_to_send(now):
            self._sendto(datagram)
        for sock in (self.rtp, self.rtcp):
            if sock is not None and sock.transport is not None:
                sock.transport.close()
