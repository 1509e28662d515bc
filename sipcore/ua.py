"""A SIP user-agent core (RFC 3261 §13–§15, RFC 3262, RFC 3264 offer/answer transport) over `SipStack`.

`UserAgent` owns the calls callpath itself takes part in: `OutgoingCall` (UAC: INVITE, PRACK, ACK, CANCEL,
BYE, auth retry) and `IncomingCall` (UAS: 1xx/100rel, 2xx retransmitted until the ACK, CANCEL, BYE).
Both handle in-dialog re-INVITE/UPDATE/INFO/OPTIONS/PRACK and send them. Dialog state and the decisions
(CSeq checks, route sets, RSeq order, retransmission schedules, glare) live in `sipcore.dialog`; this
module is the adapter that turns them into sends and `loop.call_later` timers.

Events to the application: each call delivers typed events (`Ringing`, `Answered`, `Confirmed`,
`Failed`, `Ended`, `InfoReceived`, `ReinviteReceived`). If `call.on_event` is set (a plain callable)
events are passed to it synchronously, from the stack's receive path; otherwise they are queued on
`call.events` (an `asyncio.Queue`) for `await call.next_event()`. New incoming INVITEs go to
`UserAgent.on_invite(tx, request)` if set, else they are accepted and queued on `ua.incoming`.

Routing contract with the proxy (when the proxy, not the UA, is `stack.tu`):
  * in-dialog requests (To tag): `if ua.handles(req): ua.on_request(tx, req)`;
  * CANCEL: `invite_tx.owner.on_cancel(cancel_tx, invite_tx)` when the INVITE's owner is an IncomingCall
    (`ua.accept_invite` makes it the owner), or `ua.on_cancel(cancel_tx, invite_tx) -> bool`; both send
    the 200 to the CANCEL unless it was already sent, and the 487 to the INVITE;
  * ACK for a 2xx: `if ua.handles(ack): ua.on_ack(ack, flow)`;
  * responses matching no transaction: `if ua.handles_response(resp): ua.on_stray_response(resp, flow)`;
  * an initial INVITE addressed to callpath itself: `call = ua.accept_invite(tx, req)`.
Responses to the UA's own client transactions reach it directly (the transaction owner).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from .dialog import (
    Dialog, DialogError, unsupported_requirements,
)
from .dns import SUPPORTED_TRANSPORTS, ServerLocation, literal_target
from .errors import SipParseError
from .locator import ServerLocator, as_flow
from .message import Request, Response, new_call_id, new_tag
from .session_timer import MIN_SE, negotiate_uas
from .stack import SipStack
from .transaction import T1, T2, Flow, ServerTransaction
from .uri import NameAddr, SipUri
from .call import Call
from .callevents import (
    ACCEPT, ALLOW, ALLOWED_METHODS, Answered, CallEvent, CallState, CallStateError, Confirmed, Ended, Failed,
    InfoReceived, ReferReceived, ReinviteReceived, Ringing, parse_replaces, split_refer_to,
)
from .uac import OutgoingCall
from .uas import IncomingCall

__all__ = [
    "UserAgent", "Call", "OutgoingCall", "IncomingCall", "CallState", "CallStateError",
    "Ringing", "Answered", "Confirmed", "Failed", "Ended", "InfoReceived", "ReinviteReceived", "CallEvent",
    "ReferReceived", "parse_replaces", "resolve_uri", "split_refer_to", "ALLOW",
]

log = logging.getLogger("callpath.sip.ua")

# -- resolution ------------------------------------------------------------------------------------
def resolve_uri(uri: SipUri) -> Flow | None:
    """The next hop of a URI whose host (or maddr) is an IP literal, without any lookup; None for a name.

    Names are located asynchronously (RFC 3263: NAPTR, SRV, A/AAAA) by `UserAgent.locate`, never here:
    a blocking lookup would stall every call on the event loop.
    """
    target = literal_target(uri)
    return Flow(target.transport, (target.host, target.port)) if target is not None else None


# -- the user agent --------------------------------------------------------------------------------
class UserAgent:
    """The UA core: creates calls, and is the transaction user for requests inside them.

    Not installed as `stack.tu` by itself: a standalone endpoint sets `stack.tu = ua`; behind the
    proxy, the proxy routes to it (see the module docstring for the exact calls).
    """

    def __init__(self, stack: SipStack, *, credentials: tuple[str, str] | None = None,
                 on_invite: Callable[[ServerTransaction, Request], None] | None = None,
                 locator: ServerLocator | None = None, user_agent: str = "callpath",
                 supported: Iterable[str] = ("100rel", "timer"), t1: float = T1, t2: float = T2,
                 offer_timeout: float = 32.0, linger: float | None = None) -> None:
        self.stack = stack
        self.credentials = credentials
        self.on_invite = on_invite
        self._locator = locator  # RFC 3263 (sipcore.locator); created on first use when not given
        self.user_agent = user_agent
        self.supported = tuple(supported)
        self.t1 = t1
        self.t2 = t2
        self.offer_timeout = offer_timeout
        self.min_se = MIN_SE          # shortest session interval accepted (RFC 4028: 90 s; tests go lower)
        self.linger = 64 * t1 if linger is None else linger
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.calls: dict[tuple[str, str], Call] = {}            # (Call-ID, local tag) -> call
        self._invites: dict[tuple[str, str, str], IncomingCall] = {}  # (Call-ID, From tag, branch) -> call
        self._retiring: dict[Call, asyncio.TimerHandle] = {}

    # -- TransactionUser ---------------------------------------------------------------------------
    def on_request(self, tx: ServerTransaction, request: Request, cancelled: ServerTransaction | None = None) -> None:
        """A request for the UA: in-dialog (To tag), CANCEL, or (standalone) a new INVITE/OPTIONS."""
        method = request.method
        if method == "CANCEL":
            if cancelled is None:
                call = self._invites.get(self._cancel_key(request))
                cancelled = call.tx if call is not None else None
            self.on_cancel(tx, cancelled)
            return
        to_tag = request.to.tag
        if to_tag:
            self._in_dialog(tx, request, to_tag)
        elif method == "INVITE":
            if self.on_invite is not None:
                self.on_invite(tx, request)
            else:
                call = self.accept_invite(tx, request)
                if not call.is_final:
                    self.incoming.put_nowait(call)
        elif method == "OPTIONS":
            tx.reply(200, headers=[("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", ", ".join(self.supported))])
        elif method in ALLOWED_METHODS:
            tx.reply(481)  # BYE/INFO/UPDATE/PRACK outside any dialog
        else:
            tx.reply(501 if method not in ("REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "PUBLISH") else 405,
                     headers=[("Allow", ALLOW)])
        self.flush()

    def on_ack(self, request: Request, flow: Flow) -> None:
        """An ACK for a 2xx we sent (no transaction matched it)."""
        call = self.calls.get((request.call_id, request.to.tag or ""))
        if call is not None:
            call.on_ack_request(request)
            self.flush()

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        """A response with no client transaction: 2xx retransmissions after Timer M, late finals."""
        call = self.calls.get((response.call_id, response.from_.tag or ""))
        if call is not None:
            call.on_stray_response(response, flow)
            self.flush()

    def on_cancel(self, cancel_tx: ServerTransaction, invite_tx: ServerTransaction | None) -> bool:
        """A CANCEL for one of our incoming INVITEs: 200 to the CANCEL, 487 to the INVITE if still pending.

        Returns whether the INVITE was ours; if not, the CANCEL gets 481 (unless already answered).
        """
        call = invite_tx.owner if invite_tx is not None else None
        if not isinstance(call, IncomingCall) or call.ua is not self:
            if cancel_tx.last_response is None:
                cancel_tx.reply(481)
            self.flush()
            return False
        call.on_cancel(cancel_tx, invite_tx)
        return True

    def handles(self, request: Request) -> bool:
        """Whether a request belongs to a dialog or a pending INVITE of this UA (Call-ID + tags / branch)."""
        try:
            to_tag = request.to.tag
            if to_tag:
                return (request.call_id, to_tag) in self.calls
            if request.method == "CANCEL":
                return self._cancel_key(request) in self._invites
        except SipParseError:
            return False
        return False

    def handles_response(self, response: Response) -> bool:
        """Whether a response belongs to a call of this UA (Call-ID + From tag)."""
        try:
            return (response.call_id, response.from_.tag or "") in self.calls
        except SipParseError:
            return False

    # -- creating calls ----------------------------------------------------------------------------
    def accept_invite(self, tx: ServerTransaction, request: Request, *,
                      on_event: Callable[[CallEvent], None] | None = None) -> IncomingCall:
        """Take an initial INVITE as its UAS: returns the IncomingCall (already rejected if unacceptable)."""
        tag = tx.to_tag or new_tag()
        tx.to_tag = tag
        contact = self.contact_for(tx.flow.transport, request.uri.user)
        dialog: Dialog | None = None
        problem: tuple[int, str | None, list[tuple[str, str]]] | None = None
        try:
            if request.to.tag:
                problem = (481, None, [])
            else:
                dialog = Dialog.uas(request, tag, local_contact=contact, secure=tx.flow.transport in ("tls", "wss"))
                self.strip_own_routes(dialog)
        except (DialogError, SipParseError) as exc:
            problem = (400, f"Bad Request ({exc})", [])
        if problem is None:
            unsupported = unsupported_requirements(request, self.supported)
            if unsupported:
                problem = (420, None, [("Unsupported", ", ".join(unsupported))])
        terms, timer_headers, timer_status = (None, [], 0)
        if problem is None and "timer" in self.supported:
            terms, timer_headers, timer_status = negotiate_uas(request, self.min_se)
            if timer_status:
                problem = (timer_status, None, timer_headers)   # 422 Session Interval Too Small + Min-SE
        call = IncomingCall(self, tx, request, dialog, on_event)
        call.timer_terms, call.timer_headers = terms, (timer_headers if not timer_status else [])
        self.calls[(call.call_id, tag)] = call
        try:
            self._invites[self._cancel_key(request)] = call
        except SipParseError:
            pass
        if problem is not None:
            call.reject(problem[0], problem[1], problem[2])
        else:
            call.warm_next_hop(dialog)  # type: ignore[arg-type]
            call.log_event(logging.INFO, "incoming call from %s", request.get("from"))
        return call

    def invite(self, target_uri: str | SipUri, from_uri: str | SipUri | NameAddr, sdp_offer: bytes | None = None, *,
               headers: Iterable[tuple[str, str]] = (), flow: Flow | None = None, route: Iterable[str] = (),
               credentials: tuple[str, str] | None = None, content_type: str = "application/sdp",
               require_100rel: bool = False, ring_timeout: float | None = None, to: str | None = None,
               response_timeout: float | None = None,
               on_event: Callable[[CallEvent], None] | None = None) -> OutgoingCall:
        """Place a call: INVITE `target_uri` from `from_uri` with `sdp_offer` (None: a late-offer INVITE).

        `flow` forces where the INVITE goes (default: the first `route`, else the target, located by RFC 3263
        without blocking: a name makes the INVITE wait for its lookup, and a 503, transport failure or silence
        moves it on to the next target); `route` is a preloaded route set (outbound proxy); `credentials`
        answer one 401/407; `to` is the To URI when it is not the Request-URI (a user's AOR while the
        Request-URI is one of its contacts).
        """
        target = SipUri.parse(target_uri) if isinstance(target_uri, str) else target_uri.copy()
        if isinstance(from_uri, str):
            from_uri = NameAddr.parse(from_uri)
        if isinstance(from_uri, NameAddr):
            from_na = NameAddr(from_uri.uri.copy(), from_uri.display,
                               {k: v for k, v in from_uri.params.items() if k != "tag"})
        else:
            from_na = NameAddr(from_uri.copy())
        routes = list(route)
        hop = NameAddr.parse(routes[0]).uri if routes else target
        if flow is None:
            flow = resolve_uri(hop)  # an IP literal; a name is located below, without blocking
        call_id = new_call_id(self.stack.advertise)
        tag = new_tag()
        req = Request("INVITE", target.copy())
        for r in routes:
            req.add("Route", r)
        req.add("Max-Forwards", "70")
        req.add("From", str(from_na.with_tag(tag)))
        req.add("To", f"<{to or target}>")
        req.add("Call-ID", call_id)
        req.add("CSeq", "1 INVITE")
        if flow is not None:
            req.add("Contact", self.contact_for(flow.transport, from_na.uri.user))
        req.add("Allow", ALLOW)
        req.add("Supported", ", ".join(self.supported))
        if require_100rel:
            req.add("Require", "100rel")
        req.add("User-Agent", self.user_agent)
        for n, v in headers:
            req.add(n, v)
        if sdp_offer:
            req.set("Content-Type", content_type)
            req.body = sdp_offer
        call = OutgoingCall(self, req, flow, on_event=on_event, credentials=credentials, ring_timeout=ring_timeout,
                            response_timeout=response_timeout)
        self.calls[(call_id, tag)] = call
        call.log_event(logging.INFO, "calling %s via %s", target, flow or f"{hop.host} (locating)")
        if flow is None:
            call.locate_target(hop)
            return call
        call.start()
        self.flush()
        return call

    # -- locating next hops (RFC 3263) -------------------------------------------------------------
    @property
    def locator(self) -> ServerLocator:
        """The RFC 3263 locator (one per process, shared with the proxy, when the composition root gives it)."""
        if self._locator is None:
            v6 = any(":" in lst.host for lst in self.stack.listeners.values())
            self._locator = ServerLocator(families=("A", "AAAA") if v6 else ("A",))
        return self._locator

    def transports(self) -> tuple[str, ...]:
        """What NAPTR/SRV may choose: the transports this stack listens on (all when it listens on none)."""
        return tuple(t for t in SUPPORTED_TRANSPORTS if t in self.stack.listeners) or SUPPORTED_TRANSPORTS

    async def locate(self, uri: SipUri) -> ServerLocation:
        """Locate `uri` (RFC 3263) without blocking: the targets to try in order, or why there are none."""
        return await self.locator.locate(uri, self.transports())

    def warm(self, uri: SipUri) -> None:
        """Start locating a dialog's next hop in the background when it is a name not cached yet."""
        if resolve_uri(uri) is None and self.locator.locate_cached(uri, self.transports()) is None:
            self.locator.prefetch(uri, self.transports())

    def flow_for(self, uri: SipUri, fallback: Flow) -> Flow:
        """Where an in-dialog request to `uri` goes now, without waiting: an IP literal as is, a name from the
        cache; a name not cached goes to `fallback` (the peer's flow) and is looked up for the next request."""
        flow = resolve_uri(uri)
        if flow is not None:
            return flow
        loc = self.locator.locate_cached(uri, self.transports())
        if loc is None:
            self.locator.prefetch(uri, self.transports())
            return fallback
        return as_flow(loc.targets[0]) if loc.targets else fallback

    @property
    def active_calls(self) -> int:
        """Calls not over yet (a finished call lingers in ``calls`` for late retransmissions: not counted)."""
        return len(self.calls) - len(self._retiring)

    # -- helpers -----------------------------------------------------------------------------------
    def contact_for(self, transport: str, user: str | None) -> str:
        """Our Contact value on a transport (a URI at our listener for it)."""
        if not self.stack.listeners:
            return f"<sip:{user + '@' if user else ''}{self.stack.advertise}>"
        return f"<{self.stack.local_uri(transport, user)}>"

    def close(self) -> None:
        """Cancel every timer of every call (shutdown)."""
        for call in list(self.calls.values()):
            if isinstance(call, OutgoingCall) and call.locating is not None:
                call.locating.cancel()
            for h in list(call._timers):
                h.cancel()
            call._timers.clear()
            for job in call._unacked.values():
                if job.handle is not None:
                    job.handle.cancel()
        for h in self._retiring.values():
            h.cancel()
        self._retiring.clear()

    def _in_dialog(self, tx: ServerTransaction, request: Request, to_tag: str) -> None:
        call = self.calls.get((request.call_id, to_tag))
        dlg = call.dialogs.get(request.from_.tag or "") if call is not None else None
        if call is None or dlg is None:
            tx.reply(481)
            return
        call.on_dialog_request(tx, request, dlg)

    @staticmethod
    def _cancel_key(request: Request) -> tuple[str, str, str]:
        return (request.call_id, request.from_.tag or "", request.top_via.branch or "")

    def strip_own_routes(self, dlg: Dialog) -> None:
        """Drop route-set entries that point at this very stack (our own proxy's Record-Route)."""
        while dlg.route_set and self.stack.listeners and self.stack.is_local(dlg.route_set[0].uri):
            dlg.route_set.pop(0)

    def new_future(self) -> asyncio.Future:
        return asyncio.get_event_loop().create_future()

    def flush(self) -> None:
        self.stack.flush()

    def retire(self, call: Call) -> None:
        """Forget a finished call after `linger` (late retransmissions still find it meanwhile)."""
        if call in self._retiring:
            return
        loop = asyncio.get_event_loop()

        def forget() -> None:
            self._retiring.pop(call, None)
            self.calls.pop((call.call_id, call.local_tag), None)
            if isinstance(call, IncomingCall):
                try:
                    self._invites.pop(self._cancel_key(call.request), None)
                except SipParseError:
                    pass
            call.release()

        self._retiring[call] = loop.call_later(self.linger, forget)
