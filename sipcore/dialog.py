"""SIP dialogs (RFC 3261 §12, with RFC 3262 RSeq/RAck bookkeeping), sans-IO.

A `Dialog` is the state two user agents share for a call leg: its id (Call-ID + both tags), the
CSeq spaces, the remote target and the route set. It builds in-dialog requests and validates
incoming ones; it never sends anything. The small pure helpers below it (offer/answer conflicts,
retransmission schedules, 100rel checks) hold the decisions `sipcore.ua` acts on, so they can be
tested with a fake clock.
"""
from __future__ import annotations

import enum
import random
import secrets
from dataclasses import dataclass, field
from typing import Iterable

from .message import Request, Response
from .uri import NameAddr, SipUri

__all__ = [
    "DialogState", "DialogId", "Dialog", "DialogError", "request_dialog_id", "response_dialog_id",
    "TARGET_REFRESH", "Retransmitter", "offer_conflict", "glare_retry_delay", "supports_100rel",
    "requires_100rel", "reliable_rseq", "parse_rack", "unsupported_requirements", "initial_cseq",
]

TARGET_REFRESH: frozenset[str] = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
"""Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311 §5)."""

_URI_DISALLOWED_PARAMS = ("method",)  # RFC 3261 §19.1.1 table: not allowed in a Request-URI


class DialogError(ValueError):
    """A message cannot create or update a dialog (missing tag, Contact, ...)."""


class DialogState(enum.StrEnum):
    """RFC 3261 §12: a dialog is early (1xx with a tag), confirmed (2xx) or terminated."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID plus local and remote tags: the key a UA looks a dialog up by (§12)."""

    call_id: str
    local_tag: str
    remote_tag: str


def request_dialog_id(request: Request) -> DialogId:
    """The dialog id of an incoming in-dialog request, as the receiving UA sees it (local = To tag)."""
    return DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")


def response_dialog_id(response: Response) -> DialogId:
    """The dialog id of a response to our request, as the UAC sees it (local = From tag)."""
    return DialogId(response.call_id, response.from_.tag or "", response.to.tag or "")


def initial_cseq() -> int:
    """A fresh local CSeq number (RFC 3261 §8.1.1.5: below 2**31); small to leave room."""
    return secrets.randbelow(2**16) + 1


@dataclass(slots=True)
class Dialog:
    """RFC 3261 §12 dialog state; built with `Dialog.uac()` or `Dialog.uas()`."""

    id: DialogId
    is_uac: bool
    local_uri: NameAddr           # our From (UAC) / To (UAS), without tag
    remote_uri: NameAddr          # the peer's address, without tag
    remote_target: SipUri         # where in-dialog requests go (the peer's Contact)
    route_set: list[NameAddr] = field(default_factory=list)
    local_seq: int | None = None
    remote_seq: int | None = None
    secure: bool = False
    state: DialogState = DialogState.EARLY
    local_contact: str | None = None   # the Contact value we put in target-refresh requests
    remote_rseq: int | None = None     # RFC 3262 §4: last in-order reliable provisional seen (UAC)
    local_rseq: int | None = None      # RFC 3262 §3: last RSeq we sent (UAS)
    invite_seq: int | None = None      # CSeq of the INVITE that created the dialog (for ACK/CANCEL/RAck)
    offer_out: bool = False            # we sent an offer (re-INVITE/UPDATE) and await its answer
    offer_in: bool = False             # we received an offer and have not answered it yet

    # -- creation (§12.1) --------------------------------------------------------------------------
    @classmethod
    def uac(cls, request: Request, response: Response, *, local_contact: str | None = None,
            secure: bool | None = None) -> "Dialog":
        """The UAC side, from our request and a 1xx/2xx carrying a To tag (§12.1.2).

        Route set = Record-Route of the response reversed; remote target = its Contact (the
        Request-URI when a provisional omits it); remote CSeq empty; local CSeq = the request's.
        """
        to_tag = response.to.tag
        if not to_tag:
            raise DialogError("response without a To tag cannot create a dialog")
        status = response.status
        if not 101 <= status < 300:
            raise DialogError(f"a {status} response does not create a dialog")
        contacts = response.contacts
        target = contacts[0].uri.copy() if contacts else request.uri.copy()
        if secure is None:
            secure = request.uri.scheme == "sips"
        return cls(
            id=DialogId(request.call_id, request.from_.tag or "", to_tag),
            is_uac=True,
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(request.to),
            remote_target=target,
            route_set=list(reversed(response.record_routes)),
            local_seq=request.cseq.seq,
            remote_seq=None,
            secure=secure,
            state=DialogState.CONFIRMED if status >= 200 else DialogState.EARLY,
            local_contact=local_contact if local_contact is not None else request.get("contact"),
            invite_seq=request.cseq.seq if request.method == "INVITE" else None,
        )

    @classmethod
    def uas(cls, request: Request, local_tag: str, *, local_contact: str | None = None,
            secure: bool = False, confirmed: bool = False) -> "Dialog":
        """The UAS side, from the dialog-creating request and the To tag we answer with (§12.1.1).

        Route set = Record-Route of the request in order; remote target = its Contact; remote CSeq =
        the request's; local CSeq empty. `secure` is true when the request came over TLS to a sips URI.
        """
        contacts = request.contacts
        if not contacts:
            raise DialogError("dialog-creating request without a Contact")
        from_tag = request.from_.tag
        if not from_tag:
            raise DialogError("request without a From tag")
        return cls(
            id=DialogId(request.call_id, local_tag, from_tag),
            is_uac=False,
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            remote_target=contacts[0].uri.copy(),
            route_set=list(request.record_routes),
            local_seq=None,
            remote_seq=request.cseq.seq,
            secure=secure and request.uri.scheme == "sips",
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_contact=local_contact,
            invite_seq=request.cseq.seq if request.method == "INVITE" else None,
        )

    # -- state -------------------------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        """The dialog's Call-ID."""
        return self.id.call_id

    @property
    def local_tag(self) -> str:
        """Our tag."""
        return self.id.local_tag

    @property
    def remote_tag(self) -> str:
        """The peer's tag."""
        return self.id.remote_tag

    def confirm(self, response: Response | None = None) -> None:
        """Move to confirmed; a UAC passes the 2xx, which recomputes the route set and target (§13.2.2.4)."""
        if self.state is DialogState.TERMINATED:
            return
        if response is not None and self.is_uac and self.state is DialogState.EARLY:
            self.route_set = list(reversed(response.record_routes))
            self.refresh_target(response)
        self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """Mark the dialog terminated (BYE sent or received, 481/408 to an in-dialog request, ...)."""
        self.state = DialogState.TERMINATED

    def refresh_target(self, message: Request | Response) -> bool:
        """Replace the remote target with the message's Contact, if it has one (§12.2.1.2, §12.2.2)."""
        contacts = message.contacts
        if not contacts:
            return False
        self.remote_target = contacts[0].uri.copy()
        return True

    def receive_request(self, request: Request) -> int | None:
        """Validate an in-dialog request (§12.2.2); None to accept it, else the status to reject it with.

        A CSeq lower than the remote CSeq gets 500; an accepted request advances the remote CSeq and a
        target refresh updates the remote target. ACK and CANCEL reuse the INVITE's CSeq and are not checked.
        """
        if request.method in ("ACK", "CANCEL"):
            return None
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            return 500
        self.remote_seq = seq
        if request.method in TARGET_REFRESH:
            self.refresh_target(request)
        return None

    def receive_response(self, method: str, response: Response) -> None:
        """Take note of a response to one of our in-dialog requests: a 2xx to a target refresh updates the target."""
        if 200 <= response.status < 300 and method in TARGET_REFRESH:
            self.refresh_target(response)

    # -- building requests (§12.2.1.1) -------------------------------------------------------------
    def next_cseq(self) -> int:
        """Advance and return the local CSeq (starting it when still empty)."""
        self.local_seq = (self.local_seq + 1) if self.local_seq is not None else initial_cseq()
        return self.local_seq

    @property
    def strict_route(self) -> bool:
        """Whether the first hop is an RFC 2543 strict router (its URI has no ;lr)."""
        return bool(self.route_set) and "lr" not in self.route_set[0].uri.params

    @property
    def next_hop(self) -> SipUri:
        """The URI to resolve for sending (RFC 3261 §8.1.2): first route, else the remote target."""
        if self.route_set:
            return self.route_set[0].uri
        return self.remote_target

    def create_request(self, method: str, body: bytes = b"", content_type: str | None = None,
                       headers: Iterable[tuple[str, str]] = (), *, cseq: int | None = None) -> Request:
        """An in-dialog request with tags, Call-ID, CSeq, route set and (for target refreshes) Contact.

        CSeq is the next local number, except ACK/CANCEL/explicit `cseq`. Loose routing puts the
        remote target in the Request-URI and the route set in Route; with a strict first hop the
        first route becomes the Request-URI and the remote target ends the Route list (§12.2.1.1).
        """
        if cseq is None:
            cseq = self.local_seq if method in ("ACK", "CANCEL") and self.local_seq is not None else self.next_cseq()
        routes: list[str]
        if not self.route_set:
            ruri = self.remote_target.copy()
            routes = []
        elif not self.strict_route:
            ruri = self.remote_target.copy()
            routes = [str(r) for r in self.route_set]
        else:
            ruri = self.route_set[0].uri.copy()
            for p in _URI_DISALLOWED_PARAMS:
                ruri.params.pop(p, None)
            ruri.headers = {}
            routes = [str(r) for r in self.route_set[1:]] + [f"<{self.remote_target}>"]
        req = Request(method, ruri)
        for r in routes:
            req.add("Route", r)
        req.add("Max-Forwards", "70")
        req.add("From", str(self.local_uri.with_tag(self.local_tag)))
        req.add("To", str(self.remote_uri.with_tag(self.remote_tag)))
        req.add("Call-ID", self.call_id)
        req.add("CSeq", f"{cseq} {method}")
        if method in TARGET_REFRESH and self.local_contact:
            req.add("Contact", self.local_contact)
        for name, value in headers:
            req.add(name, value)
        if body:
            req.set("Content-Type", content_type or "application/sdp")
        req.body = body
        return req

    def create_ack(self, invite_cseq: int, body: bytes = b"", content_type: str | None = None,
                   headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The ACK for a 2xx to an INVITE (§13.2.2.4): the INVITE's CSeq number, a new transaction."""
        return self.create_request("ACK", body, content_type, headers, cseq=invite_cseq)

    def create_prack(self, response: Response, headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The PRACK for a reliable provisional (RFC 3262 §7.2): RAck = RSeq, CSeq number, method."""
        rseq = reliable_rseq(response)
        if rseq is None:
            raise DialogError("not a reliable provisional response")
        cs = response.cseq
        return self.create_request("PRACK", headers=[("RAck", f"{rseq} {cs.seq} {cs.method}"), *headers])

    # -- RFC 3262 sequencing -----------------------------------------------------------------------
    def accept_rseq(self, rseq: int) -> bool:
        """UAC: whether a reliable provisional is new and in order (to be PRACKed and processed, §4)."""
        if self.remote_rseq is None or rseq == self.remote_rseq + 1:
            self.remote_rseq = rseq
            return True
        return False

    def next_rseq(self) -> int:
        """UAS: the RSeq for our next reliable provisional (random start, then +1; RFC 3262 §3)."""
        self.local_rseq = (self.local_rseq + 1) if self.local_rseq is not None else secrets.randbelow(2**16) + 1
        return self.local_rseq

    # -- offer/answer bookkeeping ------------------------------------------------------------------
    def incoming_offer_status(self) -> tuple[int, list[tuple[str, str]]] | None:
        """Whether an incoming re-INVITE/UPDATE offer can be processed now (RFC 3261 §14.2, RFC 3311 §5.2).

        Returns None to accept it, (491, []) on glare with our own pending offer, or (500, [Retry-After])
        while an offer we received is still unanswered.
        """
        return offer_conflict(self.offer_out, self.offer_in)


def _without_tag(na: NameAddr) -> NameAddr:
    params = {k: v for k, v in na.params.items() if k != "tag"}
    return NameAddr(na.uri.copy(), na.display, params)


# -- pure decision helpers -------------------------------------------------------------------------
def offer_conflict(offer_out: bool, offer_in: bool,
                   rng: random.Random | None = None) -> tuple[int, list[tuple[str, str]]] | None:
    """Status for a new incoming offer given the offers in flight: 500+Retry-After, 491, or None (accept)."""
    if offer_in:
        r = rng or random
        return 500, [("Retry-After", str(r.randint(0, 10)))]
    if offer_out:
        return 491, []
    return None


def glare_retry_delay(owns_call_id: bool, rng: random.Random | None = None) -> float:
    """Wait before retrying a re-INVITE that got 491 (RFC 3261 §14.1): 2.1–4 s for the Call-ID owner, else 0–2 s."""
    r = rng or random
    if owns_call_id:
        return 2.1 + r.random() * 1.9
    return r.random() * 2.0


def supports_100rel(message: Request | Response) -> bool:
    """Whether the message lists 100rel in Supported or Require (RFC 3262 §3)."""
    return "100rel" in message.option_tags("supported") or "100rel" in message.option_tags("require")


def requires_100rel(message: Request | Response) -> bool:
    """Whether the message has Require: 100rel."""
    return "100rel" in message.option_tags("require")


def reliable_rseq(response: Response) -> int | None:
    """The RSeq of a reliable provisional response (101–199, Require: 100rel, valid RSeq), else None."""
    if not 101 <= response.status < 200 or not requires_100rel(response):
        return None
    v = (response.get("rseq") or "").strip()
    if not v.isdigit() or len(v) > 10:
        return None
    n = int(v)
    return n if 1 <= n < 2**32 else None


def parse_rack(value: str | None) -> tuple[int, int, str] | None:
    """RAck `rseq cseq method` -> (rseq, cseq, method), None when malformed (RFC 3262 §7.2)."""
    if not value:
        return None
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2]


def unsupported_requirements(request: Request, supported: Iterable[str]) -> list[str]:
    """Option tags in Require that we do not support (answer 420 with Unsupported, §8.2.2.3)."""
    ours = {s.lower() for s in supported}
    return sorted(t for t in request.option_tags("require") if t not in ours)


@dataclass(slots=True)
class Retransmitter:
    """When a TU re-sends a message until it is acknowledged, and when it gives up.

    2xx to INVITE until the ACK (RFC 3261 §13.3.1.4: T1 doubling up to T2, give up after 64*T1) and
    reliable provisionals until the PRACK (RFC 3262 §3: T1 doubling, no cap, give up after 64*T1).
    Drive it with `fire(now)` when `next_at` is reached.
    """

    start: float
    t1: float = 0.5
    cap: float | None = 4.0
    limit_factor: int = 64
    interval: float = field(init=False)
    next_at: float = field(init=False)
    count: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.interval = self.t1
        self.next_at = min(self.start + self.t1, self.deadline)

    @property
    def deadline(self) -> float:
        """When retransmitting stops and the TU gives up."""
        return self.start + self.limit_factor * self.t1

    def fire(self, now: float) -> bool:
        """The timer fired at `now`: True -> retransmit (and `next_at` moved on), False -> give up."""
        if now >= self.deadline - 1e-9:
            return False
        self.count += 1
        nxt = self.interval * 2
        self.interval = min(nxt, self.cap) if self.cap is not None else nxt
        self.next_at = min(now + self.interval, self.deadline)
        return True
