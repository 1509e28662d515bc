"""Where an anchored back-to-back call's CPU goes: py-spy on callpath's SIP process and media worker(s).

    python3 benchmarks/sip/profile_anchored.py [--rate 50] [--seconds 20] [--top 25] [--out DIR]

The same setup as ``run.py --only anchored``: callpath with ``[media]`` on and ``[calls] anchor = "always"``, a
SIPp UAS registered as ``callee``, a SIPp UAC calling it at a fixed rate (``uac_b2b_noauth.xml``, ``-d 0``, no
RTP). While the load runs, ``py-spy record --nonblocking --format raw`` samples the SIP process and every media
worker (100 samples/s each, idle frames left out), and the script prints, per process, the functions that hold
the most samples on CPU (with `--native` also C frames: uvloop, the interpreter, libc): by self time (the frame at the top of the stack) and inclusive (anywhere in it), with
the process's CPU per call from /proc over the same seconds. The raw stacks stay in ``--out`` (default: a temp
directory) for a flame graph (``flamegraph.pl``, speedscope).

py-spy comes from PyPI (``pip install py-spy``); give its path with ``PY_SPY=...`` when it is not on PATH. It
needs ptrace rights over the processes (root, or ``kernel.yama.ptrace_scope = 0``).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sipbench as sb


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


_LINE = re.compile(r":\d+\)$")


def summarise(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top functions by self samples, top by inclusive samples) of a py-spy raw (collapsed) file;
    a function's lines are counted together ('f (file.py:12)' and 'f (file.py:30)' are 'f (file.py)')."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";")
                  if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] += count
        for frame in set(frames):
            incl_count[frame] += count
    return total, self_count.most_common(top), incl_count.most_common(top)


def short(frame: str) -> str:
    """'handle (sipcore/ua.py:120)' with the checkout's and the interpreter's prefixes dropped."""
    for prefix in (str(sb.REPO_ROOT) + "/", "/usr/lib/python3.11/", "/usr/lib/python3/dist-packages/"):
        frame = frame.replace(prefix, "")
    return frame.replace(str(sb.CALLPATH_VENV), ".venv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50.0, help="calls per second (default 50, run.py's fixed rate)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load sampled (default 20)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per table (default 25)")
    ap.add_argument("--sample-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    ap.add_argument("--native", action="store_true",
                    help="C frames too (py-spy --native: pauses the process at each sample, so the CPU figures "
                         "grow; use it for where the event loop's own time goes, not for how much there is)")
    ap.add_argument("--out", type=Path, help="keep the raw stacks and logs here (default: a temp directory)")
    args = ap.parse_args(argv)
    spy = py_spy()
    if not spy:
        print("py-spy is not installed (pip install py-spy; or PY_SPY=/path/to/py-spy)", file=sys.stderr)
        return 2
    if not sb.sipp_binary():
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    work = args.out or Path(tempfile.mkdtemp(prefix="callpath-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    sb.create_callpath_accounts(work, work / "data", [])
    server = sb.CallpathServer(work / "callpath", work / "data", auth=False, media=True, anchor="always")
    uas: sb.Sipp | None = None
    spies: list[tuple[str, int, subprocess.Popen, Path]] = []
    try:
        server.start()
        assert server.proc is not None
        uas_port = sb.free_udp_port()
        uas = sb.Sipp("uas", work, scenario_name="uas_b2b", target=None, local_port=uas_port).start_listening()
        callee_csv = sb.write_users_csv(work / "callee.csv", [(sb.CALLEE, sb.PASSWORD)])
        reg = sb.Sipp("register-callee", work, scenario_name="register_loop_noauth", target=server.target,
                      local_port=sb.free_udp_port(), calls=1, timeout_s=10, users_csv=callee_csv,
                      keys={"domain": sb.DOMAIN, "contact_port": uas_port, "expires": 3600}).start().wait(30)
        if not reg.ok:
            raise sb.BenchError(f"registering the UAS failed: {reg.summary()}\n{reg.errors}")

        def uac(name: str, calls: int) -> sb.Sipp:
            return sb.Sipp(name, work, scenario_name="uac_b2b_noauth", target=server.target,
                           local_port=sb.free_udp_port(), calls=calls, rate=args.rate,
                           timeout_s=calls / args.rate + 30, service=sb.CALLEE, duration_ms=0, rtd="setup")

        warm = uac("warmup", int(args.rate * 2)).start().wait(timeout=60)
        if not warm.ok:
            raise sb.BenchError(f"warm-up calls failed: {warm.summary()}\n{warm.errors}")
        calls = int(args.rate * (args.seconds + 2))
        load = uac("load", calls).start()
        time.sleep(1.0)  # sample the steady state, not SIPp's first calls
        roles = {"sip": [server.proc.pid]} | {
            f"media-{n}": [pid] for n, pid in enumerate(p for p in server.pids() if p != server.proc.pid
                                                        and "resource_tracker" not in _cmdline(p))}
        parts0 = {role: sb.cpu_sample(pids) for role, pids in roles.items()}
        io0 = {role: _io(pids[0]) for role, pids in roles.items()}
        us0 = {role: _user_system(pids[0]) for role, pids in roles.items()}
        for role, pids in roles.items():
            out = work / f"{role}.raw"
            mode = ["--native"] if args.native else ["--nonblocking"]
            proc = subprocess.Popen([spy, "record", *mode, "--format", "raw", "--rate", str(args.sample_rate),
                                     "--duration", str(int(args.seconds)), "--pid", str(pids[0]), "--output",
                                     str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            spies.append((role, pids[0], proc, out))
        for _, _, proc, _ in spies:
            proc.wait(timeout=args.seconds + 60)
        parts1 = {role: sb.cpu_sample(pids) for role, pids in roles.items()}
        io1 = {role: _io(pids[0]) for role, pids in roles.items()}
        us1 = {role: _user_system(pids[0]) for role, pids in roles.items()}
        done0 = load.progress()[0]
        outcome = load.wait(timeout=calls / args.rate + 60)
        print(f"load: {outcome.summary()} at {args.rate:g}/s; sampled ~{args.seconds:g}s ({done0} calls done by the "
              f"end of sampling)\n")
        for role, pid, proc, out in spies:
            cpu = parts1[role].seconds - parts0[role].seconds
            span = parts1[role].at - parts0[role].at
            per_call = cpu / (args.rate * span) * 1e6 if span else 0.0
            if not out.exists():
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                print(f"== {role} (pid {pid}): py-spy wrote nothing: {err[-500:]}")
                continue
            total, by_self, by_incl = summarise(out, args.top)
            calls_in_span = args.rate * span
            sys_calls = {k: (io1[role].get(k, 0) - io0[role].get(k, 0)) / calls_in_span for k in ("syscr", "syscw")}
            print(f"== {role} (pid {pid}): {cpu:.2f} s CPU in {span:.1f} s = {100 * cpu / span:.0f} % of a core, "
                  f"~{per_call:.0f} µs per call; {total} samples on CPU; per call {sys_calls['syscr']:.1f} read "
                  f"and {sys_calls['syscw']:.1f} write system calls (/proc/PID/io)")
            user, system = (b - a for a, b in zip(us0[role], us1[role]))
            if user + system:
                print(f"   user {user:.2f} s, system {system:.2f} s ({100 * system / (user + system):.0f} % in the kernel)")
            for title, rows in (("self", by_self), ("inclusive", by_incl)):
                print(f"  -- by {title}")
                for frame, count in rows:
                    print(f"  {100 * count / total:5.1f} %  {short(frame)}")
            print()
    finally:
        for _, _, proc, _ in spies:
            if proc.poll() is None:
                proc.terminate()
        if uas is not None:
            uas.stop(grace=3)
        server.stop()
    print(f"raw stacks and logs: {work}")
    return 0


def _user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (/proc/PID/stat utime, stime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) / sb.CLK_TCK, int(fields[12]) / sb.CLK_TCK


def _io(pid: int) -> dict[str, int]:
    """/proc/PID/io counters (syscr, syscw: read- and write-family system calls so far)."""
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
