"""Presence shared by every instance through Redis.

Keys (``{prefix}`` is HUBBUB_REDIS_PREFIX):
- ``{prefix}:instances``: sorted set of live instances, scored by when their
  heartbeat expires (now + TTL, refreshed every heartbeat);
- ``{prefix}:instance:{id}:users``: the users with a connection on that instance;
- ``{prefix}:user:{uid}:instances``: the instances a user is connected to.

A user is online while any instance listing them is live. Redis is touched
only when a user's first local connection opens or the last one closes, plus
one heartbeat per instance; first connections opening together are recorded
in one pipeline (``connected`` batches them, as server/lookups.py does), so a
reconnect storm costs a few round trips, not one per user. An instance that dies without cleaning up (kill
-9) stops heartbeating; within the TTL another instance notices its expired
score, takes a short lock so only one does the work, removes it from its
users' sets, and announces offline every user left with no live instance. A user whose
last connection closes normally is announced offline after a grace of 1.5
heartbeats (see ``disconnected``).
Redis keeps nothing on disk here, so each heartbeat also restores this
instance's records if Redis lost them.

When Redis is unreachable, answers fall back to this instance's own
connections (logged), and the next successful heartbeat repairs the records.
An instance whose heartbeat failed does not reap others until one TTL after
its next successful beat: when Redis was unreachable (a failover), the other
instances could not beat either, and their expired scores say nothing.

On a Redis Cluster (HUBBUB_REDIS_CLUSTER) the prefix is given as a hash tag,
``{prefix}``, so every presence key hashes to one slot: every pipeline here is
one round trip to one shard, as on a single Redis, and the ``gate`` bounds the
commands in flight (the cluster client's pool does not wait).

The heartbeat touches only Redis and never waits for the database: offline
announcements (which store last-seen) run beside it, so a database outage
or a slow store cannot delay a beat and get this live instance reaped. Any
other failure of one beat is logged, counted and followed by the next
(storage/supervision.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from hubbub.server import logs
from hubbub.server.lookups import KeyedLookup
from hubbub.server.presence import ExpiredHandler, LocalCounts, PresenceTracker
from hubbub.server.redis_client import REDIS_FAULTS
from hubbub.storage.supervision import FailureHook, report, supervise


class RedisPresence:
    """The PresenceTracker of several instances, on the app's pooled Redis
    client (server/redis_client.py)."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        prefix: str,
        instance_id: str,
        *,
        heartbeat_seconds: float,
        ttl_seconds: float,
        on_failure: FailureHook | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self._redis = client
        self._gate: contextlib.AbstractAsyncContextManager[object] = (
            gate if gate is not None else contextlib.nullcontext()
        )
        self._reap_after = 0.0
        """monotonic time before which this instance reaps nobody (after its own beat failed)."""
        self._prefix = prefix
        self.instance_id = instance_id
        self._heartbeat = heartbeat_seconds
        self._ttl = ttl_seconds
        self._local = LocalCounts()
        self._on_expired: ExpiredHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self._on_failure = on_failure
        self._connects: KeyedLookup[int, bool] = KeyedLookup(self._record_connects)

    def _instances_key(self) -> str:
        return f"{self._prefix}:instances"

    def _instance_users_key(self, instance_id: str) -> str:
        return f"{self._prefix}:instance:{instance_id}:users"

    def _user_instances_key(self, user_id: int) -> str:
        return f"{self._prefix}:user:{user_id}:instances"

    def _leaving_key(self, user_id: int) -> str:
        return f"{self._prefix}:user:{user_id}:leaving"

    async def start(self, on_expired: ExpiredHandler) -> None:
        self._on_expired = on_expired
        try:
            await self._beat()
        except REDIS_FAULTS as exc:
            self._reap_after = float("inf")
            logs.warning("presence_heartbeat_failed", error=str(exc))
        except Exception as exc:
            report("presence_heartbeat", exc, self._on_failure)
        self._task = asyncio.get_running_loop().create_task(
            supervise("presence_heartbeat", self._heartbeat_once, self._on_failure)
        )

    async def close(self) -> None:
        for task in [self._task, *self._pending]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._pending] if t is not None], return_exceptions=True)
        # A clean stop: this instance's users are no longer connected here.
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for uid in self._local.counts:
                    pipe.srem(self._user_instances_key(uid), self.instance_id)
                pipe.delete(self._instance_users_key(self.instance_id))
                pipe.zrem(self._instances_key(), self.instance_id)
                await pipe.execute()
        except REDIS_FAULTS as exc:
            logs.warning("presence_cleanup_failed", error=str(exc))

    async def connected(self, user_id: int) -> bool:
        if not self._local.add(user_id):
            return False
        # Batched with the other users whose first connection here opened
        # meanwhile (server/lookups.py): a reconnect storm of N users is a few
        # pipelines, not N round trips (issue 13).
        return await self._connects.get(user_id) is not False

    async def _record_connects(self, user_ids: list[int]) -> dict[int, bool]:
        """Record the users as connected here; for each, True when no other live instance has them."""
        try:
            async with self._gate:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.sadd(self._instance_users_key(self.instance_id), *user_ids)
                    for uid in user_ids:
                        pipe.sadd(self._user_instances_key(uid), self.instance_id)
                        pipe.smembers(self._user_instances_key(uid))
                    results = await pipe.execute()
                others = {
                    uid: {i.decode() for i in instances} - {self.instance_id}
                    for uid, instances in zip(user_ids, results[2::2], strict=True)
                }
                live = await self._live(set().union(*others.values()))
        except REDIS_FAULTS as exc:
            logs.warning("presence_unavailable", error=str(exc), users=len(user_ids))
            return dict.fromkeys(user_ids, True)
        return {uid: not (instances & live) for uid, instances in others.items()}

    async def disconnected(self, user_id: int) -> bool:
        """Always False here: offline is announced by a deferred check instead.

        Right after a Redis restart the other instances' records are missing
        until their next heartbeat, so "no other instance has them" cannot be
        decided at once. After 1.5 heartbeats every live instance has written
        its records again; a user still connected nowhere then goes offline.
        (It also spares everyone an offline/online flicker on a reconnect.)
        """
        if not self._local.remove(user_id):
            return False
        # The latest instance to see the user leave owns the offline announcement:
        # several instances' devices closing within one grace announce it once.
        token = f"{self.instance_id}:{next(self._tokens)}"
        try:
            async with self._gate, self._redis.pipeline(transaction=False) as pipe:
                pipe.srem(self._user_instances_key(user_id), self.instance_id)
                pipe.srem(self._instance_users_key(self.instance_id), user_id)
                pipe.set(self._leaving_key(user_id), token, ex=max(1, int(4 * self._heartbeat + 1)))
                await pipe.execute()
        except REDIS_FAULTS as exc:
            logs.warning("presence_unavailable", error=str(exc))
        task = asyncio.get_running_loop().create_task(self._offline_after_grace(user_id, token))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return False

    async def _offline_after_grace(self, user_id: int, token: str) -> None:
        await asyncio.sleep(1.5 * self._heartbeat)
        if user_id in self._local.counts:
            return
        try:
            async with self._gate:
                latest = await self._redis.get(self._leaving_key(user_id))
            if latest is not None and _text(latest) != token:
                return  # a later departure elsewhere announces it
            if user_id in await self.online([user_id]):
                return
        except REDIS_FAULTS as exc:
            logs.warning("presence_unavailable", error=str(exc))
        await self._announce_offline([user_id])

    async def _announce_offline(self, user_ids: list[int]) -> None:
        """Each user's offline announcement on its own: one failing (the database
        down while last-seen is stored) is reported and the others still go.
        All at once: their last-seen writes and reads are batched together
        (server/lookups.py), a dead instance's thousands of users a few calls."""
        on_expired = self._on_expired
        if on_expired is None:
            return

        async def announce(uid: int) -> None:
            if uid in self._local.counts:
                return  # back online here meanwhile
            try:
                await on_expired(uid)
            except Exception as exc:
                report("presence_offline", exc, self._on_failure, user_id=uid)

        await asyncio.gather(*(announce(uid) for uid in user_ids))

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        ids = list(dict.fromkeys(user_ids))
        local = {uid for uid in ids if uid in self._local.counts}
        remote = [uid for uid in ids if uid not in local]
        if not remote:
            return local
        try:
            async with self._gate:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for uid in remote:
                        pipe.smembers(self._user_instances_key(uid))
                    sets = await pipe.execute()
                candidates = {uid: {i.decode() for i in members} for uid, members in zip(remote, sets, strict=True)}
                live = await self._live(set().union(*candidates.values()))
        except REDIS_FAULTS as exc:
            logs.warning("presence_unavailable", error=str(exc))
            return local
        return local | {uid for uid, instances in candidates.items() if instances & live}

    async def _live(self, instance_ids: set[str]) -> set[str]:
        """The instances among ``instance_ids`` whose heartbeat has not expired."""
        if not instance_ids:
            return set()
        ordered = sorted(instance_ids)
        scores = await self._redis.zmscore(self._instances_key(), ordered)
        now = time.time()
        return {i for i, score in zip(ordered, scores, strict=True) if score is not None and score > now}

    async def _heartbeat_once(self) -> None:
        await asyncio.sleep(self._heartbeat)
        try:
            async with self._gate:
                await self._beat()
                if time.monotonic() >= self._reap_after:
                    await self._reap()
        except REDIS_FAULTS as exc:
            # The others' beats may be failing too: their scores will lapse
            # without them being dead. Reap again one TTL after a beat succeeds.
            self._reap_after = float("inf")
            logs.warning("presence_heartbeat_failed", error=str(exc))

    async def _beat(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._instances_key(), {self.instance_id: time.time() + self._ttl})
            pipe.scard(self._instance_users_key(self.instance_id))
            _, recorded = await pipe.execute()
        if self._reap_after == float("inf"):
            self._reap_after = time.monotonic() + self._ttl
        if recorded != len(self._local.counts):
            # Redis lost our records (a restart), or a disconnect failed to
            # reach it: make them match this instance's connections again.
            key = self._instance_users_key(self.instance_id)
            stale = [int(u) for u in await self._redis.smembers(key) if int(u) not in self._local.counts]
            async with self._redis.pipeline(transaction=False) as pipe:
                for uid in stale:
                    pipe.srem(self._user_instances_key(uid), self.instance_id)
                pipe.delete(key)
                if self._local.counts:
                    pipe.sadd(key, *self._local.counts)
                for uid in self._local.counts:
                    pipe.sadd(self._user_instances_key(uid), self.instance_id)
                await pipe.execute()

    async def _reap(self) -> None:
        """Take over the users of instances whose heartbeat expired."""
        dead = await self._redis.zrangebyscore(self._instances_key(), "-inf", time.time())
        for raw in dead:
            instance_id = _text(raw) if isinstance(raw, bytes | str) else str(raw)
            if instance_id == self.instance_id:
                continue
            lock = f"{self._prefix}:reap:{instance_id}"
            if not await self._redis.set(lock, self.instance_id, nx=True, ex=max(1, int(self._ttl))):
                continue  # another instance is reaping it
            users = [int(u) for u in await self._redis.smembers(self._instance_users_key(instance_id))]
            async with self._redis.pipeline(transaction=False) as pipe:
                for uid in users:
                    pipe.srem(self._user_instances_key(uid), instance_id)
                    pipe.smembers(self._user_instances_key(uid))
                results = await pipe.execute()
            remaining = results[1::2]
            gone = []
            for uid, instances in zip(users, remaining, strict=True):
                if uid in self._local.counts:
                    continue
                if not await self._live({i.decode() for i in instances}):
                    gone.append(uid)
            await self._redis.delete(self._instance_users_key(instance_id))
            await self._redis.zrem(self._instances_key(), instance_id)
            logs.info("presence_reaped_instance", instance=instance_id, users=len(users), offline=len(gone))
            if gone:
                # Beside the heartbeat, not in it: the announcements wait on the
                # database, and the next beat must not wait for them.
                task = asyncio.get_running_loop().create_task(self._announce_offline(gone))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_: type[PresenceTracker] = RedisPresence
