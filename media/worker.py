"""One media worker (one process, one event loop): the browser port, the plain-RTP port range, the media clock.

``MediaWorker`` owns one ``WebRtcPort`` (ICE-lite, every browser leg on one UDP port), a ``PortAllocator``
range with one ``PlainRtpPort`` (RTP + RTCP sockets around an ``RtpSession``) per SIP leg, and a 20 ms
monotonic clock (``loop.call_at`` at absolute times, catching up when late) that runs ``tick_bridges`` over
every call. Calls are driven the way rtpengine's ng protocol drives them (docs/media.md)::

    worker = await MediaWorker.start(MediaSettings(advertised_address="203.0.113.7"))
    sdp_to_callee = await worker.offer(call_id, from_tag, sdp_from_caller)            # transport: the other kind
    sdp_to_caller = await worker.answer(call_id, from_tag, to_tag, sdp_from_callee)   # bridge starts here
    stats = await worker.delete(call_id)

``offer`` parses the caller's SDP (WebRTC if it is ``UDP/TLS/RTP/SAVPF`` with ICE and a fingerprint, plain
RTP otherwise) and returns an offer for the callee's kind (``transport`` forces one): towards a browser
``UDP/TLS/RTP/SAVPF`` with ICE-lite, fingerprint, setup, rtcp-mux and opus/48000/2 + PCMU +
telephone-event/48000 + /8000; towards a trunk ``RTP/AVP`` with PCMU/PCMA/telephone-event/8000 on a port of
the range. ``answer`` takes the callee's answer, answers the caller with the same codec when it can
(passthrough: PCMU on both ends; ``prefer_passthrough`` also picks PCMU over Opus for a browser that offers
both) or its best one otherwise (transcoding: Opus for a browser), and joins the two legs in a
``Bridge``. A later ``offer`` from either tag of a bridged call is a re-INVITE (hold/resume, new address):
the codecs stay, the address and direction follow, and the matching ``answer(call_id, offerer_tag,
answerer_tag, sdp)`` completes it. DTMF digits come out through ``on_event`` as dicts
(``{"event": "dtmf", ...}``).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from sipcore.sdp import RtpMap, SdpError, SessionDescription, bump_version, create_answer, create_offer

from .bridge import Bridge, LegCodec, Side, tick_bridges
from .certificate import DtlsCertificate
from .ports import PortAllocator
from .rtp_port import PlainRtpPort
from .session import MediaTimeout, RtpSession, SessionEvent
from .webrtc import LegClosed, LegEvent, LegFailed, RemoteTransport, RtpReceived, WebRtcLeg, WebRtcPort

__all__ = ["MediaError", "MediaSettings", "MediaWorker", "WEBRTC", "RTP"]

log = logging.getLogger(__name__)

WEBRTC = "UDP/TLS/RTP/SAVPF"
RTP = "RTP/AVP"
_BROWSER_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("opus", 48000, 2), ("PCMU", 8000), ("telephone-event", 48000), ("telephone-event", 8000)]
_TRUNK_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("PCMU", 8000), ("PCMA", 8000), ("telephone-event", 8000)]
_FMTP = {"opus": "minptime=10;useinbandfec=1", "telephone-event": "0-16"}
_AUDIO = ("opus", "pcmu", "pcma")


class MediaError(Exception):
    """A request the worker cannot serve (unknown call, unusable SDP...); the message says why."""


@dataclass
class MediaSettings:
    """Where a worker listens and what it advertises; one per worker process (ports already split)."""

    bind_host: str = "0.0.0.0"
    advertised_address: str | None = None     # the address put in SDP/candidates (public IP behind 1:1 NAT)
    ice_port: int = 0                         # the browser-facing UDP port (0: any)
    rtp_port_min: int = 30000                 # plain-RTP range (even RTP ports, RTCP on +1)
    rtp_port_max: int = 39999
    certificate_dir: str | None = None        # DTLS certificate kept there (None: a fresh one per start)
    control_path: str | None = None           # control socket: a Unix socket path, else TCP below
    control_host: str = "127.0.0.1"
    control_port: int = 0
    opus_complexity: int = 5
    opus_bitrate: int = 24000
    prefer_passthrough: bool = True           # same G.711 codec on both legs when both offer it (no transcoding)
    media_timeout: float = 60.0
    tick_ms: int = 20
    g711_batch: bool = True                   # G.711 of all calls of a tick in one numpy call

    def advertised(self) -> str:
        """The address for SDP: the configured one, the bind address, else the host's primary address."""
        if self.advertised_address:
            return self.advertised_address
        if self.bind_host not in ("0.0.0.0", "::", ""):
            return self.bind_host
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))   # TEST-NET: no packet is sent, only a route lookup
                return probe.getsockname()[0]
            except OSError:
                return "127.0.0.1"


@dataclass
class MediaLeg:
    """One party of a call as the worker sees it: its SDP, its transport and the codec it negotiated."""

    tag: str | None
    kind: str                                  # WEBRTC or RTP
    remote_sdp: SessionDescription | None = None
    local_sdp: SessionDescription | None = None
    codec: LegCodec | None = None
    webrtc: WebRtcLeg | None = None
    rtp: PlainRtpPort | None = None
    port: int | None = None
    side: Side = "a"


@dataclass
class MediaCall:
    """A call: the caller's leg (side a), the callee's (side b) and, once answered, the bridge."""

    call_id: str
    caller: MediaLeg
    callee: MediaLeg
    bridge: Bridge | None = None
    answer_sdp: SessionDescription | None = None
    reoffer_from: str | None = None            # the tag whose re-offer (re-INVITE) awaits its answer
    events: list[dict[str, Any]] = field(default_factory=list)

    def leg(self, side: Side) -> MediaLeg:
        return self.caller if side == "a" else self.callee

    def by_tag(self, tag: str) -> MediaLeg:
        """The leg with SIP tag ``tag`` (MediaError if neither has it)."""
        for leg in (self.caller, self.callee):
            if leg.tag == tag:
                return leg
        raise MediaError(f"call {self.call_id!r} has no leg with tag {tag!r}")

    def other(self, leg: MediaLeg) -> MediaLeg:
        return self.callee if leg is self.caller else self.caller


def is_webrtc(sd: SessionDescription) -> bool:
    """Whether an SDP's first audio section is a WebRTC (DTLS-SRTP + ICE) one."""
    section = sd.media[0]
    return "TLS" in section.proto.upper() and "SAVP" in section.proto.upper()


def negotiated_codec(sd: SessionDescription) -> LegCodec:
    """The codec an answer settled on: the first audio format we handle, plus the telephone-event for it."""
    if not sd.media or sd.media[0].is_rejected:
        raise MediaError("the SDP has no active audio section")
    section = sd.media[0]
    rtpmap = section.rtpmap
    audio: tuple[int, RtpMap] | None = None
    for pt in section.payload_types:
        m = rtpmap.get(pt)
        if m is not None and m.encoding.lower() in _AUDIO:
            audio = (pt, m)
            break
    if audio is None:
        raise MediaError(f"no supported codec (opus, PCMU, PCMA) in m={section.media} {' '.join(section.formats)}")
    events = [(pt, m) for pt, m in rtpmap.items() if m.encoding.lower() == "telephone-event"]
    event = next((e for e in events if e[1].clock_rate == audio[1].clock_rate), events[0] if events else None)
    return LegCodec(audio[0], audio[1].encoding, audio[1].clock_rate,
                    event[0] if event else None, event[1].clock_rate if event else 8000)


def _offered(sd: SessionDescription, encoding: str) -> bool:
    """Whether the first section of an offer lists ``encoding``."""
    return any(m.encoding.lower() == encoding for m in sd.media[0].rtpmap.values())


def _restrict(sd: SessionDescription, codec: LegCodec) -> SessionDescription:
    """A copy of our SDP listing only the negotiated codec and telephone-event (re-offers keep the codec)."""
    result = sd.copy()
    section = result.media[0]
    keep = {str(codec.payload_type)}
    if codec.event_payload_type is not None:
        keep.add(str(codec.event_payload_type))
    section.formats = [f for f in section.formats if f in keep]
    section.attributes[:] = [a for a in section.attributes
                             if a.name not in ("rtpmap", "fmtp") or (a.value or "").split(" ", 1)[0] in keep]
    return result


def _rtp_address(sd: SessionDescription) -> tuple[str, int] | None:
    """Where a plain-RTP party wants media (c= and m= port), None when on hold/unknown."""
    conn = sd.effective_connection(0)
    port = sd.media[0].port
    if conn is None or port == 0 or conn.address in ("0.0.0.0", "::"):
        return None
    return (conn.address, port)


class MediaWorker:
    """The media plane of one process: browser port, RTP ports, calls and their bridges, the 20 ms clock."""

    def __init__(self, settings: MediaSettings, port: WebRtcPort,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        self.port = port
        self.address = settings.advertised()
        self.allocator = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
        self.calls: dict[str, MediaCall] = {}
        self.on_event = on_event
        self._by_webrtc: dict[int, tuple[MediaCall, MediaLeg]] = {}
        self._loop = asyncio.get_running_loop()
        self._period = settings.tick_ms / 1000.0
        self._next_tick = self._loop.time() + self._period
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.late_ticks = 0
        self.tick_seconds = 0.0                   # CPU-ish time spent in ticks (loop.time deltas)
        self._schedule()

    @classmethod
    async def start(cls, settings: MediaSettings | None = None,
                    on_event: Callable[[dict[str, Any]], None] | None = None) -> MediaWorker:
        """Open the browser port and start the media clock."""
        settings = settings or MediaSettings()
        if settings.certificate_dir:
            certificate = DtlsCertificate.load_or_create(settings.certificate_dir)
        else:
            certificate = DtlsCertificate.generate()
        holder: list[MediaWorker] = []
        port = await WebRtcPort.open(certificate, settings.bind_host, settings.ice_port,
                                     public_ip=settings.advertised(),
                                     on_event=lambda event: holder[0]._on_webrtc_event(event))
        worker = cls(settings, port, on_event)
        holder.append(worker)
        return worker

    # -- the media clock -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._next_tick, self._on_tick)

    def _on_tick(self) -> None:
        """Run every due 20 ms step (late ticks catch up, at most 5 at once), then re-arm at the next slot."""
        loop = self._loop
        now = loop.time()
        due = int((now - self._next_tick) / self._period) + 1
        if due > 1:
            self.late_ticks += due - 1
        if due > 5:                               # a long stall: drop the backlog rather than burst
            self._next_tick += (due - 5) * self._period
            due = 5
        for _ in range(due):
            self._tick(loop.time())
            self._next_tick += self._period
        self.tick_seconds += loop.time() - now
        self._schedule()

    def _tick(self, now: float) -> None:
        """One media step: every bridge's transcoding, then the plain legs' RTCP/timeouts."""
        self.ticks += 1
        calls = [c for c in self.calls.values() if c.bridge is not None]
        tick_bridges([c.bridge for c in calls], now, batch=self.settings.g711_batch)  # type: ignore[misc]
        for call in calls:
            self._flush(call)
        for call in self.calls.values():
            for leg in (call.caller, call.callee):
                if leg.rtp is not None:
                    leg.rtp.poll(now)

    def _flush(self, call: MediaCall) -> None:
        """Send what the bridge produced on each side's transport, and publish its events."""
        bridge = call.bridge
        assert bridge is not None
        for side, packet in bridge.packets_to_send():
            leg = call.leg(side)
            if leg.webrtc is not None:
                self.port.send_rtp(leg.webrtc, packet)
            elif leg.rtp is not None:
                leg.rtp.send_rtp(packet)
        while (event := bridge.next_event()) is not None:
            leg = call.leg(event.leg)
            self._emit({"event": "dtmf", "call_id": call.call_id, "tag": leg.tag, "digit": event.digit,
                        "duration": round(event.duration_ms), "source": event.source})

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the media clock
                log.exception("media event listener failed")

    # -- transports -> bridge ------------------------------------------------------------------------
    def _on_webrtc_event(self, event: LegEvent) -> None:
        found = self._by_webrtc.get(id(event.leg))
        if found is None:
            return
        call, leg = found
        if type(event) is RtpReceived:
            bridge = call.bridge
            if bridge is not None:
                bridge.receive_rtp(leg.side, event.packet, self._loop.time())
                self._flush(call)
        elif isinstance(event, (LegFailed, LegClosed)):
            self._emit({"event": "leg-down", "call_id": call.call_id, "tag": leg.tag,
                        "reason": getattr(event, "reason", "closed")})

    def _on_rtp(self, call: MediaCall, leg: MediaLeg, packet: bytes, now: float) -> None:
        bridge = call.bridge
        if bridge is not None:
            bridge.receive_rtp(leg.side, packet, now)
            self._flush(call)

    def _on_session_event(self, call: MediaCall, leg: MediaLeg, event: SessionEvent) -> None:
        if isinstance(event, MediaTimeout):
            self._emit({"event": "timeout", "call_id": call.call_id, "tag": leg.tag, "idle": round(event.idle, 1)})

    # -- legs ----------------------------------------------------------------------------------------
    async def _open_rtp(self, call: MediaCall, leg: MediaLeg, remote: tuple[str, int] | None) -> None:
        """Bind a port pair from the range for a plain-RTP leg (skipping ports someone else holds)."""
        for _ in range(16):
            port = self.allocator.allocate()
            session = RtpSession(clock_rate=8000, now=self._loop.time(), remote=remote, rtcp_mux=False,
                                 media_timeout=self.settings.media_timeout)
            try:
                leg.rtp = await PlainRtpPort.open(
                    self.settings.bind_host, port, session,
                    lambda packet, now: self._on_rtp(call, leg, packet, now),
                    lambda event: self._on_session_event(call, leg, event))
            except OSError:
                self.allocator.release(port)
                continue
            leg.port = port
            return
        raise MediaError("no bindable RTP port in the range")

    def _open_webrtc(self, call: MediaCall, leg: MediaLeg, remote: RemoteTransport | None) -> None:
        leg.webrtc = self.port.create_leg(remote, leg_id=(call.call_id, leg.side))
        self._by_webrtc[id(leg.webrtc)] = (call, leg)

    def _close_leg(self, leg: MediaLeg) -> None:
        if leg.webrtc is not None:
            self._by_webrtc.pop(id(leg.webrtc), None)
            self.port.remove_leg(leg.webrtc)
            leg.webrtc = None
        if leg.rtp is not None:
            leg.rtp.close()
            leg.rtp = None
        if leg.port is not None:
            self.allocator.release(leg.port)
            leg.port = None

    # -- the control operations ----------------------------------------------------------------------
    async def offer(self, call_id: str, from_tag: str, sdp: str | bytes,
                    transport: str | None = None) -> str:
        """The caller's offer in, our offer for the callee out (``transport``: RTP/AVP or UDP/TLS/RTP/SAVPF)."""
        offer = self._parse(sdp)
        existing = self.calls.get(call_id)
        if existing is not None:
            if existing.bridge is not None:
                return self._reoffer(existing, from_tag, offer)
            if existing.caller.tag == from_tag and existing.callee.local_sdp is not None:
                return existing.callee.local_sdp.to_bytes().decode()   # a retransmitted/repeated offer
            raise MediaError(f"call {call_id!r} already has an offer from tag {existing.caller.tag!r}")
        caller_kind = WEBRTC if is_webrtc(offer) else RTP
        if transport is None:
            callee_kind = RTP if caller_kind == WEBRTC else WEBRTC
        elif transport.upper() in (WEBRTC, RTP):
            callee_kind = transport.upper()
        else:
            raise MediaError(f"unknown transport {transport!r} (RTP/AVP or UDP/TLS/RTP/SAVPF)")
        caller = MediaLeg(from_tag, caller_kind, remote_sdp=offer, side="a")
        callee = MediaLeg(None, callee_kind, side="b")
        call = MediaCall(call_id, caller, callee)
        self.calls[call_id] = call
        try:
            if caller_kind == WEBRTC:
                try:
                    remote = RemoteTransport.from_sdp(offer, 0)
                except ValueError as exc:
                    raise MediaError(f"WebRTC offer without usable ICE/DTLS: {exc}") from None
                self._open_webrtc(call, caller, remote)
            else:
                await self._open_rtp(call, caller, _rtp_address(offer))
            if callee_kind == WEBRTC:
                codecs = list(_BROWSER_CODECS)
                if self.settings.prefer_passthrough and _offered(offer, "pcmu"):
                    codecs = [("PCMU", 8000), ("opus", 48000, 2), *codecs[2:]]
                local = create_offer(self.address, self.port.port, codecs, proto=WEBRTC, fmtp=_FMTP)
                local.media[0].add_attribute("mid", "0")
                self._open_webrtc(call, callee, None)
                assert callee.webrtc is not None
                callee.webrtc.add_transport_attributes(local, self.address, self.port.port)
            else:
                await self._open_rtp(call, callee, None)
                assert callee.port is not None
                codecs = list(_TRUNK_CODECS)
                if _offered(offer, "pcma") and not _offered(offer, "pcmu"):
                    codecs = [("PCMA", 8000), ("PCMU", 8000), ("telephone-event", 8000)]
                local = create_offer(self.address, callee.port, codecs, ptime=20)
            callee.local_sdp = local
        except BaseException:
            self._drop(call)
            raise
        return local.to_bytes().decode()

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> str:
        """The callee's answer in, our answer for the caller out; the bridge starts here."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        if call.bridge is not None and call.reoffer_from is not None and call.reoffer_from == from_tag:
            return self._reanswer(call, to_tag, self._parse(sdp))
        if call.caller.tag != from_tag:
            raise MediaError(f"call {call_id!r} has no offer from tag {from_tag!r}")
        if call.answer_sdp is not None:
            assert call.caller.local_sdp is not None
            return call.caller.local_sdp.to_bytes().decode()            # 183 then 200, or a retransmission
        answer = self._parse(sdp)
        caller, callee = call.caller, call.callee
        callee.tag = to_tag
        callee.remote_sdp = answer
        callee.codec = negotiated_codec(answer)
        if callee.kind == WEBRTC:
            assert callee.webrtc is not None
            try:
                self.port.set_remote(callee.webrtc, RemoteTransport.from_sdp(answer, 0))
            except ValueError as exc:
                raise MediaError(f"WebRTC answer without usable ICE/DTLS: {exc}") from None
        else:
            assert callee.rtp is not None
            callee.rtp.session.set_remote(_rtp_address(answer))
        offer = caller.remote_sdp
        assert offer is not None
        same = callee.codec.name
        codecs: list[tuple[str, int] | tuple[str, int, int]] = []
        if same in ("pcmu", "pcma") and _offered(offer, same) and (
                self.settings.prefer_passthrough or caller.kind == RTP):
            codecs.append((callee.codec.encoding.upper(), 8000))        # passthrough
        if caller.kind == WEBRTC:
            codecs += [("opus", 48000), ("PCMU", 8000), ("PCMA", 8000)]
            port = self.port.port
        else:
            codecs += [("PCMU", 8000), ("PCMA", 8000)]
            assert caller.port is not None
            port = caller.port
        codecs += [("telephone-event", 48000), ("telephone-event", 8000)]
        local = create_answer(offer, codecs, self.address, port, single_codec=True, local_preference=True)
        if local.media[0].is_rejected:
            raise MediaError("no codec in common with the caller's offer")
        if caller.kind == WEBRTC:
            assert caller.webrtc is not None
            caller.webrtc.add_transport_attributes(local, self.address, self.port.port)
        caller.codec = negotiated_codec(local)
        caller.local_sdp = local
        senders = {leg.side: leg.rtp.session.sender for leg in (caller, callee) if leg.rtp is not None}
        try:
            call.bridge = Bridge(caller.codec, callee.codec, senders=senders,
                                 opus_complexity=self.settings.opus_complexity,
                                 opus_bitrate=self.settings.opus_bitrate)
        except ValueError as exc:
            raise MediaError(str(exc)) from None
        call.answer_sdp = local
        return local.to_bytes().decode()

    # -- re-INVITEs (hold/resume, a new address): same codecs, direction and address follow ---------------
    def _update_remote(self, leg: MediaLeg, sd: SessionDescription) -> None:
        """Apply a party's new SDP to its transport: a plain leg's address, a WebRTC leg's (unchanged) ICE."""
        if leg.rtp is not None:
            address = _rtp_address(sd)
            if address is not None and address != _rtp_address(leg.remote_sdp or sd):
                leg.rtp.session.set_remote(address)
        elif leg.webrtc is not None and leg.webrtc.remote is not None:
            ufrag = sd.media[0].attribute("ice-ufrag") or sd.attribute("ice-ufrag")
            if ufrag and ufrag.strip() != leg.webrtc.remote.ice_ufrag:
                raise MediaError("ICE restart (a new ice-ufrag) is not supported")
        leg.remote_sdp = sd

    def _reoffer(self, call: MediaCall, from_tag: str, offer: SessionDescription) -> str:
        """A re-offer from either party of a bridged call: our last SDP to the other one, direction mirrored."""
        offerer = call.by_tag(from_tag)
        self._update_remote(offerer, offer)
        other = call.other(offerer)
        assert other.local_sdp is not None and other.codec is not None
        local = _restrict(other.local_sdp, other.codec)
        local.media[0].direction = offer.effective_direction(0)
        if offer.is_legacy_hold(0):
            local.media[0].direction = "sendonly" if local.media[0].direction == "sendrecv" else "inactive"
        other.local_sdp = bump_version(local, other.local_sdp)
        call.reoffer_from = from_tag
        return other.local_sdp.to_bytes().decode()

    def _reanswer(self, call: MediaCall, to_tag: str, answer: SessionDescription) -> str:
        """The answer to a re-offer: our last SDP to the offerer, with the answerer's direction."""
        answerer = call.by_tag(to_tag)
        offerer = call.other(answerer)
        self._update_remote(answerer, answer)
        assert offerer.local_sdp is not None and offerer.codec is not None
        local = _restrict(offerer.local_sdp, offerer.codec)
        local.media[0].direction = answer.effective_direction(0)
        offerer.local_sdp = bump_version(local, offerer.local_sdp)
        call.reoffer_from = None
        return offerer.local_sdp.to_bytes().decode()

    def query(self, call_id: str) -> dict[str, Any]:
        """Per-leg statistics of a call (packets, loss, jitter, RTT) and its mode."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        bridge_stats = call.bridge.stats() if call.bridge is not None else {}
        legs: dict[str, Any] = {}
        for leg in (call.caller, call.callee):
            entry: dict[str, Any] = {"transport": leg.kind, "side": leg.side}
            if leg.codec is not None:
                entry["codec"] = leg.codec.encoding
            entry.update(bridge_stats.get(leg.side, {}))
            if leg.rtp is not None:
                session = leg.rtp.session
                entry["rtcp_received"] = session.stats.rtcp_received
                entry["rtt_ms"] = None if session.stats.last_rtt is None else round(session.stats.last_rtt * 1000, 1)
                entry["local_port"] = leg.port
                entry["remote"] = list(session.remote) if session.remote else None
            if leg.webrtc is not None:
                entry["connected"] = leg.webrtc.connected
                entry["remote"] = list(leg.webrtc.remote_address) if leg.webrtc.remote_address else None
            legs[str(leg.tag)] = entry
        mode = bridge_stats.get("mode", {}).get("passthrough") if bridge_stats else None
        return {"call_id": call_id, "passthrough": mode, "legs": legs}

    async def delete(self, call_id: str) -> dict[str, Any]:
        """Tear a call down (DTLS close_notify, RTCP BYE, ports back to the range); returns its final stats."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        stats = self.query(call_id)
        self._drop(call)
        return stats

    def _drop(self, call: MediaCall) -> None:
        self.calls.pop(call.call_id, None)
        if call.bridge is not None:
            call.bridge.close()
        for leg in (call.caller, call.callee):
            self._close_leg(leg)

    def status(self) -> dict[str, Any]:
        """Worker-wide figures (for ping/query without a call)."""
        return {"calls": len(self.calls), "ice_port": self.port.port, "rtp_ports_in_use": self.allocator.in_use,
                "ticks": self.ticks, "late_ticks": self.late_ticks,
                "tick_ms_avg": round(1000 * self.tick_seconds / max(1, self.ticks), 3)}

    @staticmethod
    def _parse(sdp: str | bytes) -> SessionDescription:
        try:
            sd = SessionDescription.parse(sdp)
        except SdpError as exc:
            raise MediaError(f"bad SDP: {exc}") from None
        if not sd.media or sd.media[0].media != "audio":
            raise MediaError("the SDP has no audio m= section first")
        return sd

    async def close(self) -> None:
        """Stop the clock and tear everything down."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for call in list(self.calls.values()):
            self._drop(call)
        self.port.close()
