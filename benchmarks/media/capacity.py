"""Whole-bridge capacity on loopback: CPU of the media worker process per call-second, loss and added latency.

    python benchmarks/media/capacity.py --quick                      # 20 and 50 calls, every path
    python benchmarks/media/capacity.py                              # 50, 200, 500 calls
    python benchmarks/media/capacity.py --paths rtp rtpengine --calls 50 200 500 --window 15 --json out.json

Paths (browser = side a, trunk = side b, both ends emulated by ``loadgen.py`` in a separate process):
- ``opus``: browser Opus/48000 over DTLS-SRTP <-> trunk PCMU: transcoded (worker Opus complexity 5);
- ``srtp``: browser PCMU over DTLS-SRTP <-> trunk PCMU: SRTP<->RTP passthrough;
- ``rtp``: plain RTP PCMU <-> plain RTP PCMU: relay;
- ``rtpengine``: the same RTP relay load through the Debian ``rtpengine`` daemon (userspace, one worker
  thread, ng protocol; see rtpengine_ng.py), when it is installed.
With ``--record DIR`` every call of the callpath paths is recorded (``record``) while it is measured.
The worker is a real ``start_workers(1, ...)`` process (uvloop, control socket); its CPU (utime+stime from
/proc/PID/stat, all threads) is read at the start and end of the measurement window, after a warm-up. The
load generator's own CPU is reported separately and not counted (``--generators N`` splits the calls over N
generator processes that start streaming together; "gen CPU %" is then the busiest one's). Loss: packets that never came out
(passthrough: end to end; transcoding: packets that did not reach the worker or came too late for its jitter
buffer, plus gaps in its output). Latency: one-way added latency, arrival - send time of the input packet
carried. A PNG plot (capacity.png) is written when matplotlib imports (``pip install matplotlib``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import loadgen  # noqa: E402

PATHS = ("opus", "srtp", "rtp", "rtpengine")
LABEL = {"opus": "Opus<->PCMU transcode", "srtp": "SRTP<->RTP passthrough", "rtp": "RTP<->RTP relay",
         "rtpengine": "rtpengine RTP relay"}


def run_level(path: str, calls: int, pid: int, args: argparse.Namespace, address) -> dict:
    cfg = {"path": path, "calls": calls, "pid": pid, "warmup": args.warmup, "window": args.window,
           "record": args.record}
    if path == "rtpengine":
        cfg["ng"] = address
    else:
        cfg["control"] = address
    ctx = multiprocessing.get_context("spawn")
    parts = max(1, min(args.generators, calls))
    if parts > 1:
        configs = _split(cfg, parts, ctx)         # (their barrier must outlive the children's start)
        return merge_parts(path, calls, [_generator(ctx, part, args) for part in configs], args)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=loadgen.run, args=(cfg, child), name=f"loadgen-{path}-{calls}")
    proc.start()
    child.close()
    renice(proc.pid, None if args.nice is None else args.nice + 5)
    spy = None
    if args.profile:
        import subprocess
        os.makedirs(args.profile, exist_ok=True)
        out = os.path.join(args.profile, f"{path}-{calls}.txt")
        exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
        spy = subprocess.Popen([exe if os.path.exists(exe) else "py-spy", "record", "-p", str(pid), "-d", str(int(args.warmup + args.window + 5)),
                                "-r", "200", *(["--native"] if os.environ.get("PYSPY_NATIVE", "1") == "1" else []), "-f", "raw", "-o", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    limit = 120 + calls * 0.2 + args.warmup + args.window
    if not parent.poll(limit):
        proc.kill()
        proc.join()
        return {"path": path, "calls": calls, "error": "load generator timed out"}
    result = parent.recv()
    proc.join(10)
    if spy is not None:
        import signal
        spy.send_signal(signal.SIGINT)        # py-spy writes its file on SIGINT (not on SIGTERM)
        spy.wait(30)
    return result


def _split(cfg: dict, parts: int, ctx) -> list[dict]:
    """The configurations of ``parts`` generator processes sharing one level's calls (and a start barrier)."""
    barrier = ctx.Barrier(parts)
    out, first = [], 0
    for part in range(parts):
        n = cfg["calls"] // parts + (1 if part < cfg["calls"] % parts else 0)
        out.append(dict(cfg, calls=n, part=part, parts=parts, first=first, barrier=barrier))
        first += n
    return out


def _generator(ctx, cfg: dict, args: argparse.Namespace):
    """Start one generator process; returns (process, pipe)."""
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=loadgen.run, args=(cfg, child), name=f"loadgen-{cfg['path']}-{cfg['part']}")
    proc.start()
    child.close()
    renice(proc.pid, None if args.nice is None else args.nice + 5)
    return proc, parent


def merge_parts(path: str, calls: int, started: list, args: argparse.Namespace) -> dict:
    """Wait for every generator process of a level and add their figures up: the worker's CPU over the
    window of the first (they start streaming together), counts summed, latency percentiles over all
    samples, and the generators' CPU as that of the busiest one (the figure that says whether they kept up)."""
    import numpy as np

    limit = 120 + calls * 0.2 + args.warmup + args.window
    results = []
    for proc, pipe in started:
        if not pipe.poll(limit):
            for p, _ in started:
                p.kill()
            return {"path": path, "calls": calls, "error": "load generator timed out"}
        results.append(pipe.recv())
        proc.join(10)
    errors = [r for r in results if "error" in r]
    if errors:
        return {"path": path, "calls": calls, "error": errors[0]["error"]}
    first = results[0]
    merged = dict(first, calls=calls, generators=len(results))
    for key in ("sent", "sent_window", "received", "never_received", "seq_gaps", "expected_by_seq",
                "jitter_late", "late_sends"):
        merged[key] = sum(r[key] for r in results)
    merged["worker_packets_in"] = sum(r["worker_packets_in"] or 0 for r in results) \
        if all(r["worker_packets_in"] is not None for r in results) else None
    merged["setup_s"] = max(r["setup_s"] for r in results)
    merged["gen_cpu_s"] = max(r["gen_cpu_s"] for r in results)
    lat = np.concatenate([r.pop("lat_samples") for r in results])
    merged.pop("lat_samples", None)
    merged["lat_p50"] = float(np.percentile(lat, 50)) if lat.size else None
    merged["lat_p99"] = float(np.percentile(lat, 99)) if lat.size else None
    merged["lat_max"] = float(lat.max()) if lat.size else None
    return merged


def renice(pid: int, value: int | None) -> None:
    """Raise the priority of one of our own benchmark processes (shared machines: other loads compete)."""
    if value is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, value)
    except (PermissionError, OSError) as exc:
        print(f"renice {pid} to {value}: {exc} (measuring at normal priority)")


def derive(r: dict) -> dict:
    if "error" in r:
        return r
    w, cpu, n = r["window_s"], r["worker_cpu_s"], r["calls"]
    r["cpu_pct"] = 100.0 * cpu / w
    r["us_per_call_s"] = cpu * 1e6 / (n * w)
    r["us_per_packet"] = cpu * 1e6 / r["sent_window"]          # packets into the worker in the window
    r["gen_cpu_pct"] = 100.0 * r["gen_cpu_s"] / w
    sent = r["sent"]
    if r["path"] == "opus":
        lost_in = max(0, sent - (r["worker_packets_in"] or 0)) + r["jitter_late"]
        r["loss_pct"] = 100.0 * lost_in / sent + 100.0 * r["seq_gaps"] / max(1, r["expected_by_seq"])
    else:
        r["loss_pct"] = 100.0 * max(0, sent - r["received"]) / sent
    r["calls_per_core"] = 1e6 / r["us_per_call_s"]
    r["saturated"] = r["loss_pct"] > 0.1 or (r["lat_p99"] or 0) > 100
    return r


def table(rows: list[dict]) -> str:
    head = (f"{'path':<24} {'calls':>5} {'CPU %':>6} {'us/call-s':>9} {'us/pkt':>7} {'loss %':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'calls/core':>10} {'gen CPU %':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{LABEL.get(r['path'], r['path']):<24} {r['calls']:>5}  ERROR: {r['error']}")
            continue
        lines.append(f"{LABEL[r['path']]:<24} {r['calls']:>5} {r['cpu_pct']:>6.1f} {r['us_per_call_s']:>9.0f} "
                     f"{r['us_per_packet']:>7.1f} {r['loss_pct']:>7.3f} {r['lat_p50'] or 0:>7.2f} "
                     f"{r['lat_p99'] or 0:>7.2f} {r['calls_per_core']:>10.0f}{'*' if r['saturated'] else ' '}"
                     f"{r['gen_cpu_pct']:>9.1f}")
    lines.append("* loss > 0.1 % or p99 > 100 ms: the worker did not keep up, so its CPU per offered call-second "
                 "understates the cost (calls/core not valid)")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in PATHS:
        pts = sorted((r["calls"], r["cpu_pct"], r.get("saturated", False))
                     for r in rows if r.get("path") == p and "cpu_pct" in r)
        if pts:
            line, = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=LABEL[p])
            bad = [(x, y) for x, y, sat in pts if sat]
            if bad:
                ax.plot([x for x, _ in bad], [y for _, y in bad], linestyle="none", marker="x", markersize=11,
                        color=line.get_color())
    ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("media process CPU, % of one core")
    ax.set_title("callpath media worker capacity (loopback; x = loss or p99 > 100 ms)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
    return True


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(), "uvloop": uv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 and 50 calls, shorter window")
    ap.add_argument("--calls", type=int, nargs="+")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--window", type=float)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--record", metavar="DIR",
                    help="record every call (two-channel WAV per call into DIR) while measuring")
    ap.add_argument("--generators", type=int, default=1,
                    help="load generator processes sharing each level's calls (2 for 600+ SRTP calls: one "
                         "generator process tops out there)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy record the worker (raw collapsed stacks) into DIR")
    ap.add_argument("--nice", type=int, default=-15 if os.geteuid() == 0 else None,
                    help="renice the worker (and the load generator to this + 5); default -15 as root, off otherwise")
    ap.add_argument("--plot-only", metavar="JSON", nargs="+", help="only draw the plot from --json file(s)")
    ap.add_argument("--plot", default=os.path.join(HERE, "capacity.png"))
    args = ap.parse_args()
    if args.plot_only:
        rows = []
        for name in args.plot_only:
            with open(name) as f:
                rows += [derive(r) if "cpu_pct" not in r and "error" not in r else r for r in json.load(f)["rows"]]
        plot(rows, args.plot)
        return
    args.calls = args.calls or ([20, 50] if args.quick else [50, 200, 500])
    if args.record:
        args.record = os.path.abspath(args.record)
        os.makedirs(args.record, exist_ok=True)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0)
    args.window = args.window if args.window is not None else (8.0 if args.quick else 15.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from media.control import start_workers
    from media.worker import MediaSettings
    info = machine()
    print(json.dumps(info))
    rows: list[dict] = []
    for path in args.paths:
        if path == "rtpengine":
            import rtpengine_ng
            try:
                proc = rtpengine_ng.start_rtpengine(log_path=os.path.join(tempfile.gettempdir(), "rtpengine.log"))
                renice(proc.pid, args.nice)
                for tid in os.listdir(f"/proc/{proc.pid}/task"):
                    renice(int(tid), args.nice)
            except Exception as exc:  # noqa: BLE001
                print(f"rtpengine: cannot run: {exc}")
                rows.append({"path": path, "calls": 0, "error": f"cannot run: {exc}"})
                continue
            try:
                for n in args.calls:
                    r = derive(run_level(path, n, proc.pid, args, ("127.0.0.1", 22222)))
                    rows.append(r)
                    print(table([r]).splitlines()[-2], flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
            continue
        control = os.path.join(tempfile.mkdtemp(prefix="callpath-cap-"), "control.sock")
        handles = start_workers(1, MediaSettings(bind_host="127.0.0.1", rtp_port_min=30000, rtp_port_max=39999,
                                                 control_path=control, opus_complexity=5))
        renice(handles[0].process.pid, args.nice)
        try:
            for n in args.calls:
                r = derive(run_level(path, n, handles[0].process.pid, args, handles[0].address))
                rows.append(r)
                print(table([r]).splitlines()[-2], flush=True)
                time.sleep(0.5)
        finally:
            for h in handles:
                h.stop()
    print()
    print(table(rows))
    rtp = {r["calls"]: r for r in rows if r.get("path") == "rtp" and "us_per_packet" in r}
    eng = {r["calls"]: r for r in rows if r.get("path") == "rtpengine" and "us_per_packet" in r}
    for n in sorted(set(rtp) & set(eng)):
        print(f"RTP relay at {n} calls: callpath {rtp[n]['us_per_packet']:.1f} us/packet, rtpengine "
              f"{eng[n]['us_per_packet']:.1f} us/packet: ratio {rtp[n]['us_per_packet'] / eng[n]['us_per_packet']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
