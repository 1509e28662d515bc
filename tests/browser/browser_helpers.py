"""Helpers for the real-browser tests: headless Chromium, the test page's HTTP server, a plain-RTP trunk peer.

(conftest.py has the fixtures.)

Chromium is Debian's ``chromium`` (``bash dev.sh test`` installs it). Without it the tests skip, except
under CI=true, where that is a failure.
"""
from __future__ import annotations

from media_ports import free_udp_range  # noqa: F401  (re-exported for the browser tests)

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import pytest

from media import g711
from media.audio import tone
from media.dtmf import packets_for_press

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PAGE = Path(__file__).with_name("page.html")


# -- Chromium ---------------------------------------------------------------------------------------------------


def chromium_binary() -> str:
    """The Chromium executable; skips the test when absent, or fails it under CI=true."""
    for name in (os.environ.get("CALLPATH_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    msg = "chromium is not installed (apt-get install chromium, or bash dev.sh test)"
    if IN_CI:
        pytest.fail(msg + " (CI=true: the browser tests are required)")
    pytest.skip(msg)


class Chromium:
    """A headless Chromium process opening one URL; its stderr (Chromium's log, console included) in a file."""

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None

    def start(self, url: str, fake_audio: Path, extra: list[str] | None = None) -> None:
        args = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--mute-audio",
            f"--user-data-dir={self.profile}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}",
            "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
            # off the network: no name resolves but loopback, no mDNS candidates, no media-router/hints traffic
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
            ("--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,DialMediaRouteProvider,OptimizationHints,"
             "Translate"),
            "--enable-logging=stderr", "--v=0",
            *(extra or []), url,
        ]
        # its scratch files (org.chromium.*, the singleton socket: a short path) go in a directory removed by stop()
        self.tmpdir = tempfile.mkdtemp(prefix="callpath-chromium-")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, "TMPDIR": self.tmpdir})

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_for(self, future: asyncio.Future, timeout: float, what: str) -> Any:
        """``future``'s result; fails the test (with Chromium's log) on timeout or when Chromium exits first."""
        deadline = time.monotonic() + timeout
        while not future.done():
            if not self.running:
                pytest.fail(f"chromium exited before {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s; chromium log:\n{self.log_tail()}")
            await asyncio.wait([future], timeout=0.1)
        return future.result()

    def stop(self) -> None:
        """Kill Chromium's process group (browser, zygote, renderers...), reap it, remove its scratch files."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=3)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # helpers that outlived the browser process
        except ProcessLookupError:
            pass
        self.log.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def write_tone_wav(path: Path, frequency: float, seconds: float = 10.0, rate: int = 48000) -> Path:
    """A mono 16-bit WAV of a sine tone (Chromium's fake microphone loops it)."""
    pcm = tone(frequency, rate, seconds, amplitude=0.5)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


# -- the test page's HTTP server ---------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class PageServer:
    """A minimal HTTP/1.1 server on 127.0.0.1: GET / serves the page, GET of an ``assets`` path serves that
    (content type, bytes), POST /<name> calls a JSON handler."""

    def __init__(self, page: bytes, handlers: dict[str, Handler],
                 assets: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.page = page
        self.handlers = handlers
        self.assets = dict(assets or {})
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.errors: list[str] = []

    async def start(self) -> PageServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{'?' + query if query else ''}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
            path = target.split("?", 1)[0]
            if method == "GET" and path == "/":
                status, ctype, data = 200, "text/html; charset=utf-8", self.page
            elif method == "GET" and path in self.assets:
                status, (ctype, data) = 200, self.assets[path]
            elif method == "POST" and path.lstrip("/") in self.handlers:
                try:
                    reply = await self.handlers[path.lstrip("/")](json.loads(body or b"{}"))
                    status = 200
                except Exception as exc:  # reported to the page (and kept for the test's failure message)
                    self.errors.append(f"{path}: {exc!r}")
                    reply, status = {"error": repr(exc)}, 500
                ctype, data = "application/json", json.dumps(reply).encode()
            else:
                status, ctype, data = 404, "text/plain", b"not found"
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                         "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


# -- the SIP trunk's RTP endpoint --------------------------------------------------------------------------------


class TrunkPeer(asyncio.DatagramProtocol):
    """Plain RTP: sends a PCMU tone in 20 ms packets (and RFC 4733 presses on request), keeps what it receives."""

    def __init__(self, frequency: float, event_pt: int = 101) -> None:
        self.frequency = frequency
        self.event_pt = event_pt
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.ssrc = random.getrandbits(32)
        self._presses: list[str] = []
        self.pressed: list[str] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:   # RTP, not RTCP
            self.received.append(data)

    def packets(self, pt: int) -> list[bytes]:
        return [p for p in self.received if p[1] & 0x7F == pt]

    def press(self, digit: str) -> None:
        """Send one 100 ms press of ``digit`` as RFC 4733 events at the next packet slot (audio pauses)."""
        self._presses.append(digit)

    def _send(self, pt: int, payload: bytes, to, ts: int, marker: bool = False) -> None:
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, self.seq, ts, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        assert self.transport is not None
        self.transport.sendto(header + payload, to)

    async def play(self, to: tuple[str, int], seconds: float) -> None:
        """Send the tone paced at 20 ms for ``seconds`` (cancel to stop early)."""
        pcm = tone(self.frequency, 8000, seconds, amplitude=0.4)
        start = time.monotonic()
        press = None
        for i in range(len(pcm) // 160):
            wait = start + i * 0.02 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if press is None and self._presses:
                digit = self._presses.pop(0)
                press = iter(packets_for_press(digit, 100, self.ts, 8000))
            if press is not None:
                tick = next(press, None)
                if tick is not None:
                    for pkt in tick:
                        self._send(self.event_pt, pkt.payload, to, pkt.timestamp, pkt.marker)
                    self.ts = (self.ts + 160) & 0xFFFFFFFF
                    continue
                self.pressed.append(digit)
                press = None
            self._send(0, g711.ulaw_encode(pcm[i * 160:(i + 1) * 160].tobytes()), to, self.ts)
            self.ts = (self.ts + 160) & 0xFFFFFFFF


def pcmu_samples(packets: list[bytes]) -> np.ndarray:
    """The int16 audio of PCMU RTP packets (12-byte headers), concatenated."""
    return np.frombuffer(g711.ulaw_decode(b"".join(p[12:] for p in packets)), "<i2")
