"""The app's Redis clients, one factory each, so every module that talks to
Redis gets its connections configured one way.

- ``pooled_client``: the general client (presence records, heartbeats): a
  bounded pool whose commands wait for a free connection.
- ``subscriber_client``: the broker's (pub/sub and its publishes): no silent
  reconnects, because a reconnect means lost messages and a resync.
- ``cluster_client`` and ``shard_subscriber_client``: the same two jobs on a
  Redis Cluster (``HUBBUB_REDIS_CLUSTER``).
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from hubbub.server.config import RedisConfig

SUBSCRIBER_PROTOCOL = 2
"""RESP2 on the broker's connections (redis-py 8 speaks RESP3 unless told). With
hiredis, RESP3 hands every published message to redis-py's push-handling path
(which logs it at debug level, building the string whatever the level); in
RESP2 a published message is a plain array that hiredis parses and the
subscriber reads directly (server/broker_redis.next_message). Pub/sub means the
same in both: the same pushes, in the same order."""

REDIS_FAULTS = (RedisError, RedisClusterException, OSError)
"""What Redis being unreachable or in transition raises: the cluster client's
``RedisClusterException`` (slots not covered mid-failover) is no RedisError."""


def pooled_client(config: RedisConfig) -> redis.Redis:
    """A bounded pool of ``redis_pool_max`` connections whose commands wait
    (up to ``storage_timeout_seconds``) for a free connection.

    redis-py's default pool raises "Too many connections" once 100 commands
    are in flight, and a burst of connects or disconnects (a deploy, a load
    balancer moving thousands of clients) is exactly that: presence updates
    would be dropped and users left online. Here they queue, each for at most
    ``storage_timeout_seconds``.
    """
    timeout = config.storage_timeout_seconds
    pool = CountingBlockingConnectionPool.from_url(
        config.redis_url,
        max_connections=config.redis_pool_max,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One retry: after a Redis restart the first command on a pooled connection fails.
        retry=Retry(NoBackoff(), 1),
    )
    return redis.Redis.from_pool(pool)


def subscriber_client(url: str, *, timeout: float) -> redis.Redis:
    """The broker's client: its subscriber connection and its publish pipelines."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # No silent reconnects inside redis-py: a reconnect must be seen by
        # the broker, because messages were lost and a resync is due.
        retry=Retry(NoBackoff(), 0),
        protocol=SUBSCRIBER_PROTOCOL,
    )


def publisher_connection(client: redis.Redis) -> Connection:
    """The broker's publishing connection: ``client``'s settings, but no timeout of
    its own per read or write. The broker bounds each batch (its write and every
    reply) with one timer; a timer per reply was most of a publish's cost."""
    pool = client.connection_pool
    return cast(Connection, pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None}))


class CountingBlockingConnectionPool(redis.BlockingConnectionPool):
    """A blocking pool that counts the commands waiting for a connection
    (hubbub_pool_waiting): redis-py tells how many connections are idle and
    in use (``get_connection_count``), not who waits."""

    waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.waiting += 1
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        finally:
            self.waiting -= 1


# -- Redis Cluster (HUBBUB_REDIS_CLUSTER) ---------------------------------------


def cluster_client(config: RedisConfig, *, max_connections: int | None = None) -> RedisCluster:
    """A Redis Cluster client from ``redis_url`` (one node; it discovers the rest).

    It follows MOVED/ASK and refreshes the slot map itself, with one retry
    after a connection error (a failed-over master): presence records and
    the broker's publishes. Its pool per node is not blocking
    (``MaxConnectionsError`` when full), so presence bounds its own
    concurrency (``RedisPresence(gate=...)``) to ``redis_pool_max``.
    """
    timeout = config.storage_timeout_seconds
    return RedisCluster.from_url(
        config.redis_url,
        max_connections=max_connections or config.redis_pool_max,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


def shard_subscriber_client(host: str, port: int, *, timeout: float) -> redis.Redis:
    """The connection a cluster broker subscribes on, to one master: like
    ``subscriber_client``, never reconnected inside redis-py."""
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=SUBSCRIBER_PROTOCOL,
    )
