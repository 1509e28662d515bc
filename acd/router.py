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

Ring groups (``[[calls.groups]]``): a number that rings several users, all at once or one after another,
the caller optionally answered first and parked with music while they ring (a small queue). Conference rooms
(``[[calls.conferences]]``): every caller of the number talks with the others. Both are always anchored.

Trunks (docs/trunks.md): a call from a trunk is routed by its DID to the local user whose username or
extension it is (else to ``[calls] inbound_target``, else 404), always anchored, counting one of the trunk's
channels. An authenticated local caller dialling a number that is no local user goes out through the trunks
in failover order (408/5xx/no answer -> next trunk; busy, 404, 6xx -> the caller gets that answer). Nobody
else is sent out: an unauthenticated or trunk caller never reaches a trunk (no toll fraud through callpath).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from media.sdp import SdpError, SessionDescription
from sipcore.b2bua import mirror_status
from sipcore.callcontrol import Call
from sipcore.routing import (
    WEBRTC, AcceptCall, ContactResolver, Decision, ProxyCall, RejectCall, RouteRequest, Target, media_transport_for,
)
from sipcore.uri import SipUri

__all__ = ["ANCHOR_MODES", "PbxRouter", "RingGroup", "needs_anchoring"]

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


@dataclass(frozen=True, slots=True)
class RingGroup:
    """A number ringing ``members`` (usernames or extensions) in parallel or in sequence."""

    number: str
    members: tuple[str, ...]
    strategy: str = "parallel"
    ring_timeout: float = 20.0
    park: bool = False          # answer at once and play music on hold while the members ring


class PbxRouter:
    """Local users are rung on all their contacts, proxied or anchored as the module docstring says."""

    def __init__(self, contacts: ContactResolver, *, anchor: str = "auto", ring_timeout: float = 60.0,
                 media: bool = True, accounts: Callable[[str], Awaitable[Any]] | None = None,
                 trunks: Any = None, inbound_target: str = "", groups: Sequence[RingGroup] = (),
                 conferences: Sequence[str] = (), numbers: dict[str, str] | None = None) -> None:
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"anchor must be one of {', '.join(ANCHOR_MODES)}, not {anchor!r}")
        self.contacts = contacts
        self.anchor = anchor
        self.ring_timeout = ring_timeout
        self.media = media
        self.accounts = accounts           # username or extension -> enabled account or None
        self.trunks = trunks               # sipcore.trunk.TrunkGroup, or None
        self.inbound_target = inbound_target
        self.groups = {g.number: g for g in groups}
        self.conferences = frozenset(conferences)
        self.numbers = dict(numbers or {})    # [[sip.b2bua]]: number -> the SIP URI it calls, anchored
        self.stats = {"proxied": 0, "anchored": 0, "rejected": 0, "from_trunks": 0, "to_trunks": 0,
                      "groups": 0, "conferences": 0}

    async def route(self, request: RouteRequest) -> Decision:
        if request.source_trunk is not None:
            return await self._from_trunk(request)
        special = self._service(request.request.uri.user or "")
        if special is not None:
            return special
        callee = request.callee
        if callee is None:
            number = request.request.uri.user or ""
            if self.media and request.caller is not None and self.trunks is not None and len(self.trunks) \
                    and number:
                self.stats["to_trunks"] += 1
                return AcceptCall(self.dial_out(number))
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

    def _service(self, number: str) -> Decision | None:
        """A ring group, conference or back-to-back number: answered by call control (503 without media)."""
        target = self.numbers.get(number)
        if target is not None:
            self.stats["anchored"] += 1
            return AcceptCall(self.ring_uri(target))
        group = self.groups.get(number)
        if group is None and number not in self.conferences:
            return None
        if not self.media:
            self.stats["rejected"] += 1
            return RejectCall(503, "Service Unavailable (media is off)")
        if group is not None:
            self.stats["groups"] += 1
            return AcceptCall(self.ring_group(group))
        self.stats["conferences"] += 1
        return AcceptCall(self.conference_room(number))

    async def _from_trunk(self, request: RouteRequest) -> Decision:
        trunk = self.trunks.get(request.source_trunk) if self.trunks is not None else None
        did = trunk.did_of(request.request) if trunk is not None else (request.request.uri.user or "")
        special = self._service(did)
        if special is not None:
            return special
        account = await self.accounts(did) if self.accounts is not None and did else None
        if account is None and self.inbound_target and self.accounts is not None:
            account = await self.accounts(self.inbound_target)
        if account is None:
            self.stats["rejected"] += 1
            log.info("call from trunk %s: no route for DID %r", request.source_trunk, did,
                     extra={"call_id": request.request.call_id})
            return RejectCall(404, "Not Found (no route for this number)")
        if not self.media:
            self.stats["proxied"] += 1
            return ProxyCall() if request.callee is not None else RejectCall(503, "Service Unavailable (no media)")
        self.stats["from_trunks"] += 1
        log.info("call from trunk %s for DID %s: ringing %s", request.source_trunk, did, account.username,
                 extra={"call_id": request.request.call_id})
        return AcceptCall(self.ring_user(account.username, trunk=trunk))

    def ring_user(self, username: str, trunk: Any = None) -> Callable[[Call], Awaitable[None]]:
        """A handler that rings ``username`` and, if nobody answers, gives the caller the callee's failure
        (a call from ``trunk`` holds one of its channels meanwhile: 503 when it has none left)."""

        async def handler(call: Call) -> None:
            if trunk is not None and not trunk.acquire():
                call.reject(503, "Service Unavailable (trunk at max_channels)")
                return
            try:
                result = await call.ring([Target.user(username)], timeout=self.ring_timeout)
                if result.channel is None:
                    if not call.is_over:
                        call.reject(mirror_status(result.status))
                    return
                await call.ended()
            finally:
                if trunk is not None:
                    trunk.release()

        return handler

    def ring_uri(self, target: str) -> Callable[[Call], Awaitable[None]]:
        """A handler calling a fixed SIP URI (a [[sip.b2bua]] number's target), offering WebRTC to a
        ``;transport=ws|wss`` target and RTP to the others."""
        transport = media_transport_for(SipUri.parse(target).transport or "udp")

        async def handler(call: Call) -> None:
            result = await call.ring([Target.uri(target, transport=transport)], timeout=self.ring_timeout)
            if result.channel is None:
                if not call.is_over:
                    call.reject(mirror_status(result.status))
                return
            await call.ended()

        return handler

    def ring_group(self, group: RingGroup) -> Callable[[Call], Awaitable[None]]:
        """A handler ringing a group's members; a parked caller hears music until one answers."""

        async def handler(call: Call) -> None:
            if group.park:
                await call.answer()
                if call.music_on_hold:
                    await call.play(call.music_on_hold, loop=True)
            targets = [Target.user(m, timeout=group.ring_timeout) for m in group.members]
            result = await call.ring(targets, strategy=group.strategy, timeout=group.ring_timeout)
            if result.channel is None:
                if not call.is_over:
                    if group.park:
                        call.hangup()
                    else:
                        call.reject(mirror_status(result.status))
                return
            await call.ended()

        return handler

    def conference_room(self, number: str) -> Callable[[Call], Awaitable[None]]:
        """A handler answering the caller into the room named after ``number``."""

        async def handler(call: Call) -> None:
            await call.conference(f"room:{number}")
            await call.ended()

        return handler

    def dial_out(self, number: str) -> Callable[[Call], Awaitable[None]]:
        """A handler that calls ``number`` through the trunks in failover order (docs/trunks.md)."""

        async def handler(call: Call) -> None:
            assert self.trunks is not None
            last = (503, "Service Unavailable (no trunk available)")
            for route in self.trunks.candidates(number):
                if not route.acquire():
                    continue
                try:
                    result = await call.ring([route.target(timeout=self.ring_timeout)])
                    if result.channel is not None:
                        await call.ended()
                        return
                finally:
                    route.release()
                last = (result.status, result.reason)
                if call.is_over or not self.trunks.is_failover_status(result.status):
                    break
                log.info("trunk %s failed with %d: trying the next", route.name, result.status,
                         extra={"call_id": call.id})
            if not call.is_over:
                call.reject(mirror_status(last[0]), None if last[0] != 503 else last[1])

        return handler
