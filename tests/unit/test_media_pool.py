"""MediaPool over fake worker clients: where ng calls and leg groups go (least loaded, and they stay), events
routed to leg owners, worker death, and legs of two workers joined through internal legs on loopback."""
from __future__ import annotations

import asyncio

import pytest

from media.client import (Connected, LegDescription, LegState, MediaControlError, MediaPool,
                          RemoteOffer)
from media.events import DtmfReceived, LegDown, MediaTimeout, PlayDone, WorkerLost
from media.sdp import SessionDescription, create_offer


class FakeWorker:
    """A worker's control client: records the calls it holds; ``fail`` makes the next offer fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: set[str] = set()
        self.fail = False
        self.transcoding: set[str] = set()     # calls whose answer says they are transcoded

    async def offer(self, call_id, from_tag, sdp, transport=None):
        if self.fail:
            self.fail = False
            raise MediaControlError("no bindable RTP port in the range")
        self.calls.add(call_id)
        return f"{self.name}:{call_id}"

    async def answer_reply(self, call_id, from_tag, to_tag, sdp):
        assert call_id in self.calls
        return {"sdp": f"{self.name}:{call_id}", "transcoded": call_id in self.transcoding}

    async def query(self, call_id=None):
        if call_id not in self.calls:
            raise MediaControlError(f"unknown call {call_id!r}")
        return {"call_id": call_id}

    async def delete(self, call_id):
        self.calls.discard(call_id)
        return {}


def test_calls_spread_to_the_least_loaded_worker_and_stay_there():
    async def scenario() -> None:
        workers = [FakeWorker("w0"), FakeWorker("w1"), FakeWorker("w2")]
        pool = MediaPool(workers)
        for i in range(9):
            await pool.offer(f"call-{i}", "a", b"")
        assert [len(w.calls) for w in workers] == [3, 3, 3] and pool.load == [3, 3, 3]
        # re-offers and answers go to the owner
        owner = pool.client_for("call-4")
        assert await pool.offer("call-4", "b", b"") == f"{owner.name}:call-4"
        assert await pool.answer("call-4", "a", "b", b"") == f"{owner.name}:call-4"
        assert pool.load == [3, 3, 3]
        for i in range(3):                      # w0's calls end: the next ones go there
            for call_id in list(workers[0].calls):
                await pool.delete(call_id)
        assert pool.load == [0, 3, 3]
        await pool.offer("call-new", "a", b"")
        assert "call-new" in workers[0].calls
        # a failed first offer is not counted; a failed re-offer of a live call keeps its placement
        workers[0].fail = True
        with pytest.raises(MediaControlError):
            await pool.offer("call-fail", "a", b"")
        assert "call-fail" not in pool.calls and pool.load == [1, 3, 3]
        workers[0].fail = True
        with pytest.raises(MediaControlError):
            await pool.offer("call-new", "b", b"")
        assert pool.calls["call-new"] == 0
        # a call the pool never placed: the Call-ID's CRC32 picks the worker, as before
        assert pool.client_for("stranger") in workers

    asyncio.run(scenario())


def test_a_transcoded_call_weighs_more_than_a_relayed_one():
    """Placement follows CPU, not call count: once answered as transcoded, a call counts four relayed ones."""
    async def scenario() -> None:
        workers = [FakeWorker("w0"), FakeWorker("w1")]
        for w in workers:
            w.transcoding = {"opus-1", "opus-2"}
        pool = MediaPool(workers)
        await pool.offer("opus-1", "a", b"")
        owner = pool.calls["opus-1"]
        await pool.answer("opus-1", "a", "b", b"")
        assert pool.load[owner] == MediaPool.TRANSCODED_WEIGHT
        # the next three relayed calls go to the other worker
        for i in range(3):
            await pool.offer(f"pcmu-{i}", "a", b"")
            await pool.answer(f"pcmu-{i}", "a", "b", b"")
            assert pool.calls[f"pcmu-{i}"] != owner
        assert sorted(pool.load) == [3, 4]
        await pool.delete("opus-1")
        assert pool.load[owner] == 0 and "opus-1" not in pool.weight
        # with the transcoded call gone, its worker is the least loaded again
        await pool.offer("plain", "a", b"")
        assert pool.calls["plain"] == owner and pool.load[owner] == 1

    asyncio.run(scenario())


# -- the leg API ---------------------------------------------------------------------------------------

class FakeLegWorker(FakeWorker):
    """A worker's client for the leg verbs too: holds legs, connections and conferences as a worker would, and
    writes SDP with its own (non-loopback) address; ``refuse`` names commands whose next call fails."""

    def __init__(self, name: str, address: str) -> None:
        super().__init__(name)
        self.address = address
        self.legs: dict[str, dict] = {}
        self.partner: dict[str, str] = {}
        self.rooms: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.played: list[tuple] = []
        self.refuse: set[str] = set()
        self.ports = iter(range(20000, 30000, 2))

    def _check(self, command: str, *legs: str) -> None:
        if command in self.refuse:
            self.refuse.discard(command)
            raise MediaControlError(f"{command}: refused")
        for leg in legs:
            if leg not in self.legs:
                raise MediaControlError(f"unknown leg {leg!r}")

    def _sdp(self, *codecs: str) -> str:
        return str(create_offer(self.address, next(self.ports), [(codec, 8000) for codec in codecs]))

    @staticmethod
    def _remote(sdp: str) -> str:
        parsed = SessionDescription.parse(sdp)
        return parsed.effective_connection(0).address

    async def leg_offer(self, leg, transport=None, *, codecs=None, dtmf=None, direction=None, timeout=None):
        self._check("leg_offer")
        self.legs.setdefault(leg, {"transport": transport, "codec": None, "offered": list(codecs or ["PCMU"])})
        return LegDescription(self._sdp(*self.legs[leg]["offered"]).encode())

    async def leg_answer(self, leg, sdp):
        self._check("leg_answer", leg)
        self.legs[leg]["remote"] = self._remote(sdp)
        self.legs[leg]["codec"] = SessionDescription.parse(sdp).media[0].rtpmap[
            SessionDescription.parse(sdp).media[0].payload_types[0]].encoding
        return LegDescription(None, self.legs[leg]["codec"])

    async def leg_remote_offer(self, leg, sdp, *, dtmf=None, timeout=None):
        self._check("leg_remote_offer")
        offered = [m.encoding for m in SessionDescription.parse(sdp).media[0].rtpmap.values()]
        self.legs.setdefault(leg, {"transport": "rtp", "codec": None})
        self.legs[leg].update(remote=self._remote(sdp), offered=offered)
        return RemoteOffer("rtp", tuple(offered))

    async def leg_create_answer(self, leg, prefer=None):
        self._check("leg_create_answer", leg)
        offered = self.legs[leg]["offered"]
        codec = prefer if prefer in offered else offered[0]
        self.legs[leg]["codec"] = codec
        return LegDescription(self._sdp(codec).encode(), codec)

    def _unjoin(self, leg):
        partner = self.partner.pop(leg, None)
        if partner is not None:
            self.partner.pop(partner, None)
        for room in self.rooms.values():
            room.pop(leg, None)
        self.rooms = {name: room for name, room in self.rooms.items() if room}

    async def leg_close(self, leg):
        self._check("leg_close", leg)
        self._unjoin(leg)
        del self.legs[leg]
        return {"leg": leg}

    async def leg_query(self, leg):
        self._check("leg_query", leg)
        return LegState(leg, self.legs[leg]["codec"], "rtp", "sendrecv", self.partner.get(leg))

    async def connect(self, a, b):
        self._check("connect", a, b)
        self._unjoin(a)
        self._unjoin(b)
        self.partner[a], self.partner[b] = b, a
        return Connected(a, b, self.legs[a]["codec"] != self.legs[b]["codec"])

    async def disconnect(self, leg):
        self._check("disconnect", leg)
        self._unjoin(leg)

    async def conference_join(self, conference, leg, mode="talk", to=None):
        self._check("conference_join", leg)
        if to is not None and to not in self.rooms.get(conference, {}):
            raise MediaControlError(f"no member {to!r}")
        self._unjoin(leg)
        self.rooms.setdefault(conference, {})[leg] = (mode, to)

    async def conference_leave(self, leg):
        self._check("conference_leave", leg)
        self._unjoin(leg)

    async def play(self, leg, files, *, loop=False, mix=False):
        self._check("play", leg)
        self.played.append((leg, tuple(files), loop, mix))


class Owner:
    """An owner callback that keeps what it was handed."""

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)


def two_workers() -> tuple[list[FakeLegWorker], MediaPool]:
    workers = [FakeLegWorker("w0", "192.0.2.10"), FakeLegWorker("w1", "192.0.2.11")]
    return workers, MediaPool(workers)


async def answered(pool: MediaPool, leg: str, codec: str = "PCMU", **kwargs) -> None:
    """A leg that took a remote offer for ``codec`` and answered it."""
    await pool.leg_remote_offer(leg, str(create_offer("198.51.100.7", 4000, [(codec, 8000)])), **kwargs)
    await pool.leg_create_answer(leg)


def test_legs_of_a_group_share_its_first_legs_worker_and_groups_spread():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", group="c1")
        await pool.leg_offer("c1/b1", "rtp", group="c1")          # rung for the call: the call's worker
        await pool.leg_offer("c1/b2", "webrtc", group="c1")
        first = pool.worker_of("c1/a")
        assert {pool.worker_of(leg) for leg in ("c1/a", "c1/b1", "c1/b2")} == {first}
        assert set(workers[first].legs) == {"c1/a", "c1/b1", "c1/b2"}
        assert pool.load[first] == 3 * MediaPool.LEG_WEIGHT
        await answered(pool, "c2/a", group="c2")                  # a new group: the other worker
        assert pool.worker_of("c2/a") == 1 - first
        # the group lives while it has legs: closing all of them frees its placement
        for leg in ("c1/a", "c1/b1", "c1/b2"):
            await pool.leg_close(leg)
        assert "c1" not in pool.groups and pool.load[first] == 0 and not workers[first].legs
        # a leg without a group is a group of its own; a re-offer goes to the leg's worker, not a new one
        await pool.leg_offer("solo", "rtp")
        assert pool.worker_of("solo") == first
        await pool.leg_offer("solo")
        assert pool.worker_of("solo") == first and pool.load[first] == MediaPool.LEG_WEIGHT
        # commands on a leg the pool never opened fail clearly, and send nothing
        with pytest.raises(MediaControlError, match="unknown leg 'ghost'"):
            await pool.play("ghost", ["/p/x.wav"])
        with pytest.raises(MediaControlError, match="the pool's own"):
            await pool.leg_offer("~pool-bridge/1/a", "rtp")

    asyncio.run(scenario())


def test_a_failed_first_offer_does_not_place_the_leg():
    async def scenario() -> None:
        workers, pool = two_workers()
        workers[0].refuse.add("leg_remote_offer")
        workers[1].refuse.add("leg_remote_offer")
        with pytest.raises(MediaControlError, match="refused"):
            await answered(pool, "c1/a", group="c1")
        assert "c1/a" not in pool.legs and "c1" not in pool.groups and pool.load == [0, 0]

    asyncio.run(scenario())


def test_events_reach_the_owner_of_their_leg():
    async def scenario() -> None:
        workers, pool = two_workers()
        alice, bob = Owner(), Owner()
        await answered(pool, "c1/a", group="c1", owner=alice)
        await pool.leg_offer("c1/b", "rtp", group="c1", owner=bob)
        assert pool.dispatch(DtmfReceived("c1/a", "5", 100, "rfc4733"))
        assert pool.dispatch(PlayDone("c1/b"))
        assert not pool.dispatch(MediaTimeout("c9/x"))             # nobody's leg (an ng call's, a closed one)
        assert not pool.dispatch(WorkerLost(1))                    # a client's: replace() reports the legs
        assert alice.events == [DtmfReceived("c1/a", "5", 100, "rfc4733")] and bob.events == [PlayDone("c1/b")]
        pool.set_owner("c1/b", alice)                              # handed to another call
        pool.dispatch(LegDown("c1/b", "closed"))
        assert alice.events[-1] == LegDown("c1/b", "closed") and len(bob.events) == 1
        await pool.leg_close("c1/b")
        assert not pool.dispatch(PlayDone("c1/b"))

        def broken(event) -> None:
            raise RuntimeError("owner bug")

        await answered(pool, "c2/a", owner=broken)
        assert pool.dispatch(PlayDone("c2/a"))                     # logged, not raised

    asyncio.run(scenario())


def test_a_dead_worker_takes_its_legs_and_calls_and_their_owners_hear_of_it():
    async def scenario() -> None:
        workers, pool = two_workers()
        alice, bob, carol = Owner(), Owner(), Owner()
        await answered(pool, "c1/a", group="c1", owner=alice)
        await pool.leg_offer("c1/b", "rtp", group="c1", owner=alice)
        await answered(pool, "c2/a", group="c2", owner=bob)
        await pool.leg_offer("c3/a", "rtp", group="c1", owner=carol)
        dead = pool.worker_of("c1/a")
        await pool.offer("ng-call", "a", b"")                      # an ng call, on the other worker
        await pool.offer("ng-call-2", "a", b"")
        ng_dead = [c for c, w in pool.calls.items() if w == dead]
        fresh = FakeLegWorker("w-new", "192.0.2.12")
        lost = pool.replace(dead, fresh)
        assert set(lost.legs) == {"c1/a", "c1/b", "c3/a"} and list(lost.calls) == ng_dead
        assert alice.events == [WorkerLost(dead, ("c1/a", "c1/b"))] and carol.events == [WorkerLost(dead, ("c3/a",))]
        assert bob.events == []
        assert pool.load[dead] == 0 and "c1" not in pool.groups and pool.clients[dead] is fresh
        await answered(pool, "c4/a", group="c1")                   # the group name is free again
        assert pool.worker_of("c4/a") == dead and "c4/a" in fresh.legs

    asyncio.run(scenario())


def test_legs_on_one_worker_connect_directly():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", "PCMU", group="c1")
        await answered(pool, "c1/b", "PCMA", group="c1")
        w = workers[pool.worker_of("c1/a")]
        result = await pool.connect("c1/a", "c1/b")
        assert result == Connected("c1/a", "c1/b", True) and w.partner["c1/a"] == "c1/b"
        assert pool.load[pool.worker_of("c1/a")] == 2 * MediaPool.LEG_WEIGHT * MediaPool.TRANSCODED_WEIGHT
        await pool.disconnect("c1/a")
        assert not w.partner and pool.load[pool.worker_of("c1/a")] == 2 * MediaPool.LEG_WEIGHT

    asyncio.run(scenario())


def test_legs_on_two_workers_connect_through_internal_legs_on_loopback():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", "PCMA", group="c1")          # a caller on one worker
        await answered(pool, "c2/b", "PCMU", group="c2")          # an agent's leg on the other
        wa, wb = workers[pool.worker_of("c1/a")], workers[pool.worker_of("c2/b")]
        assert wa is not wb
        result = await pool.connect("c1/a", "c2/b")
        assert result.bridged and result.a == "c1/a" and result.b == "c2/b"
        inner_a = next(leg for leg in wa.legs if leg.startswith("~pool-bridge/"))
        inner_b = next(leg for leg in wb.legs if leg.startswith("~pool-bridge/"))
        assert wa.partner["c1/a"] == inner_a and wb.partner[inner_b] == "c2/b"
        # the internal pair is plain RTP, offered and answered to each other on loopback, with each side's
        # leg codec so that both can pass through
        assert wa.legs[inner_a]["transport"] == "rtp" and wa.legs[inner_a]["offered"] == ["PCMA", "PCMU"]
        assert wa.legs[inner_a]["remote"] == "127.0.0.1" and wb.legs[inner_b]["remote"] == "127.0.0.1"
        assert wa.legs[inner_a]["codec"] == wb.legs[inner_b]["codec"] == "PCMU"
        # events of internal legs go nowhere
        assert not pool.dispatch(DtmfReceived(inner_b, "1", 100, "rfc4733"))
        # disconnect tears the pair down on both workers
        await pool.disconnect("c2/b")
        assert inner_a not in wa.legs and inner_b not in wb.legs and not wa.partner and not wb.partner
        assert pool.load == [MediaPool.LEG_WEIGHT, MediaPool.LEG_WEIGHT]
        # connecting again, then moving a leg to a partner on its own worker, tears the old pair down too
        await pool.connect("c1/a", "c2/b")
        await answered(pool, "c1/c", "PCMA", group="c1")
        assert (await pool.connect("c1/a", "c1/c")) == Connected("c1/a", "c1/c", False)
        assert not any(leg.startswith("~pool-bridge/") for w in workers for leg in w.legs)
        assert wa.partner == {"c1/a": "c1/c", "c1/c": "c1/a"} and not wb.partner
        # closing a bridged leg closes its internal legs
        await pool.connect("c2/b", "c1/c")
        await pool.leg_close("c2/b")
        assert not any(leg.startswith("~pool-bridge/") for w in workers for leg in w.legs) and not wa.partner
        assert pool.load[pool.worker_of("c1/c")] == 2 * MediaPool.LEG_WEIGHT and "c2/b" not in pool.legs

    asyncio.run(scenario())


def test_a_failed_bridge_step_closes_the_internal_legs_made_so_far():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", group="c1")
        await answered(pool, "c2/b", group="c2")
        workers[pool.worker_of("c2/b")].refuse.add("connect")
        with pytest.raises(MediaControlError, match="connect: refused"):
            await pool.connect("c1/a", "c2/b")
        assert not any(leg.startswith("~pool-bridge/") for w in workers for leg in w.legs)
        assert not any(leg.startswith("~pool-bridge/") for leg in pool.legs) and pool.load == [0.5, 0.5]
        workers[pool.worker_of("c2/b")].refuse.add("leg_remote_offer")
        with pytest.raises(MediaControlError, match="leg_remote_offer: refused"):
            await pool.connect("c1/a", "c2/b")
        assert not any(leg.startswith("~pool-bridge/") for w in workers for leg in w.legs)

    asyncio.run(scenario())


def test_a_dead_worker_leaves_its_bridged_partner_unconnected():
    async def scenario() -> None:
        workers, pool = two_workers()
        alice = Owner()
        await answered(pool, "c1/a", group="c1", owner=alice)
        await answered(pool, "c2/b", group="c2", owner=alice)
        await pool.connect("c1/a", "c2/b")
        dead, alive = pool.worker_of("c1/a"), pool.worker_of("c2/b")
        lost = pool.replace(dead, FakeLegWorker("w-new", "192.0.2.12"))
        assert lost.legs == ("c1/a",) and alice.events == [WorkerLost(dead, ("c1/a",))]
        await pool.settle()                                       # the survivor's internal leg is closed
        assert list(workers[alive].legs) == ["c2/b"] and not workers[alive].partner
        assert pool.load[alive] == MediaPool.LEG_WEIGHT and list(pool.legs) == ["c2/b"]

    asyncio.run(scenario())


def test_a_conference_on_one_worker_takes_members_from_the_other_through_internal_legs():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", group="c1")
        await answered(pool, "c2/agent", group="c2")
        await answered(pool, "c3/sup", group="c1")               # the supervisor lands with c1
        home, away = pool.worker_of("c1/a"), pool.worker_of("c2/agent")
        await pool.conference_join("room", "c1/a")
        await pool.conference_join("room", "c2/agent")           # another worker: joins through a pair
        members = workers[home].rooms["room"]
        inner = next(leg for leg in members if leg.startswith("~pool-bridge/"))
        assert set(members) == {"c1/a", inner}
        assert workers[away].partner["c2/agent"].startswith("~pool-bridge/")
        # whisper to a bridged member names its conference-side leg on the conference's worker
        await pool.conference_join("room", "c3/sup", "whisper", to="c2/agent")
        assert workers[home].rooms["room"]["c3/sup"] == ("whisper", inner)
        await pool.conference_leave("c2/agent")
        assert set(workers[home].rooms["room"]) == {"c1/a", "c3/sup"} and not workers[away].partner
        assert not any(leg.startswith("~pool-bridge/") for w in workers for leg in w.legs)
        await pool.conference_leave("c1/a")
        await pool.conference_leave("c3/sup")
        assert "room" not in pool.conferences and not workers[home].rooms

    asyncio.run(scenario())


def test_per_leg_media_verbs_go_to_the_legs_worker():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", group="c1")
        await pool.play("c1/a", ["/p/moh.wav"], loop=True, mix=False)
        assert workers[pool.worker_of("c1/a")].played == [("c1/a", ("/p/moh.wav",), True, False)]
        assert (await pool.leg_query("c1/a")).codec == "PCMU"

    asyncio.run(scenario())


def test_a_dead_worker_ends_its_conferences_and_its_members_elsewhere():
    async def scenario() -> None:
        workers, pool = two_workers()
        await answered(pool, "c1/a", group="c1")
        await answered(pool, "c2/b", group="c2")
        home, away = pool.worker_of("c1/a"), pool.worker_of("c2/b")
        await pool.conference_join("room-home", "c1/a")
        await pool.conference_join("room-home", "c2/b")           # bridged from the away worker
        await answered(pool, "c3/a", group="c2")                  # on the away worker
        assert pool.worker_of("c3/a") == away
        await pool.conference_join("room-away", "c3/a")
        await answered(pool, "c4/a", group="c1")
        await pool.conference_join("room-away", "c4/a")           # bridged from the home worker
        pool.replace(away, FakeLegWorker("w-new", "192.0.2.12"))
        await pool.settle()
        # room-away died with its worker: c4/a's internal leg on the home worker is closed
        assert "room-away" not in pool.conferences
        # room-home lost its bridged member from the dead worker: the internal leg left the conference
        assert pool.conferences["room-home"].members == {"c1/a": "c1/a"}
        assert set(workers[home].legs) == {"c1/a", "c4/a"} and set(workers[home].rooms["room-home"]) == {"c1/a"}
        assert not any(leg.startswith("~pool-bridge/") for leg in pool.legs)

    asyncio.run(scenario())
