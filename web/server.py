"""The composition root: builds storage, the SIP stack, registrar/proxy/B2BUA and the web app from Settings.

`serve(settings)` runs everything in one event loop (uvloop when installed): SIP over UDP/TCP/TLS on
their own sockets, and the Starlette app (with SIP over WebSocket at /ws) under uvicorn. With
``[media] enabled`` it also spawns the media worker processes (media.control.start_workers) and hands
the B2BUA a ``media.client.MediaPool`` over their control connections, so back-to-back calls are media-anchored.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from media.client import MediaClient, MediaPool
from media.events import decode_event
from sipcore.auth import DigestAuthenticator
from sipcore.cluster import Node, default_node_uri
from sipcore.limiter import SourceLimiter
from sipcore.location import LocationService, open_location
from sipcore.locator import ServerLocator
from sipcore.proxy import Proxy, ProxyConfig
from sipcore.regevents import BindingEvent, FlowLost, Refreshed
from sipcore.registrar import RegistrarPolicy
from sipcore.stack import SipStack
from storage import Storage

from .logs import configure_logging
from .runtime import GcSchedule, GcWatch, tune_gc
from .settings import Settings

log = logging.getLogger("callpath.server")

PURGE_INTERVAL = 1.0  # seconds between purges of expired bindings (each one publishes Expired events)


@dataclass(slots=True)
class CachedAccount:
    """An immutable snapshot of a SIP account for the proxy."""

    username: str
    extension: str | None
    ha1_md5: str
    ha1_sha256: str
    enabled: bool


class StoredUsers:
    """UserDirectory over storage with a short cache: one DB read per user per `ttl`, not per REGISTER."""

    def __init__(self, storage: Storage, ttl: float = 30.0, negative_ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self.storage = storage
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._by_name: dict[str, tuple[float, CachedAccount | None]] = {}
        self._by_ext: dict[str, tuple[float, CachedAccount | None]] = {}

    @staticmethod
    def _snapshot(user: Any) -> CachedAccount | None:
        if user is None:
            return None
        return CachedAccount(user.username, user.extension, user.ha1_md5, user.ha1_sha256, user.enabled)

    async def _cached(self, cache: dict, key: str, fetch: Any) -> CachedAccount | None:
        now = time.monotonic()
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        account = self._snapshot(await fetch(key))
        if len(cache) >= self.max_entries:
            cache.clear()
        cache[key] = (now + (self.ttl if account else self.negative_ttl), account)
        return account

    async def get(self, username: str) -> CachedAccount | None:
        """Account by username."""
        return await self._cached(self._by_name, username, self.storage.get_sip_user)

    async def by_extension(self, extension: str) -> CachedAccount | None:
        """Account by extension number."""
        return await self._cached(self._by_ext, extension, self.storage.get_sip_user_by_extension)

    def invalidate(self) -> None:
        """Forget everything (after an account changed)."""
        self._by_name.clear()
        self._by_ext.clear()


def _secret(data_dir: Path, name: str) -> bytes:
    """A random secret persisted under data_dir (nonce signing survives restarts)."""
    path = data_dir / name
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    path.write_text(key.hex())
    os.chmod(path, 0o600)
    return key


def _node_id(data_dir: Path, configured: str) -> str:
    """`sip.node_id`, else the id generated on the first start and kept in data_dir/node-id."""
    if configured:
        return configured
    path = data_dir / "node-id"
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    node = f"{socket.gethostname().split('.')[0][:40] or 'node'}-{secrets.token_hex(4)}"
    node = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in node)
    path.write_text(node + "\n")
    return node


def _log_registration_event(event: BindingEvent) -> None:
    """Every binding change in the log (refreshes at debug level: they are the bulk)."""
    level = logging.DEBUG if isinstance(event, Refreshed) else logging.INFO
    if not log.isEnabledFor(level):
        return
    extra = f" (removed: {event.removed})" if isinstance(event, FlowLost) else ""
    log.log(level,
            "registration %s %s contact %s over %s %s node %s%s; %d left", type(event).__name__, event.aor,
            event.contact, event.transport or "-", "%s:%s" % event.source if event.source else "-",
            event.node or "-", extra, event.remaining, extra={"call_id": event.binding.call_id or None})


def _self_signed(data_dir: Path, host: str) -> tuple[str, str]:
    """A self-signed certificate for SIP TLS when none is configured (generated once)."""
    cert_path, key_path = data_dir / "sip-tls.crt", data_dir / "sip-tls.key"
    if cert_path.exists() and key_path.exists():
        return str(cert_path), str(key_path)
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False).sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


class StartupError(RuntimeError):
    """callpath cannot start as configured (a port in use, bad certificate...): said in one line, no traceback."""


class MediaStartError(StartupError):
    """[media] is enabled but the workers could not be started or reached."""


async def _listening(what: str, bind: Any) -> int:
    """Await a bind; an OSError (port in use, address not here) becomes a StartupError naming the socket."""
    try:
        return await bind
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise StartupError(f"cannot listen on {what}: {cause.strerror or cause}") from exc


class Application:
    """Everything one callpath process runs, built from Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: Storage | None = None
        self.stack: SipStack | None = None
        self.proxy: Proxy | None = None
        self.location: LocationService | None = None
        self.users: StoredUsers | None = None
        self.hep: Any = None
        self.ua: Any = None
        self.b2bua: Any = None
        self.router: Any = None                 # acd.router.PbxRouter: what each new INVITE becomes
        self.callcontrol: Any = None            # sipcore.callcontrol.CallControl: the calls a router accepts
        self._purge_task: asyncio.Task | None = None
        self._flow_tasks: set[asyncio.Task] = set()  # bindings being dropped after their connection closed
        self.node: Node | None = None
        self._media_watch: asyncio.Task | None = None
        self.media_watch_interval = 1.0         # how often the worker processes are checked for life
        self.media_restarts = 0
        self.listening: list[str] = []
        self.media_workers: list[Any] = []      # media.control.WorkerProcess handles
        self.media_clients: list[Any] = []      # one media.client.MediaClient per worker
        self.media_pool: MediaPool | None = None
        self.media_lines: list[str] = []        # "media worker N on ICE port X, RTP ports A-B"
        self.gc_watch = GcWatch()               # pauses of the cyclic GC (installed by the server's main)
        self.trunks: Any = None                 # sipcore.trunk.TrunkGroup ([[trunks]], docs/trunks.md)
        self.trunk_links: list[Any] = []        # sipcore.trunk_link.TrunkLink per trunk (REGISTER, OPTIONS)

    async def start(self) -> None:
        """Open storage and the location service, bind the SIP transports, wire the TU."""
        s = self.settings
        sip = s.sip
        data = s.data_path
        data.mkdir(parents=True, exist_ok=True)
        self.storage = Storage(s.database_url)
        self.users = StoredUsers(self.storage)
        node_id = _node_id(data, sip.node_id)
        self.location = open_location(sip.location, node=node_id)
        self.location.subscribe(_log_registration_event)
        if sip.hep:
            from sipcore.hep import HepExporter

            self.hep = HepExporter.from_target(sip.hep)
            await self.hep.start()
        stack = self.stack = SipStack(sip.advertise_host, max_message_size=sip.max_message_size,
                                      trace=sip.sip_trace, hep=self.hep)
        stack.overload_lag = sip.overload_lag_ms / 1000.0
        lim = s.limits
        stack.layer.max_transactions = lim.max_transactions
        stack.layer.retry_after = lim.retry_after
        stack.max_connections = lim.max_connections
        if sip.udp_port:
            port = await _listening(f"udp {sip.listen}:{sip.udp_port}", stack.listen_udp(sip.listen, sip.udp_port))
            self.listening.append(f"udp:{sip.listen}:{port}")
        if sip.tcp_port:
            port = await _listening(f"tcp {sip.listen}:{sip.tcp_port}",
                                    stack.listen_stream("tcp", sip.listen, sip.tcp_port))
            self.listening.append(f"tcp:{sip.listen}:{port}")
        if sip.tls_port:
            cert, key = (sip.tls_cert, sip.tls_key) if sip.tls_cert else _self_signed(data, sip.advertise_host)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            port = await _listening(f"tls {sip.listen}:{sip.tls_port}",
                                    stack.listen_stream("tls", sip.listen, sip.tls_port, ctx))
            self.listening.append(f"tls:{sip.listen}:{port}")
        if s.web.port:
            stack.add_listener("wss" if s.web.tls_cert else "ws", s.web.listen, s.web.port)
        authenticator = DigestAuthenticator(_secret(data, "nonce.key"), sip.realm, sip.auth_algorithms, sip.nonce_ttl)
        config = ProxyConfig(domain=sip.realm, auth=sip.auth, ephemeral_secret=sip.ephemeral_secret,
                             policy=RegistrarPolicy(sip.min_expires, sip.max_expires, sip.default_expires))
        self.proxy = Proxy(stack, config, self.users, self.location, authenticator)
        try:
            secret = await self.location.shared_secret()
        except Exception as exc:  # noqa: BLE001 - Redis unreachable: say so in one line
            raise StartupError(f"cannot reach the location service {sip.location}: {exc}") from exc
        self.node = self.proxy.node = Node(node_id, sip.node_uri or default_node_uri(
            sip.advertise_host, stack.listeners["udp"].port if "udp" in stack.listeners else 0,
            stack.listeners["tcp"].port if "tcp" in stack.listeners else 0), secret)
        stack.on_connection_closed(self._connection_closed)
        try:
            stale = await self.location.drop_stale_flows()
        except Exception:  # noqa: BLE001 - they expire on time instead
            log.exception("dropping the bindings of this node's earlier connections failed")
        else:
            if stale:
                log.info("dropped %d bindings over connections of this node's previous run", stale)
        log.info("SIP node %s, reached by other nodes at %s", self.node.id, self.node.uri)
        self.proxy.max_tasks = lim.max_tasks
        self.proxy.max_calls = lim.max_calls
        self.proxy.retry_after = lim.retry_after
        self.proxy.locator = _locator(sip, stack)
        if s.media.enabled:
            await self._start_media()
        self._wire_b2bua()
        await self._start_trunks()
        stack.start_load_monitor()
        stack.set_limiter(SourceLimiter(lim.source_limit, lim.source_window, lim.block_time,
                                        [*lim.trusted, *self._trunk_networks()]),
                          kernel_filter=lim.kernel_filter)
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop())

    def _wire_b2bua(self) -> None:
        """The user agent (calls callpath takes part in), the router with call control, and the
        back-to-back numbers."""
        from acd.moh import music_on_hold
        from acd.router import PbxRouter, RingGroup
        from sipcore.b2bua import BackToBack
        from sipcore.callcontrol import CallControl
        from sipcore.ua import UserAgent

        assert self.stack is not None and self.proxy is not None
        s = self.settings
        self.ua = UserAgent(self.stack, locator=self.proxy.locator)
        self.proxy.ua = self.ua
        legs = self.media_pool if hasattr(self.media_pool, "leg_offer") else None   # a media plane with legs
        if legs is not None:
            self.callcontrol = CallControl(
                self.ua, legs, self.proxy, domain=s.sip.realm, media_timeout=s.media.control_timeout,
                music_on_hold=music_on_hold(s.calls.music_on_hold, s.data_path), rtp_timeout=s.calls.rtp_timeout,
                is_local=self.proxy.is_local_domain)
            self.proxy.callcontrol = self.callcontrol
        self.router = PbxRouter(self.proxy, anchor=s.calls.anchor, ring_timeout=s.calls.ring_timeout,
                                media=legs is not None, accounts=self.proxy.account_of,
                                inbound_target=s.calls.inbound_target,
                                groups=[RingGroup(g.number, tuple(g.members), g.strategy, g.ring_timeout, g.park)
                                        for g in s.calls.groups],
                                conferences=[c.number for c in s.calls.conferences],
                                numbers={e.number: e.target for e in s.sip.b2bua} if legs is not None else {})
        self.proxy.router = self.router
        numbers = {e.number: e.target for e in self.settings.sip.b2bua}
        if numbers and legs is None:
            # without a media plane a [[sip.b2bua]] number is relayed by the signalling-only B2BUA
            self.b2bua = BackToBack(self.ua, numbers)
            self.proxy.b2bua = self.b2bua

    def _on_media_event(self, message: dict[str, Any]) -> None:
        """An event a worker pushed (DTMF, play done, media timeout, browser leg down) or a client made (worker
        lost): logged, decoded and routed by the pool to the owner of its leg."""
        log.info("media event %s", message, extra={"call_id": message.get("call_id") or message.get("leg")})
        event = decode_event(message)
        if event is not None and self.media_pool is not None:
            self.media_pool.dispatch(event)

    async def _start_media(self) -> None:
        """Spawn the media workers (blocking: in a thread) and connect a control client to each."""
        from media.control import start_workers
        from media.worker import MediaSettings as WorkerSettings

        s = self.settings
        m = s.media
        certificates = s.data_path / "dtls"
        certificates.mkdir(parents=True, exist_ok=True)
        template = WorkerSettings(
            bind_host=m.listen or s.sip.listen, advertised_address=m.advertise or s.sip.advertise_host, ice_port=m.ice_port,
            rtp_port_min=m.rtp_port_min, rtp_port_max=m.rtp_port_max, certificate_dir=str(certificates),
            prefer_passthrough=m.prefer_passthrough, c_relay=m.c_relay, opus_complexity=m.opus_complexity,
            opus_bitrate=m.opus_bitrate, opus_fec=m.opus_fec, opus_dtx=m.opus_dtx,
        )
        try:
            self.media_workers = await asyncio.to_thread(start_workers, m.workers, template)
        except Exception as exc:
            raise MediaStartError(f"media workers did not start: {exc}") from exc
        try:
            for worker in self.media_workers:
                client = await asyncio.wait_for(MediaClient.open(
                    worker.address, on_event=self._on_media_event, timeout=m.control_timeout, name=worker.index), 10)
                self.media_clients.append(client)
                status = await client.ping()
                own = worker.settings
                self.media_lines.append(f"media worker {worker.index} on ICE port {status.get('ice_port')}, "
                                        f"RTP ports {own.rtp_port_min}-{own.rtp_port_max}")
        except Exception as exc:
            await self._stop_media()
            raise MediaStartError(f"cannot reach the media workers: {type(exc).__name__}: {exc}") from exc
        self.media_pool = MediaPool(list(self.media_clients))
        log.info("media: %d worker(s), SDP address %s", len(self.media_workers), template.advertised_address)
        self._media_watch = asyncio.get_running_loop().create_task(self._watch_media())

    async def _watch_media(self) -> None:
        """Replace a media worker process that died (a crash, the OOM killer, a kill -9): the same ports and
        RTP range, a new control connection; the pool forgets the calls whose media it held, and the B2BUA
        ends them. A worker that keeps dying is restarted at most 5 times a minute."""
        restarts: dict[int, list[float]] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.media_watch_interval)
            for index, worker in enumerate(list(self.media_workers)):
                if worker.process.is_alive():
                    continue
                recent = [t for t in restarts.get(index, []) if loop.time() - t < 60.0]
                restarts[index] = recent
                if len(recent) >= 5:
                    continue                      # in a crash loop: wait for the minute to pass
                recent.append(loop.time())
                try:
                    await self._replace_worker(index, worker)
                except Exception:  # noqa: BLE001 - the watch must go on for the other workers
                    log.exception("media worker %d: replacing it failed", index)

    async def _replace_worker(self, index: int, worker: Any) -> None:
        """Spawn worker ``index`` again, connect to it, and hand the pool the new client."""
        from media.control import spawn_worker

        log.error("media worker %d (pid %s) died with exit code %s: starting a new one", index,
                  worker.process.pid, worker.process.exitcode)
        fresh = await asyncio.to_thread(spawn_worker, index, worker.settings)
        try:
            client = await asyncio.wait_for(MediaClient.open(
                fresh.address, on_event=self._on_media_event, timeout=self.settings.media.control_timeout,
                name=index), 10)
        except BaseException:
            await asyncio.to_thread(fresh.stop)
            raise
        old = self.media_clients[index]
        with contextlib.suppress(Exception):
            await old.close()
        self.media_workers[index] = fresh
        self.media_clients[index] = client
        self.media_restarts += 1
        if self.media_pool is None:
            return
        lost = self.media_pool.replace(index, client)      # the owners of its legs get WorkerLost
        if lost.calls or lost.legs:
            log.error("media worker %d: the media of %d call(s) and %d leg(s) was lost with it: %s", index,
                      len(lost.calls), len(lost.legs), ", ".join((lost.calls + lost.legs)[:20]))
        for call_id in lost.calls:                # hang them up rather than leave the parties in silence
            if self.b2bua is not None and hasattr(self.b2bua, "media_lost"):
                self.b2bua.media_lost(call_id)

    async def _stop_media(self) -> None:
        """Close the control connections, then stop the worker processes (SIGTERM, join in a thread)."""
        if self._media_watch is not None:
            self._media_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._media_watch
            self._media_watch = None
        clients, self.media_clients = self.media_clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        workers, self.media_workers = self.media_workers, []
        if workers:
            await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers), return_exceptions=True)
        self.media_pool = None

    # -- trunks (docs/trunks.md) -------------------------------------------------------------------
    async def _start_trunks(self) -> None:
        """Build the trunk group from [[trunks]], hand it to the proxy (its inbound hosts are not challenged)
        and start each trunk's registration and qualify over the stack (after the transports are bound: the
        registration Contact names our listener)."""
        from sipcore.trunk import TrunkGroup
        from sipcore.trunk_link import start_trunks

        assert self.stack is not None and self.proxy is not None
        self.trunks = TrunkGroup.from_configs(t.to_config() for t in self.settings.trunks)
        self.proxy.trunks = self.trunks
        if self.router is not None:
            self.router.trunks = self.trunks
        if len(self.trunks):
            self.trunk_links = await start_trunks(self.stack, self.trunks, locator=self.proxy.locator)
            for trunk in self.trunks:
                log.info("trunk %s: %s via %s (register %s, qualify %s)", trunk.name, trunk.config.host,
                         trunk.config.transport, "on" if trunk.config.register else "off",
                         f"every {trunk.config.qualify_interval}s" if trunk.config.qualify_interval else "off")

    def _trunk_networks(self) -> list[str]:
        """The trunks' inbound hosts, exempt from the per-source flood limiter like limits.trusted."""
        if self.trunks is None:
            return []
        return [str(net) for trunk in self.trunks for net in trunk.networks]

    async def _stop_trunks(self) -> None:
        """unREGISTER every trunk (Expires: 0), waiting at most 2 s for the carriers' answers."""
        from sipcore.trunk_link import stop_trunks

        links, self.trunk_links = self.trunk_links, []
        if links:
            await stop_trunks(links, timeout=2.0)

    def _connection_closed(self, flow: Any) -> None:
        """A TCP/TLS/WebSocket connection closed: drop (and announce) the bindings registered over it now."""
        if self.location is None:
            return

        async def drop() -> None:
            try:
                assert self.location is not None
                await self.location.flow_lost(flow)
            except Exception:  # noqa: BLE001 - logged; the bindings then expire on time instead
                log.exception("dropping the bindings of the closed connection %s failed", flow)

        task = asyncio.get_running_loop().create_task(drop())
        self._flow_tasks.add(task)
        task.add_done_callback(self._flow_tasks.discard)

    async def _purge_loop(self) -> None:
        """Expired bindings are dropped (and Expired published) within PURGE_INTERVAL, looked up or not."""
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            try:
                assert self.location is not None
                n = await self.location.purge_expired()
                if n:
                    log.info("purged %d expired bindings", n)
            except Exception:
                log.exception("binding purge failed")

    async def stop(self) -> None:
        """Close sockets and storage."""
        if self._purge_task:
            self._purge_task.cancel()
        if self.b2bua is not None and hasattr(self.b2bua, "close"):
            with contextlib.suppress(Exception):
                await self.b2bua.close()
        if self.callcontrol is not None:
            with contextlib.suppress(Exception):
                await self.callcontrol.close()
        with contextlib.suppress(Exception):
            await self._stop_trunks()
        if self.stack:
            await self.stack.close()
        if self._flow_tasks:
            await asyncio.gather(*self._flow_tasks, return_exceptions=True)
        await self._stop_media()
        if self.location:
            await self.location.close()
        if self.hep:
            await self.hep.close() if asyncio.iscoroutinefunction(self.hep.close) else self.hep.close()
        if self.storage:
            await self.storage.aclose()


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _main(settings: Settings) -> int:
    from .app import build_app

    app = Application(settings)
    try:
        await app.start()
    except StartupError as exc:
        print(f"callpath: error: {exc}", file=sys.stderr, flush=True)
        await app.stop()
        return 1
    tune_gc()
    app.gc_watch.install()
    gc_schedule = GcSchedule(full_every=float(settings.server.gc_full_interval))
    gc_task = asyncio.get_running_loop().create_task(gc_schedule.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    web_task = None
    if settings.web.port:
        import uvicorn

        tls = {}
        if settings.web.tls_cert:
            tls = {"ssl_certfile": settings.web.tls_cert, "ssl_keyfile": settings.web.tls_key or None}
        config = uvicorn.Config(build_app(app), host=settings.web.listen, port=settings.web.port,
                                log_level="warning", lifespan="off", ws="websockets-sansio"
                                if _has_ws_sansio() else "auto", ws_max_size=settings.sip.max_message_size,
                                **tls)
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        try:  # bind here, so a port in use is a one-line error rather than uvicorn exiting the process
            web_socket = _bind_tcp(settings.web.listen, settings.web.port)
        except OSError as exc:
            print(f"callpath: error: cannot listen on http {settings.web.listen}:{settings.web.port}: "
                  f"{exc.strerror or exc}", file=sys.stderr, flush=True)
            await app.stop()
            return 1
        web_task = loop.create_task(server.serve(sockets=[web_socket]))
        while not server.started:
            if web_task.done():
                with contextlib.suppress(BaseException):
                    await web_task
                print("callpath: error: the web server did not start (see the log above)", file=sys.stderr, flush=True)
                await app.stop()
                return 1
            await asyncio.sleep(0.02)
        scheme = "https+wss" if settings.web.tls_cert else "http+ws"
        app.listening.append(f"{scheme}:{settings.web.listen}:{settings.web.port} (SIP over WebSocket at /ws)")
    for where in app.listening:
        print(f"callpath: listening on {where}", flush=True)
    for line in app.media_lines:
        print(f"callpath: {line}", flush=True)
    print(f"callpath: SIP domain {settings.sip.realm}; auth {'on' if settings.sip.auth else 'off'}; "
          f"database {settings.database_url}", flush=True)
    print("callpath: add a SIP account with: callpath user add alice --password secret --extension 1001", flush=True)
    print("callpath ready", flush=True)
    await stop.wait()
    log.info("shutting down")
    gc_task.cancel()
    if web_task is not None:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(web_task, 5)
    await app.stop()
    return 0


def _bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the web server (IPv6 when the address is one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _has_ws_sansio() -> bool:
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
        return True
    except ImportError:
        return False


def serve(settings: Settings) -> int:
    """Run callpath until SIGINT/SIGTERM; returns the exit code."""
    configure_logging(settings.server.log_level, settings.server.log_format)
    loop_kind = _install_uvloop()
    log.info("starting on %s", loop_kind)
    return asyncio.run(_main(settings))


def _locator(sip: Any, stack: SipStack) -> ServerLocator:
    """The RFC 3263 locator the proxy and the UA share: [sip] dns_servers (empty: resolv.conf); NAPTR/SRV
    may pick the transports we listen on; AAAA only when SIP listens on IPv6."""
    transports = tuple(t for t in ("udp", "tcp", "tls") if t in stack.listeners) or ("udp", "tcp", "tls")
    families = ("A", "AAAA") if ":" in sip.listen else ("A",)
    return ServerLocator(sip.dns_servers, transports=transports, families=families)
