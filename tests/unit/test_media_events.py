"""media.events: worker event messages -> typed dataclasses; what is unknown or malformed is None, never a crash."""
from __future__ import annotations

import logging

import pytest

from media.events import DtmfReceived, LegDown, MediaTimeout, PlayDone, RecordFailed, WorkerLost, decode_event


@pytest.mark.parametrize("message, expected", [
    # leg-era events name their leg
    ({"event": "dtmf", "leg": "c1/a", "digit": "5", "duration_ms": 120, "source": "rfc4733"},
     DtmfReceived("c1/a", "5", 120, "rfc4733")),
    ({"event": "play-done", "leg": "c1/a"}, PlayDone("c1/a")),
    ({"event": "play_done", "leg": "c1/a", "reason": "stopped"}, PlayDone("c1/a", "stopped")),
    ({"event": "record-failed", "leg": "c1/a", "reason": "disk full", "path": "/r/x.wav"},
     RecordFailed("c1/a", "disk full", "/r/x.wav")),
    ({"event": "media-timeout", "leg": "c1/b"}, MediaTimeout("c1/b")),
    ({"event": "leg-down", "leg": "c1/b", "reason": "dtls failed"}, LegDown("c1/b", "dtls failed")),
    ({"event": "worker-lost", "worker": 1}, WorkerLost(1)),
    ({"event": "worker-lost", "worker": "w2", "legs": ["x", "y"]}, WorkerLost("w2", ("x", "y"))),
    # ng-era events (today's worker) name call_id + tag: the leg is "<call_id>/<tag>"
    ({"event": "dtmf", "call_id": "c1", "tag": "t1", "digit": "#", "duration": 99.6, "source": "inband"},
     DtmfReceived("c1/t1", "#", 100, "inband")),
    ({"event": "timeout", "call_id": "c1", "tag": "t1", "idle": 30.2}, MediaTimeout("c1/t1", 30.2)),
    ({"event": "leg-down", "call_id": "c1", "tag": "t1", "reason": "consent expired"},
     LegDown("c1/t1", "consent expired")),
    ({"event": "play-done", "call_id": "c1", "tag": "t1", "reason": "done"}, PlayDone("c1/t1", "done")),
    # an ng call's recording is the whole call's: no tag, the leg is the Call-ID
    ({"event": "record-failed", "call_id": "c1", "path": "/r/c1.wav", "reason": "No space left"},
     RecordFailed("c1", "No space left", "/r/c1.wav")),
])
def test_known_events_decode(message, expected):
    assert decode_event(message) == expected


@pytest.mark.parametrize("message", [
    {"event": "dtmf-sent", "call_id": "c1", "tag": "t1", "reason": "done"},     # today's worker: not routed
    {"event": "brand-new", "leg": "x"},
    {"event": None},
    {"leg": "x"},
    {"event": "dtmf", "digit": "5"},                                           # no leg, no call_id
    {"event": "dtmf", "call_id": "c1", "digit": "5"},                          # call_id without tag
    {"event": "dtmf", "leg": "x", "digit": "55"},
    {"event": "dtmf", "leg": "x", "digit": 5},
    {"event": "dtmf", "leg": "x", "digit": "5", "duration_ms": "long"},
    {"event": "timeout", "leg": "x", "idle": True},
    {"event": "leg-down", "leg": "", "reason": "x"},
    {"event": "worker-lost", "worker": [1]},
    {"event": "worker-lost", "worker": 1, "legs": "a,b"},
    ["not", "an", "object"],
    None,
])
def test_unknown_or_malformed_events_are_none_and_logged(message, caplog):
    with caplog.at_level(logging.DEBUG, logger="media.events"):
        assert decode_event(message) is None
    assert "media event" in caplog.text


def test_events_are_frozen():
    event = DtmfReceived("c1/a", "1", 100, "rfc4733")
    with pytest.raises(AttributeError):
        event.digit = "2"  # type: ignore[misc]
