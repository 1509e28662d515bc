"""``MediaPool``: the signalling process's media controller over all workers (docs/callcontrol.md).

It places ng calls and leg groups on workers, routes each leg's command to its worker and its events to its
owner, joins legs of different workers through internal plain-RTP legs, and says what died with a worker.
``media.client.MediaClient`` is the per-worker client it drives (any object with its methods will do: the
unit tests use fakes). Like the client, it imports nothing of the worker.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import Connected, LegDescription, LegState, MediaControlError, Recording, RemoteOffer
from .events import MediaEvent, WorkerLost
from .sdp import Connection, SdpError, SessionDescription

__all__ = ["BRIDGE_PREFIX", "LostMedia", "MediaPool", "Owner"]

log = logging.getLogger(__name__)

Owner = Callable[[MediaEvent], None]
"""Who gets a leg's events: called with each one (from the event loop; it must not block)."""


@dataclass(frozen=True, slots=True)
class LostMedia:
    """What died with a worker (``MediaPool.replace``): the ng calls it held and the legs (internal ones left out)."""

    calls: tuple[str, ...] = ()
    legs: tuple[str, ...] = ()


@dataclass(slots=True)
class _PlacedLeg:
    worker: int
    group: str
    owner: Owner | None
    internal: bool = False
    weight: float = 0.5
    codec: str | None = None


@dataclass(slots=True)
class _Bridge:
    """A leg joined to a leg or a conference on another worker through two internal plain-RTP legs:
    ``a <-> inner_a`` on a's worker, RTP on loopback, ``inner_b <-> b`` (or ``inner_b`` in ``conference``)."""

    a: str
    b: str | None
    inner_a: str
    inner_b: str
    conference: str | None = None


@dataclass(slots=True)
class _Conference:
    worker: int
    members: dict[str, str] = field(default_factory=dict)     # member leg -> its name in the worker's conference


BRIDGE_PREFIX = "~pool-bridge/"
"""Internal legs are named ``~pool-bridge/<n>/a`` and ``/b``; callers' legs must not start with it."""


class MediaPool:
    """The signalling process's media controller over the workers' clients: placement, routing, bridging.

    **Placement.** A new ng call (``offer`` of an unknown Call-ID) or a new leg group goes to the worker with the
    least load this pool has placed on it (ties: the name's CRC32), and stays there. Every leg of one ``group``
    (a call and the legs rung for it) goes to the worker of the group's first leg; a leg opened without a group
    is a group of its own. A relayed ng call weighs 1 and a transcoded one ``TRANSCODED_WEIGHT``
    (benchmarks/media/RESULTS.md: 3.5-4.6 times the CPU); a leg weighs half of that, by whether its connection
    (or conference) transcodes. Leg names are unique across the pool.

    **Routing.** A leg is opened by the first ``leg_offer`` / ``leg_remote_offer`` naming it; its events
    (``dispatch``) go to the ``owner`` callback given then (``set_owner`` changes it); ``leg_close`` forgets it.

    **Bridging.** ``connect(a, b)`` of legs on different workers opens a pair of internal plain-RTP legs, one on
    each worker, offered and answered to each other with their SDP addresses rewritten to ``bridge_address``
    (loopback), and connects ``a <-> inner_a`` and ``inner_b <-> b``; their codecs are the legs' own when known,
    so both sides can pass through. A leg joining a conference held by another worker gets the same pair.
    ``disconnect``, ``leg_close``, a new ``connect`` or ``conference_join`` of either leg tears the pair down.

    **Worker death.** ``replace(index, client)`` forgets what the dead worker held and returns it; each owner
    of lost legs gets one ``WorkerLost(index, legs)``. A leg on a surviving worker that was bridged to a lost one
    loses its internal leg (closed in the background) and stays, unconnected; its owner learns it from the
    partner's ``WorkerLost`` (usually the same owner: one call).

    | failure | effect |
    |---|---|
    | a command on a leg the pool never opened | ``MediaControlError("unknown leg ...")``, nothing sent |
    | the first offer of a leg / call fails and the worker does not hold it | not counted, not placed |
    | a step of a cross-worker bridge fails | the internal legs made so far are closed, the error raised |
    | an owner callback raises | logged; the other events still flow |
    """

    TRANSCODED_WEIGHT = 4
    LEG_WEIGHT = 0.5

    def __init__(self, clients: list[Any], *, bridge_address: str | None = "127.0.0.1") -> None:
        if not clients:
            raise ValueError("a MediaPool needs at least one worker client")
        self.clients = clients
        self.bridge_address = bridge_address
        self.calls: dict[str, int] = {}         # ng call_id -> index of its worker
        self.weight: dict[str, float] = {}      # ng call_id -> what it counts in load
        self.load: list[float] = [0] * len(clients)   # weights of the calls and legs placed on each worker
        self.legs: dict[str, _PlacedLeg] = {}
        self.groups: dict[str, tuple[int, set[str]]] = {}   # group -> (worker, its open legs)
        self.conferences: dict[str, _Conference] = {}
        self._bridges: dict[str, _Bridge] = {}  # a leg (either end) -> its cross-worker bridge
        self._partners: dict[str, str] = {}     # a leg -> the leg it is connected to on the same worker
        self._bridge_ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()

    def status(self) -> dict[str, Any]:
        """What the pool holds now (for /api/v1/status): open legs, their groups, bridges, ng calls, load."""
        return {"legs": len(self.legs), "groups": len(self.groups), "bridges": len(self._bridges) // 2,
                "conferences": len(self.conferences), "calls": len(self.calls),
                "load": [round(x, 1) for x in self.load]}

    # -- placement -----------------------------------------------------------------------------------
    def _least_loaded(self, name: str) -> int:
        start = zlib.crc32(name.encode()) % len(self.clients)
        order = [(start + i) % len(self.clients) for i in range(len(self.clients))]
        return min(order, key=lambda i: self.load[i])

    def client_for(self, call_id: str) -> Any:
        """The control client of the worker that owns the ng call ``call_id`` (never placed: its CRC32's)."""
        index = self.calls.get(call_id)
        if index is None:
            index = zlib.crc32(call_id.encode()) % len(self.clients)
        return self.clients[index]

    def worker_of(self, leg: str) -> int:
        """The index of the worker holding ``leg``; MediaControlError if the pool never opened it."""
        entry = self.legs.get(leg)
        if entry is None:
            raise MediaControlError(f"unknown leg {leg!r}")
        return entry.worker

    def client_of(self, leg: str) -> Any:
        """The control client of the worker holding ``leg``."""
        return self.clients[self.worker_of(leg)]

    def set_owner(self, leg: str, owner: Owner | None) -> None:
        """Route ``leg``'s events to ``owner`` from now on (a leg handed from one call to another)."""
        entry = self.legs.get(leg)
        if entry is None:
            raise MediaControlError(f"unknown leg {leg!r}")
        entry.owner = owner

    def _open(self, leg: str, group: str | None, owner: Owner | None, *, internal: bool = False,
              worker: int | None = None) -> tuple[int, bool]:
        """Place a leg (its group's worker, else the least loaded); (worker, whether it is new)."""
        entry = self.legs.get(leg)
        if entry is not None:
            if owner is not None:
                entry.owner = owner
            return entry.worker, False
        if not internal and leg.startswith(BRIDGE_PREFIX):
            raise MediaControlError(f"leg names starting with {BRIDGE_PREFIX!r} are the pool's own")
        group = group or leg
        placed = self.groups.get(group)
        if worker is None:
            worker = placed[0] if placed is not None else self._least_loaded(group)
        if placed is None:
            placed = self.groups[group] = (worker, set())
        placed[1].add(leg)
        self.legs[leg] = _PlacedLeg(worker, group, owner, internal, self.LEG_WEIGHT)
        self.load[worker] += self.LEG_WEIGHT
        return worker, True

    def _forget_leg(self, leg: str) -> None:
        entry = self.legs.pop(leg, None)
        if entry is None:
            return
        self.load[entry.worker] -= entry.weight
        placed = self.groups.get(entry.group)
        if placed is not None:
            placed[1].discard(leg)
            if not placed[1]:
                del self.groups[entry.group]

    def _set_weight(self, leg: str, transcoded: bool) -> None:
        entry = self.legs.get(leg)
        if entry is not None:
            weight = self.LEG_WEIGHT * (self.TRANSCODED_WEIGHT if transcoded else 1)
            self.load[entry.worker] += weight - entry.weight
            entry.weight = weight

    async def _opening(self, leg: str, index: int, new: bool, request: Any) -> Any:
        """Run a leg's request; if it was the leg's first and failed without the worker holding it, unplace it."""
        try:
            return await request
        except Exception:
            if new and leg in self.legs and not await self._holds_leg(self.clients[index], leg):
                self._forget_leg(leg)
            raise

    @staticmethod
    async def _holds_leg(client: Any, leg: str) -> bool:
        try:
            await client.leg_query(leg)
            return True
        except Exception:  # noqa: BLE001 - unknown leg, or the worker is unreachable
            return False

    # -- legs ----------------------------------------------------------------------------------------
    async def leg_offer(self, leg: str, transport: str | None = None, *, group: str | None = None,
                        owner: Owner | None = None, codecs: Sequence[str] | None = None, dtmf: str | None = None,
                        direction: str | None = None, timeout: float | None = None) -> LegDescription:
        """``MediaClient.leg_offer`` on the leg's worker; a new leg is placed with its ``group`` and ``owner``."""
        index, new = self._open(leg, group, owner)
        return await self._opening(leg, index, new, self.clients[index].leg_offer(
            leg, transport, codecs=codecs, dtmf=dtmf, direction=direction, timeout=timeout))

    async def leg_remote_offer(self, leg: str, sdp: str | bytes, *, group: str | None = None,
                               owner: Owner | None = None, dtmf: str | None = None,
                               timeout: float | None = None) -> RemoteOffer:
        """``MediaClient.leg_remote_offer`` on the leg's worker; a new leg is placed with its ``group`` and
        ``owner``."""
        index, new = self._open(leg, group, owner)
        return await self._opening(leg, index, new, self.clients[index].leg_remote_offer(
            leg, sdp, dtmf=dtmf, timeout=timeout))

    async def leg_answer(self, leg: str, sdp: str | bytes) -> LegDescription:
        result: LegDescription = await self.client_of(leg).leg_answer(leg, sdp)
        entry = self.legs.get(leg)
        if entry is not None and result.codec:
            entry.codec = result.codec
        return result

    async def leg_create_answer(self, leg: str, prefer: str | None = None) -> LegDescription:
        result: LegDescription = await self.client_of(leg).leg_create_answer(leg, prefer)
        entry = self.legs.get(leg)
        if entry is not None and result.codec:
            entry.codec = result.codec
        return result

    async def leg_close(self, leg: str) -> dict[str, Any]:
        """Close ``leg`` (tearing down a bridge it is in) and forget it; returns its stats."""
        client = self.client_of(leg)
        try:
            await self._detach(leg)
            return await client.leg_close(leg)
        finally:
            self._forget_leg(leg)

    async def leg_query(self, leg: str) -> LegState:
        return await self.client_of(leg).leg_query(leg)

    async def connect(self, a: str, b: str) -> Connected:
        """Join two legs, on one worker or (through internal legs) across two; either leg leaves what it was in."""
        worker_a, worker_b = self.worker_of(a), self.worker_of(b)
        await self._detach(a)
        await self._detach(b)
        if worker_a == worker_b:
            result: Connected = await self.clients[worker_a].connect(a, b)
            self._partners[a], self._partners[b] = b, a
            self._set_weight(a, result.transcoded)
            self._set_weight(b, result.transcoded)
            return result
        codec_a, codec_b = self.legs[a].codec, self.legs[b].codec
        inner_a, inner_b = await self._link(worker_a, worker_b, codec_a, codec_b)
        bridge = _Bridge(a, b, inner_a, inner_b)
        try:
            near = await self.clients[worker_a].connect(a, inner_a)
            far = await self.clients[worker_b].connect(inner_b, b)
        except BaseException:
            await self._close_inner(bridge)
            raise
        self._bridges[a] = self._bridges[b] = bridge
        for leg, transcoded in ((a, near.transcoded), (inner_a, near.transcoded),
                                (inner_b, far.transcoded), (b, far.transcoded)):
            self._set_weight(leg, transcoded)
        return Connected(a, b, near.transcoded or far.transcoded, bridged=True)

    async def disconnect(self, leg: str) -> None:
        """Take ``leg`` out of its connection (a cross-worker bridge is torn down)."""
        client = self.client_of(leg)
        if leg in self._bridges:
            await self._detach(leg)
            return
        await self._detach(leg)
        await client.disconnect(leg)

    async def conference_join(self, conference: str, leg: str, mode: str = "talk", to: str | None = None) -> None:
        """Put ``leg`` in ``conference``, held by the worker of its first member (a leg on another worker joins
        through internal legs). ``to`` (whisper) names a member leg."""
        worker = self.worker_of(leg)
        await self._detach(leg)
        room = self.conferences.get(conference)
        if room is None:
            room = self.conferences[conference] = _Conference(worker)
        target = room.members.get(to, to) if to is not None else None
        try:
            if worker == room.worker:
                await self.clients[worker].conference_join(conference, leg, mode, target)
                room.members[leg] = leg
            else:
                inner_leg, inner_room = await self._link(worker, room.worker, self.legs[leg].codec, None)
                bridge = _Bridge(leg, None, inner_leg, inner_room, conference)
                try:
                    await self.clients[room.worker].conference_join(conference, inner_room, mode, target)
                    await self.clients[worker].connect(leg, inner_leg)
                except BaseException:
                    await self._close_inner(bridge)
                    raise
                self._bridges[leg] = bridge
                room.members[leg] = inner_room
                self._set_weight(inner_leg, True)
                self._set_weight(inner_room, True)
            self._set_weight(leg, True)
        finally:
            if not room.members:
                self.conferences.pop(conference, None)

    async def conference_leave(self, leg: str) -> None:
        client = self.client_of(leg)
        if leg in self._bridges:
            await self._detach(leg)
            return
        await self._detach(leg)
        await client.conference_leave(leg)

    async def play(self, leg: str, files: Sequence[str], *, loop: bool = False, mix: bool = False) -> None:
        await self.client_of(leg).play(leg, files, loop=loop, mix=mix)

    async def stop_play(self, leg: str) -> None:
        await self.client_of(leg).stop_play(leg)

    async def record(self, leg: str, path: str) -> None:
        await self.client_of(leg).record(leg, path)

    async def stop_record(self, leg: str) -> Recording:
        return await self.client_of(leg).stop_record(leg)

    async def dtmf(self, leg: str, digits: str, duration_ms: int | None = None) -> None:
        await self.client_of(leg).dtmf(leg, digits, duration_ms)

    # -- cross-worker bridges ------------------------------------------------------------------------
    async def _link(self, near: int, far: int, codec_near: str | None,
                    codec_far: str | None) -> tuple[str, str]:
        """Open two internal plain-RTP legs, on ``near`` and ``far``, offered/answered to each other."""
        n = next(self._bridge_ids)
        inner_near, inner_far = f"{BRIDGE_PREFIX}{n}/a", f"{BRIDGE_PREFIX}{n}/b"
        self._open(inner_near, None, None, internal=True, worker=near)
        self._open(inner_far, None, None, internal=True, worker=far)
        codecs = [c for c in dict.fromkeys((codec_near, codec_far)) if c]
        try:
            offer = await self.clients[near].leg_offer(inner_near, "rtp", codecs=codecs or None)
            await self.clients[far].leg_remote_offer(inner_far, self._loopback(offer.sdp))
            answer = await self.clients[far].leg_create_answer(inner_far, codec_far or codec_near)
            await self.clients[near].leg_answer(inner_near, self._loopback(answer.sdp))
        except BaseException:
            await self._close_inner(_Bridge("", None, inner_near, inner_far))
            raise
        return inner_near, inner_far

    def _loopback(self, sdp: bytes | None) -> bytes:
        """An internal leg's SDP with its addresses set to ``bridge_address`` (the workers meet on loopback)."""
        if sdp is None:
            raise MediaControlError("an internal leg's offer/answer came without SDP")
        if not self.bridge_address:
            return sdp
        try:
            description = SessionDescription.parse(sdp)
        except SdpError:
            return sdp
        description.connection = Connection.for_address(self.bridge_address)
        for section in description.media:
            if section.connections:
                section.connection = Connection.for_address(self.bridge_address)
        return description.to_bytes()

    async def _detach(self, leg: str) -> None:
        """Before ``leg`` changes what it is joined to: tear down its bridge, forget its partner or membership."""
        bridge = self._bridges.get(leg)
        if bridge is not None:
            await self._close_inner(bridge)
        partner = self._partners.pop(leg, None)
        if partner is not None:
            self._partners.pop(partner, None)
            self._set_weight(partner, False)
        for name, room in list(self.conferences.items()):
            if room.members.pop(leg, None) is not None and not room.members:
                del self.conferences[name]
        self._set_weight(leg, False)

    def _unlink(self, bridge: _Bridge) -> None:
        """Forget a bridge: its ends are no longer joined (nor its member in its conference)."""
        for end in (bridge.a, bridge.b):
            if end and self._bridges.get(end) is bridge:
                del self._bridges[end]
                self._set_weight(end, False)
        if bridge.conference is not None:
            room = self.conferences.get(bridge.conference)
            if room is not None and room.members.get(bridge.a) == bridge.inner_b:
                del room.members[bridge.a]
                if not room.members:
                    del self.conferences[bridge.conference]

    async def _close_inner(self, bridge: _Bridge) -> None:
        """Close a bridge's internal legs (which disconnects its ends) and forget it."""
        self._unlink(bridge)
        await asyncio.gather(*(self._close_quietly(inner) for inner in (bridge.inner_a, bridge.inner_b)))

    async def _close_quietly(self, leg: str) -> None:
        entry = self.legs.get(leg)
        if entry is None:
            return
        client = self.clients[entry.worker]
        self._forget_leg(leg)
        try:
            await client.leg_close(leg)
        except Exception as exc:  # noqa: BLE001 - the worker may never have opened it, or be gone
            log.debug("closing internal leg %s: %s", leg, exc)

    # -- events --------------------------------------------------------------------------------------
    def dispatch(self, event: MediaEvent) -> bool:
        """Hand a worker's event to the owner of its leg; False when nobody owns it (an ng call's leg, an
        internal leg, a leg already closed, or a client's ``WorkerLost``: ``replace`` reports those)."""
        if isinstance(event, WorkerLost):
            return False
        entry = self.legs.get(event.leg)
        if entry is None or entry.owner is None:
            return False
        self._notify(entry.owner, event)
        return True

    @staticmethod
    def _notify(owner: Owner, event: MediaEvent) -> None:
        try:
            owner(event)
        except Exception:  # noqa: BLE001 - an owner's bug must not stop the other events
            log.exception("media event owner failed on %s", event)

    # -- worker replacement --------------------------------------------------------------------------
    def replace(self, index: int, client: Any) -> LostMedia:
        """Worker ``index`` was replaced (it died): new calls and legs may go to ``client``; the calls and legs
        it held are forgotten (their media died with it) and returned; their owners get ``WorkerLost``."""
        calls = [call_id for call_id, worker in self.calls.items() if worker == index]
        for call_id in calls:
            self._forget(call_id)
        lost = [leg for leg, entry in self.legs.items() if entry.worker == index]
        owners: dict[Owner, list[str]] = {}
        for leg in lost:
            entry = self.legs[leg]
            if entry.owner is not None and not entry.internal:
                owners.setdefault(entry.owner, []).append(leg)
        for bridge in {id(b): b for b in self._bridges.values()}.values():
            if any(self.legs[inner].worker == index for inner in (bridge.inner_a, bridge.inner_b)
                   if inner in self.legs):
                self._unlink(bridge)
                survivors = [inner for inner in (bridge.inner_a, bridge.inner_b)
                             if inner in self.legs and self.legs[inner].worker != index]
                for inner in survivors:
                    self._in_background(self._close_quietly(inner))
        for leg in lost:
            partner = self._partners.pop(leg, None)
            if partner is not None:
                self._partners.pop(partner, None)
            self._forget_leg(leg)
        for name, room in list(self.conferences.items()):
            if room.worker == index:
                del self.conferences[name]
        self.clients[index] = client
        for owner, legs in owners.items():
            self._notify(owner, WorkerLost(index, tuple(legs)))
        return LostMedia(tuple(calls), tuple(leg for leg in lost if not leg.startswith(BRIDGE_PREFIX)))

    def _in_background(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:                  # no loop (a synchronous caller): nothing left to close it with
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for background clean-up (internal legs closed after a worker died)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- ng calls ------------------------------------------------------------------------------------
    def _place(self, call_id: str) -> Any:
        """The worker for a call's first offer: the least loaded one."""
        index = self.calls.get(call_id)
        if index is None:
            index = self._least_loaded(call_id)
            self.calls[call_id] = index
            self.weight[call_id] = 1
            self.load[index] += 1
        return self.clients[index]

    async def offer(self, call_id: str, from_tag: str, sdp: bytes, transport: str | None = None) -> str:
        client = self._place(call_id)
        try:
            return await client.offer(call_id, from_tag, sdp, transport)
        except Exception:
            if call_id in self.calls and not await self._known(client, call_id):
                self._forget(call_id)              # the worker did not take the call: do not count it
            raise

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: bytes) -> str:
        reply = await self.client_for(call_id).answer_reply(call_id, from_tag, to_tag, sdp)
        index = self.calls.get(call_id)
        if index is not None and reply.get("transcoded") is not None:
            weight = self.TRANSCODED_WEIGHT if reply["transcoded"] else 1
            self.load[index] += weight - self.weight.get(call_id, 1)
            self.weight[call_id] = weight
        return reply["sdp"]

    async def delete(self, call_id: str) -> Any:
        client = self.client_for(call_id)
        try:
            return await client.delete(call_id)
        finally:
            self._forget(call_id)

    @staticmethod
    async def _known(client: Any, call_id: str) -> bool:
        try:
            await client.query(call_id)
            return True
        except Exception:  # noqa: BLE001 - unknown call, or the worker is unreachable
            return False

    def _forget(self, call_id: str) -> None:
        index = self.calls.pop(call_id, None)
        weight = self.weight.pop(call_id, 1)
        if index is not None:
            self.load[index] -= weight
