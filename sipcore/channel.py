"""The parties of a call (`Channel`: one SIP dialog and one media leg) and the typed events call control
reports about them to the application (docs/callcontrol.md)."""
from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from .message import Request
from .routing import RTP
from .ua import IncomingCall, OutgoingCall

if TYPE_CHECKING:
    from .callcontrol import Call

__all__ = [
    "CallControlError", "CallControlEvent", "Channel", "ChannelAnswered", "ChannelEnded", "ChannelFailed",
    "ChannelHeld", "ChannelResumed", "ChannelRinging", "DtmfReceived", "RingResult", "better_failure",
    "info_digit",
]


class CallControlError(RuntimeError):
    """A call-control verb could not be carried out (the call is over, the media plane failed...)."""


# -- events to the application ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChannelRinging:
    channel: "Channel"
    status: int


@dataclass(frozen=True, slots=True)
class ChannelAnswered:
    channel: "Channel"


@dataclass(frozen=True, slots=True)
class ChannelFailed:
    """An outbound channel was not answered: its final status (408 no answer, 486 busy, 487 cancelled...)."""

    channel: "Channel"
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelEnded:
    """A channel is over: ``by`` is "local", "remote", "timeout" or "media"."""

    channel: "Channel"
    by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChannelHeld:
    channel: "Channel"


@dataclass(frozen=True, slots=True)
class ChannelResumed:
    channel: "Channel"


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A digit from a channel: ``source`` is "info" (SIP INFO) or the media's (rfc4733, inband)."""

    channel: "Channel"
    digit: str
    source: str


CallControlEvent = Union[ChannelRinging, ChannelAnswered, ChannelFailed, ChannelEnded, ChannelHeld,
                         ChannelResumed, DtmfReceived]


@dataclass(frozen=True, slots=True)
class RingResult:
    """What `Call.ring` came to: the answering channel, or None with the most telling failure status."""

    channel: "Channel | None"
    status: int = 200
    reason: str = ""


def better_failure(a: tuple[int, str] | None, b: tuple[int, str]) -> tuple[int, str]:
    """RFC 3261 §16.7-like choice among failures: 6xx wins, then the lowest class, 408/487 last."""
    if a is None:
        return b
    def rank(x: tuple[int, str]) -> tuple[int, int]:
        status = x[0]
        if 600 <= status < 700:
            return (0, status)
        if status in (408, 487):
            return (3, status)
        return (1 if status < 500 else 2, status)
    return b if rank(b) < rank(a) else a


# -- channels ----------------------------------------------------------------------------------------------
class Channel:
    """One party of a call: a SIP dialog and its media leg."""

    def __init__(self, call: "Call", sip: IncomingCall | OutgoingCall | None, leg: str, *, inbound: bool,
                 label: str = "", transport: str = RTP) -> None:
        self._call = weakref.ref(call)    # weak: Call -> channels -> call would be a cycle per call (tune_gc)
        self.sip = sip
        self.leg = leg
        self.inbound = inbound
        self.label = label
        self.transport = transport
        self.partner: Channel | None = None
        self.codec: str | None = None
        self.held = False
        self.answered = False             # 2xx sent (inbound) / received (outbound)
        self.ended = False                # its dialog is over (or never began)
        self.reported = False             # ...and the call has dealt with it (leg closed, partner told)
        self.failure: tuple[int, str] | None = None   # outbound: the final status it failed with
        self.early_media = False          # outbound: its 183 SDP was taken
        self.media_open = False
        self.playing = False              # something was played to it that a connect must stop
        self.early_sdp: bytes | None = None   # outbound: the 183's SDP; inbound: our answer sent in a 183
        self.rung_for: Channel | None = None  # outbound: the party it was rung for
        self.transferring = False         # a transfer moves its partner: its end must not hang the partner up
        self.request: Request | None = None   # inbound: its INVITE
        self.room: str | None = None      # the conference it is in
        self.negotiated: asyncio.Future | None = None   # inbound late offer: resolved when the ACK's answer is in

    @property
    def call(self) -> "Call":
        """The call this channel belongs to (alive as long as anyone uses the channel for that call)."""
        call = self._call()
        if call is None:
            raise ReferenceError(f"the call of {self.leg} is gone")
        return call

    def __repr__(self) -> str:
        return f"<Channel {self.leg} {'in' if self.inbound else 'out'} {self.label}>"

    @property
    def sip_call_id(self) -> str:
        return self.sip.call_id if self.sip is not None else ""


def info_digit(body: bytes, content_type: str | None) -> str | None:
    """The digit of an INFO: application/dtmf-relay (``Signal=5``) or application/dtmf (``5``)."""
    ctype = (content_type or "").lower()
    text = body.decode("utf-8", "replace").strip()
    if "dtmf-relay" in ctype:
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == "signal" and value.strip():
                return value.strip()[:1].upper()
        return None
    if "dtmf" in ctype and text:
        return text[:1].upper()
    return None
