"""The contract of retention in the stores (issue 15): ``MessageLog.purge``
removes exactly the expired prefix, in bounded batches, and everything read
over the stored messages follows (history, heads and their ``oldest_seq``,
the change feed, search, pins, unread counts, threads); the directory keeps a
channel's override and lists the conversations the purge visits.

Runs once per backend in BACKENDS with the fixtures of tests/storage_contract.py.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from hubbub.protocol.search import parse
from hubbub.storage.base import MessageLog
from hubbub.storage.factory import Stores
from hubbub.storage.records import (
    ChannelEdit,
    ConversationRecord,
    MessageQuery,
    MessageRecord,
    Standing,
)
from tests import storage_contract
from tests.storage_contract import NOW, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


def allow(channel: ConversationRecord, standing: Standing) -> None:
    """An AdminCheck that passes."""


async def seqs(log: MessageLog, conversation_id: int) -> list[int]:
    found = await log.history(conversation_id, before=None, after=None, limit=1000, order="asc")
    return [m.seq for m in found]


async def test_keep_last_removes_the_oldest_and_oldest_seq_follows(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n in range(10):
        await log.append(new_message(room, alice, f"m{n}", ts=NOW + n))
    assert (await log.heads([room.id]))[room.id].oldest_seq == 1

    result = await log.purge(room.id, before_ts=None, keep_last=3, limit=100)
    assert (result.purged, result.oldest_seq, result.more) == (7, 8, False)
    assert await seqs(log, room.id) == [8, 9, 10]
    head = (await log.heads([room.id]))[room.id]
    assert (head.last_seq, head.oldest_seq) == (10, 8)
    changes = await log.changes(room.id, after_rev=0, limit=100)
    assert [m.seq for m in changes.messages] == [8, 9, 10]
    assert changes.oldest_seq == 8

    again = await log.purge(room.id, before_ts=None, keep_last=3, limit=100)
    assert (again.purged, again.oldest_seq, again.more) == (0, 8, False)
    # Seqs go on from the head, never reused.
    appended = await log.append(new_message(room, alice, "after", ts=NOW + 20))
    assert appended.record.seq == 11


async def test_max_age_in_batches_of_the_limit(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n in range(1, 7):
        await log.append(new_message(room, alice, f"m{n}", ts=NOW + n))
    first = await log.purge(room.id, before_ts=NOW + 5, keep_last=None, limit=3)
    assert (first.purged, first.oldest_seq, first.more) == (3, 4, True)
    second = await log.purge(room.id, before_ts=NOW + 5, keep_last=None, limit=3)
    assert (second.purged, second.oldest_seq, second.more) == (1, 5, False)
    assert await seqs(log, room.id) == [5, 6]


async def test_either_rule_expires_a_message(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n in range(1, 7):
        await log.append(new_message(room, alice, f"m{n}", ts=NOW + n))
    # By age only the first two; by count (keep 3) the first three: three go.
    result = await log.purge(room.id, before_ts=NOW + 3, keep_last=3, limit=100)
    assert (result.purged, result.oldest_seq) == (3, 4)
    # By age all but the newest; by count none (keep 10): five go.
    result = await log.purge(room.id, before_ts=NOW + 6, keep_last=10, limit=100)
    assert (result.purged, result.oldest_seq) == (2, 6)
    assert await seqs(log, room.id) == [6]


async def test_a_message_not_expired_stops_the_purge(stores: Stores) -> None:
    """A ts out of order (clock skew between instances) keeps its successors until it expires too."""
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n, ts in enumerate((NOW + 1, NOW + 50, NOW + 2, NOW + 3)):
        await log.append(new_message(room, alice, f"m{n}", ts=ts))
    result = await log.purge(room.id, before_ts=NOW + 10, keep_last=None, limit=100)
    assert (result.purged, result.oldest_seq) == (1, 2)
    assert await seqs(log, room.id) == [2, 3, 4]


async def test_everything_expired_leaves_the_head(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n in range(3):
        await log.append(new_message(room, alice, f"m{n}", ts=NOW + n))
    result = await log.purge(room.id, before_ts=NOW + 100, keep_last=None, limit=100)
    assert (result.purged, result.oldest_seq, result.more) == (3, 4, False)
    assert await seqs(log, room.id) == []
    head = (await log.heads([room.id]))[room.id]
    assert (head.last_seq, head.oldest_seq) == (3, 4)
    assert (await log.append(new_message(room, alice, "next", ts=NOW + 200))).record.seq == 4


async def test_a_conversation_without_messages(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    result = await log.purge(room.id, before_ts=NOW, keep_last=1, limit=10)
    assert (result.purged, result.oldest_seq, result.more) == (0, 1, False)
    assert (await log.changes(room.id, after_rev=0, limit=10)).oldest_seq == 1


async def test_search_pins_and_unread_follow_the_purge(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice, bob = await new_user(directory), await new_user(directory)
    room = await new_channel(directory, alice)
    old = (await log.append(new_message(room, bob, "a", "ancient walrus", ts=NOW + 1))).record
    await log.append(new_message(room, bob, "b", "ancient otter", ts=NOW + 2))
    await log.append(new_message(room, bob, "c", "recent walrus", ts=NOW + 3))

    def pin(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, pinned_by=alice.id, pinned_ts=NOW + 5)

    await log.change_message(room.id, old.id, pin)
    assert [m.id for m in await log.pins(room.id, 10)] == [old.id]
    before = (await log.unread(alice.id, {room.id: 0}, 100))[room.id]
    assert before.unread_count == 3

    await log.purge(room.id, before_ts=NOW + 3, keep_last=None, limit=100)

    query = MessageQuery(terms=tuple(parse("ancient")), conversation_ids=(room.id,))
    assert [h.record.text for h in await log.search(query)] == []
    walrus = MessageQuery(terms=tuple(parse("walrus")), conversation_ids=(room.id,))
    assert [h.record.text for h in await log.search(walrus)] == ["recent walrus"]
    assert await log.pins(room.id, 10) == []
    after = (await log.unread(alice.id, {room.id: 0}, 100))[room.id]
    assert (after.unread_count, after.head.last_seq, after.head.oldest_seq) == (1, 3, 3)
    # A read position among the purged messages counts what is left after it.
    assert (await log.unread(alice.id, {room.id: 1}, 100))[room.id].unread_count == 1
    assert await log.get_message(room.id, old.id) is None


async def test_replies_of_a_purged_root_stay(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    root = (await log.append(new_message(room, alice, "root", ts=NOW + 1))).record
    for n in range(3):
        await log.append(new_message(room, alice, f"r{n}", ts=NOW + 2 + n, thread_root_id=root.id))
    result = await log.purge(room.id, before_ts=None, keep_last=3, limit=100)
    assert (result.purged, result.oldest_seq) == (1, 2)
    replies = await log.history(room.id, before=None, after=None, limit=10, order="asc", thread_root_id=root.id)
    assert [m.seq for m in replies] == [2, 3, 4]
    assert await log.get_message(room.id, root.id) is None


async def test_purges_race_appends_without_losing_a_new_message(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    for n in range(20):
        await log.append(new_message(room, alice, f"old{n}", ts=NOW + n))

    async def purge_all() -> int:
        purged = 0
        while True:
            result = await log.purge(room.id, before_ts=NOW + 100, keep_last=None, limit=4)
            purged += result.purged
            if not result.more:
                return purged

    async def send_all() -> list[int]:
        sends = [log.append(new_message(room, alice, f"new{n}", ts=NOW + 1000 + n)) for n in range(20)]
        return sorted(a.record.seq for a in await asyncio.gather(*sends))

    purged, sent = await asyncio.gather(purge_all(), send_all())
    assert purged == 20
    assert await seqs(log, room.id) == sent == list(range(21, 41))


async def test_the_override_is_stored_and_listed(stores: Stores) -> None:
    directory = stores.directory
    alice = await new_user(directory)
    plain = await new_channel(directory, alice)
    kept = await new_channel(directory, alice)
    assert (plain.retention_max_age_days, plain.retention_max_messages) == (0, 0)
    edit = ChannelEdit(retention_max_age_days=30, retention_max_messages=500)
    updated = await directory.update_channel(kept.id, alice.id, edit, allow)
    assert updated is not None
    assert (updated.retention_max_age_days, updated.retention_max_messages) == (30, 500)
    assert await directory.get_conversation(kept.id) == updated

    every = await directory.conversations_after(plain.id - 1, 10, overridden_only=False)
    assert [c.id for c in every][:2] == [plain.id, kept.id]
    overridden = [c.id for c in await directory.conversations_after(plain.id - 1, 10, overridden_only=True)]
    assert kept.id in overridden and plain.id not in overridden
    assert [c.id for c in await directory.conversations_after(plain.id, 1, overridden_only=False)] == [kept.id]

    cleared = await directory.update_channel(kept.id, alice.id, ChannelEdit(retention_max_messages=0), allow)
    assert cleared is not None
    assert (cleared.retention_max_age_days, cleared.retention_max_messages) == (30, 0)
