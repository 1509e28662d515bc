"""What both directions of a call share (`Call`): its dialogs, in-dialog requests both ways, the 2xx
retransmissions until the ACK, re-offers, REFER/NOTIFY, session timers and timers; `OutgoingCall`
(sipcore/uac.py) and `IncomingCall` (sipcore/uas.py) build on it, `UserAgent` (sipcore/ua.py) makes them."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .auth import AuthError, build_authorization, select_challenge
from .dialog import (
    Dialog, DialogState, Retransmitter, glare_retry_delay,
)
from .errors import SipParseError
from .message import Request, Response, reason_phrase
from .session_timer import SessionTimer, TimerTerms, parse_session_expires
from .transaction import ClientTransaction, Flow, ServerTransaction
from .callevents import (
    ACCEPT, ALLOW, FINAL_STATES, CallEvent, CallState, CallStateError, Ended,
    Failed, InfoReceived, ReferReceived, ReinviteReceived, split_refer_to,
)

if TYPE_CHECKING:
    from .ua import UserAgent

__all__ = ["Call"]

log = logging.getLogger("callpath.sip.ua")


def clone_request(request: Request) -> Request:
    """A copy of a request without its Via headers (to resend it in a new transaction)."""
    out = Request(request.method, request.uri.copy(), body=request.body)
    out.headers = [list(h) for h in request.headers if h[0] != "via"]
    return out


class OutboundRequest:
    """One client transaction of a call: its owner object, so the stack hands its responses back here."""

    __slots__ = ("call", "template", "flow", "dialog", "future", "handler", "auth_tried", "tx",
                 "glare_retries", "retry_glare", "sdp")

    def __init__(self, call: "Call", template: Request, flow: Flow, dialog: Dialog | None,
                 future: asyncio.Future, handler: Callable[["OutboundRequest", ClientTransaction, Response], None],
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
class Unacked2xx:
    """A 2xx to an INVITE we keep re-sending until its ACK (RFC 3261 §13.3.1.4)."""

    tx: ServerTransaction
    response: Response
    schedule: Retransmitter
    initial: bool
    handle: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class ReliableProvisional:
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
        self._unacked: dict[int, Unacked2xx] = {}
        self._acks: dict[tuple[str, int], tuple[Request, Flow]] = {}  # (remote tag, cseq) -> ACK sent
        self._ack_waiting: dict[tuple[str, int], Dialog] = {}          # late offer: 2xx waiting for our answer
        self._pending_offer: tuple[ServerTransaction, asyncio.TimerHandle | None] | None = None
        self.refer_pending = False          # a REFER was accepted: NOTIFYs report its progress
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
        fut = self.ua.new_future()
        ctx = self._send_in_dialog(dlg, method, body, content_type, list(headers), fut, self._plain_final)
        if method in ("INVITE", "UPDATE") and body:
            ctx.sdp = body
        self.ua.flush()
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
        fut = self.ua.new_future()
        ctx = self._send_in_dialog(dlg, "INVITE", sdp or b"", content_type, list(headers), fut, self._reinvite_final)
        ctx.sdp = sdp
        ctx.retry_glare = retry_glare
        self.ua.flush()
        return fut

    def update(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = (), *,
               content_type: str = "application/sdp") -> asyncio.Future:
        """Send UPDATE (RFC 3311), with a new offer if `sdp` is given; resolves with the final response."""
        dlg = self._usable_dialog("UPDATE")
        if sdp:
            if dlg.offer_out or dlg.offer_in:
                raise CallStateError("an offer is already in progress on this dialog")
            dlg.offer_out = True
        fut = self.ua.new_future()
        ctx = self._send_in_dialog(dlg, "UPDATE", sdp or b"", content_type, list(headers), fut, self._update_final)
        ctx.sdp = sdp
        self.ua.flush()
        return fut

    def hangup(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def log_event(self, level: int, msg: str, *args: Any) -> None:
        log.log(level, msg, *args, extra={"call_id": self.call_id})

    def _emit(self, event: CallEvent) -> None:
        self.log_event(logging.DEBUG, "event %s", type(event).__name__)
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
            self.ua.flush()

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

    def warm_next_hop(self, dlg: Dialog) -> None:
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
                        handler: Callable[[OutboundRequest, ClientTransaction, Response], None]) -> OutboundRequest:
        req = dlg.create_request(method, body, content_type, [*self._std_headers(method), *headers])
        return self._send(req, self._flow_for(dlg), dlg, future, handler)

    def _send(self, req: Request, flow: Flow, dlg: Dialog | None, future: asyncio.Future,
              handler: Callable[[OutboundRequest, ClientTransaction, Response], None], auth_tried: bool = False,
              branch: str | None = None) -> OutboundRequest:
        ctx = OutboundRequest(self, clone_request(req), flow, dlg, future, handler, auth_tried)
        ctx.tx = self.ua.stack.send_request(req, flow, owner=ctx, branch=branch)
        self.log_event(logging.DEBUG, "sent %s to %s", req.method, flow)
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

    def contact_headers(self) -> list[tuple[str, str]]:
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
        self.ua.retire(self)

    def release(self) -> None:
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
            fut = self.ua.new_future()
            self._send_in_dialog(dlg, "BYE", b"", None, [], fut, self._plain_final)
            dlg.terminate()

    # -- client transaction results ----------------------------------------------------------------
    def _outbound_response(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
        status = resp.status
        if status in (401, 407) and not ctx.auth_tried and self._retry_with_credentials(ctx, resp):
            return
        if status >= 200 and ctx.dialog is not None and ctx.method != "ACK":
            ctx.dialog.receive_response(ctx.method, resp)
        ctx.handler(ctx, tx, resp)

    def _outbound_failure(self, ctx: OutboundRequest, tx: ClientTransaction, status: int, reason: str) -> None:
        self.log_event(logging.INFO, "%s failed: %d %s", ctx.method, status, reason)
        resp = Response(status, reason)
        ctx.handler(ctx, tx, resp)

    def _retry_with_credentials(self, ctx: OutboundRequest, resp: Response) -> bool:
        """Re-send a challenged request once with Authorization/Proxy-Authorization (RFC 3261 §22.2)."""
        creds = self.credentials
        if creds is None:
            return False
        proxy = resp.status == 407
        challenge = select_challenge(resp.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"))
        if challenge is None:
            return False
        req = clone_request(ctx.template)
        try:
            value = build_authorization(challenge, req.method, str(req.uri), creds[0], creds[1], body=req.body)
        except AuthError as exc:
            self.log_event(logging.INFO, "cannot answer the challenge: %s", exc)
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
        self.log_event(logging.INFO, "%s challenged with %d: retrying with credentials", req.method, resp.status)
        return True

    def _on_resent(self, old: OutboundRequest, new: OutboundRequest) -> None:
        """Hook: a request was re-sent in a new transaction (auth retry)."""

    def _plain_final(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
        if resp.status < 200:
            return
        if resp.status in (481, 408) and ctx.method not in ("BYE", "PRACK", "CANCEL"):
            self._dialog_lost(ctx.dialog, resp.status)  # §12.2.1.2
        if not ctx.future.done():
            ctx.future.set_result(resp)

    def _dialog_lost(self, dlg: Dialog | None, status: int) -> None:
        if dlg is None or dlg is not self.dialog or self.is_final:
            return
        self.log_event(logging.INFO, "dialog lost (%d): ending the call", status)
        if status == 408:
            self._bye(dlg)
        dlg.terminate()
        self._finish(CallState.ENDED)
        self._emit(Ended("timeout" if status == 408 else "remote", reason_phrase(status), status))

    def _reinvite_final(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
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
            self.log_event(logging.INFO, "re-INVITE glare (491): retrying in %.2f s", delay)

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

    def _update_final(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
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
    def on_dialog_request(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
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
                tx.reply(200, headers=self.contact_headers() + [("Supported", ", ".join(self.ua.supported))]
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
        self.log_event(logging.DEBUG, "session timer %d s, refresher %s", terms.expires, terms.refresher)
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
            self.log_event(logging.INFO, "session timer expired: no refresh within %d s", st.terms.expires)
            self._bye()
            self._finish(CallState.ENDED)
            self._emit(Ended("timeout", "session timer expired"))
            self.ua.flush()
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
        if not self.refer_pending or self.is_final:
            return
        final = status >= 200
        if final:
            self.refer_pending = False
        state = "terminated;reason=noresource" if final else "active;expires=60"
        body = f"SIP/2.0 {status} {reason or reason_phrase(status)}\r\n".encode()
        try:
            self.send_request("NOTIFY", body, "message/sipfrag;version=2.0",
                              headers=[("Event", "refer"), ("Subscription-State", state)])
        except CallStateError:
            pass

    def _on_bye(self, tx: ServerTransaction, req: Request, dlg: Dialog) -> None:
        tx.reply(200)
        self.log_event(logging.INFO, "BYE received")
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

    def answer_reoffer(self, tx: ServerTransaction, req: Request, sdp: bytes | None,
                      headers: list[tuple[str, str]]) -> None:
        self._clear_offer(tx)
        if self.is_final:
            return
        body = sdp if sdp is not None else (self.local_sdp or b"")
        hs = (self.contact_headers() + [("Allow", ALLOW), ("Supported", ", ".join(self.ua.supported))]
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
        self.ua.flush()

    def reject_reoffer(self, tx: ServerTransaction, status: int, reason: str | None,
                      headers: list[tuple[str, str]]) -> None:
        self._clear_offer(tx)
        tx.reply(status, reason, headers=headers)
        self.ua.flush()

    def _clear_offer(self, tx: ServerTransaction) -> None:
        if self._pending_offer is not None and self._pending_offer[0] is tx:
            self._cancel_timer(self._pending_offer[1])
            self._pending_offer = None
        if self.dialog is not None:
            self.dialog.offer_in = False

    # -- 2xx retransmission until ACK (§13.3.1.4) ---------------------------------------------------
    def _retransmit_2xx(self, tx: ServerTransaction, resp: Response, initial: bool) -> None:
        tx.owner = self
        job = Unacked2xx(tx, resp, Retransmitter(self.ua.stack.clock(), self.ua.t1, self.ua.t2), initial)
        self._unacked[resp.cseq.seq] = job
        self._arm_2xx(job)

    def _arm_2xx(self, job: Unacked2xx) -> None:
        delay = job.schedule.next_at - self.ua.stack.clock()
        job.handle = self._later(delay, lambda: self._on_2xx_timer(job))

    def _on_2xx_timer(self, job: Unacked2xx) -> None:
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
        self.log_event(logging.WARNING, "no ACK for our 2xx after %.1f s: sending BYE", job.schedule.deadline - job.schedule.start)
        self._bye()
        self._finish(CallState.ENDED)
        self._emit(Ended("timeout", "no ACK"))

    def on_ack_request(self, req: Request) -> None:
        """The ACK for one of our 2xx responses."""
        job = self._unacked.pop(req.cseq.seq, None)
        if job is None:
            return  # a retransmitted ACK, or one for a 2xx we gave up on
        self._cancel_timer(job.handle)
        if req.body:
            self.remote_sdp = req.body
        self._acked(job, req)

    def _acked(self, job: Unacked2xx, req: Request) -> None:
        """Hook: the 2xx in `job` was ACKed."""

    def on_stray_response(self, resp: Response, flow: Flow) -> None:
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
        self.log_event(logging.INFO, "transport failure on %s", tx.flow)
