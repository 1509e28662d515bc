"""A real browser SIP stack against callpath: JsSIP (npm `jssip`) in Node.js over SIP over WebSocket.

tests/js/jssip_agent.js runs a JsSIP UA with `JsSIP.WebSocketInterface` (WebSocket from the `ws`
package: Node 20 has no global WebSocket) and a stand-in RTCPeerConnection that offers/answers a
hand-built SDP (Node has no WebRTC; the media bridge is a later issue). It prints one JSON line per
event. SIPp (tests/sipp) is the other end of each call.

What is proved:

- JsSIP registers to ``ws://.../ws`` with its password (digest, MD5 challenge) and sees its contact in
  the 200; an INVITE from SIPp (uac.xml, authenticated) to 1001 reaches it with the caller's From and
  its own contact as Request-URI; it rejects with 486, which reaches SIPp;
- JsSIP answers (hand-built SDP), gets the ACK and SIPp's BYE through callpath;
- JsSIP places a call through callpath (answering the 407 itself) to a registered SIPp UAS and hangs up;
- JsSIP registers against callpath's default digest settings.

Node.js and npm are needed (the packages are installed into tests/js/node_modules when missing); the
tests skip without them, except under CI=true, where that is a failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipp_harness import (
    CallpathServer, free_udp_port, require_sipp, run_sipp, start_callpath, start_sipp,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "js"
AGENT = JS_DIR / "jssip_agent.js"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

ALICE = ("alice", "secret", "1001")     # the JsSIP agent
BOB = ("bob", "bobsecret", "1002")      # SIPp

#: JsSIP keeps only the last WWW-Authenticate/Proxy-Authenticate header of a response (its parser
#: stores them with setHeader) and answers MD5 only; see test_jssip_registers_with_default_auth_settings.
MD5_ONLY = {"auth_algorithms": ["MD5"]}


# ------------------------------------------------------------------------------------ node + packages


def _unavailable(msg: str) -> None:
    if IN_CI:
        pytest.fail(msg + " (CI=true: the JsSIP tests are required)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with jssip and ws installed in tests/js/node_modules."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if not node_bin or not npm_bin:
        _unavailable("node and npm are needed for the JsSIP tests (Debian packages nodejs, npm)")
    needed = [JS_DIR / "node_modules" / name / "package.json" for name in ("jssip", "ws")]
    if not all(p.is_file() for p in needed):
        try:
            done = subprocess.run([npm_bin, "install", "--no-audit", "--no-fund"], cwd=JS_DIR,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _unavailable("npm install in tests/js took more than 300 s")
        if done.returncode != 0 or not all(p.is_file() for p in needed):
            _unavailable(f"npm install in tests/js failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return node_bin  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- the agent


class JsSipAgent:
    """tests/js/jssip_agent.js as a subprocess; its JSON event lines are collected by a thread."""

    def __init__(self, node: str, server: CallpathServer, user: tuple[str, str, str], *args: str,
                 log_path: Path | None = None) -> None:
        web = server.settings["web"]
        self.command = [node, str(AGENT), "--ws", f"ws://{web['listen']}:{web['port']}/ws",
                        "--uri", f"sip:{user[0]}@{server.domain}", "--password", user[1], *args]
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8") if log_path else None  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, cwd=JS_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        self._reader = threading.Thread(target=self._read, name="jssip-agent", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            event = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
            with self._cond:
                self.lines.append(line)
                if isinstance(event, dict) and "event" in event:
                    self.events.append(event)
                self._cond.notify_all()
            if self._log is not None:
                self._log.write(line + "\n")
                self._log.flush()
        with self._cond:
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, name: str | tuple[str, ...], test: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
        """The first event named `name` (or one of the names) for which `test` holds."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev["event"] in names and (test is None or test(ev)):
                        return ev
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"jssip_agent exited ({self.proc.returncode}) before {names}:\n"
                                         f"{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {names} event from jssip_agent within {timeout}s:\n{self.output()}")
                self._cond.wait(min(remaining, 0.2))

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [ev for ev in self.events if ev["event"] == name]

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (the agent unregisters and exits), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


@pytest.fixture
def run_agent(node, tmp_path, request) -> Iterator[Callable[..., JsSipAgent]]:
    """run_agent(server, *args) starts jssip_agent.js as alice; every agent is stopped at teardown."""
    agents: list[JsSipAgent] = []

    def start(server: CallpathServer, *args: str) -> JsSipAgent:
        agent = JsSipAgent(node, server, ALICE, *args, log_path=tmp_path / f"jssip-agent-{len(agents)}.log")
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for i, agent in enumerate(agents):
            print(f"--- jssip_agent {i} ---\n{agent.output()[-20000:]}")


@pytest.fixture
def callpath(tmp_path, request) -> Iterator[Callable[..., CallpathServer]]:
    """callpath(**settings) starts a server with alice and bob (auth on, SIP trace on); stopped at teardown."""
    servers: list[CallpathServer] = []

    def start(**settings: Any) -> CallpathServer:
        # JsSIP runs under Node here: SIP over WebSocket without a WebRTC stack, so its SDP passes through a
        # proxied call (anchor "never"); calls with browser media are tests/integration/test_browser_calls.py
        settings.setdefault("calls", {"anchor": "never"})
        server = start_callpath(tmp_path / f"callpath{len(servers)}", users=[ALICE, BOB], sip_trace=True,
                                **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for server in servers:
            print("--- callpath output (end) ---\n" + server.output()[-30000:])


def sipp_received(log: str, status: int) -> bool:
    """Whether SIPp's message trace shows a response `status` it received."""
    return re.search(rf"message received \[\d+\] bytes :\s*\n\s*SIP/2\.0 {status} ", log) is not None


def uri_user(uri: str) -> str:
    return uri.split(":", 1)[1].split("@", 1)[0]




# -------------------------------------------------------------------------------------------- tests


def test_jssip_registers_and_rejects_an_incoming_call_with_486(callpath, run_agent, tmp_path):
    require_sipp()
    server = callpath(sip=MD5_ONLY)
    agent = run_agent(server, "--on-invite", "reject", "--reject-code", "486")
    start = agent.wait_for("start")
    assert start["websocket"] in ("ws", "native")
    reg = agent.wait_for(("registered", "registrationFailed"), timeout=10)
    assert reg["event"] == "registered", agent.output()
    assert reg["status"] == 200
    contact = reg["contact"].strip("<>")
    assert contact.endswith(".invalid;transport=ws"), reg
    assert any(c.startswith(f"<{contact}>") and "expires=" in c for c in reg["contacts"]), reg

    result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]],
                      service=ALICE[2], keys=server.sipp_keys(), timeout=10, workdir=tmp_path / "sipp-uac")

    incoming = agent.wait_for("incoming", timeout=5)
    assert incoming["from_user"] == BOB[0], incoming
    assert incoming["ruri"] == contact, incoming  # callpath forwarded to the registered contact
    assert uri_user(incoming["to"].strip("<>").split(">")[0]) == ALICE[2], incoming
    failed = agent.wait_for("failed", lambda ev: ev["call_id"] == incoming["call_id"], timeout=5)
    assert failed["originator"] == "local" and failed["cause"] == "Rejected", failed

    # the caller got the 486 (uac.xml expects a 200, so SIPp counts the call as failed)
    assert result.failed == 1 and result.successful == 0, result.log
    assert sipp_received(result.log, 486), result.log


def test_jssip_answers_and_the_caller_hangs_up(callpath, run_agent, tmp_path):
    require_sipp()
    server = callpath(sip=MD5_ONLY)
    agent = run_agent(server, "--on-invite", "answer")
    assert agent.wait_for(("registered", "registrationFailed"))["event"] == "registered", agent.output()

    result = run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]],
                      service=ALICE[2], duration_ms=300, keys=server.sipp_keys(), timeout=10,
                      workdir=tmp_path / "sipp-uac")
    incoming = agent.wait_for("incoming", timeout=5)
    assert incoming["from_user"] == BOB[0], incoming
    agent.wait_for("accepted", lambda ev: ev["call_id"] == incoming["call_id"], timeout=5)
    agent.wait_for("confirmed", lambda ev: ev["call_id"] == incoming["call_id"], timeout=3)
    ended = agent.wait_for(("ended", "failed"), lambda ev: ev["call_id"] == incoming["call_id"], timeout=5)
    assert ended["event"] == "ended" and ended["originator"] == "remote", ended
    result.check(calls=1)
    assert result.successful == 1 and result.failed == 0, result.log


def test_jssip_calls_a_registered_sipp_uas(callpath, run_agent, tmp_path):
    require_sipp()
    server = callpath(sip=MD5_ONLY)
    uas_port = free_udp_port()
    with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=20, workdir=tmp_path / "sipp-uas") as uas:
        run_sipp("register_loop.xml", server.target, local_port=free_udp_port(), users_csv=[BOB[:2]],
                 keys=server.sipp_keys(contact_port=uas_port), timeout=10,
                 workdir=tmp_path / "sipp-register").check(calls=1)
        agent = run_agent(server, "--call", f"sip:{BOB[2]}@{server.domain}", "--hangup-after", "300")
        assert agent.wait_for(("registered", "registrationFailed"))["event"] == "registered", agent.output()
        outgoing = agent.wait_for("outgoing")
        agent.wait_for("accepted", lambda ev: ev["originator"] == "remote", timeout=5)
        agent.wait_for("confirmed", timeout=5)
        ended = agent.wait_for(("ended", "failed"), timeout=5)
        assert ended["event"] == "ended" and ended["originator"] == "local", ended
        assert ended["call_id"] == outgoing["call_id"]
        uas_result = uas.wait(timeout=10)
    uas_result.check(calls=1)
    # the INVITE the UAS saw came from JsSIP through callpath (callpath's Via, then JsSIP's WS one) ...
    assert re.search(r"Via: SIP/2\.0/WS [a-z0-9]+\.invalid;", uas_result.log), uas_result.log
    # ... after JsSIP answered callpath's 407 over the WebSocket itself
    assert re.search(r">>> [^\n]* ws [^\n]*\nSIP/2\.0 407 ", server.output()), server.output()[-5000:]


def test_jssip_registers_with_default_auth_settings(callpath, run_agent):
    """JsSIP keeps only the LAST challenge header and speaks only MD5: the default (MD5 alone) suits it, and
    with SHA-256 added callpath puts MD5 last over WebSocket (test_websocket covers that order)."""
    server = callpath()
    agent = run_agent(server)
    reg = agent.wait_for(("registered", "registrationFailed"), timeout=10)
    assert reg["event"] == "registered", agent.output()
