"""Plain HTTP on the WebSocket port, for operators and load balancers:
/healthz (the process answers), /readyz (its stores answer), /metrics.
Every other path goes on to the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server.hub import Hub

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


def _response(status: http.HTTPStatus, body: bytes, content_type: str = TEXT) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(status.value, status.phrase, headers, body)


async def readiness(hub: Hub) -> list[str]:
    """Reasons the server is not ready; empty when it is."""
    problems: list[str] = []
    timeout = min(2.0, hub.settings.storage_timeout_seconds)
    for role, store in (("directory", hub.directory), ("messages", hub.messages)):
        try:
            await asyncio.wait_for(store.ping(), timeout=timeout)
        except Exception as exc:
            problems.append(f"{role} store {store.name} unreachable: {exc or type(exc).__name__}")
    broker_problem = hub.broker.status()
    if broker_problem:
        problems.append(f"broker: {broker_problem}")
    return problems


ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None]]


def make_process_request(hub: Hub, open_connections: Callable[[], int]) -> ProcessRequest:
    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n")
        if path == "/readyz":
            problems = await readiness(hub)
            if problems:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, ("\n".join(problems) + "\n").encode())
            return _response(http.HTTPStatus.OK, b"ready\n")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, hub.metrics.exposition(), PROMETHEUS_CONTENT_TYPE)
        if open_connections() >= hub.settings.max_connections:
            return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"connection limit reached; retry later\n")
        return None

    return process_request
