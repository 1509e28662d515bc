"""Port ranges for media tests: a block of consecutive UDP ports that can be bound right now.

Searched below Linux's ephemeral range (32768-60999 by default), where no port-0 socket (SIPp, Chromium,
other tests) lands in the meantime; other processes may hold blocks, hence the probe. A random block in
20000-60000 collided with such sockets and made media tests flaky.
"""
from __future__ import annotations

import random
import socket


def free_udp_range(count: int = 100, low: int = 20000, high: int = 32700, host: str = "127.0.0.1") -> int:
    """The first port (even) of `count` consecutive UDP ports bindable on `host`."""
    for _ in range(50):
        base = random.randrange(low, high - count, 2)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} free consecutive UDP ports in {low}-{high}")
