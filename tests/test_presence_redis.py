"""Redis presence under a burst: far more simultaneous connects and
disconnects than the presence client has Redis connections (a deploy, a
load balancer moving thousands of clients). Every update must reach Redis:
one dropped ``SREM`` leaves a user online for as long as this instance lives.

Runs against the machine's Redis (HUBBUB_TEST_REDIS_URL) under a prefix of
its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from hubbub.server.config import RedisConfig
from hubbub.server.presence_redis import RedisPresence
from hubbub.server.redis_client import pooled_client

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
USERS = range(1, 401)


@pytest.fixture
async def presence() -> AsyncIterator[RedisPresence]:
    prefix = f"test-presence-{uuid.uuid4().hex[:8]}"
    client = pooled_client(
        RedisConfig(
            redis_url=SHARED_REDIS,
            redis_cluster=False,
            redis_prefix=prefix,
            redis_pool_max=4,
            broker_probe_seconds=5.0,
            storage_timeout_seconds=10.0,
        )
    )
    presence = RedisPresence(client, prefix, "instance-a", heartbeat_seconds=30, ttl_seconds=90)
    offline: list[int] = []

    async def on_expired(user_id: int) -> None:
        offline.append(user_id)

    await presence.start(on_expired)
    try:
        yield presence
    finally:
        await presence.close()
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_burst_of_connects_and_disconnects_reaches_redis(presence: RedisPresence) -> None:
    redis = presence._redis
    key = presence._user_instances_key

    came_online = await asyncio.gather(*(presence.connected(u) for u in USERS))
    assert all(came_online)
    members = await asyncio.gather(*(redis.smembers(key(u)) for u in USERS))
    assert all(m == {b"instance-a"} for m in members), "every connect recorded in Redis"

    await asyncio.gather(*(presence.disconnected(u) for u in USERS))
    members = await asyncio.gather(*(redis.smembers(key(u)) for u in USERS))
    assert all(m == set() for m in members), "every disconnect recorded in Redis"
    assert await presence.online(USERS) == set()


async def test_a_burst_of_connects_is_a_few_batched_round_trips_and_knows_who_is_online_elsewhere(
    presence: RedisPresence,
) -> None:
    # A second live instance of the same deployment, where some users already are.
    other = RedisPresence(presence._redis, presence._prefix, "instance-b", heartbeat_seconds=30, ttl_seconds=90)

    async def never(user_id: int) -> None:
        raise AssertionError(f"nobody expires here ({user_id})")

    await other.start(never)
    try:
        elsewhere = set(range(1, 51))
        assert all(await asyncio.gather(*(other.connected(u) for u in elsewhere)))
        came_online = await asyncio.gather(*(presence.connected(u) for u in USERS))
        assert {u for u, came in zip(USERS, came_online, strict=True) if not came} == elsewhere
        # 400 first connections: each batch one pipeline (and one ZMSCORE), not 400 round trips.
        assert presence._connects.batches <= 3, presence._connects.batches
        assert await presence._redis.smembers(presence._instance_users_key("instance-a")) == {
            str(u).encode() for u in USERS
        }
        assert await presence.online(USERS) == set(USERS)
    finally:
        await other.close()
