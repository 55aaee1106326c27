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


# -- presence (server/presence_batch.py: changes arrive as presence.batch frames) --


def presence_changes(events: list[frames.ServerFrame], user_id: int | None = None) -> list[frames.Presence]:
    """The presence changes in these events, in order (of ``user_id`` when given)."""
    return [
        change
        for event in events
        if isinstance(event, frames.PresenceBatch)
        for change in event.presence
        if user_id is None or change.user_id == user_id
    ]


async def next_presence_of(client: Client, user_id: int, timeout: float = 10) -> frames.Presence:
    """The first change of ``user_id`` in the next batches (skipping other events and users)."""
    async with asyncio.timeout(timeout):
        while True:
            batch: frames.PresenceBatch = await client.next_event(frames.PresenceBatch)
            found = [change for change in batch.presence if change.user_id == user_id]
            if found:
                return found[0]
