"""typing over real sockets, on one server (two instances with Redis: tests/test_cluster.py).

What nobody must receive is checked without waiting for silence: delivery
keeps publish order on each connection, so a message sent after the typing
is a marker; every event a connection would get for the typing arrives
before the marker's message.new.
"""

from __future__ import annotations

from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError
from tests.conftest import RunningServer, ServerFactory, unique_name

ROOT_ID = "d98abef563e348f5b9a332ac50cfb11c"


async def second_device(server: RunningServer, of: Client) -> Client:
    device = await server.client()
    assert of.token is not None
    await device.auth(of.token)
    return device


async def dm(a: Client, b: Client) -> int:
    assert b.user is not None
    cid: int = (await a.call("dm.open", user_ids=[b.user.id])).conversation.id
    return cid


async def channel(owner: Client, *members: Client, private: bool = False) -> int:
    cid: int = (await owner.call("channel.create", name=unique_name("ch"), private=private)).conversation.id
    for member in members:
        if private:
            assert member.user is not None
            await owner.call("channel.invite", channel_id=cid, user_id=member.user.id)
        else:
            await member.call("channel.join", channel_id=cid)
    return cid


async def send(client: Client, cid: int, text: str) -> frames.Message:
    message: frames.Message = (
        await client.call("message.send", conversation_id=cid, text=text, client_msg_id=text)
    ).message
    return message


async def events_until_message(client: Client, message_id: str) -> list[frames.ServerFrame]:
    """Every event before the message.new of ``message_id``, that one included."""
    events = []
    while True:
        event = await client.next_event()
        events.append(event)
        if isinstance(event, frames.MessageNew) and event.message.id == message_id:
            return events


def typings(events: list[frames.ServerFrame]) -> list[frames.UserTyping]:
    return [e for e in events if isinstance(e, frames.UserTyping)]


async def test_the_other_member_hears_it_with_its_expiry_and_the_typists_own_devices_do_not(
    server: RunningServer,
) -> None:
    alice, bob = await server.user(), await server.user()
    phone = await second_device(server, alice)
    cid = await dm(alice, bob)
    assert alice.user is not None

    assert await alice.call("typing", conversation_id=cid) == frames.Empty()
    heard = await bob.next_event(frames.UserTyping)
    assert heard == frames.UserTyping(
        conversation_id=cid, user_id=alice.user.id, thread_root_id=None, expires_in_ms=5000
    )

    marker = await send(bob, cid, "marker")
    for device in (alice, phone):
        assert typings(await events_until_message(device, marker.id)) == [], "nobody sees their own typing"


async def test_typing_in_a_thread_carries_the_root_and_renewals_each_go_out(make_server: ServerFactory) -> None:
    server = await make_server(typing_ttl_seconds=2.5)
    alice, bob, carol = await server.user(), await server.user(), await server.user()
    cid = await channel(alice, bob, carol)
    assert bob.user is not None

    for _ in range(2):  # a renewal, as clients send every few seconds
        await bob.call("typing", conversation_id=cid, thread_root_id=ROOT_ID)
    for member in (alice, carol):
        first, second = await member.next_event(frames.UserTyping), await member.next_event(frames.UserTyping)
        expected = frames.UserTyping(
            conversation_id=cid, user_id=bob.user.id, thread_root_id=ROOT_ID, expires_in_ms=2500
        )
        assert first == second == expected


async def test_a_sent_message_follows_the_typing_and_nothing_else_is_sent(server: RunningServer) -> None:
    alice, bob = await server.user(), await server.user()
    cid = await channel(alice, bob)
    assert alice.user is not None

    await alice.call("typing", conversation_id=cid)
    message = await send(alice, cid, "done typing")
    events = [
        e for e in await events_until_message(bob, message.id) if isinstance(e, frames.UserTyping | frames.MessageNew)
    ]
    # The message.new itself ends the indicator: it comes after the typing, from its typist.
    assert [type(e) for e in events] == [frames.UserTyping, frames.MessageNew]
    assert events[0] == frames.UserTyping(
        conversation_id=cid, user_id=alice.user.id, thread_root_id=None, expires_in_ms=5000
    )
    assert isinstance(events[1], frames.MessageNew) and events[1].message.sender_id == alice.user.id
    later = await send(bob, cid, "later")
    assert typings(await events_until_message(bob, later.id)) == [], "no stop event of its own"


async def error_of(client: Client, **fields: Any) -> tuple[str, str]:
    with pytest.raises(ServerError) as refused:
        await client.call("typing", **fields)
    return refused.value.code, refused.value.message


async def test_a_conversation_you_are_not_in_is_not_found_exactly_as_one_that_does_not_exist(
    server: RunningServer,
) -> None:
    alice, bob, mallory = await server.user(), await server.user(), await server.user()
    private = await channel(alice, bob, private=True)
    direct = await dm(alice, bob)
    public = await channel(alice, bob)

    missing = await error_of(mallory, conversation_id=999_999)
    assert missing == ("not_found", "conversation not found")
    assert await error_of(mallory, conversation_id=private) == missing
    assert await error_of(mallory, conversation_id=direct) == missing
    # A public channel is visible to everyone: the same refusal as message.send's.
    assert await error_of(mallory, conversation_id=public) == ("forbidden", "join the channel first")

    marker = await send(alice, public, "marker")
    assert typings(await events_until_message(bob, marker.id)) == []


@pytest.mark.parametrize("root", ["", "x" * 65, "line\nbreak", 7])
async def test_a_thread_root_id_of_the_wrong_shape_is_a_bad_request(server: RunningServer, root: object) -> None:
    alice, bob = await server.user(), await server.user()
    cid = await dm(alice, bob)
    code, _ = await error_of(alice, conversation_id=cid, thread_root_id=root)
    assert code == "bad_request"


async def test_typing_beyond_the_connections_limit_is_answered_and_dropped(make_server: ServerFactory) -> None:
    # A refill of one token in ~17 minutes: the burst is all the test can spend.
    server = await make_server(typing_per_second=0.001, typing_burst=2)
    alice, bob = await server.user(), await server.user()
    cid = await dm(alice, bob)

    for _ in range(5):
        assert await alice.call("typing", conversation_id=cid) == frames.Empty()
    marker = await send(alice, cid, "marker")
    assert len(typings(await events_until_message(bob, marker.id))) == 2

    laptop = await second_device(server, alice)  # another connection has a limit of its own
    await laptop.call("typing", conversation_id=cid)
    assert (await bob.next_event(frames.UserTyping)).conversation_id == cid


async def test_typing_goes_through_conversations_up_to_the_size_cap_only(make_server: ServerFactory) -> None:
    server = await make_server(typing_max_members=2)
    alice, bob, carol = await server.user(), await server.user(), await server.user()
    big = await channel(alice, bob, carol)
    small = await dm(alice, bob)

    assert await alice.call("typing", conversation_id=big) == frames.Empty()
    await alice.call("typing", conversation_id=small)
    marker = await send(alice, big, "marker")
    heard = typings(await events_until_message(bob, marker.id))
    assert [t.conversation_id for t in heard] == [small], "3 members: over the cap; the DM of 2 is not"
    assert typings(await events_until_message(carol, marker.id)) == []
