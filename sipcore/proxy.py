"""The SIP core's transaction user: registrar, authentication and stateful forking proxy (RFC 3261 §16).

Requests come from the stack (`on_request`); REGISTER and initial requests to local users need
the user directory and the location service (async), so they run as tasks; in-dialog routing,
responses, CANCEL and ACK are handled synchronously.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .ua import parse_replaces
from .callcontrol import CallControl
from .routing import AcceptCall, Contact, RejectCall, RouteRequest, Router, media_transport_for
from .cluster import Node
from .auth import HA1, AuthReason, DigestAuthenticator, ephemeral_password, parse_credentials, AuthError
from .errors import SipParseError
from .dns import SUPPORTED_TRANSPORTS
from .location import Binding, LocationService
from .locator import ServerLocator, as_flow
from .message import Request, Response, reason_phrase
from .registrar import RegistrarPolicy, contact_headers, process_register
from .stack import SipStack
from .transaction import ClientTransaction, Flow, ServerTransaction
from .uri import NameAddr, SipUri, is_ip_literal

log = logging.getLogger("callpath.sip.proxy")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, REFER, NOTIFY, SUBSCRIBE"
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
TIMER_C = 180.0


class SipAccount(Protocol):
    """What the proxy needs of a SIP user record."""

    username: str
    extension: str | None
    ha1_md5: str
    ha1_sha256: str
    enabled: bool


class UserDirectory(Protocol):
    """Looks up SIP accounts (implemented over storage by the composition root, with a cache)."""

    async def get(self, username: str) -> SipAccount | None: ...
    async def by_extension(self, extension: str) -> SipAccount | None: ...


@dataclass(slots=True)
class ProxyConfig:
    """Registrar/proxy behaviour knobs (from settings [sip])."""

    domain: str
    auth: bool = True
    ephemeral_secret: str = ""
    policy: RegistrarPolicy = field(default_factory=RegistrarPolicy)
    server_header: str = "callpath"


class Proxy:
    """Registrar + authenticating stateful proxy; hands calls for callpath itself to a UA/B2BUA."""

    def __init__(self, stack: SipStack, config: ProxyConfig, users: UserDirectory, location: LocationService,
                 authenticator: DigestAuthenticator, clock: Callable[[], float] = time.time) -> None:
        self.stack = stack
        self.config = config
        self.users = users
        self.location = location
        self.auth = authenticator
        self.clock = clock  # wall clock: binding expiry and nonces
        self.domains: frozenset[str] = frozenset()
        self.ua: Any = None     # sipcore.ua.UserAgent: owns dialogs callpath itself takes part in
        self.b2bua: Any = None  # sipcore.b2bua.BackToBack: numbers answered and re-originated
        self.router: Router | None = None         # decides what a new INVITE becomes (docs/callcontrol.md)
        self.callcontrol: CallControl | None = None   # runs the calls a router accepts
        self.trunks: Any = None  # sipcore.trunk.TrunkGroup: requests from its inbound hosts are not challenged
        self.locator: ServerLocator | None = None  # RFC 3263 next hops (the composition root shares one)
        self.node: Node | None = None  # this node of a cluster sharing the location store (sipcore/cluster.py)
        self._tasks: set[asyncio.Task] = set()
        self.max_tasks = 0      # requests waiting on the directory/location store (0: no cap)
        self.max_calls = 0      # calls the UA/B2BUA takes part in (0: no cap)
        self.retry_after = 5    # seconds, in the 503s sent at a cap or under overload
        self.stats = {"registers": 0, "forwarded": 0, "auth_failures": 0, "rejected_overload": 0,
                      "challenged_stateless": 0, "rejected_at_cap": 0, "not_relayed": 0}
        stack.tu = self
        self.refresh_domains()

    def refresh_domains(self) -> None:
        """The host names/addresses that designate this server (after the listeners are bound)."""
        names = {self.config.domain.lower(), self.stack.advertise.lower()}
        for lst in self.stack.listeners.values():
            names.add(lst.host.lower())
            names.add(lst.advertise.lower())
        if "127.0.0.1" in names or "0.0.0.0" in names:
            names.update({"localhost", "127.0.0.1"})
        self.domains = frozenset(n.strip("[]") for n in names if n)

    def is_local_domain(self, uri: SipUri) -> bool:
        """Whether the URI's host is a domain we serve (any of our ports, or none)."""
        return uri.host.lower().strip("[]") in self.domains and (
            uri.port is None or any(uri.port == lst.port for lst in self.stack.listeners.values()))

    # -- TransactionUser ---------------------------------------------------------------------------
    def on_request(self, tx: ServerTransaction, req: Request, cancelled: ServerTransaction | None) -> None:
        """Route a new request (RFC 3261 §16.3–16.6)."""
        method = req.method
        if method == "CANCEL":
            self._on_cancel(tx, cancelled)
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            if method == "OPTIONS" and not req.has("route") and self.is_local_domain(req.uri):
                self._answer_options(tx)
            else:
                tx.reply(483, stateless=True)
            return
        if req.has("proxy-require"):
            tx.reply(420, headers=[("Unsupported", ", ".join(req.get_all("proxy-require")))], stateless=True)
            return
        routed_here = self._routed_here(req)
        to_tag = req.to.tag
        hop = self._peer_hop(req) if routed_here and to_tag is None and method != "REGISTER" else None
        flow_hint = self._pop_own_routes(req)
        if to_tag is not None and not routed_here and not self.is_local_domain(req.uri) and not (
                self.ua is not None and self.ua.handles(req)):
            # An in-dialog request that did not come along a route set we Record-Routed: not ours to relay
            # (an unauthenticated way to send anything anywhere). Kamailio's default script answers the same.
            self.stats["not_relayed"] += 1
            tx.reply(404, "Not Here (in-dialog request not routed through this proxy)", stateless=True)
            return
        if to_tag is None:
            if self.stack.overloaded:
                # Shed new work while the loop lags: calls in progress keep their timing, callers retry later.
                self.stats["rejected_overload"] += 1
                self._refuse(tx, "overloaded")
                return
            if hop is not None:
                self._deliver_hop(tx, req, flow_hint)
                return
            if self.config.auth and not (method != "REGISTER" and self.from_trunk(tx, req)) \
                    and self._challenge_first(tx, req):
                return
        if req.has("route"):
            if to_tag is None:  # a pre-loaded route: relayed for authenticated users only, like a foreign domain
                self._spawn(self._relay_foreign(tx, req, req.routes[0].uri), tx)
            else:
                self._forward(tx, req, [(req.routes[0].uri, None, ())], record_route=False, flow_hint=flow_hint)
            return
        if to_tag is not None:
            if self.ua is not None and self.ua.handles(req):
                self.ua.on_request(tx, req)
                return
            uri = req.uri
            if self.is_local_domain(uri) and flow_hint is None:
                tx.reply(481 if uri.user else 404, stateless=True)
                return
            self._forward(tx, req, [(uri, None, ())], record_route=False, flow_hint=flow_hint)
            return
        uri = req.uri
        if method == "REGISTER":
            if not self.is_local_domain(uri):
                tx.reply(403, "Forbidden (not a domain served here)", stateless=True)
                return
            self._spawn(self._register(tx, req), tx)
            return
        if not self.is_local_domain(uri):
            self._spawn(self._relay_foreign(tx, req, uri), tx)
        elif uri.user is None or (method == "OPTIONS" and self.from_trunk(tx, req)):  # us, or a carrier's ping
            if method == "OPTIONS":
                self._answer_options(tx)
            else:
                tx.reply(405, headers=[("Allow", "OPTIONS, REGISTER")], stateless=True)
        else:
            self._spawn(self._route_local(tx, req), tx)

    def from_trunk(self, tx: ServerTransaction, req: Request) -> bool:
        """Whether the request came through a trunk (its inbound hosts, or its Request-URI carries the ``line``
        token of a trunk's registration Contact): carriers do not answer a 407, so calls to local numbers from
        them are not challenged (relaying elsewhere still is; REGISTER always is)."""
        return self.trunks is not None and self.trunks.match_inbound(req, tx.flow) is not None

    def _challenge_first(self, tx: ServerTransaction, req: Request) -> bool:
        """Challenge at once, statelessly, an initial request that needs credentials and has none.

        This is what a scanner or a flood sends: answered without a transaction, a task or a directory
        lookup (the nonce is stateless too), so it costs neither memory nor retransmissions. Requests to
        the server itself (OPTIONS pings), ACK/PRACK and REGISTERs for other domains take their usual path.
        """
        method = req.method
        if method in ("ACK", "PRACK"):
            return False
        uri = req.uri
        if method == "REGISTER":
            if not self.is_local_domain(uri):
                return False
            header, status = "authorization", 401
        else:
            if uri.user is None and not req.has("route") and self.is_local_domain(uri):
                return False
            header, status = "proxy-authorization", 407
        if self._our_credentials(req, header) is not None:
            return False  # credentials for us: checked by the usual (async) path
        self.stats["challenged_stateless"] += 1
        self._challenge(tx, status, self.clock())
        return True

    def _our_credentials(self, req: Request, header: str) -> str | None:
        """The Digest credentials in `header` meant for our realm (or naming none), if any.

        Another scheme (RFC 4475 regaut01) or another realm is no answer to our challenge: the request
        is challenged, as RFC 3261 §22.4 asks."""
        realm = f'realm="{self.auth.realm}"'
        for v in req.get_all(header):
            v2 = v.lstrip()
            if v2[:6].lower() == "digest" and v2[6:7] in (" ", "\t") and (realm in v or "realm=" not in v):
                return v
        return None

    def _refuse(self, tx: ServerTransaction, why: str) -> None:
        """A stateless 503 with Retry-After: the server is at a cap or overloaded, not the request's fault."""
        tx.reply(503, f"Service Unavailable ({why})", headers=[("Retry-After", str(self.retry_after))],
                 stateless=True)

    def _on_cancel(self, tx: ServerTransaction, cancelled: ServerTransaction | None) -> None:
        """CANCEL (§16.10): 200 to the CANCEL, then cancel the matching INVITE's branches (487 upstream)."""
        if cancelled is None or cancelled.state not in ("Proceeding",):
            tx.reply(481 if cancelled is None else 200)
            return
        tx.reply(200)
        owner = cancelled.owner
        if isinstance(owner, ProxyContext):
            owner.cancel()
        elif owner is not None and hasattr(owner, "on_cancel"):
            owner.on_cancel(tx, cancelled)  # a UA/B2BUA call owns the INVITE
        elif self.ua is not None and hasattr(self.ua, "on_cancel") and self.ua.on_cancel(tx, cancelled):
            pass
        else:
            cancelled.reply(487)  # still being authenticated/looked up: nothing forwarded yet

    def on_ack(self, req: Request, flow: Flow) -> None:
        """ACK for a 2xx: forwarded statelessly along the route set (§16.11 / §13.2.2.4)."""
        if self.ua is not None and self.ua.handles(req):
            self.ua.on_ack(req, flow)
            return
        try:
            routed_here = self._routed_here(req)
            flow_hint = self._pop_own_routes(req)
            target = req.routes[0].uri if req.has("route") else req.uri
            if not routed_here and not self.is_local_domain(target):
                return  # not along a route set we Record-Routed: not ours to relay (see on_request)
            if self.is_local_domain(target) and flow_hint is None:
                return  # an ACK for something we answered ourselves and no longer track
            mf = req.max_forwards
            if mf is not None:
                if mf <= 0:
                    return
                req.set("Max-Forwards", str(mf - 1))
            out = flow_hint or self._flow_for_uri(target)
            if out is None:
                return
            req.add("Via", f"{self.stack.via_for(out)};branch={self._ack_branch(req)}", first=True)
            self.stack.send_stateless(req, out)
        except SipParseError as exc:
            log.debug("dropped ACK: %s", exc.reason)

    def on_stray_response(self, resp: Response, flow: Flow) -> None:
        """A response with no client transaction (late 2xx retransmission): forward statelessly upstream."""
        if self.ua is not None and self.ua.handles_response(resp):
            self.ua.on_stray_response(resp, flow)  # a late 2xx for a call callpath itself placed: re-ACK
            return
        vias = resp.vias
        if len(vias) < 2:
            return
        top = vias[0]
        if not (top.branch or "").startswith("z9hG4bK") or not self.stack.is_local(
                SipUri("sip", None, top.host, top.port), self.domains):
            return
        resp.remove_first_value("via")
        nxt = resp.top_via
        host = nxt.received or nxt.host
        port = nxt.rport or nxt.port or 5060
        self.stack.send_stateless(resp, Flow(nxt.transport.lower(), (host.strip("[]"), port)))

    # -- helpers -----------------------------------------------------------------------------------
    def _spawn(self, coro: Any, tx: ServerTransaction | None = None) -> None:
        """Run an async request handler; a malformed header it meets is answered 4xx, a bug 500.

        At `max_tasks` handlers in flight the request gets a stateless 503 instead of another task."""
        if tx is not None and self.max_tasks and len(self._tasks) >= self.max_tasks:
            coro.close()
            self.stats["rejected_at_cap"] += 1
            self._refuse(tx, "too many requests in progress")
            return
        if tx is not None:
            coro = self._answering_errors(coro, tx)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _answering_errors(self, coro: Any, tx: ServerTransaction) -> None:
        try:
            await coro
        except SipParseError as exc:
            if tx.last_response is None or tx.last_response.status < 200:
                tx.reply(exc.status, f"{reason_phrase(exc.status)} ({exc.reason})"[:120])
        except Exception:
            log.exception("request handler failed", extra={"call_id": tx.request.get("call-id")})
            if tx.last_response is None or tx.last_response.status < 200:
                tx.reply(500)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("request handler failed", exc_info=task.exception())
        self.stack.flush()

    def _ack_branch(self, ack: Request) -> str:
        """A stable branch for a forwarded 2xx ACK (retransmitted ACKs get the same one)."""
        import hashlib

        top = ack.get("via") or ""
        return "z9hG4bK" + hashlib.md5(f"{top}{ack.call_id}{ack.cseq.seq}".encode()).hexdigest()[:16]

    def _answer_options(self, tx: ServerTransaction) -> None:
        """OPTIONS to the server (phones' keep-alive pings): answered statelessly, it changes nothing."""
        tx.reply(200, headers=[("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "path, outbound, 100rel"),
                               ("Server", self.config.server_header)], stateless=True)

    def _routed_here(self, req: Request) -> bool:
        """Whether the request's top Route names us (it follows a route set we Record-Routed)."""
        if not req.has("route"):
            return False
        routes = req.routes
        return bool(routes) and self.stack.is_local(routes[0].uri, self.domains)

    def _pop_own_routes(self, req: Request) -> Flow | None:
        """Remove the Route entries that point at us (loose routing, §16.4).

        With double Record-Route the last of ours is the one facing the destination; a connection flow
        token in it (our `cpflow` parameter) names the connection to send on. A Route header left with no
        value at all is removed, so callers may take `routes[0]` whenever `has("route")` (the stack rejects
        such requests before they get here; this keeps the invariant for requests built elsewhere)."""
        flow: Flow | None = None
        while req.has("route"):
            routes = req.routes
            if not routes:
                req.remove("route")
                break
            first = routes[0]
            if not self.stack.is_local(first.uri, self.domains):
                break
            token = first.uri.params.get("cpflow")
            flow = Flow.from_token(token) if token else None
            req.remove_first_value("route")
        if flow is not None and flow.reliable and not self.stack.connection_alive(flow):
            return None  # that connection is gone: fall back to the Request-URI
        return flow

    def _peer_hop(self, req: Request) -> str | None:
        """The node that forwarded `req` here, when its top Route (ours) carries a valid signed hop."""
        if self.node is None:
            return None
        return self.node.verify_hop(req.routes[0].uri.params, self.clock())

    def _deliver_hop(self, tx: ServerTransaction, req: Request, flow: Flow | None) -> None:
        """Another node sent `req` (signed, its caller authenticated there) for a contact registered over one
        of our connections: relay it on that connection, or 480 when the connection has closed since."""
        if flow is None:
            tx.reply(480, "Temporarily Unavailable (the contact's connection closed)", stateless=True)
            return
        self._forward(tx, req, [(req.uri, flow, ())], record_route=req.method in DIALOG_CREATING, flow_hint=flow)

    def _flow_for_uri(self, uri: SipUri) -> Flow | None:
        """Next hop for an IP-literal URI (sync); None when it needs DNS."""
        host = uri.params.get("maddr") or uri.host
        if not is_ip_literal(host):
            return None
        transport = uri.transport
        port = uri.port or (5061 if transport == "tls" else 5060)
        return Flow(transport, (host.strip("[]"), port))

    async def _locate(self, uri: SipUri) -> list[Flow]:
        """Next hops for a URI, in the order to try them: an IP literal as is, a name located by RFC 3263
        (NAPTR, SRV, A/AAAA) on the loop; empty when it cannot be located."""
        flow = self._flow_for_uri(uri)
        if flow is not None:
            return [flow]
        host = uri.params.get("maddr") or uri.host
        if host.endswith(".invalid"):
            return []
        if self.locator is None:
            v6 = any(":" in lst.host for lst in self.stack.listeners.values())
            self.locator = ServerLocator(families=("A", "AAAA") if v6 else ("A",))
        transports = tuple(t for t in SUPPORTED_TRANSPORTS if t in self.stack.listeners) or SUPPORTED_TRANSPORTS
        loc = await self.locator.locate(uri, transports)
        if not loc.targets:
            log.info("cannot locate %s: %s", uri, loc.reason)
        return [as_flow(t) for t in loc.targets]

    # -- authentication ----------------------------------------------------------------------------
    async def _authenticate(self, tx: ServerTransaction, req: Request, header: str, status: int) -> SipAccount | None:
        """Digest check (RFC 7616); answers the failure itself and returns None, or returns the account.

        Failure table (each failure counts in ``stats["auth_failures"]``):

        - no credentials for our realm: 401/407 challenge;
        - malformed credentials: 400 "malformed credentials";
        - digest ``uri`` not designating the Request-URI the client sent (what it signed: ``req.uri`` is never
          rewritten in place, a forwarded copy is): 400 "digest uri does not match Request-URI" (RFC 7616
          §3.4.6; ``digest_uri_matches`` in auth.py says which spellings match);
        - no qop (RFC 2069 style) although the challenge offered qop=auth, or a qop we did not offer: 400
          (RFC 7616 §3.4: missing or improper parameters);
        - those three are decided before the user lookup, so they cost no directory round trip;
        - unknown user or wrong password: 403;
        - expired nonce or spent nonce-count (a replay): challenge with stale=true (no re-prompt);
        - anything else (foreign nonce, realm or algorithm not offered): a fresh challenge.
        """
        now = self.clock()
        value = self._our_credentials(req, header)
        if value is None:
            self._challenge(tx, status, now)
            return None
        try:
            creds = parse_credentials(value)
        except AuthError as exc:
            self.stats["auth_failures"] += 1
            log.info("auth failed: %s", exc, extra={"call_id": req.call_id})
            tx.reply(400, "Bad Request (malformed credentials)", stateless=True)
            return None
        # The Request-URI as received (parsed once already by on_request): what the client signed.
        result = self.auth.precheck(creds, req.uri, self.is_local_domain)
        if result is None:
            username = creds.username
            account: SipAccount | None = None
            secret: Any = None
            if self.config.ephemeral_secret and ":" in username:
                secret = ephemeral_password(self.config.ephemeral_secret, username, now)
                user = username.split(":", 1)[1]
                account = await self.users.get(user)
                if account is None or not account.enabled:
                    secret = None
            else:
                account = await self.users.get(username)
                if account is not None and account.enabled:
                    alg = creds.algorithm.upper()
                    secret = HA1(account.ha1_sha256 if alg.startswith("SHA-256") else account.ha1_md5)
            # no request_uri: precheck above matched it (again would double the cost for clients, such as
            # SIPp, that spell the uri differently from the Request-URI)
            result = self.auth.verify_credentials(creds, req.method, secret, now)
            if result.ok and account is not None:
                return account
        self.stats["auth_failures"] += 1
        reason = result.reason
        log.info("auth failed for %r: %s %s", creds.username, reason, result.detail, extra={"call_id": req.call_id})
        if result.stale:  # expired nonce or replayed nonce-count: a fresh nonce, no re-prompt
            self._challenge(tx, status, now, stale=True)
        elif reason is AuthReason.UNKNOWN_USER or reason is AuthReason.BAD_RESPONSE:
            tx.reply(403, "Forbidden (bad credentials)", stateless=True)
        elif reason is AuthReason.BAD_URI:
            tx.reply(400, "Bad Request (digest uri does not match Request-URI)", stateless=True)
        elif reason is AuthReason.MISSING_QOP:
            tx.reply(400, "Bad Request (digest qop required)", stateless=True)
        elif reason is AuthReason.UNSUPPORTED_QOP:
            tx.reply(400, "Bad Request (unsupported digest qop)", stateless=True)
        else:
            self._challenge(tx, status, now)
        return None

    def _challenge(self, tx: ServerTransaction, status: int, now: float, stale: bool = False) -> None:
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        values = self.auth.challenges(now, stale)
        if tx.flow.transport in ("ws", "wss"):
            # JsSIP (and SIP.js) keep only the LAST challenge and speak only MD5; phones take the first.
            values.sort(key=lambda v: "algorithm=MD5" in v)
        # Stateless (no transaction kept): a challenge creates nothing; a retransmission is challenged again.
        tx.reply(status, headers=[(name, c) for c in values], stateless=True)

    # -- registrar ---------------------------------------------------------------------------------
    async def _register(self, tx: ServerTransaction, req: Request) -> None:
        self.stats["registers"] += 1
        to_uri = req.to.uri
        if to_uri.scheme not in ("sip", "sips"):
            tx.reply(400, "Bad Request (address-of-record must be a SIP URI)", stateless=True)
            return
        if to_uri.user is None:
            tx.reply(400, "Bad Request (To has no user)", stateless=True)
            return
        if self.config.auth:
            account = await self._authenticate(tx, req, "authorization", 401)
            if account is None:
                return
            if to_uri.user not in (account.username, account.extension):
                tx.reply(403, "Forbidden (To user does not match the credentials)", stateless=True)
                return
            user = account.username
        else:
            account = await self.users.get(to_uri.user) or await self.users.by_extension(to_uri.user)
            user = account.username if account is not None else to_uri.user
        aor = f"sip:{user}@{self.config.domain}"
        now = self.clock()
        existing = await self.location.lookup(aor)
        node = self.node
        out = process_register(req, aor, existing, now, self.config.policy, received=tx.flow.to_token(),
                               node=node.id if node else "", node_uri=node.uri if node else "")
        if out.status != 200:
            tx.reply(out.status, out.reason, headers=out.headers)
            return
        current = existing
        if out.bindings is not None:
            await self.location.save(aor, out.bindings)
            current = out.bindings
        tx.reply(200, headers=out.headers + contact_headers(current, now) + [("Date", _http_date(now))])

    # -- routing -----------------------------------------------------------------------------------
    async def _route_local(self, tx: ServerTransaction, req: Request) -> None:
        """An initial request to a user (or number) of our domain."""
        uri = req.uri
        if self.b2bua is not None and self.b2bua.handles_number(uri.user):
            if self.config.auth and not self.from_trunk(tx, req) and not await self._authorize_caller(tx, req):
                return
            if self.max_calls and self.ua is not None and self.ua.active_calls >= self.max_calls:
                self.stats["rejected_at_cap"] += 1
                self._refuse(tx, "too many calls")
                return
            self.b2bua.on_invite(tx, req)
            return
        account = await self.account_of(uri.user)
        if self.router is not None and req.method == "INVITE":
            await self._route_invite(tx, req, account)
            return
        if account is None:
            tx.reply(404, stateless=True)
            return
        if self.config.auth and req.method not in ("ACK", "PRACK") and not self.from_trunk(tx, req) \
                and not await self._authorize_caller(tx, req):
            return
        await self._proxy_to_user(tx, req, account)

    async def _route_invite(self, tx: ServerTransaction, req: Request, callee: SipAccount | None) -> None:
        """A new INVITE to our domain with a router: authenticate the caller, then do what the router says."""
        assert self.router is not None
        caller: SipAccount | None = None
        inbound = self.trunks.match_inbound(req, tx.flow) if self.trunks is not None else None
        if self.config.auth and inbound is None:
            caller = await self._caller_account(tx, req)
            if caller is None:
                return
        if self.callcontrol is not None and req.has("replaces"):
            try:
                call_id, to_tag, from_tag, _early = parse_replaces(req.get("replaces") or "")
            except ValueError:
                tx.reply(400, "Bad Request (malformed Replaces)")
                return
            replaced = self.callcontrol.find_channel(call_id, to_tag, from_tag)
            if replaced is not None:
                self.callcontrol.accept_replacing(tx, req, replaced)
                return
            # not a dialog of ours: routed like any INVITE (the callee matches its own dialogs)
        decision = await self.router.route(RouteRequest(req, tx.flow, caller, callee,
                                                        source_trunk=inbound.trunk.name if inbound else None))
        if tx.state not in ("Proceeding", "Trying"):
            return  # cancelled or timed out meanwhile
        if isinstance(decision, RejectCall):
            tx.reply(decision.status, decision.reason)
        elif isinstance(decision, AcceptCall):
            if self.callcontrol is None or self.ua is None:
                log.error("router accepted a call but no call control is wired", extra={"call_id": req.call_id})
                tx.reply(500)
            elif self.max_calls and self.ua.active_calls >= self.max_calls:
                self.stats["rejected_at_cap"] += 1
                self._refuse(tx, "too many calls")
            else:
                self.callcontrol.accept(tx, req, decision.handler)
        elif callee is None:
            tx.reply(404, stateless=True)
        else:
            await self._proxy_to_user(tx, req, callee)

    async def account_of(self, user: str) -> SipAccount | None:
        """The enabled local account a username or extension names, or None."""
        account = await self.users.get(user) or await self.users.by_extension(user)
        return account if account is not None and account.enabled else None

    async def contacts_of(self, user: str) -> list[Contact]:
        """The reachable contacts of a local username or extension (call control's ContactResolver)."""
        account = await self.account_of(user)
        if account is None:
            return []
        aor = f"sip:{account.username}@{self.config.domain}"
        out = []
        for b in _best_q(await self.location.lookup(aor)):
            reach = self._reach(b)
            if reach is None:
                continue  # a WebSocket client whose connection is gone
            contact, flow, route = reach
            last = flow or (b.flow if self._held_elsewhere(b) else None)  # the hop to the contact itself
            transport = last.transport if last is not None else (contact.transport or "udp")
            out.append(Contact(contact, aor, flow, route, media_transport_for(transport)))
        return out

    def _reach(self, b: Binding) -> tuple[SipUri, Flow | None, tuple[str, ...]] | None:
        """How this node reaches a binding: (contact, flow, route set), or None when it cannot.

        A binding whose connection another node holds goes through that node (a signed hop naming the
        connection, sipcore/cluster.py); one over our own connection goes on it while it is open."""
        contact = SipUri.parse(b.contact)
        node = self.node
        if self._held_elsewhere(b):
            assert node is not None and b.received is not None
            return contact, None, (node.hop_route(b.node, b.node_uri, b.received, self.clock()),) + b.path
        if node is not None and b.node and b.node != node.id and b.over_connection:
            return None  # another node's connection and no URI to reach that node by
        flow = _contact_flow(self.stack, contact, b)
        if flow is None and not b.path and contact.host.endswith(".invalid"):
            return None  # a WebSocket client whose connection is gone: unreachable until it registers again
        return contact, flow, b.path

    def _held_elsewhere(self, b: Binding) -> bool:
        """Whether the binding's connection is held by another node we can forward to."""
        node = self.node
        return node is not None and bool(b.node) and b.node != node.id and b.over_connection and bool(b.node_uri)

    async def _proxy_to_user(self, tx: ServerTransaction, req: Request, account: SipAccount) -> None:
        """Fork the request to the registered contacts of a local account (480 when none)."""
        aor = f"sip:{account.username}@{self.config.domain}"
        bindings = await self.location.lookup(aor)
        if not bindings:
            tx.reply(480, stateless=True)
            return
        if tx.state not in ("Proceeding", "Trying"):
            return  # cancelled or timed out meanwhile
        targets = [reach for reach in map(self._reach, _best_q(bindings)) if reach is not None]
        if not targets:
            tx.reply(480, stateless=True)
            return
        self._forward(tx, req, targets, record_route=req.method in DIALOG_CREATING)

    async def _authorize_caller(self, tx: ServerTransaction, req: Request) -> bool:
        """Callers must authenticate (407) and may only call as themselves (From user)."""
        return await self._caller_account(tx, req) is not None

    async def _caller_account(self, tx: ServerTransaction, req: Request) -> SipAccount | None:
        """The authenticated caller's account (None: a 407/403/400 was sent), its credentials stripped."""
        account = await self._authenticate(tx, req, "proxy-authorization", 407)
        if account is None:
            return None
        if req.from_.uri.user not in (account.username, account.extension):
            tx.reply(403, "Forbidden (From user does not match the credentials)", stateless=True)
            return None
        self._strip_credentials(req)
        return account

    def _strip_credentials(self, req: Request) -> None:
        """Remove the Proxy-Authorization meant for our realm before forwarding (§22.3)."""
        keep = [v for v in req.get_all("proxy-authorization") if f'realm="{self.auth.realm}"' not in v]
        req.remove("proxy-authorization")
        for v in keep:
            req.add("Proxy-Authorization", v)

    async def _relay_foreign(self, tx: ServerTransaction, req: Request, target: SipUri) -> None:
        """A request for a domain we do not serve (or with a pre-loaded route): relayed only for
        authenticated local users, so callpath is no open relay."""
        if self.config.auth and not await self._authorize_caller(tx, req):
            return
        self._forward(tx, req, [(target, None, ())], record_route=req.method in DIALOG_CREATING)

    def _forward(self, tx: ServerTransaction, req: Request, targets: list[tuple[SipUri, Flow | None, tuple]],
                 record_route: bool, flow_hint: Flow | None = None) -> None:
        """Forward statefully to each target in parallel (§16.6)."""
        ctx = ProxyContext(self, tx, req)
        tx.owner = ctx
        ctx.start(targets, record_route, flow_hint)


def _contact_flow(stack: SipStack, contact: SipUri, binding: Binding) -> Flow | None:
    """The flow to reach a contact: the registration's own connection for TCP/TLS/WS while it is open,
    and for UDP the source address when the Contact's host is not where the REGISTER came from (NAT,
    like nathelper). None: send to the Contact URI itself."""
    recv = Flow.from_token(binding.received) if binding.received else None
    if recv is None:
        return None
    if recv.reliable:
        return recv if stack.connection_alive(recv) else None
    if contact.host.strip("[]") != recv.remote[0]:
        return recv
    return None


def _next_hop(uri: SipUri, path: tuple[str, ...]) -> SipUri:
    """Where a request to `uri` goes first: the first Path entry of its registration (RFC 3327), else `uri`."""
    return NameAddr.parse(path[0]).uri if path else uri


def _best_q(bindings: list[Binding]) -> list[Binding]:
    """Contacts with the highest q are tried in parallel (bindings arrive sorted by q)."""
    if not bindings:
        return []
    top = bindings[0].q
    return [b for b in bindings if b.q == top]


_date_cache: list = [0, ""]


def _http_date(now: float) -> str:
    """RFC 1123 date for the Date header of 200 to REGISTER (formatted once per second)."""
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache[0] = sec
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(sec))
    return _date_cache[1]


class ProxyContext:
    """One proxied request: its server transaction and the client transactions of its branches."""

    __slots__ = ("proxy", "server_tx", "request", "branches", "best", "final_sent", "cancelled",
                 "provisional", "timer_c", "pending", "done", "cancel_sent", "cancel_pending", "alternates")

    def __init__(self, proxy: Proxy, server_tx: ServerTransaction, request: Request) -> None:
        self.proxy = proxy
        self.server_tx = server_tx
        self.request = request
        self.branches: list[ClientTransaction] = []
        self.best: Response | None = None
        self.final_sent = False
        self.cancelled = False
        self.provisional: set[ClientTransaction] = set()
        self.timer_c: asyncio.TimerHandle | None = None
        self.pending = 0
        self.done: set[ClientTransaction] = set()            # branches with a final answer (or failure)
        self.cancel_sent: set[ClientTransaction] = set()
        self.cancel_pending: set[ClientTransaction] = set()  # to CANCEL as soon as they send a 1xx (§9.1)
        # RFC 3263 §4.3: a branch to a located name that has had no response yet -> the next targets to try
        self.alternates: dict[ClientTransaction, tuple[SipUri, list[Flow], tuple, bool]] = {}

    def start(self, targets: list[tuple[SipUri, Flow | None, tuple]], record_route: bool, flow_hint: Flow | None) -> None:
        proxy = self.proxy
        in_flow = self.server_tx.flow
        resolved = []
        for uri, flow, path in targets:
            if flow is None:
                flow = flow_hint or proxy._flow_for_uri(_next_hop(uri, path))
            resolved.append((uri, flow, path))
        if any(f is None for _, f, _ in resolved):
            proxy._spawn(self._resolve_and_send(resolved, record_route))
            return
        for uri, flow, path in resolved:
            self._send_branch(uri, flow, path, record_route, in_flow)  # type: ignore[arg-type]
        if self.request.method == "INVITE":
            self._arm_timer_c()

    async def _resolve_and_send(self, targets: list, record_route: bool) -> None:
        for uri, flow, path in targets:
            others: list[Flow] = []
            if flow is None:
                flows = await self.proxy._locate(_next_hop(uri, path))
                flow, others = (flows[0], flows[1:]) if flows else (None, [])
            if flow is None:
                self._consider(Response(502, "Bad Gateway (cannot resolve the next hop)"))
                continue
            tx = self._send_branch(uri, flow, path, record_route, self.server_tx.flow)
            if others:
                self.alternates[tx] = (uri, others, path, record_route)
        if not self.branches:
            self._maybe_final()  # nothing could be sent: answer with the failure recorded above
        self.proxy.stack.flush()

    def _send_branch(self, uri: SipUri, flow: Flow, path: tuple, record_route: bool,
                     in_flow: Flow) -> ClientTransaction:
        proxy = self.proxy
        src = self.request
        fwd = Request(src.method, src.uri if not src.has("route") and uri is src.uri else uri, body=src.body)
        fwd.headers = [list(h) for h in src.headers]
        fwd.version = src.version
        if uri is not src.uri:
            fwd.uri = uri
        mf = src.max_forwards
        fwd.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        for p in reversed(path):
            fwd.add("Route", p, first=True)
        if record_route:
            fwd.add("Record-Route", self._rr_value(in_flow, incoming=True), first=True)
            if in_flow.transport != flow.transport or flow.reliable:
                fwd.add("Record-Route", self._rr_value(flow, incoming=False), first=True)
        proxy.stats["forwarded"] += 1
        tx = proxy.stack.send_request(fwd, flow, owner=self)
        self.branches.append(tx)
        self.pending += 1
        return tx

    def _fail_over(self, tx: ClientTransaction, why: str) -> bool:
        """RFC 3263 §4.3: a branch that got a 503, a transport failure or no response at all is sent to its
        next located target as a new branch; False when there is none (or the request is over)."""
        alt = self.alternates.pop(tx, None)
        if alt is None or self.cancelled or self.final_sent or tx in self.done:
            return False
        uri, flows, path, record_route = alt
        log.info("branch to %s failed (%s): trying %s", tx.flow, why, flows[0],
                 extra={"call_id": self.request.call_id})
        new = self._send_branch(uri, flows[0], path, record_route, self.server_tx.flow)
        if len(flows) > 1:
            self.alternates[new] = (uri, flows[1:], path, record_route)
        self._finish_branch(tx)
        return True

    def _rr_value(self, flow: Flow, incoming: bool) -> str:
        """Our Record-Route for the interface facing `flow`; connection flows carry a flow token."""
        uri = self.proxy.stack.local_uri(flow.transport)
        if flow.conn_id is not None:
            uri.params["cpflow"] = flow.to_token()
        uri.params["lr"] = None
        return f"<{uri}>"

    def _arm_timer_c(self) -> None:
        loop = asyncio.get_running_loop()
        if self.timer_c:
            self.timer_c.cancel()
        self.timer_c = loop.call_later(TIMER_C, self._on_timer_c)

    def _on_timer_c(self) -> None:
        """Timer C (§16.6 step 11): no final response in 3 minutes: cancel the branches."""
        self.timer_c = None
        self.cancel_branches()
        self.proxy.stack.flush()

    # -- owner callbacks ---------------------------------------------------------------------------
    def on_response(self, tx: ClientTransaction, resp: Response) -> None:
        code = resp.status
        log.debug("branch response %s (pending=%d cancelled=%s final_sent=%s)", code, self.pending,
                  self.cancelled, self.final_sent, extra={"call_id": self.request.call_id})
        if self.alternates and tx in self.alternates:
            if code == 503 and self._fail_over(tx, "503"):
                return
            self.alternates.pop(tx, None)  # it answered: no other target for this branch
        if code == 100:
            return
        resp.remove_first_value("via")
        if code < 300 and not resp.has("via"):
            return  # nothing to forward it to
        if code < 200:
            self.provisional.add(tx)
            if self.cancelled or tx in self.cancel_pending:
                self._cancel_branch(tx)
                return
            if not self.final_sent:
                if self.request.method == "INVITE":
                    self._arm_timer_c()
                self.server_tx.respond(resp)
            return
        if code < 300:
            if not self.final_sent or self.server_tx.state == "Accepted":
                self.final_sent = True
                self.server_tx.respond(resp)  # every 2xx is forwarded (§16.7 step 5)
            self._finish_branch(tx)
            self.cancel_branches(except_tx=tx)
            return
        self._finish_branch(tx)
        self._consider(resp)
        if code >= 600:
            self.cancel_branches(except_tx=tx)
        self._maybe_final()

    def on_timeout(self, tx: ClientTransaction) -> None:
        if not self._fail_over(tx, "timeout"):
            self._branch_done_with(tx, Response(408, "Request Timeout"))

    def on_transport_failure(self, tx: ClientTransaction) -> None:
        if not self._fail_over(tx, "transport failure"):
            self._branch_done_with(tx, Response(503, "Service Unavailable (transport failure)"))

    def _branch_done_with(self, tx: ClientTransaction, resp: Response) -> None:
        if tx not in self.branches or tx in self.done:
            return
        self._finish_branch(tx)
        self._consider(resp)
        self._maybe_final()

    def _consider(self, resp: Response) -> None:
        """Keep the best final response seen so far (§16.7 step 6)."""
        if self.best is None or _better(resp, self.best):
            self.best = resp

    def _finish_branch(self, tx: ClientTransaction) -> None:
        if tx in self.done:
            return
        self.done.add(tx)
        self.provisional.discard(tx)
        self.cancel_pending.discard(tx)
        self.pending -= 1
        if self.pending <= 0 and self.timer_c:
            self.timer_c.cancel()
            self.timer_c = None

    def _maybe_final(self) -> None:
        log.debug("maybe final: pending=%d final_sent=%s best=%s server_tx=%s", self.pending, self.final_sent,
                  self.best, self.server_tx.state, extra={"call_id": self.request.call_id})
        if self.pending > 0 or self.final_sent or self.best is None:
            return
        best = self.best
        self.final_sent = True
        code = best.status
        if self.cancelled:
            self.server_tx.reply(487)
            return
        if not best.has("via"):  # synthesised (408/503/502): build it from the request
            self.server_tx.reply(code, best.reason)
            return
        if code == 503:
            self.server_tx.reply(500, "Server Internal Error (next hop unavailable)")
            return
        self.server_tx.respond(best)

    # -- CANCEL ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """The caller cancelled: CANCEL every pending branch; the 487s produce our final response."""
        self.cancelled = True
        self.cancel_branches()
        if self.pending <= 0 and not self.final_sent:
            self.final_sent = True
            self.server_tx.reply(487)

    def cancel_branches(self, except_tx: ClientTransaction | None = None) -> None:
        for tx in self.branches:
            if tx is not except_tx and tx.state in ("Calling", "Proceeding", "Trying"):
                if tx in self.provisional:
                    self._cancel_branch(tx)
                else:
                    self.cancel_pending.add(tx)  # no provisional yet: CANCEL must wait for one (§9.1)
        self.cancelled = self.cancelled or except_tx is None

    def _cancel_branch(self, tx: ClientTransaction) -> None:
        if tx in self.cancel_sent:
            return
        self.cancel_sent.add(tx)
        self.proxy.stack.send_request(tx.cancel_request(), tx.flow, owner=_IgnoreResponses, branch=tx.branch)


class _IgnoreResponsesType:
    """Owner for CANCEL client transactions: their 200 needs no action."""

    def on_response(self, tx: Any, resp: Response) -> None:
        pass

    def on_timeout(self, tx: Any) -> None:
        pass

    def on_transport_failure(self, tx: Any) -> None:
        pass


_IgnoreResponses = _IgnoreResponsesType()


def _better(a: Response, b: Response) -> bool:
    """Best-response choice (§16.7 step 6): 6xx first, then the lowest class, 401/407 preferred in 4xx."""
    ca, cb = a.status, b.status
    if ca >= 600 or cb >= 600:
        return ca >= 600 and cb < 600
    if ca // 100 != cb // 100:
        return ca // 100 < cb // 100
    if ca in (401, 407) and cb not in (401, 407):
        return True
    return False
