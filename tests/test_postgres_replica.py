"""HUBBUB_POSTGRES_REPLICA_DSN against a real streaming replica (tests/replication.py).

What goes where is proved by making the replica lag: with its replay paused,
the replica's answer and the primary's differ, and each request shows which
one it read. Listings that tolerate lag (public channels of channel.list,
user.search) read the replica; everything that must be fresh (auth,
membership, DM lookups, sends, history) reads the primary, so lag never
shows a user stale membership. A replica that goes away, or stops answering,
costs listings nothing but a log line and a metric: they go to the primary,
and back to the replica once it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hubbub.protocol.client import Client, ServerError
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.postgres import PostgresPools
from tests.backends import free_port
from tests.conftest import RunningServer, ServerFactory, http_get, unique_name
from tests.replication import StreamingReplica, streaming_replica
from tests.tcp_freezer import TcpFreezer

# One primary and standby for the module's tests, on one xdist worker.
pytestmark = pytest.mark.xdist_group("postgres_replica")

STORAGE_TIMEOUT = 3.0
REPLICA_TIMEOUT = 0.5
REPLICA_RETRY = 0.3


@pytest.fixture(scope="module")
def replica_pair() -> Iterator[StreamingReplica]:
    pair = streaming_replica()
    try:
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
async def pair(replica_pair: StreamingReplica) -> AsyncIterator[StreamingReplica]:
    """The module's pair, caught up; running and replaying again after the test whatever it did."""
    await replica_pair.replayed()
    try:
        yield replica_pair
    finally:
        if replica_pair.standby.pid is None:
            await asyncio.to_thread(replica_pair.standby.start)
        await replica_pair.resume_replay()


async def replicated_server(make_server: ServerFactory, pair: StreamingReplica, **overrides: object) -> RunningServer:
    settings: dict[str, object] = {
        "accounts_backend": "postgres",
        "messages_backend": "postgres",
        "postgres_dsn": pair.primary_dsn,
        "postgres_replica_dsn": pair.standby_dsn,
        "storage_timeout_seconds": STORAGE_TIMEOUT,
        "postgres_replica_timeout_seconds": REPLICA_TIMEOUT,
        "postgres_replica_retry_seconds": REPLICA_RETRY,
    }
    return await make_server(**{**settings, **overrides})


async def listed(client: Client, *names: str) -> dict[str, bool]:
    """channel.list as {name: member}, of the channels ``names`` (the module's tests share one database)."""
    page = await client.call("channel.list")
    return {c.name: c.member for c in page.conversations if c.name in names}


async def found(client: Client, username: str) -> bool:
    """Whether user.search for ``username`` finds that user."""
    return username in {u.username for u in (await client.call("user.search", query=username)).users}


async def metric(server: RunningServer, name: str) -> float:
    status, text = await asyncio.to_thread(http_get, server.http_url + "/metrics")
    assert status == 200
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in /metrics")


async def code_of(client: Client, op: str, **fields: Any) -> str:
    with pytest.raises(ServerError) as refused:
        await client.call(op, **fields)
    return refused.value.code


def replica_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hubbub" and r.getMessage() in ("replica_unavailable", "replica_recovered")
    ]


async def test_listings_read_the_replica(make_server: ServerFactory, pair: StreamingReplica) -> None:
    server = await replicated_server(make_server, pair)
    alice = await server.user()
    before = unique_name("before")
    await alice.call("channel.create", name=before)

    async with pair.lagging():
        # Registering and creating a channel are writes: the primary takes them while the replica lags.
        bob_name = unique_name("bobby")
        bob = await server.user(bob_name)
        during = unique_name("during")
        await bob.call("channel.create", name=during)
        assert await pair.standby_rows("SELECT 1 FROM conversations WHERE name = $1", during) == []

        assert await listed(alice, before, during) == {before: True}, "the replica's listing: no channel of the lag"
        assert not await found(alice, bob_name), "user.search is the replica's: no account of the lag"
        # The same data where it must be fresh: bob's own channels, and bob by id, from the primary.
        assert await listed(bob, before, during) == {before: False, during: True}
        assert bob.user is not None
        assert [u.username for u in (await alice.call("user.get", user_ids=[bob.user.id])).users] == [bob_name]

    assert await listed(alice, before, during) == {before: True, during: False}
    assert await found(alice, bob_name)
    assert await metric(server, "hubbub_replica_healthy") == 1
    assert await metric(server, "hubbub_replica_fallbacks_total") == 0


async def test_a_lagging_replica_never_shows_stale_membership(
    make_server: ServerFactory, pair: StreamingReplica
) -> None:
    server = await replicated_server(make_server, pair)
    alice = await server.user()
    bob = await server.user()
    public, private = unique_name("public"), unique_name("private")
    pub = (await alice.call("channel.create", name=public)).conversation
    priv = (await alice.call("channel.create", name=private, private=True)).conversation
    await bob.call("channel.join", channel_id=pub.id)
    assert bob.user is not None and bob.token is not None

    async with pair.lagging():
        # A new account authenticates three ways: register, login, and its token on another connection.
        carol_name = unique_name("carol")
        carol = await server.user(carol_name)
        assert carol.token is not None and carol.user is not None
        await (await server.client()).login(carol_name, "correct horse")
        carol_again = await server.client()
        await carol_again.auth(carol.token)

        # A DM with the new account: the lookup of its id, the send and the reply all see it.
        dm = (await alice.call("dm.open", user_ids=[carol.user.id])).conversation
        await alice.call("message.send", conversation_id=dm.id, text="welcome", client_msg_id="dm-1")
        history = await carol_again.call("message.history", conversation_id=dm.id)
        assert [m.text for m in history.messages] == ["welcome"]
        assert [c.id for c in (await carol_again.call("dm.list")).conversations] == [dm.id]

        # Joined and invited during the lag: members at once, in listings too.
        await carol.call("channel.join", channel_id=pub.id)
        await alice.call("channel.invite", channel_id=priv.id, user_id=carol.user.id)
        assert await listed(carol_again, public, private) == {public: True, private: True}
        members = (await carol_again.call("channel.members", channel_id=pub.id)).members
        assert carol.user.id in {u.id for u in members}
        await carol_again.call("message.send", conversation_id=priv.id, text="thanks", client_msg_id="p-1")

        # Left during the lag: not a member anywhere, and a send is refused,
        # from a connection that authenticated after the leave.
        await bob.call("channel.leave", channel_id=pub.id)
        await carol.call("channel.leave", channel_id=priv.id)
        bob_again = await server.client()
        await bob_again.auth(bob.token)
        assert await listed(bob_again, public, private) == {public: False}
        assert await code_of(bob_again, "message.send", conversation_id=pub.id, text="x", client_msg_id="b-1") == (
            "forbidden"
        )
        carol_late = await server.client()
        await carol_late.auth(carol.token)
        assert await listed(carol_late, public, private) == {public: True}
        assert await code_of(carol_late, "message.send", conversation_id=priv.id, text="x", client_msg_id="c-1") == (
            "not_found"
        )
        # The replica itself still holds the memberships that the answers above left out.
        stale = await pair.standby_rows(
            "SELECT 1 FROM memberships WHERE conversation_id = $1 AND user_id = $2", pub.id, bob.user.id
        )
        assert stale, "the replica lags: bob is still a member there"
        assert await pair.standby_rows("SELECT 1 FROM users WHERE username = $1", carol_name) == []


async def test_a_stopped_replica_degrades_listings_to_the_primary_then_recovers(
    make_server: ServerFactory, pair: StreamingReplica, caplog: pytest.LogCaptureFixture
) -> None:
    server = await replicated_server(make_server, pair)
    alice = await server.user()
    first = unique_name("first")
    await alice.call("channel.create", name=first)
    assert await listed(alice, first) == {first: True}

    caplog.set_level(logging.INFO, logger="hubbub")
    await asyncio.to_thread(pair.standby.stop)
    second = unique_name("second")
    bob_name = unique_name("bobby")
    bob = await server.user(bob_name)
    await bob.call("channel.create", name=second)

    # No error frame: the primary answers, so the listing is as fresh as it gets.
    for _ in range(3):
        assert await listed(alice, first, second) == {first: True, second: False}
        assert await found(alice, bob_name)
    assert replica_events(caplog) == ["replica_unavailable"], "one line for the outage, not one per read"
    (line,) = [r for r in caplog.records if r.getMessage() == "replica_unavailable"]
    assert line.levelno == logging.WARNING
    fields = getattr(line, "fields", {})
    assert fields["store"] == "postgres" and fields["error"]
    assert await metric(server, "hubbub_replica_healthy") == 0
    assert await metric(server, "hubbub_replica_fallbacks_total") == 6
    status, body = await asyncio.to_thread(http_get, server.http_url + "/readyz")
    assert status == 200, f"the instance still serves everything: ready, not failing ({body})"

    await asyncio.to_thread(pair.standby.start)
    await pair.replayed()
    deadline = time.monotonic() + 10
    while await metric(server, "hubbub_replica_healthy") != 1:
        assert time.monotonic() < deadline, "the replica answers again: listings go back to it"
        await asyncio.sleep(REPLICA_RETRY)  # the route retries the replica after its rest
        assert await listed(alice, first, second) == {first: True, second: False}
    assert replica_events(caplog) == ["replica_unavailable", "replica_recovered"]

    # Back on the replica: what it has not replayed, the listing does not show.
    async with pair.lagging():
        third = unique_name("third")
        await bob.call("channel.create", name=third)
        assert await listed(alice, first, second, third) == {first: True, second: False}
    assert await listed(alice, first, second, third) == {first: True, second: False, third: False}


async def test_a_replica_that_stops_answering_costs_a_listing_only_the_replica_timeout(
    make_server: ServerFactory, pair: StreamingReplica, caplog: pytest.LogCaptureFixture
) -> None:
    replica_timeout = 1.5  # of the storage timeout's 3 s: the primary has the rest
    async with TcpFreezer("127.0.0.1", pair.standby.port) as freezer:
        frozen_dsn = pair.standby_dsn.replace(f":{pair.standby.port}/", f":{freezer.port}/")
        # A long rest: the second listing below falls within it.
        server = await replicated_server(
            make_server,
            pair,
            postgres_replica_dsn=frozen_dsn,
            postgres_replica_timeout_seconds=replica_timeout,
            postgres_replica_retry_seconds=60.0,
        )
        alice = await server.user()
        name = unique_name("frozen")
        await alice.call("channel.create", name=name)
        assert await listed(alice, name) == {name: True}

        caplog.set_level(logging.INFO, logger="hubbub")
        freezer.freeze()
        started = time.monotonic()
        assert await listed(alice, name) == {name: True}, "answered by the primary, within the request's budget"
        assert time.monotonic() - started >= replica_timeout, "the replica was tried, and waited for"
        assert replica_events(caplog) == ["replica_unavailable"]
        assert await metric(server, "hubbub_replica_healthy") == 0
        # While the replica rests, listings do not wait on it at all.
        started = time.monotonic()
        assert await listed(alice, name) == {name: True}
        assert time.monotonic() - started < replica_timeout
        assert await metric(server, "hubbub_replica_fallbacks_total") == 2
        freezer.thaw()


async def test_a_replica_refused_at_start_up_leaves_no_primary_connection_open(pair: StreamingReplica) -> None:
    async def client_backends() -> int:
        primary = await pair.primary.connect()
        try:
            count: int = await primary.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return count
        finally:
            await primary.close()

    before = await client_backends()
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await PostgresPools.open(pair.primary_dsn, refused, min_size=2, max_size=2, timeout=2.0)
    assert await client_backends() == before, "the primary pool opened first is closed again"
