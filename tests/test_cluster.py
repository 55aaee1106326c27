"""Several `hubbub serve` processes routed through Redis, on one PostgreSQL.

Real processes, real Redis: the machine's shared Redis under a fresh
HUBBUB_REDIS_PREFIX per test, except the outage test, which starts, kills
and restarts a private redis-server of its own. Clients follow the
PROTOCOL.md §9 algorithm (deduplicate by message id, fill gaps by seq from
message.history); the assertions say what the cluster must deliver without
that help and what it may leave to it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from websockets.exceptions import ConnectionClosed

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError, open_client
from tests.backends import truncate_postgres
from tests.conftest import TEST_SETTINGS, http_get, unique_name
from tests.processes import ServerProcess, running_server, settings_env
from tests.redis_server import PrivateRedis

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROBE_SECONDS = 0.5
HEARTBEAT_SECONDS = 0.5
TTL_SECONDS = 2.0
CLUSTER_SETTINGS: dict[str, Any] = {
    "broker_probe_seconds": PROBE_SECONDS,
    "presence_heartbeat_seconds": HEARTBEAT_SECONDS,
    "presence_ttl_seconds": TTL_SECONDS,
    "debug_endpoints": True,
    "storage_timeout_seconds": 2.0,
}
WAIT = 10.0
"""Upper bound for anything that should happen promptly."""

EventT = TypeVar("EventT", bound=frames.ServerFrame)
DebugView = dict[str, dict[str, list[int]]]


# -- clients ------------------------------------------------------------------


class _Inbox(asyncio.Queue[frames.ServerFrame]):
    """Replaces a Client's event queue: every event is recorded by the Peer the moment
    the reader reads it (so ``Client.next_event`` is not used with it)."""

    def __init__(self, peer: Peer, connection: int) -> None:
        super().__init__()
        self._peer = peer
        self._connection = connection

    def put_nowait(self, item: frames.ServerFrame) -> None:
        self._peer.on_event(item, self._connection)


class Peer:
    """One user's device across reconnects: what it received, deduplicated by message id."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client: Client | None = None
        self.user_id = 0
        self.token = ""
        self.connection = 0
        self.events: list[frames.ServerFrame] = []
        self.messages: dict[str, frames.Message] = {}
        """The client's view: every message it has, once, from events or history."""
        self.event_ids: dict[int, set[str]] = defaultdict(set)
        """Per connection, the message ids received as message.new."""
        self.delivered: dict[tuple[int, int], list[int]] = defaultdict(list)
        """Per (connection, conversation), the seqs of message.new in arrival order."""
        self.from_history: set[str] = set()
        self.redelivered = 0
        """message.new for a message id already had (deduplicated away)."""
        self.ack_before_event: list[str] = []
        """client_msg_ids whose ack was read before their message.new on the sending connection."""
        self._changed = asyncio.Event()

    def device(self, name: str) -> Peer:
        """Another device of the same user (connect it with ``Cluster.connect(instance, peer=...)``)."""
        other = Peer(name)
        other.user_id, other.token = self.user_id, self.token
        return other

    @property
    def client(self) -> Client:
        assert self._client is not None, f"{self.name} is not connected"
        return self._client

    def attach(self, client: Client) -> None:
        """Take over the events of a new connection (call it right after open_client)."""
        self.connection += 1
        old = client.events
        client.events = _Inbox(self, self.connection)
        while not old.empty():
            client.events.put_nowait(old.get_nowait())
        self._client = client

    def on_event(self, event: frames.ServerFrame, connection: int) -> None:
        self.events.append(event)
        if isinstance(event, frames.MessageNew):
            message = event.message
            self.delivered[(connection, message.conversation_id)].append(message.seq)
            self.event_ids[connection].add(message.id)
            if message.id in self.messages:
                self.redelivered += 1
            else:
                self.messages[message.id] = message
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout}s") from None

    def find(self, kind: type[EventT], match: Callable[[EventT], bool], since: int = 0) -> list[EventT]:
        return [e for e in self.events[since:] if isinstance(e, kind) and match(e)]

    async def expect(
        self, kind: type[EventT], match: Callable[[EventT], bool] = lambda _: True, since: int = 0
    ) -> EventT:
        await self.wait_for(lambda: bool(self.find(kind, match, since)), f"{kind.__name__} event")
        return self.find(kind, match, since)[0]

    async def has_messages(self, ids: Iterable[str], timeout: float = WAIT) -> None:
        wanted = set(ids)
        await self.wait_for(
            lambda: wanted <= self.messages.keys(),
            f"message.new for {len(wanted - self.messages.keys())} of {len(wanted)} messages",
            timeout,
        )

    async def call(self, op: str, **fields: Any) -> Any:
        return await self.client.call(op, **fields)

    async def send(self, conversation_id: int, client_msg_id: str) -> frames.Message:
        connection = self.connection
        ack: frames.SendAck = await self.call(
            "message.send", conversation_id=conversation_id, text=client_msg_id, client_msg_id=client_msg_id
        )
        # The reader records events as it reads them, so an event sent before the ack
        # has been recorded by now (PROTOCOL.md: it arrives before the ack). One read
        # just after the ack, before this resumes, is missed: this can only under-count.
        if not ack.duplicate and ack.message.id not in self.event_ids[connection]:
            self.ack_before_event.append(client_msg_id)
        return ack.message

    async def catch_up(self, conversation_id: int, after: int) -> None:
        """PROTOCOL.md §9: fetch everything after ``after``, oldest first, following next_cursor."""
        cursor: int | None = after
        while cursor is not None:
            page: frames.HistoryPage = await self.call(
                "message.history", conversation_id=conversation_id, after=cursor, order="asc", limit=100
            )
            for message in page.messages:
                if message.id not in self.messages:
                    self.messages[message.id] = message
                    self.from_history.add(message.id)
            cursor = page.next_cursor

    def last_contiguous(self, conversation_id: int, base: int = 0) -> int:
        """The client's ``last``: the newest seq with every seq up to it seen."""
        seqs = {m.seq for m in self.messages.values() if m.conversation_id == conversation_id}
        last = base
        while last + 1 in seqs:
            last += 1
        return last

    def in_conversation(self, conversation_id: int) -> dict[str, frames.Message]:
        return {i: m for i, m in self.messages.items() if m.conversation_id == conversation_id}

    def assert_exactly(self, conversation_id: int, acked: Iterable[frames.Message]) -> None:
        """Every acknowledged message once (after dedupe by id), and nothing else."""
        expected = {m.id: (m.seq, m.client_msg_id) for m in acked}
        got = {i: (m.seq, m.client_msg_id) for i, m in self.in_conversation(conversation_id).items()}
        missing = sorted(expected[i] for i in expected.keys() - got.keys())
        extra = sorted(got[i] for i in got.keys() - expected.keys())
        assert not missing and not extra, f"{self.name}: missing {missing}, unexpected {extra}"
        assert got == expected
        seqs = [seq for seq, _ in got.values()]
        assert len(seqs) == len(set(seqs)), f"{self.name}: two messages with one seq"

    def assert_in_order(self, conversation_id: int) -> None:
        """On each connection, message.new seqs of the conversation strictly increase."""
        for (_, cid), seqs in self.delivered.items():
            if cid == conversation_id:
                assert all(a < b for a, b in itertools.pairwise(seqs)), f"{self.name}: delivered out of order {seqs}"

    def presence_of(self, user_id: int) -> list[str]:
        """The statuses of ``user_id`` in the presence events received, in order."""
        return [e.presence.status for e in self.find(frames.PresenceChanged, lambda e: e.presence.user_id == user_id)]


# -- the cluster --------------------------------------------------------------


@dataclass
class Instance:
    name: str
    process: ServerProcess
    url: str
    http_url: str
    instance_id: str

    async def kill(self) -> None:
        """SIGKILL, by PID: no cleanup of any kind."""
        os.kill(self.process.proc.pid, signal.SIGKILL)
        await self.process.proc.wait()

    async def get(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http_get, self.http_url + path)

    async def debug_view(self) -> DebugView:
        status, body = await self.get("/debug/subscriptions")
        assert status == 200, body
        view: DebugView = json.loads(body)
        return view


class Cluster:
    def __init__(self, tmp_path: Path, stores: dict[str, Any], redis_url: str, stack: AsyncExitStack) -> None:
        self._tmp_path = tmp_path
        self._stores = stores
        self.redis_url = redis_url
        self.prefix = f"hubbub-test-{uuid.uuid4().hex[:12]}"
        self._stack = stack
        self.instances: list[Instance] = []
        # Retries: the outage test restarts Redis under this client's pooled connections.
        self.redis: redis.Redis = redis.Redis.from_url(redis_url, decode_responses=True, retry=Retry(NoBackoff(), 2))

    async def start(self, *names: str) -> list[Instance]:
        processes = []
        for name in names:
            data_dir = self._tmp_path / f"data-{name}"
            env = settings_env(
                {
                    **TEST_SETTINGS,
                    **self._stores,
                    **CLUSTER_SETTINGS,
                    "redis_url": self.redis_url,
                    "redis_prefix": self.prefix,
                    "data_dir": data_dir,
                }
            )
            processes.append(await self._stack.enter_async_context(running_server(data_dir, env)))
        urls = await asyncio.gather(*(p.url() for p in processes))
        http_urls = await asyncio.gather(*(p.http_url() for p in processes))
        started = []
        for name, process, url, http_url in zip(names, processes, urls, http_urls, strict=True):
            listening = next(e for e in process.events if e.get("event") == "listening")
            started.append(Instance(name, process, url, http_url, str(listening["instance"])))
        self.instances.extend(started)
        await asyncio.gather(*(self.wait_readyz(i, "ready\n") for i in started))
        return started

    async def wait_readyz(self, instance: Instance, expected: str, timeout: float = WAIT) -> str:
        """Poll /readyz until its body starts with ``expected`` (always HTTP 200 here)."""
        end = time.monotonic() + timeout
        while True:
            status, body = await instance.get("/readyz")
            if status == 200 and body.startswith(expected):
                return body
            assert time.monotonic() < end, f"{instance.name} /readyz: {status} {body!r}, wanted {expected!r}"
            await asyncio.sleep(0.05)

    async def connect(self, instance: Instance, peer: Peer | None = None, name: str | None = None) -> Peer:
        """A new connection on ``instance``: a new user registered, or ``peer`` again with its token."""
        client = await self._stack.enter_async_context(open_client(instance.url))
        if peer is None:
            peer = Peer(name or unique_name())
            peer.attach(client)
            session = await client.register(unique_name(peer.name), "correct horse")
            peer.user_id, peer.token = session.user.id, session.token
        else:
            peer.attach(client)
            await client.auth(peer.token)
        return peer

    async def shard_subscribers(self, channels: list[str]) -> dict[str, int]:
        """PUBSUB SHARDNUMSUB: how many connections subscribe each channel."""
        return {str(channel): int(count) for channel, count in await self.redis.pubsub_shardnumsub(*channels)}

    async def shard_channels(self) -> set[str]:
        """PUBSUB SHARDCHANNELS: this cluster's channels with at least one subscriber."""
        return {str(channel) for channel in await self.redis.pubsub_shardchannels(f"{self.prefix}:*")}

    async def routing_problems(self, live: list[Instance]) -> list[str]:
        """How the routing differs from the local members of ``live`` (empty when exact)."""
        views = await asyncio.gather(*(i.debug_view() for i in live))
        problems = []
        wanted: set[str] = set()
        per_conversation: dict[int, int] = defaultdict(int)
        for instance, view in zip(live, views, strict=True):
            for kind in ("conversations", "users"):
                if view["local"][kind] != view["broker"][kind]:
                    problems.append(
                        f"{instance.name} {kind}: local {view['local'][kind]} broker {view['broker'][kind]}"
                    )
            for cid in view["local"]["conversations"]:
                per_conversation[cid] += 1
                wanted.add(f"{self.prefix}:c:{cid}")
            wanted.update(f"{self.prefix}:u:{uid}" for uid in view["local"]["users"])
            wanted.add(f"{self.prefix}:i:{instance.instance_id}")
        channels = await self.shard_channels()
        if channels != wanted:
            problems.append(f"redis channels: extra {sorted(channels - wanted)} missing {sorted(wanted - channels)}")
        if per_conversation:
            counts = await self.shard_subscribers([f"{self.prefix}:c:{cid}" for cid in per_conversation])
            for cid, instances in per_conversation.items():
                subscribers = counts[f"{self.prefix}:c:{cid}"]
                if subscribers != instances:
                    problems.append(f"c:{cid}: {subscribers} subscribers, {instances} instances with local members")
        return problems

    async def settle(self, live: list[Instance] | None = None, timeout: float = WAIT) -> list[DebugView]:
        """Wait until every instance subscribes exactly to its local interest (changes are batched)."""
        instances = live if live is not None else self.instances
        end = time.monotonic() + timeout
        while problems := await self.routing_problems(instances):
            assert time.monotonic() < end, f"routing never matched local members: {problems}"
            await asyncio.sleep(0.05)
        return list(await asyncio.gather(*(i.debug_view() for i in instances)))

    async def close(self) -> None:
        try:
            keys = [key async for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
            if keys:
                await self.redis.delete(*keys)
        except (RedisError, OSError):
            pass  # a stopped private Redis keeps nothing anyway
        await self.redis.aclose()


@pytest.fixture
async def stores(postgres_database: str) -> dict[str, Any]:
    """Both stores on this session's PostgreSQL database, emptied."""
    await truncate_postgres(postgres_database)
    return {"accounts_backend": "postgres", "messages_backend": "postgres", "postgres_dsn": postgres_database}


@pytest.fixture
async def cluster(tmp_path: Path, stores: dict[str, Any]) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        instances = Cluster(tmp_path, stores, SHARED_REDIS, stack)
        stack.push_async_callback(instances.close)
        yield instances


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_cluster(
    tmp_path: Path, stores: dict[str, Any], private_redis: PrivateRedis
) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        instances = Cluster(tmp_path, stores, private_redis.url, stack)
        stack.push_async_callback(instances.close)
        yield instances


async def full_history(peer: Peer, conversation_id: int) -> list[frames.Message]:
    """The conversation's whole history, oldest first."""
    messages: list[frames.Message] = []
    cursor: int | None = 0
    while cursor is not None:
        page: frames.HistoryPage = await peer.call(
            "message.history", conversation_id=conversation_id, after=cursor, order="asc", limit=100
        )
        messages.extend(page.messages)
        cursor = page.next_cursor
    return messages


async def send_many(peer: Peer, conversation_id: int, tag: str, count: int) -> list[frames.Message]:
    return [await peer.send(conversation_id, f"{tag}-{i}") for i in range(count)]


async def create_channel(owner: Peer, members: list[Peer], private: bool = False) -> int:
    """``owner`` creates a channel that ``members`` join (or are invited to)."""
    channel = (await owner.call("channel.create", name=unique_name("ch"), private=private)).conversation
    for member in members:
        if private:
            await owner.call("channel.invite", channel_id=channel.id, user_id=member.user_id)
        else:
            await member.call("channel.join", channel_id=channel.id)
    cid: int = channel.id
    return cid


# -- 1. cross-instance delivery ---------------------------------------------


PER_SENDER = 15


async def test_cross_instance_delivery_in_channel_and_dm(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    alice = await cluster.connect(a, name="alice")
    dave = await cluster.connect(a, name="dave")
    bob = await cluster.connect(b, name="bob")
    carol = await cluster.connect(c, name="carol")
    everyone = [alice, dave, bob, carol]
    channel = await create_channel(alice, [dave, bob, carol])
    dm_mark = len(bob.events)
    dm: int = (await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id
    added = await bob.expect(frames.ConversationAdded, lambda e: e.conversation.id == dm, since=dm_mark)
    assert added.by == alice.user_id
    await cluster.settle()

    # One message each way first: every instance then has delivered a seq of
    # both conversations, the base its gap detection starts from.
    warm = [await bob.send(channel, "warm-channel"), await bob.send(dm, "warm-dm")]
    await asyncio.gather(*(p.has_messages([warm[0].id]) for p in everyone), alice.has_messages([warm[1].id]))

    results = await asyncio.gather(
        send_many(alice, channel, "alice", PER_SENDER),
        send_many(dave, channel, "dave", PER_SENDER),
        send_many(bob, channel, "bob", PER_SENDER),
        send_many(carol, channel, "carol", PER_SENDER),
        send_many(alice, dm, "alice-dm", PER_SENDER),
        send_many(bob, dm, "bob-dm", PER_SENDER),
    )
    in_channel = [warm[0], *(m for r in results[:4] for m in r)]
    in_dm = [warm[1], *(m for r in results[4:] for m in r)]
    assert sorted(m.seq for m in in_channel) == list(range(1, len(in_channel) + 1))
    assert sorted(m.seq for m in in_dm) == list(range(1, len(in_dm) + 1))

    # Every receiver gets every message as message.new: no client-side gap fill needed.
    await asyncio.gather(*(p.has_messages(m.id for m in in_channel) for p in everyone))
    await asyncio.gather(*(p.has_messages(m.id for m in in_dm) for p in (alice, bob)))
    for peer in everyone:
        peer.assert_exactly(channel, in_channel)
        peer.assert_in_order(channel)
        assert not peer.from_history
    for peer in (alice, bob):
        peer.assert_exactly(dm, in_dm)
        peer.assert_in_order(dm)
    assert not any(p.redelivered for p in everyone), "no message.new twice on a connection"
    assert not carol.find(frames.MessageNew, lambda e: e.message.conversation_id == dm), "carol is not in the DM"


# -- 2. membership --------------------------------------------------------------


async def test_membership_changes_reach_other_instances(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob_a = await cluster.connect(a, name="bob")
    bob_b = await cluster.connect(b, peer=bob_a.device("bob-b"))  # bob's second device
    carol = await cluster.connect(b, name="carol")
    lobby = await create_channel(alice, [])
    dm: int = (await alice.call("dm.open", user_ids=[bob_a.user_id])).conversation.id
    await cluster.settle()

    # bob joins on a: his device on b hears of it at once and receives the channel.
    mark = len(bob_b.events)
    await bob_a.call("channel.join", channel_id=lobby)
    added = await bob_b.expect(frames.ConversationAdded, lambda e: e.conversation.id == lobby, since=mark)
    assert added.by == bob_a.user_id and added.conversation.member
    joined = await bob_b.expect(frames.MemberJoined, lambda e: e.conversation_id == lobby, since=mark)
    assert joined.user.id == bob_a.user_id and joined.by is None
    await alice.expect(frames.MemberJoined, lambda e: e.conversation_id == lobby and e.user.id == bob_a.user_id)
    hello = await alice.send(lobby, "hello-lobby")
    await asyncio.gather(bob_a.has_messages([hello.id]), bob_b.has_messages([hello.id]))

    # alice invites carol (only on b) to a private channel on a.
    design = await create_channel(alice, [], private=True)
    mark = len(carol.events)
    await alice.call("channel.invite", channel_id=design, user_id=carol.user_id)
    invited = await carol.expect(frames.ConversationAdded, lambda e: e.conversation.id == design, since=mark)
    assert invited.by == alice.user_id
    joined = await carol.expect(frames.MemberJoined, lambda e: e.conversation_id == design, since=mark)
    assert joined.user.id == carol.user_id and joined.by == alice.user_id
    welcome = await alice.send(design, "welcome-carol")
    await carol.has_messages([welcome.id])
    reply = await carol.send(design, "thanks")
    await alice.has_messages([reply.id])

    # bob leaves on a: both his devices hear member.left then conversation.removed, and the channel stops.
    marks = {p.name: len(p.events) for p in (alice, bob_a, bob_b)}
    await bob_a.call("channel.leave", channel_id=lobby)
    for peer in (alice, bob_a, bob_b):
        left = await peer.expect(frames.MemberLeft, lambda e: e.conversation_id == lobby, since=marks[peer.name])
        assert left.user_id == bob_a.user_id
    for peer in (bob_a, bob_b):
        await peer.expect(frames.ConversationRemoved, lambda e: e.conversation_id == lobby, since=marks[peer.name])
        kinds = [type(e) for e in peer.events[marks[peer.name] :]]
        assert kinds.index(frames.MemberLeft) < kinds.index(frames.ConversationRemoved)
    after_leave = await alice.send(lobby, "after-bob-left")
    # A later message from the same instance, in a conversation bob is still in, as a marker:
    # one publisher's events reach an instance in publish order.
    marker = await alice.send(dm, "marker")
    await asyncio.gather(bob_a.has_messages([marker.id]), bob_b.has_messages([marker.id]))
    for peer in (bob_a, bob_b):
        assert after_leave.id not in peer.messages, f"{peer.name} still receives the channel it left"
    await cluster.settle()


# -- 3. presence ------------------------------------------------------------------


async def presence_everywhere(peers: list[Peer], user_id: int) -> set[str]:
    answers = await asyncio.gather(*(p.call("presence.query", user_ids=[user_id]) for p in peers))
    return {answer.presence[0].status for answer in answers}


async def test_presence_with_devices_on_different_instances(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    watcher = await cluster.connect(c, name="watcher")
    observers = [await cluster.connect(a, name="on-a"), await cluster.connect(b, name="on-b"), watcher]

    # ursula shares a channel with the watcher; she starts offline.
    setup = await cluster.connect(a, name="ursula")
    uid = setup.user_id
    channel = await create_channel(setup, [watcher])
    await setup.client.close()
    await watcher.wait_for(lambda: watcher.presence_of(uid) == ["offline"], "offline after setup")
    assert await presence_everywhere(observers, uid) == {"offline"}

    # First device (on a): online, for everyone.
    device_a = await cluster.connect(a, peer=setup.device("ursula-a"))
    await watcher.wait_for(lambda: watcher.presence_of(uid) == ["offline", "online"], "online event")
    assert await presence_everywhere(observers, uid) == {"online"}

    # Second device (on b): nothing changes. A message it sends after authenticating is a
    # marker: an online event from b would have reached the watcher before it.
    device_b = await cluster.connect(b, peer=setup.device("ursula-b"))
    await cluster.settle()
    marker = await device_b.send(channel, "second-device")
    await watcher.has_messages([marker.id])
    assert watcher.presence_of(uid) == ["offline", "online"]
    assert await presence_everywhere(observers, uid) == {"online"}

    # The device on a closes: still online (on b), for everyone.
    await device_a.client.close()
    key = f"{cluster.prefix}:user:{uid}:instances"
    end = time.monotonic() + WAIT
    while await cluster.redis.smembers(key) != {b.instance_id}:  # a has recorded the disconnect
        assert time.monotonic() < end, "instance a never recorded the closed connection"
        await asyncio.sleep(0.05)
    assert await presence_everywhere(observers, uid) == {"online"}

    # The last device (on b) closes: offline, for the watcher on c and on every instance.
    await device_b.client.close()
    await watcher.wait_for(lambda: watcher.presence_of(uid)[-1:] == ["offline"], "offline event")
    # One online and one offline for the two devices: closing the one on a announced nothing.
    assert watcher.presence_of(uid) == ["offline", "online", "offline"]
    answers = await asyncio.gather(*(p.call("presence.query", user_ids=[uid]) for p in observers))
    assert {answer.presence[0].status for answer in answers} == {"offline"}
    offline = watcher.find(frames.PresenceChanged, lambda e: e.presence.user_id == uid)[-1]
    assert {answer.presence[0].last_seen for answer in answers} == {offline.presence.last_seen}


async def test_typing_reaches_the_other_members_on_every_instance_and_not_the_typists_devices(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    phone = await cluster.connect(b, peer=alice.device("alice-phone"))
    bob, carol = await cluster.connect(b, name="bob"), await cluster.connect(a, name="carol")
    channel = await create_channel(alice, [bob, carol])
    dm = (await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id
    await cluster.settle()

    def typing_of(peer: Peer, cid: int) -> list[frames.UserTyping]:
        return peer.find(frames.UserTyping, lambda e: e.conversation_id == cid and e.user_id == alice.user_id)

    await alice.call("typing", conversation_id=channel, thread_root_id="root-1")
    await alice.call("typing", conversation_id=dm)
    expected = frames.UserTyping(
        conversation_id=channel, user_id=alice.user_id, thread_root_id="root-1", expires_in_ms=5000
    )
    for member in (bob, carol):  # on the other instance and on the typist's own
        assert await member.expect(frames.UserTyping, lambda e: e.conversation_id == channel) == expected
    assert (await bob.expect(frames.UserTyping, lambda e: e.conversation_id == dm)).user_id == alice.user_id

    # The message ends the indicator: on each instance it follows the typing, which
    # the typist's own devices, here and on the other instance, never received.
    marker = await alice.send(channel, "typed")
    dm_marker = await alice.send(dm, "typed-dm")
    for peer in (alice, phone, bob, carol):
        await peer.has_messages([marker.id] if peer is carol else [marker.id, dm_marker.id])
    assert typing_of(alice, channel) == typing_of(phone, channel) == typing_of(phone, dm) == []
    for member in (bob, carol):
        in_channel = [
            type(e)
            for e in member.events
            if (isinstance(e, frames.UserTyping) and e.conversation_id == channel)
            or (isinstance(e, frames.MessageNew) and e.message.conversation_id == channel)
        ]
        assert in_channel[-2:] == [frames.UserTyping, frames.MessageNew]

    # Not a member: the same not_found on any instance as for a conversation that does not exist.
    outsider = await cluster.connect(b, name="outsider")
    for cid in (dm, 999_999):
        with pytest.raises(ServerError) as refused:
            await outsider.call("typing", conversation_id=cid)
        assert (refused.value.code, refused.value.message) == ("not_found", "conversation not found")


# -- 4. SIGKILL of an instance -----------------------------------------------------


async def test_killed_instance(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    xavier = await cluster.connect(a, name="xavier")  # reconnects to b after the kill
    zoe = await cluster.connect(a, name="zoe")  # only ever on a
    yann = await cluster.connect(b, name="yann")
    wanda = await cluster.connect(c, name="wanda")
    channel = await create_channel(xavier, [zoe, yann, wanda])
    await cluster.settle()
    warm = await yann.send(channel, "warm")
    await asyncio.gather(*(p.has_messages([warm.id]) for p in (xavier, zoe, yann, wanda)))

    acked: list[frames.Message] = [warm]
    enough_before_kill = asyncio.Event()
    killed = asyncio.Event()
    done_after_kill = asyncio.Event()

    def record(message: frames.Message) -> None:
        acked.append(message)
        if len(acked) >= 30:
            enough_before_kill.set()

    async def steady_sender(peer: Peer) -> None:
        for i in range(60):
            if done_after_kill.is_set():
                break
            record(await peer.send(channel, f"{peer.name}-{i}"))

    async def xavier_sender() -> None:
        i = 0
        # Before the kill: sends through a until the connection dies under them.
        while True:
            try:
                record(await xavier.send(channel, f"xavier-{i}"))
            except (ConnectionError, ConnectionClosed):
                break
            i += 1
        assert killed.is_set()
        # Reconnect to b with the token, resend the unacknowledged message (same client_msg_id),
        # then catch up from history after the last seq seen.
        last = xavier.last_contiguous(channel)
        await cluster.connect(b, peer=xavier)
        record(await xavier.send(channel, f"xavier-{i}"))
        acked_so_far = {m.id for m in acked}
        await xavier.catch_up(channel, after=last)
        assert acked_so_far <= xavier.messages.keys(), "history after the last seen seq has every acked message"
        for j in range(i + 1, i + 10):
            record(await xavier.send(channel, f"xavier-{j}"))
        done_after_kill.set()

    senders = asyncio.gather(xavier_sender(), steady_sender(yann), steady_sender(wanda))
    await asyncio.wait_for(enough_before_kill.wait(), WAIT)
    killed.set()
    killed_at = time.monotonic()
    await a.kill()
    await asyncio.wait_for(senders, WAIT * 2)

    # zoe was only on a: everyone on the surviving instances hears she went offline, within the TTL
    # (a's last heartbeat expires, then the next heartbeat of a survivor reaps a).
    survivors = [xavier, yann, wanda]

    async def hears_zoe_offline(peer: Peer) -> None:
        await peer.wait_for(lambda: "offline" in peer.presence_of(zoe.user_id), "offline for zoe", TTL_SECONDS + 5)

    await asyncio.gather(*(hears_zoe_offline(peer) for peer in survivors))
    offline_after = time.monotonic() - killed_at
    assert offline_after < TTL_SECONDS + 2 * HEARTBEAT_SECONDS + 1.5, f"offline only after {offline_after:.1f}s"
    for user_id, status in ((zoe.user_id, "offline"), (xavier.user_id, "online"), (yann.user_id, "online")):
        assert await presence_everywhere(survivors, user_id) == {status}

    # Nothing acknowledged is missing anywhere; nothing is there twice.
    by_cmid = {m.client_msg_id: m for m in acked}
    assert len(by_cmid) == len(acked) == len({m.id for m in acked}), "a retried send stored twice"
    # Surviving instances fill what a's dying broker never published, by themselves.
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in (yann, wanda)))
    await xavier.has_messages(m.id for m in acked)
    for peer in survivors:
        peer.assert_exactly(channel, acked)
    stored = await full_history(yann, channel)
    assert [(m.id, m.seq) for m in stored] == sorted(((m.id, m.seq) for m in acked), key=lambda pair: pair[1])
    await cluster.settle([b, c])


# -- 5. Redis outage -------------------------------------------------------------------


async def test_redis_stopped_and_restarted(private_cluster: Cluster, private_redis: PrivateRedis) -> None:
    cluster = private_cluster
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    carol = await cluster.connect(a, name="carol")
    bob = await cluster.connect(b, name="bob")
    everyone = [alice, carol, bob]
    channel = await create_channel(alice, [carol, bob])
    await cluster.settle()
    acked = [await alice.send(channel, "before-a"), await bob.send(channel, "before-b")]
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in everyone))

    private_redis.stop()
    for instance in (a, b):
        body = await cluster.wait_readyz(instance, "ready, degraded: broker: ")
        assert "redis" in body
    # Sends are stored and acknowledged; delivery on the same instance goes on.
    during_b = [await bob.send(channel, f"outage-b-{i}") for i in range(2)]
    during_a = [await alice.send(channel, f"outage-a-{i}") for i in range(3)]
    acked += during_b + during_a
    await carol.has_messages(m.id for m in during_a)
    await alice.has_messages(m.id for m in during_a)
    await bob.has_messages(m.id for m in during_b)
    for instance in (a, b):
        status, body = await instance.get("/readyz")
        assert status == 200 and body.startswith("ready, degraded: broker: "), body

    await private_redis.start()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready\n", timeout=15) for i in (a, b)))
    # bob receives what was sent on a during the outage, with no new message to reveal the gap:
    # b's broker resyncs from the store after it reconnects.
    await bob.has_messages(m.id for m in during_a)
    # Cross-instance routing works again, both ways.
    await cluster.settle()
    after = [await alice.send(channel, "after-a"), await bob.send(channel, "after-b")]
    acked += after
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in everyone))
    for peer in everyone:
        peer.assert_exactly(channel, acked)
        peer.assert_in_order(channel)
        assert not peer.from_history
    # Presence records were lost with Redis; the heartbeats restore them.
    end = time.monotonic() + WAIT
    for peer in everyone:
        while await presence_everywhere(everyone, peer.user_id) != {"online"}:
            assert time.monotonic() < end, f"{peer.name} not online everywhere after the Redis restart"
            await asyncio.sleep(0.05)


async def test_presence_right_after_redis_restart(private_cluster: Cluster, private_redis: PrivateRedis) -> None:
    cluster = private_cluster
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    bob_phone = await cluster.connect(a, peer=bob.device("bob-phone"))
    await create_channel(alice, [bob])
    await cluster.settle()

    private_redis.stop()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready, degraded: broker: ") for i in (a, b)))
    await private_redis.start()
    # bob's device on a closes as soon as Redis is back: bob is still online, on b.
    await bob_phone.client.close()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready\n", timeout=15) for i in (a, b)))
    key = f"{cluster.prefix}:user:{bob.user_id}:instances"
    end = time.monotonic() + WAIT
    while await cluster.redis.smembers(key) != {b.instance_id}:  # a recorded the close, b its records
        assert time.monotonic() < end, f"bob's instances in Redis: {await cluster.redis.smembers(key)}"
        await asyncio.sleep(0.05)
    assert await presence_everywhere([alice, bob], bob.user_id) == {"online"}
    # A marker from a, after a handled the close: an offline event from a would come before it.
    marker = await alice.send((await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id, "marker")
    await alice.has_messages([marker.id])
    assert alice.presence_of(bob.user_id) == [], "bob announced offline while online on b"


# -- 6. subscriptions ----------------------------------------------------------------


async def test_subscriptions_track_local_members(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")

    async def expect_subscribers(cid: int, instances: int) -> None:
        views = await cluster.settle()
        local = sum(cid in v["local"]["conversations"] for v in views)
        assert local == instances
        channel = f"{cluster.prefix}:c:{cid}"
        assert (await cluster.shard_subscribers([channel]))[channel] == instances

    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    carol_a = await cluster.connect(a, name="carol")
    carol_b = await cluster.connect(b, peer=carol_a.device("carol-b"))
    views = await cluster.settle()
    assert views[0]["local"]["users"] == sorted([alice.user_id, carol_a.user_id])
    assert views[1]["local"]["users"] == sorted([bob.user_id, carol_a.user_id])
    assert views[2]["local"] == {"conversations": [], "users": []}

    channel = await create_channel(alice, [])
    await expect_subscribers(channel, 1)
    await bob.call("channel.join", channel_id=channel)
    await expect_subscribers(channel, 2)
    await carol_a.call("channel.join", channel_id=channel)  # reaches both of carol's devices
    await expect_subscribers(channel, 2)
    await bob.call("channel.leave", channel_id=channel)  # b keeps it for carol's device
    await expect_subscribers(channel, 2)
    await carol_b.client.close()
    await expect_subscribers(channel, 1)
    views = await cluster.settle()
    assert views[1]["local"]["users"] == [bob.user_id]

    # A user on a third instance joins, then disconnects.
    dave = await cluster.connect(c, name="dave")
    await dave.call("channel.join", channel_id=channel)
    await expect_subscribers(channel, 2)
    dm: int = (await dave.call("dm.open", user_ids=[bob.user_id])).conversation.id
    await expect_subscribers(dm, 2)
    await dave.client.close()
    await expect_subscribers(channel, 1)
    await expect_subscribers(dm, 1)

    await alice.client.close()
    await expect_subscribers(channel, 1)  # carol's device on a
    await carol_a.call("channel.leave", channel_id=channel)
    await expect_subscribers(channel, 0)
    await bob.client.close()
    await carol_a.client.close()
    views = await cluster.settle()
    for view in views:
        assert view["local"] == view["broker"] == {"conversations": [], "users": []}
    assert await cluster.shard_channels() == {f"{cluster.prefix}:i:{i.instance_id}" for i in (a, b, c)}


# -- 7. A stalled pub/sub path is noticed -----------------------------------------


async def test_stalled_redis_shows_degraded_then_recovers(private_cluster: Cluster) -> None:
    """Redis that accepts connections but answers nothing (CLIENT PAUSE) looks
    alive to a naive check; the broker's self-probe notices, /readyz reports
    the instance degraded (still serving), and it recovers by itself."""
    (a,) = await private_cluster.start("a")
    alice = await private_cluster.connect(a, name="alice")
    await private_cluster.redis.client_pause(4000, all=True)
    body = await private_cluster.wait_readyz(a, "ready, degraded: broker: ")
    assert "probe" in body or "subscriber" in body or "publishing" in body, body
    assert (await alice.call("ping")).ts > 0  # still serving its connections
    await private_cluster.wait_readyz(a, "ready\n", timeout=WAIT + 4)
