"""Three `hubbub serve` processes on a real Redis Cluster (HUBBUB_REDIS_CLUSTER):
six redis-server processes, three masters with a replica each, started by
the tests (tests/redis_cluster.py, shared by the tests of the group
``redis_cluster``, which run on one xdist worker in file order).

Delivery and presence across the instances, then three failovers under
traffic: ``CLUSTER FAILOVER`` on a replica (graceful), a master killed with
SIGKILL (its subscribers see the connection drop), and a master frozen with
SIGSTOP (its subscribers' sockets stay open and silent: only the broker's
per-shard probe can tell). Through each, every acknowledged message reaches
every client that follows PROTOCOL.md §9, recovery takes less than
``RECOVERY_BOUND``, /readyz and hubbub_broker_healthy say degraded while a
shard is and healthy after, and nobody connected is announced offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.cluster import RedisCluster

from hubbub.protocol import frames
from hubbub.protocol.client import ServerError
from hubbub.server.config import RedisConfig
from hubbub.server.presence_redis import RedisPresence
from hubbub.server.redis_client import cluster_client
from tests.backends import truncate_postgres
from tests.cluster import WAIT, Cluster, Instance, Peer, create_channel
from tests.processes import FAST_HASHING, parse_log, server_env, stderr_of
from tests.redis_cluster import ClusterNode, RedisClusterProcesses

pytest_plugins = ["tests.redis_cluster"]  # its fixture: redis_cluster
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("redis_cluster")]

RECOVERY_BOUND = 10.0
"""Seconds from a master's failure to every instance healthy and routing live again.
Measured about 2-4 s here (cluster-node-timeout 1 s, probe interval 0.5 s)."""
PRESENCE_TTL_SECONDS = 8.0
CHANNELS = 6
"""Conversations the traffic runs in: their channels hash to slots of every master (checked)."""


class ShardedCluster(Cluster):
    """Hubbub instances on the Redis Cluster; Redis inspected per master."""

    def __init__(self, tmp_path: Path, stores: dict[str, Any], processes: RedisClusterProcesses, stack: AsyncExitStack):
        super().__init__(tmp_path, stores, processes.url, stack)
        self.processes = processes
        # A failover stalls Redis commands for up to two storage timeouts (a retry after a
        # timeout on the frozen or dead master): a TTL longer than that, as in production
        # (30 s against 5 s), so a live instance is never taken for dead.
        self.settings = {"redis_cluster": True, "presence_ttl_seconds": PRESENCE_TTL_SECONDS}
        self.cluster = RedisCluster.from_url(
            processes.url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )

    async def owner(self, channel: str) -> ClusterNode:
        """The master that owns ``channel``'s slot now."""
        await self.cluster.nodes_manager.initialize()
        node = self.cluster.get_node_from_key(channel)
        assert node is not None
        return next(n for n in self.processes.nodes if n.port == int(node.port))

    async def channels_per_master(self) -> dict[int, set[str]]:
        """PUBSUB SHARDCHANNELS of this test's prefix on each master, by port."""
        result = {}
        for master in await self.processes.masters():
            client = master.client()
            try:
                result[master.port] = {_text(c) for c in await client.pubsub_shardchannels(f"{self.prefix}:*")}
            finally:
                await client.aclose()
        return result

    async def shard_channels(self) -> set[str]:
        # An instance's probe channels ({prefix}:i:{id}:{n}, one per master) stand for its own channel.
        channels = set().union(*(await self.channels_per_master()).values())
        return {re.sub(r"^(.*:i:[^:]+):\d+$", r"\1", c) for c in channels}

    async def shard_subscribers(self, channels: list[str]) -> dict[str, int]:
        counts = {}
        for channel in channels:
            client = (await self.owner(channel)).client()
            try:
                [(_, count)] = await client.pubsub_shardnumsub(channel)
                counts[channel] = int(count)
            finally:
                await client.aclose()
        return counts

    async def close(self) -> None:
        # Presence keys are {prefix}:..., a hash tag: one slot, on one master.
        await self.cluster.nodes_manager.initialize()  # after a failover, the masters of now
        keys = [key async for key in self.cluster.scan_iter(match=f"*{self.prefix}*", count=1000)]
        if keys:
            await self.cluster.delete(*keys)
        await self.cluster.aclose()
        await self.redis.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sharded(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: str, redis_cluster: RedisClusterProcesses
) -> AsyncIterator[ShardedCluster]:
    """One ShardedCluster for the module; ``instances`` starts its three the first time."""
    await redis_cluster.wait_ok()
    await truncate_postgres(postgres_database)
    stores = {"accounts_backend": "postgres", "messages_backend": "postgres", "postgres_dsn": postgres_database}
    async with AsyncExitStack() as stack:
        instances = ShardedCluster(tmp_path_factory.mktemp("sharded"), stores, redis_cluster, stack)
        stack.push_async_callback(instances.close)
        yield instances


@pytest_asyncio.fixture(loop_scope="module")
async def instances(sharded: ShardedCluster) -> list[Instance]:
    """The module's three instances (started once: each test brings users and
    conversations of its own), healthy on a cluster with all its nodes."""
    if not sharded.instances:
        await sharded.start("a", "b", "c")
    await sharded.processes.wait_ok()
    end = time.monotonic() + WAIT
    while True:
        if await all_healthy(sharded.instances):
            return sharded.instances
        assert time.monotonic() < end, "the instances never became healthy"
        await asyncio.sleep(0.05)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- helpers ------------------------------------------------------------------


@dataclass
class Traffic:
    """Senders on every instance, each sending into every channel in turn, until stopped."""

    senders: list[Peer]
    channels: list[int]
    acked: list[frames.Message] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._send(peer) for peer in self.senders))

    async def _send(self, peer: Peer) -> None:
        i = 0
        while not self.stop.is_set():
            for cid in self.channels:
                self.acked.append(await send_retrying(peer, cid, f"{peer.name}-{cid}-{i}"))
            i += 1
            await asyncio.sleep(0.02)


async def send_retrying(peer: Peer, conversation_id: int, client_msg_id: str) -> frames.Message:
    """PROTOCOL.md: after ``unavailable`` (the database slow under this machine's load, not
    Redis: sends never wait on it), the same send again, which is always safe."""
    for attempt in range(5):
        try:
            return await peer.send(conversation_id, client_msg_id)
        except ServerError as exc:
            if exc.code != "unavailable" or attempt == 4:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


@dataclass
class HealthLog:
    """/readyz and hubbub_broker_healthy of each instance, polled until stopped."""

    instances: list[Instance]
    degraded: dict[str, list[str]] = field(default_factory=dict)
    """Per instance, each degraded /readyz body seen."""
    unhealthy_metric: set[str] = field(default_factory=set)
    """Instances whose /metrics said hubbub_broker_healthy 0 at least once."""
    stores_unready: int = 0
    """Samples where /readyz said a store did not answer (503)."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            await asyncio.gather(*(self._sample(i) for i in self.instances))
            await asyncio.sleep(0.1)

    async def _sample(self, instance: Instance) -> None:
        status, body = await instance.get("/readyz")
        if status != 200:
            # A store slow under this machine's load (PostgreSQL's ping): never the broker,
            # which degrades an instance and never takes it out of service.
            assert status == 503 and "broker" not in body, body
            self.stores_unready += 1
            return
        if body != "ready\n":
            assert body.startswith("ready, degraded: broker: "), body
            self.degraded.setdefault(instance.name, []).append(body)
        if broker_healthy(await instance.get("/metrics")) == 0:
            self.unhealthy_metric.add(instance.name)


def broker_healthy(response: tuple[int, str]) -> float:
    status, body = response
    assert status == 200
    return float(next(line.split()[1] for line in body.splitlines() if line.startswith("hubbub_broker_healthy ")))


async def all_healthy(instances: list[Instance]) -> bool:
    for instance in instances:
        _, body = await instance.get("/readyz")
        if body != "ready\n" or broker_healthy(await instance.get("/metrics")) != 1:
            return False
    return True


async def live_round_trip(
    sender: Peer, receivers: list[Peer], channel: int, tag: str, acked: list[frames.Message]
) -> bool:
    """One message from ``sender`` that every receiver gets as message.new within a second."""
    message = await send_retrying(sender, channel, tag)
    acked.append(message)
    try:
        await asyncio.gather(*(r.has_messages([message.id], timeout=1.0) for r in receivers))
    except AssertionError:
        return False
    return True


async def until_recovered(
    setup: Setup,
    taken_over: Callable[[], Awaitable[bool]],
    noticed: Callable[[], bool],
    since: float,
    acked: list[frames.Message],
) -> float:
    """Seconds from ``since`` until another master has ``taken_over``, the failure was ``noticed``,
    every instance is healthy again and a message crosses instances live."""
    sender, receivers, channel = setup.peers[0], setup.peers[1:], setup.channels[0]
    n = 0
    while True:
        n += 1
        if (
            await taken_over()
            and noticed()
            and await all_healthy(setup.instances)
            and await live_round_trip(sender, receivers, channel, f"recovered-{n}", acked)
        ):
            return time.monotonic() - since
        assert time.monotonic() - since < RECOVERY_BOUND + WAIT, "never recovered"
        await asyncio.sleep(0.05)


@dataclass
class Setup:
    instances: list[Instance]
    peers: list[Peer]
    channels: list[int]


async def three_instances(sharded: ShardedCluster, instances: list[Instance]) -> Setup:
    peers = [await sharded.connect(i, name=f"on-{i.name}") for i in instances]
    channels = [await create_channel(peers[0], peers[1:]) for _ in range(CHANNELS)]
    await sharded.settle()
    owners = {(await sharded.owner(f"{sharded.prefix}:c:{cid}")).port for cid in channels}
    assert len(owners) >= 2, "the channels should spread over the masters"
    return Setup(instances, peers, channels)


async def assert_nothing_lost(setup: Setup, traffic: Traffic) -> int:
    """PROTOCOL.md §9 on every peer: fill what is still missing from history; then every
    acknowledged message exactly once. Returns how many came from history."""
    acked = traffic.acked
    ids = [m.id for m in acked]
    for peer in setup.peers:
        with contextlib.suppress(AssertionError):
            await peer.has_messages(ids, timeout=5.0)  # the instances fill their gaps themselves
        for cid in setup.channels:
            await peer.catch_up(cid, peer.last_contiguous(cid))
        for cid in setup.channels:
            peer.assert_exactly(cid, [m for m in acked if m.conversation_id == cid])
            peer.assert_in_order(cid)
    return sum(len(p.from_history) for p in setup.peers)


def assert_nobody_went_offline(setup: Setup) -> None:
    for peer in setup.peers:
        for other in setup.peers:
            assert "offline" not in peer.presence_of(other.user_id), f"{peer.name} saw {other.name} go offline"


Failure = Callable[["Setup"], Awaitable[ClusterNode]]
"""Makes the master of the first conversation's slot fail; returns it."""


async def failover_under_traffic(
    sharded: ShardedCluster, instances: list[Instance], fail: Failure, *, noticed_by_all: bool
) -> tuple[float, HealthLog, int]:
    """Traffic and health polling around ``fail()``; then recovery time, health seen, messages from history.
    ``noticed_by_all``: the recovery counts only once every instance has reported degraded."""
    setup = await three_instances(sharded, instances)
    traffic = Traffic(setup.peers, setup.channels)
    health = HealthLog(setup.instances)
    running = [asyncio.ensure_future(traffic.run()), asyncio.ensure_future(health.run())]
    try:
        await asyncio.sleep(0.3)
        failed_at = time.monotonic()
        failed = await fail(setup)
        names = {i.name for i in setup.instances}
        channel = f"{sharded.prefix}:c:{setup.channels[0]}"

        async def taken_over() -> bool:
            return (await sharded.owner(channel)).port != failed.port

        recovered = await until_recovered(
            setup,
            taken_over,
            lambda: not noticed_by_all or set(health.degraded) == names,
            failed_at,
            traffic.acked,
        )
        await asyncio.sleep(0.3)  # traffic goes on after the recovery
    finally:
        traffic.stop.set()
        health.stop.set()
        await asyncio.gather(*running)
    assert len(traffic.acked) > 50, "traffic ran through the failover"
    from_history = await assert_nothing_lost(setup, traffic)
    assert_nobody_went_offline(setup)
    assert await all_healthy(setup.instances)
    print(f"recovered in {recovered:.2f}s; {len(traffic.acked)} acked, {from_history} filled from history by clients")
    return recovered, health, from_history


# -- 1. routing and presence ------------------------------------------------------


async def test_delivery_and_presence_across_three_instances(sharded: ShardedCluster, instances: list[Instance]) -> None:
    setup = await three_instances(sharded, instances)
    c = setup.instances[2]
    # Every instance probes every master: one probe channel of its own on each.
    per_master = await sharded.channels_per_master()
    assert len(per_master) == 3
    for channels in per_master.values():
        for instance in setup.instances:
            own = [ch for ch in channels if ch.startswith(f"{sharded.prefix}:i:{instance.instance_id}:")]
            assert len(own) == 1, f"{instance.name} on this master: {own}"
    assert await all_healthy(setup.instances)

    traffic = Traffic(setup.peers, setup.channels)
    for i in range(3):
        for peer in setup.peers:
            for cid in setup.channels:
                traffic.acked.append(await peer.send(cid, f"{peer.name}-{cid}-{i}"))
    ids = [m.id for m in traffic.acked]
    await asyncio.gather(*(p.has_messages(ids) for p in setup.peers))
    for peer in setup.peers:
        assert not peer.from_history
        for cid in setup.channels:
            peer.assert_exactly(cid, [m for m in traffic.acked if m.conversation_id == cid])
            peer.assert_in_order(cid)

    # Presence: a second device elsewhere changes nothing; the last one closing is offline everywhere.
    on_a, on_b, on_c = setup.peers
    phone = await sharded.connect(c, peer=on_b.device("on-b-phone"))
    await on_b.client.close()
    marker = await phone.send(setup.channels[0], "marker")
    await on_a.has_messages([marker.id])
    assert on_a.presence_of(on_b.user_id) == []
    answers = await asyncio.gather(*(p.call("presence.query", user_ids=[on_b.user_id]) for p in (on_a, on_c)))
    assert {answer.presence[0].status for answer in answers} == {"online"}
    await phone.client.close()
    await on_a.wait_for(lambda: on_a.presence_of(on_b.user_id) == ["offline"], "offline event on a")
    await on_c.wait_for(lambda: on_c.presence_of(on_b.user_id) == ["offline"], "offline event on c")
    # Every presence key of the test in one slot.
    keys = [key async for key in sharded.cluster.scan_iter(match=f"*{sharded.prefix}*", count=1000)]
    assert keys and {sharded.cluster.keyslot(k) for k in keys} == {sharded.cluster.keyslot(f"{{{sharded.prefix}}}")}


# -- 2. failovers under traffic -------------------------------------------------


async def test_cluster_failover_on_a_replica_under_traffic(sharded: ShardedCluster, instances: list[Instance]) -> None:
    async def fail(setup: Setup) -> ClusterNode:
        master = await sharded.owner(f"{sharded.prefix}:c:{setup.channels[0]}")
        replica = await sharded.processes.replica_of(master)
        await sharded.processes.failover(replica)
        return master

    recovered, _, _ = await failover_under_traffic(sharded, instances, fail, noticed_by_all=False)
    assert recovered < RECOVERY_BOUND


async def test_master_killed_under_traffic(sharded: ShardedCluster, instances: list[Instance]) -> None:
    killed: list[ClusterNode] = []

    async def fail(setup: Setup) -> ClusterNode:
        master = await sharded.owner(f"{sharded.prefix}:c:{setup.channels[0]}")
        master.kill()
        killed.append(master)
        return master

    try:
        recovered, health, _ = await failover_under_traffic(sharded, instances, fail, noticed_by_all=True)
    finally:
        for node in killed:  # back as a replica of its successor (the next test waits for it)
            node.spawn()
    assert recovered < RECOVERY_BOUND
    # Every instance subscribes on every master (its probe at least): each had a shard down, and said so.
    names = {i.name for i in instances}
    assert set(health.degraded) == names and health.unhealthy_metric == names
    for bodies in health.degraded.values():
        assert any(f"shard 127.0.0.1:{killed[0].port}" in b for b in bodies), bodies[:3]


async def test_a_frozen_master_is_caught_by_the_probe(sharded: ShardedCluster, instances: list[Instance]) -> None:
    """SIGSTOP: the master's sockets stay open and say nothing, its replica takes over.
    No connection error ever tells the subscriber; the probe of that shard does."""
    frozen: list[ClusterNode] = []

    async def fail(setup: Setup) -> ClusterNode:
        master = await sharded.owner(f"{sharded.prefix}:c:{setup.channels[0]}")
        assert master.process is not None
        os.kill(master.process.pid, signal.SIGSTOP)
        frozen.append(master)
        return master

    try:
        recovered, health, _ = await failover_under_traffic(sharded, instances, fail, noticed_by_all=True)
    finally:
        for node in frozen:
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGCONT)  # back, and demoted to a replica
    assert recovered < RECOVERY_BOUND
    names = {i.name for i in instances}
    assert set(health.degraded) == names and health.unhealthy_metric == names
    # On every instance, what first said that shard was in trouble was its probe.
    shard = f"shard 127.0.0.1:{frozen[0].port}: "
    for name, bodies in health.degraded.items():
        first = next(b for b in bodies if shard in b)
        problem = first.split(shard, 1)[1]
        assert problem.startswith(("probe publish", "subscriber received nothing")), f"{name}: {first}"


# -- 3. the setting ---------------------------------------------------------------


async def test_start_up_checks_which_kind_of_redis_it_is(tmp_path: Path, redis_cluster: RedisClusterProcesses) -> None:
    """A cluster node configured as a single Redis (every other slot's command
    would fail with MOVED), and a single Redis configured as a cluster: both
    stop start-up with one line that says which setting to change."""
    single = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    cases = [
        ({"HUBBUB_REDIS_URL": redis_cluster.url}, "HUBBUB_REDIS_CLUSTER=true"),
        ({"HUBBUB_REDIS_URL": single, "HUBBUB_REDIS_CLUSTER": "true"}, "HUBBUB_REDIS_CLUSTER=true needs"),
    ]
    runs = await asyncio.gather(
        *(
            stderr_of("-m", "hubbub.server", "serve", env=server_env(tmp_path / f"data-{i}", {**FAST_HASHING, **s}))
            for i, (s, _) in enumerate(cases)
        )
    )
    for (_, hint), (code, lines) in zip(cases, runs, strict=True):
        assert code == 2, lines
        entry = parse_log(lines[-1])
        assert entry is not None and entry["event"] == "startup_failed", lines
        assert entry["store"] == "redis" and hint in entry["hint"], entry


async def test_a_burst_of_presence_updates_waits_for_the_gate(redis_cluster: RedisClusterProcesses) -> None:
    """The cluster client's pool raises when full; presence's gate makes a burst
    (a deploy moving every client) wait instead, and every update reaches Redis."""
    await redis_cluster.wait_ok()
    prefix = f"test-presence-{uuid.uuid4().hex[:8]}"
    config = RedisConfig(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        redis_prefix=prefix,
        redis_pool_max=4,
        broker_probe_seconds=5.0,
        storage_timeout_seconds=10.0,
    )
    client = cluster_client(config)
    presence = RedisPresence(
        client, f"{{{prefix}}}", "instance-a", heartbeat_seconds=30, ttl_seconds=90, gate=asyncio.Semaphore(4)
    )

    async def on_expired(user_id: int) -> None:
        raise AssertionError(f"{user_id} expired")

    async def members_of(client: RedisCluster, keys: list[str]) -> list[set[bytes]]:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.smembers(key)
            result: list[set[bytes]] = await pipe.execute()
            return result

    users = range(1, 401)
    await presence.start(on_expired)
    try:
        assert all(await asyncio.gather(*(presence.connected(u) for u in users)))
        members = await members_of(client, [f"{{{prefix}}}:user:{u}:instances" for u in users])
        assert all(m == {b"instance-a"} for m in members), "every connect recorded in Redis"
        await asyncio.gather(*(presence.disconnected(u) for u in users))
        members = await members_of(client, [f"{{{prefix}}}:user:{u}:instances" for u in users])
        assert all(m == set() for m in members), "every disconnect recorded in Redis"
    finally:
        await presence.close()
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_the_cluster_client_parses_with_hiredis(redis_cluster: RedisClusterProcesses) -> None:
    """hiredis (a dependency) is what the cluster client's node connections parse with too."""
    await redis_cluster.wait_ok()
    config = RedisConfig(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        redis_prefix="unused",
        redis_pool_max=2,
        broker_probe_seconds=5.0,
        storage_timeout_seconds=10.0,
    )
    client = cluster_client(config)
    try:
        await client.ping(target_nodes=RedisCluster.ALL_NODES)
        assert len(client.get_primaries()) == 3
        for node in client.get_nodes():  # the masters, and the replicas it knows of (after a failover test)
            connection = node.acquire_connection()
            try:
                assert isinstance(connection._parser, _AsyncHiredisParser), node.name
            finally:
                node.release(connection)
    finally:
        await client.aclose()
