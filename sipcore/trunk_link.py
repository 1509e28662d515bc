"""The asyncio glue that carries one trunk's REGISTER and OPTIONS over a `SipStack`.

`TrunkLink` is the only place where a trunk meets a loop: it resolves the carrier's host name without
blocking (with a `ServerLocator`, RFC 3263: SRV for the trunk's transport when its host has no port, then
A/AAAA; without one, ``loop.getaddrinfo``), builds the sans-IO cores (`OutboundRegistration`, `Qualify`) on the
`Trunk`, sends what they ask through the stack's transaction layer (each request its own client
transaction, the link or a probe as its owner), feeds responses, timeouts and transport failures back,
and keeps one ``loop.call_later`` timer at the cores' earliest deadline. ``stop()`` removes the binding
(REGISTER with Expires: 0) and waits briefly for the registrar's answer.

    links = await start_trunks(stack, group)     # after the stack's transports are bound
    ...
    await stop_trunks(links)                     # before the stack closes
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from .message import Request, Response, new_call_id, new_tag
from .outbound_registration import (
    OutboundRegistration, Registered, RegistrationConfig, RegistrationFailed, Unregistered,
)
from .qualify import Qualify, QualifyChanged
from .stack import SipStack
from .transaction import ClientTransaction
from .trunk import Trunk, TrunkGroup
from .locator import ServerLocator, as_flow
from .uri import SipUri, is_ip_literal, split_hostport

__all__ = ["TrunkLink", "start_trunks", "stop_trunks"]

log = logging.getLogger("callpath.sip.trunk")

RESOLVE_RETRY = 30.0   # seconds between attempts to resolve a carrier host name that did not resolve


class _Probe:
    """The owner of one OPTIONS probe's client transaction."""

    __slots__ = ("link", "probe")

    def __init__(self, link: "TrunkLink", probe: int) -> None:
        self.link = link
        self.probe = probe

    def on_response(self, tx: ClientTransaction, response: Response) -> None:
        self.link._probe_answered(self.probe)  # any response, whatever its status, proves the peer alive

    def on_timeout(self, tx: ClientTransaction) -> None:
        self.link._probe_failed(self.probe)

    def on_transport_failure(self, tx: ClientTransaction) -> None:
        self.link._probe_failed(self.probe)


class TrunkLink:
    """Registration and qualify of one trunk over a SIP stack (see the module docstring)."""

    def __init__(self, stack: SipStack, trunk: Trunk, *, user_agent: str = "callpath",
                 clock: Callable[[], float] = time.monotonic, retry_base: float = 10.0, retry_max: float = 600.0,
                 qualify_down_after: int = 2, locator: ServerLocator | None = None) -> None:
        self.stack = stack
        self.trunk = trunk
        self.locator = locator
        self.user_agent = user_agent
        self.clock = clock
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.qualify_down_after = qualify_down_after
        self._timer: asyncio.TimerHandle | None = None
        self._resolver: asyncio.Task | None = None
        self._removed: asyncio.Future | None = None
        self._stopped = False
        self._tag = new_tag()

    # -- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve the carrier (retried in the background when it fails) and start registering/probing."""
        if await self._resolve():
            self._start_cores()
        else:
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_until_done())

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop probing and refreshing; unREGISTER (Expires: 0) and wait up to ``timeout`` for the answer."""
        self._stopped = True
        if self._resolver is not None:
            self._resolver.cancel()
        trunk = self.trunk
        if trunk.qualify is not None:
            trunk.qualify.stop()
        if trunk.registration is not None:
            self._removed = asyncio.get_running_loop().create_future()
            if trunk.registration.stop(self.clock()):
                self._pump()
                try:
                    await asyncio.wait_for(asyncio.shield(self._removed), timeout)
                except asyncio.TimeoutError:
                    log.info("trunk %s: no answer to the unREGISTER within %.1fs", trunk.name, timeout)
            else:
                self._pump()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _resolve(self) -> bool:
        trunk = self.trunk
        if is_ip_literal(trunk.host):
            return True
        if self.locator is not None:
            return await self._locate()
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_DGRAM if trunk.config.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = await loop.getaddrinfo(trunk.host, trunk.port, type=kind)
        except (OSError, UnicodeError) as exc:
            trunk.resolve_error = f"cannot resolve {trunk.host}: {exc}"
            log.warning("trunk %s: %s", trunk.name, trunk.resolve_error)
            return False
        trunk.set_addresses(info[4][0] for info in infos)
        trunk.resolve_error = ""
        return bool(trunk.addresses)

    async def _locate(self) -> bool:
        """RFC 3263 with the trunk's transport: SRV when the configured host has no port, then A/AAAA."""
        trunk = self.trunk
        c = trunk.config
        explicit_port = split_hostport(c.host)[1]
        uri = SipUri("sip", None, trunk.host, explicit_port, {"transport": c.transport})
        loc = await self.locator.locate(uri)  # type: ignore[union-attr]
        if not loc.targets:
            trunk.resolve_error = f"cannot locate {trunk.host}: {loc.reason}"
            log.warning("trunk %s: %s", trunk.name, trunk.resolve_error)
            return False
        trunk.set_targets(as_flow(t) for t in loc.targets)
        trunk.resolve_error = ""
        log.info("trunk %s: %s located at %s", trunk.name, trunk.host, ", ".join(map(str, trunk.targets)))
        return True

    async def _resolve_until_done(self) -> None:
        while not self._stopped:
            await asyncio.sleep(RESOLVE_RETRY)
            if await self._resolve():
                self._start_cores()
                return

    def _start_cores(self) -> None:
        trunk = self.trunk
        c = trunk.config
        now = self.clock()
        if c.register:
            if c.transport not in self.stack.listeners:
                log.warning("trunk %s: no %s listener: the registered Contact names another transport's port",
                            trunk.name, c.transport)
            contact = self.stack.local_uri(c.transport, trunk.config.username or "trunk").copy()
            contact.params = {**contact.params, "line": trunk.line}
            trunk.registration = OutboundRegistration(RegistrationConfig(
                registrar=f"sip:{trunk.domain}", aor=f"sip:{c.username}@{trunk.domain}", contact=str(contact),
                expires=c.register_expires, username=trunk.auth_username, password=c.password or None,
                realm=c.realm or None, user_agent=self.user_agent, retry_base=self.retry_base,
                retry_max=self.retry_max), call_id=new_call_id(self.stack.advertise))
            trunk.registration.start(now)
        if c.qualify_interval:
            trunk.qualify = Qualify(float(c.qualify_interval), down_after=self.qualify_down_after)
            trunk.qualify.start(now)
            trunk.qualify.handle_timer(now)
        self._pump()

    # -- the pump -----------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Send what the cores queued, log their events, re-arm the timer at the earliest deadline."""
        trunk = self.trunk
        flow = trunk.next_hop
        reg = trunk.registration
        qualify = trunk.qualify
        if reg is not None:
            for req in reg.requests_to_send():
                if flow is None:
                    reg.transaction_failed(f"{trunk.host} is not resolved", self.clock())
                    continue
                self.stack.send_request(req, flow, owner=self)
            while (event := reg.next_event()) is not None:
                self._log_registration(event)
            if self._removed is not None and not reg.waiting and not self._removed.done():
                self._removed.set_result(None)     # the unREGISTER was answered (or failed): stop() may return
        if qualify is not None:
            for probe in qualify.probes_to_send():
                if flow is None:
                    qualify.probe_failed(probe, self.clock())
                    continue
                self.stack.send_request(self._options(), flow, owner=_Probe(self, probe))
            while (changed := qualify.next_event()) is not None:
                self._log_qualify(changed)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stopped:
            return
        times = [t for t in (
            self.trunk.registration.get_timer() if self.trunk.registration is not None else None,
            self.trunk.qualify.get_timer() if self.trunk.qualify is not None else None) if t is not None]
        if not times:
            return
        delay = max(0.0, min(times) - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        try:
            if self.trunk.registration is not None:
                self.trunk.registration.handle_timer(now)
            if self.trunk.qualify is not None:
                self.trunk.qualify.handle_timer(now)
        finally:
            self._pump()

    def _options(self) -> Request:
        trunk = self.trunk
        c = trunk.config
        params = "" if c.transport == "udp" else f";transport={c.transport}"
        req = Request("OPTIONS", f"sip:{trunk.hostport}{params}")
        req.add("Max-Forwards", "70")
        req.add("From", f"<sip:{trunk.from_user}@{trunk.domain}>;tag={self._tag}")
        req.add("To", f"<sip:{trunk.hostport}>")
        req.add("Call-ID", new_call_id(self.stack.advertise))
        req.add("CSeq", "1 OPTIONS")
        req.add("User-Agent", self.user_agent)
        req.add("Accept", "application/sdp")
        return req

    # -- transaction owner (REGISTER) ---------------------------------------------------------------
    def on_response(self, tx: ClientTransaction, response: Response) -> None:
        if self.trunk.registration is not None:
            self.trunk.registration.receive_response(response, self.clock())
            self._pump()

    def on_timeout(self, tx: ClientTransaction) -> None:
        if self.trunk.registration is not None:
            self.trunk.registration.transaction_failed("no answer from the registrar (timeout)", self.clock())
            self._pump()

    def on_transport_failure(self, tx: ClientTransaction) -> None:
        if self.trunk.registration is not None:
            self.trunk.registration.transaction_failed(f"transport failure towards {tx.flow}", self.clock())
            self._pump()

    def _probe_answered(self, probe: int) -> None:
        if self.trunk.qualify is not None:
            self.trunk.qualify.receive_answer(probe, self.clock())
            self._pump()

    def _probe_failed(self, probe: int) -> None:
        if self.trunk.qualify is not None:
            self.trunk.qualify.probe_failed(probe, self.clock())
            self._pump()

    # -- logs ---------------------------------------------------------------------------------------
    def _log_registration(self, event: object) -> None:
        trunk = self.trunk
        call_id = trunk.registration.call_id if trunk.registration is not None else None
        extra = {"call_id": call_id}
        if isinstance(event, Registered):
            log.info("trunk %s: registered for %ds (refresh in %.0fs)", trunk.name, event.expires,
                     event.refresh_in, extra=extra)
        elif isinstance(event, RegistrationFailed):
            log.warning("trunk %s: registration failed: %s (retry in %.0fs)", trunk.name, event.reason,
                        event.retry_in, extra=extra)
        elif isinstance(event, Unregistered):
            log.info("trunk %s: unregistered%s", trunk.name, " (confirmed)" if event.confirmed else "", extra=extra)

    def _log_qualify(self, changed: QualifyChanged) -> None:
        rtt = f", rtt {changed.rtt * 1000:.1f} ms" if changed.rtt is not None else ""
        level = logging.INFO if changed.state == "up" else logging.WARNING
        log.log(level, "trunk %s: %s%s", self.trunk.name, changed.state, rtt)


async def start_trunks(stack: SipStack, group: TrunkGroup, **options: object) -> list[TrunkLink]:
    """A started TrunkLink for every trunk of ``group`` (options: see TrunkLink)."""
    links = [TrunkLink(stack, trunk, **options) for trunk in group]  # type: ignore[arg-type]
    for link in links:
        await link.start()
    return links


async def stop_trunks(links: list[TrunkLink], timeout: float = 2.0) -> None:
    """Stop every link at once (the unREGISTERs go out together; at most ``timeout`` waiting)."""
    await asyncio.gather(*(link.stop(timeout) for link in links), return_exceptions=True)
