"""ICE-lite (RFC 8445 §2.5, with RFC 7675 consent freshness) for many WebRTC legs on one UDP port.

A media worker owns one UDP port and one ``IceLiteAgent``. Each browser leg gets an ``IceLeg`` with
random local credentials (``a=ice-ufrag``/``a=ice-pwd`` of our SDP) and the browser's credentials from
its SDP. As a lite agent we never send checks: the browser (always the controlling side) sends STUN
Binding Requests, which the agent demultiplexes by USERNAME (``"<our ufrag>:<their ufrag>"``),
authenticates with the leg's local password (MESSAGE-INTEGRITY) and answers. A request carrying
USE-CANDIDATE nominates its source address: that becomes the leg's ``selected_address``. Every other
datagram (DTLS, SRTP) is demultiplexed by its first byte (RFC 7983) and by its source address, which
must be one an authenticated check came from::

    agent = IceLiteAgent()
    leg = agent.create_leg(remote_ufrag, remote_pwd, now=now)
    sdp_lines = leg.sdp_attributes("203.0.113.7", 40000)      # ice-ufrag, ice-pwd, candidate...
    hit = agent.receive_datagram(data, addr, now)             # STUN is answered internally
    if hit is not None: leg, kind = hit                       # DTLS or RTP for that leg
    for data, addr in agent.datagrams_to_send(): sock.sendto(data, addr)
    agent.get_timer() / agent.handle_timer(now)               # consent freshness sweep
    agent.next_event()                                        # CandidateNominated, ConsentExpired

Consent: the browser repeats its checks about every 5 s; a leg without an authenticated check for
``consent_timeout`` (30 s, RFC 7675) gets ``ConsentExpired`` and its media is no longer demultiplexed.
"""
from __future__ import annotations

import enum
import secrets
import string
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from aioice.stun import Class, Method

from . import stun
from .stun import PacketKind

__all__ = [
    "ICE_LITE_ATTRIBUTE",
    "CandidateNominated",
    "ConsentExpired",
    "IceEvent",
    "IceLeg",
    "IceLegState",
    "IceLiteAgent",
    "host_candidate",
]

ICE_LITE_ATTRIBUTE = ("ice-lite", None)
"""The session-level ``a=ice-lite`` attribute, as an (name, value) pair."""

_ICE_CHARS = string.ascii_letters + string.digits  # a subset of ice-char (RFC 8839 §5.4), SDP-safe
_HOST_TYPE_PREFERENCE = 126
_LOCAL_PREFERENCE = 65535


def _random_ice_string(length: int) -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


def host_candidate(address: str, port: int, *, foundation: str = "1", component: int = 1) -> str:
    """An ``a=candidate`` value for a UDP host candidate (RFC 8839 §5.1, priority per RFC 8445 §5.1.2.1)."""
    priority = (_HOST_TYPE_PREFERENCE << 24) + (_LOCAL_PREFERENCE << 8) + (256 - component)
    return f"{foundation} {component} udp {priority} {address} {port} typ host"


class IceLegState(enum.Enum):
    NEW = "new"  # no authenticated check yet
    CONNECTED = "connected"  # a pair has been nominated
    EXPIRED = "expired"  # consent lost (RFC 7675): no more media
    CLOSED = "closed"  # removed from the agent


class IceLeg:
    """The ICE state of one leg: credentials, the addresses checks came from, the nominated one."""

    __slots__ = (
        "leg_id",
        "local_ufrag",
        "local_pwd",
        "remote_ufrag",
        "remote_pwd",
        "selected_address",
        "addresses",
        "consent_at",
        "state",
        "remote_tie_breaker",
    )

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None,
        remote_pwd: str | None,
        leg_id: Hashable | None = None,
    ) -> None:
        self.leg_id = leg_id
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.remote_pwd = remote_pwd
        self.selected_address: tuple[str, int] | None = None
        """The nominated remote address (USE-CANDIDATE): where media for this leg goes."""
        self.addresses: set[tuple[str, int]] = set()
        """Remote addresses that passed an authenticated check (media from them is accepted)."""
        self.consent_at: float | None = None
        self.state = IceLegState.NEW
        self.remote_tie_breaker: int | None = None

    @property
    def send_address(self) -> tuple[str, int] | None:
        """Where to send media: the nominated address (None before nomination)."""
        return self.selected_address

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Set the browser's ice-ufrag/ice-pwd (from its offer or answer)."""
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd

    def local_candidates(self, public_ip: str | Sequence[str], port: int) -> list[str]:
        """``a=candidate`` values (without ``a=candidate:``): one host candidate per advertised address.

        ``public_ip`` is what the browser should send to, the NAT's public address when the worker
        sits behind a 1:1 NAT (the bound address is not what matters for ICE-lite).
        """
        addresses = [public_ip] if isinstance(public_ip, str) else list(public_ip)
        return [host_candidate(ip, port, foundation=str(i + 1)) for i, ip in enumerate(addresses)]

    def sdp_attributes(
        self, public_ip: str | Sequence[str], port: int, *, end_of_candidates: bool = True
    ) -> list[tuple[str, str | None]]:
        """The media-level ICE attributes of our SDP: ice-ufrag, ice-pwd, candidate(s), end-of-candidates.

        ``a=ice-lite`` (``ICE_LITE_ATTRIBUTE``) belongs at session level.
        """
        attrs: list[tuple[str, str | None]] = [("ice-ufrag", self.local_ufrag), ("ice-pwd", self.local_pwd)]
        attrs += [("candidate", c) for c in self.local_candidates(public_ip, port)]
        if end_of_candidates:
            attrs.append(("end-of-candidates", None))
        return attrs

    def __repr__(self) -> str:
        return (
            f"IceLeg({self.local_ufrag!r}, leg_id={self.leg_id!r}, state={self.state.value}, "
            f"selected={self.selected_address})"
        )


@dataclass(frozen=True)
class CandidateNominated:
    """The browser nominated ``address`` for ``leg`` (first nomination, or a switch to a new address)."""

    leg: IceLeg
    address: tuple[str, int]


@dataclass(frozen=True)
class ConsentExpired:
    """No authenticated check for ``leg`` within the consent timeout: stop sending to it."""

    leg: IceLeg


IceEvent = CandidateNominated | ConsentExpired


class IceLiteAgent:
    """The ICE-lite responder of one UDP port, shared by many legs (see the module docstring)."""

    def __init__(
        self,
        *,
        consent_timeout: float = 30.0,
        sweep_interval: float = 1.0,
        software: str | None = None,
        reply_unauthenticated: bool = True,
    ) -> None:
        self.consent_timeout = consent_timeout
        self.sweep_interval = sweep_interval
        self.software = software
        self.reply_unauthenticated = reply_unauthenticated
        """Answer bad or unknown credentials with 401 (RFC 5389 §10.1.2); False drops them silently."""
        self.legs: dict[str, IceLeg] = {}
        self._by_address: dict[tuple[str, int], IceLeg] = {}
        self._out: list[tuple[bytes, tuple[str, int]]] = []
        self._events: deque[IceEvent] = deque()
        self._next_sweep: float | None = None

    # ---- legs -----------------------------------------------------------------------------------

    def create_leg(
        self,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        *,
        leg_id: Hashable | None = None,
        now: float | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
    ) -> IceLeg:
        """A new leg with fresh random local credentials (8-char ufrag, 24-char pwd) unless given.

        ``now`` starts its consent clock (otherwise the next timer sweep does): a leg the browser
        never checks expires after ``consent_timeout`` too.
        """
        if local_ufrag is None:
            local_ufrag = _random_ice_string(8)
            while local_ufrag in self.legs:  # pragma: no cover - 62**8 space
                local_ufrag = _random_ice_string(8)
        elif local_ufrag in self.legs:
            raise ValueError(f"ICE ufrag {local_ufrag!r} is already in use on this port")
        if len(local_ufrag) < 4 or ":" in local_ufrag:
            raise ValueError("an ICE ufrag needs at least 4 characters and no ':'")
        local_pwd = local_pwd or _random_ice_string(24)
        if len(local_pwd) < 22:
            raise ValueError("an ICE password needs at least 22 characters")
        leg = IceLeg(local_ufrag, local_pwd, remote_ufrag, remote_pwd, leg_id)
        leg.consent_at = now
        self.legs[local_ufrag] = leg
        if now is not None and self._next_sweep is None:
            self._next_sweep = now + self.sweep_interval
        return leg

    def restart(self, leg: IceLeg, remote_ufrag: str, remote_pwd: str, *, new_local: bool = True,
                now: float | None = None) -> None:
        """An ICE restart (RFC 8445 §9): the browser's new credentials and, when we answer its restart,
        fresh local ones (checks with the old ones get 401 from now on). Media keeps flowing to the
        selected address until a check with the new credentials nominates one (``CandidateNominated``);
        a leg whose consent had expired is revived."""
        if new_local:
            if self.legs.get(leg.local_ufrag) is leg:
                del self.legs[leg.local_ufrag]
            ufrag = _random_ice_string(8)
            while ufrag in self.legs:  # pragma: no cover - 62**8 space
                ufrag = _random_ice_string(8)
            leg.local_ufrag, leg.local_pwd = ufrag, _random_ice_string(24)
            self.legs[ufrag] = leg
        leg.set_remote_credentials(remote_ufrag, remote_pwd)
        if leg.state is IceLegState.EXPIRED:
            leg.state = IceLegState.NEW
            if leg.selected_address is not None:   # media may go there again until a new nomination
                leg.state = IceLegState.CONNECTED
                self._by_address[leg.selected_address] = leg
                leg.addresses.add(leg.selected_address)
        if now is not None:
            leg.consent_at = now

    def remove_leg(self, leg: IceLeg) -> None:
        """Forget a leg: its checks get 401 and its media is dropped from now on."""
        if self.legs.get(leg.local_ufrag) is leg:
            del self.legs[leg.local_ufrag]
        self._unmap(leg)
        leg.state = IceLegState.CLOSED
        if not self.legs:
            self._next_sweep = None

    def leg_for_address(self, addr: tuple[str, int]) -> IceLeg | None:
        return self._by_address.get(addr)

    # ---- sans-IO interface ----------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, addr: tuple[str, int], now: float
    ) -> tuple[IceLeg, PacketKind] | None:
        """Handle one datagram from ``addr``.

        STUN is consumed (answers are queued for ``datagrams_to_send``) and None returned. DTLS and
        RTP/RTCP from an address a leg has authenticated return ``(leg, kind)``; anything else, None.
        """
        if not data:
            return None
        first = data[0]
        if first < 4:
            self._handle_stun(data, addr, now)
            return None
        leg = self._by_address.get(addr if len(addr) == 2 else (addr[0], addr[1]))
        if leg is None:
            return None
        if 127 < first < 192:
            return leg, PacketKind.RTP
        if 19 < first < 64:
            return leg, PacketKind.DTLS
        return None

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        """STUN responses to send, as (datagram, address)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """Next consent sweep (None while there are no legs, or before any ``now`` was seen)."""
        return self._next_sweep

    def handle_timer(self, now: float) -> None:
        """Expire legs whose consent is older than ``consent_timeout``."""
        if self._next_sweep is None or now < self._next_sweep:
            return
        limit = now - self.consent_timeout
        for leg in list(self.legs.values()):
            if leg.state is IceLegState.EXPIRED:
                continue
            if leg.consent_at is None:
                leg.consent_at = now
            elif leg.consent_at <= limit:
                leg.state = IceLegState.EXPIRED
                self._unmap(leg)
                self._events.append(ConsentExpired(leg))
        self._next_sweep = now + self.sweep_interval if self.legs else None

    # ---- STUN -----------------------------------------------------------------------------------

    def _handle_stun(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        try:
            message = stun.parse(data)
        except (stun.StunError, ValueError):
            return  # not STUN, or a corrupt one: silently dropped (RFC 5389 §7.3)
        if message.message_method != Method.BINDING or message.message_class != Class.REQUEST:
            return  # indications (keepalives) and stray responses need no answer
        if self._next_sweep is None and self.legs:
            self._next_sweep = now + self.sweep_interval
        addr = (addr[0], addr[1])
        attrs = message.attributes
        username = attrs.get("USERNAME")
        if "FINGERPRINT" not in attrs or username is None or "MESSAGE-INTEGRITY" not in attrs:
            self._reply_unauthenticated(message, addr, 400, "Bad Request")
            return
        local_ufrag, _, remote_ufrag = username.partition(":")
        leg = self.legs.get(local_ufrag)
        if (
            leg is None
            or leg.state is IceLegState.EXPIRED
            or (leg.remote_ufrag is not None and remote_ufrag != leg.remote_ufrag)
            or not message.check_message_integrity(leg.local_pwd.encode("utf8"))
        ):
            self._reply_unauthenticated(message, addr, 401, "Unauthorized")
            return
        if "ICE-CONTROLLED" in attrs:
            # Both sides think they are controlled. A lite agent is always controlled and cannot
            # switch (RFC 8445 §6.1.1, §7.3.1.1): tell the peer to switch to controlling.
            self._out.append(
                (stun.binding_error(message, 487, "Role Conflict", leg.local_pwd, software=self.software), addr)
            )
            return
        if "ICE-CONTROLLING" in attrs:
            leg.remote_tie_breaker = attrs["ICE-CONTROLLING"]
        # authenticated: consent refreshed, address valid for media
        leg.consent_at = now
        previous = self._by_address.get(addr)
        if previous is not leg:
            if previous is not None:
                previous.addresses.discard(addr)
            self._by_address[addr] = leg
            leg.addresses.add(addr)
        if "USE-CANDIDATE" in attrs and leg.selected_address != addr:
            leg.selected_address = addr
            leg.state = IceLegState.CONNECTED
            self._events.append(CandidateNominated(leg, addr))
        self._out.append((stun.binding_success(message, addr, leg.local_pwd, software=self.software), addr))

    def _reply_unauthenticated(self, message: stun.Message, addr: tuple[str, int], code: int, reason: str) -> None:
        if self.reply_unauthenticated:
            self._out.append((stun.binding_error(message, code, reason, software=self.software), addr))

    def _unmap(self, leg: IceLeg) -> None:
        for address in leg.addresses:
            if self._by_address.get(address) is leg:
                del self._by_address[address]
        leg.addresses.clear()
