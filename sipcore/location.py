"""Location service (RFC 3261 §10.3): where each address-of-record can be reached right now.

The registrar writes an AOR's whole binding set with `save` and the proxy reads it back with `lookup`.
Two backends share one interface: `MemoryLocation` (one process, the embedded default) and `RedisLocation`
(bindings outlive the process and are shared by every callpath node on the same Redis).

Expiry is decided by the service's clock (`clock`, injectable for tests): a binding is live while
`expires_at > clock()`. Expired bindings are never returned, whether or not `purge_expired` has run.

Every change is published as a typed event (sipcore/regevents.py) to the subscribers of `subscribe`:
`save` diffs the stored set against the new one (Registered / Refreshed / Unregistered, and Expired for a
binding that had run out unpurged), `purge_expired` publishes Expired, and `flow_lost` (called when a
TCP/TLS/WebSocket connection of this node closes) removes the bindings that can only be reached over it
and publishes FlowLost. The shared logic lives in `LocationService`; a backend implements four primitives
(`_replace`, `_update`, `_purge`, `lookup`), each atomic in its store.

Several nodes can share one Redis: each binding names the node holding its connection (`Binding.node`)
and the SIP URI that node is reached at (`Binding.node_uri`), so another node forwards there instead of
using a connection id that only means something in the process that made it (sipcore/cluster.py).
"""
from __future__ import annotations

import abc
import dataclasses
import heapq
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from .regevents import (
    BindingEvent, Expired, FlowLost, Refreshed, Registered, RegistrationEvents, Subscriber, Unregistered,
)
from .transaction import RELIABLE, Flow

__all__ = [
    "Binding",
    "LocationService",
    "MemoryLocation",
    "RedisLocation",
    "open_location",
    "DEFAULT_REDIS_PREFIX",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
DEFAULT_REDIS_PREFIX = "callpath:loc:"


@dataclass(slots=True, frozen=True)
class Binding:
    """One Contact bound to an AOR: what the registrar stored and what the proxy forks to."""

    aor: str
    contact: str
    expires_at: float
    q: float = 1.0
    call_id: str = ""
    cseq: int = 0
    path: tuple[str, ...] = ()
    received: str | None = None
    user_agent: str = ""
    instance: str = ""
    reg_id: int | None = None
    node: str = ""       # id of the callpath node holding the flow in `received` ("": single node)
    node_uri: str = ""   # the SIP URI other nodes forward to, to reach that node

    def is_live(self, now: float) -> bool:
        """True while the binding has not expired at `now` (expiry instant itself counts as expired)."""
        return self.expires_at > now

    @property
    def flow(self) -> Flow | None:
        """The flow the REGISTER came over (`received`), or None."""
        return Flow.from_token(self.received) if self.received else None

    @property
    def over_connection(self) -> bool:
        """Whether the binding was registered over a connection (TCP, TLS, WebSocket)."""
        return bool(self.received) and self.received.split("~", 1)[0] in RELIABLE  # type: ignore[union-attr]

    @property
    def flow_only(self) -> bool:
        """Whether the contact can only be reached over the connection it registered on: WebSocket clients
        (RFC 7118 §5: their Contact is not routable), Contact hosts under `.invalid`, and RFC 5626 outbound
        registrations (`+sip.instance` with `reg-id`). Other connection-borne contacts (a desk phone over TCP
        with its own address in Contact) stay reachable at their Contact URI once the connection is gone."""
        if not self.over_connection:
            return False
        transport = self.received.split("~", 1)[0]  # type: ignore[union-attr]
        if transport in ("ws", "wss"):
            return True
        if self.instance and self.reg_id is not None:
            return True
        host = self.contact.partition("@")[2] or self.contact.partition(":")[2]
        host = re.split(r"[:;>?]", host.lstrip("["), maxsplit=1)[0].rstrip("]").lower()
        return host.endswith(".invalid")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready), the shape stored by the Redis backend."""
        return {
            "aor": self.aor,
            "contact": self.contact,
            "expires_at": self.expires_at,
            "q": self.q,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "path": list(self.path),
            "received": self.received,
            "user_agent": self.user_agent,
            "instance": self.instance,
            "reg_id": self.reg_id,
            "node": self.node,
            "node_uri": self.node_uri,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        """Rebuild from `to_dict` output; unknown keys are ignored so newer nodes can add fields."""
        reg_id = data.get("reg_id")
        return cls(
            aor=str(data["aor"]),
            contact=str(data["contact"]),
            expires_at=float(data["expires_at"]),
            q=float(data.get("q", 1.0)),
            call_id=str(data.get("call_id", "")),
            cseq=int(data.get("cseq", 0)),
            path=tuple(str(p) for p in data.get("path") or ()),
            received=None if data.get("received") is None else str(data["received"]),
            user_agent=str(data.get("user_agent", "")),
            instance=str(data.get("instance", "")),
            reg_id=None if reg_id is None else int(reg_id),
            node=str(data.get("node") or ""),
            node_uri=str(data.get("node_uri") or ""),
        )

    def to_json(self) -> str:
        """Compact JSON text of the binding, for storage shared between nodes."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Binding:
        """Parse `to_json` output (str or bytes); raises ValueError on malformed input."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return cls.from_dict(data)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed binding JSON: {exc}") from exc


def _order(bindings: Iterable[Binding]) -> list[Binding]:
    """Highest q first; ties: latest expiry (most recently refreshed) first, then by contact, so both backends agree."""
    items = list(bindings)
    if len(items) < 2:
        return items
    return sorted(items, key=lambda b: (-b.q, -b.expires_at, b.contact))


def _live_set(aor: str, bindings: Iterable[Binding], now: float) -> dict[str, Binding]:
    """Check that bindings belong to `aor`, keep the live ones, one per contact (the last given wins)."""
    out: dict[str, Binding] = {}
    for b in bindings:
        if b.aor != aor:
            raise ValueError(f"binding for {b.aor!r} saved under AOR {aor!r}")
        if b.is_live(now):
            out[b.contact] = b
        else:
            out.pop(b.contact, None)
    return out


Change = tuple[Binding, "Binding | None"]  # (binding as stored, what replaced it: None when removed)


def _without_flow(stored: Iterable[Binding], flow: str, node: str) -> tuple[dict[str, Binding], list[Change]]:
    """The binding set after connection `flow` of `node` closed: flow-only bindings over it dropped, the
    others kept without the flow (reachable at their Contact URI by any node)."""
    out: dict[str, Binding] = {}
    changes: list[Change] = []
    for b in stored:
        if b.received == flow and b.node == node:
            if b.flow_only:
                changes.append((b, None))
                continue
            kept = dataclasses.replace(b, received=None, node="", node_uri="")
            changes.append((b, kept))
            out[b.contact] = kept
        else:
            out[b.contact] = b
    return out, changes


class LocationService(abc.ABC):
    """Storage of AOR -> bindings for the registrar and the proxy (RFC 3261 §10.3), publishing every change.

    `node` is the id of the callpath node this service runs in: the connections it indexes for `flow_lost`
    are those of bindings naming it."""

    def __init__(self, clock: Clock = time.time, node: str = "") -> None:
        self._clock = clock
        self.node = node
        self.events = RegistrationEvents()
        # flow token of a connection of this node -> AORs with a binding registered over it
        self._flows: dict[str, set[str]] = {}

    # -- the interface ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def lookup(self, aor: str) -> list[Binding]:
        """Unexpired bindings of `aor`, highest q first (empty list when unknown)."""

    async def save(self, aor: str, bindings: list[Binding]) -> None:
        """Atomically replace the AOR's whole binding set; an empty list (or only expired ones) removes the AOR.

        Publishes, once stored: Registered for a new contact, Refreshed for a contact that changed (new expiry,
        flow, q...), Unregistered for a live contact left out, Expired for a stored one that had run out."""
        now = self._clock()
        live = _live_set(aor, bindings, now)
        old = await self._replace(aor, live, now)
        self._index(aor, old, live.values())
        if not self.events:
            return
        remaining = len(live)
        before = {b.contact: b for b in old}
        for contact, b in live.items():
            prev = before.pop(contact, None)
            if prev is not None and not prev.is_live(now):
                self._publish(Expired, prev, now, remaining)
                prev = None
            if prev is None:
                self._publish(Registered, b, now, remaining)
            elif prev != b:
                self._publish(Refreshed, b, now, remaining)
        for prev in before.values():
            self._publish(Unregistered if prev.is_live(now) else Expired, prev, now, remaining)

    async def purge_expired(self) -> int:
        """Drop expired bindings from storage so memory stays bounded, publishing Expired for each; returns
        how many were dropped. Run it often (the server does every second): it is when Expired is published."""
        now = self._clock()
        removed = await self._purge(now)
        for b, remaining in removed:
            self._forget_flow(b.aor, b.received)
            self._publish(Expired, b, now, remaining)
        return len(removed)

    async def flow_lost(self, flow: Flow | str) -> int:
        """Connection `flow` (a Flow or its token) of this node closed: remove at once the bindings that can
        only be reached over it (see `Binding.flow_only`), keep the others without the flow, and publish
        FlowLost for each. Returns how many bindings were removed."""
        token = flow if isinstance(flow, str) else flow.to_token()
        aors = self._flows.pop(token, None)
        if not aors:
            return 0
        removed = 0
        node = self.node
        for aor in sorted(aors):
            changes: list[Change] = []

            def drop(stored: list[Binding], _changes: list[Change] = changes) -> dict[str, Binding]:
                out, found = _without_flow(stored, token, node)
                _changes[:] = found
                return out

            try:
                live = await self._update(aor, drop)
            except Exception:  # noqa: BLE001 - one AOR's failure must not keep the others registered
                log.exception("location: removing the bindings of %s over the closed flow %s failed", aor, token)
                continue
            now = self._clock()
            for old, new in changes:
                removed += new is None
                self._publish(FlowLost, new or old, now, live, flow_of=old, removed=new is None)
        return removed

    async def drop_stale_flows(self) -> int:
        """At start-up: the bindings stored for this node over connections of an earlier process (a restart,
        a crash) can no longer be reached that way. Treat each as its flow lost (FlowLost published); returns
        how many were removed. Walks every AOR once (Redis: SCAN)."""
        removed = 0
        node = self.node
        async for aor, stored in self._scan():
            tokens = {b.received for b in stored if b.over_connection and b.node == node}
            for token in tokens:
                self._flows.setdefault(token, set()).add(aor)  # type: ignore[arg-type]
                removed += await self.flow_lost(token)  # type: ignore[arg-type]
        return removed

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` for every registration event (sipcore/regevents.py); returns the unsubscribe
        function. A raising callback is logged and never breaks a registration."""
        return self.events.subscribe(callback)

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of live bindings across all AORs (for stats)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections/resources; the service is not used afterwards."""

    async def shared_secret(self) -> bytes:
        """A secret every node sharing this store agrees on (signs requests one node forwards to another).
        In-process: random per process (there is no other node)."""
        secret = getattr(self, "_secret", None)
        if secret is None:
            secret = self._secret = os.urandom(32)
        return secret

    # -- what a backend implements -----------------------------------------------------------------
    @abc.abstractmethod
    async def _replace(self, aor: str, live: dict[str, Binding], now: float) -> list[Binding]:
        """Atomically store `live` (possibly empty) as the AOR's set; return what was stored before
        (expired-but-unpurged bindings included)."""

    @abc.abstractmethod
    async def _update(self, aor: str, change: Callable[[list[Binding]], dict[str, Binding]]) -> int:
        """Atomically replace the AOR's stored set by `change(stored)` (stored: every binding, expired ones
        included; `change` may run more than once on a retry); return the live bindings left."""

    @abc.abstractmethod
    async def _purge(self, now: float) -> list[tuple[Binding, int]]:
        """Remove the bindings expired at `now`; return each with the live count its AOR kept."""

    @abc.abstractmethod
    def _scan(self) -> AsyncIterator[tuple[str, list[Binding]]]:
        """Every stored AOR with its bindings (expired ones included), in no particular order."""

    # -- shared helpers ----------------------------------------------------------------------------
    def _publish(self, kind: type[BindingEvent], b: Binding, now: float, remaining: int,
                 flow_of: Binding | None = None, **extra: Any) -> None:
        """Publish `kind` for binding `b`; transport, source and node are those of `flow_of` (default `b`)."""
        via = flow_of or b
        flow = via.flow
        self.events.publish(kind(  # type: ignore[call-arg]
            aor=b.aor, binding=b, transport=flow.transport if flow else "", source=flow.remote if flow else None,
            node=via.node, at=now, remaining=remaining, **extra))

    def _index(self, aor: str, old: Iterable[Binding], live: Iterable[Binding]) -> None:
        """Track which AORs have bindings over each connection of this node (for `flow_lost`)."""
        kept: set[str] = set()
        for b in live:
            if b.over_connection and b.node == self.node:
                self._flows.setdefault(b.received, set()).add(aor)  # type: ignore[arg-type]
                kept.add(b.received)  # type: ignore[arg-type]
        for b in old:
            if b.received and b.received not in kept:
                self._forget_flow(aor, b.received)

    def _forget_flow(self, aor: str, token: str | None) -> None:
        aors = self._flows.get(token) if token else None
        if aors is not None:
            aors.discard(aor)
            if not aors:
                del self._flows[token]  # type: ignore[arg-type]

    async def __aenter__(self) -> LocationService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MemoryLocation(LocationService):
    """In-process location service: a dict of AORs plus a min-heap of each AOR's next expiry for cheap purges."""

    # Rebuild the heap once stale entries (from re-registrations) outnumber live AORs by this factor.
    _COMPACT_FACTOR = 2
    _COMPACT_SLACK = 64

    def __init__(self, clock: Clock = time.time, node: str = "") -> None:
        super().__init__(clock, node)
        # aor -> (generation, bindings by contact); the generation tells current heap entries from stale ones.
        self._aors: dict[str, tuple[int, dict[str, Binding]]] = {}
        self._heap: list[tuple[float, int, str]] = []  # (earliest expiry in the AOR, generation, aor)
        self._generation = itertools.count(1)

    @property
    def stored(self) -> int:
        """Bindings held in memory right now, expired-but-unpurged ones included (to verify memory is bounded)."""
        return sum(len(bs) for _, bs in self._aors.values())

    async def lookup(self, aor: str) -> list[Binding]:
        """Unexpired bindings of `aor`, highest q first (bindings are values: callers must not mutate them)."""
        entry = self._aors.get(aor)
        if entry is None:
            return []
        now = self._clock()
        return _order(b for b in entry[1].values() if b.is_live(now))

    async def _replace(self, aor: str, live: dict[str, Binding], now: float) -> list[Binding]:
        """Replace the AOR's binding set and schedule its next expiry (the registrar builds new Binding values)."""
        entry = self._aors.get(aor)
        old = list(entry[1].values()) if entry is not None else []
        if not live:
            self._aors.pop(aor, None)
        else:
            self._store(aor, live)
        self._maybe_compact()
        return old

    async def _update(self, aor: str, change: Callable[[list[Binding]], dict[str, Binding]]) -> int:
        entry = self._aors.get(aor)
        new = change(list(entry[1].values()) if entry is not None else [])
        if new:
            self._store(aor, new)
        else:
            self._aors.pop(aor, None)
        self._maybe_compact()
        now = self._clock()
        return sum(1 for b in new.values() if b.is_live(now))

    async def _purge(self, now: float) -> list[tuple[Binding, int]]:
        """Pop due heap entries and drop their AORs' expired bindings; O(expiring AORs * log n)."""
        removed: list[tuple[Binding, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, aor = heapq.heappop(heap)
            entry = self._aors.get(aor)
            if entry is None or entry[0] != generation:
                continue  # stale: the AOR was re-saved or removed since this entry was pushed
            bindings = entry[1]
            live = {c: b for c, b in bindings.items() if b.is_live(now)}
            removed.extend((b, len(live)) for b in bindings.values() if not b.is_live(now))
            if live:
                self._store(aor, live)
            else:
                del self._aors[aor]
        self._maybe_compact()
        return removed

    async def _scan(self) -> AsyncIterator[tuple[str, list[Binding]]]:
        for aor, (_, bindings) in list(self._aors.items()):
            yield aor, list(bindings.values())

    async def count(self) -> int:
        """Live bindings across all AORs."""
        now = self._clock()
        return sum(1 for _, bs in self._aors.values() for b in bs.values() if b.is_live(now))

    async def close(self) -> None:
        """Forget every binding."""
        self._aors.clear()
        self._heap.clear()
        self._flows.clear()

    def _store(self, aor: str, bindings: dict[str, Binding]) -> None:
        """Install a non-empty binding set under a fresh generation and push its earliest expiry."""
        generation = next(self._generation)
        self._aors[aor] = (generation, bindings)
        earliest = min(b.expires_at for b in bindings.values())
        heapq.heappush(self._heap, (earliest, generation, aor))

    def _maybe_compact(self) -> None:
        """Drop stale heap entries when they dominate, so re-registrations cannot grow the heap without bound."""
        if len(self._heap) <= self._COMPACT_FACTOR * len(self._aors) + self._COMPACT_SLACK:
            return
        self._heap = [
            (min(b.expires_at for b in bs.values()), generation, aor)
            for aor, (generation, bs) in self._aors.items()
        ]
        heapq.heapify(self._heap)


# Swap an AOR's hash for a new set in one step and keep the expiry index in step; returns the old values.
# KEYS: hash, index; ARGV: aor, PEXPIREAT deadline (ms), earliest expiry, then field/value pairs.
_SAVE_SCRIPT = """
local old = redis.call('HVALS', KEYS[1])
redis.call('DEL', KEYS[1])
if #ARGV >= 5 then
  for i = 4, #ARGV, 1000 do
    redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return old
"""

# Atomically remove a hash's expired (or unreadable) bindings and re-file the AOR in the expiry index at its
# next expiry; returns {live bindings left, removed values...}. KEYS: hash, index; ARGV: now, aor.
_PURGE_SCRIPT = """
local now = tonumber(ARGV[1])
local vals = redis.call('HGETALL', KEYS[1])
local dead = {}
local out = {0}
local earliest = nil
for i = 1, #vals, 2 do
  local ok, b = pcall(cjson.decode, vals[i + 1])
  local exp = nil
  if ok and type(b) == 'table' then exp = tonumber(b['expires_at']) end
  if exp == nil or exp <= now then
    dead[#dead + 1] = vals[i]
    out[#out + 1] = vals[i + 1]
  else
    out[1] = out[1] + 1
    if earliest == nil or exp < earliest then earliest = exp end
  end
end
for i = 1, #dead, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 999, #dead)))
end
if earliest == nil then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], string.format('%.17g', earliest), ARGV[2])
end
return out
"""


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches literally in SCAN MATCH."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _text(value: str | bytes) -> str:
    """Redis replies are bytes unless the client decodes; accept both."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisLocation(LocationService):
    """Location service in Redis: one hash per AOR (field = contact, value = Binding JSON), shared by all nodes.

    A sorted set (`index_key`: AOR scored by its earliest binding expiry) lets `purge_expired` find what is
    due without scanning, so it can run every second and publish Expired on time. The hash's key TTL is set
    `expiry_grace` seconds after the latest binding's expiry: AORs vanish even when no node purges, yet a
    running purge sees them first (and publishes Expired); per-binding expiry is enforced on read anyway.
    """

    _SCAN_COUNT = 500
    _PURGE_BATCH = 500

    def __init__(
        self,
        redis: str | aioredis.Redis,
        prefix: str = DEFAULT_REDIS_PREFIX,
        clock: Clock = time.time,
        node: str = "",
        expiry_grace: float = 60.0,
    ) -> None:
        super().__init__(clock, node)
        if isinstance(redis, str):
            self._redis: aioredis.Redis = aioredis.from_url(redis)
            self._owns_client = True
        else:
            self._redis = redis
            self._owns_client = False
        self._prefix = prefix
        self.expiry_grace = expiry_grace
        self._save = self._redis.register_script(_SAVE_SCRIPT)
        self._purge_one = self._redis.register_script(_PURGE_SCRIPT)

    @property
    def prefix(self) -> str:
        """Key prefix of every AOR hash this service writes."""
        return self._prefix

    @property
    def index_key(self) -> str:
        """The sorted set of AORs by next expiry (no AOR starts with '@', so it cannot collide)."""
        return self._prefix + "@expiry"

    def key(self, aor: str) -> str:
        """Redis key of an AOR's binding hash."""
        return self._prefix + aor

    async def lookup(self, aor: str) -> list[Binding]:
        """HGETALL the AOR's hash and return the unexpired bindings, highest q first."""
        raw = await self._redis.hgetall(self.key(aor))
        now = self._clock()
        return _order(b for b in self._decode_all(aor, raw.values()) if b.is_live(now))

    async def _replace(self, aor: str, live: dict[str, Binding], now: float) -> list[Binding]:
        """One script: HVALS the old set, DEL, HSET the live bindings, PEXPIREAT, file the AOR in the index."""
        args: list[Any] = [aor, 0, 0]
        if live:
            latest = max(b.expires_at for b in live.values())
            args = [aor, self._deadline_ms(latest + self.expiry_grace),
                    repr(min(b.expires_at for b in live.values()))]
            for c, b in live.items():
                args += [c, b.to_json()]
        old = await self._save(keys=[self.key(aor), self.index_key], args=args)
        return self._decode_all(aor, old)

    async def _update(self, aor: str, change: Callable[[list[Binding]], dict[str, Binding]]) -> int:
        """Optimistic transaction: WATCH the hash, read it, write `change`'s set in MULTI/EXEC, retry on a race."""
        key = self.key(aor)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hvals(key)
                    new = change(self._decode_all(aor, raw))
                    pipe.multi()
                    pipe.delete(key)
                    if new:
                        pipe.hset(key, mapping={c: b.to_json() for c, b in new.items()})
                        latest = max(b.expires_at for b in new.values())
                        pipe.pexpireat(key, self._deadline_ms(latest + self.expiry_grace))
                        pipe.zadd(self.index_key, {aor: min(b.expires_at for b in new.values())})
                    else:
                        pipe.zrem(self.index_key, aor)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        now = self._clock()
        return sum(1 for b in new.values() if b.is_live(now))

    async def _purge(self, now: float) -> list[tuple[Binding, int]]:
        """The AORs due in the index (ZRANGEBYSCORE, never KEYS or SCAN), each purged by one atomic script."""
        removed: list[tuple[Binding, int]] = []
        while True:
            due = await self._redis.zrangebyscore(self.index_key, "-inf", repr(now), start=0,
                                                  num=self._PURGE_BATCH)
            if not due:
                break
            for member in due:
                aor = _text(member)
                out = await self._purge_one(keys=[self.key(aor), self.index_key], args=[repr(now), aor])
                remaining = int(out[0])
                for b in self._decode_all(aor, out[1:]):
                    removed.append((b, remaining))
            if len(due) < self._PURGE_BATCH:
                break
        return removed

    async def _scan(self) -> AsyncIterator[tuple[str, list[Binding]]]:
        """SCAN the prefix (hashes only), one HVALS per AOR."""
        start = len(self._prefix)
        async for key in self._redis.scan_iter(
            match=_glob_escape(self._prefix) + "*", count=self._SCAN_COUNT, _type="hash"
        ):
            aor = _text(key)[start:]
            yield aor, self._decode_all(aor, await self._redis.hvals(key))

    async def count(self) -> int:
        """SCAN the prefix and count live bindings, fetching hashes in pipelined batches."""
        now = self._clock()
        total = 0
        batch: list[Any] = []

        async def flush() -> int:
            async with self._redis.pipeline(transaction=False) as pipe:
                for k in batch:
                    pipe.hvals(k)
                results = await pipe.execute()
            batch.clear()
            return sum(
                1 for vals in results for b in self._decode_all(None, vals) if b.is_live(now)
            )

        async for key in self._redis.scan_iter(
            match=_glob_escape(self._prefix) + "*", count=self._SCAN_COUNT, _type="hash"
        ):
            batch.append(key)
            if len(batch) >= self._SCAN_COUNT:
                total += await flush()
        if batch:
            total += await flush()
        return total

    async def shared_secret(self) -> bytes:
        """The cluster's secret, created by the first node that asks (SET NX) and read by the others."""
        key = self._prefix + "@secret"
        await self._redis.set(key, os.urandom(32).hex(), nx=True)
        value = await self._redis.get(key)
        return bytes.fromhex(_text(value))

    async def close(self) -> None:
        """Close the connection pool if this service created it (a client passed in stays the caller's)."""
        self._flows.clear()
        if self._owns_client:
            await self._redis.aclose()

    def _deadline_ms(self, expires_at: float) -> int:
        """Unix-ms deadline for PEXPIREAT: `expires_at` itself on the wall clock, else mapped from the injected clock."""
        if self._clock is time.time:
            wall = expires_at
        else:
            wall = time.time() + (expires_at - self._clock())
        return max(1, math.ceil(wall * 1000))

    @staticmethod
    def _decode_all(aor: str | None, values: Iterable[str | bytes]) -> list[Binding]:
        """Decode stored bindings, skipping (and logging) unreadable ones rather than failing the caller."""
        out: list[Binding] = []
        for value in values:
            try:
                out.append(Binding.from_json(_text(value)))
            except ValueError as exc:
                log.warning("location: skipping unreadable binding of %s: %s", aor or "?", exc)
        return out


def open_location(
    url: str, clock: Clock = time.time, *, prefix: str = DEFAULT_REDIS_PREFIX, node: str = ""
) -> LocationService:
    """Build the location service named by settings `sip.location`: "memory" or "redis://host:port/db";
    `node` is this process's node id (settings `sip.node_id`)."""
    spec = url.strip()
    if spec.lower() in ("memory", "memory://"):
        return MemoryLocation(clock=clock, node=node)
    if spec.lower().startswith(("redis://", "rediss://", "unix://")):
        return RedisLocation(spec, prefix=prefix, clock=clock, node=node)
    raise ValueError(
        f"unsupported location service {url!r}: expected 'memory' or a Redis URL such as "
        "'redis://127.0.0.1:6379/0' (rediss:// and unix:// also accepted)"
    )
