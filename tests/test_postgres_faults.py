"""PostgreSQL faults a running server meets: its connections killed (what a
database restart or failover does to a pool), and a database that stops
answering (a network black hole). A store fault is an `unavailable` reply,
never `internal`; reads retry on a fresh connection; no request waits longer
than the storage timeout; the pool is healthy afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from hubbub.protocol.client import Client, ServerError
from tests.backends import ADMIN_DSN, truncate_postgres
from tests.conftest import RunningServer, ServerFactory, http_get
from tests.helpers import expect_error
from tests.tcp_freezer import TcpFreezer

STORAGE_TIMEOUT = 1.0
READYZ_TIMEOUT = 0.3


@pytest.fixture
async def postgres_dsn(postgres_database: str) -> str:
    await truncate_postgres(postgres_database)
    return postgres_database


async def postgres_server(make_server: ServerFactory, dsn: str, **overrides: object) -> RunningServer:
    return await make_server(
        accounts_backend="postgres",
        messages_backend="postgres",
        postgres_dsn=dsn,
        storage_timeout_seconds=STORAGE_TIMEOUT,
        **overrides,
    )


async def kill_server_connections(dsn: str) -> int:
    """pg_terminate_backend on every other connection to the test database:
    the server's pooled connections (this database is this test's alone)."""
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        killed: int = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return killed


async def write_as_a_client_would(client: Client, op: str, **fields: Any) -> Any:
    """A write right after a fault: `unavailable` at most once (the attempt
    that met a dead connection; PROTOCOL.md says retry it), then through,
    since that fault replaced the pool's connections."""
    try:
        return await client.call(op, **fields)
    except ServerError as exc:
        assert exc.code == "unavailable", exc
    return await client.call(op, **fields)


async def admin_execute(dsn: str, sql: str) -> None:
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def outcome(client: Client, op: str, **fields: Any) -> str:
    """``ok`` or the error code of one request."""
    try:
        await client.call(op, **fields)
    except ServerError as exc:
        return exc.code
    return "ok"


async def test_reads_after_connections_are_killed_retry_on_fresh_connections(
    make_server: ServerFactory, postgres_dsn: str
) -> None:
    server = await postgres_server(make_server, postgres_dsn, postgres_pool_min=4, postgres_pool_max=10)
    clients = [await server.user() for _ in range(4)]
    await clients[0].call("channel.create", name="general")
    for round_ in range(8):
        assert await kill_server_connections(postgres_dsn) > 0, f"round {round_}: the server holds connections"
        replies = await asyncio.gather(*(outcome(c, "channel.list") for c in clients))
        assert replies == ["ok"] * 4, f"round {round_}: reads must retry on a fresh connection"
    # The pool is healthy afterwards.
    assert (await write_as_a_client_would(clients[1], "channel.create", name="after")).conversation.name == "after"
    names = [c.name for c in (await clients[2].call("channel.list")).conversations]
    assert names == ["after", "general"]


async def test_writes_on_killed_connections_answer_unavailable_never_internal(
    make_server: ServerFactory, postgres_dsn: str
) -> None:
    server = await postgres_server(make_server, postgres_dsn, postgres_pool_min=4, postgres_pool_max=10)
    clients = [await server.user() for _ in range(4)]
    seen: set[str] = set()
    for round_ in range(8):
        await kill_server_connections(postgres_dsn)
        replies = await asyncio.gather(
            *(outcome(c, "channel.create", name=f"w{round_}x{i}") for i, c in enumerate(clients))
        )
        seen.update(replies)
        assert set(replies) <= {"ok", "unavailable"}, f"round {round_}: {replies}"
    # Afterwards every write goes through, at the latest on its retry.
    created = await asyncio.gather(
        *(write_as_a_client_would(c, "channel.create", name=f"after{i}") for i, c in enumerate(clients))
    )
    assert [r.conversation.name for r in created] == [f"after{i}" for i in range(4)], seen
    # And then at once.
    assert await asyncio.gather(*(outcome(c, "channel.list") for c in clients)) == ["ok"] * 4
    assert await outcome(clients[0], "channel.create", name="last") == "ok"


async def test_a_database_that_refuses_writes_answers_unavailable_not_internal(
    make_server: ServerFactory, postgres_dsn: str
) -> None:
    """What a failover onto a read-only node looks like: every write refused
    by the server (an error of the database, not of the connection)."""
    server = await postgres_server(make_server, postgres_dsn)
    alice = await server.user()
    await alice.call("channel.create", name="before")
    database = postgres_dsn.rsplit("/", 1)[1]
    await admin_execute(ADMIN_DSN, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        await kill_server_connections(postgres_dsn)  # new sessions start read-only
        await expect_error(alice, "unavailable", "channel.create", name="refused")
        assert [c.name for c in (await alice.call("channel.list")).conversations] == ["before"]
    finally:
        await admin_execute(ADMIN_DSN, f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    await kill_server_connections(postgres_dsn)
    assert (await write_as_a_client_would(alice, "channel.create", name="after")).conversation.name == "after"


@pytest.fixture
async def frozen_route(postgres_dsn: str) -> AsyncIterator[tuple[TcpFreezer, str]]:
    """A loopback forwarder to the shared PostgreSQL that the test can freeze,
    so the server sees a black hole while other tests keep their database."""
    host_port = postgres_dsn.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    async with TcpFreezer(host, int(port or 5432)) as freezer:
        yield freezer, postgres_dsn.replace(host_port, f"127.0.0.1:{freezer.port}")


async def timed(client: Client, op: str, **fields: Any) -> tuple[str, float]:
    started = time.monotonic()
    code = await outcome(client, op, **fields)
    return code, time.monotonic() - started


async def test_a_frozen_database_costs_a_request_at_most_the_storage_timeout(
    make_server: ServerFactory, frozen_route: tuple[TcpFreezer, str]
) -> None:
    freezer, dsn = frozen_route
    server = await postgres_server(make_server, dsn)
    alice = await server.user()
    channel = (await alice.call("channel.create", name="frozen")).conversation
    await alice.call("message.send", conversation_id=channel.id, text="hi", client_msg_id="m1")

    freezer.freeze()
    for op, fields in (
        ("channel.list", {}),
        ("dm.list", {}),
        ("message.history", {"conversation_id": channel.id}),
        ("channel.create", {"name": "during"}),
        # Bounded by the group commit's one timer (storage/batching.py), not a timeout of its own.
        ("message.send", {"conversation_id": channel.id, "text": "frozen", "client_msg_id": "m2"}),
    ):
        code, waited = await timed(alice, op, **fields)
        assert code == "unavailable", op
        # The whole wait, retries and connection clean-up included, within the
        # setting (plus scheduling slack), not a multiple of it.
        assert waited < STORAGE_TIMEOUT + 0.5, f"{op} waited {waited:.2f}s"
    await expect_error(alice, "unavailable", "channel.list")

    freezer.thaw()
    # Service resumes by itself on fresh connections.
    names = [c.name for c in (await alice.call("channel.list")).conversations]
    assert "frozen" in names


async def test_readyz_answers_within_its_own_bound_naming_the_frozen_store_and_why(
    make_server: ServerFactory, frozen_route: tuple[TcpFreezer, str]
) -> None:
    freezer, dsn = frozen_route
    server = await postgres_server(make_server, dsn, readyz_timeout_seconds=READYZ_TIMEOUT)
    assert await asyncio.to_thread(http_get, server.http_url + "/readyz") == (200, "ready\n")

    freezer.freeze()
    started = time.monotonic()
    status, body = await asyncio.to_thread(http_get, server.http_url + "/readyz")
    waited = time.monotonic() - started
    assert status == 503
    # A load balancer's health check gets its answer promptly, before the storage timeout.
    assert waited < READYZ_TIMEOUT + 0.4, f"/readyz took {waited:.2f}s"
    lines = body.splitlines()
    assert lines == [
        f"directory store postgres unreachable: ping timed out after {READYZ_TIMEOUT:g}s",
        f"messages store postgres unreachable: ping timed out after {READYZ_TIMEOUT:g}s",
    ], body

    freezer.thaw()
    assert await asyncio.to_thread(http_get, server.http_url + "/readyz") == (200, "ready\n")
