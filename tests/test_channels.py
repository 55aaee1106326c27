"""Channels: create, list, join, invite, leave, members, and who hears about it."""

from __future__ import annotations

import msgspec
import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error, settled_events, uid

pytestmark = pytest.mark.all_backends


async def second_device(server: RunningServer, first: Client) -> Client:
    assert first.token is not None
    device = await server.client()
    await device.auth(first.token)
    return device


async def send(client: Client, conversation_id: int, text: str) -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=conversation_id, text=text, client_msg_id=unique_name("m")
    )
    return ack.message


# -- create ---------------------------------------------------------------------


async def test_create_public_and_private(server: RunningServer) -> None:
    alice = await server.user()
    public = (await alice.call("channel.create", name="general", topic="all hands")).conversation
    private = (await alice.call("channel.create", name="secret", private=True)).conversation
    assert (public.kind, public.name, public.topic, public.private) == ("channel", "general", "all hands", False)
    assert (private.kind, private.name, private.topic, private.private) == ("channel", "secret", "", True)
    for conv in (public, private):
        assert conv.member is True
        assert conv.created_by == uid(alice)
        assert conv.last_seq == 0
        assert conv.member_ids is None
    assert public.id != private.id
    # The creator is the first member and hears of it on its connection.
    added = [e for e in await settled_events(alice) if isinstance(e, frames.ConversationAdded)]
    assert [e.conversation.id for e in added] == [public.id, private.id]
    members = await alice.call("channel.members", channel_id=private.id)
    assert [m.id for m in members.members] == [uid(alice)]


async def test_create_duplicate_name_conflicts(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    await alice.call("channel.create", name="dup", private=True)
    # Names are global: a private channel's name is taken for everyone.
    await expect_error(bob, "conflict", "channel.create", name="dup")
    await expect_error(alice, "conflict", "channel.create", name="dup", private=True)


@pytest.mark.parametrize("name", ["", "Upper", "-dash-first", "has space", "x" * 81, "emoji\u2603"])
async def test_create_bad_name(server: RunningServer, name: str) -> None:
    alice = await server.user()
    await expect_error(alice, "bad_request", "channel.create", name=name)
    listing = await alice.call("channel.list")
    assert listing.conversations == []


# -- list -----------------------------------------------------------------------


async def test_list_public_and_mine(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    pub_a = (await alice.call("channel.create", name="b-public")).conversation
    priv_a = (await alice.call("channel.create", name="a-private", private=True)).conversation
    priv_b = (await bob.call("channel.create", name="c-bobs-private", private=True)).conversation
    pub_b = (await bob.call("channel.create", name="d-bobs-public")).conversation
    await bob.call("dm.open", user_ids=[uid(alice)])  # DMs are not channels

    alice_view = {c.id: c for c in (await alice.call("channel.list")).conversations}
    assert set(alice_view) == {pub_a.id, priv_a.id, pub_b.id}
    assert priv_b.id not in alice_view
    assert alice_view[pub_a.id].member and alice_view[priv_a.id].member
    assert alice_view[pub_b.id].member is False
    assert alice_view[priv_a.id].private is True

    bob_view = {c.id: c for c in (await bob.call("channel.list")).conversations}
    assert set(bob_view) == {pub_a.id, priv_b.id, pub_b.id}
    assert bob_view[pub_a.id].member is False
    assert bob_view[priv_b.id].member and bob_view[pub_b.id].member

    # After joining, the flag follows.
    await alice.call("channel.join", channel_id=pub_b.id)
    alice_view = {c.id: c for c in (await alice.call("channel.list")).conversations}
    assert alice_view[pub_b.id].member is True


# -- join -----------------------------------------------------------------------


async def test_join_public_notifies_members_and_other_devices(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    bob_phone = await second_device(server, bob)
    channel = (await alice.call("channel.create", name="lobby")).conversation
    await settled_events(alice)
    await settled_events(bob_phone)

    joined = (await bob.call("channel.join", channel_id=channel.id)).conversation
    assert joined.id == channel.id and joined.member is True

    event = await alice.next_event(frames.MemberJoined)
    assert event.conversation_id == channel.id
    assert event.user.id == uid(bob)
    assert event.by is None

    added = await bob_phone.next_event(frames.ConversationAdded)
    assert added.conversation.id == channel.id
    assert added.conversation.member is True
    assert added.by == uid(bob)

    # Both of bob's devices now receive the channel's messages.
    sent = await send(alice, channel.id, "welcome")
    for device in (bob, bob_phone):
        new = await device.next_event(frames.MessageNew)
        assert new.message.id == sent.id

    members = await alice.call("channel.members", channel_id=channel.id)
    assert {m.id for m in members.members} == {uid(alice), uid(bob)}

    # Joining again is a no-op: no second announcement.
    await settled_events(alice)
    again = (await bob.call("channel.join", channel_id=channel.id)).conversation
    assert again.member is True
    assert not [e for e in await settled_events(alice) if isinstance(e, frames.MemberJoined)]


async def test_join_private_uninvited_is_not_found(server: RunningServer) -> None:
    alice = await server.user()
    mallory = await server.user()
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    await expect_error(mallory, "not_found", "channel.join", channel_id=secret.id)
    await expect_error(mallory, "not_found", "channel.join", channel_id=secret.id + 1000)
    members = await alice.call("channel.members", channel_id=secret.id)
    assert [m.id for m in members.members] == [uid(alice)]


async def test_join_a_dm_is_not_found(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    dm = (await alice.call("dm.open", user_ids=[uid(bob)])).conversation
    await expect_error(alice, "not_found", "channel.join", channel_id=dm.id)
    await expect_error(alice, "not_found", "channel.members", channel_id=dm.id)


# -- invite ---------------------------------------------------------------------


async def test_invite_private(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    await settled_events(alice)

    assert await alice.call("channel.invite", channel_id=secret.id, user_id=uid(bob)) == frames.Empty()

    added = await bob.next_event(frames.ConversationAdded)
    assert added.conversation.id == secret.id
    assert added.conversation.private is True
    assert added.conversation.member is True
    assert added.by == uid(alice)
    joined = await alice.next_event(frames.MemberJoined)
    assert (joined.conversation_id, joined.user.id, joined.by) == (secret.id, uid(bob), uid(alice))

    # Routed at once: the very next message reaches the invitee.
    sent = await send(alice, secret.id, "psst")
    new = await bob.next_event(frames.MessageNew)
    assert new.message.id == sent.id
    # And the invitee may speak and see the channel.
    reply = await send(bob, secret.id, "hi")
    assert reply.seq == sent.seq + 1
    listing = {c.id: c for c in (await bob.call("channel.list")).conversations}
    assert listing[secret.id].member is True


async def test_invite_into_private_by_non_member_is_not_found(server: RunningServer) -> None:
    alice = await server.user()
    mallory = await server.user()
    victim = await server.user()
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    await expect_error(mallory, "not_found", "channel.invite", channel_id=secret.id, user_id=uid(victim))
    await expect_error(mallory, "not_found", "channel.invite", channel_id=secret.id, user_id=uid(mallory))
    members = await alice.call("channel.members", channel_id=secret.id)
    assert [m.id for m in members.members] == [uid(alice)]
    assert not [e for e in await settled_events(victim) if isinstance(e, frames.ConversationAdded)]


async def test_invite_unknown_user_is_not_found(server: RunningServer) -> None:
    alice = await server.user()
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    public = (await alice.call("channel.create", name="public")).conversation
    for channel in (secret, public):
        err = await expect_error(alice, "not_found", "channel.invite", channel_id=channel.id, user_id=999_999)
        assert "user" in err.message


async def test_invite_into_public_by_non_member_is_forbidden(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    carol = await server.user()
    public = (await alice.call("channel.create", name="public")).conversation
    await expect_error(bob, "forbidden", "channel.invite", channel_id=public.id, user_id=uid(carol))
    members = await alice.call("channel.members", channel_id=public.id)
    assert [m.id for m in members.members] == [uid(alice)]
    # A member may invite into a public channel.
    await bob.call("channel.join", channel_id=public.id)
    await bob.call("channel.invite", channel_id=public.id, user_id=uid(carol))
    added = await carol.next_event(frames.ConversationAdded)
    assert added.conversation.id == public.id and added.by == uid(bob)


# -- leave ----------------------------------------------------------------------


async def test_leave(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    bob_phone = await second_device(server, bob)
    channel = (await alice.call("channel.create", name="room")).conversation
    await bob.call("channel.join", channel_id=channel.id)
    await alice.next_event(frames.MemberJoined)
    await bob_phone.next_event(frames.ConversationAdded)

    assert await bob.call("channel.leave", channel_id=channel.id) == frames.Empty()

    left = await alice.next_event(frames.MemberLeft)
    assert (left.conversation_id, left.user_id) == (channel.id, uid(bob))
    for device in (bob, bob_phone):
        removed = await device.next_event(frames.ConversationRemoved)
        assert removed.conversation_id == channel.id

    # Neither of bob's devices receives the channel any more; alice still does.
    sent = await send(alice, channel.id, "after bob left")
    assert (await alice.next_event(frames.MessageNew)).message.id == sent.id
    for device in (bob, bob_phone):
        assert not [e for e in await settled_events(device) if isinstance(e, frames.MessageNew)]
        await expect_error(device, "forbidden", "message.send", conversation_id=channel.id, text="x", client_msg_id="x")
        await expect_error(device, "forbidden", "message.history", conversation_id=channel.id)

    members = await alice.call("channel.members", channel_id=channel.id)
    assert [m.id for m in members.members] == [uid(alice)]
    listing = {c.id: c for c in (await bob.call("channel.list")).conversations}
    assert listing[channel.id].member is False
    # Leaving again is a no-op.
    await bob.call("channel.leave", channel_id=channel.id)
    assert not [e for e in await settled_events(alice) if isinstance(e, frames.MemberLeft)]


async def test_leave_private_makes_it_not_found(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    await alice.call("channel.invite", channel_id=secret.id, user_id=uid(bob))
    await send(alice, secret.id, "before")
    await bob.next_event(frames.MessageNew)

    await bob.call("channel.leave", channel_id=secret.id)
    await bob.next_event(frames.ConversationRemoved)

    await expect_error(bob, "not_found", "channel.members", channel_id=secret.id)
    await expect_error(bob, "not_found", "channel.join", channel_id=secret.id)
    await expect_error(bob, "not_found", "channel.leave", channel_id=secret.id)
    await expect_error(bob, "not_found", "message.history", conversation_id=secret.id)
    await expect_error(bob, "not_found", "message.send", conversation_id=secret.id, text="x", client_msg_id="x")
    assert secret.id not in {c.id for c in (await bob.call("channel.list")).conversations}

    await send(alice, secret.id, "after")
    assert not [e for e in await settled_events(bob) if isinstance(e, frames.MessageNew)]


async def test_last_member_leaving_keeps_channel(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    channel = (await alice.call("channel.create", name="room")).conversation
    await send(alice, channel.id, "hello")
    await alice.call("channel.leave", channel_id=channel.id)
    await bob.call("channel.join", channel_id=channel.id)
    page = await bob.call("message.history", conversation_id=channel.id)
    assert [m.text for m in page.messages] == ["hello"]


# -- members --------------------------------------------------------------------


async def test_members_visibility(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    outsider = await server.user()
    public = (await alice.call("channel.create", name="public")).conversation
    secret = (await alice.call("channel.create", name="secret", private=True)).conversation
    await bob.call("channel.join", channel_id=public.id)
    await alice.call("channel.invite", channel_id=secret.id, user_id=uid(bob))

    visible = await outsider.call("channel.members", channel_id=public.id)
    assert [m.id for m in visible.members] == [uid(alice), uid(bob)]
    assert alice.user is not None
    first = msgspec.structs.asdict(visible.members[0])
    assert first.pop("role") == "owner"  # the creator (the roles themselves: tests/test_roles.py)
    assert frames.User(**first) == alice.user
    await expect_error(outsider, "not_found", "channel.members", channel_id=secret.id)
    await expect_error(outsider, "not_found", "channel.members", channel_id=secret.id + 1000)
    inside = await bob.call("channel.members", channel_id=secret.id)
    assert {m.id for m in inside.members} == {uid(alice), uid(bob)}
