"""A database stopped mid-run: prompt `unavailable`, /readyz 503 naming the
store, connections kept, and service resumes by itself with every
acknowledged message in history."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest

from hubbub.protocol.client import Client, ServerError
from tests.backends import MongoServer, ThrowawayPostgres
from tests.conftest import RunningServer, ServerFactory, http_get

STORAGE_TIMEOUT = 2.0
READYZ_TIMEOUT = 1.0  # the default of HUBBUB_READYZ_TIMEOUT_SECONDS


async def send(client: Client, conversation_id: int, client_msg_id: str) -> int:
    ack = await client.call(
        "message.send", conversation_id=conversation_id, text=client_msg_id, client_msg_id=client_msg_id
    )
    seq: int = ack.message.seq
    return seq


async def send_until_accepted(client: Client, conversation_id: int, client_msg_id: str, deadline: float = 30) -> int:
    """Retry a send (same client_msg_id, so at most one copy) until the store is back."""
    end = time.monotonic() + deadline
    while True:
        try:
            return await send(client, conversation_id, client_msg_id)
        except ServerError as exc:
            assert exc.code == "unavailable", exc
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)  # a client's retry backoff: time passing is the point here


async def outage_checks(server: RunningServer, client: Client, conversation_id: int, store: str) -> None:
    """While the store is down: prompt errors, 503 naming it, the connection open."""
    started = time.monotonic()
    with pytest.raises(ServerError) as failed:
        await send(client, conversation_id, "during-outage")
    assert failed.value.code == "unavailable"
    assert time.monotonic() - started < STORAGE_TIMEOUT + 3, "a dead store must not hang requests"
    with pytest.raises(ServerError) as failed:
        await client.call("message.history", conversation_id=conversation_id)
    assert failed.value.code == "unavailable"
    with pytest.raises(ServerError) as failed:
        await client.call("message.search", query="outage")
    assert failed.value.code == "unavailable", "a search of a store that is down: unavailable, not internal"
    started = time.monotonic()
    status, body = await asyncio.to_thread(http_get, server.http_url + "/readyz")
    assert status == 503
    assert time.monotonic() - started < READYZ_TIMEOUT + 0.5, "/readyz answers within its own bound"
    assert store in body
    for line in body.splitlines():
        # Which store, and why: never an empty reason after the colon.
        assert re.fullmatch(r"(directory|messages) store \w+ unreachable: \S.*", line), body
    assert "[Errno 111]" in body, "the reason says why: the store refuses connections"
    assert (await client.call("ping")).ts > 0  # the connection stays open


async def recovery_checks(server: RunningServer, client: Client, conversation_id: int, acked: dict[str, int]) -> None:
    acked["during-outage"] = await send_until_accepted(client, conversation_id, "during-outage")
    acked["after"] = await send(client, conversation_id, "after")
    status, _ = await asyncio.to_thread(http_get, server.http_url + "/readyz")
    assert status == 200
    page = await client.call("message.history", conversation_id=conversation_id, order="asc", limit=100)
    stored = {m.client_msg_id: m.seq for m in page.messages}
    assert stored == acked, "every acknowledged message is in history, once"
    seqs = [m.seq for m in page.messages]
    assert seqs == sorted(set(seqs))


async def outage_and_recovery(
    server: RunningServer, stop: Callable[[], None], start: Callable[[], None], store: str, *, gapless: bool
) -> None:
    """Messages acked before, a store outage, and recovery with every ack in history."""
    alice = await server.user()
    channel = (await alice.call("channel.create", name="ops")).conversation
    acked = {f"before-{i}": await send(alice, channel.id, f"before-{i}") for i in range(3)}

    await asyncio.to_thread(stop)
    await outage_checks(server, alice, channel.id, store)
    await asyncio.to_thread(start)
    await recovery_checks(server, alice, channel.id, acked)
    if gapless:
        seqs = [m.seq for m in (await alice.call("message.history", conversation_id=channel.id, order="asc")).messages]
        assert seqs == list(range(1, len(acked) + 1))


async def test_postgres_outage(throwaway_postgres: ThrowawayPostgres, make_server: ServerFactory) -> None:
    server = await make_server(
        accounts_backend="postgres",
        messages_backend="postgres",
        postgres_dsn=throwaway_postgres.dsn,
        storage_timeout_seconds=STORAGE_TIMEOUT,
    )
    await outage_and_recovery(server, throwaway_postgres.stop, throwaway_postgres.start, "postgres", gapless=True)


async def test_mongo_outage(own_mongo: MongoServer, make_server: ServerFactory) -> None:
    server = await make_server(
        accounts_backend="sqlite",
        messages_backend="mongo",
        mongo_url=own_mongo.url,
        storage_timeout_seconds=STORAGE_TIMEOUT,
    )
    await outage_and_recovery(server, own_mongo.stop, own_mongo.restart, "mongo", gapless=False)
