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

On an answered call, ``play`` (a file through ``PromptCache.preload`` in an executor, or a beep) and ``dtmf``
(RFC 4733 on the leg's stream, or in-band tones) replace what one leg hears: the bridge holds its audio
towards that side back (``Bridge.muted``) and the clock sends the prompt/events on that side's sender, so
the leg sees one continuous stream. ``record`` writes a two-channel WAV (caller left, callee right) from what
the bridge captures each tick (``Bridge.capture``: decoded frames, or relayed payloads decoded here).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import g711
from .bridge import FRAME_SAMPLES, PCM_RATE, Bridge, LegCodec, Side, fit_frame, tick_bridges
from .certificate import DtlsCertificate
from .dtmf import DtmfEventSender, digit_to_event, dtmf_tone, encode_telephone_event
from .jitter import FastJitterBuffer, Frame, JitterBuffer
from .mixer import Conference
from .opus import OpusConfig, OpusDecoder, OpusEncoder
from .player import Player, PlayerError, Prompt, PromptCache, beep
from .recorder import CallRecorder, RecorderError
from .relay import Forward, MediaRelay, TranscodeTick
from .relay import available as relay_available
from .relay import fileno
from .rtp import RtpError, RtpSender, peek_header, rtp_payload
from .ports import PortAllocator
from .rtp_port import PlainRtpPort
from .sdp import Attribute, RtpMap, SdpError, SessionDescription, bump_version, create_answer, create_offer
from .session import MediaTimeout, RtpSession, SessionEvent
from .srtp import DTLS_SRTP_PROFILES, AES128_CM_SHA1_80, CryptoAttribute, SrtpError, sdes_context
from .session import RtcpReceived as SessionRtcp
from .webrtc import LegClosed, LegEvent, LegFailed, RemoteTransport, RtpReceived, WebRtcLeg, WebRtcPort
from .webrtc import RtcpReceived as WebRtcRtcp

__all__ = ["MediaError", "MediaSettings", "MediaWorker", "WEBRTC", "RTP"]

log = logging.getLogger(__name__)

WEBRTC = "UDP/TLS/RTP/SAVPF"
RTP = "RTP/AVP"
SDES = "RTP/SAVP"                 # plain RTP with SRTP keyed by a=crypto (RFC 4568): trunks and desk phones
_BROWSER_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("opus", 48000, 2), ("PCMU", 8000), ("telephone-event", 48000), ("telephone-event", 8000)]
_TRUNK_CODECS: list[tuple[str, int] | tuple[str, int, int]] = [
    ("PCMU", 8000), ("PCMA", 8000), ("telephone-event", 8000)]
_FMTP = {"opus": "minptime=10;useinbandfec=1", "telephone-event": "0-16"}
# towards a browser whose Opus the worker transcodes to/from G.711: the bridge runs at 8 kHz, so ask for
# narrowband (RFC 7587 maxplaybackrate; browsers then code SILK narrowband, which costs a quarter to decode
# of what fullband does: benchmarks/media/RESULTS.md) and say we send nothing wider
_OPUS_TRANSCODED_FMTP = "minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000"
_AUDIO = ("opus", "pcmu", "pcma")
_pack_hdr = struct.Struct("!BBHII").pack
_DTMF_GAP_MS = 60                  # injected DTMF: silence between two digits
_RECORD_BACKLOG = 3 * FRAME_SAMPLES  # recording of a passthrough leg: at most this much queued per channel
_MAX_MEMBERS = 16                  # legs `mix` may join to one call (supervisors, conference parties)
_MIX_ROLES = {"listen": "listener", "whisper": "whisper", "speak": "speaker"}   # control mode -> mixer role
_POLL_TICKS = 5                    # RTP sessions' timers (RTCP reports, media timeout) are looked at every 100 ms
_ICE_PATH = ("0.0.0.0", 0)        # the one "address" of a browser leg's RtpSession: ICE validated the real one


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
    opus_fec: bool = True                      # in-band FEC towards browsers (used as loss appears)
    opus_dtx: bool = False                     # DTX towards browsers: nothing sent in silence
    prefer_passthrough: bool = True           # same G.711 codec on both legs when both offer it (no transcoding)
    media_timeout: float = 60.0
    tick_ms: int = 20
    tick_slots: int = 4                       # C-ticked paths run in their own 5 ms slot of the 20 ms frame
    g711_batch: bool = True                   # G.711 of all calls of a tick in one numpy call
    c_relay: bool = True                      # passthrough packets forwarded by the C data plane when built
    ice_socket_buffer: int = 8 << 20          # kernel buffers of the browser port, which every browser leg shares

    @property
    def opus(self) -> OpusConfig:
        """The Opus encoder settings of this worker's bridges and mixes."""
        return OpusConfig(self.opus_complexity, self.opus_bitrate, self.opus_fec, self.opus_dtx)

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
    rtcp: RtpSession | None = None             # a browser leg's receive statistics and RTCP reports (SR/RR)
    rtp: PlainRtpPort | None = None
    port: int | None = None
    side: Side = "a"
    crypto: list[CryptoAttribute] = field(default_factory=list)   # SDES: our a=crypto (offered, or answered)
    peer_crypto: CryptoAttribute | None = None                      # SDES: the key the peer protects with


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
    sources: dict[str, "_PromptSource | _DtmfSource"] = field(default_factory=dict)  # by side: replaces its audio
    recorder: CallRecorder | None = None
    record_pcm: dict[str, np.ndarray] = field(default_factory=dict)     # passthrough recording: decoded backlog
    record_decoders: dict[str, OpusDecoder] = field(default_factory=dict)  # Opus passthrough recording
    members: dict[str, _Member] = field(default_factory=dict)   # by tag: legs joined by mix (spy/whisper/speak)
    conference: Conference | None = None       # the parties and the members, while there are members
    mix_encoders: dict[str, OpusEncoder] = field(default_factory=dict)  # an Opus party hearing the conference
    forwards: dict[str, Forward] = field(default_factory=dict)  # by source side: directions forwarded in C

    def leg(self, side: Side) -> MediaLeg:
        return self.caller if side == "a" else self.callee

    def mixed_sides(self) -> set[str]:
        """The parties that hear the conference instead of the bridged audio: everyone once a member speaks,
        else each whisper's target."""
        sides: set[str] = set()
        for member in self.members.values():
            if member.role == "speaker":
                return {"a", "b"}
            if member.role == "whisper" and member.target is not None:
                sides.add(member.target)
        return sides

    def by_tag(self, tag: str) -> MediaLeg:
        """The leg with SIP tag ``tag`` (MediaError if neither has it)."""
        for leg in (self.caller, self.callee):
            if leg.tag == tag:
                return leg
        raise MediaError(f"call {self.call_id!r} has no leg with tag {tag!r}")

    def other(self, leg: MediaLeg) -> MediaLeg:
        return self.callee if leg is self.caller else self.caller


class _PromptSource:
    """A prompt (file or beep, or in-band DTMF tones) sent to one leg instead of the bridged audio."""

    kind = "play"

    def __init__(self, player: Player, done_event: str = "play-done") -> None:
        self.player = player
        self.done_event = done_event

    def tick(self, sender: RtpSender, codec: LegCodec, now: float) -> list[bytes]:
        """The packet of this 20 ms (none once the prompt has ended: ``done``)."""
        frame = self.player.next_frame()
        if frame is None:
            return []
        assert isinstance(frame, bytes)
        return [sender.packetize(frame, now)]

    @property
    def done(self) -> bool:
        return self.player.done

    def stop(self) -> None:
        self.player.stop()


class _DtmfSource:
    """Digits sent to one leg as RFC 4733 telephone-events on its stream; its audio pauses meanwhile."""

    kind = "dtmf"
    done_event = "dtmf-sent"

    def __init__(self, digits: str, duration_ms: int, event_clock: int) -> None:
        self.digits = list(digits)
        self.duration_ms = duration_ms
        self.events = DtmfEventSender(event_clock)
        self.gap = 0                            # ticks of pause left before the next digit
        self._ts = 0

    def tick(self, sender: RtpSender, codec: LegCodec, now: float) -> list[bytes]:
        ept = codec.event_payload_type
        assert ept is not None
        out: list[bytes] = []
        events = self.events
        if events.idle and self.gap <= 0 and self.digits:
            ts = sender.timestamp
            if codec.event_clock_rate != codec.clock_rate:
                ts = (ts * codec.event_clock_rate // codec.clock_rate) & 0xFFFFFFFF
            events.start(self.digits.pop(0), ts, self.duration_ms)
            self.gap = _DTMF_GAP_MS // 20
        if not events.idle:
            for packet in events.tick():
                seq = sender.sequence
                out.append(_pack_hdr(0x80, (0x80 if packet.marker else 0) | ept, seq, packet.timestamp,
                                     sender.ssrc) + encode_telephone_event(packet.event))
                sender.sequence = (seq + 1) & 0xFFFF
                sender.packets_sent += 1
                sender.octets_sent += 4
        elif self.gap > 0:
            self.gap -= 1
        sender.skip()                           # the audio timeline keeps real time under the events
        return out

    @property
    def done(self) -> bool:
        return self.events.idle and not self.digits and self.gap <= 0

    def stop(self) -> None:
        self.digits.clear()
        self.events.stop()


@dataclass
class _Member:
    """A leg ``mix`` joined to a bridged call (plain RTP or a browser): ``listen`` hears both parties (spy),
    ``whisper`` is also heard by one party (``target``: coaching), ``speak`` by everyone (barge-in, a three-way or
    larger conference). All go through the call's ``mixer.Conference`` ("a" and "b" are the parties, members
    are ``m:<tag>``); what a member sends goes through a jitter buffer (and Opus decoder) like a party's."""

    leg: MediaLeg
    sender: RtpSender
    codec: LegCodec
    jitter: JitterBuffer
    role: str = "listener"                     # mixer role: listener / whisper / speaker
    target: str | None = None                  # whisper: the side that hears the member
    decoder: OpusDecoder | None = None         # an Opus member's audio, decoded at 8 kHz
    encoder: OpusEncoder | None = None         # what an Opus member hears
    receives: bool = True                      # False while its SDP says sendonly/inactive (on hold): not sent to

    @property
    def pid(self) -> str:
        return f"m:{self.leg.tag}"

    @property
    def mode(self) -> str:
        return next(mode for mode, role in _MIX_ROLES.items() if role == self.role)

    def close(self) -> None:
        for codec in (self.encoder, self.decoder):
            if codec is not None:
                codec.close()
        self.encoder = self.decoder = None


def _dtmf_prompt(digits: str, duration_ms: int) -> Prompt:
    """In-band DTMF: each digit's tone then a short silence, as one prompt at the bridge rate."""
    gap = np.zeros(PCM_RATE * _DTMF_GAP_MS // 1000, np.int16)
    parts: list[np.ndarray] = []
    for digit in digits:
        parts += [dtmf_tone(digit, duration_ms, PCM_RATE), gap]
    return Prompt.from_samples(np.concatenate(parts), PCM_RATE, name=f"dtmf:{digits}")


def _grow_socket_buffers(sock: Any, size: int) -> None:
    """Receive/send buffers of ``size`` bytes on a UDP socket (beyond net.core.rmem_max/wmem_max when root).

    The browser port carries every browser leg of the worker: at 500 legs the default 208 KiB holds ~10 ms of
    packets, so any pause of the loop longer than that lost packets in the kernel."""
    if sock is None or size <= 0:
        return
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)      # needs CAP_NET_ADMIN
        except (OSError, AttributeError):
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)  # capped by net.core.[rw]mem_max
            except (OSError, AttributeError) as exc:
                log.debug("socket buffer not set: %s", exc)


# SDES suites we take and offer, most preferred first (the 80-bit tag is what every SRTP phone has)
_SDES_PROFILES = (AES128_CM_SHA1_80, *(p for p in DTLS_SRTP_PROFILES if p is not AES128_CM_SHA1_80))


def _is_sdes(sd: SessionDescription) -> bool:
    """Whether an SDP's first section is SRTP keyed in the SDP (RTP/SAVP or RTP/SAVPF without DTLS)."""
    return bool(sd.media) and sd.media[0].proto.upper() in ("RTP/SAVP", "RTP/SAVPF")


def _usable_crypto(sd: SessionDescription) -> list[CryptoAttribute]:
    """The a=crypto lines of the first section we can key a leg with, in the SDP's order (no MKI, no
    session parameters such as UNENCRYPTED_SRTP)."""
    usable = []
    for value in sd.media[0].attributes("crypto") if sd.media else []:
        try:
            crypto = CryptoAttribute.parse(value)
        except SrtpError:
            continue
        if crypto.profile in _SDES_PROFILES and crypto.mki is None and not crypto.session_params:
            usable.append(crypto)
    return usable


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


def _set_ice_credentials(sd: SessionDescription, ufrag: str, pwd: str) -> None:
    """Put new ice-ufrag/ice-pwd (an ICE restart) wherever ``sd`` carries them, media or session level."""
    for attributes in (sd.attributes, *(m.attributes for m in sd.media)):
        for i, attribute in enumerate(attributes):
            if attribute.name == "ice-ufrag":
                attributes[i] = Attribute("ice-ufrag", ufrag)
            elif attribute.name == "ice-pwd":
                attributes[i] = Attribute("ice-pwd", pwd)


def _set_fmtp(sd: SessionDescription, payload_type: int, value: str) -> None:
    """Replace the fmtp of ``payload_type`` in the first section of ``sd``."""
    section = sd.media[0]
    pt = str(payload_type)
    attrs = section.attributes
    line = Attribute("fmtp", f"{pt} {value}")
    for i, a in enumerate(attrs):
        if a.name == "fmtp" and (a.value or "").split(" ", 1)[0] == pt:
            attrs[i] = line
            return
    at = next((i + 1 for i, a in enumerate(attrs) if a.name == "rtpmap" and (a.value or "").split(" ", 1)[0] == pt),
              len(attrs))
    attrs.insert(at, line)


def _offered_direction(sd: SessionDescription) -> str:
    """The direction of an SDP's audio, from its sender's side; the RFC 2543 hold (c=0.0.0.0) is sendonly."""
    direction = sd.effective_direction(0)
    if sd.is_legacy_hold(0):
        direction = "sendonly" if direction == "sendrecv" else "inactive"
    return direction


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
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 relay: MediaRelay | None = None) -> None:
        self.settings = settings
        self.port = port
        self.relay = relay                        # the C data plane reading every socket (None: asyncio + Python)
        self._touched: dict[str, MediaCall] = {}  # calls whose forwards Python pulled back, to load again
        self._ticking: dict[str, MediaCall] = {}  # answered calls the 20 ms clock has work for (not idle relays)
        if relay is not None:
            relay.before_drain = relay.after_drain = self._commit
        # transcoded paths buffer in C where the data plane runs (it fills them, and ticks them when it can)
        self._jitter_class: Any = FastJitterBuffer if relay is not None else JitterBuffer
        self.address = settings.advertised()
        self.allocator = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
        self.calls: dict[str, MediaCall] = {}
        self.on_event = on_event
        self._by_webrtc: dict[int, tuple[MediaCall, MediaLeg]] = {}
        self._loop = asyncio.get_running_loop()
        # the clock runs in slots: tick_slots per 20 ms frame. Python's work runs in slot 0; each C-ticked
        # transcoded path runs in the slot where its jitter buffer started playing, so that a frame waits at
        # most a slot (5 ms), not a frame, before it leaves (benchmarks/media/RESULTS.md: latency)
        self._slots = max(1, settings.tick_slots)
        self._period = settings.tick_ms / 1000.0 / self._slots
        self._slot = 0
        self._next_tick = self._loop.time() + self._period
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.late_ticks = 0                       # slots that ran late
        self.tick_errors = 0                      # slots that raised (logged; the clock goes on)
        self.tick_seconds = 0.0                   # CPU-ish time spent in ticks (loop.time deltas)
        self.prompts = PromptCache(PCM_RATE)      # decoded prompt files (loaded in an executor, never on the tick)
        self._schedule()

    @classmethod
    async def start(cls, settings: MediaSettings | None = None,
                    on_event: Callable[[dict[str, Any]], None] | None = None) -> MediaWorker:
        """Open the browser port and start the media clock."""
        settings = settings or MediaSettings()
        if g711.np is not None:
            g711.tables()      # built now, not in the first transcoded call's tick (a stall of every call)
        if settings.certificate_dir:
            certificate = DtlsCertificate.load_or_create(settings.certificate_dir)
        else:
            certificate = DtlsCertificate.generate()
        holder: list[MediaWorker] = []
        relay = MediaRelay() if settings.c_relay and relay_available() else None
        try:
            port = await WebRtcPort.open(certificate, settings.bind_host, settings.ice_port, endpoints=relay,
                                         public_ip=settings.advertised(),
                                         on_event=lambda event: holder[0]._on_webrtc_event(event))
        except BaseException:
            if relay is not None:
                relay.close()
            raise
        if port.transport is not None:
            _grow_socket_buffers(port.transport.get_extra_info("socket"), settings.ice_socket_buffer)
        worker = cls(settings, port, on_event, relay)
        holder.append(worker)
        return worker

    # -- the media clock -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._next_tick, self._on_tick)

    def _on_tick(self) -> None:
        """Run every due slot (late ones catch up, at most 5 frames' worth at once), then re-arm at the next."""
        loop = self._loop
        now = loop.time()
        due = int((now - self._next_tick) / self._period) + 1
        if due > 1:
            self.late_ticks += due - 1
        limit = 5 * self._slots
        if due > limit:                           # a long stall: drop the backlog rather than burst
            self._next_tick += (due - limit) * self._period
            self._slot += due - limit
            due = limit
        relay = self.relay
        if relay is not None:
            relay.cork()                          # the slot's packets leave in a few sendmmsg calls
        try:
            for _ in range(due):
                try:
                    self._run_slot(loop.time())
                except Exception:  # noqa: BLE001 - one call's bug must not stop every call's clock
                    self.tick_errors += 1
                    log.exception("media clock slot failed")
                self._next_tick += self._period
            if self._slots > 1 and (relay is None or not relay.c.transcoding()):
                skip = -self._slot % self._slots  # no path runs in slots 1..: wake up for the next slot 0
                self._next_tick += skip * self._period
                self._slot += skip
        finally:
            if relay is not None:
                relay.uncork()
            self.tick_seconds += loop.time() - now
            self._schedule()

    def _run_slot(self, now: float) -> None:
        """One slot: the C-ticked paths whose slot it is (all of them with one slot per frame), and in slot 0
        Python's 20 ms step; then the paths C handed back (a DTMF key in their audio) are looked at."""
        slot = self._slot % self._slots
        self._slot += 1
        relay = self.relay
        handbacks: list[str] = []
        if relay is not None:
            self._commit()
            relay.c.tick(now, slot if self._slots > 1 else -1)
            handbacks = relay.c.take_handbacks()
        if slot == 0:
            self._tick(now)
        for call_id in handbacks:                 # after Python's tick: theirs ran in C this frame
            call = self.calls.get(call_id)
            if call is not None:
                self._touch(call)
        if handbacks:
            self._commit()

    def _tick(self, now: float) -> None:
        """Python's 20 ms step: the bridges with work (transcoding that the C tick does not run, prompts,
        recording, DTMF in progress; a passthrough call that only relays is left out until a packet for
        Python comes), then every 100 ms the plain legs' RTCP/timeouts."""
        self.ticks += 1
        relay = self.relay
        calls = list(self._ticking.values())
        tick_bridges([c.bridge for c in calls], now, batch=self.settings.g711_batch)  # type: ignore[misc]
        for call in calls:
            if call.sources:
                self._tick_sources(call, now)
            if call.recorder is not None or call.members:
                for forward in call.forwards.values():
                    if forward.captured is not None:
                        forward.take_captured()   # what C relayed since the last tick, for the recording
                frames = self._tick_frames(call)
                heard = {tag: self._member_frame(member, now) for tag, member in call.members.items()}
                if call.recorder is not None:
                    self._tick_recorder(call, frames, heard)
                if call.members:
                    self._tick_members(call, frames, heard, now)
            self._flush(call)
            bridge = call.bridge
            if (bridge is None or bridge.idle) and not call.sources and call.recorder is None \
                    and not call.members:
                self._ticking.pop(call.call_id, None)
            elif relay is not None and bridge is not None and not bridge.passthrough \
                    and any(self._engageable(call, side) for side in ("a", "b")):
                self._touch(call)                 # a transcoded path is back in its steady state: C again
        if self.ticks % _POLL_TICKS == 0:
            self._poll_sessions(now)
        self._commit()

    def _poll_sessions(self, now: float) -> None:
        """RTCP reports and media timeouts of the legs that are due (plain RTP and browsers, parties and members)."""
        for call in self.calls.values():
            for leg in (call.caller, call.callee, *(member.leg for member in call.members.values())):
                session = leg.rtp.session if leg.rtp is not None else leg.rtcp
                timer = session.get_timer() if session is not None else None
                if timer is None or now < timer:
                    continue
                self._touch(call)                     # RTCP reports and timeouts read what C counted
                if leg.rtp is not None:
                    leg.rtp.poll(now)
                else:
                    assert leg.rtcp is not None
                    leg.rtcp.handle_timer(now)
                    self._drain_browser_session(call, leg)

    def _send(self, leg: MediaLeg, packet: bytes) -> None:
        if leg.webrtc is not None:
            self.port.send_rtp(leg.webrtc, packet)
        elif leg.rtp is not None:
            leg.rtp.send_rtp(packet)

    def _tick_sources(self, call: MediaCall, now: float) -> None:
        """Prompts and injected DTMF: one 20 ms step each, on the leg's own sender (its bridged audio is muted)."""
        bridge = call.bridge
        assert bridge is not None
        for side, source in list(call.sources.items()):
            leg = call.leg(side)  # type: ignore[arg-type]
            assert leg.codec is not None
            for packet in source.tick(bridge.senders[side], leg.codec, now):  # type: ignore[index]
                self._send(leg, packet)
            if source.done:
                self._end_source(call, side, source)

    def _end_source(self, call: MediaCall, side: str, source: _PromptSource | _DtmfSource,
                    reason: str = "done") -> None:
        """Give the leg its bridged audio back and tell the controller."""
        if call.sources.get(side) is not source:
            return
        del call.sources[side]
        if call.bridge is not None:
            if side not in call.mixed_sides():
                call.bridge.muted.discard(side)  # type: ignore[arg-type]
            sender = call.bridge.senders[side]  # type: ignore[index]
            sender.start_talkspurt()
            # telephone-events were numbered by hand: relayed audio coming back needs a fresh seq/ts mapping
            sender.forget_relayed_source()
        self._emit({"event": source.done_event, "call_id": call.call_id, "tag": call.leg(side).tag,  # type: ignore[arg-type]
                    "reason": reason})

    def _tick_frames(self, call: MediaCall) -> list[np.ndarray | None]:
        """This tick's 20 ms of what leg A and leg B sent, from what the bridge decoded/relayed (None: nothing)."""
        bridge = call.bridge
        assert bridge is not None
        frames: list[np.ndarray | None] = []
        for side in ("a", "b"):
            captured = bridge.captured[side]  # type: ignore[index]
            if bridge.passthrough:
                # payloads as relayed: decode them here (G.711, or Opus at 8 kHz), queue, and take 20 ms a tick
                # (packets arrive off the tick: a small backlog absorbs that; beyond it the oldest is dropped)
                name = bridge.codecs[side].name  # type: ignore[index]
                if name == "opus":
                    decoder = call.record_decoders.get(side)
                    if decoder is None:
                        decoder = call.record_decoders[side] = OpusDecoder(PCM_RATE, 1)
                    decode: Callable[[bytes], bytes] = decoder.decode
                else:
                    decode = g711.ulaw_decode if name == "pcmu" else g711.alaw_decode
                parts = [call.record_pcm.get(side, np.zeros(0, np.int16))]
                for payload in captured:
                    if isinstance(payload, bytes) and payload:
                        try:
                            parts.append(np.frombuffer(decode(payload), "<i2"))
                        except Exception:  # noqa: BLE001 - a corrupt packet is a gap in the recording
                            pass
                pcm = np.concatenate(parts) if len(parts) > 1 else parts[0]
                if pcm.size > _RECORD_BACKLOG:
                    pcm = pcm[pcm.size - _RECORD_BACKLOG:]
                if pcm.size >= FRAME_SAMPLES:
                    frames.append(pcm[:FRAME_SAMPLES].astype(np.int16))
                    pcm = pcm[FRAME_SAMPLES:]
                else:
                    frames.append(None)
                call.record_pcm[side] = pcm
            else:
                # decoded frames: arrays from Python's tick, 320-byte PCM from the C tick
                last = captured[-1] if captured else None
                if isinstance(last, bytes):
                    frames.append(np.frombuffer(last, "<i2").astype(np.int16) if len(last) == 2 * FRAME_SAMPLES
                                  else None)
                else:
                    frames.append(last.astype(np.int16, copy=False) if last is not None else None)
            captured.clear()
        return frames

    def _tick_recorder(self, call: MediaCall, frames: list[np.ndarray | None],
                       heard: dict[str, np.ndarray | None]) -> None:
        """Feed the recording one 20 ms frame per leg: A left, B right, with B the members who speak
        (a conference is recorded as the caller and everyone the caller talks with)."""
        recorder = call.recorder
        assert recorder is not None
        right = frames[1]
        speakers = [heard[tag] for tag, member in call.members.items()
                    if member.role == "speaker" and heard.get(tag) is not None]
        if speakers:
            total = np.zeros(FRAME_SAMPLES, np.int32)
            for pcm in ([right] if right is not None else []) + speakers:
                total += pcm  # type: ignore[operator]
            right = np.minimum(np.maximum(total, -32768), 32767).astype(np.int16)
        try:
            recorder.write(frames[0], right)
        except RecorderError as exc:
            self._stop_recording(call)
            self._emit({"event": "record-failed", "call_id": call.call_id, "path": recorder.path,
                        "reason": str(exc)})

    def _member_frame(self, member: _Member, now: float) -> np.ndarray | None:
        """This tick's 20 ms of what a member sent (None: nothing, or a listener, who is heard by nobody)."""
        if member.role == "listener":
            return None
        item = member.jitter.get(now)
        if item is None:
            return None
        decoder = member.decoder
        try:
            if type(item) is Frame:
                if decoder is not None:
                    return fit_frame(np.frombuffer(decoder.decode(item.payload), "<i2"))
                decode = g711.ulaw_decode if member.codec.name == "pcmu" else g711.alaw_decode
                return fit_frame(np.frombuffer(decode(item.payload), "<i2"))
            if decoder is not None:                     # a gap: Opus FEC from the next packet, else PLC
                if item.next_payload is not None:
                    return fit_frame(np.frombuffer(decoder.decode_fec(item.next_payload), "<i2"))
                return fit_frame(np.frombuffer(decoder.decode_plc(), "<i2"))
        except Exception:  # noqa: BLE001 - a corrupt packet is a moment of silence
            return None
        return None

    def _encode(self, codec: LegCodec, pcm: np.ndarray, encoder: OpusEncoder | None) -> bytes:
        """One mixed 8 kHz frame in a leg's codec (G.711 through the table, Opus through ``encoder``)."""
        if codec.name == "opus":
            assert encoder is not None
            return encoder.encode(pcm)
        return g711.encode_batch(pcm[None, :], "ulaw" if codec.name == "pcmu" else "alaw")[0].tobytes()

    def _opus_encoder(self) -> OpusEncoder:
        return self.settings.opus.encoder(PCM_RATE)

    def _tick_members(self, call: MediaCall, frames: list[np.ndarray | None],
                      heard: dict[str, np.ndarray | None], now: float) -> None:
        """Mix the parties and the members: every member hears its mix; the mixed parties (see
        ``MediaCall.mixed_sides``) hear theirs on their own RTP stream instead of the bridged audio."""
        bridge, conference = call.bridge, call.conference
        assert bridge is not None and conference is not None
        inputs: dict[Any, np.ndarray | None] = {"a": frames[0], "b": frames[1]}
        for tag, member in call.members.items():
            inputs[member.pid] = heard.get(tag)
        out = conference.mix(inputs)
        for member in call.members.values():
            if not member.receives:
                member.sender.skip()                # on hold: the timeline runs on, nothing is sent
                continue
            if member.codec.name == "opus" and member.encoder is None:
                member.encoder = self._opus_encoder()
            payload = self._encode(member.codec, out[member.pid], member.encoder)
            self._send(member.leg, member.sender.packetize(payload, now))
        for side in sorted(call.mixed_sides()):
            if side in call.sources:
                continue                            # a prompt/DTMF on that party takes precedence
            codec = bridge.codecs[side]  # type: ignore[index]
            encoder = call.mix_encoders.get(side)
            if codec.name == "opus" and encoder is None:
                encoder = call.mix_encoders[side] = self._opus_encoder()
            payload = self._encode(codec, out[side], encoder)
            self._send(call.leg(side), bridge.senders[side].packetize(payload, now))  # type: ignore[arg-type,index]

    def _on_member_rtp(self, call: MediaCall, member: _Member, packet: bytes, now: float) -> None:
        """Audio from a member: into its jitter buffer (a listener's is not heard by anyone: dropped)."""
        if member.role == "listener":
            return
        try:
            pt, seq, ts, ssrc, _ = peek_header(packet)
        except RtpError:
            return
        if pt == member.codec.payload_type:
            member.jitter.put(seq, ts, rtp_payload(packet), now, ssrc)

    def _update_capture(self, call: MediaCall) -> None:
        if call.bridge is not None:
            call.bridge.capture = call.recorder is not None or bool(call.members)
            if not call.bridge.capture:
                for captured in call.bridge.captured.values():
                    captured.clear()
                call.record_pcm.clear()

    def _stop_recording(self, call: MediaCall) -> dict[str, Any]:
        recorder = call.recorder
        assert recorder is not None
        call.recorder = None
        for decoder in call.record_decoders.values():
            decoder.close()
        call.record_decoders.clear()
        self._update_capture(call)
        try:
            recorder.close()
        except RecorderError as exc:
            log.warning("closing recording %s: %s", recorder.path, exc)
        return {"path": recorder.path, "duration": round(recorder.duration, 2)}

    def _flush(self, call: MediaCall) -> None:
        """Send what the bridge produced on each side's transport, and publish its events."""
        bridge = call.bridge
        assert bridge is not None
        for side, packet in bridge.packets_to_send():
            self._send(call.leg(side), packet)
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
    def _drain_browser_session(self, call: MediaCall, leg: MediaLeg) -> None:
        """Send a browser leg's RTCP (SRTCP through its DTLS keys) and handle its session's events."""
        session = leg.rtcp
        assert session is not None
        for datagram in session.datagrams_to_send(self._loop.time()):
            if leg.webrtc is not None:
                self.port.send_rtcp(leg.webrtc, datagram.data)
        while (event := session.next_event()) is not None:
            if type(event) is SessionRtcp or type(event) is MediaTimeout:
                self._on_session_event(call, leg, event)

    def _on_webrtc_event(self, event: LegEvent) -> None:
        found = self._by_webrtc.get(id(event.leg))
        if found is None:
            return
        call, leg = found
        self._touch(call)
        if type(event) is RtpReceived:
            bridge = call.bridge
            if leg.rtcp is not None:
                leg.rtcp.receive_datagram(event.packet, _ICE_PATH, self._loop.time())
                self._drain_browser_session(call, leg)
            if leg is not call.caller and leg is not call.callee:   # a browser that mix joined to the call
                self._on_leg_rtp(call, leg, event.packet, self._loop.time())
                return
            if bridge is not None:
                bridge.receive_rtp(leg.side, event.packet, self._loop.time())
                self._flush(call)
                if call.call_id not in self._ticking and not bridge.idle:
                    self._ticking[call.call_id] = call
        elif type(event) is WebRtcRtcp:
            if leg.rtcp is not None:                   # RTT, the browser's reports: its session parses them
                leg.rtcp.receive_datagram(event.packet, _ICE_PATH, self._loop.time())
                self._drain_browser_session(call, leg)
        elif isinstance(event, (LegFailed, LegClosed)):
            self._emit({"event": "leg-down", "call_id": call.call_id, "tag": leg.tag,
                        "reason": getattr(event, "reason", "closed")})

    def _receiver_report(self, call: MediaCall, leg: MediaLeg, packets: list[Any]) -> None:
        """A leg's RTCP report about the stream we send it: its loss drives the Opus FEC towards it."""
        bridge = call.bridge
        assert bridge is not None
        ours = bridge.senders[leg.side].ssrc
        for packet in packets:
            for block in getattr(packet, "reports", ()):
                if block.ssrc == ours:
                    bridge.report_loss(leg.side, block.fraction_lost / 256.0)

    def _on_rtp(self, call: MediaCall, leg: MediaLeg, packet: bytes, now: float) -> None:
        bridge = call.bridge
        if bridge is not None:
            bridge.receive_rtp(leg.side, packet, now)
            self._flush(call)
            if call.call_id not in self._ticking and not bridge.idle:
                self._ticking[call.call_id] = call

    def _on_session_event(self, call: MediaCall, leg: MediaLeg, event: SessionEvent) -> None:
        if isinstance(event, SessionRtcp):
            if call.bridge is not None and (leg is call.caller or leg is call.callee):
                self._receiver_report(call, leg, event.packets)
        elif isinstance(event, MediaTimeout):
            self._emit({"event": "timeout", "call_id": call.call_id, "tag": leg.tag, "idle": round(event.idle, 1)})

    # -- the C data plane: passthrough directions forwarded without Python ---------------------------
    def _touch(self, call: MediaCall) -> None:
        """Python is about to look at or change this call's media state: take back what C counted first."""
        if self.relay is None or call.call_id in self._touched:
            return
        self._touched[call.call_id] = call
        for forward in call.forwards.values():
            forward.pull()

    def _commit(self) -> None:
        """Load the forwards of the calls Python touched (runs before the relay reads its sockets again)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        for call in touched.values():
            if self.calls.get(call.call_id) is call:
                for side in ("a", "b"):
                    self._load_forward(call, side)  # type: ignore[arg-type]
                bridge = call.bridge
                if bridge is not None and not bridge.idle:
                    self._ticking[call.call_id] = call   # what C does not tick, Python's clock does

    def _load_forward(self, call: MediaCall, side: Side) -> None:
        """Install, update or remove the C forward of the direction from ``side``: only while the Python path
        would do nothing with its packets but relay them (and keep their payloads when recorded/supervised):
        same codec, no prompt, DTMF tone or whisper towards the other side, both ends known and keyed."""
        relay = self.relay
        assert relay is not None
        forward = call.forwards.get(side)
        if call.bridge is not None and not call.bridge.passthrough:
            self._load_delivery(call, side, forward)
            return
        plan = self._forward_plan(call, side)
        if plan is None:
            if forward is not None:
                forward.remove()
                del call.forwards[side]
            return
        key, out, srtp_in, srtp_out, session, reception = plan
        bridge = call.bridge
        assert bridge is not None
        path = bridge.paths[side]
        if forward is not None and (forward.key != key or forward.reception is not reception):
            forward.remove()
            forward = None
        if forward is None:
            forward = call.forwards[side] = Forward(relay, key, path.stats, path.sender, session, reception)
        mapping = path.sender.relay_mapping()
        assert mapping is not None
        source, seq_off, ts_off, highest = mapping
        forward.load(in_pt=path.src.payload_type, source=source, out_pt=path.dst.payload_type, seq_off=seq_off,
                     ts_off=ts_off, highest=highest, hold_until=path.event_until, out=out, srtp_in=srtp_in,
                     srtp_out=srtp_out, captured=bridge.captured[side] if bridge.capture else None)

    def _load_delivery(self, call: MediaCall, side: Side, forward: Forward | None) -> None:
        """The receive side of a transcoded direction in C: packets of the leg's latched source (plain RTP) or of
        the browser's stream (decrypted) straight into the bridge path's jitter buffer, no datagram/event
        chain; and while the path is in its steady state, its whole tick in C too (``TranscodeTick``)."""
        relay = self.relay
        bridge = call.bridge
        assert relay is not None and bridge is not None
        path = bridge.paths[side]
        src = call.leg(side)
        plan: tuple[tuple[int, str, int], int, Any, Any, Any] | None = None
        if not bridge.closed and isinstance(path.jitter, FastJitterBuffer):
            if src.rtp is not None:
                session = src.rtp.session
                latched = session.latched_source
                fd = fileno(src.rtp.rtp.transport) if src.rtp.rtp is not None else None
                reception = session.sources.get(latched[1]) if latched is not None else None
                srtp = src.rtp.srtp
                handles = srtp.c_handles() if srtp is not None else None
                if latched is not None and fd is not None and reception is not None \
                        and (srtp is None or handles is not None):
                    plan = ((fd, latched[0][0], latched[0][1]), latched[1], handles[0] if handles else None,
                            session, reception)
            elif src.webrtc is not None:
                browser = self._browser_path(src.webrtc)
                session = src.rtcp
                latched = session.latched_source if session is not None else None
                source = latched[1] if latched is not None else path.jitter.ssrc
                reception = session.sources.get(source) if session is not None and source is not None else None
                if browser is not None and source is not None and (session is None or reception is not None):
                    plan = (browser[0], source, browser[1][0], session, reception)
        if plan is None:
            if forward is not None:
                forward.remove()
                del call.forwards[side]
            return
        key, source, srtp_in, session, reception = plan
        if forward is not None and (forward.key != key or forward.reception is not reception):
            forward.remove()
            forward = None
        if forward is None:
            forward = call.forwards[side] = Forward(relay, key, path.stats, None, session, reception)
        forward.load_delivery(in_pt=path.src.payload_type, source=source, srtp_in=srtp_in, jitter=path.jitter)
        output = self._output_plan(call.leg(path.dst_side)) if self._steady(bridge, path) else None
        if output is None:
            return                                 # Python's tick runs it (a DTMF event, a prompt, ...)
        if forward.tick is None:
            forward.tick = TranscodeTick(relay, bridge, side, owner=call.call_id)
        forward.tick.load(*output)

    def _engageable(self, call: MediaCall, side: Side) -> bool:
        """Whether a transcoded path that Python ticks could go to the C tick now: its delivery is in place,
        it is in its steady state and its output is known (checked each tick instead of pulling and loading
        the call again, which a call on hold or under a long prompt would otherwise pay 50 times a second)."""
        bridge = call.bridge
        assert bridge is not None
        path = bridge.paths[side]
        return (not path.c_engaged and path.transcode and side in call.forwards and self._steady(bridge, path)
                and self._output_plan(call.leg(path.dst_side)) is not None)

    def _steady(self, bridge: Bridge, path: Any) -> bool:
        """Whether a transcoded path's tick has nothing but audio to do (the C tick does exactly that, and
        watches for in-band keys): no DTMF event in progress or relayed, no in-band tone to play or digit
        sounding, nothing else sent towards its side (prompt, injected DTMF, a supervisor's whisper). A
        recorded or supervised path stays in C: the C tick appends its decoded frames to ``captured``."""
        rx = path.dtmf_rx
        return (path.tone is None and (path.inband is None or path.inband.idle)
                and path.dst_side not in bridge.muted and self._loop.time() >= path.event_until
                and (rx is None or rx.get_timer() is None)
                and (path.decoder is not None or path.src_law is not None)
                and (path.encoder is not None or path.dst_law is not None))

    def _output_plan(self, dst: MediaLeg) -> tuple[tuple[int, str, int], tuple[Any, int, int] | None] | None:
        """Where the data plane sends a leg's packets: ((fd, host, port), SRTP handles or None), or None when
        it cannot (no address yet, keys not ready, not a relay socket)."""
        if dst.rtp is not None:
            remote = dst.rtp.session.remote
            fd = fileno(dst.rtp.rtp.transport) if dst.rtp.rtp is not None else None
            if remote is None or fd is None:
                return None
            srtp_out = None
            if dst.rtp.srtp is not None:
                handles = dst.rtp.srtp.c_handles()
                if handles is None:
                    return None
                srtp_out = handles[1]
            return (fd, remote[0], remote[1]), srtp_out
        if dst.webrtc is not None:
            browser = self._browser_path(dst.webrtc)
            return (browser[0], browser[1][1]) if browser is not None else None
        return None

    def _browser_path(self, leg: WebRtcLeg) -> tuple[tuple[int, str, int], tuple[Any, Any]] | None:
        """A browser leg as the data plane sees it: ((ICE port fd, host, port), its SRTP ``c_handles()``), or
        None while it has no nominated address or keys (or the port is not a relay socket)."""
        fd = fileno(self.port.transport)
        address = leg.remote_address
        handles = leg.srtp.c_handles() if leg.srtp is not None else None
        if fd is None or address is None or handles is None:
            return None
        return (fd, address[0], address[1]), handles

    def _forward_plan(self, call: MediaCall, side: Side) -> tuple[Any, ...] | None:
        """(key, out, srtp_in, srtp_out, input session, its ReceptionStats) when the direction can be
        forwarded in C, else None."""
        bridge = call.bridge
        if bridge is None or not bridge.passthrough or bridge.closed:
            return None
        path = bridge.paths[side]
        if path.dst_side in bridge.muted or path.tone is not None:
            return None
        mapping = path.sender.relay_mapping()
        if mapping is None:
            return None                          # no source relayed yet: the first packet goes through Python
        source = mapping[0]
        src, dst = call.leg(side), call.leg(path.dst_side)
        session = reception = srtp_in = None
        if src.rtp is not None:
            session = src.rtp.session
            latched = session.latched_source
            fd = fileno(src.rtp.rtp.transport) if src.rtp.rtp is not None else None
            if latched is None or latched[1] != source or fd is None:
                return None
            reception = session.sources.get(source)
            if reception is None:
                return None
            key = (fd, latched[0][0], latched[0][1])
            if src.rtp.srtp is not None:
                handles = src.rtp.srtp.c_handles()
                if handles is None:
                    return None
                srtp_in = handles[0]
        elif src.webrtc is not None:
            browser = self._browser_path(src.webrtc)
            if browser is None:
                return None
            key, handles = browser
            session = src.rtcp
            if session is not None:
                latched = session.latched_source
                reception = session.sources.get(source) if latched is not None and latched[1] == source else None
                if reception is None:
                    return None
            srtp_in = handles[0]
        else:
            return None
        output = self._output_plan(dst)
        if output is None:
            return None
        out, srtp_out = output
        return key, out, srtp_in, srtp_out, session, reception

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
                    lambda event: self._on_session_event(call, leg, event), endpoints=self.relay)
            except OSError:
                self.allocator.release(port)
                continue
            leg.port = port
            for sock in (leg.rtp.rtp, leg.rtp.rtcp):
                if sock is not None and self.relay is not None:
                    # a datagram for the Python path: take C's counts back before the session sees it
                    sock.transport.hook = lambda: self._touch(call)  # type: ignore[union-attr]
            return
        raise MediaError("no bindable RTP port in the range")

    def _key_offered_sdes(self, leg: MediaLeg, offer: SessionDescription) -> None:
        """An SDES offer (RTP/SAVP): take its first a=crypto we support and answer it with our own key."""
        offered = _usable_crypto(offer)
        if not offered:
            raise MediaError("RTP/SAVP offer without an a=crypto we take ("
                             + ", ".join(p.sdes_name for p in _SDES_PROFILES) + "; no MKI)")
        remote = offered[0]
        leg.crypto = [CryptoAttribute.generate(remote.profile, remote.tag)]
        self._key_sdes(leg, remote)

    def _key_answered_sdes(self, leg: MediaLeg, answer: SessionDescription) -> None:
        """The answer to our SDES offer: the a=crypto it accepted (by tag) keys the leg."""
        if answer.media and not _is_sdes(answer):
            raise MediaError(f"our RTP/SAVP offer was answered with {answer.media[0].proto}")
        answered = _usable_crypto(answer)
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

    def _open_webrtc(self, call: MediaCall, leg: MediaLeg, remote: RemoteTransport | None) -> None:
        leg.webrtc = self.port.create_leg(remote, leg_id=(call.call_id, leg.side))
        self._by_webrtc[id(leg.webrtc)] = (call, leg)

    def _close_leg(self, leg: MediaLeg) -> None:
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

    # -- the control operations ----------------------------------------------------------------------
    async def offer(self, call_id: str, from_tag: str, sdp: str | bytes,
                    transport: str | None = None) -> str:
        """The caller's offer in, our offer for the callee out (``transport``: RTP/AVP or UDP/TLS/RTP/SAVPF)."""
        offer = self._parse(sdp)
        existing = self.calls.get(call_id)
        if existing is not None:
            self._touch(existing)
            if existing.bridge is not None:
                return self._reoffer(existing, from_tag, offer)
            if existing.caller.tag == from_tag and existing.callee.local_sdp is not None:
                return existing.callee.local_sdp.to_bytes().decode()   # a retransmitted/repeated offer
            raise MediaError(f"call {call_id!r} already has an offer from tag {existing.caller.tag!r}")
        caller_kind = WEBRTC if is_webrtc(offer) else SDES if _is_sdes(offer) else RTP
        if transport is None:
            callee_kind = RTP if caller_kind == WEBRTC else WEBRTC
        elif transport.upper() in (WEBRTC, RTP, SDES):
            callee_kind = transport.upper()
        else:
            raise MediaError(f"unknown transport {transport!r} (RTP/AVP, RTP/SAVP or UDP/TLS/RTP/SAVPF)")
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
                if caller_kind == SDES:
                    self._key_offered_sdes(caller, offer)
            if callee_kind == WEBRTC:
                codecs = list(_BROWSER_CODECS)
                if self.settings.prefer_passthrough and _offered(offer, "pcmu"):
                    codecs = [("PCMU", 8000), ("opus", 48000, 2), *codecs[2:]]
                fmtp = dict(_FMTP)
                if not _offered(offer, "opus"):          # the caller is G.711: Opus towards the browser transcodes
                    fmtp["opus"] = _OPUS_TRANSCODED_FMTP
                local = create_offer(self.address, self.port.port, codecs, proto=WEBRTC, fmtp=fmtp)
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
                local = create_offer(self.address, callee.port, codecs, ptime=20, proto=callee_kind)
                if callee_kind == SDES:              # one key per suite we take, most preferred first
                    callee.crypto = [CryptoAttribute.generate(profile, tag)
                                     for tag, profile in enumerate(_SDES_PROFILES, 1)]
                    for crypto in callee.crypto:
                        local.media[0].add_attribute("crypto", str(crypto))
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
        self._touch(call)
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
            if callee.kind == SDES:
                self._key_answered_sdes(callee, answer)
        offer = caller.remote_sdp
        assert offer is not None
        same = callee.codec.name
        codecs: list[tuple[str, int] | tuple[str, int, int]] = []
        if same in ("pcmu", "pcma") and _offered(offer, same) and (
                self.settings.prefer_passthrough or caller.kind != WEBRTC):
            codecs.append((callee.codec.encoding.upper(), 8000))        # passthrough
        local, caller.codec = self._answer_for(caller, offer, codecs, callee.codec, local_preference=True)
        caller.local_sdp = local
        for leg in (caller, callee):
            if leg.webrtc is not None and leg.rtcp is None:
                # statistics of what the browser sends, and RTCP both ways (SR/RR, RTT, its loss reports)
                leg.rtcp = RtpSession(clock_rate=leg.codec.clock_rate, now=self._loop.time(), remote=_ICE_PATH,
                                      rtcp_mux=True, media_timeout=self.settings.media_timeout)
        senders = {leg.side: leg.rtp.session.sender if leg.rtp is not None else leg.rtcp.sender  # type: ignore[union-attr]
                   for leg in (caller, callee) if leg.rtp is not None or leg.rtcp is not None}
        try:
            call.bridge = Bridge(caller.codec, callee.codec, senders=senders,
                                 opus=self.settings.opus, jitter=self._jitter_class)
        except ValueError as exc:
            raise MediaError(str(exc)) from None
        call.answer_sdp = local
        self._ticking[call_id] = call
        return local.to_bytes().decode()

    # -- re-INVITEs (hold/resume, a new address): same codecs, direction and address follow ---------------
    def _update_remote(self, leg: MediaLeg, sd: SessionDescription, *, offer: bool) -> None:
        """Apply a party's new SDP to its transport: a plain leg's address; for a browser, an ICE restart when
        its ice-ufrag changed (answering its re-offer, we take new credentials too: ``leg.local_sdp`` gets them)."""
        if not sd.media or sd.media[0].is_rejected:
            raise MediaError("a new SDP without an active audio section is not supported")
        if leg.rtp is not None:
            if leg.kind == SDES:                      # the peer may re-key in a re-INVITE (RFC 4568 §7.1.4)
                offered = [c for c in _usable_crypto(sd) if c.profile == leg.crypto[0].profile]
                if not offered:
                    raise MediaError(f"the new SDP has no a=crypto {leg.crypto[0].suite}: suite changes are not supported")
                if offered[0].key_salt != (leg.peer_crypto.key_salt if leg.peer_crypto else None):
                    self._key_sdes(leg, offered[0])
            address = _rtp_address(sd)
            if address is not None and address != _rtp_address(leg.remote_sdp or sd):
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
                    _set_ice_credentials(restarted, leg.webrtc.ice.local_ufrag, leg.webrtc.ice.local_pwd)
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
            _set_fmtp(local, codec.payload_type, _OPUS_TRANSCODED_FMTP)
        return local, codec

    def _codec_answer(self, call: MediaCall, leg: MediaLeg,
                       offer: SessionDescription) -> tuple[SessionDescription, LegCodec]:
        """For a re-offer without the leg's codec: our answer with one it offers (the other party's first, for
        passthrough). Changes nothing (MediaError when none fits): ``_change_codec`` applies it."""
        other = call.other(leg)
        assert other.codec is not None
        first = [(other.codec.encoding.upper(), 8000)] if other.codec.name in ("pcmu", "pcma") \
            and _offered(offer, other.codec.name) and self.settings.prefer_passthrough else []
        return self._answer_for(leg, offer, first, other.codec, local_preference=bool(first))

    def _change_codec(self, call: MediaCall, leg: MediaLeg, local: SessionDescription, codec: LegCodec) -> None:
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

    def _reoffer(self, call: MediaCall, from_tag: str, offer: SessionDescription) -> str:
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
        local = _restrict(other.local_sdp, other.codec)
        local.media[0].direction = _offered_direction(offer)
        other.local_sdp = bump_version(local, other.local_sdp)
        call.reoffer_from = from_tag
        return other.local_sdp.to_bytes().decode()

    def _reanswer(self, call: MediaCall, to_tag: str, answer: SessionDescription) -> str:
        """The answer to a re-offer: our last SDP to the offerer, with the answerer's direction."""
        answerer = call.by_tag(to_tag)
        offerer = call.other(answerer)
        self._update_remote(answerer, answer, offer=False)
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
        self._touch(call)
        bridge_stats = call.bridge.stats() if call.bridge is not None else {}
        legs: dict[str, Any] = {}
        for leg in (call.caller, call.callee):
            entry: dict[str, Any] = {"transport": leg.kind, "side": leg.side}
            if leg.codec is not None:
                entry["codec"] = leg.codec.encoding
            entry.update(bridge_stats.get(leg.side, {}))
            if leg.rtp is not None:
                session = leg.rtp.session
                if leg.rtp.srtp is not None:
                    entry["srtp"] = leg.rtp.srtp.profile.sdes_name
                    entry["srtp_errors"] = leg.rtp.srtp_errors
                entry["rtcp_received"] = session.stats.rtcp_received
                entry["rtt_ms"] = None if session.stats.last_rtt is None else round(session.stats.last_rtt * 1000, 1)
                entry["local_port"] = leg.port
                entry["remote"] = list(session.remote) if session.remote else None
            if leg.webrtc is not None:
                entry["connected"] = leg.webrtc.connected
                entry["remote"] = list(leg.webrtc.remote_address) if leg.webrtc.remote_address else None
                if leg.rtcp is not None:
                    entry["rtcp_received"] = leg.rtcp.stats.rtcp_received
                    rtt = leg.rtcp.stats.last_rtt
                    entry["rtt_ms"] = None if rtt is None else round(rtt * 1000, 1)
            session = leg.rtp.session if leg.rtp is not None else leg.rtcp
            reception = session.reception() if session is not None else None
            if reception is not None:                  # RFC 3550 receive statistics of what the leg sends us
                entry["rx_lost"] = reception.cumulative_lost
                entry["rx_jitter_ms"] = round(1000 * reception.jitter_seconds, 2)
            legs[str(leg.tag)] = entry
        mode = bridge_stats.get("mode", {}).get("passthrough") if bridge_stats else None
        result: dict[str, Any] = {"call_id": call_id, "passthrough": mode, "legs": legs}
        if call.members:
            members: dict[str, Any] = {}
            for tag, member in call.members.items():
                jitter = member.jitter.stats
                entry = {"transport": member.leg.kind, "codec": member.codec.encoding, "mode": member.mode,
                         "whisper_to": call.leg(member.target).tag if member.target else None,  # type: ignore[arg-type]
                         "packets_in": jitter.received, "lost": jitter.lost, "late": jitter.late,
                         "packets_out": member.sender.packets_sent}
                if member.leg.webrtc is not None:
                    entry["connected"] = member.leg.webrtc.connected
                members[tag] = entry
            result["members"] = members
        return result

    # -- prompts, recording, DTMF injection ---------------------------------------------------------------
    def transcoded(self, call_id: str) -> bool | None:
        """Whether the call's bridge transcodes (None: unknown call or not answered yet)."""
        call = self.calls.get(call_id)
        if call is None or call.bridge is None:
            return None
        return not call.bridge.passthrough

    def _bridged(self, call_id: str) -> MediaCall:
        call = self.calls.get(call_id)
        if call is None:
            raise MediaError(f"unknown call {call_id!r}")
        if call.bridge is None:
            raise MediaError(f"call {call_id!r} is not answered yet (no media bridge)")
        self._touch(call)
        self._ticking[call_id] = call             # a command may give the clock work (prompt, recording...)
        return call

    def _start_source(self, call: MediaCall, leg: MediaLeg, source: _PromptSource | _DtmfSource) -> None:
        """Replace what ``leg`` hears with ``source`` (a running prompt or DTMF on that leg is cut off)."""
        bridge = call.bridge
        assert bridge is not None
        old = call.sources.get(leg.side)
        if old is not None:
            old.stop()
            self._end_source(call, leg.side, old, "replaced")
        call.sources[leg.side] = source
        bridge.muted.add(leg.side)
        bridge.senders[leg.side].start_talkspurt()

    async def play(self, call_id: str, tag: str, file: str | None = None, beep_spec: Any = None,
                   loop: bool = False) -> dict[str, Any]:
        """Play a file (any format PyAV reads) or a beep to the leg ``tag`` instead of the other party's audio.

        The file is decoded and encoded in the leg's codec in an executor (``PromptCache.preload``); the 20 ms
        clock only ever reads the cached frames. A ``play-done`` event follows when it ends (or is replaced).
        """
        call = self._bridged(call_id)
        leg = call.by_tag(tag)
        assert leg.codec is not None
        codec = leg.codec.name
        if file is not None and beep_spec not in (None, False):
            raise MediaError("play: give either 'file' or 'beep', not both")
        if file is not None:
            try:
                prompt = await self._loop.run_in_executor(None, self.prompts.preload, file, (codec,))
            except PlayerError as exc:
                raise MediaError(f"play: {exc}") from None
        elif beep_spec not in (None, False):
            spec = beep_spec if isinstance(beep_spec, dict) else {}
            try:
                prompt = beep(float(spec.get("freq", 1000.0)), int(spec.get("ms", 200)))
                await self._loop.run_in_executor(None, prompt.frames, codec)
            except (PlayerError, TypeError, ValueError) as exc:
                raise MediaError(f"play: bad beep {beep_spec!r}: {exc}") from None
        else:
            raise MediaError("play: needs 'file' (a path on the worker's host) or 'beep'")
        call = self._bridged(call_id)              # the call may have gone while the prompt loaded
        leg = call.by_tag(tag)
        player = Player(prompt, codec, loop=bool(loop))
        self._start_source(call, leg, _PromptSource(player))
        return {"tag": tag, "duration": round(prompt.duration, 3), "frames": player.frame_count}

    def stop_play(self, call_id: str, tag: str) -> dict[str, Any]:
        """Stop a prompt (or injected DTMF) on the leg ``tag``; it hears the other party again."""
        call = self._bridged(call_id)
        leg = call.by_tag(tag)
        source = call.sources.get(leg.side)
        if source is None:
            return {"tag": tag, "stopped": False}
        source.stop()
        self._end_source(call, leg.side, source, "stopped")
        return {"tag": tag, "stopped": True}

    def dtmf(self, call_id: str, tag: str, digits: str, duration_ms: int = 100) -> dict[str, Any]:
        """Send ``digits`` to the leg ``tag``: RFC 4733 events if it negotiated telephone-event, else tones."""
        call = self._bridged(call_id)
        leg = call.by_tag(tag)
        assert leg.codec is not None
        if not isinstance(digits, str) or not digits:
            raise MediaError("dtmf: 'digits' must be a non-empty string of 0-9 * # A-D")
        try:
            for digit in digits:
                digit_to_event(digit)
        except (KeyError, ValueError):
            raise MediaError(f"dtmf: {digits!r} is not a string of DTMF digits (0-9 * # A-D)") from None
        if not isinstance(duration_ms, int) or not 40 <= duration_ms <= 5000:
            raise MediaError(f"dtmf: duration_ms must be an integer within 40..5000, not {duration_ms!r}")
        if leg.codec.event_payload_type is not None:
            source: _PromptSource | _DtmfSource = _DtmfSource(digits.upper(), duration_ms, leg.codec.event_clock_rate)
            mode = "rfc4733"
        else:
            source = _PromptSource(Player(_dtmf_prompt(digits.upper(), duration_ms), leg.codec.name), "dtmf-sent")
            mode = "inband"
        self._start_source(call, leg, source)
        return {"tag": tag, "digits": digits, "mode": mode}

    def record(self, call_id: str, path: str) -> dict[str, Any]:
        """Record the call to a two-channel WAV: the caller (leg A) left, the callee (leg B) right."""
        call = self._bridged(call_id)
        if call.recorder is not None:
            raise MediaError(f"call {call_id!r} is already being recorded to {call.recorder.path}")
        if not isinstance(path, str) or not path:
            raise MediaError("record: missing 'path'")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise MediaError(f"record: directory {directory} does not exist")
        try:
            call.recorder = CallRecorder(path, channels=2, sample_rate=PCM_RATE)
        except RecorderError as exc:
            raise MediaError(f"record: {exc}") from None
        assert call.bridge is not None
        if not call.bridge.capture:
            for captured in call.bridge.captured.values():
                captured.clear()
        call.bridge.capture = True
        return {"path": path, "channels": {"left": call.caller.tag, "right": call.callee.tag}}

    def stop_record(self, call_id: str) -> dict[str, Any]:
        """Finish the call's recording (header completed); returns its path and duration."""
        call = self._bridged(call_id)
        if call.recorder is None:
            raise MediaError(f"call {call_id!r} is not being recorded")
        return self._stop_recording(call)

    async def mix(self, call_id: str, tag: str, sdp: str | bytes, mode: str = "listen",
                  whisper_to: str | None = None) -> str:
        """Join the leg ``tag`` to a bridged call, or change its mode: ``listen`` hears both parties (spy),
        ``whisper`` is also heard by the party ``whisper_to`` (mixed into the other party's audio; the other
        party never hears it), ``speak`` is heard by everyone (barge-in; several make a conference). ``sdp`` is
        the member's offer, plain RTP (PCMU/PCMA) or WebRTC (Opus/PCMU/PCMA); our answer comes back. Again
        with the same tag: the mode changes, and a new SDP is the member's re-INVITE (hold/resume, a new
        address, an ICE restart; its codec stays)."""
        call = self._bridged(call_id)
        role = _MIX_ROLES.get(mode)
        if role is None:
            raise MediaError(f"mix: mode must be 'listen', 'whisper' or 'speak', not {mode!r}")
        target: str | None = None
        if role == "whisper":
            if not whisper_to:
                raise MediaError("mix: whisper needs 'whisper_to' (the tag of the leg that hears the supervisor)")
            target = call.by_tag(whisper_to).side
        if tag in (call.caller.tag, call.callee.tag):
            raise MediaError(f"mix: {tag!r} is a party of the call, not a member")
        member = call.members.get(tag)
        if member is None:
            if len(call.members) >= _MAX_MEMBERS:
                raise MediaError(f"mix: call {call_id!r} already has {_MAX_MEMBERS} members")
            member = await self._open_member(call, tag, self._parse(sdp))
        elif sdp:
            offer = self._parse(sdp)
            assert member.leg.remote_sdp is not None
            if offer.to_bytes() != member.leg.remote_sdp.to_bytes():
                self._reoffer_member(member, offer)
        before = call.mixed_sides()
        assert call.conference is not None and call.bridge is not None
        member.role, member.target = role, target
        if member.pid in call.conference:
            call.conference.set_role(member.pid, role, target)
        else:
            call.conference.add(member.pid, role, target=target)
        self._remix(call, before)
        call.bridge.capture = True
        assert member.leg.local_sdp is not None
        return member.leg.local_sdp.to_bytes().decode()

    def _reoffer_member(self, member: _Member, offer: SessionDescription) -> None:
        """A member's re-INVITE: its new address or ICE restart applied, its hold/resume followed (we do not
        send to a member that does not want to receive), our answer's direction mirrored. Refused before
        anything changes when its codec is gone or it moves to SDES (``stop_mix`` and ``mix`` again)."""
        leg, codec = member.leg, member.codec
        if _is_sdes(offer) or is_webrtc(offer) != (leg.kind == WEBRTC):
            raise MediaError("mix: a member's re-offer cannot change its transport; stop_mix and mix again")
        if not offer.media or offer.media[0].is_rejected:
            raise MediaError("mix: a member's re-offer without an active audio section is not supported")
        if not any(m.encoding.lower() == codec.name and m.clock_rate == codec.clock_rate and pt == codec.payload_type
                   for pt, m in offer.media[0].rtpmap.items()):
            raise MediaError(f"mix: a member's re-offer must keep {codec.encoding}/{codec.clock_rate} on payload "
                             f"type {codec.payload_type}; for another codec, stop_mix and mix again")
        self._update_remote(leg, offer, offer=True)
        direction = _offered_direction(offer)
        member.receives = direction in ("sendrecv", "recvonly")
        assert leg.local_sdp is not None
        local = leg.local_sdp.copy()
        local.media[0].direction = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)
        leg.local_sdp = bump_version(local, leg.local_sdp)

    async def _open_member(self, call: MediaCall, tag: str, offer: SessionDescription) -> _Member:
        """The member's leg: a port of the range (plain RTP) or a browser leg on the ICE port, and our answer."""
        if _is_sdes(offer):
            raise MediaError("mix: a member with SDES-SRTP (RTP/SAVP) is not supported; offer RTP/AVP or WebRTC")
        leg = MediaLeg(tag, WEBRTC if is_webrtc(offer) else RTP, remote_sdp=offer, side="a")
        if leg.kind == WEBRTC:
            try:
                remote = RemoteTransport.from_sdp(offer, 0)
            except ValueError as exc:
                raise MediaError(f"mix: WebRTC offer without usable ICE/DTLS: {exc}") from None
            leg.webrtc = self.port.create_leg(remote, leg_id=(call.call_id, f"m:{tag}"))
        else:
            await self._open_member_rtp(call, leg, _rtp_address(offer))
        try:                                        # mixed at 8 kHz; a member's DTMF is not taken
            local, leg.codec = self._answer_for(leg, offer, [], None, local_preference=True, events=False)
        except MediaError:
            self._close_leg(leg)
            raise
        if leg.webrtc is not None:
            leg.rtcp = RtpSession(clock_rate=leg.codec.clock_rate, now=self._loop.time(), remote=_ICE_PATH,
                                  rtcp_mux=True, media_timeout=self.settings.media_timeout)
            sender = leg.rtcp.sender
        else:
            assert leg.rtp is not None
            sender = leg.rtp.session.sender
        sender.payload_type = leg.codec.payload_type
        leg.local_sdp = local
        member = _Member(leg, sender, leg.codec, self._jitter_class(leg.codec.clock_rate),
                         decoder=OpusDecoder(PCM_RATE, 1) if leg.codec.name == "opus" else None,
                         receives=_offered_direction(offer) in ("sendrecv", "recvonly"))
        if self.calls.get(call.call_id) is not call or call.bridge is None or tag in call.members:
            member.close()                         # the call went (or got this member) while the port opened
            self._close_leg(leg)
            raise MediaError(f"call {call.call_id!r} changed while the member leg was being set up")
        if leg.webrtc is not None:
            self._by_webrtc[id(leg.webrtc)] = (call, leg)
        if call.conference is None:
            call.conference = Conference(FRAME_SAMPLES, conference_id=call.call_id)
            call.conference.add("a")
            call.conference.add("b")
        call.members[tag] = member
        return member

    def _remix(self, call: MediaCall, before: set[str]) -> None:
        """Who hears the conference changed: mute the bridged audio towards the newly mixed parties and give it
        back to those no longer mixed (a prompt or DTMF playing on a party keeps it muted until it ends)."""
        bridge = call.bridge
        assert bridge is not None
        after = call.mixed_sides()
        for side in after - before:
            bridge.muted.add(side)  # type: ignore[arg-type]
            bridge.senders[side].start_talkspurt()  # type: ignore[index]
        for side in before - after:
            encoder = call.mix_encoders.pop(side, None)
            if encoder is not None:
                encoder.close()
            if side not in call.sources:
                bridge.muted.discard(side)  # type: ignore[arg-type]
                sender = bridge.senders[side]  # type: ignore[index]
                sender.start_talkspurt()
                sender.forget_relayed_source()     # relayed audio comes back: a fresh seq/ts mapping

    def stop_mix(self, call_id: str, tag: str | None = None) -> dict[str, Any]:
        """Drop the member ``tag`` (default: every member); the parties hear what is left."""
        call = self._bridged(call_id)
        if not call.members:
            raise MediaError(f"call {call_id!r} has no supervisor or conference member")
        if tag is not None and tag not in call.members:
            raise MediaError(f"call {call_id!r} has no member {tag!r}")
        tags = [tag] if tag is not None else list(call.members)
        for name in tags:
            self._drop_member(call, name)
        return {"tag": tags[0], "tags": tags}

    def _drop_member(self, call: MediaCall, tag: str) -> None:
        member = call.members.get(tag)
        if member is None:
            return
        before = call.mixed_sides()
        del call.members[tag]
        if call.conference is not None and member.pid in call.conference:
            call.conference.remove(member.pid)
        if call.bridge is not None:
            self._remix(call, before)
        if not call.members:
            call.conference = None
        member.close()
        self._close_leg(member.leg)
        self._update_capture(call)

    async def _open_member_rtp(self, call: MediaCall, leg: MediaLeg, remote: tuple[str, int] | None) -> None:
        for _ in range(16):
            port = self.allocator.allocate()
            session = RtpSession(clock_rate=8000, now=self._loop.time(), remote=remote, rtcp_mux=False,
                                 media_timeout=self.settings.media_timeout)
            try:
                leg.rtp = await PlainRtpPort.open(
                    self.settings.bind_host, port, session,
                    lambda packet, now: self._on_leg_rtp(call, leg, packet, now),
                    lambda event: self._on_session_event(call, leg, event), endpoints=self.relay)
            except OSError:
                self.allocator.release(port)
                continue
            leg.port = port
            return
        raise MediaError("no bindable RTP port in the range")

    def _on_leg_rtp(self, call: MediaCall, leg: MediaLeg, packet: bytes, now: float) -> None:
        """RTP from a member's leg (looked up by tag: the member may have gone meanwhile)."""
        member = call.members.get(str(leg.tag))
        if member is not None and member.leg is leg:
            self._on_member_rtp(call, member, packet, now)

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
        self._touched.pop(call.call_id, None)
        self._ticking.pop(call.call_id, None)
        for forward in call.forwards.values():
            forward.remove()
        call.forwards.clear()
        call.sources.clear()
        if call.recorder is not None:
            self._stop_recording(call)
        for tag in list(call.members):
            self._drop_member(call, tag)
        for encoder in call.mix_encoders.values():
            encoder.close()
        call.mix_encoders.clear()
        if call.bridge is not None:
            call.bridge.close()
        for leg in (call.caller, call.callee):
            self._close_leg(leg)

    def status(self) -> dict[str, Any]:
        """Worker-wide figures (for ping/query without a call)."""
        status: dict[str, Any] = {
            "calls": len(self.calls), "ice_port": self.port.port, "rtp_ports_in_use": self.allocator.in_use,
            "ticks": self.ticks, "late_ticks": self.late_ticks, "tick_errors": self.tick_errors,
            "tick_ms_avg": round(1000 * self.tick_seconds / max(1, self.ticks), 3)}
        status["relay"] = self.relay.stats() if self.relay is not None else None
        return status

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
        if self.relay is not None:
            self.relay.close()
