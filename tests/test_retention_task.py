"""The retention purge as a background task (server/retention.py): it purges
by itself each interval, survives a failing pass, and only one instance of a
cluster purges at a time, through PostgreSQL's advisory lock (a PostgreSQL
directory) or Redis's ``SET NX PX`` lock (a SQLite directory with Redis).
Two in-process App instances share the stores, so the test can hold one
instance inside its pass while the other tries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.server.app import App
from hubbub.server.config import Settings
from hubbub.server.retention import RetentionPurge
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import PurgeResult
from tests.cluster import SHARED_REDIS
from tests.conftest import TEST_SETTINGS, RunningServer, ServerFactory, settings_for_backend, unique_name

WAIT = 10.0


async def send_many(client: Client, cid: int, count: int) -> list[frames.Message]:
    sent = []
    for _ in range(count):
        ack = await client.call("message.send", conversation_id=cid, text="x", client_msg_id=unique_name("m"))
        sent.append(ack.message)
    return sent


async def room_with_messages(server: RunningServer, count: int) -> tuple[Client, int, list[frames.Message]]:
    alice = await server.user()
    cid: int = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    return alice, cid, await send_many(alice, cid, count)


async def oldest_seq(client: Client, cid: int) -> int:
    page: frames.HistoryPage = await client.call("message.history", conversation_id=cid)
    return page.oldest_seq


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (a store read through the server) until it holds; the task runs on its own clock."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.02)


def purge_of(app: App) -> RetentionPurge:
    assert app.retention is not None
    return app.retention


class FlakyPurges:
    """The message log with its first purges failing as given, the rest passed through."""

    def __init__(self, log: Any, failures: list[BaseException]) -> None:
        self._log = log
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def purge(self, conversation_id: int, **fields: Any) -> PurgeResult:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        result: PurgeResult = await self._log.purge(conversation_id, **fields)
        return result


class GatedPurges:
    """The message log with every purge held until ``go`` is set; ``entered`` once one is."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def purge(self, conversation_id: int, **fields: Any) -> PurgeResult:
        self.entered.set()
        await self.go.wait()
        result: PurgeResult = await self._log.purge(conversation_id, **fields)
        return result


async def test_the_background_task_purges_by_itself(make_server: ServerFactory) -> None:
    server = await make_server(retention_max_messages=3, retention_interval_seconds=0.05)
    alice, cid, sent = await room_with_messages(server, 7)

    async def purged() -> bool:
        return await oldest_seq(alice, cid) == 5

    await until(purged, "the task purged the 4 oldest messages")
    page: frames.HistoryPage = await alice.call("message.history", conversation_id=cid, order="asc")
    assert [m.id for m in page.messages] == [m.id for m in sent[4:]]
    metrics = server.app.metrics.registry
    assert (metrics.get_sample_value("hubbub_retention_purged_messages_total") or 0) >= 4
    assert (metrics.get_sample_value("hubbub_retention_purge_seconds_count") or 0) >= 1
    assert metrics.get_sample_value("hubbub_retention_backlog_conversations") == 0


async def test_the_servers_retention_applies_to_dms(make_server: ServerFactory) -> None:
    """DMs have no override (channel.update is for channels): the server's retention is theirs."""
    server = await make_server(retention_max_messages=2, retention_interval_seconds=3600.0)
    alice, bob = await server.user(), await server.user()
    assert bob.user is not None
    dm: frames.Conversation = (await alice.call("dm.open", user_ids=[bob.user.id])).conversation
    assert dm.retention == frames.Retention(effective_max_messages=2)
    sent = await send_many(alice, dm.id, 5)
    assert await purge_of(server.app).run_once() == 3
    page: frames.HistoryPage = await bob.call("message.history", conversation_id=dm.id, order="asc")
    assert ([m.id for m in page.messages], page.oldest_seq) == ([m.id for m in sent[3:]], 4)
    listed: list[frames.Conversation] = (await bob.call("dm.list")).conversations
    assert [(c.oldest_seq, c.unread_count) for c in listed if c.id == dm.id] == [(4, 2)]


async def test_a_failing_pass_is_retried_at_the_next_interval(make_server: ServerFactory) -> None:
    server = await make_server(retention_max_messages=2, retention_interval_seconds=0.05)
    task = purge_of(server.app)
    flaky = FlakyPurges(task.messages, [StoreUnavailable("sqlite", "down for the test"), RuntimeError("a bug")])
    task.messages = flaky
    alice, cid, _ = await room_with_messages(server, 5)

    async def purged() -> bool:
        return await oldest_seq(alice, cid) == 4

    await until(purged, "a pass after the two failing ones purged")
    assert flaky.calls >= 3
    failures = server.app.metrics.registry.get_sample_value("hubbub_task_failures_total", {"task": "retention_purge"})
    assert failures == 1  # the unexpected error; the store outage is a warning, not a task failure


@asynccontextmanager
async def two_apps(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two started Apps on the same stores (one SQLite file, or one PostgreSQL database)."""
    async with settings_for_backend(backend, request) as values, AsyncExitStack() as stack:
        servers = []
        for _ in range(2):
            settings = msgspec.convert(
                {**TEST_SETTINGS, **values, "data_dir": str(tmp_path / "shared"), **overrides}, Settings
            )
            app = App(settings)
            await app.start()
            stack.push_async_callback(app.stop)
            servers.append(RunningServer(app, await stack.enter_async_context(AsyncExitStack())))
        yield servers[0], servers[1]


async def one_purges_at_a_time(a: RunningServer, b: RunningServer, lock: str) -> None:
    """While ``a`` is inside its pass, ``b``'s pass finds the lock taken and does nothing; after, it may."""
    first, second = purge_of(a.app), purge_of(b.app)
    assert (first.lock.name, second.lock.name) == (lock, lock)
    alice, cid, _ = await room_with_messages(a, 6)
    await alice.call("channel.update", channel_id=cid, retention_max_messages=2)
    gate = GatedPurges(first.messages)
    first.messages = gate
    holding = asyncio.create_task(first.run_once())
    await asyncio.wait_for(gate.entered.wait(), WAIT)
    assert await second.run_once() is None  # locked out: nothing done
    assert await oldest_seq(alice, cid) == 1
    gate.go.set()
    assert await holding == 4
    assert await oldest_seq(alice, cid) == 5
    # The lock was released: the other instance's pass runs (and finds nothing left).
    assert await second.run_once() == 0
    await send_many(alice, cid, 2)
    assert await second.run_once() == 2


async def test_postgres_advisory_lock_lets_one_instance_purge(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    overrides = {"retention_override_min_messages": 1, "retention_interval_seconds": 3600.0}
    async with two_apps("postgres", request, tmp_path, **overrides) as (a, b):
        await one_purges_at_a_time(a, b, "postgres")


async def test_redis_lock_lets_one_instance_purge(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    overrides = {
        "retention_override_min_messages": 1,
        "retention_interval_seconds": 3600.0,
        "redis_url": SHARED_REDIS,
        "redis_prefix": f"retention-{uuid.uuid4().hex[:8]}",
    }
    async with two_apps("sqlite", request, tmp_path, **overrides) as (a, b):
        await one_purges_at_a_time(a, b, "redis")
