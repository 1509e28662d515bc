#!/usr/bin/env python3
"""SIP under abuse: one source floods unauthenticated REGISTERs or INVITEs while a legitimate phone works.

For each flood (``--which``) and each server (``--servers``: callpath, then Kamailio, one after the other,
each freshly started, the same flood) this measures:

  * the flood: datagrams/s one sender process reached from one address and port (127.0.0.2), and what the
    server answered it (responses by status, read on the flooder's own socket by a receiver thread, during
    the flood and after it: a stateful server keeps retransmitting 407s nobody ACKs);
  * the legitimate phone (flood_phone.py, a subprocess; 127.0.0.3, the real account user1): a complete
    digest REGISTER (REGISTER / 401 / REGISTER + Authorization / 200) started 10 times a second, and an
    authenticated call to the registered
    account ``callee`` (a small UAS on 127.0.0.4: INVITE / 407 / ACK / INVITE + credentials / 200 / ACK /
    BYE) twice a second: the share completed within 1 s before, during and after the flood, latency
    p50/p99, and where its requests were lost (each retransmitted copy carries its number in a Via
    parameter the server echoes, so an answer says which copy it answered: an original that was never
    answered was lost; one answered late waited in a queue);
  * memory: RSS of the server (callpath: its process and children; Kamailio: the sum over its processes,
    and the sum of PSS, which counts the shared memory once) idle, at its peak during the flood, and 10 s
    and 40 s after it;
  * recovery: after the flood stops, the time until legitimate REGISTERs (10 in a row) and calls (3 in a
    row) complete within 1 s again;
  * the server's UDP socket drops (/proc/net/udp: a full receive queue, and a socket filter's drops, e.g.
    callpath's limiter) and the system's Udp RcvbufErrors (/proc/net/snmp: a full receive queue only);
  * CPU of the server, the flooder, every other process and the machine (user/system/softirq) during it;
  * callpath's /api/v1/status: every counter whose name mentions limit, pike, reject, drop, block, shed or
    overload, wherever it sits in the JSON (so a per-source limiter shows up once it exists).

The flooder is ``flood_sender.c`` (sendmmsg from one socket, a receiver thread counting the answers),
compiled at run time with ``cc`` into the work directory; without a compiler (or with ``--python-flooder``)
a Python sender speaking the same protocol is used. Flood messages are scanner-style (SIPVicious'
``friendly-scanner``): 4,096 templates, REGISTERs for extensions 100-999 and names, or INVITEs with SDP to
the local account ``callee``, sent in turn, the sender stamping its datagram counter into each Call-ID,
branch and From tag, so that every datagram is a new request (``--cycle``: the 4,096 as they are, over and
over); no credentials, 407s never ACKed.

Servers: callpath on its defaults with auth on (MD5 and SHA-256 challenges, log level info, one process,
its flood limiter as the code has it; ``--no-limiter`` turns it off), SIP on UDP 127.0.0.1; Kamailio 5.6
with benchmarks/sip/kamailio/kamailio.cfg (WITH_AUTH: REGISTER and INVITE challenged, usrloc in memory, no
pike), 2 UDP workers, 64 MB of shared memory (preallocated, so its memory cannot grow past that), 16 MB of
private memory per process.

Usage (needs .venv from `bash dev.sh test`; Kamailio optional):
  python3 benchmarks/sip/flood.py                        # both floods, both servers, 20 s floods (~6 min)
  python3 benchmarks/sip/flood.py --quick                # smoke run: 5 s floods, short baselines (~2 min)
  python3 benchmarks/sip/flood.py --which invite --servers callpath --duration 10
  python3 benchmarks/sip/flood.py --snapshot HEAD        # callpath from a copy of a commit (others may be
                                                         # editing the work tree meanwhile)
  python3 benchmarks/sip/flood.py --report FILE.json     # the tables of a saved run
Everything listens and sends on 127.0.0.0/8 only (the C sender refuses any other address).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sipbench as sb  # noqa: E402
import soak  # noqa: E402  (rss_kb, tables, the git description)
from flood_phone import SDP, loopback  # noqa: E402

RESULTS = sb.HERE / "flood-results"
SENDER_C = sb.HERE / "flood_sender.c"
PHONE_SCRIPT = sb.HERE / "flood_phone.py"
FLOOD_IP = "127.0.0.2"     # the flooder
PHONE_IP = "127.0.0.3"     # the legitimate phone (user1)
CALLEE_IP = "127.0.0.4"    # the account it calls (callee), a small UAS
PHONE_USER = "user1"
SERVER_IP = sb.LOCAL
STATUS_WORDS = re.compile(r"limit|pike|reject|drop|block|shed|overload", re.I)
OK_WITHIN = 1.0            # "served": the whole registration or call set-up within this many seconds


def emit(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ============================================================================ flood messages


SCANNER_NAMES = ["admin", "test", "user", "sip", "guest", "operator", "support", "office", "reception", "voip"]
STAMP = b"########"   # overwritten by the sender with a per-datagram counter (8 hex digits)


def scanner_messages(kind: str, src_ip: str, src_port: int, domain: str, count: int = 4096,
                     seed: int = 10, unique: bool = True) -> list[bytes]:
    """`count` scanner-style requests (SIPVicious' friendly-scanner): REGISTERs for extensions and names,
    or INVITEs with SDP to the local account CALLEE. Their Call-ID, branch and From tag carry STAMP, which
    the sender overwrites with its datagram counter: every datagram is a new request, as a scanner's are.
    unique=False: the stamps are fixed here, so the same `count` requests come round again and again
    (a stateful server then absorbs the repeats as retransmissions of transactions it still holds)."""
    rnd = random.Random(seed)
    exts = [str(n) for n in range(100, 1000)] + SCANNER_NAMES
    out = []
    mark = STAMP.decode()
    for i in range(count):
        ext = exts[i % len(exts)]
        branch = f"z9hG4bK-{rnd.getrandbits(32)}-{i}-{mark}"
        tag = f"{rnd.getrandbits(32):08x}{mark}"
        call_id = f"{rnd.getrandbits(64)}{i}-{mark}"
        via = f"SIP/2.0/UDP {src_ip}:{src_port};branch={branch};rport"
        if kind == "register":
            text = (f"REGISTER sip:{domain} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
                    f"To: \"{ext}\" <sip:{ext}@{domain}>\r\nFrom: \"{ext}\" <sip:{ext}@{domain}>;tag={tag}\r\n"
                    f"User-Agent: friendly-scanner\r\nCall-ID: {call_id}\r\n"
                    f"Contact: <sip:{ext}@{src_ip}:{src_port}>\r\nCSeq: 1 REGISTER\r\nExpires: 3600\r\n"
                    f"Accept: application/sdp\r\nContent-Length: 0\r\n\r\n")
        else:
            body = SDP.format(sess=rnd.getrandbits(31), ip=src_ip, port=10000 + 2 * (i % 5000))
            text = (f"INVITE sip:{sb.CALLEE}@{domain} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
                    f"To: <sip:{sb.CALLEE}@{domain}>\r\nFrom: \"{ext}\" <sip:{ext}@{domain}>;tag={tag}\r\n"
                    f"User-Agent: friendly-scanner\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                    f"Contact: <sip:{ext}@{src_ip}:{src_port}>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
                    f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")
        data = text.encode()
        out.append(data if unique else data.replace(STAMP, b"%08x" % i))
    return out


def write_messages(path: Path, messages: list[bytes]) -> None:
    with open(path, "wb") as fh:
        for m in messages:
            fh.write(struct.pack("<I", len(m)) + m)


# ============================================================================ the flooder


def build_sender(workdir: Path) -> tuple[Path | None, str]:
    """flood_sender.c compiled into workdir; (None, why) without a compiler or when it fails."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc)"
    out = workdir / "flood_sender"
    done = subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(SENDER_C)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
        return None, f"cc failed: {(done.stdout + done.stderr).strip()[-500:]}"
    return out, f"C (sendmmsg, {Path(cc).name})"


def python_flooder(argv: list[str]) -> int:
    """The fallback sender: the protocol of flood_sender.c (see its header), socket.send in a loop."""
    src, sport, dst, dport, path, duration = argv
    if not (loopback(src) and loopback(dst)):
        print("flooder: both addresses must be in 127.0.0.0/8", file=sys.stderr)
        return 2
    data = Path(path).read_bytes()
    msgs, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        msgs.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    parts = [m.split(STAMP) for m in msgs]              # the text between the stamps
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((src, int(sport)))
    sock.connect((dst, int(dport)))
    sock.settimeout(0.2)
    counts: dict[int, int] = {}
    state = {"received": 0, "other": 0, "stop": False}

    def receive() -> None:
        while not state["stop"]:
            try:
                d = sock.recv(4096)
            except (TimeoutError, socket.timeout, OSError):
                continue
            state["received"] += 1
            if d[:8] == b"SIP/2.0 " and d[8:11].isdigit():
                code = int(d[8:11])
                counts[code] = counts.get(code, 0) + 1
            else:
                state["other"] += 1

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    send = sock.send
    t0 = time.monotonic()
    print(f"ready {t0:.6f}", flush=True)
    end, next_tick = t0 + float(duration), t0 + 1.0
    sent = errors = 0
    n_msgs, i = len(msgs), 0
    while not stop["now"]:
        for _ in range(256):
            p = parts[i]
            try:
                send(p[0] if len(p) == 1 else (b"%08x" % (sent & 0xFFFFFFFF)).join(p))
                sent += 1
            except OSError:
                errors += 1
            i = i + 1 if i + 1 < n_msgs else 0
        t = time.monotonic()
        if t >= end:
            break
        if t >= next_tick:
            print(f"tick {t - t0:.3f} {sent} {state['received']} {errors}", flush=True)
            next_tick += 1.0
    t_end = time.monotonic()
    print(f"sent {sent} {t_end - t0:.6f} {errors} {t_end:.6f} {state['received']}", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    rnext = t_end + 1.0
    while not stop["now"]:
        if sel.select(0.2) and not os.read(sys.stdin.fileno(), 256):
            break
        if time.monotonic() >= rnext:
            print(f"rtick {time.monotonic() - t0:.3f} {state['received']}", flush=True)
            rnext += 1.0
    state["stop"] = True
    rx.join(1.0)
    for code in sorted(counts):
        print(f"status {code} {counts[code]}")
    print(f"other {state['other']}\nend", flush=True)
    return 0


class Flooder:
    """One flood: the sender process (C or Python), its progress and the answers it counted."""

    def __init__(self, binary: Path | None, workdir: Path, kind: str, dst_port: int, duration: float,
                 unique: bool = True) -> None:
        self.binary, self.kind, self.duration = binary, kind, duration
        self.src_port = free_port(FLOOD_IP)
        self.msgfile = workdir / f"flood-{kind}.bin"
        self.messages = scanner_messages(kind, FLOOD_IP, self.src_port, sb.DOMAIN, unique=unique)
        write_messages(self.msgfile, self.messages)
        args = [FLOOD_IP, str(self.src_port), SERVER_IP, str(dst_port), str(self.msgfile), f"{duration:g}"]
        self.command = ([str(binary), *args] if binary else
                        [sys.executable, str(Path(__file__).resolve()), "--_python-flooder", *args])
        self.proc: subprocess.Popen | None = None
        self.ready_at: float | None = None
        self.end_at: float | None = None
        self.ticks: list[tuple[float, int, int]] = []       # (t since start, sent, received)
        self.rticks: list[tuple[float, int]] = []
        self.sent = 0
        self.elapsed = 0.0
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.other = 0
        self.received_at_end = 0                           # answers counted when the sending stopped
        self.finished = threading.Event()
        self.sent_event = threading.Event()
        self.ready_event = threading.Event()
        self.stderr = ""

    def start(self) -> Flooder:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        LIVE.append(self)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        if not self.ready_event.wait(15):
            raise sb.BenchError(f"the flooder did not start: {self.stderr[-800:]}")
        return self

    def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "ready":
                self.ready_at = float(parts[1])
                self.ready_event.set()
            elif parts[0] == "tick":
                self.ticks.append((float(parts[1]), int(parts[2]), int(parts[3])))
                self.sent = int(parts[2])
            elif parts[0] == "sent":
                self.sent, self.elapsed, self.errors = int(parts[1]), float(parts[2]), int(parts[3])
                self.end_at = float(parts[4])
                self.received_at_end = int(parts[5])
                self.sent_event.set()
            elif parts[0] == "rtick":
                self.rticks.append((float(parts[1]), int(parts[2])))
            elif parts[0] == "status":
                self.statuses[parts[1]] = int(parts[2])
            elif parts[0] == "other":
                self.other = int(parts[1])
            elif parts[0] == "end":
                break
        self.ready_event.set()
        self.sent_event.set()
        self.finished.set()

    @property
    def received(self) -> int:
        last = [r for _, _, r in self.ticks[-1:]] + [r for _, r in self.rticks[-1:]]
        return max(last, default=0)

    def finish(self, timeout: float = 10.0) -> None:
        """Stop counting answers and collect the counts by status."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.finished.wait(timeout)
        self.kill()

    def kill(self) -> None:
        kill_group(self.proc)


# ============================================================================ the legitimate phone


class PhoneProcess:
    """The legitimate phone as a subprocess, and the records it writes."""

    def __init__(self, server_port: int, timeout: float, reg_rate: float, call_rate: float) -> None:
        self.cfg = {"host": SERVER_IP, "port": server_port, "domain": sb.DOMAIN, "user": PHONE_USER,
                    "password": sb.PASSWORD, "phone_ip": PHONE_IP, "callee_ip": CALLEE_IP, "timeout": timeout,
                    "expires": 3600, "reg_rate": reg_rate, "call_rate": call_rate}
        self.proc: subprocess.Popen | None = None
        self.records: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error = ""
        self.ports: dict[str, tuple[str, int]] = {}

    def start(self, timeout: float = 30.0) -> PhoneProcess:
        self.proc = subprocess.Popen([sys.executable, str(PHONE_SCRIPT), json.dumps(self.cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        LIVE.append(self)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout) or self.error:
            err = self.error or (self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else "")
            raise sb.BenchError(f"the legitimate phone did not get registered: {err}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["k"] == "ready":
                self.ports = {"phone": tuple(rec["phone"]), "callee": tuple(rec["callee"])}
                self.ready.set()
            elif rec["k"] == "error":
                self.error = rec["why"]
                self.ready.set()
            else:
                self.records.append(rec)
        self.ready.set()
        self.done.set()

    def of(self, kind: str, t_from: float, t_to: float) -> list[dict[str, Any]]:
        return [r for r in list(self.records) if r["k"] == kind and t_from <= r["t0"] < t_to]

    def stop(self, timeout: float) -> dict[str, Any]:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.done.wait(timeout)
        self.kill()
        return next((r for r in self.records if r["k"] == "summary"), {})

    def kill(self) -> None:
        kill_group(self.proc)


# ============================================================================ servers


class FloodCallpath(sb.CallpathServer):
    """callpath on its defaults (MD5 and SHA-256 challenges, log level info) with auth on and /api/v1/status."""

    def __init__(self, workdir: Path, data_dir: Path, log_level: str, limiter: bool,
                 kernel_filter: bool = True) -> None:
        # limiter=True writes no [limits] section: the flood limiter as the code has it by default (commits
        # before it existed do not know that section); False turns it off ([limits] source_limit = 0)
        super().__init__(workdir, data_dir, auth=True, log_level=log_level, web=True, limiter=limiter)
        text = "\n".join(line for line in self.config.read_text().splitlines()
                         if not line.startswith("auth_algorithms"))
        if limiter and not kernel_filter:  # the limiter drops blocked sources in user space only
            text += "\n[limits]\nkernel_filter = false"
        self.config.write_text(text + "\n")


class FloodKamailio(sb.KamailioServer):
    """benchmarks/sip/kamailio/kamailio.cfg WITH_AUTH, `workers` UDP workers, `shm_mb` of shared memory."""

    def __init__(self, workdir: Path, accounts: list[tuple[str, str]], workers: int, shm_mb: int) -> None:
        super().__init__(workdir, auth=True, accounts=accounts)
        self.workers, self.shm_mb = workers, shm_mb

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("-n") + 1] = str(self.workers)
        cmd[cmd.index("-m") + 1] = str(self.shm_mb)
        return cmd


# ============================================================================ /proc readings


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def udp_snmp() -> dict[str, int]:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]))) if len(lines) >= 2 else {}


def udp_sockets() -> dict[tuple[str, int], dict[str, int]]:
    """Every IPv4 UDP socket: (address, port) -> receive queue bytes and drops (/proc/net/udp)."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            f = line.split()
            ip_hex, port_hex = f[1].split(":")
            ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
            rx = int(f[4].split(":")[1], 16)
            out[(ip, int(port_hex, 16))] = {"rx_queue": rx, "drops": int(f[-1])}
    return out


def pss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def machine_cpu() -> list[int]:
    """The first line of /proc/stat: user nice system idle iowait irq softirq steal (clock ticks)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def machine_split(before: list[int], after: list[int], seconds: float) -> dict[str, float]:
    """Where all CPUs' time went over the interval, in % of one core (2 vCPUs: 200 in all)."""
    d = [b - a for a, b in zip(before, after)]
    scale = 100.0 / sb.CLK_TCK / max(seconds, 1e-6)
    return {"user": round((d[0] + d[1]) * scale), "system": round(d[2] * scale),
            "softirq": round((d[5] + d[6]) * scale), "idle": round((d[3] + d[4]) * scale), "steal": round(d[7] * scale)}


def process_ticks() -> dict[int, tuple[int, str]]:
    """utime+stime (clock ticks) and command of every process (/proc/PID/stat)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{entry}/stat").read_text()
                fields = text[text.rindex(")") + 2:].split()
                out[int(entry)] = (int(fields[11]) + int(fields[12]), text[text.index("(") + 1:text.rindex(")")])
    return out


def others_cpu(before: dict[int, tuple[int, str]], after: dict[int, tuple[int, str]], ours: set[int],
               seconds: float) -> tuple[float, list[str]]:
    """% of one core used by processes that are not ours over the interval, and the busiest of them."""
    per: dict[str, float] = {}
    for pid, (ticks, comm) in after.items():
        if pid in ours:
            continue
        used = ticks - before.get(pid, (0, comm))[0] if pid in before else ticks
        if used > 0:
            per[comm] = per.get(comm, 0.0) + 100.0 * used / sb.CLK_TCK / max(seconds, 1e-6)
    top = [f"{c} {v:.0f} %" for c, v in sorted(per.items(), key=lambda kv: -kv[1])[:3] if v >= 5]
    return round(sum(per.values()), 1), top


def status_counters(obj: Any, path: str = "", inside: bool = False) -> dict[str, Any]:
    """Numbers in the status JSON under a key naming limit/pike/reject/drop/block/shed/overload."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            out.update(status_counters(v, p, inside or bool(STATUS_WORDS.search(str(k)))))
    elif isinstance(obj, list) and inside and len(obj) <= 20:
        for i, v in enumerate(obj):
            out.update(status_counters(v, f"{path}[{i}]", True))
    elif inside and isinstance(obj, (int, float, str, bool)):
        out[path] = obj
    return out


def status_context(status: dict[str, Any] | None) -> dict[str, Any]:
    """The matching counters plus a few for context (messages, transactions, RSS)."""
    if not status:
        return {}
    out = status_counters(status)
    sip = status.get("sip", {}) if isinstance(status.get("sip"), dict) else {}
    for key in ("messages_in", "messages_out", "requests_in", "retransmissions_absorbed", "send_errors"):
        if key in sip:
            out[f"sip.{key}"] = sip[key]
    for key in ("transactions", "bindings"):
        if key in status:
            out[key] = status[key]
    proc = status.get("process", {}) if isinstance(status.get("process"), dict) else {}
    if proc.get("rss_bytes"):
        out["process.rss_mb"] = round(proc["rss_bytes"] / 2**20, 1)
    lag = proc.get("loop_lag_30s", {}) if isinstance(proc.get("loop_lag_30s"), dict) else {}
    for key in ("p99_ms", "max_ms"):
        if key in lag:
            out[f"loop_lag_30s.{key}"] = lag[key]
    return out


# ============================================================================ cleanup


LIVE: list[Any] = []


def kill_group(proc: subprocess.Popen | None) -> None:
    """End a process we started (in its own session) and whatever it started: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class ServerHandle:
    """Stops a server (sipbench's stop) and then anything left in its process group."""

    def __init__(self, server: sb.Server) -> None:
        self.server = server

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
        kill_group(self.server.proc)


def kill_all() -> None:
    while LIVE:
        with contextlib.suppress(Exception):
            LIVE.pop().kill()


# ============================================================================ one case


@dataclass
class Case:
    """One flood against one server."""

    flood: str
    server: str
    status: str = "not run"
    reason: str = ""
    flooder: str = ""
    duration_s: float = 0.0
    sent: int = 0
    send_rate: float = 0.0
    send_errors: int = 0
    answers: dict[str, int] = field(default_factory=dict)       # by status, during and after the flood
    answers_during: int = 0
    answers_after: int = 0
    legit: dict[str, dict[str, Any]] = field(default_factory=dict)   # phase -> reg/call summaries
    recovery_reg_s: float | None = None
    recovery_call_s: float | None = None
    idle_rss_kb: int = 0
    idle_pss_kb: int = 0
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_after_rss_kb: int = 0
    rss_10s_kb: int | None = None
    rss_40s_kb: int | None = None
    pss_10s_kb: int | None = None
    pss_40s_kb: int | None = None
    settle_s: float = 40.0
    server_socket: dict[str, int] = field(default_factory=dict)      # drops during the flood and after
    udp_snmp: dict[str, int] = field(default_factory=dict)           # deltas over the flood and over the whole case
    phone_counters: dict[str, Any] = field(default_factory=dict)
    status_before: dict[str, Any] = field(default_factory=dict)
    status_flood_end: dict[str, Any] = field(default_factory=dict)
    status_after: dict[str, Any] = field(default_factory=dict)
    samples: list[list[float]] = field(default_factory=list)         # [t since flood start, rss MB, drops, queue]
    cpu_flood_pct: float | None = None
    flooder_cpu_pct: float | None = None
    others_cpu_pct: float | None = None      # processes not part of this benchmark, during the flood
    others_top: list[str] = field(default_factory=list)
    loadavg: str = ""
    machine_cpu: dict[str, float] = field(default_factory=dict)    # during the flood, % of one core
    flooder_socket_drops: int = 0           # answers lost at the flooder's own socket
    phone_socket_drops: int = 0             # answers lost at the phone's and its callee's sockets
    workdir: str = ""


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def _ms(seconds: float) -> float:
    """Milliseconds; -1 for an operation that did not complete (within the phone's timeout)."""
    return -1.0 if math.isinf(seconds) else round(seconds * 1000, 1)


def summarise(records: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Share served within 1 s, latency p50/p99 (not completed counts as infinite), where copies were lost."""
    n = len(records)
    ok = [r for r in records if r["ok"]]
    fast = [r for r in ok if r["lat"] <= OK_WITHIN]
    lats = [r["lat"] if r["ok"] else math.inf for r in records]
    fails: dict[str, int] = {}
    for r in records:
        if not r["ok"]:
            fails[str(r["status"])] = fails.get(str(r["status"]), 0) + 1
    # the first request of each operation: answered from the original copy, or only a retransmission
    firsts = [r["stages"][0] for r in records if r.get("stages") and r["stages"][0]]
    unanswered = sum(1 for r in records if not r.get("stages") or not r["stages"][0])
    waits = [s[1] for s in firsts]
    return {"kind": kind, "n": n, "ok": len(ok), "ok_1s": len(fast),
            "share_1s": round(len(fast) / n, 4) if n else None,
            "p50_ms": _ms(pct(lats, 50)) if n else None,
            "p99_ms": _ms(pct(lats, 99)) if n else None,
            "failures": fails,
            "first_request": {"answered_original": sum(1 for s in firsts if s[0] == 1),
                              "answered_retransmission": sum(1 for s in firsts if s[0] > 1),
                              "never_answered": unanswered,
                              "wait_p50_ms": round(pct(waits, 50) * 1000, 1) if waits else None,
                              "wait_p99_ms": round(pct(waits, 99) * 1000, 1) if waits else None}}


def recovery(records: list[dict[str, Any]], t_end: float, run: int) -> float | None:
    """Seconds from the flood's end to the start of the first of `run` consecutive operations all served
    within 1 s (operations started after the end); 0 when that is the first one started after the end
    (recovered by then: the probes come 0.1 s / 0.5 s apart); None: not within the window."""
    after = sorted((r for r in records if r["t0"] >= t_end), key=lambda r: r["t0"])
    good = [r["ok"] and r["lat"] <= OK_WITHIN for r in after]
    for i in range(len(after) - run + 1):
        if all(good[i:i + run]):
            return 0.0 if i == 0 else round(after[i]["t0"] - t_end, 2)
    return None


def run_case(flood: str, kind: str, args: argparse.Namespace, root: Path, data_dir: Path,
             sender: Path | None, sender_name: str) -> Case:
    case = Case(flood, kind, flooder=sender_name, settle_s=args.after)
    work = root / f"{flood}-{kind}"
    case.workdir = str(work)
    server: sb.Server
    if kind == "callpath":
        server = FloodCallpath(work, data_dir, args.callpath_log_level, not args.no_limiter,
                               kernel_filter=not args.no_kernel_filter)
    else:
        server = FloodKamailio(work, sb.users(1), args.kamailio_workers, args.kamailio_shm)
    handle = ServerHandle(server)
    LIVE.append(handle)
    phone: PhoneProcess | None = None
    flooder: Flooder | None = None
    try:
        server.start()
        port = server.port
        phone = PhoneProcess(port, args.attempt_timeout, args.reg_rate, args.call_rate).start()
        time.sleep(2.0)
        pids = server.pids()
        case.idle_rss_kb, case.idle_pss_kb = soak.rss_kb(pids), pss_kb(pids)
        if isinstance(server, sb.CallpathServer):
            case.status_before = status_context(server.status())
        snmp0 = udp_snmp()
        sock0 = udp_sockets().get((SERVER_IP, port), {})
        emit(f"{flood} flood / {kind}: idle RSS {case.idle_rss_kb / 1024:.1f} MB; baseline {args.baseline:g} s "
             f"(phone {args.reg_rate:g} registrations/s, {args.call_rate:g} calls/s)")
        t_base = time.monotonic()
        time.sleep(args.baseline)
        base = summarise(phone.of("reg", t_base, time.monotonic()), "reg")
        emit(f"  baseline so far: {base['ok_1s']}/{base['n']} registrations within 1 s")

        flooder = Flooder(sender, work, flood, port, args.duration, unique=not args.cycle)
        snmp_f0 = udp_snmp()
        cpu0 = server.cpu()
        procs0 = process_ticks()
        mach0 = machine_cpu()
        flooder.start()
        assert flooder.ready_at is not None
        t_f0 = flooder.ready_at
        emit(f"  flooding {flood} from {FLOOD_IP}:{flooder.src_port} for {args.duration:g} s ({sender_name})")
        last = (t_f0, 0, 0, sock0.get("drops", 0))
        peak_rss = peak_pss = 0
        next_line = t_f0 + 1.0
        next_pss = 0.0
        while not flooder.sent_event.wait(0.25):
            now = time.monotonic()
            pids = server.pids()
            rss = soak.rss_kb(pids)
            peak_rss = max(peak_rss, rss)
            if now >= next_pss:
                peak_pss = max(peak_pss, pss_kb(pids))
                next_pss = now + 1.0
            sock = udp_sockets().get((SERVER_IP, port), {})
            case.samples.append([round(now - t_f0, 2), round(rss / 1024, 1), sock.get("drops", 0),
                                 sock.get("rx_queue", 0)])
            if now >= next_line and flooder.ticks:
                dt = now - last[0]
                sent, recv = flooder.sent, flooder.received
                served = phone.of("reg", t_f0, now - OK_WITHIN)
                ok1 = sum(1 for r in served if r["ok"] and r["lat"] <= OK_WITHIN)
                started = max(len(served), int((now - OK_WITHIN - t_f0) * args.reg_rate))
                emit(f"  t={now - t_f0:4.0f}s sent {(sent - last[1]) / dt / 1000:6.1f}k/s, answers "
                     f"{(recv - last[2]) / dt:7.0f}/s, server socket drops "
                     f"{(sock.get('drops', 0) - last[3]) / dt / 1000:6.1f}k/s "
                     f"queue {sock.get('rx_queue', 0) / 1024:5.0f} KB, RSS {rss / 1024:7.1f} MB, phone registrations "
                     f"within 1 s {ok1}/{started}")
                last = (now, sent, recv, sock.get("drops", 0))
                next_line += 1.0
        if flooder.end_at is None:
            raise sb.BenchError(f"the flooder stopped without reporting: {flooder.stderr[-800:]}")
        t_f1 = flooder.end_at
        cpu1 = server.cpu()
        procs1 = process_ticks()
        case.machine_cpu = machine_split(mach0, machine_cpu(), cpu1.at - cpu0.at)
        case.cpu_flood_pct = round(100 * (cpu1.seconds - cpu0.seconds) / max(1e-6, cpu1.at - cpu0.at), 1)
        assert flooder.proc is not None and phone.proc is not None
        ours = set(server.pids()) | {flooder.proc.pid, phone.proc.pid, os.getpid()}
        fl = flooder.proc.pid
        case.flooder_cpu_pct = round(100.0 * (procs1.get(fl, (0, ""))[0] - procs0.get(fl, (0, ""))[0])
                                     / sb.CLK_TCK / max(1e-6, cpu1.at - cpu0.at), 1)
        case.others_cpu_pct, case.others_top = others_cpu(procs0, procs1, ours, cpu1.at - cpu0.at)
        case.loadavg = Path("/proc/loadavg").read_text().strip()
        case.sent, case.duration_s, case.send_errors = flooder.sent, round(flooder.elapsed, 3), flooder.errors
        case.send_rate = round(flooder.sent / flooder.elapsed) if flooder.elapsed else 0
        case.answers_during = flooder.received_at_end
        sock_f1 = udp_sockets().get((SERVER_IP, port), {})
        snmp_f1 = udp_snmp()
        case.peak_rss_kb, case.peak_pss_kb = peak_rss, peak_pss
        emit(f"  flood over: {case.sent} sent in {case.duration_s:.1f} s = {case.send_rate / 1000:.1f}k/s; "
             f"peak RSS {peak_rss / 1024:.1f} MB; CPU (% of a core): server {case.cpu_flood_pct:.0f}, flooder "
             f"{case.flooder_cpu_pct:.0f}, other processes {case.others_cpu_pct:.0f}"
             + (f" ({', '.join(case.others_top)})" if case.others_top else "")
             + "; machine: " + ", ".join(f"{k} {v:.0f}" for k, v in case.machine_cpu.items()))
        if isinstance(server, sb.CallpathServer):
            case.status_flood_end = status_context(server.status(timeout=3.0))

        # after the flood: recovery and settling
        marks = {10.0: None, args.after: None}
        next_line = t_f1 + 5.0
        while True:
            now = time.monotonic()
            if now >= t_f1 + args.after + 0.05:
                break
            pids = server.pids()
            rss = soak.rss_kb(pids)
            case.peak_after_rss_kb = max(case.peak_after_rss_kb, rss)
            sock = udp_sockets().get((SERVER_IP, port), {})
            case.samples.append([round(now - t_f0, 2), round(rss / 1024, 1), sock.get("drops", 0),
                                 sock.get("rx_queue", 0)])
            for mark in marks:
                if marks[mark] is None and now >= t_f1 + mark:
                    marks[mark] = (rss, pss_kb(pids))
            if now >= next_line:
                regs = phone.of("reg", now - 5.0 - OK_WITHIN, now - OK_WITHIN)
                calls = phone.of("call", now - 5.0 - OK_WITHIN, now - OK_WITHIN)
                emit(f"  +{now - t_f1:3.0f}s after: RSS {rss / 1024:7.1f} MB, answers to the flooder so far "
                     f"{flooder.received}, phone within 1 s (last 5 s): registrations "
                     f"{sum(1 for r in regs if r['ok'] and r['lat'] <= OK_WITHIN)}/"
                     f"{max(len(regs), int(5 * args.reg_rate))}, "
                     f"calls {sum(1 for r in calls if r['ok'] and r['lat'] <= OK_WITHIN)}/"
                     f"{max(len(calls), int(5 * args.call_rate))}")
                next_line += 5.0
            time.sleep(max(0.0, min(0.25, t_f1 + args.after + 0.05 - time.monotonic())))
        pids = server.pids()
        for mark in marks:
            if marks[mark] is None:
                marks[mark] = (soak.rss_kb(pids), pss_kb(pids))
        case.rss_10s_kb, case.pss_10s_kb = marks[10.0]
        case.rss_40s_kb, case.pss_40s_kb = marks[args.after]
        t_end = time.monotonic()

        socks = udp_sockets()
        case.flooder_socket_drops = socks.get((FLOOD_IP, flooder.src_port), {}).get("drops", 0)
        case.phone_socket_drops = sum(socks.get(tuple(a), {}).get("drops", 0) for a in phone.ports.values())
        counters = phone.stop(args.attempt_timeout + 5)
        case.phone_counters = counters
        flooder.finish()
        case.answers = dict(sorted(flooder.statuses.items()))
        if flooder.other:
            case.answers["other"] = flooder.other
        case.answers_after = max(0, sum(flooder.statuses.values()) + flooder.other - case.answers_during)
        sock_end = udp_sockets().get((SERVER_IP, port), {})
        snmp_end = udp_snmp()
        case.server_socket = {"drops_during_flood": sock_f1.get("drops", 0) - sock0.get("drops", 0),
                              "drops_after_flood": sock_end.get("drops", 0) - sock_f1.get("drops", 0)}
        case.udp_snmp = {f"{k}_during_flood": snmp_f1.get(k, 0) - snmp_f0.get(k, 0)
                         for k in ("InDatagrams", "RcvbufErrors", "InErrors", "NoPorts", "SndbufErrors")}
        case.udp_snmp.update({f"{k}_whole_case": snmp_end.get(k, 0) - snmp0.get(k, 0)
                              for k in ("RcvbufErrors", "InErrors")})
        for phase, (a, b) in {"before": (t_base, t_f0), "during": (t_f0, t_f1),
                              "after": (t_f1, t_end), "after_last10": (t_end - 10.0, t_end)}.items():
            case.legit[phase] = {"reg": summarise(phone.of("reg", a, b), "reg"),
                                 "call": summarise(phone.of("call", a, b), "call")}
        late = [r for r in phone.records if r["k"] == "late" and t_f0 <= r["t0"] < t_f1]
        case.legit["during"]["late_answers"] = len(late)
        case.recovery_reg_s = recovery(phone.of("reg", t_f1, t_end), t_f1, 10)
        case.recovery_call_s = recovery(phone.of("call", t_f1, t_end), t_f1, 3)
        if isinstance(server, sb.CallpathServer):
            case.status_after = status_context(server.status())
        case.status = "ok" if server.alive() else "failed"
        if not server.alive():
            case.reason = f"the server exited: {sb.tail(server.log, 1500)}"
    except Exception as exc:  # noqa: BLE001 - report, go on with the next case
        case.status, case.reason = "failed", f"{type(exc).__name__}: {exc}"
        emit(f"  {flood}/{kind} failed: {case.reason[:1500]}")
    finally:
        if phone is not None:
            phone.kill()
        if flooder is not None:
            flooder.kill()
        handle.kill()
        with contextlib.suppress(ValueError):
            LIVE.remove(handle)
    emit("  " + case_line(case))
    return case


# ============================================================================ report


def share(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{100 * s['share_1s']:.1f} % ({s['ok_1s']}/{s['n']})"


def ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "not done" if v < 0 else (f"{v / 1000:.1f} s" if v >= 1000 else f"{v:.0f} ms")


def mb(kb: int | None) -> str:
    return "-" if not kb else f"{kb / 1024:.0f}"


def secs(v: float | None, window: float) -> str:
    return f"> {window:.0f} s" if v is None else f"{v:.1f} s"


def fmt0(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def answers_text(case: Case) -> str:
    return ", ".join(f"{k}: {v}" for k, v in case.answers.items()) or "none"


def case_line(c: Case) -> str:
    if c.status != "ok":
        return f"{c.flood}/{c.server}: {c.status} {c.reason[:300]}"
    d = c.legit.get("during", {})
    return (f"{c.flood}/{c.server}: {c.send_rate / 1000:.1f}k/s sent; answers {answers_text(c)}; phone registrations "
            f"within 1 s before {share(c.legit['before']['reg'])}, during {share(d.get('reg'))}, after "
            f"{share(c.legit['after']['reg'])}; RSS {mb(c.idle_rss_kb)} -> peak {mb(c.peak_rss_kb)} -> "
            f"{mb(c.rss_10s_kb)} / {mb(c.rss_40s_kb)} MB; recovery {secs(c.recovery_reg_s, c.settle_s)} "
            f"(registration), {secs(c.recovery_call_s, c.settle_s)} (call)")


def tables(cases: list[Case]) -> list[list[list[str]]]:
    legit = [["flood", "server", "flood sent/s", "REGISTER ≤1 s before", "during", "after (last 10 s)",
              "REGISTER p50 / p99 during", "calls ≤1 s before", "during", "after (last 10 s)",
              "recovery: REGISTER", "call"]]
    cost = [["flood", "server", "answers to the flooder (during + after)", "answered/s during",
             "server socket drops during", "RSS idle MB", "peak MB", "+10 s",
             f"+{cases[0].settle_s:.0f} s" if cases else "+40 s",
             "PSS idle / peak / end MB"]]
    where = [["flood", "server", "phone's first REGISTER: answered original", "answered only a retransmission",
              "never answered", "wait of the answered copy p50 / p99", "late answers", "failures",
              "Udp RcvbufErrors during (whole machine)"]]
    cpu = [["flood", "server", "server", "flooder", "other processes", "machine: user / system / softirq / idle",
            "answers dropped at the flooder's socket", "at the phone's sockets"]]
    for c in cases:
        if c.status != "ok":
            legit.append([c.flood, c.server, c.status, c.reason[:80]] + [""] * 8)
            continue
        lg = c.legit
        d = lg["during"]["reg"]
        legit.append([c.flood, c.server, f"{c.send_rate / 1000:.0f}k", share(lg["before"]["reg"]), share(d),
                      share(lg["after_last10"]["reg"]), f"{ms(d['p50_ms'])} / {ms(d['p99_ms'])}",
                      share(lg["before"]["call"]), share(lg["during"]["call"]), share(lg["after_last10"]["call"]),
                      secs(c.recovery_reg_s, c.settle_s), secs(c.recovery_call_s, c.settle_s)])
        rate = c.answers_during / c.duration_s if c.duration_s else 0
        drops = c.server_socket.get("drops_during_flood", 0)
        cost.append([c.flood, c.server, answers_text(c), f"{rate:.0f}",
                     f"{drops} ({100 * drops / max(1, c.sent):.0f} % of sent)",
                     mb(c.idle_rss_kb), mb(c.peak_rss_kb), mb(c.rss_10s_kb), mb(c.rss_40s_kb),
                     f"{mb(c.idle_pss_kb)} / {mb(c.peak_pss_kb)} / {mb(c.pss_40s_kb)}"])
        m = c.machine_cpu
        cpu.append([c.flood, c.server, fmt0(c.cpu_flood_pct), fmt0(c.flooder_cpu_pct),
                     fmt0(c.others_cpu_pct) + (f" ({', '.join(c.others_top)})" if c.others_top else ""),
                     " / ".join(fmt0(m.get(k)) for k in ("user", "system", "softirq", "idle")),
                     str(c.flooder_socket_drops), str(c.phone_socket_drops)])
        fr = d["first_request"]
        where.append([c.flood, c.server, str(fr["answered_original"]), str(fr["answered_retransmission"]),
                      str(fr["never_answered"]), f"{ms(fr['wait_p50_ms'])} / {ms(fr['wait_p99_ms'])}",
                      str(lg["during"].get("late_answers", 0)),
                      ", ".join(f"{k} {v}" for k, v in d["failures"].items()) or "-",
                      str(c.udp_snmp.get("RcvbufErrors_during_flood", "-"))])
    return [legit, cost, where, cpu]


TABLE_TITLES = ["The legitimate phone (share of operations completed within 1 s; latency: 'not done' = not "
                "within the phone's timeout; recovery after the flood)",
                "The flood and its cost (answers counted on the flooder's socket; RSS: the server's processes summed; "
                "PSS counts shared memory once)",
                "During the flood: where the phone's REGISTERs were lost (each copy numbered in its Via)",
                "CPU during the flood (% of one core; the machine's 2 vCPUs make 200)"]


def report(data: dict[str, Any]) -> str:
    cases = [Case(**c) for c in data["cases"]]
    out = []
    for title, rows in zip(TABLE_TITLES, tables(cases)):
        out += [f"## {title}", "", soak.md_table(rows), ""]
    for c in cases:
        if c.status_before or c.status_after:
            out.append(f"callpath status counters, {c.flood} flood: before {json.dumps(c.status_before)}; "
                       f"at the flood's end {json.dumps(c.status_flood_end) or 'no answer'}; "
                       f"{c.settle_s:.0f} s after {json.dumps(c.status_after)}")
            out.append("")
    return "\n".join(out)


# ============================================================================ main


def snapshot(rev: str, into: Path) -> tuple[Path, str]:
    """A copy of the repository at `rev` (git archive) with its C extensions built in place."""
    commit = subprocess.run(["git", "-C", str(sb.REPO_ROOT), "rev-parse", "--short", rev], capture_output=True,
                            text=True, check=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(sb.REPO_ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    archive.wait()
    subprocess.run([str(sb.CALLPATH_VENV / "bin" / "python"), "setup.py", "-q", "build_ext", "--inplace"],
                   cwd=into, capture_output=True, text=True, timeout=600)
    return into, commit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_python-flooder"]:
        return python_flooder(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--which", choices=["register", "invite", "both"], default="both")
    ap.add_argument("--servers", choices=["callpath", "kamailio", "both"], default="both")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of flood")
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds of the phone alone before the flood")
    ap.add_argument("--after", type=float, default=40.0, help="seconds watched after the flood (the settled RSS)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 s flood, 4 s baseline, 12 s after")
    ap.add_argument("--reg-rate", type=float, default=10.0, help="the phone's registrations per second")
    ap.add_argument("--call-rate", type=float, default=2.0, help="the phone's calls per second (0: none)")
    ap.add_argument("--attempt-timeout", type=float, default=5.0, help="seconds before the phone gives an operation up")
    ap.add_argument("--cycle", action="store_true",
                    help="send the same 4096 requests round and round instead of a new one per datagram")
    ap.add_argument("--python-flooder", action="store_true", help="the Python sender even when cc is there")
    ap.add_argument("--callpath-log-level", default="info", help="callpath's [server] log_level (its default: info)")
    ap.add_argument("--no-limiter", action="store_true",
                    help="callpath with its per-source flood limiter off ([limits] source_limit = 0)")
    ap.add_argument("--no-kernel-filter", action="store_true",
                    help="callpath's limiter drops blocked sources in user space only ([limits] kernel_filter = false)")
    ap.add_argument("--kamailio-workers", type=int, default=2)
    ap.add_argument("--kamailio-shm", type=int, default=64, help="Kamailio shared memory, MB")
    ap.add_argument("--snapshot", metavar="REV", help="run callpath from a copy of this commit, not the work tree")
    ap.add_argument("--json", type=Path, help="results file (default flood-results/flood-<time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    ap.add_argument("--report", type=Path, metavar="FILE", help="no run: the tables of a saved results file")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    if args.quick:
        args.duration, args.baseline = min(args.duration, 5.0), min(args.baseline, 4.0)
        args.after = min(args.after, 12.0)
    floods = ["register", "invite"] if args.which == "both" else [args.which]
    kinds = ["callpath", "kamailio"] if args.servers == "both" else [args.servers]
    if "kamailio" in kinds and not sb.kamailio_binary():
        emit("Kamailio is not installed (apt-get install kamailio): callpath alone")
        kinds.remove("kamailio")
    if not kinds:
        return 2

    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="callpath-flood-"))
    cases: list[Case] = []
    commit = soak.sb_git()
    try:
        if args.snapshot:
            src, commit = snapshot(args.snapshot, root / "src")
            os.environ["PYTHONPATH"] = str(src) + (os.pathsep + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else "")
            sb.REPO_ROOT = src                      # the account creation runs from there too
            emit(f"callpath from a copy of {commit} in {src}")
        sender, sender_name = (None, "Python (socket.send)")
        if not args.python_flooder:
            sender, why = build_sender(root)
            sender_name = why if sender else f"Python (socket.send; {why})"
        emit(f"flooder: {sender_name}")
        data_dir = root / "callpath-data"
        if "callpath" in kinds:
            emit(f"creating the callpath accounts ({PHONE_USER}, {sb.CALLEE}) in {data_dir}")
            sb.create_callpath_accounts(root, data_dir, sb.users(1))
        for flood in floods:
            for kind in kinds:
                cases.append(run_case(flood, kind, args, root, data_dir, sender, sender_name))
    finally:
        kill_all()
        if args.keep:
            emit(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "callpath_commit": commit, "machine": sb.machine_info(),
           "kamailio": sb.kamailio_version(), "python": sb.python_info(str(sb.CALLPATH_VENV / "bin" / "python")),
           "flooder": cases[0].flooder if cases else "", "loadavg": Path("/proc/loadavg").read_text().strip(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    data = {"environment": env, "cases": [sb.to_jsonable(c) for c in cases]}
    text = report(data)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.json or RESULTS / f"flood-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str))
    out.with_suffix(".md").write_text(f"# SIP flood {env['date']}, callpath {commit}, flooder {env['flooder']}\n\n"
                                      + text + "\n")
    print(f"results: {out}, {out.with_suffix('.md')}")
    return 0 if cases and all(c.status == "ok" for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
