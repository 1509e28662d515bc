"""Outbound registration (RFC 3261 §10.2): callpath as a UAC keeping a binding at a carrier's registrar, sans-IO.

`OutboundRegistration` builds the REGISTER requests, answers digest challenges (RFC 7616, with
`sipcore.auth.build_authorization`), refreshes the binding before it expires and backs off after a
failure. It never touches a socket or a loop: the adapter (`sipcore.trunk_link`) sends what
`requests_to_send()` returns, feeds responses back with `receive_response(response, now)` (or
`transaction_failed(reason, now)` on a timeout / transport failure) and calls `handle_timer(now)` when
`get_timer()` is due. Every method takes ``now`` (seconds on any monotonic clock), so tests drive it
without sleeping.

States (`RegistrationState`) and what moves between them::

    UNREGISTERED --start()--> REGISTERING --2xx--> REGISTERED --refresh due--> REGISTERING ...
                                   |  ^                                             |
                     failure table |  | retry timer (back-off)                      |
                                   v  |                                             |
                                  FAILED <--------------- failure ------------------+
    any state --stop()--> UNREGISTERED (a REGISTER with Expires: 0 when a binding may exist)

Failure table (each sets ``last_error`` and schedules a retry with exponential back-off capped at
``retry_max``; a ``Retry-After`` in the response replaces the computed delay):

==============================================  =====================================================
response                                        what happens
==============================================  =====================================================
401 / 407, credentials not yet sent             REGISTER again with (Proxy-)Authorization, same Call-ID
401 / 407 with ``stale=true``                   REGISTER again with the new nonce (not a failure)
401 / 407 after our credentials                 FAILED "credentials rejected"
401 / 407 without credentials configured        FAILED "challenged but no password is configured"
423 Interval Too Brief with Min-Expires         REGISTER again at once asking Min-Expires (not a failure)
any other 3xx-6xx                               FAILED with the status and reason phrase
timeout / transport failure                     FAILED "no answer" / "transport failure"
2xx                                             REGISTERED; the refresh is armed (see `refresh_delay`)
==============================================  =====================================================
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Union

from .auth import AuthError, build_authorization, select_challenge
from .errors import SipParseError
from .message import Request, Response, new_call_id, new_tag
from .uri import NameAddr, SipUri

__all__ = [
    "RegistrationState", "RegistrationConfig", "OutboundRegistration", "Registered", "RegistrationFailed",
    "Unregistered", "RegistrationEvent", "refresh_delay", "backoff_delay",
]


class RegistrationState(enum.StrEnum):
    """Where an outbound registration stands."""

    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """What to register where.

    ``registrar``: the Request-URI of the REGISTER (``sip:domain``); ``aor``: the To/From URI
    (``sip:user@domain``); ``contact``: our Contact URI (no angle brackets); ``username``/``password``:
    digest credentials (None: none configured); ``expires``: the binding time asked for (seconds).
    """

    registrar: str
    aor: str
    contact: str
    expires: int = 3600
    username: str | None = None
    password: str | None = None
    realm: str | None = None     # answer only challenges of this realm (None: any)
    user_agent: str = "callpath"
    retry_base: float = 10.0     # first retry delay after a failure (doubles each further failure)
    retry_max: float = 600.0     # cap of the back-off
    retry_after_max: float = 3600.0  # a Retry-After beyond this is clamped (a hostile/broken carrier)


@dataclass(frozen=True, slots=True)
class Registered:
    """The registrar accepted the binding for ``expires`` seconds; the refresh comes ``refresh_in`` later."""

    expires: int
    refresh_in: float


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """A REGISTER failed (``status`` 0: no answer / transport failure); the next try in ``retry_in`` s."""

    status: int
    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The binding was removed (``stop()``), or the registrar confirmed the removal (``confirmed``)."""

    confirmed: bool


RegistrationEvent = Union[Registered, RegistrationFailed, Unregistered]


def refresh_delay(granted: int) -> float:
    """When to refresh a binding granted for ``granted`` seconds: at 85 %, but at least 30 s before it
    lapses, and never before half of it (3600 -> 3060, 120 -> 90, 10 -> 5)."""
    return max(granted * 0.5, min(granted * 0.85, granted - 30.0))


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential back-off: ``base`` after the first failure, doubling, at most ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, base * (2 ** min(failures - 1, 30)))


class OutboundRegistration:
    """One binding kept at one registrar (see the module docstring for the state machine)."""

    def __init__(self, config: RegistrationConfig, *, call_id: str | None = None, tag: str | None = None) -> None:
        self.config = config
        self.state = RegistrationState.UNREGISTERED
        self.last_error: str = ""
        self.last_status: int | None = None
        self.granted: int | None = None         # seconds the registrar granted last time
        self.registered_at: float | None = None
        self.expires_at: float | None = None    # when the current binding lapses (None: none held)
        self.failures = 0                       # consecutive failures (drives the back-off)
        self.retry_at: float | None = None      # when the next attempt goes out after a failure
        self.refresh_at: float | None = None
        self.call_id = call_id or new_call_id()
        self.tag = tag or new_tag()
        self._cseq = 0
        self._expires_asked = config.expires
        self._auth_sent = False                 # credentials answered the last challenge of this attempt
        self._outstanding: int | None = None    # CSeq of the REGISTER waiting for its final response
        self._removing = False                  # the outstanding REGISTER is the Expires: 0 one
        self._out: list[Request] = []
        self._events: deque[RegistrationEvent] = deque()

    # -- inputs -------------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Register now (from UNREGISTERED or FAILED; a no-op while registering or registered)."""
        if self.state in (RegistrationState.REGISTERING, RegistrationState.REGISTERED):
            return
        self._attempt(now)

    def stop(self, now: float) -> bool:
        """Remove the binding: a REGISTER with Expires: 0 if one may be held. Returns whether one was queued.

        Timers stop; the state is UNREGISTERED at once (the answer to the removal only confirms it)."""
        may_hold = self.expires_at is not None and self.expires_at > now
        held = may_hold or self.state is RegistrationState.REGISTERING
        self.state = RegistrationState.UNREGISTERED
        self.refresh_at = self.retry_at = None
        self.expires_at = None
        self._auth_sent = False
        if not held:
            self._outstanding = None
            self._events.append(Unregistered(confirmed=False))
            return False
        self._removing = True
        self._send(expires=0)
        self._events.append(Unregistered(confirmed=False))
        return True

    def receive_response(self, response: Response, now: float) -> None:
        """A response to one of our REGISTERs (provisionals and stale CSeqs are ignored)."""
        status = response.status
        if status < 200:
            return
        try:
            seq = response.cseq.seq
        except SipParseError:
            return
        if seq != self._outstanding:
            return
        self._outstanding = None
        self.last_status = status
        if self._removing:
            if status in (401, 407) and self._answer_challenge(response, expires=0):
                return
            self._removing = False
            if 200 <= status < 300:
                self._events.append(Unregistered(confirmed=True))
            return
        if 200 <= status < 300:
            self._registered(response, now)
        elif status in (401, 407):
            self._challenged(response, now)
        elif status == 423:
            self._interval_too_brief(response, now)
        else:
            reason = response.reason or ""
            self._fail(now, status, f"{status} {reason}".strip(), self._retry_after(response))

    def transaction_failed(self, reason: str, now: float) -> None:
        """The outstanding REGISTER got no answer (timeout) or could not be sent (transport failure)."""
        if self._outstanding is None:
            return
        self._outstanding = None
        self.last_status = None
        if self._removing:
            self._removing = False
            return
        self._fail(now, 0, reason, None)

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due: a refresh or a retry."""
        if self.state is RegistrationState.UNREGISTERED:
            return
        if self.expires_at is not None and now >= self.expires_at and self.state is not RegistrationState.REGISTERED:
            self.expires_at = None                       # a failed refresh let the binding lapse
        if self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None
            if self._outstanding is None:
                self._attempt(now)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            if self._outstanding is None:
                self._attempt(now)

    # -- outputs ------------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must run (None: nothing pending)."""
        times = [t for t in (self.refresh_at, self.retry_at) if t is not None]
        if self.expires_at is not None and self.state is not RegistrationState.REGISTERED:
            times.append(self.expires_at)
        return min(times) if times else None

    def requests_to_send(self) -> list[Request]:
        """REGISTERs to send (each in a new client transaction to the registrar's address)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> RegistrationEvent | None:
        """The next typed event, or None."""
        return self._events.popleft() if self._events else None

    @property
    def waiting(self) -> bool:
        """Whether a REGISTER is waiting for its final response."""
        return self._outstanding is not None

    def status(self, now: float) -> dict[str, object]:
        """A JSON-able snapshot for /api/v1/status."""
        return {
            "state": str(self.state),
            "last_error": self.last_error,
            "last_status": self.last_status,
            "expires_in": round(self.expires_at - now, 1) if self.expires_at is not None else None,
            "refresh_in": round(self.refresh_at - now, 1) if self.refresh_at is not None else None,
            "retry_in": round(self.retry_at - now, 1) if self.retry_at is not None else None,
            "failures": self.failures,
        }

    # -- internals ----------------------------------------------------------------------------------
    def _attempt(self, now: float) -> None:
        self.state = RegistrationState.REGISTERING
        self._auth_sent = False
        self._expires_asked = max(self._expires_asked, self.config.expires)
        self._send(expires=self._expires_asked)

    def _send(self, expires: int, authorization: tuple[str, str] | None = None) -> None:
        cfg = self.config
        self._cseq += 1
        req = Request("REGISTER", SipUri.parse(cfg.registrar).copy())
        req.add("Max-Forwards", "70")
        req.add("From", f"<{cfg.aor}>;tag={self.tag}")
        req.add("To", f"<{cfg.aor}>")
        req.add("Call-ID", self.call_id)
        req.add("CSeq", f"{self._cseq} REGISTER")
        req.add("Contact", f"<{cfg.contact}>")
        req.add("Expires", str(expires))
        if authorization is not None:
            req.add(authorization[0], authorization[1])
        req.add("User-Agent", cfg.user_agent)
        self._outstanding = self._cseq
        self._out.append(req)

    def _answer_challenge(self, response: Response, expires: int) -> bool:
        """REGISTER again with credentials for this challenge; False when we cannot or already did."""
        cfg = self.config
        proxy = response.status == 407
        challenge = select_challenge(response.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"))
        if challenge is None or cfg.password is None or cfg.username is None:
            return False
        if self._auth_sent and not challenge.stale:
            return False
        if cfg.realm and challenge.realm != cfg.realm:
            return False
        try:
            value = build_authorization(challenge, "REGISTER", cfg.registrar, cfg.username, cfg.password)
        except AuthError:
            return False
        self._auth_sent = True
        self._send(expires, ("Proxy-Authorization" if proxy else "Authorization", value))
        return True

    def _challenged(self, response: Response, now: float) -> None:
        if self._answer_challenge(response, self._expires_asked):
            return
        status = response.status
        phrase = f"{status} {response.reason or ''}".strip()
        cfg = self.config
        if cfg.password is None or cfg.username is None:
            why = f"{phrase}: challenged but no password is configured"
        elif cfg.realm and (ch := select_challenge(response.get_all(
                "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"))) is not None and ch.realm != cfg.realm:
            why = f"{phrase}: challenge for realm {ch.realm!r}, the trunk's realm is {cfg.realm!r}"
        elif self._auth_sent:
            why = f"{phrase}: credentials rejected (check username/password)"
        else:
            why = f"{phrase}: no digest challenge we can answer"
        self._fail(now, status, why, self._retry_after(response))

    def _interval_too_brief(self, response: Response, now: float) -> None:
        try:
            minimum = int((response.get("Min-Expires") or "").strip())
        except ValueError:
            minimum = 0
        if minimum > self._expires_asked:
            self._expires_asked = minimum
            self._auth_sent = False
            self._send(expires=minimum)
            return
        self._fail(now, 423, "423 Interval Too Brief (no usable Min-Expires)", self._retry_after(response))

    def _registered(self, response: Response, now: float) -> None:
        granted = self._granted(response)
        if granted <= 0:
            self._fail(now, response.status, f"{response.status} {response.reason or ''}: our Contact is not "
                       "bound (expires 0)", None)
            return
        self.state = RegistrationState.REGISTERED
        self.last_error = ""
        self.failures = 0
        self.retry_at = None
        self.granted = granted
        self.registered_at = now
        self.expires_at = now + granted
        delay = refresh_delay(granted)
        self.refresh_at = now + delay
        self._events.append(Registered(granted, delay))

    def _granted(self, response: Response) -> int:
        """The binding time for our Contact: its expires parameter in the 2xx, else Expires, else asked."""
        ours = SipUri.parse(self.config.contact)
        try:
            contacts = response.contacts
        except SipParseError:
            contacts = []
        for na in contacts:
            if _same_contact(na, ours):
                value = na.params.get("expires")
                if value is not None and value.strip().isdigit():
                    return int(value)
        header = response.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header.strip())
        return self._expires_asked

    def _fail(self, now: float, status: int, reason: str, retry_after: float | None) -> None:
        self.state = RegistrationState.FAILED
        self.last_error = reason
        self.failures += 1
        self.refresh_at = None
        cfg = self.config
        delay = backoff_delay(self.failures, cfg.retry_base, cfg.retry_max)
        if retry_after is not None:
            delay = min(max(retry_after, 1.0), cfg.retry_after_max)
        self.retry_at = now + delay
        self._events.append(RegistrationFailed(status, reason, delay))

    @staticmethod
    def _retry_after(response: Response) -> float | None:
        value = response.get("Retry-After")
        if value is None:
            return None
        head = value.split(";", 1)[0].split("(", 1)[0].strip()
        return float(head) if head.isdigit() else None


def _same_contact(na: NameAddr, ours: SipUri) -> bool:
    """Whether a Contact of a 2xx is ours: same user, host, port, and ``line`` token when we sent one."""
    uri = na.uri
    if (uri.user or "") != (ours.user or "") or uri.host.lower().strip("[]") != ours.host.lower().strip("[]"):
        return False
    if (uri.port or 5060) != (ours.port or 5060):
        return False
    line = ours.params.get("line")
    return line is None or uri.params.get("line") == line
