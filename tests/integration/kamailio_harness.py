"""Debian's Kamailio as a SIP carrier for the trunk tests (config: tests/integration/kamailio/carrier.cfg).

    carrier = start_carrier(tmp_path, user="acme", password="secret", uas="sip:127.0.0.1:5099")
    carrier.port            # UDP and TCP on 127.0.0.1
    carrier.stop(); carrier.start()     # the same port again (a carrier outage)

``require_kamailio()`` skips a test when kamailio is not installed, and fails it under CI=true
(``bash dev.sh test`` installs the Debian package). The ``carrier_factory`` fixture stops every carrier it
started; a failed test gets the carrier's log in its output.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipp_harness import IN_CI, free_udp_port

CARRIER_CFG = Path(__file__).resolve().parent / "kamailio" / "carrier.cfg"


def kamailio_path() -> str | None:
    """The kamailio executable ($KAMAILIO, else PATH, else /usr/sbin), or None."""
    explicit = os.environ.get("KAMAILIO")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").is_file() else None)


def require_kamailio() -> str:
    """The kamailio executable; skips the test when absent, or fails it under CI=true."""
    path = kamailio_path()
    if path:
        return path
    msg = "kamailio is not installed (Debian package kamailio)"
    if IN_CI:
        pytest.fail(msg + " (CI=true: Kamailio is required)")
    pytest.skip(msg)


def options_ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> int | None:
    """Send one OPTIONS to host:port over UDP; the final status, or None without an answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    own = sock.getsockname()[1]
    msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{own};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
           f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:{host}:{port}>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
           "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    try:
        sock.sendto(msg.encode(), (host, port))
        while True:
            data = sock.recv(65535).decode(errors="replace")
            status = int(data.split(" ", 2)[1])
            if status >= 200:
                return status
    except (OSError, ValueError, IndexError):
        return None
    finally:
        sock.close()


class Carrier:
    """One kamailio process running carrier.cfg on 127.0.0.1:port (UDP and TCP)."""

    def __init__(self, workdir: Path, port: int, *, user: str, password: str, uas: str | None = None,
                 reject_all: bool = False) -> None:
        self.exe = require_kamailio()
        self.workdir = workdir
        self.port = port
        self.user = user
        self.password = password
        self.uas = uas
        self.reject_all = reject_all
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kamailio.log"
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.exe, "-DD", "-E", "-f", str(CARRIER_CFG), "-l", f"udp:127.0.0.1:{self.port}",
               "-l", f"tcp:127.0.0.1:{self.port}", "-n", "1", "-m", "64", "-M", "8", "-x", "tlsf",
               "-P", str(self.workdir / "kamailio.pid"), "-w", str(self.workdir),
               "-A", f'TRUNK_USER="{self.user}"', "-A", f'TRUNK_PASSWORD="{self.password}"']
        if self.uas:
            cmd += ["-A", f'UAS="{self.uas}"']
        if self.reject_all:
            cmd += ["-A", "REJECT_ALL"]
        return cmd

    def start(self, timeout: float = 15.0) -> "Carrier":
        """Start kamailio and wait until it answers an OPTIONS."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if options_ping(self.port) == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio did not answer OPTIONS on {self.address} within {timeout}s:\n"
                           f"{self.log()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group (kamailio forks workers), SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # the workers of the group are gone when the UDP port is free again
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and options_ping(self.port, timeout=0.1) is not None:
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_carrier(workdir: Path, *, user: str = "acme", password: str = "secret", uas: str | None = None,
                  reject_all: bool = False, port: int | None = None) -> Carrier:
    """A started Carrier on a free port (UDP and TCP free) of 127.0.0.1."""
    return Carrier(workdir, port or free_udp_port(also_tcp=True), user=user, password=password, uas=uas,
                   reject_all=reject_all).start()


@pytest.fixture
def carrier_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Carrier]]:
    """``carrier_factory(**kw)`` starts a carrier (see start_carrier); all are stopped at teardown, and their
    logs printed when the test failed."""
    carriers: list[Carrier] = []

    def make(**kw: object) -> Carrier:
        carrier = start_carrier(tmp_path / f"carrier{len(carriers)}", **kw)  # type: ignore[arg-type]
        carriers.append(carrier)
        return carrier

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for carrier in carriers:
        carrier.stop()
        if failed:
            print(f"--- kamailio log ({carrier.address}) ---\n{carrier.log()[-6000:]}")


__all__ = ["Carrier", "start_carrier", "carrier_factory", "require_kamailio", "kamailio_path", "options_ping",
           "CARRIER_CFG"]
