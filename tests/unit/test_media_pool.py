"""MediaPool: which media worker a call goes to (least loaded at its first offer), and that it stays there."""
from __future__ import annotations

import asyncio

import pytest

from media.worker import MediaError
from web.server import MediaPool


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
            raise MediaError("no bindable RTP port in the range")
        self.calls.add(call_id)
        return f"{self.name}:{call_id}"

    async def answer_reply(self, call_id, from_tag, to_tag, sdp):
        assert call_id in self.calls
        return {"sdp": f"{self.name}:{call_id}", "transcoded": call_id in self.transcoding}

    async def query(self, call_id=None):
        if call_id not in self.calls:
            raise MediaError(f"unknown call {call_id!r}")
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
        with pytest.raises(MediaError):
            await pool.offer("call-fail", "a", b"")
        assert "call-fail" not in pool.owner and pool.load == [1, 3, 3]
        workers[0].fail = True
        with pytest.raises(MediaError):
            await pool.offer("call-new", "b", b"")
        assert pool.owner["call-new"] == 0
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
        owner = pool.owner["opus-1"]
        await pool.answer("opus-1", "a", "b", b"")
        assert pool.load[owner] == MediaPool.TRANSCODED_WEIGHT
        # the next three relayed calls go to the other worker
        for i in range(3):
            await pool.offer(f"pcmu-{i}", "a", b"")
            await pool.answer(f"pcmu-{i}", "a", "b", b"")
            assert pool.owner[f"pcmu-{i}"] != owner
        assert sorted(pool.load) == [3, 4]
        await pool.delete("opus-1")
        assert pool.load[owner] == 0 and "opus-1" not in pool.weight
        # with the transcoded call gone, its worker is the least loaded again
        await pool.offer("plain", "a", b"")
        assert pool.owner["plain"] == owner and pool.load[owner] == 1

    asyncio.run(scenario())
