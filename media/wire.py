"""The framing of the media control protocol: one JSON object per line, sans-IO.

Both ends use it: ``media.control.ControlServer`` in the worker and ``media.client.MediaClient`` in the
signalling process. Stdlib only, so that the signalling side can speak to workers without importing them.

Wire format: one JSON object per line (UTF-8, ``\\n``-terminated; ``json.dumps`` never emits a raw newline).

| input | ``feed`` yields |
|---|---|
| a complete line holding a JSON object | the object (a dict) |
| a blank line | nothing |
| a line that is not JSON, or JSON that is not an object | a ``ControlProtocolError`` (the stream goes on) |
| more than ``max_line`` bytes without a newline | a ``ControlProtocolError``; the buffered bytes are dropped |
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "ControlProtocolError", "LineFramer"]

MAX_LINE = 4 * 1024 * 1024     # an SDP is a few KiB; anything this long is not a control message


class ControlProtocolError(ValueError):
    """A frame that is not a JSON object (or a line over MAX_LINE)."""


class LineFramer:
    """Newline-delimited JSON: ``feed`` bytes, get complete objects (or ControlProtocolError per bad line)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any] | ControlProtocolError]:
        """Complete messages in ``data`` (with what was buffered), in order; a bad line yields its error."""
        buffer = self._buffer
        buffer += data
        out: list[dict[str, Any] | ControlProtocolError] = []
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > self.max_line:
                    buffer.clear()
                    out.append(ControlProtocolError(f"line longer than {self.max_line} bytes"))
                return out
            line = bytes(buffer[:end]).strip()
            del buffer[:end + 1]
            if not line:
                continue
            try:
                message = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                out.append(ControlProtocolError(f"bad JSON: {exc}"))
                continue
            if not isinstance(message, dict):
                out.append(ControlProtocolError(f"a message must be a JSON object, not {type(message).__name__}"))
                continue
            out.append(message)

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        """One message as a line."""
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"
