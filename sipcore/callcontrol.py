"""Call control: the per-call object the ACD drives and the service that makes them (docs/callcontrol.md).

The router interface, targets and the media contract are in `sipcore.routing`; the parties (`Channel`) and
the events reported about them in `sipcore.channel`.

sipcore offers mechanism, not policy. For each new INVITE the proxy asks a `Router` what the call becomes:
`ProxyCall()` (stateful proxying to the callee's contacts, as without a router), `AcceptCall(handler)`
(callpath answers as a B2BUA and ``handler(call)`` runs with a `Call`), or `RejectCall(status)`.

A `Call` is one inbound party (its `Channel` ``call.inbound``) and the outbound channels rung for it. Each
channel is one SIP dialog (`IncomingCall` / `OutgoingCall` of the `UserAgent`) plus one media leg, named
``"<call id>/<n>"``, all legs of a call in one media group. Verbs::

    await call.answer()                                   # 200 OK with our media answer: the caller is parked
    await call.play(["moh.wav"], loop=True)               # music on hold to the caller
    result = await call.ring([Target.user("1001"), Target.user("1002")], strategy="parallel", timeout=20)
    if result.channel:                                     # the first to answer; the others were cancelled
        await call.connect(result.channel)                 # caller <-> agent (passthrough or transcoded)
    await call.ended()

`ring` before `answer` is what a PBX does: the caller hears ringing (180 relayed), early media (183 with SDP)
is connected, and the caller is answered with the codec of whoever answers (passthrough when possible).
Targets that are local users are resolved to their registered contacts and called directly on the flow they
registered from (so callpath's own proxy never challenges callpath), each offered media matching its
transport: WebRTC to WebSocket contacts, plain RTP to the others.

Handled here without the application: a party's re-INVITE is answered locally from its own media leg (not
relayed); a hold (sendonly/inactive) plays music on hold to the partner and a resume stops it
(`ChannelHeld` / `ChannelResumed` report it); a late-offer INVITE (no SDP) gets our offer in the 200 and the
answer from the ACK; INFO digits and media DTMF become `DtmfReceived`; when a connected channel ends its
partner is hung up (``call.hangup_with_partner``), and when the inbound channel ends every channel of the call
ends. Media failures (a worker lost, a browser leg down, a media timeout) end the channel they hit.

sipcore never imports media: the controller handed in is any object with the `LegMedia` coroutines (the
server passes ``media.client.MediaPool``). Media events reach ``owner`` callbacks as objects with a ``leg``
attribute; DTMF is recognised by a ``digit`` attribute, fatal ones by their class name (`FATAL_MEDIA_EVENTS`).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .channel import (
    CallControlError, CallControlEvent, Channel, ChannelAnswered, ChannelEnded, ChannelFailed, ChannelHeld,
    ChannelResumed, ChannelRinging, DtmfReceived, RingResult, better_failure, info_digit,
)
from .message import Request
from .routing import FATAL_MEDIA_EVENTS, Contact, ContactResolver, LegMedia, Target, media_transport_for
from .transaction import ServerTransaction
from .ua import (
    Answered, CallState, Confirmed, Ended, Failed, IncomingCall, InfoReceived, ReferReceived,
    ReinviteReceived, Ringing, UserAgent, parse_replaces,
)
from .uri import NameAddr, SipUri

__all__ = ["Call", "CallControl"]

log = logging.getLogger("callpath.sip.callcontrol")


class Call:
    """The control object of one call: its inbound channel, the channels rung for it, and the verbs."""

    def __init__(self, control: "CallControl", incoming: IncomingCall, request: Request) -> None:
        self.control = control
        self.id = incoming.call_id
        self.request = request
        self._legs = itertools.count()
        self.inbound = Channel(self, incoming, self._next_leg(), inbound=True, label=str(request.from_.uri),
                               transport=media_transport_for(incoming.peer_flow.transport))
        self.inbound.request = request
        self.channels: list[Channel] = [self.inbound]
        self.events: asyncio.Queue[CallControlEvent] = asyncio.Queue()
        self.on_event: Callable[[CallControlEvent], None] | None = None
        self.hangup_with_partner = True
        self.music_on_hold: list[str] = list(control.music_on_hold)
        self._sip_events: asyncio.Queue[tuple[Channel, Any]] = asyncio.Queue()
        self._done = asyncio.get_running_loop().create_future()
        self._pump_task: asyncio.Task | None = None
        self._ring_waiters: set[asyncio.Future] = set()
        incoming.auto_answer_reinvite = False
        incoming.on_event = lambda ev: self._sip_events.put_nowait((self.inbound, ev))

    # -- the application's verbs --------------------------------------------------------------------
    @property
    def is_over(self) -> bool:
        return self._done.done()

    async def ended(self) -> None:
        """Wait until every channel of the call is over."""
        await asyncio.shield(self._done)

    async def next_event(self, timeout: float | None = None) -> CallControlEvent:
        """The next event (when ``on_event`` is not set)."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def answer(self) -> None:
        """Answer the caller with media (park): our answer to its offer, or our offer if it sent none."""
        ch = self.inbound
        if ch.answered:
            return
        self._require_live(ch)
        sdp = await self._inbound_sdp(ch, prefer=None)
        self._answer_inbound(ch, sdp)

    async def ring(self, targets: Sequence[Target], *, strategy: str = "parallel", timeout: float = 30.0,
                   connect: bool = True, party: Channel | None = None) -> RingResult:
        """Ring ``targets`` (all at once, or one after another each for its own timeout) until one answers.

        The targets are rung for ``party`` (default: the caller): the answering channel is returned (the
        others are cancelled) and, with ``connect`` (default), connected to the party, which is answered
        first if it was not yet. None with the best failure status when nobody answered (or the party gave up).
        """
        if strategy not in ("parallel", "sequential"):
            raise ValueError(f"strategy must be 'parallel' or 'sequential', not {strategy!r}")
        party = party or self.inbound
        self._require_live(party)
        failure: tuple[int, str] | None = None
        groups: list[list[Target]] = [list(targets)] if strategy == "parallel" else [[t] for t in targets]
        for group in groups:
            result = await self._ring_group(group, timeout, party)
            if result.channel is not None:
                if connect:
                    await self.connect(result.channel, party)
                return result
            failure = better_failure(failure, (result.status, result.reason))
            if party.ended:
                break
        status, reason = failure or (480, "Temporarily Unavailable")
        return RingResult(None, status, reason)

    async def connect(self, channel: Channel, other: Channel | None = None) -> None:
        """Connect ``channel`` to ``other`` (default: the inbound channel): each hears the other."""
        a = other or self.inbound
        if channel is a:
            raise CallControlError("a channel cannot be connected to itself")
        for ch in (a, channel):
            self._require_live(ch)
        if a.inbound and not a.answered:
            sdp = await self._inbound_sdp(a, prefer=channel.codec)
            self._answer_inbound(a, sdp)
        for ch in (a, channel):
            await self._negotiated(ch)
        await self._link(a, channel)

    async def play(self, files: Sequence[str], *, channel: Channel | None = None, loop: bool = False,
                   mix: bool = False) -> None:
        """Play files to a channel (default: the caller): a prompt, or music on hold with ``loop``."""
        ch = channel or self.inbound
        self._require_live(ch)
        await self._media("play", self.control.media.play(ch.leg, list(files), loop=loop, mix=mix))
        ch.playing = True

    async def stop_play(self, channel: Channel | None = None) -> None:
        ch = channel or self.inbound
        if ch.media_open:
            ch.playing = False
            await self._media("stop_play", self.control.media.stop_play(ch.leg))

    async def conference(self, room: str, channel: Channel | None = None, *, mode: str = "talk",
                         to: Channel | None = None) -> None:
        """Put a channel (default: the caller, answered first if need be) in conference ``room``, a mix of
        any number of legs from any calls: ``talk``, ``listen`` (spy) or ``whisper`` (heard by ``to`` only)."""
        ch = channel or self.inbound
        self._require_live(ch)
        if ch.inbound and not ch.answered:
            self._answer_inbound(ch, await self._inbound_sdp(ch, prefer=None))
        if ch.partner is not None:
            await self.disconnect(ch)
        if ch.playing:
            await self.stop_play(ch)
        await self._media("conference", self.control.media.conference_join(
            room, ch.leg, mode, to.leg if to is not None else None), ch)
        ch.room = room

    async def leave_conference(self, channel: Channel | None = None) -> None:
        ch = channel or self.inbound
        if ch.room is not None and ch.media_open:
            ch.room = None
            await self._media("leave conference", self.control.media.conference_leave(ch.leg), ch)

    async def disconnect(self, channel: Channel) -> None:
        """Separate a channel from its partner (each then hears silence, or what is played to it)."""
        partner = channel.partner
        channel.partner = None
        if partner is not None and partner.partner is channel:
            partner.partner = None
        if channel.media_open:
            await self._media("disconnect", self.control.media.disconnect(channel.leg))

    def hangup(self, channel: Channel | None = None, status: int = 480) -> None:
        """End a channel (default: the whole call): BYE, CANCEL, or ``status`` to an unanswered caller."""
        if channel is None:
            for ch in list(self.channels):
                self._end_channel(ch, status)
            return
        self._end_channel(channel, status)

    def reject(self, status: int = 480, reason: str | None = None) -> None:
        """Refuse the unanswered caller with a final status (the whole call ends)."""
        sip = self.inbound.sip
        if isinstance(sip, IncomingCall) and not self.inbound.answered and not sip.is_final:
            sip.reject(status, reason)
        self.hangup(status=status)

    # -- internals: inbound media ---------------------------------------------------------------------
    async def _inbound_sdp(self, ch: Channel, prefer: str | None) -> bytes:
        """Our SDP for an inbound channel's 200 (answer to its offer, or an offer for a late-offer INVITE)."""
        media = self.control.media
        if ch.early_sdp is not None:
            return ch.early_sdp       # the answer a 183 carried: the 200 repeats it
        body = ch.request.body if ch.request is not None else b""
        offer = body if body and b"v=0" in body[:16] else None
        if offer is not None:
            if not ch.media_open:
                await self._media("remote offer", media.leg_remote_offer(
                    ch.leg, offer, group=self.id, owner=self._media_owner(ch), **self._leg_options()), ch)
                ch.media_open = True
            desc = await self._media("answer", media.leg_create_answer(ch.leg, prefer=prefer), ch)
        else:
            desc = await self._media("offer", media.leg_offer(
                ch.leg, group=self.id, transport=ch.transport, owner=self._media_owner(ch), **self._leg_options()),
                ch)
            ch.media_open = True
            ch.negotiated = asyncio.get_running_loop().create_future()   # the answer comes in the ACK
        ch.codec = desc.codec or ch.codec
        if desc.sdp is None:
            raise CallControlError("the media plane gave no SDP")
        return desc.sdp

    async def _negotiated(self, ch: Channel) -> None:
        """Wait until a late-offer channel's ACK brought the answer (media cannot flow before)."""
        if ch.negotiated is None or ch.negotiated.done() and ch.negotiated.exception() is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(ch.negotiated), self.control.ua.offer_timeout)
        except asyncio.TimeoutError:
            raise CallControlError(f"{ch!r}: no ACK with the answer to our offer") from None

    def _answer_inbound(self, ch: Channel, sdp: bytes) -> None:
        sip = ch.sip
        assert isinstance(sip, IncomingCall)
        if sip.is_final:
            raise CallControlError("the caller is gone")
        sip.answer(sdp)
        ch.answered = True
        self._emit(ChannelAnswered(ch))

    # -- internals: ringing ---------------------------------------------------------------------------
    async def _ring_group(self, targets: list[Target], timeout: float, party: Channel) -> RingResult:
        contacts: list[tuple[Target, Contact]] = []
        failure: tuple[int, str] | None = None
        for target in targets:
            try:
                found = await self.control.contacts_for(target)
            except Exception as exc:  # noqa: BLE001 - one unresolvable target must not stop the others
                log.warning("target %s: %s", target.label, exc, extra={"call_id": self.id})
                found = []
            if not found:
                failure = better_failure(failure, (480, f"{target.label}: not reachable"))
            contacts += [(target, c) for c in found]
        if not contacts:
            status, reason = failure or (480, "Temporarily Unavailable")
            return RingResult(None, status, reason)
        channels: list[Channel] = []
        for target, contact in contacts:
            ch = await self._originate(target, contact, target.timeout or timeout, party)
            channels.append(ch)
            if party.ended:
                break
        while True:
            winner = next((ch for ch in channels if ch.answered and not ch.ended), None)
            if winner is not None:
                for ch in channels:
                    if ch is not winner:
                        self._end_channel(ch, 487)
                return RingResult(winner)
            if party.ended or all(ch.ended for ch in channels):
                break
            waiter = asyncio.get_running_loop().create_future()
            self._ring_waiters.add(waiter)
            try:
                await waiter
            finally:
                self._ring_waiters.discard(waiter)
        for ch in channels:
            self._end_channel(ch, 487)
            failure = better_failure(failure, ch.failure or (480, "no answer"))
        status, reason = failure or (480, "no answer")
        return RingResult(None, status, reason)

    async def _originate(self, target: Target, contact: Contact, timeout: float, party: Channel) -> Channel:
        """Open a media leg offering ``contact.transport`` and INVITE the contact with it (a channel that
        could not be called comes back ended, with its failure)."""
        ch = Channel(self, None, self._next_leg(), inbound=False, label=target.label, transport=contact.transport)
        ch.rung_for = party
        self.channels.append(ch)
        try:
            extra = self._leg_options()
            if contact.codecs:
                extra["codecs"] = list(contact.codecs)
            if contact.dtmf:
                extra["dtmf"] = contact.dtmf
            desc = await self._media("offer", self.control.media.leg_offer(
                ch.leg, group=self.id, transport=contact.transport, owner=self._media_owner(ch), **extra), ch)
        except CallControlError as exc:
            self._never_called(ch, (500, str(exc)))
            return ch
        ch.media_open = True
        caller = self.request.from_
        from_na = NameAddr.parse(contact.from_uri) if contact.from_uri else NameAddr(
            SipUri.parse(f"sip:{caller.uri.user or 'anonymous'}@{self.control.domain}"), caller.display)
        try:
            sip = self.control.ua.invite(
                contact.uri, from_na, desc.sdp, flow=contact.flow, route=contact.path, ring_timeout=timeout,
                credentials=contact.credentials, to=contact.aor or None, headers=target.headers,
                response_timeout=contact.response_timeout)
        except Exception as exc:  # noqa: BLE001 - an unroutable contact fails this channel only
            log.warning("cannot call %s: %s", contact.uri, exc, extra={"call_id": self.id})
            await self._close_leg(ch)
            self._never_called(ch, (500, str(exc)))
            return ch
        ch.sip = sip
        sip.auto_answer_reinvite = False
        sip.on_event = lambda ev, ch=ch: self._sip_events.put_nowait((ch, ev))
        log.info("ringing %s at %s (%s media)", target.label, contact.uri, contact.transport,
                 extra={"call_id": self.id})
        return ch

    def _never_called(self, ch: Channel, failure: tuple[int, str]) -> None:
        ch.ended = ch.reported = True
        ch.failure = failure

    async def _link(self, a: Channel, b: Channel) -> None:
        """Media-connect two channels and remember them as partners (moving them from earlier partners)."""
        for ch in (a, b):
            old = ch.partner
            if old is not None and old not in (a, b):
                old.partner = None
            if ch.playing:     # music on hold or a prompt to a parked party stops when it is connected
                ch.playing = False
                await self._quiet("stop play", self.control.media.stop_play(ch.leg))
            if ch.room is not None:
                await self._quiet("leave conference", self.leave_conference(ch))
        await self._media("connect", self.control.media.connect(a.leg, b.leg))
        a.partner, b.partner = b, a

    # -- internals: events ----------------------------------------------------------------------------
    def start(self, handler: Callable[["Call"], Awaitable[None]]) -> None:
        """Run the SIP event pump and the application's handler (called by CallControl)."""
        loop = asyncio.get_running_loop()
        self._pump_task = loop.create_task(self._pump())
        task = loop.create_task(self._run_handler(handler))
        self.control._tasks.add(task)
        task.add_done_callback(self.control._tasks.discard)

    async def _run_handler(self, handler: Callable[["Call"], Awaitable[None]]) -> None:
        try:
            await handler(self)
        except asyncio.CancelledError:
            raise
        except CallControlError as exc:
            log.warning("call handler stopped: %s", exc, extra={"call_id": self.id})
            self._fail_unanswered(500)
        except Exception:
            log.exception("call handler failed", extra={"call_id": self.id})
            self._fail_unanswered(500)
        else:
            if not self.inbound.answered and not self.inbound.ended:
                self._fail_unanswered(480)   # the handler returned without answering or rejecting

    def _fail_unanswered(self, status: int) -> None:
        if not self.inbound.answered:
            self.reject(status)

    async def _pump(self) -> None:
        while True:
            ch, ev = await self._sip_events.get()
            try:
                await self._on_sip(ch, ev)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call event %s failed", type(ev).__name__, extra={"call_id": self.id})
            if self._all_over():
                await self._finish()
                return

    async def _on_sip(self, ch: Channel, ev: Any) -> None:
        if isinstance(ev, _MediaEvent):
            await self._on_media_event(ch, ev.event)
        elif isinstance(ev, Ringing):
            await self._on_ringing(ch, ev)
        elif isinstance(ev, Answered):
            await self._on_answered(ch, ev)
        elif isinstance(ev, Confirmed):
            if ch.negotiated is not None and not ch.negotiated.done():
                if ev.sdp and ch.media_open:
                    try:
                        desc = await self._media("answer", self.control.media.leg_answer(ch.leg, ev.sdp), ch)
                        ch.codec = desc.codec or ch.codec
                        ch.negotiated.set_result(None)
                    except CallControlError as exc:
                        ch.negotiated.set_exception(exc)
                        self._end_channel(ch, 488)
                else:
                    ch.negotiated.set_exception(CallControlError("the ACK carried no answer to our offer"))
                    self._end_channel(ch, 488)
        elif isinstance(ev, Failed):
            ch.ended = True
            ch.failure = (ev.status, ev.reason)
            if not ch.inbound:
                self._emit(ChannelFailed(ch, ev.status, ev.reason))
            await self._channel_over(ch, "remote", f"{ev.status} {ev.reason}")
        elif isinstance(ev, Ended):
            ch.ended = True
            await self._channel_over(ch, ev.by, ev.reason)
        elif isinstance(ev, ReinviteReceived):
            await self._on_reoffer(ch, ev)
        elif isinstance(ev, ReferReceived):
            self._on_refer(ch, ev)
        elif isinstance(ev, InfoReceived):
            digit = info_digit(ev.body, ev.content_type)
            if digit:
                self._emit(DtmfReceived(ch, digit, "info"))
        self._wake_ring()

    async def _on_ringing(self, ch: Channel, ev: Ringing) -> None:
        self._emit(ChannelRinging(ch, ev.status))
        inbound = self.inbound
        sip = inbound.sip
        if inbound.answered or inbound.ended or not isinstance(sip, IncomingCall):
            return
        if ev.sdp and not ch.early_media and not any(c.early_media for c in self.channels):
            # early media (183 + SDP): take the callee's answer and give the caller ours, connected
            try:
                desc = await self._media("early answer", self.control.media.leg_answer(ch.leg, ev.sdp), ch)
            except CallControlError:
                return            # unusable early SDP: the caller hears its own ringback until the 2xx
            ch.codec = desc.codec or ch.codec
            ch.early_media = True
            ch.early_sdp = ev.sdp
            sdp = await self._inbound_sdp(inbound, prefer=ch.codec)
            inbound.early_sdp = sdp
            if not sip.is_final:
                sip.ring(183, sdp)
                await self._link(inbound, ch)
            return
        if sip.state is CallState.INCOMING:
            sip.ring(180)

    async def _on_answered(self, ch: Channel, ev: Answered) -> None:
        if ch.rung_for is not None and ch.rung_for.ended:
            self._end_channel(ch, 487)        # rung for a party that is gone: its 2xx crossed our CANCEL
            return
        if ev.sdp and ev.sdp != ch.early_sdp:    # (a 2xx SDP different from the 183's is the new answer)
            try:
                desc = await self._media("answer", self.control.media.leg_answer(ch.leg, ev.sdp), ch)
            except CallControlError as exc:
                # an answer the media plane cannot use (no common codec, a broken WebRTC answer): the
                # channel is no use, it counts as a 488 and is hung up
                ch.failure = (488, f"Not Acceptable Here ({exc})")
                self._end_channel(ch, 488)
                return
            ch.codec = desc.codec or ch.codec
        ch.answered = True
        self._emit(ChannelAnswered(ch))

    async def _on_reoffer(self, ch: Channel, ev: ReinviteReceived) -> None:
        """A party's re-INVITE/UPDATE: answered from its own leg; hold and resume reach the partner."""
        media = self.control.media
        if ev.offer is None:
            desc = await self._media("re-offer", media.leg_offer(ch.leg, group=self.id), ch)
            ev.answer(desc.sdp)
            return
        try:
            remote = await self._media("re-offer", media.leg_remote_offer(ch.leg, ev.offer, group=self.id), ch)
            desc = await self._media("re-answer", media.leg_create_answer(ch.leg, prefer=ch.codec), ch)
        except CallControlError:
            ev.reject(500, "Media Unavailable")
            return
        ev.answer(desc.sdp)
        ch.codec = desc.codec or ch.codec
        hold = remote.hold or desc.hold
        if hold and not ch.held:
            ch.held = True
            partner = ch.partner
            if partner is not None and partner.media_open and self.music_on_hold:
                await self._quiet("music on hold", media.play(partner.leg, self.music_on_hold, loop=True))
            self._emit(ChannelHeld(ch))
        elif not hold and ch.held:
            ch.held = False
            partner = ch.partner
            if partner is not None and partner.media_open:
                await self._quiet("stop music on hold", media.stop_play(partner.leg))
            self._emit(ChannelResumed(ch))

    # -- transfers -----------------------------------------------------------------------------------------
    def _on_refer(self, ch: Channel, ev: ReferReceived) -> None:
        """A party's REFER: attended when its Replaces names one of our dialogs, blind otherwise (RFC 5589)."""
        transferee = ch.partner
        if transferee is None or transferee.ended:
            ev.reject(603, "Decline (no party to transfer)")
            return
        replaces: tuple[str, str, str, bool] | None = None
        if ev.replaces:
            try:
                replaces = parse_replaces(ev.replaces)
            except ValueError:
                ev.reject(400, "Bad Request (malformed Replaces in Refer-To)")
                return
            replaced = self.control.find_channel(*replaces[:3])
            if replaced is not None and replaced.partner is not None and not replaced.partner.ended:
                self._spawn(self._attended_transfer(ch, ev, transferee, replaced))
                return
        headers = [("Replaces", ev.replaces)] if ev.replaces else []
        target = self.control.transfer_target(ev.refer_to.uri, headers)
        self._spawn(self._blind_transfer(ch, ev, transferee, target))

    async def _attended_transfer(self, transferor: Channel, ev: ReferReceived, transferee: Channel,
                                 replaced: Channel) -> None:
        """Connect the transferee to the party the transferor consulted; both of its dialogs end."""
        ev.accept()
        target = replaced.partner
        assert target is not None
        transferor.transferring = replaced.transferring = True
        try:
            await self._link(transferee, target)
        except CallControlError as exc:
            self._notify(transferor, 500, str(exc))
            return
        log.info("attended transfer: %s now with %s", transferee.leg, target.leg, extra={"call_id": self.id})
        self._notify(transferor, 200)
        self._end_channel(transferor, 480)
        replaced.call._end_channel(replaced, 480)

    async def _blind_transfer(self, transferor: Channel, ev: ReferReceived, transferee: Channel,
                              target: Target) -> None:
        """Ring ``target`` for the transferee (who hears music meanwhile); connect them when it answers."""
        ev.accept()
        transferor.transferring = True
        await self._quiet("disconnect", self.disconnect(transferor))
        if self.music_on_hold and transferee.media_open:
            await self._quiet("music", self.play(self.music_on_hold, channel=transferee, loop=True))
        try:
            result = await self.ring([target], timeout=self.control.transfer_timeout, connect=False,
                                     party=transferee)
            if result.channel is not None:
                await self.connect(result.channel, transferee)
        except CallControlError as exc:
            result = RingResult(None, 500, str(exc))
        if result.channel is not None:
            log.info("blind transfer of %s to %s done", transferee.leg, target.label, extra={"call_id": self.id})
            self._notify(transferor, 200)
            self._end_channel(transferor, 480)
            return
        log.info("blind transfer of %s to %s failed: %d %s", transferee.leg, target.label, result.status,
                 result.reason, extra={"call_id": self.id})
        self._notify(transferor, result.status, result.reason)
        transferor.transferring = False
        if not transferor.ended and not transferee.ended:
            await self._quiet("reconnect", self.connect(transferor, transferee))   # back to the transferor
        elif not transferee.ended:
            self._end_channel(transferee, 480)

    def _notify(self, ch: Channel, status: int, reason: str | None = None) -> None:
        sip = ch.sip
        if sip is not None and not sip.is_final:
            sip.notify_refer(status, reason)
            self.control.ua.stack.flush()

    async def replace(self, new: Channel, old: Channel) -> None:
        """An INVITE with Replaces took ``old``'s place: answer it and connect it to ``old``'s partner."""
        partner = old.partner
        try:
            sdp = await self._inbound_sdp(new, prefer=partner.codec if partner else None)
            self._answer_inbound(new, sdp)
            old.transferring = True
            if partner is not None and not partner.ended:
                await self._link(new, partner)
        except CallControlError as exc:
            log.warning("INVITE with Replaces failed: %s", exc, extra={"call_id": self.id})
            self._end_channel(new, 500)
            return
        old.call._end_channel(old, 480)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self.control._tasks.add(task)
        task.add_done_callback(self.control._tasks.discard)

    async def _guard(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call control task failed", extra={"call_id": self.id})

    async def _on_media_event(self, ch: Channel, event: Any) -> None:
        name = type(event).__name__
        digit = getattr(event, "digit", None)
        if digit:
            self._emit(DtmfReceived(ch, str(digit), str(getattr(event, "source", "rtp"))))
        elif name in FATAL_MEDIA_EVENTS and not ch.ended:
            log.warning("media %s on %s: ending it", name, ch.leg, extra={"call_id": self.id})
            ch.media_open = False              # the leg is gone with the worker / the browser
            self._end_channel(ch, 480)

    async def _channel_over(self, ch: Channel, by: str, reason: str) -> None:
        """A channel ended: its leg closes, its partner follows (policy), the inbound ends the call."""
        if ch.reported:
            return
        ch.reported = True
        if ch.negotiated is not None and not ch.negotiated.done():
            ch.negotiated.set_exception(CallControlError(f"{ch!r} ended before its answer came"))
            ch.negotiated.exception()      # retrieved: nobody may be waiting for it
        await self._close_leg(ch)
        if ch.answered or ch.inbound:
            self._emit(ChannelEnded(ch, by, reason))
        partner = ch.partner
        ch.partner = None
        if partner is not None:
            partner.partner = None
            if self.hangup_with_partner and not partner.ended and not ch.transferring:
                partner.call._end_channel(partner, 480)
        for other in self.channels:           # whatever was still ringing for it is cancelled
            if other.rung_for is ch and not other.answered and not other.ended:
                self._end_channel(other, 487)

    def _end_channel(self, ch: Channel, status: int) -> None:
        """Hang a channel's SIP dialog up; its Ended/Failed event then closes the leg (`_channel_over`).

        BYE after an answer, CANCEL before one (the 487 comes back as Failed), ``status`` to an unanswered
        inbound INVITE (no UA event follows a reject: one is queued here)."""
        sip = ch.sip
        if sip is None or sip.is_final:
            return             # never called, or its final event is already on its way
        if isinstance(sip, IncomingCall) and sip.state in (CallState.INCOMING, CallState.EARLY):
            sip.reject(status)
            ch.ended = True
            ch.call._sip_events.put_nowait((ch, Ended("local", f"rejected {status}")))
            return
        sip.hangup()

    def _wake_ring(self) -> None:
        for waiter in list(self._ring_waiters):
            if not waiter.done():
                waiter.set_result(None)

    def _all_over(self) -> bool:
        return all(ch.reported for ch in self.channels)

    async def _finish(self) -> None:
        for ch in self.channels:
            await self._close_leg(ch)
            ch.partner = None
            if ch.sip is not None:
                ch.sip.on_event = _discard      # the UA keeps its calls a while: they must not keep this one
        self._wake_ring()
        if not self._done.done():
            self._done.set_result(None)
        self.control._forget(self)

    async def _close_leg(self, ch: Channel) -> None:
        if ch.media_open:
            ch.media_open = False
            await self._quiet("close", self.control.media.leg_close(ch.leg))

    # -- small helpers ---------------------------------------------------------------------------------
    def _leg_options(self) -> dict[str, Any]:
        """What every leg of the call is opened with: the RTP timeout, when one is set."""
        return {"timeout": self.control.rtp_timeout} if self.control.rtp_timeout else {}

    def _next_leg(self) -> str:
        return f"{self.id}/{next(self._legs)}"

    def _media_owner(self, ch: Channel) -> Callable[[Any], None]:
        return lambda event: self._sip_events.put_nowait((ch, _MediaEvent(event)))

    def _require_live(self, ch: Channel) -> None:
        if ch.ended or self.is_over:
            raise CallControlError(f"{ch!r} is over")

    def _emit(self, event: CallControlEvent) -> None:
        cb = self.on_event
        if cb is not None:
            try:
                cb(event)
            except Exception:
                log.exception("call control event handler failed", extra={"call_id": self.id})
        else:
            self.events.put_nowait(event)

    async def _media(self, what: str, op: Awaitable[Any], ch: Channel | None = None) -> Any:
        """One media verb within ``media_timeout``; a failure is a CallControlError naming it."""
        try:
            return await asyncio.wait_for(op, self.control.media_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = (f"no reply within {self.control.media_timeout:g} s" if isinstance(exc, asyncio.TimeoutError)
                   else f"{type(exc).__name__}: {exc}")
            log.warning("media %s%s failed: %s", what, f" on {ch.leg}" if ch else "", why, extra={"call_id": self.id})
            raise CallControlError(f"media {what} failed: {why}") from exc

    async def _quiet(self, what: str, op: Awaitable[Any]) -> None:
        try:
            await self._media(what, op)
        except CallControlError:
            pass


def _discard(event: Any) -> None:
    """Events of a SIP call whose Call is over: nobody listens any more."""


@dataclass(frozen=True, slots=True)
class _MediaEvent:
    """A media event queued with the SIP events of the channel whose leg it concerns."""

    event: Any




# -- the service ---------------------------------------------------------------------------------------
class CallControl:
    """Creates `Call` objects for INVITEs a router accepted, over one UserAgent and one media controller."""

    def __init__(self, ua: UserAgent, media: LegMedia, contacts: ContactResolver, *, domain: str,
                 media_timeout: float = 2.0, music_on_hold: Sequence[str] = (), transfer_timeout: float = 60.0,
                 is_local: Callable[[SipUri], bool] | None = None, rtp_timeout: float = 0.0) -> None:
        self.ua = ua
        self.media = media
        self.resolver = contacts
        self.domain = domain
        self.media_timeout = media_timeout
        self.music_on_hold = list(music_on_hold)
        self.transfer_timeout = transfer_timeout
        self.rtp_timeout = rtp_timeout        # seconds without RTP before a leg's channel is hung up (0: never)
        self.is_local = is_local or (lambda uri: uri.host.lower() == domain.lower())
        self.calls: dict[str, Call] = {}
        self._tasks: set[asyncio.Task] = set()

    def accept(self, tx: ServerTransaction, request: Request,
               handler: Callable[[Call], Awaitable[None]]) -> Call | None:
        """Take an INVITE as its UAS and run ``handler`` with the new Call (None: the UA refused it)."""
        incoming = self.ua.accept_invite(tx, request)
        if incoming.is_final:
            return None
        call = Call(self, incoming, request)
        self.calls[call.id] = call
        call.start(handler)
        return call

    def accept_replacing(self, tx: ServerTransaction, request: Request, old: Channel) -> Channel | None:
        """Take an INVITE whose Replaces names ``old`` (RFC 3891): it joins old's call in its place."""
        incoming = self.ua.accept_invite(tx, request)
        if incoming.is_final:
            return None
        call = old.call
        ch = Channel(call, incoming, call._next_leg(), inbound=True, label=str(request.from_.uri),
                     transport=media_transport_for(incoming.peer_flow.transport))
        ch.request = request
        call.channels.append(ch)
        incoming.auto_answer_reinvite = False
        incoming.on_event = lambda ev: call._sip_events.put_nowait((ch, ev))
        call._spawn(call.replace(ch, old))
        return ch

    def find_channel(self, call_id: str, to_tag: str, from_tag: str) -> Channel | None:
        """The live channel whose dialog a Replaces names (its to-tag is our tag; either order is taken)."""
        for call in self.calls.values():
            for ch in call.channels:
                sip = ch.sip
                if sip is None or ch.ended or sip.call_id != call_id:
                    continue
                remote = sip.dialog.remote_tag if sip.dialog is not None else None
                if {sip.local_tag, remote} == {to_tag, from_tag}:
                    return ch
        return None

    def transfer_target(self, uri: SipUri, headers: Sequence[tuple[str, str]] = ()) -> Target:
        """Where a REFER's Refer-To points: a local user (rung on its contacts) or a foreign URI."""
        if self.is_local(uri) and uri.user:
            return Target.user(uri.user, headers=headers)
        return Target.uri(str(uri), headers=headers)

    async def contacts_for(self, target: Target) -> list[Contact]:
        """The contacts to INVITE for a target."""
        if target.kind == "user":
            return await self.resolver.contacts_of(str(target.value))
        if target.kind == "uri":
            uri, transport = target.value
            parsed = SipUri.parse(uri)
            return [Contact(parsed, f"{parsed}", transport=transport)]
        if target.kind == "contacts":
            return list(target.value)
        raise ValueError(f"unknown target kind {target.kind!r}")

    def _forget(self, call: Call) -> None:
        if self.calls.get(call.id) is call:
            del self.calls[call.id]

    async def close(self) -> None:
        """Hang up every call and stop their tasks (shutdown)."""
        for call in list(self.calls.values()):
            call.hangup()
        for task in list(self._tasks):
            task.cancel()
        for call in list(self.calls.values()):
            if call._pump_task is not None:
                call._pump_task.cancel()
