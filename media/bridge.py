"""The media bridge between two legs (browser <-> trunk), sans-IO: passthrough when codecs match, transcoding otherwise.

A ``Bridge`` joins leg ``"a"`` and leg ``"b"``, each described by the codec it negotiated (``LegCodec``: audio
payload type, encoding, RTP clock rate, telephone-event payload type and rate). It never touches a socket:
the adapter feeds ``receive_rtp(side, packet, now)`` with decrypted/plain RTP from a leg, calls ``tick(now)``
every 20 ms from the worker's media clock, and drains ``packets_to_send()`` (``(side, rtp_bytes)`` to send on
that side; SRTP protection is the leg's job) and ``next_event()`` (``DtmfReceived``).

- **Passthrough** (same encoding and clock on both sides, e.g. PCMU <-> PCMU): every audio packet is
  forwarded on arrival through ``RtpSender.relay`` (our SSRC, continuous sequence/timestamp across source
  changes, the other side's payload type); ``tick`` has nothing to do but DTMF timeouts.
- **Transcoding** (e.g. Opus/48000 <-> PCMU): per direction, ``JitterBuffer`` -> decode at 8 kHz (libopus
  runs natively at 8 kHz: no resampler; PLC on ``Missing``, in-band FEC when ``Missing.next_payload`` is
  there; G.711 loss is concealed by repeating the last frame, fading) -> one 20 ms int16 frame -> encode ->
  ``RtpSender.packetize``. ``tick_bridges(bridges, now)`` runs every bridge of a worker in phases so that
  all G.711 frames of the tick go through ``g711.decode_batch``/``encode_batch`` in one numpy call each.
- **DTMF** (RFC 4733): telephone-event packets from either side are reported once per digit
  (``DtmfReceived``) and relayed to the other side: with ``RtpSender.relay`` when both event clocks are equal
  and the audio is passed through, else through ``TelephoneEventTranslator`` (48000 <-> 8000) on the other
  side's event payload type and stream. If the other side negotiated no telephone-event, the digit is played
  in-band there (``dtmf_tone`` frames) instead. While an event is relayed, audio towards that side pauses
  (the timeline keeps advancing), as endpoints do. Received event packets use sequence numbers of the audio
  stream they replace: on a transcoded path they are marked in the jitter buffer (``mark_non_audio``), so they
  are neither counted lost nor concealed. A transcoded leg that negotiated no telephone-event is
  watched for in-band tones (``DtmfDetector`` on the decoded frames; reported with ``source="inband"``; the
  tones themselves go through in the audio).
- **Worker hooks**: a side in ``muted`` gets none of the bridged audio/events (the worker sends a prompt,
  injected DTMF or a whisper mix on that side's sender instead); with ``capture`` on, what each side sent is
  kept in ``captured`` per tick (decoded frames when transcoding, raw payloads in passthrough) for the
  recorder and the supervisor mix.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import numpy as np

from . import g711
from .dtmf import (
    DtmfDetector,
    DtmfDigitEnded,
    DtmfEventReceiver,
    TelephoneEventTranslator,
    decode_telephone_event,
    dtmf_tone,
)
from .jitter import Frame, JitterBuffer, Missing
from .opus import OpusConfig, OpusDecoder, OpusEncoder
from .rtp import RtpError, RtpSender, peek_header, rtp_payload

__all__ = [
    "Bridge",
    "BridgeStats",
    "DtmfReceived",
    "LegCodec",
    "PCM_RATE",
    "Side",
    "tick_bridges",
]

Side = Literal["a", "b"]
PCM_RATE = 8000                  # the bridge's internal audio rate (G.711's; libopus decodes/encodes it natively)
FRAME_MS = 20
FRAME_SAMPLES = PCM_RATE * FRAME_MS // 1000
_G711 = {"pcmu": "ulaw", "pcma": "alaw"}
_PLC_FADE = 0.6                  # G.711 concealment: each repeated frame is this much quieter
_TONE_MS = 3000                  # in-band DTMF: the longest tone played per event
_pack_hdr = struct.Struct("!BBHII").pack
_OTHER: dict[str, Side] = {"a": "b", "b": "a"}
_LOSS_TICKS = 50                 # the Opus encoder's expected loss is re-estimated every second
_MAX_LOSS_PERC = 40


@dataclass(frozen=True, slots=True)
class LegCodec:
    """What one leg negotiated: audio payload type/encoding/RTP clock, and telephone-event PT/clock (None: none)."""

    payload_type: int
    encoding: str
    clock_rate: int
    event_payload_type: int | None = None
    event_clock_rate: int = 8000
    channels: int = 1

    @property
    def name(self) -> str:
        """Lower-case encoding name (``pcmu``, ``pcma``, ``opus``)."""
        return self.encoding.lower()

    @property
    def is_g711(self) -> bool:
        """Whether the audio is G.711 (decoded/encoded in the batched numpy step)."""
        return self.name in _G711

    def same_audio(self, other: LegCodec) -> bool:
        """Whether packets of one side can be relayed to the other unchanged (passthrough)."""
        return self.name == other.name and self.clock_rate == other.clock_rate and self.channels == other.channels

    def validate(self) -> None:
        """Raise ValueError for a codec the bridge cannot handle."""
        if self.name in _G711:
            if self.clock_rate != 8000:
                raise ValueError(f"{self.encoding} must be at 8000 Hz, not {self.clock_rate}")
        elif self.name != "opus":
            raise ValueError(f"the bridge handles PCMU, PCMA and opus, not {self.encoding!r}")


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A digit received on ``leg`` as RFC 4733 events or in-band tones (reported when it ends, with its duration)."""

    leg: Side
    digit: str
    duration_ms: float
    source: str = "rfc4733"


@dataclass(slots=True)
class BridgeStats:
    """Counters of one direction (packets in from ``leg``, out to the other side)."""

    packets_in: int = 0
    packets_out: int = 0
    dropped: int = 0             # unknown payload type or malformed
    events_in: int = 0
    events_out: int = 0
    concealed: int = 0           # PLC frames (transcoding)
    fec: int = 0                 # frames recovered from in-band FEC
    decode_errors: int = 0


class _Path:
    """One direction of a bridge: packets from ``src`` side to ``dst`` side, with its codec state."""

    def __init__(self, src_side: Side, src: LegCodec, dst: LegCodec, sender: RtpSender, transcode: bool,
                 opus: OpusConfig, jitter: type[JitterBuffer] = JitterBuffer) -> None:
        self.src_side = src_side
        self.dst_side: Side = _OTHER[src_side]
        self.src = src
        self.dst = dst
        self.sender = sender
        self.transcode = transcode
        self.stats = BridgeStats()
        self.src_law = _G711.get(src.name)
        self.dst_law = _G711.get(dst.name)
        self.jitter: JitterBuffer | None = None
        self.decoder: OpusDecoder | None = None
        self.encoder: OpusEncoder | None = None
        if transcode:
            self.jitter = jitter(src.clock_rate)
            if src.name == "opus":
                self.decoder = OpusDecoder(PCM_RATE, 1)
            if dst.name == "opus":
                # in-band FEC costs encode time and bitrate only while loss is expected: the expected loss
                # starts at 0 and follows the network (``_adapt_fec``), as browsers do
                self.encoder = opus.encoder(PCM_RATE)
        self.reported_loss = 0.0          # fraction lost that the dst leg reported about our stream (RTCP RR)
        self.loss_ticks = 0
        self.loss_mark = (0, 0)           # (received, lost) of the reverse path at the last estimate
        self.dst_samples = dst.clock_rate * FRAME_MS // 1000      # RTP timestamp units per 20 ms frame out
        self.last_pcm: np.ndarray | None = None                   # G.711 PLC: the last good frame
        self.plc_gain = 1.0
        # DTMF in from src
        self.dtmf_rx = (DtmfEventReceiver(src.event_clock_rate)
                        if src.event_payload_type is not None else None)
        relay_events = (not transcode and dst.event_payload_type is not None
                        and src.event_clock_rate == dst.event_clock_rate)
        self.relay_events = relay_events
        self.translator: TelephoneEventTranslator | None = None
        if src.event_payload_type is not None and dst.event_payload_type is not None and not relay_events:
            self.translator = TelephoneEventTranslator(src.event_clock_rate, dst.event_clock_rate)
        # in-band DTMF detection on the decoded audio when src negotiated no telephone-event
        self.inband = DtmfDetector() if transcode and src.event_payload_type is None else None
        self.event_ts: int | None = None                          # input timestamp of the event being relayed
        self.event_until: float = float("-inf")                   # audio towards dst pauses until then
        self.tone: np.ndarray | None = None                       # in-band DTMF being played to dst
        self.tone_pos = 0
        self.tone_done_ts: int | None = None                      # the event whose tone ended (end retransmits)
        # per-tick scratch (tick_bridges)
        self.pending_codes: bytes | None = None
        self.pending_pcm: np.ndarray | None = None
        self.pending_good = False
        # a worker's C data plane may run this path's ticks instead (media.relay.TranscodeTick, which keeps
        # this object's state while it does and hands it back before Python touches the path again)
        self.c_tick: Any = None
        self.c_engaged = False
        self.ticked_at = -1.0                     # when Python's tick last ran this path

    def close(self) -> None:
        """Free the libopus states (after the C tick, if any, let go of them)."""
        if self.c_tick is not None:
            self.c_tick.detach()
            self.c_tick = None
        self.c_engaged = False
        if self.decoder is not None:
            self.decoder.close()
        if self.encoder is not None:
            self.encoder.close()


class Bridge:
    """Two legs joined: relays or transcodes audio, relays/translates RFC 4733 DTMF and reports digits. Sans-IO.

    ``senders`` lets a leg's transport keep its own ``RtpSender`` (an ``RtpSession``'s, so its RTCP sender
    reports count what the bridge sends); otherwise the bridge makes one per side with a random SSRC.
    ``jitter`` is the receive buffer class of transcoded paths (``FastJitterBuffer`` where the C tick runs).
    """

    def __init__(
        self,
        a: LegCodec,
        b: LegCodec,
        *,
        senders: dict[str, RtpSender] | None = None,
        opus: OpusConfig | None = None,
        event_timeout: float = 0.25,
        jitter: type[JitterBuffer] = JitterBuffer,
    ) -> None:
        a.validate()
        b.validate()
        self.codecs: dict[Side, LegCodec] = {"a": a, "b": b}
        self.passthrough = a.same_audio(b)
        senders = dict(senders or {})
        out: dict[Side, RtpSender] = {}
        for side, codec in self.codecs.items():
            sender = senders.get(side)
            if sender is None:
                sender = RtpSender(codec.payload_type, codec.clock_rate)
            else:
                sender.payload_type = codec.payload_type
                sender.clock_rate = codec.clock_rate
                sender.frame_samples = codec.clock_rate * FRAME_MS // 1000
            out[side] = sender
        self.senders = out
        self.opus = opus or OpusConfig()
        # the path from a side sends on the other side's sender
        self.paths: dict[Side, _Path] = {
            "a": _Path("a", a, b, out["b"], not self.passthrough, self.opus, jitter),
            "b": _Path("b", b, a, out["a"], not self.passthrough, self.opus, jitter),
        }
        self.event_timeout = event_timeout
        self._out: list[tuple[Side, bytes]] = []
        self._events: deque[DtmfReceived] = deque()
        self.closed = False
        # worker hooks (play/record/dtmf injection): sides whose bridged audio is held back because the worker
        # sends something else on that side's sender, and, when ``capture`` is on, what each side sent this
        # tick: decoded int16 frames (transcoding) or raw G.711 payloads (passthrough), drained by the worker
        self.muted: set[Side] = set()
        self.capture = False
        self.captured: dict[Side, list[np.ndarray | bytes]] = {"a": [], "b": []}

    # -- input -------------------------------------------------------------------------------------
    def receive_rtp(self, side: Side, packet: bytes, now: float) -> None:
        """Feed one RTP packet (plain or already decrypted) received from leg ``side``."""
        path = self.paths[side]
        try:
            pt, seq, ts, ssrc, marker = peek_header(packet)
        except RtpError:
            path.stats.dropped += 1
            return
        src = path.src
        if pt == src.payload_type:
            path.stats.packets_in += 1
            if path.transcode:
                assert path.jitter is not None
                path.jitter.put(seq, ts, rtp_payload(packet), now, ssrc)
                return
            if self.capture:
                self.captured[side].append(rtp_payload(packet))
            if path.dst_side in self.muted:
                return
            if now >= path.event_until:
                self._out.append((path.dst_side, path.sender.relay(packet, now, path.dst.payload_type)))
                path.stats.packets_out += 1
        elif pt == src.event_payload_type and src.event_payload_type is not None:
            path.stats.events_in += 1
            if path.jitter is not None:
                # the event takes sequence numbers of the audio stream: not a loss, nothing to conceal
                path.jitter.mark_non_audio(seq, ts, now, ssrc)
            self._receive_event(path, packet, seq, ts, marker, now)
        else:
            path.stats.dropped += 1

    def _receive_event(self, path: _Path, packet: bytes, seq: int, ts: int, marker: bool, now: float) -> None:
        """Report the digit and relay/translate the telephone-event packet (or start an in-band tone)."""
        payload = rtp_payload(packet)
        try:
            ev = decode_telephone_event(payload)
        except ValueError:
            path.stats.dropped += 1
            return
        if ev.event > 15:
            return
        rx = path.dtmf_rx
        if rx is not None:
            rx.receive_packet(payload, ts, seq, marker, now)
            self._drain_dtmf(path)
        if path.dst_side in self.muted:
            return                              # the worker owns that side's stream for now (prompt/DTMF)
        new_event = ts != path.event_ts
        path.event_ts = ts
        dst = path.dst
        sender = path.sender
        if path.relay_events:
            self._out.append((path.dst_side, sender.relay(packet, now, dst.event_payload_type)))
            path.stats.events_out += 1
            return
        path.event_until = now + (0.0 if ev.end else self.event_timeout)
        if dst.event_payload_type is None:
            # no telephone-event on the other side: play the digit in-band there
            if ev.end:
                path.tone = None
                path.event_until = float("-inf")
                path.tone_done_ts = ts
            elif ts != path.tone_done_ts and (new_event or path.tone is None):
                path.tone = dtmf_tone(ev.digit, _TONE_MS, PCM_RATE)
                path.tone_pos = 0
            return
        translator = path.translator
        assert translator is not None
        if new_event:
            # anchor: this event starts where the other side's stream is now (in its event clock)
            to_base = sender.timestamp
            if dst.event_clock_rate != dst.clock_rate:
                to_base = (to_base * dst.event_clock_rate // dst.clock_rate) & 0xFFFFFFFF
            translator.rebase(ts, to_base)
        for out in translator.translate(payload, ts, marker):
            seq_out = sender.sequence
            data = _pack_hdr(0x80, (0x80 if out.marker else 0) | dst.event_payload_type, seq_out,
                             out.timestamp, sender.ssrc) + out.payload
            sender.sequence = (seq_out + 1) & 0xFFFF
            sender.packets_sent += 1
            sender.octets_sent += 4
            self._out.append((path.dst_side, data))
            path.stats.events_out += 1

    def _drain_dtmf(self, path: _Path) -> None:
        """Turn the receiver's digit-ended events into DtmfReceived."""
        rx = path.dtmf_rx
        assert rx is not None
        while (event := rx.next_event()) is not None:
            if isinstance(event, DtmfDigitEnded):
                self._events.append(DtmfReceived(path.src_side, event.digit, event.duration_ms))

    # -- the media clock ---------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One 20 ms media-clock step for this bridge alone (a worker uses ``tick_bridges`` for all of them)."""
        tick_bridges((self,), now)

    @property
    def idle(self) -> bool:
        """Whether a tick has nothing to do here: passthrough (or transcoded paths that the C tick runs), no
        DTMF event or in-band tone in progress, nothing queued. A worker may leave such a bridge out of its
        ticks until a packet arrives."""
        if self.closed:
            return True
        if self._out or self._events:
            return False
        for path in self.paths.values():
            if path.c_engaged:
                continue
            if path.transcode or path.tone is not None:
                return False
            rx = path.dtmf_rx
            if rx is not None and rx.get_timer() is not None:
                return False
        return True

    # -- output ------------------------------------------------------------------------------------
    def packets_to_send(self) -> list[tuple[Side, bytes]]:
        """RTP packets produced since the last call, as (side to send on, packet)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> DtmfReceived | None:
        """The next bridge event, or None."""
        return self._events.popleft() if self._events else None

    def report_loss(self, side: Side, fraction: float) -> None:
        """What leg ``side`` reported (RTCP receiver report, 0..1) about the stream we send it: the Opus encoder
        towards it protects that much loss with in-band FEC."""
        path = self.paths[_OTHER[side]]
        path.reported_loss = max(0.0, min(1.0, fraction))
        _adapt_fec(self, path)

    def stats(self) -> dict[str, dict[str, object]]:
        """Per side: packets in from it, out to it, jitter-buffer figures for its receive path (transcoding)."""
        result: dict[str, dict[str, object]] = {}
        for side, path in self.paths.items():
            st = path.stats
            entry: dict[str, object] = {
                "codec": path.src.encoding,
                "packets_in": st.packets_in,
                "events_in": st.events_in,
                "dropped": st.dropped,
                "packets_out": self.paths[_OTHER[side]].stats.packets_out,
                "events_out": self.paths[_OTHER[side]].stats.events_out,
            }
            if path.jitter is not None:
                js = path.jitter.stats
                entry.update(lost=js.lost, late=js.late, concealed=st.concealed, fec=st.fec,
                             jitter_ms=round(js.jitter_ms, 2), delay_ms=round(js.current_delay_ms, 2))
            result[side] = entry
        result["mode"] = {"passthrough": self.passthrough}  # type: ignore[assignment]
        return result

    def close(self) -> None:
        """Free codec state; the bridge must not be used afterwards."""
        if not self.closed:
            self.closed = True
            for path in self.paths.values():
                path.close()


def fit_frame(pcm: np.ndarray) -> np.ndarray:
    """Exactly one 20 ms frame: truncate longer decoder output, zero-pad shorter."""
    n = pcm.shape[0]
    if n == FRAME_SAMPLES:
        return pcm
    if n > FRAME_SAMPLES:
        return pcm[:FRAME_SAMPLES]
    return np.concatenate([pcm, np.zeros(FRAME_SAMPLES - n, np.int16)])


def _pull(path: _Path, now: float) -> None:
    """Phase 1 of a tick: take this path's frame from the jitter buffer; Opus decoded (or concealed) here."""
    path.pending_codes = None
    path.pending_pcm = None
    path.pending_good = False
    if path.tone is not None:
        tone = path.tone
        start = path.tone_pos
        if start + FRAME_SAMPLES <= tone.shape[0] and now < path.event_until:
            path.pending_pcm = tone[start:start + FRAME_SAMPLES]
            path.tone_pos = start + FRAME_SAMPLES
            if path.jitter is not None:
                path.jitter.get(now)  # keep the receive timeline moving; the audio is replaced
            return
        path.tone = None
        path.event_until = float("-inf")
    jitter = path.jitter
    if jitter is None:
        return
    item = jitter.get(now)
    if item is None:
        return
    decoder = path.decoder
    if type(item) is Frame:
        path.pending_good = True
        if decoder is not None:
            try:
                path.pending_pcm = fit_frame(np.frombuffer(decoder.decode(item.payload), "<i2"))
            except Exception:  # noqa: BLE001 - a corrupt packet: conceal it instead
                path.stats.decode_errors += 1
                path.pending_pcm = np.frombuffer(decoder.decode_plc(), "<i2")
                path.stats.concealed += 1
        elif len(item.payload) == FRAME_SAMPLES:
            path.pending_codes = item.payload
        else:
            path.pending_pcm = fit_frame(np.frombuffer(g711.ulaw_decode(item.payload) if path.src_law == "ulaw"
                                                  else g711.alaw_decode(item.payload), "<i2"))
        return
    assert isinstance(item, Missing)
    path.stats.concealed += 1
    if decoder is not None:
        if item.next_payload is not None:
            try:
                path.pending_pcm = fit_frame(np.frombuffer(decoder.decode_fec(item.next_payload), "<i2"))
                path.stats.fec += 1
                return
            except Exception:  # noqa: BLE001
                path.stats.decode_errors += 1
        path.pending_pcm = fit_frame(np.frombuffer(decoder.decode_plc(), "<i2"))
    elif path.last_pcm is not None:
        path.plc_gain *= _PLC_FADE
        path.pending_pcm = (path.last_pcm * path.plc_gain).astype(np.int16)
    else:
        path.pending_pcm = np.zeros(FRAME_SAMPLES, np.int16)


def _adapt_fec(bridge: Bridge, path: _Path) -> None:
    """Set the expected loss of the Opus encoder on ``path`` (towards dst) from the larger of what dst reported
    (RTCP) and what we lost of dst's own stream over the last second (the same network path, the other way)."""
    encoder = path.encoder
    if encoder is None:
        return
    reverse = bridge.paths[path.dst_side].jitter
    observed = 0.0
    if reverse is not None:
        received, lost = reverse.stats.received, reverse.stats.lost
        d_received, d_lost = received - path.loss_mark[0], lost - path.loss_mark[1]
        path.loss_mark = (received, lost)
        if d_lost > 0:
            observed = d_lost / max(1, d_lost + d_received)
    percent = min(_MAX_LOSS_PERC, int(100 * max(observed, path.reported_loss) + 0.999))
    if percent != encoder.packet_loss_perc:
        encoder.packet_loss_perc = percent


def tick_bridges(bridges: Iterable[Bridge], now: float, *, batch: bool = True) -> None:
    """One media-clock step for many bridges: pull/decode every receive path, G.711 batched, encode, packetize.

    With ``batch`` all G.711 frames of the tick are decoded in one ``g711.decode_batch`` and encoded in one
    ``g711.encode_batch``; without it each frame goes through the active bytes backend (C when built).
    """
    paths: list[tuple[Bridge, _Path]] = []
    for bridge in bridges:
        if bridge.closed:
            continue
        for path in bridge.paths.values():
            if path.c_engaged:
                continue                          # the worker's C data plane ticks it
            rx = path.dtmf_rx
            if rx is not None:
                timer = rx.get_timer()
                if timer is not None and now >= timer:
                    rx.handle_timer(now)
                    bridge._drain_dtmf(path)
            if path.transcode or path.tone is not None:
                paths.append((bridge, path))
    if not paths:
        return
    # phase 1: jitter buffers, Opus decode/PLC/FEC
    for _, path in paths:
        path.ticked_at = now
        _pull(path, now)
    # phase 2: G.711 decode (batched)
    coded = [path for _, path in paths if path.pending_codes is not None]
    if coded:
        if batch and len(coded) > 1:
            codes = np.frombuffer(b"".join(p.pending_codes for p in coded), np.uint8)  # type: ignore[misc]
            laws = [p.src_law for p in coded]
            pcm = g711.decode_batch(codes.reshape(len(coded), FRAME_SAMPLES),
                                    laws[0] if len(set(laws)) == 1 else laws)  # type: ignore[arg-type]
            for i, path in enumerate(coded):
                path.pending_pcm = pcm[i]
        else:
            for path in coded:
                data = path.pending_codes
                assert data is not None
                pcm_bytes = g711.ulaw_decode(data) if path.src_law == "ulaw" else g711.alaw_decode(data)
                path.pending_pcm = np.frombuffer(pcm_bytes, "<i2")
    # phase 3: encode (Opus per path, G.711 batched) and packetize
    to_g711: list[tuple[Bridge, _Path]] = []
    for bridge, path in paths:
        pcm = path.pending_pcm
        path.pending_codes = None
        if path.dst_side in bridge.muted:
            # the worker sends a prompt/DTMF on that side's sender instead: keep the timeline to it, only
            # record what came in
            if pcm is not None and bridge.capture and path.transcode:
                bridge.captured[path.src_side].append(pcm)
            path.pending_pcm = None
            continue
        if pcm is None:
            if path.transcode:
                # nothing to send (before playout, silence, or a telephone-event in place of the audio, being
                # relayed or not): the outgoing timeline still advances one frame, as it does when audio pauses
                # for a relayed event, so the audio after it is stamped in real time past the event
                path.sender.skip()
            continue
        if path.pending_good and path.src_law is not None:
            path.last_pcm = pcm                  # G.711 concealment repeats this frame, fading
            path.plc_gain = 1.0
        if bridge.capture and path.transcode:
            bridge.captured[path.src_side].append(pcm)
        if path.inband is not None:
            for event in path.inband.process_frame(pcm):
                if isinstance(event, DtmfDigitEnded):
                    bridge._events.append(DtmfReceived(path.src_side, event.digit, event.duration_ms, "inband"))
        if now < path.event_until and path.tone is None:
            path.sender.skip(path.dst_samples)   # a telephone-event is being relayed: audio pauses
            path.pending_pcm = None
            continue
        encoder = path.encoder
        if encoder is not None:
            path.loss_ticks += 1
            if path.loss_ticks >= _LOSS_TICKS:
                path.loss_ticks = 0
                _adapt_fec(bridge, path)
        if encoder is None and path.dst_law is None:   # in-band DTMF towards an Opus passthrough leg
            encoder = path.encoder = bridge.opus.encoder(PCM_RATE)
        if encoder is not None:
            packet = encoder.encode(pcm)
            path.pending_pcm = None
            if len(packet) <= 2:                 # DTX: silence, not sent (RFC 7587 §3.1.3); the timeline runs on
                path.sender.skip(path.dst_samples)
                continue
            bridge._out.append((path.dst_side, path.sender.packetize(packet, now)))
            path.stats.packets_out += 1
        else:
            to_g711.append((bridge, path))
    if to_g711:
        if batch and len(to_g711) > 1:
            stacked = np.stack([p.pending_pcm for _, p in to_g711])  # type: ignore[misc]
            laws = [p.dst_law for _, p in to_g711]
            codes = g711.encode_batch(stacked, laws[0] if len(set(laws)) == 1 else laws)  # type: ignore[arg-type]
            for i, (bridge, path) in enumerate(to_g711):
                bridge._out.append((path.dst_side, path.sender.packetize(codes[i].tobytes(), now)))
                path.stats.packets_out += 1
                path.pending_pcm = None
        else:
            for bridge, path in to_g711:
                pcm = path.pending_pcm
                assert pcm is not None
                raw = pcm.astype("<i2", copy=False).tobytes()
                payload = g711.ulaw_encode(raw) if path.dst_law == "ulaw" else g711.alaw_encode(raw)
                bridge._out.append((path.dst_side, path.sender.packetize(payload, now)))
                path.stats.packets_out += 1
                path.pending_pcm = None
