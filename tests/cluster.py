"""Several `hubbub serve` processes routed through Redis, on one PostgreSQL:
the instances, the clients that follow PROTOCOL.md §9 against them, and the
fixtures that start them (tests/test_cluster.py, tests/test_message_changes_cluster.py).

Real processes, real Redis: the machine's shared Redis under a fresh
HUBBUB_REDIS_PREFIX per test (``cluster``), or a private redis-server a test
may stop and restart (``private_cluster``).
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

from hubbub.protocol import frames
from hubbub.protocol.client import Client, open_client
from tests.backends import truncate_postgres
from tests.conftest import TEST_SETTINGS, http_get, unique_name
from tests.helpers import presence_changes
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
        return [change.status for change in presence_changes(self.events, user_id)]


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
        self.settings: dict[str, Any] = {}
        """More settings for every instance started (tests/test_redis_cluster.py: HUBBUB_REDIS_CLUSTER)."""
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
                    **self.settings,
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
