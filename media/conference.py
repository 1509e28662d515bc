"""Conferences: any number of legs, from any calls, mixed (docs/callcontrol.md "Media: legs and connections").

A ``Room`` is one conference: a ``mixer.Conference`` whose participants are leg names, alive while it has a
member. A member is ``talk`` (heard by all, hears all), ``listen`` (hears all, heard by nobody: a supervisor's
spy) or ``whisper`` (hears all, heard only by the member named ``to``: coaching). Barge is ``talk``; a 3-way
call is three ``talk`` members. Each member's audio goes through its ``LegInput`` (jitter buffer, decoder:
Opus at 8 kHz), every tick the room mixes N-1 and each member hears its mix on its own stream.

``Conferences`` is that part of ``MediaWorker``; it also keeps the older per-call ``mix`` of the
rtpengine-style verbs (members joined to a connection's two parties: spy, whisper, barge), which
``conference_join`` generalises.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .sdp import SessionDescription, bump_version

from . import g711
from .bridge import FRAME_SAMPLES, PCM_RATE, fit_frame
from .jitter import Frame
from .legs import MIX_ROLES, Connection, MediaLeg, Member
from .mixer import Conference, MixerError
from .opus import OpusDecoder
from .rtp import RtpError, peek_header, rtp_payload
from .sdp_rules import RTP, WEBRTC, MediaError, is_sdes, is_webrtc, offered_direction

if TYPE_CHECKING:
    from .negotiation import Negotiation  # noqa: F401

__all__ = ["Conferences", "Room", "CONFERENCE_MODES", "MAX_MEMBERS"]

MAX_MEMBERS = 16                  # legs `mix` may join to one call (supervisors, conference parties)
CONFERENCE_MODES = {"talk": "speaker", "listen": "listener", "whisper": "whisper"}


def parse_sdp(sdp: str | bytes) -> SessionDescription:
    from .negotiation import parse_sdp as parse
    return parse(sdp)


@dataclass(eq=False)
class Room:
    """One conference of legs: the mixer and its members by leg name."""

    name: str
    mixer: Conference
    members: dict[str, MediaLeg] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)      # leg name -> talk / listen / whisper
    targets: dict[str, str] = field(default_factory=dict)    # whisperer -> the member who hears it


class Conferences:
    """Conferences of legs, and the per-call ``mix`` (mixed into ``MediaWorker``)."""

    rooms: dict[str, Room]
    calls: dict[str, Connection]
    _loop: asyncio.AbstractEventLoop

    # -- conferences of legs ----------------------------------------------------------------------------
    def conference_join(self, conference: str, name: str, mode: str = "talk", to: str | None = None) -> dict[str, Any]:
        """Put leg ``name`` in ``conference`` (made on its first member) as ``talk``, ``listen`` or ``whisper``
        (heard only by the member ``to``), or change its mode there. A leg in a connection or another
        conference leaves it first (its partner is left unconnected); a prompt replacing what it hears ends."""
        if not isinstance(conference, str) or not conference:
            raise MediaError("conference_join: 'conference' must be a non-empty string")
        role = CONFERENCE_MODES.get(mode)
        if role is None:
            raise MediaError(f"conference_join: mode must be talk, listen or whisper, not {mode!r}")
        leg = self._ready_leg(name)
        room = self.rooms.get(conference)
        target = None
        if role == "whisper":
            if not to or room is None or to not in room.members or to == name:
                raise MediaError(f"conference_join: whisper needs 'to', another member of {conference!r}")
            target = to
        if leg.room is not None and leg.room is room:
            assert room is not None
            room.mixer.set_role(name, role, target)
        else:
            if room is None and len(self.rooms) >= 10000:
                raise MediaError("conference_join: too many conferences")
            if room is not None and len(room.members) >= 64:
                raise MediaError(f"conference_join: {conference!r} already has 64 members")
            self._detach(leg)
            self._end_replacing(leg, "conference")
            if room is None:
                room = self.rooms[conference] = Room(conference, Conference(FRAME_SAMPLES, conference_id=conference))
            room.mixer.add(name, role, target=target)
            room.members[name] = leg
            leg.room = room
            sender = leg.sender
            assert sender is not None
            sender.start_talkspurt()
            sender.forget_relayed_source()
        room.modes[name] = mode
        if target is not None:
            room.targets[name] = target
        else:
            room.targets.pop(name, None)
        return {"conference": conference, "leg": name, "mode": mode,
                "members": {m: room.modes[m] for m in room.members}}

    def conference_leave(self, name: str) -> dict[str, Any]:
        """Take leg ``name`` out of its conference (which ends with its last member); the leg stays open,
        unconnected."""
        leg = self._leg(name)
        room = leg.room
        if room is None:
            raise MediaError(f"leg {name!r} is in no conference")
        self._leave_room(leg)
        return {"conference": room.name, "leg": name, "members": list(room.members)}

    def _leave_room(self, leg: MediaLeg) -> None:
        room = leg.room
        if room is None:
            return
        leg.room = None
        room.members.pop(leg.name, None)
        room.modes.pop(leg.name, None)
        room.targets.pop(leg.name, None)
        if leg.name in room.mixer:
            room.mixer.remove(leg.name)
        for whisperer, target in list(room.targets.items()):
            if target == leg.name:                  # nobody to whisper to any more: it listens
                room.targets.pop(whisperer)
                room.modes[whisperer] = "listen"
                room.mixer.set_role(whisperer, "listener")
        if not room.members:
            self.rooms.pop(room.name, None)
        sender = leg.sender
        if sender is not None:
            sender.start_talkspurt()
        self._wake(leg)

    def _tick_rooms(self, now: float) -> None:
        """Every conference's 20 ms: each member's input, the N-1 mix, each member's output (and recording)."""
        for room in list(self.rooms.values()):
            frames: dict[str, np.ndarray | None] = {}
            members = list(room.members.items())          # an event listener may change the room
            for name, leg in members:
                frames[name] = self._input(leg).frame(now)
            try:
                out = room.mixer.mix(frames)
            except MixerError:  # pragma: no cover - frames are always one 20 ms int16 frame
                continue
            for name, leg in members:
                if leg.room is room:
                    self._leg_output(leg, out.get(name), frames[name], now)
            for name, leg in members:
                self._report_digits(leg)

    # -- the per-call mix of the rtpengine-style verbs -----------------------------------------------
    async def mix(self, call_id: str, tag: str, sdp: str | bytes, mode: str = "listen",
                  whisper_to: str | None = None) -> str:
        """Join the leg ``tag`` to a bridged call, or change its mode: ``listen`` hears both parties (spy),
        ``whisper`` is also heard by the party ``whisper_to`` (mixed into the other party's audio; the other
        party never hears it), ``speak`` is heard by everyone (barge-in; several make a conference). ``sdp`` is
        the member's offer, plain RTP (PCMU/PCMA) or WebRTC (Opus/PCMU/PCMA); our answer comes back. Again
        with the same tag: the mode changes, and a new SDP is the member's re-INVITE (hold/resume, a new
        address, an ICE restart; its codec stays)."""
        call = self._bridged(call_id)
        role = MIX_ROLES.get(mode)
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
            if len(call.members) >= MAX_MEMBERS:
                raise MediaError(f"mix: call {call_id!r} already has {MAX_MEMBERS} members")
            member = await self._open_member(call, tag, parse_sdp(sdp))
        elif sdp:
            offer = parse_sdp(sdp)
            assert member.leg.remote_sdp is not None
            if offer.to_bytes() != member.leg.remote_sdp.to_bytes():
                self._reoffer_member(member, offer)
        assert call.conference is not None and call.bridge is not None
        member.role, member.target = role, target
        if member.pid in call.conference:
            call.conference.set_role(member.pid, role, target)
        else:
            call.conference.add(member.pid, role, target=target)
        self._remix(call)
        call.bridge.capture = True
        assert member.leg.local_sdp is not None
        return member.leg.local_sdp.to_bytes().decode()

    def _reoffer_member(self, member: Member, offer: SessionDescription) -> None:
        """A member's re-INVITE: its new address or ICE restart applied, its hold/resume followed (we do not
        send to a member that does not want to receive), our answer's direction mirrored. Refused before
        anything changes when its codec is gone or it moves to SDES (``stop_mix`` and ``mix`` again)."""
        leg, codec = member.leg, member.codec
        if is_sdes(offer) or is_webrtc(offer) != (leg.kind == WEBRTC):
            raise MediaError("mix: a member's re-offer cannot change its transport; stop_mix and mix again")
        if not offer.media or offer.media[0].is_rejected:
            raise MediaError("mix: a member's re-offer without an active audio section is not supported")
        if not any(m.encoding.lower() == codec.name and m.clock_rate == codec.clock_rate and pt == codec.payload_type
                   for pt, m in offer.media[0].rtpmap.items()):
            raise MediaError(f"mix: a member's re-offer must keep {codec.encoding}/{codec.clock_rate} on payload "
                             f"type {codec.payload_type}; for another codec, stop_mix and mix again")
        self._update_remote(leg, offer, offer=True)
        direction = offered_direction(offer)
        member.receives = direction in ("sendrecv", "recvonly")
        assert leg.local_sdp is not None
        local = leg.local_sdp.copy()
        local.media[0].direction = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)
        leg.local_sdp = bump_version(local, leg.local_sdp)



    def _remix(self, call: Connection) -> None:
        """Who hears the members' conference changed: the bridged audio towards the mixed parties is held
        back (they hear the mix on their own stream, encoded with the leg's encoder), and given back to those
        no longer mixed (unless something else is sent to them)."""
        self._sync_muted(call)

    async def _open_member(self, call: Connection, tag: str, offer: SessionDescription) -> Member:
        """The member's leg: a port of the range (plain RTP) or a browser leg on the ICE port, and our answer."""
        if is_sdes(offer):
            raise MediaError("mix: a member with SDES-SRTP (RTP/SAVP) is not supported; offer RTP/AVP or WebRTC")
        leg = MediaLeg(tag, WEBRTC if is_webrtc(offer) else RTP, name=f"{call.call_id}/m:{tag}",
                       call_id=call.call_id, remote_sdp=offer, side="a", member_of=call)
        await self._open_offered(leg, offer)
        try:                                        # mixed at 8 kHz; a member's DTMF is not taken
            local, leg.codec = self._answer_for(leg, offer, [], None, local_preference=True, events=False)
        except MediaError:
            self._close_leg(leg)
            raise
        self._leg_ready(leg)
        sender = leg.sender
        assert sender is not None
        leg.local_sdp = local
        member = Member(leg, sender, leg.codec, self._jitter_class(leg.codec.clock_rate),
                        decoder=OpusDecoder(PCM_RATE, 1) if leg.codec.name == "opus" else None,
                        receives=offered_direction(offer) in ("sendrecv", "recvonly"))
        if self.calls.get(call.call_id) is not call or call.bridge is None or tag in call.members:
            member.close()                         # the call went (or got this member) while the port opened
            self._close_leg(leg)
            raise MediaError(f"call {call.call_id!r} changed while the member leg was being set up")
        if call.conference is None:
            call.conference = Conference(FRAME_SAMPLES, conference_id=call.call_id)
            call.conference.add("a")
            call.conference.add("b")
        call.members[tag] = member
        return member

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


    def _drop_member(self, call: Connection, tag: str) -> None:
        member = call.members.get(tag)
        if member is None:
            return
        del call.members[tag]
        if call.conference is not None and member.pid in call.conference:
            call.conference.remove(member.pid)
        if call.bridge is not None:
            self._remix(call)
        if not call.members:
            call.conference = None
        member.close()
        self._close_leg(member.leg)
        self._update_capture(call)

    def _member_frame(self, member: Member, now: float) -> np.ndarray | None:
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



    def _tick_members(self, call: Connection, frames: list[np.ndarray | None],
                      heard: dict[str, np.ndarray | None], now: float) -> dict[Any, np.ndarray]:
        """Mix the parties and the members: every member hears its mix (sent here); what the parties hear
        is returned (``out["a"]``, ``out["b"]``) for the worker to send to the mixed ones."""
        conference = call.conference
        assert conference is not None
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
        return out

    def _on_member_rtp(self, call: Connection, member: Member, packet: bytes, now: float) -> None:
        """Audio from a member: into its jitter buffer (a listener's is not heard by anyone: dropped)."""
        if member.role == "listener":
            return
        try:
            pt, seq, ts, ssrc, _ = peek_header(packet)
        except RtpError:
            return
        if pt == member.codec.payload_type:
            member.jitter.put(seq, ts, rtp_payload(packet), now, ssrc)

