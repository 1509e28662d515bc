"""The UAC side of a call (`OutgoingCall`): INVITE, provisional/2xx/failure handling with forks, PRACK,
ACK (with the answer of a late-offer 2xx), CANCEL, the auth retry and RFC 3263 failover between targets."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from .dialog import (
    Dialog, DialogError, DialogState, reliable_rseq,
)
from .errors import SipParseError
from .locator import as_flow
from .message import Request, Response
from .session_timer import negotiate_uac
from .transaction import ClientTransaction, Flow
from .uri import SipUri
from .call import Call, clone_request, OutboundRequest
from .callevents import (
    Answered, CallEvent, CallState, CallStateError, Ended, Failed, Ringing,
)

if TYPE_CHECKING:
    from .ua import UserAgent

__all__ = ["OutgoingCall"]

log = logging.getLogger("callpath.sip.ua")


class OutgoingCall(Call):
    """UAC side of a call: `ua.invite(...)` creates it; `cancel()`, `hangup()`, and the in-dialog API."""

    is_uac = True

    def __init__(self, ua: "UserAgent", invite: Request, flow: Flow | None, *,
                 on_event: Callable[[CallEvent], None] | None, credentials: tuple[str, str] | None,
                 ring_timeout: float | None, response_timeout: float | None = None) -> None:
        super().__init__(ua, invite.call_id, invite.from_.tag or "", flow, on_event)  # type: ignore[arg-type]
        if credentials is not None:
            self.credentials = credentials
        self.invite_request = clone_request(invite)
        self.invite_cseq = invite.cseq.seq
        self.invite_ctx: OutboundRequest | None = None
        self.local_sdp = invite.body or None
        self.provisional_seen = False
        self.trying_seen = False
        self.cancel_requested = False
        self.cancel_sent = False
        self._ring_timeout = ring_timeout
        self._response_timeout = response_timeout
        self._invite = invite
        self._next_targets: list[Flow] = []    # RFC 3263 §4.3: where the INVITE goes if this target fails
        self.locating: asyncio.Task | None = None

    def start(self) -> None:
        if not self._invite.has("contact"):  # located asynchronously: the transport is known only now
            self._invite.add("Contact", self.ua.contact_for(self.peer_flow.transport, self._invite.from_.uri.user))
        fut = self.ua.new_future()
        self.invite_ctx = self._send(self._invite, self.peer_flow, None, fut, self._invite_response)
        self.invite_ctx.sdp = self.local_sdp
        if self._ring_timeout:
            self._later(self._ring_timeout, self._on_ring_timeout)
        if self._response_timeout:
            self._later(self._response_timeout, self._on_response_timeout)

    def release(self) -> None:
        super().release()
        self.invite_ctx = None   # its tx (if still alive) keeps it; the context's back-link to us is one-way

    # -- RFC 3263: locating the next hop, failing over to the next target --------------------------
    def locate_target(self, hop: SipUri) -> None:
        """Look the next hop up without blocking the loop, then send the INVITE to the first target."""
        self.locating = asyncio.get_event_loop().create_task(self._send_located(hop))

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
            self.locating = None
        if self.is_final:
            return
        if not targets:
            self.log_event(logging.INFO, "cannot locate %s: %s", hop, reason)
            self._finish(CallState.FAILED)
            self._emit(Failed(503, f"Service Unavailable (cannot locate {hop.host}: {reason})"))
            self.ua.flush()
            return
        flows = [as_flow(t) for t in targets]
        self.peer_flow, self._next_targets = flows[0], flows[1:]
        self.log_event(logging.INFO, "%s located: %s", hop.host, ", ".join(map(str, flows)))
        self.start()
        self.ua.flush()

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
        self.log_event(logging.INFO, "INVITE to %s failed (%d %s): trying %s", self.peer_flow, resp.status, resp.reason,
                  flow)
        req = clone_request(old.template)
        if flow.transport != self.peer_flow.transport:
            req.set("Contact", self.ua.contact_for(flow.transport, req.from_.uri.user))
        self.peer_flow = flow
        new = self._send(req, flow, None, old.future, self._invite_response)
        new.sdp = old.sdp
        self._on_resent(old, new)

    def _on_response_timeout(self) -> None:
        """Nothing at all came back (not even 100 Trying): the next hop is not there. Give up now rather
        than at Timer B (32 s), so a caller's failover to another trunk is quick (Kamailio's fr_timer)."""
        if self.state is CallState.CALLING and not self.trying_seen and not self.provisional_seen:
            self.log_event(logging.INFO, "no response within %.0f s: giving up", self._response_timeout)
            tx = self.invite_tx
            if tx is not None:
                tx.abandon()
            self._finish(CallState.FAILED)
            self._emit(Failed(408, f"Request Timeout (no response within {self._response_timeout:g} s)"))
            self.ua.flush()

    def _on_ring_timeout(self) -> None:
        if self.state in (CallState.CALLING, CallState.EARLY):
            self.log_event(logging.INFO, "no answer within %.0f s: cancelling", self._ring_timeout)
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
        if self.locating is not None:  # nothing sent yet: the call ends here
            self.locating.cancel()
            self.locating = None
            self._finish(CallState.FAILED)
            self._emit(Failed(487, "Request Terminated (cancelled before the INVITE was sent)"))
            return
        if self.provisional_seen or self.trying_seen:
            self._send_cancel()
        self.ua.flush()

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
            self.ua.flush()

    # -- internals -------------------------------------------------------------------------------
    def _send_cancel(self) -> None:
        tx = self.invite_tx
        if tx is None or self.cancel_sent:
            return
        self.cancel_sent = True
        cancel = tx.cancel_request()
        cancel.remove("Via")  # send_request pushes our Via again, with the INVITE's branch
        fut = self.ua.new_future()
        self._send(cancel, tx.flow, None, fut, self._cancel_final, branch=tx.branch)
        self.log_event(logging.INFO, "CANCEL sent")

        def no_final() -> None:  # §9.1: no final response 64*T1 after the CANCEL: give up on the INVITE
            if not self.is_final:
                self._finish(CallState.FAILED)
                self._emit(Failed(487, "Request Terminated (no final response after CANCEL)"))

        self._later(64 * self.ua.t1, no_final)

    def _cancel_final(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
        if resp.status >= 200 and not ctx.future.done():
            ctx.future.set_result(resp)

    def _on_resent(self, old: OutboundRequest, new: OutboundRequest) -> None:
        if old is self.invite_ctx:
            self.invite_ctx = new
            self.invite_cseq = new.template.cseq.seq
            self.invite_request = clone_request(new.template)

    def _invite_response(self, ctx: OutboundRequest, tx: ClientTransaction, resp: Response) -> None:
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
            self.log_event(logging.DEBUG, "INVITE transaction timed out after a provisional: waiting on")
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
                self.log_event(logging.INFO, "response cannot create a dialog: %s", exc)
                return None
            self.ua.strip_own_routes(dlg)
            self.warm_next_hop(dlg)
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
            fut = self.ua.new_future()
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
            self.log_event(logging.WARNING, "2xx without a To tag: ignored")
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
        self.log_event(logging.INFO, "answered (%d)%s", resp.status, " with an offer" if late_offer else "")
        self._emit(Answered(resp.body or None, dlg.remote_tag, late_offer))

    def ack(self, sdp: bytes, content_type: str = "application/sdp") -> None:
        """Send the ACK carrying our answer to the offer of a late-offer 2xx (`Answered.offer`)."""
        if not self._ack_waiting:
            raise CallStateError("no 2xx waits for an answer in its ACK")
        key, dlg = next(iter(self._ack_waiting.items()))
        del self._ack_waiting[key]
        self.local_sdp = sdp
        self._send_ack(dlg, key[1], self._auth_headers(self.invite_request) + [("Content-Type", content_type)], sdp)
        self.ua.flush()

    def _late_answer_missing(self, key: tuple[str, int]) -> None:
        """No answer for a late-offer 2xx in time: ACK it bare and hang up (the session cannot start)."""
        dlg = self._ack_waiting.pop(key, None)
        if dlg is None:
            return
        self.log_event(logging.WARNING, "no answer for the 2xx's offer within %.0f s: ending", self.ua.offer_timeout)
        self._send_ack(dlg, key[1], self._auth_headers(self.invite_request))
        if self.state is CallState.CONFIRMED:
            self._bye(dlg)
            self._finish(CallState.ENDED)
            self._emit(Ended("local", "no answer to the offer"))
        self.ua.flush()

    def _on_failure(self, resp: Response) -> None:
        if self.is_final or self.state is CallState.CONFIRMED:
            return
        self.log_event(logging.INFO, "call failed: %d %s", resp.status, resp.reason)
        self._finish(CallState.FAILED)
        self._emit(Failed(resp.status, resp.reason, resp if resp.get("via") is not None else None))

    def on_stray_response(self, resp: Response, flow: Flow) -> None:
        if resp.cseq.method != "INVITE":
            return
        if resp.cseq.seq != self.invite_cseq:
            super().on_stray_response(resp, flow)
            return
        status = resp.status
        if 200 <= status < 300:
            self._on_2xx(resp)
        elif status < 200:
            self._on_provisional(resp)
        else:
            tx = self.invite_tx
            if tx is not None:  # its transaction is gone: ACK the non-2xx ourselves (§17.1.1.3)
                self.ua.stack.send_stateless(tx.ack_for(resp), tx.flow)
            self._on_failure(resp)
