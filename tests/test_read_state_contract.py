"""The contract of read state and unread counts (issue 12): the Directory's
read positions and mute, kept in membership rows, and ``MessageLog.unread``,
on every backend (tests/storage_contract.py binds the fixtures)."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import MemberState, MessageRecord, UnreadAsk
from tests import storage_contract
from tests.storage_contract import NOW, fill, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages

CAP = 100


async def test_new_memberships_start_where_they_are_told(directory: Directory) -> None:
    alice, bob, carol = await new_user(directory), await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    assert await directory.member_state(channel.id, alice.id) == MemberState(
        read_seq=0, muted=False, role="owner"
    )  # the creator owns it
    assert await directory.add_member(channel.id, bob.id, NOW, read_seq=7)
    assert await directory.member_state(channel.id, bob.id) == MemberState(read_seq=7, muted=False)
    assert not await directory.add_member(channel.id, bob.id, NOW, read_seq=9)  # already a member: unchanged
    assert await directory.member_state(channel.id, bob.id) == MemberState(read_seq=7, muted=False)
    assert await directory.member_state(channel.id, carol.id) is None
    dm, created = await directory.open_dm([alice.id, carol.id], alice.id, NOW)
    assert created
    assert await directory.member_state(dm.id, carol.id) == MemberState(read_seq=0, muted=False)


async def test_memberships_of_lists_each_conversation_with_its_state(directory: Directory) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    first, second = await new_channel(directory, alice), await new_channel(directory, bob, private=True)
    await directory.add_member(second.id, alice.id, NOW, read_seq=4)
    dm, _ = await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    await directory.set_muted(dm.id, alice.id, True)
    listed = await directory.memberships_of(alice.id)
    assert [m.conversation for m in listed] == [first, second, dm]
    assert [m.state for m in listed] == [
        MemberState(read_seq=0, muted=False, role="owner"),
        MemberState(read_seq=4, muted=False),
        MemberState(read_seq=0, muted=True),
    ]
    assert [m.conversation.id for m in await directory.memberships_of(bob.id)] == [second.id, dm.id]
    nobody = await new_user(directory)
    assert await directory.memberships_of(nobody.id) == []


async def test_memberships_of_many_is_memberships_of_for_each_user_in_one_call(directory: Directory) -> None:
    alice, bob, carol = await new_user(directory), await new_user(directory), await new_user(directory)
    first, second = await new_channel(directory, alice), await new_channel(directory, bob, private=True)
    await directory.add_member(second.id, alice.id, NOW, read_seq=4)
    await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    nobody = await new_user(directory)
    found = await directory.memberships_of_many([carol.id, bob.id, alice.id, nobody.id, bob.id])
    assert found == {alice.id: await directory.memberships_of(alice.id), bob.id: await directory.memberships_of(bob.id)}
    assert [m.conversation.id for m in found[alice.id]] == sorted(m.conversation.id for m in found[alice.id])
    assert first.id in {m.conversation.id for m in found[alice.id]}
    assert await directory.memberships_of_many([]) == {}


async def test_mark_read_only_moves_forward(directory: Directory) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    moved = await directory.mark_read(channel.id, alice.id, 5, unset_as=10)
    assert moved is not None and moved.moved and moved.state == MemberState(read_seq=5, muted=False, role="owner")
    back = await directory.mark_read(channel.id, alice.id, 3, unset_as=10)
    assert back is not None and not back.moved and back.state.read_seq == 5
    same = await directory.mark_read(channel.id, alice.id, 5, unset_as=10)
    assert same is not None and not same.moved and same.state.read_seq == 5
    on = await directory.mark_read(channel.id, alice.id, 8, unset_as=10)
    assert on is not None and on.moved and on.state.read_seq == 8
    assert await directory.member_state(channel.id, alice.id) == MemberState(read_seq=8, muted=False, role="owner")
    assert await directory.mark_read(channel.id, bob.id, 8, unset_as=10) is None  # not a member
    assert await directory.member_state(channel.id, bob.id) is None


async def test_racing_marks_leave_the_furthest(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    seqs = list(range(1, 41))
    random.Random(12).shuffle(seqs)
    marks = await asyncio.gather(*(directory.mark_read(channel.id, alice.id, s, unset_as=40) for s in seqs))
    for seq, mark in zip(seqs, marks, strict=True):
        assert mark is not None and mark.state.read_seq is not None and mark.state.read_seq >= seq
    assert sum(1 for m in marks if m is not None and m.moved) >= 1
    assert await directory.member_state(channel.id, alice.id) == MemberState(read_seq=40, muted=False, role="owner")


async def test_set_muted_keeps_the_read_position(directory: Directory) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    await directory.mark_read(channel.id, alice.id, 3, unset_as=3)
    assert await directory.set_muted(channel.id, alice.id, True) == MemberState(read_seq=3, muted=True, role="owner")
    assert await directory.set_muted(channel.id, alice.id, True) == MemberState(read_seq=3, muted=True, role="owner")
    assert await directory.set_muted(channel.id, alice.id, False) == MemberState(read_seq=3, muted=False, role="owner")
    assert await directory.set_muted(channel.id, bob.id, True) is None
    assert await directory.member_state(channel.id, bob.id) is None


async def test_init_read_positions_never_overwrites_a_stored_one(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    await directory.mark_read(channel.id, alice.id, 2, unset_as=2)
    await directory.init_read_positions(alice.id, {channel.id: 9})
    assert await directory.member_state(channel.id, alice.id) == MemberState(read_seq=2, muted=False, role="owner")
    await directory.init_read_positions(alice.id, {})


def _deleted(record: MessageRecord) -> MessageRecord:
    return msgspec.structs.replace(record, deleted=True, text="", mentions=(), mention_all=None)


async def test_unread_counts_what_others_sent_in_the_timeline(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    others = await fill(messages, channel, bob, 3)  # seqs 1-3
    await messages.append(new_message(channel, alice, "own"))  # 4: her own never counts
    root = others[0]
    await messages.append(new_message(channel, bob, "reply", thread_root_id=root.id))  # 5: thread only
    await messages.append(new_message(channel, bob, "shown", thread_root_id=root.id, also_in_channel=True))  # 6
    gone = (await messages.append(new_message(channel, bob, "gone"))).record  # 7, deleted below
    assert await messages.change_message(channel.id, gone.id, _deleted) is not None
    mention = new_message(channel, bob, "hey")
    await messages.append(msgspec.structs.replace(mention, mentions=(alice.id,)))  # 8
    everyone = new_message(channel, bob, "all")
    await messages.append(msgspec.structs.replace(everyone, mention_all="here"))  # 9
    other = new_message(channel, bob, "other")
    await messages.append(msgspec.structs.replace(other, mentions=(bob.id,)))  # 10: someone else mentioned

    found = await messages.unread(alice.id, {channel.id: 0}, CAP)
    head = (await messages.heads([channel.id]))[channel.id]
    assert found[channel.id].head == head and head.last_seq == 10
    # 1, 2, 3, 6, 8, 9, 10 count; 8 and 9 mention her.
    assert (found[channel.id].unread_count, found[channel.id].mention_count) == (7, 2)
    after = await messages.unread(alice.id, {channel.id: 6}, CAP)
    assert (after[channel.id].unread_count, after[channel.id].mention_count) == (3, 2)
    at_head = await messages.unread(alice.id, {channel.id: 10}, CAP)
    assert (at_head[channel.id].unread_count, at_head[channel.id].mention_count) == (0, 0)
    # Bob's view of the same conversation: only alice's own message is someone else's.
    of_bob = await messages.unread(bob.id, {channel.id: 0}, CAP)
    assert (of_bob[channel.id].unread_count, of_bob[channel.id].mention_count) == (1, 0)


async def test_an_edit_that_adds_a_mention_counts_as_one(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    (plain,) = await fill(messages, channel, bob, 1)
    assert (await messages.unread(alice.id, {channel.id: 0}, CAP))[channel.id].mention_count == 0

    def mention_alice(record: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(record, text=f"@{alice.username}", mentions=(alice.id,), edited_ts=NOW + 5)

    assert await messages.change_message(channel.id, plain.id, mention_alice) is not None
    counted = (await messages.unread(alice.id, {channel.id: 0}, CAP))[channel.id]
    assert (counted.unread_count, counted.mention_count) == (1, 1)
    assert await messages.change_message(channel.id, plain.id, _deleted) is not None
    gone = (await messages.unread(alice.id, {channel.id: 0}, CAP))[channel.id]
    assert (gone.unread_count, gone.mention_count) == (0, 0)


async def test_unread_counts_saturate_at_the_cap(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    await fill(messages, channel, bob, 12)
    assert (await messages.unread(alice.id, {channel.id: 0}, 5))[channel.id].unread_count == 5
    assert (await messages.unread(alice.id, {channel.id: 0}, 12))[channel.id].unread_count == 12
    assert (await messages.unread(alice.id, {channel.id: 9}, 5))[channel.id].unread_count == 3


async def test_unread_reads_every_conversation_at_once(directory: Directory, messages: MessageLog) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channels = [await new_channel(directory, alice) for _ in range(4)]
    for n, channel in enumerate(channels[:3]):
        await fill(messages, channel, bob, n + 1)
    positions: dict[int, int | None] = {channels[0].id: 0, channels[1].id: 1, channels[2].id: None, channels[3].id: 0}
    found = await messages.unread(alice.id, positions, CAP)
    assert set(found) == {c.id for c in channels[:3]}  # the empty one has no head
    assert found[channels[0].id].unread_count == 1
    assert found[channels[1].id].unread_count == 1
    # No position: only the head.
    assert found[channels[2].id].head.last_seq == 3 and found[channels[2].id].unread_count == 0
    assert await messages.unread(alice.id, {}, CAP) == {}


async def test_unread_many_answers_each_ask_as_unread_would(directory: Directory, messages: MessageLog) -> None:
    alice, bob, carol = await new_user(directory), await new_user(directory), await new_user(directory)
    channels = [await new_channel(directory, alice) for _ in range(3)]
    for n, channel in enumerate(channels[:2]):
        await fill(messages, channel, bob, n + 2)
    mention = new_message(channels[0], carol, "hey alice")
    await messages.append(msgspec.structs.replace(mention, mentions=(alice.id,)))  # channel 0: seqs 1-3
    asks = [
        UnreadAsk(user_id=alice.id, positions=((channels[0].id, 0), (channels[1].id, 1), (channels[2].id, 0))),
        UnreadAsk(user_id=bob.id, positions=((channels[0].id, 0), (channels[1].id, None))),  # bob sent most of it
        UnreadAsk(user_id=carol.id, positions=((channels[0].id, 3),)),  # at the head
        UnreadAsk(user_id=carol.id, positions=((channels[2].id, 0),)),  # nothing in it: no head
        UnreadAsk(user_id=alice.id, positions=()),
    ]
    found = await messages.unread_many([*asks, asks[0]], CAP)  # an ask twice: answered once
    assert set(found) == set(asks)
    for ask in asks:
        assert found[ask] == await messages.unread(ask.user_id, dict(ask.positions), CAP), ask
    assert (found[asks[0]][channels[0].id].unread_count, found[asks[0]][channels[0].id].mention_count) == (3, 1)
    assert found[asks[1]][channels[0].id].unread_count == 1  # carol's mention of alice
    assert found[asks[1]][channels[1].id].unread_count == 0  # no position: only the head
    assert found[asks[1]][channels[1].id].head.last_seq == 3
    assert found[asks[3]] == {} and found[asks[4]] == {}
    capped = await messages.unread_many([asks[0]], 1)
    assert capped[asks[0]][channels[0].id].unread_count == 1
    assert await messages.unread_many([], CAP) == {}


async def test_counts_are_exact_under_concurrent_sends(directory: Directory, messages: MessageLog) -> None:
    alice, bob, carol = await new_user(directory), await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    sends = [messages.append(new_message(channel, sender, f"c{n}")) for n in range(30) for sender in (bob, carol)]
    await asyncio.gather(*sends)
    counted = (await messages.unread(alice.id, {channel.id: 0}, CAP))[channel.id]
    assert counted.head.last_seq >= 60
    assert counted.unread_count == 60


async def test_a_mention_is_of_the_user_not_of_an_id_that_contains_theirs(
    directory: Directory, messages: MessageLog
) -> None:
    alice, bob = await new_user(directory), await new_user(directory)
    channel = await new_channel(directory, alice)
    lookalikes = (alice.id * 10, alice.id * 10 + 1, int(f"1{alice.id}"), int(f"{alice.id}{alice.id}"))
    for n, ids in enumerate((lookalikes, (lookalikes[0], alice.id, lookalikes[1]), (alice.id,))):
        await messages.append(msgspec.structs.replace(new_message(channel, bob, f"m{n}"), mentions=ids))
    counted = (await messages.unread(alice.id, {channel.id: 0}, CAP))[channel.id]
    assert (counted.unread_count, counted.mention_count) == (3, 2)
