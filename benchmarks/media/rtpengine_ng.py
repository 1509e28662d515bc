"""rtpengine side by side: launch the Debian ``rtpengine`` daemon (userspace only) and drive it over ng (bencode/UDP).

Used by ``capacity.py --rtpengine``; a benchmark helper, not production code. Loopback only.

    rtpengine --config-file=none --foreground --log-stderr --table=-1 --interface=127.0.0.1 \
        --listen-ng=127.0.0.1:22222 --port-min=40000 --port-max=49999 --num-threads=1 --media-num-threads=1 -L 3

``--table=-1`` keeps the kernel forwarding module out (no ``--no-fallback``: that flag would *require* the module),
so every packet is relayed by rtpengine's userspace worker thread, which is what callpath's worker competes with.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from typing import Any

__all__ = ["NgClient", "bdecode", "bencode", "start_rtpengine"]


def bencode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return str(len(value)).encode() + b":" + value
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, bool):
        return bencode(int(value))
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, (list, tuple)):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    def parse(i: int) -> tuple[Any, int]:
        c = data[i:i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1:end]), end + 1
        if c == b"l":
            i += 1
            out = []
            while data[i:i + 1] != b"e":
                v, i = parse(i)
                out.append(v)
            return out, i + 1
        if c == b"d":
            i += 1
            d = {}
            while data[i:i + 1] != b"e":
                k, i = parse(i)
                v, i = parse(i)
                d[k.decode()] = v
            return d, i + 1
        colon = data.index(b":", i)
        n = int(data[i:colon])
        return data[colon + 1:colon + 1 + n], colon + 1 + n
    value, _ = parse(0)
    return value


class NgClient:
    """Blocking ng client: ``cookie bencode(dict)`` over UDP, one request at a time."""

    def __init__(self, address: tuple[str, int], timeout: float = 3.0) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)

    def request(self, command: str, **args: Any) -> dict[str, Any]:
        cookie = secrets.token_hex(6).encode()
        body = {"command": command, **{k.replace("_", "-"): v for k, v in args.items()}}
        message = cookie + b" " + bencode(body)
        for _ in range(3):
            self.sock.sendto(message, self.address)
            try:
                while True:
                    data, _ = self.sock.recvfrom(65535)
                    if data.startswith(cookie + b" "):
                        reply = bdecode(data[len(cookie) + 1:])
                        if reply.get("result") not in (b"ok", b"pong"):
                            raise RuntimeError(f"rtpengine {command}: {reply}")
                        return reply
            except socket.timeout:
                continue
        raise TimeoutError(f"rtpengine did not answer {command}")

    def offer(self, call_id: str, from_tag: str, sdp: str) -> str:
        return self.request("offer", call_id=call_id, from_tag=from_tag, sdp=sdp)["sdp"].decode()

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str:
        return self.request("answer", call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp)["sdp"].decode()

    def delete(self, call_id: str) -> dict[str, Any]:
        return self.request("delete", call_id=call_id)

    def close(self) -> None:
        self.sock.close()


def start_rtpengine(ng_port: int = 22222, port_min: int = 40000, port_max: int = 49999,
                    log_path: str | None = None) -> subprocess.Popen:
    """Run rtpengine in the foreground, userspace only, one worker thread, on 127.0.0.1; wait for ng ping."""
    binary = shutil.which("rtpengine") or "/usr/bin/rtpengine"
    if not os.path.exists(binary):
        raise FileNotFoundError("rtpengine not installed (apt-get install -y rtpengine-daemon)")
    cmd = [binary, "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
           "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}", f"--port-min={port_min}",
           f"--port-max={port_max}", "--num-threads=1", "--media-num-threads=1", "-L", "3"]
    log = open(log_path or os.devnull, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = NgClient(("127.0.0.1", ng_port), timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {proc.returncode} (see {log_path})")
            try:
                client.request("ping")
                return proc
            except (TimeoutError, OSError):
                time.sleep(0.2)
        proc.kill()
        raise RuntimeError("rtpengine did not answer ng ping within 10 s")
    finally:
        client.close()
