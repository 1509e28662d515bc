"""Negotiation: a leg's offer/answer (JSEP's shape, docs/callcontrol.md) and the rtpengine-style offer/answer.

``Negotiation`` is the part of ``MediaWorker`` that opens a leg's transport (a port pair of the range for
plain RTP and SDES-SRTP, a browser leg on the ICE port), makes and takes its SDP, keys SDES legs, and applies
re-offers: a new address, an ICE restart, a new SDES key, hold (the peer's ``sendonly``/``inactive`` or
``c=0.0.0.0``: our answer says ``recvonly``/``inactive`` and the leg is sent nothing) and resume, a codec
change. A leg either makes the offer (``leg_offer`` then ``leg_answer``) or takes one (``leg_remote_offer``
then ``leg_create_answer``); re-offers use the same verbs on an established leg.

The rtpengine-style ``offer``/``answer`` of one two-party call are these steps on two legs named
``<call_id>/<from_tag>`` (A, the caller) and ``<call_id>/<to_tag>`` (B, named ``<call_id>/>`` until the
answer brings its tag): A takes the caller's offer, B makes ours to the callee, the callee's answer completes
B, A is answered with B's codec when it can (passthrough) and the two are connected. A re-offer from either
tag of a bridged call is relayed to the other party (its direction mirrored), as rtpengine does.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .sdp import (
    SdpError,
    SessionDescription,
    bump_version,
    create_answer,
    create_offer,
)

from .bridge import Bridge, LegCodec
from .legs import Connection, MediaLeg
from .ports import PortAllocator
from .rtp_port import PlainRtpPort
from .sdp_rules import (
    BROWSER_CODECS,
    CODEC_RTPMAP,
    DIRECTIONS,
    DTMF_MODES,
    FMTP,
    MIRROR,
    OPUS_TRANSCODED_FMTP,
    RTP,
    SDES,
    SDES_PROFILES,
    TRANSPORT_NAMES,
    TRANSPORTS,
    TRUNK_CODECS,
    WEBRTC,
    MediaError,
    is_sdes,
    keeps_codec,
    negotiated_codec,
    offered_codecs,
    offered_direction,
    offers,
    restrict,
    rtp_address,
    set_fmtp,
    set_ice_credentials,
    transport_of,
    usable_crypto,
)
from .session import RtpSession
from .srtp import CryptoAttribute, SrtpError, sdes_context
from .webrtc import RemoteTransport, WebRtcPort

if TYPE_CHECKING:
    from .relay import MediaRelay
    from .worker import MediaSettings

log = logging.getLogger("media.worker")

ICE_PATH = ("0.0.0.0", 0)        # the one "address" of a browser leg's RtpSession: ICE validated the real one
_OPUS = LegCodec(111, "opus", 48000)


def parse_sdp(sdp: str | bytes) -> SessionDescription:
    """An SDP whose first section is audio (MediaError otherwise)."""
    try:
        sd = SessionDescription.parse(sdp)
    except SdpError as exc:
        raise MediaError(f"bad SDP: {exc}") from None
    if not sd.media or sd.media[0].media != "audio":
        raise MediaError("the SDP has no audio m= section first")
    return sd


class Negotiation:
    """Offer/answer of legs (mixed into ``MediaWorker``, which provides the routing callbacks)."""

    settings: MediaSettings
    port: WebRtcPort
    relay: MediaRelay | None
    address: str
    allocator: PortAllocator
    legs: dict[str, MediaLeg]
    calls: dict[str, Connection]
    connections: dict[str, Connection]
    _by_webrtc: dict[int, MediaLeg]
    _ticking: dict[str, Connection]
    _loop: asyncio.AbstractEventLoop

    # -- transports ----------------------------------------------------------------------------------
    async def _open_rtp(self, leg: MediaLeg, remote: tuple[str, int] | None) -> None:
        """Bind a port pair from the range for a plain-RTP leg (skipping ports someone else holds)."""
        for _ in range(16):
            port = self.allocator.allocate()
            session = RtpSession(clock_rate=8000, now=self._loop.time(), remote=remote, rtcp_mux=False,
                                 media_timeout=leg.timeout if leg.timeout is not None else self.settings.media_timeout)
            try:
                leg.rtp = await PlainRtpPort.open(
                    self.settings.bind_host, port, session,
                    lambda packet, now: self._on_rtp(leg, packet, now),
                    lambda event: self._on_session_event(leg, event), endpoints=self.relay)
            except OSError:
                self.allocator.release(port)
                continue
            leg.port = port
            for sock in (leg.rtp.rtp, leg.rtp.rtcp):
                if sock is not None and self.relay is not None:
                    # a datagram for the Python path: take C's counts back before the session sees it
                    sock.transport.hook = lambda: self._touch_leg(leg)  # type: ignore[union-attr]
            return
        raise MediaError("no bindable RTP port in the range")

    def _open_webrtc(self, leg: MediaLeg, remote: RemoteTransport | None) -> None:
        leg.webrtc = self.port.create_leg(remote, leg_id=(leg.call_id or leg.name, leg.tag or leg.name))
        self._by_webrtc[id(leg.webrtc)] = leg

    async def _open_offered(self, leg: MediaLeg, offer: SessionDescription) -> None:
        """The transport of a leg that takes ``offer``: a browser leg with its ICE/DTLS, or a port pair
        towards its address (SDES: keyed with the offer's first a=crypto we take and our own key)."""
        if leg.kind == WEBRTC:
            try:
                remote = RemoteTransport.from_sdp(offer, 0)
            except ValueError as exc:
                raise MediaError(f"WebRTC offer without usable ICE/DTLS: {exc}") from None
            self._open_webrtc(leg, remote)
        else:
            await self._open_rtp(leg, rtp_address(offer))
            if leg.kind == SDES:
                self._key_offered_sdes(leg, offer)

    async def _make_offer(self, leg: MediaLeg, codecs: list[Any], fmtp: dict[str, str]) -> SessionDescription:
        """Open a leg's transport and make our first offer to it (``codecs`` in ``create_offer``'s form)."""
        if leg.kind == WEBRTC:
            local = create_offer(self.address, self.port.port, codecs, proto=WEBRTC, fmtp=fmtp)
            local.media[0].add_attribute("mid", "0")
            self._open_webrtc(leg, None)
            assert leg.webrtc is not None
            leg.webrtc.add_transport_attributes(local, self.address, self.port.port)
        else:
            await self._open_rtp(leg, None)
            assert leg.port is not None
            local = create_offer(self.address, leg.port, codecs, ptime=20, proto=leg.kind, fmtp=fmtp)
            if leg.kind == SDES:              # one key per suite we take, most preferred first
                leg.crypto = [CryptoAttribute.generate(profile, tag) for tag, profile in enumerate(SDES_PROFILES, 1)]
                for crypto in leg.crypto:
                    local.media[0].add_attribute("crypto", str(crypto))
        leg.local_sdp = local
        return local

    def _take_answer(self, leg: MediaLeg, answer: SessionDescription) -> None:
        """The answer to our first offer: the codec it settled on, the peer's transport (ICE/DTLS, address, key)."""
        codec = negotiated_codec(answer)
        if leg.kind == WEBRTC:
            assert leg.webrtc is not None
            try:
                self.port.set_remote(leg.webrtc, RemoteTransport.from_sdp(answer, 0))
            except ValueError as exc:
                raise MediaError(f"WebRTC answer without usable ICE/DTLS: {exc}") from None
        else:
            assert leg.rtp is not None
            leg.rtp.session.set_remote(rtp_address(answer))
            if leg.kind == SDES:
                self._key_answered_sdes(leg, answer)
        leg.codec = codec
        leg.remote_sdp = answer

    def _leg_ready(self, leg: MediaLeg) -> None:
        """A leg's codec is settled: its stream and RTCP session follow it (a browser leg gets its session here:
        statistics of what it sends, and RTCP both ways through its SRTCP keys)."""
        codec = leg.codec
        assert codec is not None
        if leg.webrtc is not None and leg.rtcp is None:
            leg.rtcp = RtpSession(clock_rate=codec.clock_rate, now=self._loop.time(), remote=ICE_PATH, rtcp_mux=True,
                                  media_timeout=leg.timeout if leg.timeout is not None else self.settings.media_timeout)
        sender = leg.sender
        if sender is not None and leg.connection is None:
            sender.payload_type = codec.payload_type
            sender.clock_rate = codec.clock_rate
            sender.frame_samples = codec.clock_rate // 50

    def _close_leg(self, leg: MediaLeg) -> None:
        """Close a leg's transport (RTCP BYE, DTLS close_notify, the ports back to the range)."""
        if leg.rtcp is not None:
            session, leg.rtcp = leg.rtcp, None
            session.close(self._loop.time())          # RTCP BYE, before DTLS close_notify
            if leg.webrtc is not None:
                for datagram in session.datagrams_to_send(self._loop.time()):
                    self.port.send_rtcp(leg.webrtc, datagram.data)
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

    # -- the leg verbs (docs/callcontrol.md "Worker commands") ---------------------------------------
    def _new_leg(self, name: str, kind: str, dtmf: str | None, timeout: Any) -> MediaLeg:
        if not isinstance(name, str) or not name:
            raise MediaError("a leg needs a name (a non-empty string)")
        if name in self.legs:
            raise MediaError(f"leg {name!r} already exists")
        mode = dtmf or "rfc4733"
        if mode not in DTMF_MODES:
            raise MediaError(f"dtmf must be one of {', '.join(DTMF_MODES)}, not {dtmf!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise MediaError(f"timeout must be a positive number of seconds, not {timeout!r}")
        leg = MediaLeg(None, kind, name=name, dtmf_mode=mode, timeout=float(timeout) if timeout else None)
        self.legs[name] = leg
        return leg

    def _leg(self, name: str) -> MediaLeg:
        leg = self.legs.get(name) if isinstance(name, str) else None
        if leg is None:
            raise MediaError(f"unknown leg {name!r}")
        return leg

    async def leg_offer(self, name: str, transport: str | None = None, codecs: list[str] | None = None,
                        dtmf: str | None = None, direction: str | None = None, timeout: Any = None) -> str:
        """Our offer to a leg: a new leg (``transport`` rtp/sdes/webrtc, ``codecs`` in our order of preference,
        ``dtmf`` rfc4733/inband/info) or a re-offer on an established one (its codec kept; ``direction``
        ``sendonly``/``inactive`` holds the peer, ``sendrecv`` resumes it). ``leg_answer`` completes it."""
        if direction is not None and direction not in DIRECTIONS:
            raise MediaError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        leg = self.legs.get(name)
        if leg is not None:
            return self._reoffer_leg(leg, transport, direction)
        kind = TRANSPORTS.get(str(transport or "rtp").lower()) or (transport.upper() if isinstance(transport, str)
                                                                   and transport.upper() in TRANSPORT_NAMES else None)
        if kind is None:
            raise MediaError(f"unknown transport {transport!r} (rtp, sdes or webrtc)")
        if codecs is not None and (not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs)):
            raise MediaError(f"codecs must be a list of codec names (opus, PCMU, PCMA), not {codecs!r}")
        names = [c.lower() for c in codecs] if codecs else (["opus", "pcmu"] if kind == WEBRTC else ["pcmu", "pcma"])
        unknown = [c for c in names if c not in CODEC_RTPMAP]
        if unknown:
            raise MediaError(f"codecs must be opus, PCMU or PCMA, not {unknown!r}")
        leg = self._new_leg(name, kind, dtmf, timeout)
        offered: list[Any] = [CODEC_RTPMAP[c] for c in dict.fromkeys(names)]
        if leg.dtmf_mode == "rfc4733":
            offered += [("telephone-event", 48000), ("telephone-event", 8000)] if "opus" in names \
                else [("telephone-event", 8000)]
        try:
            local = await self._make_offer(leg, offered, dict(FMTP))
        except BaseException:
            self._forget_leg(leg)
            raise
        if direction not in (None, "sendrecv"):
            local.media[0].direction = direction
        leg.offer_direction = direction or "sendrecv"
        leg.pending = "local"
        return local.to_bytes().decode()

    def _reoffer_leg(self, leg: MediaLeg, transport: str | None, direction: str | None) -> str:
        if leg.pending is not None:
            raise MediaError(f"leg {leg.name!r} is in the middle of an offer/answer ({leg.pending} offer)")
        if leg.codec is None or leg.local_sdp is None:
            raise MediaError(f"leg {leg.name!r} has no negotiated media to re-offer")
        if transport is not None and TRANSPORTS.get(str(transport).lower(), str(transport).upper()) != leg.kind:
            raise MediaError(f"leg {leg.name!r} is {TRANSPORT_NAMES[leg.kind]}: a re-offer cannot change its transport")
        local = restrict(leg.local_sdp, leg.codec)
        local.media[0].direction = direction or "sendrecv"
        leg.local_sdp = bump_version(local, leg.local_sdp)
        leg.offer_direction = direction or "sendrecv"
        leg.pending = "local"
        return leg.local_sdp.to_bytes().decode()

    def leg_answer(self, name: str, sdp: str | bytes) -> dict[str, Any]:
        """The remote answer to our offer on leg ``name``: its codec and direction."""
        leg = self._leg(name)
        if leg.pending != "local":
            raise MediaError(f"leg {name!r} has no offer of ours awaiting an answer")
        answer = parse_sdp(sdp)
        self._touch_leg(leg)
        if leg.codec is None:
            self._take_answer(leg, answer)
            self._leg_ready(leg)
        else:
            if not keeps_codec(answer, leg.codec):
                raise MediaError(f"the answer must keep {leg.codec.encoding} on payload type {leg.codec.payload_type}")
            self._update_remote(leg, answer, offer=False)
        leg.pending = None
        direction = answer.effective_direction(0)
        ours = leg.offer_direction or "sendrecv"
        self._set_held(leg, direction in ("sendonly", "inactive") or ours in ("recvonly", "inactive"))
        assert leg.codec is not None
        return {"leg": name, "codec": leg.codec.encoding, "direction": direction}

    async def leg_remote_offer(self, name: str, sdp: str | bytes, dtmf: str | None = None,
                               timeout: Any = None) -> dict[str, Any]:
        """A remote offer on leg ``name`` (a new leg, or a re-offer on an established one): what it asks for.
        ``leg_create_answer`` answers it; a re-offer's new address/ICE credentials/key apply at once."""
        offer = parse_sdp(sdp)
        if not offer.media or offer.media[0].is_rejected:
            raise MediaError("an offer without an active audio section is not supported")
        leg = self.legs.get(name)
        if leg is None:
            leg = self._new_leg(name, transport_of(offer), dtmf, timeout)
            try:
                await self._open_offered(leg, offer)
            except BaseException:
                self._forget_leg(leg)
                raise
        else:
            if leg.pending == "local":
                raise MediaError(f"leg {name!r} awaits the answer to our offer (glare): answer it first")
            if leg.codec is None:
                raise MediaError(f"leg {name!r} already has an offer awaiting our answer")
            if transport_of(offer) != leg.kind:
                raise MediaError(f"leg {name!r} is {TRANSPORT_NAMES[leg.kind]}: a re-offer cannot change its transport")
            self._touch_leg(leg)
            self._update_remote(leg, offer, offer=True)
        leg.offer = offer
        leg.pending = "remote"
        direction = offered_direction(offer)
        return {"leg": name, "transport": TRANSPORT_NAMES[leg.kind], "codecs": offered_codecs(offer),
                "direction": direction, "hold": direction in ("sendonly", "inactive")}

    def leg_create_answer(self, name: str, prefer: str | None = None) -> dict[str, Any]:
        """Our answer to the remote offer on leg ``name``: one codec (``prefer`` first when offered, e.g. the
        partner's for passthrough), the direction mirrored (a hold is answered recvonly/inactive and the leg is
        sent nothing until a later offer resumes it)."""
        leg = self._leg(name)
        offer = leg.offer
        if leg.pending != "remote" or offer is None:
            raise MediaError(f"leg {name!r} has no remote offer to answer")
        if prefer is not None and str(prefer).lower() not in CODEC_RTPMAP:
            raise MediaError(f"prefer must be opus, PCMU or PCMA, not {prefer!r}")
        want = str(prefer).lower() if prefer else None
        first = [CODEC_RTPMAP[want][:2]] if want and offers(offer, want) else []
        other = _OPUS if want == "opus" else None
        direction = offered_direction(offer)
        self._touch_leg(leg)
        previous = leg.local_sdp
        if leg.codec is None:
            local, leg.codec = self._answer_for(leg, offer, first, other, local_preference=bool(first),
                                                events=leg.dtmf_mode == "rfc4733")
            leg.remote_sdp = offer
            self._leg_ready(leg)
        else:
            if keeps_codec(offer, leg.codec):
                local = restrict(leg.local_sdp, leg.codec)  # type: ignore[arg-type]
                if leg.kind == WEBRTC and leg.webrtc is not None:
                    # our last SDP may have been our offer (a=setup:actpass): an answer names the DTLS role
                    # settled since (RFC 5763 §5), as any answer of ours does
                    local = local.copy()
                    leg.webrtc.add_transport_attributes(local, self.address, self.port.port)
            else:
                local, codec = self._answer_for(leg, offer, first, other, local_preference=bool(first),
                                                events=leg.codec.event_payload_type is not None)
                self._leg_codec(leg, local, codec)
            leg.remote_sdp = offer
        local = local.copy()
        local.media[0].direction = MIRROR[direction]
        leg.local_sdp = bump_version(local, previous) if previous is not None else local
        leg.pending = None
        leg.offer = None
        hold = direction in ("sendonly", "inactive")
        self._set_held(leg, hold)
        assert leg.codec is not None
        return {"leg": name, "sdp": leg.local_sdp.to_bytes().decode(), "codec": leg.codec.encoding,
                "direction": MIRROR[direction], "hold": hold}

    def _leg_codec(self, leg: MediaLeg, local: SessionDescription, codec: LegCodec) -> None:
        """A re-offer moved the leg to another codec: its bridge is rebuilt, or its input starts afresh."""
        if leg.connection is not None and leg.connection.bridge is not None:
            self._change_codec(leg.connection, leg, local, codec)
            return
        leg.codec = codec
        leg.local_sdp = local
        session = leg.session
        if session is not None:
            session.clock_rate = codec.clock_rate
        self._leg_ready(leg)
        if leg.input is not None:
            leg.input.close()
            leg.input = None

    # -- the rtpengine-style verbs of one two-party call ---------------------------------------------
    async def offer(self, call_id: str, from_tag: str, sdp: str | bytes,
                    transport: str | None = None) -> str:
        """The caller's offer in, our offer for the callee out (``transport``: RTP/AVP, RTP/SAVP or
        UDP/TLS/RTP/SAVPF; default the other kind than the caller's)."""
        offer = parse_sdp(sdp)
        existing = self.calls.get(call_id)
        if existing is not None:
            self._touch(existing)
            if existing.bridge is not None:
                return self._reoffer(existing, from_tag, offer)
            if existing.caller.tag == from_tag and existing.callee.local_sdp is not None:
                return existing.callee.local_sdp.to_bytes().decode()   # a retransmitted/repeated offer
            raise MediaError(f"call {call_id!r} already has an offer from tag {existing.caller.tag!r}")
        caller_kind = transport_of(offer)
        if transport is None:
            callee_kind = RTP if caller_kind == WEBRTC else WEBRTC
        elif transport.upper() in (WEBRTC, RTP, SDES):
            callee_kind = transport.upper()
        else:
            raise MediaError(f"unknown transport {transport!r} (RTP/AVP, RTP/SAVP or UDP/TLS/RTP/SAVPF)")
        names = (f"{call_id}/{from_tag}", f"{call_id}/>")
        for name in names:
            if name in self.legs:
                raise MediaError(f"leg {name!r} already exists")
        caller = MediaLeg(from_tag, caller_kind, name=names[0], call_id=call_id, remote_sdp=offer, side="a")
        callee = MediaLeg(None, callee_kind, name=names[1], call_id=call_id, side="b")
        call = Connection(call_id, caller, callee, ng=True)
        self.calls[call_id] = call
        self.connections[call_id] = call
        self.legs[caller.name] = caller
        self.legs[callee.name] = callee
        try:
            await self._open_offered(caller, offer)
            if callee_kind == WEBRTC:
                codecs = list(BROWSER_CODECS)
                if self.settings.prefer_passthrough and offers(offer, "pcmu"):
                    codecs = [("PCMU", 8000), ("opus", 48000, 2), *codecs[2:]]
                fmtp = dict(FMTP)
                if not offers(offer, "opus"):          # the caller is G.711: Opus towards the browser transcodes
                    fmtp["opus"] = OPUS_TRANSCODED_FMTP
            else:
                codecs = list(TRUNK_CODECS)
                if offers(offer, "pcma") and not offers(offer, "pcmu"):
                    codecs = [("PCMA", 8000), ("PCMU", 8000), ("telephone-event", 8000)]
                fmtp = {}
            local = await self._make_offer(callee, codecs, fmtp)
        except BaseException:
            self._drop(call)
            raise
        return local.to_bytes().decode()

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> str:
        """The callee's answer in, our answer for the caller out; the two legs are connected here."""
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        self._touch(call)
        if call.bridge is not None and call.reoffer_from is not None and call.reoffer_from == from_tag:
            return self._reanswer(call, to_tag, parse_sdp(sdp))
        if call.caller.tag != from_tag:
            raise MediaError(f"call {call_id!r} has no offer from tag {from_tag!r}")
        if call.answer_sdp is not None:
            assert call.caller.local_sdp is not None
            return call.caller.local_sdp.to_bytes().decode()            # 183 then 200, or a retransmission
        answer = parse_sdp(sdp)
        caller, callee = call.caller, call.callee
        self._take_answer(callee, answer)
        callee.tag = to_tag
        name = f"{call_id}/{to_tag}"
        if name not in self.legs and self.legs.get(callee.name) is callee:
            del self.legs[callee.name]
            callee.name = name
            self.legs[name] = callee
        offer = caller.remote_sdp
        assert offer is not None and callee.codec is not None
        same = callee.codec.name
        codecs: list[tuple[str, int] | tuple[str, int, int]] = []
        if same in ("pcmu", "pcma") and offers(offer, same) and (
                self.settings.prefer_passthrough or caller.kind != WEBRTC):
            codecs.append((callee.codec.encoding.upper(), 8000))        # passthrough
        local, caller.codec = self._answer_for(caller, offer, codecs, callee.codec, local_preference=True)
        caller.local_sdp = local
        for leg in (caller, callee):
            self._leg_ready(leg)
        self._join(call)
        call.answer_sdp = local
        return local.to_bytes().decode()

    def _key_offered_sdes(self, leg: MediaLeg, offer: SessionDescription) -> None:
        """An SDES offer (RTP/SAVP): take its first a=crypto we support and answer it with our own key."""
        offered = usable_crypto(offer)
        if not offered:
            raise MediaError("RTP/SAVP offer without an a=crypto we take ("
                             + ", ".join(p.sdes_name for p in SDES_PROFILES) + "; no MKI)")
        remote = offered[0]
        leg.crypto = [CryptoAttribute.generate(remote.profile, remote.tag)]
        self._key_sdes(leg, remote)

    def _key_answered_sdes(self, leg: MediaLeg, answer: SessionDescription) -> None:
        """The answer to our SDES offer: the a=crypto it accepted (by tag) keys the leg."""
        if answer.media and not is_sdes(answer):
            raise MediaError(f"our RTP/SAVP offer was answered with {answer.media[0].proto}")
        answered = usable_crypto(answer)
        if not answered:
            raise MediaError("the RTP/SAVP answer has no a=crypto we take")
        remote = answered[0]
        local = next((c for c in leg.crypto if c.tag == remote.tag and c.profile == remote.profile), None)
        if local is None:
            raise MediaError(f"the answer's a=crypto {remote.tag} {remote.suite} is not one we offered")
        leg.crypto = [local]
        self._key_sdes(leg, remote)

    def _key_sdes(self, leg: MediaLeg, remote: CryptoAttribute) -> None:
        """(Re)key a plain leg with our a=crypto and the peer's (a re-offer may bring a new peer key)."""
        assert leg.rtp is not None and leg.crypto
        try:
            leg.rtp.srtp = sdes_context(leg.crypto[0], remote)
        except SrtpError as exc:
            raise MediaError(str(exc)) from None
        leg.peer_crypto = remote


    def _update_remote(self, leg: MediaLeg, sd: SessionDescription, *, offer: bool) -> None:
        """Apply a party's new SDP to its transport: a plain leg's address; for a browser, an ICE restart when
        its ice-ufrag changed (answering its re-offer, we take new credentials too: ``leg.local_sdp`` gets them)."""
        if not sd.media or sd.media[0].is_rejected:
            raise MediaError("a new SDP without an active audio section is not supported")
        if leg.rtp is not None:
            if leg.kind == SDES:                      # the peer may re-key in a re-INVITE (RFC 4568 §7.1.4)
                offered = [c for c in usable_crypto(sd) if c.profile == leg.crypto[0].profile]
                if not offered:
                    raise MediaError(f"the new SDP has no a=crypto {leg.crypto[0].suite}: suite changes are not supported")
                if offered[0].key_salt != (leg.peer_crypto.key_salt if leg.peer_crypto else None):
                    self._key_sdes(leg, offered[0])
            address = rtp_address(sd)
            if address is not None and address != rtp_address(leg.remote_sdp or sd):
                leg.rtp.session.set_remote(address)
        elif leg.webrtc is not None and leg.webrtc.remote is not None:
            ufrag = sd.media[0].attribute("ice-ufrag") or sd.attribute("ice-ufrag")
            if ufrag and ufrag.strip() != leg.webrtc.remote.ice_ufrag:
                try:
                    self.port.restart_ice(leg.webrtc, RemoteTransport.from_sdp(sd, 0), new_local=offer)
                except ValueError as exc:
                    raise MediaError(f"ICE restart: {exc}") from None
                if offer and leg.local_sdp is not None:      # what we answer carries the new credentials
                    restarted = leg.local_sdp.copy()
                    set_ice_credentials(restarted, leg.webrtc.ice.local_ufrag, leg.webrtc.ice.local_pwd)
                    leg.local_sdp = bump_version(restarted, leg.local_sdp)
                log.info("ICE restart", extra={"call_id": leg.webrtc.leg_id[0] if leg.webrtc.leg_id else None})
        session = leg.rtp.session if leg.rtp is not None else leg.rtcp
        if session is not None and sd.media:           # on hold it sends nothing: no media timeout meanwhile
            session.expect_media(sd.effective_direction(0) not in ("recvonly", "inactive"), self._loop.time())
        leg.remote_sdp = sd

    def _answer_for(self, leg: MediaLeg, offer: SessionDescription, first: list[Any], other: LegCodec | None,
                    *, local_preference: bool, events: bool = True) -> tuple[SessionDescription, LegCodec]:
        """Our answer to ``leg``'s offer and the codec it settles on: ``first`` codecs (passthrough), then what
        its transport takes, one codec (and telephone-event unless ``events`` is false); with its transport's
        attributes (ICE/DTLS, or our a=crypto). Opus is asked narrowband unless ``other`` has the same audio
        (None: always, the audio is mixed at 8 kHz). Changes nothing: MediaError when no codec fits."""
        audio: list[Any] = [("opus", 48000), ("PCMU", 8000), ("PCMA", 8000)] if leg.kind == WEBRTC \
            else [("PCMU", 8000), ("PCMA", 8000)]
        port = self.port.port if leg.kind == WEBRTC else leg.port
        assert port is not None
        codecs = [*first, *audio]
        if events:
            codecs += [("telephone-event", 48000), ("telephone-event", 8000)]
        local = create_answer(offer, codecs, self.address, port, single_codec=True, local_preference=local_preference)
        if local.media[0].is_rejected:
            raise MediaError(f"no codec in common with the offer of {leg.tag!r} (we take "
                             + ", ".join(str(c[0]) for c in audio) + ")")
        if leg.kind == WEBRTC:
            assert leg.webrtc is not None
            leg.webrtc.add_transport_attributes(local, self.address, self.port.port)
        elif leg.kind == SDES:
            local.media[0].add_attribute("crypto", str(leg.crypto[0]))
        codec = negotiated_codec(local)
        if leg.kind == WEBRTC and codec.name == "opus" and (other is None or not codec.same_audio(other)):
            set_fmtp(local, codec.payload_type, OPUS_TRANSCODED_FMTP)
        return local, codec

    def _codec_answer(self, call: Connection, leg: MediaLeg,
                       offer: SessionDescription) -> tuple[SessionDescription, LegCodec]:
        """For a re-offer without the leg's codec: our answer with one it offers (the other party's first, for
        passthrough). Changes nothing (MediaError when none fits): ``_change_codec`` applies it."""
        other = call.other(leg)
        assert other.codec is not None
        first = [(other.codec.encoding.upper(), 8000)] if other.codec.name in ("pcmu", "pcma") \
            and offers(offer, other.codec.name) and self.settings.prefer_passthrough else []
        return self._answer_for(leg, offer, first, other.codec, local_preference=bool(first))

    def _change_codec(self, call: Connection, leg: MediaLeg, local: SessionDescription, codec: LegCodec) -> None:
        """Move ``leg`` to ``codec`` (our answer ``local``) and rebuild the bridge on the same RTP streams
        (SSRC and sequence numbers carry on, and so do the call's counters)."""
        old = call.bridge
        assert old is not None and leg.local_sdp is not None
        leg.codec = codec
        leg.local_sdp = bump_version(local, leg.local_sdp)
        for forward in call.forwards.values():
            forward.remove()
        call.forwards.clear()
        session = leg.rtp.session if leg.rtp is not None else leg.rtcp
        if session is not None:
            session.clock_rate = leg.codec.clock_rate
        try:
            bridge = Bridge(call.caller.codec, call.callee.codec, senders=dict(old.senders),  # type: ignore[arg-type]
                            opus=self.settings.opus, jitter=self._jitter_class)
        except ValueError as exc:
            raise MediaError(str(exc)) from None
        bridge.muted |= old.muted
        bridge.capture = old.capture
        for side, path in bridge.paths.items():
            path.stats = old.paths[side].stats          # the call's counters go on
        for sender in bridge.senders.values():
            sender.forget_relayed_source()
            sender.start_talkspurt()
        old.close()
        call.bridge = bridge
        call.record_decoders.clear()
        self._ticking[call.call_id] = call
        log.info("codec change: %s now %s", leg.tag, leg.codec.encoding, extra={"call_id": call.call_id})

    def _reoffer(self, call: Connection, from_tag: str, offer: SessionDescription) -> str:
        """A re-offer from either party of a bridged call: our last SDP to the other one, direction mirrored.
        An offer without the party's codec changes it (``_change_codec``); the other party keeps its own."""
        offerer = call.by_tag(from_tag)
        codec = offerer.codec
        assert codec is not None
        if not offer.media or offer.media[0].is_rejected:
            raise MediaError("a re-offer without an active audio section is not supported")
        change = None                       # worked out before anything changes: a bad re-offer leaves the call be
        if not any(
                m.encoding.lower() == codec.name and m.clock_rate == codec.clock_rate and pt == codec.payload_type
                for pt, m in offer.media[0].rtpmap.items()):
            change = self._codec_answer(call, offerer, offer)   # its codec (or that codec's payload type) is gone
        self._update_remote(offerer, offer, offer=True)
        if change is not None:
            self._change_codec(call, offerer, *change)
        other = call.other(offerer)
        assert other.local_sdp is not None and other.codec is not None
        local = restrict(other.local_sdp, other.codec)
        local.media[0].direction = offered_direction(offer)
        other.local_sdp = bump_version(local, other.local_sdp)
        call.reoffer_from = from_tag
        return other.local_sdp.to_bytes().decode()

    def _reanswer(self, call: Connection, to_tag: str, answer: SessionDescription) -> str:
        """The answer to a re-offer: our last SDP to the offerer, with the answerer's direction."""
        answerer = call.by_tag(to_tag)
        offerer = call.other(answerer)
        self._update_remote(answerer, answer, offer=False)
        assert offerer.local_sdp is not None and offerer.codec is not None
        local = restrict(offerer.local_sdp, offerer.codec)
        local.media[0].direction = answer.effective_direction(0)
        offerer.local_sdp = bump_version(local, offerer.local_sdp)
        call.reoffer_from = None
        return offerer.local_sdp.to_bytes().decode()
