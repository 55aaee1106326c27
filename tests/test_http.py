"""Operator endpoints on the WebSocket port: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from hubbub.protocol.client import ServerError
from hubbub.storage.sqlite import SqliteDatabase, SqliteDirectory
from tests.conftest import RunningServer, ServerFactory, http_get, unique_name
from tests.helpers import next_presence_of


async def get(server: RunningServer, path: str) -> tuple[int, str]:
    # The server runs on this event loop: a blocking GET must run in a thread.
    return await asyncio.to_thread(http_get, server.http_url + path)


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    wanted = f"{name}{{{label_text}}}" if labels else name
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise AssertionError(f"{wanted} not in /metrics")


def sqlite_database(server: RunningServer) -> SqliteDatabase:
    """The embedded database under the running server's stores."""
    stores = server.app._stores
    assert stores is not None
    directory = stores.directory
    assert isinstance(directory, SqliteDirectory), "this test breaks the embedded SQLite store"
    return directory.db


async def test_healthz(server: RunningServer) -> None:
    status, body = await get(server, "/healthz")
    assert (status, body) == (200, "ok\n")
    status, _ = await get(server, "/healthz?probe=1")
    assert status == 200


async def test_readyz_when_store_answers(server: RunningServer) -> None:
    status, body = await get(server, "/readyz")
    assert (status, body) == (200, "ready\n")


async def test_metrics_after_traffic(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    await bob.call("channel.join", channel_id=room)
    for n in range(3):
        await alice.call("message.send", conversation_id=room, text=f"m{n}", client_msg_id=str(n))
    await bob.call("ping")
    with pytest.raises(ServerError):
        await bob.call("channel.join", channel_id=999_999)

    status, body = await get(server, "/metrics")
    assert status == 200
    assert sample(body, "hubbub_connections") == 2
    assert sample(body, "hubbub_authenticated_connections") == 2
    assert sample(body, "hubbub_messages_stored_total") == 3
    assert sample(body, "hubbub_request_seconds_count", op="message.send") == 3
    assert sample(body, "hubbub_request_seconds_count", op="register") == 2
    assert sample(body, "hubbub_request_seconds_bucket", op="message.send", le="+Inf") == 3
    assert sample(body, "hubbub_frames_in_total", type="ping") == 1
    assert sample(body, "hubbub_errors_total", code="not_found") == 1
    # 3 messages to 2 members, plus join and create announcements.
    assert sample(body, "hubbub_deliveries_total") >= 6
    assert sample(body, "hubbub_frames_out_total", type="message.new") == 6
    assert sample(body, "hubbub_slow_consumer_disconnects_total") == 0
    assert re.search(r'^hubbub_storage_seconds_count\{op="append",store="sqlite"\} 3\.0$', body, re.MULTILINE)

    # Once alice hears bob went offline, the server has torn his connection down.
    assert bob.user is not None
    await bob.close()
    change = await next_presence_of(alice, bob.user.id)
    assert change.status == "offline"
    status, body = await get(server, "/metrics")
    assert sample(body, "hubbub_connections") == 1
    assert sample(body, "hubbub_authenticated_connections") == 1


async def test_readyz_reports_a_broken_store(server: RunningServer) -> None:
    alice = await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id

    # The database connection goes away underneath the server (closed on its
    # own thread, as a failing disk or a deleted volume would leave it).
    await sqlite_database(server).run(lambda conn: conn.close())

    status, body = await get(server, "/readyz")
    assert status == 503
    lines = body.strip().splitlines()
    assert any(line.startswith("directory store sqlite unreachable") for line in lines), body
    assert any(line.startswith("messages store sqlite unreachable") for line in lines), body
    # Liveness is not readiness: the process still answers.
    assert (await get(server, "/healthz"))[0] == 200

    # Requests that need the store fail promptly with `unavailable`, naming it.
    with pytest.raises(ServerError) as info:
        await alice.call("message.send", conversation_id=999, text="x", client_msg_id="x")
    assert info.value.code == "unavailable"
    assert "sqlite" in info.value.message
    with pytest.raises(ServerError) as info:
        await alice.call("message.history", conversation_id=room)
    assert info.value.code == "unavailable"
    assert (await alice.call("ping")).ts > 0

    metrics = (await get(server, "/metrics"))[1]
    assert sample(metrics, "hubbub_storage_errors_total", store="sqlite") >= 2
    assert sample(metrics, "hubbub_errors_total", code="unavailable") == 2


async def test_readyz_reports_a_hung_store_and_recovers(make_server: ServerFactory) -> None:
    server = await make_server(storage_timeout_seconds=0.3)
    alice = await server.user()
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    db = sqlite_database(server)

    # Occupy the database's only thread, as a stuck disk would.
    release = threading.Event()
    blocked = asyncio.ensure_future(db.run(lambda conn: release.wait(30)))
    try:
        status, body = await get(server, "/readyz")
        assert status == 503
        assert "directory store sqlite unreachable" in body
        with pytest.raises(ServerError) as info:
            await alice.call("message.history", conversation_id=room)
        assert info.value.code == "unavailable"
    finally:
        release.set()
        assert await blocked is True

    status, body = await get(server, "/readyz")
    assert (status, body) == (200, "ready\n")
    page = await alice.call("message.history", conversation_id=room)
    assert page.messages == []
