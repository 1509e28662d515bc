#!/usr/bin/env python3
"""Soak: many minutes of steady SIPp load on loopback, with memory, CPU, loop lag and failures per interval.

A 20-second benchmark hides leaks and stalls; a PBX runs for months. For each scenario this starts callpath
(and, where installed, the reference server side by side in the same run: Kamailio for proxied calls and
registrations, Sippy for back-to-back calls), drives each with its own SIPp UAC/UAS at a fixed rate for
``--minutes``, and every ``--interval`` seconds prints and records for each server:

  RSS (the process tree; callpath's SIP process and its media workers also apart), CPU % of one core,
  callpath's event-loop lag p99/max over the interval (from /api/v1/status), and SIPp's completed calls,
  failed calls and retransmissions in the interval.

At the end it waits ``--settle`` seconds (every transaction timer has run by then) and reads the settled RSS,
fits the RSS slope against completed calls after the warm-up (KB per 1,000 calls: ~0 when nothing is left
behind per call), writes ``results/soak-latest.json`` and ``.md``, and plots RSS against calls
(``soak.png``, when matplotlib imports).

Scenarios (one operation = one SIPp call):
  proxy     INVITE/180/200/ACK/BYE through the proxy to a registered SIPp UAS, auth off (tests/sipp/uac_noauth.xml
            -> uas.xml), 100 calls/s
  register  a complete digest registration (REGISTER/401/REGISTER/200, tests/sipp/register_loop.xml) for
            user1..user100 in turn, 200/s
  b2b       back-to-back calls with media anchoring ([media] enabled, [[sip.b2bua]] 9000 -> the UAS;
            benchmarks/sip/scenarios/uac_b2b_noauth.xml -> uas_b2b.xml), 50 calls/s

Usage (needs .venv from `bash dev.sh test`, SIPp; Kamailio and Sippy optional):
  python3 benchmarks/sip/soak.py                            # all three, 20 minutes each (~65 min)
  python3 benchmarks/sip/soak.py --only proxy --minutes 5
  python3 benchmarks/sip/soak.py --no-reference --minutes 2 # callpath alone, a quick look
  python3 benchmarks/sip/soak.py --from-json a.json b.json  # tables and plot again from saved runs
Everything listens and sends on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sipbench as sb  # noqa: E402

RESULTS = sb.HERE / "results"
PLOT = sb.HERE / "soak.png"
RATES = {"proxy": 100.0, "register": 200.0, "b2b": 50.0}
REFERENCE = {"proxy": "kamailio", "register": "kamailio", "b2b": "sippy"}
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ------------------------------------------------------------------------------------------ samples


def rss_kb(pids: list[int]) -> int:
    """Resident memory of these processes (KB, /proc/PID/statm)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    return total


@dataclass
class Interval:
    """One interval of one server: what it cost and what SIPp saw."""

    t_s: float                      # seconds since the load started (end of the interval)
    rss_kb: int
    rss_sip_kb: int | None          # callpath: the SIP process alone
    rss_media_kb: int | None        # callpath: its media workers
    cpu_pct: float                  # % of one core over the interval (the whole process tree)
    lag_p99_ms: float | None
    lag_max_ms: float | None
    gc_max_pause_ms: float | None
    completed: int                  # SIPp calls completed in the interval
    failed: int
    retransmissions: int
    total_completed: int            # since the start


@dataclass
class ServerRun:
    """One server under one scenario's load."""

    scenario: str
    server: str
    rate: float
    status: str = "not run"
    reason: str = ""
    intervals: list[Interval] = field(default_factory=list)
    idle_rss_kb: int = 0            # after start-up (and the callee's registration), before any load
    settled_rss_kb: int | None = None
    settled_after_s: float = 0.0
    slope_kb_per_1000: float | None = None
    slope_from_call: int = 0        # the fit starts after the warm-up, at this cumulative call count
    completed: int = 0
    failed: int = 0
    retransmissions: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    lag_max_ms: float | None = None
    lag_p99_max_ms: float | None = None
    workdir: str = ""


def slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of RSS (KB) over completed calls, in KB per 1,000 calls."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 1000.0 * sxy / sxx


# ------------------------------------------------------------------------------------------ one side


class Side:
    """A server, its SIPp peers, and its samples, for one scenario."""

    def __init__(self, scenario: str, kind: str, work: Path, data_dir: Path, rate: float, calls: int,
                 accounts: list[tuple[str, str]]) -> None:
        self.scenario, self.kind, self.work, self.rate, self.calls = scenario, kind, work, rate, calls
        self.run = ServerRun(scenario, kind, rate, workdir=str(work))
        self.uas: sb.Sipp | None = None
        self.uac: sb.Sipp | None = None
        uas_port = sb.free_udp_port()
        self.uas_port = uas_port
        auth = scenario == "register"
        if kind == "callpath":
            target = f"sip:{sb.CALLEE}@{sb.LOCAL}:{uas_port}" if scenario == "b2b" else None
            self.server: sb.Server = sb.CallpathServer(work, data_dir, auth=auth, b2bua_target=target, web=True,
                                                       media=scenario == "b2b")
        elif kind == "kamailio":
            self.server = sb.KamailioServer(work, auth=auth, accounts=accounts)
        else:
            self.server = sb.SippyServer(work, next_hop_port=uas_port)
        self.users_csv = sb.write_users_csv(work / "users.csv", accounts)
        self.callee_csv = sb.write_users_csv(work / "callee.csv", [(sb.CALLEE, sb.PASSWORD)])
        self._cpu0: sb.CpuSample | None = None
        self._sipp0 = (0, 0, 0)
        self._t0 = 0.0

    def start(self) -> None:
        self.server.start()
        target = self.server.target
        if self.scenario == "proxy":
            self.uas = sb.Sipp("uas", self.work, scenario_name="uas", target=None,
                               local_port=self.uas_port).start_listening()
            reg = sb.Sipp("register-callee", self.work, scenario_name="register_loop_noauth", target=target,
                          local_port=sb.free_udp_port(), calls=1, timeout_s=10, users_csv=self.callee_csv,
                          keys={"domain": sb.DOMAIN, "contact_port": self.uas_port, "expires": 3600}).start()
            out = reg.wait(timeout=30)
            if not out.ok:
                raise sb.BenchError(f"registering the UAS failed: {out.summary()}\n{out.errors}")
            self.uac = sb.Sipp("uac", self.work, scenario_name="uac_noauth", target=target,
                               local_port=sb.free_udp_port(), calls=self.calls, rate=self.rate,
                               timeout_s=self.calls / self.rate + 60, service=sb.CALLEE, duration_ms=0)
        elif self.scenario == "register":
            self.uac = sb.Sipp("uac", self.work, scenario_name="register_loop", target=target,
                               local_port=sb.free_udp_port(), calls=self.calls, rate=self.rate,
                               timeout_s=self.calls / self.rate + 60, users_csv=self.users_csv,
                               keys={"domain": sb.DOMAIN, "contact_port": 5999, "expires": 3600})
        else:
            self.uas = sb.Sipp("uas", self.work, scenario_name="uas_b2b", target=None,
                               local_port=self.uas_port).start_listening()
            self.uac = sb.Sipp("uac", self.work, scenario_name="uac_b2b_noauth", target=target,
                               local_port=sb.free_udp_port(), calls=self.calls, rate=self.rate,
                               timeout_s=self.calls / self.rate + 60, service=sb.B2BUA_NUMBER, duration_ms=0)
        time.sleep(1.0)
        self.run.idle_rss_kb = rss_kb(self.server.pids())

    def begin_load(self) -> None:
        assert self.uac is not None
        self._cpu0 = self.server.cpu()
        self._t0 = time.monotonic()
        if isinstance(self.server, sb.CallpathServer):
            self.server.status()            # starts the status window afresh
        self.uac.start()

    def sample(self, interval: float) -> Interval:
        assert self.uac is not None and self._cpu0 is not None
        pids = self.server.pids()
        cpu = self.server.cpu()
        cpu_pct = 100.0 * (cpu.seconds - self._cpu0.seconds) / max(1e-6, cpu.at - self._cpu0.at)
        self._cpu0 = cpu
        done, failed, retrans = self.uac.progress()
        d0, f0, r0 = self._sipp0
        self._sipp0 = (done, failed, retrans)
        lag_p99 = lag_max = gc_pause = None
        rss_sip = rss_media = None
        if isinstance(self.server, sb.CallpathServer):
            assert self.server.proc is not None
            rss_sip = rss_kb([self.server.proc.pid])
            rss_media = rss_kb([p for p in pids if p != self.server.proc.pid])
            status = self.server.status()
            if status is not None:
                proc = status.get("process", {})
                lag = proc.get("loop_lag_30s", {})
                # the status window is 30 s; with another interval the figures are of the last 30 s
                lag_p99, lag_max = lag.get("p99_ms"), lag.get("max_ms")
                gens = proc.get("gc_30s", {}).get("generations", [])
                gc_pause = max((g.get("max_pause_ms", 0.0) for g in gens), default=None)
        row = Interval(round(time.monotonic() - self._t0, 1), rss_kb(pids), rss_sip, rss_media, round(cpu_pct, 1),
                       lag_p99, lag_max, gc_pause, done - d0, failed - f0, retrans - r0, done)
        self.run.intervals.append(row)
        return row

    def finish(self) -> None:
        """Collect SIPp's outcome (the settled RSS is read later, by `settle`)."""
        assert self.uac is not None
        out = self.uac.wait(timeout=120)
        self.run.completed, self.run.failed = out.successful, out.failed
        self.run.retransmissions, self.run.failure_kinds = out.retransmissions, out.failure_kinds
        if not out.ok:
            self.run.reason = out.summary() + ("\n" + out.errors[-1500:] if out.errors else "")
        self.run.status = "ok" if out.ok and self.server.alive() else "failed"
        if not self.server.alive():
            self.run.reason += f"\nthe server exited: {sb.tail(self.server.log, 1500)}"

    def settle(self, settled_after: float) -> None:
        """Read the RSS once the load has been over for `settled_after` seconds."""
        if self.server.alive():
            self.run.settled_rss_kb = rss_kb(self.server.pids())
            self.run.settled_after_s = settled_after

    def stop(self) -> None:
        if self.uac is not None and self.uac.proc is not None and self.uac.proc.poll() is None:
            self.uac.stop(grace=3)
        if self.uas is not None:
            self.uas.stop(grace=3)
        self.server.stop()


def analyse(run: ServerRun, warmup_share: float) -> None:
    """Slope after the warm-up (the first `warmup_share` of the intervals, at least one), lag extremes."""
    rows = run.intervals
    skip = max(1, int(len(rows) * warmup_share))
    points = [(r.total_completed, r.rss_kb) for r in rows[skip:]]
    run.slope_from_call = rows[skip].total_completed if len(rows) > skip else 0
    run.slope_kb_per_1000 = slope(points)
    lags = [r.lag_max_ms for r in rows if r.lag_max_ms is not None]
    p99s = [r.lag_p99_ms for r in rows if r.lag_p99_ms is not None]
    run.lag_max_ms = max(lags) if lags else None
    run.lag_p99_max_ms = max(p99s) if p99s else None


# ------------------------------------------------------------------------------------------ report


def fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def interval_line(side: str, row: Interval) -> str:
    media = f" (sip {row.rss_sip_kb / 1024:.0f} + media {row.rss_media_kb / 1024:.0f})" if row.rss_media_kb else ""
    lag = f" lag p99/max {fmt(row.lag_p99_ms, '.0f')}/{fmt(row.lag_max_ms, '.0f')} ms" if row.lag_max_ms is not None else ""
    if row.gc_max_pause_ms:
        lag += f" gc {row.gc_max_pause_ms:.0f} ms"
    return (f"  {row.t_s:6.0f}s {side:9s} RSS {row.rss_kb / 1024:6.1f} MB{media} CPU {row.cpu_pct:5.1f}%{lag}"
            f"  +{row.completed} ok, {row.failed} failed, {row.retransmissions} retrans")


def summary_rows(runs: list[ServerRun]) -> list[list[str]]:
    rows = [["scenario", "server", "rate/s", "calls ok", "failed", "retrans", "idle RSS MB", "peak RSS MB",
             "end RSS MB", "settled RSS MB", "slope KB/1000 calls", "mean CPU %", "lag p99 max ms",
             "lag max ms"]]
    for r in runs:
        peak = max((i.rss_kb for i in r.intervals), default=0)
        end = r.intervals[-1].rss_kb if r.intervals else 0
        cpu = sum(i.cpu_pct for i in r.intervals) / len(r.intervals) if r.intervals else None
        rows.append([r.scenario, r.server, f"{r.rate:g}", str(r.completed), str(r.failed), str(r.retransmissions),
                     f"{r.idle_rss_kb / 1024:.1f}", f"{peak / 1024:.1f}", f"{end / 1024:.1f}",
                     fmt(r.settled_rss_kb / 1024 if r.settled_rss_kb else None, ".1f"),
                     fmt(r.slope_kb_per_1000, ".2f"), fmt(cpu, ".1f"), fmt(r.lag_p99_max_ms), fmt(r.lag_max_ms)])
    return rows


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def plot(runs: list[ServerRun], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for r in runs:
            if r.scenario != scenario or not r.intervals:
                continue
            xs = [0] + [i.total_completed / 1000 for i in r.intervals]
            ax.plot(xs, [r.idle_rss_kb / 1024] + [i.rss_kb / 1024 for i in r.intervals], marker=".",
                    label=f"{r.server} ({fmt(r.slope_kb_per_1000, '.2f')} KB/1000)")
            if any(i.rss_media_kb for i in r.intervals):
                ax.plot(xs[1:], [i.rss_sip_kb / 1024 for i in r.intervals], linestyle="--",
                        label=f"{r.server}: SIP process")
        ax.set_title(f"{scenario} at {RATES.get(scenario, 0):g}/s")
        ax.set_xlabel("completed operations (thousands)")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


# ------------------------------------------------------------------------------------------ main


def run_scenario(scenario: str, args: argparse.Namespace, root: Path, data_dir: Path,
                 accounts: list[tuple[str, str]], emit: Callable[[str], None]) -> list[ServerRun]:
    rate = args.rate.get(scenario, RATES[scenario])
    calls = int(rate * args.minutes * 60)
    kinds = ["callpath"]
    ref = REFERENCE[scenario]
    if not args.no_reference:
        if ref == "kamailio" and sb.kamailio_binary():
            kinds.append("kamailio")
        elif ref == "sippy":
            usable, why = sb.ensure_sippy(emit)
            if usable:
                kinds.append("sippy")
            else:
                emit(f"  Sippy not usable: {why}")
        else:
            emit(f"  {ref} is not installed: callpath alone")
    groups = [kinds] if not args.sequential else [[k] for k in kinds]
    runs: list[ServerRun] = []
    for group in groups:
        sides = [Side(scenario, k, root / f"{scenario}-{k}", data_dir, rate, calls, accounts) for k in group]
        try:
            for s in sides:
                s.start()
            emit(f"{scenario}: {', '.join(group)} at {rate:g}/s for {args.minutes:g} min ({calls} each), "
                 f"a line per {args.interval:g} s")
            for s in sides:
                s.begin_load()
            t0 = time.monotonic()
            n = 0
            while any(s.uac is not None and s.uac.proc is not None and s.uac.proc.poll() is None for s in sides):
                n += 1
                time.sleep(max(0.0, t0 + n * args.interval - time.monotonic()))
                for s in sides:
                    emit(interval_line(s.kind, s.sample(args.interval)))
            for s in sides:
                s.finish()
            emit(f"  load over; settling {args.settle:g} s (every transaction timer runs out)")
            time.sleep(args.settle)
            for s in sides:
                s.settle(args.settle)
                analyse(s.run, args.warmup)
                r = s.run
                emit(f"  {s.kind}: {r.completed} ok, {r.failed} failed, {r.retransmissions} retrans; RSS idle "
                     f"{r.idle_rss_kb / 1024:.1f} MB, settled {fmt(r.settled_rss_kb and r.settled_rss_kb / 1024, '.1f')} MB; "
                     f"slope {fmt(r.slope_kb_per_1000, '.2f')} KB per 1,000 after call {r.slope_from_call}; "
                     f"loop lag max {fmt(r.lag_max_ms)} ms" + (f"\n    {r.reason[:600]}" if r.reason else ""))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next scenario
            for s in sides:
                s.run.status, s.run.reason = "failed", f"{type(exc).__name__}: {exc}"
            emit(f"  {scenario} failed: {type(exc).__name__}: {exc}")
        finally:
            for s in sides:
                s.stop()
        runs += [s.run for s in sides]
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--only", default="proxy,register,b2b", help="comma-separated scenarios")
    ap.add_argument("--minutes", type=float, default=20.0, help="load time per scenario")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--settle", type=float, default=40.0, help="seconds after the load before the settled RSS")
    ap.add_argument("--warmup", type=float, default=0.15, help="share of the intervals left out of the slope")
    ap.add_argument("--rate", action="append", default=[], metavar="SCENARIO=N",
                    help="offered rate per scenario (default proxy=100, register=200, b2b=50)")
    ap.add_argument("--no-reference", action="store_true", help="callpath alone (no Kamailio / Sippy)")
    ap.add_argument("--sequential", action="store_true",
                    help="run the reference after callpath instead of side by side at the same time")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp statistics)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                    help="no load: tables and plot from saved results (a later file's scenario/server wins)")
    args = ap.parse_args(argv)
    if args.from_json:
        runs, envs = load_runs(args.from_json, args.warmup)
        write_report(runs, {"merged_from": [str(p) for p in args.from_json], "environments": envs,
                            "date": ", ".join(e.get("date", "?") for e in envs)}, args.out, stamp=False)
        return 0
    args.rate = {k: float(v) for k, v in (item.split("=", 1) for item in args.rate)}
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in RATES]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(RATES)}")
    if not sb.sipp_binary():
        print("soak: sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="callpath-soak-"))

    def emit(text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)

    runs: list[ServerRun] = []
    try:
        accounts = sb.users(100)
        data_dir = root / "callpath-data"
        emit(f"creating {len(accounts) + 1} callpath accounts in {data_dir}")
        sb.create_callpath_accounts(root, data_dir, accounts)
        for scenario in scenarios:
            runs += run_scenario(scenario, args, root, data_dir, accounts, emit)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            emit(f"work directory kept: {root}")
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": sb.machine_info(), "sipp": sb.sipp_version(),
           "kamailio": sb.kamailio_version(), "python": sb.python_info(str(sb.CALLPATH_VENV / "bin" / "python")),
           "git": sb_git(), "args": {k: v for k, v in vars(args).items() if k not in ("out", "from_json")}}
    write_report(runs, env, args.out, stamp=True)
    return 0 if all(r.status == "ok" for r in runs) else 1


def sb_git() -> str:
    """The commit callpath ran at (with '+changes' when the tree was dirty)."""
    import subprocess

    def git(*a: str) -> str:
        done = subprocess.run(["git", "-C", str(sb.REPO_ROOT), *a], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def load_runs(paths: list[Path], warmup: float) -> tuple[list[ServerRun], list[dict[str, Any]]]:
    """Runs from saved results; a later file's (scenario, server) replaces an earlier one's."""
    merged: dict[tuple[str, str], ServerRun] = {}
    envs = []
    for path in paths:
        data = json.loads(path.read_text())
        envs.append(data.get("environment", {}))
        for raw in data.get("runs", []):
            raw = dict(raw)
            raw["intervals"] = [Interval(**i) for i in raw.get("intervals", [])]
            run = ServerRun(**raw)
            analyse(run, warmup)
            merged[(run.scenario, run.server)] = run
    order = {name: i for i, name in enumerate(RATES)}
    return sorted(merged.values(), key=lambda r: (order.get(r.scenario, 99), r.server != "callpath")), envs


def write_report(runs: list[ServerRun], env: dict[str, Any], out: Path, stamp: bool) -> None:
    """The summary table on stdout; soak-latest.json/.md (and a timestamped copy) under `out`; the plot."""
    rows = summary_rows(runs)
    print("\n" + text_table(rows))
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "runs": [asdict(r) for r in runs]}
    names = ["soak-latest.json"] + ([f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"] if stamp else [])
    for name in names:
        (out / name).write_text(json.dumps(sb.to_jsonable(payload), indent=1, default=str))
    md = [f"# Soak {env.get('date', '')}", "", md_table(rows), ""]
    for r in runs:
        md += [f"## {r.scenario} / {r.server}", "",
               "| t s | RSS MB | CPU % | lag p99/max ms | longest GC pause ms | ok | failed | retrans |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        md += [f"| {i.t_s:.0f} | {i.rss_kb / 1024:.1f} | {i.cpu_pct:.1f} | {fmt(i.lag_p99_ms)}/{fmt(i.lag_max_ms)} | "
               f"{fmt(i.gc_max_pause_ms, '.1f')} | {i.completed} | {i.failed} | {i.retransmissions} |"
               for i in r.intervals]
        md.append("")
    (out / "soak-latest.md").write_text("\n".join(md))
    where = plot(runs, PLOT)
    print(f"\nresults: {out / 'soak-latest.json'}, {out / 'soak-latest.md'}"
          + (f", plot {where}" if where else " (no plot: matplotlib does not import)"))


if __name__ == "__main__":
    sys.exit(main())
