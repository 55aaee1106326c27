"""A refused WebSocket handshake leaves a trace: counted by reason in
`hubbub_handshakes_refused_total`, and logged as one JSON line per reason
per `refused_handshake_log_seconds` (server/connection.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.conftest import RunningServer, ServerFactory

REFUSALS = 3


def refused(server: RunningServer, reason: str) -> float:
    value = server.app.metrics.registry.get_sample_value("hubbub_handshakes_refused_total", {"reason": reason})
    return value or 0.0


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        getattr(r, "fields", {}) for r in caplog.records if r.name == "hubbub" and r.getMessage() == "handshake_refused"
    ]


async def websocket_refused(server: RunningServer, status: int, **kwargs: Any) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, **kwargs):
            pass
    assert info.value.response.status_code == status


async def raw_refused(server: RunningServer, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
    writer.write(data)
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)  # the server ends the stream
    writer.close()


async def bad_origin(server: RunningServer) -> None:
    await websocket_refused(server, 403, origin=Origin("https://evil.example"))


async def unknown_subprotocol(server: RunningServer) -> None:
    await websocket_refused(server, 400, subprotocols=[Subprotocol("hubbub.v9")])


async def not_http(server: RunningServer) -> None:
    await raw_refused(server, b"NOT HTTP AT ALL\r\n\r\n")


async def huge_header(server: RunningServer) -> None:
    await raw_refused(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")


async def plain_get(server: RunningServer) -> None:
    await raw_refused(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest.mark.parametrize(
    ("attempt", "reason", "status"),
    [
        (bad_origin, "origin", 403),
        (unknown_subprotocol, "subprotocol", 400),
        (not_http, "malformed_http", None),
        (huge_header, "malformed_http", None),
        (plain_get, "not_websocket", 426),
    ],
    ids=["origin", "subprotocol", "not-http", "huge-header", "no-upgrade"],
)
async def test_refusals_are_counted_and_logged_once_per_interval(
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    attempt: Callable[[RunningServer], Awaitable[None]],
    reason: str,
    status: int | None,
) -> None:
    server = await make_server(allowed_origins="https://chat.example", refused_handshake_log_seconds=3600)
    with caplog.at_level(logging.WARNING, logger="hubbub"):
        for _ in range(REFUSALS):
            await attempt(server)
    assert refused(server, reason) == REFUSALS
    (line,) = refusal_lines(caplog)  # the others are suppressed within the interval
    assert line["reason"] == reason
    assert line["status"] == status
    assert line["address"] == "127.0.0.1"
    assert line["suppressed"] == 0
    if reason != "malformed_http":
        assert line["detail"]


async def test_connection_limit_refusal_is_counted(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(max_connections=1)
    await server.client()
    with caplog.at_level(logging.WARNING, logger="hubbub"):
        await websocket_refused(server, 503)
    assert refused(server, "connection_limit") == 1
    (line,) = refusal_lines(caplog)
    assert line["reason"] == "connection_limit"
    assert line["status"] == 503


async def test_accepted_handshakes_and_operator_endpoints_are_not_refusals(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hubbub"):
        await server.user()
        for path in ("/healthz", "/readyz", "/metrics"):
            await raw_refused(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert refusal_lines(caplog) == []
    exposition = server.app.metrics.exposition().decode()
    assert "hubbub_handshakes_refused_total{" not in exposition
