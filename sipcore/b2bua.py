"""Minimal back-to-back user agent: calls to configured numbers are answered and re-originated.

An INVITE whose Request-URI user is a `[[sip.b2bua]]` number becomes two calls of one `UserAgent`:
the A leg (callpath as UAS towards the caller) and the B leg (callpath as UAC towards the target).
SDP bodies cross unchanged in both directions (offer, early and final answers, re-offers); provisional
responses, failures, CANCEL and BYE are mirrored; re-INVITE/UPDATE/INFO are relayed. Each leg has its own
Call-ID, tags and CSeq space. The ACD will build richer call control on the same `UserAgent` API.

Media anchoring: with a `MediaController` injected (`BackToBack(ua, numbers, media=controller)`, normally
the media workers' control clients, see web/server.py) every SDP crossing the B2BUA is rewritten to point
at the media plane, rtpengine style, keyed by the A leg's Call-ID: the caller's offer goes through
`offer(call_id, caller_tag, sdp)` before the B leg is placed, the callee's early (183) and final answers
through `answer(call_id, caller_tag, callee_tag, sdp)`, re-offers from either side through offer/answer
with that side's tag, and `delete(call_id)` runs once when either leg ends or fails. sipcore never imports
the media package: the controller is any object with those three coroutines.

The SIP side never waits on media for long: each control call is bounded by `media_timeout` (seconds) and
runs in a task, and a bridged call's events are handled in order behind a per-call lock. Failures degrade:

* the initial offer fails (timeout, worker error or gone): the call proceeds *unanchored*, SDP passed
  through unchanged as without a controller (logged as a warning);
* an early (183) answer fails: the provisional is relayed without SDP;
* the final answer fails after the offer was anchored: the callee already sends to the media plane, so
  passing its answer through would give one-way audio; the caller gets 500 and the callee a BYE;
* a re-offer fails: 500 to the re-INVITE/UPDATE (the session stays as it was); a re-offer before the call
  is bridged gets 491; an offerless re-INVITE is answered with the leg's current SDP.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from .message import Request, Response
from .transaction import ServerTransaction
from .ua import (
    Answered, CallEvent, CallState, CallStateError, Confirmed, Ended, Failed, IncomingCall, InfoReceived,
    OutgoingCall, ReinviteReceived, Ringing, UserAgent, ALLOW,
)
from .uri import NameAddr, SipUri

__all__ = ["BackToBack", "BridgedCall", "MediaController", "callee_transport", "mirror_status"]

log = logging.getLogger("callpath.sip.b2bua")


def mirror_status(status: int) -> int:
    """The final status the caller gets for the B leg's failure.

    4xx–6xx are passed through (486, 480, 603, 404...), except the ones that would mean something else
    coming from callpath: a challenge for the B leg's credentials (401/407 -> 403), redirections we do
    not follow (3xx -> 480) and 503, which would tell the caller callpath itself is unavailable (-> 500, cf. §16.7).
    """
    if 300 <= status < 400:
        return 480
    if status in (401, 407):
        return 403
    if status == 503:
        return 500
    if 400 <= status < 700:
        return status
    return 500


class MediaController(Protocol):
    """What the B2BUA needs from a media plane (rtpengine's ng offer/answer/delete); SDP in, SDP out.

    ``transport`` of the initial offer is the callee's media transport: ``RTP/AVP`` for a SIP target, or
    ``UDP/TLS/RTP/SAVPF`` for a target reached over WebSocket (a browser); re-offers pass none.
    Results may be ``str`` or ``bytes``; any exception (or a reply slower than the B2BUA's
    ``media_timeout``) counts as a failure and is handled as the module docstring says.
    """

    def offer(self, call_id: str, from_tag: str, sdp: bytes,
              transport: str | None = None) -> Awaitable[str | bytes]: ...

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: bytes) -> Awaitable[str | bytes]: ...

    def delete(self, call_id: str) -> Awaitable[Any]: ...


def callee_transport(target: str) -> str:
    """The media transport towards a B2BUA target: WebRTC for ``;transport=ws|wss`` targets, else plain RTP."""
    try:
        transport = (SipUri.parse(target).params.get("transport") or "").lower()
    except Exception:  # noqa: BLE001 - the target was validated in settings; be lenient here
        transport = ""
    return "UDP/TLS/RTP/SAVPF" if transport in ("ws", "wss") else "RTP/AVP"


@dataclass(eq=False)
class BridgedCall:
    """The two legs of one back-to-back call (``b`` is None while the caller's offer is being anchored)."""

    number: str
    a: IncomingCall
    b: OutgoingCall | None = None
    b_early_sdp: bytes | None = None
    pending: set[asyncio.Future] = field(default_factory=set)
    # media anchoring (only with a controller)
    anchored: bool = False              # the media plane holds this call (offer succeeded, not deleted)
    a_tag: str = ""                     # the caller's From tag: the media call's from_tag
    b_tag: str | None = None            # the callee's tag as the media plane knows it (first answer)
    b_early_raw: bytes | None = None    # the callee's early SDP as received (before rewriting)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def done(self) -> bool:
        """Whether both legs are over."""
        return self.a.is_final and (self.b is None or self.b.is_final)

    @property
    def media_id(self) -> str:
        """The media plane's call id: the A leg's Call-ID."""
        return self.a.call_id


class BackToBack:
    """Answers calls to configured numbers and re-originates them to their targets (number -> target URI)."""

    def __init__(self, ua: UserAgent, number_map: dict[str, str], *, media: MediaController | None = None,
                 media_timeout: float = 2.0) -> None:
        self.ua = ua
        self.number_map = dict(number_map)
        self.calls: dict[str, BridgedCall] = {}  # A-leg Call-ID -> bridged call
        self.media = media
        self.media_timeout = media_timeout
        self._tasks: set[asyncio.Task] = set()

    def handles_number(self, user: str | None) -> bool:
        """Whether a Request-URI user part is one of the back-to-back numbers."""
        return user is not None and user in self.number_map

    def on_invite(self, tx: ServerTransaction, request: Request) -> None:
        """Take an initial request for a number: answer it as UAS and place the B leg as UAC."""
        if request.method != "INVITE":
            if request.method == "OPTIONS":
                tx.reply(200, headers=[("Allow", ALLOW)])
            elif request.method != "ACK":
                tx.reply(405, headers=[("Allow", ALLOW)])
            self.ua.stack.flush()
            return
        number = request.uri.user or ""
        target = self.number_map.get(number)
        if target is None:
            tx.reply(404)
            self.ua.stack.flush()
            return
        a = self.ua.accept_invite(tx, request)
        if a.is_final:
            return
        a.auto_answer_reinvite = False
        bridge = BridgedCall(number, a, a_tag=request.from_.tag or "caller")
        self.calls[a.call_id] = bridge
        a.on_event = lambda ev: self._from_a(bridge, ev)
        content_type = request.get("content-type") or "application/sdp"
        if self.media is None:
            self._place_b(bridge, target, request, request.body or None, content_type)
        else:
            self._spawn(self._anchor_and_place(bridge, target, request, content_type))

    def _place_b(self, bridge: BridgedCall, target: str, request: Request, sdp: bytes | None,
                 content_type: str) -> None:
        """Originate the B leg towards ``target`` with ``sdp`` (the caller's offer, or the media plane's)."""
        caller = request.from_
        from_na = NameAddr(caller.uri.copy(), caller.display)
        b = self.ua.invite(target, from_na, sdp, content_type=content_type)
        b.auto_answer_reinvite = False
        bridge.b = b
        b.on_event = lambda ev: self._from_b(bridge, ev)
        log.info("b2bua %s -> %s (B leg %s)%s", bridge.number, target, b.call_id,
                 " media anchored" if bridge.anchored else "", extra={"call_id": bridge.a.call_id})

    # -- media anchoring ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("b2bua media task failed", exc_info=task.exception())

    async def _media_op(self, bridge: BridgedCall, what: str, call: Awaitable[Any]) -> Any:
        """Await one controller call within ``media_timeout``; None (logged) on any failure."""
        try:
            return await asyncio.wait_for(call, self.media_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the media plane's trouble must not break signalling
            reason = f"no reply within {self.media_timeout:g} s" if isinstance(exc, asyncio.TimeoutError) \
                else f"{type(exc).__name__}: {exc}"
            log.warning("media %s failed: %s", what, reason, extra={"call_id": bridge.a.call_id})
            return None

    async def _media_sdp(self, bridge: BridgedCall, what: str, call: Awaitable[Any]) -> bytes | None:
        result = await self._media_op(bridge, what, call)
        if result is None:
            return None
        return result.encode() if isinstance(result, str) else bytes(result)

    async def _anchor_and_place(self, bridge: BridgedCall, target: str, request: Request,
                                content_type: str) -> None:
        """Rewrite the caller's offer through the media plane, then place the B leg with it."""
        assert self.media is not None
        async with bridge.lock:
            sdp = request.body or None
            if sdp is not None and "sdp" in content_type.lower():
                rewritten = await self._media_sdp(bridge, "offer", self.media.offer(
                    bridge.media_id, bridge.a_tag, sdp, transport=callee_transport(target)))
                if rewritten is not None:
                    bridge.anchored = True
                    sdp = rewritten
                else:
                    log.warning("media not anchored: passing SDP through", extra={"call_id": bridge.a.call_id})
            else:
                log.info("INVITE without SDP offer: media not anchored", extra={"call_id": bridge.a.call_id})
            if bridge.a.is_final:  # the caller gave up meanwhile
                await self._release(bridge)
                self._cleanup(bridge)
                return
            try:
                self._place_b(bridge, target, request, sdp, content_type)
            except Exception:
                log.exception("b2bua: cannot place the B leg to %s", target, extra={"call_id": bridge.a.call_id})
                bridge.a.reject(500)
                await self._release(bridge)
                self._cleanup(bridge)

    async def _release(self, bridge: BridgedCall) -> None:
        """Delete the call from the media plane (once)."""
        if not bridge.anchored or self.media is None:
            return
        bridge.anchored = False
        await self._media_op(bridge, "delete", self.media.delete(bridge.media_id))

    async def _b_event(self, bridge: BridgedCall, ev: CallEvent) -> None:
        """A B-leg event with media anchoring: rewrite its SDP, then handle it as without media."""
        assert self.media is not None
        async with bridge.lock:
            a, b = bridge.a, bridge.b
            assert b is not None
            if isinstance(ev, Ringing) and ev.sdp is not None and bridge.anchored:
                bridge.b_early_raw = ev.sdp
                tag = bridge.b_tag or ev.remote_tag or b.local_tag
                sdp = await self._media_sdp(bridge, "answer (early)",
                                            self.media.answer(bridge.media_id, bridge.a_tag, tag, ev.sdp))
                if sdp is not None:
                    bridge.b_tag = tag
                ev = dataclasses.replace(ev, sdp=sdp)
            elif isinstance(ev, Answered) and bridge.anchored and a.state in (CallState.INCOMING, CallState.EARLY):
                raw = ev.sdp if ev.sdp is not None else (bridge.b_early_raw or b.remote_sdp)
                if raw is not None:
                    tag = bridge.b_tag or ev.remote_tag
                    sdp = await self._media_sdp(bridge, "answer",
                                                self.media.answer(bridge.media_id, bridge.a_tag, tag, raw))
                    if sdp is None:
                        a.reject(500, "Media Unavailable")
                        b.hangup()
                        await self._release(bridge)
                        self._cleanup(bridge)
                        return
                    bridge.b_tag = tag
                    ev = dataclasses.replace(ev, sdp=sdp)
            elif isinstance(ev, ReinviteReceived) and bridge.anchored:
                await self._relay_offer_media(bridge, ev, bridge.b_tag, a, bridge.a_tag)
                self._cleanup(bridge)
                return
            self._on_b(bridge, ev)
            if a.is_final or b.is_final:
                await self._release(bridge)

    async def _a_event(self, bridge: BridgedCall, ev: CallEvent) -> None:
        """An A-leg event with media anchoring."""
        async with bridge.lock:
            if isinstance(ev, ReinviteReceived) and bridge.anchored and bridge.b is not None:
                await self._relay_offer_media(bridge, ev, bridge.a_tag, bridge.b, bridge.b_tag)
                self._cleanup(bridge)
                return
            self._on_a(bridge, ev)
            if bridge.a.is_final or (bridge.b is not None and bridge.b.is_final):
                await self._release(bridge)

    async def _relay_offer_media(self, bridge: BridgedCall, ev: ReinviteReceived, offerer_tag: str | None,
                                 other: IncomingCall | OutgoingCall, other_tag: str | None) -> None:
        """A re-offer of an anchored call: offer through the media plane, relay, answer through it on return."""
        assert self.media is not None
        if ev.offer is None:
            ev.answer(None)  # offerless re-INVITE: our current SDP for this leg is the offer
            return
        if offerer_tag is None or other_tag is None:
            ev.reject(491)  # not bridged yet (an UPDATE while early): let the peer retry later
            return
        sdp = await self._media_sdp(bridge, "re-offer", self.media.offer(bridge.media_id, offerer_tag, ev.offer))
        if sdp is None:
            ev.reject(500)
            return
        try:
            if ev.method == "INVITE":
                fut = other.reinvite(sdp, retry_glare=False, content_type=ev.content_type or "application/sdp")
            else:
                fut = other.update(sdp, content_type=ev.content_type or "application/sdp")
        except CallStateError:
            ev.reject(491)
            return
        bridge.pending.add(fut)

        def done(f: asyncio.Future) -> None:
            bridge.pending.discard(f)
            self._spawn(self._finish_reoffer(bridge, ev, f, offerer_tag, other_tag))

        fut.add_done_callback(done)

    async def _finish_reoffer(self, bridge: BridgedCall, ev: ReinviteReceived, f: asyncio.Future,
                              offerer_tag: str, other_tag: str) -> None:
        assert self.media is not None
        if f.cancelled():
            ev.reject(500)
            return
        resp: Response = f.result()
        if not 200 <= resp.status < 300:
            ev.reject(resp.status if resp.status in (488, 491, 500, 403, 415, 606) else 488)
            return
        if not resp.body:
            ev.answer(None)
            return
        async with bridge.lock:
            sdp = await self._media_sdp(bridge, "re-answer", self.media.answer(
                bridge.media_id, offerer_tag, other_tag, resp.body))
        if sdp is None:
            ev.reject(500)
        else:
            ev.answer(sdp)

    # -- B leg (callee side) -> A leg (caller side) ------------------------------------------------
    def _from_b(self, bridge: BridgedCall, ev: CallEvent) -> None:
        if self.media is not None:
            self._spawn(self._b_event(bridge, ev))
        else:
            self._on_b(bridge, ev)

    def _on_b(self, bridge: BridgedCall, ev: CallEvent) -> None:
        a, b = bridge.a, bridge.b
        assert b is not None
        if isinstance(ev, Ringing):
            if ev.sdp is not None:
                bridge.b_early_sdp = ev.sdp
            if a.state in (CallState.INCOMING, CallState.EARLY) and ev.status > 100:
                a.ring(ev.status, ev.sdp, reason=ev.reason, reliable=ev.reliable)
        elif isinstance(ev, Answered):
            if a.state in (CallState.INCOMING, CallState.EARLY):
                sdp = ev.sdp if ev.sdp is not None else (bridge.b_early_sdp or b.remote_sdp)
                a.answer(sdp)
            else:
                b.hangup()  # the caller went away while the callee answered
        elif isinstance(ev, Failed):
            if a.state in (CallState.INCOMING, CallState.EARLY):
                status = mirror_status(ev.status)
                a.reject(status, ev.reason if status == ev.status else None)
        elif isinstance(ev, Ended):
            if ev.by != "local":
                a.hangup()
        elif isinstance(ev, ReinviteReceived):
            self._relay_offer(bridge, ev, a)
        elif isinstance(ev, InfoReceived):
            self._relay_info(bridge, ev, a)
        self._cleanup(bridge)

    # -- A leg (caller side) -> B leg (callee side) ------------------------------------------------
    def _from_a(self, bridge: BridgedCall, ev: CallEvent) -> None:
        if self.media is not None:
            self._spawn(self._a_event(bridge, ev))
        else:
            self._on_a(bridge, ev)

    def _on_a(self, bridge: BridgedCall, ev: CallEvent) -> None:
        b = bridge.b
        if b is None:  # the B leg is not placed yet (its offer is being anchored)
            if isinstance(ev, ReinviteReceived):
                ev.reject(491)
            self._cleanup(bridge)
            return
        if isinstance(ev, Ended):
            if ev.by != "local":
                b.hangup()  # CANCEL while unanswered, BYE once answered
        elif isinstance(ev, ReinviteReceived):
            self._relay_offer(bridge, ev, b)
        elif isinstance(ev, InfoReceived):
            self._relay_info(bridge, ev, b)
        elif isinstance(ev, Confirmed):
            pass
        self._cleanup(bridge)

    # -- relaying --------------------------------------------------------------------------------
    def _relay_offer(self, bridge: BridgedCall, ev: ReinviteReceived, other: IncomingCall | OutgoingCall) -> None:
        """Pass a re-INVITE/UPDATE offer to the other leg; its answer (or failure) answers this one."""
        try:
            if ev.method == "INVITE":
                fut = other.reinvite(ev.offer, retry_glare=False, content_type=ev.content_type or "application/sdp")
            else:
                fut = other.update(ev.offer, content_type=ev.content_type or "application/sdp")
        except CallStateError:
            ev.reject(491)  # the other leg is busy with its own offer: let the peer retry
            return

        def done(f: asyncio.Future) -> None:
            bridge.pending.discard(f)
            if f.cancelled():
                ev.reject(500)
                return
            resp: Response = f.result()
            if 200 <= resp.status < 300:
                ev.answer(resp.body if resp.body else None)
            else:
                ev.reject(resp.status if resp.status in (488, 491, 500, 403, 415, 606) else 488)

        bridge.pending.add(fut)
        fut.add_done_callback(done)

    def _relay_info(self, bridge: BridgedCall, ev: InfoReceived, other: IncomingCall | OutgoingCall) -> None:
        """Pass an INFO body (DTMF relay...) to the other leg; it was already answered 200 on this one."""
        try:
            fut = other.info(ev.body, ev.content_type or "application/octet-stream")
        except CallStateError:
            return
        bridge.pending.add(fut)
        fut.add_done_callback(bridge.pending.discard)

    def media_lost(self, call_id: str) -> bool:
        """The media plane lost this call's media (its worker died): end both legs (BYE, CANCEL or 603 as
        their state asks) rather than leave the parties in silence. False when no such call is bridged."""
        bridge = self.calls.get(call_id)
        if bridge is None:
            return False
        bridge.anchored = False                  # nothing left to delete on the media side
        log.warning("media lost (worker died): ending the call", extra={"call_id": call_id})
        bridge.a.hangup()
        if bridge.b is not None:
            bridge.b.hangup()
        return True

    def _cleanup(self, bridge: BridgedCall) -> None:
        if bridge.done and self.calls.get(bridge.a.call_id) is bridge:
            self.calls.pop(bridge.a.call_id, None)

    async def close(self) -> None:
        """Stop the media tasks still running (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
