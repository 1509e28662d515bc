"""media.client.MediaClient over a real socket to a scripted worker: requests, typed results, errors, timeouts,
events, a dropped connection; and that importing it pulls in nothing of the worker."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from media.client import Connected, LegDescription, LegState, MediaClient, MediaControlError, Recording, RemoteOffer
from media.wire import LineFramer

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_client_pulls_in_no_worker_numpy_openssl_or_c_relay():
    """The SIP process speaks to workers without loading what they run on (a fresh interpreter, our tree)."""
    code = (
        "import sys\n"
        "import media.client, media.events, media.pool, media.wire\n"
        "from media.client import MediaPool\n"
        "heavy = ['media.worker', 'media.control', 'media.relay', 'media._relay', 'media.bridge', 'numpy',\n"
        "         'OpenSSL', 'cryptography', 'av', 'sipcore']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "print(media.client.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=60).stdout.splitlines()
    assert out[0] == "", f"media.client imported {out[0]}"
    assert Path(out[1]).resolve().is_relative_to(ROOT)


class ScriptedWorker:
    """A control socket on 127.0.0.1 that records requests and answers them from ``replies`` (command ->
    reply fields, or a callable of the request); ``silent`` commands get no reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, Any] = {}
        self.silent: set[str] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    def push(self, message: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(LineFramer.encode(message))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        framer = LineFramer()
        while data := await reader.read(65536):
            for request in framer.feed(data):
                assert isinstance(request, dict)
                self.requests.append(request)
                command = request["command"]
                if command in self.silent:
                    continue
                body = self.replies.get(command, {})
                body = body(request) if callable(body) else body
                writer.write(LineFramer.encode({"id": request["id"], "result": "ok", **body}))

    async def drop(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_leg_verbs_send_the_contract_and_return_dataclasses():
    async def scenario() -> None:
        worker = ScriptedWorker()
        address = await worker.start()
        client = await MediaClient.open(address, name=3)
        worker.replies = {
            "leg_offer": {"sdp": "v=0 offer"},
            "leg_answer": {"codec": "PCMU", "direction": "sendrecv"},
            "leg_remote_offer": {"transport": "webrtc", "codecs": ["opus", {"name": "PCMU"}], "direction": "sendonly",
                                 "hold": True},
            "leg_create_answer": {"sdp": "v=0 answer", "codec": "opus", "direction": "recvonly", "hold": True},
            "leg_close": {"stats": {"rx": 10}},
            "leg_query": {"codec": "PCMA", "transport": "rtp", "direction": "recvonly", "connected_to": None,
                          "conference": "room", "hold": True, "stats": {"rx": 1}},
            "connect": {"transcoded": True},
            "stop_record": {"path": "/r/a.wav", "seconds": 12.5},
        }
        try:
            assert await client.leg_offer("c1/b", "rtp", codecs=["PCMU", "PCMA"], dtmf="rfc4733", timeout=30) == \
                LegDescription(b"v=0 offer")
            assert await client.leg_answer("c1/b", b"v=0 theirs") == LegDescription(None, "PCMU", "sendrecv")
            assert await client.leg_remote_offer("c1/a", "v=0 browser", dtmf="info") == \
                RemoteOffer("webrtc", ("opus", "PCMU"), "sendonly", True)
            assert await client.leg_create_answer("c1/a", prefer="PCMU") == \
                LegDescription(b"v=0 answer", "opus", "recvonly", True)
            assert await client.connect("c1/a", "c1/b") == Connected("c1/a", "c1/b", True)
            await client.disconnect("c1/a")
            await client.conference_join("room", "c1/a", "whisper", to="c1/b")
            await client.conference_leave("c1/a")
            await client.play("c1/a", ["/p/hello.wav", "/p/moh.wav"], loop=True, mix=True)
            await client.play("c1/a", "/p/one.wav")                     # one file is a playlist of one
            await client.stop_play("c1/a")
            await client.record("c1/a", "/r/a.wav")
            assert await client.stop_record("c1/a") == Recording("/r/a.wav", 12.5)
            await client.dtmf("c1/a", "123#", duration_ms=80)
            assert await client.leg_query("c1/a") == LegState("c1/a", "PCMA", "rtp", "recvonly", None, {"rx": 1},
                                                             hold=True, conference="room")
            assert await client.leg_close("c1/a") == {"rx": 10}
        finally:
            await client.close()
            await worker.drop()
        sent = [{k: v for k, v in r.items() if k != "id"} for r in worker.requests]
        assert sent == [
            {"command": "leg_offer", "leg": "c1/b", "transport": "rtp", "codecs": ["PCMU", "PCMA"],
             "dtmf": "rfc4733", "timeout": 30},
            {"command": "leg_answer", "leg": "c1/b", "sdp": "v=0 theirs"},
            {"command": "leg_remote_offer", "leg": "c1/a", "sdp": "v=0 browser", "dtmf": "info"},
            {"command": "leg_create_answer", "leg": "c1/a", "prefer": "PCMU"},
            {"command": "connect", "a": "c1/a", "b": "c1/b"},
            {"command": "disconnect", "leg": "c1/a"},
            {"command": "conference_join", "conference": "room", "leg": "c1/a", "mode": "whisper", "to": "c1/b"},
            {"command": "conference_leave", "leg": "c1/a"},
            {"command": "play", "leg": "c1/a", "files": ["/p/hello.wav", "/p/moh.wav"], "loop": True, "mix": True},
            {"command": "play", "leg": "c1/a", "files": ["/p/one.wav"], "loop": False, "mix": False},
            {"command": "stop_play", "leg": "c1/a"},
            {"command": "record", "leg": "c1/a", "path": "/r/a.wav"},
            {"command": "stop_record", "leg": "c1/a"},
            {"command": "dtmf", "leg": "c1/a", "digits": "123#", "duration_ms": 80},
            {"command": "leg_query", "leg": "c1/a"},
            {"command": "leg_close", "leg": "c1/a"},
        ]
        assert [r["id"] for r in worker.requests] == list(range(1, len(sent) + 1))

    run(scenario)


def test_ng_verbs_keep_their_wire_form():
    async def scenario() -> None:
        worker = ScriptedWorker()
        client = await MediaClient.open(await worker.start())
        worker.replies = {"offer": {"sdp": "o"}, "answer": {"sdp": "a", "transcoded": False},
                          "delete": {"stats": {"a": {}}}, "query": {"stats": {"calls": 0}}, "mix": {"sdp": "m"}}
        try:
            assert await client.offer("c1", "f", b"v=0", "RTP/AVP") == "o"
            assert await client.answer_reply("c1", "f", "t", "v=0") == {"id": 2, "result": "ok", "sdp": "a",
                                                                         "transcoded": False}
            await client.call_play("c1", "t", beep=True, loop=True)
            await client.call_stop_play("c1", "t")
            await client.call_record("c1", "/r/c1.wav")
            await client.call_stop_record("c1")
            await client.call_dtmf("c1", "t", "9")
            assert await client.mix("c1", "sup", "v=0", "whisper", whisper_to="t") == "m"
            await client.stop_mix("c1")
            assert await client.query() == {"calls": 0}
            assert await client.delete("c1") == {"a": {}}
        finally:
            await client.close()
            await worker.drop()
        sent = [{k: v for k, v in r.items() if k != "id"} for r in worker.requests]
        assert sent[0] == {"command": "offer", "call_id": "c1", "from_tag": "f", "sdp": "v=0", "transport": "RTP/AVP"}
        assert sent[2] == {"command": "play", "call_id": "c1", "tag": "t", "loop": True, "beep": True}
        assert sent[6] == {"command": "dtmf", "call_id": "c1", "tag": "t", "digits": "9", "duration_ms": 100}
        assert sent[9] == {"command": "query"}

    run(scenario)


def test_errors_timeouts_and_unusable_replies():
    async def scenario() -> None:
        worker = ScriptedWorker()
        client = await MediaClient.open(await worker.start(), timeout=0.3)
        worker.replies = {"leg_close": lambda r: {"result": "error", "error-reason": f"unknown leg {r['leg']!r}"},
                          "leg_offer": {"nothing": 1}}
        worker.silent = {"ping"}
        try:
            with pytest.raises(MediaControlError, match="unknown leg 'x'"):
                await client.leg_close("x")
            with pytest.raises(MediaControlError, match="leg_offer: the worker's reply has no usable 'sdp'"):
                await client.leg_offer("x", "rtp")
            with pytest.raises(MediaControlError, match="not UTF-8"):
                await client.leg_answer("x", b"v=0\r\ns=\xff\xfe\r\n")
            with pytest.raises(asyncio.TimeoutError):
                await client.ping()
            worker.silent = set()
            worker.replies["ping"] = {"result": "pong"}
            assert (await client.ping())["result"] == "pong"      # the connection still serves
        finally:
            await client.close()
            await worker.drop()
        with pytest.raises(ConnectionError):
            await client.ping()

    run(scenario)


def test_events_reach_on_event_and_a_dropped_connection_says_worker_lost():
    async def scenario() -> None:
        worker = ScriptedWorker()
        address = await worker.start()
        seen: list[dict[str, Any]] = []
        client = await MediaClient.open(address, on_event=seen.append, name=1, timeout=5)
        worker.silent = {"leg_query"}
        pending = asyncio.ensure_future(client.leg_query("a"))
        await asyncio.sleep(0.05)
        worker.push({"event": "dtmf", "leg": "a", "digit": "7", "duration_ms": 100, "source": "rfc4733"})
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [{"event": "dtmf", "leg": "a", "digit": "7", "duration_ms": 100, "source": "rfc4733"}]
        await worker.drop()                           # the worker goes away mid-request
        with pytest.raises(ConnectionError):
            await pending
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen[1] == {"event": "worker-lost", "worker": 1} and client.closed
        await client.close()

        # without on_event, events queue up; close() is not a loss
        worker = ScriptedWorker()
        client = await MediaClient.open(await worker.start())
        await asyncio.sleep(0.05)
        worker.push({"event": "leg-down", "leg": "b", "reason": "closed"})
        assert await asyncio.wait_for(client.events.get(), 5) == {"event": "leg-down", "leg": "b", "reason": "closed"}
        await client.close()
        await asyncio.sleep(0.05)
        assert client.events.empty()
        await worker.drop()

    run(scenario)


def test_a_listener_that_raises_does_not_stop_the_connection():
    async def scenario() -> None:
        worker = ScriptedWorker()
        calls: list[str] = []

        def broken(message: dict[str, Any]) -> None:
            calls.append(message["leg"])
            raise RuntimeError("bug in the listener")

        client = await MediaClient.open(await worker.start(), on_event=broken)
        worker.replies = {"ping": {"result": "pong"}}
        try:
            await client.ping()
            worker.push({"event": "play-done", "leg": "a"})
            worker.push({"event": "play-done", "leg": "b"})
            assert (await client.ping())["result"] == "pong"
            assert calls == ["a", "b"]
        finally:
            await client.close()
            await worker.drop()

    run(scenario)


def test_json_lines_both_ways():
    """The client's requests are single JSON lines (an SDP's CRLFs are escaped)."""
    line = LineFramer.encode({"id": 1, "command": "leg_answer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"})
    assert line.count(b"\n") == 1 and json.loads(line)["sdp"].endswith("\r\n")
