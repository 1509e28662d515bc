"""SIPp on loopback against callpath's SIP core, side by side with Kamailio (registrar, proxy) and Sippy (B2BUA).

    python benchmarks/sip/run.py [--quick] [--only register|proxy|b2bua] [--no-kamailio] [--no-sippy]

What it measures (every server on 127.0.0.1, one UDP socket, SIPp 3.6 as the load on the same machine):

  register  one registration per SIPp call (tests/sipp/register_loop_noauth.xml: REGISTER -> 200;
            register_loop.xml: REGISTER -> 401 -> REGISTER with MD5 digest -> 200), users user1..user100
  proxy     a proxied call per SIPp call: tests/sipp/uac_noauth.xml / uac.xml (INVITE [-> 407 -> ACK ->
            INVITE with Proxy-Authorization] -> 100/180/200 -> ACK -> BYE -> 200) to a SIPp UAS
            (tests/sipp/uas.xml) registered as "callee"; the server record-routes, so ACK and BYE cross it
  b2bua     a back-to-back call per SIPp call: callpath's [[sip.b2bua]] number 9000 (or Sippy's
            b2bua_simple) answers and re-originates to a SIPp UAS (benchmarks/sip/scenarios/*.xml)
  anchored  an anchored call per SIPp call: callpath with [media] on and [calls] anchor = "always" answers
            the call to "callee" (a SIPp UAS registered as that user) through call control and connects it
            to a second leg, both legs' media in the media worker process; CPU of the SIP process and the
            media worker(s), apart and summed. Sippy's b2bua_simple (no media relay) side by side. SIPp sends
            no RTP: the cost is the signalling plus setting up and tearing down the two media legs
  anchored-rtp  the same with RTP: both SIPp sides stream PCMU (rtp_stream) for the whole call (10 s), so
            the media worker relays 2 x 50 packets/s per call (benchmarks/sip/scenarios/*_rtp.xml); not
            run by default

For each: a fixed offered rate below saturation (server CPU per operation: utime+stime of the server's
processes from /proc/PID/stat before/after, less its idle CPU, divided by the completed operations), then
a ramp of higher rates (the highest rate sustained with zero failed calls and >= 90 % of the offered rate).
A run with any failed SIPp call is reported as FAILED, not as a throughput.

Results: a table on stdout, benchmarks/sip/results/latest.json and latest.md (results/ is not in git).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sipbench as sb  # noqa: E402

RESULTS_DIR = sb.HERE / "results"
N_USERS = 100

# offered rates: (fixed rate, ramp rates), per benchmark; counts follow from the durations
PLAN_FULL = {
    "register": {"fixed_rate": 500, "fixed_s": 20, "ramp": [1000, 2000, 3000, 4000, 6000, 8000, 12000], "step_s": 3},
    "proxy": {"fixed_rate": 100, "fixed_s": 20, "ramp": [200, 300, 400, 600, 800, 1200, 1600], "step_s": 3},
    "b2bua": {"fixed_rate": 50, "fixed_s": 20, "ramp": [100, 150, 200, 300, 400, 600, 800], "step_s": 3},
    "anchored": {"fixed_rate": 50, "fixed_s": 20, "ramp": [75, 100, 150, 200, 300, 400, 600], "step_s": 3},
    # 10 s calls: 10/s is 100 calls streaming at once (2 x 50 packets/s each through the worker)
    "anchored-rtp": {"fixed_rate": 10, "fixed_s": 20, "ramp": [20, 30], "step_s": 5, "call_s": 10},
}
PLAN_QUICK = {
    "register": {"fixed_rate": 500, "fixed_s": 3, "ramp": [2000, 4000], "step_s": 2},
    "proxy": {"fixed_rate": 100, "fixed_s": 3, "ramp": [200, 400], "step_s": 2},
    "b2bua": {"fixed_rate": 50, "fixed_s": 3, "ramp": [100, 200], "step_s": 2},
    "anchored": {"fixed_rate": 50, "fixed_s": 3, "ramp": [100, 150], "step_s": 2},
    "anchored-rtp": {"fixed_rate": 10, "fixed_s": 5, "ramp": [], "step_s": 2, "call_s": 5},
}
#: a fixed-rate run during which other processes (other people's work on a shared machine) used more than
#: this share of a CPU is repeated (up to --retries times) and the quietest run kept
NOISY_BACKGROUND_PCT = 25.0
#: a ramp step passes when it has no failed call and reaches this share of the offered rate
RAMP_MIN_SHARE = 0.9
#: a ramp that stops while the server used less than this share of a CPU was stopped by the load generator
#: (SIPp's UAC/UAS on the same 2 cores) or by other processes, not by the server
CLIENT_BOUND_UTIL_PCT = 50.0
#: Kamailio 5.6 reference figures from the issue (µs of CPU per operation, "this kind of machine")
ISSUE_REFERENCE_US = {("register", "noauth"): 15, ("register", "auth"): 28, ("proxy", "auth"): 108}
TARGET_VS_KAMAILIO = 4.0   # callpath CPU/op <= 4x Kamailio's
TARGET_VS_SIPPY = 0.25     # callpath CPU/call <= 1/4 of Sippy's

OP_NAME = {"register": "registration", "proxy": "call", "b2bua": "call", "anchored": "call", "anchored-rtp": "call"}


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """Progress on stderr: one line per step; a live status line on a terminal, a line every 5 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last_plain = 0.0
        self._status_len = 0
        self.t0 = time.monotonic()

    def _stamp(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"[{s // 60:2d}:{s % 60:02d}]"

    def line(self, text: str) -> None:
        self._clear()
        print(f"{self._stamp()} {text}", file=sys.stderr, flush=True)

    def status(self, text: str) -> None:
        if self.tty:
            self._clear()
            text = f"{self._stamp()} {text}"
            sys.stderr.write(text)
            sys.stderr.flush()
            self._status_len = len(text)
        elif time.monotonic() - self._last_plain >= 5:
            self._last_plain = time.monotonic()
            print(f"{self._stamp()} {text}", file=sys.stderr, flush=True)

    def _clear(self) -> None:
        if self.tty and self._status_len:
            sys.stderr.write("\r" + " " * self._status_len + "\r")
            self._status_len = 0


# ------------------------------------------------------------------------------------------- results


@dataclass
class Run:
    """One SIPp load run against a server at one offered rate."""

    label: str
    offered_rate: float
    ops: int
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    uas_failed: int | None = None
    wall_s: float = 0.0
    sipp_elapsed_s: float = 0.0
    achieved_rate: float = 0.0
    response_ms: float | None = None
    server_cpu_s: float = 0.0
    server_cpu_sched_s: float = 0.0
    idle_cpu_s: float = 0.0
    cpu_per_op_us: float | None = None
    #: the server's CPU by role (callpath: "sip" = the SIP process, "media" = the media worker processes),
    #: seconds in the run and µs per completed operation (idle CPU of that role subtracted)
    cpu_parts_s: dict[str, float] = field(default_factory=dict)
    cpu_per_op_parts_us: dict[str, float] = field(default_factory=dict)
    cpu_per_op_sched_us: float | None = None
    server_util_pct: float = 0.0
    load_cpu_s: float = 0.0
    background_cpu_pct: float = 0.0
    ok: bool = False
    error: str = ""


@dataclass
class CaseResult:
    bench: str
    variant: str
    server: str
    status: str = "not run"          # ok | failed | skipped | not available yet
    reason: str = ""
    idle_cpu_pct: float = 0.0
    idle_parts_pct: dict[str, float] = field(default_factory=dict)
    fixed: Run | None = None
    ramp: list[Run] = field(default_factory=list)
    max_sustained_rate: float | None = None
    max_sustained_offered: float | None = None
    max_cpu_per_op_us: float | None = None
    #: what ended the ramp: "server" (it used >= CLIENT_BOUND_UTIL_PCT of a CPU at the failing step),
    #: "load generator" (it did not: SIPp or other processes were the limit), or "top of ramp"
    ramp_limit: str = ""
    uas_summary: str = ""
    workdir: str = ""


# --------------------------------------------------------------------------------------------- cases


class Bench:
    """Runs the cases and collects CaseResults."""

    def __init__(self, args: argparse.Namespace, progress: Progress, workroot: Path) -> None:
        self.args = args
        self.p = progress
        self.root = workroot
        self.plan = PLAN_QUICK if args.quick else PLAN_FULL
        self.accounts = sb.users(N_USERS)
        self.users_csv = sb.write_users_csv(workroot / "users.csv", self.accounts)
        self.callee_csv = sb.write_users_csv(workroot / "callee.csv", [(sb.CALLEE, sb.PASSWORD)])
        self._data_dir: Path | None = None
        self.results: list[CaseResult] = []
        self.case_no = 0
        self.case_total = 0

    # -- accounts (created once per run, in a SQLite data dir shared by the callpath servers in turn)
    def callpath_data_dir(self) -> Path:
        if self._data_dir is None:
            data = self.root / "callpath-data"
            self.p.line(f"creating {N_USERS + 1} callpath accounts (callpath user add) in {data}")
            took = sb.create_callpath_accounts(self.root, data, self.accounts)
            self.p.line(f"  accounts created in {took:.1f}s")
            self._data_dir = data
        return self._data_dir

    # -- one load run
    def measure(self, server: sb.Server, label: str, rate: float, ops: int, make_uac: Callable[..., sb.Sipp],
                idle_rate: float, uas: sb.Sipp | None = None, check_uas: bool = False, margin_s: float = 30,
                idle_parts: dict[str, float] | None = None, call_s: float = 0.0) -> Run:
        """One UAC run of ``ops`` calls at ``rate``; SIPp gives up ``margin_s`` after the last call is due.
        ``idle_parts``: the idle CPU rate of each of the server's parts (``Server.cpu_parts``). ``call_s``: how
        long each call lasts (the achieved rate is over the seconds calls were started in, not their end)."""
        run = Run(label=label, offered_rate=rate, ops=ops)
        parts_before = server.cpu_parts()
        uas_before = uas.progress() if (uas is not None and check_uas) else None
        uas_cpu0 = sb.cpu_sample([uas.pid]).seconds if uas is not None else 0.0
        times0 = os.times()
        busy0 = sb.system_busy_seconds()
        before = server.cpu()
        uac = make_uac(rate=rate, calls=ops, timeout_s=ops / rate + margin_s, name=label)
        uac.start()
        expected = ops / rate

        def tick(s: sb.Sipp) -> None:
            done, failed, retrans = s.progress()
            elapsed = time.monotonic() - before.at
            self.p.status(f"    {label}: {done}/{ops} ok, {failed} failed, {retrans} retrans, "
                          f"{elapsed:4.0f}s of ~{expected:.0f}s")

        outcome = uac.wait(timeout=ops / rate + 60, on_tick=tick)
        time.sleep(0.3)  # late retransmissions/ACKs reach the server
        after = server.cpu()
        parts_after = server.cpu_parts()
        busy1 = sb.system_busy_seconds()
        times1 = os.times()
        uas_cpu1 = sb.cpu_sample([uas.pid]).seconds if uas is not None else 0.0
        run.wall_s = after.at - before.at
        run.successful, run.failed = outcome.successful, outcome.failed
        run.retransmissions, run.failure_kinds = outcome.retransmissions, outcome.failure_kinds
        run.sipp_elapsed_s = outcome.elapsed_s
        run.achieved_rate = (outcome.successful / (outcome.elapsed_s - call_s)
                             if call_s and outcome.elapsed_s > call_s else outcome.rate)
        run.response_ms = outcome.response_ms
        run.server_cpu_s = after.seconds - before.seconds
        run.server_cpu_sched_s = (after.sched_ns - before.sched_ns) / 1e9
        run.idle_cpu_s = idle_rate * run.wall_s
        if run.successful:
            run.cpu_per_op_us = max(0.0, run.server_cpu_s - run.idle_cpu_s) / run.successful * 1e6
            run.cpu_per_op_sched_us = max(0.0, run.server_cpu_sched_s - run.idle_cpu_s) / run.successful * 1e6
        for part, a in parts_before.items():
            b = parts_after.get(part)
            if b is None:
                continue
            used = b.seconds - a.seconds
            run.cpu_parts_s[part] = round(used, 3)
            if run.successful:
                idle_part = (idle_parts or {}).get(part, 0.0) * run.wall_s
                run.cpu_per_op_parts_us[part] = round(max(0.0, used - idle_part) / run.successful * 1e6, 1)
        run.server_util_pct = 100 * run.server_cpu_s / run.wall_s if run.wall_s else 0.0
        uac_cpu = (times1.children_user + times1.children_system) - (times0.children_user + times0.children_system)
        own_cpu = (times1.user + times1.system) - (times0.user + times0.system)
        run.load_cpu_s = uac_cpu + (uas_cpu1 - uas_cpu0)
        other = (busy1 - busy0) - run.server_cpu_s - run.load_cpu_s - own_cpu
        run.background_cpu_pct = max(0.0, 100 * other / run.wall_s) if run.wall_s else 0.0
        if uas_before is not None and uas is not None:
            time.sleep(2.2)  # the UAS keeps each call 1 s (timewait), its statistics row comes every second
            run.uas_failed = uas.progress()[1] - uas_before[1]
        run.ok = outcome.ok and not run.uas_failed and server.alive()
        if not run.ok:
            why = [outcome.summary()]
            if run.uas_failed:
                why.append(f"the UAS counted {run.uas_failed} failed calls")
            if not server.alive():
                why.append(f"the server exited: {sb.tail(server.log, 1500)}")
            if outcome.errors:
                why.append("SIPp errors (end): " + outcome.errors[-1500:])
            run.error = "\n".join(why)
        return run

    def idle_rate(self, server: sb.Server, seconds: float) -> tuple[float, dict[str, float]]:
        """The server's idle CPU (share of a CPU), in all and by part (``Server.cpu_parts``)."""
        self.p.status(f"    measuring idle CPU for {seconds:.0f}s")
        a, pa = server.cpu(), server.cpu_parts()
        time.sleep(seconds)
        b, pb = server.cpu(), server.cpu_parts()
        span = b.at - a.at
        parts = {k: (pb[k].seconds - pa[k].seconds) / span for k in pa if k in pb}
        return (b.seconds - a.seconds) / span, parts

    # -- the common shape of every case: warm-up, idle, fixed rate, ramp
    def load_phases(self, res: CaseResult, server: sb.Server, make_uac: Callable[..., sb.Sipp],
                    uas: sb.Sipp | None = None) -> None:
        plan = self.plan[res.bench]
        rate = plan["fixed_rate"]
        tag = f"{res.server} {res.bench}/{res.variant}"
        warm = self.measure(server, "warmup", rate, max(20, int(rate * (1 if self.args.quick else 2))), make_uac, 0.0)
        if not warm.ok:
            res.status, res.reason = "failed", f"warm-up run failed: {warm.error}"
            return
        time.sleep(0.5)
        idle, idle_parts = self.idle_rate(server, 1.0 if self.args.quick else 2.0)
        res.idle_cpu_pct = 100 * idle
        res.idle_parts_pct = {k: round(100 * v, 2) for k, v in idle_parts.items()}
        ops = int(rate * plan["fixed_s"])
        self.p.line(f"  {tag}: fixed rate {rate}/s, {ops} {OP_NAME[res.bench]}s")
        fixed = self.measure(server, f"fixed-{rate}", rate, ops, make_uac, idle, uas=uas, check_uas=uas is not None,
                             idle_parts=idle_parts, call_s=plan.get("call_s", 0))
        self.p.line(f"    -> {self._run_text(fixed)}")
        for attempt in range(self.args.retries):
            if not fixed.ok or fixed.background_cpu_pct <= NOISY_BACKGROUND_PCT:
                break
            self.p.line(f"    other processes used {fixed.background_cpu_pct:.0f}% of a CPU meanwhile: "
                        f"measuring again ({attempt + 1}/{self.args.retries})")
            time.sleep(1.0)
            again = self.measure(server, f"fixed-{rate}-again{attempt + 1}", rate, ops, make_uac, idle, uas=uas,
                                 check_uas=uas is not None, idle_parts=idle_parts, call_s=plan.get("call_s", 0))
            self.p.line(f"    -> {self._run_text(again)}")
            if not again.ok:
                fixed = again
                break
            if again.background_cpu_pct < fixed.background_cpu_pct:
                fixed = again
        res.fixed = fixed
        if not fixed.ok:
            res.status, res.reason = "failed", f"fixed-rate run failed: {fixed.error}"
            return
        res.status = "ok"
        if self.args.no_ramp:
            return
        self.p.line(f"  {tag}: ramp {', '.join(map(str, plan['ramp']))}/s, {plan['step_s']}s each "
                    f"(stops at the first step with failures or < {RAMP_MIN_SHARE:.0%} of the offered rate)")
        best: Run | None = fixed
        for step_rate in plan["ramp"]:
            time.sleep(0.5)
            step = self.measure(server, f"ramp-{step_rate}", step_rate, int(step_rate * plan["step_s"]),
                                make_uac, idle, uas=uas,
                                margin_s=(8 if self.args.quick else 12) + plan.get("call_s", 0),
                                idle_parts=idle_parts, call_s=plan.get("call_s", 0))
            passed = step_passed(step)
            if step.ok and not passed:
                step.error = (f"reached {step.achieved_rate:.0f}/s of {step_rate}/s offered "
                              f"(< {RAMP_MIN_SHARE:.0%})")
            res.ramp.append(step)
            self.p.line(f"    ramp {step_rate}/s -> {self._run_text(step)}{'' if passed else '  (stop)'}")
            if not passed:
                break
            best = step
        res.ramp_limit = ramp_limit(res)
        if best is not None:
            res.max_sustained_rate = round(best.achieved_rate, 1)
            res.max_sustained_offered = best.offered_rate
            res.max_cpu_per_op_us = best.cpu_per_op_us

    @staticmethod
    def _run_text(run: Run) -> str:
        if not run.ok:
            first = run.error.splitlines()[0] if run.error else "failed"
            return f"FAILED: {first}"
        cpu = f"{run.cpu_per_op_us:.0f} µs CPU/op" if run.cpu_per_op_us is not None else "-"
        if len(run.cpu_per_op_parts_us) > 1:
            cpu += " (" + " + ".join(f"{k} {v:.0f}" for k, v in run.cpu_per_op_parts_us.items()) + ")"
        return (f"{run.successful} ok, {run.achieved_rate:.0f}/s, {cpu}, server {run.server_util_pct:.0f}% CPU, "
                f"{run.retransmissions} retrans, background {run.background_cpu_pct:.0f}%")

    # -- the cases
    def start_case(self, bench: str, variant: str, server: str) -> CaseResult:
        self.case_no += 1
        res = CaseResult(bench, variant, server)
        res.workdir = str(self.root / f"{bench}-{variant}-{server}")
        self.results.append(res)
        self.p.line(f"[{self.case_no}/{self.case_total}] {bench} / {variant} / {server}")
        return res

    def make_server(self, kind: str, workdir: Path, *, auth: bool, b2bua_target: str | None = None,
                    next_hop_port: int | None = None) -> sb.Server:
        if kind == "callpath":
            return sb.CallpathServer(workdir, self.callpath_data_dir(), auth=auth, b2bua_target=b2bua_target,
                                     log_level=self.args.callpath_log_level,
                                     max_calls=None if self.args.keep_call_cap or not b2bua_target else 0)
        if kind == "kamailio":
            return sb.KamailioServer(workdir, auth=auth, accounts=self.accounts)
        if kind == "sippy":
            assert next_hop_port is not None
            return sb.SippyServer(workdir, next_hop_port=next_hop_port)
        raise ValueError(kind)

    def case_register(self, variant: str, kind: str) -> None:
        res = self.start_case("register", variant, kind)
        auth = variant == "auth"
        work = Path(res.workdir)
        server = self.make_server(kind, work, auth=auth)
        try:
            self.p.status(f"  starting {kind}")
            server.start()
            scen = "register_loop" if auth else "register_loop_noauth"

            def make_uac(*, rate: float, calls: int, timeout_s: float, name: str) -> sb.Sipp:
                port = sb.free_udp_port()
                return sb.Sipp(name, work, scenario_name=scen, target=server.target, local_port=port, calls=calls,
                               rate=rate, timeout_s=timeout_s, users_csv=self.users_csv, rtd="register",
                               keys={"domain": sb.DOMAIN, "contact_port": port, "expires": 3600})

            self.load_phases(res, server, make_uac)
        except Exception as exc:  # a setup failure is a result too
            res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
            if self.args.debug:
                traceback.print_exc()
        finally:
            server.stop()

    def case_proxy(self, variant: str, kind: str) -> None:
        res = self.start_case("proxy", variant, kind)
        auth = variant == "auth"
        work = Path(res.workdir)
        server = self.make_server(kind, work, auth=auth)
        uas: sb.Sipp | None = None
        try:
            self.p.status(f"  starting {kind}")
            server.start()
            uas_port = sb.free_udp_port()
            uas = sb.Sipp("uas", work, scenario_name="uas", target=None, local_port=uas_port).start_listening()
            reg = sb.Sipp("register-callee", work, scenario_name="register_loop" if auth else "register_loop_noauth",
                          target=server.target, local_port=sb.free_udp_port(), calls=1, timeout_s=10,
                          users_csv=self.callee_csv,
                          keys={"domain": sb.DOMAIN, "contact_port": uas_port, "expires": 3600}).start()
            out = reg.wait(timeout=30)
            if not out.ok:
                raise sb.BenchError(f"registering the UAS as {sb.CALLEE} failed: {out.summary()}\n{out.errors}")

            def make_uac(*, rate: float, calls: int, timeout_s: float, name: str) -> sb.Sipp:
                if auth:
                    return sb.Sipp(name, work, scenario_name="uac", target=server.target,
                                   local_port=sb.free_udp_port(), calls=calls, rate=rate, timeout_s=timeout_s,
                                   service=sb.CALLEE, duration_ms=0, users_csv=self.users_csv, rtd="setup",
                                   keys={"domain": sb.DOMAIN})
                return sb.Sipp(name, work, scenario_name="uac_noauth", target=server.target,
                               local_port=sb.free_udp_port(), calls=calls, rate=rate, timeout_s=timeout_s,
                               service=sb.CALLEE, duration_ms=0, rtd="setup")

            self.load_phases(res, server, make_uac, uas=uas)
        except Exception as exc:
            res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
            if self.args.debug:
                traceback.print_exc()
        finally:
            if uas is not None:
                res.uas_summary = uas.stop(grace=3).summary()
            server.stop()

    def case_b2bua(self, kind: str) -> None:
        res = self.start_case("b2bua", "noauth", kind)
        work = Path(res.workdir)
        uas_port = sb.free_udp_port()
        target = f"sip:{sb.CALLEE}@{sb.LOCAL}:{uas_port}"
        server = self.make_server(kind, work, auth=False, b2bua_target=target, next_hop_port=uas_port)
        uas: sb.Sipp | None = None
        try:
            self.p.status(f"  starting {kind}")
            server.start()
            uas = sb.Sipp("uas", work, scenario_name="uas_b2b", target=None, local_port=uas_port).start_listening()

            def make_uac(*, rate: float, calls: int, timeout_s: float, name: str) -> sb.Sipp:
                return sb.Sipp(name, work, scenario_name="uac_b2b_noauth", target=server.target,
                               local_port=sb.free_udp_port(), calls=calls, rate=rate, timeout_s=timeout_s,
                               service=sb.B2BUA_NUMBER, duration_ms=0, rtd="setup")

            probe = make_uac(rate=1, calls=1, timeout_s=10, name="probe").start().wait(timeout=30)
            if not probe.ok:
                if kind == "callpath":
                    res.status = "not available yet"
                    res.reason = (f"callpath does not answer {sb.B2BUA_NUMBER} back-to-back: {probe.summary()}\n"
                                  f"{probe.errors[-1200:]}")
                else:
                    res.status, res.reason = "failed", f"probe call failed: {probe.summary()}\n{probe.errors[-1200:]}"
                self.p.line(f"  {res.status}: {res.reason.splitlines()[0]}")
                return
            self.load_phases(res, server, make_uac, uas=uas)
        except Exception as exc:
            res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
            if self.args.debug:
                traceback.print_exc()
        finally:
            if uas is not None:
                res.uas_summary = uas.stop(grace=3).summary()
            server.stop()

    def case_anchored(self, kind: str, rtp: bool = False) -> None:
        """callpath: SIPp UAC -> call control (anchor = "always", media on) -> the UAS registered as CALLEE,
        both legs through the media worker; Sippy: b2bua_simple to the UAS (signalling only, no relay).
        ``rtp``: both SIPp sides stream PCMU for plan["call_s"] seconds per call (through callpath's worker;
        with Sippy directly between them)."""
        res = self.start_case("anchored-rtp" if rtp else "anchored", "rtp" if rtp else "signalling", kind)
        plan = self.plan[res.bench]
        work = Path(res.workdir)
        if rtp:  # the file both SIPp sides stream (rtp_stream looks for it in their working directory)
            work.mkdir(parents=True, exist_ok=True)
            sb.write_pcmu_tone(work / "tone.pcmu")
        suffix = "rtp" if rtp else "noauth"
        call_ms = int(plan.get("call_s", 0) * 1000)
        uas_port = sb.free_udp_port()
        if kind == "callpath":
            server: sb.Server = sb.CallpathServer(work, self.callpath_data_dir(), auth=False, media=True,
                                                  anchor="always", log_level=self.args.callpath_log_level,
                                                  max_calls=None if self.args.keep_call_cap else 0)
        else:
            server = self.make_server(kind, work, auth=False, next_hop_port=uas_port)
        uas: sb.Sipp | None = None
        try:
            self.p.status(f"  starting {kind}")
            server.start()
            uas = sb.Sipp("uas", work, scenario_name="uas_b2b_rtp" if rtp else "uas_b2b", target=None,
                          local_port=uas_port).start_listening()
            if kind == "callpath":
                reg = sb.Sipp("register-callee", work, scenario_name="register_loop_noauth", target=server.target,
                              local_port=sb.free_udp_port(), calls=1, timeout_s=10, users_csv=self.callee_csv,
                              keys={"domain": sb.DOMAIN, "contact_port": uas_port, "expires": 3600}).start()
                out = reg.wait(timeout=30)
                if not out.ok:
                    raise sb.BenchError(f"registering the UAS as {sb.CALLEE} failed: {out.summary()}\n{out.errors}")

            def make_uac(*, rate: float, calls: int, timeout_s: float, name: str) -> sb.Sipp:
                return sb.Sipp(name, work, scenario_name=f"uac_b2b_{suffix}", target=server.target,
                               local_port=sb.free_udp_port(), calls=calls, rate=rate,
                               timeout_s=timeout_s + call_ms / 1000, service=sb.CALLEE, duration_ms=call_ms,
                               rtd="setup")

            probe = make_uac(rate=1, calls=1, timeout_s=10, name="probe").start().wait(timeout=30 + call_ms / 1000)
            if not probe.ok:
                res.status, res.reason = "failed", f"probe call failed: {probe.summary()}\n{probe.errors[-1200:]}"
                self.p.line(f"  {res.status}: {res.reason.splitlines()[0]}")
                return
            self.load_phases(res, server, make_uac, uas=uas)
        except Exception as exc:
            res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
            if self.args.debug:
                traceback.print_exc()
        finally:
            if uas is not None:
                res.uas_summary = uas.stop(grace=3).summary()
            server.stop()

    def skip(self, bench: str, variant: str, server: str, reason: str) -> None:
        res = CaseResult(bench, variant, server, status="skipped", reason=reason)
        self.results.append(res)
        self.p.line(f"skipped {bench} / {variant} / {server}: {reason}")


# -------------------------------------------------------------------------------------------- report


def comparisons(results: list[CaseResult]) -> list[dict[str, Any]]:
    by = {(r.bench, r.variant, r.server): r for r in results}
    rows = []
    for bench, variant, other, target in (("register", "noauth", "kamailio", TARGET_VS_KAMAILIO),
                                          ("register", "auth", "kamailio", TARGET_VS_KAMAILIO),
                                          ("proxy", "noauth", "kamailio", TARGET_VS_KAMAILIO),
                                          ("proxy", "auth", "kamailio", TARGET_VS_KAMAILIO),
                                          ("b2bua", "noauth", "sippy", TARGET_VS_SIPPY),
                                          ("anchored", "signalling", "sippy", TARGET_VS_SIPPY),
                                          ("anchored-rtp", "rtp", "sippy", TARGET_VS_SIPPY)):
        mine, theirs = by.get((bench, variant, "callpath")), by.get((bench, variant, other))
        if mine is None and theirs is None:
            continue
        row: dict[str, Any] = {"bench": bench, "variant": variant, "versus": other, "target_ratio": target,
                               "reference_us_issue": ISSUE_REFERENCE_US.get((bench, variant)) if other == "kamailio"
                               else None}
        cp = mine.fixed.cpu_per_op_us if mine and mine.status == "ok" and mine.fixed else None
        ot = theirs.fixed.cpu_per_op_us if theirs and theirs.status == "ok" and theirs.fixed else None
        row["callpath_us"] = round(cp, 1) if cp is not None else None
        row["other_us"] = round(ot, 1) if ot is not None else None
        row["rate"] = mine.fixed.offered_rate if mine and mine.fixed else (theirs.fixed.offered_rate if theirs and theirs.fixed else None)
        if cp is not None and ot:
            row["ratio"] = round(cp / ot, 2)
            row["target_met"] = row["ratio"] <= target
        else:
            row["ratio"] = None
            row["target_met"] = None
            missing = []
            if cp is None:
                missing.append(f"callpath: {mine.status if mine else 'not run'}")
            if ot is None:
                missing.append(f"{other}: {theirs.status if theirs else 'not run'}")
            row["why_no_ratio"] = "; ".join(missing)
        common = common_rate(mine, theirs)
        if common is not None:
            rate, a, b = common
            row["common_rate"] = rate
            row["callpath_us_at_common"] = round(a, 1)
            row["other_us_at_common"] = round(b, 1)
            row["ratio_at_common"] = round(a / b, 2) if b else None
        if mine and theirs and mine.max_sustained_rate and theirs.max_sustained_rate:
            row["callpath_max_rate"] = mine.max_sustained_rate
            row["other_max_rate"] = theirs.max_sustained_rate
        rows.append(row)
    return rows


def step_passed(step: Run) -> bool:
    return step.ok and step.achieved_rate >= RAMP_MIN_SHARE * step.offered_rate


def ramp_limit(res: CaseResult) -> str:
    """What ended the ramp: "top of ramp", "server" (a step failed, or fell short while the server was
    busy) or "load generator" (a step fell short without failures while the server used little CPU)."""
    if not res.ramp:
        return ""
    last = res.ramp[-1]
    if step_passed(last):
        return "top of ramp"
    return "load generator" if last.ok and last.server_util_pct < CLIENT_BOUND_UTIL_PCT else "server"


def passed_runs(res: CaseResult | None) -> dict[float, Run]:
    """Offered rate -> run, for the fixed run and the ramp steps that passed."""
    if res is None or res.status != "ok" or res.fixed is None:
        return {}
    runs = {res.fixed.offered_rate: res.fixed}
    for step in res.ramp:
        if step_passed(step):
            runs[step.offered_rate] = step
    return runs


def common_rate(a: CaseResult | None, b: CaseResult | None) -> tuple[float, float, float] | None:
    """(rate, a's µs/op, b's µs/op) at the highest offered rate both sustained."""
    ra, rb = passed_runs(a), passed_runs(b)
    rates = sorted(set(ra) & set(rb))
    if not rates:
        return None
    top = rates[-1]
    x, y = ra[top].cpu_per_op_us, rb[top].cpu_per_op_us
    if x is None or y is None:
        return None
    return top, x, y


def fmt(value: Any, spec: str = ".0f", empty: str = "-") -> str:
    if value is None:
        return empty
    return format(value, spec)


def results_table(results: list[CaseResult]) -> list[list[str]]:
    head = ["benchmark", "server", "status", "fixed rate", "done", "failed", "retrans", "CPU µs/op",
            "of which", "ops/s per core", "server CPU", "others' CPU", "max sustained", "CPU µs/op @max", "idle CPU"]
    rows = [head]
    for r in results:
        f = r.fixed
        if r.status in ("skipped", "not available yet") or f is None:
            rows.append([f"{r.bench}/{r.variant}", r.server, r.status] + ["-"] * (len(head) - 3))
            continue
        status = r.status
        last_ramp = r.ramp[-1] if r.ramp else None
        if r.max_sustained_rate is not None and last_ramp is not None:
            kind = ramp_limit(r)
            if kind == "server":
                limit = f"{r.max_sustained_rate:.0f}/s (not {last_ramp.offered_rate:.0f})"
            elif kind == "load generator":  # the server used < 50 % of a CPU when the step fell short
                limit = f">= {r.max_sustained_rate:.0f}/s (server not saturated)"
            else:  # never failed: the limit is above the ramp
                limit = f">= {r.max_sustained_rate:.0f}/s (ramp top)"
        else:
            limit = "-"
        rows.append([
            f"{r.bench}/{r.variant}", r.server, status, f"{f.offered_rate:.0f}/s",
            f"{f.successful}/{f.ops}", str(f.failed), str(f.retransmissions),
            fmt(f.cpu_per_op_us) if f.ok else "FAILED",
            " + ".join(f"{k} {v:.0f}" for k, v in f.cpu_per_op_parts_us.items())
            if f.ok and len(f.cpu_per_op_parts_us) > 1 else "-",
            fmt(1e6 / f.cpu_per_op_us) if f.ok and f.cpu_per_op_us else "-",
            f"{f.server_util_pct:.0f}%", f"{f.background_cpu_pct:.0f}%",
            limit,
            fmt(r.max_cpu_per_op_us), f"{r.idle_cpu_pct:.1f}%",
        ])
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = [["benchmark", "callpath µs/op", "versus", "its µs/op", "ratio", "target", "met", "issue ref.",
            "highest common rate: µs/op, ratio"]]
    for c in rows:
        met = {True: "yes", False: "NO", None: "-"}[c["target_met"]]
        target = f"≤ {c['target_ratio']:g}×" if c["target_ratio"] >= 1 else f"≤ {c['target_ratio']:g}× (1/4)"
        out.append([f"{c['bench']}/{c['variant']} @{fmt(c.get('rate'))}/s", fmt(c["callpath_us"]), c["versus"],
                    fmt(c["other_us"]), fmt(c["ratio"], ".2f") + ("×" if c["ratio"] is not None else ""),
                    target, met if c["ratio"] is not None else f"- ({c.get('why_no_ratio', '')})",
                    fmt(c["reference_us_issue"], "d") + (" µs" if c["reference_us_issue"] else ""),
                    (f"@{c['common_rate']:.0f}/s: {c['callpath_us_at_common']:.0f} vs {c['other_us_at_common']:.0f}, "
                     f"{c['ratio_at_common']:.2f}×") if c.get("ratio_at_common") is not None else "-"])
    return out


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def environment_text(env: dict[str, Any]) -> str:
    m, py = env["machine"], env["python"]
    pybuild = f"{py.get('version')} ({py.get('build')}: {py.get('base_executable')}" + \
              (", PGO" if py.get("pgo") else "") + (", LTO" if py.get("lto") else "") + ")"
    return (f"{env['date']} on {m['nproc']} × {m['cpu_model']} ({m['kernel']}); callpath on Python {pybuild}, "
            f"event loop {'uvloop ' + py['uvloop'] if py.get('uvloop') else 'asyncio (uvloop not installed)'}; "
            f"{env['sipp']}; {env['kamailio']}; Sippy {env['sippy']}; mode {'quick' if env['quick'] else 'full'}"
            + (f"; callpath at {g['head']}" + (f" + {g['modified_files']} modified files" if g.get("modified_files") else "")
               if (g := env.get("git")) and g.get("head") else ""))


def write_markdown(path: Path, env: dict[str, Any], results: list[CaseResult], comps: list[dict[str, Any]]) -> None:
    parts = ["# callpath SIP benchmarks (benchmarks/sip/run.py)", "", environment_text(env), "",
             "## CPU per operation and throughput", "", md_table(results_table(results)), "",
             "## callpath versus Kamailio / Sippy (CPU per operation at the fixed rate)", "",
             md_table(comparison_table(comps)), ""]
    notes = [r for r in results if r.reason]
    if notes:
        parts += ["## Not run, failed or not available", ""]
        for r in notes:
            parts.append(f"- **{r.bench}/{r.variant} {r.server}** ({r.status}): "
                         + r.reason.strip().splitlines()[0][:400])
        parts.append("")
    path.write_text("\n".join(parts))


def git_state() -> dict[str, Any]:
    """The commit measured and how many files differ from it (read-only git queries)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(sb.REPO_ROOT), *args], capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"head": git("rev-parse", "--short", "HEAD"), "modified_files": len(status.splitlines()) if status else 0}


def load_results(path: Path) -> tuple[dict[str, Any], list[CaseResult]]:
    data = json.loads(path.read_text())
    results = []
    for raw in data["results"]:
        raw = dict(raw)
        fixed = Run(**raw.pop("fixed")) if raw.get("fixed") else None
        ramp = [Run(**step) for step in raw.pop("ramp", [])]
        raw.pop("fixed", None)
        known = {k: v for k, v in raw.items() if k in CaseResult.__dataclass_fields__}
        res = CaseResult(**known, fixed=fixed, ramp=ramp)
        res.ramp_limit = ramp_limit(res)  # derived: recomputed with the current rule
        results.append(res)
    return data["environment"], results


def print_report(env: dict[str, Any], results: list[CaseResult], comps: list[dict[str, Any]]) -> None:
    print()
    print(environment_text(env))
    print()
    print(text_table(results_table(results)))
    print()
    print(text_table(comparison_table(comps)))
    for r in results:
        if r.reason:
            print(f"\n{r.bench}/{r.variant} {r.server} ({r.status}): {r.reason.strip()[:1500]}")


def report_only(path: Path) -> int:
    env, results = load_results(path)
    comps = comparisons(results)
    print_report(env, results, comps)
    write_markdown(path.with_suffix(".md"), env, results, comps)
    data = json.loads(path.read_text())  # refresh the derived fields with the current rules
    for raw, res in zip(data["results"], results):
        raw["ramp_limit"] = res.ramp_limit
    data["comparisons"] = comps
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\nrewrote {path.with_suffix('.md')} (and the derived fields of {path.name})")
    return 0


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes in all)")
    parser.add_argument("--only", action="append", choices=["register", "proxy", "b2bua", "anchored", "anchored-rtp"],
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio side")
    parser.add_argument("--no-sippy", action="store_true", help="skip the Sippy side")
    parser.add_argument("--no-ramp", action="store_true", help="fixed-rate runs only (no max-throughput ramp)")
    parser.add_argument("--callpath-log-level", default="warning",
                        help="callpath's [server].log_level during the runs (default: warning, i.e. no log line per "
                             "call, like the Kamailio and Sippy sides)")
    parser.add_argument("--retries", type=int, default=None,
                        help=f"repeat a fixed-rate run up to N times when other processes used more than "
                             f"{NOISY_BACKGROUND_PCT:.0f}%% of a CPU during it (default: 1, quick: 0)")
    parser.add_argument("--keep-call-cap", action="store_true",
                        help="keep callpath's [limits] max_calls (5000) in the b2bua and anchored cases: it counts "
                             "finished calls for 32 s, so ramps past ~78 calls/s end in 503 (too many calls)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (SIPp statistics, server logs)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/latest.md go")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of setup failures")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the tables of an earlier results file (rewrites its .md)")
    args = parser.parse_args(argv)
    if args.report:
        return report_only(args.report)
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    benches = args.only or ["register", "proxy", "b2bua", "anchored"]
    progress = Progress()

    if not sb.sipp_binary():
        print("sipp is not installed (Debian package sip-tester): nothing to measure with", file=sys.stderr)
        return 2
    sb.callpath_script()

    kamailio_ok = not args.no_kamailio and sb.kamailio_binary() is not None
    kamailio_why = "--no-kamailio" if args.no_kamailio else ("kamailio is not installed" if not kamailio_ok else "")
    sippy_ok, sippy_info = False, ("--no-sippy" if args.no_sippy else "b2bua not run")
    if {"b2bua", "anchored", "anchored-rtp"} & set(benches) and not args.no_sippy:
        progress.line("checking Sippy (benchmarks/.venv-sippy)")
        sippy_ok, sippy_info = sb.ensure_sippy(progress.line)
        if not sippy_ok:
            progress.line(f"Sippy unavailable: {sippy_info}")

    env = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": sb.machine_info(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": sb.python_info(str(sb.CALLPATH_VENV / "bin" / "python")),
        "sippy_python": sb.python_info(str(sb.SIPPY_VENV / "bin" / "python")) if sippy_ok else None,
        "sipp": sb.sipp_version(),
        "kamailio": sb.kamailio_version() if sb.kamailio_binary() else "not installed",
        "sippy": sippy_info if sippy_ok else f"not used ({sippy_info.splitlines()[0] if sippy_info else ''})",
        "git": git_state(),
        "callpath_log_level": args.callpath_log_level,
        "plan": PLAN_QUICK if args.quick else PLAN_FULL,
        "users": N_USERS,
    }
    progress.line(environment_text(env))

    workroot = Path(tempfile.mkdtemp(prefix="callpath-sipbench-"))
    bench = Bench(args, progress, workroot)
    cases: list[tuple[Callable[[], None] | None, tuple[str, str, str], str]] = []
    for name in benches:
        if name in ("register", "proxy"):
            for variant in ("noauth", "auth"):
                cases.append((lambda n=name, v=variant: getattr(bench, f"case_{n}")(v, "callpath"),
                              (name, variant, "callpath"), ""))
                cases.append(((lambda n=name, v=variant: getattr(bench, f"case_{n}")(v, "kamailio"))
                              if kamailio_ok else None, (name, variant, "kamailio"), kamailio_why))
        elif name in ("anchored", "anchored-rtp"):
            rtp = name == "anchored-rtp"
            variant = "rtp" if rtp else "signalling"
            cases.append((lambda r=rtp: bench.case_anchored("callpath", r), (name, variant, "callpath"), ""))
            cases.append(((lambda r=rtp: bench.case_anchored("sippy", r)) if sippy_ok else None,
                          (name, variant, "sippy"), sippy_info))
        else:
            cases.append((lambda: bench.case_b2bua("callpath"), ("b2bua", "noauth", "callpath"), ""))
            cases.append(((lambda: bench.case_b2bua("sippy")) if sippy_ok else None, ("b2bua", "noauth", "sippy"),
                          sippy_info))
    bench.case_total = sum(1 for c in cases if c[0] is not None)
    try:
        for run_case, key, why in cases:
            if run_case is None:
                bench.skip(*key, why)
            else:
                run_case()
    except KeyboardInterrupt:
        progress.line("interrupted: writing what was measured")
    finally:
        comps = comparisons(bench.results)
        env["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        env["elapsed_s"] = round(time.monotonic() - progress.t0, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        data = {"environment": env, "results": sb.to_jsonable(bench.results), "comparisons": comps,
                "targets": {"vs_kamailio": TARGET_VS_KAMAILIO, "vs_sippy": TARGET_VS_SIPPY},
                "issue_reference_us": {f"{b}/{v}": us for (b, v), us in ISSUE_REFERENCE_US.items()}}
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        (args.out / "latest.json").write_text(text)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        (args.out / f"{stamp}-{'quick' if args.quick else 'full'}.json").write_text(text)  # history
        write_markdown(args.out / "latest.md", env, bench.results, comps)
        if args.keep:
            progress.line(f"work directory kept: {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)

    print_report(env, bench.results, comps)
    print(f"\nresults: {args.out / 'latest.json'} and {args.out / 'latest.md'} "
          f"({env['elapsed_s']:.0f}s)")
    failed = [r for r in bench.results if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
