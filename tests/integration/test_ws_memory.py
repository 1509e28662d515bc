"""What SIP-over-WebSocket clients leave behind once they have gone: nothing, and nothing for the cyclic GC.

The callpath app (SipStack, proxy/registrar, the Starlette app under uvicorn) runs in this process, on uvloop
as ``callpath run`` does, so its tables and objects can be looked at. Hundreds of clients connect with the
"sip" subprotocol, send a REGISTER (auth off) or an OPTIONS, get the 200, and go: most with a close frame,
some by dropping TCP with nothing said, some right after a request whose response then finds no connection.
Afterwards the stack's connection tables are back to their size before, no ``WebSocketConnection`` or
writer task is alive, no transaction is left, alice has one binding, and nothing is left for the cyclic GC.

The client side is test_websocket.py's (``ws_peer``, ``register``: SIP text written by hand, websockets'
client). On the stdlib loop of Python 3.11 every closed TCP transport is itself a reference cycle
(``_SelectorSocketTransport._read_ready_cb``, CPython issue 100348), which is why this runs on uvloop.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections import Counter
from typing import Any

import pytest

from web.app import WebSocketConnection, build_app
from web.server import Application
from web.settings import load_settings

from test_websocket import ALICE, Registration, WsPeer, new_branch, new_tag, register, sip_text, ws_peer
from gc_checks import cyclic_garbage, live

uvloop = pytest.importorskip("uvloop")
uvicorn = pytest.importorskip("uvicorn")

pytestmark = pytest.mark.integration

CLIENTS = 300
DOMAIN = "127.0.0.1"


def writer_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done()
            and getattr(t.get_coro(), "__qualname__", "") == "WebSocketConnection.writer"]


class _Web:
    """What ``ws_peer``/``ws_url`` read of a CallpathServer: where the web server listens."""

    def __init__(self, port: int) -> None:
        self.settings = {"web": {"listen": DOMAIN, "port": port}}


def _ws_impl() -> str:
    """The WebSocket implementation ``callpath run`` gives uvicorn."""
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    except ImportError:
        return "auto"
    return "websockets-sansio"


def _options(peer: WsPeer, call_id: str) -> str:
    return sip_text(f"OPTIONS sip:{DOMAIN} SIP/2.0", [
        ("Via", f"SIP/2.0/{peer.via_transport} {peer.sent_by};branch={new_branch()}"), ("Max-Forwards", "70"),
        ("To", f"<sip:{DOMAIN}>"), ("From", f"<sip:alice@{DOMAIN}>;tag={new_tag()}"), ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS")])


async def _client(web: _Web, n: int, dropped: list[Any]) -> None:
    """Client ``n``: REGISTER or OPTIONS, then a close frame; every 10th drops TCP after its 200, every 10th
    (another) drops it right after sending a second OPTIONS, whose response finds the connection gone."""
    async with ws_peer(web) as peer:  # type: ignore[arg-type]
        if n % 2:
            response = await register(peer, Registration(ALICE, DOMAIN))
        else:
            call_id = new_tag() + new_tag()
            await peer.send(_options(peer, call_id))
            response = await peer.final_response("OPTIONS", call_id)
        assert response.status == 200, response
        if n % 10 == 3:
            await peer.send(_options(peer, new_tag() + new_tag()))
        if n % 10 in (3, 7):
            assert peer.ws.transport is not None
            peer.ws.transport.abort()
            # websockets' client keeps its EOFError (and so itself) in a cycle when the connection is dropped
            # under it: keep those clients until the garbage below has been counted, it is not the server's
            dropped.append(peer)


async def _scenario(tmp_path: Any) -> None:
    from storage.schema import migrate

    settings = load_settings(None, {
        "CALLPATH_SERVER_DATA_DIR": str(tmp_path / "data"), "CALLPATH_SIP_LISTEN": DOMAIN,
        "CALLPATH_SIP_UDP_PORT": "0", "CALLPATH_SIP_TCP_PORT": "0", "CALLPATH_SIP_AUTH": "false",
        "CALLPATH_WEB_PORT": "0", "CALLPATH_MEDIA_ENABLED": "false"})
    os.makedirs(settings.data_path, exist_ok=True)
    migrate(settings.database_url)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((DOMAIN, 0))
    listener.listen(1024)
    settings.web.port = listener.getsockname()[1]
    app = Application(settings)
    await app.start()
    server = uvicorn.Server(uvicorn.Config(build_app(app), host=DOMAIN, port=settings.web.port, log_level="warning",
                                           lifespan="off", ws=_ws_impl()))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        stack, location = app.stack, app.location
        assert stack is not None and location is not None
        web = _Web(settings.web.port)

        async def settle() -> None:
            """Until the server has seen every client go (bounded: the assertions below say what is left)."""
            for _ in range(500):
                if len(stack._conns) == conns and not writer_tasks():
                    break
                await asyncio.sleep(0.01)
            for _ in range(5):
                await asyncio.sleep(0)

        conns, by_remote = len(stack._conns), len(stack._conn_by_remote)
        dropped: list[Any] = []
        for n in range(10):                         # first use: imports, caches, the database pool
            await _client(web, n, dropped)
        await settle()
        dropped.clear()
        tasks = len([t for t in asyncio.all_tasks() if not t.done()])
        gc.collect()
        gc.disable()
        try:
            for n in range(CLIENTS):
                await _client(web, n, dropped)
            await settle()
            assert len(dropped) == CLIENTS // 5
            garbage = cyclic_garbage()
        finally:
            gc.enable()
        assert (len(stack._conns), len(stack._conn_by_remote)) == (conns, by_remote)
        assert live(WebSocketConnection) == 0
        assert writer_tasks() == [] and len([t for t in asyncio.all_tasks() if not t.done()]) == tasks
        assert len(stack.layer) == 0                # every transaction over (reliable transport: no timer J)
        await asyncio.gather(*app._flow_tasks)       # the bindings of the closed connections being dropped
        assert await location.count() == 0         # each client's binding went with its WebSocket (FlowLost)
        assert location._flows == {}                # and so did the index of bindings per connection
        assert garbage == Counter(), f"WebSocket clients left cyclic garbage: {garbage.most_common(12)}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)
        await app.stop()


def test_websocket_clients_leave_no_connection_state(tmp_path):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_scenario(tmp_path))
