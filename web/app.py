"""The Starlette application: health/status endpoints and SIP over WebSocket (RFC 7118) at /ws."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sipcore.stack import ConnectionSender

from .runtime import rss_bytes

if TYPE_CHECKING:
    from .server import Application

log = logging.getLogger("callpath.web")


class WebSocketConnection(ConnectionSender):
    """One SIP-over-WebSocket client; frames go out in order through a queue."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    MAX_QUEUED = 1000  # messages waiting for a client that does not read: beyond, it is dropped

    def send(self, data: bytes) -> None:
        if not self.closed:
            if self.queue.qsize() >= self.MAX_QUEUED:
                log.info("closing WebSocket to %s: %d messages unread", self.remote, self.queue.qsize())
                self.closed = True
                self.queue.put_nowait(None)
                return
            self.queue.put_nowait(data)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def writer(self) -> None:
        while True:
            data = await self.queue.get()
            if data is None:
                await self.ws.close()
                return
            # RFC 7118 §5.2: SIP messages go as text frames when they are valid UTF-8
            try:
                await self.ws.send_text(data.decode("utf-8"))
            except UnicodeDecodeError:
                await self.ws.send_bytes(data)


def build_app(application: "Application") -> Starlette:
    """The ASGI app for one callpath process."""
    stack = application.stack

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def status(request: Request) -> JSONResponse:
        assert stack is not None and application.location is not None
        return JSONResponse({
            "sip": stack.counters, "transactions": len(stack.layer),
            "bindings": await application.location.count(),
            "proxy": application.proxy.stats if application.proxy else {},
            "layer": stack.layer.stats, "limiter": stack.limiter_status(),
            "calls": {"routed": application.router.stats if application.router else {},
                      "active": len(application.callcontrol.calls) if application.callcontrol else 0,
                      "anchoring": application.callcontrol is not None},
            "media": application.media_pool.status() if application.media_pool is not None else {},
            "trunks": application.trunks.status(time.monotonic()) if application.trunks is not None else [],
            "dns": application.proxy.locator.status() if application.proxy and application.proxy.locator else {},
            "process": {"rss_bytes": rss_bytes(), "loop_lag_30s": stack.lag_summary(30.0),
                        "gc_30s": application.gc_watch.summary(30.0)},
        })

    async def sip_ws(ws: WebSocket) -> None:
        assert stack is not None
        offered = ws.scope.get("subprotocols") or []
        if "sip" not in offered:
            await ws.close(code=1002)  # RFC 7118 §4: the "sip" subprotocol is mandatory
            return
        client = ws.client or ("0.0.0.0", 0)
        if not stack.accepts_connection(client[0]):
            await ws.close(code=1008)  # blocked source or connection cap: policy violation
            return
        await ws.accept(subprotocol="sip")
        conn = WebSocketConnection(ws)
        transport = "wss" if ws.url.scheme == "wss" else "ws"
        cid = stack.register_connection(transport, (client[0], client[1]), conn)
        writer = asyncio.get_running_loop().create_task(conn.writer())
        from sipcore.transaction import Flow

        flow = Flow(transport, (client[0], client[1]), cid)
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data: Any = msg.get("bytes") or (msg.get("text") or "").encode("utf-8")
                if stack.limiter is not None and not stack.admit(client[0]):
                    break  # the source got blocked: close its connection
                if data:
                    stack.receive(data, flow)
        except WebSocketDisconnect:
            pass
        finally:
            conn.closed = True
            writer.cancel()
            stack.unregister_connection(conn)

    return Starlette(routes=[
        Route("/healthz", health),
        Route("/api/v1/status", status),
        WebSocketRoute("/ws", sip_ws),
    ])
