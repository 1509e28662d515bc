"""The asyncio adapter around the sans-IO SIP core: transports in, transactions, TU dispatch, sends out.

This is the only SIP module that touches sockets or the event loop. Transports (UDP, TCP, TLS here;
WebSocket from web/) call `SipStack.receive(data, flow)`; the transaction layer's outbox is flushed
to the transports after each input; one loop timer tracks the layer's earliest timer.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import socket
import ssl
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .errors import SipParseError
from . import sockfilter
from .limiter import SourceLimiter
from .loadmonitor import LagStats
from .message import PING, Request, Response, StreamFramer, make_response, parse_message, validate
from .transaction import (
    AckReceived, Flow, RequestReceived, ResponseReceived, StrayResponse, TransactionLayer,
    TransactionTerminated, TransactionTimeout, TransportFailure,
)
from .uri import SipUri, format_host, is_ip_literal, split_quoted

log = logging.getLogger("callpath.sip")

# Bytes queued in user space to a stream peer that does not read before it is dropped (the kernel's socket
# buffer holds more before this fills: a slow but live phone or browser never gets near it).
MAX_WRITE_BUFFER = 64 * 1024
PARTIAL_MESSAGE_TIMEOUT = 30.0  # seconds a stream connection may hold an incomplete message (slowloris)
TIMER_SLACK = 0.01  # seconds: SIP timers (T1 = 500 ms) tolerate firing up to 10 ms early


class TransactionUser(Protocol):
    """What the stack dispatches to: the registrar/proxy/UA core."""

    def on_request(self, tx: Any, request: Request, cancelled: Any) -> None: ...
    def on_ack(self, request: Request, flow: Flow) -> None: ...
    def on_stray_response(self, response: Response, flow: Flow) -> None: ...


class TransactionOwner(Protocol):
    """An object owning client/server transactions (proxy context, dialog): gets their events."""

    def on_response(self, tx: Any, response: Response) -> None: ...
    def on_timeout(self, tx: Any) -> None: ...
    def on_transport_failure(self, tx: Any) -> None: ...


@dataclass(slots=True)
class Listener:
    """One listening socket: its transport and the address advertised in Via/Record-Route."""

    transport: str
    host: str
    port: int
    advertise: str


class SipStack:
    """Owns the transports and the transaction layer, and pumps messages between them and the TU."""

    def __init__(self, advertise: str, *, max_message_size: int = 65535, trace: bool = False,
                 hep: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.advertise = advertise
        self.max_message_size = max_message_size
        self.trace = trace
        self.hep = hep
        self.clock = clock
        self.listeners: dict[str, Listener] = {}
        self.layer = TransactionLayer(self.via_for)
        self.tu: TransactionUser | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._conns: dict[int, "StreamConnection"] = {}
        self._conn_by_remote: dict[tuple[str, str, int], int] = {}
        # Connection ids start at a random point: a flow token (in a stored binding, in a Record-Route) made by
        # an earlier process, or by another node, then never names one of this process's connections.
        self._conn_ids = itertools.count(secrets.randbelow(1 << 40) + 1)
        self._servers: list[asyncio.base_events.Server] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pending_connects: dict[tuple[str, str, int], list[bytes]] = {}
        self.client_ssl: ssl.SSLContext | None = None
        self.stats = {"parse_errors": 0, "bad_requests": 0, "messages_in": 0, "messages_out": 0, "send_errors": 0,
                      "timer_wakeups": 0,
                      "dropped_invalid": 0, "connections_refused": 0, "slow_connections_closed": 0,
                      "stalled_connections_closed": 0}
        self.overload_lag = 0.25      # seconds of event-loop lag that count as overload (0: never)
        self.loop_lag = 0.0           # last measured lag of the event loop, decaying (the overload guard's input)
        self.lag_stats = LagStats()   # every lag sample of the last minutes (p99/max for the operator)
        self._lag_probe: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.limiter: SourceLimiter | None = None   # per-source flood limiter (set_limiter)
        self.kernel_filter = True                   # drop blocked sources' datagrams in the kernel too
        self.filter_state = {"addresses": 0, "attaches": 0, "errors": 0}
        self._limiter_timer: asyncio.TimerHandle | None = None
        self.max_connections = 0                    # open TCP/TLS/WebSocket connections (0: no cap)
        self._connection_closed: list[Callable[[Flow], None]] = []

    # -- set-up ------------------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int) -> int:
        """Bind the UDP transport; returns the bound port."""
        loop = self._loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self._udp = transport  # type: ignore[assignment]
        bound = transport.get_extra_info("sockname")[1]
        self.listeners["udp"] = Listener("udp", host, bound, self.advertise)
        return bound

    async def listen_stream(self, transport: str, host: str, port: int, ssl_ctx: ssl.SSLContext | None = None) -> int:
        """Bind a TCP or TLS listener; returns the bound port."""
        loop = self._loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: StreamConnection(self, transport), host, port, ssl=ssl_ctx,
                                          reuse_address=True)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        self.listeners[transport] = Listener(transport, host, bound, self.advertise)
        return bound

    def add_listener(self, transport: str, host: str, port: int) -> None:
        """Register a transport served elsewhere (WebSocket via the web app)."""
        self.listeners[transport] = Listener(transport, host, port, self.advertise)

    # -- flood limiter ---------------------------------------------------------------------------
    def set_limiter(self, limiter: SourceLimiter | None, kernel_filter: bool = True) -> None:
        """Count every message per source before parsing; drop blocked sources (see limiter.py)."""
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self.kernel_filter = kernel_filter and sockfilter.supported()
        if self._loop is None:
            try:  # a stack serving WebSocket only has bound no socket of its own
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        if self._limiter_timer is None:
            self._housekeeping()

    def admit(self, ip: str) -> bool:
        """Whether a message (or connection) from `ip` may be processed; counts it in the limiter."""
        lim = self.limiter
        if lim is None:
            return True
        ok = lim.allow(ip)
        if lim.dirty:
            # A source was just blocked: filter it in the kernel now (one setsockopt, ~10 us), not after
            # this loop iteration, which may read thousands more of its queued datagrams first.
            self._refresh_filter()
        return ok

    def _housekeeping(self) -> None:
        """Once a second: end blocks whose time is up (a source dropped in the kernel never reaches
        `admit`) and rebuild the kernel filter if the blocked set changed; close stream connections that
        have held an incomplete message for PARTIAL_MESSAGE_TIMEOUT (a slowloris holds buffers)."""
        lim = self.limiter
        if lim is not None:
            lim.expire()
            if lim.dirty:
                self._refresh_filter()
        now = self.clock()
        for conn in [c for c in self._conns.values() if getattr(c, "partial_since", None) is not None]:
            if now - conn.partial_since > PARTIAL_MESSAGE_TIMEOUT:  # type: ignore[attr-defined]
                log.info("closing %s connection from %s: an incomplete message for %.0f s", conn.transport_name,
                         conn.remote, now - conn.partial_since)  # type: ignore[attr-defined]
                self.stats["stalled_connections_closed"] += 1
                conn.close()
        loop = self._loop or asyncio.get_event_loop()
        self._limiter_timer = loop.call_later(1.0, self._housekeeping)

    def _refresh_filter(self) -> None:
        lim = self.limiter
        if lim is None or not lim.changed():
            return
        if not self.kernel_filter or self._udp is None:
            return
        sock = self._udp.get_extra_info("socket")
        try:
            self.filter_state["addresses"] = sockfilter.attach(sock, list(lim.blocked))
            self.filter_state["attaches"] += 1
        except (OSError, ValueError) as exc:
            self.filter_state["errors"] += 1
            self.kernel_filter = False
            log.warning("kernel socket filter unavailable (%s): blocked sources are dropped in user space only",
                        exc)

    def limiter_status(self) -> dict[str, Any]:
        """The limiter's counters, the kernel filter, and the UDP socket's kernel drop count."""
        out: dict[str, Any] = self.limiter.snapshot() if self.limiter is not None else {"enabled": False}
        out["kernel_filter"] = dict(self.filter_state, enabled=self.kernel_filter)
        if self._udp is not None:
            out["udp_socket_drops"] = sockfilter.kernel_drops(self._udp.get_extra_info("socket"))
        return out

    # -- overload ---------------------------------------------------------------------------------
    def start_load_monitor(self, interval: float = 0.05) -> None:
        """Measure event-loop lag every `interval`: a server that lags retransmits into a collapse."""
        loop = self._loop or asyncio.get_running_loop()
        due = loop.time() + interval

        def probe() -> None:
            self.record_lag(loop.time() - due)
            self.start_load_monitor(interval)

        self._lag_probe = loop.call_at(due, probe)

    def record_lag(self, lag: float) -> None:
        """Fold one lag sample in: the guard's value rises at once and decays over a few samples."""
        self.loop_lag = max(lag, self.loop_lag * 0.7)
        self.lag_stats.add(lag, self.clock())

    def lag_summary(self, seconds: float = 30.0) -> dict[str, float | int]:
        """p50/p99/max of the loop's lag over the last `seconds`, and the largest since start (ms)."""
        out = self.lag_stats.summary(seconds, self.clock())
        out["max_since_start_ms"] = round(self.lag_stats.max_ever * 1000.0, 2)
        return out

    @property
    def overloaded(self) -> bool:
        """Whether new work should be refused (503) so the calls in progress keep their timing."""
        return self.overload_lag > 0 and self.loop_lag > self.overload_lag

    async def close(self) -> None:
        """Stop listening and drop connections."""
        if self._lag_probe:
            self._lag_probe.cancel()
        if self._limiter_timer:
            self._limiter_timer.cancel()
            self._limiter_timer = None
        if self._timer:
            self._timer.cancel()
        if self._udp:
            self._udp.close()
        for conn in list(self._conns.values()):
            conn.close()
        for s in self._servers:
            s.close()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass

    # -- addresses ---------------------------------------------------------------------------------
    def via_for(self, flow: Flow) -> str:
        """Our Via value (without branch) for a request leaving on ``flow``: its transport and our listener."""
        lst = self.listeners.get(flow.transport) or self.listeners.get("udp")
        t = flow.transport.upper()
        if lst is None:
            return f"SIP/2.0/{t} {format_host(self.advertise)}"
        return f"SIP/2.0/{t} {format_host(lst.advertise)}:{lst.port}"

    def local_uri(self, transport: str, user: str | None = None) -> SipUri:
        """Our own URI on a transport (for Record-Route, Contact)."""
        lst = self.listeners.get(transport) or next(iter(self.listeners.values()))
        params: dict[str, str | None] = {}
        if transport != "udp":
            params["transport"] = transport
        return SipUri("sip", user, lst.advertise, lst.port, params)

    def is_local(self, uri: SipUri, domains: frozenset[str] = frozenset()) -> bool:
        """Whether a URI designates this server (our address + one of our ports, or a served domain w/o port)."""
        host = uri.host.lower().strip("[]")
        if host in domains and uri.port is None:
            return True
        for lst in self.listeners.values():
            if host in (lst.advertise.lower().strip("[]"), lst.host.strip("[]")) or host in domains:
                port = uri.port or (5061 if uri.scheme == "sips" or lst.transport == "tls" else 5060)
                if port == lst.port or (uri.port is None and lst.transport in ("ws", "wss")):
                    return True
        return False

    # -- input -------------------------------------------------------------------------------------
    def receive(self, data: bytes, flow: Flow) -> None:
        """A complete message arrived on `flow` (datagram or framed stream message).

        Every message is parsed and checked (`message.validate`) here, before the transaction layer and any
        transaction user (proxy, registrar, UA, B2BUA, authentication) sees it: a malformed request is
        answered statelessly with the status and a reason phrase naming the fault (`_reject`); a malformed
        response or ACK, and bytes that are no SIP request at all, are dropped and counted (`counters`)."""
        try:
            msg = parse_message(data, self.max_message_size)
        except SipParseError as exc:
            if self.trace or self.hep:
                self._trace(data, flow, inbound=True)
            if isinstance(exc.message, Request):
                self._reject(exc.message, flow, exc)  # a framing error with a readable request: answer it
            else:
                self.stats["parse_errors"] += 1
                log.debug("dropped unparseable message from %s: %s", flow, exc.reason)
            return
        self.stats["messages_in"] += 1
        if self.trace or self.hep:
            self._trace(data, flow, inbound=True)
        try:
            validate(msg)
            if msg.__class__ is Request:
                self._fix_via(msg, flow)  # type: ignore[arg-type]
            self.layer.receive(msg, flow, self.clock())
        except SipParseError as exc:
            self._reject(msg, flow, exc)
        self._pump()

    @property
    def counters(self) -> dict[str, int]:
        """`stats` with every counter of the receive path present (zero until it first counts).

        parse_errors: bytes that were no SIP message, or no request that could be answered (dropped);
        bad_requests: malformed requests answered 4xx/5xx by `_reject`; dropped_invalid: malformed responses
        and ACKs (never answered), dropped; send_errors: sends a transport refused (closed connection,
        unreachable address)."""
        out = dict.fromkeys(("parse_errors", "bad_requests", "dropped_invalid", "send_errors"), 0)
        out.update(self.stats)
        return out

    def stream_error(self, conn: "ConnectionSender", exc: SipParseError) -> None:
        """A stream transport could not frame its input (bad or conflicting Content-Length, oversized
        message): answer the request if its head could be read (RFC 4475 §3.1.2.3, §3.3.9), then close the
        connection, since nothing after it can be framed again."""
        log.info("closing %s connection from %s:%s: %s", conn.transport_name, conn.remote[0], conn.remote[1],
                 exc.reason, extra={"call_id": _log_call_id(exc.message)})
        if isinstance(exc.message, Request):
            self._reject(exc.message, Flow(conn.transport_name, conn.remote, conn.conn_id), exc)
        else:
            self.stats["parse_errors"] += 1
        conn.close()

    def _fix_via(self, req: Request, flow: Flow) -> None:
        """RFC 3261 §18.2.1 received= and RFC 3581 rport on the top Via (the cached Via and its text)."""
        via = req.top_via
        ip, port = flow.remote
        params = via.params
        # A received= the sender wrote itself is replaced too: responses go to where the request came from.
        add_received = (via.host != ip and via.host.strip("[]") != ip) or ("received" in params
                                                                          and params["received"] != ip)
        fill_rport = "rport" in params
        if not (add_received or fill_rport):
            return
        if add_received:
            params["received"] = ip
        if fill_rport:
            params["rport"] = str(port)
        for h in req.headers:
            if h[0] == "via":
                value = h[2]
                if '"' in value:  # a quoted comma in a Via parameter: split properly
                    parts = list(split_quoted(value, ","))
                    h[2] = ",".join([str(via)] + parts[1:])
                else:
                    first, comma, rest = value.partition(",")
                    h[2] = str(via) + comma + rest
                break
        # The cached Via objects (the top one updated in place) still match the text: keep them, so nothing
        # is parsed twice (validate() parsed every Via already).

    def _reject(self, msg: Request | Response, flow: Flow, exc: SipParseError) -> None:
        """Answer a malformed request statelessly with `exc.status` and a reason phrase saying what is wrong;
        a malformed response or ACK is never answered (RFC 3261 §17.1.1.3, §8.2.6): dropped and counted.

        The response copies Via, From, To, Call-ID and CSeq as received (whatever is there), with a To tag
        derived from the request (a retransmission gets the same one). It goes where the top Via says
        (received/rport, §18.2.2), or to the source address when the Via cannot be used."""
        call_id = _log_call_id(msg)
        if isinstance(msg, Response) or msg.method == "ACK":
            self.stats["dropped_invalid"] += 1
            log.debug("dropped invalid %s from %s: %s", "response" if isinstance(msg, Response) else "ACK", flow,
                      exc.reason, extra={"call_id": call_id})
            return
        self.stats["bad_requests"] += 1
        log.debug("answered %s %d: %s", flow, exc.status, exc.reason, extra={"call_id": call_id})
        resp = make_response(msg, exc.status, reason_for(exc), _stateless_tag(msg))
        try:
            dest = self._response_flow(msg, flow)
        except SipParseError:
            dest = flow  # the Via itself is broken: answer where the request came from
        self.send_raw(resp.to_bytes(), dest)

    def _response_flow(self, req: Request, flow: Flow) -> Flow:
        """Where a response to `req` goes: the same connection, or received/rport for UDP (§18.2.2, RFC 3581)."""
        if flow.reliable:
            return flow
        # received= is the source address whenever the Via names another host (§18.2.1, `_fix_via`), so the
        # address is always the source's: a Via naming another host never sends an answer elsewhere.
        via = req.top_via
        if "rport" in via.params:
            return flow
        port = via.port or 5060
        return flow if port == flow.remote[1] else Flow(flow.transport, (flow.remote[0], port))

    # -- output ------------------------------------------------------------------------------------
    def send_request(self, request: Request, flow: Flow, owner: Any = None, branch: str | None = None) -> Any:
        """Start a client transaction for `request` towards `flow`."""
        tx = self.layer.send_request(request, flow, self.clock(), owner, branch)
        self._pump()
        return tx

    def send_stateless(self, msg: Request | Response, flow: Flow) -> None:
        """Send outside a transaction."""
        self.send_raw(msg.to_bytes(), flow)

    def flush(self) -> None:
        """Send whatever the layer queued and re-arm the timer (call after TU actions outside receive())."""
        self._pump()

    def send_raw(self, data: bytes, flow: Flow) -> None:
        """Hand bytes to the transport named by the flow."""
        self.stats["messages_out"] += 1
        if self.trace or self.hep:
            self._trace(data, flow, inbound=False)
        t = flow.transport
        if t == "udp":
            if self._udp is None or not is_ip_literal(flow.remote[0]):
                # never a name: sendto() would resolve it with a blocking DNS query inside the loop
                self.stats["send_errors"] += 1
                return
            try:
                self._udp.sendto(data, flow.remote)
            except Exception as exc:  # OSError; uvloop: RuntimeError/ValueError on a closing transport
                self.stats["send_errors"] += 1
                log.debug("UDP send to %s failed: %s", flow, exc)
            return
        conn = self._conns.get(flow.conn_id) if flow.conn_id is not None else None
        if conn is None:
            cid = self._conn_by_remote.get((t, flow.remote[0], flow.remote[1]))
            conn = self._conns.get(cid) if cid is not None else None
        if conn is not None and not conn.closed:
            try:
                conn.send(data)
            except Exception as exc:  # a transport closing under us (uvloop raises where asyncio logs)
                self.stats["send_errors"] += 1
                log.debug("send on %s failed: %s", flow, exc)
            return
        if t in ("tcp", "tls"):
            self._connect_and_send(t, flow.remote, data)
        else:
            self.stats["send_errors"] += 1
            self.layer.transport_error(flow)

    def _connect_and_send(self, transport: str, remote: tuple[str, int], data: bytes) -> None:
        key = (transport, remote[0], remote[1])
        pending = self._pending_connects.get(key)
        if pending is not None:
            pending.append(data)
            return
        self._pending_connects[key] = [data]
        loop = self._loop or asyncio.get_event_loop()

        async def connect() -> None:
            try:
                ctx = None
                if transport == "tls":
                    ctx = self.client_ssl or ssl.create_default_context()
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: StreamConnection(self, transport), remote[0], remote[1], ssl=ctx),
                    10.0)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                log.info("connect to %s:%s:%s failed: %s", transport, remote[0], remote[1], exc)
                self._pending_connects.pop(key, None)
                self.layer.transport_error(Flow(transport, remote))
                self._pump()
                return
            for d in self._pending_connects.pop(key, []):
                conn.send(d)

        loop.create_task(connect())

    def _pump(self) -> None:
        layer = self.layer
        tu = self.tu
        while True:
            ev = layer.next_event()
            if ev is None:
                break
            try:
                self._dispatch(ev, tu)
            except SipParseError as exc:
                if isinstance(ev, RequestReceived):
                    self._reply_safely(ev.tx, exc.status, reason_for(exc))
                else:
                    log.debug("dropped invalid message: %s", exc.reason)
            except Exception:  # a TU bug must never take the server down
                request = getattr(ev, "request", None)
                log.exception("error handling %s", type(ev).__name__, extra={"call_id": _log_call_id(request)})
                if isinstance(ev, RequestReceived) and ev.tx.last_response is None and ev.request.method != "ACK":
                    self._reply_safely(ev.tx, 500)
        for data, flow in layer.datagrams_to_send():
            self.send_raw(data, flow)
        when = layer.get_timer()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            loop = self._loop or asyncio.get_event_loop()
            if self._timer:
                self._timer.cancel()
            delay = max(0.0, when - self.clock())
            self._timer_at = when
            self._timer = loop.call_later(delay, self._on_timer)

    def _reply_safely(self, tx: Any, status: int, reason: str | None = None) -> None:
        """Answer a server transaction from an error path; building the answer must not raise again."""
        try:
            tx.reply(status, reason)
        except Exception as exc:  # noqa: BLE001 - the request was validated; this is the last resort
            log.debug("could not answer %d: %s", status, exc, extra={"call_id": _log_call_id(tx.request)})

    def _dispatch(self, ev: Any, tu: TransactionUser | None) -> None:
        t = type(ev)
        if t is RequestReceived:
            if tu is None:
                ev.tx.reply(503)
            else:
                tu.on_request(ev.tx, ev.request, ev.cancelled)
        elif t is ResponseReceived:
            owner = ev.tx.owner
            if owner is not None:
                owner.on_response(ev.tx, ev.response)
        elif t is AckReceived:
            if tu is not None:
                tu.on_ack(ev.request, ev.flow)
        elif t is StrayResponse:
            if tu is not None:
                tu.on_stray_response(ev.response, ev.flow)
        elif t is TransactionTimeout:
            owner = ev.tx.owner
            if owner is not None:
                owner.on_timeout(ev.tx)
        elif t is TransportFailure:
            owner = ev.tx.owner
            if owner is not None:
                owner.on_transport_failure(ev.tx)
        elif t is TransactionTerminated:
            tx = ev.tx
            owner = tx.owner
            cb = getattr(owner, "on_terminated", None)
            if cb is not None:
                cb(tx)
            # The last event of a transaction: drop its link to the owner, which usually links back to it
            # (ProxyContext.branches, a call's invite_tx). Such cycles are otherwise left to the cyclic GC,
            # whose rare full collections let every call's messages pile up (about 12 KB a call) and then
            # stall the loop walking them.
            tx.owner = None

    def _on_timer(self) -> None:
        self.stats["timer_wakeups"] += 1
        self._timer = None
        self._timer_at = None
        # The loop's timers have millisecond granularity and may fire a little early; firing every timer
        # due within TIMER_SLACK also batches the many timer J/K expiries of a busy server into few wakeups.
        self.layer.handle_timer(self.clock() + TIMER_SLACK)
        self._pump()

    def _trace(self, data: bytes, flow: Flow, inbound: bool) -> None:
        lst = self.listeners.get(flow.transport)
        local = (lst.advertise if lst else self.advertise, lst.port if lst else 0)
        src, dst = (flow.remote, local) if inbound else (local, flow.remote)
        if self.trace:
            arrow = "<<<" if inbound else ">>>"
            text = data.decode("utf-8", "replace")
            sys.stdout.write(f"{arrow} {time.strftime('%H:%M:%S')} {flow.transport} {src[0]}:{src[1]} -> "
                             f"{dst[0]}:{dst[1]} ({len(data)} bytes)\n{text}\n")
            sys.stdout.flush()
        if self.hep is not None:
            self.hep.send(data, src, dst, flow.transport)

    # -- connections -------------------------------------------------------------------------------
    def _add_conn(self, conn: "StreamConnection") -> int:
        cid = next(self._conn_ids)
        self._conns[cid] = conn
        self._conn_by_remote[(conn.transport_name, conn.remote[0], conn.remote[1])] = cid
        return cid

    def _drop_conn(self, conn: "StreamConnection") -> None:
        if self._conns.pop(conn.conn_id, None) is not None:
            key = (conn.transport_name, conn.remote[0], conn.remote[1])
            if self._conn_by_remote.get(key) == conn.conn_id:
                del self._conn_by_remote[key]
            flow = Flow(conn.transport_name, conn.remote, conn.conn_id)
            self.layer.transport_error(flow)
            self._pump()
            for callback in list(self._connection_closed):
                try:
                    callback(flow)
                except Exception:  # noqa: BLE001 - a listener's bug must not break the transport
                    log.exception("connection-closed listener %r failed for %s", callback, flow)

    def on_connection_closed(self, callback: Callable[[Flow], None]) -> Callable[[], None]:
        """Call `callback(flow)` whenever a TCP/TLS/WebSocket connection closes (after its transactions were
        told); the location service uses it to drop the bindings registered over it. Returns the remover."""
        self._connection_closed.append(callback)

        def remove() -> None:
            if callback in self._connection_closed:
                self._connection_closed.remove(callback)

        return remove

    def accepts_connection(self, ip: str) -> bool:
        """Whether a new TCP/TLS/WebSocket connection from `ip` is taken: the source is not blocked
        (the connection counts as a message) and the connection cap is not reached."""
        if self.limiter is not None and not self.admit(ip):
            return False
        if self.max_connections and len(self._conns) >= self.max_connections:
            self.stats["connections_refused"] += 1
            return False
        return True

    def connection_alive(self, flow: Flow) -> bool:
        """Whether the connection a stream flow is bound to is still open."""
        conn = self._conns.get(flow.conn_id) if flow.conn_id is not None else None
        return conn is not None and not conn.closed

    def register_connection(self, transport: str, remote: tuple[str, int], sender: "ConnectionSender") -> int:
        """Attach an externally served connection (WebSocket); returns its conn_id."""
        sender.transport_name = transport
        sender.remote = remote
        cid = self._add_conn(sender)  # type: ignore[arg-type]
        sender.conn_id = cid
        return cid

    def unregister_connection(self, sender: "ConnectionSender") -> None:
        """The external connection closed."""
        self._drop_conn(sender)  # type: ignore[arg-type]


def _reason(status: int) -> str:
    from .message import reason_phrase

    return reason_phrase(status)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reason_for(exc: SipParseError) -> str:
    """`Bad Request (what was wrong)`: the standard phrase and the parser's reason, fit for a status line
    (no control characters, at most 120 characters)."""
    return _CONTROL.sub("?", f"{_reason(exc.status)} ({exc.reason})")[:120]


def _stateless_tag(req: Request) -> str:
    """A To tag for a stateless answer: derived from the request, so its retransmissions get the same one."""
    key = "|".join(h[2] for h in req.headers if h[0] in ("call-id", "from", "cseq"))
    return "sl" + format(zlib.crc32(key.encode("utf-8", "surrogateescape")), "08x")


def _log_call_id(msg: Any) -> str | None:
    """The Call-ID of a message for a log record, as received but printable (or None)."""
    if msg is None:
        return None
    value = msg.get("call-id")
    if value is None:
        return None
    return value.strip()[:100].encode("ascii", "backslashreplace").decode("ascii")


class _UdpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("stack",)

    def __init__(self, stack: SipStack) -> None:
        self.stack = stack

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        stack = self.stack
        if stack.limiter is not None and not stack.admit(addr[0]):
            return  # a blocked source: dropped unparsed
        if len(data) <= 4 and not data.strip(b"\r\n\x00"):
            return  # keep-alive
        stack.receive(data, Flow("udp", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class ConnectionSender:
    """Base for connection objects the stack can write to (stream sockets, WebSockets)."""

    transport_name: str = ""
    remote: tuple[str, int] = ("", 0)
    conn_id: int = 0
    closed: bool = False

    def send(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class StreamConnection(asyncio.Protocol, ConnectionSender):
    """A TCP or TLS connection (accepted or opened), framed by Content-Length."""

    def __init__(self, stack: SipStack, transport_name: str) -> None:
        self.stack = stack
        self.transport_name = transport_name
        self.framer = StreamFramer(stack.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.partial_since: float | None = None  # since when an incomplete message has been buffered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        stack = self.stack
        if not stack.accepts_connection(peer[0]):
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        self.conn_id = stack._add_conn(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except SipParseError as exc:
            self.stack.stream_error(self, exc)
            return
        flow = Flow(self.transport_name, self.remote, self.conn_id)
        stack = self.stack
        for frame in frames:
            if stack.limiter is not None and not stack.admit(self.remote[0]):
                self.close()  # the source is blocked: its connections go too
                return
            if frame is PING:
                self.send(b"\r\n")  # RFC 5626 pong
                continue
            self.stack.receive(frame, flow)
        if self.framer.error is not None:  # junk after the frames above: answered if it can be, then closed
            self.stack.stream_error(self, self.framer.error)
            return
        if self.framer.buffered:
            if self.partial_since is None:
                self.partial_since = stack.clock()
        else:
            self.partial_since = None

    def send(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed:
            if t.get_write_buffer_size() > MAX_WRITE_BUFFER:
                # A peer that stopped reading: drop it rather than queue without bound.
                log.info("closing %s connection to %s: %d bytes unread", self.transport_name, self.remote,
                         t.get_write_buffer_size())
                self.stack.stats["slow_connections_closed"] += 1
                t.abort()
                return
            t.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stack._drop_conn(self)
