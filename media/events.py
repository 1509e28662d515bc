"""Typed media events: what the workers push, decoded for the signalling process (docs/callcontrol.md).

A worker pushes an event as a JSON line without an ``id`` (``{"event": "dtmf", "leg": "c1/a", ...}``); the
signalling process turns it into one of these frozen dataclasses with ``decode_event`` and routes it to the
owner of the leg (``media.client.MediaPool.dispatch``). ``WorkerLost`` is never sent by a worker: the client
makes it when a worker's control connection drops, and the pool when a dead worker is replaced.

Events name their leg. The leg-era worker sends ``leg``; the ng-era worker (one two-party call per Call-ID)
sends ``call_id`` and ``tag``, which decode to the leg ``"<call_id>/<tag>"`` (the name the ng verbs give the two
legs of a call). ``record-failed`` of an ng call has no tag (it records the whole call): its leg is the Call-ID.

| input | ``decode_event`` returns |
|---|---|
| a known event with its fields | the dataclass |
| an unknown event name (e.g. ``dtmf-sent``) | None, logged at debug |
| not a dict, no leg (nor call_id), a field of the wrong type | None, logged at debug |
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "DtmfReceived",
    "LegDown",
    "MediaEvent",
    "MediaTimeout",
    "PlayDone",
    "RecordFailed",
    "WorkerLost",
    "decode_event",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A digit the leg sent us, once it ended: ``source`` is ``rfc4733``, ``inband`` or ``info``."""

    leg: str
    digit: str
    duration_ms: int
    source: str


@dataclass(frozen=True, slots=True)
class PlayDone:
    """What was played to the leg ended (the last file of a playlist, or ``stop_play``)."""

    leg: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RecordFailed:
    """The leg's recording stopped on an error (disk full, file gone); what was written so far is kept."""

    leg: str
    reason: str
    path: str | None = None


@dataclass(frozen=True, slots=True)
class MediaTimeout:
    """No RTP arrived on the leg for the ``timeout`` it was opened with (``idle``: seconds, when told)."""

    leg: str
    idle: float | None = None


@dataclass(frozen=True, slots=True)
class LegDown:
    """The leg's transport died: a browser leg's DTLS or ICE failed (consent expired), or it closed."""

    leg: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """The worker holding ``legs`` died or its control connection dropped: their media is gone.

    ``worker`` is the worker's index in the pool (the client's name for it when the client made the event).
    ``legs`` is empty when the client made the event (it does not know the legs; the pool does).
    """

    worker: int | str
    legs: tuple[str, ...] = ()


MediaEvent = Union[DtmfReceived, PlayDone, RecordFailed, MediaTimeout, LegDown, WorkerLost]


def _leg(message: dict[str, Any], *, tag_optional: bool = False) -> str:
    """The leg an event names: ``leg``, or ``<call_id>/<tag>`` from an ng-era worker."""
    leg = message.get("leg")
    if isinstance(leg, str) and leg:
        return leg
    call_id = message.get("call_id")
    tag = message.get("tag")
    if not isinstance(call_id, str) or not call_id:
        raise ValueError("no 'leg' (nor 'call_id')")
    if isinstance(tag, str) and tag:
        return f"{call_id}/{tag}"
    if tag_optional and tag is None:
        return call_id
    raise ValueError("'call_id' without a 'tag'")


def _text(message: dict[str, Any], name: str, default: str | None = None) -> str:
    value = message.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not a string")
    return value


def _number(message: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = message.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name!r} is not a number")
            return value
    return None


def _dtmf(message: dict[str, Any]) -> DtmfReceived:
    digit = _text(message, "digit")
    if len(digit) != 1:
        raise ValueError(f"'digit' {digit!r} is not one digit")
    duration = _number(message, "duration_ms", "duration")
    return DtmfReceived(_leg(message), digit, round(duration or 0), _text(message, "source", "rfc4733"))


def _record_failed(message: dict[str, Any]) -> RecordFailed:
    path = message.get("path")
    return RecordFailed(_leg(message, tag_optional=True), _text(message, "reason", ""),
                        path if isinstance(path, str) else None)


def _worker_lost(message: dict[str, Any]) -> WorkerLost:
    worker = message.get("worker")
    legs = message.get("legs", [])
    if isinstance(worker, bool) or not isinstance(worker, (int, str)):
        raise ValueError("'worker' is not an index or a name")
    if not isinstance(legs, (list, tuple)) or not all(isinstance(leg, str) for leg in legs):
        raise ValueError("'legs' is not a list of leg names")
    return WorkerLost(worker, tuple(legs))


_DECODERS: dict[str, Any] = {
    "dtmf": _dtmf,
    "play-done": lambda m: PlayDone(_leg(m), _text(m, "reason", "")),
    "record-failed": _record_failed,
    "timeout": lambda m: MediaTimeout(_leg(m), _number(m, "idle")),
    "media-timeout": lambda m: MediaTimeout(_leg(m), _number(m, "idle")),
    "leg-down": lambda m: LegDown(_leg(m), _text(m, "reason", "closed")),
    "worker-lost": _worker_lost,
}


def decode_event(message: Any) -> MediaEvent | None:
    """A worker's event message as its dataclass; None (logged at debug) for what this side does not know.

    Event names are matched with ``_`` and ``-`` alike (``play_done`` is ``play-done``). Never raises.
    """
    if not isinstance(message, dict):
        log.debug("media event is not an object: %r", message)
        return None
    name = message.get("event")
    decoder = _DECODERS.get(name.replace("_", "-")) if isinstance(name, str) else None
    if decoder is None:
        log.debug("media event %r not decoded (unknown): %s", name, message)
        return None
    try:
        return decoder(message)
    except (ValueError, TypeError) as exc:
        log.debug("media event %r not decoded (%s): %s", name, exc, message)
        return None
