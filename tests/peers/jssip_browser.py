"""JsSIP in headless Chromium as a test agent: registers over callpath's /ws, calls or answers with real WebRTC
media (the fake microphone plays a tone), and measures what it hears with WebAudio.

One agent is one Chromium process (own profile) opening ``jssip_page.html``, served with a JsSIP bundle by a
loopback HTTP server (browser_helpers.PageServer, on its own event loop thread so the harness is
synchronous like CallpathServer and BaresipPhone). The page talks to the harness over that server:

- ``POST /event``: the page reports an event (``registered``, ``registrationFailed``, ``incoming``,
  ``progress``, ``accepted``, ``confirmed``, ``ended``, ``failed``, ``measured``, ``error``, ``log``);
- ``POST /poll``: the page long-polls for the test's commands (``call``, ``answer``, ``hangup``,
  ``measure``).

JsSIP comes from tests/js/node_modules (``npm ci`` there when missing, as test_jssip.py does); it ships as
CommonJS only, so ``bundle_commonjs`` wraps its module graph (JsSIP, debug, events, sdp-transform) into one
script. Chromium gets the launch flags of the bridge's browser test, which keep it off the network (host
resolution of everything but 127.0.0.1/localhost fails, no mDNS candidates, no component or media-router
traffic) and feed it a WAV tone as its microphone.

Usage::

    from peers.jssip_browser import JsSipBrowser, jssip_browsers

    agent = jssip_browsers("carol", server, "carol", "secret", tone_hz=500, answer="auto")
    agent.wait_registered()                     # the REGISTER's 200 (its status is in the event)
    agent.call("1002")                          # or: agent.wait_incoming(); agent.answer()
    agent.wait_confirmed()
    heard = agent.measure()                     # {"hz": median dominant frequency, "db": peak level, ...}
    agent.hangup(); agent.wait_ended()

Without Chromium, node or npm the tests skip; under CI=true they fail.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from browser.browser_helpers import Chromium, PageServer, chromium_binary, write_tone_wav

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "js"
NODE_MODULES = JS_DIR / "node_modules"
PAGE = Path(__file__).with_name("jssip_page.html")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: the page's long poll: how long POST /poll waits for a command before answering "none"
POLL_SECONDS = 2.0


class BrowserAgentError(AssertionError):
    """The browser agent did not do what the test waited for (the message carries its events and log)."""


def _unavailable(msg: str) -> None:
    if IN_CI:
        pytest.fail(msg + " (CI=true: the browser agent tests are required)")
    pytest.skip(msg)


def ensure_jssip() -> Path:
    """tests/js/node_modules with jssip in it (``npm ci`` when missing); skips without npm."""
    if (NODE_MODULES / "jssip" / "package.json").is_file():
        return NODE_MODULES
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is needed to install JsSIP into tests/js (Debian packages nodejs, npm)")
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        _unavailable("npm ci in tests/js took more than 300 s")
    if done.returncode != 0 or not (NODE_MODULES / "jssip" / "package.json").is_file():
        _unavailable(f"npm ci in tests/js failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return NODE_MODULES


# -- a CommonJS bundle for the browser -------------------------------------------------------------------------

_REQUIRE = re.compile(r"""\brequire\(\s*['"]([^'"]+)['"]\s*\)""")


def _as_file(base: Path) -> Path | None:
    for candidate in (base, base.with_name(base.name + ".js"), base.with_name(base.name + ".json"),
                      base / "index.js"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _resolve(spec: str, from_dir: Path) -> Path:
    """Node's resolution of ``spec`` from ``from_dir``, preferring a package's string ``browser`` field."""
    if spec.startswith(("./", "../")) or spec in (".", ".."):
        found = _as_file(from_dir / spec)
    else:   # a package (scoped names are not needed by JsSIP's graph)
        name, _, sub = spec.partition("/")
        found = None
        for folder in (from_dir, *from_dir.parents):
            package = folder / "node_modules" / name
            if package.is_dir():
                if sub:
                    found = _as_file(package / sub)
                else:
                    meta = json.loads((package / "package.json").read_text())
                    browser = meta.get("browser")
                    found = _as_file(package / (browser if isinstance(browser, str) else meta.get("main", "index.js")))
                break
    if found is None:
        raise FileNotFoundError(f"cannot resolve require({spec!r}) from {from_dir}")
    return found


def bundle_commonjs(entry: Path, global_name: str) -> str:
    """One browser script defining ``window[global_name]`` = the CommonJS module ``entry`` and its imports
    (relative files, packages in node_modules, JSON); ``process.env`` is an empty object."""
    ids: dict[Path, int] = {}
    order: list[Path] = []
    deps: dict[Path, dict[str, Path]] = {}
    pending = [entry.resolve()]
    ids[pending[0]] = 0
    order.append(pending[0])
    while pending:
        path = pending.pop()
        deps[path] = {}
        if path.suffix == ".json":
            continue
        for spec in sorted(set(_REQUIRE.findall(path.read_text()))):
            target = _resolve(spec, path.parent)
            deps[path][spec] = target
            if target not in ids:
                ids[target] = len(order)
                order.append(target)
                pending.append(target)
    parts = ["(function () {", "var process = {env: {}, browser: true};", "var defs = [];"]
    for path in order:
        source = path.read_text()
        body = f"module.exports = {source};" if path.suffix == ".json" else source
        mapping = json.dumps({spec: ids[target] for spec, target in deps[path].items()})
        parts.append(f"// {os.path.relpath(path, entry.parent)}\n"
                     f"defs[{ids[path]}] = [function (require, module, exports) {{\n{body}\n}}, {mapping}];")
    parts.append("""var cache = {};
function load(id) {
  if (cache[id]) return cache[id].exports;
  var module = cache[id] = {exports: {}};
  var def = defs[id];
  def[0].call(module.exports, function (spec) {
    if (!(spec in def[1])) throw new Error("bundle: module not bundled: " + spec);
    return load(def[1][spec]);
  }, module, module.exports);
  return module.exports;
}""")
    parts.append(f"window[{json.dumps(global_name)}] = load(0);")
    parts.append("})();")
    return "\n".join(parts)


_BUNDLE: str | None = None


def jssip_bundle() -> str:
    """JsSIP (tests/js/node_modules) as one browser script defining ``window.JsSIP`` (built once per run)."""
    global _BUNDLE
    if _BUNDLE is None:
        _BUNDLE = bundle_commonjs(ensure_jssip() / "jssip" / "lib" / "JsSIP.js", "JsSIP")
    return _BUNDLE


# -- the agent ----------------------------------------------------------------------------------------------------


class JsSipBrowser:
    """One JsSIP user agent in its own headless Chromium (see the module docstring)."""

    def __init__(self, workdir: Path, ws_url: str, uri: str, password: str, *, tone_hz: float = 500.0,
                 answer: str = "manual", name: str | None = None, debug: bool = False) -> None:
        if answer not in ("manual", "auto"):
            raise ValueError("answer is 'manual' or 'auto'")
        self.workdir = Path(workdir)
        self.name = name or self.workdir.name
        self.ws_url, self.uri, self.password = ws_url, uri, password
        self.tone_hz = tone_hz
        self.answer_mode = answer
        self.debug = debug
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: PageServer | None = None
        self._commands: asyncio.Queue[dict[str, Any]] | None = None
        self.chromium: Chromium | None = None

    # -- process
    def start(self) -> JsSipBrowser:
        binary = chromium_binary()
        bundle = jssip_bundle()
        self.workdir.mkdir(parents=True, exist_ok=True)
        wav = write_tone_wav(self.workdir / f"tone{int(self.tone_hz)}.wav", self.tone_hz, seconds=60.0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"jssip-page-{self.name}", daemon=True)
        self._thread.start()
        self._server = self._run(self._start_server(bundle.encode()))
        query = urlencode({"ws": self.ws_url, "uri": self.uri, "password": self.password,
                           "answer": self.answer_mode, "name": self.name, "debug": "1" if self.debug else ""})
        self.chromium = Chromium(binary, self.workdir / "profile", self.workdir / "chromium.log")
        self.chromium.start(self._server.url(query), wav)
        return self

    async def _start_server(self, bundle: bytes) -> PageServer:
        self._commands = asyncio.Queue()
        server = PageServer(PAGE.read_bytes(), {"event": self._on_event, "poll": self._on_poll},
                            assets={"/jssip.js": ("text/javascript; charset=utf-8", bundle)})
        return await server.start()

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _on_event(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self.events.append(body)
            self._cond.notify_all()
        return {}

    async def _on_poll(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self._commands is not None
        try:
            command = await asyncio.wait_for(self._commands.get(), POLL_SECONDS)
        except TimeoutError:
            return {"command": None}
        return {"command": command}

    def stop(self) -> None:
        """Kill Chromium (its process group), close the page server and stop its loop."""
        if self.chromium is not None:
            self.chromium.stop()
        if self._loop is not None:
            with contextlib.suppress(Exception):   # a stuck close must not hide the test's outcome
                self._run(self._shutdown(), timeout=5)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None

    async def _shutdown(self) -> None:
        """Close the page server and end its pending requests (long polls) before the loop stops."""
        if self._server is not None:
            await self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def log(self, lines: int = 80) -> str:
        """The page's events and the end of Chromium's log, for failure messages."""
        with self._cond:
            events = "\n".join(json.dumps(e)[:600] for e in self.events)
        errors = "\n".join(self._server.errors) if self._server is not None else ""
        chromium = self.chromium.log_tail(lines) if self.chromium is not None else ""
        return f"--- {self.name} events ---\n{events}\n--- page server errors ---\n{errors}\n" \
               f"--- {self.name} chromium log ---\n{chromium}"

    # -- commands
    def send(self, op: str, **fields: Any) -> None:
        """Queue a command for the page (it picks it up within its long poll)."""
        assert self._loop is not None and self._commands is not None
        self._loop.call_soon_threadsafe(self._commands.put_nowait, {"op": op, **fields})

    def call(self, target: str) -> None:
        """Call ``target`` (an extension, a user, or a sip: URI) with the fake microphone."""
        self.send("call", target=target)

    def answer(self) -> None:
        """Answer the ringing incoming call (with the fake microphone)."""
        self.send("answer")

    def hangup(self) -> None:
        self.send("hangup")

    def hold(self) -> None:
        """Put the current call on hold (re-INVITE with sendonly)."""
        self.send("hold")

    def unhold(self) -> None:
        self.send("unhold")

    def refer(self, target: str, session: int = 0, replaces: int | None = None) -> None:
        """Transfer this agent's call number ``session`` (0: its first) to ``target``: blind, or attended
        with ``replaces`` naming the agent's consultation call (REFER with Replaces in the Refer-To)."""
        self.send("refer", target=target, session=session, replaces=replaces)

    def measure(self, seconds: float = 1.0, timeout: float = 15.0) -> dict[str, Any]:
        """What the agent hears now: ``{"hz": median dominant frequency, "db": strongest bin (dBFS),
        "peaks": [...], "inbound": {...packetsReceived...}}``, measured by WebAudio over ``seconds``."""
        start = len(self.events)
        self.send("measure", seconds=seconds)
        return self.wait_for("measured", start=start, timeout=timeout + seconds)

    # -- waits
    def wait_for(self, names: str | tuple[str, ...], *, fail_on: tuple[str, ...] = ("error",), start: int = 0,
                 timeout: float = 15.0) -> dict[str, Any]:
        """The first event (from index ``start``) named in ``names``; BrowserAgentError on one of ``fail_on``,
        on timeout, or when Chromium exits."""
        wanted = (names,) if isinstance(names, str) else names
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[start:]:
                    if event.get("event") in fail_on:
                        raise BrowserAgentError(f"{self.name}: {json.dumps(event)} while waiting for "
                                                f"{'/'.join(wanted)}\n{self.log()}")
                    if event.get("event") in wanted:
                        return event
                if self.chromium is None or not self.chromium.running:
                    raise BrowserAgentError(f"{self.name}: chromium exited before {'/'.join(wanted)}\n{self.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrowserAgentError(f"{self.name}: no {'/'.join(wanted)} within {timeout:g}s\n{self.log()}")
                self._cond.wait(min(remaining, 0.2))

    def wait_registered(self, timeout: float = 20.0) -> dict[str, Any]:
        """The ``registered`` event (``status``: the REGISTER's final status); fails on registrationFailed."""
        return self.wait_for("registered", fail_on=("error", "registrationFailed"), timeout=timeout)

    def wait_incoming(self, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_for("incoming", timeout=timeout)

    def wait_confirmed(self, timeout: float = 20.0) -> dict[str, Any]:
        """The call is up (ACK sent or received) and its audio is wired to the analyser."""
        return self.wait_for("confirmed", fail_on=("error", "failed", "ended"), timeout=timeout)

    def wait_ended(self, timeout: float = 15.0) -> dict[str, Any]:
        """``ended`` or ``failed`` (the event carries ``cause`` and, for failures, the SIP ``status``)."""
        return self.wait_for(("ended", "failed"), timeout=timeout)


def ws_url(server: Any) -> str:
    """The SIP-over-WebSocket URL of a CallpathServer (sipp_harness)."""
    web = server.settings["web"]
    return f"ws://{web.get('listen', '127.0.0.1')}:{web['port']}/ws"


@pytest.fixture
def jssip_browsers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., JsSipBrowser]]:
    """``agents(name, server, user, password, tone_hz=..., answer="manual"|"auto")`` starts a JsSipBrowser
    registered as ``user`` at ``server`` (a CallpathServer); all are stopped at teardown, their logs printed
    when the test failed."""
    chromium_binary()   # skip (or fail under CI) before the test starts servers
    jssip_bundle()
    agents: list[JsSipBrowser] = []

    def make(name: str, server: Any, user: str, password: str, **kwargs: Any) -> JsSipBrowser:
        agent = JsSipBrowser(tmp_path / name, ws_url(server), f"sip:{user}@{server.domain}", password, name=name,
                             **kwargs)
        agents.append(agent)
        return agent.start()

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for agent in agents:
            print(agent.log())
    for agent in agents:
        agent.stop()


__all__ = ["BrowserAgentError", "JsSipBrowser", "bundle_commonjs", "ensure_jssip", "jssip_browsers",
           "jssip_bundle", "ws_url"]
