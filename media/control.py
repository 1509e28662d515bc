"""The control protocol between the signalling process and media workers (rtpengine's ng protocol, as JSON lines).

Wire format: one JSON object per line (UTF-8, ``\\n``-terminated; ``json.dumps`` never emits a raw newline)
over a local stream socket (a Unix socket path, or 127.0.0.1 TCP). Every request carries an ``id`` (the
cookie) and a ``command``; exactly one reply comes back with the same ``id`` and ``"result": "ok"`` (``"pong"``
for ping) or ``"result": "error"`` with an ``"error-reason"``. Events are pushed without an ``id``::

    -> {"id": 1, "command": "offer", "call_id": "c1", "from_tag": "f1", "sdp": "v=0...", "transport": "RTP/AVP"}
    <- {"id": 1, "result": "ok", "sdp": "v=0..."}
    -> {"id": 2, "command": "answer", "call_id": "c1", "from_tag": "f1", "to_tag": "t1", "sdp": "v=0..."}
    <- {"id": 2, "result": "ok", "sdp": "v=0..."}
    <- {"event": "dtmf", "call_id": "c1", "tag": "t1", "digit": "5", "duration": 100, "source": "rfc4733"}
    -> {"id": 3, "command": "delete", "call_id": "c1"}
    <- {"id": 3, "result": "ok", "stats": {...}}

Commands: ``offer``, ``answer``, ``delete``, ``query`` (a call's stats, or the worker's without ``call_id``),
``ping``, and on an answered call ``play``/``stop_play``, ``record``/``stop_record``, ``dtmf``, ``mix``/``stop_mix``
(docs/media.md). ``LineFramer`` is the sans-IO framing both ends use; ``ControlServer`` (in the worker) and
``MediaControlClient`` (in the SIP process) are the asyncio adapters. ``start_workers(n, settings)`` spawns one
worker process per core, each serving its own control socket.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable

from .worker import MediaError, MediaSettings, MediaWorker

__all__ = [
    "ControlProtocolError",
    "ControlServer",
    "LineFramer",
    "MediaControlClient",
    "MediaControlError",
    "WorkerProcess",
    "serve_worker",
    "spawn_worker",
    "start_workers",
]

log = logging.getLogger(__name__)

MAX_LINE = 4 * 1024 * 1024     # an SDP is a few KiB; anything this long is not a control message


class ControlProtocolError(ValueError):
    """A frame that is not a JSON object (or a line over MAX_LINE)."""


class MediaControlError(Exception):
    """The worker answered a request with an error; the message is its error-reason."""


# -- sans-IO framing ---------------------------------------------------------------------------------

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


# -- the server (worker side) ------------------------------------------------------------------------

def _text(request: dict[str, Any], name: str) -> str:
    """A required string argument, or MediaError naming it."""
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise MediaError(f"{request.get('command')}: missing or non-string {name!r}")
    return value


def _opt_text(request: dict[str, Any], name: str) -> str | None:
    """An optional string argument (None when absent), or MediaError naming it."""
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise MediaError(f"{request.get('command')}: {name!r} must be a string")
    return value


class ControlServer:
    """Serves the control protocol for one MediaWorker on a Unix socket or a TCP port; pushes its events."""

    def __init__(self, worker: MediaWorker) -> None:
        self.worker = worker
        self.server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        worker.on_event = self.broadcast

    async def listen(self, path: str | None = None, host: str = "127.0.0.1", port: int = 0) -> str | tuple[str, int]:
        """Start listening; returns the socket path or the bound (host, port)."""
        if path:
            if os.path.exists(path):
                os.unlink(path)
            self.server = await asyncio.start_unix_server(self._serve, path=path)
            return path
        self.server = await asyncio.start_server(self._serve, host, port)
        sockname = self.server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    def broadcast(self, event: dict[str, Any]) -> None:
        """Push an event to every connected client."""
        data = LineFramer.encode(event)
        for writer in list(self._writers):
            if writer.is_closing():
                self._writers.discard(writer)
            else:
                writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = LineFramer()
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    if isinstance(message, ControlProtocolError):
                        reply: dict[str, Any] = {"id": None, "result": "error", "error-reason": str(message)}
                    else:
                        reply = await self.handle(message)
                    writer.write(LineFramer.encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request -> its reply (errors become ``result: error`` replies, never exceptions)."""
        cookie = request.get("id")
        command = request.get("command")
        worker = self.worker
        try:
            if command == "ping":
                body: dict[str, Any] = {"result": "pong", **worker.status()}
            elif command == "offer":
                flags = request.get("flags") or {}
                transport = request.get("transport") or (flags.get("transport") if isinstance(flags, dict) else None)
                sdp = await worker.offer(_text(request, "call_id"), _text(request, "from_tag"),
                                         _text(request, "sdp"), transport)
                body = {"result": "ok", "sdp": sdp}
            elif command == "answer":
                call_id = _text(request, "call_id")
                sdp = await worker.answer(call_id, _text(request, "from_tag"), _text(request, "to_tag"),
                                          _text(request, "sdp"))
                body = {"result": "ok", "sdp": sdp, "transcoded": worker.transcoded(call_id)}
            elif command == "delete":
                body = {"result": "ok", "stats": await worker.delete(_text(request, "call_id"))}
            elif command == "query":
                stats = worker.query(_text(request, "call_id")) if request.get("call_id") else worker.status()
                body = {"result": "ok", "stats": stats}
            elif command == "play" and "leg" in request:
                files = request.get("files")
                if isinstance(request.get("file"), str) and files is None:
                    files = [request["file"]]
                body = {"result": "ok", **await worker.play(_text(request, "leg"), files, bool(request.get("loop")),
                                                            bool(request.get("mix")), request.get("beep"))}
            elif command == "play":
                file = request.get("file")
                if file is not None and (not isinstance(file, str) or not file):
                    raise MediaError("play: 'file' must be a non-empty string")
                body = {"result": "ok", **await worker.call_play(_text(request, "call_id"), _text(request, "tag"),
                                                                 file, request.get("beep"), bool(request.get("loop")))}
            elif command == "stop_play" and "leg" in request:
                body = {"result": "ok", **worker.stop_play(_text(request, "leg"))}
            elif command == "stop_play":
                body = {"result": "ok", **worker.call_stop_play(_text(request, "call_id"), _text(request, "tag"))}
            elif command == "record" and "leg" in request:
                body = {"result": "ok", **worker.record(_text(request, "leg"), _text(request, "path"))}
            elif command == "record":
                body = {"result": "ok", **worker.call_record(_text(request, "call_id"), _text(request, "path"))}
            elif command == "stop_record" and "leg" in request:
                body = {"result": "ok", **worker.stop_record(_text(request, "leg"))}
            elif command == "stop_record":
                body = {"result": "ok", **worker.call_stop_record(_text(request, "call_id"))}
            elif command == "dtmf":
                duration = request.get("duration_ms", request.get("duration", 100))
                if "leg" in request:
                    body = {"result": "ok", **worker.dtmf(_text(request, "leg"), _text(request, "digits"), duration)}
                else:
                    body = {"result": "ok", **worker.call_dtmf(_text(request, "call_id"), _text(request, "tag"),
                                                               _text(request, "digits"), duration)}
            elif command == "leg_offer":
                codecs = request.get("codecs")
                sdp = await worker.leg_offer(_text(request, "leg"), _opt_text(request, "transport"),
                                             codecs, _opt_text(request, "dtmf"), _opt_text(request, "direction"),
                                             request.get("timeout"))
                body = {"result": "ok", "sdp": sdp}
            elif command == "leg_answer":
                body = {"result": "ok", **worker.leg_answer(_text(request, "leg"), _text(request, "sdp"))}
            elif command == "leg_remote_offer":
                body = {"result": "ok", **await worker.leg_remote_offer(
                    _text(request, "leg"), _text(request, "sdp"), _opt_text(request, "dtmf"), request.get("timeout"))}
            elif command == "leg_create_answer":
                body = {"result": "ok", **worker.leg_create_answer(_text(request, "leg"),
                                                                   _opt_text(request, "prefer"))}
            elif command == "leg_close":
                body = {"result": "ok", **worker.leg_close(_text(request, "leg"))}
            elif command == "leg_query":
                body = {"result": "ok", **worker.leg_query(_text(request, "leg"))}
            elif command == "connect":
                body = {"result": "ok", **worker.connect(_text(request, "a"), _text(request, "b"))}
            elif command == "disconnect":
                body = {"result": "ok", **worker.disconnect(_text(request, "leg"))}
            elif command == "conference_join":
                body = {"result": "ok", **worker.conference_join(
                    _text(request, "conference"), _text(request, "leg"), _opt_text(request, "mode") or "talk",
                    _opt_text(request, "to"))}
            elif command == "conference_leave":
                body = {"result": "ok", **worker.conference_leave(_text(request, "leg"))}
            elif command == "mix":
                whisper_to = request.get("whisper_to")
                sdp = await worker.mix(_text(request, "call_id"), _text(request, "tag"), _text(request, "sdp"),
                                       str(request.get("mode") or "listen"),
                                       whisper_to if isinstance(whisper_to, str) else None)
                body = {"result": "ok", "sdp": sdp}
            elif command == "stop_mix":
                tag = request.get("tag")
                if tag is not None and (not isinstance(tag, str) or not tag):
                    raise MediaError("stop_mix: 'tag' must be a non-empty string (or absent: every member)")
                body = {"result": "ok", **worker.stop_mix(_text(request, "call_id"), tag)}
            else:
                raise MediaError(f"unknown command {command!r} (leg_offer, leg_answer, leg_remote_offer, "
                                 "leg_create_answer, leg_close, leg_query, connect, disconnect, conference_join, "
                                 "conference_leave, play, stop_play, record, stop_record, dtmf; offer, answer, "
                                 "delete, query, mix, stop_mix, ping)")
        except MediaError as exc:
            body = {"result": "error", "error-reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("control command %r failed", command)
            body = {"result": "error", "error-reason": f"internal error: {type(exc).__name__}: {exc}"}
        return {"id": cookie, **body}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.close()
            await self.server.wait_closed()


async def serve_worker(settings: MediaSettings) -> tuple[MediaWorker, ControlServer, str | tuple[str, int]]:
    """Start a worker and its control server in this process (the embedded case); returns both and the address."""
    worker = await MediaWorker.start(settings)
    server = ControlServer(worker)
    address = await server.listen(settings.control_path, settings.control_host, settings.control_port)
    return worker, server, address


# -- the client (signalling side) --------------------------------------------------------------------

class MediaControlClient:
    """The SIP process's handle on one media worker: offer/answer/delete/query/ping, events via ``on_event``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict[str, Any]], None] | None = None, timeout: float = 5.0) -> None:
        self._reader = reader
        self._writer = writer
        self.on_event = on_event
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()   # used when no on_event is given
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._framer = LineFramer()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, address: str | tuple[str, int], *,
                      on_event: Callable[[dict[str, Any]], None] | None = None,
                      timeout: float = 5.0) -> MediaControlClient:
        """Connect to a worker's control socket: a Unix socket path or a (host, port)."""
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            reader, writer = await asyncio.open_connection(address[0], address[1])
        return cls(reader, writer, on_event, timeout)

    async def _read(self) -> None:
        error: Exception = ConnectionError("media worker closed the control connection")
        try:
            while data := await self._reader.read(65536):
                for message in self._framer.feed(data):
                    if isinstance(message, ControlProtocolError):
                        log.warning("media control: %s", message)
                        continue
                    cookie = message.get("id")
                    if "event" in message and cookie is None:
                        if self.on_event is not None:
                            self.on_event(message)
                        else:
                            self.events.put_nowait(message)
                        continue
                    future = self._pending.pop(cookie, None) if isinstance(cookie, int) else None
                    if future is not None and not future.done():
                        future.set_result(message)
        except (ConnectionError, OSError) as exc:
            error = exc
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def request(self, command: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; MediaControlError if the worker says error."""
        if self._task.done():
            raise ConnectionError("the control connection is closed")
        cookie = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = future
        self._writer.write(LineFramer.encode({"id": cookie, "command": command, **args}))
        try:
            reply = await asyncio.wait_for(future, self.timeout)
        finally:
            self._pending.pop(cookie, None)
        if reply.get("result") == "error":
            raise MediaControlError(str(reply.get("error-reason", "unknown error")))
        return reply

    async def offer(self, call_id: str, from_tag: str, sdp: str | bytes, transport: str | None = None) -> str:
        """The caller's SDP offer -> the SDP to send the callee (``transport``: RTP/AVP, RTP/SAVP or UDP/TLS/RTP/SAVPF)."""
        args: dict[str, Any] = {"call_id": call_id, "from_tag": from_tag,
                                "sdp": sdp.decode() if isinstance(sdp, bytes) else sdp}
        if transport:
            args["transport"] = transport
        return (await self.request("offer", **args))["sdp"]

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> str:
        """The callee's SDP answer -> the SDP to send the caller."""
        return (await self.answer_reply(call_id, from_tag, to_tag, sdp))["sdp"]

    async def answer_reply(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> dict[str, Any]:
        """``answer``'s whole reply: ``sdp``, and ``transcoded`` (whether the bridge transcodes, which costs
        the worker about four times a relayed call's CPU)."""
        return await self.request("answer", call_id=call_id, from_tag=from_tag, to_tag=to_tag,
                                  sdp=sdp.decode() if isinstance(sdp, bytes) else sdp)

    async def delete(self, call_id: str) -> dict[str, Any]:
        """Tear the call's media down; returns its per-leg stats."""
        return (await self.request("delete", call_id=call_id))["stats"]

    async def query(self, call_id: str | None = None) -> dict[str, Any]:
        """A call's stats, or the worker's figures."""
        args = {"call_id": call_id} if call_id else {}
        return (await self.request("query", **args))["stats"]

    async def ping(self) -> dict[str, Any]:
        """Liveness and load of the worker."""
        return await self.request("ping")

    async def play(self, call_id: str, tag: str, file: str | None = None, *, beep: bool | dict[str, Any] = False,
                   loop: bool = False) -> dict[str, Any]:
        """Play a file on the worker's host (or a beep) to the leg ``tag``, instead of the other party."""
        args: dict[str, Any] = {"call_id": call_id, "tag": tag, "loop": loop}
        if file is not None:
            args["file"] = file
        if beep:
            args["beep"] = beep
        return await self.request("play", **args)

    async def stop_play(self, call_id: str, tag: str) -> dict[str, Any]:
        """Stop what is played to the leg ``tag``."""
        return await self.request("stop_play", call_id=call_id, tag=tag)

    async def record(self, call_id: str, path: str) -> dict[str, Any]:
        """Start recording the call to a two-channel WAV at ``path`` (caller left, callee right)."""
        return await self.request("record", call_id=call_id, path=path)

    async def stop_record(self, call_id: str) -> dict[str, Any]:
        """Finish the call's recording; returns its path and duration."""
        return await self.request("stop_record", call_id=call_id)

    async def mix(self, call_id: str, tag: str, sdp: str | bytes, mode: str = "listen",
                  whisper_to: str | None = None) -> str:
        """Join a leg to a bridged call (its offer in, our answer out): ``listen``, ``whisper`` to a tag, ``speak``."""
        args: dict[str, Any] = {"call_id": call_id, "tag": tag, "mode": mode,
                                "sdp": sdp.decode() if isinstance(sdp, bytes) else sdp}
        if whisper_to:
            args["whisper_to"] = whisper_to
        return (await self.request("mix", **args))["sdp"]

    async def stop_mix(self, call_id: str, tag: str | None = None) -> dict[str, Any]:
        """Drop the member leg ``tag`` (default: every leg ``mix`` joined to the call)."""
        if tag is None:
            return await self.request("stop_mix", call_id=call_id)
        return await self.request("stop_mix", call_id=call_id, tag=tag)

    async def dtmf(self, call_id: str, tag: str, digits: str, duration_ms: int = 100) -> dict[str, Any]:
        """Send DTMF digits to the leg ``tag`` (RFC 4733 if it negotiated telephone-event, else in-band)."""
        return await self.request("dtmf", call_id=call_id, tag=tag, digits=digits, duration_ms=duration_ms)

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# -- worker processes --------------------------------------------------------------------------------

@dataclass
class WorkerProcess:
    """A spawned media worker: its process, settings and control address."""

    index: int
    process: multiprocessing.process.BaseProcess
    settings: MediaSettings
    address: str | tuple[str, int]

    async def client(self, **kwargs: Any) -> MediaControlClient:
        """A control connection to this worker."""
        return await MediaControlClient.connect(self.address, **kwargs)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the worker closes its calls and sockets), then wait; kill if it hangs."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(1.0)


def worker_settings(settings: MediaSettings, n: int, index: int) -> MediaSettings:
    """The slice of ``settings`` worker ``index`` of ``n`` gets: its share of the RTP range, its ports/path."""
    span = (settings.rtp_port_max - settings.rtp_port_min + 1) // n
    span -= span % 2
    if span < 2:
        raise ValueError(f"RTP range {settings.rtp_port_min}-{settings.rtp_port_max} too small for {n} workers")
    low = settings.rtp_port_min + index * span
    path = settings.control_path
    if path and n > 1:
        path = f"{path}.{index}"
    return dataclasses.replace(
        settings,
        rtp_port_min=low,
        rtp_port_max=low + span - 1,
        ice_port=settings.ice_port + index if settings.ice_port else 0,
        control_path=path,
        control_port=settings.control_port + index if settings.control_port else 0,
    )


def _worker_main(settings: MediaSettings, ready: Any) -> None:
    """Entry point of a worker process: serve the control socket until SIGTERM."""
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        try:
            worker, server, address = await serve_worker(settings)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            ready.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready.put(("ready", address))
        await stop.wait()
        await server.close()
        await worker.close()

    asyncio.run(main())


def start_workers(n: int, settings: MediaSettings, *, timeout: float = 30.0) -> list[WorkerProcess]:
    """Spawn ``n`` worker processes (spawn context), each with its slice of the settings; wait until they serve.

    Blocking (it waits for each child to report its control address): call it before the event loop starts,
    or through ``asyncio.to_thread``. The embedded default is ``start_workers(1, settings)``.
    """
    handles: list[WorkerProcess] = []
    try:
        for index in range(n):
            handles.append(spawn_worker(index, worker_settings(settings, n, index), timeout=timeout))
    except BaseException:
        for handle in handles:
            handle.stop()
        raise
    return handles


def spawn_worker(index: int, own: MediaSettings, *, timeout: float = 30.0) -> WorkerProcess:
    """Spawn one worker process with its own settings (a slice from ``worker_settings``) and wait until it
    serves; RuntimeError if it reports a failure. Blocking, like ``start_workers``; also how a worker that
    died is replaced (the same ports and RTP range)."""
    ctx = multiprocessing.get_context("spawn")
    # Workers batch small numpy products every 20 ms: OpenBLAS threads made them 3-10x slower on a busy
    # 2-core machine (benchmarks/media/dtmf.py). Spawned children read this before importing numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ready = ctx.Queue()
    process = ctx.Process(target=_worker_main, args=(own, ready), name=f"callpath-media-{index}", daemon=True)
    process.start()
    try:
        status, detail = ready.get(timeout=timeout)
    except BaseException:
        process.kill()
        process.join(5.0)
        raise
    if status != "ready":
        process.join(5.0)
        raise RuntimeError(f"media worker {index} failed to start: {detail}")
    return WorkerProcess(index, process, own, tuple(detail) if isinstance(detail, list) else detail)
