"""Errors raised by the SIP core."""
from __future__ import annotations


class SipParseError(ValueError):
    """A message or header that cannot be parsed; `status` is the response a UAS/proxy should send."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
