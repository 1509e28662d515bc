"""What a call tells its application: its state, and the typed events of `sipcore.ua` calls (RFC 3261, 3262,
3264, 3515, 3891): provisional and final answers, the ACK, re-offers and REFERs waiting for a decision."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Union

from .message import Request, Response
from .transaction import ServerTransaction
from .uri import NameAddr, SipUri

if TYPE_CHECKING:
    from .call import Call

__all__ = [
    "ACCEPT", "ALLOW", "Answered", "CallEvent", "CallState", "CallStateError", "Confirmed", "Ended", "FINAL_STATES",
    "Failed", "InfoReceived", "ReferReceived", "ReinviteReceived", "Ringing", "parse_replaces", "split_refer_to",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REFER, NOTIFY"
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
ALLOWED_METHODS = frozenset(m.strip() for m in ALLOW.split(","))


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
        self._call.answer_reoffer(self._tx, self.request, sdp, list(headers))

    def reject(self, status: int = 488, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Refuse the offer (488 Not Acceptable Here by default; the session stays as it was)."""
        if self.answered or self._call is None or self._tx is None:
            return
        self.answered = True
        self._call.reject_reoffer(self._tx, status, reason, list(headers))


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
        self._tx.reply(202, headers=self._call.contact_headers())
        self._call.refer_pending = True
        self._call.notify_refer(100, "Trying")

    def reject(self, status: int = 603, reason: str | None = None) -> None:
        if self.decided or self._call is None or self._tx is None:
            return
        self.decided = True
        self._tx.reply(status, reason)
        self._call.ua.flush()


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
