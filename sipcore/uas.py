"""The UAS side of a call (`IncomingCall`): 1xx (reliable with 100rel), the 2xx re-sent until the ACK,
reject, CANCEL, BYE before the ACK, and the session timer its INVITE asked for."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Iterable

from .dialog import (
    Dialog, Retransmitter, parse_rack, requires_100rel, supports_100rel,
)
from .message import Request
from .session_timer import TimerTerms
from .transaction import ServerTransaction
from .call import Call, ReliableProvisional, Unacked2xx
from .callevents import ALLOW, CallEvent, CallState, CallStateError, Confirmed, Ended

if TYPE_CHECKING:
    from .ua import UserAgent

__all__ = ["IncomingCall"]

log = logging.getLogger("callpath.sip.ua")


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
        self._reliable: ReliableProvisional | None = None
        self._queued: list[tuple[int, str | None, bytes | None, list[tuple[str, str]], asyncio.Future]] = []
        self._deferred_answer: tuple[bytes, list[tuple[str, str]]] | None = None
        self._bye_after_ack = False
        self.timer_terms: TimerTerms | None = None          # session timer agreed in our 2xx (RFC 4028)
        self.timer_headers: list[tuple[str, str]] = []
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
        fut = self.ua.new_future()
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
        self.ua.flush()
        return fut

    def answer(self, sdp: bytes | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Accept the call with 200 OK and `sdp` (the answer, or an offer if the INVITE had none).

        The 2xx is re-sent until the ACK; with a reliable provisional still unacknowledged it waits
        for the PRACK first (RFC 3262 §3).
        """
        if self.state not in (CallState.INCOMING, CallState.EARLY) or self._deferred_answer is not None:
            raise CallStateError(f"cannot answer a call in state {self.state}")
        body = sdp or b""
        headers = list(headers) + self.timer_headers
        if self._reliable is not None:
            self._deferred_answer = (body, headers)
            return
        self._send_answer(body, headers)
        self.ua.flush()

    def reject(self, status: int = 486, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Refuse the call with a final 3xx–6xx."""
        if self.state not in (CallState.INCOMING, CallState.EARLY):
            return
        if status < 300:
            raise ValueError(f"not a rejection status: {status}")
        self._drop_reliable()
        self.tx.reply(status, reason, headers=list(headers))
        self.log_event(logging.INFO, "rejected with %d", status)
        self._finish(CallState.FAILED)
        self.ua.flush()

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
            self.ua.flush()

    # -- internals -------------------------------------------------------------------------------
    def _provisional(self, status: int, reason: str | None, sdp: bytes | None, headers: list[tuple[str, str]],
                     fut: asyncio.Future, rel: bool) -> None:
        hs = self.contact_headers() + [("Allow", ALLOW)] + headers
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
            r = ReliableProvisional(resp, rseq, Retransmitter(self.ua.stack.clock(), self.ua.t1, None), fut)
            self._reliable = r
            self._arm_reliable(r)
        else:
            fut.set_result(True)

    def _arm_reliable(self, r: ReliableProvisional) -> None:
        r.handle = self._later(r.schedule.next_at - self.ua.stack.clock(), lambda: self._on_reliable_timer(r))

    def _on_reliable_timer(self, r: ReliableProvisional) -> None:
        if self._reliable is not r or self.state not in (CallState.INCOMING, CallState.EARLY):
            return
        if r.schedule.fire(self.ua.stack.clock()):
            self.tx.respond(r.response)
            self._arm_reliable(r)
            return
        self.log_event(logging.WARNING, "no PRACK for reliable %d: rejecting the INVITE", r.response.status)
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
        hs = self.contact_headers() + [("Allow", ALLOW), ("Supported", ", ".join(self.ua.supported))] + headers
        if body:
            hs.append(("Content-Type", "application/sdp"))
            self.local_sdp = body
        resp = self.tx.reply(200, headers=hs, body=body)
        self.state = CallState.ANSWERED
        if self.dialog is not None:
            self.dialog.confirm()
        self.log_event(logging.INFO, "answered")
        self._retransmit_2xx(self.tx, resp, initial=True)

    def _acked(self, job: Unacked2xx, req: Request) -> None:
        if not job.initial:
            return
        if self._bye_after_ack:
            self._bye()
            self._finish(CallState.ENDED)
            return
        if self.state is CallState.ANSWERED:
            self.state = CallState.CONFIRMED
            if self.timer_terms is not None:
                self._start_session_timer(self.timer_terms)
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
        self.ua.flush()

    def _on_cancel(self) -> None:
        if self.state not in (CallState.INCOMING, CallState.EARLY):
            return  # already answered: the CANCEL has no effect (§9.2)
        self._drop_reliable()
        self._deferred_answer = None
        self.tx.reply(487)
        self.log_event(logging.INFO, "cancelled by the caller")
        self._finish(CallState.ENDED)
        self._emit(Ended("remote", "CANCEL", 487))
