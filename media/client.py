"""The signalling process's side of the media plane: ``MediaClient`` (one worker) and ``MediaPool`` (all of them).

docs/callcontrol.md is the contract. A ``MediaClient`` speaks the JSON-lines control protocol
(``media.wire``) to one worker: every request carries an ``id`` and waits (at most ``timeout`` seconds) for
the reply with the same ``id``; a reply with ``"result": "error"`` raises ``MediaControlError``; lines without
an ``id`` are events, handed to ``on_event`` as the worker sent them (``media.events.decode_event`` types
them). This module imports no worker code, numpy, OpenSSL or the C relay: the SIP process stays small.

Two vocabularies are spoken:

- **legs** (the leg-era worker): ``leg_offer`` / ``leg_answer`` (we offer), ``leg_remote_offer`` /
  ``leg_create_answer`` (they offer), ``leg_close``, ``leg_query``, ``connect`` / ``disconnect``,
  ``conference_join`` / ``conference_leave``, and per leg ``play``, ``stop_play``, ``record``, ``stop_record``,
  ``dtmf``. Results are small frozen dataclasses (``LegDescription``, ``RemoteOffer``...).
- **ng calls** (rtpengine's verbs, one two-party call per Call-ID, what the B2BUA uses today): ``offer``,
  ``answer`` / ``answer_reply``, ``delete``, ``query``, ``ping``, ``mix`` / ``stop_mix``, and the per-call media
  commands, named ``call_play``, ``call_stop_play``, ``call_record``, ``call_stop_record``, ``call_dtmf`` because
  the leg verbs took the short names.

Failures of a request:

| what happened | raised |
|---|---|
| the worker answered ``"result": "error"`` | ``MediaControlError(error-reason)`` |
| no reply within ``timeout`` | ``asyncio.TimeoutError`` (a late reply is dropped) |
| the connection is closed or drops while waiting | ``ConnectionError`` |
| a reply lacks a field the typed method needs | ``MediaControlError`` naming it |

When the connection drops without ``close()``, ``on_event`` gets ``{"event": "worker-lost", "worker": name}``.

``MediaPool`` (all workers: placement, routing of events to owners, cross-worker bridges) lives in
``media.pool`` and is importable from here too.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .wire import ControlProtocolError, LineFramer

if TYPE_CHECKING:
    from .pool import LostMedia, MediaPool

__all__ = [
    "Connected",
    "LegDescription",
    "LegState",
    "LostMedia",
    "MediaClient",
    "MediaControlError",
    "MediaPool",
    "Recording",
    "RemoteOffer",
]

log = logging.getLogger(__name__)

Address = str | tuple[str, int]
EventCallback = Callable[[dict[str, Any]], None]


class MediaControlError(Exception):
    """The worker answered a request with an error (the message is its error-reason), or a reply was unusable."""


# -- results of the leg verbs ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LegDescription:
    """What a leg verb says about a leg (the shape of ``sipcore.routing.LegDescription``): our SDP when it
    made one (``leg_offer``, ``leg_create_answer``; None for ``leg_answer``), the codec once negotiated (None
    after a first ``leg_offer``), the direction, and ``hold``: the remote offer put us on hold (we answer
    recvonly/inactive)."""

    sdp: bytes | None = None
    codec: str | None = None
    direction: str = "sendrecv"
    hold: bool = False


@dataclass(frozen=True, slots=True)
class RemoteOffer:
    """What ``leg_remote_offer`` read from a remote offer: its transport (``rtp``, ``sdes``, ``webrtc``), the
    codecs it offers that the worker can use (in its order), its direction, and whether it puts us on hold."""

    transport: str
    codecs: tuple[str, ...]
    direction: str = "sendrecv"
    hold: bool = False


@dataclass(frozen=True, slots=True)
class Connected:
    """``connect``'s result: ``transcoded`` costs the worker about four relayed legs' CPU; ``bridged`` says the
    two legs live on different workers and are joined through a pair of internal plain-RTP legs."""

    a: str
    b: str
    transcoded: bool
    bridged: bool = False


@dataclass(frozen=True, slots=True)
class Recording:
    """A finished recording (``stop_record``): a two-channel WAV on the worker's host."""

    path: str
    seconds: float


@dataclass(frozen=True, slots=True)
class LegState:
    """``leg_query``: what the leg negotiated, what it is connected to (a leg, or None) or the conference it
    is in, whether the remote holds it, and its stats."""

    leg: str
    codec: str | None
    transport: str | None
    direction: str | None
    connected: str | None
    stats: dict[str, Any] = field(default_factory=dict)
    hold: bool = False
    conference: str | None = None


def _sdp_text(sdp: str | bytes) -> str:
    """An SDP body for a JSON message; MediaControlError (nothing sent) when its bytes are not UTF-8."""
    if isinstance(sdp, bytes):
        try:
            return sdp.decode()
        except UnicodeDecodeError as exc:
            raise MediaControlError(f"the SDP is not UTF-8 text: {exc}") from None
    return sdp


def _codec_name(value: Any) -> str:
    """A codec as the worker names it: a string, or an object with a ``name`` (and maybe a clock rate)."""
    if isinstance(value, dict):
        return str(value.get("name") or value.get("codec") or "")
    return str(value)


def _required(command: str, reply: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    value = reply.get(name)
    if not isinstance(value, kind):
        raise MediaControlError(f"{command}: the worker's reply has no usable {name!r}: {reply!r}")
    return value


def _optional_text(reply: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = reply.get(name)
    return value if isinstance(value, str) else default


# -- one worker --------------------------------------------------------------------------------------

class MediaClient:
    """The SIP process's handle on one media worker (asyncio adapter over ``media.wire.LineFramer``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: EventCallback | None = None, timeout: float = 5.0, name: int | str = "") -> None:
        self._reader = reader
        self._writer = writer
        self.on_event = on_event
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()   # used when no on_event is given
        self.timeout = timeout
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._framer = LineFramer()
        self._closing = False
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, address: Address, *, on_event: EventCallback | None = None, timeout: float = 5.0,
                   name: int | str = "") -> MediaClient:
        """Connect to a worker's control socket: a Unix socket path or a (host, port)."""
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            reader, writer = await asyncio.open_connection(address[0], address[1])
        return cls(reader, writer, on_event, timeout, name)

    @property
    def closed(self) -> bool:
        """The control connection is gone (closed by us, or dropped)."""
        return self._task.done()

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.on_event is None:
            self.events.put_nowait(message)
            return
        try:
            self.on_event(message)
        except Exception:  # noqa: BLE001 - a listener's bug must not stop the control connection
            log.exception("media event listener failed on %s", message)

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
                        self._deliver(message)
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
            if not self._closing:
                log.error("media worker %s: control connection lost (%s)", self.name, error)
                self._deliver({"event": "worker-lost", "worker": self.name})

    async def request(self, command: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; MediaControlError if the worker says error."""
        return await self._request(command, args)

    async def _request(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._task.done() or self._writer.is_closing():
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

    # -- legs ----------------------------------------------------------------------------------------
    async def leg_offer(self, leg: str, transport: str | None = None, *, codecs: Sequence[str] | None = None,
                        dtmf: str | None = None, direction: str | None = None,
                        timeout: float | None = None) -> LegDescription:
        """Our offer for ``leg`` (opened by its first offer: ``transport`` ``rtp``/``sdes``/``webrtc``; a re-offer
        of an established leg names no transport). ``timeout``: seconds without RTP before ``MediaTimeout``."""
        args: dict[str, Any] = {"leg": leg}
        for name, value in (("transport", transport), ("codecs", list(codecs) if codecs else None),
                            ("dtmf", dtmf), ("direction", direction), ("timeout", timeout)):
            if value is not None:
                args[name] = value
        reply = await self._request("leg_offer", args)
        return LegDescription(_required("leg_offer", reply, "sdp").encode(), None,
                              _optional_text(reply, "direction", direction or "sendrecv") or "sendrecv")

    async def leg_answer(self, leg: str, sdp: str | bytes) -> LegDescription:
        """The remote answer to our offer on ``leg``: the codec it settled and the direction (no SDP)."""
        reply = await self._request("leg_answer", {"leg": leg, "sdp": _sdp_text(sdp)})
        return LegDescription(None, _codec_name(_required("leg_answer", reply, "codec", (str, dict))),
                              _optional_text(reply, "direction", "sendrecv") or "sendrecv")

    async def leg_remote_offer(self, leg: str, sdp: str | bytes, *, dtmf: str | None = None,
                               timeout: float | None = None) -> RemoteOffer:
        """A remote offer on ``leg`` (opening it, or a re-offer); ``leg_create_answer`` makes our answer."""
        args: dict[str, Any] = {"leg": leg, "sdp": _sdp_text(sdp)}
        if dtmf is not None:
            args["dtmf"] = dtmf
        if timeout is not None:
            args["timeout"] = timeout
        reply = await self._request("leg_remote_offer", args)
        codecs = reply.get("codecs") or []
        return RemoteOffer(_required("leg_remote_offer", reply, "transport"),
                           tuple(_codec_name(c) for c in codecs) if isinstance(codecs, list) else (),
                           _optional_text(reply, "direction", "sendrecv") or "sendrecv", bool(reply.get("hold")))

    async def leg_create_answer(self, leg: str, prefer: str | None = None) -> LegDescription:
        """Our answer to the remote offer on ``leg``; ``prefer`` a codec (the partner's: passthrough)."""
        args: dict[str, Any] = {"leg": leg}
        if prefer:
            args["prefer"] = prefer
        reply = await self._request("leg_create_answer", args)
        codec = reply.get("codec")
        return LegDescription(_required("leg_create_answer", reply, "sdp").encode(),
                              _codec_name(codec) if codec else None,
                              _optional_text(reply, "direction", "sendrecv") or "sendrecv", bool(reply.get("hold")))

    async def leg_close(self, leg: str) -> dict[str, Any]:
        """Close ``leg`` (leaving its connection or conference); returns its stats."""
        stats = (await self._request("leg_close", {"leg": leg})).get("stats")
        return stats if isinstance(stats, dict) else {}

    async def leg_query(self, leg: str) -> LegState:
        """What ``leg`` negotiated and is connected to, and its stats."""
        reply = await self._request("leg_query", {"leg": leg})
        connected = reply.get("connected", reply.get("connected_to"))
        codec = reply.get("codec")
        stats = reply.get("stats")
        return LegState(leg, _codec_name(codec) if codec else None, _optional_text(reply, "transport"),
                        _optional_text(reply, "direction"), connected if isinstance(connected, str) else None,
                        stats if isinstance(stats, dict) else {}, bool(reply.get("hold")),
                        _optional_text(reply, "conference"))

    async def connect(self, a: str, b: str) -> Connected:
        """Join two legs of this worker (passthrough when their codecs match, else transcoded)."""
        reply = await self._request("connect", {"a": a, "b": b})
        return Connected(a, b, bool(reply.get("transcoded")))

    async def disconnect(self, leg: str) -> None:
        """Take ``leg`` out of its connection (both sides then hear silence or what is played to them)."""
        await self._request("disconnect", {"leg": leg})

    async def conference_join(self, conference: str, leg: str, mode: str = "talk", to: str | None = None) -> None:
        """Put ``leg`` in ``conference`` (made on first join): ``talk``, ``listen``, or ``whisper`` to ``to``."""
        args: dict[str, Any] = {"conference": conference, "leg": leg, "mode": mode}
        if to is not None:
            args["to"] = to
        await self._request("conference_join", args)

    async def conference_leave(self, leg: str) -> None:
        await self._request("conference_leave", {"leg": leg})

    async def play(self, leg: str, files: Sequence[str], *, loop: bool = False, mix: bool = False) -> None:
        """Play files on the worker's host to ``leg`` (a playlist; ``loop`` for music on hold; ``mix`` over
        what the leg hears instead of replacing it). ``PlayDone`` follows when it ends."""
        if isinstance(files, str):
            files = [files]
        await self._request("play", {"leg": leg, "files": list(files), "loop": loop, "mix": mix})

    async def stop_play(self, leg: str) -> None:
        await self._request("stop_play", {"leg": leg})

    async def record(self, leg: str, path: str) -> None:
        """Record ``leg`` to a two-channel WAV at ``path`` on the worker's host (left: what it sends)."""
        await self._request("record", {"leg": leg, "path": path})

    async def stop_record(self, leg: str) -> Recording:
        reply = await self._request("stop_record", {"leg": leg})
        seconds = reply.get("seconds", 0.0)
        return Recording(_required("stop_record", reply, "path"),
                         float(seconds) if isinstance(seconds, (int, float)) else 0.0)

    async def dtmf(self, leg: str, digits: str, duration_ms: int | None = None) -> None:
        """Send ``digits`` to ``leg`` in its DTMF mode."""
        args: dict[str, Any] = {"leg": leg, "digits": digits}
        if duration_ms is not None:
            args["duration_ms"] = duration_ms
        await self._request("dtmf", args)

    # -- ng calls (one two-party call per Call-ID) ---------------------------------------------------
    async def offer(self, call_id: str, from_tag: str, sdp: str | bytes, transport: str | None = None) -> str:
        """The caller's SDP offer -> the SDP to send the callee (``transport``: RTP/AVP, RTP/SAVP or
        UDP/TLS/RTP/SAVPF)."""
        args: dict[str, Any] = {"call_id": call_id, "from_tag": from_tag, "sdp": _sdp_text(sdp)}
        if transport:
            args["transport"] = transport
        return (await self._request("offer", args))["sdp"]

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> str:
        """The callee's SDP answer -> the SDP to send the caller."""
        return (await self.answer_reply(call_id, from_tag, to_tag, sdp))["sdp"]

    async def answer_reply(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes) -> dict[str, Any]:
        """``answer``'s whole reply: ``sdp``, and ``transcoded`` (whether the bridge transcodes, which costs
        the worker about four times a relayed call's CPU)."""
        return await self._request("answer", {"call_id": call_id, "from_tag": from_tag, "to_tag": to_tag,
                                              "sdp": _sdp_text(sdp)})

    async def delete(self, call_id: str) -> dict[str, Any]:
        """Tear the call's media down; returns its per-leg stats."""
        return (await self._request("delete", {"call_id": call_id}))["stats"]

    async def query(self, call_id: str | None = None) -> dict[str, Any]:
        """A call's stats, or the worker's figures."""
        return (await self._request("query", {"call_id": call_id} if call_id else {}))["stats"]

    async def ping(self) -> dict[str, Any]:
        """Liveness and load of the worker."""
        return await self._request("ping", {})

    async def call_play(self, call_id: str, tag: str, file: str | None = None, *,
                        beep: bool | dict[str, Any] = False, loop: bool = False) -> dict[str, Any]:
        """Play a file on the worker's host (or a beep) to the leg ``tag`` of an ng call, instead of the other party."""
        args: dict[str, Any] = {"call_id": call_id, "tag": tag, "loop": loop}
        if file is not None:
            args["file"] = file
        if beep:
            args["beep"] = beep
        return await self._request("play", args)

    async def call_stop_play(self, call_id: str, tag: str) -> dict[str, Any]:
        """Stop what is played to the leg ``tag`` of an ng call."""
        return await self._request("stop_play", {"call_id": call_id, "tag": tag})

    async def call_record(self, call_id: str, path: str) -> dict[str, Any]:
        """Start recording an ng call to a two-channel WAV at ``path`` (caller left, callee right)."""
        return await self._request("record", {"call_id": call_id, "path": path})

    async def call_stop_record(self, call_id: str) -> dict[str, Any]:
        """Finish an ng call's recording; returns its path and duration."""
        return await self._request("stop_record", {"call_id": call_id})

    async def call_dtmf(self, call_id: str, tag: str, digits: str, duration_ms: int = 100) -> dict[str, Any]:
        """Send DTMF digits to the leg ``tag`` of an ng call (RFC 4733 if it negotiated telephone-event, else
        in-band)."""
        return await self._request("dtmf", {"call_id": call_id, "tag": tag, "digits": digits,
                                            "duration_ms": duration_ms})

    async def mix(self, call_id: str, tag: str, sdp: str | bytes, mode: str = "listen",
                  whisper_to: str | None = None) -> str:
        """Join a leg to a bridged ng call (its offer in, our answer out): ``listen``, ``whisper`` to a tag,
        ``speak``."""
        args: dict[str, Any] = {"call_id": call_id, "tag": tag, "mode": mode, "sdp": _sdp_text(sdp)}
        if whisper_to:
            args["whisper_to"] = whisper_to
        return (await self._request("mix", args))["sdp"]

    async def stop_mix(self, call_id: str, tag: str | None = None) -> dict[str, Any]:
        """Drop the member leg ``tag`` (default: every leg ``mix`` joined to the call)."""
        return await self._request("stop_mix", {"call_id": call_id} if tag is None else
                                   {"call_id": call_id, "tag": tag})

    async def close(self) -> None:
        """Close the control connection (no ``worker-lost`` event: we closed it)."""
        self._closing = True
        self._writer.close()
        self._task.cancel()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def __getattr__(name: str) -> Any:
    """``media.client.MediaPool`` / ``LostMedia``: re-exported from ``media.pool`` (which imports this module)."""
    if name in ("MediaPool", "LostMedia"):
        from . import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
