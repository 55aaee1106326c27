"""Routing between instances over a Redis Cluster's sharded pub/sub
(``HUBBUB_REDIS_CLUSTER``): the RedisBroker of server/broker_redis.py, with
its topics, envelopes, batching, de-duplication and resyncs unchanged, on
one subscriber connection per shard instead of one in all.

A channel (``{prefix}:c:{id}``, ``{prefix}:u:{id}``) lives on the master that
owns its hash slot: it is SPUBLISHed there (redis-py's ``RedisCluster``
pipeline groups a turn's publishes per node and follows MOVED) and
SSUBSCRIBEd there, on this instance's connection to that master. Why not
redis-py's own ``ClusterPubSub``: it reads its per-node connections one
after another, each for the whole poll timeout, so a message on one shard
waits for the polls of the quiet others; and it resubscribes by itself
after a reconnect or a slot move, which hides exactly what the broker must
see (messages were lost, a resync is due). Here each shard has its own task
and a reconnect is always a resync.

- **The slot map** comes from the cluster client (``CLUSTER SLOTS``), refreshed
  when a shard's connection fails, when a master drops our subscriptions
  (Redis 7 sends an unsolicited ``sunsubscribe`` for each channel of a slot it
  no longer owns: a failover or a resharding), when a probe fails, and every
  ``TOPOLOGY_PROBES`` probe intervals anyway. A shard whose master is no longer
  a master is closed; a new master gets a shard, which subscribes every wanted
  channel in its slots and resyncs their conversations from the store.
- **SSUBSCRIBE per slot.** A cluster refuses one SSUBSCRIBE over channels of
  several slots (CROSSSLOT), so a batch is sent as one command per slot, all
  written before any reply is read.
- **A probe per shard.** Each shard has a probe channel of this instance whose
  slot that master owns (``{prefix}:i:{instance}:{n}``, the first ``n`` that
  hashes there). Every ``HUBBUB_BROKER_PROBE_SECONDS`` one probe is published
  to each, through the cluster client (which follows a failover on its own);
  a shard whose subscriber hears nothing for three intervals is declared
  stalled, its connection replaced and the slot map re-read. That is the
  connection that silently stops delivering: a master frozen and replaced by
  its replica, whose socket stays open and quiet.

``status()`` (``/readyz``) and ``hubbub_broker_healthy`` say degraded while any
shard is, and name each one with its problem.

Order: publish order is delivery order per channel, as on one Redis (a
channel lives on one shard, read by one connection), but not across
channels of different shards. What Hubbub orders stays on one channel: a
MembershipChange and the event that announces it go to the same user
channels. A conversation's message published just after a join, on the
conversation's channel, can arrive at an instance before the join itself
(it then reaches the members routed there already, and the new member's
client finds it by ``last_seq`` and ``message.history``, PROTOCOL.md §9).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from hubbub.server import logs
from hubbub.server.broker import Broker, BrokerEventHandler
from hubbub.server.broker_redis import Envelope, RedisBroker, _encoder, _quietly
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics
from hubbub.server.redis_client import REDIS_FAULTS, cluster_client, shard_subscriber_client
from hubbub.storage.supervision import backoff, report, supervise

TOPOLOGY_PROBES = 6
"""The slot map is re-read at least every this many probe intervals (30 s at the default 5 s)."""
PUBLISH_CONNECTIONS = 8
"""The broker's cluster client's connections per node: one publisher, one probe round, topology reads."""


class SlotMoved(RedisError):
    """A master dropped our subscription of a channel we still want: its slot moved."""


class Recycled(RedisError):
    """The probe declared the shard's connection stalled and took it away."""


@dataclass(eq=False)
class Shard:
    """This instance's subscriber connection to one master."""

    name: str
    """The master's ``host:port`` (redis-py's node name)."""
    host: str
    port: int
    probe_channel: str
    pubsub: PubSub | None = None
    subscribed: set[str] = field(default_factory=set)
    dropping: set[str] = field(default_factory=set)
    """Unsubscribed by us, the server's confirmation not read yet."""
    confirming: set[str] = field(default_factory=set)
    """Subscribed on (re)connecting, the server's confirmation not read yet: until then
    the shard is not healthy (a frozen master accepts the connection and the commands)."""
    problem: str | None = "starting"
    last_probe_received: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


class RedisClusterBroker(RedisBroker):
    def __init__(self, config: RedisConfig, instance_id: str, metrics: Metrics) -> None:
        super().__init__(config, instance_id, metrics)
        self._config = config
        self._cluster: RedisCluster | None = None
        self._owners: list[str] = []
        """Per hash slot, the name of the master that owns it."""
        self._shards: dict[str, Shard] = {}
        self._topology_problem: str | None = None
        self._publish_problem: str | None = None
        self._topology_stale = asyncio.Event()

    # -- topics -------------------------------------------------------------

    def _owner(self, channel: str) -> str:
        return self._owners[key_slot(channel.encode())]

    def _probe_channel_for(self, name: str) -> str:
        for n in itertools.count():
            channel = f"{self._own_channel}:{n}"
            if self._owner(channel) == name:
                return channel
        raise AssertionError("unreachable")  # pragma: no cover

    def _wanted_channels(self) -> set[str]:
        wanted = {self._conversation_channel(c) for c in self._conversations}
        wanted.update(self._user_channel(u) for u in self._users)
        wanted.update(shard.probe_channel for shard in self._shards.values())
        return wanted

    def _wanted_on(self, shard: Shard) -> set[str]:
        return {c for c in self._wanted_channels() if self._owner(c) == shard.name}

    def topics(self) -> dict[str, list[int]]:
        subscribed = set().union(*(s.subscribed for s in self._shards.values()))
        return {
            "conversations": sorted(c for c in self._conversations if self._conversation_channel(c) in subscribed),
            "users": sorted(u for u in self._users if self._user_channel(u) in subscribed),
        }

    def _conversations_in(self, channels: list[str]) -> list[int]:
        prefix = self._conversation_prefix
        return [int(c.rsplit(":", 1)[1]) for c in channels if c.startswith(prefix)]

    async def _sync_subscriptions(self) -> None:
        """Bring each shard's live subscription to its part of the wanted set."""
        failed: set[int] = set()
        """The connections (``id``) a subscribe failed on: their shard reconnects and resubscribes."""
        while not self._closing:
            wanted = self._wanted_channels()
            changed = False
            started: list[int] = []
            for shard in list(self._shards.values()):
                pubsub = shard.pubsub
                if pubsub is None or id(pubsub) in failed:
                    continue
                mine = {c for c in wanted if self._owner(c) == shard.name}
                add = sorted(mine - shard.subscribed)
                drop = sorted(shard.subscribed - mine)
                if not add and not drop:
                    continue
                changed = True
                try:
                    # A connection the shard gave up meanwhile is left alone (a closed PubSub would
                    # quietly open a new connection nobody reads): the new one subscribes everything.
                    if add and await _ssubscribe(pubsub, add, _still_current(shard, pubsub)):
                        shard.subscribed.update(add)
                        started.extend(self._conversations_in(add))
                    if drop and shard.pubsub is pubsub:
                        shard.dropping.update(drop)
                        shard.subscribed.difference_update(drop)
                        for group in _by_slot(drop):
                            if shard.pubsub is not pubsub:
                                break
                            await pubsub.sunsubscribe(*group)
                except REDIS_FAULTS as exc:
                    # That shard's subscriber sees its connection broken and resubscribes everything.
                    failed.add(id(pubsub))
                    logs.warning("broker_subscribe_failed", shard=shard.name, error=str(exc))
                except Exception as exc:
                    failed.add(id(pubsub))
                    report("broker_subscriptions", exc, self._metrics.task_failed)
            if started and self._handler is not None:
                # Messages published before the subscriptions took effect never
                # reach here: have them read from the store (once, for every shard).
                self._handler.on_resync(sorted(started))
            if not changed:
                break
        topics = self.topics()
        self._metrics.broker_topics.labels("conversation").set(len(topics["conversations"]))
        self._metrics.broker_topics.labels("user").set(len(topics["users"]))

    # -- lifecycle ----------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._cluster = cluster_client(self._config, max_connections=PUBLISH_CONNECTIONS)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_topology()),
            loop.create_task(self._run_publisher()),
            loop.create_task(self._run_probe()),
        ]

    async def close(self) -> None:
        self._closing = True
        shard_tasks = [s.task for s in self._shards.values() if s.task is not None]
        for task in [*self._tasks, *shard_tasks, self._sync_task]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, *shard_tasks, return_exceptions=True)
        self._shards = {}
        if self._cluster is not None:
            await _quietly(self._cluster.aclose())
            self._cluster = None

    def _routing(self) -> bool:
        return any(shard.pubsub is not None for shard in self._shards.values())

    def _degraded(self, problem: str) -> None:
        # Called by RedisBroker for publishing failures; the shards' own problems are kept apart.
        self._publish_problem = problem
        self._refresh_health()

    def _refresh_health(self) -> None:
        problems = [p for p in (self._topology_problem, self._publish_problem) if p is not None]
        problems.extend(f"shard {s.name}: {s.problem}" for s in self._shards.values() if s.problem is not None)
        if not self._shards and not problems:
            problems.append("starting")
        if problems:
            super()._degraded("; ".join(problems))
        else:
            self._healthy()

    # -- the slot map -------------------------------------------------------

    def _stale(self) -> None:
        self._topology_stale.set()

    async def _run_topology(self) -> None:
        failures = 0
        while not self._closing:
            self._topology_stale.clear()
            try:
                await self._refresh_topology()
                self._topology_problem = None
                failures = 0
            except REDIS_FAULTS as exc:
                failures += 1
                self._topology_problem = f"cluster slots unknown: {exc}"
            except Exception as exc:
                failures += 1
                report("broker_subscriber", exc, self._metrics.task_failed)
                self._topology_problem = f"cluster slots unknown: {exc}"
            self._refresh_health()
            if failures:
                await asyncio.sleep(backoff(failures))
                continue
            # While a shard is down, its master may be failing over: look again every
            # probe interval until a new master takes its slots.
            unsettled = any(s.problem is not None for s in self._shards.values())
            try:
                async with asyncio.timeout(self._health_interval * (1 if unsettled else TOPOLOGY_PROBES)):
                    await self._topology_stale.wait()
            except TimeoutError:
                pass
            # Also a periodic check of every shard's subscriptions against the wanted set: a
            # change that met a shard between two connections is subscribed now at the latest.
            self._schedule_sync()
            # Changes come in bursts (a failover: every shard's connection, every probe): one read for all.
            await asyncio.sleep(0.05)

    async def _refresh_topology(self) -> None:
        cluster = self._cluster
        assert cluster is not None
        manager = cluster.nodes_manager
        if self._owners:
            await manager.initialize()
        else:
            await cluster.initialize()  # the first time also its command parser (which spublish needs)
        slots = manager.slots_cache
        try:
            owners = [slots[slot][0].name for slot in range(REDIS_CLUSTER_HASH_SLOTS)]
        except KeyError as exc:
            raise RedisError(f"slot {exc} has no master") from None
        if owners == self._owners and all(s.task is not None and not s.task.done() for s in self._shards.values()):
            return
        before = self._owners
        self._owners = owners
        masters = {name: manager.nodes_cache[name] for name in set(owners)}
        for name, shard in list(self._shards.items()):
            moved = not before or any(
                (before[slot] == name) != (owners[slot] == name) for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            )
            if name not in masters or moved or shard.task is None or shard.task.done():
                # Its slots are elsewhere now (or some are): a new connection subscribes
                # what it owns, and resyncs those conversations.
                await self._retire(shard)
        for name, node in masters.items():
            if name not in self._shards:
                shard = Shard(name, node.host, int(node.port), self._probe_channel_for(name))
                self._shards[name] = shard
                shard.task = asyncio.get_running_loop().create_task(self._run_shard(shard))
        logs.info("broker_cluster_slots", masters=sorted(masters), instance=self.instance_id)

    async def _retire(self, shard: Shard) -> None:
        self._shards.pop(shard.name, None)
        if shard.task is not None:
            shard.task.cancel()
            await asyncio.gather(shard.task, return_exceptions=True)

    # -- receiving, per shard -----------------------------------------------

    async def _run_shard(self, shard: Shard) -> None:
        """One master's subscriber connection: reconnect with backoff, then resync its conversations."""
        attempt = 0
        while not self._closing and self._shards.get(shard.name) is shard:
            pubsub: PubSub | None = None
            client = shard_subscriber_client(shard.host, shard.port, timeout=self._timeout)
            try:
                pubsub = client.pubsub()
                wanted = sorted(self._wanted_on(shard))
                await _ssubscribe(pubsub, wanted)
                shard.pubsub, shard.subscribed, shard.dropping = pubsub, set(wanted), set()
                shard.confirming = set(wanted)
                shard.last_probe_received = time.monotonic()
                shard.problem = "subscribing"
                self._refresh_health()
                started = self._conversations_in(wanted)
                if started and self._handler is not None:
                    # Whatever was published while this shard was not subscribed: from the store.
                    self._handler.on_resync(started)
                self._schedule_sync()  # interest that changed while subscribing
                probe = shard.probe_channel.encode()
                confirm_by = time.monotonic() + self._timeout
                while shard.pubsub is pubsub:
                    if shard.confirming and time.monotonic() > confirm_by:
                        raise redis.TimeoutError(f"{len(shard.confirming)} SSUBSCRIBE not confirmed")
                    message = await pubsub.get_message(timeout=0.2 if shard.confirming else 1.0)
                    if message is None:
                        continue
                    if message.get("type") == "ssubscribe" and shard.confirming:
                        shard.confirming.discard(_text(message["channel"]))
                        if not shard.confirming:
                            shard.problem = None
                            attempt = 0
                            self._refresh_health()
                            logs.info(
                                "broker_connected", shard=shard.name, topics=len(wanted), instance=self.instance_id
                            )
                        continue
                    if message.get("type") == "sunsubscribe":
                        channel = _text(message["channel"])
                        if channel in shard.dropping:
                            shard.dropping.discard(channel)
                        elif channel in shard.subscribed:
                            raise SlotMoved(f"the master dropped {channel}: its slot moved")
                        continue
                    if message.get("channel") == probe:
                        shard.last_probe_received = time.monotonic()
                    try:
                        self._receive(message)
                    except Exception as exc:
                        # One delivery lost, not the subscription.
                        report("broker_subscriber", exc, self._metrics.task_failed)
                raise Recycled("subscriber connection was recycled")
            except asyncio.CancelledError:
                raise
            except Recycled:
                self._stale()  # the probe's own problem stays, it says why
            except REDIS_FAULTS as exc:
                shard.problem = f"redis unreachable: {exc}" if not isinstance(exc, SlotMoved) else str(exc)
                self._stale()
            except Exception as exc:
                report("broker_subscriber", exc, self._metrics.task_failed)
                shard.problem = f"subscriber failed: {exc}"
                self._stale()
            finally:
                if shard.pubsub is pubsub:
                    shard.pubsub = None
                shard.subscribed, shard.dropping, shard.confirming = set(), set(), set()
                if pubsub is not None:
                    await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
                await _quietly(client.aclose())
                if not self._closing:
                    self._refresh_health()
            attempt += 1
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))

    # -- publishing ---------------------------------------------------------

    async def _publish_once(self) -> None:
        """Send queued publishes in order, a loop turn's in one cluster pipeline (one batch per master)."""
        await self._outgoing_ready.wait()
        self._outgoing_ready.clear()
        batch, self._outgoing = self._outgoing, []
        if not batch or self._cluster is None:
            return
        for attempt in (1, 2):
            try:
                async with self._cluster.pipeline(transaction=False) as pipe:
                    for channel, payload in batch:
                        pipe.spublish(channel, payload)
                    await pipe.execute()
                self._metrics.broker_published.inc(len(batch))
                break
            except REDIS_FAULTS as exc:
                # A failed-over master: the retry follows the new slot map. Receivers
                # drop an envelope they already had, so resending is harmless.
                if attempt == 2:
                    self._metrics.broker_dropped.inc(len(batch))
                    self._degraded(f"publishing failed: {exc}")
                    self._stale()
            except Exception:
                self._metrics.broker_dropped.inc(len(batch))
                raise

    # -- the probe, per shard -----------------------------------------------

    async def _run_probe(self) -> None:
        await supervise("broker_probe", self._probe_once, self._metrics.task_failed)

    async def _probe_once(self) -> None:
        """A self-publish round trip on every shard: a shard that stopped receiving is reconnected."""
        await asyncio.sleep(self._health_interval)
        live = [s for s in self._shards.values() if s.pubsub is not None]
        if not live or self._cluster is None:
            return
        results = await asyncio.gather(*(self._probe_shard(s) for s in live))
        if all(results) and len(live) == len(self._shards):
            self._publish_problem = None
        self._refresh_health()

    async def _probe_shard(self, shard: Shard) -> bool:
        """True when the shard's probes come back in time.

        Silence is judged before publishing, and each publish is bounded by one
        interval: a master that hangs (frozen) must neither hold up the verdict on
        its own shard nor the probes of the others."""
        assert self._cluster is not None
        silent = time.monotonic() - shard.last_probe_received
        if silent > 3 * self._health_interval:
            shard.problem = f"subscriber received nothing for {silent:.1f}s"
            logs.warning("broker_shard_stalled", shard=shard.name, silent=round(silent, 1))
            # Its loop sees the connection replaced, reconnects, resubscribes and resyncs;
            # the slot map is re-read first, in case its master is no longer one.
            shard.pubsub = None
            self._stale()
            return False
        probe = _encoder.encode(Envelope(self.instance_id, 0, None))
        try:
            async with asyncio.timeout(self._health_interval):
                await self._cluster.spublish(shard.probe_channel, probe)
        except TimeoutError:
            shard.problem = f"probe publish took over {self._health_interval}s"
            self._stale()
            return False
        except REDIS_FAULTS as exc:
            shard.problem = f"probe publish failed: {exc}"
            self._stale()
            return False
        if shard.problem is not None and shard.problem.startswith("probe"):
            shard.problem = None
        return shard.problem is None


def _still_current(shard: Shard, pubsub: PubSub) -> Callable[[], bool]:
    return lambda: shard.pubsub is pubsub


def _by_slot(channels: list[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


async def _ssubscribe(pubsub: PubSub, channels: list[str], current: Callable[[], bool] = lambda: True) -> bool:
    """SSUBSCRIBE per slot, while ``pubsub`` is still ``current``; whether all were sent."""
    for group in _by_slot(channels):
        if not current():
            return False
        await pubsub.ssubscribe(*group)
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_: type[Broker] = RedisClusterBroker
