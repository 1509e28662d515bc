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
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

from .auth import AuthError, build_authorization, select_challenge
from .dialog import (
    Dialog, DialogError, DialogState, Retransmitter, glare_retry_delay, parse_rack, reliable_rseq,
    requires_100rel, supports_100rel, unsupported_requirements,
)
from .dns import SUPPORTED_TRANSPORTS, ServerLocation, literal_target
from .errors import SipParseError
from .locator import ServerLocator, as_flow
from .message import Request, Response, new_call_id, new_tag, reason_phrase
from .session_timer import MIN_SE, SessionTimer, TimerTerms, negotiate_uac, negotiate_uas, parse_session_expires
from .stack import SipStack
from .transaction import T1, T2, ClientTransaction, Flow, ServerTransaction
from .uri import NameAddr, SipUri

__all__ = [
    "UserAgent", "Call", "OutgoingCall", "IncomingCall", "CallState", "CallStateError",
    "Ringing", "Answered", "Confirmed", "Failed", "Ended", "InfoReceived", "ReinviteReceived", "CallEvent",
    "ReferReceived", "parse_replaces", "resolve_uri", "split_refer_to", "ALLOW",
]

log = logging.getLogger("callpath.sip.ua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REFER, NOTIFY"
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
_ALLOWED = frozenset(m.strip() for m in ALLOW.split(","))


class CallStateError(RuntimeError):
    """The call is not in a state where the requested action is possible."""


class CallState(enum.StrEnum):
    """Where a call stands, from the application's point of view."""

    CALLING = "calling"      # UAC: INVITE sent, no provisional yet
    INCOMING = "incoming"    # UAS: INVITE accepted, nothing but 100 sent
    EARLY = "early"          # a provisional with a tag went out / came in
    ANSWERED = "answered"    # UAS: 2xx sent, ACK not yet received
    CONFIRMED = "confirmed"  # the session is up
    FAILED = "failed"        # final non-2xx (sent or received)
    ENDED = "ended"          # BYE, CANCEL, or timeout after the session existed or was being set up


FINAL_STATES = frozenset({CallState.FAILED, CallState.ENDED})


# -- events ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Ringing:
    """UAC: a provisional response (180/183...), with early SDP if it carried some."""

    status: int
    reason: str
    sdp: bytes | None
    reliable: bool
    remote_tag: str | None


@dataclass(slots=True)
class Answered:
    """UAC: the INVITE was answered with a 2xx (the ACK is already on its way).

    ``offer`` is true for a late-offer INVITE (sent without SDP) whose 2xx carries the offer: the ACK then
    waits for ``call.ack(answer_sdp)`` (RFC 3261 §13.2.2.4, RFC 3264), for ``UserAgent.offer_timeout`` at most.
    """

    sdp: bytes | None
    remote_tag: str
    offer: bool = False


@dataclass(slots=True)
class Confirmed:
    """UAS: the ACK for our 2xx arrived; `sdp` is its body (the answer, if our 2xx carried the offer)."""

    sdp: bytes | None


@dataclass(slots=True)
class Failed:
    """UAC: the INVITE got a final non-2xx (or timed out: 408, transport failure: 503)."""

    status: int
    reason: str
    response: Response | None = None


@dataclass(slots=True)
class Ended:
    """The call is over: `by` is "local", "remote" or "timeout"; `reason` says how (BYE, CANCEL, no ACK...)."""

    by: str
    reason: str = ""
    status: int | None = None


@dataclass(slots=True)
class InfoReceived:
    """An in-dialog INFO (already answered 200): e.g. application/dtmf-relay digits."""

    body: bytes
    content_type: str | None
    request: Request


@dataclass(slots=True)
class ReinviteReceived:
    """An in-dialog offer (re-INVITE, or UPDATE with SDP) waiting for `answer()` or `reject()`.

    With `call.auto_answer_reinvite` (the default) the UA has already answered it with the current local
    SDP and `answered` is true; otherwise the application answers (B2BUAs relay the offer first).
    """

    method: str
    offer: bytes | None
    content_type: str | None
    request: Request
    answered: bool = False
    _call: "Call | None" = field(default=None, repr=False)
    _tx: ServerTransaction | None = field(default=None, repr=False)

    def answer(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer 200 with `sdp` (None: the call's current local SDP)."""
        if self.answered or self._call is None or self._tx is None:
            return
        self.answered = True
        self._call._answer_offer(self._tx, self.request, sdp, list(headers))

    def reject(self, status: int = 488, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Refuse the offer (488 Not Acceptable Here by default; the session stays as it was)."""
        if self.answered or self._call is None or self._tx is None:
            return
        self.answered = True
        self._call._reject_offer(self._tx, status, reason, list(headers))


@dataclass(slots=True)
class ReferReceived:
    """An in-dialog REFER (RFC 3515) waiting for `accept()` (202) or `reject()`.

    ``refer_to`` is the Refer-To target (its URI headers removed); ``replaces`` the Replaces value it carried
    (attended transfer, RFC 3891), if any. After accepting, report the transfer's progress with
    ``call.notify_refer(status, reason)``: 100 first (sent by `accept`), then the final status.
    """

    refer_to: NameAddr
    replaces: str | None
    referred_by: str | None
    request: Request
    decided: bool = False
    _call: "Call | None" = field(default=None, repr=False)
    _tx: ServerTransaction | None = field(default=None, repr=False)

    def accept(self) -> None:
        """202 Accepted, then the implicit subscription's first NOTIFY (100 Trying)."""
        if self.decided or self._call is None or self._tx is None:
            return
        self.decided = True
        self._tx.reply(202, headers=self._call._contact_headers())
        self._call._refer_pending = True
        self._call.notify_refer(100, "Trying")

    def reject(self, status: int = 603, reason: str | None = None) -> None:
        if self.decided or self._call is None or self._tx is None:
            return
        self.decided = True
        self._tx.reply(status, reason)
        self._call.ua._flush()


CallEvent = Union[Ringing, Answered, Confirmed, Failed, Ended, InfoReceived, ReinviteReceived, ReferReceived]


def split_refer_to(value: str) -> tuple[NameAddr, str | None]:
    """A Refer-To value as (the target without URI headers, the unescaped Replaces header if present)."""
    from urllib.parse import unquote

    na = NameAddr.parse(value)
    uri_text = str(na.uri)
    if "?" not in uri_text:
        return na, None
    base, _, query = uri_text.partition("?")
    replaces = None
    for part in query.split("&"):
        name, _, val = part.partition("=")
        if name.lower() == "replaces":
            replaces = unquote(val)
    return NameAddr(SipUri.parse(base), na.display, dict(na.params)), replaces


def parse_replaces(value: str) -> tuple[str, str, str, bool]:
    """A Replaces header (RFC 3891): (call-id, to-tag, from-tag, early-only); ValueError when malformed."""
    call_id, *params = [p.strip() for p in value.split(";")]
    tags: dict[str, str] = {}
    early_only = False
    for p in params:
        name, _, val = p.partition("=")
        if name.lower() == "early-only":
            early_only = True
        elif val:
            tags[name.lower()] = val
    if not call_id or "to-tag" not in tags or "from-tag" not in tags:
        raise ValueError(f"malformed Replaces: {value!r}")
    return call_id, tags["to-tag"], tags["from-tag"], early_only


# -- resolution ------------------------------------------------------------------------------------
def resolve_uri(uri: SipUri) -> Flow | None:
    """The next hop of a URI whose host (or maddr) is an IP literal, without any lookup; None for a name.

    Names are located asynchronously (RFC 3263: NAPTR, SRV, A/AAAA) by `UserAgent.locate`, never here:
    a blocking lookup would stall every call on the event loop.
    """
    target = literal_target(uri)
    return Flow(target.transport, (target.host, target.port)) if target is not None else None


def _clone(request: Request) -> Request:
    """A copy of a request without its Via headers (to resend it in a new transaction)."""
    out = Request(request.method, request.uri.copy(), body=request.body)
    out.headers = [list(h) for h in request.headers if h[0] != "via"]
    return out


class _Outbound:
    """One client transaction of a call: its owner object, so the stack hands its responses back here."""

    __slots__ = ("call", "template", "flow", "dialog", "future", "handler", "auth_tried", "tx",
                 "glare_retries", "retry_glare", "sdp")

    def __init__(self, call: "Call", template: Request, flow: Flow, dialog: Dialog | None,
                 future: asyncio.Future, handler: Callable[["_Outbound", ClientTransaction, Response], None],
                 auth_tried: bool = False) -> None:
        self.call = call
        self.template = template
        self.flow = flow
        self.dialog = dialog
        self.future = future
        self.handler = handler
        self.auth_tried = auth_tried
        self.tx: ClientTransaction | None = None
        self.glare_retries = 0
        self.retry_glare = True
        self.sdp: bytes | None = None

    @property
    def method(self) -> str:
        return self.template.method

    def on_response(self, tx: ClientTransaction, response: Response) -> None:
        self.call._outbound_response(self, tx, response)

    def on_timeout(self, tx: ClientTransaction) -> None:
        self.call._outbound_failure(self, tx, 408, "Request Timeout")

    def on_transport_failure(self, tx: ClientTransaction) -> None:
        self.call._outbound_failure(self, tx, 503, "Service Unavailable (transport failure)")


@dataclass(slots=True)
class _Unacked:
    """A 2xx to an INVITE we keep re-sending until its ACK (RFC 3261 §13.3.1.4)."""

    tx: ServerTransaction
    response: Response
    schedule: Retransmitter
    initial: bool
    handle: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Reliable:
    """A reliable provisional we re-send until its PRACK (RFC 3262 §3)."""

    response: Response
    rseq: int
    schedule: Retransmitter
    future: asyncio.Future
    handle: asyncio.TimerHandle | None = None


# -- calls -----------------------------------------------------------------------------------------
class Call:
    """What both call directions share: dialogs, in-dialog requests both ways, events, timers."""

    is_uac = False

    def __init__(self, ua: "UserAgent", call_id: str, local_tag: str, peer_flow: Flow,
                 on_event: Callable[[CallEvent], None] | None = None) -> None:
        self.ua = ua
        self.call_id = call_id
        self.local_tag = local_tag
        self.peer_flow = peer_flow
        self.dialogs: dict[str, Dialog] = {}          # remote tag -> dialog (several early ones when forked)
        self.dialog: Dialog | None = None             # the dialog in use
        self.state = CallState.CALLING
        self.local_sdp: bytes | None = None
        self.remote_sdp: bytes | None = None
        self.on_event = on_event
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.auto_answer_reinvite = True
        self.credentials: tuple[str, str] | None = ua.credentials
        self._timers: set[asyncio.TimerHandle] = set()
        self._unacked: dict[int, _Unacked] = {}
        self._acks: dict[tuple[str, int], tuple[Request, Flow]] = {}  # (remote tag, cseq) -> ACK sent
        self._ack_waiting: dict[tuple[str, int], Dialog] = {}          # late offer: 2xx waiting for our answer
        self._pending_offer: tuple[ServerTransaction, asyncio.TimerHandle | None] | None = None
        self._refer_pending = False          # a REFER was accepted: NOTIFYs report its progress
        self.session_timer: SessionTimer | None = None   # RFC 4028, when the call asked for one
        self._st_handle: asyncio.TimerHandle | None = None
        self.peer_allows_update = False
        self.accept_refer = False            # queue mode: hand REFERs to the application (else 603)
        self._end_reported = False

    # -- application API -------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> CallEvent:
        """The next queued event (queue mode, i.e. when `on_event` is not set)."""
        return await asyncio.wait_for(self.events.get(), timeout)

    @property
    def is_final(self) -> bool:
        """Whether the call is over (failed or ended)."""
        return self.state in FINAL_STATES

    def send_request(self, method: str, body: bytes = b"", content_type: str | None = None,
                     headers: Iterable[tuple[str, str]] = ()) -> asyncio.Future:
        """Send an in-dialog request; the future resolves with its final Response (408/503 synthesised)."""
        dlg = self._usable_dialog(method)
        fut = self.ua._future()
        ctx = self._send_in_dialog(dlg, method, body, content_type, list(headers), fut, self._plain_final)
        if method in ("INVITE", "UPDATE") and body:
            ctx.sdp = body
        self.ua._flush()
        return fut

    def info(self, body: bytes, content_type: str = "application/dtmf-relay",
             headers: Iterable[tuple[str, str]] = ()) -> asyncio.Future:
        """Send INFO (e.g. `Signal=5\\r\\nDuration=160\\r\\n` as application/dtmf-relay)."""
        return self.send_request("INFO", body, content_type, headers)

    def reinvite(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = (), *,
                 content_type: str = "application/sdp", retry_glare: bool = True) -> asyncio.Future:
        """Send a re-INVITE with a new offer (None: an offerless re-INVITE); resolves with the final response.

        A 491 is retried after the RFC 3261 §14.1 delay (up to 3 times) unless `retry_glare` is false.
        """
        dlg = self._usable_dialog("INVITE")
        if dlg.state is not DialogState.CONFIRMED:
            raise CallStateError("re-INVITE needs a confirmed dialog")
        if dlg.offer_out or dlg.offer_in or self._unacked:
            raise CallStateError("an INVITE or offer is already in progress on this dialog")
        dlg.offer_out = True
        fut = self.ua._future()
        ctx = self._send_in_dialog(dlg, "INVITE", sdp or b"", content_type, list(headers), fut, self._reinvite_final)
        ctx.sdp = sdp
        ctx.retry_glare = retry_glare
        self.ua._flush()
        return fut

    def update(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = (), *,
               content_type: str = "application/sdp") -> asyncio.Future:
        """Send UPDATE (RFC 3311), with a new offer if `sdp` is given; resolves with the final response."""
        dlg = self._usable_dialog("UPDATE")
        if sdp:
            if dlg.offer_out or dlg.offer_in:
                raise CallStateError("an offer is already in progress on this dialog")
            dlg.offer_out = True
        fut = self.ua._future()
        ctx = self._send_in_dialog(dlg, "UPDATE", sdp or b"", content_type, list(headers), fut, self._update_final)
        ctx.sdp = sdp
        self.ua._flush()
        return fut

    def hangup(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def _log(self, level: int, msg: str, *args: Any) -> None:
        log.log(level, msg, *args, extra={"call_id": self.call_id})

    def _emit(self, event: CallEvent) -> None:
        self._log(logging.DEBUG, "event %s", type(event).__name__)
        if isinstance(event, (Ended, Failed)):
            if self._end_reported:
                return
            self._end_reported = True
        cb = self.on_event
        if cb is not None:
            try:
                cb(event)
            except Exception:
                log.exception("call event handler failed", extra={"call_id": self.call_id})
        else:
            self.events.put_nowait(event)

    def _usable_dialog(self, method: str) -> Dialog:
        dlg = self.dialog
        if dlg is None or dlg.state is DialogState.TERMINATED:
            raise CallStateError(f"no dialog to send {method} in (state {self.state})")
        return dlg

    def _later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        loop = asyncio.get_event_loop()
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            try:
                fn()
            except Exception:
                log.exception("call timer failed", extra={"call_id": self.call_id})
            self.ua._flush()

        handle = loop.call_later(max(0.0, delay), run)
        self._timers.add(handle)
        return handle

    def _cancel_timer(self, handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def _flow_for(self, dlg: Dialog) -> Flow:
        """Where an in-dialog request goes: the peer's connection when reusable, else the resolved next hop."""
        pf = self.peer_flow
        hop = dlg.next_hop
        if not dlg.route_set and pf.reliable and hop.transport in (pf.transport, "udp"):
            return pf  # stream transports (TCP/TLS/WS): reuse the connection the dialog was set up on
        if hop.host.lower().endswith(".invalid"):
            return pf
        return self.ua.flow_for(hop, pf)

    def _warm(self, dlg: Dialog) -> None:
        """A new dialog: start looking up its next hop now if `_flow_for` will need it (a name, not reached
        over the connection the dialog came on), so that its first in-dialog request finds it cached."""
        pf = self.peer_flow
        hop = dlg.next_hop
        if pf is not None and not dlg.route_set and pf.reliable and hop.transport in (pf.transport, "udp"):
            return
        if not hop.host.lower().endswith(".invalid"):
            self.ua.warm(hop)

    def _std_headers(self, method: str) -> list[tuple[str, str]]:
        if method in ("INVITE", "UPDATE"):
            return [("Allow", ALLOW), ("Supported", ", ".join(self.ua.supported))]
        return []

    def _send_in_dialog(self, dlg: Dialog, method: str, body: bytes, content_type: str | None,
                        headers: list[tuple[str, str]], future: asyncio.Future,
                        handler: Callable[[_Outbound, ClientTransaction, Response], None]) -> _Outbound:
        req = dlg.create_request(method, body, content_type, [*self._std_headers(method), *headers])
        return self._send(req, self._flow_for(dlg), dlg, future, handler)

    def _send(self, req: Request, flow: Flow, dlg: Dialog | None, future: asyncio.Future,
              handler: Callable[[_Outbound, ClientTransaction, Response], None], auth_tried: bool = False,
              branch: str | None = None) -> _Outbound:
        ctx = _Outbound(self, _clone(req), flow, dlg, future, handler, auth_tried)
        ctx.tx = self.ua.stack.send_request(req, flow, owner=ctx, branch=branch)
        self._log(logging.DEBUG, "sent %s to %s", req.method, flow)
        return ctx

    def _send_ack(self, dlg: Dialog, cseq: int, extra: list[tuple[str, str]] = (), body: bytes = b"") -> None:
        """ACK a 2xx to an INVITE (new transaction-less request) and remember it for 2xx retransmissions."""
        ack = dlg.create_ack(cseq, body=body, headers=list(extra))
        flow = self._flow_for(dlg)
        self.ua.stack.send_request(ack, flow)  # ACK: Via added, sent, no transaction
        self._acks[(dlg.remote_tag, cseq)] = (ack, flow)

    def _reack(self, response: Response) -> bool:
        """Re-send the ACK for a retransmitted 2xx; True if this 2xx was already ACKed (or its ACK waits for
        the application's answer: the retransmission is then absorbed)."""
        key = (response.to.tag or "", response.cseq.seq)
        sent = self._acks.get(key)
        if sent is None:
            return key in self._ack_waiting
        self.ua.stack.send_stateless(sent[0], sent[1])
        return True

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", ", ".join(self.ua.supported))]

    def _contact_headers(self) -> list[tuple[str, str]]:
        dlg = self.dialog
        contact = dlg.local_contact if dlg is not None else None
        return [("Contact", contact)] if contact else []

    def _finish(self, state: CallState) -> None:
        """Enter a final state: stop every timer, terminate dialogs, forget the call after a linger period."""
        if self.state in FINAL_STATES:
            return
        self.state = state
        for d in self.dialogs.values():
            d.terminate()
        for job in self._unacked.values():
            self._cancel_timer(job.handle)
        self._unacked.clear()
        for h in list(self._timers):
            h.cancel()
        self._timers.clear()
        if self._pending_offer is not None:
            tx, _ = self._pending_offer
            self._pending_offer = None
            if tx.last_response is None or tx.last_response.status < 200:
                tx.reply(487)
        self.ua._retire(self)

    def _release(self) -> None:
        """The UA forgot the call (its linger ended): drop the links back to it from its handler and its
        transaction contexts, so that the call and everything it holds are freed by reference counting
        instead of waiting, as cyclic garbage, for a rare full collection (issue: ~28 KB a call)."""
        self.on_event = None
        self._acks.clear()
        self._pending_offer = None

    def _bye(self, dlg: Dialog | None = None) -> None:
        """Send BYE on the dialog and end the call (locally initiated)."""
        dlg = dlg or self.dialog
        if dlg is not None and dlg.state is not DialogState.TERMINATED:
            fut = self.ua._future()
            self._send_in_dialog(dlg, "BYE", b"", None, [], fut, self._plain_final)
            dlg.terminate()

    # -- client transaction results ----------------------------------------------------------------
    def _outbound_response(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        status = resp.status
        if status in (401, 407) and not ctx.auth_tried and self._retry_with_credentials(ctx, resp):
            return
        if status >= 200 and ctx.dialog is not None and ctx.method != "ACK":
            ctx.dialog.receive_response(ctx.method, resp)
        ctx.handler(ctx, tx, resp)

    def _outbound_failure(self, ctx: _Outbound, tx: ClientTransaction, status: int, reason: str) -> None:
        self._log(logging.INFO, "%s failed: %d %s", ctx.method, status, reason)
        resp = Response(status, reason)
        ctx.handler(ctx, tx, resp)

    def _retry_with_credentials(self, ctx: _Outbound, resp: Response) -> bool:
        """Re-send a challenged request once with Authorization/Proxy-Authorization (RFC 3261 §22.2)."""
        creds = self.credentials
        if creds is None:
            return False
        proxy = resp.status == 407
        challenge = select_challenge(resp.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"))
        if challenge is None:
            return False
        req = _clone(ctx.template)
        try:
            value = build_authorization(challenge, req.method, str(req.uri), creds[0], creds[1], body=req.body)
        except AuthError as exc:
            self._log(logging.INFO, "cannot answer the challenge: %s", exc)
            return False
        header = "Proxy-Authorization" if proxy else "Authorization"
        req.remove(header)
        req.add(header, value)
        if ctx.dialog is not None:
            seq = ctx.dialog.next_cseq()
        else:
            seq = req.cseq.seq + 1
        req.set("CSeq", f"{seq} {req.method}")
        new = self._send(req, ctx.flow, ctx.dialog, ctx.future, ctx.handler, auth_tried=True)
        new.sdp, new.retry_glare, new.glare_retries = ctx.sdp, ctx.retry_glare, ctx.glare_retries
        self._on_resent(ctx, new)
        self._log(logging.INFO, "%s challenged with %d: retrying with credentials", req.method, resp.status)
        return True

    def _on_resent(self, old: _Outbound, new: _Outbound) -> None:
        """Hook: a request was re-sent in a new transaction (auth retry)."""

    def _plain_final(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        if resp.status < 200:
            return
        if resp.status in (481, 408) and ctx.method not in ("BYE", "PRACK", "CANCEL"):
            self._dialog_lost(ctx.dialog, resp.status)  # §12.2.1.2
        if not ctx.future.done():
            ctx.future.set_result(resp)

    def _dialog_lost(self, dlg: Dialog | None, status: int) -> None:
        if dlg is None or dlg is not self.dialog or self.is_final:
            return
        self._log(logging.INFO, "dialog lost (%d): ending the call", status)
        if status == 408:
            self._bye(dlg)
        dlg.terminate()
        self._finish(CallState.ENDED)
        self._emit(Ended("timeout" if status == 408 else "remote", reason_phrase(status), status))

    def _reinvite_final(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        status = resp.status
        dlg = ctx.dialog
        if status < 200 or dlg is None:
            return
        if 200 <= status < 300:
            if self._reack(resp):
                return  # a retransmitted 2xx
            self._send_ack(dlg, resp.cseq.seq, self._auth_headers(ctx.template))
            dlg.offer_out = False
            if ctx.sdp is not None:
                self.local_sdp = ctx.sdp
            if resp.body:
                self.remote_sdp = resp.body
            if not ctx.future.done():
                ctx.future.set_result(resp)
            return
        dlg.offer_out = False
        if status == 491 and ctx.retry_glare and ctx.glare_retries < 3 and not self.is_final:
            delay = glare_retry_delay(owns_call_id=dlg.is_uac)
            self._log(logging.INFO, "re-INVITE glare (491): retrying in %.2f s", delay)

            def retry() -> None:
                if self.is_final or dlg.state is DialogState.TERMINATED or dlg.offer_in:
                    if not ctx.future.done():
                        ctx.future.set_result(resp)
                    return
                dlg.offer_out = True
                new = self._send_in_dialog(dlg, "INVITE", ctx.template.body, ctx.template.get("content-type"),
                                           [], ctx.future, self._reinvite_final)
                new.sdp, new.retry_glare, new.glare_retries = ctx.sdp, True, ctx.glare_retries + 1

            self._later(delay, retry)
            return
        if status in (481, 408):
            self._dialog_lost(dlg, status)
        if not ctx.future.done():
            ctx.future.set_result(resp)

    def _update_final(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        if resp.status < 200:
            return
        dlg = ctx.dialog
        if dlg is not None and ctx.sdp:
            dlg.offer_out = False
            if 200 <= resp.status < 300:
                self.local_sdp = ctx.sdp
                if resp.body:
                    self.remote_sdp = resp.body
        self._plain_final(ctx, tx, resp)

    @staticmethod
    def _auth_headers(req: Request) -> list[tuple[str, str]]:
        return [(n, v) for k, n, v in req.headers if k in ("authorization", "proxy-authorization")]

    # -- server side: requests inside our dialogs --------------------------------------------------
    def _on_request(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        method = req.method
        if dlg.state is DialogState.TERMINATED:
            tx.reply(200 if method == "BYE" else 481)
            return
        status = dlg.receive_request(req)
        if status is not None:
            tx.reply(status, headers=[("Retry-After", "1")] if status == 500 else [])
            return
        if method == "BYE":
            self._on_bye(tx, req, dlg)
        elif method == "INVITE":
            self._on_offer(tx, req, dlg)
        elif method == "UPDATE":
            if req.body:
                self._on_offer(tx, req, dlg)
            else:
                self._refresh_received(req)
                tx.reply(200, headers=self._contact_headers() + [("Supported", ", ".join(self.ua.supported))]
                         + self._timer_headers(response=True))
        elif method == "INFO":
            tx.reply(200)
            self._emit(InfoReceived(req.body, req.get("content-type"), req))
        elif method == "REFER":
            self._on_refer(tx, req)
        elif method == "NOTIFY":
            tx.reply(200)   # progress of a REFER we sent (nothing of ours subscribes otherwise)
        elif method == "OPTIONS":
            tx.reply(200, headers=self._capabilities())
        elif method == "PRACK":
            self._on_prack(tx, req, dlg)
        elif method in ("MESSAGE", "SUBSCRIBE", "REGISTER", "PUBLISH"):
            tx.reply(405, headers=[("Allow", ALLOW)])
        else:
            tx.reply(501, headers=[("Allow", ALLOW)])

    def _on_prack(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        tx.reply(481)  # nothing of ours awaits a PRACK (IncomingCall overrides)

    # -- session timers (RFC 4028) -----------------------------------------------------------------
    def _start_session_timer(self, terms: TimerTerms) -> None:
        self.session_timer = SessionTimer(terms, self.ua.stack.clock())
        self._log(logging.DEBUG, "session timer %d s, refresher %s", terms.expires, terms.refresher)
        self._arm_session_timer()

    def _arm_session_timer(self) -> None:
        st = self.session_timer
        if st is None or self.is_final:
            return
        self._cancel_timer(self._st_handle)
        _action, at = st.due()
        self._st_handle = self._later(max(0.0, at - self.ua.stack.clock()), self._on_session_timer)

    def _timer_headers(self, response: bool) -> list[tuple[str, str]]:
        """Session-Expires for a request we send (``response`` False) or a response to the peer's request:
        the refresher parameter names the UAC or UAS of that very transaction."""
        st = self.session_timer
        if st is None:
            return []
        we = st.terms.we_refresh
        role = ("uas" if we else "uac") if response else ("uac" if we else "uas")
        return [("Session-Expires", f"{st.terms.expires};refresher={role}")]

    def _on_session_timer(self) -> None:
        st = self.session_timer
        if st is None or self.is_final or self.state is not CallState.CONFIRMED:
            return
        action, _at = st.due()
        if action == "expire":
            self._log(logging.INFO, "session timer expired: no refresh within %d s", st.terms.expires)
            self._bye()
            self._finish(CallState.ENDED)
            self._emit(Ended("timeout", "session timer expired"))
            self.ua._flush()
            return
        headers = self._timer_headers(response=False) + [("Supported", "timer")]
        try:
            if self.peer_allows_update:
                fut = self.update(None, headers)
            else:
                fut = self.reinvite(self.local_sdp, headers)
        except CallStateError:
            return
        st.refreshed(self.ua.stack.clock())      # the next refresh is due half an interval from now
        self._arm_session_timer()
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())

    def _refresh_received(self, req: Request) -> None:
        """A re-INVITE or UPDATE from the peer refreshes the session (and may renegotiate it)."""
        st = self.session_timer
        if st is None:
            return
        asked = parse_session_expires(req.get("session-expires"))
        if asked is not None and asked[0] >= self.ua.min_se:
            expires, refresher = asked     # "uac" is the peer here: it sent this request
            we_refresh = st.terms.we_refresh if refresher is None else refresher == "uas"
            st.refreshed(self.ua.stack.clock(), TimerTerms(expires, we_refresh, refresher or st.terms.refresher))
        else:
            st.refreshed(self.ua.stack.clock())
        self._arm_session_timer()

    def _on_refer(self, tx: ServerTransaction, req: Request) -> None:
        values = req.get_all("refer-to")
        if len(values) != 1:
            tx.reply(400, "Bad Request (exactly one Refer-To)")
            return
        try:
            target, replaces = split_refer_to(values[0])
        except (SipParseError, ValueError) as exc:
            tx.reply(400, f"Bad Request (Refer-To: {exc})")
            return
        if self.on_event is None and self.events is not None and not self.accept_refer:
            tx.reply(603)
            return
        ev = ReferReceived(target, replaces, req.get("referred-by"), req, _call=self, _tx=tx)
        self._later(self.ua.offer_timeout, lambda: ev.reject(500, "Server Internal Error (REFER not handled)"))
        self._emit(ev)

    def notify_refer(self, status: int, reason: str | None = None) -> None:
        """A NOTIFY of the REFER's progress (message/sipfrag); a final status ends the subscription."""
        if not self._refer_pending or self.is_final:
            return
        final = status >= 200
        if final:
            self._refer_pending = False
        state = "terminated;reason=noresource" if final else "active;expires=60"
        body = f"SIP/2.0 {status} {reason or reason_phrase(status)}\r\n".encode()
        try:
            self.send_request("NOTIFY", body, "message/sipfrag;version=2.0",
                              headers=[("Event", "refer"), ("Subscription-State", state)])
        except CallStateError:
            pass

    def _on_bye(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        tx.reply(200)
        self._log(logging.INFO, "BYE received")
        dlg.terminate()
        if not self.is_final:
            self._finish(CallState.ENDED)
            self._emit(Ended("remote", "BYE"))

    def _on_offer(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        """A re-INVITE (or an UPDATE with SDP): check glare, then answer it ourselves or hand it to the app."""
        if req.method == "INVITE" and self._unacked:
            # our 2xx to a previous INVITE is not ACKed yet: that INVITE is still in progress (§14.2)
            tx.reply(500, headers=[("Retry-After", "1")])
            return
        conflict = dlg.incoming_offer_status()
        if conflict is not None:
            tx.reply(conflict[0], headers=conflict[1])
            return
        if req.body or req.method == "INVITE":
            dlg.offer_in = True
        self._refresh_received(req)
        ev = ReinviteReceived(req.method, req.body or None, req.get("content-type"), req, _call=self, _tx=tx)
        guard = self._later(self.ua.offer_timeout, lambda: ev.reject(500))
        self._pending_offer = (tx, guard)
        if self.auto_answer_reinvite:
            ev.answer(None)
        self._emit(ev)

    def _answer_offer(self, tx: ServerTransaction, req: Request, sdp: bytes | None,
                      headers: list[tuple[str, str]]) -> None:
        self._clear_offer(tx)
        if self.is_final:
            return
        body = sdp if sdp is not None else (self.local_sdp or b"")
        hs = (self._contact_headers() + [("Allow", ALLOW), ("Supported", ", ".join(self.ua.supported))]
              + self._timer_headers(response=True) + headers)
        if body:
            hs.append(("Content-Type", "application/sdp"))
        resp = tx.reply(200, headers=hs, body=body)
        if sdp is not None:
            self.local_sdp = sdp
        if req.body:
            self.remote_sdp = req.body
        if req.method == "INVITE":
            self._retransmit_2xx(tx, resp, initial=False)
        self.ua._flush()

    def _reject_offer(self, tx: ServerTransaction, status: int, reason: str | None,
                      headers: list[tuple[str, str]]) -> None:
        self._clear_offer(tx)
        tx.reply(status, reason, headers=headers)
        self.ua._flush()

    def _clear_offer(self, tx: ServerTransaction) -> None:
        if self._pending_offer is not None and self._pending_offer[0] is tx:
            self._cancel_timer(self._pending_offer[1])
            self._pending_offer = None
        if self.dialog is not None:
            self.dialog.offer_in = False

    # -- 2xx retransmission until ACK (§13.3.1.4) ---------------------------------------------------
    def _retransmit_2xx(self, tx: ServerTransaction, resp: Response, initial: bool) -> None:
        tx.owner = self
        job = _Unacked(tx, resp, Retransmitter(self.ua.stack.clock(), self.ua.t1, self.ua.t2), initial)
        self._unacked[resp.cseq.seq] = job
        self._arm_2xx(job)

    def _arm_2xx(self, job: _Unacked) -> None:
        delay = job.schedule.next_at - self.ua.stack.clock()
        job.handle = self._later(delay, lambda: self._on_2xx_timer(job))

    def _on_2xx_timer(self, job: _Unacked) -> None:
        seq = job.response.cseq.seq
        if self._unacked.get(seq) is not job:
            return
        if job.schedule.fire(self.ua.stack.clock()):
            if job.tx.state == "Accepted":
                job.tx.respond(job.response)
            else:  # Timer L already released the transaction: the TU sends on its own
                self.ua.stack.send_stateless(job.response, job.tx.flow)
            self._arm_2xx(job)
            return
        del self._unacked[seq]
        self._log(logging.WARNING, "no ACK for our 2xx after %.1f s: sending BYE", job.schedule.deadline - job.schedule.start)
        self._bye()
        self._finish(CallState.ENDED)
        self._emit(Ended("timeout", "no ACK"))

    def _on_ack(self, req: Request) -> None:
        """The ACK for one of our 2xx responses."""
        job = self._unacked.pop(req.cseq.seq, None)
        if job is None:
            return  # a retransmitted ACK, or one for a 2xx we gave up on
        self._cancel_timer(job.handle)
        if req.body:
            self.remote_sdp = req.body
        self._acked(job, req)

    def _acked(self, job: _Unacked, req: Request) -> None:
        """Hook: the 2xx in `job` was ACKed."""

    def _on_stray(self, resp: Response, flow: Flow) -> None:
        """A response whose client transaction is gone (late 2xx retransmissions): re-ACK it."""
        if resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
            self._reack(resp)

    def _on_cancel(self) -> None:
        """A CANCEL matched our INVITE server transaction (IncomingCall overrides)."""

    # -- transaction owner callbacks for server transactions (INVITE tx, re-INVITE tx) -------------
    def on_response(self, tx: Any, response: Response) -> None:  # pragma: no cover - server tx only
        pass

    def on_timeout(self, tx: Any) -> None:
        """Timer H: our non-2xx to an INVITE was never ACKed; nothing left to do."""

    def on_transport_failure(self, tx: Any) -> None:
        """The connection a server transaction used died."""
        self._log(logging.INFO, "transport failure on %s", tx.flow)


class OutgoingCall(Call):
    """UAC side of a call: `ua.invite(...)` creates it; `cancel()`, `hangup()`, and the in-dialog API."""

    is_uac = True

    def __init__(self, ua: "UserAgent", invite: Request, flow: Flow | None, *,
                 on_event: Callable[[CallEvent], None] | None, credentials: tuple[str, str] | None,
                 ring_timeout: float | None) -> None:
        super().__init__(ua, invite.call_id, invite.from_.tag or "", flow, on_event)  # type: ignore[arg-type]
        if credentials is not None:
            self.credentials = credentials
        self.invite_request = _clone(invite)
        self.invite_cseq = invite.cseq.seq
        self.invite_ctx: _Outbound | None = None
        self.local_sdp = invite.body or None
        self.provisional_seen = False
        self.trying_seen = False
        self.cancel_requested = False
        self.cancel_sent = False
        self._ring_timeout = ring_timeout
        self._invite = invite
        self._next_targets: list[Flow] = []    # RFC 3263 §4.3: where the INVITE goes if this target fails
        self._locating: asyncio.Task | None = None

    def _start(self) -> None:
        if not self._invite.has("contact"):  # located asynchronously: the transport is known only now
            self._invite.add("Contact", self.ua.contact_for(self.peer_flow.transport, self._invite.from_.uri.user))
        fut = self.ua._future()
        self.invite_ctx = self._send(self._invite, self.peer_flow, None, fut, self._invite_response)
        self.invite_ctx.sdp = self.local_sdp
        if self._ring_timeout:
            self._later(self._ring_timeout, self._on_ring_timeout)

    def _release(self) -> None:
        super()._release()
        self.invite_ctx = None   # its tx (if still alive) keeps it; the context's back-link to us is one-way

    # -- RFC 3263: locating the next hop, failing over to the next target --------------------------
    def _locate(self, hop: SipUri) -> None:
        """Look the next hop up without blocking the loop, then send the INVITE to the first target."""
        self._locating = asyncio.get_event_loop().create_task(self._send_located(hop))

    async def _send_located(self, hop: SipUri) -> None:
        try:
            loc = await self.ua.locate(hop)
            targets, reason = loc.targets, loc.reason
        except asyncio.CancelledError:
            return
        except Exception as exc:  # the locator turns DNS trouble into reasons; this is a bug: fail the call
            log.exception("locating %s failed", hop, extra={"call_id": self.call_id})
            targets, reason = [], f"internal error: {exc}"
        finally:
            self._locating = None
        if self.is_final:
            return
        if not targets:
            self._log(logging.INFO, "cannot locate %s: %s", hop, reason)
            self._finish(CallState.FAILED)
            self._emit(Failed(503, f"Service Unavailable (cannot locate {hop.host}: {reason})"))
            self.ua._flush()
            return
        flows = [as_flow(t) for t in targets]
        self.peer_flow, self._next_targets = flows[0], flows[1:]
        self._log(logging.INFO, "%s located: %s", hop.host, ", ".join(map(str, flows)))
        self._start()
        self.ua._flush()

    def _fails_over(self, resp: Response) -> bool:
        """RFC 3263 §4.3: a 503, a transport failure, or a timeout without any response moves on to the next
        target (a new transaction with the same request); responses synthesised by us carry no Via."""
        if not self._next_targets or self.provisional_seen or self.trying_seen or self.cancel_requested \
                or self.is_final:
            return False
        synthesised = resp.get("via") is None
        return resp.status == 503 or (resp.status == 408 and synthesised)

    def _fail_over(self, resp: Response) -> None:
        old = self.invite_ctx
        assert old is not None
        flow = self._next_targets.pop(0)
        self._log(logging.INFO, "INVITE to %s failed (%d %s): trying %s", self.peer_flow, resp.status, resp.reason,
                  flow)
        req = _clone(old.template)
        if flow.transport != self.peer_flow.transport:
            req.set("Contact", self.ua.contact_for(flow.transport, req.from_.uri.user))
        self.peer_flow = flow
        new = self._send(req, flow, None, old.future, self._invite_response)
        new.sdp = old.sdp
        self._on_resent(old, new)

    def _on_ring_timeout(self) -> None:
        if self.state in (CallState.CALLING, CallState.EARLY):
            self._log(logging.INFO, "no answer within %.0f s: cancelling", self._ring_timeout)
            self.cancel()

    # -- application API -------------------------------------------------------------------------
    @property
    def invite_tx(self) -> ClientTransaction | None:
        """The INVITE client transaction (the latest, after an auth retry)."""
        return self.invite_ctx.tx if self.invite_ctx is not None else None

    def cancel(self) -> None:
        """Abandon an unanswered call: CANCEL once a provisional arrived (§9.1), or as soon as one does."""
        if self.state not in (CallState.CALLING, CallState.EARLY) or self.cancel_requested:
            return
        self.cancel_requested = True
        if self._locating is not None:  # nothing sent yet: the call ends here
            self._locating.cancel()
            self._locating = None
            self._finish(CallState.FAILED)
            self._emit(Failed(487, "Request Terminated (cancelled before the INVITE was sent)"))
            return
        if self.provisional_seen or self.trying_seen:
            self._send_cancel()
        self.ua._flush()

    def hangup(self) -> None:
        """End the call whatever its state: CANCEL before the answer, BYE after it."""
        if self.state in (CallState.CALLING, CallState.EARLY):
            self.cancel()
            return
        if self.state is CallState.CONFIRMED:
            for (_tag, cseq), dlg in list(self._ack_waiting.items()):   # a late-offer 2xx is ACKed first
                self._send_ack(dlg, cseq, self._auth_headers(self.invite_request))
            self._ack_waiting.clear()
            self._bye()
            self._finish(CallState.ENDED)
            self._emit(Ended("local", "BYE"))
            self.ua._flush()

    # -- internals -------------------------------------------------------------------------------
    def _send_cancel(self) -> None:
        tx = self.invite_tx
        if tx is None or self.cancel_sent:
            return
        self.cancel_sent = True
        cancel = tx.cancel_request()
        cancel.remove("Via")  # send_request pushes our Via again, with the INVITE's branch
        fut = self.ua._future()
        self._send(cancel, tx.flow, None, fut, self._cancel_final, branch=tx.branch)
        self._log(logging.INFO, "CANCEL sent")

        def no_final() -> None:  # §9.1: no final response 64*T1 after the CANCEL: give up on the INVITE
            if not self.is_final:
                self._finish(CallState.FAILED)
                self._emit(Failed(487, "Request Terminated (no final response after CANCEL)"))

        self._later(64 * self.ua.t1, no_final)

    def _cancel_final(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        if resp.status >= 200 and not ctx.future.done():
            ctx.future.set_result(resp)

    def _on_resent(self, old: _Outbound, new: _Outbound) -> None:
        if old is self.invite_ctx:
            self.invite_ctx = new
            self.invite_cseq = new.template.cseq.seq
            self.invite_request = _clone(new.template)

    def _invite_response(self, ctx: _Outbound, tx: ClientTransaction, resp: Response) -> None:
        if ctx is not self.invite_ctx:
            return
        status = resp.status
        if status == 100:
            # §9.1: any provisional, 100 Trying included, allows a pending CANCEL to go
            self.trying_seen = True
            if self.cancel_requested:
                self._send_cancel()
            return
        if status < 200:
            self._on_provisional(resp)
        elif status < 300:
            self._on_2xx(resp)
        elif status == 408 and resp.get("via") is None and self.provisional_seen:
            # Timer B fired although a provisional arrived (the transaction layer keeps Timer B
            # running in Proceeding): keep waiting; finals then arrive as stray responses.
            self._log(logging.DEBUG, "INVITE transaction timed out after a provisional: waiting on")
        elif self._fails_over(resp):
            self._fail_over(resp)
        else:
            self._on_failure(resp)

    def _dialog_for(self, resp: Response, create: bool = True) -> Dialog | None:
        tag = resp.to.tag
        if not tag:
            return None
        dlg = self.dialogs.get(tag)
        if dlg is None and create:
            try:
                dlg = Dialog.uac(self.invite_request, resp)
            except (DialogError, SipParseError) as exc:
                self._log(logging.INFO, "response cannot create a dialog: %s", exc)
                return None
            self.ua._strip_own_routes(dlg)
            self._warm(dlg)
            self.dialogs[tag] = dlg
        return dlg

    def _on_provisional(self, resp: Response) -> None:
        self.provisional_seen = True
        if self.is_final or self.state is CallState.CONFIRMED:
            return
        dlg = self._dialog_for(resp)
        rseq = reliable_rseq(resp)
        reliable = False
        if rseq is not None and dlg is not None:
            if not dlg.accept_rseq(rseq):
                return  # a retransmission (already PRACKed) or out of order: not processed (RFC 3262 §4)
            reliable = True
            fut = self.ua._future()
            self._send(dlg.create_prack(resp), self._flow_for(dlg), dlg, fut, self._plain_final)
        if dlg is not None and (self.dialog is None or self.dialog.state is DialogState.EARLY):
            self.dialog = dlg
        if resp.body:
            self.remote_sdp = resp.body
        self.state = CallState.EARLY
        if self.cancel_requested:
            self._send_cancel()
            return
        self._emit(Ringing(resp.status, resp.reason, resp.body or None, reliable, resp.to.tag))

    def _on_2xx(self, resp: Response) -> None:
        if self._reack(resp):
            return
        dlg = self._dialog_for(resp)
        if dlg is None:
            self._log(logging.WARNING, "2xx without a To tag: ignored")
            return
        if self.state is CallState.CONFIRMED or self.is_final or self.cancel_requested:
            # another fork answered too, or we no longer want the call: ACK then BYE (§13.2.2.4)
            dlg.confirm(resp)
            self._send_ack(dlg, self.invite_cseq, self._auth_headers(self.invite_request))
            self._bye(dlg)
            if not self.is_final and self.state is not CallState.CONFIRMED:
                self._finish(CallState.ENDED)
                self._emit(Ended("local", "CANCEL (answered meanwhile)"))
            return
        dlg.confirm(resp)
        self.dialog = dlg  # other forks' early dialogs live on until their own final response (§13.2.2.4)
        late_offer = not self.local_sdp and bool(resp.body) and self.remote_sdp is None
        if late_offer:
            key = (dlg.remote_tag, self.invite_cseq)
            self._ack_waiting[key] = dlg
            self._later(self.ua.offer_timeout, lambda: self._late_answer_missing(key))
        else:
            self._send_ack(dlg, self.invite_cseq, self._auth_headers(self.invite_request))
        self.state = CallState.CONFIRMED
        if resp.body:
            self.remote_sdp = resp.body
        self.peer_allows_update = any("UPDATE" in v.upper() for v in resp.get_all("allow"))
        if "timer" in self.ua.supported:
            terms = negotiate_uac(resp)
            if terms is not None:
                self._start_session_timer(terms)
        self._log(logging.INFO, "answered (%d)%s", resp.status, " with an offer" if late_offer else "")
        self._emit(Answered(resp.body or None, dlg.remote_tag, late_offer))

    def ack(self, sdp: bytes, content_type: str = "application/sdp") -> None:
        """Send the ACK carrying our answer to the offer of a late-offer 2xx (`Answered.offer`)."""
        if not self._ack_waiting:
            raise CallStateError("no 2xx waits for an answer in its ACK")
        key, dlg = next(iter(self._ack_waiting.items()))
        del self._ack_waiting[key]
        self.local_sdp = sdp
        self._send_ack(dlg, key[1], self._auth_headers(self.invite_request) + [("Content-Type", content_type)], sdp)
        self.ua._flush()

    def _late_answer_missing(self, key: tuple[str, int]) -> None:
        """No answer for a late-offer 2xx in time: ACK it bare and hang up (the session cannot start)."""
        dlg = self._ack_waiting.pop(key, None)
        if dlg is None:
            return
        self._log(logging.WARNING, "no answer for the 2xx's offer within %.0f s: ending", self.ua.offer_timeout)
        self._send_ack(dlg, key[1], self._auth_headers(self.invite_request))
        if self.state is CallState.CONFIRMED:
            self._bye(dlg)
            self._finish(CallState.ENDED)
            self._emit(Ended("local", "no answer to the offer"))
        self.ua._flush()

    def _on_failure(self, resp: Response) -> None:
        if self.is_final or self.state is CallState.CONFIRMED:
            return
        self._log(logging.INFO, "call failed: %d %s", resp.status, resp.reason)
        self._finish(CallState.FAILED)
        self._emit(Failed(resp.status, resp.reason, resp if resp.get("via") is not None else None))

    def _on_stray(self, resp: Response, flow: Flow) -> None:
        if resp.cseq.method != "INVITE":
            return
        if resp.cseq.seq != self.invite_cseq:
            super()._on_stray(resp, flow)
            return
        status = resp.status
        if 200 <= status < 300:
            self._on_2xx(resp)
        elif status < 200:
            self._on_provisional(resp)
        else:
            tx = self.invite_tx
            if tx is not None:  # its transaction is gone: ACK the non-2xx ourselves (§17.1.1.3)
                self.ua.stack.send_stateless(tx._ack_for(resp), tx.flow)
            self._on_failure(resp)


class IncomingCall(Call):
    """UAS side of a call: `ring()`, `answer()`, `reject()`, `hangup()`, and the in-dialog API."""

    def __init__(self, ua: "UserAgent", tx: ServerTransaction, request: Request, dialog: Dialog | None,
                 on_event: Callable[[CallEvent], None] | None = None) -> None:
        super().__init__(ua, request.call_id, tx.to_tag or "", tx.flow, on_event)
        self.tx = tx
        self.request = request
        self.state = CallState.INCOMING
        self.dialog = dialog
        if dialog is not None:
            self.dialogs[dialog.remote_tag] = dialog
        self.remote_sdp = request.body or None
        self.peer_100rel = supports_100rel(request)
        self.require_100rel = requires_100rel(request)
        self._reliable: _Reliable | None = None
        self._queued: list[tuple[int, str | None, bytes | None, list[tuple[str, str]], asyncio.Future]] = []
        self._deferred_answer: tuple[bytes, list[tuple[str, str]]] | None = None
        self._bye_after_ack = False
        self._st_terms: TimerTerms | None = None          # session timer agreed in our 2xx (RFC 4028)
        self._st_offer_headers: list[tuple[str, str]] = []
        self.peer_allows_update = any("UPDATE" in v.upper() for v in request.get_all("allow"))
        tx.owner = self

    # -- application API -------------------------------------------------------------------------
    def ring(self, status: int = 180, sdp: bytes | None = None, *, reason: str | None = None,
             reliable: bool = False, headers: Iterable[tuple[str, str]] = ()) -> asyncio.Future:
        """Send a provisional (180 Ringing, 183 with early SDP...); resolves True once delivered.

        It is sent reliably (Require: 100rel, RSeq, re-sent until PRACK) when `reliable` and the caller
        supports 100rel, or whenever the caller requires it; the future then resolves True on the PRACK
        and False if none came within 64*T1 (the INVITE is then rejected with 504).
        """
        fut = self.ua._future()
        if self.state not in (CallState.INCOMING, CallState.EARLY) or self._deferred_answer is not None:
            fut.set_result(False)
            return fut
        if not 101 <= status < 200:
            raise ValueError(f"not a provisional status: {status}")
        rel = (reliable and self.peer_100rel) or self.require_100rel
        if rel and self._reliable is not None:
            self._queued.append((status, reason, sdp, list(headers), fut))  # one unacknowledged at a time
            return fut
        self._provisional(status, reason, sdp, list(headers), fut, rel)
        self.ua._flush()
        return fut

    def answer(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Accept the call with 200 OK and `sdp` (the answer, or an offer if the INVITE had none).

        The 2xx is re-sent until the ACK; with a reliable provisional still unacknowledged it waits
        for the PRACK first (RFC 3262 §3).
        """
        if self.state not in (CallState.INCOMING, CallState.EARLY) or self._deferred_answer is not None:
            raise CallStateError(f"cannot answer a call in state {self.state}")
        body = sdp or b""
        headers = list(headers) + self._st_offer_headers
        if self._reliable is not None:
            self._deferred_answer = (body, headers)
            return
        self._send_answer(body, headers)
        self.ua._flush()

    def reject(self, status: int = 486, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Refuse the call with a final 3xx–6xx."""
        if self.state not in (CallState.INCOMING, CallState.EARLY):
            return
        if status < 300:
            raise ValueError(f"not a rejection status: {status}")
        self._drop_reliable()
        self.tx.reply(status, reason, headers=list(headers))
        self._log(logging.INFO, "rejected with %d", status)
        self._finish(CallState.FAILED)
        self.ua._flush()

    def hangup(self) -> None:
        """End the call: 603 before the answer, BYE after it (deferred until the ACK, §15)."""
        if self.state in (CallState.INCOMING, CallState.EARLY):
            if self._deferred_answer is not None:
                self._deferred_answer = None
            self.reject(603)
            return
        if self.state is CallState.ANSWERED:
            self._bye_after_ack = True
            self._emit(Ended("local", "BYE"))
            return
        if self.state is CallState.CONFIRMED:
            self._bye()
            self._finish(CallState.ENDED)
            self._emit(Ended("local", "BYE"))
            self.ua._flush()

    # -- internals -------------------------------------------------------------------------------
    def _provisional(self, status: int, reason: str | None, sdp: bytes | None, headers: list[tuple[str, str]],
                     fut: asyncio.Future, rel: bool) -> None:
        hs = self._contact_headers() + [("Allow", ALLOW)] + headers
        dlg = self.dialog
        rseq = 0
        if rel and dlg is not None:
            rseq = dlg.next_rseq()
            hs += [("Require", "100rel"), ("RSeq", str(rseq))]
        if sdp:
            hs.append(("Content-Type", "application/sdp"))
            self.local_sdp = sdp
        resp = self.tx.reply(status, reason, headers=hs, body=sdp or b"")
        self.state = CallState.EARLY
        if rel and dlg is not None:
            r = _Reliable(resp, rseq, Retransmitter(self.ua.stack.clock(), self.ua.t1, None), fut)
            self._reliable = r
            self._arm_reliable(r)
        else:
            fut.set_result(True)

    def _arm_reliable(self, r: _Reliable) -> None:
        r.handle = self._later(r.schedule.next_at - self.ua.stack.clock(), lambda: self._on_reliable_timer(r))

    def _on_reliable_timer(self, r: _Reliable) -> None:
        if self._reliable is not r or self.state not in (CallState.INCOMING, CallState.EARLY):
            return
        if r.schedule.fire(self.ua.stack.clock()):
            self.tx.respond(r.response)
            self._arm_reliable(r)
            return
        self._log(logging.WARNING, "no PRACK for reliable %d: rejecting the INVITE", r.response.status)
        self._reliable = None
        r.future.set_result(False)
        self._deferred_answer = None
        self.reject(504, "Server Time-out (no PRACK)")
        self._emit(Ended("timeout", "no PRACK", 504))

    def _drop_reliable(self) -> None:
        r = self._reliable
        if r is not None:
            self._cancel_timer(r.handle)
            if not r.future.done():
                r.future.set_result(False)
            self._reliable = None
        for *_, fut in self._queued:
            if not fut.done():
                fut.set_result(False)
        self._queued.clear()

    def _on_prack(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        r = self._reliable
        rack = parse_rack(req.get("rack"))
        if r is None or rack is None or rack != (r.rseq, self.request.cseq.seq, "INVITE"):
            tx.reply(481)
            return
        tx.reply(200)
        self._cancel_timer(r.handle)
        self._reliable = None
        if req.body:
            self.remote_sdp = req.body
        if not r.future.done():
            r.future.set_result(True)
        if self._queued:
            status, reason, sdp, headers, fut = self._queued.pop(0)
            self._provisional(status, reason, sdp, headers, fut, True)
        elif self._deferred_answer is not None:
            body, headers = self._deferred_answer
            self._deferred_answer = None
            self._send_answer(body, headers)

    def _send_answer(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self._drop_reliable()
        hs = self._contact_headers() + [("Allow", ALLOW), ("Supported", ", ".join(self.ua.supported))] + headers
        if body:
            hs.append(("Content-Type", "application/sdp"))
            self.local_sdp = body
        resp = self.tx.reply(200, headers=hs, body=body)
        self.state = CallState.ANSWERED
        if self.dialog is not None:
            self.dialog.confirm()
        self._log(logging.INFO, "answered")
        self._retransmit_2xx(self.tx, resp, initial=True)

    def _acked(self, job: _Unacked, req: Request) -> None:
        if not job.initial:
            return
        if self._bye_after_ack:
            self._bye()
            self._finish(CallState.ENDED)
            return
        if self.state is CallState.ANSWERED:
            self.state = CallState.CONFIRMED
            if self._st_terms is not None:
                self._start_session_timer(self._st_terms)
            self._emit(Confirmed(req.body or None))

    def _on_bye(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        if self.state in (CallState.INCOMING, CallState.EARLY):
            tx.reply(200)
            self._drop_reliable()
            self.tx.reply(487)  # §15.1.2: BYE on an early dialog terminates the pending INVITE
            dlg.terminate()
            self._finish(CallState.ENDED)
            self._emit(Ended("remote", "BYE", 487))
            return
        super()._on_bye(tx, req, dlg)

    def on_cancel(self, cancel_tx: ServerTransaction, invite_tx: ServerTransaction | None = None) -> None:
        """The caller's CANCEL matched our INVITE (the proxy calls this on the INVITE transaction's owner).

        200 to the CANCEL unless the caller of this method already sent it; 487 to the INVITE if unanswered.
        """
        if cancel_tx.last_response is None:
            cancel_tx.reply(200)
        self._on_cancel()
        self.ua._flush()

    def _on_cancel(self) -> None:
        if self.state not in (CallState.INCOMING, CallState.EARLY):
            return  # already answered: the CANCEL has no effect (§9.2)
        self._drop_reliable()
        self._deferred_answer = None
        self.tx.reply(487)
        self._log(logging.INFO, "cancelled by the caller")
        self._finish(CallState.ENDED)
        self._emit(Ended("remote", "CANCEL", 487))


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
        elif method in _ALLOWED:
            tx.reply(481)  # BYE/INFO/UPDATE/PRACK outside any dialog
        else:
            tx.reply(501 if method not in ("REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "PUBLISH") else 405,
                     headers=[("Allow", ALLOW)])
        self._flush()

    def on_ack(self, request: Request, flow: Flow) -> None:
        """An ACK for a 2xx we sent (no transaction matched it)."""
        call = self.calls.get((request.call_id, request.to.tag or ""))
        if call is not None:
            call._on_ack(request)
            self._flush()

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        """A response with no client transaction: 2xx retransmissions after Timer M, late finals."""
        call = self.calls.get((response.call_id, response.from_.tag or ""))
        if call is not None:
            call._on_stray(response, flow)
            self._flush()

    def on_cancel(self, cancel_tx: ServerTransaction, invite_tx: ServerTransaction | None) -> bool:
        """A CANCEL for one of our incoming INVITEs: 200 to the CANCEL, 487 to the INVITE if still pending.

        Returns whether the INVITE was ours; if not, the CANCEL gets 481 (unless already answered).
        """
        call = invite_tx.owner if invite_tx is not None else None
        if not isinstance(call, IncomingCall) or call.ua is not self:
            if cancel_tx.last_response is None:
                cancel_tx.reply(481)
            self._flush()
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
                self._strip_own_routes(dialog)
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
        call._st_terms, call._st_offer_headers = terms, (timer_headers if not timer_status else [])
        self.calls[(call.call_id, tag)] = call
        try:
            self._invites[self._cancel_key(request)] = call
        except SipParseError:
            pass
        if problem is not None:
            call.reject(problem[0], problem[1], problem[2])
        else:
            call._warm(dialog)  # type: ignore[arg-type]
            call._log(logging.INFO, "incoming call from %s", request.get("from"))
        return call

    def invite(self, target_uri: str | SipUri, from_uri: str | SipUri | NameAddr, sdp_offer: bytes | None = None, *,
               headers: Iterable[tuple[str, str]] = (), flow: Flow | None = None, route: Iterable[str] = (),
               credentials: tuple[str, str] | None = None, content_type: str = "application/sdp",
               require_100rel: bool = False, ring_timeout: float | None = None, to: str | None = None,
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
        call = OutgoingCall(self, req, flow, on_event=on_event, credentials=credentials, ring_timeout=ring_timeout)
        self.calls[(call_id, tag)] = call
        call._log(logging.INFO, "calling %s via %s", target, flow or f"{hop.host} (locating)")
        if flow is None:
            call._locate(hop)
            return call
        call._start()
        self._flush()
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

    # -- helpers -----------------------------------------------------------------------------------
    def contact_for(self, transport: str, user: str | None) -> str:
        """Our Contact value on a transport (a URI at our listener for it)."""
        if not self.stack.listeners:
            return f"<sip:{user + '@' if user else ''}{self.stack.advertise}>"
        return f"<{self.stack.local_uri(transport, user)}>"

    def close(self) -> None:
        """Cancel every timer of every call (shutdown)."""
        for call in list(self.calls.values()):
            if isinstance(call, OutgoingCall) and call._locating is not None:
                call._locating.cancel()
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
        call._on_request(tx, request, dlg)

    @staticmethod
    def _cancel_key(request: Request) -> tuple[str, str, str]:
        return (request.call_id, request.from_.tag or "", request.top_via.branch or "")

    def _strip_own_routes(self, dlg: Dialog) -> None:
        """Drop route-set entries that point at this very stack (our own proxy's Record-Route)."""
        while dlg.route_set and self.stack.listeners and self.stack.is_local(dlg.route_set[0].uri):
            dlg.route_set.pop(0)

    def _future(self) -> asyncio.Future:
        return asyncio.get_event_loop().create_future()

    def _flush(self) -> None:
        self.stack.flush()

    def _retire(self, call: Call) -> None:
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
            call._release()

        self._retiring[call] = loop.call_later(self.linger, forget)
