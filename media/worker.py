"""One media worker (one process, one event loop): legs, their connections and conferences, the media clock.

``MediaWorker`` owns one ``WebRtcPort`` (ICE-lite, every browser leg on one UDP port), a ``PortAllocator``
range with one ``PlainRtpPort`` (RTP + RTCP sockets around an ``RtpSession``) per plain leg, and a 20 ms
clock (``media/clock.py``). Its model is the one of docs/callcontrol.md: **legs** named by the caller of
the API, each negotiated on its own (``media/negotiation.py``), joined in pairs by ``connect`` (a
``Bridge``: passthrough when the codecs match, in the C data plane where it is built, ``media/offload.py``;
transcoded otherwise) or in any number by ``conference_join`` (``media/conference.py``)::

    worker = await MediaWorker.start(MediaSettings(advertised_address="203.0.113.7"))
    await worker.leg_remote_offer("c1/a", caller_sdp)               # a caller's offer
    answer = worker.leg_create_answer("c1/a")["sdp"]                 # parked: answered alone
    await worker.play("c1/a", ["moh.wav"], loop=True)               # music on hold
    offer = await worker.leg_offer("c1/agent", transport="webrtc")  # an agent's browser
    worker.leg_answer("c1/agent", agent_sdp)
    worker.connect("c1/a", "c1/agent")                              # the music stops, they talk

Per leg, whatever it is connected to over time: ``play`` (files, a playlist, ``loop``; ``mix`` mixes it over
what the leg hears), ``stop_play``, ``record`` (two channels: left what the leg sends, right what it hears),
``stop_record``, ``dtmf`` (sent in the leg's mode) and DTMF detection, media timeout. Events are dicts that
name the leg (``{"event": "dtmf", "leg": ..., "digit": ...}``). The rtpengine-style verbs (``offer``,
``answer``, ``delete``, ``query``, and ``play``/``record``/``dtmf``/``mix`` by Call-ID and tag) are these same
legs, named ``<call_id>/<tag>`` (docs/media.md).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import g711
from .bridge import FRAME_SAMPLES, PCM_RATE, Bridge, LegCodec, tick_bridges
from .calls import CallVerbs
from .certificate import DtlsCertificate
from .clock import MediaClock
from .conference import Conferences, Room
from .jitter import FastJitterBuffer, JitterBuffer
from .legs import Connection, LegInput, MediaLeg
from .negotiation import ICE_PATH, Negotiation, parse_sdp
from .offload import RelayOffload
from .opus import OpusConfig, OpusDecoder, OpusEncoder
from .playback import LegPlayback
from .player import PromptCache
from .ports import PortAllocator
from .recorder import RecorderError
from .relay import MediaRelay
from .relay import available as relay_available
from .sdp_rules import (
    RTP,
    SDES,
    TRANSPORT_NAMES,
    WEBRTC,
    MediaError,
    is_webrtc,
    negotiated_codec,
)
from .session import MediaTimeout, SessionEvent
from .session import RtcpReceived as SessionRtcp
from .webrtc import LegClosed, LegEvent, LegFailed, RtpReceived, WebRtcPort
from .webrtc import RtcpReceived as WebRtcRtcp

__all__ = ["MediaError", "MediaSettings", "MediaWorker", "WEBRTC", "RTP", "SDES", "is_webrtc", "negotiated_codec"]

log = logging.getLogger(__name__)

_RECORD_BACKLOG = 3 * FRAME_SAMPLES  # capture of a passthrough leg: at most this much queued per channel
_POLL_TICKS = 5                    # RTP sessions' timers (RTCP reports, media timeout) are looked at every 100 ms
_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)


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


class MediaWorker(MediaClock, RelayOffload, Negotiation, Conferences, LegPlayback, CallVerbs):
    """The media plane of one process: browser port, RTP ports, legs, connections, conferences, the clock."""

    def __init__(self, settings: MediaSettings, port: WebRtcPort,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 relay: MediaRelay | None = None) -> None:
        self.settings = settings
        self.port = port
        self.relay = relay                        # the C data plane reading every socket (None: asyncio + Python)
        self._touched: dict[str, Connection] = {}  # connections whose forwards Python pulled back, to load again
        self._ticking: dict[str, Connection] = {}  # connections the 20 ms clock has work for (not idle relays)
        if relay is not None:
            relay.before_drain = relay.after_drain = self._commit
        # transcoded paths buffer in C where the data plane runs (it fills them, and ticks them when it can)
        self._jitter_class: Any = FastJitterBuffer if relay is not None else JitterBuffer
        self.address = settings.advertised()
        self.allocator = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
        self.legs: dict[str, MediaLeg] = {}
        self.calls: dict[str, Connection] = {}    # the rtpengine-style calls, by Call-ID
        self.connections: dict[str, Connection] = {}
        self.rooms: dict[str, Room] = {}
        self._solo: dict[str, MediaLeg] = {}      # legs alone with work for the clock (a prompt, a recording...)
        self._connection_ids = itertools.count(1)
        self.on_event = on_event
        self._by_webrtc: dict[int, MediaLeg] = {}
        self._loop = asyncio.get_running_loop()
        self.prompts = PromptCache(PCM_RATE)      # decoded prompt files (loaded in an executor, never on the tick)
        self._playlists: dict[tuple[Any, ...], Any] = {}   # playlists of several files, concatenated and encoded
        self._start_clock(settings.tick_ms, settings.tick_slots)

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

    # -- Python's 20 ms step ---------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        """Python's 20 ms step: the connections with work (transcoding that the C tick does not run, prompts,
        recordings, overlays, DTMF in progress; a passthrough connection that only relays is left out until a
        packet for Python comes), the legs alone with work, the conferences, then every 100 ms the RTCP and
        media timeouts of every leg."""
        self.ticks += 1
        relay = self.relay
        calls = list(self._ticking.values())
        tick_bridges([c.bridge for c in calls if c.bridge is not None], now, batch=self.settings.g711_batch)
        for call in calls:
            bridge = call.bridge
            if bridge is None:
                self._ticking.pop(call.call_id, None)
                continue
            a, b = call.caller, call.callee
            if a.source is not None or b.source is not None:
                self._tick_sources(call, now)
            if bridge.capture:
                for forward in call.forwards.values():
                    if forward.captured is not None:
                        forward.take_captured()   # what C relayed since the last tick, for the recording
                frames = self._tick_frames(call)
                out = None
                if call.members:
                    heard = {tag: self._member_frame(member, now) for tag, member in call.members.items()}
                    out = self._tick_members(call, frames, heard, now)
                self._tick_composed(call, frames, out, now)
            self._flush(call)
            if bridge.idle and not self._has_work(call):
                self._ticking.pop(call.call_id, None)
            elif relay is not None and not bridge.passthrough \
                    and any(self._engageable(call, side) for side in ("a", "b")):
                self._touch(call)                 # a transcoded path is back in its steady state: C again
        if self._solo:
            self._tick_solo(now)
        if self.rooms:
            self._tick_rooms(now)
        if self.ticks % _POLL_TICKS == 0:
            self._poll_sessions(now)
        self._commit()

    @staticmethod
    def _has_work(call: Connection) -> bool:
        a, b = call.caller, call.callee
        return bool(a.source or b.source or a.recorder or b.recorder or a.overlay or b.overlay or call.members)

    def _tick_sources(self, call: Connection, now: float) -> None:
        """Prompts and injected DTMF: one 20 ms step each, on the leg's own sender (its bridged audio is muted)."""
        for leg in call.legs():
            source = leg.source
            if source is None or leg.codec is None:
                continue
            sender = leg.sender
            assert sender is not None
            for packet in source.tick(sender, leg.codec, now, send=not leg.held):
                self._send(leg, packet)
            if source.done:
                self._end_source(leg, source)

    def _tick_composed(self, call: Connection, frames: list[np.ndarray | None], out: dict[Any, np.ndarray] | None,
                       now: float) -> None:
        """What the worker composes on a connection: the members' mix and overlays sent to the legs that hear
        them, and each recorded leg's two channels (what it sent, what it heard)."""
        mixed = call.mixed_sides() if out is not None else set()
        for i, side in enumerate(("a", "b")):
            leg = call.leg(side)  # type: ignore[arg-type]
            heard: np.ndarray | None = out[side] if side in mixed and out is not None else frames[1 - i]
            if leg.source is not None:
                heard = leg.source.heard
            elif side in mixed or leg.overlay is not None:
                overlay = leg.overlay
                if overlay is not None:
                    heard = overlay.add(heard)
                if not leg.held:
                    self._send_pcm(leg, heard if heard is not None else _SILENCE, now)
                if overlay is not None and overlay.done:
                    self._end_overlay(leg, overlay)
            if leg.recorder is not None:
                self._record(leg, frames[i], heard)

    def _tick_solo(self, now: float) -> None:
        """Legs in no connection or conference: what they send (DTMF detection, a recording's left channel),
        and what is played to them."""
        for name, leg in list(self._solo.items()):
            if leg.connection is not None or leg.room is not None or self.legs.get(name) is not leg \
                    or leg.codec is None:
                self._solo.pop(name, None)
                continue
            inp = leg.input
            frame = inp.frame(now) if inp is not None else None
            if inp is not None and inp.digits:
                self._report_digits(leg)
            self._leg_output(leg, None, frame, now)
            if leg.source is None and leg.overlay is None and leg.recorder is None \
                    and (inp is None or not inp.busy(now)):
                self._solo.pop(name, None)

    def _leg_output(self, leg: MediaLeg, heard: np.ndarray | None, sent: np.ndarray | None, now: float) -> None:
        """One 20 ms of what a leg outside a bridge hears: a prompt replacing ``heard`` (a conference mix, or
        nothing), else ``heard`` with an overlay mixed in; nothing is sent to a leg on hold. Recorded."""
        source = leg.source
        if source is not None:
            sender = leg.sender
            assert sender is not None and leg.codec is not None
            for packet in source.tick(sender, leg.codec, now, send=not leg.held):
                self._send(leg, packet)
            heard = source.heard
            if source.done:
                self._end_source(leg, source)
        else:
            overlay = leg.overlay
            if overlay is not None:
                heard = overlay.add(heard)
                if overlay.done:
                    self._end_overlay(leg, overlay)
            if heard is not None:
                if leg.held:
                    sender = leg.sender
                    if sender is not None:
                        sender.skip()
                else:
                    self._send_pcm(leg, heard, now)
        if leg.recorder is not None:
            self._record(leg, sent, heard)

    def _send_pcm(self, leg: MediaLeg, pcm: np.ndarray, now: float) -> None:
        """One 8 kHz frame to a leg, encoded in its codec on its own stream."""
        codec, sender = leg.codec, leg.sender
        assert codec is not None and sender is not None
        if codec.name == "opus" and leg.encoder is None:
            leg.encoder = self._opus_encoder()
        self._send(leg, sender.packetize(self._encode(codec, pcm, leg.encoder), now))

    def _encode(self, codec: LegCodec, pcm: np.ndarray, encoder: OpusEncoder | None) -> bytes:
        """One mixed 8 kHz frame in a leg's codec (G.711 through the table, Opus through ``encoder``)."""
        if codec.name == "opus":
            assert encoder is not None
            return encoder.encode(pcm)
        return g711.encode_batch(pcm[None, :], "ulaw" if codec.name == "pcmu" else "alaw")[0].tobytes()

    def _opus_encoder(self) -> OpusEncoder:
        return self.settings.opus.encoder(PCM_RATE)

    def _record(self, leg: MediaLeg, sent: np.ndarray | None, heard: np.ndarray | None) -> None:
        recorder = leg.recorder
        assert recorder is not None
        try:
            recorder.write(sent, heard)
        except RecorderError as exc:
            self._stop_recording(leg)
            self._emit({"event": "record-failed", **leg.ids(), "path": recorder.path, "reason": str(exc)})

    def _poll_sessions(self, now: float) -> None:
        """RTCP reports and media timeouts of the legs that are due (plain RTP and browsers, and `mix` members)."""
        legs = list(self.legs.values())
        for call in self.calls.values():
            legs += [member.leg for member in call.members.values()]
        for leg in legs:
            session = leg.session
            timer = session.get_timer() if session is not None else None
            if timer is None or now < timer:
                continue
            self._touch_leg(leg)                  # RTCP reports and timeouts read what C counted
            if leg.rtp is not None:
                leg.rtp.poll(now)
            else:
                assert leg.rtcp is not None
                leg.rtcp.handle_timer(now)
                self._drain_browser_session(leg)

    def _tick_frames(self, call: Connection) -> list[np.ndarray | None]:
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


    # -- routing: transports -> bridge, conference or the leg's own input --------------------------------
    def _send(self, leg: MediaLeg, packet: bytes) -> None:
        if leg.webrtc is not None:
            self.port.send_rtp(leg.webrtc, packet)
        elif leg.rtp is not None:
            leg.rtp.send_rtp(packet)

    def _flush(self, call: Connection) -> None:
        """Send what the bridge produced on each side's transport, and publish its events."""
        bridge = call.bridge
        assert bridge is not None
        for side, packet in bridge.packets_to_send():
            self._send(call.leg(side), packet)
        while (event := bridge.next_event()) is not None:
            leg = call.leg(event.leg)
            self._emit({"event": "dtmf", **leg.ids(), "digit": event.digit,
                        "duration": round(event.duration_ms), "source": event.source})

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the media clock
                log.exception("media event listener failed")

    def _input(self, leg: MediaLeg) -> LegInput:
        """The leg's own input (made when it first needs one: it is alone or in a conference)."""
        if leg.input is None:
            assert leg.codec is not None
            leg.input = LegInput(leg.codec, JitterBuffer, inband=leg.dtmf_mode != "info")
        return leg.input

    def _report_digits(self, leg: MediaLeg) -> None:
        inp = leg.input
        if inp is None:
            return
        digits, inp.digits = inp.digits, []
        for digit, duration, source in digits:
            self._emit({"event": "dtmf", **leg.ids(), "digit": digit, "duration": round(duration),
                        "source": source})

    def _wake(self, leg: MediaLeg) -> None:
        """A leg alone may have work for the clock now (a prompt, a recording, packets to look at)."""
        if leg.connection is None and leg.room is None and leg.member_of is None and leg.codec is not None \
                and self.legs.get(leg.name) is leg:
            self._solo[leg.name] = leg

    def _on_rtp(self, leg: MediaLeg, packet: bytes, now: float) -> None:
        """RTP from a leg (plain, or decrypted): to its bridge, its `mix` call, or its own input."""
        call = leg.member_of
        if call is not None:
            member = call.members.get(str(leg.tag))
            if member is not None and member.leg is leg:
                self._on_member_rtp(call, member, packet, now)
            return
        call = leg.connection
        if call is not None:
            bridge = call.bridge
            if bridge is not None:
                bridge.receive_rtp(leg.side, packet, now)
                self._flush(call)
                if call.call_id not in self._ticking and not bridge.idle:
                    self._ticking[call.call_id] = call
            return
        if leg.codec is None or self.legs.get(leg.name) is not leg:
            return                                # not negotiated yet (early media before an answer)
        inp = self._input(leg)
        inp.receive(packet, now)
        if inp.digits:
            self._report_digits(leg)
        if leg.room is None:
            self._solo[leg.name] = leg

    def _touch_leg(self, leg: MediaLeg) -> None:
        """Python is about to look at a leg: take back what C counted for its connection first."""
        call = leg.connection or leg.member_of
        if call is not None:
            self._touch(call)

    def _drain_browser_session(self, leg: MediaLeg) -> None:
        """Send a browser leg's RTCP (SRTCP through its DTLS keys) and handle its session's events."""
        session = leg.rtcp
        assert session is not None
        for datagram in session.datagrams_to_send(self._loop.time()):
            if leg.webrtc is not None:
                self.port.send_rtcp(leg.webrtc, datagram.data)
        while (event := session.next_event()) is not None:
            if type(event) is SessionRtcp or type(event) is MediaTimeout:
                self._on_session_event(leg, event)

    def _on_webrtc_event(self, event: LegEvent) -> None:
        leg = self._by_webrtc.get(id(event.leg))
        if leg is None:
            return
        self._touch_leg(leg)
        if type(event) is RtpReceived:
            if leg.rtcp is not None:
                leg.rtcp.receive_datagram(event.packet, ICE_PATH, self._loop.time())
                self._drain_browser_session(leg)
            self._on_rtp(leg, event.packet, self._loop.time())
        elif type(event) is WebRtcRtcp:
            if leg.rtcp is not None:                   # RTT, the browser's reports: its session parses them
                leg.rtcp.receive_datagram(event.packet, ICE_PATH, self._loop.time())
                self._drain_browser_session(leg)
        elif isinstance(event, (LegFailed, LegClosed)):
            self._emit({"event": "leg-down", **leg.ids(), "reason": getattr(event, "reason", "closed")})

    def _receiver_report(self, call: Connection, leg: MediaLeg, packets: list[Any]) -> None:
        """A leg's RTCP report about the stream we send it: its loss drives the Opus FEC towards it."""
        bridge = call.bridge
        assert bridge is not None
        ours = bridge.senders[leg.side].ssrc
        for packet in packets:
            for block in getattr(packet, "reports", ()):
                if block.ssrc == ours:
                    bridge.report_loss(leg.side, block.fraction_lost / 256.0)

    def _on_session_event(self, leg: MediaLeg, event: SessionEvent) -> None:
        if isinstance(event, SessionRtcp):
            call = leg.connection
            if call is not None and call.bridge is not None:
                self._receiver_report(call, leg, event.packets)
        elif isinstance(event, MediaTimeout):
            self._emit({"event": "timeout", **leg.ids(), "idle": round(event.idle, 1)})

    # -- connections ----------------------------------------------------------------------------------
    def _ready_leg(self, name: str) -> MediaLeg:
        leg = self._leg(name)
        if leg.codec is None or leg.sender is None:
            raise MediaError(f"leg {name!r} has no negotiated media yet")
        return leg

    def connect(self, a: str, b: str) -> dict[str, Any]:
        """Join legs ``a`` and ``b``: passthrough when their codecs match, transcoded otherwise. A leg already
        connected (or in a conference) is moved: its old partner is left unconnected. Prompts replacing what
        either hears end (``play-done``, reason ``connected``); overlays and recordings carry on."""
        leg_a, leg_b = self._ready_leg(a), self._ready_leg(b)
        if leg_a is leg_b:
            raise MediaError(f"connect: a leg cannot be connected to itself ({a!r})")
        call = leg_a.connection
        if call is not None and call is leg_b.connection and call.bridge is not None:
            return {"a": a, "b": b, "transcoded": not call.bridge.passthrough}
        for leg in (leg_a, leg_b):
            self._detach(leg)
            self._end_replacing(leg, "connected")
        call = Connection(f"~{next(self._connection_ids)}", leg_a, leg_b)
        self._join(call)
        assert call.bridge is not None
        return {"a": a, "b": b, "transcoded": not call.bridge.passthrough}

    def disconnect(self, name: str) -> dict[str, Any]:
        """Take leg ``name`` out of its connection (both legs stay open, unconnected) or its conference."""
        leg = self._leg(name)
        call = leg.connection
        partner = call.other(leg).name if call is not None else None
        room = leg.room.name if leg.room is not None else None
        self._detach(leg)
        return {"leg": name, "was_connected_to": partner, "left_conference": room}

    def _join(self, call: Connection) -> None:
        """Bridge the two legs of ``call`` on their own streams (SSRCs and sequence numbers carry on)."""
        a, b = call.caller, call.callee
        a.side, b.side = "a", "b"
        assert a.codec is not None and b.codec is not None and a.sender is not None and b.sender is not None
        try:
            bridge = Bridge(a.codec, b.codec, senders={"a": a.sender, "b": b.sender},
                            opus=self.settings.opus, jitter=self._jitter_class)
        except ValueError as exc:
            raise MediaError(str(exc)) from None
        call.bridge = bridge
        for leg in (a, b):
            leg.connection = call
            self._solo.pop(leg.name, None)
            if leg.input is not None:
                leg.input.close()
                leg.input = None
            sender = leg.sender
            sender.forget_relayed_source()
            sender.start_talkspurt()
        self.connections[call.call_id] = call
        self._ticking[call.call_id] = call
        self._sync_muted(call)

    def _unjoin(self, call: Connection) -> None:
        """End a connection's bridge; its legs stay open, alone (each hears silence or what is played to it)."""
        self._touch(call)
        for forward in call.forwards.values():
            forward.remove()
        call.forwards.clear()
        for tag in list(call.members):
            self._drop_member(call, tag)
        for decoder in call.record_decoders.values():
            decoder.close()
        call.record_decoders.clear()
        call.record_pcm.clear()
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        self._ticking.pop(call.call_id, None)
        self._touched.pop(call.call_id, None)
        if not call.ng:
            self.connections.pop(call.call_id, None)
        for leg in call.legs():
            if leg.connection is call:
                leg.connection = None
                sender = leg.sender
                if sender is not None:
                    sender.forget_relayed_source()
                    sender.start_talkspurt()
                self._wake(leg)

    def _detach(self, leg: MediaLeg) -> None:
        """Take a leg out of its connection or conference."""
        if leg.connection is not None:
            self._unjoin(leg.connection)
        if leg.room is not None:
            self._leave_room(leg)

    def _sync_muted(self, call: Connection) -> None:
        """Hold back the bridged audio towards the sides the worker composes for (``composed_sides``), give it
        back to the others, and capture what the legs send while anything needs it."""
        bridge = call.bridge
        if bridge is None:
            return
        self._touch(call)
        want = call.composed_sides()
        for side in ("a", "b"):
            sender = bridge.senders[side]  # type: ignore[index]
            if side in want and side not in bridge.muted:
                bridge.muted.add(side)  # type: ignore[arg-type]
                sender.start_talkspurt()
            elif side not in want and side in bridge.muted:
                bridge.muted.discard(side)  # type: ignore[arg-type]
                sender.start_talkspurt()
                sender.forget_relayed_source()     # relayed audio comes back: a fresh seq/ts mapping
        self._update_capture(call)
        self._ticking[call.call_id] = call

    def _update_capture(self, call: Connection) -> None:
        bridge = call.bridge
        if bridge is None:
            return
        a, b = call.caller, call.callee
        capture = bool(a.recorder or b.recorder or a.overlay or b.overlay or call.members)
        if capture and not bridge.capture:
            for captured in bridge.captured.values():
                captured.clear()
        bridge.capture = capture
        if not capture:
            for captured in bridge.captured.values():
                captured.clear()
            call.record_pcm.clear()
            for decoder in call.record_decoders.values():
                decoder.close()
            call.record_decoders.clear()

    def _set_held(self, leg: MediaLeg, held: bool) -> None:
        """The peer asked not to receive (hold) or to receive again: nothing is sent to a held leg."""
        if leg.held == held:
            return
        leg.held = held
        call = leg.connection
        if call is not None and call.bridge is not None:
            self._sync_muted(call)
        log.info("leg %s %s", leg.name, "held" if held else "resumed", extra={"call_id": leg.call_id or leg.name})

    # -- legs: query and close --------------------------------------------------------------------------
    def _leg_entry(self, leg: MediaLeg, bridge_stats: dict[str, Any]) -> dict[str, Any]:
        """A leg's statistics: packets, loss, jitter, RTT, its transport's state."""
        entry: dict[str, Any] = {"transport": leg.kind, "side": leg.side}
        if leg.codec is not None:
            entry["codec"] = leg.codec.encoding
        if leg.connection is not None and leg.connection.bridge is not None:
            entry.update(bridge_stats.get(leg.side, {}))
        else:
            sender = leg.sender
            entry["packets_in"] = leg.input.packets if leg.input is not None else 0
            entry["packets_out"] = sender.packets_sent if sender is not None else 0
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
        session = leg.session
        reception = session.reception() if session is not None else None
        if reception is not None:                  # RFC 3550 receive statistics of what the leg sends us
            entry["rx_lost"] = reception.cumulative_lost
            entry["rx_jitter_ms"] = round(1000 * reception.jitter_seconds, 2)
        return entry

    def leg_query(self, name: str) -> dict[str, Any]:
        """A leg's state: codec, transport, direction, hold, what it is connected to, and its statistics."""
        leg = self._leg(name)
        self._touch_leg(leg)
        call = leg.connection
        bridge_stats = call.bridge.stats() if call is not None and call.bridge is not None else {}
        local = leg.local_sdp
        return {"leg": name, "transport": TRANSPORT_NAMES.get(leg.kind, leg.kind),
                "codec": leg.codec.encoding if leg.codec is not None else None,
                "direction": local.media[0].direction if local is not None and local.media else None,
                "hold": leg.held, "pending": leg.pending,
                "connected_to": call.other(leg).name if call is not None and call.bridge is not None else None,
                "transcoded": (not call.bridge.passthrough) if call is not None and call.bridge is not None else None,
                "conference": leg.room.name if leg.room is not None else None,
                "playing": leg.source is not None or leg.overlay is not None,
                "recording": leg.recorder.path if leg.recorder is not None else None,
                "stats": self._leg_entry(leg, bridge_stats)}

    def leg_close(self, name: str) -> dict[str, Any]:
        """Close leg ``name`` (its partner is left unconnected, its recording finished, RTCP BYE, DTLS
        close_notify, ports back to the range); returns its final statistics."""
        stats = self.leg_query(name)["stats"]
        leg = self._leg(name)
        if leg.call_id is not None and leg.call_id in self.calls:
            raise MediaError(f"leg {name!r} belongs to call {leg.call_id!r}: end it with delete")
        self._forget_leg(leg)
        return {"leg": name, "stats": stats}

    def _forget_leg(self, leg: MediaLeg) -> None:
        """Everything of a leg goes: its connection or conference, prompt, recording, input, transport."""
        self._detach(leg)
        if leg.source is not None:
            leg.source.stop()
            leg.source = None
        leg.overlay = None
        if leg.recorder is not None:
            self._stop_recording(leg)
        if leg.input is not None:
            leg.input.close()
            leg.input = None
        if leg.encoder is not None:
            leg.encoder.close()
            leg.encoder = None
        self._solo.pop(leg.name, None)
        if self.legs.get(leg.name) is leg:
            del self.legs[leg.name]
        self._close_leg(leg)

    def status(self) -> dict[str, Any]:
        """Worker-wide figures (for ping/query without a call)."""
        status: dict[str, Any] = {
            "calls": len(self.calls), "legs": len(self.legs), "connections": len(self.connections),
            "conferences": len(self.rooms), "ice_port": self.port.port, "rtp_ports_in_use": self.allocator.in_use,
            "ticks": self.ticks, "late_ticks": self.late_ticks, "tick_errors": self.tick_errors,
            "tick_ms_avg": round(1000 * self.tick_seconds / max(1, self.ticks), 3)}
        status["relay"] = self.relay.stats() if self.relay is not None else None
        return status

    @staticmethod
    def _parse(sdp: str | bytes) -> Any:
        return parse_sdp(sdp)

    async def close(self) -> None:
        """Stop the clock and tear everything down."""
        self._stop_clock()
        for call in list(self.calls.values()):
            self._drop(call)
        for leg in list(self.legs.values()):
            self._forget_leg(leg)
        self.port.close()
        if self.relay is not None:
            self.relay.close()
