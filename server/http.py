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

from hubbub.server.config import HttpConfig
from hubbub.server.services import Services
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.errors import describe

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


def _response(status: http.HTTPStatus, body: bytes, content_type: str = TEXT) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(status.value, status.phrase, headers, body)


_abandoned_pings: set[asyncio.Future[None]] = set()
"""Pings /readyz stopped waiting for, held until they end (the loop keeps only weak references)."""


def _abandon(ping: asyncio.Future[None]) -> None:
    ping.cancel()
    _abandoned_pings.add(ping)
    ping.add_done_callback(_abandoned_pings.discard)


async def readiness(services: Services, timeout: float) -> list[str]:
    """Reasons the server is not ready, one per failing store; empty when it is.

    The stores are pinged together and the answer waits at most ``timeout``
    (``readyz_timeout_seconds``: a load balancer's health check must get its
    503, not a timeout of its own): a ping still running then is abandoned,
    not awaited, since a frozen store may hold on to a cancelled call, and
    its store is reported as timed out, with the last error the store's
    client saw when it keeps one (MongoMessageLog.last_error).
    """
    stores: tuple[tuple[str, Directory | MessageLog], ...] = (
        ("directory", services.directory),
        ("messages", services.messages),
    )
    pings = [asyncio.ensure_future(store.ping()) for _, store in stores]
    try:
        _, late = await asyncio.wait(pings, timeout=timeout)
    finally:
        for ping in pings:
            if not ping.done():
                _abandon(ping)
    problems: list[str] = []
    for (role, store), ping in zip(stores, pings, strict=True):
        if ping in late:
            reason = f"ping timed out after {timeout:g}s"
            last_error: Callable[[], str] | None = getattr(store, "last_error", None)
            if last_error is not None and (hint := last_error()):
                reason += f" (last error: {hint})"
        elif (exc := ping.exception()) is not None:
            reason = describe(exc)
        else:
            continue
        problems.append(f"{role} store {store.name} unreachable: {reason}")
    return problems


def debug_view(services: Services) -> dict[str, object]:
    """Local routing next to what the broker subscribes: the two must match."""
    return {
        "local": {
            "conversations": sorted(services.registry.by_conversation),
            "users": sorted(services.registry.by_user),
        },
        "broker": services.broker.topics(),
    }


Answer = Response | Awaitable[Response] | None
"""What ``process_request`` gives: a response, None (go on to the WebSocket
handshake), or, for the one path that waits on the stores (/readyz), an
awaitable of its response. Every other path is answered at once, so that a
storm's handshakes are answered in the ``data_received`` that brought them,
without a task each (server/connection.py)."""

ProcessRequest = Callable[[Request], Answer]


async def readyz(services: Services, config: HttpConfig) -> Response:
    problems = await readiness(services, config.readyz_timeout_seconds)
    if problems:
        return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, ("\n".join(problems) + "\n").encode())
    degraded = services.broker.status()
    if degraded:
        # Still serving: local delivery and storage work, only cross-instance routing waits.
        return _response(http.HTTPStatus.OK, f"ready, degraded: broker: {degraded}\n".encode())
    return _response(http.HTTPStatus.OK, b"ready\n")


def make_process_request(services: Services, config: HttpConfig, open_connections: Callable[[], int]) -> ProcessRequest:
    def process_request(request: Request) -> Answer:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n")
        if path == "/readyz":
            return readyz(services, config)
        if path == "/debug/subscriptions" and config.debug_endpoints:
            return _response(http.HTTPStatus.OK, msgspec.json.encode(debug_view(services)), "application/json")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, services.metrics.exposition(), PROMETHEUS_CONTENT_TYPE)
        if open_connections() >= config.max_connections:
            return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"connection limit reached; retry later\n")
        return None

    return process_request
