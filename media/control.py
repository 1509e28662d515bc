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
(docs/media.md), and the leg commands of docs/callcontrol.md. ``media.wire.LineFramer`` is the sans-IO framing
both ends use; ``ControlServer`` (here, in the worker) and ``media.client.MediaClient`` (in the SIP process,
which never imports this module's worker) are the asyncio adapters. ``start_workers(n, settings)`` spawns one
worker process per core, each serving its own control socket.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Any

from .client import MediaClient, MediaControlError
from .wire import ControlProtocolError, LineFramer
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


class MediaControlClient:
    """The former name of ``media.client.MediaClient``: ``await MediaControlClient.connect(address)`` opens a
    MediaClient (whose instance method ``connect(a, b)`` joins two legs). New code: ``MediaClient.open``."""

    connect = staticmethod(MediaClient.open)


# -- worker processes --------------------------------------------------------------------------------

@dataclass
class WorkerProcess:
    """A spawned media worker: its process, settings and control address."""

    index: int
    process: multiprocessing.process.BaseProcess
    settings: MediaSettings
    address: str | tuple[str, int]

    async def client(self, **kwargs: Any) -> MediaClient:
        """A control connection to this worker."""
        return await MediaClient.open(self.address, **{"name": self.index, **kwargs})

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
