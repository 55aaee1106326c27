"""Read state and unread counts (issue 12), end to end: conversation.mark_read,
conversation.mute, their events to the user's other connections, and the
read state every listing carries, over real sockets against one real shared_server
per store combination (shared by the module's tests: each makes its own
users and conversations), with a small unread cap so that it can be reached.
Two instances: tests/test_read_state_cluster.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer, unique_name
from tests.helpers import assert_serving, expect_error, settled_events, uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("read_state")]

CAP = 5
LIMITS: dict[str, Any] = {"unread_count_cap": CAP}
PASSWORD = "correct horse"


async def with_device(shared_server: RunningServer) -> tuple[Client, Client]:
    """A new user's two connections (say, laptop and phone)."""
    laptop = await shared_server.client()
    session = await laptop.register(unique_name("reader"), PASSWORD)
    phone = await shared_server.client()
    await phone.auth(session.token)
    return laptop, phone


async def channel_of(client: Client, channel_id: int) -> frames.Conversation:
    listed: frames.ConversationList = await client.call("channel.list")
    (found,) = [c for c in listed.conversations if c.id == channel_id]
    return found


async def dm_of(client: Client, dm_id: int) -> frames.Conversation:
    listed: frames.ConversationList = await client.call("dm.list")
    (found,) = [c for c in listed.conversations if c.id == dm_id]
    return found


def counts(view: frames.Conversation) -> tuple[int, int, int, bool]:
    return view.read_seq, view.unread_count, view.mention_count, view.muted


async def new_channel(owner: Client, *, private: bool = False) -> int:
    created: frames.ConversationResult = await owner.call("channel.create", name=unique_name("room"), private=private)
    return created.conversation.id


async def send(client: Client, conversation_id: int, text: str, **fields: Any) -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=conversation_id, text=text, client_msg_id=unique_name("m"), **fields
    )
    return ack.message


def read_events(events: list[frames.ServerFrame]) -> list[frames.ConversationRead]:
    return [e for e in events if isinstance(e, frames.ConversationRead)]


# -- where read positions start, and what the listings carry -------------------------------


async def test_the_creator_starts_at_zero_and_sees_what_others_send(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    created: frames.ConversationResult = await alice.call("channel.create", name=unique_name("room"))
    assert counts(created.conversation) == (0, 0, 0, False)
    room = created.conversation.id
    await bob.call("channel.join", channel_id=room)
    await send(alice, room, "mine")  # her own: never unread to her
    for n in range(2):
        await send(bob, room, f"hello {n}")
    await send(bob, room, f"@{alice.user.username if alice.user else ''} look")
    assert counts(await channel_of(alice, room)) == (0, 3, 1, False)
    view = await channel_of(alice, room)
    assert view.last_seq == 4 and view.member


async def test_a_joiner_starts_at_the_head(shared_server: RunningServer) -> None:
    alice, carol = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    for n in range(3):
        await send(alice, room, f"before {n}")
    joined: frames.ConversationResult = await carol.call("channel.join", channel_id=room)
    assert counts(joined.conversation) == (3, 0, 0, False)
    again: frames.ConversationResult = await carol.call("channel.join", channel_id=room)  # already: her state
    assert counts(again.conversation) == (3, 0, 0, False)
    await send(alice, room, "after")
    assert counts(await channel_of(carol, room)) == (3, 1, 0, False)


async def test_an_invitee_starts_at_the_head_in_conversation_added(shared_server: RunningServer) -> None:
    alice, dave = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice, private=True)
    await send(alice, room, "secret history")
    await settled_events(dave)
    await alice.call("channel.invite", channel_id=room, user_id=uid(dave))
    added = await dave.next_event(frames.ConversationAdded)
    assert added.conversation.id == room and counts(added.conversation) == (1, 0, 0, False)
    assert counts(await channel_of(dave, room)) == (1, 0, 0, False)


async def test_public_channels_of_others_carry_no_read_state(shared_server: RunningServer) -> None:
    alice, stranger = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    await send(alice, room, "hello")
    view = await channel_of(stranger, room)
    assert not view.member and view.last_seq == 1 and counts(view) == (0, 0, 0, False)


async def test_dms_carry_read_state(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    opened: frames.ConversationResult = await alice.call("dm.open", user_ids=[uid(bob)])
    dm = opened.conversation.id
    assert counts(opened.conversation) == (0, 0, 0, False)
    await send(bob, dm, "hi")
    await send(bob, dm, "there")
    assert counts(await dm_of(alice, dm)) == (0, 2, 0, False)
    reopened: frames.ConversationResult = await alice.call("dm.open", user_ids=[uid(bob)])
    assert counts(reopened.conversation) == (0, 2, 0, False)
    await alice.call("conversation.mark_read", conversation_id=dm, seq=2)
    assert counts(await dm_of(alice, dm)) == (2, 0, 0, False)
    assert counts(await dm_of(bob, dm)) == (0, 0, 0, False)  # his own messages


async def test_counts_saturate_at_the_cap(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    await bob.call("channel.join", channel_id=room)
    for n in range(CAP + 3):
        await send(bob, room, f"@{alice.user.username if alice.user else ''} {n}")
    view = await channel_of(alice, room)
    assert view.last_seq == CAP + 3 and counts(view) == (0, CAP, CAP, False)
    marked: frames.ReadState = await alice.call("conversation.mark_read", conversation_id=room, seq=CAP)
    assert (marked.read_seq, marked.unread_count, marked.mention_count) == (CAP, 3, 3)


# -- what counts --------------------------------------------------------------------------


async def test_thread_replies_count_only_when_also_in_the_channel(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    await bob.call("channel.join", channel_id=room)
    root = await send(alice, room, "a question")
    await send(bob, room, "in the thread", thread_root_id=root.id)
    assert counts(await channel_of(alice, room)) == (0, 0, 0, False)
    await send(bob, room, "also in the channel", thread_root_id=root.id, also_in_channel=True)
    assert counts(await channel_of(alice, room)) == (0, 1, 0, False)


async def test_an_edit_adding_a_mention_counts_and_a_delete_uncounts(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    await bob.call("channel.join", channel_id=room)
    first = await send(bob, room, "hello")
    second = await send(bob, room, "world")
    assert counts(await channel_of(alice, room)) == (0, 2, 0, False)
    name = alice.user.username if alice.user else ""
    await bob.call("message.edit", conversation_id=room, message_id=first.id, text=f"hello @{name}")
    assert counts(await channel_of(alice, room)) == (0, 2, 1, False)
    await bob.call("message.delete", conversation_id=room, message_id=second.id)
    assert counts(await channel_of(alice, room)) == (0, 1, 1, False)
    await bob.call("message.delete", conversation_id=room, message_id=first.id)
    assert counts(await channel_of(alice, room)) == (0, 0, 0, False)


async def test_channel_and_here_mentions_count(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice)
    await bob.call("channel.join", channel_id=room)
    await send(bob, room, "@channel meeting")
    await send(bob, room, "@here anyone?")
    await send(bob, room, "no mention")
    assert counts(await channel_of(alice, room)) == (0, 3, 2, False)


# -- conversation.mark_read ---------------------------------------------------------------


async def test_mark_read_moves_forward_and_tells_every_device(shared_server: RunningServer) -> None:
    laptop, phone = await with_device(shared_server)
    bob = await shared_server.user()
    room = await new_channel(bob)
    await laptop.call("channel.join", channel_id=room)
    for n in range(4):
        await send(bob, room, f"m{n}")
    await settled_events(laptop)
    await settled_events(phone)

    marked: frames.ReadState = await laptop.call("conversation.mark_read", conversation_id=room, seq=3)
    assert marked == frames.ReadState(conversation_id=room, read_seq=3, unread_count=1, mention_count=0)
    expected = frames.ConversationRead(conversation_id=room, read_seq=3, unread_count=1, mention_count=0)
    assert await phone.next_event(frames.ConversationRead) == expected
    assert read_events(await settled_events(laptop)) == [expected]  # the asking connection too
    assert read_events(await settled_events(bob)) == []  # nobody else
    assert counts(await channel_of(phone, room)) == (3, 1, 0, False)

    # Backwards or in place: nothing changes, nothing is announced.
    for seq in (1, 3):
        stayed: frames.ReadState = await phone.call("conversation.mark_read", conversation_id=room, seq=seq)
        assert stayed == marked
    assert read_events(await settled_events(laptop)) == []
    assert read_events(await settled_events(phone)) == []

    # Past the head: clamped to it.
    done: frames.ReadState = await phone.call("conversation.mark_read", conversation_id=room, seq=1000)
    assert done == frames.ReadState(conversation_id=room, read_seq=4, unread_count=0, mention_count=0)
    assert read_events(await settled_events(laptop)) == [
        frames.ConversationRead(conversation_id=room, read_seq=4, unread_count=0, mention_count=0)
    ]
    assert counts(await channel_of(laptop, room)) == (4, 0, 0, False)


async def test_mark_read_of_an_empty_conversation_stays_at_zero(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    room = await new_channel(alice)
    marked: frames.ReadState = await alice.call("conversation.mark_read", conversation_id=room, seq=10)
    assert marked == frames.ReadState(conversation_id=room, read_seq=0, unread_count=0, mention_count=0)
    assert read_events(await settled_events(alice)) == []


async def test_mark_read_and_mute_refuse_what_the_caller_may_not_see(shared_server: RunningServer) -> None:
    alice, stranger = await shared_server.user(), await shared_server.user()
    public, private = await new_channel(alice), await new_channel(alice, private=True)
    await send(alice, public, "hello")
    for op, fields in (("conversation.mark_read", {"seq": 1}), ("conversation.mute", {"muted": True})):
        await expect_error(stranger, ErrorCode.NOT_FOUND, op, conversation_id=private, **fields)
        await expect_error(stranger, ErrorCode.NOT_FOUND, op, conversation_id=10**9, **fields)
        await expect_error(stranger, ErrorCode.FORBIDDEN, op, conversation_id=public, **fields)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "conversation.mark_read", conversation_id=public, seq=-1)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "conversation.mark_read", conversation_id=public)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "conversation.mute", conversation_id=public, muted="yes")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "conversation.mute", conversation_id=0, muted=True)
    # Nothing changed for anyone.
    assert counts(await channel_of(alice, public)) == (0, 0, 0, False)
    assert read_events(await settled_events(stranger)) == []
    await assert_serving(stranger)


async def test_a_left_channel_is_not_found(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    room = await new_channel(alice, private=True)
    await alice.call("channel.invite", channel_id=room, user_id=uid(bob))
    await bob.call("channel.leave", channel_id=room)
    await bob.next_event(frames.ConversationRemoved)
    await expect_error(bob, ErrorCode.NOT_FOUND, "conversation.mark_read", conversation_id=room, seq=0)


# -- conversation.mute --------------------------------------------------------------------


async def test_mute_is_stored_announced_and_still_delivers(shared_server: RunningServer) -> None:
    laptop, phone = await with_device(shared_server)
    bob = await shared_server.user()
    room = await new_channel(bob)
    await laptop.call("channel.join", channel_id=room)
    await settled_events(phone)

    muted: frames.MuteState = await laptop.call("conversation.mute", conversation_id=room, muted=True)
    assert muted == frames.MuteState(conversation_id=room, muted=True)
    assert await phone.next_event(frames.ConversationMuted) == frames.ConversationMuted(
        conversation_id=room, muted=True
    )
    message = await send(bob, room, "still delivered")
    new = await phone.next_event(frames.MessageNew)
    assert new.message.id == message.id
    assert counts(await channel_of(phone, room)) == (0, 1, 0, True)

    unmuted: frames.MuteState = await phone.call("conversation.mute", conversation_id=room, muted=False)
    assert unmuted == frames.MuteState(conversation_id=room, muted=False)
    event = await laptop.next_event(frames.ConversationMuted)
    assert event == frames.ConversationMuted(conversation_id=room, muted=True)  # the first, then the second
    assert await laptop.next_event(frames.ConversationMuted) == frames.ConversationMuted(
        conversation_id=room, muted=False
    )
    assert counts(await channel_of(laptop, room)) == (0, 1, 0, False)


# -- concurrency --------------------------------------------------------------------------


async def test_marks_racing_sends_keep_counts_exact(shared_server: RunningServer) -> None:
    reader, other_device = await with_device(shared_server)
    writer = await shared_server.user()
    room = await new_channel(writer)
    await reader.call("channel.join", channel_id=room)
    total = 30

    async def sends() -> None:
        await asyncio.gather(*(send(writer, room, f"race {n}") for n in range(total)))

    async def marks(client: Client) -> list[frames.ReadState]:
        results = []
        for seq in range(0, total + 1, 3):
            results.append(await client.call("conversation.mark_read", conversation_id=room, seq=seq))
            await asyncio.sleep(0)
        return results

    _, first, second = await asyncio.gather(sends(), marks(reader), marks(other_device))
    for results in (first, second):
        positions = [r.read_seq for r in results]
        assert positions == sorted(positions)  # each device sees it only move forward
    view = await channel_of(reader, room)
    assert view.last_seq == total
    assert view.unread_count == min(CAP, view.last_seq - view.read_seq)
    final: frames.ReadState = await other_device.call("conversation.mark_read", conversation_id=room, seq=total)
    assert (final.read_seq, final.unread_count) == (total, 0)
    assert counts(await channel_of(reader, room)) == (total, 0, 0, False)


async def test_two_racing_marks_leave_the_furthest(shared_server: RunningServer) -> None:
    laptop, phone = await with_device(shared_server)
    writer = await shared_server.user()
    room = await new_channel(writer)
    await laptop.call("channel.join", channel_id=room)
    for n in range(10):
        await send(writer, room, f"m{n}")
    for _ in range(5):
        low, high = await asyncio.gather(
            laptop.call("conversation.mark_read", conversation_id=room, seq=4),
            phone.call("conversation.mark_read", conversation_id=room, seq=9),
        )
        assert high.read_seq == 9 and low.read_seq in (4, 9)
    assert counts(await channel_of(laptop, room)) == (9, 1, 0, False)
