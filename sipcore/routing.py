"""What sipcore's call control needs from the application and the media plane (docs/callcontrol.md).

The router interface: for each new INVITE the proxy asks a `Router` for a `Decision` — `ProxyCall()`,
`AcceptCall(handler)` (callpath answers as a B2BUA; ``handler(call)`` gets a `sipcore.callcontrol.Call`) or
`RejectCall(status)`. Targets: whom `Call.ring` rings (`Target.user`, `Target.uri`, `Target.contacts`) and the
`Contact` each resolves to. The media contract: the `LegMedia` verbs a call's legs are driven with (implemented
by ``media.pool.MediaPool``; sipcore never imports media) and the `LegDescription` they answer with.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

from .message import Request
from .transaction import Flow
from .uri import SipUri

if TYPE_CHECKING:
    from .callcontrol import Call

__all__ = [
    "AcceptCall", "Contact", "ContactResolver", "Decision", "FATAL_MEDIA_EVENTS", "LegDescription", "LegMedia",
    "ProxyCall", "RTP", "RejectCall", "RouteRequest", "Router", "SDES", "Target", "WEBRTC", "media_transport_for",
]

RTP = "rtp"            # plain RTP/AVP (phones, trunks)
SDES = "sdes"          # RTP/SAVP keyed by a=crypto
WEBRTC = "webrtc"      # ICE-lite + DTLS-SRTP (browsers)
FATAL_MEDIA_EVENTS = frozenset({"MediaTimeout", "LegDown", "WorkerLost"})


# -- the media contract ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LegDescription:
    """What a media verb says about a leg: our SDP (when it made one), the codec, the direction, hold."""

    sdp: bytes | None = None
    codec: str | None = None
    direction: str = "sendrecv"
    hold: bool = False


class LegMedia(Protocol):
    """The media verbs call control needs (docs/callcontrol.md; implemented by media.client.MediaPool).

    ``group`` keeps the legs of one call on one worker; ``owner`` receives the leg's media events; a leg
    opened with ``timeout`` raises MediaTimeout after that many seconds without RTP (not while on hold).
    Any exception (or a reply slower than ``CallControl.media_timeout``) is a failure of that verb.
    """

    def leg_offer(self, leg: str, *, group: str, transport: str | None = None, direction: str = "sendrecv",
                  owner: Callable[[Any], None] | None = None, codecs: Sequence[str] | None = None,
                  dtmf: str | None = None, timeout: float | None = None) -> Awaitable[LegDescription]: ...

    def leg_answer(self, leg: str, sdp: bytes) -> Awaitable[LegDescription]: ...

    def leg_remote_offer(self, leg: str, sdp: bytes, *, group: str, owner: Callable[[Any], None] | None = None,
                         timeout: float | None = None) -> Awaitable[LegDescription]: ...

    def leg_create_answer(self, leg: str, *, prefer: str | None = None) -> Awaitable[LegDescription]: ...

    def leg_close(self, leg: str) -> Awaitable[Any]: ...

    def connect(self, a: str, b: str) -> Awaitable[Any]: ...

    def disconnect(self, leg: str) -> Awaitable[Any]: ...

    def play(self, leg: str, files: list[str], *, loop: bool = False, mix: bool = False) -> Awaitable[Any]: ...

    def stop_play(self, leg: str) -> Awaitable[Any]: ...

    def conference_join(self, conference: str, leg: str, mode: str = "talk",
                        to: str | None = None) -> Awaitable[Any]: ...

    def conference_leave(self, leg: str) -> Awaitable[Any]: ...


def media_transport_for(sip_transport: str) -> str:
    """The media a contact reached over ``sip_transport`` can take: WebRTC over WebSocket, else plain RTP."""
    return WEBRTC if sip_transport.lower() in ("ws", "wss") else RTP


# -- routing -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RouteRequest:
    """A new INVITE as the router sees it, after authentication and the callee lookup."""

    request: Request
    flow: Flow
    caller: Any = None          # the authenticated account (username, extension), or None
    callee: Any = None          # the local account the Request-URI names, or None
    source_trunk: str | None = None


@dataclass(frozen=True, slots=True)
class ProxyCall:
    """Proxy the INVITE statefully to the callee's registered contacts (what happens without a router)."""


@dataclass(frozen=True, slots=True)
class AcceptCall:
    """Answer as a B2BUA: ``handler(call)`` runs in its own task with the new `Call`."""

    handler: Callable[["Call"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RejectCall:
    """Refuse the INVITE with a final status."""

    status: int = 404
    reason: str | None = None


Decision = Union[ProxyCall, AcceptCall, RejectCall]


class Router(Protocol):
    """Decides what each new INVITE becomes (the ACD's router, or a PBX's default one)."""

    def route(self, request: RouteRequest) -> Awaitable[Decision]: ...


# -- targets -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Contact:
    """One place to send an INVITE for a target: a registered contact (with its flow and Path) or a URI."""

    uri: SipUri
    aor: str                              # what goes in the To header
    flow: Flow | None = None              # the registration's connection / NAT address; None: resolve the URI
    path: tuple[str, ...] = ()            # Path (RFC 3327): the route to reach it
    transport: str = RTP                  # the media to offer: RTP, SDES or WEBRTC
    credentials: tuple[str, str] | None = None   # for a 401/407 (trunks)
    codecs: tuple[str, ...] = ()          # codecs to offer, in order (a trunk's); empty: the media plane's
    dtmf: str | None = None               # rfc4733 | inband | info (a trunk's); None: the media plane's
    from_uri: str | None = None           # the From to present (a trunk's caller id); None: the caller's, at our domain
    response_timeout: float | None = None  # no response at all (not even 100) within it: failed with 408


@dataclass(frozen=True, slots=True)
class Target:
    """Whom to ring: a local user (all its contacts), a SIP URI, or explicit contacts (a trunk's)."""

    kind: str                             # "user" | "uri" | "contacts"
    value: Any
    timeout: float | None = None          # seconds this target rings (sequential: each its own)
    label: str = ""
    headers: tuple[tuple[str, str], ...] = ()   # extra INVITE headers (Replaces for an attended transfer)

    @classmethod
    def user(cls, name: str, timeout: float | None = None, headers: Sequence[tuple[str, str]] = ()) -> Target:
        return cls("user", name, timeout, name, tuple(headers))

    @classmethod
    def uri(cls, uri: str, timeout: float | None = None, transport: str = RTP,
            headers: Sequence[tuple[str, str]] = ()) -> Target:
        return cls("uri", (uri, transport), timeout, uri, tuple(headers))

    @classmethod
    def contacts(cls, contacts: Sequence[Contact], timeout: float | None = None, label: str = "") -> Target:
        return cls("contacts", tuple(contacts), timeout, label or ",".join(str(c.uri) for c in contacts))


class ContactResolver(Protocol):
    """Turns a local username or extension into its reachable contacts ([] when none: 480)."""

    def contacts_of(self, user: str) -> Awaitable[list[Contact]]: ...
