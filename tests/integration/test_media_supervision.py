"""A media worker process that dies is replaced: the same ports, a new control connection, and the calls
whose media it held are forgotten by the pool; new calls get media again. (rtpengine has no supervisor of
its own; a crashed daemon stays down until systemd restarts it, with every call's media lost.)"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from media_ports import free_udp_range
from media.sdp import SessionDescription, create_offer
from web.server import Application
from web.settings import load_settings

pytestmark = pytest.mark.integration


async def test_a_killed_media_worker_is_replaced(tmp_path):
    low = free_udp_range(100)
    settings = load_settings(None, {
        "CALLPATH_SERVER_DATA_DIR": str(tmp_path / "data"),
        "CALLPATH_SIP_LISTEN": "127.0.0.1", "CALLPATH_SIP_UDP_PORT": "0", "CALLPATH_SIP_TCP_PORT": "0",
        "CALLPATH_WEB_PORT": "0",
        "CALLPATH_MEDIA_ENABLED": "true", "CALLPATH_MEDIA_WORKERS": "1", "CALLPATH_MEDIA_LISTEN": "127.0.0.1",
        "CALLPATH_MEDIA_ADVERTISE": "127.0.0.1", "CALLPATH_MEDIA_ICE_PORT": "0",
        "CALLPATH_MEDIA_RTP_PORT_MIN": str(low), "CALLPATH_MEDIA_RTP_PORT_MAX": str(low + 99),
    })
    app = Application(settings)
    app.media_watch_interval = 0.1
    await app.start()
    try:
        pool = app.media_pool
        offer = create_offer("127.0.0.1", 4000, [("PCMU", 8000)]).to_bytes()
        SessionDescription.parse(await pool.offer("before", "a-tag", offer))
        assert pool.calls == {"before": 0}
        first = app.media_workers[0]
        os.kill(first.process.pid, signal.SIGKILL)
        for _ in range(300):
            if app.media_restarts:
                break
            await asyncio.sleep(0.05)
        assert app.media_restarts == 1
        fresh = app.media_workers[0]
        assert fresh.process.pid != first.process.pid and fresh.process.is_alive()
        assert fresh.settings.rtp_port_min == low and "before" not in pool.calls and pool.load == [0]
        # a new call gets media from the new worker, inside the same RTP range
        sd = SessionDescription.parse(await pool.offer("after", "a-tag", offer, "RTP/AVP"))
        assert low <= sd.media[0].port <= low + 99 and pool.calls == {"after": 0}
        assert (await pool.delete("after")) is not None
    finally:
        await app.stop()
