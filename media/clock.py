"""The worker's media clock: one 20 ms monotonic tick in ``tick_slots`` slots (docs/media.md "The media clock").

``MediaClock`` is the part of ``MediaWorker`` that schedules itself with ``loop.call_at`` at absolute times,
catches up when late (at most 5 frames at once), runs the C data plane's transcoding tick in each slot and
Python's 20 ms step (``MediaWorker._tick``) in slot 0, and counts late and failed slots.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .legs import Connection
    from .relay import MediaRelay

log = logging.getLogger("media.worker")


class MediaClock:
    """The clock of a worker (mixed into ``MediaWorker``, which provides ``_tick``, ``_touch``, ``_commit``)."""

    relay: MediaRelay | None
    connections: dict[str, Connection]
    _loop: asyncio.AbstractEventLoop

    def _start_clock(self, tick_ms: int, slots: int) -> None:
        # the clock runs in slots: tick_slots per 20 ms frame. Python's work runs in slot 0; each C-ticked
        # transcoded path runs in the slot where its jitter buffer started playing, so that a frame waits at
        # most a slot (5 ms), not a frame, before it leaves (benchmarks/media/RESULTS.md: latency)
        self._slots = max(1, slots)
        self._period = tick_ms / 1000.0 / self._slots
        self._slot = 0
        self._next_tick = self._loop.time() + self._period
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.late_ticks = 0                       # slots that ran late
        self.tick_errors = 0                      # slots that raised (logged; the clock goes on)
        self.tick_seconds = 0.0                   # CPU-ish time spent in ticks (loop.time deltas)
        self._schedule()

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._next_tick, self._on_tick)

    def _on_tick(self) -> None:
        """Run every due slot (late ones catch up, at most 5 frames' worth at once), then re-arm at the next."""
        loop = self._loop
        now = loop.time()
        due = int((now - self._next_tick) / self._period) + 1
        if due > 1:
            self.late_ticks += due - 1
        limit = 5 * self._slots
        if due > limit:                           # a long stall: drop the backlog rather than burst
            self._next_tick += (due - limit) * self._period
            self._slot += due - limit
            due = limit
        relay = self.relay
        if relay is not None:
            relay.cork()                          # the slot's packets leave in a few sendmmsg calls
        try:
            for _ in range(due):
                try:
                    self._run_slot(loop.time())
                except Exception:  # noqa: BLE001 - one call's bug must not stop every call's clock
                    self.tick_errors += 1
                    log.exception("media clock slot failed")
                self._next_tick += self._period
            if self._slots > 1 and (relay is None or not relay.c.transcoding()):
                skip = -self._slot % self._slots  # no path runs in slots 1..: wake up for the next slot 0
                self._next_tick += skip * self._period
                self._slot += skip
        finally:
            if relay is not None:
                relay.uncork()
            self.tick_seconds += loop.time() - now
            self._schedule()

    def _run_slot(self, now: float) -> None:
        """One slot: the C-ticked paths whose slot it is (all of them with one slot per frame), and in slot 0
        Python's 20 ms step; then the paths C handed back (a DTMF key in their audio) are looked at."""
        slot = self._slot % self._slots
        self._slot += 1
        relay = self.relay
        handbacks: list[str] = []
        if relay is not None:
            self._commit()
            relay.c.tick(now, slot if self._slots > 1 else -1)
            handbacks = relay.c.take_handbacks()
        if slot == 0:
            self._tick(now)
        for call_id in handbacks:                 # after Python's tick: theirs ran in C this frame
            call = self.connections.get(call_id)
            if call is not None:
                self._touch(call)
        if handbacks:
            self._commit()
