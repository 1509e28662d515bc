"""Errors raised by the SIP core."""
from __future__ import annotations

from typing import Any


class SipParseError(ValueError):
    """A message or header that cannot be parsed; `status` is the response a UAS/proxy should send.

    `message` is set when the start line and enough headers could still be read to answer (a framing
    error such as a Content-Length larger than the datagram, a broken header line): the stack answers it
    with `status` instead of dropping it. None means there is nothing to answer to.
    """

    def __init__(self, reason: str, status: int = 400, message: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message
        self.frames: list[bytes] = []  # StreamFramer: complete frames that preceded the error
