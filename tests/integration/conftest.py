"""Fixtures shared by the integration tests."""
from __future__ import annotations

import os
import tempfile

import pytest

from media_ports import free_udp_range


@pytest.fixture(scope="module")
def worker_process():
    """One media worker process on 127.0.0.1 with its own RTP port range and control socket."""
    from media.control import start_workers
    from media.worker import MediaSettings

    base = free_udp_range(100)
    path = os.path.join(tempfile.mkdtemp(prefix="callpath-media-"), "control.sock")
    handles = start_workers(1, MediaSettings(bind_host="127.0.0.1", rtp_port_min=base, rtp_port_max=base + 99,
                                             control_path=path))
    yield handles[0]
    for handle in handles:
        handle.stop()


TURN_USER, TURN_PASSWORD = "agent", "turn-secret"


@pytest.fixture
def turn_server():
    """A real TURN server (coturn's turnserver) on 127.0.0.1 with long-term credentials: yields (url, user,
    password).
    Skips without coturn, fails under CI=true (``bash dev.sh test`` installs Debian's coturn)."""
    import shutil
    import socket
    import subprocess
    import time

    exe = shutil.which("turnserver")
    if exe is None:
        msg = "turnserver is not installed (Debian package coturn)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: coturn is required)")
        pytest.skip(msg)
    base = free_udp_range(101)
    port = base + 100
    proc = subprocess.Popen(
        [exe, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         f"--min-port={base}", f"--max-port={base + 99}", "--lt-cred-mech", f"--user={TURN_USER}:{TURN_PASSWORD}",
         "--realm=callpath.test", "--no-tls", "--no-dtls", "--no-tcp-relay", "--allow-loopback-peers", "--no-cli",
         "--fingerprint", "--log-file=stdout", "--simple-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:               # ready once it answers on its port (TCP listener too)
        if proc.poll() is not None:
            pytest.fail(f"turnserver exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    yield f"turn:127.0.0.1:{port}?transport=udp", TURN_USER, TURN_PASSWORD
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
