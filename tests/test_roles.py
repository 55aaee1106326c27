"""Roles and channel administration (issue 12), end to end: roles in the
conversation views and channel.members, channel.update (rename, topic,
purpose, invite policy, archive), channel.set_role, channel.kick, the
last-owner rule on leave, archived channels read-only, group DM names, and
no leak of private channels to non-members; over real sockets against one
real server per store combination (shared by the module's tests: each makes
its own users and channels). Two instances: tests/test_roles_cluster.py."""

from __future__ import annotations

import asyncio

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error, settled_events, uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("roles")]


async def channel_with(
    shared_server: RunningServer, members: int, *, private: bool = False
) -> tuple[frames.Conversation, list[Client]]:
    """A new channel created by the first of ``members`` new users, the others invited; events settled."""
    clients = [await shared_server.user() for _ in range(members)]
    owner = clients[0]
    channel = (await owner.call("channel.create", name=unique_name("room"), private=private)).conversation
    for other in clients[1:]:
        await owner.call("channel.invite", channel_id=channel.id, user_id=uid(other))
    for client in clients:
        await settled_events(client)
    return channel, clients


async def send(client: Client, conversation_id: int, text: str = "hello") -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=conversation_id, text=text, client_msg_id=unique_name("m")
    )
    return ack.message


async def roles(client: Client, channel_id: int) -> dict[int, str]:
    found: frames.Members = await client.call("channel.members", channel_id=channel_id)
    return {m.id: m.role for m in found.members}


async def view_of(client: Client, channel_id: int, **options: bool) -> frames.Conversation | None:
    listed: frames.ConversationList = await client.call("channel.list", **options)
    return next((c for c in listed.conversations if c.id == channel_id), None)


# -- roles in the views --------------------------------------------------------------


async def test_the_creator_is_owner_and_views_carry_the_callers_role(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    created = (await alice.call("channel.create", name=unique_name("room"), topic="t")).conversation
    assert (created.role, created.purpose, created.archived, created.invite_policy) == ("owner", "", False, "anyone")
    added = await alice.next_event(frames.ConversationAdded)
    assert added.conversation.role == "owner"

    bob = await shared_server.user()
    outsider_view = await view_of(bob, created.id)
    assert outsider_view is not None and outsider_view.member is False and outsider_view.role is None
    joined = (await bob.call("channel.join", channel_id=created.id)).conversation
    assert joined.role == "member"
    again = (await bob.call("channel.join", channel_id=created.id)).conversation
    assert again.role == "member"
    bob_view = await view_of(bob, created.id)
    alice_view = await view_of(alice, created.id)
    assert bob_view is not None and bob_view.role == "member"
    assert alice_view is not None and alice_view.role == "owner"
    assert await roles(bob, created.id) == {uid(alice): "owner", uid(bob): "member"}

    dm = (await alice.call("dm.open", user_ids=[uid(bob)])).conversation
    assert dm.role is None and dm.name is None


# -- channel.update --------------------------------------------------------------------


async def test_owners_and_admins_update_a_channel_and_members_hear_of_it(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    await settled_events(carol)
    new_name = unique_name("renamed")
    result: frames.ConversationResult = await bob.call(
        "channel.update", channel_id=channel.id, name=new_name, topic="new topic", purpose="why"
    )
    view = result.conversation
    assert (view.name, view.topic, view.purpose, view.role) == (new_name, "new topic", "why", "admin")
    for member in (alice, carol):
        event = await member.next_event(frames.ChannelUpdated)
        assert event.by == uid(bob)
        assert event.conversation.name == new_name and event.conversation.purpose == "why"
        assert event.conversation.role is None  # events go to every member alike
    listed = await view_of(carol, channel.id)
    assert listed is not None and listed.name == new_name and listed.topic == "new topic" and listed.role == "member"

    # The same values again change nothing and announce nothing.
    await bob.call("channel.update", channel_id=channel.id, topic="new topic")
    assert not [e for e in await settled_events(carol) if isinstance(e, frames.ChannelUpdated)]


async def test_bad_channel_updates_change_nothing(shared_server: RunningServer) -> None:
    channel, (alice, bob) = await channel_with(shared_server, 2)
    other = (await alice.call("channel.create", name=unique_name("taken"))).conversation
    await expect_error(alice, ErrorCode.CONFLICT, "channel.update", channel_id=channel.id, name=other.name, topic="x")
    await expect_error(bob, ErrorCode.FORBIDDEN, "channel.update", channel_id=channel.id, topic="mine now")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=channel.id)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=channel.id, invite_policy="nobody")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=channel.id, name="Bad Name")
    outsider = await shared_server.user()
    await expect_error(outsider, ErrorCode.FORBIDDEN, "channel.update", channel_id=channel.id, topic="x")
    dm = (await alice.call("dm.open", user_ids=[uid(bob)])).conversation
    await expect_error(alice, ErrorCode.NOT_FOUND, "channel.update", channel_id=dm.id, topic="x")
    unchanged = await view_of(alice, channel.id)
    assert unchanged is not None and (unchanged.name, unchanged.topic) == (channel.name, channel.topic)
    assert not [e for e in await settled_events(bob) if isinstance(e, frames.ChannelUpdated)]


# -- channel.set_role --------------------------------------------------------------------


async def test_promote_and_demote(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol, dave) = await channel_with(shared_server, 4)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    for member in (alice, bob, carol, dave):
        event = await member.next_event(frames.MemberRoleChanged)
        assert (event.conversation_id, event.user_id, event.role, event.by) == (
            channel.id,
            uid(bob),
            "admin",
            uid(alice),
        )
    # An admin promotes and demotes members and admins.
    await bob.call("channel.set_role", channel_id=channel.id, user_id=uid(carol), role="admin")
    await bob.call("channel.set_role", channel_id=channel.id, user_id=uid(carol), role="member")
    assert await roles(dave, channel.id) == {
        uid(alice): "owner",
        uid(bob): "admin",
        uid(carol): "member",
        uid(dave): "member",
    }
    # Giving a role someone has is a no-op: no event.
    await settled_events(dave)
    await bob.call("channel.set_role", channel_id=channel.id, user_id=uid(carol), role="member")
    assert not [e for e in await settled_events(dave) if isinstance(e, frames.MemberRoleChanged)]


async def test_role_change_errors(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    fields = {"channel_id": channel.id}
    error = await expect_error(
        bob, ErrorCode.FORBIDDEN, "channel.set_role", **fields, user_id=uid(alice), role="member"
    )
    assert error.message == "only an owner may change an owner's role"
    await expect_error(bob, ErrorCode.FORBIDDEN, "channel.set_role", **fields, user_id=uid(carol), role="owner")
    await expect_error(carol, ErrorCode.FORBIDDEN, "channel.set_role", **fields, user_id=uid(carol), role="admin")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.set_role", **fields, user_id=uid(carol), role="king")
    last = await expect_error(alice, ErrorCode.CONFLICT, "channel.set_role", **fields, user_id=uid(alice), role="admin")
    assert "last owner" in last.message
    stranger = await shared_server.user()
    await expect_error(alice, ErrorCode.NOT_FOUND, "channel.set_role", **fields, user_id=uid(stranger), role="admin")
    await expect_error(alice, ErrorCode.NOT_FOUND, "channel.set_role", **fields, user_id=2**40, role="admin")
    assert await roles(alice, channel.id) == {uid(alice): "owner", uid(bob): "admin", uid(carol): "member"}


async def test_the_last_owner_hands_over_before_leaving(shared_server: RunningServer) -> None:
    channel, (alice, bob) = await channel_with(shared_server, 2)
    error = await expect_error(alice, ErrorCode.CONFLICT, "channel.leave", channel_id=channel.id)
    assert "last owner" in error.message
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="owner")
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(alice), role="member")
    assert await roles(bob, channel.id) == {uid(alice): "member", uid(bob): "owner"}
    await expect_error(bob, ErrorCode.CONFLICT, "channel.leave", channel_id=channel.id)
    assert await alice.call("channel.leave", channel_id=channel.id) == frames.Empty()
    # Alone in it, the last owner may leave: nobody is left to hand over to.
    assert await bob.call("channel.leave", channel_id=channel.id) == frames.Empty()


# -- channel.kick ---------------------------------------------------------------------------


async def test_an_admin_kicks_a_member_who_stops_receiving_the_channel(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3)
    carol_phone = await shared_server.client()
    assert carol.token is not None
    await carol_phone.auth(carol.token)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    for client in (alice, carol, carol_phone):
        await settled_events(client)

    assert await bob.call("channel.kick", channel_id=channel.id, user_id=uid(carol)) == frames.Empty()
    for member in (alice, bob, carol, carol_phone):
        event = await member.next_event(frames.MemberRemoved)
        assert (event.conversation_id, event.user_id, event.by) == (channel.id, uid(carol), uid(bob))
    for device in (carol, carol_phone):
        removed = await device.next_event(frames.ConversationRemoved)
        assert removed.conversation_id == channel.id

    sent = await send(alice, channel.id, "after the kick")
    assert (await bob.next_event(frames.MessageNew)).message.id == sent.id
    for device in (carol, carol_phone):
        assert not [e for e in await settled_events(device) if isinstance(e, frames.MessageNew)]
    await expect_error(
        carol, ErrorCode.FORBIDDEN, "message.send", conversation_id=channel.id, text="x", client_msg_id="k"
    )
    assert uid(carol) not in await roles(alice, channel.id)
    listed = await view_of(carol, channel.id)
    assert listed is not None and listed.member is False


async def test_kick_errors(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    fields = {"channel_id": channel.id}
    error = await expect_error(bob, ErrorCode.FORBIDDEN, "channel.kick", **fields, user_id=uid(alice))
    assert error.message == "only an owner may remove an owner"
    await expect_error(carol, ErrorCode.FORBIDDEN, "channel.kick", **fields, user_id=uid(bob))
    await expect_error(alice, ErrorCode.CONFLICT, "channel.kick", **fields, user_id=uid(alice))
    stranger = await shared_server.user()
    await expect_error(alice, ErrorCode.NOT_FOUND, "channel.kick", **fields, user_id=uid(stranger))
    await expect_error(stranger, ErrorCode.FORBIDDEN, "channel.kick", **fields, user_id=uid(carol))
    assert set(await roles(alice, channel.id)) == {uid(alice), uid(bob), uid(carol)}


async def test_a_kick_racing_the_kicked_members_send(shared_server: RunningServer) -> None:
    """Either the send was stored (and is in history) or it was refused; after
    conversation.removed the kicked member receives nothing of the channel."""
    for _ in range(3):
        channel, (alice, bob) = await channel_with(shared_server, 2)
        send_task = asyncio.ensure_future(send(bob, channel.id, "racing"))
        kick = alice.call("channel.kick", channel_id=channel.id, user_id=uid(bob))
        await kick
        try:
            stored: frames.Message | None = await send_task
        except ServerError as exc:
            assert exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND), exc
            stored = None
        page: frames.HistoryPage = await alice.call("message.history", conversation_id=channel.id)
        assert [m.id for m in page.messages] == ([stored.id] if stored else [])
        after = await send(alice, channel.id, "after")
        await bob.next_event(frames.ConversationRemoved)
        later = [e for e in await settled_events(bob) if isinstance(e, frames.MessageNew)]
        assert not [e for e in later if e.message.conversation_id == channel.id], (after.id, later)


# -- archived channels ----------------------------------------------------------------------


async def test_an_archived_channel_is_read_only_and_hidden_from_browsing(shared_server: RunningServer) -> None:
    channel, (alice, bob) = await channel_with(shared_server, 2)
    message = await send(bob, channel.id, "before")
    await alice.call("reaction.add", conversation_id=channel.id, message_id=message.id, emoji="👍")
    await alice.call("message.pin", conversation_id=channel.id, message_id=message.id)
    await settled_events(bob)

    archived = (await alice.call("channel.update", channel_id=channel.id, archived=True)).conversation
    assert archived.archived is True
    assert (await bob.next_event(frames.ChannelUpdated)).conversation.archived is True

    cid, mid = channel.id, message.id
    for op, fields in (
        ("message.send", {"text": "x", "client_msg_id": "a1"}),
        ("message.edit", {"message_id": mid, "text": "changed"}),
        ("message.delete", {"message_id": mid}),
        ("reaction.add", {"message_id": mid, "emoji": "🎉"}),
        ("reaction.remove", {"message_id": mid, "emoji": "👍"}),
        ("message.pin", {"message_id": mid}),
        ("message.unpin", {"message_id": mid}),
        ("typing", {}),
    ):
        error = await expect_error(bob, ErrorCode.ARCHIVED, op, conversation_id=cid, **fields)
        assert "archived" in error.message
    # Still readable: history with its reactions, pins.
    page: frames.HistoryPage = await bob.call("message.history", conversation_id=cid)
    assert [m.id for m in page.messages] == [mid] and page.messages[0].reactions[0].emoji == "👍"
    assert [m.id for m in (await bob.call("conversation.pins", conversation_id=cid)).messages] == [mid]
    # Members keep it, marked; browsing hides it unless asked.
    mine = await view_of(bob, cid)
    assert mine is not None and mine.archived and mine.member
    carol = await shared_server.user()
    assert await view_of(carol, cid) is None
    shown = await view_of(carol, cid, include_archived=True)
    assert shown is not None and shown.archived and not shown.member
    await expect_error(carol, ErrorCode.ARCHIVED, "channel.join", channel_id=cid)
    await expect_error(alice, ErrorCode.ARCHIVED, "channel.invite", channel_id=cid, user_id=uid(carol))
    await expect_error(alice, ErrorCode.ARCHIVED, "channel.update", channel_id=cid, topic="x")
    await expect_error(bob, ErrorCode.FORBIDDEN, "channel.update", channel_id=cid, archived=False)

    unarchived = (await alice.call("channel.update", channel_id=cid, archived=False)).conversation
    assert unarchived.archived is False
    await send(bob, cid, "back")
    assert await view_of(carol, cid) is not None


async def test_owners_and_admins_delete_anyones_message_members_do_not(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3)
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    first, second = await send(carol, channel.id, "one"), await send(carol, channel.id, "two")
    by_alice = await send(alice, channel.id, "three")
    await expect_error(carol, ErrorCode.FORBIDDEN, "message.delete", conversation_id=channel.id, message_id=by_alice.id)
    for deleter, message in ((bob, first), (alice, second)):
        deleted = (await deleter.call("message.delete", conversation_id=channel.id, message_id=message.id)).message
        assert deleted.deleted


# -- invite policy ----------------------------------------------------------------------------


async def test_a_private_channel_where_only_admins_invite(shared_server: RunningServer) -> None:
    channel, (alice, bob, carol) = await channel_with(shared_server, 3, private=True)
    dave = await shared_server.user()
    updated = (await alice.call("channel.update", channel_id=channel.id, invite_policy="admins")).conversation
    assert updated.invite_policy == "admins"
    error = await expect_error(carol, ErrorCode.FORBIDDEN, "channel.invite", channel_id=channel.id, user_id=uid(dave))
    assert "owners and admins" in error.message
    await alice.call("channel.set_role", channel_id=channel.id, user_id=uid(bob), role="admin")
    await bob.call("channel.invite", channel_id=channel.id, user_id=uid(dave))
    assert (await roles(alice, channel.id))[uid(dave)] == "member"
    await alice.call("channel.update", channel_id=channel.id, invite_policy="anyone")
    erin = await shared_server.user()
    await carol.call("channel.invite", channel_id=channel.id, user_id=uid(erin))


# -- no leak of private channels --------------------------------------------------------------


async def test_non_members_learn_nothing_of_a_private_channel(shared_server: RunningServer) -> None:
    channel, (alice, bob) = await channel_with(shared_server, 2, private=True)
    outsider = await shared_server.user()
    cid = channel.id
    for op, fields in (
        ("channel.members", {}),
        ("channel.update", {"topic": "x"}),
        ("channel.kick", {"user_id": uid(bob)}),
        ("channel.set_role", {"user_id": uid(bob), "role": "admin"}),
        ("channel.join", {}),
        ("channel.leave", {}),
    ):
        error = await expect_error(outsider, ErrorCode.NOT_FOUND, op, channel_id=cid, **fields)
        assert channel.name is not None and channel.name not in error.message
    assert await view_of(outsider, cid, include_archived=True) is None
    assert await roles(alice, cid) == {uid(alice): "owner", uid(bob): "member"}


# -- group DMs -------------------------------------------------------------------------------


async def test_any_participant_renames_a_group_dm(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    bob = await shared_server.user()
    carol = await shared_server.user()
    dm = (await alice.call("dm.open", user_ids=[uid(bob), uid(carol)])).conversation
    for client in (alice, bob, carol):
        await settled_events(client)
    renamed = (await bob.call("dm.rename", conversation_id=dm.id, name="Weekend plans")).conversation
    assert renamed.name == "Weekend plans" and renamed.kind == "dm" and renamed.role is None
    for participant in (alice, carol):
        event = await participant.next_event(frames.DmUpdated)
        assert event.by == uid(bob) and event.conversation.name == "Weekend plans"
    listed: frames.ConversationList = await carol.call("dm.list")
    assert [c.name for c in listed.conversations if c.id == dm.id] == ["Weekend plans"]
    cleared = (await carol.call("dm.rename", conversation_id=dm.id, name=None)).conversation
    assert cleared.name is None


async def test_dm_rename_errors(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    bob = await shared_server.user()
    pair = (await alice.call("dm.open", user_ids=[uid(bob)])).conversation
    await expect_error(alice, ErrorCode.FORBIDDEN, "dm.rename", conversation_id=pair.id, name="us")
    outsider = await shared_server.user()
    await expect_error(outsider, ErrorCode.NOT_FOUND, "dm.rename", conversation_id=pair.id, name="them")
    channel = (await alice.call("channel.create", name=unique_name("room"))).conversation
    await expect_error(alice, ErrorCode.NOT_FOUND, "dm.rename", conversation_id=channel.id, name="x")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "dm.rename", conversation_id=pair.id, name="")
    await expect_error(alice, ErrorCode.BAD_REQUEST, "dm.rename", conversation_id=pair.id, name="x" * 81)
    listed: frames.ConversationList = await bob.call("dm.list")
    assert [c.name for c in listed.conversations if c.id == pair.id] == [None]
