"""hubbub_pool_* and hubbub_messages_received_total on /metrics (server/pool_metrics.py,
storage/pool_usage.py): a real server on PostgreSQL and MongoDB, routed through the
machine's Redis, with pools of one connection, so that a connection held by the
test makes the server's next call wait, and the metrics must say so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from hubbub.protocol import frames
from hubbub.server.app import App
from hubbub.storage.postgres import PostgresDirectory
from tests.cluster import SHARED_REDIS
from tests.conftest import RunningServer, app_on_backend, http_get, unique_name

WAIT = 10.0
Pools = dict[tuple[str, str, str], float]
"""(metric, store, pool) -> value."""


@pytest.fixture
async def pooled(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    overrides = {
        "postgres_pool_min": 1,
        "postgres_pool_max": 1,
        "redis_url": SHARED_REDIS,
        "redis_prefix": f"hubbub-test-pools-{uuid.uuid4().hex[:12]}",
        "redis_pool_max": 1,
    }
    async with (
        app_on_backend("postgres+mongo", request, tmp_path / "data", overrides) as app,
        AsyncExitStack() as clients,
    ):
        yield RunningServer(app, clients)


async def pools(server: RunningServer) -> Pools:
    status, body = await asyncio.to_thread(http_get, f"{server.http_url}/metrics")
    assert status == 200
    found: Pools = {}
    for family in text_string_to_metric_families(body):
        if family.name.startswith("hubbub_pool_"):
            for sample in family.samples:
                found[(sample.name, sample.labels["store"], sample.labels["pool"])] = sample.value
    return found


async def until(server: RunningServer, condition: Callable[[Pools], bool], what: str) -> Pools:
    """Scrape until ``condition`` holds (bounded): the server gets there on its own."""
    end = time.monotonic() + WAIT
    while not condition(found := await pools(server)):
        assert time.monotonic() < end, f"never {what}: {found}"
        await asyncio.sleep(0.02)
    return found


def postgres_pool(app: App) -> object:
    assert app.services is not None
    directory = app.services.directory
    store = getattr(directory, "_store", directory)  # under server/guarded.py's wrapper
    assert isinstance(store, PostgresDirectory)
    return store.pools.primary


async def test_every_pool_reports_its_size_and_use(pooled: RunningServer) -> None:
    alice = await pooled.user()
    channel = (await alice.call("channel.create", name=unique_name("ch"))).conversation
    await alice.call("message.send", conversation_id=channel.id, text="hi", client_msg_id="p1")
    found = await pools(pooled)
    assert found[("hubbub_pool_max_connections", "postgres", "primary")] == 1
    assert found[("hubbub_pool_connections", "postgres", "primary")] == 1
    assert found[("hubbub_pool_connections_in_use", "postgres", "primary")] == 0
    assert found[("hubbub_pool_waiting", "postgres", "primary")] == 0
    assert found[("hubbub_pool_max_connections", "redis", "presence")] == 1
    assert found[("hubbub_pool_waiting", "redis", "presence")] == 0
    mongo = {pool for (_, store, pool) in found if store == "mongo"}
    assert len(mongo) == 1, f"one MongoDB server, one pool: {found}"
    (address,) = mongo
    assert found[("hubbub_pool_connections", "mongo", address)] >= 1, "the send was stored through a connection"
    assert found[("hubbub_pool_connections_in_use", "mongo", address)] == 0
    assert found[("hubbub_pool_waiting", "mongo", address)] == 0
    assert found[("hubbub_pool_max_connections", "mongo", address)] == 100  # pymongo's default maxPoolSize


async def test_a_call_waiting_for_the_only_postgres_connection_is_counted(pooled: RunningServer) -> None:
    alice = await pooled.user()
    pool = postgres_pool(pooled.app)
    async with pool.acquire():  # type: ignore[attr-defined]  # the server's one connection, held here
        busy = await until(
            pooled, lambda p: p[("hubbub_pool_connections_in_use", "postgres", "primary")] == 1, "in use"
        )
        assert busy[("hubbub_pool_waiting", "postgres", "primary")] == 0
        # A write: on the primary pool (channel.list's reads are batched on the lookup lane).
        creating = asyncio.ensure_future(alice.call("channel.create", name="waiting"))
        await until(pooled, lambda p: p[("hubbub_pool_waiting", "postgres", "primary")] == 1, "a waiting call")
        assert not creating.done()
    await creating  # served once the connection came back
    await until(pooled, lambda p: p[("hubbub_pool_waiting", "postgres", "primary")] == 0, "no more waiting")


async def test_a_presence_update_waiting_for_the_only_redis_connection_is_counted(pooled: RunningServer) -> None:
    client = pooled.app._redis
    assert isinstance(client, redis.Redis)  # single-node Redis: one pool (a cluster client has one per node)
    redis_pool = client.connection_pool
    held = await redis_pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    try:
        await until(pooled, lambda p: p[("hubbub_pool_connections_in_use", "redis", "presence")] == 1, "in use")
        # Coming online writes presence to Redis, which waits for the connection.
        registering = asyncio.ensure_future(pooled.user())
        await until(pooled, lambda p: p[("hubbub_pool_waiting", "redis", "presence")] >= 1, "a waiting command")
    finally:
        await redis_pool.release(held)
    await registering
    await until(pooled, lambda p: p[("hubbub_pool_waiting", "redis", "presence")] == 0, "no more waiting")


async def test_messages_received_counts_each_new_message_once(pooled: RunningServer) -> None:
    alice = await pooled.user()
    bob = await pooled.user()
    assert bob.user is not None
    channel = (await alice.call("channel.create", name=unique_name("ch"))).conversation
    await bob.call("channel.join", channel_id=channel.id)
    registry = pooled.app.metrics.registry
    before = registry.get_sample_value("hubbub_messages_received_total") or 0.0
    for i in range(3):
        await alice.call("message.send", conversation_id=channel.id, text=f"m{i}", client_msg_id=f"r{i}")
    await alice.call("message.send", conversation_id=channel.id, text="m0", client_msg_id="r0")  # a duplicate
    for _ in range(3):
        await bob.next_event(frames.MessageNew)
    # Two recipients on this instance, three new messages: three, not six (nor four).
    assert registry.get_sample_value("hubbub_messages_received_total") == before + 3
    assert registry.get_sample_value("hubbub_messages_stored_total") == 3
