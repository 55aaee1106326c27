"""The Redis broker's subscriber read (server/broker_redis.next_message): a
published message read straight from the connection comes out as redis-py's
``get_message`` gives it, and everything else still goes through redis-py
(subscribe confirmations, the timeout, and a connection that is gone)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import cast

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio as redis
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.utils import HIREDIS_AVAILABLE

from hubbub.server.broker import Event, MembershipChange
from hubbub.server.broker_redis import Envelope, RedisBroker, next_message
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics
from hubbub.server.redis_client import pooled_client, shard_subscriber_client, subscriber_client
from tests.tcp_freezer import TcpFreezer

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


# -- hiredis, and a reply that stops halfway ---------------------------------------


def test_redis_py_parses_with_hiredis_on_the_brokers_connections() -> None:
    """hiredis is a dependency (pyproject.toml) because redis-py parses every reply in
    Python without it; the broker's connections speak RESP2, whose published messages
    are plain arrays that next_message reads directly."""
    assert HIREDIS_AVAILABLE
    config = RedisConfig(
        redis_url=SHARED_REDIS,
        redis_cluster=False,
        redis_prefix="unused",
        redis_pool_max=2,
        broker_probe_seconds=1.0,
        storage_timeout_seconds=1.0,
    )
    for client in (
        subscriber_client(SHARED_REDIS, timeout=1.0),
        shard_subscriber_client("127.0.0.1", 6379, timeout=1.0),
        pooled_client(config),
    ):
        assert isinstance(new_connection(client)._parser, _AsyncHiredisParser)
    assert new_connection(subscriber_client(SHARED_REDIS, timeout=1.0)).protocol == 2
    assert new_connection(shard_subscriber_client("127.0.0.1", 6379, timeout=1.0)).protocol == 2


def new_connection(client: redis.Redis) -> Connection:
    """A connection as the client's pool makes them (not connected)."""
    return cast(Connection, client.connection_pool.make_connection())  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


class Recording:
    """A broker handler that records what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.resyncs: list[Sequence[int] | None] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_membership(self, change: MembershipChange) -> None:
        pass

    def on_resync(self, conversation_ids: Sequence[int] | None) -> None:
        self.resyncs.append(conversation_ids)


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the broker's own tasks make it true; no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def test_a_subscriber_stalled_in_the_middle_of_a_reply_is_reconnected(channel: str) -> None:
    """next_message reads a reply already partly buffered without a timer; when the rest
    never comes, the probe (hearing nothing) closes the connection, which ends that read,
    and the broker reconnects and asks for a resync, as for any silent subscriber."""
    redis_port = int(SHARED_REDIS.rsplit(":", 1)[1].split("/")[0])
    prefix = channel.split(":", 1)[0]
    async with TcpFreezer("127.0.0.1", redis_port) as freezer:
        config = RedisConfig(
            redis_url=f"redis://127.0.0.1:{freezer.port}/0",
            redis_cluster=False,
            redis_prefix=prefix,
            redis_pool_max=2,
            broker_probe_seconds=0.2,
            storage_timeout_seconds=5.0,
        )
        broker = RedisBroker(config, "stalled", Metrics())
        handler = Recording()
        publisher = redis.Redis.from_url(SHARED_REDIS)
        await broker.start(handler)
        try:
            broker.watch(conversations=(7,))
            await until(lambda: broker.status() is None and broker.topics()["conversations"] == [7], "subscribed")
            resyncs = len(handler.resyncs)
            # One chunk: a small message, then the first part of a big one, already
            # buffered when the subscriber reads its next reply (so without a timer).
            small = Envelope("another", 1, Event(b"x", "message.new", (7,), seq=1))
            big = Envelope("another", 2, Event(b"x" * 20_000, "message.new", (7,), seq=2))
            freezer.stall_midway(10_000)
            async with publisher.pipeline(transaction=False) as pipe:
                for envelope in (small, big):
                    pipe.spublish(f"{prefix}:c:7", msgspec.msgpack.encode(envelope))
                await pipe.execute()
            # Only a reconnect asks for a resync of everything.
            await until(lambda: None in handler.resyncs[resyncs:], "a reconnect and a resync of everything")
            await until(lambda: broker.status() is None, "healthy again")
            assert handler.events == [small.body]  # the stalled one is lost: the resync fills it from the store
            await publisher.spublish(f"{prefix}:c:7", msgspec.msgpack.encode(Envelope("another", 3, big.body)))
            await until(lambda: len(handler.events) == 2, "delivery on the new connection")
        finally:
            await broker.close()
            await publisher.aclose()
