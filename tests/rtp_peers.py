"""A plain RTP endpoint for tests: keeps every RTP datagram the worker sends it (RTCP is left out)."""
from __future__ import annotations

import asyncio


class RtpPeer(asyncio.DatagramProtocol):
    """One party's RTP socket; ``received`` holds what arrived, in order, without RTCP."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not 192 <= data[1] <= 223:
            self.received.append(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]
