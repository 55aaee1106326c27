"""The broker contract (tests/unit/test_broker_contract.py) against the
RedisClusterBroker on a real Redis Cluster (tests/redis_cluster.py): the same
tests, collected here with this module's ``open_redis``, plus the two that
build their broker themselves, written for the cluster broker.

One promise differs, and its test is replaced here, not dropped: on a
cluster, publish order is delivery order per channel (a channel lives on one
shard, read by one connection), not across channels of different shards.
``test_a_membership_change_to_several_watched_users_arrives_once`` also
expects a conversation's message published after a membership change to
arrive after it, over another channel; its cluster version checks what the
cluster keeps (once, and in order with the event announcing it on the users'
channels). docs/scaling.md ("On a Redis Cluster") says what that costs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from hubbub.server.broker import Event, MembershipChange
from hubbub.server.broker_redis_cluster import RedisClusterBroker
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics
from tests.redis_cluster import RedisClusterProcesses
from tests.unit import test_broker_contract as contract

pytest_plugins = ["tests.redis_cluster"]  # its fixture: redis_cluster
pytestmark = pytest.mark.xdist_group("redis_cluster")

BUILDS_ITS_OWN_BROKER = {
    "test_publish_before_start_is_harmless",
    "test_a_conversation_watched_before_the_first_connection_is_resynced",
}
ORDERS_ACROSS_SHARDS = {"test_a_membership_change_to_several_watched_users_arrives_once"}
globals().update(
    {
        name: test
        for name, test in vars(contract).items()
        if name.startswith("test_") and name not in BUILDS_ITS_OWN_BROKER | ORDERS_ACROSS_SHARDS
    }
)
instance = contract.instance
pair = contract.pair
prefix = contract.prefix


@pytest.fixture
def broker_kind() -> str:
    return "redis_cluster"


def _cluster_broker(url: str, prefix: str) -> RedisClusterBroker:
    config = RedisConfig(
        redis_url=url,
        redis_cluster=True,
        redis_prefix=prefix,
        redis_pool_max=4,
        broker_probe_seconds=60.0,
        storage_timeout_seconds=2.0,
    )
    return RedisClusterBroker(config, uuid.uuid4().hex[:8], Metrics())


@pytest.fixture
async def open_redis(prefix: str, redis_cluster: RedisClusterProcesses) -> AsyncIterator[contract.OpenInstance]:
    await redis_cluster.wait_ok()
    async with AsyncExitStack() as stack:

        async def open_() -> contract.Instance:
            broker = _cluster_broker(redis_cluster.url, prefix)
            seen = contract.Recorder()
            await broker.start(seen)
            stack.push_async_callback(broker.close)
            return contract.Instance(broker, seen, contract._redis_ready)

        yield open_


async def test_publish_before_start_is_harmless_on_a_cluster(redis_cluster: RedisClusterProcesses, prefix: str) -> None:
    broker = _cluster_broker(redis_cluster.url, prefix)
    broker.publish(contract.delivery(1))
    broker.publish_membership(MembershipChange(10, (3,), joined=True))
    seen = contract.Recorder()
    await broker.start(seen)
    try:
        assert seen.deliveries == []
    finally:
        await broker.close()


async def test_a_conversation_watched_before_the_first_connection_is_resynced_on_a_cluster(
    redis_cluster: RedisClusterProcesses, prefix: str
) -> None:
    await redis_cluster.wait_ok()
    broker = _cluster_broker(redis_cluster.url, prefix)
    seen = contract.Recorder()
    await broker.start(seen)
    try:
        broker.watch(conversations=[21])  # the shards have not connected yet
        await seen.until(lambda: seen.resynced(21))
        assert 21 in broker.topics()["conversations"]
    finally:
        await broker.close()


async def test_a_membership_change_to_several_watched_users_arrives_once_on_a_cluster(
    pair: tuple[contract.Instance, contract.Instance],
) -> None:
    a, b = pair
    await contract.link(a, b, 10)
    b.broker.watch(users=[5, 6])
    await contract.link(a, b, 11)
    dm = MembershipChange(30, (4, 5, 6), joined=True, since_seq=0)  # user 4 is not here
    added = Event(b"{}", "conversation.added", users=(4, 5, 6))
    a.broker.publish_membership(dm)
    a.broker.publish(added)
    a.broker.publish(contract.delivery(3))
    await b.seen.until(lambda: len(b.seen.events()) == 3)
    events = b.seen.events()
    assert sorted(map(repr, events)) == sorted(map(repr, [dm, added, contract.delivery(3)]))  # each once
    assert events.index(dm) < events.index(added)  # the users' channels keep publish order
