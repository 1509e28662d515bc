"""Location service (RFC 3261 §10.3): where each address-of-record can be reached right now.

The registrar writes an AOR's whole binding set with `save` and the proxy reads it back with `lookup`.
Two backends share one interface: `MemoryLocation` (one process, the embedded default) and `RedisLocation`
(bindings outlive the process and are shared by every callpath node on the same Redis).

Expiry is decided by the service's clock (`clock`, injectable for tests): a binding is live while
`expires_at > clock()`. Expired bindings are never returned, whether or not `purge_expired` has run.
"""
from __future__ import annotations

import abc
import heapq
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

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

    def is_live(self, now: float) -> bool:
        """True while the binding has not expired at `now` (expiry instant itself counts as expired)."""
        return self.expires_at > now

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


class LocationService(abc.ABC):
    """Storage of AOR -> bindings for the registrar and the proxy (RFC 3261 §10.3)."""

    @abc.abstractmethod
    async def lookup(self, aor: str) -> list[Binding]:
        """Unexpired bindings of `aor`, highest q first (empty list when unknown)."""

    @abc.abstractmethod
    async def save(self, aor: str, bindings: list[Binding]) -> None:
        """Atomically replace the AOR's whole binding set; an empty list (or only expired ones) removes the AOR."""

    @abc.abstractmethod
    async def purge_expired(self) -> int:
        """Drop expired bindings from storage so memory stays bounded; returns how many were dropped."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of live bindings across all AORs (for stats)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections/resources; the service is not used afterwards."""

    async def __aenter__(self) -> LocationService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MemoryLocation(LocationService):
    """In-process location service: a dict of AORs plus a min-heap of each AOR's next expiry for cheap purges."""

    # Rebuild the heap once stale entries (from re-registrations) outnumber live AORs by this factor.
    _COMPACT_FACTOR = 2
    _COMPACT_SLACK = 64

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
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

    async def save(self, aor: str, bindings: list[Binding]) -> None:
        """Replace the AOR's binding set and schedule its next expiry (the registrar builds new Binding values)."""
        live = _live_set(aor, bindings, self._clock())
        if not live:
            self._aors.pop(aor, None)
        else:
            self._store(aor, live)
        self._maybe_compact()

    async def purge_expired(self) -> int:
        """Pop due heap entries and drop their AORs' expired bindings; O(expiring AORs * log n)."""
        now = self._clock()
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, aor = heapq.heappop(heap)
            entry = self._aors.get(aor)
            if entry is None or entry[0] != generation:
                continue  # stale: the AOR was re-saved or removed since this entry was pushed
            bindings = entry[1]
            live = {c: b for c, b in bindings.items() if b.is_live(now)}
            removed += len(bindings) - len(live)
            if live:
                self._store(aor, live)
            else:
                del self._aors[aor]
        self._maybe_compact()
        return removed

    async def count(self) -> int:
        """Live bindings across all AORs."""
        now = self._clock()
        return sum(1 for _, bs in self._aors.values() for b in bs.values() if b.is_live(now))

    async def close(self) -> None:
        """Forget every binding."""
        self._aors.clear()
        self._heap.clear()

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


# Atomically remove a hash's expired (or unreadable) bindings; a concurrent save cannot be half-purged.
_PURGE_SCRIPT = """
local now = tonumber(ARGV[1])
local vals = redis.call('HGETALL', KEYS[1])
local dead = {}
for i = 1, #vals, 2 do
  local ok, b = pcall(cjson.decode, vals[i + 1])
  local exp = nil
  if ok and type(b) == 'table' then exp = tonumber(b['expires_at']) end
  if exp == nil or exp <= now then dead[#dead + 1] = vals[i] end
end
for i = 1, #dead, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dead, i, math.min(i + 999, #dead)))
end
return #dead
"""


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches literally in SCAN MATCH."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _text(value: str | bytes) -> str:
    """Redis replies are bytes unless the client decodes; accept both."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisLocation(LocationService):
    """Location service in Redis: one hash per AOR (field = contact, value = Binding JSON), shared by all nodes.

    The key's TTL is set at the latest binding's expiry, so AORs vanish on time even if nobody purges;
    per-binding expiry inside the hash is enforced on read and by `purge_expired`.
    """

    _SCAN_COUNT = 500

    def __init__(
        self,
        redis: str | aioredis.Redis,
        prefix: str = DEFAULT_REDIS_PREFIX,
        clock: Clock = time.time,
    ) -> None:
        if isinstance(redis, str):
            self._redis: aioredis.Redis = aioredis.from_url(redis)
            self._owns_client = True
        else:
            self._redis = redis
            self._owns_client = False
        self._prefix = prefix
        self._clock = clock
        self._purge = self._redis.register_script(_PURGE_SCRIPT)

    @property
    def prefix(self) -> str:
        """Key prefix of every AOR hash this service writes."""
        return self._prefix

    def key(self, aor: str) -> str:
        """Redis key of an AOR's binding hash."""
        return self._prefix + aor

    async def lookup(self, aor: str) -> list[Binding]:
        """HGETALL the AOR's hash and return the unexpired bindings, highest q first."""
        raw = await self._redis.hgetall(self.key(aor))
        now = self._clock()
        return _order(b for b in self._decode_all(aor, raw.values()) if b.is_live(now))

    async def save(self, aor: str, bindings: list[Binding]) -> None:
        """Replace the hash in one MULTI/EXEC: DEL, HSET the live bindings, PEXPIREAT the latest expiry."""
        key = self.key(aor)
        live = _live_set(aor, bindings, self._clock())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if live:
                pipe.hset(key, mapping={c: b.to_json() for c, b in live.items()})
                latest = max(b.expires_at for b in live.values())
                pipe.pexpireat(key, self._deadline_ms(latest))
            await pipe.execute()

    async def purge_expired(self) -> int:
        """SCAN the prefix (never KEYS) and atomically HDEL expired fields per hash; returns how many."""
        now = self._clock()
        removed = 0
        async for key in self._redis.scan_iter(
            match=_glob_escape(self._prefix) + "*", count=self._SCAN_COUNT, _type="hash"
        ):
            removed += int(await self._purge(keys=[key], args=[repr(now)]))
        return removed

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

    async def close(self) -> None:
        """Close the connection pool if this service created it (a client passed in stays the caller's)."""
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
    url: str, clock: Clock = time.time, *, prefix: str = DEFAULT_REDIS_PREFIX
) -> LocationService:
    """Build the location service named by settings `sip.location`: "memory" or "redis://host:port/db"."""
    spec = url.strip()
    if spec.lower() in ("memory", "memory://"):
        return MemoryLocation(clock=clock)
    if spec.lower().startswith(("redis://", "rediss://", "unix://")):
        return RedisLocation(spec, prefix=prefix, clock=clock)
    raise ValueError(
        f"unsupported location service {url!r}: expected 'memory' or a Redis URL such as "
        "'redis://127.0.0.1:6379/0' (rediss:// and unix:// also accepted)"
    )
