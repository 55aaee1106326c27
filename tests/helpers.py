"""Small assertions shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError


async def expect_error(client: Client, code: str, op: str, **fields: Any) -> ServerError:
    """Call ``op``, which must fail with exactly ``code`` and a human message."""
    with pytest.raises(ServerError) as info:
        await client.call(op, **fields)
    assert info.value.code == code, info.value
    assert info.value.message
    return info.value


async def assert_serving(client: Client) -> None:
    """The connection still answers."""
    assert isinstance(await client.call("ping"), frames.Pong)


async def settled_events(client: Client) -> list[frames.ServerFrame]:
    """Every event queued to ``client`` before a ping of its own was answered:
    the server handles a connection's frames in order, so anything it sent
    to this connection before the pong has arrived."""
    await client.call("ping")
    return client.drain_events()


def uid(client: Client) -> int:
    assert client.user is not None
    return client.user.id


async def closed_with(client: Client, timeout: float = 5) -> int | None:
    """Wait until the server closes the connection; its close code."""
    await asyncio.wait_for(client.ws.wait_closed(), timeout)
    return client.ws.close_code
