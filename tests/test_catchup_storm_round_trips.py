"""A reconnect storm's catch-up (PROTOCOL.md §9) on PostgreSQL, its store calls counted (issue 13).

After a reconnect every client lists its channels and DMs, then reads the
history of each conversation past the last seq it saw. N clients doing that at
once must cost a number of store calls that does not grow with N: the
listings' memberships and unread counts are batches of server/lookups.py on
the lookup lane (one statement each), the public channels with their heads
one read for all (server/listings.py), and the members of one room asking for
the same history page one read. The lane (or the primary pool) is held while
the requests arrive, as a loaded store would, so the counts are exact: the
first batch, and one more for everyone who arrived meanwhile. And the answers
are each client's own: its memberships, read positions and unread counts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.server.listings import PublicChannels
from hubbub.server.lookups import CoalescedLog, CoalescedReads, KeyedLookup
from hubbub.storage.postgres import PostgresDirectory
from tests.backends import truncate_postgres
from tests.conftest import RunningServer, ServerFactory
from tests.helpers import uid
from tests.test_auth_storm_round_trips import counting_acquisitions, held, recording, until

USERS = 30
ROOMS = 3
POOL = 4
"""The primary pool's size: held whole while the histories are asked."""
SENT = 4
"""Messages per room, all after every member joined: each member's unread count."""


@pytest.fixture
async def storm_server(make_server: ServerFactory, postgres_database: str) -> RunningServer:
    await truncate_postgres(postgres_database)
    return await make_server(
        accounts_backend="postgres",
        messages_backend="postgres",
        postgres_dsn=postgres_database,
        postgres_lookup_pool_max=2,
        postgres_pool_max=POOL,
        account_check_seconds=3600,  # its read of the primary every 2 s would be counted with the catch-up's
    )


def counting_asks(lookup: KeyedLookup[Any, Any]) -> list[int]:
    """How many lookups of ``lookup`` are asked from now on (one element per ask)."""
    asked: list[int] = []
    enqueue = lookup._enqueue

    def counted(key: Any) -> Any:
        asked.append(1)
        return enqueue(key)

    lookup._enqueue = counted  # type: ignore[method-assign]
    return asked


async def test_a_storm_of_catch_ups_is_a_constant_number_of_store_calls(
    storm_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = storm_server
    services = server.app.services
    assert services is not None
    reads, log, listing = services.directory, services.messages, services.public_channels
    assert isinstance(reads, CoalescedReads) and isinstance(log, CoalescedLog) and isinstance(listing, PublicChannels)
    store = server.app._stores.directory if server.app._stores else None
    assert isinstance(store, PostgresDirectory)
    pools = store.pools

    owner = await server.user()
    rooms = [(await owner.call("channel.create", name=f"catchup{i}")).conversation.id for i in range(ROOMS)]
    clients: list[Client] = []
    room_of: dict[int, int] = {}
    for i in range(USERS):
        member = await server.user()
        room = rooms[i % ROOMS]
        await member.call("channel.join", channel_id=room)
        clients.append(member)
        room_of[uid(member)] = room
    for room in rooms:
        for n in range(SENT):
            await owner.call("message.send", conversation_id=room, text=f"gap {n}", client_msg_id=f"{room}-{n}")

    memberships = recording(reads.memberships)
    unread = recording(log.unread_lookup(services.message_limits.unread_count_cap))
    listings = recording(listing.lookup)
    with counting_acquisitions(monkeypatch, pools) as acquired:
        async with held(pools.lookups, 2):
            listing_calls = [asyncio.ensure_future(c.call("channel.list")) for c in clients]
            await until(lambda: sum(memberships) + len(reads.memberships._waiting) == USERS, "every listing is asked")
        answers = await asyncio.gather(*listing_calls)
    assert sum(memberships) == USERS and len(memberships) <= 2, memberships  # 30 listings: one or two batches
    assert sum(unread) == USERS and len(unread) <= 2, unread
    assert 1 <= len(listings) <= 2, listings  # the public channels and their heads: once for all
    # All on the lane: each memberships and unread batch, and the listing's public
    # channels (the replica's read, without one) and heads; nothing on the primary pool.
    assert acquired == Counter(lookups=len(memberships) + len(unread) + 2 * len(listings)), acquired

    for client, answer in zip(clients, answers, strict=True):
        listed = {c.id: c for c in answer.conversations}
        assert set(rooms) <= set(listed)
        mine = listed[room_of[uid(client)]]
        assert mine.member and mine.role == "member" and mine.last_seq == SENT
        assert (mine.read_seq, mine.unread_count) == (0, SENT)
        others = [listed[r] for r in rooms if r != mine.id]
        assert all(not c.member and c.unread_count == 0 and c.last_seq == SENT for c in others)

    # The history past the last seq seen: the same page for every member of a room, read once per room,
    # all the rooms' pages of a batch one store call (history_many) on the lane.
    history_reads = recording(log.history_lookup)
    heads = recording(log.heads_lookup)
    asked = counting_asks(log.history_lookup)
    with counting_acquisitions(monkeypatch, pools) as acquired:
        async with held(pools.lookups, 2):
            pages = [
                asyncio.ensure_future(
                    c.call("message.history", conversation_id=room_of[uid(c)], after=0, order="asc", limit=50)
                )
                for c in clients
            ]
            await until(lambda: len(asked) == USERS, "every history is asked")
        got: list[frames.HistoryPage] = await asyncio.gather(*pages)
    # The first batch (whoever came first) and one of the rest: at most one read per room each.
    assert sum(history_reads) <= 2 * ROOMS and len(history_reads) <= 2, history_reads
    # One store call per batch of pages and one per batch of heads, not two per client (60) or one per room.
    assert len(heads) <= 2, heads
    assert acquired == Counter(lookups=len(history_reads) + len(heads)), acquired
    assert all([m.seq for m in page.messages] == list(range(1, SENT + 1)) for page in got)


async def test_distinct_history_pages_asked_together_are_one_store_call(
    storm_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that saw different last seqs (after a gap fill, or joining late) ask
    distinct pages: those asked together are still one statement per batch."""
    server = storm_server
    services = server.app.services
    assert services is not None
    log = services.messages
    assert isinstance(log, CoalescedLog)
    store = server.app._stores.directory if server.app._stores else None
    assert isinstance(store, PostgresDirectory)
    pools = store.pools

    owner = await server.user()
    rooms = [(await owner.call("channel.create", name=f"pages{i}")).conversation.id for i in range(ROOMS)]
    for room in rooms:
        for n in range(USERS):
            await owner.call("message.send", conversation_id=room, text=f"m {n}", client_msg_id=f"{room}-{n}")
    readers = [await server.user() for _ in range(USERS)]
    for i, reader in enumerate(readers):
        await reader.call("channel.join", channel_id=rooms[i % ROOMS])

    history_reads = recording(log.history_lookup)
    asked = counting_asks(log.history_lookup)
    with counting_acquisitions(monkeypatch, pools) as acquired:
        async with held(pools.lookups, 2):
            pages = [
                asyncio.ensure_future(
                    reader.call("message.history", conversation_id=rooms[i % ROOMS], after=i, order="asc", limit=5)
                )
                for i, reader in enumerate(readers)
            ]
            await until(lambda: len(asked) == USERS, "every history is asked")
        got: list[frames.HistoryPage] = await asyncio.gather(*pages)
    assert sum(history_reads) == USERS and len(history_reads) <= 2, history_reads  # 30 distinct pages
    assert acquired["primary"] == 0 and acquired["lookups"] <= 4, acquired  # <= 2 page batches, <= 2 heads
    for i, page in enumerate(got):
        assert [m.seq for m in page.messages] == list(range(i + 1, min(i + 5, USERS) + 1))
