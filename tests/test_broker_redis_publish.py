"""The Redis broker's publishing side (RedisBroker._publish_once): a loop turn's
envelopes go out as one write of packed SPUBLISH (or PUBLISH) commands on the
broker's publishing connection, in publish order; a connection that Redis
dropped is replaced by the retry, and a batch whose replies never come is
dropped within the timeout without blocking the batches after it."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio as redis
from redis.asyncio.client import PubSub

from hubbub.server.broker import Event
from hubbub.server.broker_redis import Envelope, RedisBroker, next_message
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics
from hubbub.server.redis_client import subscriber_client
from tests.tcp_freezer import TcpFreezer
from tests.test_broker_redis_read import Recording, until

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONVERSATION = 7


@pytest.fixture
def prefix() -> str:
    return f"test-publish-{secrets.token_hex(4)}"


def config(url: str, prefix: str, timeout: float = 5.0) -> RedisConfig:
    return RedisConfig(
        redis_url=url,
        redis_cluster=False,
        redis_prefix=prefix,
        redis_pool_max=2,
        broker_probe_seconds=3600.0,  # no probe traffic on the topics read here
        storage_timeout_seconds=timeout,
    )


@pytest_asyncio.fixture
async def client() -> AsyncIterator[redis.Redis]:
    client = subscriber_client(SHARED_REDIS, timeout=5.0)
    yield client
    await client.aclose()


async def listening(client: redis.Redis, channel: str, *, sharded: bool) -> PubSub:
    pubsub = client.pubsub()
    if sharded:
        await pubsub.ssubscribe(channel)
    else:
        await pubsub.subscribe(channel)
    assert await next_message(pubsub, timeout=5.0) is not None  # the confirmation
    return pubsub


async def received(pubsub: PubSub, count: int) -> list[Envelope]:
    envelopes: list[Envelope] = []
    for _ in range(count):
        message = await next_message(pubsub, timeout=5.0)
        assert message is not None, f"only {len(envelopes)} of {count} envelopes arrived"
        envelopes.append(msgspec.msgpack.decode(message["data"], type=Envelope))
    return envelopes


def event(seq: int) -> Event:
    return Event(f'{{"n":{seq}}}'.encode(), "message.new", (CONVERSATION,), seq=seq)


async def started(url: str, prefix: str, timeout: float = 5.0) -> tuple[RedisBroker, Metrics]:
    metrics = Metrics()
    broker = RedisBroker(config(url, prefix, timeout), "publisher", metrics)
    await broker.start(Recording())
    await until(lambda: broker.status() is None, "broker connected")
    return broker, metrics


def published(metrics: Metrics) -> float:
    return float(metrics.broker_published._value.get())


def dropped(metrics: Metrics) -> float:
    return float(metrics.broker_dropped._value.get())


@pytest.mark.parametrize("sharded", [True, False], ids=["spublish", "publish"])
async def test_envelopes_arrive_in_publish_order(client: redis.Redis, prefix: str, sharded: bool) -> None:
    broker, metrics = await started(SHARED_REDIS, prefix)
    broker._sharded = sharded  # what the subscriber loop found out; both commands are tested
    pubsub = await listening(client, f"{prefix}:c:{CONVERSATION}", sharded=sharded)
    try:
        for seq in range(1, 26):  # one loop turn: one batch
            broker.publish(event(seq))
        await asyncio.sleep(0)  # the next turn's batch comes after the first
        for seq in range(26, 51):
            broker.publish(event(seq))
        envelopes = await received(pubsub, 50)
        assert [e.body for e in envelopes] == [event(seq) for seq in range(1, 51)]
        assert [e.number for e in envelopes] == list(range(1, 51))
        await until(lambda: published(metrics) == 50, "both batches counted as published")
        assert dropped(metrics) == 0
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await broker.close()


async def test_a_publishing_connection_redis_dropped_is_replaced(client: redis.Redis, prefix: str) -> None:
    broker, metrics = await started(SHARED_REDIS, prefix)
    pubsub = await listening(client, f"{prefix}:c:{CONVERSATION}", sharded=broker._sharded)
    try:
        broker.publish(event(1))
        assert [e.body for e in await received(pubsub, 1)] == [event(1)]
        assert broker._publisher is not None
        host, port = broker._publisher._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
        assert await client.client_kill(f"{host}:{port}")
        broker.publish(event(2))
        assert [e.body for e in await received(pubsub, 1)] == [event(2)]
        assert dropped(metrics) == 0
        assert broker.status() is None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await broker.close()


async def test_a_batch_whose_replies_never_come_is_dropped_in_time(client: redis.Redis, prefix: str) -> None:
    redis_port = int(SHARED_REDIS.rsplit(":", 1)[1].split("/")[0])
    async with TcpFreezer("127.0.0.1", redis_port) as freezer:
        broker, metrics = await started(f"redis://127.0.0.1:{freezer.port}/0", prefix, timeout=0.5)
        pubsub = await listening(client, f"{prefix}:c:{CONVERSATION}", sharded=broker._sharded)
        try:
            broker.publish(event(1))
            assert [e.body for e in await received(pubsub, 1)] == [event(1)]
            freezer.freeze()
            broker.publish(event(2))
            # Both attempts time out (the second on a new connection, held by the freezer).
            await until(lambda: dropped(metrics) == 1, "the frozen batch dropped", timeout=10.0)
            assert broker.status() is not None and broker.status().startswith("publishing to redis failed")  # type: ignore[union-attr]
            freezer.thaw()
            broker.publish(event(3))
            await until(lambda: published(metrics) == 2, "the next batch published after the thaw", timeout=10.0)
            # The frozen batch may still reach Redis once the freezer lets it through
            # (receivers drop repeats and order by seq); the next one arrives either way.
            # Each of its two attempts' bytes may: at most two repeats of it, then the next.
            bodies = [e.body for e in await received(pubsub, 1)]
            while bodies[-1] == event(2) and len(bodies) < 3:
                bodies += [e.body for e in await received(pubsub, 1)]
            assert bodies[-1] == event(3)
            assert set(bodies[:-1]) <= {event(2)}
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await broker.close()


async def watching(
    url: str, prefix: str, instance_id: str, probe_seconds: float = 3600.0
) -> tuple[RedisBroker, Recording]:
    handler = Recording()
    broker = RedisBroker(
        RedisConfig(
            redis_url=url,
            redis_cluster=False,
            redis_prefix=prefix,
            redis_pool_max=2,
            broker_probe_seconds=probe_seconds,
            storage_timeout_seconds=5.0,
        ),
        instance_id,
        Metrics(),
    )
    await broker.start(handler)
    broker.watch(conversations=(CONVERSATION,))
    await until(lambda: broker.status() is None and broker.topics()["conversations"] == [CONVERSATION], "subscribed")
    return broker, handler


async def test_an_instance_gets_the_others_publishes_once_and_never_its_own_back(prefix: str) -> None:
    """Both instances watch the conversation, so Redis sends each publish back to its
    publisher too: that copy is dropped unread (RedisBroker._receive), the other's is
    delivered, also when one origin is the other's with a suffix."""
    first, first_seen = await watching(SHARED_REDIS, prefix, "node")
    second, second_seen = await watching(SHARED_REDIS, prefix, "node-2")
    try:
        for seq in range(1, 6):
            first.publish(event(seq))
        await until(lambda: len(second_seen.events) == 5, "the second instance has the first's five")
        for seq in range(6, 9):
            second.publish(event(seq))
        # Redis sent the first's own five back to it before the second's three.
        await until(lambda: len(first_seen.events) == 8, "the first instance has the second's three")
        assert first_seen.events == [event(seq) for seq in range(1, 9)]
        assert second_seen.events == [event(seq) for seq in range(1, 9)]
        # A marker after everything: nothing else arrived on either side meanwhile.
        first.publish(event(9))
        await until(lambda: len(second_seen.events) == 9, "the marker")
        second.publish(event(10))
        await until(lambda: len(first_seen.events) == 10, "the second marker")
        assert first_seen.events == second_seen.events == [event(seq) for seq in range(1, 11)]
    finally:
        await first.close()
        await second.close()


async def test_the_probe_still_hears_itself(prefix: str) -> None:
    """Own envelopes are dropped unread, but the probe's round trip is still noted:
    the broker stays healthy and its last probe keeps advancing."""
    broker, _ = await watching(SHARED_REDIS, prefix, "node", probe_seconds=0.05)
    try:
        for _ in range(3):
            before = broker._last_probe_received
            await until(lambda: broker._last_probe_received > before, "a probe came back")  # noqa: B023
            assert broker.status() is None
    finally:
        await broker.close()
