"""The contract of the message log's revisions (docs/messages.md): replies and
their roots, get_message, change_message, thread and timeline history, pins,
the change feed and its horizon, heads; and Directory.members_by_username.

Runs once per backend in BACKENDS, like tests/test_storage_contract.py, with
the same fixtures (tests/storage_contract.py). The changes applied here are
pure functions written in the test, so the contract is the store's alone,
not the server's rules (server/message_changes.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest

from hubbub.storage.base import Directory, HistoryOrder, MessageChange, MessageLog
from hubbub.storage.records import REPLIERS_KEPT, ConversationRecord, Head, MessageRecord, Reaction, UserRecord
from tests import storage_contract
from tests.storage_contract import NOW, fill, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


class Refused(Exception):
    """What a change raises to refuse itself, as the server's rules do."""


def add_reaction(emoji: str, user_id: int) -> MessageChange:
    """``user_id`` reacts with ``emoji`` (nothing to do if they already have)."""

    def change(current: MessageRecord) -> MessageRecord | None:
        reactions = list(current.reactions)
        for n, reaction in enumerate(reactions):
            if reaction.emoji == emoji:
                if user_id in reaction.user_ids:
                    return None
                reactions[n] = Reaction(emoji=emoji, user_ids=(*reaction.user_ids, user_id))
                break
        else:
            reactions.append(Reaction(emoji=emoji, user_ids=(user_id,)))
        return msgspec.structs.replace(current, reactions=tuple(reactions))

    return change


def edit(text: str, ts: int) -> MessageChange:
    return lambda current: msgspec.structs.replace(current, text=text, edited_ts=ts)


def pin(by: int, ts: int) -> MessageChange:
    return lambda current: msgspec.structs.replace(current, pinned_by=by, pinned_ts=ts)


def unpin(current: MessageRecord) -> MessageRecord:
    return msgspec.structs.replace(current, pinned_by=None, pinned_ts=None)


def tombstone(current: MessageRecord) -> MessageRecord:
    """What a delete keeps (docs/messages.md)."""
    return msgspec.structs.replace(
        current, text="", deleted=True, mentions=(), mention_all=None, reactions=(), pinned_by=None, pinned_ts=None
    )


def nothing_to_do(current: MessageRecord) -> None:
    return None


def refuse(current: MessageRecord) -> MessageRecord:
    raise Refused("not allowed")


async def append(messages: MessageLog, conversation: ConversationRecord, sender: UserRecord, cid: str) -> MessageRecord:
    appended = await messages.append(new_message(conversation, sender, cid))
    assert not appended.duplicate and appended.root is None
    return appended.record


async def head(messages: MessageLog, conversation: ConversationRecord) -> Head:
    return (await messages.heads([conversation.id]))[conversation.id]


async def changed(
    messages: MessageLog, conversation: ConversationRecord, message: MessageRecord, change: MessageChange
) -> MessageRecord:
    """Apply a change that stores something; the stored record."""
    outcome = await messages.change_message(conversation.id, message.id, change)
    assert outcome is not None
    record, stored = outcome
    assert stored is True
    return record


async def everything(messages: MessageLog, conversation: ConversationRecord) -> list[MessageRecord]:
    return await messages.history(conversation.id, before=None, after=None, limit=10_000, order="asc")


def assert_page_is_ordered_and_below_horizon(page: Sequence[MessageRecord], horizon: int, after_rev: int) -> None:
    revs = [m.rev for m in page]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    assert all(after_rev < rev <= horizon for rev in revs)


# -- revisions of appends ---------------------------------------------------------


async def test_each_new_message_takes_the_next_rev(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    stored = await fill(messages, channel, alice, 5)
    revs = [m.rev for m in stored]
    assert revs == sorted(revs) and len(set(revs)) == 5 and revs[0] >= 1
    assert await head(messages, channel) == Head(last_seq=5, last_rev=revs[-1])
    assert [m.rev for m in await everything(messages, channel)] == revs
    # Each conversation counts its own revisions.
    elsewhere = await append(messages, other, alice, "x")
    assert await head(messages, other) == Head(last_seq=1, last_rev=elsewhere.rev)
    assert await head(messages, channel) == Head(last_seq=5, last_rev=revs[-1])


async def test_a_duplicate_uses_no_seq_and_no_rev(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    original = await append(messages, channel, alice, "once")
    await changed(messages, channel, original, add_reaction("👍", alice.id))
    before = await head(messages, channel)

    again = await messages.append(new_message(channel, alice, "once", "resent"))
    assert again.duplicate is True and again.root is None
    assert again.record == await messages.get_message(channel.id, original.id)  # the original, as it is now
    assert await head(messages, channel) == before

    later = await append(messages, channel, alice, "next")
    assert later.seq == 2 and later.rev > before.last_rev
    assert await head(messages, channel) == Head(last_seq=2, last_rev=later.rev)


# -- replies and their roots ------------------------------------------------------


async def test_a_reply_updates_its_root_under_a_rev_of_its_own(directory: Directory, messages: MessageLog) -> None:
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    channel = await new_channel(directory, alice)
    root = await append(messages, channel, alice, "root")

    async def reply(sender: UserRecord, cid: str, ts: int) -> MessageRecord:
        before = await head(messages, channel)
        appended = await messages.append(new_message(channel, sender, cid, ts=ts, thread_root_id=root.id))
        assert not appended.duplicate
        assert appended.record.thread_root_id == root.id and appended.record.seq == before.last_seq + 1
        assert appended.root is not None
        # Two revisions: the reply's, then its root's.
        assert before.last_rev < appended.record.rev < appended.root.rev
        assert await head(messages, channel) == Head(last_seq=appended.record.seq, last_rev=appended.root.rev)
        assert await messages.get_message(channel.id, root.id) == appended.root
        return appended.root

    first = await reply(bob, "r1", NOW + 10)
    assert (first.reply_count, first.last_reply_ts, first.repliers) == (1, NOW + 10, (bob.id,))
    assert (first.id, first.seq, first.text, first.sender_id) == (root.id, root.seq, root.text, root.sender_id)
    second = await reply(carol, "r2", NOW + 20)
    assert (second.reply_count, second.last_reply_ts, second.repliers) == (2, NOW + 20, (carol.id, bob.id))
    # Bob again: newest first, each replier once; a reply with an older ts keeps the latest reply time.
    third = await reply(bob, "r3", NOW + 15)
    assert (third.reply_count, third.last_reply_ts, third.repliers) == (3, NOW + 20, (bob.id, carol.id))
    # A resent reply is a duplicate: the root is not counted twice.
    resent = await messages.append(new_message(channel, bob, "r3", ts=NOW + 15, thread_root_id=root.id))
    assert resent.duplicate is True and resent.root is None
    assert await messages.get_message(channel.id, root.id) == third


async def test_a_root_keeps_only_the_latest_repliers(directory: Directory, messages: MessageLog) -> None:
    users = [await new_user(directory) for _ in range(REPLIERS_KEPT + 2)]
    channel = await new_channel(directory, users[0])
    root = await append(messages, channel, users[0], "root")
    latest: MessageRecord | None = None
    for n, user in enumerate(users):
        appended = await messages.append(new_message(channel, user, f"r{n}", ts=NOW + n, thread_root_id=root.id))
        latest = appended.root
    assert latest is not None
    assert latest.reply_count == len(users)
    assert latest.repliers == tuple(u.id for u in reversed(users))[:REPLIERS_KEPT]
    assert await messages.get_message(channel.id, root.id) == latest


async def test_a_reply_to_a_missing_root_is_stored_without_one(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    elsewhere = await append(messages, other, alice, "root elsewhere")

    for cid, root_id in (("orphan", "no-such-message"), ("cross", elsewhere.id)):
        appended = await messages.append(new_message(channel, alice, cid, thread_root_id=root_id))
        assert appended.duplicate is False and appended.root is None
        assert appended.record.thread_root_id == root_id
        assert await messages.get_message(channel.id, appended.record.id) == appended.record
        assert await head(messages, channel) == Head(last_seq=appended.record.seq, last_rev=appended.record.rev)
    # A root is looked up in the reply's own conversation only.
    assert await messages.get_message(other.id, elsewhere.id) == elsewhere


# -- get_message and change_message -----------------------------------------------


async def test_get_message_is_scoped_to_its_conversation(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "m")
    assert await messages.get_message(channel.id, record.id) == record
    assert await messages.get_message(other.id, record.id) is None
    assert await messages.get_message(channel.id, "no-such-message") is None


async def test_a_stored_change_takes_the_next_rev(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    first, second = await fill(messages, channel, alice, 2)
    before = await head(messages, channel)

    edited = await changed(messages, channel, first, edit("new text", NOW + 50))
    assert (edited.text, edited.edited_ts) == ("new text", NOW + 50)
    assert (edited.id, edited.seq, edited.ts, edited.client_msg_id) == (
        first.id,
        first.seq,
        first.ts,
        first.client_msg_id,
    )
    assert edited.rev > before.last_rev
    assert await messages.get_message(channel.id, first.id) == edited
    assert await head(messages, channel) == Head(last_seq=before.last_seq, last_rev=edited.rev)
    assert (await everything(messages, channel)) == [edited, second]
    page = await messages.changes(channel.id, after_rev=before.last_rev, limit=10)
    assert (page.messages, page.horizon) == ([edited], edited.rev)


async def test_a_change_with_nothing_to_do_stores_nothing(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "m")
    before = await head(messages, channel)
    assert await messages.change_message(channel.id, record.id, nothing_to_do) == (record, False)
    reacted = await changed(messages, channel, record, add_reaction("👍", alice.id))
    after_reaction = await head(messages, channel)
    # Reacting again with the same emoji is nothing to do: no revision used.
    assert await messages.change_message(channel.id, record.id, add_reaction("👍", alice.id)) == (reacted, False)
    assert await head(messages, channel) == after_reaction
    assert after_reaction.last_rev == reacted.rev > before.last_rev


async def test_changing_a_missing_message_is_none(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "m")
    before = await head(messages, channel)
    assert await messages.change_message(channel.id, "no-such-message", tombstone) is None
    assert await messages.change_message(other.id, record.id, tombstone) is None
    assert await messages.get_message(channel.id, record.id) == record
    assert await head(messages, channel) == before
    assert await messages.heads([other.id]) == {}


async def test_a_refused_change_propagates_and_stores_nothing(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "m")
    before = await head(messages, channel)
    with pytest.raises(Refused, match="not allowed"):
        await messages.change_message(channel.id, record.id, refuse)
    assert await messages.get_message(channel.id, record.id) == record
    assert await head(messages, channel) == before
    # The store goes on: the next change is stored under the next revision.
    edited = await changed(messages, channel, record, edit("after", NOW + 5))
    assert edited.rev > before.last_rev
    assert await messages.get_message(channel.id, record.id) == edited


async def test_every_state_field_round_trips(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "m")

    def everything_set(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(
            current,
            text="edited ✏️ with @bob",
            edited_ts=NOW + 7,
            mentions=(bob.id, alice.id),
            mention_all="here",
            reactions=(Reaction(emoji="👍", user_ids=(bob.id, alice.id)), Reaction(emoji="🎉", user_ids=(alice.id,))),
            pinned_by=bob.id,
            pinned_ts=NOW + 8,
            reply_count=3,
            last_reply_ts=NOW + 6,
            repliers=(bob.id, alice.id),
        )

    full = await changed(messages, channel, record, everything_set)
    assert full == msgspec.structs.replace(everything_set(record), rev=full.rev)
    assert await messages.get_message(channel.id, record.id) == full
    assert await everything(messages, channel) == [full]
    assert await messages.pins(channel.id, 10) == [full]
    assert (await messages.changes(channel.id, after_rev=0, limit=10)).messages == [full]

    # A tombstone: the text is gone, identity, thread fields and reply count stay.
    gone = await changed(messages, channel, full, tombstone)
    assert (gone.text, gone.deleted, gone.mentions, gone.mention_all, gone.reactions) == ("", True, (), None, ())
    assert (gone.pinned_by, gone.pinned_ts) == (None, None)
    assert (gone.id, gone.seq, gone.sender_id, gone.ts) == (record.id, record.seq, record.sender_id, record.ts)
    assert (gone.reply_count, gone.repliers, gone.edited_ts) == (3, (bob.id, alice.id), NOW + 7)
    assert gone.rev > full.rev
    assert await messages.get_message(channel.id, record.id) == gone
    assert await everything(messages, channel) == [gone]
    assert await messages.pins(channel.id, 10) == []


# -- history of threads and of the main timeline ----------------------------------


async def test_history_of_a_thread_and_of_the_timeline(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    root = await append(messages, channel, alice, "root")
    other_root = await append(messages, channel, bob, "other root")
    replies = []
    for n in range(4):
        shown = n == 2
        appended = await messages.append(
            new_message(channel, bob, f"r{n}", thread_root_id=root.id, also_in_channel=shown)
        )
        replies.append(appended.record)
    side = (await messages.append(new_message(channel, alice, "side", thread_root_id=other_root.id))).record
    plain = await append(messages, channel, alice, "plain")
    updated_root = await messages.get_message(channel.id, root.id)
    updated_other = await messages.get_message(channel.id, other_root.id)
    assert updated_root is not None and updated_root.reply_count == 4
    assert updated_other is not None

    async def read(
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
        order: HistoryOrder = "asc",
        thread_root_id: str | None = None,
        include_replies: bool = True,
    ) -> list[MessageRecord]:
        return await messages.history(
            channel.id,
            before=before,
            after=after,
            limit=limit,
            order=order,
            thread_root_id=thread_root_id,
            include_replies=include_replies,
        )

    assert await read(thread_root_id=root.id) == replies
    assert await read(thread_root_id=root.id, order="desc") == replies[::-1]
    assert await read(thread_root_id=root.id, limit=2) == replies[:2]
    assert await read(thread_root_id=root.id, after=replies[0].seq, before=replies[3].seq) == replies[1:3]
    assert await read(thread_root_id=other_root.id) == [side]
    assert await read(thread_root_id=plain.id) == []
    # The main timeline: roots and plain messages, and replies shown in the channel too.
    assert await read(include_replies=False) == [updated_root, updated_other, replies[2], plain]
    assert await read(include_replies=False, order="desc", limit=2) == [plain, replies[2]]
    # Everything, by default.
    assert await read() == [updated_root, updated_other, *replies, side, plain]


# -- pins ---------------------------------------------------------------------------


async def test_pins_are_the_most_recently_pinned_first(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    first, second, third, _unpinned = await fill(messages, channel, alice, 4)
    assert await messages.pins(channel.id, 10) == []
    # Pinned out of seq order: the order is the pin's time.
    pinned_third = await changed(messages, channel, third, pin(alice.id, NOW + 100))
    pinned_first = await changed(messages, channel, first, pin(alice.id, NOW + 200))
    pinned_second = await changed(messages, channel, second, pin(alice.id, NOW + 300))
    assert await messages.pins(channel.id, 10) == [pinned_second, pinned_first, pinned_third]
    assert await messages.pins(channel.id, 2) == [pinned_second, pinned_first]
    await changed(messages, channel, pinned_first, unpin)
    assert await messages.pins(channel.id, 10) == [pinned_second, pinned_third]
    elsewhere = await append(messages, other, alice, "elsewhere")
    assert await messages.pins(other.id, 10) == []
    pinned_elsewhere = await changed(messages, other, elsewhere, pin(alice.id, NOW + 400))
    assert await messages.pins(other.id, 10) == [pinned_elsewhere]
    assert await messages.pins(channel.id, 10) == [pinned_second, pinned_third]


# -- the change feed ------------------------------------------------------------------


async def test_changes_page_oldest_change_first(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    empty = await new_channel(directory, alice)
    stored = await fill(messages, channel, alice, 5)
    await changed(messages, channel, stored[1], edit("once", NOW + 10))
    twice = await changed(messages, channel, stored[1], edit("twice", NOW + 20))
    reacted = await changed(messages, channel, stored[3], add_reaction("👀", alice.id))
    current = await head(messages, channel)

    page = await messages.changes(channel.id, after_rev=0, limit=100)
    # Each message once, with its latest state; the edited twice at its latest rev.
    assert page.messages == [stored[0], stored[2], stored[4], twice, reacted]
    assert page.horizon == current.last_rev == reacted.rev
    assert_page_is_ordered_and_below_horizon(page.messages, page.horizon, 0)

    # Paging by the last rev read collects the same, a page at a time.
    seen: list[MessageRecord] = []
    after = 0
    while True:
        chunk = await messages.changes(channel.id, after_rev=after, limit=2)
        assert len(chunk.messages) <= 2
        assert_page_is_ordered_and_below_horizon(chunk.messages, chunk.horizon, after)
        if not chunk.messages:
            assert chunk.horizon == current.last_rev
            break
        seen.extend(chunk.messages)
        after = chunk.messages[-1].rev
    assert seen == page.messages

    later = await messages.changes(channel.id, after_rev=stored[4].rev, limit=100)
    assert later.messages == [twice, reacted]
    caught_up = await messages.changes(channel.id, after_rev=page.horizon, limit=100)
    assert (caught_up.messages, caught_up.horizon) == ([], page.horizon)
    nothing = await messages.changes(empty.id, after_rev=0, limit=100)
    assert (nothing.messages, nothing.horizon) == ([], 0)


async def test_heads_of_several_conversations(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    busy, quiet, empty = [await new_channel(directory, alice) for _ in range(3)]
    busy_messages = await fill(messages, busy, alice, 3)
    (quiet_message,) = await fill(messages, quiet, alice, 1)
    edited = await changed(messages, busy, busy_messages[0], edit("edited", NOW + 3))
    assert await messages.heads([busy.id, quiet.id, empty.id]) == {
        busy.id: Head(last_seq=3, last_rev=edited.rev),
        quiet.id: Head(last_seq=1, last_rev=quiet_message.rev),
    }
    assert edited.rev > busy_messages[-1].rev
    assert await messages.heads([empty.id]) == {}


# -- concurrency ------------------------------------------------------------------------


async def test_concurrent_reactions_are_all_applied(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    record = await append(messages, channel, alice, "popular")
    users = [1000 + n for n in range(20)]

    outcomes = await asyncio.gather(
        *(messages.change_message(channel.id, record.id, add_reaction("🔥", user)) for user in users)
    )
    results = [outcome for outcome in outcomes if outcome is not None]
    assert len(results) == 20 and all(stored for _, stored in results)
    revs = [r.rev for r, _ in results]
    assert len(set(revs)) == 20 and min(revs) > record.rev
    final = await messages.get_message(channel.id, record.id)
    assert final is not None
    (reaction,) = final.reactions
    assert reaction.emoji == "🔥" and sorted(reaction.user_ids) == users
    assert final.rev == max(revs)
    assert (await head(messages, channel)).last_rev >= final.rev
    page = await messages.changes(channel.id, after_rev=0, limit=100)
    assert page.messages == [final]


async def test_concurrent_appends_replies_and_changes_keep_revs_unique(
    directory: Directory, messages: MessageLog
) -> None:
    users = [await new_user(directory) for _ in range(4)]
    channel = await new_channel(directory, users[0])
    seeded = await fill(messages, channel, users[0], 5)
    root = seeded[0]

    appends = [messages.append(new_message(channel, users[n % 4], f"a-{n}")) for n in range(40)]
    replies = [
        messages.append(new_message(channel, users[n % 4], f"r-{n}", ts=NOW + n, thread_root_id=root.id))
        for n in range(20)
    ]
    reactions = [messages.change_message(channel.id, seeded[n % 5].id, add_reaction("✅", 2000 + n)) for n in range(40)]
    await asyncio.gather(*appends, *replies, *reactions)

    stored = await everything(messages, channel)
    assert len(stored) == 5 + 40 + 20
    revs = [m.rev for m in stored]
    assert len(set(revs)) == len(revs), "two messages of one conversation share a rev"
    final_root = next(m for m in stored if m.id == root.id)
    assert final_root.reply_count == 20
    for n, message in enumerate(seeded):
        now = next(m for m in stored if m.id == message.id)
        (reaction,) = now.reactions
        assert sorted(reaction.user_ids) == [2000 + k for k in range(40) if k % 5 == n]
    current = await head(messages, channel)
    assert current.last_seq == len(stored) and current.last_rev >= max(revs)

    page = await messages.changes(channel.id, after_rev=0, limit=1000)
    assert sorted(page.messages, key=lambda m: m.seq) == stored
    assert_page_is_ordered_and_below_horizon(page.messages, page.horizon, 0)
    assert page.horizon == current.last_rev


# -- mentions --------------------------------------------------------------------------


async def test_members_by_username(directory: Directory) -> None:
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, carol)
    await directory.add_member(channel.id, bob.id, NOW)
    names = [alice.username, bob.username, carol.username, "ghost", bob.username]
    assert await directory.members_by_username(channel.id, names) == {alice.username: alice.id, bob.username: bob.id}
    assert await directory.members_by_username(other.id, names) == {carol.username: carol.id}
    assert await directory.members_by_username(channel.id, ["ghost"]) == {}
    assert await directory.members_by_username(channel.id, []) == {}
    await directory.remove_member(channel.id, bob.id)
    assert await directory.members_by_username(channel.id, [bob.username]) == {}
