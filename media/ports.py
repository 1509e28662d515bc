"""RTP port allocation from a configured range (even RTP ports, RTCP on the odd port above when not muxed).

Released ports sit in quarantine for a while before reuse, so late packets of a finished call do not
land in the next call's session (and a new session does not latch onto the old peer). The clock is
injectable; nothing here opens a socket: the adapter binds what it is handed, and may `release` a port
it failed to bind and ask again.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

__all__ = ["PortAllocator", "PortsExhausted"]


class PortsExhausted(RuntimeError):
    """No port of the range is free (all in use or in quarantine)."""


class PortAllocator:
    """Hands out RTP ports (even, step apart) from [start, end], reusing released ones after a quarantine."""

    def __init__(self, start: int, end: int, step: int = 2, *, quarantine: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if step < 1:
            raise ValueError(f"step must be >= 1, not {step}")
        first = start + (start & 1) if step % 2 == 0 else start       # RTP on even ports when pairs are kept
        span = 2 if step >= 2 else 1                                    # RTP + RTCP need both ports in range
        if not 0 < start <= end <= 65535:
            raise ValueError(f"bad port range {start}-{end}")
        self.start, self.end, self.step = start, end, step
        self.quarantine = quarantine
        self._clock = clock
        self._free: deque[int] = deque(range(first, end - span + 2, step))
        if not self._free:
            raise ValueError(f"port range {start}-{end} holds no RTP port with step {step}")
        self._size = len(self._free)
        self._in_use: set[int] = set()
        self._cooling: deque[tuple[float, int]] = deque()              # (release time, port), oldest first

    def _thaw(self, now: float) -> None:
        """Return ports whose quarantine is over to the end of the free queue."""
        cooling = self._cooling
        while cooling and now - cooling[0][0] >= self.quarantine:
            self._free.append(cooling.popleft()[1])

    def allocate(self) -> int:
        """An RTP port (its RTCP port is port + 1); raises PortsExhausted when none is free."""
        self._thaw(self._clock())
        if not self._free:
            raise PortsExhausted(
                f"no free RTP port in {self.start}-{self.end}: {len(self._in_use)} in use, "
                f"{len(self._cooling)} in quarantine ({self.quarantine:g} s) of {self._size}"
            )
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a port back; it can be handed out again after the quarantine."""
        try:
            self._in_use.remove(port)
        except KeyError:
            raise ValueError(f"port {port} was not allocated") from None
        self._cooling.append((self._clock(), port))

    @property
    def in_use(self) -> int:
        """Ports handed out and not released."""
        return len(self._in_use)

    @property
    def available(self) -> int:
        """Ports that could be handed out now."""
        self._thaw(self._clock())
        return len(self._free)

    @property
    def capacity(self) -> int:
        """Ports in the range."""
        return self._size
