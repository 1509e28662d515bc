"""The default router: what a PBX does with a new call to a local extension or username.

The call rings the callee's registered contacts. It stays *proxied* (callpath only relays signalling, RTP
flows phone to phone) when both sides are SIP phones with a codec in common; it is *anchored* (answered by
callpath's call control, media through the media workers) when it must be for the two to hear each other:

- either side is a browser: its INVITE came over WebSocket or offers WebRTC (UDP/TLS/RTP/SAVPF), or the
  callee has a contact registered over WebSocket (browsers accept only DTLS-SRTP, phones rarely speak it);
- the caller offers no G.711 (PCMU/PCMA): every phone and trunk speaks G.711, so a caller without it (Opus
  only, G.722 only) would share no codec with the callee; the media plane transcodes.

``[calls] anchor`` overrides it: ``always`` anchors every call (recording, music on hold on every call),
``never`` proxies every call (a pure registrar/proxy, as Kamailio without rtpengine). Without a media plane
calls are always proxied.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from media.sdp import SdpError, SessionDescription
from sipcore.b2bua import mirror_status
from sipcore.callcontrol import (
    WEBRTC, AcceptCall, Call, ContactResolver, Decision, ProxyCall, RejectCall, RouteRequest, Target,
)

__all__ = ["ANCHOR_MODES", "PbxRouter", "needs_anchoring"]

log = logging.getLogger("callpath.acd.router")

ANCHOR_MODES = ("auto", "always", "never")
_G711 = frozenset({"pcmu", "pcma"})


def offer_traits(body: bytes | None) -> tuple[bool, bool]:
    """(is a WebRTC offer, offers G.711) of an INVITE's SDP; an absent or unreadable offer is (False, True)."""
    if not body:
        return False, True
    try:
        sd = SessionDescription.parse(body)
    except (SdpError, ValueError, UnicodeDecodeError):
        return False, True
    audio = [m for m in sd.media if m.media == "audio" and not m.is_rejected]
    if not audio:
        return False, True
    webrtc = any(m.proto.upper() == "UDP/TLS/RTP/SAVPF" for m in audio)
    g711 = any(rtp.encoding.lower() in _G711 for m in audio for rtp in m.rtpmap.values()) or any(
        f in ("0", "8") for m in audio for f in m.formats)
    return webrtc, g711


def needs_anchoring(request: RouteRequest, callee_transports: list[str]) -> str | None:
    """Why a call must go through the media plane (None: the two sides can talk directly)."""
    if request.flow.transport.lower() in ("ws", "wss"):
        return "the caller is a browser"
    webrtc, g711 = offer_traits(request.request.body)
    if webrtc:
        return "the caller offers WebRTC"
    if WEBRTC in callee_transports:
        return "the callee is a browser"
    if not g711:
        return "the caller offers no G.711"
    return None


class PbxRouter:
    """Local users are rung on all their contacts, proxied or anchored as the module docstring says."""

    def __init__(self, contacts: ContactResolver, *, anchor: str = "auto", ring_timeout: float = 60.0,
                 media: bool = True) -> None:
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"anchor must be one of {', '.join(ANCHOR_MODES)}, not {anchor!r}")
        self.contacts = contacts
        self.anchor = anchor
        self.ring_timeout = ring_timeout
        self.media = media
        self.stats = {"proxied": 0, "anchored": 0, "rejected": 0}

    async def route(self, request: RouteRequest) -> Decision:
        callee = request.callee
        if callee is None:
            self.stats["rejected"] += 1
            return RejectCall(404)
        if not self.media or self.anchor == "never":
            self.stats["proxied"] += 1
            return ProxyCall()
        why: str | None = "always" if self.anchor == "always" else None
        if why is None:
            transports = [c.transport for c in await self.contacts.contacts_of(callee.username)]
            why = needs_anchoring(request, transports)
        if why is None:
            self.stats["proxied"] += 1
            return ProxyCall()
        self.stats["anchored"] += 1
        log.info("call to %s anchored: %s", callee.username, why, extra={"call_id": request.request.call_id})
        return AcceptCall(self.ring_user(callee.username))

    def ring_user(self, username: str) -> Callable[[Call], Awaitable[None]]:
        """A handler that rings ``username`` and, if nobody answers, gives the caller the callee's failure."""

        async def handler(call: Call) -> None:
            result = await call.ring([Target.user(username)], timeout=self.ring_timeout)
            if result.channel is None:
                if not call.is_over:
                    call.reject(mirror_status(result.status))
                return
            await call.ended()

        return handler
