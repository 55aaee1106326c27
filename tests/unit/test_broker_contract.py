"""The contract of server.broker.Broker, run against every implementation.

The first part runs once per broker (the in-process one and the Redis one on
the machine's Redis, HUBBUB_TEST_REDIS_URL) and speaks only the Broker
protocol; a broker is added by adding it to the ``broker_kind`` fixture.
The second part is what only a broker between instances can promise
(two RedisBrokers under a prefix of their own on the shared Redis).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import pytest

from hubbub.server.broker import MESSAGE_NEW, Broker, Event, InProcessBroker, MembershipChange
from hubbub.server.broker_redis import RedisBroker
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
READY = 999_999
"""A conversation watched only to learn that a broker's subscription works."""
WAIT = 5.0


Delivered = Event | MembershipChange


class Recorder:
    """The BrokerEventHandler a broker is started with, recording what it is given."""

    def __init__(self) -> None:
        self.deliveries: list[Delivered] = []
        self.resyncs: list[list[int] | None] = []
        self._changed = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.deliveries.append(event)
        self._changed.set()

    def on_membership(self, change: MembershipChange) -> None:
        self.deliveries.append(change)
        self._changed.set()

    def on_resync(self, conversation_ids: Sequence[int] | None) -> None:
        self.resyncs.append(None if conversation_ids is None else list(conversation_ids))
        self._changed.set()

    def events(self) -> list[Delivered]:
        """Events and membership changes other than the warm-up events."""
        return [d for d in self.deliveries if not (isinstance(d, Event) and d.frame_type == "warmup")]

    def resynced(self, conversation_id: int) -> bool:
        return any(ids is not None and conversation_id in ids for ids in self.resyncs)

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class Instance:
    def __init__(self, broker: Broker, seen: Recorder, ready: Callable[[Instance], Awaitable[None]]) -> None:
        self.broker = broker
        self.seen = seen
        self._ready = ready

    async def ready(self) -> None:
        """Return once the broker routes (for Redis: connected and subscribed)."""
        await self._ready(self)


OpenInstance = Callable[[], Awaitable[Instance]]


async def _in_process_ready(instance: Instance) -> None:
    return None


async def _redis_ready(instance: Instance) -> None:
    # Connected first: a conversation watched before the first connection is
    # subscribed with it, and that initial subscription asks for no resync.
    async with asyncio.timeout(WAIT):
        # No event says "connected": poll the status, against a deadline.
        while instance.broker.status() is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    instance.broker.watch(conversations=[READY])
    await instance.seen.until(lambda: instance.seen.resynced(READY))
    instance.broker.unwatch(conversations=[READY])


def delivery(n: int, conversations: tuple[int, ...] = (10,)) -> Event:
    return Event(f'{{"n":{n}}}'.encode(), MESSAGE_NEW, conversations=conversations, seq=n)


def publish(broker: Broker, item: Delivered) -> None:
    if isinstance(item, Event):
        broker.publish(item)
    else:
        broker.publish_membership(item)


@pytest.fixture
def prefix() -> str:
    return f"hubbub-unit-{uuid.uuid4().hex[:12]}"


def _redis_broker(prefix: str) -> RedisBroker:
    config = RedisConfig(
        redis_url=SHARED_REDIS,
        redis_cluster=False,
        redis_prefix=prefix,
        redis_pool_max=4,
        broker_probe_seconds=60.0,
        storage_timeout_seconds=2.0,
    )
    return RedisBroker(config, uuid.uuid4().hex[:8], Metrics())


@pytest.fixture
async def open_redis(prefix: str) -> AsyncIterator[OpenInstance]:
    """Start RedisBrokers of one cluster (one prefix); all closed after the test."""
    async with AsyncExitStack() as stack:

        async def open_() -> Instance:
            broker = _redis_broker(prefix)
            seen = Recorder()
            await broker.start(seen)
            stack.push_async_callback(broker.close)
            return Instance(broker, seen, _redis_ready)

        yield open_


@pytest.fixture(params=["in_process", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def instance(broker_kind: str, open_redis: OpenInstance) -> AsyncIterator[Instance]:
    if broker_kind == "in_process":
        broker = InProcessBroker()
        seen = Recorder()
        await broker.start(seen)
        yield Instance(broker, seen, _in_process_ready)
        await broker.close()
    else:
        yield await open_redis()


# -- every broker ------------------------------------------------------------


async def test_publish_delivers_locally_before_it_returns_in_publish_order(instance: Instance) -> None:
    await instance.ready()
    sent = [delivery(n) for n in range(1, 6)]
    for n, d in enumerate(sent, start=1):
        instance.broker.publish(d)
        assert instance.seen.events() == sent[:n]
    assert all(got is want for got, want in zip(instance.seen.events(), sent, strict=True))


async def test_every_kind_of_delivery_is_handed_over_locally_unchanged(instance: Instance) -> None:
    await instance.ready()
    kinds: list[Delivered] = [
        Event(b'{"type":"presence"}', "presence", users=(1, 2)),
        MembershipChange(10, (3,), joined=True, since_seq=41),
        Event(b"{}", "conversation.added", users=(3,)),
        Event(b"{}", "member.left", conversations=(10, 11), users=(3,)),
        MembershipChange(11, (3, 4), joined=False),
        Event(b"{}", "nowhere"),
        MembershipChange(12, (), joined=True),
    ]
    for item in kinds:
        publish(instance.broker, item)
    assert instance.seen.events() == kinds
    assert all(got is want for got, want in zip(instance.seen.events(), kinds, strict=True))


async def test_a_membership_change_is_handed_over_before_the_event_published_after_it(instance: Instance) -> None:
    await instance.ready()
    change = MembershipChange(10, (3,), joined=True, since_seq=5)
    announcement = Event(b"{}", "conversation.added", users=(3,))
    instance.broker.publish_membership(change)
    assert instance.seen.events() == [change]  # at once, before publish_membership returns
    instance.broker.publish(announcement)
    assert instance.seen.events() == [change, announcement]


async def test_publish_before_start_is_harmless(broker_kind: str, prefix: str) -> None:
    broker: Broker = InProcessBroker() if broker_kind == "in_process" else _redis_broker(prefix)
    broker.publish(delivery(1))
    broker.publish_membership(MembershipChange(10, (3,), joined=True))
    seen = Recorder()
    await broker.start(seen)
    try:
        assert seen.deliveries == []
    finally:
        await broker.close()


async def test_watch_and_unwatch_take_any_iterable_repeat_and_unknown_ids(instance: Instance) -> None:
    broker = instance.broker
    broker.watch(conversations=(c for c in (1, 2)), users={5})
    broker.watch(conversations=[1, 1], users=())
    broker.unwatch(conversations=[3], users=[6])
    broker.unwatch(conversations=[2])
    broker.watch()
    broker.unwatch()
    await instance.ready()
    topics = broker.topics()
    assert set(topics) == {"conversations", "users"}
    assert set(topics["conversations"]) <= {1} and set(topics["users"]) <= {5}
    assert topics["conversations"] == sorted(topics["conversations"])


async def test_an_unwatched_topic_leaves_the_topics_at_once(instance: Instance) -> None:
    instance.broker.watch(conversations=[1, 2], users=[5])
    await instance.ready()
    instance.broker.unwatch(conversations=[1], users=[5])
    topics = instance.broker.topics()
    assert 1 not in topics["conversations"] and topics["users"] == []


async def test_a_routing_broker_is_healthy(instance: Instance) -> None:
    await instance.ready()
    assert instance.broker.status() is None


async def test_close_twice_is_harmless(instance: Instance) -> None:
    await instance.ready()
    await instance.broker.close()
    await instance.broker.close()


# -- between instances (Redis) -------------------------------------------------


async def link(sender: Instance, receiver: Instance, conversation: int) -> None:
    """Return once ``receiver`` gets what ``sender`` publishes to ``conversation``.

    The subscription is effective once the broker says so (on_resync); the
    warm-up publishes then prove the path end to end, so no test depends on
    Redis having applied a subscription before a publish from another client.
    """
    await sender.ready()
    await receiver.ready()
    receiver.broker.watch(conversations=[conversation])
    await receiver.seen.until(lambda: receiver.seen.resynced(conversation))

    token = uuid.uuid4().hex.encode()  # this link's own warm-ups, never an earlier link's or a local copy

    def arrived() -> bool:
        return any(
            isinstance(d, Event) and d.frame_type == "warmup" and d.payload == token for d in receiver.seen.deliveries
        )

    async with asyncio.timeout(WAIT):
        while not arrived():
            sender.broker.publish(Event(token, "warmup", conversations=(conversation,)))
            try:
                await receiver.seen.until(arrived, timeout=0.2)
            except TimeoutError:
                continue


@pytest.fixture
async def pair(open_redis: OpenInstance) -> tuple[Instance, Instance]:
    return await open_redis(), await open_redis()


async def test_a_subscription_taking_effect_asks_for_a_resync_of_its_conversations(open_redis: OpenInstance) -> None:
    one = await open_redis()
    await one.ready()
    one.broker.watch(conversations=[21, 22], users=[7])
    await one.seen.until(lambda: one.seen.resynced(21) and one.seen.resynced(22))
    assert all(7 not in ids for ids in one.seen.resyncs if ids is not None)  # users have no seq to resync
    assert one.broker.topics() == {"conversations": [21, 22], "users": [7]}


async def test_a_delivery_reaches_the_instance_watching_its_conversation_unchanged(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    await link(a, b, 10)
    sent = [
        delivery(1),
        Event(b"{}", "member.joined", conversations=(10,), users=(3,)),
        delivery(2),
    ]
    for d in sent:
        a.broker.publish(d)
    await b.seen.until(lambda: len(b.seen.events()) == len(sent))
    assert b.seen.events() == sent  # in publish order, every field intact


async def test_a_user_topic_reaches_that_users_instance(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    b.broker.watch(users=[5])
    await link(a, b, 11)  # the user's subscription went out before this one, on the same connection
    sent = Event(b'{"type":"presence"}', "presence", users=(5,))
    a.broker.publish(sent)
    await b.seen.until(lambda: len(b.seen.events()) == 1)
    assert b.seen.events() == [sent]


async def test_an_instance_receives_nothing_it_does_not_watch(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    a.broker.publish(delivery(1, conversations=(11,)))
    a.broker.publish(Event(b"{}", "presence", users=(5,)))
    a.broker.publish_membership(MembershipChange(10, (5,), joined=True))  # to user 5's topic only
    last = delivery(2)
    a.broker.publish(last)
    await b.seen.until(lambda: len(b.seen.events()) >= 1)
    assert b.seen.events() == [last]  # what was published before it would have come first


async def test_a_delivery_to_several_watched_topics_arrives_once(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    b.broker.watch(users=[5, 6])
    await link(a, b, 11)  # the users' subscription went out before this one, on the same connection
    fanned = Event(b"{}", "member.left", conversations=(10, 11), users=(5, 6))
    a.broker.publish(fanned)
    a.broker.publish(delivery(3))
    await b.seen.until(lambda: delivery(3) in b.seen.events())
    assert b.seen.events() == [fanned, delivery(3)]


async def test_an_instance_does_not_receive_its_own_publications_twice(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    await link(b, a, 10)
    mine = delivery(1)
    a.broker.publish(mine)
    await b.seen.until(lambda: mine in b.seen.events())
    reply = delivery(2)
    b.broker.publish(reply)  # published after ``mine``: its echo to ``a`` would come first
    await a.seen.until(lambda: reply in a.seen.events())
    assert a.seen.events() == [mine, reply]


async def test_after_unwatch_the_topic_no_longer_arrives(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    b.broker.unwatch(conversations=[10])
    await link(a, b, 12)  # subscribed after the unsubscribe of 10 went out on the same connection
    a.broker.publish(delivery(1, conversations=(10,)))
    last = delivery(2, conversations=(12,))
    a.broker.publish(last)
    await b.seen.until(lambda: last in b.seen.events())
    assert b.seen.events() == [last]


async def test_a_conversation_watched_before_the_first_connection_is_resynced(prefix: str) -> None:
    # A client joined while Redis had not answered yet: once the subscription
    # takes effect, what other instances sent meanwhile must be filled in.
    broker = _redis_broker(prefix)
    seen = Recorder()
    await broker.start(seen)
    try:
        broker.watch(conversations=[21])  # the subscriber task has not connected yet
        await seen.until(lambda: seen.resynced(21))
        assert 21 in broker.topics()["conversations"]
    finally:
        await broker.close()


async def test_a_membership_change_reaches_its_users_instances_before_the_event_announcing_it(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    await link(a, b, 10)
    b.broker.watch(users=[5])
    await link(a, b, 11)  # the user's subscription went out before this one, on the same connection
    joined = MembershipChange(20, (5,), joined=True, since_seq=17)
    added = Event(b"{}", "conversation.added", users=(5,))
    left = MembershipChange(20, (5,), joined=False)
    removed = Event(b"{}", "conversation.removed", users=(5,))
    for item in (joined, added, left, removed):
        publish(a.broker, item)
    await b.seen.until(lambda: len(b.seen.events()) == 4)
    assert b.seen.events() == [joined, added, left, removed]  # in publish order, every field intact


async def test_a_membership_change_to_several_watched_users_arrives_once(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)
    b.broker.watch(users=[5, 6])
    await link(a, b, 11)
    dm = MembershipChange(30, (4, 5, 6), joined=True, since_seq=0)  # user 4 is not here
    a.broker.publish_membership(dm)
    a.broker.publish(delivery(3))
    await b.seen.until(lambda: delivery(3) in b.seen.events())
    assert b.seen.events() == [dm, delivery(3)]


async def test_a_membership_change_goes_to_user_topics_only(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    await link(a, b, 10)  # b watches conversation 10, and no user
    a.broker.publish_membership(MembershipChange(10, (5,), joined=False))
    last = delivery(4)
    a.broker.publish(last)
    await b.seen.until(lambda: last in b.seen.events())
    assert b.seen.events() == [last]
