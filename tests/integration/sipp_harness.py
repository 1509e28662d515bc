"""Run SIPp scenarios (tests/sipp/*.xml) and a real callpath process, for integration tests and benchmarks.

SIPp side::

    result = run_sipp("uac_noauth", "127.0.0.1:5060", local_port=free_udp_port(), service="1001")
    assert result.ok, result.log

    with start_sipp("uas", local_port=uas_port) as uas:      # long-running UAS, started before the calls
        run_sipp("register_loop_noauth", server.target, local_port=free_udp_port(),
                 users_csv=[("bob", "pw")], keys={"contact_port": uas_port}).check()
        run_sipp("uac_noauth", server.target, local_port=free_udp_port(), service="bob").check()
    assert uas.result.successful == 1                       # SippResult of the stopped UAS

callpath side::

    server = start_callpath(tmp_path, sip={"auth": False})   # or: sip_auth=False
    server.add_user("alice", "secret", extension="1001")
    ...
    server.stop()

or the ``callpath_factory`` fixture (import it into the test module), which stops every server it started.

Keys the scenarios reference are filled in when not given: ``domain`` (the target's host; use
``server.sipp_keys()`` for a callpath server's SIP domain), ``contact_port`` (the ``local_port``) and
``expires`` (3600). A scenario that uses ``[field0]`` gets ``tests/sipp/users.csv`` (user1..user100,
password "secret") unless ``users_csv`` says otherwise: a path, or a list of (username, password) pairs.

Every run keeps its files (statistics CSV, messages, errors, screens) in a work directory, and
``SippResult.log`` gathers them for an assertion message.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from media_ports import free_udp_range

REPO_ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = REPO_ROOT / "tests" / "sipp"
USERS_CSV = SIPP_DIR / "users.csv"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: keys the scenarios may reference with a default, filled in by run_sipp/start_sipp when absent
KNOWN_KEYS = ("domain", "contact_port", "expires")
DEFAULT_EXPIRES = 3600
#: how much of the message trace SippResult.log keeps (the end of it)
MESSAGES_TAIL = 60_000


# --------------------------------------------------------------------------------------------- sipp


def sipp_path() -> str | None:
    """The sipp executable ($SIPP, else PATH), or None."""
    explicit = os.environ.get("SIPP")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("sipp")


def require_sipp() -> str:
    """The sipp executable; skips the test when absent, or fails it under CI=true."""
    path = sipp_path()
    if path:
        return path
    msg = "sipp is not installed (Debian package sip-tester)"
    if IN_CI:
        pytest.fail(msg + " (CI=true: SIPp is required)")
    pytest.skip(msg)


def _port_is_free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_udp_port(host: str = "127.0.0.1", *, also_tcp: bool = False) -> int:
    """A UDP port nobody has bound on ``host`` (and, with also_tcp, free for TCP too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if not also_tcp or _port_is_free(host, port, socket.SOCK_STREAM):
            return port
    raise RuntimeError(f"no free UDP{'+TCP' if also_tcp else ''} port on {host}")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def scenario_path(scenario: str | os.PathLike[str]) -> Path:
    """A scenario file: an existing path, else tests/sipp/NAME[.xml] or tests/sipp/mock/NAME[.xml]."""
    path = Path(scenario)
    if path.is_file():
        return path.resolve()
    name = path.name if path.suffix == ".xml" else path.name + ".xml"
    for folder in (SIPP_DIR, SIPP_DIR / "mock"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no SIPp scenario {scenario!s} (looked in {SIPP_DIR} and its mock/)")


def write_users_csv(path: Path, users: Iterable[Sequence[str]], order: str = "SEQUENTIAL") -> Path:
    """Write a SIPp injection file: ``order`` line, then ``field0;field1;...;`` per user."""
    lines = [order]
    for row in users:
        lines.append("".join(f"{value};" for value in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def read_users_csv(path: Path = USERS_CSV) -> list[tuple[str, str]]:
    """(username, password) of every line of a SIPp injection file (field0, field1)."""
    users = []
    for line in path.read_text().splitlines()[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(";")
        users.append((fields[0], fields[1] if len(fields) > 1 else ""))
    return users


def _split_target(target: str | tuple[str, int] | None) -> tuple[str | None, str | None]:
    """('host', 'host:port') of a target, or (None, None) for a UAS."""
    if target is None:
        return None, None
    if isinstance(target, tuple):
        host, port = target
        return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if target.startswith("["):
        return target[1:target.index("]")], target
    return (target.rsplit(":", 1)[0] if target.count(":") == 1 else target), target


def _parse_duration_us(text: str) -> float | None:
    """SIPp's HH:MM:SS:uuuuuu (the CSV's time format) in milliseconds."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+):(\d+)", text.strip())
    if not m:
        return None
    h, mi, s, us = (int(g) for g in m.groups())
    return ((h * 60 + mi) * 60 + s) * 1000.0 + us / 1000.0


@dataclass
class SippResult:
    """The outcome of one SIPp run: counters from its -trace_stat CSV and the text to debug it with."""

    scenario: str
    command: list[str]
    returncode: int | None
    ok: bool
    successful: int
    failed: int
    retransmissions: int
    #: the last row of the statistics CSV (column name -> text); empty when SIPp wrote none
    stats: dict[str, str]
    #: command line, exit code, errors, <log> actions, final screens and the message trace's end
    log: str
    workdir: Path
    expected_calls: int | None = None

    @property
    def created(self) -> int:
        """Calls created: outgoing for a UAC, incoming for a UAS."""
        return _int(self.stats.get("TotalCallCreated"))

    @property
    def call_rate(self) -> float:
        """Cumulative calls per second over the run."""
        return _float(self.stats.get("CallRate(C)"))

    @property
    def elapsed_s(self) -> float:
        """Cumulative elapsed time of the run, in seconds (whole seconds, as SIPp reports it)."""
        text = self.stats.get("ElapsedTime(C)", "")
        parts = [int(p) for p in text.split(":") if p.isdigit()]
        return float(sum(v * 60**i for i, v in enumerate(reversed(parts[:3])))) if parts else 0.0

    def response_time_ms(self, name: str = "1") -> float | None:
        """Mean response time of the scenario's rtd ``name`` ("setup", "register", "ringing", or "1")."""
        return _parse_duration_us(self.stats.get(f"ResponseTime{name}(C)", ""))

    def check(self, calls: int | None = None) -> SippResult:
        """Assert success (and, when given, at least ``calls`` successful calls); returns self."""
        assert self.ok, self.log
        if calls is not None:
            assert self.successful >= calls, f"{self.successful} successful calls, wanted {calls}\n{self.log}"
        return self

    def __str__(self) -> str:
        return (f"sipp {self.scenario}: {'ok' if self.ok else 'FAILED'} (exit {self.returncode}), "
                f"{self.successful} successful, {self.failed} failed, {self.retransmissions} retransmissions")


def _int(text: str | None) -> int:
    try:
        return int(float(text)) if text not in (None, "") else 0
    except ValueError:
        return 0


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else 0.0
    except ValueError:
        return 0.0


@dataclass
class _Invocation:
    """A SIPp command line with the files it writes."""

    scenario: Path
    command: list[str]
    workdir: Path
    calls: int | None
    stat_file: Path
    error_file: Path
    message_file: Path | None
    screen_file: Path
    log_file: Path
    stdout_file: Path
    local_ip: str
    local_port: int
    transport: str

    def result(self, returncode: int | None) -> SippResult:
        stats = _last_stats_row(self.stat_file)
        stdout = _read(self.stdout_file)
        screen = _read(self.screen_file) or stdout
        if stats:
            successful = _int(stats.get("SuccessfulCall(C)"))
            failed = _int(stats.get("FailedCall(C)"))
            retrans = _int(stats.get("Retransmissions(C)"))
        else:  # no CSV (SIPp died early): the screens still say something
            successful = _screen_counter(screen, "Successful call")
            failed = _screen_counter(screen, "Failed call")
            retrans = 0
        ok = returncode == 0 and failed == 0 and (self.calls is None or successful >= self.calls)
        parts = [
            "$ " + " ".join(self.command),
            f"exit code: {returncode}   successful: {successful}   failed: {failed}   "
            f"retransmissions: {retrans}" + (f"   expected calls: {self.calls}" if self.calls else ""),
        ]
        for title, text in (
            ("errors", _read(self.error_file)),
            ("log actions", _read(self.log_file)),
            ("stdout/stderr", _tail(stdout, 8000) if stdout != screen else ""),
            ("screens", _tail(screen, 12000)),
        ):
            if text.strip():
                parts.append(f"--- {title} ---\n{text.rstrip()}")
        if self.message_file is not None:
            messages = _read(self.message_file)
            if messages.strip():
                parts.append(f"--- messages ({self.message_file.name}, last {MESSAGES_TAIL} chars) ---\n"
                             + _tail(messages, MESSAGES_TAIL).rstrip())
        return SippResult(
            scenario=self.scenario.stem,
            command=self.command,
            returncode=returncode,
            ok=ok,
            successful=successful,
            failed=failed,
            retransmissions=retrans,
            stats=stats,
            log="\n".join(parts),
            workdir=self.workdir,
            expected_calls=self.calls,
        )


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def _last_stats_row(path: Path) -> dict[str, str]:
    text = _read(path)
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        return {}
    header = rows[0].split(";")
    values = rows[-1].split(";")
    return dict(zip(header, values))


def _screen_counter(screen: str, label: str) -> int:
    matches = re.findall(rf"{re.escape(label)}\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    return int(matches[-1]) if matches else 0


def _prepare(
    scenario: str | os.PathLike[str],
    target: str | tuple[str, int] | None,
    *,
    local_port: int,
    local_ip: str = "127.0.0.1",
    users_csv: str | os.PathLike[str] | Iterable[Sequence[str]] | None = None,
    rate: float | None = None,
    rate_period_ms: int | None = None,
    calls: int | None = 1,
    timeout: float | None = 20,
    service: str | None = None,
    duration_ms: int | None = None,
    keys: Mapping[str, Any] | None = None,
    sets: Mapping[str, Any] | None = None,
    transport: str = "u1",
    trace_messages: bool = True,
    workdir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
) -> _Invocation:
    binary = require_sipp()
    path = scenario_path(scenario)
    text = path.read_text(errors="replace")
    host, target_arg = _split_target(target)
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"sipp-{path.stem}-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{path.stem}-{local_port}"

    all_keys: dict[str, Any] = {}
    if "[domain]" in text:
        all_keys["domain"] = host or local_ip
    if "[contact_port]" in text:
        all_keys["contact_port"] = local_port
    if "[expires]" in text:
        all_keys["expires"] = DEFAULT_EXPIRES
    all_keys.update(keys or {})

    command = [binary, "-sf", str(path)]
    if target_arg:
        command.append(target_arg)
    command += ["-i", local_ip, "-p", str(local_port), "-t", transport, "-nostdin"]
    if calls is not None:
        command += ["-m", str(calls)]
    if rate is not None:
        command += ["-r", f"{rate:g}"]
    if rate_period_ms is not None:
        command += ["-rp", str(rate_period_ms)]
    if timeout is not None:
        command += ["-timeout", f"{timeout:g}s", "-timeout_error"]
    if service is not None:
        command += ["-s", str(service)]
    if duration_ms is not None:
        command += ["-d", str(int(duration_ms))]
    if re.search(r"\[field\d", text) or users_csv is not None:
        if users_csv is None:
            csv_path = USERS_CSV
        elif isinstance(users_csv, (str, os.PathLike)):
            csv_path = Path(users_csv)
        else:
            csv_path = write_users_csv(work / f"{tag}-users.csv", users_csv)
        command += ["-inf", str(csv_path)]
    for name, value in all_keys.items():
        command += ["-key", str(name), str(value)]
    for name, value in (sets or {}).items():
        command += ["-set", str(name), str(value)]

    stat_file = work / f"{tag}-stats.csv"
    error_file = work / f"{tag}-errors.log"
    screen_file = work / f"{tag}-screens.log"
    log_file = work / f"{tag}-logs.log"
    message_file = work / f"{tag}-messages.log" if trace_messages else None
    command += ["-trace_stat", "-stf", str(stat_file), "-fd", "1",
                "-trace_err", "-error_file", str(error_file),
                "-trace_screen", "-screen_file", str(screen_file),
                "-trace_logs", "-log_file", str(log_file)]
    if message_file is not None:
        command += ["-trace_msg", "-message_file", str(message_file)]
    command += list(extra_args)
    return _Invocation(
        scenario=path, command=command, workdir=work, calls=calls, stat_file=stat_file,
        error_file=error_file, message_file=message_file, screen_file=screen_file, log_file=log_file,
        stdout_file=work / f"{tag}-stdout.log", local_ip=local_ip, local_port=local_port, transport=transport,
    )


def run_sipp(
    scenario: str | os.PathLike[str],
    target: str | tuple[str, int] | None,
    *,
    local_port: int,
    users_csv: str | os.PathLike[str] | Iterable[Sequence[str]] | None = None,
    rate: float | None = None,
    calls: int = 1,
    timeout: float = 20,
    extra_args: Sequence[str] = (),
    keys: Mapping[str, Any] | None = None,
    service: str | None = None,
    duration_ms: int | None = None,
    sets: Mapping[str, Any] | None = None,
    local_ip: str = "127.0.0.1",
    rate_period_ms: int | None = None,
    transport: str = "u1",
    trace_messages: bool = True,
    workdir: str | os.PathLike[str] | None = None,
) -> SippResult:
    """Run a scenario to its end (``calls`` calls, or ``timeout`` seconds -> failure) and parse the outcome.

    ``target`` is "host:port" (or a tuple) for a UAC, None for a UAS. ``service`` is -s (the user called),
    ``duration_ms`` is -d (the scenarios' <pause/>), ``keys`` are -key NAME VALUE, ``sets`` -set NAME VALUE
    (e.g. ``{"ring_ms": 300}`` for uas.xml). Pass ``trace_messages=False`` for benchmarks.
    """
    inv = _prepare(scenario, target, local_port=local_port, local_ip=local_ip, users_csv=users_csv,
                   rate=rate, rate_period_ms=rate_period_ms, calls=calls, timeout=timeout, service=service,
                   duration_ms=duration_ms, keys=keys, sets=sets, transport=transport,
                   trace_messages=trace_messages, workdir=workdir, extra_args=extra_args)
    with open(inv.stdout_file, "wb") as out:
        proc = subprocess.Popen(inv.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=inv.workdir)
        try:
            returncode: int | None = proc.wait(timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            _terminate(proc)
            returncode = proc.returncode
    return inv.result(returncode)


async def arun_sipp(*args: Any, **kwargs: Any) -> SippResult:
    """run_sipp in a worker thread, for tests whose event loop must keep running meanwhile."""
    return await asyncio.to_thread(run_sipp, *args, **kwargs)


def _terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _port_bound(ip: str, port: int, transport: str) -> bool:
    if transport.startswith("u"):
        return not _port_is_free(ip, port, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.2):
        return True
    return False


class SippProcess:
    """A SIPp running in the background (typically a UAS); stop() or wait() gives its SippResult."""

    def __init__(self, invocation: _Invocation, proc: subprocess.Popen[bytes], stdout: io.BufferedWriter) -> None:
        self._inv = invocation
        self.proc = proc
        self._stdout = stdout
        self.result: SippResult | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self._inv.local_port

    @property
    def address(self) -> str:
        """host:port the SIPp listens on."""
        return f"{self._inv.local_ip}:{self._inv.local_port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def _finish(self) -> SippResult:
        if self.result is None:
            with contextlib.suppress(Exception):
                self._stdout.close()
            self.result = self._inv.result(self.proc.returncode)
        return self.result

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself (its -m count, or its -timeout), then parse its outcome."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(self.proc)
        return self._finish()

    def stop(self, timeout: float = 5.0) -> SippResult:
        """Ask SIPp to quit gracefully (SIGUSR1: no new calls, finish the current ones), then force it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _terminate(self.proc)
        return self._finish()

    async def await_result(self, timeout: float | None = None) -> SippResult:
        """wait() in a worker thread."""
        return await asyncio.to_thread(self.wait, timeout)

    async def astop(self, timeout: float = 5.0) -> SippResult:
        """stop() in a worker thread."""
        return await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sipp(
    scenario: str | os.PathLike[str],
    target: str | tuple[str, int] | None = None,
    *,
    local_port: int,
    calls: int | None = None,
    timeout: float | None = None,
    ready_timeout: float = 5.0,
    **kwargs: Any,
) -> SippProcess:
    """Start SIPp in the background and return once it listens on ``local_port``.

    Same options as run_sipp; by default no -m and no -timeout (it runs until stop()). Use it as a
    context manager, or call stop() (graceful) / wait() (until its -m calls are done).
    """
    inv = _prepare(scenario, target, local_port=local_port, calls=calls, timeout=timeout, **kwargs)
    stdout = open(inv.stdout_file, "wb")  # noqa: SIM115 - closed by SippProcess
    proc = subprocess.Popen(inv.command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                            cwd=inv.workdir)
    sipp = SippProcess(inv, proc, stdout)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            result = sipp._finish()
            raise RuntimeError(f"sipp {inv.scenario.stem} exited before listening\n{result.log}")
        if _port_bound(inv.local_ip, inv.local_port, inv.transport):
            return sipp
        if time.monotonic() > deadline:
            result = sipp.stop(timeout=2)
            raise RuntimeError(f"sipp {inv.scenario.stem} not listening on {sipp.address} "
                               f"after {ready_timeout}s\n{result.log}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------- callpath


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def dump_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for {section: {key: value}}, where a value may be a list of tables ([[section.key]]); a top-level
    list of tables (``trunks``) becomes [[section]] tables."""
    out: list[str] = []
    for section, table in sections.items():
        if _is_table_array(table):
            for entry in table:
                out.append(f"[[{section}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
                out.append("")
            continue
        out.append(f"[{section}]")
        for key, value in table.items():
            if not _is_table_array(value) and not isinstance(value, Mapping):
                out.append(f"{key} = {_toml_value(value)}")
        for key, value in table.items():
            if isinstance(value, Mapping):
                out.append(f"\n[{section}.{key}]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
            elif _is_table_array(value):
                for entry in value:
                    out.append(f"\n[[{section}.{key}]]")
                    out.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
        out.append("")
    return "\n".join(out)


def _merge_settings(base: dict[str, dict[str, Any]], settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply ``sip={"auth": False}`` (a section), ``sip_auth=False`` (section_key) and ``trunks=[{...}, ...]``
    (a top-level array of tables) forms onto base."""
    for name, value in settings.items():
        if _is_table_array(value):
            base[name] = [dict(entry) for entry in value]
        elif isinstance(value, Mapping):
            base.setdefault(name, {}).update(value)
        elif "_" in name:
            section, key = name.split("_", 1)
            base.setdefault(section, {})[key] = value
        else:
            raise TypeError(f"setting {name}={value!r}: give a section dict (sip={{...}}) or SECTION_KEY=value")
    return base


def callpath_command() -> list[str]:
    """How to start callpath: the venv's console script when installed, else ``python -m web.cli``."""
    script = Path(sys.executable).parent / "callpath"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "web.cli"]


def _callpath_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPATH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class CallpathError(RuntimeError):
    """callpath did not start, or a callpath command failed; the message carries its output."""


class CallpathServer:
    """A ``callpath run`` process with its config file; stop() sends SIGTERM."""

    def __init__(self, config_path: Path, settings: dict[str, dict[str, Any]], workdir: Path,
                 env: dict[str, str]) -> None:
        self.config_path = config_path
        self.settings = settings
        self.workdir = workdir
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._log = open(workdir / "callpath-output.log", "a", encoding="utf-8")  # noqa: SIM115

    # -- addresses
    @property
    def sip_host(self) -> str:
        return str(self.settings["sip"].get("listen", "127.0.0.1"))

    @property
    def sip_port(self) -> int:
        return int(self.settings["sip"].get("udp_port") or self.settings["sip"].get("tcp_port"))

    @property
    def target(self) -> str:
        """host:port for SIPp (UDP)."""
        return f"{self.sip_host}:{self.sip_port}"

    @property
    def domain(self) -> str:
        """The SIP domain / digest realm: [sip].domain, else advertise, else listen."""
        sip = self.settings["sip"]
        return str(sip.get("domain") or sip.get("advertise") or self.sip_host)

    @property
    def web_url(self) -> str:
        web = self.settings.get("web", {})
        return f"http://{web.get('listen', '127.0.0.1')}:{web.get('port')}"

    def sipp_keys(self, **more: Any) -> dict[str, Any]:
        """-key values matching this server (its SIP domain), plus ``more``."""
        return {"domain": self.domain, **more}

    # -- process
    def start(self, *, ready_timeout: float = 30.0, sip_trace: bool = False) -> CallpathServer:
        command = [*callpath_command(), "run", "--config", str(self.config_path)]
        if sip_trace:
            command.append("--sip-trace")
        self._log.write(f"$ {' '.join(command)}\n")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env,
                                     text=True, errors="replace", bufsize=1)
        self._reader = threading.Thread(target=self._read_output, name="callpath-output", daemon=True)
        self._reader.start()
        try:
            self.wait_for_line(lambda line: line.strip() == "callpath ready", timeout=ready_timeout)
        except CallpathError as exc:
            self.stop(timeout=5)
            raise CallpathError(f"callpath did not become ready: {exc}\n--- output ---\n{self.output()}") from None
        return self

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
            with contextlib.suppress(ValueError):
                self._log.write(line)
                self._log.flush()
        with self._cond:
            self._cond.notify_all()

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        with self._cond:
            return "\n".join(self._lines)

    def wait_for_line(self, match: str | Callable[[str], bool], timeout: float = 10.0, start: int = 0) -> str:
        """The first output line (from index ``start``) containing ``match`` (or satisfying it)."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if test(line):
                        return line
                seen = len(self._lines)
                if self.proc is not None and self.proc.poll() is not None and not (
                        self._reader and self._reader.is_alive()):
                    raise CallpathError(f"callpath exited with status {self.proc.returncode}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallpathError(f"no output line matching {match!r} within {timeout}s")
                self._cond.wait(min(remaining, 0.2))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); returns the exit status."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            self.returncode = self.proc.returncode
        with contextlib.suppress(Exception):
            self._log.close()
        return self.returncode

    def __enter__(self) -> CallpathServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accounts
    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``callpath ARGS --config FILE``; raises CallpathError with the output on a non-zero exit."""
        return run_callpath_cli(self.config_path, *args, timeout=timeout, env=self.env, cwd=self.workdir)

    def add_user(self, username: str, password: str, extension: str | None = None,
                 display_name: str | None = None) -> None:
        """``callpath user add USERNAME --password P [--extension E]`` with this server's config."""
        add_sip_user(self.config_path, username, password, extension, display_name,
                     env=self.env, cwd=self.workdir)

    def add_users(self, users: Iterable[Sequence[str | None]]) -> None:
        """Add (username, password[, extension]) accounts in one process (``callpath user add`` each)."""
        add_sip_users(self.config_path, users, env=self.env, cwd=self.workdir)


def run_callpath_cli(config_path: str | os.PathLike[str], *args: str, timeout: float = 60.0,
                     env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                     ) -> subprocess.CompletedProcess[str]:
    """``callpath ARGS --config FILE``; raises CallpathError with the output on a non-zero exit."""
    command = [*callpath_command(), *args, "--config", str(config_path)]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else _callpath_env(), cwd=cwd)
    if done.returncode != 0:
        raise CallpathError(f"$ {' '.join(command)}\nexit status {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def add_sip_user(config_path: str | os.PathLike[str], username: str, password: str,
                 extension: str | None = None, display_name: str | None = None, *,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> None:
    """Create a SIP account with ``callpath user add`` and the given config file."""
    args = ["user", "add", username, "--password", password]
    if extension is not None:
        args += ["--extension", str(extension)]
    if display_name:
        args += ["--display-name", display_name]
    run_callpath_cli(config_path, *args, env=env, cwd=cwd)


_ADD_USERS_SCRIPT = """
import json, sys
from web.cli import main
config, users = sys.argv[1], json.loads(sys.argv[2])
for user in users:
    argv = ["user", "add", user[0], "--password", user[1], "--config", config]
    if len(user) > 2 and user[2] is not None:
        argv += ["--extension", str(user[2])]
    status = main(argv)
    if status:
        sys.exit(f"callpath user add {user[0]}: exit status {status}")
"""


def add_sip_users(config_path: str | os.PathLike[str], users: Iterable[Sequence[str | None]], *,
                  env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> None:
    """Create many accounts in one Python process running ``callpath user add``'s entry point for each
    (a process per user costs a second each: 100 users would take minutes)."""
    batch = [list(u) for u in users]
    if not batch:
        return
    command = [sys.executable, "-c", _ADD_USERS_SCRIPT, str(config_path), json.dumps(batch)]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          env=dict(env) if env is not None else _callpath_env(), cwd=cwd)
    if done.returncode != 0:
        raise CallpathError(f"adding {len(batch)} SIP users failed (exit {done.returncode})\n"
                            f"{done.stdout}{done.stderr}")


def write_callpath_config(tmp_path: Path, **settings: Any) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Write tmp_path/callpath.toml: free ports on 127.0.0.1, data under tmp_path/data, then ``settings``.

    ``settings``: sections as dicts (``sip={"auth": False, "b2bua": [{"number": "9000", "target": ...}]}``)
    or SECTION_KEY=value (``sip_auth=False``). Returns the file and the settings written.
    """
    sip_port = free_udp_port("127.0.0.1", also_tcp=True)
    base: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(tmp_path / "data"), "log_level": "info"},
        "sip": {"listen": "127.0.0.1", "udp_port": sip_port, "tcp_port": sip_port, "tls_port": 0},
        "web": {"listen": "127.0.0.1", "port": free_tcp_port()},
        # media is on by default: a free 100-port slice and any ICE port, so servers of one run never collide
        "media": {"listen": "127.0.0.1", "ice_port": 0, "rtp_port_min": (low := free_udp_range(100)),
                  "rtp_port_max": low + 99},
    }
    merged = _merge_settings(base, settings)
    path = tmp_path / "callpath.toml"
    path.write_text(dump_toml(merged))
    return path, merged


def start_callpath(
    tmp_path: str | os.PathLike[str],
    *,
    users: Iterable[Sequence[str | None]] = (),
    ready_timeout: float = 30.0,
    sip_trace: bool = False,
    env: Mapping[str, str] | None = None,
    **settings: Any,
) -> CallpathServer:
    """Write a config (see write_callpath_config), create ``users`` (username, password[, extension])
    with ``callpath user add``, run ``callpath run --config FILE`` and wait for ``callpath ready``.

    Raises CallpathError with the server's output when it exits or is not ready within ready_timeout.
    """
    work = Path(tmp_path)
    work.mkdir(parents=True, exist_ok=True)
    config_path, merged = write_callpath_config(work, **settings)
    server = CallpathServer(config_path, merged, work, _callpath_env(env))
    server.add_users(users)
    return server.start(ready_timeout=ready_timeout, sip_trace=sip_trace)


@pytest.fixture
def callpath_factory(tmp_path: Path) -> Iterator[Callable[..., CallpathServer]]:
    """``callpath_factory(**settings)`` starts a server (see start_callpath) in its own tmp_path
    sub-directory; every server started is stopped (SIGTERM) at teardown."""
    servers: list[CallpathServer] = []

    def make(**kwargs: Any) -> CallpathServer:
        server = start_callpath(tmp_path / f"callpath{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


__all__ = [
    "USERS_CSV", "SIPP_DIR", "SippResult", "SippProcess", "CallpathServer", "CallpathError",
    "free_udp_port", "free_tcp_port", "run_sipp", "arun_sipp", "start_sipp", "require_sipp", "sipp_path",
    "scenario_path", "write_users_csv", "read_users_csv", "start_callpath", "write_callpath_config",
    "add_sip_user", "add_sip_users", "run_callpath_cli", "dump_toml", "callpath_factory",
]
