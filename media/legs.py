"""The media model of a worker: legs, connections, and what a leg hears or sends besides its partner.

A ``MediaLeg`` is one endpoint's media (docs/callcontrol.md "Media: legs and connections"): its transport
(plain RTP port, SDES-SRTP, or a browser leg on the ICE port), its negotiated codec, its DTMF mode, the
``RtpSession`` whose sender is the leg's one outgoing stream (whoever feeds it: a partner through a bridge, a
conference mix, a prompt), and its per-leg state: a prompt or injected DTMF replacing what it hears
(``source``), a prompt mixed over it (``overlay``), a two-channel recording (``recorder``), and while it is not
in a bridge, ``LegInput``: its own jitter buffer, decoder and DTMF detection.

A ``Connection`` joins two legs through a ``bridge.Bridge`` (passthrough or transcoded; leg ``a`` is side
"a", leg ``b`` side "b"), with the C forwards of its directions and, for the rtpengine-style verbs, the
members ``mix`` joined to it (``Member``). A leg is in at most one connection or conference at a time.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .sdp import SessionDescription

from . import g711
from .bridge import FRAME_SAMPLES, PCM_RATE, Bridge, LegCodec, Side, fit_frame
from .dtmf import (
    DtmfDetector,
    DtmfDigitEnded,
    DtmfEventReceiver,
    DtmfEventSender,
    decode_telephone_event,
    dtmf_tone,
    encode_telephone_event,
)
from .jitter import Frame, JitterBuffer
from .opus import OpusDecoder, OpusEncoder
from .player import Player, Prompt
from .recorder import CallRecorder
from .rtp import RtpError, RtpSender, peek_header, rtp_payload
from .sdp_rules import MediaError
from .srtp import CryptoAttribute

if TYPE_CHECKING:
    from .conference import Room
    from .relay import Forward
    from .rtp_port import PlainRtpPort
    from .session import RtpSession
    from .webrtc import WebRtcLeg

__all__ = ["Connection", "DtmfSource", "LegInput", "MediaLeg", "Member", "Overlay", "PromptSource",
           "dtmf_prompt", "MIX_ROLES"]

_pack_hdr = struct.Struct("!BBHII").pack
DTMF_GAP_MS = 60                   # injected DTMF: silence between two digits
MIX_ROLES = {"listen": "listener", "whisper": "whisper", "speak": "speaker"}   # `mix` mode -> mixer role
_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)


class PromptSource:
    """A prompt (files, a beep, or in-band DTMF tones) sent to one leg instead of what it would hear.

    ``pcm`` follows the same prompt frame by frame at 8 kHz, so a recording of the leg has what it heard."""

    kind = "play"

    def __init__(self, player: Player, done_event: str = "play-done") -> None:
        self.player = player
        self.pcm = Player(player.prompt, "int16", loop=player.loop)
        self.done_event = done_event
        self.heard: np.ndarray | None = None      # this tick's audio, for the leg's recording

    def tick(self, sender: RtpSender, codec: LegCodec, now: float, send: bool = True) -> list[bytes]:
        """The packet of this 20 ms (none once the prompt has ended: ``done``; none sent while ``send`` is
        false, a leg on hold: the prompt and the timeline go on)."""
        frame = self.player.next_frame()
        pcm = self.pcm.next_frame()
        self.heard = pcm if isinstance(pcm, np.ndarray) else None
        if frame is None:
            return []
        assert isinstance(frame, bytes)
        if not send:
            sender.skip()
            return []
        return [sender.packetize(frame, now)]

    @property
    def done(self) -> bool:
        return self.player.done

    def stop(self) -> None:
        self.player.stop()


class DtmfSource:
    """Digits sent to one leg as RFC 4733 telephone-events on its stream; its audio pauses meanwhile."""

    kind = "dtmf"
    done_event = "dtmf-sent"
    heard = None

    def __init__(self, digits: str, duration_ms: int, event_clock: int) -> None:
        self.digits = list(digits)
        self.duration_ms = duration_ms
        self.events = DtmfEventSender(event_clock)
        self.gap = 0                            # ticks of pause left before the next digit

    def tick(self, sender: RtpSender, codec: LegCodec, now: float, send: bool = True) -> list[bytes]:
        ept = codec.event_payload_type
        assert ept is not None
        out: list[bytes] = []
        events = self.events
        if events.idle and self.gap <= 0 and self.digits:
            ts = sender.timestamp
            if codec.event_clock_rate != codec.clock_rate:
                ts = (ts * codec.event_clock_rate // codec.clock_rate) & 0xFFFFFFFF
            events.start(self.digits.pop(0), ts, self.duration_ms)
            self.gap = DTMF_GAP_MS // 20
        if not events.idle:
            for packet in events.tick():
                if not send:
                    continue
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


class Overlay:
    """A prompt mixed over what a leg hears (``play`` with ``mix``): a beep over a connected call."""

    def __init__(self, prompt: Prompt, loop: bool) -> None:
        self.player = Player(prompt, "int16", loop=loop)
        self.done_event = "play-done"

    def add(self, pcm: np.ndarray | None) -> np.ndarray:
        """``pcm`` (what the leg would hear; None: silence) with this tick's prompt frame added, saturated."""
        frame = self.player.next_frame()
        if not isinstance(frame, np.ndarray):
            return pcm if pcm is not None else _SILENCE
        if pcm is None:
            return frame
        total = pcm.astype(np.int32) + frame
        return np.minimum(np.maximum(total, -32768), 32767).astype(np.int16)

    @property
    def done(self) -> bool:
        return self.player.done

    def stop(self) -> None:
        self.player.stop()


class LegInput:
    """What a leg sends while no bridge takes it (a leg alone, or in a conference): its jitter buffer, one
    decoded 8 kHz frame per tick, RFC 4733 digits as they arrive and in-band digits in the decoded audio
    (when the leg negotiated no telephone-event and its DTMF mode is not SIP INFO)."""

    def __init__(self, codec: LegCodec, jitter: type[JitterBuffer], inband: bool) -> None:
        self.codec = codec
        self.jitter = jitter(codec.clock_rate)
        self.decoder = OpusDecoder(PCM_RATE, 1) if codec.name == "opus" else None
        self.law = {"pcmu": "ulaw", "pcma": "alaw"}.get(codec.name)
        self.dtmf_rx = DtmfEventReceiver(codec.event_clock_rate) if codec.event_payload_type is not None else None
        self.inband = DtmfDetector() if codec.event_payload_type is None and inband else None
        self.digits: list[tuple[str, float, str]] = []     # (digit, duration_ms, source) not reported yet
        self.packets = 0
        self.last_put = float("-inf")

    def receive(self, packet: bytes, now: float) -> None:
        """One RTP packet from the leg (plain, or already decrypted)."""
        try:
            pt, seq, ts, ssrc, marker = peek_header(packet)
        except RtpError:
            return
        codec = self.codec
        if pt == codec.payload_type:
            self.packets += 1
            self.last_put = now
            self.jitter.put(seq, ts, rtp_payload(packet), now, ssrc)
        elif pt == codec.event_payload_type and self.dtmf_rx is not None:
            self.jitter.mark_non_audio(seq, ts, now, ssrc)
            payload = rtp_payload(packet)
            try:
                decode_telephone_event(payload)
            except ValueError:
                return
            self.dtmf_rx.receive_packet(payload, ts, seq, marker, now)
            self._drain()

    def _drain(self) -> None:
        rx = self.dtmf_rx
        assert rx is not None
        while (event := rx.next_event()) is not None:
            if isinstance(event, DtmfDigitEnded):
                self.digits.append((event.digit, event.duration_ms, "rfc4733"))

    def frame(self, now: float) -> np.ndarray | None:
        """This tick's 20 ms of what the leg sent (None: nothing yet, or a gap with nothing to conceal)."""
        rx = self.dtmf_rx
        if rx is not None:
            timer = rx.get_timer()
            if timer is not None and now >= timer:
                rx.handle_timer(now)
                self._drain()
        item = self.jitter.get(now)
        if item is None:
            return None
        pcm: np.ndarray | None = None
        decoder = self.decoder
        try:
            if type(item) is Frame:
                if decoder is not None:
                    pcm = fit_frame(np.frombuffer(decoder.decode(item.payload), "<i2"))
                else:
                    decode = g711.ulaw_decode if self.law == "ulaw" else g711.alaw_decode
                    pcm = fit_frame(np.frombuffer(decode(item.payload), "<i2"))
            elif decoder is not None:               # a gap: Opus FEC from the next packet, else PLC
                if item.next_payload is not None:
                    pcm = fit_frame(np.frombuffer(decoder.decode_fec(item.next_payload), "<i2"))
                else:
                    pcm = fit_frame(np.frombuffer(decoder.decode_plc(), "<i2"))
        except Exception:  # noqa: BLE001 - a corrupt packet is a moment of silence
            return None
        if pcm is not None and self.inband is not None:
            for event in self.inband.process_frame(pcm):
                if isinstance(event, DtmfDigitEnded):
                    self.digits.append((event.digit, event.duration_ms, "inband"))
        return pcm

    def busy(self, now: float) -> bool:
        """Whether ticks still have work here: buffered audio, or a digit waiting for its end."""
        rx = self.dtmf_rx
        return now - self.last_put < 0.5 or (rx is not None and rx.get_timer() is not None)

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None


@dataclass(eq=False)
class MediaLeg:
    """One endpoint's media as the worker sees it: its SDP, its transport, the codec it negotiated, and what
    it hears/sends besides a partner. Named by the API's caller (``name``); the rtpengine-style verbs also
    know it by ``call_id`` and SIP ``tag``."""

    tag: str | None
    kind: str                                  # WEBRTC, SDES or RTP
    name: str = ""
    call_id: str | None = None
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
    # -- the leg model (docs/callcontrol.md) --
    dtmf_mode: str = "rfc4733"
    timeout: float | None = None               # media timeout (seconds without RTP), None: the worker's
    pending: str | None = None                 # "local": our offer awaits its answer; "remote": theirs, ours
    offer: SessionDescription | None = None    # the remote offer being answered
    offer_direction: str | None = None         # the direction asked for in our own offer (leg_offer)
    held: bool = False                         # the peer asked not to receive (sendonly/inactive): nothing sent
    connection: Connection | None = None
    room: Room | None = None
    member_of: Connection | None = None        # a leg `mix` joined to a call
    source: PromptSource | DtmfSource | None = None
    overlay: Overlay | None = None
    recorder: CallRecorder | None = None
    input: LegInput | None = None
    encoder: OpusEncoder | None = None         # an Opus leg hearing audio the worker composes (mix, overlay)

    @property
    def sender(self) -> RtpSender | None:
        """The leg's one outgoing stream (None before its transport has a session)."""
        if self.rtp is not None:
            return self.rtp.session.sender
        return self.rtcp.sender if self.rtcp is not None else None

    @property
    def session(self) -> RtpSession | None:
        return self.rtp.session if self.rtp is not None else self.rtcp

    @property
    def ready(self) -> bool:
        """Whether the leg has a negotiated codec and a stream (it can be played to, connected...)."""
        return self.codec is not None and self.sender is not None

    def ids(self) -> dict[str, Any]:
        """What events about this leg carry: its name, and for the rtpengine-style verbs its call and tag."""
        ids: dict[str, Any] = {"leg": self.name}
        if self.call_id is not None:
            ids["call_id"] = self.call_id
            ids["tag"] = self.tag
        return ids


@dataclass(eq=False)
class Connection:
    """Two legs joined (leg ``caller`` is side "a", ``callee`` side "b"), once both have codecs, by a
    ``Bridge``. The rtpengine-style verbs make one per call (``id`` is the Call-ID) at the offer, bridged at
    the answer; ``connect`` makes one bridged at once."""

    call_id: str
    caller: MediaLeg
    callee: MediaLeg
    bridge: Bridge | None = None
    answer_sdp: SessionDescription | None = None
    reoffer_from: str | None = None            # the tag whose re-offer (re-INVITE) awaits its answer
    record_pcm: dict[str, np.ndarray] = field(default_factory=dict)     # passthrough capture: decoded backlog
    record_decoders: dict[str, OpusDecoder] = field(default_factory=dict)  # Opus passthrough capture
    members: dict[str, Member] = field(default_factory=dict)   # by tag: legs joined by mix (spy/whisper/speak)
    conference: Any = None                     # mixer.Conference of the parties and members, while there are members
    forwards: dict[str, Forward] = field(default_factory=dict)  # by source side: directions forwarded in C
    ng: bool = False                           # made by the rtpengine-style offer/answer

    @property
    def id(self) -> str:
        return self.call_id

    def leg(self, side: Side) -> MediaLeg:
        return self.caller if side == "a" else self.callee

    def legs(self) -> tuple[MediaLeg, MediaLeg]:
        return self.caller, self.callee

    def mixed_sides(self) -> set[str]:
        """The parties that hear the members' conference instead of the bridged audio: everyone once a member
        speaks, else each whisper's target."""
        sides: set[str] = set()
        for member in self.members.values():
            if member.role == "speaker":
                return {"a", "b"}
            if member.role == "whisper" and member.target is not None:
                sides.add(member.target)
        return sides

    def composed_sides(self) -> set[str]:
        """The sides whose bridged audio is held back: the worker sends them a prompt, injected DTMF, a
        conference mix or an overlay instead, or nothing (the leg is on hold)."""
        sides = self.mixed_sides()
        for side in ("a", "b"):
            leg = self.leg(side)  # type: ignore[arg-type]
            if leg.source is not None or leg.overlay is not None or leg.held:
                sides.add(side)
        return sides

    def by_tag(self, tag: str) -> MediaLeg:
        """The leg with SIP tag ``tag`` (MediaError if neither has it)."""
        for leg in (self.caller, self.callee):
            if leg.tag == tag:
                return leg
        raise MediaError(f"call {self.call_id!r} has no leg with tag {tag!r}")

    def other(self, leg: MediaLeg) -> MediaLeg:
        return self.callee if leg is self.caller else self.caller


@dataclass(eq=False)
class Member:
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
        return next(mode for mode, role in MIX_ROLES.items() if role == self.role)

    def close(self) -> None:
        for codec in (self.encoder, self.decoder):
            if codec is not None:
                codec.close()
        self.encoder = self.decoder = None


def dtmf_prompt(digits: str, duration_ms: int) -> Prompt:
    """In-band DTMF: each digit's tone then a short silence, as one prompt at the bridge rate."""
    gap = np.zeros(PCM_RATE * DTMF_GAP_MS // 1000, np.int16)
    parts: list[np.ndarray] = []
    for digit in digits:
        parts += [dtmf_tone(digit, duration_ms, PCM_RATE), gap]
    return Prompt.from_samples(np.concatenate(parts), PCM_RATE, name=f"dtmf:{digits}")
