"""Direct messages: one conversation per set of users, visible to them alone."""

from __future__ import annotations

import itertools

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error, settled_events, uid

pytestmark = pytest.mark.all_backends


async def open_dm(client: Client, *others: Client) -> frames.Conversation:
    conversation: frames.Conversation = (await client.call("dm.open", user_ids=[uid(o) for o in others])).conversation
    return conversation


async def test_open_with_one_other(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    dm = await open_dm(alice, bob)
    assert dm.kind == "dm"
    assert dm.name is None
    assert dm.private is True
    assert dm.member is True
    assert dm.created_by == uid(alice)
    assert dm.last_seq == 0
    assert dm.member_ids == sorted([uid(alice), uid(bob)])

    for client in (alice, bob):
        added = await client.next_event(frames.ConversationAdded)
        assert added.conversation.id == dm.id
        assert added.by == uid(alice)
        assert added.conversation.member_ids == dm.member_ids

    # Reopening, from either side, is the same conversation and announces nothing.
    assert (await open_dm(alice, bob)).id == dm.id
    assert (await open_dm(bob, alice)).id == dm.id
    for client in (alice, bob):
        assert not [e for e in await settled_events(client) if isinstance(e, frames.ConversationAdded)]


async def test_participants_exchange_messages(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    dm = await open_dm(alice, bob)
    ack = await alice.call("message.send", conversation_id=dm.id, text="hey bob", client_msg_id="1")
    # Every participant's connection gets message.new, the sender's included.
    for client in (alice, bob):
        assert (await client.next_event(frames.MessageNew)).message == ack.message
    reply = await bob.call("message.send", conversation_id=dm.id, text="hey alice", client_msg_id="1")
    assert reply.message.seq == 2
    for client in (alice, bob):
        assert (await client.next_event(frames.MessageNew)).message == reply.message
    for client in (alice, bob):
        page = await client.call("message.history", conversation_id=dm.id, order="asc")
        assert [m.text for m in page.messages] == ["hey bob", "hey alice"]


async def test_group_dm_same_set_any_order_any_participant(server: RunningServer) -> None:
    users = [await server.user() for _ in range(4)]
    first = await open_dm(users[0], users[1], users[2], users[3])
    assert first.member_ids == sorted(uid(u) for u in users)
    for user in users:
        added = await user.next_event(frames.ConversationAdded)
        assert added.conversation.id == first.id

    for opener in users:
        others = [u for u in users if u is not opener]
        for order in itertools.permutations(others):
            assert (await open_dm(opener, *order)).id == first.id
    # Naming yourself and repeating a user changes nothing.
    ids = [uid(u) for u in users] + [uid(users[1])]
    again = (await users[0].call("dm.open", user_ids=ids)).conversation
    assert again.id == first.id

    # A different set is a different conversation.
    pair = await open_dm(users[0], users[1])
    trio = await open_dm(users[0], users[1], users[2])
    assert len({first.id, pair.id, trio.id}) == 3

    ack = await users[2].call("message.send", conversation_id=first.id, text="all four", client_msg_id="x")
    for user in users:
        new = await user.next_event(frames.MessageNew)
        assert new.message.id == ack.message.id


async def test_eight_others_is_the_limit(server: RunningServer) -> None:
    users = [await server.user() for _ in range(10)]
    opener, others = users[0], users[1:]
    dm = await open_dm(opener, *others[:8])
    assert dm.member_ids is not None and len(dm.member_ids) == 9
    await expect_error(opener, "bad_request", "dm.open", user_ids=[uid(u) for u in others[:9]])
    await expect_error(opener, "bad_request", "dm.open", user_ids=[])
    listed = (await opener.call("dm.list")).conversations
    assert [c.id for c in listed] == [dm.id]


async def test_self_only_is_bad_request(server: RunningServer) -> None:
    alice = await server.user()
    await expect_error(alice, "bad_request", "dm.open", user_ids=[uid(alice)])
    await expect_error(alice, "bad_request", "dm.open", user_ids=[uid(alice), uid(alice)])
    assert (await alice.call("dm.list")).conversations == []


async def test_unknown_user_is_not_found(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    await expect_error(alice, "not_found", "dm.open", user_ids=[999_999])
    await expect_error(alice, "not_found", "dm.open", user_ids=[uid(bob), 999_999])
    assert (await alice.call("dm.list")).conversations == []
    assert not [e for e in await settled_events(bob) if isinstance(e, frames.ConversationAdded)]


async def test_non_participant_cannot_see_it(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    eve = await server.user()
    dm = await open_dm(alice, bob)
    await alice.call("message.send", conversation_id=dm.id, text="private", client_msg_id="1")

    await expect_error(eve, "not_found", "message.send", conversation_id=dm.id, text="hi", client_msg_id="1")
    await expect_error(eve, "not_found", "message.history", conversation_id=dm.id)
    await expect_error(eve, "not_found", "channel.join", channel_id=dm.id)
    await expect_error(eve, "not_found", "channel.members", channel_id=dm.id)
    await expect_error(eve, "not_found", "channel.invite", channel_id=dm.id, user_id=uid(eve))
    assert (await eve.call("dm.list")).conversations == []
    assert dm.id not in {c.id for c in (await eve.call("channel.list")).conversations}
    # Participants cannot invite anyone into a DM either: a new set is a new DM.
    await expect_error(alice, "not_found", "channel.invite", channel_id=dm.id, user_id=uid(eve))

    await alice.call("message.send", conversation_id=dm.id, text="still private", client_msg_id="2")
    events = await settled_events(eve)
    assert not [e for e in events if isinstance(e, frames.MessageNew | frames.ConversationAdded)]
    page = await bob.call("message.history", conversation_id=dm.id)
    assert [m.text for m in page.messages] == ["still private", "private"]


async def test_dm_list(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    carol = await server.user()
    await alice.call("channel.create", name=unique_name("room"))  # channels are not listed
    with_bob = await open_dm(alice, bob)
    with_both = await open_dm(carol, alice, bob)
    await bob.call("message.send", conversation_id=with_both.id, text="1", client_msg_id="1")
    await carol.call("message.send", conversation_id=with_both.id, text="2", client_msg_id="2")

    listed = {c.id: c for c in (await alice.call("dm.list")).conversations}
    assert set(listed) == {with_bob.id, with_both.id}
    assert listed[with_bob.id].member_ids == sorted([uid(alice), uid(bob)])
    assert listed[with_both.id].member_ids == sorted([uid(alice), uid(bob), uid(carol)])
    assert listed[with_both.id].last_seq == 2
    assert listed[with_bob.id].last_seq == 0
    assert all(c.kind == "dm" and c.member and c.private for c in listed.values())

    carol_listed = [c.id for c in (await carol.call("dm.list")).conversations]
    assert carol_listed == [with_both.id]
