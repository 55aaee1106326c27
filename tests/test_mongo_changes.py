"""MongoDB's change feed and its compare-and-set writes (storage/mongo.py), on
the real MongoDB-protocol test server: the horizon held below a change in
flight and released by its lease, two instances changing one message at
once, the round trips of an append flush and of a change, and the upgrade
of documents written before revisions existed (docs/messages.md)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import DuplicateKeyError

from hubbub.storage.mongo import MongoMessageLog, parse_write_concern
from hubbub.storage.records import Head, MessageRecord, NewMessage, Reaction
from hubbub.storage.rows import message_document, new_message_record
from tests.backends import MongoServer, drop_mongo_database

NOW = 1_700_000_000_000
LEASE_SECONDS = 30.0
Document = dict[str, Any]
_conversations = itertools.count(1)


class CommandNames(monitoring.CommandListener):
    """The name of every command the client sends, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


class FakeClock:
    """Wall-clock seconds that move only when told to (leases, without sleeping)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


LogFactory = Callable[..., Awaitable[MongoMessageLog]]


@pytest.fixture
async def database(mongo_server: MongoServer) -> AsyncIterator[str]:
    name = f"hubbub_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_mongo_database(mongo_server.url, name)


@pytest.fixture
async def raw(mongo_server: MongoServer, database: str) -> AsyncIterator[Any]:
    """The test database through a client of the test's own, to write and read documents as they are."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_server.url, serverSelectionTimeoutMS=5000)
    yield client.get_database(database)
    await client.close()


@pytest.fixture
async def open_log(mongo_server: MongoServer, database: str) -> AsyncIterator[LogFactory]:
    """Open message logs on the test database, each with a client of its own
    (as a server instance has), upgraded and indexed as at start-up."""
    async with AsyncExitStack() as stack:

        async def factory(
            *, clock: Callable[[], float] = time.time, listener: CommandNames | None = None
        ) -> MongoMessageLog:
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                mongo_server.url, timeoutMS=10_000, event_listeners=[listener] if listener else []
            )
            log = MongoMessageLog(client, database, parse_write_concern("majority"), LEASE_SECONDS, clock)
            stack.push_async_callback(log.close)
            await log.ensure_indexes()
            return log

        yield factory


def new_message(conversation_id: int, client_msg_id: str, *, thread_root_id: str | None = None) -> NewMessage:
    return NewMessage(
        conversation_id=conversation_id,
        sender_id=7,
        text=f"text of {client_msg_id}",
        client_msg_id=client_msg_id,
        ts=NOW,
        thread_root_id=thread_root_id,
    )


async def fill(log: MongoMessageLog, conversation_id: int, count: int) -> list[MessageRecord]:
    return [(await log.append(new_message(conversation_id, f"m{i}"))).record for i in range(count)]


def react(user_id: int, emoji: str = "👍") -> Callable[[MessageRecord], MessageRecord]:
    """A pure change: ``user_id`` adds ``emoji``."""

    def change(record: MessageRecord) -> MessageRecord:
        others = [r for r in record.reactions if r.emoji != emoji]
        users = next((r.user_ids for r in record.reactions if r.emoji == emoji), ())
        return msgspec.structs.replace(record, reactions=(*others, Reaction(emoji=emoji, user_ids=(*users, user_id))))

    return change


def edit(text: str) -> Callable[[MessageRecord], MessageRecord]:
    return lambda record: msgspec.structs.replace(record, text=text, edited_ts=NOW + 1)


async def last_rev(log: MongoMessageLog, conversation_id: int) -> int:
    return (await log.heads([conversation_id]))[conversation_id].last_rev


# The horizon and the pending entries.


async def test_horizon_stays_below_an_append_in_flight_until_it_is_written(open_log: LogFactory) -> None:
    log = await open_log()
    cid = next(_conversations)
    stored = await fill(log, cid, 3)
    in_flight = await log.allocate(cid, seqs=1, revs=1)  # an append whose insert has not happened yet
    assert in_flight.first_rev == stored[-1].rev + 1
    edited, _ = await changed(log.change_message(cid, stored[0].id, edit("after")))
    assert edited.rev == in_flight.first_rev + 1  # a later change, finished first

    page = await log.changes(cid, after_rev=0, limit=100)
    assert page.horizon == in_flight.first_rev - 1
    assert [m.id for m in page.messages] == [m.id for m in stored[1:]]  # the edited one is above the horizon
    assert all(m.rev <= page.horizon for m in page.messages)

    record = new_message_record(new_message(cid, "late"), in_flight.first_seq, in_flight.first_rev)
    await log.messages.insert_one(message_document(record))
    assert (await log.changes(cid, after_rev=0, limit=100)).horizon == in_flight.first_rev - 1  # until released
    await log.release(in_flight)

    page = await log.changes(cid, after_rev=stored[-1].rev, limit=100)
    assert page.horizon == edited.rev == await last_rev(log, cid)
    assert [(m.id, m.rev) for m in page.messages] == [(record.id, record.rev), (edited.id, edited.rev)]


async def test_horizon_advances_past_an_abandoned_change_once_released(open_log: LogFactory) -> None:
    log = await open_log()
    cid = next(_conversations)
    stored = await fill(log, cid, 2)
    abandoned = await log.allocate(cid, seqs=0, revs=1)
    assert (await log.changes(cid, after_rev=0, limit=100)).horizon == stored[-1].rev
    edited, _ = await changed(log.change_message(cid, stored[0].id, edit("kept")))
    assert (await log.changes(cid, after_rev=stored[-1].rev, limit=100)).messages == []

    await log.release(abandoned)  # its write failed: the rev is a gap

    page = await log.changes(cid, after_rev=stored[-1].rev, limit=100)
    assert page.horizon == edited.rev == abandoned.first_rev + 1
    assert page.messages == [edited]


async def test_an_expired_lease_no_longer_holds_the_horizon_back(open_log: LogFactory, raw: Any) -> None:
    clock = FakeClock()
    log = await open_log(clock=clock)
    cid = next(_conversations)
    stored = await fill(log, cid, 2)
    dead = await log.allocate(cid, seqs=0, revs=1)  # a process that died mid-change
    edited, _ = await changed(log.change_message(cid, stored[1].id, edit("later")))
    assert (await log.changes(cid, after_rev=0, limit=100)).horizon == dead.first_rev - 1

    clock.now += LEASE_SECONDS - 1
    assert (await log.changes(cid, after_rev=0, limit=100)).horizon == dead.first_rev - 1
    clock.now += 1

    page = await log.changes(cid, after_rev=stored[-1].rev, limit=100)
    assert page.horizon == edited.rev
    assert page.messages == [edited]
    assert str(dead.first_rev) in (await raw.counters.find_one({"_id": cid}))["pending"]
    await log.append(new_message(cid, "next"))  # the next allocation removes the dead entry
    assert (await raw.counters.find_one({"_id": cid}))["pending"] == {}


async def changed(outcome: Awaitable[tuple[MessageRecord, bool] | None]) -> tuple[MessageRecord, bool]:
    result = await outcome
    assert result is not None and result[1], result
    return result


# Two instances at once.


async def test_two_instances_changing_one_message_at_once_apply_every_change(open_log: LogFactory) -> None:
    first, second = await open_log(), await open_log()
    cid = next(_conversations)
    (message,) = await fill(first, cid, 1)
    users = range(100, 140)

    results = await asyncio.gather(
        *(changed((first if user % 2 else second).change_message(cid, message.id, react(user))) for user in users)
    )

    revs = [record.rev for record, _ in results]
    assert len(set(revs)) == len(revs)
    assert min(revs) > message.rev
    final = await second.get_message(cid, message.id)
    assert final is not None
    assert sorted(final.reactions[0].user_ids) == list(users)
    assert final == max((record for record, _ in results), key=lambda record: record.rev)
    page = await first.changes(cid, after_rev=message.rev, limit=100)
    assert page.messages == [final]
    assert page.horizon == await last_rev(first, cid) >= final.rev


async def test_two_instances_appending_at_once_take_distinct_seqs_and_revs(open_log: LogFactory) -> None:
    first, second = await open_log(), await open_log()
    cid = next(_conversations)
    appended = await asyncio.gather(
        *((first if i % 2 else second).append(new_message(cid, f"c{i}")) for i in range(60))
    )
    records = [a.record for a in appended]
    assert len({r.seq for r in records}) == len({r.rev for r in records}) == 60
    page = await second.changes(cid, after_rev=0, limit=100)
    assert sorted(m.id for m in page.messages) == sorted(r.id for r in records)
    assert page.horizon == await last_rev(first, cid)


# Round trips.


async def test_an_append_flush_takes_the_same_round_trips_whatever_its_size(open_log: LogFactory) -> None:
    commands = CommandNames()
    log = await open_log(listener=commands)
    cid = next(_conversations)
    await fill(log, cid, 1)  # creates the counter; this process now knows it
    per_flush: dict[int, list[str]] = {}
    for size in (1, 10, 50):
        commands.take()
        # Queued before their flusher first runs: one batch.
        appended = await asyncio.gather(*(log.append(new_message(cid, f"{size}-{i}")) for i in range(size)))
        per_flush[size] = commands.take()
        seqs = [a.record.seq for a in appended]
        assert seqs == list(range(seqs[0], seqs[0] + size))
    # Resends, allocate (a bulk compare-and-set), insert, release (a bulk update).
    assert per_flush[1] == ["find", "update", "insert", "update"]
    assert per_flush[10] == per_flush[50] == per_flush[1]


async def test_a_change_takes_four_round_trips_and_a_reply_four_more(open_log: LogFactory) -> None:
    commands = CommandNames()
    log = await open_log(listener=commands)
    cid = next(_conversations)
    (root,) = await fill(log, cid, 1)
    commands.take()

    await changed(log.change_message(cid, root.id, edit("edited")))
    assert commands.take() == ["find", "findAndModify", "update", "update"]  # read, allocate, write, release

    reply = await log.append(new_message(cid, "reply", thread_root_id=root.id))
    append_flush = ["find", "update", "insert", "update"]
    root_change = ["find", "findAndModify", "update", "update"]
    assert commands.take() == [*append_flush, *root_change]
    assert reply.root is not None and reply.root.reply_count == 1
    assert reply.root.rev == reply.record.rev + 1
    assert reply.root == await log.get_message(cid, root.id)
    commands.take()

    assert await log.change_message(cid, root.id, lambda record: None) == (reply.root, False)
    assert commands.take() == ["find"]  # nothing to do: no allocation


async def test_a_history_page_with_reactions_and_replies_is_one_round_trip_whatever_its_size(
    open_log: LogFactory,
) -> None:
    """No N+1: reactions, reply counts and pins are in the message's own document."""
    commands = CommandNames()
    log = await open_log(listener=commands)
    cid = next(_conversations)
    messages = await fill(log, cid, 30)
    for n, message in enumerate(messages):
        await changed(log.change_message(cid, message.id, react(n, ("👍", "🎉", "👀")[n % 3])))
    await log.append(new_message(cid, "reply", thread_root_id=messages[0].id))
    for limit in (1, 10, 31):
        commands.take()
        page = await log.history(cid, before=None, after=None, limit=limit, order="desc")
        assert commands.take() == ["find"]
        assert len(page) == limit and all(m.reactions for m in page if m.thread_root_id is None)
    assert page[-1].reply_count == 1


# Upgrade of a store written before revisions existed.


def old_message_document(conversation_id: int, seq: int) -> Document:
    """A message as the release before revisions wrote it (storage/rows.py
    message_document at 7ade3c2): no rev, no thread or state fields."""
    return {
        "_id": uuid.uuid4().hex,
        "conversation_id": conversation_id,
        "seq": seq,
        "sender_id": 7,
        "text": f"old {seq}",
        "client_msg_id": f"old-{seq}",
        "ts": NOW + seq,
    }


async def write_old_store(raw: Any, sizes: dict[int, int]) -> list[Document]:
    """Messages and counters ({_id, seq}) as the previous release left them, with its two indexes."""
    await raw.messages.create_index([("conversation_id", 1), ("seq", -1)], unique=True, name="history")
    await raw.messages.create_index(
        [("conversation_id", 1), ("sender_id", 1), ("client_msg_id", 1)],
        unique=True,
        partialFilterExpression={"client_msg_id": {"$type": "string"}},
        name="idempotency",
    )
    docs = [old_message_document(cid, seq) for cid, size in sizes.items() for seq in range(1, size + 1)]
    await raw.messages.insert_many(docs)
    await raw.counters.insert_many([{"_id": cid, "seq": size} for cid, size in sizes.items()])
    return docs


async def test_opening_an_old_store_upgrades_it_to_revisions(open_log: LogFactory, raw: Any) -> None:
    busy, quiet = next(_conversations), next(_conversations)
    old = await write_old_store(raw, {busy: 5, quiet: 2})

    first, second = await asyncio.gather(open_log(), open_log())  # two instances starting at once

    assert [(d["seq"], d["rev"]) async for d in raw.messages.find({}).sort([("conversation_id", 1), ("seq", 1)])] == [
        (d["seq"], d["seq"]) for d in old
    ]
    assert [(d["seq"], d["rev"]) async for d in raw.counters.find({}).sort("_id", 1)] == [(5, 5), (2, 2)]
    indexes = await raw.messages.index_information()
    assert indexes["changes"]["unique"] is True
    assert indexes["changes"]["key"] == [("conversation_id", 1), ("rev", 1)]
    assert indexes["threads"]["key"] == [("conversation_id", 1), ("thread_root_id", 1), ("seq", 1)]
    assert indexes["pins"]["key"] == [("conversation_id", 1), ("pinned_ts", -1)]
    assert "partialFilterExpression" in indexes["threads"] and "partialFilterExpression" in indexes["pins"]
    with pytest.raises(DuplicateKeyError):
        await raw.messages.insert_one({**old_message_document(busy, 99), "rev": 3})

    assert await second.heads([busy, quiet]) == {
        busy: Head(last_seq=5, last_rev=5),
        quiet: Head(last_seq=2, last_rev=2),
    }
    page = await second.changes(busy, after_rev=0, limit=100)
    assert page.horizon == 5
    assert [(m.id, m.rev) for m in page.messages] == [(d["_id"], d["seq"]) for d in old[:5]]
    appended = await first.append(new_message(busy, "new"))
    assert (appended.record.seq, appended.record.rev) == (6, 6)
    edited, _ = await changed(second.change_message(busy, old[0]["_id"], edit("edited")))
    assert (edited.seq, edited.rev, edited.text) == (1, 7, "edited")
    assert (await first.changes(busy, after_rev=5, limit=100)).messages == [appended.record, edited]


async def test_reopening_an_upgraded_store_changes_nothing(open_log: LogFactory, raw: Any) -> None:
    cid = next(_conversations)
    await write_old_store(raw, {cid: 3})
    log = await open_log()
    (oldest,) = await log.history(cid, before=None, after=None, limit=1, order="asc")
    edited, _ = await changed(log.change_message(cid, oldest.id, edit("x")))
    before = [d async for d in raw.messages.find({}).sort("seq", 1)]

    again = await open_log()

    assert [d async for d in raw.messages.find({}).sort("seq", 1)] == before
    assert await again.heads([cid]) == {cid: Head(last_seq=3, last_rev=edited.rev)}
