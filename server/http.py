"""Plain HTTP on the WebSocket port, for operators and load balancers:
/healthz (the process answers), /readyz (its stores answer), /metrics.
Every other path goes on to the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable

import msgspec
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
    return problems


def debug_view(hub: Hub) -> dict[str, object]:
    """Local routing next to what the broker subscribes: the two must match."""
    return {
        "local": {
            "conversations": sorted(hub.registry.by_conversation),
            "users": sorted(hub.registry.by_user),
        },
        "broker": hub.broker.topics(),
    }


ProcessRequest = Callable[[Request], Awaitable[Response | None]]


def make_process_request(hub: Hub, open_connections: Callable[[], int]) -> ProcessRequest:
    async def process_request(request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n")
        if path == "/readyz":
            problems = await readiness(hub)
            if problems:
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, ("\n".join(problems) + "\n").encode())
            degraded = hub.broker.status()
            if degraded:
                # Still serving: local delivery and storage work, only cross-instance routing waits.
                return _response(http.HTTPStatus.OK, f"ready, degraded: broker: {degraded}\n".encode())
            return _response(http.HTTPStatus.OK, b"ready\n")
        if path == "/debug/subscriptions" and hub.settings.debug_endpoints:
            return _response(http.HTTPStatus.OK, msgspec.json.encode(debug_view(hub)), "application/json")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, hub.metrics.exposition(), PROMETHEUS_CONTENT_TYPE)
        if open_connections() >= hub.settings.max_connections:
            return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"connection limit reached; retry later\n")
        return None

    return process_request
