"""Presence: online while at least one device is connected, heard by those who
share a conversation, queryable with last_seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError
from tests.conftest import RunningServer, ServerFactory, unique_name
from tests.helpers import next_presence_of, presence_changes

pytestmark = pytest.mark.all_backends


def uid(client: Client) -> int:
    assert client.user is not None
    return client.user.id


def token(client: Client) -> str:
    assert client.token is not None
    return client.token


def flush_presence(server: RunningServer) -> None:
    """Write the presence changes still waiting out their batch window now, so
    that what a client has not heard by its next reply, it was never sent."""
    assert server.app.services is not None
    server.app.services.registry.presence.flush()


async def settled_events(server: RunningServer, client: Client) -> list[frames.ServerFrame]:
    """Every event queued to ``client`` (pending presence included) before its own ping was answered."""
    flush_presence(server)
    await client.call("ping")
    return client.drain_events()


async def events_until(client: Client, match: Callable[[frames.ServerFrame], bool]) -> list[frames.ServerFrame]:
    """Events up to and including the first that matches, in arrival order."""
    seen: list[frames.ServerFrame] = []
    async with asyncio.timeout(10):
        while True:
            event = await client.next_event()
            seen.append(event)
            if match(event):
                return seen


def presence_of(events: list[frames.ServerFrame], user_id: int) -> list[frames.Presence]:
    return presence_changes(events, user_id)


async def query(client: Client, *user_ids: int) -> list[frames.Presence]:
    result: frames.PresenceList = await client.call("presence.query", user_ids=list(user_ids))
    return result.presence


async def connect_as(server: RunningServer, client: Client) -> Client:
    device = await server.client()
    await device.auth(token(client))
    return device


async def sessions_gone(server: RunningServer, user_id: int, remaining: int) -> None:
    """Wait (bounded) until the server has finished tearing down the user's
    closed connections and only ``remaining`` are left; nothing observable is
    sent when a user's non-last connection ends, so this watches the server."""
    async with asyncio.timeout(5):
        while sum(1 for s in server.app.sessions if s.user_id == user_id) != remaining:  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.005)


async def test_online_until_the_last_device_closes(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    await bob.call("dm.open", user_ids=[uid(alice)])
    (status,) = await query(bob, uid(alice))
    assert status.status == "online"

    await alice.close()
    gone = await next_presence_of(bob, uid(alice))
    assert gone.status == "offline"
    assert gone.last_seen is not None
    (status,) = await query(bob, uid(alice))
    assert (status.status, status.last_seen) == ("offline", gone.last_seen)

    laptop = await connect_as(server, alice)
    back = await next_presence_of(bob, uid(alice))
    assert back.status == "online"
    assert back.last_seen is not None and back.last_seen >= gone.last_seen

    phone = await connect_as(server, alice)
    await phone.call("ping")
    assert presence_of(await settled_events(server, bob), uid(alice)) == []  # still the same online

    await laptop.close()
    await sessions_gone(server, uid(alice), remaining=1)
    assert presence_of(await settled_events(server, bob), uid(alice)) == []
    (status,) = await query(bob, uid(alice))
    assert status.status == "online"
    # The remaining device still works and still receives.
    dm = (await phone.call("dm.list")).conversations[0]
    await bob.call("message.send", conversation_id=dm.id, text="still there?", client_msg_id="1")
    assert (await phone.next_event(frames.MessageNew)).message.text == "still there?"

    await phone.close()
    last = await next_presence_of(bob, uid(alice))
    assert last.status == "offline"
    assert last.last_seen is not None and last.last_seen >= back.last_seen
    (status,) = await query(bob, uid(alice))
    assert (status.status, status.last_seen) == ("offline", last.last_seen)


async def test_online_is_announced_before_offline_when_a_client_leaves_right_after_auth(server: RunningServer) -> None:
    """auth answers before its "online" is announced (the audience read runs
    after the reply): a client gone right after its reply still came online
    first, and others hear both, in order."""
    alice = await server.user()
    bob = await server.user()
    await bob.call("dm.open", user_ids=[uid(alice)])
    alice_token = token(alice)
    await alice.close()
    assert (await next_presence_of(bob, uid(alice))).status == "offline"
    for _ in range(5):
        device = await server.client()
        await device.auth(alice_token)
        await device.close()  # at once: its announcement may not have run yet
        heard: list[frames.Presence] = []
        async with asyncio.timeout(10):
            while len(heard) < 2:
                heard.extend(presence_of([await bob.next_event(frames.PresenceBatch)], uid(alice)))
        assert [change.status for change in heard] == ["online", "offline"]
        (status,) = await query(bob, uid(alice))
        assert status.status == "offline"


async def test_presence_reaches_only_those_sharing_a_conversation(server: RunningServer) -> None:
    alice = await server.user()
    dm_peer = await server.user()  # shares a DM with alice
    channel_peer = await server.user()  # shares a channel with alice
    stranger = await server.user()  # shares nothing with alice
    await dm_peer.call("dm.open", user_ids=[uid(alice)])
    room = (await alice.call("channel.create", name=unique_name("room"))).conversation.id
    await channel_peer.call("channel.join", channel_id=room)
    # The stranger and the DM peer share a channel of their own, used to
    # prove ordering: whatever the stranger got before that channel's next
    # message was sent before it.
    side = (await dm_peer.call("channel.create", name=unique_name("side"))).conversation.id
    await stranger.call("channel.join", channel_id=side)
    for client in (dm_peer, channel_peer, stranger):
        await settled_events(server, client)

    async def stranger_heard_nothing_of_alice(text: str) -> None:
        flush_presence(server)
        await dm_peer.call("message.send", conversation_id=side, text=text, client_msg_id=text)
        events = await events_until(stranger, lambda e: isinstance(e, frames.MessageNew) and e.message.text == text)
        assert presence_of(events, uid(alice)) == []

    alice_token = token(alice)
    await alice.close()
    for peer in (dm_peer, channel_peer):
        presence = await next_presence_of(peer, uid(alice))
        assert presence.status == "offline" and presence.last_seen is not None
    await stranger_heard_nothing_of_alice("after-offline")

    again = await server.client()
    await again.auth(alice_token)
    for peer in (dm_peer, channel_peer):
        presence = await next_presence_of(peer, uid(alice))
        assert presence.status == "online"
    await stranger_heard_nothing_of_alice("after-online")

    # Presence is still queryable by anyone.
    (status,) = await query(stranger, uid(alice))
    assert status.status == "online"


async def test_presence_skips_conversations_above_the_member_cap(make_server: ServerFactory) -> None:
    server = await make_server(presence_max_members=3)
    alice = await server.user()
    friend = await server.user()  # in a small channel and a DM with alice
    crowd = [await server.user() for _ in range(3)]  # in a big channel with alice only
    small = (await alice.call("channel.create", name=unique_name("small"))).conversation.id
    big = (await alice.call("channel.create", name=unique_name("big"))).conversation.id
    await friend.call("channel.join", channel_id=small)
    await friend.call("dm.open", user_ids=[uid(alice)])
    for member in crowd:
        await member.call("channel.join", channel_id=big)  # 4 members: above the cap
    for client in (friend, *crowd):
        await settled_events(server, client)

    alice_token = token(alice)
    await alice.close()
    presence = await next_presence_of(friend, uid(alice))
    assert presence.status == "offline"
    # The crowd hears nothing of it: the big channel's next message comes first.
    flush_presence(server)
    await crowd[0].call("message.send", conversation_id=big, text="marker", client_msg_id="marker")
    for member in crowd:
        events = await events_until(member, lambda e: isinstance(e, frames.MessageNew) and e.message.text == "marker")
        assert presence_of(events, uid(alice)) == []
        (status,) = await query(member, uid(alice))
        assert status.status == "offline"  # ...but can ask

    again = await server.client()
    await again.auth(alice_token)
    assert (await next_presence_of(friend, uid(alice))).status == "online"


async def test_presence_query(server: RunningServer) -> None:
    online = await server.user()
    leaving = await server.user()
    asker = await server.user()
    await asker.call("dm.open", user_ids=[uid(leaving)])
    await leaving.close()
    gone = await next_presence_of(asker, uid(leaving))

    result = await query(asker, uid(leaving), 999_999, uid(online), uid(asker))
    by_user = {p.user_id: p for p in result}
    assert [p.user_id for p in result] == sorted([uid(leaving), uid(online), uid(asker)])  # unknown ids left out
    assert by_user[uid(online)].status == "online"
    assert by_user[uid(online)].last_seen is not None
    assert by_user[uid(asker)].status == "online"
    assert by_user[uid(leaving)].status == "offline"
    assert by_user[uid(leaving)].last_seen == gone.last_seen

    for bad in ([], list(range(1, 102))):
        with pytest.raises(ServerError) as info:
            await asker.call("presence.query", user_ids=bad)
        assert info.value.code == "bad_request"


async def test_presence_query_requires_auth(server: RunningServer) -> None:
    anonymous = await server.client()
    with pytest.raises(ServerError) as info:
        await anonymous.call("presence.query", user_ids=[1])
    assert info.value.code == "unauthorized"
