"""The Redis broker's subscriber read (server/broker_redis.next_message): a
published message read straight from the connection comes out as redis-py's
``get_message`` gives it, and everything else still goes through redis-py
(subscribe confirmations, the timeout, and a connection that is gone)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as redis
from redis.asyncio.client import PubSub

from hubbub.server.broker_redis import next_message
from hubbub.server.redis_client import subscriber_client

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest_asyncio.fixture
async def client() -> AsyncIterator[redis.Redis]:
    client = subscriber_client(SHARED_REDIS, timeout=5.0)
    yield client
    await client.aclose()


@pytest.fixture
def channel() -> str:
    return f"test-read-{secrets.token_hex(4)}:c:7"


async def subscribed(client: redis.Redis, channel: str, *, sharded: bool) -> PubSub:
    pubsub = client.pubsub()
    if sharded:
        await pubsub.ssubscribe(channel)
    else:
        await pubsub.subscribe(channel)
    return pubsub


@pytest.mark.parametrize("sharded", [True, False], ids=["ssubscribe", "subscribe"])
async def test_a_published_message_reads_as_redis_py_gives_it(client: redis.Redis, channel: str, sharded: bool) -> None:
    pubsub = await subscribed(client, channel, sharded=sharded)
    try:
        confirmation = await next_message(pubsub, timeout=5.0)
        assert confirmation is not None
        assert confirmation["type"] == ("ssubscribe" if sharded else "subscribe")
        assert confirmation["channel"] == channel.encode()
        publish = client.spublish if sharded else client.publish
        payloads = [b"\x93first", b"second", b""]
        for payload in payloads:
            await publish(channel, payload)
        got = [await next_message(pubsub, timeout=5.0) for _ in payloads]
        kind = "smessage" if sharded else "message"
        assert got == [{"type": kind, "pattern": None, "channel": channel.encode(), "data": p} for p in payloads]
        # Then redis-py's own get_message reads the same way on the same connection.
        await publish(channel, b"after")
        assert await pubsub.get_message(timeout=5.0) == {
            "type": kind,
            "pattern": None,
            "channel": channel.encode(),
            "data": b"after",
        }
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_subscribe_confirmations_are_left_out_on_request_and_nothing_is_none(
    client: redis.Redis, channel: str
) -> None:
    pubsub = await subscribed(client, channel, sharded=True)
    try:
        assert await next_message(pubsub, timeout=5.0, ignore_subscribe_messages=True) is None
        assert await next_message(pubsub, timeout=0.05) is None  # nothing published: the timeout
        await client.spublish(channel, b"x")
        message = await next_message(pubsub, timeout=5.0, ignore_subscribe_messages=True)
        assert message is not None and message["data"] == b"x"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_an_unsubscribe_confirmation_still_updates_redis_py(client: redis.Redis, channel: str) -> None:
    """Confirmations go through redis-py's handle_message, which keeps its own bookkeeping."""
    pubsub = await subscribed(client, channel, sharded=True)
    try:
        assert (await next_message(pubsub, timeout=5.0) or {})["type"] == "ssubscribe"
        await pubsub.sunsubscribe(channel)
        confirmation = await next_message(pubsub, timeout=5.0)
        assert confirmation is not None and confirmation["type"] == "sunsubscribe"
        assert channel.encode() not in pubsub.shard_channels
        assert not pubsub.pending_unsubscribe_shard_channels
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
