"""Pieces of the SIPp benchmarks (benchmarks/sip/run.py): servers under test, SIPp runs, CPU accounting.

Standard library only, so that run.py works with any python3: callpath is started through its console
script (``.venv/bin/callpath``), Kamailio through ``kamailio``, Sippy through its own virtualenv.
Everything listens on 127.0.0.1 and nothing is sent anywhere else.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SIPP_DIR = REPO_ROOT / "tests" / "sipp"
BENCH_SCENARIOS = HERE / "scenarios"
KAMAILIO_CFG = HERE / "kamailio" / "kamailio.cfg"
SIPPY_VENV = REPO_ROOT / "benchmarks" / ".venv-sippy"
SIPPY_WRAPPER = HERE / "sippy_b2bua.py"
SIPPY_VERSION = "2.5.0"
CALLPATH_VENV = Path(os.environ.get("CALLPATH_VENV") or REPO_ROOT / ".venv").resolve()  # same variable as dev.sh
LOCAL = "127.0.0.1"  # the only address any of this talks to
DOMAIN = LOCAL  # SIP domain / digest realm of every server
PASSWORD = "secret"
CALLEE = "callee"
CALLEE_EXTENSION = "2000"
B2BUA_NUMBER = "9000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A server did not start or a setup step failed; the message says why."""


# ------------------------------------------------------------------------------------------ ports


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 nobody has bound (and free for TCP too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOCAL, 0))
            port = sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((LOCAL, port))
            except OSError:
                continue
        return port
    raise BenchError("no free UDP port on 127.0.0.1")


def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOCAL, port))
        except OSError:
            return True
    return False


def wait_until(test: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {proc.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f}s\n{tail(log)}")
        time.sleep(0.05)


def tail(path: Path | None, limit: int = 3000) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else "[...]" + text[-limit:]


# ------------------------------------------------------------------------------------------- CPU


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class CpuSample:
    """CPU used so far by a set of processes: utime+stime (clock ticks, /proc/PID/stat, all threads of
    each process including finished ones) and the scheduler's runtime of the live threads (ns,
    /proc/PID/task/TID/schedstat) as a finer cross-check."""

    ticks: int
    sched_ns: int
    at: float

    @property
    def seconds(self) -> float:
        return self.ticks / CLK_TCK


def cpu_sample(pids: Iterable[int]) -> CpuSample:
    ticks = 0
    sched = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    sched += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return CpuSample(ticks, sched, time.monotonic())


def system_busy_seconds() -> float:
    """CPU time all processors spent busy since boot (/proc/stat: everything but idle and iowait)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


# ------------------------------------------------------------------------------------------ SIPp


def sipp_binary() -> str | None:
    return os.environ.get("SIPP") or shutil.which("sipp")


def sipp_version() -> str:
    binary = sipp_binary()
    if not binary:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"SIPp v[^\s]+", out)
    return match.group(0).rstrip(".") if match else out.strip()[:80]


def scenario(name: str) -> Path:
    """benchmarks/sip/scenarios/NAME.xml, else tests/sipp/NAME.xml."""
    for folder in (BENCH_SCENARIOS, SIPP_DIR):
        path = folder / f"{name}.xml"
        if path.is_file():
            return path
    raise BenchError(f"no SIPp scenario {name}")


def _ulaw(sample: int) -> int:
    """One 16-bit linear sample as G.711 mu-law (ITU-T G.711, the usual bias-and-segment encoder)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent, mask = 7, 0x4000
    while exponent and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    return ~(sign | exponent << 4 | (magnitude >> (exponent + 3)) & 0x0F) & 0xFF


def write_pcmu_tone(path: Path, hz: float = 440.0, seconds: float = 1.0, level: float = 0.3) -> Path:
    """A sine tone as raw PCMU (8 kHz mu-law, no header): the file SIPp's rtp_stream plays (payload 0)."""
    import math
    n = int(8000 * seconds)
    path.write_bytes(bytes(_ulaw(int(level * 32767 * math.sin(2 * math.pi * hz * i / 8000))) for i in range(n)))
    return path


def write_users_csv(path: Path, users: Sequence[tuple[str, str]]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};\n" for u, p in users))
    return path


def _stats_rows(path: Path) -> list[dict[str, str]]:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []
    if len(lines) < 2:
        return []
    header = lines[0].split(";")
    return [dict(zip(header, line.split(";"))) for line in lines[1:]]


def _epoch(text: str) -> float | None:
    """The epoch seconds at the end of SIPp's 'date<TAB>time<TAB>epoch' time columns."""
    parts = text.split("\t")
    try:
        return float(parts[-1])
    except (ValueError, IndexError):
        return None


def _us(text: str | None) -> float | None:
    """SIPp's HH:MM:SS:uuuuuu as milliseconds."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+):(\d+)", (text or "").strip())
    if not m:
        return None
    h, mi, s, us = (int(g) for g in m.groups())
    return ((h * 60 + mi) * 60 + s) * 1000.0 + us / 1000.0


def _int(stats: dict[str, str], key: str) -> int:
    try:
        return int(float(stats.get(key) or 0))
    except ValueError:
        return 0


@dataclass
class SippOutcome:
    """Counters of one SIPp run, from its -trace_stat CSV (last row, cumulative columns)."""

    scenario: str
    command: list[str]
    returncode: int | None
    calls: int | None
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    created: int = 0
    elapsed_s: float = 0.0
    response_ms: float | None = None
    failure_kinds: dict[str, int] = field(default_factory=dict)
    errors: str = ""
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return (self.returncode == 0 and self.failed == 0
                and (self.calls is None or self.successful >= self.calls))

    @property
    def rate(self) -> float:
        return self.successful / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.failure_kinds.items())
        text = (f"{self.successful} ok, {self.failed} failed{' (' + kinds + ')' if kinds else ''}, "
                f"{self.retransmissions} retransmissions, exit {self.returncode}")
        unfinished = (self.calls or 0) - self.successful - self.failed
        if self.returncode not in (0, 1) and self.calls and unfinished > 0:
            text += f" ({unfinished} calls still unfinished when SIPp's -timeout expired)"
        return text


def outcome_from_stats(path: Path, base: SippOutcome, rtd: str | None) -> SippOutcome:
    rows = _stats_rows(path)
    if not rows:
        return base
    last = rows[-1]
    base.successful = _int(last, "SuccessfulCall(C)")
    base.failed = _int(last, "FailedCall(C)")
    base.retransmissions = _int(last, "Retransmissions(C)")
    base.created = _int(last, "OutgoingCall(C)") or _int(last, "IncomingCall(C)")
    start, now = _epoch(last.get("StartTime", "")), _epoch(last.get("CurrentTime", ""))
    if start is not None and now is not None:
        base.elapsed_s = max(0.0, now - start)
    if rtd:
        base.response_ms = _us(last.get(f"ResponseTime{rtd}(C)"))
    base.failure_kinds = {k[len("Failed"):-3]: _int(last, k) for k in last
                          if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)"
                          and _int(last, k)}
    return base


class Sipp:
    """One SIPp invocation (UAC run to completion, or a UAS in the background)."""

    def __init__(self, name: str, workdir: Path, *, scenario_name: str, target: str | None, local_port: int,
                 calls: int | None = None, rate: float | None = None, timeout_s: float | None = None,
                 service: str | None = None, duration_ms: int | None = None, users_csv: Path | None = None,
                 keys: dict[str, Any] | None = None, rtd: str | None = None,
                 extra: Sequence[str] = ()) -> None:
        binary = sipp_binary()
        if not binary:
            raise BenchError("sipp is not installed (Debian package sip-tester)")
        self.name = name
        self.workdir = workdir
        self.rtd = rtd
        self.calls = calls
        workdir.mkdir(parents=True, exist_ok=True)
        self.stat_file = workdir / f"{name}-stats.csv"
        self.error_file = workdir / f"{name}-errors.log"
        self.stdout_file = workdir / f"{name}-stdout.log"
        for stale in (self.stat_file, self.error_file):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        path = scenario(scenario_name)
        self.scenario = path.stem
        cmd = [binary, "-sf", str(path)]
        if target:
            cmd.append(target)
        cmd += ["-i", LOCAL, "-p", str(local_port), "-t", "u1", "-nostdin"]
        if calls is not None:
            cmd += ["-m", str(calls)]
        if rate is not None:
            cmd += ["-r", f"{rate:g}", "-rp", "1000"]
            # room for the calls in flight when the server is slow (SIPp's default limit is lower)
            cmd += ["-l", str(max(1000, int(rate * 40)))]
        if timeout_s is not None:
            cmd += ["-timeout", f"{int(timeout_s)}s", "-timeout_error"]
        if service is not None:
            cmd += ["-s", service]
        if duration_ms is not None:
            cmd += ["-d", str(duration_ms)]
        if users_csv is not None:
            cmd += ["-inf", str(users_csv)]
        for key, value in (keys or {}).items():
            cmd += ["-key", key, str(value)]
        cmd += ["-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
                "-trace_err", "-error_file", str(self.error_file), *extra]
        self.command = cmd
        self.local_port = local_port
        self.proc: subprocess.Popen | None = None
        self._out = None
        self.outcome: SippOutcome | None = None

    def start(self) -> Sipp:
        self._out = open(self.stdout_file, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def start_listening(self, timeout: float = 5.0) -> Sipp:
        self.start()
        wait_until(lambda: udp_port_bound(self.local_port), timeout, f"sipp {self.scenario}", self.proc,
                   self.stdout_file)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def progress(self) -> tuple[int, int, int]:
        """(successful, failed, retransmissions) so far, from the statistics file (updated every second)."""
        rows = _stats_rows(self.stat_file)
        if not rows:
            return 0, 0, 0
        last = rows[-1]
        return (_int(last, "SuccessfulCall(C)"), _int(last, "FailedCall(C)"), _int(last, "Retransmissions(C)"))

    def wait(self, timeout: float, on_tick: Callable[[Sipp], None] | None = None) -> SippOutcome:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self._terminate()
                break
            if on_tick is not None:
                on_tick(self)
            time.sleep(0.25)
        return self._finish()

    def stop(self, grace: float = 5.0) -> SippOutcome:
        """SIGUSR1 (no new calls, let current ones end), then SIGTERM/SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._terminate()
        return self._finish()

    def _terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _finish(self) -> SippOutcome:
        if self.outcome is None:
            if self._out is not None:
                self._out.close()
            assert self.proc is not None
            base = SippOutcome(self.scenario, self.command, self.proc.returncode, self.calls,
                               workdir=str(self.workdir))
            self.outcome = outcome_from_stats(self.stat_file, base, self.rtd)
            if not self.outcome.ok:
                errors = tail(self.error_file, 2500)
                if not errors.strip():
                    errors = tail(self.stdout_file, 2500)
                self.outcome.errors = errors
        return self.outcome


# --------------------------------------------------------------------------------------- servers


def users(count: int) -> list[tuple[str, str]]:
    """The benchmark accounts: user1..userN, password 'secret' (plus CALLEE, created separately)."""
    return [(f"user{i}", PASSWORD) for i in range(1, count + 1)]


class Server:
    """A SIP server under test: started, its process tree's CPU read, stopped (SIGTERM)."""

    kind = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.kind}.log"
        self._log_fh = None

    @property
    def target(self) -> str:
        return f"{LOCAL}:{self.port}"

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self._log_fh = open(self.log, "ab")  # noqa: SIM115
        self._log_fh.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_fh.flush()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=env, start_new_session=True)

    def pids(self) -> list[int]:
        assert self.proc is not None
        return descendants(self.proc.pid)

    def cpu(self) -> CpuSample:
        return cpu_sample(self.pids())

    def cpu_parts(self) -> dict[str, CpuSample]:
        """The CPU of the server's processes by role (one part, ``server``, unless a server knows better)."""
        return {"server": self.cpu()}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None


def _toml_str(value: str) -> str:
    return json.dumps(value)


class CallpathServer(Server):
    """``.venv/bin/callpath run --config FILE`` with a temp data dir, SIP on UDP 127.0.0.1 only, no web."""

    kind = "callpath"

    def __init__(self, workdir: Path, data_dir: Path, *, auth: bool, b2bua_target: str | None = None,
                 log_level: str = "warning", web: bool = False, media: bool = False,
                 limiter: bool = False, anchor: str | None = None, max_calls: int | None = None) -> None:
        """`limiter`: keep the per-source flood limiter on (its default); load tests from one host turn it
        off, as an operator would for a benchmark, since every SIPp instance here shares 127.0.0.1.
        `anchor`: ``[calls] anchor`` (``always``: every call to a local user goes through call control and
        the media workers; needs ``media``). `max_calls`: ``[limits] max_calls`` (None: callpath's default;
        0: no cap. The cap counts a finished call while it lingers 32 s for late retransmissions, so with it
        a back-to-back or anchored call rate above ~5000 / (2 legs x 32 s) = 78/s is refused with 503 once
        the calls of the last 32 s add up; the throughput ramps turn it off)."""
        super().__init__(workdir)
        self.data_dir = data_dir
        self.web_port = free_udp_port() if web else 0   # /api/v1/status (RSS, loop lag) when asked for
        lines = [
            "[server]", f"data_dir = {_toml_str(str(data_dir))}", f"log_level = {_toml_str(log_level)}", "",
            "[sip]", f"listen = {_toml_str(LOCAL)}", f"domain = {_toml_str(DOMAIN)}",
            f"udp_port = {self.port}", "tcp_port = 0", "tls_port = 0",
            f"auth = {'true' if auth else 'false'}", 'auth_algorithms = ["MD5"]', "",
            "[web]", f"listen = {_toml_str(LOCAL)}", f"port = {self.web_port}", "",
        ]
        limits = [] if limiter else ["source_limit = 0"]
        if max_calls is not None:
            limits.append(f"max_calls = {int(max_calls)}")
        if limits:
            lines += ["[limits]", *limits, ""]
        if media:
            # ice_port 0: any free port, so that a run beside another callpath (or a test) does not collide
            lines += ["[media]", "enabled = true", f"listen = {_toml_str(LOCAL)}", f"advertise = {_toml_str(LOCAL)}",
                      "ice_port = 0", ""]
        else:   # media is on by default; a pure-SIP run measures the SIP process alone
            lines += ["[media]", "enabled = false", ""]
        if anchor:
            lines += ["[calls]", f"anchor = {_toml_str(anchor)}", ""]
        if b2bua_target:
            lines += ["[[sip.b2bua]]", f"number = {_toml_str(B2BUA_NUMBER)}",
                      f"target = {_toml_str(b2bua_target)}", ""]
        self.config = workdir / "callpath.toml"
        self.config.write_text("\n".join(lines))

    def start(self, timeout: float = 60.0) -> CallpathServer:
        self._spawn([str(callpath_script()), "run", "--config", str(self.config)], env=callpath_env())
        wait_until(lambda: "callpath ready" in tail(self.log, 100_000), timeout, "callpath", self.proc, self.log)
        return self

    def cpu_parts(self) -> dict[str, CpuSample]:
        """``sip``: the SIP process (``callpath run``); ``media``: every process below it (the media worker
        processes, and multiprocessing's resource tracker, which sleeps)."""
        assert self.proc is not None
        pids = self.pids()
        return {"sip": cpu_sample([self.proc.pid]), "media": cpu_sample([p for p in pids if p != self.proc.pid])}

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """GET /api/v1/status (needs web=True); None when it does not answer."""
        if not self.web_port:
            return None
        try:
            with urllib.request.urlopen(f"http://{LOCAL}:{self.web_port}/api/v1/status", timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None


def callpath_script() -> Path:
    script = CALLPATH_VENV / "bin" / "callpath"
    if not script.is_file():
        raise BenchError(f"{script} is missing: run `bash dev.sh test` (or pip install -e .) first")
    return script


def callpath_env() -> dict[str, str]:
    """The environment of callpath's processes: no CALLPATH_* overrides, and this checkout first on the
    module path, so that the code measured is the tree the benchmark runs from even when CALLPATH_VENV is
    another checkout's editable install (its finder comes after PYTHONPATH). A PYTHONPATH already set (as
    flood.py --snapshot sets it) stays in front."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPATH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [env.get("PYTHONPATH")]), str(REPO_ROOT)])
    return env


_ADD_USERS = """
import json, sys
from web.cli import main
config, batch = sys.argv[1], json.loads(sys.argv[2])
for name, password in batch:
    if main(["user", "add", name, "--password", password, "--config", config]):
        sys.exit(f"callpath user add {name} failed")
"""


def create_callpath_accounts(workdir: Path, data_dir: Path, accounts: Sequence[tuple[str, str]]) -> float:
    """The accounts in a fresh SQLite data dir: CALLEE with ``callpath user add`` (the console script),
    the N users through the same entry point (web.cli.main) in one process (a process per user costs
    about a second). Returns the seconds it took."""
    t0 = time.monotonic()
    config = workdir / "accounts.toml"
    config.write_text(f"[server]\ndata_dir = {_toml_str(str(data_dir))}\nlog_level = \"warning\"\n"
                      f"[sip]\ndomain = {_toml_str(DOMAIN)}\n")
    env = callpath_env()
    done = subprocess.run([str(callpath_script()), "user", "add", CALLEE, "--password", PASSWORD,
                           "--extension", CALLEE_EXTENSION, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=workdir)
    if done.returncode:
        raise BenchError(f"callpath user add {CALLEE}: {done.stdout}{done.stderr}")
    python = CALLPATH_VENV / "bin" / "python"
    done = subprocess.run([str(python), "-c", _ADD_USERS, str(config), json.dumps(list(accounts))],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    if done.returncode:
        raise BenchError(f"creating {len(accounts)} callpath accounts failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.monotonic() - t0


class KamailioServer(Server):
    """Kamailio in the foreground with benchmarks/sip/kamailio/kamailio.cfg, one UDP worker."""

    kind = "kamailio"

    def __init__(self, workdir: Path, *, auth: bool, accounts: Sequence[tuple[str, str]]) -> None:
        super().__init__(workdir)
        self.auth = auth
        self.pidfile = workdir / "kamailio.pid"
        self.dbdir = workdir / "dbtext"
        if auth:
            self._write_dbtext([*accounts, (CALLEE, PASSWORD)])

    def _write_dbtext(self, accounts: Sequence[tuple[str, str]]) -> None:
        self.dbdir.mkdir(parents=True, exist_ok=True)
        rows = ["id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string) "]
        for n, (user, password) in enumerate(accounts, 1):
            ha1 = hashlib.md5(f"{user}:{DOMAIN}:{password}".encode()).hexdigest()
            ha1b = hashlib.md5(f"{user}@{DOMAIN}:{DOMAIN}:{password}".encode()).hexdigest()
            rows.append(f"{n}:{user}:{DOMAIN}:{password}:{ha1}:{ha1b}")
        (self.dbdir / "subscriber").write_text("\n".join(rows) + "\n")
        (self.dbdir / "version").write_text("id(int,auto) table_name(string) table_version(int) \n1:subscriber:7\n")

    def command(self) -> list[str]:
        cmd = [kamailio_binary() or "kamailio", "-DD", "-E", "-f", str(KAMAILIO_CFG), "-l", f"udp:{LOCAL}:{self.port}",
               "-n", "1", "-x", "tlsf", "-m", "256", "-M", "16", "-P", str(self.pidfile), "-w", str(self.workdir),
               "-Y", str(self.workdir)]
        if self.auth:
            cmd += ["-A", "WITH_AUTH", "-A", f'DBURL="text://{self.dbdir}"']
        return cmd

    def start(self, timeout: float = 20.0) -> KamailioServer:
        self._spawn(self.command())
        wait_until(lambda: self.pidfile.exists() and udp_port_bound(self.port), timeout, "kamailio", self.proc, self.log)
        time.sleep(0.5)  # the workers finish their child_init
        return self


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next((p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")
                                             if Path(p).is_file()), None)


def kamailio_version() -> str:
    binary = kamailio_binary()
    if not binary:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"version: (kamailio [^\s]+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]


class SippyServer(Server):
    """Sippy's b2bua_simple (through sippy_b2bua.py: one UDP worker, no message logging)."""

    kind = "sippy"

    def __init__(self, workdir: Path, *, next_hop_port: int) -> None:
        super().__init__(workdir)
        self.next_hop_port = next_hop_port

    def start(self, timeout: float = 20.0) -> SippyServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPLOG_")}
        env.update({"SIPLOG_BEND": "none", "PYTHONUNBUFFERED": "1"})
        self._spawn([str(SIPPY_VENV / "bin" / "python"), str(SIPPY_WRAPPER), "-f", "-l", LOCAL, "-p", str(self.port),
                     "-n", f"{LOCAL}:{self.next_hop_port}"], env=env)
        wait_until(lambda: udp_port_bound(self.port), timeout, "sippy", self.proc, self.log)
        time.sleep(0.3)
        return self


def base_python(venv: Path) -> str:
    """The interpreter a virtualenv was made from (its pyvenv.cfg 'home' + python3), else sys.executable."""
    cfg = venv / "pyvenv.cfg"
    with contextlib.suppress(OSError):
        conf = dict(line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line)
        conf = {k.strip(): v.strip() for k, v in conf.items()}
        version = conf.get("version") or conf.get("version_info") or ""
        home = Path(conf.get("home", ""))
        major_minor = ".".join(version.split(".")[:2])
        for name in (f"python{major_minor}", "python3"):
            if (home / name).is_file():
                return str((home / name).resolve())
    return sys.executable


def python_info(python: str) -> dict[str, Any]:
    code = ("import json, platform, sys, sysconfig\n"
            "args = sysconfig.get_config_var('CONFIG_ARGS') or ''\n"
            "try:\n import uvloop; uv = uvloop.__version__\nexcept Exception: uv = None\n"
            "print(json.dumps({'version': platform.python_version(), 'implementation': platform.python_implementation(),"
            " 'executable': sys.executable, 'base_executable': getattr(sys, '_base_executable', sys.executable),"
            " 'pgo': '--enable-optimizations' in args, 'lto': '--with-lto' in args, 'uvloop': uv}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode:
        return {"error": done.stderr.strip()[-500:]}
    info = json.loads(done.stdout)
    real = os.path.realpath(info["base_executable"])
    info["base_executable"] = real
    info["build"] = ("Debian" if real.startswith("/usr/bin/") else
                     "pyenv" if "/.pyenv/" in real else "other")
    return info


def ensure_sippy(progress: Callable[[str], None]) -> tuple[bool, str]:
    """Sippy in benchmarks/.venv-sippy (created with callpath's base interpreter, so both run on the same
    Python); returns (usable, why-not or version)."""
    python = SIPPY_VENV / "bin" / "python"
    wanted = base_python(CALLPATH_VENV)
    if python.exists():
        have = base_python(SIPPY_VENV)
        if os.path.realpath(have) != os.path.realpath(wanted):
            progress(f"Sippy venv was made with {have}, callpath's with {wanted}: recreating it")
            shutil.rmtree(SIPPY_VENV)
    if not python.exists():
        progress(f"creating {SIPPY_VENV.relative_to(REPO_ROOT)} and installing sippy=={SIPPY_VERSION} from PyPI")
        done = subprocess.run([wanted, "-m", "venv", str(SIPPY_VENV)], capture_output=True, text=True, timeout=300)
        if done.returncode:
            return False, f"python -m venv failed: {done.stderr.strip()[-500:]}"
    check = subprocess.run([str(python), "-c", "import sippy.b2bua_simple, sippy.Udp_server"],
                           capture_output=True, text=True, timeout=60)
    if check.returncode:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"sippy=={SIPPY_VERSION}"],
                              capture_output=True, text=True, timeout=900)
        if done.returncode:
            return False, ("pip install sippy failed: "
                           + "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                                       if "WARNING: Location" not in line)[-800:])
        check = subprocess.run([str(python), "-c", "import sippy.b2bua_simple, sippy.Udp_server"],
                               capture_output=True, text=True, timeout=60)
        if check.returncode:
            return False, f"sippy installed but does not import: {check.stderr.strip()[-800:]}"
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('sippy'))"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    return True, version


def machine_info() -> dict[str, Any]:
    model = ""
    mhz = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and not mhz:
                mhz = line.split(":", 1)[1].strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "cpu_mhz": mhz, "kernel": os.uname().release,
            "hostname": socket.gethostname(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj

