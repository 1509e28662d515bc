"""Structured logging: every record can carry a Call-ID (extra={"call_id": ...}); text or JSON lines."""
from __future__ import annotations

import json
import logging
import sys
import time


class _TextFormatter(logging.Formatter):
    """`time level logger [call-id] message`."""

    def format(self, record: logging.LogRecord) -> str:
        cid = getattr(record, "call_id", None)
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        text = f"{ts} {record.levelname.lower():7} {record.name}{f' [{cid}]' if cid else ''} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        cid = getattr(record, "call_id", None)
        if cid:
            out["call_id"] = cid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
