"""SIP transactions (RFC 3261 §17, with the RFC 6026 Accepted state), sans-IO.

`TransactionLayer` is fed parsed messages with the flow they arrived on (`receive`) and the time
(`handle_timer`); it hands back bytes to send (`datagrams_to_send`) and typed events for the
transaction user (`next_event`). The clock is whatever `now` the caller passes, so every timer
A–M can be tested without sleeping.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Union

from .errors import SipParseError
from .headers import MAGIC_COOKIE
from .uri import is_digits
from .message import Request, Response, make_response, new_branch

T1 = 0.5
T2 = 4.0
T4 = 5.0

RELIABLE = frozenset({"tcp", "tls", "ws", "wss", "sctp"})

# To tags of responses sent without a transaction start with this: the ACK for such a non-2xx (a
# stateless 407 to an INVITE) matches no transaction and is absorbed here rather than routed.
STATELESS_TAG = "cpsl-"


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from or goes to: transport, remote address, and the connection to reuse."""

    transport: str                      # "udp" | "tcp" | "tls" | "ws" | "wss"
    remote: tuple[str, int]
    conn_id: int | None = None          # stream transports: the connection this flow is bound to

    @property
    def reliable(self) -> bool:
        """Whether the transport retransmits by itself (no timers A/E/G)."""
        return self.transport in RELIABLE

    def __str__(self) -> str:
        return f"{self.transport}:{self.remote[0]}:{self.remote[1]}"

    def to_token(self) -> str:
        """Compact text form (stored with a binding, embedded in Record-Route): transport~host~port~conn."""
        conn = "" if self.conn_id is None else str(self.conn_id)
        return f"{self.transport}~{self.remote[0]}~{self.remote[1]}~{conn}"

    @classmethod
    def from_token(cls, token: str) -> "Flow | None":
        """Inverse of to_token; None when malformed."""
        parts = token.split("~")
        if len(parts) != 4 or not is_digits(parts[2]):
            return None
        return cls(parts[0], (parts[1], int(parts[2])), int(parts[3]) if is_digits(parts[3]) else None)


# -- events handed to the transaction user ---------------------------------------------------------
@dataclass(slots=True)
class RequestReceived:
    """A new request created a server transaction (ACK for 2xx has no transaction: AckReceived)."""

    tx: "ServerTransaction"
    request: Request
    cancelled: "ServerTransaction | None" = None  # for CANCEL: the INVITE transaction it matches


@dataclass(slots=True)
class AckReceived:
    """An ACK that matched no INVITE server transaction awaiting it (the ACK for a 2xx)."""

    request: Request
    flow: Flow


@dataclass(slots=True)
class ResponseReceived:
    """A response for a client transaction (1xx, the final, and 2xx retransmissions in Accepted)."""

    tx: "ClientTransaction"
    response: Response


@dataclass(slots=True)
class StrayResponse:
    """A response that matched no client transaction (a proxy may forward 2xx statelessly)."""

    response: Response
    flow: Flow


@dataclass(slots=True)
class TransactionTimeout:
    """Timer B/F fired (no final response) or Timer H fired (no ACK for our non-2xx)."""

    tx: "ClientTransaction | ServerTransaction"


@dataclass(slots=True)
class TransportFailure:
    """The transport could not deliver a transaction's message."""

    tx: "ClientTransaction | ServerTransaction"


@dataclass(slots=True)
class TransactionTerminated:
    """A transaction left the table (its state can be released by the TU).

    It is the transaction's last event: after delivering it the stack sets ``tx.owner`` to None, so an
    owner that keeps its transactions (and is kept by them) is freed by reference counting."""

    tx: "ClientTransaction | ServerTransaction"


Event = Union[RequestReceived, AckReceived, ResponseReceived, StrayResponse, TransactionTimeout,
              TransportFailure, TransactionTerminated]


def _server_key(req: Request, method: str) -> tuple:
    via = req.top_via
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    # RFC 2543 peers: match on the dialog/transaction identifiers (§17.2.3 fallback)
    return ("2543", req.call_id, req.cseq.seq, req.from_.tag, str(via), method)


class Transaction:
    """State shared by client and server transactions."""

    __slots__ = ("layer", "key", "request", "flow", "state", "is_invite", "timers", "owner",
                 "last_bytes", "_retrans_interval", "__weakref__")

    def __init__(self, layer: "TransactionLayer", key: tuple, request: Request, flow: Flow) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.flow = flow
        self.is_invite = request.method == "INVITE"
        self.state = ""
        self.timers: dict[str, float] = {}
        self.owner: Any = None  # the TU object this transaction belongs to (proxy context, dialog...)
        self.last_bytes: bytes | None = None
        self._retrans_interval = T1

    def _start(self, name: str, delay: float, now: float) -> None:
        when = now + delay
        self.timers[name] = when
        self.layer._schedule(when, self, name)

    def _stop(self, *names: str) -> None:
        for n in names:
            self.timers.pop(n, None)

    def _terminate(self) -> None:
        self.state = "Terminated"
        self.timers.clear()
        self.layer._remove(self)

    def abandon(self) -> None:
        """Stop at once (no more retransmissions, no timeout event): the TU has given up on it."""
        if self.state != "Terminated":
            self._terminate()

    @property
    def call_id(self) -> str:
        """Call-ID of the transaction's request (for logs)."""
        return self.request.call_id


class ClientTransaction(Transaction):
    """INVITE (§17.1.1) or non-INVITE (§17.1.2) client transaction."""

    __slots__ = ("branch", "final_response")

    def __init__(self, layer: "TransactionLayer", request: Request, flow: Flow, branch: str) -> None:
        super().__init__(layer, (branch, "INVITE" if request.method == "ACK" else request.method), request, flow)
        self.branch = branch
        self.final_response: Response | None = None

    def _begin(self, now: float) -> None:
        self.state = "Calling" if self.is_invite else "Trying"
        self.last_bytes = self.request.to_bytes()
        self.layer._send(self.last_bytes, self.flow)
        if not self.flow.reliable:
            self._start("A" if self.is_invite else "E", T1, now)
        self._start("B" if self.is_invite else "F", 64 * T1, now)

    def cancel_request(self) -> Request:
        """Build the CANCEL for this INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number and Route.

        It has no Via: send it with `send_request(cancel, tx.flow, branch=tx.branch)`, which pushes the
        same top Via (our sent-by and the INVITE's branch)."""
        req = self.request
        cancel = Request("CANCEL", req.uri.copy())
        hs = cancel.headers
        for h in req.headers:
            if h[0] in ("from", "to", "call-id", "route", "max-forwards"):
                hs.append(list(h))
        hs.append(["cseq", "CSeq", f"{req.cseq.seq} CANCEL"])
        return cancel

    def ack_for(self, resp: Response) -> Request:
        """ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
        req = self.request
        ack = Request("ACK", req.uri)
        hs = ack.headers
        for h in req.headers:
            k = h[0]
            if k in ("from", "call-id", "route", "max-forwards"):
                hs.append(list(h))
            elif k == "via" and not any(x[0] == "via" for x in hs):
                hs.append(["via", "Via", str(req.top_via)])
        to = resp.get("to")
        hs.append(["to", "To", to if to is not None else req.get("to") or ""])
        hs.append(["cseq", "CSeq", f"{req.cseq.seq} ACK"])
        return ack

    def _on_response(self, resp: Response, now: float) -> None:
        code = resp.status
        st = self.state
        layer = self.layer
        if self.is_invite:
            if code < 200:
                if st in ("Calling", "Proceeding"):
                    self.state = "Proceeding"
                    self._stop("A", "B")  # Timer B only guards Calling (§17.1.1.2); a proxy has Timer C
                    layer._emit(ResponseReceived(self, resp))
            elif code < 300:
                if st in ("Calling", "Proceeding"):
                    self.final_response = resp
                    self.state = "Accepted"
                    self._stop("A", "B")
                    self._start("M", 64 * T1, now)
                    layer._emit(ResponseReceived(self, resp))
                elif st == "Accepted":
                    layer._emit(ResponseReceived(self, resp))  # 2xx retransmission: TU re-ACKs / forwards
            else:
                if st in ("Calling", "Proceeding"):
                    self.final_response = resp
                    self.state = "Completed"
                    self._stop("A", "B")
                    ack = self.ack_for(resp).to_bytes()
                    self.last_bytes = ack
                    layer._send(ack, self.flow)
                    layer._emit(ResponseReceived(self, resp))  # before TransactionTerminated: always the last
                    if self.flow.reliable:
                        self._terminate()
                    else:
                        self._start("D", 32.0, now)
                elif st == "Completed":
                    layer._send(self.last_bytes, self.flow)  # retransmit ACK
        else:
            if st not in ("Trying", "Proceeding"):
                return  # Completed: absorb retransmissions
            if code < 200:
                self.state = "Proceeding"
                layer._emit(ResponseReceived(self, resp))
            else:
                self.final_response = resp
                self.state = "Completed"
                self._stop("E", "F")
                layer._emit(ResponseReceived(self, resp))
                if self.flow.reliable:
                    self._terminate()
                else:
                    self._start("K", T4, now)

    def _on_timer(self, name: str, now: float) -> None:
        layer = self.layer
        if name == "A":
            self._retrans_interval *= 2
            layer._send(self.last_bytes, self.flow)
            self._start("A", self._retrans_interval, now)
        elif name == "E":
            self._retrans_interval = min(self._retrans_interval * 2, T2)
            if self.state == "Proceeding":
                self._retrans_interval = T2
            layer._send(self.last_bytes, self.flow)
            self._start("E", self._retrans_interval, now)
        elif name in ("B", "F"):
            layer._emit(TransactionTimeout(self))
            self._terminate()
        else:  # D, K, M
            self._terminate()


class ServerTransaction(Transaction):
    """INVITE (§17.2.1) or non-INVITE (§17.2.2) server transaction."""

    __slots__ = ("last_response", "to_tag")

    def __init__(self, layer: "TransactionLayer", key: tuple, request: Request, flow: Flow) -> None:
        super().__init__(layer, key, request, flow)
        self.state = "Proceeding" if self.is_invite else "Trying"
        self.last_response: Response | None = None
        self.to_tag: str | None = None

    def respond(self, resp: Response, now: float | None = None, stateless: bool = False) -> None:
        """Send a response from the TU through this transaction.

        `stateless` (final responses only): send it and forget the transaction at once, as a stateless
        server does (Kamailio's sl_send_reply). For challenges and refusals of requests that create no
        state: a flood of them then costs no memory and no retransmissions; a retransmitted request
        is simply answered again."""
        layer = self.layer
        now = layer.now if now is None else now
        st = self.state
        if st in ("Completed", "Confirmed", "Terminated"):
            return  # a final response was already sent
        if st == "Accepted":
            if 200 <= resp.status < 300:
                layer._send(resp.to_bytes(), self.flow)  # TU retransmitting its 2xx
            return
        data = resp.to_bytes()
        self.last_response = resp
        self.last_bytes = data
        layer._send(data, self.flow)
        code = resp.status
        self._stop("trying")
        if stateless and code >= 200:
            layer.stats["stateless_replies"] += 1
            self._terminate()
            return
        if code < 200:
            if not self.is_invite:
                self.state = "Proceeding"
            return
        if self.is_invite:
            if code < 300:
                self.state = "Accepted"
                self._start("L", 64 * T1, now)
            else:
                self.state = "Completed"
                if not self.flow.reliable:
                    self._start("G", T1, now)
                self._start("H", 64 * T1, now)
        else:
            self.state = "Completed"
            if self.flow.reliable:
                self._terminate()
            else:
                self._start("J", 64 * T1, now)

    def reply(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | tuple = (),
              body: bytes = b"", now: float | None = None, stateless: bool = False) -> Response:
        """Build (RFC 3261 §8.2.6) and send a response; a To tag is added to non-100 responses.

        `stateless`: see respond(); the To tag then marks the response so its ACK is absorbed."""
        if self.to_tag is None and status > 100:
            self.to_tag = self.request.to.tag or (
                STATELESS_TAG + self.layer.new_tag() if stateless else self.layer.new_tag())
        resp = make_response(self.request, status, reason, self.to_tag, headers, body)
        self.respond(resp, now, stateless)
        return resp

    def _on_request(self, req: Request, now: float) -> None:
        """A retransmission of our request (or the ACK for our non-2xx)."""
        st = self.state
        if req.method == "ACK":
            if st == "Completed":
                self.state = "Confirmed"
                self._stop("G", "H")
                if self.flow.reliable:
                    self._terminate()
                else:
                    self._start("I", T4, now)
            elif st == "Accepted":
                self.layer._emit(AckReceived(req, self.flow))
            return
        if st in ("Proceeding", "Trying", "Completed") and self.last_bytes is not None:
            self.layer._send(self.last_bytes, self.flow)

    def _on_timer(self, name: str, now: float) -> None:
        if name == "G":
            self._retrans_interval = min(self._retrans_interval * 2, T2)
            self.layer._send(self.last_bytes, self.flow)
            self._start("G", self._retrans_interval, now)
        elif name == "H":
            self.layer._emit(TransactionTimeout(self))
            self._terminate()
        elif name == "trying":
            # RFC 3261 §17.2.1: send 100 Trying if the TU has not answered within 200 ms
            if self.state == "Proceeding" and self.last_response is None:
                self.reply(100, now=now)
        else:  # I, J, L
            self._terminate()


class TransactionLayer:
    """All transactions of one SIP endpoint, with one timer heap and one outbox."""

    def __init__(self, via_for: Callable[[Flow], str], new_tag: Callable[[], str] | None = None,
                 auto_trying: bool = True, max_transactions: int = 0, retry_after: int = 5) -> None:
        """`via_for(flow)` returns the sent-by ("SIP/2.0/UDP host:port") this endpoint puts in Via for a flow.

        `max_transactions` (0: no cap): at that many live transactions a new initial request gets a
        stateless 503 with Retry-After `retry_after` instead of a transaction; in-dialog requests and
        CANCEL still pass (they end work in progress)."""
        from .message import new_tag as _new_tag

        self.via_for = via_for
        self.new_tag = new_tag or _new_tag
        self.auto_trying = auto_trying
        self.max_transactions = max_transactions
        self.retry_after = retry_after
        self._trying: list[tuple[ServerTransaction, float]] = []  # new INVITEs: 100 Trying armed lazily
        self.server: dict[tuple, ServerTransaction] = {}
        self.client: dict[tuple, ClientTransaction] = {}
        self._timers: list[tuple[float, int, Transaction, str]] = []
        self._seq = itertools.count()
        self._outbox: list[tuple[bytes, Flow]] = []
        self._events: deque[Event] = deque()
        self.now = 0.0
        self.stats = {"requests_in": 0, "responses_in": 0, "retransmissions_absorbed": 0,
                      "stateless_replies": 0, "stateless_acks_absorbed": 0, "refused_at_cap": 0}

    # -- sans-IO interface -------------------------------------------------------------------------
    def receive(self, msg: Request | Response, flow: Flow, now: float) -> None:
        """Feed a parsed message received on `flow` (raises SipParseError for unusable headers)."""
        self.now = now
        if isinstance(msg, Response):
            self.stats["responses_in"] += 1
            via = msg.top_via
            branch = via.branch or ""
            method = msg.cseq.method
            tx = self.client.get((branch, "INVITE" if method == "ACK" else method))
            if tx is None:
                self._emit(StrayResponse(msg, flow))
            else:
                tx._on_response(msg, now)
            return
        self.stats["requests_in"] += 1
        method = msg.method
        cseq = msg.cseq
        if cseq.method != method:
            raise SipParseError(f"CSeq method {cseq.method} does not match {method}")
        key = _server_key(msg, "INVITE" if method == "ACK" else method)
        stx = self.server.get(key)
        if stx is not None:
            self.stats["retransmissions_absorbed"] += 1
            stx._on_request(msg, now)
            return
        if method == "ACK":
            if (msg.to.tag or "").startswith(STATELESS_TAG):
                self.stats["stateless_acks_absorbed"] += 1  # the ACK for a stateless non-2xx
                return
            self._emit(AckReceived(msg, flow))
            return
        cap = self.max_transactions
        if cap and len(self.server) + len(self.client) >= cap and method != "CANCEL" and msg.to.tag is None:
            self.stats["refused_at_cap"] += 1
            resp = make_response(msg, 503, "Service Unavailable (transaction limit)",
                                 STATELESS_TAG + self.new_tag(), [("Retry-After", str(self.retry_after))])
            self._send(resp.to_bytes(), flow)
            return
        stx = ServerTransaction(self, key, msg, flow)
        self.server[key] = stx
        cancelled = None
        if method == "CANCEL":
            cancelled = self.server.get(key[:-1] + ("INVITE",))
        elif stx.is_invite and self.auto_trying:
            # Armed when the TU has had its turn (get_timer/handle_timer): an INVITE answered at once,
            # such as a stateless 407, then leaves nothing in the timer heap.
            self._trying.append((stx, now))
        self._emit(RequestReceived(stx, msg, cancelled))

    def send_request(self, request: Request, flow: Flow, now: float, owner: Any = None,
                     branch: str | None = None) -> ClientTransaction:
        """Start a client transaction: push our Via (new branch) and send. ACK is sent without one."""
        self.now = now
        branch = branch or new_branch()
        request.add("Via", f"{self.via_for(flow)};branch={branch};rport", first=True)
        tx = ClientTransaction(self, request, flow, branch)
        tx.owner = owner
        if request.method == "ACK":  # ACK for 2xx: no transaction (§17.1.1.3 / §13.2.2.4)
            self._send(request.to_bytes(), flow)
            tx.state = "Terminated"
            return tx
        self.client[tx.key] = tx
        tx._begin(now)
        return tx

    def send_stateless(self, msg: Request | Response, flow: Flow) -> None:
        """Send a message outside any transaction (2xx retransmissions forwarded by a proxy, ACK for 2xx)."""
        self._send(msg.to_bytes(), flow)

    def datagrams_to_send(self) -> list[tuple[bytes, Flow]]:
        """Everything queued for sending since the last call."""
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> Event | None:
        """The next event for the TU, or None."""
        return self._events.popleft() if self._events else None

    def _arm_trying(self) -> None:
        """Start the 200 ms 100-Trying timer of the new INVITEs the TU has not answered yet."""
        for stx, at in self._trying:
            if stx.state == "Proceeding" and stx.last_response is None:
                stx._start("trying", 0.2, at)
        self._trying.clear()

    def get_timer(self) -> float | None:
        """When handle_timer must next be called (absolute time), or None."""
        if self._trying:
            self._arm_trying()
        timers = self._timers
        while timers:
            when, _, tx, name = timers[0]
            if tx.timers.get(name) == when:
                return when
            heapq.heappop(timers)  # stale entry
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`."""
        self.now = now
        if self._trying:
            self._arm_trying()
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, tx, name = heapq.heappop(timers)
            if tx.timers.get(name) != when:
                continue
            del tx.timers[name]
            tx._on_timer(name, now)

    def transport_error(self, flow: Flow) -> None:
        """The transport reports `flow` is dead: fail the transactions that use it (§17.1.4, §17.2.4)."""
        for table in (self.client, self.server):
            for tx in [t for t in table.values() if t.flow == flow]:
                self._emit(TransportFailure(tx))
                tx._terminate()

    def __len__(self) -> int:
        return len(self.client) + len(self.server)

    # -- internals ---------------------------------------------------------------------------------
    def _send(self, data: bytes | None, flow: Flow) -> None:
        if data is not None:
            self._outbox.append((data, flow))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _schedule(self, when: float, tx: Transaction, name: str) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), tx, name))

    def _remove(self, tx: Transaction) -> None:
        table = self.client if isinstance(tx, ClientTransaction) else self.server
        if table.get(tx.key) is tx:
            del table[tx.key]
            if tx.owner is not None:  # only TUs that track transactions care
                self._emit(TransactionTerminated(tx))
