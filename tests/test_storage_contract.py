"""The contract of storage.base.Directory and storage.base.MessageLog.

Every test here runs once per storage backend, through the server's own
factory (``Settings.storage`` + storage.factory.open_stores), and
speaks only the Protocol types: a backend is added by adding it to the
``backend`` parametrization (conftest.py; BACKENDS in tests/backends.py),
never by copying assertions. Today this module runs on "sqlite"; marking it
``pytest.mark.all_backends`` runs it on every combination in BACKENDS.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.errors import Conflict
from hubbub.storage.records import ChannelEdit, Head, HistoryRead, ProfileUpdate
from tests import storage_contract
from tests.storage_contract import NOW, fill, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

# The fixtures live in tests/storage_contract.py, shared with tests/test_message_changes_contract.py.
stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


async def test_ping(directory: Directory, messages: MessageLog) -> None:
    await directory.ping()
    await messages.ping()
    assert directory.name and messages.name


# -- users ----------------------------------------------------------------------


async def test_create_and_get_users(directory: Directory) -> None:
    alice = await directory.create_user("alice", "Alice A.", "argon2$alice", NOW)
    assert (alice.username, alice.display_name, alice.password_hash) == ("alice", "Alice A.", "argon2$alice")
    assert alice.created_at == NOW
    assert alice.last_seen_at is None
    assert alice.id >= 1
    bob = await directory.create_user("bob", "Bob", "argon2$bob", NOW + 5)
    assert bob.id != alice.id

    assert await directory.get_user(alice.id) == alice
    assert await directory.get_user(bob.id) == bob
    assert await directory.get_user(max(alice.id, bob.id) + 1000) is None
    assert await directory.get_user_by_username("alice") == alice
    assert await directory.get_user_by_username("nobody") is None

    missing = max(alice.id, bob.id) + 1000
    by_id = sorted([alice, bob], key=lambda u: u.id)
    assert await directory.get_users([bob.id, missing, alice.id]) == by_id
    assert await directory.get_users([alice.id]) == [alice]
    assert await directory.get_users([missing]) == []
    assert await directory.get_users([]) == []


async def test_username_conflict(directory: Directory) -> None:
    first = await directory.create_user("taken", "First", "h1", NOW)
    with pytest.raises(Conflict):
        await directory.create_user("taken", "Second", "h2", NOW)
    assert await directory.get_user_by_username("taken") == first


async def test_set_last_seen(directory: Directory) -> None:
    alice = await new_user(directory)
    await directory.set_last_seen(alice.id, NOW + 42)
    stored = await directory.get_user(alice.id)
    assert stored is not None and stored.last_seen_at == NOW + 42
    await directory.set_last_seen(alice.id, NOW + 99)
    (again,) = await directory.get_users([alice.id])
    assert again.last_seen_at == NOW + 99


async def test_set_last_seen_many_writes_each_user_and_no_other(directory: Directory) -> None:
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    await directory.set_last_seen_many({alice.id: NOW + 1, bob.id: NOW + 2, 987654321: NOW + 3})
    by_id = {u.id: u for u in await directory.get_users([alice.id, bob.id, carol.id])}
    assert by_id[alice.id].last_seen_at == NOW + 1
    assert by_id[bob.id].last_seen_at == NOW + 2
    assert by_id[carol.id].last_seen_at is None  # not in the batch: untouched
    await directory.set_last_seen_many({})
    await directory.set_last_seen_many({bob.id: NOW + 7})
    assert (await directory.get_users([bob.id]))[0].last_seen_at == NOW + 7


async def test_sessions_of_reads_users_with_their_conversation_ids(directory: Directory) -> None:
    alice, bob, loner = [await new_user(directory) for _ in range(3)]
    first = await new_channel(directory, alice)
    second = await new_channel(directory, bob)
    await directory.add_member(second.id, alice.id, NOW)
    dm, _ = await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    missing = 987654321
    sessions = await directory.sessions_of([bob.id, alice.id, loner.id, missing, alice.id])
    assert set(sessions) == {alice.id, bob.id, loner.id}  # absent users are left out
    assert sessions[alice.id].user == await directory.get_user(alice.id)
    assert sessions[alice.id].conversation_ids == tuple(sorted((first.id, second.id, dm.id)))
    assert sessions[bob.id].conversation_ids == tuple(sorted((second.id, dm.id)))
    assert sessions[loner.id].conversation_ids == ()
    # The same as the conversations each is a member of, read on its own.
    for user_id, found in sessions.items():
        assert found.conversation_ids == tuple(c.id for c in await directory.conversations_of(user_id))
    ended = await directory.end_sessions(alice.id)
    assert ended is not None
    again = await directory.sessions_of([alice.id])
    assert again[alice.id].user.token_generation == ended.token_generation  # the generation as stored now
    assert await directory.sessions_of([]) == {}


# -- channels -------------------------------------------------------------------


async def test_create_channel_with_creator_as_member(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await directory.create_channel("general", "all things", False, alice.id, NOW)
    assert (channel.kind, channel.name, channel.topic, channel.private) == ("channel", "general", "all things", False)
    assert (channel.created_by, channel.created_at) == (alice.id, NOW)
    assert await directory.get_conversation(channel.id) == channel
    assert await directory.is_member(channel.id, alice.id)
    assert await directory.member_ids(channel.id) == [alice.id]
    private = await directory.create_channel("hidden", "", True, alice.id, NOW)
    assert private.private is True and private.id != channel.id
    assert await directory.get_conversation(private.id + channel.id + 1000) is None


async def test_channel_name_conflict(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    original = await directory.create_channel("dup", "", True, alice.id, NOW)
    with pytest.raises(Conflict):
        await directory.create_channel("dup", "", False, bob.id, NOW)
    assert await directory.conversations_of(bob.id) == []
    assert await directory.member_ids(original.id) == [alice.id]


async def test_public_channels_exclude_private_and_dms(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    public_b = await directory.create_channel("b-public", "", False, alice.id, NOW)
    public_a = await directory.create_channel("a-public", "", False, bob.id, NOW)
    await directory.create_channel("c-private", "", True, alice.id, NOW)
    await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    listed = await directory.public_channels()
    assert sorted(listed, key=lambda c: c.id) == sorted([public_a, public_b], key=lambda c: c.id)


async def test_conversations_of(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    mine = await new_channel(directory, alice)
    secret = await new_channel(directory, alice, private=True)
    theirs = await new_channel(directory, bob)
    joined = await new_channel(directory, bob, private=True)
    await directory.add_member(joined.id, alice.id, NOW)
    dm, _ = await directory.open_dm([alice.id, bob.id], bob.id, NOW)
    await new_channel(directory, bob)  # not alice's

    of_alice = {c.id: c for c in await directory.conversations_of(alice.id)}
    assert set(of_alice) == {mine.id, secret.id, joined.id, dm.id}
    assert of_alice[dm.id] == dm
    assert of_alice[secret.id] == secret
    of_bob = {c.id for c in await directory.conversations_of(bob.id)}
    assert theirs.id in of_bob and dm.id in of_bob and mine.id not in of_bob
    nobody = await new_user(directory)
    assert await directory.conversations_of(nobody.id) == []


# -- administration (hubbub admin) ----------------------------------------------


async def test_list_users_pages_every_user_in_id_order(directory: Directory) -> None:
    users = [await new_user(directory) for _ in range(5)]
    await directory.update_profile(users[1].id, ProfileUpdate(searchable=False))  # listed all the same
    first = await directory.list_users(after_id=0, limit=3)
    assert [u.id for u in first] == [u.id for u in users[:3]]
    assert first[1].searchable is False
    rest = await directory.list_users(after_id=first[-1].id, limit=3)
    assert [u.id for u in rest] == [u.id for u in users[3:]]
    assert await directory.list_users(after_id=users[-1].id, limit=3) == []


async def test_list_channels_and_channel_by_name(directory: Directory) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    public = await new_channel(directory, alice)
    private = await new_channel(directory, alice, private=True)
    archived = await new_channel(directory, alice)
    await directory.update_channel(archived.id, alice.id, ChannelEdit(archived=True), lambda channel, standing: None)
    await directory.open_dm([alice.id, bob.id], alice.id, NOW)  # never listed as a channel
    listed = await directory.list_channels(after_id=0, limit=10)
    assert [c.id for c in listed] == [public.id, private.id, archived.id]
    assert [c.archived for c in listed] == [False, False, True]
    assert [c.id for c in await directory.list_channels(after_id=public.id, limit=1)] == [private.id]
    assert public.name and archived.name
    assert await directory.channel_by_name(public.name) == public
    found = await directory.channel_by_name(archived.name)
    assert found is not None and found.archived
    assert await directory.channel_by_name("no-such-channel") is None


# -- memberships ----------------------------------------------------------------


async def test_add_and_remove_members(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    channel = await new_channel(directory, alice)

    assert await directory.is_member(channel.id, bob.id) is False
    assert await directory.add_member(channel.id, bob.id, NOW) is True
    assert await directory.add_member(channel.id, bob.id, NOW + 1) is False
    assert await directory.is_member(channel.id, bob.id) is True
    assert sorted(await directory.member_ids(channel.id)) == sorted([alice.id, bob.id])

    assert await directory.remove_member(channel.id, bob.id) is True
    assert await directory.remove_member(channel.id, bob.id) is False
    assert await directory.is_member(channel.id, bob.id) is False
    assert await directory.member_ids(channel.id) == [alice.id]
    assert channel.id not in {c.id for c in await directory.conversations_of(bob.id)}
    # Rejoining after leaving works.
    assert await directory.add_member(channel.id, bob.id, NOW + 2) is True


async def test_members_of_many(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    carol = await new_user(directory)
    first = await new_channel(directory, alice)
    await directory.add_member(first.id, carol.id, NOW)
    await directory.add_member(first.id, bob.id, NOW)
    dm, _ = await directory.open_dm([bob.id, carol.id], bob.id, NOW)
    missing = first.id + dm.id + 1000

    many = await directory.members_of_many([first.id, dm.id, missing])
    assert set(many) == {first.id, dm.id}
    assert sorted(many[first.id]) == sorted([alice.id, bob.id, carol.id])
    assert sorted(many[dm.id]) == sorted([bob.id, carol.id])
    assert await directory.members_of_many([]) == {}

    assert await directory.member_counts([first.id, dm.id, missing]) == {first.id: 3, dm.id: 2}
    await directory.remove_member(first.id, carol.id)
    assert await directory.member_counts([first.id]) == {first.id: 2}
    assert await directory.member_counts([]) == {}


# -- DMs ------------------------------------------------------------------------


async def test_open_dm_is_one_per_set(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    carol = await new_user(directory)

    dm, created = await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    assert created is True
    assert (dm.kind, dm.name, dm.private, dm.created_by) == ("dm", None, True, alice.id)
    assert sorted(await directory.member_ids(dm.id)) == sorted([alice.id, bob.id])
    assert await directory.get_conversation(dm.id) == dm

    again, created = await directory.open_dm([alice.id, bob.id], alice.id, NOW + 1)
    assert (again, created) == (dm, False)
    reversed_, created = await directory.open_dm([bob.id, alice.id], bob.id, NOW + 2)
    assert (reversed_, created) == (dm, False)
    repeated, created = await directory.open_dm([bob.id, alice.id, bob.id], bob.id, NOW + 3)
    assert (repeated, created) == (dm, False)

    group, created = await directory.open_dm([carol.id, alice.id, bob.id], carol.id, NOW)
    assert created is True and group.id != dm.id
    same_group, created = await directory.open_dm([bob.id, carol.id, alice.id], alice.id, NOW)
    assert (same_group.id, created) == (group.id, False)
    assert sorted(await directory.member_ids(group.id)) == sorted([alice.id, bob.id, carol.id])


async def test_concurrent_open_dm_creates_one(directory: Directory) -> None:
    users = [await new_user(directory) for _ in range(3)]
    ids = [u.id for u in users]
    results = await asyncio.gather(
        *(directory.open_dm(ids[i % 3 :] + ids[: i % 3], users[i % 3].id, NOW) for i in range(12))
    )
    assert len({record.id for record, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1


# -- messages -------------------------------------------------------------------


async def test_append_assigns_seq_from_one(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)

    stored = await fill(messages, channel, alice, 5)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    assert len({m.id for m in stored}) == 5
    first = stored[0]
    assert (first.conversation_id, first.sender_id, first.client_msg_id) == (channel.id, alice.id, "fill-0")
    assert (first.text, first.ts) == ("text of fill-0", NOW + 1)
    # Each conversation has its own sequence.
    elsewhere = await messages.append(new_message(other, alice, "x"))
    assert elsewhere.record.seq == 1


async def test_duplicate_append_returns_the_original(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    first = await messages.append(new_message(channel, alice, "once", "first text"))
    assert first.duplicate is False
    original = first.record

    again = await messages.append(new_message(channel, alice, "once", "second text"))
    assert again.duplicate is True
    assert again.record == original
    history = await messages.history(channel.id, before=None, after=None, limit=10, order="asc")
    assert history == [original]
    assert await messages.heads([channel.id]) == {channel.id: Head(last_seq=1, last_rev=original.rev)}

    # Scoped by sender and conversation.
    by_bob = await messages.append(new_message(channel, bob, "once"))
    assert by_bob.duplicate is False and by_bob.record.seq == 2
    elsewhere = await messages.append(new_message(other, alice, "once"))
    assert elsewhere.duplicate is False and elsewhere.record.seq == 1


async def test_history(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    stored = await fill(messages, channel, alice, 10)

    async def seqs(**kwargs: Any) -> list[int]:
        options: dict[str, Any] = {"before": None, "after": None, "limit": 100, "order": "desc", **kwargs}
        return [m.seq for m in await messages.history(channel.id, **options)]

    assert await messages.history(channel.id, before=None, after=None, limit=100, order="asc") == stored
    assert await seqs() == list(range(10, 0, -1))
    assert await seqs(order="asc") == list(range(1, 11))
    assert await seqs(limit=3) == [10, 9, 8]
    assert await seqs(limit=3, order="asc") == [1, 2, 3]
    assert await seqs(before=5) == [4, 3, 2, 1]
    assert await seqs(before=5, limit=2) == [4, 3]
    assert await seqs(after=7, order="asc") == [8, 9, 10]
    assert await seqs(after=7) == [10, 9, 8]
    assert await seqs(after=2, before=6, order="asc") == [3, 4, 5]
    assert await seqs(after=2, before=6, limit=2) == [5, 4]
    assert await seqs(after=2, before=6, limit=2, order="asc") == [3, 4]
    assert await seqs(after=0, order="asc", limit=1) == [1]
    assert await seqs(after=10) == []
    assert await seqs(before=1) == []
    assert await seqs(after=5, before=6) == []
    empty = await new_channel(directory, alice)
    assert await messages.history(empty.id, before=None, after=None, limit=10, order="desc") == []


async def test_history_many_answers_each_read_as_history_would(directory: Directory, messages: MessageLog) -> None:
    """A storm's catch-up: many distinct reads, of several conversations, shapes
    and directions, in one call; each read's answer is ``history``'s own."""
    alice = await new_user(directory)
    busy = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    empty = await new_channel(directory, alice)
    stored = await fill(messages, busy, alice, 6)
    root = stored[1]
    for n, shown in enumerate((False, True, False)):
        await messages.append(
            new_message(busy, alice, f"reply-{n}", thread_root_id=root.id, also_in_channel=shown)
        )  # seqs 7, 8, 9: 8 is also in the channel
    await fill(messages, other, alice, 3)

    def read(conversation_id: int, **kwargs: Any) -> HistoryRead:
        options: dict[str, Any] = {"before": None, "after": None, "limit": 100, "order": "asc", **kwargs}
        return HistoryRead(conversation_id=conversation_id, **options)

    reads = [
        read(busy.id),
        read(busy.id, order="desc", limit=3),
        read(busy.id, after=4, order="asc", limit=2),
        read(busy.id, after=2, before=8, order="desc"),
        read(busy.id, include_replies=False),
        read(busy.id, include_replies=False, order="desc", limit=2),
        read(busy.id, thread_root_id=root.id),
        read(busy.id, thread_root_id=root.id, order="desc", limit=2),
        read(busy.id, thread_root_id=root.id, after=7),
        read(other.id, after=1),
        read(other.id, after=3),
        read(empty.id, order="desc"),
    ]
    found = await messages.history_many([*reads, reads[0]])  # a read twice: answered once
    assert set(found) == set(reads)
    for r in reads:
        alone = await messages.history(
            r.conversation_id,
            before=r.before,
            after=r.after,
            limit=r.limit,
            order=r.order,
            thread_root_id=r.thread_root_id,
            include_replies=r.include_replies,
        )
        assert found[r] == alone, r
    seqs = {r: [m.seq for m in found[r]] for r in reads}
    assert seqs[reads[0]] == list(range(1, 10))
    assert seqs[reads[1]] == [9, 8, 7]
    assert seqs[reads[2]] == [5, 6]
    assert seqs[reads[3]] == [7, 6, 5, 4, 3]
    assert seqs[reads[4]] == [1, 2, 3, 4, 5, 6, 8]
    assert seqs[reads[5]] == [8, 6]
    assert seqs[reads[6]] == [7, 8, 9]
    assert seqs[reads[7]] == [9, 8]
    assert seqs[reads[8]] == [8, 9]
    assert seqs[reads[9]] == [2, 3]
    assert seqs[reads[10]] == seqs[reads[11]] == []
    assert await messages.history_many([]) == {}


async def test_heads(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    busy = await new_channel(directory, alice)
    quiet = await new_channel(directory, alice)
    empty = await new_channel(directory, alice)
    busy_messages = await fill(messages, busy, alice, 4)
    (quiet_message,) = await fill(messages, quiet, alice, 1)
    assert await messages.heads([busy.id, quiet.id, empty.id]) == {
        busy.id: Head(last_seq=4, last_rev=busy_messages[-1].rev),
        quiet.id: Head(last_seq=1, last_rev=quiet_message.rev),
    }
    assert await messages.heads([empty.id]) == {}
    assert await messages.heads([]) == {}


async def test_concurrent_appends_are_gapless(directory: Directory, messages: MessageLog) -> None:
    users = [await new_user(directory) for _ in range(4)]
    channel = await new_channel(directory, users[0])
    side = await new_channel(directory, users[0])
    count = 200

    results = await asyncio.gather(
        *(messages.append(new_message(channel, users[n % 4], f"c-{n}")) for n in range(count)),
        *(messages.append(new_message(side, users[n % 4], f"s-{n}")) for n in range(count // 4)),
    )
    main = [appended.record for appended in results[:count]]
    assert all(not appended.duplicate for appended in results)
    assert sorted(m.seq for m in main) == list(range(1, count + 1))
    assert sorted(appended.record.seq for appended in results[count:]) == list(range(1, count // 4 + 1))
    assert len({m.id for m in main}) == count

    history = await messages.history(channel.id, before=None, after=None, limit=count, order="asc")
    assert [m.seq for m in history] == list(range(1, count + 1))
    assert {m.client_msg_id for m in history} == {f"c-{n}" for n in range(count)}
    heads = await messages.heads([channel.id, side.id])
    assert (heads[channel.id].last_seq, heads[side.id].last_seq) == (count, count // 4)


async def test_ordered_appends_keep_submission_order(directory: Directory, messages: MessageLog) -> None:
    """What pipelined sends rely on: appends submitted together get seqs in submission order."""
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    await messages.append(new_message(channel, alice, "first"))  # the conversation's counter exists
    sends = [new_message(channel, (alice, bob)[n % 2], f"o-{n}") for n in range(120)]
    sends.insert(60, sends[10])  # a resend within the burst: the same message again
    results = await asyncio.gather(*(messages.append(m) for m in sends))
    assert (results[60].record, results[60].duplicate) == (results[10].record, True)
    fresh = [appended.record.seq for appended in results if not appended.duplicate]
    assert len(set(fresh)) == 120
    if messages.ordered_appends:
        assert fresh == sorted(fresh)
        history = await messages.history(channel.id, before=None, after=None, limit=200, order="asc")
        assert [m.client_msg_id for m in history] == ["first", *(f"o-{n}" for n in range(120))]


async def test_appends_to_many_conversations_at_once_keep_each_ones_order(
    directory: Directory, messages: MessageLog
) -> None:
    """Group commit across conversations: a burst into 30 conversations (flushes
    spanning conversations, more than one batch, several in flight) keeps each
    conversation's order, seqs from 1 (gapless stores: exactly 1..n), and
    stores each message once."""
    alice, bob = await new_user(directory), await new_user(directory)
    channels = [await new_channel(directory, alice) for _ in range(30)]
    sends = [new_message(channels[n % 30], (alice, bob)[n % 2], f"m-{n}") for n in range(300)]
    results = await asyncio.gather(*(messages.append(m) for m in sends))
    assert not any(appended.duplicate for appended in results)
    for k, channel in enumerate(channels):
        mine = [appended.record for appended in results if appended.record.conversation_id == channel.id]
        assert [m.client_msg_id for m in mine] == [f"m-{n}" for n in range(k, 300, 30)]
        seqs = [m.seq for m in mine]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        if messages.gapless:
            assert seqs == list(range(1, 11))
        history = await messages.history(channel.id, before=None, after=None, limit=50, order="asc")
        assert [m.client_msg_id for m in history] == [m.client_msg_id for m in mine]


async def test_resends_in_a_burst_across_conversations(directory: Directory, messages: MessageLog) -> None:
    """Idempotency across a flush of several conversations: the same client_msg_id
    in two conversations is two messages; a resend in the same burst, or of a
    message stored earlier, is a duplicate of it, whatever the other conversations do."""
    alice = await new_user(directory)
    one = await new_channel(directory, alice)
    two = await new_channel(directory, alice)
    three = await new_channel(directory, alice)
    earlier = await messages.append(new_message(three, alice, "old"))
    burst = [
        new_message(one, alice, "same"),
        new_message(two, alice, "same"),
        new_message(one, alice, "same"),
        new_message(three, alice, "old"),
        new_message(two, alice, "other"),
    ]
    first_one, first_two, again_one, old_again, other = await asyncio.gather(*(messages.append(m) for m in burst))
    assert (first_one.duplicate, first_two.duplicate, other.duplicate) == (False, False, False)
    assert first_one.record.conversation_id == one.id and first_two.record.conversation_id == two.id
    assert (again_one.duplicate, again_one.record) == (True, first_one.record)
    assert (old_again.duplicate, old_again.record) == (True, earlier.record)
    assert other.record.seq > first_two.record.seq
    if messages.gapless:
        assert (first_one.record.seq, first_two.record.seq, other.record.seq) == (1, 1, 2)
    history = await messages.history(three.id, before=None, after=None, limit=10, order="asc")
    assert history == [earlier.record]


async def test_replies_in_a_burst_across_conversations_update_each_root(
    directory: Directory, messages: MessageLog
) -> None:
    """A flush holding replies of several conversations (on PostgreSQL the
    per-conversation function in one statement): each reply updates its own
    root, in order, and plain messages between them keep their seqs."""
    alice, bob = await new_user(directory), await new_user(directory)
    channels = [await new_channel(directory, alice) for _ in range(4)]
    roots = [(await messages.append(new_message(c, alice, f"root-{c.id}"))).record for c in channels]
    sends = [
        new_message(c, (alice, bob)[k % 2], f"r-{c.id}-{k}", thread_root_id=root.id if k % 2 == 0 else None)
        for k in range(4)
        for c, root in zip(channels, roots, strict=True)
    ]
    results = await asyncio.gather(*(messages.append(m) for m in sends))
    for c, root in zip(channels, roots, strict=True):
        mine = [r for r in results if r.record.conversation_id == c.id]
        assert [r.record.client_msg_id for r in mine] == [f"r-{c.id}-{k}" for k in range(4)]
        seqs = [r.record.seq for r in mine]
        assert seqs == sorted(seqs) and seqs[0] > root.seq
        if messages.gapless:
            assert seqs == [2, 3, 4, 5]
        replies = [r for r in mine if r.record.thread_root_id is not None]
        assert [r.root.reply_count for r in replies if r.root is not None] == [1, 2]
        stored_root = await messages.get_message(c.id, root.id)
        assert stored_root is not None and stored_root.reply_count == 2


async def test_concurrent_duplicates_store_once(directory: Directory, messages: MessageLog) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    results = await asyncio.gather(*(messages.append(new_message(channel, alice, "retry")) for _ in range(20)))
    records = {appended.record for appended in results}
    assert len(records) == 1
    assert [appended.duplicate for appended in results].count(False) == 1
    (record,) = records
    if messages.gapless:
        assert record.seq == 1
    assert await messages.history(channel.id, before=None, after=None, limit=10, order="asc") == [record]
    # Burnt or not, later seqs stay above it.
    later = await messages.append(new_message(channel, alice, "next"))
    assert later.record.seq > record.seq
