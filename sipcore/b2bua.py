"""Minimal back-to-back user agent: calls to configured numbers are answered and re-originated.

An INVITE whose Request-URI user is a `[[sip.b2bua]]` number becomes two calls of one `UserAgent`:
the A leg (callpath as UAS towards the caller) and the B leg (callpath as UAC towards the target).
SDP bodies cross unchanged in both directions (offer, early and final answers, re-offers); provisional
responses, failures, CANCEL and BYE are mirrored; re-INVITE/UPDATE/INFO are relayed. Each leg has its own
Call-ID, tags and CSeq space. The ACD will build richer call control on the same `UserAgent` API.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .message import Request, Response
from .transaction import ServerTransaction
from .ua import (
    Answered, CallEvent, CallState, CallStateError, Confirmed, Ended, Failed, IncomingCall, InfoReceived,
    OutgoingCall, ReinviteReceived, Ringing, UserAgent, ALLOW,
)
from .uri import NameAddr

__all__ = ["BackToBack", "BridgedCall", "mirror_status"]

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


@dataclass(eq=False)
class BridgedCall:
    """The two legs of one back-to-back call."""

    number: str
    a: IncomingCall
    b: OutgoingCall
    b_early_sdp: bytes | None = None
    pending: set[asyncio.Future] = field(default_factory=set)

    @property
    def done(self) -> bool:
        """Whether both legs are over."""
        return self.a.is_final and self.b.is_final


class BackToBack:
    """Answers calls to configured numbers and re-originates them to their targets (number -> target URI)."""

    def __init__(self, ua: UserAgent, number_map: dict[str, str]) -> None:
        self.ua = ua
        self.number_map = dict(number_map)
        self.calls: dict[str, BridgedCall] = {}  # A-leg Call-ID -> bridged call

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
        caller = request.from_
        from_na = NameAddr(caller.uri.copy(), caller.display)
        b = self.ua.invite(target, from_na, request.body or None,
                           content_type=request.get("content-type") or "application/sdp")
        b.auto_answer_reinvite = False
        bridge = BridgedCall(number, a, b)
        self.calls[a.call_id] = bridge
        a.on_event = lambda ev: self._from_a(bridge, ev)
        b.on_event = lambda ev: self._from_b(bridge, ev)
        log.info("b2bua %s -> %s (B leg %s)", number, target, b.call_id, extra={"call_id": a.call_id})

    # -- B leg (callee side) -> A leg (caller side) ------------------------------------------------
    def _from_b(self, bridge: BridgedCall, ev: CallEvent) -> None:
        a = bridge.a
        if isinstance(ev, Ringing):
            if ev.sdp is not None:
                bridge.b_early_sdp = ev.sdp
            if a.state in (CallState.INCOMING, CallState.EARLY) and ev.status > 100:
                a.ring(ev.status, ev.sdp, reason=ev.reason, reliable=ev.reliable)
        elif isinstance(ev, Answered):
            if a.state in (CallState.INCOMING, CallState.EARLY):
                sdp = ev.sdp if ev.sdp is not None else (bridge.b_early_sdp or bridge.b.remote_sdp)
                a.answer(sdp)
            else:
                bridge.b.hangup()  # the caller went away while the callee answered
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
        b = bridge.b
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

    def _cleanup(self, bridge: BridgedCall) -> None:
        if bridge.done:
            self.calls.pop(bridge.a.call_id, None)
