"""Debian's Linphone console phone (``linphonec``, liblinphone 5.1) as a test phone: registers with digest,
calls, answers, holds, transfers (blind and attended), plays a WAV tone and records what it hears.

Each phone is one ``linphonec -c DIR/linphonerc`` process with ``HOME=DIR`` (its call-history database, readline
history and certificates stay there), driven by writing its console commands to its stdin and reading what it
prints. Its call-state lines carry linphonec's call ids (1, 2, ... per process), which the commands take:

- ``Establishing call id to <uri>, assigned id N`` / ``Receiving new incoming call from <uri>, assigned id N``;
- ``Call N with <uri> connected.``, ``Media streams established with <uri> for call N (audio).``,
  ``Call N with <uri> is now paused.``, ``Call N has been paused by <uri>.``, ``Call N with <uri> ended (reason).``,
  ``Call N with <uri> error.``, ``The distant endpoint <uri> of call N has been transfered, ...``.

Registration states are not printed: ``wait_registered()`` polls the ``states proxies`` command.

Audio: ``soundcard use files`` (there is no sound card on a test machine), then ``play FILE`` makes a WAV tone
the microphone, and ``record FILE`` writes what the phone hears, decoded, as a mono 16-bit WAV: one file per
call, set before the call rings or is placed (see ``record_next_call``). The codecs are linphonec's defaults (Opus, Speex, PCMU, PCMA, G.729 offered);
callpath's default router proxies such a call between phones that share G.711, so tests about callpath's own
call control set ``[calls] anchor = "always"``.

Everything binds 127.0.0.1 (``[sip] bind_address`` for SIP on a free UDP port, ``[rtp] bind_address`` and a
free RTP range), so no packet leaves the machine. Quirks of Debian's build the harness works around:

- without ``$HOME/.local/share/linphone`` (where its SQLite call history lives) the core stays in its
  ``Startup`` state forever: no SIP socket, no registration, no error on the console;
- ``linphonec --pipe`` (commands over a unix socket) cannot exit (its socket thread stays blocked in accept()),
  so the harness uses the plain console: readline on a pipe still runs the core between commands;
- ``record FILE`` applies to the current call at once, and crashes linphonec (SIGSEGV) when that call is
  still ringing: the harness sets it only while no call is current;
- linphonec places one call at a time: the consultation call of an attended transfer needs ``hold()`` first.

Usage::

    from peers.linphone import LinphonePhone

    agent = LinphonePhone(tmp_path / "agent", "agent", "secret", port=server.sip_port, tone_hz=500).start()
    agent.wait_registered()
    alice_call = agent.wait_incoming()          # a LinphoneEvent; .call_id is linphonec's id
    agent.answer(alice_call.call_id)
    agent.hold()                                # pause the current call
    bob_call = agent.call("1002")               # linphonec's id of the new call
    agent.wait_streams_running(bob_call)
    agent.transfer_to_call(alice_call.call_id, bob_call)     # attended transfer: REFER with Replaces
    agent.wait_ended(alice_call.call_id); agent.wait_ended(bob_call)
    agent.heard_tone(alice_call.call_id)        # dominant frequency of what it heard in that call
    agent.stop()

or the ``linphone_phones`` fixture (``phones(name, server, user, password, tone_hz=...)``), which stops every
phone at teardown and prints each phone's console (and the SIP part of liblinphone's log) when the test
failed. Without linphonec the tests skip; under CI=true they fail (``bash dev.sh test`` installs Debian's
linphone-cli).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from integration.sipp_harness import free_udp_port
from media_ports import free_udp_range
from peers.baresip import read_wav, write_tone
from peers.waiting import wait_for_output

from media.audio import dominant_frequency

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: the rate of the tone file and of what the harness reads back (linphone resamples to and from the codec)
SAMPLE_RATE = 8000
LOG_TAIL = 20_000
PROMPT = "linphonec> "
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: linphonec's console lines (commands.c / linphonec.c) -> event type; ``id`` and ``peer`` are named groups
EVENT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(pattern)) for kind, pattern in (
    ("outgoing", r"Establishing call id to (?P<peer>\S+), assigned id (?P<id>\d+)"),
    ("incoming", r"Receiving new incoming call from (?P<peer>.+?), assigned id (?P<id>\d+)"),
    ("progress", r"Call (?P<id>\d+) to (?P<peer>\S+) in progress\."),
    ("ringing", r"Call (?P<id>\d+) to (?P<peer>\S+) ringing\."),
    ("early_media", r"Call (?P<id>\d+) with (?P<peer>\S+) early media\."),
    ("connected", r"Call (?P<id>\d+) with (?P<peer>\S+) connected\."),
    ("streams_running", r"Media streams established with (?P<peer>\S+) for call (?P<id>\d+) \((?P<param>\w+)\)\."),
    ("pausing", r"Pausing call (?P<id>\d+) with (?P<peer>\S+)\."),
    ("paused", r"Call (?P<id>\d+) with (?P<peer>\S+) is now paused\."),
    ("paused_by_remote", r"Call (?P<id>\d+) has been paused by (?P<peer>\S+)\."),
    ("resuming", r"Resuming call (?P<id>\d+) with (?P<peer>\S+)\."),
    ("ended", r"Call (?P<id>\d+) with (?P<peer>\S+) ended \((?P<param>[^)]*)\)\."),
    ("error", r"Call (?P<id>\d+) with (?P<peer>\S+) error\."),
    ("transferred", r"The distant endpoint (?P<peer>\S+) of call (?P<id>\d+) has been transfered"),
    ("refer", r"Receiving out of call refer to (?P<peer>\S+)"),
))
REGISTRATION_ROW = re.compile(r"^(?P<identity>sip:\S+)\s*\|\s*(?P<state>LinphoneRegistration\w+)")


class LinphoneError(AssertionError):
    """A phone did not do what the test waited for (the message carries its console output)."""


def linphonec_binary() -> str:
    """The linphonec executable ($LINPHONEC, else PATH); skips when absent, fails under CI."""
    explicit = os.environ.get("LINPHONEC")
    path = (explicit if Path(explicit).is_file() else None) if explicit else shutil.which("linphonec")
    if path:
        return path
    msg = "linphonec is not installed (Debian package linphone-cli)"
    if IN_CI:
        pytest.fail(msg + " (CI=true: linphonec is required)")
    pytest.skip(msg)


@dataclass(frozen=True)
class LinphoneEvent:
    """One console line about a call: ``type`` (``incoming``, ``streams_running``, ``ended``...), linphonec's
    call id, the peer's URI, an extra (the end reason, the media kind), and the line itself."""

    type: str
    call_id: int
    peer: str | None
    param: str | None
    line: str


def parse_events(line: str) -> list[LinphoneEvent]:
    """The call events in one console line (a line may carry two: ``Performing attended transfer ...`` has no
    newline, so the next message follows it on the same line)."""
    found: list[tuple[int, LinphoneEvent]] = []
    for kind, pattern in EVENT_PATTERNS:
        for m in pattern.finditer(line):
            groups = m.groupdict()
            found.append((m.start(), LinphoneEvent(type=kind, call_id=int(groups["id"]), peer=groups.get("peer"),
                                                   param=groups.get("param"), line=line)))
    return [event for _, event in sorted(found, key=lambda item: item[0])]


class LinphonePhone:
    """One linphonec process (see the module docstring). ``start()`` returns once the core is listening."""

    def __init__(self, workdir: Path, user: str, password: str, *, port: int, domain: str = "127.0.0.1",
                 proxy_host: str = "127.0.0.1", transport: str = "udp", tone_hz: float | None = 700.0,
                 source_wav: Path | None = None, name: str | None = None, auto_answer: bool = False,
                 sip_trace: bool = True) -> None:
        self.workdir = Path(workdir)
        self.user = user
        self.password = password
        self.domain = domain
        self.proxy = f"sip:{proxy_host}:{port};transport={transport}"
        self.transport = transport
        self.name = name or self.workdir.name
        self.tone_hz = tone_hz
        self.source_wav = source_wav
        self.auto_answer = auto_answer
        self.sip_trace = sip_trace
        self.rc = self.workdir / "linphonerc"
        self.recordings = self.workdir / "recordings"
        self.debug_log = self.workdir / "liblinphone.log"
        self.sip_port = 0
        self.rtp_ports: tuple[int, int] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[LinphoneEvent] = []
        self.call_recordings: dict[int, Path] = {}
        self._next_recording: Path | None = None
        self._recording_seq = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()

    @property
    def identity(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    # -- files
    def write_config(self) -> Path:
        """Write DIR/linphonerc (one account, loopback ports, no video), the tone, and the data directory."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recordings.mkdir(exist_ok=True)
        (self.workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        if self.source_wav is None:
            self.source_wav = write_tone(self.workdir / "tone.wav", self.tone_hz or 700.0)
        self.sip_port = free_udp_port(also_tcp=True)
        rtp = free_udp_range(20)
        self.rtp_ports = (rtp, rtp + 19)
        udp, tcp = (self.sip_port, 0) if self.transport == "udp" else (0, self.sip_port)
        self.rc.write_text(f"""\
# written by tests/peers/linphone.py: a headless phone on loopback
[sip]
sip_port={udp}
sip_tcp_port={tcp}
sip_tls_port=0
sip_dtls_port=0
bind_address=127.0.0.1
default_proxy=0
register_only_when_network_is_up=0
inc_timeout=120

[rtp]
audio_rtp_port={rtp}-{rtp + 19}
bind_address=127.0.0.1
nortp_timeout=0

[sound]
echocancellation=0

[video]
enabled=0
capture=0
display=0
automatically_initiate=0
automatically_accept=0

[proxy_0]
reg_proxy=<{self.proxy}>
reg_identity={self.identity}
reg_expires=3600
reg_sendregister=1
publish=0

[auth_info_0]
username={self.user}
passwd={self.password}
domain={self.domain}
""")
        return self.workdir

    # -- process
    def start(self, timeout: float = 20.0, attempts: int = 3) -> LinphonePhone:
        """Write the config, run linphonec, switch it to WAV files; a SIP port taken between choosing and
        binding it (``sip port = 0``) is retried with fresh ports, up to ``attempts`` times."""
        binary = linphonec_binary()
        for attempt in range(1, attempts + 1):
            self.write_config()
            command = [binary, "-c", str(self.rc)] + (["-a"] if self.auto_answer else [])
            if self.sip_trace:
                command += ["-d", "6", "-l", str(self.debug_log)]
            with self._cond:
                self._lines.append("$ " + " ".join(command))
            # readline echoes each command: wide "screen" so that it does not scroll long lines sideways
            env = {**os.environ, "HOME": str(self.workdir), "TERM": "dumb", "COLUMNS": "4096", "LINES": "50"}
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
            self._spawn(self._read_output, "output")
            port = self._listening_port(timeout)
            if port == self.sip_port:
                self.send("soundcard use files")
                self.send(f"play {self.source_wav}")
                self.record_next_call()      # the first call's, placed or received
                return self
            self._kill()
            if attempt == attempts:
                raise LinphoneError(f"linphonec {self.name}: SIP port {self.sip_port} not bound (got {port})\n"
                                    f"{self.log()}")
            with self._cond:
                self._lines.append(f"[harness] SIP port not bound: starting again with fresh ports ({attempt})")
        raise AssertionError("unreachable")

    def _listening_port(self, timeout: float) -> int:
        """The ``ports`` command's SIP port once the core is on (0 while it is still starting)."""
        deadline = time.monotonic() + timeout
        while True:
            mark = self._mark()
            self.send("ports")
            line = self._wait(lambda mark=mark: self._line_after(mark, re.compile(r"sip port = (\d+)")), 5.0,
                              "an answer to 'ports'")
            port = int(re.search(r"sip port = (\d+)", line).group(1))  # type: ignore[union-attr]
            if port or time.monotonic() > deadline:
                return port
            time.sleep(0.3)

    def _spawn(self, target: Callable[[], None], what: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"linphonec-{self.name}-{what}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _read_output(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        with open(self.workdir / "linphonec.log", "a", encoding="utf-8") as log:
            for raw in proc.stdout:
                text = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\r\n"))
                # the prompt precedes the next message on its line (after a message without a newline, too)
                lines = [part for part in text.split(PROMPT) if part] or [""]
                log.write("\n".join(lines) + "\n")
                log.flush()
                events = [event for line in lines for event in parse_events(line)]
                with self._cond:
                    self._lines.extend(lines)
                    self.events.extend(events)
                    for event in events:
                        if (event.type in ("incoming", "outgoing") and self._next_recording is not None
                                and event.call_id not in self.call_recordings):
                            self.call_recordings[event.call_id] = self._next_recording
                            self._next_recording = None
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """``quit`` (calls are terminated, the account unregistered), SIGTERM then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self._kill(timeout)
        return proc.returncode

    def _kill(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, limit: int = LOG_TAIL) -> str:
        """The phone's console output (commands echoed), the last ``limit`` chars."""
        with self._cond:
            text = "\n".join(self._lines)
        return text if len(text) <= limit else "[...]\n" + text[-limit:]

    def sip_log(self, limit: int = LOG_TAIL) -> str:
        """The SIP messages of liblinphone's debug log (``sip_trace``), the last ``limit`` chars."""
        try:
            text = self.debug_log.read_text(errors="replace")
        except OSError:
            return ""
        keep: list[str] = []
        in_message = False
        for line in text.splitlines():
            if "belle-sip-message-channel" in line and ("message sent" in line or "message read" in line
                                                         or "Sending" in line or "received" in line):
                in_message = True
                keep.append(line)
                continue
            if re.match(r"^\d{4}-\d\d-\d\d ", line):
                in_message = False
            if in_message:
                keep.append(line)
        out = "\n".join(keep)
        return out if len(out) <= limit else "[...]\n" + out[-limit:]

    # -- commands
    def send(self, command: str) -> None:
        """Write one console command (a line) to linphonec's stdin."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise LinphoneError(f"linphonec {self.name} is not started")
        with self._write_lock:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()

    def record_next_call(self) -> Path:
        """``record FILE``: the file linphone writes what it hears into, for the next call that rings or is placed
        (``heard(call_id)``). Only while no call is current: linphonec applies the command to the current call
        at once, and crashes (SIGSEGV) when that call is still ringing. ``start()`` sets the first one and
        ``call()`` a fresh one when it can, so each call has its own file; a phone that receives another call
        after its first one ended needs this called in between (the harness cannot know no call will ring)."""
        if self.current_calls():
            raise LinphoneError(f"linphonec {self.name}: 'record' while calls {self.current_calls()} are current")
        self._recording_seq += 1
        path = self.recordings / f"heard-{self._recording_seq}.wav"
        with self._cond:
            self._next_recording = path
        self.send(f"record {path}")
        return path

    def call_states(self) -> dict[int, str]:
        """The last event type of each call seen so far (``streams_running``, ``paused``, ``ended``...)."""
        with self._cond:
            return {event.call_id: event.type for event in self.events if event.type != "transferred"}

    def current_calls(self) -> list[int]:
        """Calls neither paused nor over (linphonec's 'current' call is among them)."""
        return [cid for cid, state in self.call_states().items() if state not in ("paused", "ended", "error")]

    def call(self, target: str, timeout: float = 10.0) -> int:
        """Call ``target`` (a URI, or a number completed with the account's domain); returns the call id.
        linphonec refuses a second call while one is running: ``hold()`` it first."""
        if not target.startswith(("sip:", "sips:")):
            target = f"sip:{target}@{self.domain}"
        if not self.current_calls() and self._next_recording is None:
            self.record_next_call()
        start = len(self.events)
        self.send(f"call {target}")
        return self.wait_event("outgoing", start=start, timeout=timeout).call_id

    def answer(self, call_id: int) -> None:
        """Answer the ringing call ``call_id`` (``answer N``)."""
        self.send(f"answer {call_id}")

    def hold(self) -> None:
        """Pause the current call (a re-INVITE with a=sendonly)."""
        self.send("pause")

    def resume(self, call_id: int) -> None:
        """Resume a paused call."""
        self.send(f"resume {call_id}")

    def terminate(self, call_id: int | None = None) -> None:
        """Hang up one call (or the current one)."""
        self.send("terminate" if call_id is None else f"terminate {call_id}")

    def transfer(self, call_id: int, target: str) -> None:
        """Blind transfer: REFER with ``Refer-To: target`` on call ``call_id``."""
        if not target.startswith(("sip:", "sips:")):
            target = f"sip:{target}@{self.domain}"
        self.send(f"transfer {call_id} {target}")

    def transfer_to_call(self, call_id: int, to_call_id: int) -> None:
        """Attended transfer: REFER on ``call_id`` whose Refer-To names the other party of ``to_call_id`` with
        ``?Replaces=`` its dialog (linphonec's ``transfer N --to-call M``)."""
        self.send(f"transfer {call_id} --to-call {to_call_id}")

    # -- waits
    def _mark(self) -> int:
        with self._cond:
            return len(self._lines)

    def _line_after(self, mark: int, pattern: re.Pattern[str]) -> str | None:
        for line in self._lines[mark:]:
            if pattern.search(line):
                return line
        return None

    def _wait(self, find: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for_output(self._cond, find, timeout, what, self.proc,
                               lambda reason: LinphoneError(f"linphonec {self.name}: {reason}\n{self.log()}"))

    def wait_event(self, types: str | tuple[str, ...], call_id: int | None = None, *,
                   fail_on: tuple[str, ...] = (), start: int = 0, timeout: float = 15.0) -> LinphoneEvent:
        """The first event (from index ``start``) of one of ``types`` (for ``call_id`` when given);
        LinphoneError on one of ``fail_on`` for that call."""
        wanted = (types,) if isinstance(types, str) else types

        def find() -> LinphoneEvent | None:
            for event in self.events[start:]:
                if call_id is not None and event.call_id != call_id:
                    continue
                if event.type in fail_on:
                    raise LinphoneError(f"linphonec {self.name}: call {event.call_id} {event.type} "
                                        f"({event.param}) while waiting for {'/'.join(wanted)}\n{self.log()}")
                if event.type in wanted:
                    return event
            return None

        what = "/".join(wanted) + " event" + (f" for call {call_id}" if call_id is not None else "")
        return self._wait(find, timeout, what)

    def registration_state(self) -> str:
        """The account's state from ``states proxies`` (``LinphoneRegistrationOk``, ...Progress, ...Failed)."""
        mark = self._mark()
        self.send("states proxies")
        row = re.compile(r"^" + re.escape(self.identity) + r"\s*\|")
        line = self._wait(lambda: self._line_after(mark, row), 5.0, "an answer to 'states proxies'")
        m = REGISTRATION_ROW.search(line)
        return m.group("state") if m else ""

    def wait_registered(self, timeout: float = 15.0) -> str:
        """Poll the registration state until it is ``LinphoneRegistrationOk`` (Failed fails at once)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.registration_state()
            if state == "LinphoneRegistrationOk":
                return state
            if state == "LinphoneRegistrationFailed":
                raise LinphoneError(f"linphonec {self.name}: registration failed\n{self.log()}\n{self.sip_log()}")
            if time.monotonic() > deadline:
                raise LinphoneError(f"linphonec {self.name}: not registered within {timeout:g}s ({state})\n"
                                    f"{self.log()}")
            time.sleep(0.3)

    def wait_incoming(self, timeout: float = 15.0, start: int = 0) -> LinphoneEvent:
        """A call ringing here (its ``call_id`` for ``answer``)."""
        return self.wait_event("incoming", start=start, timeout=timeout)

    def wait_streams_running(self, call_id: int, timeout: float = 15.0) -> LinphoneEvent:
        """The call's media runs (answered, or resumed); an end or error first fails."""
        return self.wait_event("streams_running", call_id, fail_on=("ended", "error"), timeout=timeout)

    def wait_paused(self, call_id: int, timeout: float = 15.0) -> LinphoneEvent:
        return self.wait_event("paused", call_id, fail_on=("ended", "error"), timeout=timeout)

    def wait_ended(self, call_id: int, timeout: float = 15.0) -> LinphoneEvent:
        """The call ended (``param`` is linphone's reason, e.g. "No error")."""
        return self.wait_event(("ended", "error"), call_id, timeout=timeout)

    # -- audio
    def recording(self, call_id: int) -> Path:
        """The WAV file of what the phone heard during call ``call_id`` (complete once that call ended)."""
        with self._cond:
            path = self.call_recordings.get(call_id)
        if path is None or not path.is_file():
            raise LinphoneError(f"linphonec {self.name}: no recording for call {call_id} ({path})\n{self.log()}")
        return path

    def heard(self, call_id: int) -> np.ndarray:
        """The int16 samples linphone decoded during call ``call_id``, at the recording's own rate
        (``heard_rate``), mono."""
        return read_wav(self.recording(call_id))

    def heard_rate(self, call_id: int) -> int:
        import wave

        with wave.open(str(self.recording(call_id)), "rb") as w:
            return w.getframerate()

    def heard_tone(self, call_id: int, seconds: float = 1.0, threshold: int = 1000) -> float:
        """The dominant frequency (Hz) of ``seconds`` of what call ``call_id`` heard, from a quarter second after
        the first sample louder than ``threshold``. LinphoneError on silence or too little audio."""
        samples, rate = self.heard(call_id), self.heard_rate(call_id)
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
        if loud.size == 0:
            raise LinphoneError(f"linphonec {self.name} heard silence in call {call_id} ({samples.size} samples)")
        start = int(loud[0]) + rate // 4
        window = samples[start:start + int(seconds * rate)]
        if window.size < int(seconds * rate):
            raise LinphoneError(f"linphonec {self.name} heard {samples.size - loud[0]} samples of audio in call "
                                f"{call_id}, fewer than {seconds:g} s after start-up")
        return dominant_frequency(window, rate)


@pytest.fixture
def linphone_phones(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., LinphonePhone]]:
    """``phones(name, server, user, password, tone_hz=..., ...)`` starts a LinphonePhone in tmp_path/name
    registered to ``server`` (a CallpathServer: its SIP host, port and domain); every phone is stopped at
    teardown, and its console and SIP messages printed when the test failed."""
    linphonec_binary()   # skip (or fail under CI) before the test starts servers
    phones: list[LinphonePhone] = []

    def make(name: str, server: Any, user: str, password: str, **kwargs: Any) -> LinphonePhone:
        kwargs.setdefault("port", server.sip_port)
        kwargs.setdefault("proxy_host", server.sip_host)
        kwargs.setdefault("domain", server.domain)
        phone = LinphonePhone(tmp_path / name, user, password, name=name, **kwargs)
        phones.append(phone)
        return phone.start()

    yield make
    for phone in phones:
        phone.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for phone in phones:
            print(f"--- linphonec {phone.name} ({phone.identity}) ---\n{phone.log()}\n"
                  f"--- its SIP messages ---\n{phone.sip_log()}")


__all__ = [
    "SAMPLE_RATE",
    "LinphoneError",
    "LinphoneEvent",
    "LinphonePhone",
    "linphone_phones",
    "linphonec_binary",
    "parse_events",
]
