"""Routing between instances over Redis pub/sub.

Topics: one channel per conversation (``{prefix}:c:{id}``) and per user
(``{prefix}:u:{id}``). An instance subscribes to a topic only while it has
local interest in it (the registry reports the first and last local member),
so it receives only the traffic of its own connections, never every message
of the cluster. Subscription changes are batched per event-loop turn: a user
with 500 conversations connecting costs one SSUBSCRIBE, not 500.

Redis 7's sharded pub/sub (SSUBSCRIBE/SPUBLISH) is used when the server has
it, so the same topics spread over a Redis Cluster's shards; plain pub/sub
otherwise.

What is published is an ``Envelope`` (msgpack, array-like): the origin
instance, a number for de-duplication, and the body, an Event or a
MembershipChange (server/broker.py). ``publish`` hands the body to this
instance's BrokerEventHandler at once, then queues the envelope for every
topic of its addressing; one publisher task sends the queue in order, one
write of packed commands per event-loop turn on one connection, so envelopes
leave in publish order. The
subscriber task decodes each envelope once and calls the handler's
``on_event`` / ``on_membership``, skipping repeats; this instance's own
envelopes, which Redis sends back through every topic it watches too, are
recognised by their first bytes (the origin) and not decoded.

Pub/sub is at-most-once. Publishing delivers locally first and never waits
for Redis; when Redis is down, local delivery and sending go on, the broker
reconnects with backoff, resubscribes, and asks for a resync (the instance
then fills gaps from the message store). A periodic self-publish on the
instance's own channel proves the subscriber connection really receives:
a pub/sub connection can die silently while commands still work.

Each of the broker's tasks (subscriber, publisher, probe, subscription
sync) survives an unexpected failure of one iteration: it is logged,
counted in hubbub_task_failures_total and the task goes on
(storage/supervision.py). A delivery handler failing for one message costs
that message only (the receiving instance fills the gap from the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from typing import Any, cast

import msgspec
import redis.asyncio as redis
from hiredis import pack_command
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from hubbub.server import logs, tracing
from hubbub.server.broker import Broker, BrokerEventHandler, Event, MembershipChange
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics
from hubbub.server.redis_client import publisher_connection, subscriber_client
from hubbub.storage.supervision import backoff, report, supervise

SUBSCRIBE_CHUNK = 1000
"""Channels per SSUBSCRIBE command."""
DEDUPE_WINDOW = 8192
"""Recent envelope ids remembered: one delivery published to several topics arrives once per topic."""


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    origin: str
    number: int
    body: Event | MembershipChange | None
    """None for the health probe."""
    trace: str | None = None
    """The publishing span's W3C traceparent when tracing is on (server/tracing.py), so the
    delivery here joins the sender's trace. Last, with a default: either side may lack it."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


class RedisBroker:
    def __init__(self, config: RedisConfig, instance_id: str, metrics: Metrics) -> None:
        self.url = config.redis_url
        self.prefix = config.redis_prefix
        self.instance_id = instance_id
        self._metrics = metrics
        self._health_interval = config.broker_probe_seconds
        self._timeout = config.storage_timeout_seconds
        self._client: redis.Redis | None = None
        self._sharded = True
        self._handler: BrokerEventHandler | None = None
        self._numbers = itertools.count(1)
        # Built once: every publish names its topics, and every received envelope
        # is checked against this instance's own (see _receive).
        self._conversation_prefix = f"{self.prefix}:c:"
        self._user_prefix = f"{self.prefix}:u:"
        self._probe_envelope = _encoder.encode(Envelope(instance_id, 0, None))
        self._own_origin = _own_origin(instance_id)
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        # What this instance needs, and what the live subscription has.
        self._conversations: set[int] = set()
        self._users: set[int] = set()
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        self._sync_scheduled = False
        self._outgoing: list[tuple[str, bytes]] = []
        self._outgoing_ready = asyncio.Event()
        self._publisher: Connection | None = None
        """The connection publishes are written on, made at the first (``_send``)."""
        self._problem: str | None = "starting"
        self._last_probe_received = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- topics -------------------------------------------------------------

    def _conversation_channel(self, conversation_id: int) -> str:
        return f"{self._conversation_prefix}{conversation_id}"

    def _user_channel(self, user_id: int) -> str:
        return f"{self._user_prefix}{user_id}"

    @property
    def _own_channel(self) -> str:
        return f"{self.prefix}:i:{self.instance_id}"

    def _wanted_channels(self) -> set[str]:
        wanted = {self._conversation_channel(c) for c in self._conversations}
        wanted.update(self._user_channel(u) for u in self._users)
        wanted.add(self._own_channel)
        return wanted

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        self._conversations.update(conversations)
        self._users.update(users)
        self._schedule_sync()

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        self._conversations.difference_update(conversations)
        self._users.difference_update(users)
        self._schedule_sync()

    def topics(self) -> dict[str, list[int]]:
        subscribed = self._subscribed
        return {
            "conversations": sorted(c for c in self._conversations if self._conversation_channel(c) in subscribed),
            "users": sorted(u for u in self._users if self._user_channel(u) in subscribed),
        }

    def _schedule_sync(self) -> None:
        # Batched: every watch/unwatch of this loop turn goes in one round trip.
        if not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_sync)

    def _start_sync(self) -> None:
        self._sync_scheduled = False
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_subscriptions())

    async def _sync_subscriptions(self) -> None:
        """Bring the live subscription to the wanted set (repeats while it changes)."""
        failures = 0
        while self._pubsub is not None and not self._closing:
            wanted = self._wanted_channels()
            add = sorted(wanted - self._subscribed)
            drop = sorted(self._subscribed - wanted)
            if not add and not drop:
                break
            try:
                for chunk in _chunks(add):
                    await self._subscribe(self._pubsub, chunk)
                    self._subscribed.update(chunk)
                    # Messages published before the subscription took effect
                    # never reach here: have them read from the store.
                    started = [int(c.rsplit(":", 1)[1]) for c in chunk if c.startswith(self._conversation_prefix)]
                    if started and self._handler is not None:
                        self._handler.on_resync(started)
                for chunk in _chunks(drop):
                    await self._unsubscribe(self._pubsub, chunk)
                    self._subscribed.difference_update(chunk)
            except (RedisError, OSError) as exc:
                # The subscriber loop notices the broken connection and resubscribes everything.
                logs.warning("broker_subscribe_failed", error=str(exc))
                break
            except Exception as exc:
                # Nothing else would retry it: the wanted topics stay unsubscribed
                # until the next change. Pause, then compare again.
                failures += 1
                report("broker_subscriptions", exc, self._metrics.task_failed, consecutive=failures)
                await asyncio.sleep(backoff(failures))
        self._metrics.broker_topics.labels("conversation").set(len(self.topics()["conversations"]))
        self._metrics.broker_topics.labels("user").set(len(self.topics()["users"]))

    async def _subscribe(self, pubsub: PubSub, channels: list[str]) -> None:
        if self._sharded:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    async def _unsubscribe(self, pubsub: PubSub, channels: list[str]) -> None:
        if self._sharded:
            await pubsub.sunsubscribe(*channels)
        else:
            await pubsub.unsubscribe(*channels)

    # -- lifecycle ----------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        client = self._client = subscriber_client(self.url, timeout=self._timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_subscriber(client)),
            loop.create_task(self._run_publisher()),
            loop.create_task(self._run_probe()),
        ]

    async def close(self) -> None:
        self._closing = True
        for task in [*self._tasks, self._sync_task]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        if self._publisher is not None:
            await _quietly(self._publisher.disconnect())
            self._publisher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def status(self) -> str | None:
        return self._problem

    def _degraded(self, problem: str) -> None:
        if self._problem is None:
            logs.warning("broker_degraded", problem=problem)
        self._problem = problem
        self._metrics.broker_healthy.set(0)

    def _healthy(self) -> None:
        if self._problem is not None:
            logs.info("broker_healthy", was=self._problem)
        self._problem = None
        self._metrics.broker_healthy.set(1)

    # -- publishing ---------------------------------------------------------

    def _routing(self) -> bool:
        """Whether publishes can reach other instances now (a subscriber is up)."""
        return self._pubsub is not None

    def publish(self, event: Event) -> None:
        if self._handler is not None:
            self._handler.on_event(event)
        if not self._routing():
            # Not connected: the other instances catch up from the store by seq.
            self._metrics.broker_dropped.inc()
            return
        trace = tracing.traceparent() if tracing.enabled else None
        payload = _encoder.encode(Envelope(self.instance_id, next(self._numbers), event, trace))
        # Plain loops, not generators into extend: a new message has one topic,
        # and a generator frame per publish cost more than the append.
        outgoing = self._outgoing
        for c in event.conversations:
            outgoing.append((f"{self._conversation_prefix}{c}", payload))
        for u in event.users:
            outgoing.append((f"{self._user_prefix}{u}", payload))
        self._outgoing_ready.set()

    def publish_membership(self, change: MembershipChange) -> None:
        if self._handler is not None:
            self._handler.on_membership(change)
        if not self._routing():
            # Not connected: the other instances resync routing from the store on reconnect.
            self._metrics.broker_dropped.inc()
            return
        payload = _encoder.encode(Envelope(self.instance_id, next(self._numbers), change))
        self._outgoing.extend((self._user_channel(u), payload) for u in change.user_ids)
        self._outgoing_ready.set()

    async def _run_publisher(self) -> None:
        await supervise("broker_publisher", self._publish_once, self._metrics.task_failed)

    async def _publish_once(self) -> None:
        """Send queued publishes in order, all of one loop turn in one write."""
        await self._outgoing_ready.wait()
        self._outgoing_ready.clear()
        batch, self._outgoing = self._outgoing, []
        if not batch or self._client is None:
            return
        # Packed by hiredis's packer (the one redis-py's synchronous client uses),
        # once for both attempts: redis-py's asyncio Pipeline packed every command in
        # Python and read every reply under a timer of its own (BENCHMARKS.md, "Two
        # instances, third pass").
        command = b"SPUBLISH" if self._sharded else b"PUBLISH"
        # (hiredis's stub types the argument as a 1-tuple; it takes any length.)
        packed = b"".join([pack_command((command, channel, payload)) for channel, payload in batch])  # type: ignore[arg-type]
        # Two attempts: a connection left over from before a Redis restart fails
        # once, and the retry connects again. Receivers drop an envelope they
        # already had, so resending a partly sent batch is harmless.
        for attempt in (1, 2):
            try:
                await self._send(packed, len(batch))
                self._metrics.broker_published.inc(len(batch))
                break
            except (RedisError, OSError) as exc:
                if attempt == 2:
                    self._metrics.broker_dropped.inc(len(batch))
                    self._degraded(f"publishing to redis failed: {exc}")
            except Exception:
                # Unexpected: this batch is lost (receivers fill gaps by seq); the
                # next one goes out after the supervisor's pause.
                self._metrics.broker_dropped.inc(len(batch))
                raise

    async def _send(self, packed: bytes, replies: int) -> None:
        """Write a batch of packed commands on the publisher's connection and read
        its ``replies``, all within one ``storage_timeout_seconds``."""
        assert self._client is not None
        conn = self._publisher
        if conn is None:
            conn = self._publisher = publisher_connection(self._client)
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(packed, check_health=False)
                for _ in range(replies):
                    await conn.read_response(disconnect_on_error=False)
        except BaseException:
            # Replies left unread would answer the next batch's commands: the
            # next attempt starts on a new connection (send_packed_command connects).
            await _quietly(conn.disconnect(nowait=True))
            raise

    # -- receiving ----------------------------------------------------------

    async def _run_subscriber(self, client: redis.Redis) -> None:
        """Keep one subscriber connection alive; reconnect with backoff, then resync."""
        attempt = 0
        ever_connected = False
        while not self._closing:
            pubsub: PubSub | None = None
            try:
                info = await client.info("server")
                self._sharded = int(str(info.get("redis_version", "0")).split(".")[0]) >= 7
                pubsub = client.pubsub()
                wanted = sorted(self._wanted_channels())
                for chunk in _chunks(wanted):
                    await self._subscribe(pubsub, chunk)
                self._pubsub = pubsub
                self._subscribed = set(wanted)
                self._last_probe_received = time.monotonic()
                self._healthy()
                logs.info("broker_connected", sharded=self._sharded, topics=len(wanted), instance=self.instance_id)
                if self._handler is not None:
                    if ever_connected:
                        self._handler.on_resync(None)
                    elif self._conversations:
                        # Watched before Redis first answered (clients that came
                        # while it was down): their subscription starts only now.
                        self._handler.on_resync(sorted(self._conversations))
                ever_connected = True
                attempt = 0
                self._schedule_sync()  # interest that changed while subscribing
                while self._pubsub is pubsub:
                    try:
                        message = await next_message(pubsub, timeout=1.0, ignore_subscribe_messages=True)
                    except (RedisError, OSError):
                        if self._pubsub is not pubsub:
                            break  # the probe gave up on it and closed it
                        raise
                    if message is not None:
                        try:
                            self._receive(message)
                        except Exception as exc:
                            # One delivery lost, not the subscription (a try costs nothing until it raises).
                            report("broker_subscriber", exc, self._metrics.task_failed)
                raise redis.ConnectionError("subscriber connection was recycled")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._degraded(f"redis unreachable: {exc}")
            except Exception as exc:
                # Reconnected like a Redis error, after the same backoff: a resync follows.
                report("broker_subscriber", exc, self._metrics.task_failed)
                self._degraded(f"subscriber failed: {exc}")
            finally:
                self._pubsub = None
                self._subscribed = set()
                if pubsub is not None:
                    await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
            attempt += 1
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))

    def _receive(self, message: dict[str, Any]) -> None:
        if message.get("type") not in ("message", "smessage"):
            return
        data = message["data"]
        if type(data) is bytes and data.startswith(self._own_origin):
            # This instance's own publish, back through a topic it watches too (Redis
            # sends a message to every subscriber of its channel, the publisher's
            # own subscription included: in (c) on two instances, one per message).
            # It was delivered locally when published, so it is not decoded: only
            # the probe's round trip is noted.
            if data == self._probe_envelope:
                self._last_probe_received = time.monotonic()
            return
        try:
            envelope = _decoder.decode(data)
        except msgspec.DecodeError:
            logs.warning("broker_bad_envelope", channel=str(message.get("channel")))
            return
        body = envelope.body
        if body is None:
            if envelope.origin == self.instance_id:
                self._last_probe_received = time.monotonic()
            return
        if envelope.origin == self.instance_id:
            return  # delivered locally when published (an envelope encoded otherwise than ours)
        key = (envelope.origin, envelope.number)
        if key in self._seen:
            return  # the same delivery via another of its topics
        self._seen[key] = None
        if len(self._seen) > DEDUPE_WINDOW:
            self._seen.popitem(last=False)
        self._metrics.broker_received.inc()
        handler = self._handler
        if handler is None:
            return
        if isinstance(body, Event):
            if envelope.trace is not None and tracing.enabled:
                with tracing.delivery_span(envelope.trace, body.frame_type, self.instance_id):
                    handler.on_event(body)
            else:
                handler.on_event(body)
        else:
            handler.on_membership(body)

    async def _run_probe(self) -> None:
        await supervise("broker_probe", self._probe_once, self._metrics.task_failed)

    async def _probe_once(self) -> None:
        """Self-publish round trips: a subscriber that stopped receiving is reconnected."""
        await asyncio.sleep(self._health_interval)
        if self._pubsub is None or self._client is None:
            return
        probe = _encoder.encode(Envelope(self.instance_id, 0, None))
        try:
            if self._sharded:
                await self._client.spublish(self._own_channel, probe)
            else:
                await self._client.publish(self._own_channel, probe)
        except (RedisError, OSError) as exc:
            self._degraded(f"probe publish to redis failed: {exc}")
            return
        silent = time.monotonic() - self._last_probe_received
        if silent > 3 * self._health_interval:
            self._degraded(f"subscriber received nothing for {silent:.1f}s")
            # The subscriber loop sees its connection replaced, reconnects and
            # resubscribes. Closing it also ends a read that waits, without a
            # timer, for the rest of a reply (next_message).
            pubsub, self._pubsub = self._pubsub, None  # (the loop may have dropped it during the publish)
            stalled = None if pubsub is None else cast(Connection | None, pubsub.connection)
            if stalled is not None:
                await _quietly(stalled.disconnect(nowait=True))
        elif self._problem is not None and self._problem.startswith(("probe", "publishing")):
            self._healthy()


_PUBLISHED = {b"message": "message", b"smessage": "smessage"}
"""The push types of a published message (responses are bytes: the subscriber decodes nothing)."""


async def next_message(
    pubsub: PubSub, *, timeout: float, ignore_subscribe_messages: bool = False
) -> dict[str, Any] | None:
    """``pubsub.get_message(timeout=timeout)``, cheaper per published message.

    redis-py's general path costs, for every message, a health check, a
    retry wrapper, a closure, its observability hooks (awaited even when
    off) and a general-purpose dict: a sizeable share of a receiving
    instance's CPU in (c) (BENCHMARKS.md, "Per delivery"). Here a published
    message is read straight from the connection and given the same dict
    shape; everything else (subscribe confirmations, pongs) and every case
    where redis-py's path does more (not connected yet, health checks on)
    goes through redis-py as before. Errors are redis-py's own: the
    connection's ``read_response`` raises them.
    """
    # redis-py's own annotations make it None for good; it is its connection once subscribed.
    conn = cast(Connection | None, pubsub.connection)
    if conn is None or not conn.is_connected or conn.health_check_interval:
        general: dict[str, Any] | None = await pubsub.get_message(
            ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout
        )
        return general
    # A reply already (partly) buffered is read without arming a timer: the
    # per-read asyncio.timeout was the largest cost left per message. Waiting
    # for the rest of a partly received reply cannot hang the subscriber: a
    # probe that hears nothing closes the connection (RedisBroker._probe_once).
    buffered = await conn.can_read()
    response = await conn.read_response(
        timeout=math.inf if buffered else timeout, disconnect_on_error=False, push_request=True
    )
    if response is None:
        return None  # nothing within the timeout
    if type(response) is list and len(response) == 3:
        kind = _PUBLISHED.get(response[0])
        if kind is not None:
            return {"type": kind, "pattern": None, "channel": response[1], "data": response[2]}
    message = await pubsub.handle_message(response, ignore_subscribe_messages)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    return cast(dict[str, Any] | None, message)


def _own_origin(instance_id: str) -> bytes:
    """The bytes every envelope this instance encodes starts with: the array's
    header and the origin field (msgpack: its length, then its text), so no
    other origin's envelope can start with them."""
    encoded = _encoder.encode(Envelope(instance_id, 0, None))
    origin = _encoder.encode(instance_id)
    assert encoded[1 : 1 + len(origin)] == origin, "an Envelope's origin follows a one-byte array header"
    return encoded[: 1 + len(origin)]


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(items), SUBSCRIBE_CHUNK)]


async def _quietly(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(RedisError, OSError, RuntimeError):
        await awaitable


_: type[Broker] = RedisBroker
