"""WebRTC termination of one browser leg (ICE-lite + DTLS-SRTP), and the asyncio port that hosts many.

``WebRtcLeg`` is sans-IO: it ties an ``IceLeg`` (owned by the port's ``IceLiteAgent``), a
``DtlsEndpoint`` and, once the handshake is done, an ``SrtpContext``. Datagrams already demultiplexed
to the leg go in; decrypted RTP/RTCP and state changes come out as events; outgoing RTP is protected
with ``protect_rtp``. ``WebRtcPort`` is the only part with a socket and a loop: one UDP socket per
media worker, every browser leg on it.

DTLS role (RFC 5763 §5, RFC 8842): the side that says ``a=setup:active`` is the DTLS client. When a
browser offers it says ``actpass`` and we answer ``passive`` (we are the server); when we offer we say
``actpass`` and browsers answer ``active`` (we are the server again). Only a peer that says
``passive`` makes us the client::

    port = await WebRtcPort.open(cert, "0.0.0.0", 40000, public_ip="203.0.113.7", on_event=handle)
    offer = SessionDescription.parse(body)
    leg = port.create_leg(RemoteTransport.from_sdp(offer, 0))
    answer = create_answer(offer, [("opus", 48000, 2)], port.public_ip, port.port)
    leg.add_transport_attributes(answer, port.public_ip, port.port)
    # handle(event): LegNominated, LegConnected, RtpReceived(leg, packet), RtcpReceived, LegFailed, LegClosed
    port.send_rtp(leg, rtp_packet)
    port.remove_leg(leg)         # at hang-up, and after LegFailed/LegClosed (the port keeps failed legs)

When we offer: ``leg = port.create_leg()`` (``leg.local_setup == "actpass"``), put
``leg.add_transport_attributes(offer, ...)`` in the offer, then ``port.set_remote(leg,
RemoteTransport.from_sdp(answer, 0))`` when the browser answers.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .certificate import DtlsCertificate, parse_sdp_fingerprint
from .dtls import DtlsClosed, DtlsEndpoint, DtlsFailed, DtlsState, HandshakeComplete
from .ice import CandidateNominated, ConsentExpired, IceEvent, IceLeg, IceLiteAgent
from .sdp import Attribute, Connection, MediaDescription, SessionDescription
from .srtp import DTLS_SRTP_PROFILES, SrtpContext, SrtpError, SrtpProfile

__all__ = [
    "LegClosed",
    "LegConnected",
    "LegEvent",
    "LegFailed",
    "LegNominated",
    "RemoteTransport",
    "RtcpReceived",
    "RtpReceived",
    "WebRtcLeg",
    "WebRtcPort",
    "dtls_role_for_remote_setup",
    "local_setup_for_role",
]


# --------------------------------------------------------------------------------------------------
# SDP: what the browser tells us about its transport
# --------------------------------------------------------------------------------------------------


@dataclass
class RemoteTransport:
    """The browser's transport parameters from its SDP (media level, falling back to session level)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    setup: str = "actpass"
    candidates: list[str] = field(default_factory=list)
    ice_lite: bool = False
    rtcp_mux: bool = True

    @classmethod
    def from_sdp(cls, sd: SessionDescription, media: MediaDescription | int = 0) -> RemoteTransport:
        section = sd.media[media] if isinstance(media, int) else media

        def pick(name: str) -> str | None:
            value = section.attribute(name)
            return value if value is not None else sd.attribute(name)

        ufrag, pwd = pick("ice-ufrag"), pick("ice-pwd")
        if not ufrag or not pwd:
            raise ValueError("the SDP has no a=ice-ufrag/a=ice-pwd")
        fingerprints = [parse_sdp_fingerprint(v) for v in section.attributes("fingerprint")]
        if not fingerprints:
            fingerprints = [parse_sdp_fingerprint(v) for v in sd.attributes("fingerprint")]
        if not fingerprints:
            raise ValueError("the SDP has no a=fingerprint")
        setup = (pick("setup") or "actpass").strip().lower()
        return cls(
            ice_ufrag=ufrag.strip(),
            ice_pwd=pwd.strip(),
            fingerprints=fingerprints,
            setup=setup,
            candidates=section.attributes("candidate"),
            ice_lite=sd.has_attribute("ice-lite"),
            rtcp_mux=section.has_attribute("rtcp-mux"),
        )


def dtls_role_for_remote_setup(remote_setup: str) -> str:
    """Our DTLS role given the peer's a=setup (offer or answer): active/actpass -> server, passive -> client."""
    setup = remote_setup.lower()
    if setup in ("active", "actpass"):
        return "server"
    if setup == "passive":
        return "client"
    raise ValueError(f"unsupported a=setup:{remote_setup}")


def local_setup_for_role(role: str | None) -> str:
    """Our a=setup: actpass while we do not know (we offer), passive as server, active as client."""
    return {"server": "passive", "client": "active", None: "actpass"}[role]


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegNominated:
    """The browser nominated ``address``: media goes there."""

    leg: WebRtcLeg
    address: tuple[str, int]


@dataclass(frozen=True)
class LegConnected:
    """DTLS done, SRTP keys in place: RTP can flow both ways."""

    leg: WebRtcLeg
    profile: SrtpProfile


@dataclass(frozen=True)
class RtpReceived:
    """A decrypted RTP packet (header included) from the browser."""

    leg: WebRtcLeg
    packet: bytes


@dataclass(frozen=True)
class RtcpReceived:
    """A decrypted RTCP compound packet from the browser."""

    leg: WebRtcLeg
    packet: bytes


@dataclass(frozen=True)
class LegFailed:
    """The leg is dead: DTLS failure (``"fingerprint mismatch"``...) or ``"consent expired"``."""

    leg: WebRtcLeg
    reason: str


@dataclass(frozen=True)
class LegClosed:
    """The browser closed DTLS (close_notify)."""

    leg: WebRtcLeg


LegEvent = LegNominated | LegConnected | RtpReceived | RtcpReceived | LegFailed | LegClosed


# --------------------------------------------------------------------------------------------------
# The sans-IO leg
# --------------------------------------------------------------------------------------------------

_MAX_EARLY_DTLS = 8


class WebRtcLeg:
    """One browser leg: ICE-lite state (shared agent), DTLS endpoint, SRTP context. Sans-IO.

    Create it with the browser's ``RemoteTransport`` when answering its offer, or without one when we
    offer (``local_setup`` is then ``actpass``) and call ``set_remote`` with its answer.
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        ice: IceLeg,
        remote: RemoteTransport | None = None,
        *,
        srtp_profiles: Sequence[SrtpProfile] = DTLS_SRTP_PROFILES,
        leg_id: Hashable | None = None,
    ) -> None:
        self.certificate = certificate
        self.ice = ice
        self.leg_id = leg_id
        self.remote: RemoteTransport | None = None
        self.dtls_role: str | None = None
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpContext | None = None
        self.failed: str | None = None
        self._profiles = tuple(srtp_profiles)
        self._events: deque[LegEvent] = deque()
        self._out: list[tuple[bytes, tuple[str, int]]] = []
        self._last_address: tuple[str, int] | None = None
        self._early_dtls: list[bytes] = []
        self._now: float | None = None
        if remote is not None:
            self.set_remote(remote)

    # ---- SDP ------------------------------------------------------------------------------------

    @property
    def local_setup(self) -> str:
        return local_setup_for_role(self.dtls_role)

    @property
    def connected(self) -> bool:
        return self.srtp is not None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """Where media goes: the nominated address, else the last address a datagram came from."""
        return self.ice.selected_address or self._last_address

    def set_remote(self, remote: RemoteTransport) -> None:
        """Apply the browser's transport parameters (its offer, or its answer to our actpass offer)."""
        if self.dtls is not None:
            raise RuntimeError("the remote transport is already set (ICE restart is not supported)")
        self.remote = remote
        self.ice.set_remote_credentials(remote.ice_ufrag, remote.ice_pwd)
        self.dtls_role = dtls_role_for_remote_setup(remote.setup)
        self.dtls = DtlsEndpoint(
            self.certificate, self.dtls_role, remote.fingerprints, srtp_profiles=self._profiles
        )
        now = self._now
        if now is not None:
            if self.ice.selected_address is not None or (self.dtls_role == "client" and self.remote_address):
                self.dtls.start(now)
            early, self._early_dtls = self._early_dtls, []
            for data in early:
                self.dtls.receive_datagram(data, now)
            self._pump_dtls(now)

    def restart_ice(self, remote: RemoteTransport) -> None:
        """Take the browser's new ICE credentials (an ICE restart); DTLS and SRTP carry on unchanged, so the
        new SDP must keep the fingerprint (a new DTLS session is not supported)."""
        if self.remote is None:
            raise RuntimeError("no remote transport to restart")
        if set(remote.fingerprints) != set(self.remote.fingerprints):
            raise ValueError("a new DTLS fingerprint in a re-offer (a new DTLS session) is not supported")
        self.remote = RemoteTransport(remote.ice_ufrag, remote.ice_pwd, self.remote.fingerprints,
                                      self.remote.setup, remote.candidates, remote.ice_lite, remote.rtcp_mux)

    def add_transport_attributes(
        self,
        sd: SessionDescription,
        public_ip: str | Sequence[str],
        port: int,
        media: Iterable[MediaDescription] | None = None,
    ) -> None:
        """Put our transport in ``sd`` (offer or answer): session ``a=ice-lite``; in each accepted m-section
        (all of them by default, which share this one bundled transport) port, c=, ice-ufrag, ice-pwd,
        fingerprint, setup, rtcp-mux and candidates; plus ``a=group:BUNDLE`` over their mids."""
        addresses = [public_ip] if isinstance(public_ip, str) else list(public_ip)
        if not sd.has_attribute("ice-lite"):
            sd.attributes.insert(0, Attribute("ice-lite"))
        sections = [m for m in (sd.media if media is None else media) if m.port != 0]
        mids = []
        for section in sections:
            section.port = port
            section.connection = Connection.for_address(addresses[0])
            for name in ("ice-ufrag", "ice-pwd", "fingerprint", "setup", "candidate", "end-of-candidates"):
                section.remove_attribute(name)
            section.add_attribute("ice-ufrag", self.ice.local_ufrag)
            section.add_attribute("ice-pwd", self.ice.local_pwd)
            section.add_attribute("fingerprint", self.certificate.sdp_fingerprint)
            section.add_attribute("setup", self.local_setup)
            if not section.has_attribute("rtcp-mux"):
                section.add_attribute("rtcp-mux")
            for candidate in self.ice.local_candidates(addresses, port):
                section.add_attribute("candidate", candidate)
            section.add_attribute("end-of-candidates")
            mid = section.attribute("mid")
            if mid:
                mids.append(mid)
        if sd.connection is not None:
            sd.connection = Connection.for_address(addresses[0])
        if mids:
            sd.set_attribute("group", "BUNDLE " + " ".join(mids))

    # ---- sans-IO interface ----------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Feed a DTLS or SRTP/SRTCP datagram the port's agent demultiplexed to this leg."""
        self._now = now
        self._last_address = addr
        first = data[0]
        if 127 < first < 192:
            srtp = self.srtp
            if srtp is None:
                return  # media before the keys: dropped
            try:
                if 192 <= data[1] <= 223:
                    self._events.append(RtcpReceived(self, srtp.unprotect_rtcp(data)))
                else:
                    self._events.append(RtpReceived(self, srtp.unprotect(data)))
            except SrtpError:
                pass  # forged, corrupt or replayed: dropped
            return
        if 19 < first < 64:
            if self.dtls is None:
                if len(self._early_dtls) < _MAX_EARLY_DTLS:
                    self._early_dtls.append(data)
                return
            self.dtls.receive_datagram(data, now)
            self._pump_dtls(now)

    def handle_ice_event(self, event: IceEvent, now: float) -> None:
        """Forward the agent's events for this leg's IceLeg."""
        self._now = now
        if isinstance(event, CandidateNominated):
            self._events.append(LegNominated(self, event.address))
            if self.dtls is not None and self.dtls.state is DtlsState.NEW:
                # a client sends its ClientHello; a server arms its handshake timeout
                self.dtls.start(now)
                self._pump_dtls(now)
        elif isinstance(event, ConsentExpired):
            self._fail("consent expired")

    def protect_rtp(self, packet: bytes) -> bytes:
        """RTP -> SRTP for this leg (SrtpError before the DTLS handshake has completed)."""
        srtp = self.srtp
        if srtp is None:
            raise SrtpError("the leg has no SRTP keys yet")
        return srtp.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        srtp = self.srtp
        if srtp is None:
            raise SrtpError("the leg has no SRTP keys yet")
        return srtp.protect_rtcp(packet)

    def send_rtp(self, packet: bytes) -> None:
        """Protect and queue an RTP (or RTCP, detected per RFC 5761) packet for ``datagrams_to_send``."""
        address = self.remote_address
        if address is None or self.srtp is None:
            return
        if len(packet) > 1 and 192 <= packet[1] <= 223:
            self._out.append((self.srtp.protect_rtcp(packet), address))
        else:
            self._out.append((self.srtp.protect(packet), address))

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> LegEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self.dtls.get_timer() if self.dtls is not None else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.dtls is not None:
            self.dtls.handle_timer(now)
            self._pump_dtls(now)

    def close(self) -> None:
        """Send DTLS close_notify (queued in ``datagrams_to_send``) and forget the keys."""
        if self.dtls is not None:
            self.dtls.close()
            self._queue_dtls()
        self.srtp = None

    # ---- internals ------------------------------------------------------------------------------

    def _queue_dtls(self) -> None:
        assert self.dtls is not None
        datagrams = self.dtls.datagrams_to_send()
        address = self.remote_address
        if address is not None:
            self._out.extend((d, address) for d in datagrams)

    def _pump_dtls(self, now: float) -> None:
        dtls = self.dtls
        assert dtls is not None
        self._queue_dtls()
        while (event := dtls.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                self.srtp = event.srtp_context()
                self._events.append(LegConnected(self, event.profile))
            elif isinstance(event, DtlsFailed):
                self._fail(event.reason)
            elif isinstance(event, DtlsClosed):
                self.srtp = None
                self._events.append(LegClosed(self))

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self.srtp = None
            self._events.append(LegFailed(self, reason))

    def __repr__(self) -> str:
        return f"WebRtcLeg({self.ice.local_ufrag!r}, leg_id={self.leg_id!r}, role={self.dtls_role})"


# --------------------------------------------------------------------------------------------------
# The asyncio adapter: one UDP socket, many legs
# --------------------------------------------------------------------------------------------------


class WebRtcPort(asyncio.DatagramProtocol):
    """One UDP socket of a media worker with its ICE-lite agent and every browser leg on it.

    ``on_event(event)`` receives every leg's events (``RtpReceived`` included) unless the leg was
    created with its own ``on_event``. ``clock`` is the monotonic clock the sans-IO cores see
    (default: the loop's).
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        *,
        public_ip: str | None = None,
        on_event: Callable[[LegEvent], None] | None = None,
        clock: Callable[[], float] | None = None,
        consent_timeout: float = 30.0,
        srtp_profiles: Sequence[SrtpProfile] = DTLS_SRTP_PROFILES,
    ) -> None:
        self.certificate = certificate
        self.agent = IceLiteAgent(consent_timeout=consent_timeout)
        self.on_event = on_event
        self.legs: dict[str, WebRtcLeg] = {}  # by local ufrag
        self._public_ip = public_ip
        self._clock = clock
        self._profiles = tuple(srtp_profiles)
        self._handlers: dict[str, Callable[[LegEvent], None]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._agent_timer: asyncio.TimerHandle | None = None
        self._agent_timer_at: float | None = None
        self._leg_timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self.address: tuple[str, int] = ("0.0.0.0", 0)

    @classmethod
    async def open(
        cls,
        certificate: DtlsCertificate,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        endpoints: Any = None,
        **kwargs,  # noqa: ANN003 - the keyword arguments of __init__
    ) -> WebRtcPort:
        """Bind ``host:port`` (0: any free port) and start serving; ``endpoints`` makes the socket (the loop by
        default, or a ``media.relay.MediaRelay`` whose C data plane reads it)."""
        loop = asyncio.get_running_loop()
        _, protocol = await (endpoints or loop).create_datagram_endpoint(
            lambda: cls(certificate, **kwargs), local_addr=(host, port)
        )
        return protocol

    # ---- properties -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def public_ip(self) -> str:
        """The address advertised in candidates (the bound one unless ``public_ip`` was given)."""
        return self._public_ip or self.address[0]

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The socket's transport (None once closed)."""
        return self._transport

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None
        return self._loop.time()

    # ---- legs -----------------------------------------------------------------------------------

    def create_leg(
        self,
        remote: RemoteTransport | None = None,
        *,
        leg_id: Hashable | None = None,
        on_event: Callable[[LegEvent], None] | None = None,
    ) -> WebRtcLeg:
        """A new leg on this port (``remote`` from the browser's offer, or later via ``set_remote``)."""
        now = self.now()
        ice = self.agent.create_leg(
            remote.ice_ufrag if remote else None, remote.ice_pwd if remote else None, leg_id=leg_id, now=now
        )
        leg = WebRtcLeg(self.certificate, ice, remote, srtp_profiles=self._profiles, leg_id=leg_id)
        self.legs[ice.local_ufrag] = leg
        if on_event is not None:
            self._handlers[ice.local_ufrag] = on_event
        self._schedule_agent()
        return leg

    def restart_ice(self, leg: WebRtcLeg, remote: RemoteTransport, *, new_local: bool = True) -> None:
        """An ICE restart of ``leg`` (its re-offer or answer has a new ice-ufrag): the agent takes the new
        credentials (and, with ``new_local``, makes new local ones for our answer); the leg keeps its DTLS
        and SRTP, its handler and timer follow it to the new local ufrag. ValueError on a new fingerprint."""
        leg.restart_ice(remote)
        old = leg.ice.local_ufrag
        self.agent.restart(leg.ice, remote.ice_ufrag, remote.ice_pwd, new_local=new_local, now=self.now())
        new = leg.ice.local_ufrag
        if new != old:
            self.legs[new] = self.legs.pop(old, leg)
            if old in self._handlers:
                self._handlers[new] = self._handlers.pop(old)
            if old in self._leg_timers:
                timer = self._leg_timers.pop(old)
                timer[1].cancel()
                self._schedule_leg(leg)
        self._schedule_agent()

    def set_remote(self, leg: WebRtcLeg, remote: RemoteTransport) -> None:
        """``leg.set_remote`` (the browser's answer to our offer), then send what it produced."""
        leg.set_remote(remote)
        self._flush_leg(leg)

    def remove_leg(self, leg: WebRtcLeg, *, notify: bool = True) -> None:
        """Close DTLS (close_notify if ``notify``) and forget the leg."""
        ufrag = leg.ice.local_ufrag
        if notify:
            leg.close()
            self._flush_leg(leg)
        self.agent.remove_leg(leg.ice)
        self.legs.pop(ufrag, None)
        self._handlers.pop(ufrag, None)
        timer = self._leg_timers.pop(ufrag, None)
        if timer is not None:
            timer[1].cancel()

    def send_rtp(self, leg: WebRtcLeg, packet: bytes) -> bool:
        """Protect ``packet`` (RTP, or RTCP by its type) and send it to the leg; False if not ready."""
        address = leg.remote_address
        srtp = leg.srtp
        if address is None or srtp is None or self._transport is None:
            return False
        if len(packet) > 1 and 192 <= packet[1] <= 223:
            self._transport.sendto(srtp.protect_rtcp(packet), address)
        else:
            srtp.sendto(self._transport, packet, address)
        return True

    send_rtcp = send_rtp

    def close(self) -> None:
        for leg in list(self.legs.values()):
            self.remove_leg(leg)
        if self._agent_timer is not None:
            self._agent_timer.cancel()
            self._agent_timer = None
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.: ignored
        pass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = self.now()
        if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
            addr = (addr[0], addr[1])
        agent = self.agent
        hit = agent.receive_datagram(data, addr, now)
        if hit is None:
            if data and data[0] < 4:
                transport = self._transport
                if transport is not None:
                    for out, to in agent.datagrams_to_send():
                        transport.sendto(out, to)
                self._dispatch_ice_events(now)
            return
        leg = self.legs.get(hit[0].local_ufrag)
        if leg is None:
            return
        leg.receive_datagram(data, addr, now)
        self._flush_leg(leg)

    # ---- internals ------------------------------------------------------------------------------

    def _dispatch_ice_events(self, now: float) -> None:
        while (event := self.agent.next_event()) is not None:
            leg = self.legs.get(event.leg.local_ufrag)
            if leg is not None:
                leg.handle_ice_event(event, now)
                self._flush_leg(leg)
        self._schedule_agent()

    def _flush_leg(self, leg: WebRtcLeg) -> None:
        transport = self._transport
        if transport is not None:
            for out, to in leg.datagrams_to_send():
                transport.sendto(out, to)
        ufrag = leg.ice.local_ufrag
        handler = self._handlers.get(ufrag, self.on_event)
        while (event := leg.next_event()) is not None:
            if handler is not None:
                handler(event)
        if leg.dtls is not None and ufrag in self.legs:
            self._schedule_leg(leg)

    def _schedule_leg(self, leg: WebRtcLeg) -> None:
        ufrag = leg.ice.local_ufrag
        when = leg.get_timer()
        current = self._leg_timers.get(ufrag)
        if current is not None and current[0] == when:
            return
        if current is not None:
            current[1].cancel()
            del self._leg_timers[ufrag]
        if when is None or self._loop is None:
            return
        delay = max(0.0, when - self.now())
        handle = self._loop.call_later(delay, self._on_leg_timer, ufrag)
        self._leg_timers[ufrag] = (when, handle)

    def _on_leg_timer(self, ufrag: str) -> None:
        self._leg_timers.pop(ufrag, None)
        leg = self.legs.get(ufrag)
        if leg is None:
            return
        leg.handle_timer(self.now())
        self._flush_leg(leg)

    def _schedule_agent(self) -> None:
        when = self.agent.get_timer()
        if when == self._agent_timer_at:
            return
        if self._agent_timer is not None:
            self._agent_timer.cancel()
            self._agent_timer = None
        self._agent_timer_at = when
        if when is None or self._loop is None:
            return
        self._agent_timer = self._loop.call_later(max(0.0, when - self.now()), self._on_agent_timer)

    def _on_agent_timer(self) -> None:
        self._agent_timer = None
        self._agent_timer_at = None
        now = self.now()
        self.agent.handle_timer(now)
        self._dispatch_ice_events(now)
