"""Debian's baresip (1.0) as a test phone: registers, dials, answers, plays a tone and records what it hears.

Each phone is one ``baresip -f DIR`` process with a private config directory (``config`` + ``accounts``),
driven over its ``ctrl_tcp`` module (netstring-framed JSON: commands in, responses and events out). All
modules come from Debian's package (``/usr/lib/baresip/modules``):

- ``g711``: PCMU/PCMA only, so every call runs at 8 kHz and the tone file matches the codec rate;
- ``aufile`` as the audio source: the phone's "microphone" is a WAV tone written by the harness
  (``media.audio.tone``); baresip 1.0's aufile has no player, so
- ``aubridge`` is the (silent) player and ring device, and ``sndfile`` (an audio filter) writes what the
  phone sends (``*-enc.wav``) and what it hears after decoding (``*-dec.wav``) under ``DIR/recordings``;
- ``account`` + ``menu`` (the dial/accept/hangup/quit commands) + ``ctrl_tcp`` on a free loopback port.

Everything binds 127.0.0.1 (``net_interface 127.0.0.1``, ``sip_listen`` on a free UDP+TCP port, a free RTP range),
so no packet leaves the machine.

Usage::

    from peers.baresip import BaresipPhone, account_line

    phone = BaresipPhone(tmp_path / "alice", account_line("alice", "127.0.0.1", "secret", port=server.sip_port),
                         tone_hz=700).start()
    phone.wait_registered()
    phone.dial("1002")                       # completed by baresip with the account's domain
    phone.wait_established()
    ...
    phone.hangup(); phone.wait_closed()
    heard = phone.heard()                    # int16 samples (8 kHz) of the last call's decoded audio
    assert abs(phone.heard_tone() - 1100) < 10      # its dominant frequency, start-up skipped
    phone.stop()

or the ``baresip_phones`` fixture (``phones(name, account, tone_hz=...)``), which stops every phone at
teardown and prints each phone's log when the test failed. Without baresip the tests skip; under CI=true
they fail (``bash dev.sh test`` installs Debian's baresip-core).

Event names are baresip's (``REGISTER_OK``, ``REGISTER_FAIL``, ``CALL_INCOMING``, ``CALL_RINGING``,
``CALL_ESTABLISHED``, ``CALL_CLOSED``, ...). A failed wait raises ``BaresipError`` carrying the phone's log
and events, so the assertion message says what the phone saw.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integration.sipp_harness import free_tcp_port, free_udp_port
from media.audio import dominant_frequency, tone
from media_ports import free_udp_range
from peers.waiting import wait_for_output

BARESIP_MODULES = Path("/usr/lib/baresip/modules")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: the sample rate of every call (G.711 only): the tone file must match it (aufile does not resample)
SAMPLE_RATE = 8000
#: how much of the phone's log a failure message carries (its end)
LOG_TAIL = 20_000
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class BaresipError(AssertionError):
    """A phone did not do what the test waited for (the message carries its log and events)."""


def baresip_binary() -> str:
    """The baresip executable ($BARESIP, else PATH) with Debian's modules; skips when absent, fails under CI."""
    explicit = os.environ.get("BARESIP")
    path = (explicit if Path(explicit).is_file() else None) if explicit else shutil.which("baresip")
    missing = [m for m in ("ctrl_tcp", "aufile", "aubridge", "sndfile", "g711", "menu", "account")
               if not (BARESIP_MODULES / f"{m}.so").is_file()]
    if path and not missing:
        return path
    msg = ("baresip is not installed (Debian package baresip-core)" if not path
           else f"baresip modules missing from {BARESIP_MODULES}: {', '.join(missing)}")
    if IN_CI:
        pytest.fail(msg + " (CI=true: baresip is required)")
    pytest.skip(msg)


def sip_listen_port() -> int:
    """A port for baresip's ``sip_listen``: free for UDP and TCP, with the next port free for TCP too
    (baresip 1.0 always opens a SIP/TLS listener on sip_listen's port + 1)."""
    for _ in range(100):
        port = free_udp_port(also_tcp=True)
        if port < 65535:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tls:
                try:
                    tls.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for baresip's sip_listen on 127.0.0.1")


def account_line(user: str, domain: str, password: str | None = None, *, port: int | None = None,
                 transport: str | None = None, params: str = "") -> str:
    """A baresip ``accounts`` line: ``<sip:user@domain[:port][;transport=tcp]>[;auth_pass=...][params]``.

    The README's quick start uses ``<sip:alice@127.0.0.1>;auth_pass=secret``; tests add the server's free
    port (and ``transport=tcp``). ``params`` is appended as is (e.g. ``";answermode=auto"``,
    ``";regint=0"``).
    """
    host = f"{domain}:{port}" if port else domain
    uri = f"sip:{user}@{host}" + (f";transport={transport}" if transport else "")
    return f"<{uri}>" + (f";auth_pass={password}" if password is not None else "") + params


def write_tone(path: Path, frequency: float, seconds: float = 120.0, amplitude: float = 0.5) -> Path:
    """A mono 16-bit 8 kHz WAV tone for aufile (which plays its file once: make it outlast the call)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(tone(frequency, SAMPLE_RATE, seconds, amplitude).astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    """The int16 samples of a mono 16-bit WAV (an empty array for a file baresip left empty)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: want mono 16-bit, got {w.getnchannels()} ch x {w.getsampwidth() * 8} bit")
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


@dataclass(frozen=True)
class PhoneEvent:
    """One ctrl_tcp event: ``type`` (``CALL_ESTABLISHED``...), its class, the call id and peer, the raw dict."""

    type: str
    klass: str
    call_id: str | None
    peer: str | None
    param: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhoneEvent:
        return cls(type=str(data.get("type", "")), klass=str(data.get("class", "")), call_id=data.get("id"),
                   peer=data.get("peeruri"), param=data.get("param"), raw=data)


def _netstrings(buffer: bytearray) -> Iterator[bytes]:
    """Pop complete netstrings (``LEN:DATA,``) off the front of ``buffer``."""
    while True:
        colon = buffer.find(b":")
        if colon < 0:
            return
        length = int(buffer[:colon])
        end = colon + 1 + length
        if len(buffer) < end + 1:
            return
        payload = bytes(buffer[colon + 1:end])
        del buffer[:end + 1]
        yield payload


class BaresipPhone:
    """One baresip process (see the module docstring). ``start()`` returns once ctrl_tcp accepts commands."""

    def __init__(self, workdir: Path, account: str, *, tone_hz: float | None = 700.0,
                 source_wav: Path | None = None, name: str | None = None, sip_trace: bool = True) -> None:
        self.workdir = Path(workdir)
        self.account = account
        self.name = name or self.workdir.name
        self.tone_hz = tone_hz
        self.source_wav = source_wav
        self.sip_trace = sip_trace
        self.sip_port = 0                                 # UDP+TCP (and TLS on sip_port + 1), by write_config()
        self.ctrl_port = 0
        self.recordings = self.workdir / "recordings"
        self.rtp_ports: tuple[int, int] | None = None   # the RTP port range, chosen by write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[PhoneEvent] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._token = 0

    # -- files
    def write_config(self) -> Path:
        """Write DIR/config, DIR/accounts and the tone file; returns DIR."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recordings.mkdir(exist_ok=True)
        if self.source_wav is None:
            self.source_wav = write_tone(self.workdir / "tone.wav", self.tone_hz or 700.0)
        self.sip_port = sip_listen_port()
        self.ctrl_port = free_tcp_port()
        rtp = free_udp_range(20)
        self.rtp_ports = (rtp, rtp + 19)
        config = f"""\
# written by tests/peers/baresip.py: a headless phone on loopback
poll_method		epoll
net_interface		127.0.0.1
sip_listen		127.0.0.1:{self.sip_port}
call_max_calls		4
audio_player		aubridge,play-{self.name}-{self.sip_port}
audio_alert		aubridge,alert-{self.name}-{self.sip_port}
audio_source		aufile,{self.source_wav}
audio_srate		{SAMPLE_RATE}
audio_channels		1
rtp_ports		{rtp}-{rtp + 19}
rtp_timeout		0
module_path		{BARESIP_MODULES}
module			g711.so
module			aufile.so
module			aubridge.so
module			sndfile.so
snd_path		{self.recordings}
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{self.ctrl_port}
"""
        (self.workdir / "config").write_text(config)
        (self.workdir / "accounts").write_text(self.account + "\n")
        return self.workdir

    # -- process
    def start(self, timeout: float = 15.0, attempts: int = 3) -> BaresipPhone:
        """Write the config, run baresip, connect to ctrl_tcp. A port taken between choosing and binding it
        ("Address already in use" at start) is retried with fresh ports, up to ``attempts`` times."""
        binary = baresip_binary()
        for attempt in range(1, attempts + 1):
            self.write_config()
            command = [binary, "-f", str(self.workdir)] + (["-s"] if self.sip_trace else [])
            with self._cond:
                self._lines.append("$ " + " ".join(command))
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, cwd=self.workdir)
            reader = self._spawn(self._read_output, "output")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1.0)
                    break
                except OSError:
                    if self.proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        self.stop()
                        raise BaresipError(f"baresip {self.name}: ctrl_tcp not listening within {timeout}s\n"
                                           f"{self.log()}") from None
                    time.sleep(0.1)
            if self._sock is not None:
                self._sock.settimeout(None)
                self._spawn(self._read_ctrl, "ctrl")
                return self
            reader.join(timeout=5)
            if "Address already in use" not in self.log() or attempt == attempts:
                raise BaresipError(f"baresip {self.name} exited ({self.proc.returncode}) at start\n{self.log()}")
            with self._cond:
                self._lines.append(f"[harness] a port was taken: starting again with fresh ports ({attempt})")
        raise AssertionError("unreachable")

    def _spawn(self, target: Callable[[], None], what: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"baresip-{self.name}-{what}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.workdir / "baresip.log", "a", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                # the menu's call status line is redrawn with \r every few 100 ms: keep what follows the last one
                text = ANSI_ESCAPE.sub("", text.rsplit("\r", 1)[-1] if "\r" in text else text)
                log.write(text + "\n")
                log.flush()
                with self._cond:
                    self._lines.append(text)
                    self._cond.notify_all()

    def _read_ctrl(self) -> None:
        assert self._sock is not None
        buffer = bytearray()
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            try:
                messages = [json.loads(m) for m in _netstrings(buffer)]
            except ValueError as exc:
                with self._cond:
                    self._lines.append(f"[harness] bad ctrl_tcp data: {exc!r} {bytes(buffer[:200])!r}")
                break
            with self._cond:
                for msg in messages:
                    if msg.get("event"):
                        self.events.append(PhoneEvent.from_json(msg))
                        self._lines.append(f"[event] {msg.get('type')} {msg.get('param', '')}")
                    elif msg.get("response"):
                        self._responses[str(msg.get("token"))] = msg
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """``quit`` over ctrl_tcp (baresip unregisters and exits), SIGTERM then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None and self._sock is not None:
            with contextlib.suppress(OSError, BaresipError):
                self.command("quit", wait=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        return proc.returncode

    def __enter__(self) -> BaresipPhone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, limit: int = LOG_TAIL) -> str:
        """The phone's output (SIP trace included) and the events it reported, the last ``limit`` chars."""
        with self._cond:
            text = "\n".join(self._lines)
        return text if len(text) <= limit else "[...]\n" + text[-limit:]

    # -- commands
    def command(self, name: str, params: str | None = None, *, wait: bool = True,
                timeout: float = 10.0) -> dict[str, Any]:
        """Send one ctrl_tcp command; returns its response (``{"ok": ..., "data": ...}``) unless wait=False."""
        if self._sock is None:
            raise BaresipError(f"baresip {self.name} is not started")
        self._token += 1
        token = str(self._token)
        message: dict[str, Any] = {"command": name, "token": token}
        if params is not None:
            message["params"] = params
        data = json.dumps(message).encode()
        self._sock.sendall(b"%d:%s," % (len(data), data))
        if not wait:
            return {}
        response = self._wait(lambda: self._responses.get(token), timeout, f"a response to {name!r}")
        if not response.get("ok", False):
            raise BaresipError(f"baresip {self.name}: {name} {params or ''} failed: {response}\n{self.log()}")
        return response

    def dial(self, target: str) -> None:
        """Call ``target`` (a URI, or a user/extension that baresip completes with the account's domain)."""
        self.command("dial", target)

    def accept(self) -> None:
        """Answer the ringing incoming call."""
        self.command("accept")

    def hangup(self) -> None:
        """Hang up the current call."""
        self.command("hangup")

    # -- waits
    def _wait(self, find: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for_output(self._cond, find, timeout, what, self.proc,
                               lambda reason: BaresipError(f"baresip {self.name}: {reason}\n{self.log()}"))

    def wait_event(self, types: str | tuple[str, ...], *, fail_on: tuple[str, ...] = (), start: int = 0,
                   timeout: float = 15.0) -> PhoneEvent:
        """The first event (from index ``start``) of one of ``types``; BaresipError on one of ``fail_on``."""
        wanted = (types,) if isinstance(types, str) else types

        def find() -> PhoneEvent | None:
            for event in self.events[start:]:
                if event.type in fail_on:
                    raise BaresipError(f"baresip {self.name}: {event.type} ({event.param}) while waiting for "
                                       f"{'/'.join(wanted)}\n{self.log()}")
                if event.type in wanted:
                    return event
            return None

        return self._wait(find, timeout, "/".join(wanted) + " event")

    def wait_registered(self, timeout: float = 15.0) -> PhoneEvent:
        """REGISTER_OK (a REGISTER_FAIL fails at once).

        baresip registers as soon as it starts, often before the harness is connected to ctrl_tcp (events
        are not replayed), so the ``reginfo`` command's status ("OK") counts as well.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                for event in self.events:
                    if event.type == "REGISTER_FAIL":
                        raise BaresipError(f"baresip {self.name}: REGISTER_FAIL ({event.param})\n{self.log()}")
                    if event.type == "REGISTER_OK":
                        return event
            status = self.registration_status()
            if status.endswith(" OK"):
                return PhoneEvent(type="REGISTER_OK", klass="register", call_id=None, peer=None,
                                  param=f"reginfo: {status}", raw={})
            if time.monotonic() > deadline:
                raise BaresipError(f"baresip {self.name}: not registered within {timeout:g}s "
                                   f"(reginfo: {status!r})\n{self.log()}")
            time.sleep(0.3)

    def registration_status(self) -> str:
        """The ``reginfo`` line of the account, without colours: "> sip:alice@127.0.0.1:5060 OK", or ""."""
        data = ANSI_ESCAPE.sub("", str(self.command("reginfo").get("data", "")))
        for line in data.splitlines():
            if line.startswith(">"):
                return " ".join(line.split()[:3])
        return ""

    def wait_incoming(self, timeout: float = 15.0) -> PhoneEvent:
        """CALL_INCOMING: a call is ringing here (``accept()`` answers it unless the account auto-answers)."""
        return self.wait_event("CALL_INCOMING", timeout=timeout)

    def wait_established(self, timeout: float = 15.0) -> PhoneEvent:
        """CALL_ESTABLISHED (a CALL_CLOSED first fails with its reason)."""
        return self.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",), timeout=timeout)

    def wait_closed(self, timeout: float = 15.0) -> PhoneEvent:
        """CALL_CLOSED (its ``param`` is the reason, e.g. "Connection reset by peer")."""
        return self.wait_event("CALL_CLOSED", timeout=timeout)

    def rtp_source(self) -> tuple[str, int] | None:
        """Where the last call's RTP came from ("incoming rtp for 'audio' established, receiving from
        HOST:PORT" in the phone's log): the other phone when proxied, callpath's media plane when anchored."""
        with self._cond:
            lines = list(self._lines)
        for line in reversed(lines):
            m = re.search(r"incoming rtp for 'audio' established, receiving from ([0-9.]+):(\d+)", line)
            if m:
                return m.group(1), int(m.group(2))
        return None

    # -- audio
    def recording(self, which: str = "dec") -> Path:
        """The newest sndfile recording: ``dec`` (what the phone heard) or ``enc`` (what it sent)."""
        files = sorted(self.recordings.glob(f"*-{which}.wav"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise BaresipError(f"baresip {self.name}: no *-{which}.wav in {self.recordings}\n{self.log()}")
        return files[-1]

    def heard(self) -> np.ndarray:
        """The int16 samples (8 kHz) the phone decoded during its last call (complete once it is closed)."""
        return read_wav(self.recording("dec"))

    def heard_tone(self, seconds: float = 1.0, threshold: int = 1000) -> float:
        """The dominant frequency (Hz) of ``seconds`` of the last call's decoded audio, taken from a quarter
        second after the first sample louder than ``threshold`` (jitter buffer and codec start-up skipped).
        BaresipError when the phone heard silence or too little audio."""
        samples = self.heard()
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
        if loud.size == 0:
            raise BaresipError(f"baresip {self.name} heard silence ({samples.size} samples)\n{self.log()}")
        start = int(loud[0]) + SAMPLE_RATE // 4
        window = samples[start:start + int(seconds * SAMPLE_RATE)]
        if window.size < int(seconds * SAMPLE_RATE):
            raise BaresipError(f"baresip {self.name} heard {samples.size - loud[0]} samples of audio, "
                               f"fewer than {seconds:g} s after start-up\n{self.log()}")
        return dominant_frequency(window, SAMPLE_RATE)


@pytest.fixture
def baresip_phones(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., BaresipPhone]]:
    """``phones(name, account, tone_hz=..., ...)`` starts a BaresipPhone in tmp_path/name; every phone is
    stopped at teardown, and its log printed when the test failed."""
    baresip_binary()   # skip (or fail under CI) before the test starts servers
    phones: list[BaresipPhone] = []

    def make(name: str, account: str, **kwargs: Any) -> BaresipPhone:
        phone = BaresipPhone(tmp_path / name, account, name=name, **kwargs)
        phones.append(phone)
        return phone.start()

    yield make
    for phone in phones:
        phone.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for phone in phones:
            print(f"--- baresip {phone.name} ({phone.account}) ---\n{phone.log()}")


__all__ = ["BaresipError", "BaresipPhone", "PhoneEvent", "SAMPLE_RATE", "account_line", "baresip_binary",
           "baresip_phones", "read_wav", "write_tone"]
