"""CPU per control round trip between the SIP process and a media worker, over TCP and over a Unix socket.

    .venv/bin/python benchmarks/media/control.py [--pings 3000] [--legs 1000] [--repeat 3]

An anchored call costs 7 control round trips (leg_offer, leg_remote_offer, leg_create_answer, leg_answer,
connect, and leg_close twice; benchmarks/sip/profile_anchored.py counts them). This spawns one real worker
(media.control.spawn_worker, as `callpath run` does), connects a media.client.MediaClient on uvloop, and
sends requests one after another, each awaited, as call control does:

  ping   the smallest request (the reply carries the worker's status)
  leg    leg_offer (a plain-RTP leg: two sockets opened, an SDP offer made) + leg_close: one leg's life
         without RTP, 2 round trips

for each control transport: TCP on 127.0.0.1 (what `callpath run` uses today) and a Unix socket
(``MediaSettings.control_path``). Reported: µs of CPU per request (or per leg) in the client process, in the
worker process (/proc/PID/stat), and their sum, the best of --repeat rounds in each of two passes (TCP then
Unix, then Unix then TCP; the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from media.client import MediaClient
from media.control import spawn_worker
from media.worker import MediaSettings

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def rounds(address: object, pid: int, pings: int, legs: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Best (client µs, worker µs) per ping and per leg over ``repeat`` rounds."""
    client = await MediaClient.open(address)  # type: ignore[arg-type]
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(20):  # warm-up
            await client.ping()
        for _ in range(repeat):
            for kind, count in (("ping", pings), ("leg", legs)):
                c0, w0 = time.process_time(), process_cpu(pid)
                for n in range(count):
                    if kind == "ping":
                        await client.ping()
                    else:
                        leg = f"bench-{n}"
                        await client.leg_offer(leg, "RTP/AVP", codecs=["PCMU"])
                        await client.leg_close(leg)
                c1, w1 = time.process_time(), process_cpu(pid)
                here = ((c1 - c0) / count * 1e6, (w1 - w0) / count * 1e6)
                if kind not in best or sum(here) < sum(best[kind]):
                    best[kind] = here
    finally:
        await client.close()
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=3000)
    ap.add_argument("--legs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        print("uvloop not installed: asyncio's own loop", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="callpath-control-"))
    results: dict[str, dict[str, tuple[float, float]]] = {}
    transports = (
        ("tcp 127.0.0.1", MediaSettings(bind_host="127.0.0.1", advertised_address="127.0.0.1")),
        ("unix socket", MediaSettings(bind_host="127.0.0.1", advertised_address="127.0.0.1",
                                      control_path=str(tmp / "control.sock"))),
    )
    for name, settings in transports + tuple(reversed(transports)):  # both orders: no warm-up advantage
        worker = spawn_worker(0, settings)
        try:
            got = asyncio.run(rounds(worker.address, worker.process.pid, args.pings, args.legs, args.repeat))
        finally:
            worker.process.terminate()
            worker.process.join(5)
        best = results.setdefault(name, got)
        for kind, value in got.items():
            if sum(value) < sum(best[kind]):
                best[kind] = value
    print(f"{'transport':<14} {'request':<6} {'client µs':>10} {'worker µs':>10} {'sum µs':>8}")
    for name, best in results.items():
        for kind, (c, w) in best.items():
            unit = "ping" if kind == "ping" else "leg (2 requests)"
            print(f"{name:<14} {kind:<6} {c:10.0f} {w:10.0f} {c + w:8.0f}   per {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
