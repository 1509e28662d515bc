"""Session timers (RFC 4028): keep-alive refreshes of a call and the BYE when they stop.

A call that asks for them (``Session-Expires`` in the INVITE or, for our own INVITEs, in the 2xx) is refreshed
by one side, the *refresher*, with a re-INVITE or UPDATE every half interval; the other side ends the call
when no refresh came by ``expires - min(32, expires / 3)`` seconds (§10). callpath supports them as UAS and as
UAC ("timer" in Supported) but never imposes them on a call that did not ask.

`negotiate_uas` decides the 2xx's headers (or the 422) from an INVITE's; `SessionTimer` is the sans-IO state of
one dialog: fed the current time, it says when the next action is due and which (refresh or expire).
"""
from __future__ import annotations

from dataclasses import dataclass

from .message import Request, Response

__all__ = ["MIN_SE", "SessionTimer", "TimerTerms", "negotiate_uac", "negotiate_uas", "parse_session_expires"]

MIN_SE = 90              # seconds: the smallest interval we accept (RFC 4028 §4: at least 90)


@dataclass(frozen=True, slots=True)
class TimerTerms:
    """The agreed interval and who refreshes (``we_refresh``): what a dialog's SessionTimer runs on."""

    expires: int
    we_refresh: bool
    refresher: str                 # "uac" | "uas", as written in Session-Expires


def parse_session_expires(value: str | None) -> tuple[int, str | None] | None:
    """``Session-Expires: 1800;refresher=uac`` -> (1800, "uac"); None when absent or malformed."""
    if not value:
        return None
    head, *params = [p.strip() for p in value.split(";")]
    if not head.isdigit():
        return None
    refresher = None
    for p in params:
        name, _, val = p.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return int(head), refresher


def _supports_timer(message: Request | Response) -> bool:
    for header in ("supported", "require"):
        for value in message.get_all(header):
            if any(tok.strip().lower() == "timer" for tok in value.split(",")):
                return True
    return False


def negotiate_uas(invite: Request, min_se: int = MIN_SE) -> tuple[TimerTerms | None, list[tuple[str, str]], int]:
    """Our answer to an INVITE's timer request: (terms, headers for the 2xx, 0) or (None, [Min-SE], 422).

    No Session-Expires: (None, [], 0), no timer. A UAC that supports timer refreshes unless it named us.
    """
    asked = parse_session_expires(invite.get("session-expires"))
    if asked is None:
        return None, [], 0
    expires, refresher = asked
    if expires < min_se:
        return None, [("Min-SE", str(min_se))], 422
    uac_supports = _supports_timer(invite)
    if refresher is None:
        refresher = "uac" if uac_supports else "uas"
    headers = [("Session-Expires", f"{expires};refresher={refresher}")]
    if uac_supports:
        headers.append(("Require", "timer"))
    return TimerTerms(expires, refresher == "uas", refresher), headers, 0


def negotiate_uac(response: Response) -> TimerTerms | None:
    """The terms a 2xx to our INVITE imposes (we are the UAC), or None when it asks for no timer."""
    asked = parse_session_expires(response.get("session-expires"))
    if asked is None:
        return None
    expires, refresher = asked
    refresher = refresher or "uac"
    return TimerTerms(expires, refresher == "uac", refresher)


class SessionTimer:
    """One dialog's session timer: ``due(now)`` says what to do and when (refresh at half the interval
    when we refresh; expire at ``expires - min(32, expires/3)`` when the other side does)."""

    def __init__(self, terms: TimerTerms, now: float) -> None:
        self.terms = terms
        self.last_refresh = now

    def refreshed(self, now: float, terms: TimerTerms | None = None) -> None:
        """A refresh (ours answered, or theirs received) restarted the interval."""
        if terms is not None:
            self.terms = terms
        self.last_refresh = now

    def due(self) -> tuple[str, float]:
        """("refresh", at) or ("expire", at), in the clock of ``now``."""
        expires = self.terms.expires
        if self.terms.we_refresh:
            return "refresh", self.last_refresh + expires / 2
        return "expire", self.last_refresh + expires - min(32.0, expires / 3)
