"""Every long-lived task survives a failure of one of its iterations: it logs
one JSON line (``task_failed``), counts it in ``hubbub_task_failures_total``
and goes on.

Real servers (in this process, so a fault can be injected into one task),
real sockets, real stores and the machine's Redis under a prefix of this
test's own. Each test injects one failure into one task and then asserts
that the task still does its job.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

import hubbub.storage.sqlite
from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError
from hubbub.protocol.errors import CloseCode
from hubbub.server import logs
from hubbub.server.app import App
from hubbub.storage.records import NewMessage
from tests.backends import truncate_postgres
from tests.conftest import RunningServer, ServerFactory, http_get, unique_name
from tests.helpers import uid

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEARTBEAT = 0.2
TTL = 1.0
WAIT = 10.0
"""Upper bound for anything that should happen promptly."""


class InjectedFault(RuntimeError):
    """The failure a test injects: no code path expects it."""


# -- helpers ------------------------------------------------------------------


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds, at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.02)


def failures(app: App, task: str) -> float:
    value = app.metrics.registry.get_sample_value("hubbub_task_failures_total", {"task": task})
    return value or 0.0


def fail_once(target: Any, name: str, monkeypatch: pytest.MonkeyPatch, fault: BaseException | None = None) -> list[int]:
    """Make ``target.name`` raise on its first call only; returns the call counter."""
    original = getattr(target, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise fault or InjectedFault(f"injected into {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


class JsonLog:
    """What the ``hubbub`` logger writes, formatted by the project's JSON formatter."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line]

    def task_failed(self, task: str) -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in self.lines()]  # every line must be JSON
        return [e for e in entries if e.get("event") == "task_failed" and e.get("task") == task]

    def assert_one_json_line_per_failure(self, task: str, error: str = "InjectedFault") -> dict[str, Any]:
        """The failure's line: JSON, naming the task and the error, with its traceback as a field."""
        entries = self.task_failed(task)
        assert entries, f"no task_failed line for {task}"
        entry = entries[0]
        assert entry["level"] == "error"
        assert error in entry["error"], entry
        assert "Traceback" in entry["exception"], entry
        return entry


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    log = JsonLog()
    handler = logging.StreamHandler(log.stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logs.LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield log
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test-tasks-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def redis_settings(prefix: str) -> dict[str, Any]:
    return {
        "redis_url": SHARED_REDIS,
        "redis_prefix": prefix,
        "presence_heartbeat_seconds": HEARTBEAT,
        "presence_ttl_seconds": TTL,
        "broker_probe_seconds": 0.2,
        "storage_timeout_seconds": 0.5,
    }


async def two_instances(make_server: ServerFactory, tmp_path: Path, prefix: str) -> tuple[RunningServer, RunningServer]:
    """Two instances on one Redis and one database (SQLite file)."""
    a = await make_server(data_dir=tmp_path / "shared", **redis_settings(prefix))
    b = await make_server(data_dir=tmp_path / "shared", **redis_settings(prefix))
    return a, b


async def send(client: Client, conversation_id: int, text: str) -> frames.Message:
    ack = await client.call("message.send", conversation_id=conversation_id, text=text, client_msg_id=text)
    message: frames.Message = ack.message
    return message


async def receive_text(client: Client, text: str, timeout: float = WAIT) -> None:
    """Wait for the message.new carrying ``text`` (other events are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event(frames.MessageNew, timeout=timeout)
            if event.message.text == text:
                return


async def shared_channel(a: RunningServer, b: RunningServer) -> tuple[Client, Client, int]:
    """alice on A and bob on B in one channel, with delivery between them proven."""
    alice, bob = await a.user(), await b.user()
    channel = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    await bob.call("channel.join", channel_id=channel)
    # Routing may need a moment to subscribe: resend until one arrives.
    end = time.monotonic() + WAIT
    for attempt in range(1000):
        await send(alice, channel, f"warmup-{attempt}")
        try:
            await receive_text(bob, f"warmup-{attempt}", timeout=0.5)
            break
        except TimeoutError:
            assert time.monotonic() < end, "no delivery between the instances"
    return alice, bob, channel


# -- presence -----------------------------------------------------------------


async def test_a_store_outage_in_the_heartbeat_does_not_get_the_instance_reaped(
    make_server: ServerFactory, tmp_path: Path, redis_prefix: str, json_log: JsonLog
) -> None:
    """The reported defect: another instance's death is noticed in the heartbeat
    while the database is down; storing last-seen fails. The heartbeat must go on,
    or the other instance reaps this live one and announces its users offline."""
    a, b = await two_instances(make_server, tmp_path, redis_prefix)
    alice, bob = await a.user(), await b.user()
    r = redis.Redis.from_url(SHARED_REDIS)
    try:
        # A dead instance with a user no live instance has: whoever reaps it
        # stores that user's last-seen, which the outage makes fail.
        ghost_user = 10**9
        await r.sadd(f"{redis_prefix}:instance:ghost:users", ghost_user)
        await r.sadd(f"{redis_prefix}:user:{ghost_user}:instances", "ghost")
        db = sqlite3.connect(tmp_path / "shared" / "hubbub.db", timeout=0, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # the database outage: every write fails
        try:
            await r.zadd(f"{redis_prefix}:instances", {"ghost": 1})
            await until(
                lambda: failures(a.app, "presence_offline") + failures(b.app, "presence_offline") >= 1,
                "counted failure of the offline announcement",
            )
            failed_at = time.time()
        finally:
            db.execute("ROLLBACK")
            db.close()
        json_log.assert_one_json_line_per_failure("presence_offline", "StoreUnavailable")

        ids = [a.app.instance_id, b.app.instance_id]
        scores: list[float | None] = [None, None]

        async def refresh() -> None:
            scores[:] = await r.zmscore(f"{redis_prefix}:instances", ids)

        # Both still heartbeat a whole TTL after the failure: neither can have been reaped.
        end = time.monotonic() + WAIT
        while not all(s is not None and s > failed_at + TTL + HEARTBEAT for s in scores):
            assert time.monotonic() < end, f"an instance stopped heartbeating: {scores} (failed at {failed_at})"
            await asyncio.sleep(0.05)
            await refresh()
    finally:
        await r.aclose()

    seen_by_bob = await bob.call("presence.query", user_ids=[uid(alice)])
    seen_by_alice = await alice.call("presence.query", user_ids=[uid(bob)])
    assert [p.status for p in seen_by_bob.presence] == ["online"]
    assert [p.status for p in seen_by_alice.presence] == ["online"]


async def test_the_heartbeat_survives_a_failing_beat(
    make_server: ServerFactory, redis_prefix: str, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(**redis_settings(redis_prefix))
    presence = server.app.services.presence  # type: ignore[union-attr]
    calls = fail_once(presence, "_beat", monkeypatch)
    await until(lambda: failures(server.app, "presence_heartbeat") == 1, "counted heartbeat failure")
    await until(lambda: calls[0] >= 3, "heartbeats after the failure")
    json_log.assert_one_json_line_per_failure("presence_heartbeat")


# -- broker -------------------------------------------------------------------


async def test_the_subscriber_survives_a_failing_delivery(
    make_server: ServerFactory, tmp_path: Path, redis_prefix: str, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_instances(make_server, tmp_path, redis_prefix)
    alice, bob, channel = await shared_channel(a, b)
    fail_once(b.app.services.catchup, "on_event", monkeypatch)  # type: ignore[union-attr]
    await send(alice, channel, "lost")
    await send(alice, channel, "after")
    await receive_text(bob, "after")
    assert failures(b.app, "broker_subscriber") == 1
    json_log.assert_one_json_line_per_failure("broker_subscriber")


async def test_the_publisher_survives_a_failing_batch(
    make_server: ServerFactory, tmp_path: Path, redis_prefix: str, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_instances(make_server, tmp_path, redis_prefix)
    alice, bob, channel = await shared_channel(a, b)
    broker: Any = a.app.services.broker  # type: ignore[union-attr]
    fail_once(broker, "_send", monkeypatch)
    await send(alice, channel, "dropped")
    await until(lambda: failures(a.app, "broker_publisher") == 1, "counted publisher failure")
    await send(alice, channel, "after")
    await receive_text(bob, "after")
    json_log.assert_one_json_line_per_failure("broker_publisher")


async def test_the_probe_survives_a_failing_round(
    make_server: ServerFactory, redis_prefix: str, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(**redis_settings(redis_prefix))
    broker: Any = server.app.services.broker  # type: ignore[union-attr]
    await until(lambda: broker.status() is None, "broker connected")
    fail_once(broker._client, "spublish" if broker._sharded else "publish", monkeypatch)
    await until(lambda: failures(server.app, "broker_probe") == 1, "counted probe failure")
    failed_at = time.monotonic()
    await until(lambda: broker._last_probe_received > failed_at, "a probe round trip after the failure")
    json_log.assert_one_json_line_per_failure("broker_probe")


async def test_the_subscription_sync_survives_a_failure(
    make_server: ServerFactory, tmp_path: Path, redis_prefix: str, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_instances(make_server, tmp_path, redis_prefix)
    alice, _, _ = await shared_channel(a, b)
    dave = await b.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    broker: Any = b.app.services.broker  # type: ignore[union-attr]
    fail_once(broker, "_subscribe", monkeypatch)
    await dave.call("channel.join", channel_id=room)  # B must now subscribe to the room
    await until(lambda: failures(b.app, "broker_subscriptions") == 1, "counted subscription failure")
    await until(lambda: room in broker.topics()["conversations"], "subscription retried")
    await send(alice, room, "to dave")
    await receive_text(dave, "to dave")
    json_log.assert_one_json_line_per_failure("broker_subscriptions")


# -- keepalive ----------------------------------------------------------------


class BrokenConnection:
    def keepalive(self, now: float, timeout: float) -> None:
        raise InjectedFault("injected into keepalive")


async def test_the_keepalive_survives_a_failing_connection(
    make_server: ServerFactory, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(ping_interval_seconds=0.05, ping_timeout_seconds=5.0)
    await server.user()
    (session,) = server.app.sessions
    keepalive: Any = server.app._keepalive
    # The broken one comes first: every connection after it must still be pinged.
    monkeypatch.setattr(keepalive, "_connections", lambda: [BrokenConnection(), *(s.conn for s in server.app.sessions)])
    pings: set[float] = set()

    def pinged_again() -> bool:
        pings.add(session.conn._ping_sent)
        return len(pings) >= 3

    await until(pinged_again, "pings after a connection's keepalive failed")
    assert failures(server.app, "keepalive") >= 1
    json_log.assert_one_json_line_per_failure("keepalive")


# -- catch-up -----------------------------------------------------------------


async def store_behind_the_broker(server: RunningServer, conversation_id: int, sender: int, text: str) -> None:
    """A message stored but never published here: what a lost broker delivery leaves."""
    assert server.app.services is not None
    await server.app.services.messages.append(
        NewMessage(
            conversation_id=conversation_id, sender_id=sender, text=text, client_msg_id=text, ts=int(time.time() * 1000)
        )
    )


async def test_gap_filling_survives_a_failure(
    server: RunningServer, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.app.services is not None
    alice, bob = await server.user(), await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    await bob.call("channel.join", channel_id=room)
    await send(alice, room, "m1")
    await receive_text(bob, "m1")

    fail_once(server.app.services.messages, "history", monkeypatch)
    await store_behind_the_broker(server, room, uid(alice), "m2")
    await send(alice, room, "m3")  # seq 3 after 1: a gap, whose fill fails
    await receive_text(bob, "m3")
    await until(lambda: failures(server.app, "catchup_fill") == 1, "counted fill failure")
    json_log.assert_one_json_line_per_failure("catchup_fill")

    await store_behind_the_broker(server, room, uid(alice), "m4")
    await send(alice, room, "m5")  # the next gap is filled
    await receive_text(bob, "m4")
    await receive_text(bob, "m5")


async def test_resync_survives_a_failure(
    server: RunningServer, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = server.app.services
    assert hub is not None
    alice, bob = await server.user(), await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    await bob.call("channel.join", channel_id=room)
    await send(alice, room, "m1")
    await receive_text(bob, "m1")

    fail_once(hub.messages, "heads", monkeypatch)
    hub.catchup.on_resync([room])
    await until(lambda: failures(server.app, "catchup_resync") == 1, "counted resync failure")
    json_log.assert_one_json_line_per_failure("catchup_resync")

    await store_behind_the_broker(server, room, uid(alice), "m2")
    hub.catchup.on_resync([room])  # what a broker reconnect does: the missed message arrives
    await receive_text(bob, "m2")


# -- group commit ---------------------------------------------------------------


async def assert_batch_failure_answers_unavailable_then_recovers(
    server: RunningServer, fault_counter: Callable[[], float], json_log: JsonLog, timeout: float
) -> None:
    alice = await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        await send(alice, room, "fails")
    assert info.value.code == "unavailable"
    assert time.monotonic() - started < timeout / 2, "the failed batch answered at once, not at the timeout"
    assert fault_counter() == 1
    json_log.assert_one_json_line_per_failure("group_commit", "ValueError")
    # The flusher goes on: later sends, one and several at once, are stored.
    assert (await send(alice, room, "after")).seq >= 1
    acks = await asyncio.gather(*(send(alice, room, f"burst-{i}") for i in range(10)))
    assert len({m.seq for m in acks}) == 10


async def test_sqlite_flusher_survives_a_failing_batch(
    make_server: ServerFactory, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(storage_timeout_seconds=4.0)
    original = hubbub.storage.sqlite._append_batch
    calls = [0]

    def broken(c: sqlite3.Connection, batch: list[Any]) -> list[Any]:
        calls[0] += 1
        if calls[0] == 1:
            return []  # a broken outcome: one result short per message
        return original(c, batch)

    monkeypatch.setattr(hubbub.storage.sqlite, "_append_batch", broken)
    await assert_batch_failure_answers_unavailable_then_recovers(
        server, lambda: failures(server.app, "group_commit"), json_log, 4.0
    )


async def test_group_commit_survives_a_failing_batch(
    make_server: ServerFactory, request: pytest.FixtureRequest, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's (and MongoDB's) per-conversation group commit."""
    dsn: str = request.getfixturevalue("postgres_database")
    await truncate_postgres(dsn)
    server = await make_server(
        accounts_backend="postgres", messages_backend="postgres", postgres_dsn=dsn, storage_timeout_seconds=4.0
    )
    assert server.app._stores is not None
    batches: Any = server.app._stores.messages._batches  # type: ignore[attr-defined]
    original = batches._store_batch
    calls = [0]

    async def broken(messages: list[NewMessage]) -> list[Any]:
        calls[0] += 1
        outcomes: list[Any] = await original(messages)
        return outcomes[:-1] if calls[0] == 1 else outcomes  # one outcome short

    monkeypatch.setattr(batches, "_store_batch", broken)
    await assert_batch_failure_answers_unavailable_then_recovers(
        server, lambda: failures(server.app, "group_commit"), json_log, 4.0
    )


# -- the account check (server/account_check.py) -----------------------------------


async def test_the_account_check_survives_a_failing_check(
    make_server: ServerFactory, json_log: JsonLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(account_check_seconds=0.05)
    services = server.app.services
    assert services is not None
    calls = fail_once(services.registry, "end_sessions", monkeypatch)
    first = await server.user()
    await services.directory.set_disabled(uid(first), True, int(time.time() * 1000))
    # The failed check is retried from where the last good one started: the user is still found.
    await asyncio.wait_for(first.ws.wait_closed(), WAIT)
    assert first.ws.close_code == CloseCode.ACCOUNT_DISABLED
    assert calls[0] >= 2
    assert failures(server.app, "account_check") >= 1
    json_log.assert_one_json_line_per_failure("account_check")


# -- broker health on a single instance -------------------------------------------


async def test_broker_is_healthy_on_a_single_instance(server: RunningServer) -> None:
    """In-process routing always works: an alert on hubbub_broker_healthy == 0
    must not fire on every single-instance deployment."""
    status, body = await asyncio.to_thread(http_get, f"{server.http_url}/metrics")
    assert status == 200
    assert "hubbub_broker_healthy 1.0" in body.splitlines()
