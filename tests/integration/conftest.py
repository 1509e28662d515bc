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
