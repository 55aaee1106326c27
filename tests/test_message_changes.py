"""Threads, edits, deletes, reactions, mentions, pins and the change feed,
end to end: real clients on real sockets against one real server per store
combination (shared by the module's tests: each test makes its own users
and conversations), with small limits so that each one can be reached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.server.clock import now_ms
from hubbub.storage.records import NewMessage
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error, settled_events, uid

# One worker runs the whole module (make test: --dist loadgroup), so each server starts once.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("message_changes")]

LIMITS: dict[str, Any] = {
    "max_message_chars": 100,
    "edit_window_seconds": 60.0,
    "max_reaction_emojis": 3,
    "max_reactions_per_user": 2,
    "max_pins": 3,
}
THUMBS_UP = "\N{THUMBS UP SIGN}"
TADA = "\N{PARTY POPPER}"
HEART = "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"
EYES = "\N{EYES}"


# -- helpers ----------------------------------------------------------------------


async def send(client: Client, cid: int, text: str = "hello", **fields: Any) -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=cid, text=text, client_msg_id=unique_name("m"), **fields
    )
    return ack.message


async def change(client: Client, op: str, message: frames.Message, **fields: Any) -> frames.Message:
    """A change request naming ``message``; the message's state after it."""
    outcome: frames.MessageResult = await client.call(
        op, conversation_id=message.conversation_id, message_id=message.id, **fields
    )
    return outcome.message


async def channel_with(owner: Client, *members: Client, private: bool = False) -> int:
    cid: int = (await owner.call("channel.create", name=unique_name("room"), private=private)).conversation.id
    for member in members:
        if private:
            await owner.call("channel.invite", channel_id=cid, user_id=uid(member))
        else:
            await member.call("channel.join", channel_id=cid)
    return cid


async def users(shared_server: RunningServer, count: int) -> list[Client]:
    """``count`` newly registered users, each on a connection of their own."""
    return list(await asyncio.gather(*(shared_server.user() for _ in range(count))))


async def timeline(client: Client, cid: int, **fields: Any) -> list[frames.Message]:
    page: frames.HistoryPage = await client.call(
        "message.history", conversation_id=cid, limit=100, order="asc", **fields
    )
    return page.messages


async def stored(client: Client, message: frames.Message) -> frames.Message:
    """The message as history has it now."""
    (found,) = [m for m in await timeline(client, message.conversation_id) if m.id == message.id]
    return found


async def updates(client: Client) -> list[frames.MessageUpdated | frames.MessageDeleted | frames.MessageNew]:
    """The message events that reached ``client`` so far, in order."""
    kinds = frames.MessageUpdated | frames.MessageDeleted | frames.MessageNew
    return [e for e in await settled_events(client) if isinstance(e, kinds)]


async def quiet(*clients: Client) -> None:
    for client in clients:
        await settled_events(client)


async def last_rev(client: Client, cid: int) -> int:
    listing: frames.ConversationList = await client.call("channel.list")
    (conversation,) = [c for c in listing.conversations if c.id == cid]
    return conversation.last_rev


# -- threads ----------------------------------------------------------------------


async def test_a_reply_counts_on_its_root_and_a_reply_to_a_reply_joins_the_root(shared_server: RunningServer) -> None:
    alice, bob, carol = await users(shared_server, 3)
    cid = await channel_with(alice, bob, carol)
    root = await send(alice, cid, "root")
    await quiet(alice, bob, carol)

    reply = await send(bob, cid, "first reply", thread_root_id=root.id)
    assert (reply.thread_root_id, reply.also_in_channel, reply.rev) == (root.id, False, root.rev + 1)
    for member in (alice, bob, carol):
        new, updated = await updates(member)
        assert isinstance(new, frames.MessageNew) and new.message == reply
        assert isinstance(updated, frames.MessageUpdated)
        assert (updated.change, updated.by, updated.reaction) == ("thread", uid(bob), None)
        assert (updated.message.id, updated.message.reply_count, updated.message.repliers) == (root.id, 1, [uid(bob)])
        assert updated.message.last_reply_ts == reply.ts
        assert updated.message.rev == reply.rev + 1

    second = await send(carol, cid, "to the reply", thread_root_id=reply.id)
    assert second.thread_root_id == root.id
    root_now = await stored(alice, root)
    assert (root_now.reply_count, root_now.repliers, root_now.last_reply_ts) == (2, [uid(carol), uid(bob)], second.ts)
    thread: frames.ThreadPage = await alice.call("thread.history", conversation_id=cid, thread_root_id=root.id)
    assert thread.root == root_now
    assert [m.id for m in thread.messages] == [reply.id, second.id]
    assert thread.next_cursor is None


async def test_replies_leave_the_main_timeline_unless_also_in_channel(shared_server: RunningServer) -> None:
    (alice,) = await users(shared_server, 1)
    cid = await channel_with(alice)
    root = await send(alice, cid, "root")
    hidden = await send(alice, cid, "in the thread only", thread_root_id=root.id)
    shown = await send(alice, cid, "in the channel too", thread_root_id=root.id, also_in_channel=True)
    assert shown.also_in_channel is True
    after = await send(alice, cid, "after")

    main = await timeline(alice, cid, include_replies=False)
    assert [m.id for m in main] == [root.id, shown.id, after.id]
    everything = await timeline(alice, cid)  # the default keeps seqs continuous
    assert [m.id for m in everything] == [root.id, hidden.id, shown.id, after.id]
    assert [m.seq for m in everything] == [1, 2, 3, 4]
    await expect_error(
        alice, "bad_request", "message.send", conversation_id=cid, text="x", client_msg_id="x", also_in_channel=True
    )


async def test_thread_history_pages_by_seq_both_ways(shared_server: RunningServer) -> None:
    (alice,) = await users(shared_server, 1)
    cid = await channel_with(alice)
    root = await send(alice, cid, "root")
    await send(alice, cid, "not in the thread")
    replies = [await send(alice, cid, f"reply {i}", thread_root_id=root.id) for i in range(5)]

    async def pages(order: str, cursor_field: str) -> list[list[str]]:
        seen: list[list[str]] = []
        cursor: int | None = None
        while True:
            extra = {cursor_field: cursor} if cursor is not None else {}
            page: frames.ThreadPage = await alice.call(
                "thread.history", conversation_id=cid, thread_root_id=root.id, limit=2, order=order, **extra
            )
            assert page.root.reply_count == 5
            seen.append([m.id for m in page.messages])
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    ids = [r.id for r in replies]
    assert await pages("asc", "after") == [ids[0:2], ids[2:4], ids[4:]]
    assert await pages("desc", "before") == [ids[4:2:-1], ids[2:0:-1], ids[:1]]


async def test_a_root_of_another_conversation_or_unknown_is_not_found(shared_server: RunningServer) -> None:
    (alice,) = await users(shared_server, 1)
    cid, other = await channel_with(alice), await channel_with(alice)
    elsewhere = await send(alice, other, "in the other room")
    for root_id in (elsewhere.id, "no-such-message"):
        await expect_error(
            alice, "not_found", "message.send", conversation_id=cid, text="x", client_msg_id="x", thread_root_id=root_id
        )
        await expect_error(alice, "not_found", "thread.history", conversation_id=cid, thread_root_id=root_id)
    assert await timeline(alice, cid) == []


async def test_a_deleted_root_takes_no_reply(shared_server: RunningServer) -> None:
    (alice,) = await users(shared_server, 1)
    cid = await channel_with(alice)
    root = await send(alice, cid, "root")
    reply = await send(alice, cid, "reply", thread_root_id=root.id)
    await change(alice, "message.delete", root)
    for named in (root, reply):  # a reply names its root's thread
        error = await expect_error(
            alice, "conflict", "message.send", conversation_id=cid, text="x", client_msg_id="x", thread_root_id=named.id
        )
        assert error.message == "message was deleted"


# -- edits --------------------------------------------------------------------------


async def test_its_author_edits_a_message_and_every_member_sees_it(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice, bob)
    original = await send(alice, cid, "helo")
    await quiet(alice, bob)

    edited = await change(alice, "message.edit", original, text="hello")
    assert (edited.id, edited.seq, edited.text) == (original.id, original.seq, "hello")
    assert edited.edited_ts is not None and edited.edited_ts >= original.ts
    assert edited.rev > original.rev
    for member in (alice, bob):
        (event,) = await updates(member)
        assert isinstance(event, frames.MessageUpdated)
        assert (event.change, event.by, event.message) == ("edited", uid(alice), edited)
    assert await stored(bob, original) == edited

    # The same text again changes nothing: no revision, no event.
    again = await change(alice, "message.edit", original, text="hello")
    assert again == edited
    assert await updates(bob) == []

    error = await expect_error(
        bob, "forbidden", "message.edit", conversation_id=cid, message_id=original.id, text="mine now"
    )
    assert error.message == "only its author may edit a message"
    await expect_error(alice, "too_large", "message.edit", conversation_id=cid, message_id=original.id, text="x" * 101)
    await expect_error(alice, "not_found", "message.edit", conversation_id=cid, message_id="nope", text="x")
    assert await stored(bob, original) == edited


async def test_the_edit_window_closes_and_a_tombstone_takes_no_edit(shared_server: RunningServer) -> None:
    (alice,) = await users(shared_server, 1)
    cid = await channel_with(alice)
    # Sent two minutes ago (edit_window_seconds is 60): stored as a send would store it.
    assert shared_server.app.services is not None
    old = await shared_server.app.services.messages.append(
        NewMessage(conversation_id=cid, sender_id=uid(alice), text="old", client_msg_id="old", ts=now_ms() - 120_000)
    )
    error = await expect_error(
        alice, "forbidden", "message.edit", conversation_id=cid, message_id=old.record.id, text="new"
    )
    assert error.message == "the edit window has closed"

    fresh = await send(alice, cid, "fresh")
    await change(alice, "message.delete", fresh)
    await expect_error(alice, "conflict", "message.edit", conversation_id=cid, message_id=fresh.id, text="new")


async def test_an_edit_resolves_its_mentions_again(shared_server: RunningServer) -> None:
    alice, bob, carol = await users(shared_server, 3)
    cid = await channel_with(alice, bob, carol)
    message = await send(alice, cid, f"hi @{bob.user.username if bob.user else ''}")
    assert message.mentions == [uid(bob)]
    assert carol.user is not None
    edited = await change(alice, "message.edit", message, text=f"sorry, I meant @{carol.user.username} @channel")
    assert (edited.mentions, edited.mention_all) == ([uid(carol)], "channel")
    plain = await change(alice, "message.edit", message, text="nobody")
    assert (plain.mentions, plain.mention_all) == ([], None)


# -- deletes ------------------------------------------------------------------------


async def test_a_delete_leaves_a_tombstone_in_place(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice, bob)
    before = await send(alice, cid, "before")
    message = await send(bob, cid, f"hi @{alice.user.username if alice.user else ''}")
    await change(alice, "reaction.add", message, emoji=THUMBS_UP)
    await change(alice, "message.pin", message)
    after = await send(alice, cid, "after")
    await quiet(alice, bob)

    tombstone = await change(bob, "message.delete", message)
    assert (tombstone.id, tombstone.seq, tombstone.sender_id, tombstone.ts) == (
        message.id,
        message.seq,
        message.sender_id,
        message.ts,
    )
    assert (tombstone.deleted, tombstone.text, tombstone.mentions, tombstone.reactions) == (True, "", [], [])
    assert (tombstone.pinned_by, tombstone.my_reactions) == (None, None)
    for member in (alice, bob):
        (event,) = await updates(member)
        assert isinstance(event, frames.MessageDeleted)
        assert (event.message, event.by) == (tombstone, uid(bob))
    assert await timeline(alice, cid) == [before, tombstone, after]
    pins: frames.MessageList = await alice.call("conversation.pins", conversation_id=cid)
    assert pins.messages == []

    # Deleting it again is answered with the tombstone, and changes nothing.
    assert await change(bob, "message.delete", message) == tombstone
    assert await updates(alice) == []
    for op, fields in (
        ("reaction.add", {"emoji": TADA}),
        ("reaction.remove", {"emoji": THUMBS_UP}),
        ("message.pin", {}),
        ("message.unpin", {}),
    ):
        await expect_error(alice, "conflict", op, conversation_id=cid, message_id=message.id, **fields)


async def test_who_may_delete_a_message(shared_server: RunningServer) -> None:
    creator, bob, carol = await users(shared_server, 3)
    cid = await channel_with(creator, bob, carol)
    by_bob = await send(bob, cid, "bob's")
    error = await expect_error(carol, "forbidden", "message.delete", conversation_id=cid, message_id=by_bob.id)
    assert error.message
    assert (await change(creator, "message.delete", by_bob)).deleted  # a channel's creator may
    await expect_error(bob, "not_found", "message.delete", conversation_id=cid, message_id="nope")

    dm = (await creator.call("dm.open", user_ids=[uid(bob)])).conversation.id
    in_dm = await send(bob, dm, "in a DM")
    await expect_error(creator, "forbidden", "message.delete", conversation_id=dm, message_id=in_dm.id)
    assert (await change(bob, "message.delete", in_dm)).deleted


async def test_deleting_a_reply_lowers_its_roots_count(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice, bob)
    root = await send(alice, cid, "root")
    first = await send(bob, cid, "first", thread_root_id=root.id)
    await send(bob, cid, "second", thread_root_id=root.id)
    await quiet(alice, bob)

    tombstone = await change(alice, "message.delete", first)  # the channel's creator
    assert tombstone.thread_root_id == root.id
    for member in (alice, bob):
        deleted, updated = await updates(member)
        assert isinstance(deleted, frames.MessageDeleted) and deleted.message == tombstone
        assert isinstance(updated, frames.MessageUpdated)
        assert (updated.change, updated.by, updated.message.id) == ("thread", uid(alice), root.id)
        assert updated.message.reply_count == 1
        assert updated.message.rev == tombstone.rev + 1
    await change(alice, "message.delete", first)  # again: no second decrement
    assert (await stored(alice, root)).reply_count == 1
    thread: frames.ThreadPage = await bob.call("thread.history", conversation_id=cid, thread_root_id=root.id)
    assert [m.deleted for m in thread.messages] == [True, False]


# -- reactions ----------------------------------------------------------------------


async def test_reactions_add_and_remove(shared_server: RunningServer) -> None:
    alice, bob, carol = await users(shared_server, 3)
    cid = await channel_with(alice, bob, carol)
    message = await send(carol, cid, "react to me")
    await quiet(alice, bob, carol)

    by_alice = await change(alice, "reaction.add", message, emoji=":+1:")
    assert by_alice.reactions == [frames.Reaction(emoji=THUMBS_UP, count=1, users=[uid(alice)])]
    assert by_alice.my_reactions == [THUMBS_UP]
    for member in (alice, bob, carol):
        (event,) = await updates(member)
        assert isinstance(event, frames.MessageUpdated)
        assert (event.change, event.by) == ("reaction", uid(alice))
        assert event.reaction == frames.ReactionChange(emoji=THUMBS_UP, user_id=uid(alice), added=True)
        assert event.message.my_reactions is None  # events never carry it
        assert event.message.reactions == by_alice.reactions

    by_bob = await change(bob, "reaction.add", message, emoji=THUMBS_UP)  # the same reaction
    assert by_bob.reactions == [frames.Reaction(emoji=THUMBS_UP, count=2, users=[uid(alice), uid(bob)])]
    assert by_bob.my_reactions == [THUMBS_UP]
    tada = await change(carol, "reaction.add", message, emoji=":tada:")
    assert tada.my_reactions == [TADA]
    await quiet(alice, bob, carol)

    # Adding one already there, or removing one never added: the message as it is, no event.
    for op, who, emoji in (("reaction.add", alice, ":thumbsup:"), ("reaction.remove", carol, THUMBS_UP)):
        unchanged = await change(who, op, message, emoji=emoji)
        assert (unchanged.rev, unchanged.reactions) == (tada.rev, tada.reactions)
    assert await updates(alice) == []

    as_carol = await stored(carol, message)
    assert as_carol.my_reactions == [TADA]
    removed = await change(alice, "reaction.remove", message, emoji="👍")
    assert removed.reactions[0] == frames.Reaction(emoji=THUMBS_UP, count=1, users=[uid(bob)])
    assert removed.my_reactions == []
    (event,) = [e for e in await updates(bob) if isinstance(e, frames.MessageUpdated)]
    assert event.reaction == frames.ReactionChange(emoji=THUMBS_UP, user_id=uid(alice), added=False)
    await change(bob, "reaction.remove", message, emoji=THUMBS_UP)
    await change(carol, "reaction.remove", message, emoji=TADA)
    assert (await stored(alice, message)).reactions == []  # the last user leaving takes the emoji away

    for emoji in ("not an emoji", ":no_such_emoji:", "ab"):
        error = await expect_error(
            alice, "bad_request", "reaction.add", conversation_id=cid, message_id=message.id, emoji=emoji
        )
        assert error.message == "unknown emoji"
    await expect_error(alice, "not_found", "reaction.add", conversation_id=cid, message_id="nope", emoji=THUMBS_UP)


async def test_reaction_limits(shared_server: RunningServer) -> None:
    alice, bob, carol = await users(shared_server, 3)
    cid = await channel_with(alice, bob, carol)
    message = await send(alice, cid, "limits")
    await change(alice, "reaction.add", message, emoji=THUMBS_UP)
    await change(alice, "reaction.add", message, emoji=TADA)
    # max_reactions_per_user is 2.
    await expect_error(alice, "too_large", "reaction.add", conversation_id=cid, message_id=message.id, emoji=HEART)
    await change(bob, "reaction.add", message, emoji=HEART)
    # max_reaction_emojis is 3: a fourth distinct emoji is refused, an existing one is not.
    await expect_error(carol, "too_large", "reaction.add", conversation_id=cid, message_id=message.id, emoji=EYES)
    joined = await change(carol, "reaction.add", message, emoji=TADA)
    assert [(r.emoji, r.count) for r in joined.reactions] == [(THUMBS_UP, 1), (TADA, 2), (HEART, 1)]


async def test_twenty_connections_reacting_at_once_all_count(shared_server: RunningServer) -> None:
    reactors = await users(shared_server, 20)
    cid = await channel_with(reactors[0], *reactors[1:])
    message = await send(reactors[0], cid, "popular")
    outcomes = await asyncio.gather(*(change(r, "reaction.add", message, emoji=THUMBS_UP) for r in reactors))
    assert len({m.rev for m in outcomes}) == 20
    final = await stored(reactors[0], message)
    (reaction,) = final.reactions
    assert reaction.count == 20
    assert sorted(reaction.users) == sorted(uid(r) for r in reactors)  # REACTION_USERS_SHOWN is 20
    assert final.rev == max(m.rev for m in outcomes)


# -- mentions -----------------------------------------------------------------------


async def test_mentions_resolve_members_only(shared_server: RunningServer) -> None:
    alice, bob, outsider = await users(shared_server, 3)
    cid = await channel_with(alice, bob)
    assert bob.user is not None and outsider.user is not None and alice.user is not None
    text = f"@{bob.user.username.upper()} and @{outsider.user.username}, @nobody-at-all. @here"
    message = await send(alice, cid, text)
    assert (message.mentions, message.mention_all) == ([uid(bob)], "here")
    (event,) = [e for e in await updates(bob) if isinstance(e, frames.MessageNew)]
    assert event.message.mentions == [uid(bob)]
    self_and_all = await send(alice, cid, f"note to @{alice.user.username}: @channel @here")
    assert (self_and_all.mentions, self_and_all.mention_all) == ([uid(alice)], "channel")
    assert (await send(alice, cid, "mail me at a@b.co")).mentions == []


async def test_reserved_words_are_no_usernames(shared_server: RunningServer) -> None:
    for word in ("channel", "here", "everyone"):
        client = await shared_server.client()
        await expect_error(client, "conflict", "register", username=word, password="correct horse", display_name="x")


# -- pins ---------------------------------------------------------------------------


async def test_pins(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice, bob)
    first, second, third, fourth = [await send(alice, cid, f"message {i}") for i in range(4)]
    await quiet(alice, bob)

    pinned = await change(bob, "message.pin", first)
    assert pinned.pinned_by == uid(bob) and pinned.pinned_ts is not None
    (event,) = await updates(alice)
    assert isinstance(event, frames.MessageUpdated)
    assert (event.change, event.by, event.message) == ("pinned", uid(bob), pinned)
    assert await change(alice, "message.pin", first) == pinned  # already pinned: as it is
    assert await updates(alice) == []

    await change(alice, "message.pin", second)
    await change(alice, "message.pin", third)
    listed: frames.MessageList = await bob.call("conversation.pins", conversation_id=cid)
    assert [m.id for m in listed.messages] == [third.id, second.id, first.id]  # most recently pinned first
    await expect_error(alice, "too_large", "message.pin", conversation_id=cid, message_id=fourth.id)  # max_pins 3

    unpinned = await change(alice, "message.unpin", second)
    assert (unpinned.pinned_by, unpinned.pinned_ts) == (None, None)
    await quiet(alice)
    assert await change(alice, "message.unpin", second) == unpinned
    assert await updates(alice) == []
    (event,) = [e for e in await updates(bob) if isinstance(e, frames.MessageUpdated) and e.change == "unpinned"]
    assert event.message == unpinned
    await change(alice, "message.pin", fourth)
    listed = await bob.call("conversation.pins", conversation_id=cid)
    assert [m.id for m in listed.messages] == [fourth.id, third.id, first.id]
    await expect_error(alice, "not_found", "message.pin", conversation_id=cid, message_id="nope")


# -- who receives what, who may ask --------------------------------------------------


async def test_events_reach_every_connection_of_every_member_and_no_one_else(shared_server: RunningServer) -> None:
    alice, bob, outsider = await users(shared_server, 3)
    assert alice.user is not None
    alice_phone = await shared_server.client()
    await alice_phone.login(alice.user.username, "correct horse")
    cid = await channel_with(alice, bob)
    message = await send(bob, cid, "hi")
    reply = await send(bob, cid, "reply", thread_root_id=message.id)
    await change(bob, "message.edit", message, text="hi!")
    await change(alice, "reaction.add", message, emoji=THUMBS_UP)
    await change(alice, "message.pin", message)
    await change(bob, "message.delete", reply)

    expected = [
        ("message.new", message.id),
        ("message.new", reply.id),
        ("message.updated", message.id),  # thread
        ("message.updated", message.id),  # edited
        ("message.updated", message.id),  # reaction
        ("message.updated", message.id),  # pinned
        ("message.deleted", reply.id),
        ("message.updated", message.id),  # thread
    ]
    for connection in (alice, alice_phone, bob):
        got = [(frames.tag_of(type(e)), e.message.id) for e in await updates(connection)]
        assert got == expected
    assert await updates(outsider) == []


async def test_non_members_of_a_private_channel_are_told_it_does_not_exist(shared_server: RunningServer) -> None:
    alice, outsider = await users(shared_server, 2)
    cid = await channel_with(alice, private=True)
    message = await send(alice, cid, "secret")
    target = {"conversation_id": cid, "message_id": message.id}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("message.send", {"conversation_id": cid, "text": "x", "client_msg_id": "x", "thread_root_id": message.id}),
        ("message.history", {"conversation_id": cid, "include_replies": False}),
        ("thread.history", {"conversation_id": cid, "thread_root_id": message.id}),
        ("message.edit", {**target, "text": "x"}),
        ("message.delete", target),
        ("reaction.add", {**target, "emoji": THUMBS_UP}),
        ("reaction.remove", {**target, "emoji": THUMBS_UP}),
        ("message.pin", target),
        ("message.unpin", target),
        ("conversation.pins", {"conversation_id": cid}),
        ("message.changes", {"conversation_id": cid, "after_rev": 0}),
    ]
    for op, fields in requests:
        await expect_error(outsider, "not_found", op, **fields)
    assert await timeline(alice, cid) == [message]


# -- the change feed ----------------------------------------------------------------


async def test_changes_page_oldest_change_first_up_to_the_horizon(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice, bob)
    first, second, third = [await send(alice, cid, f"message {i}") for i in range(3)]
    await change(alice, "message.edit", first, text="first, edited")
    await change(bob, "reaction.add", second, emoji=THUMBS_UP)
    await change(alice, "message.delete", third)

    async def feed(client: Client, after_rev: int, limit: int) -> tuple[list[frames.Message], int]:
        messages: list[frames.Message] = []
        while True:
            page: frames.ChangesPage = await client.call(
                "message.changes", conversation_id=cid, after_rev=after_rev, limit=limit
            )
            messages += page.messages
            if page.next_cursor is None:
                return messages, page.rev
            assert page.rev == page.next_cursor == page.messages[-1].rev
            after_rev = page.next_cursor

    everything, synced = await feed(bob, 0, 2)
    # Each message once, with its latest state, in the order of its latest change.
    assert [m.id for m in everything] == [first.id, second.id, third.id]
    assert [m.rev for m in everything] == sorted(m.rev for m in everything)
    assert everything[0].text == "first, edited"
    assert everything[1].my_reactions == [THUMBS_UP]
    assert everything[2].deleted
    assert synced == everything[-1].rev == await last_rev(bob, cid)

    assert await feed(bob, synced, 100) == ([], synced)
    await change(alice, "reaction.add", first, emoji=TADA)
    later, synced_again = await feed(bob, synced, 100)
    assert [m.id for m in later] == [first.id]
    assert later[0].my_reactions == []
    assert synced_again == later[0].rev > synced
    assert await feed(bob, 0, 100) == ([everything[1], everything[2], later[0]], synced_again)


async def test_conversations_carry_their_last_rev(shared_server: RunningServer) -> None:
    alice, bob = await users(shared_server, 2)
    cid = await channel_with(alice)
    assert await last_rev(alice, cid) == 0
    message = await send(alice, cid, "one")
    edited = await change(alice, "message.edit", message, text="two")
    assert await last_rev(alice, cid) == edited.rev
    joined: frames.ConversationResult = await bob.call("channel.join", channel_id=cid)
    assert (joined.conversation.last_seq, joined.conversation.last_rev) == (1, edited.rev)
    dm: frames.ConversationResult = await alice.call("dm.open", user_ids=[uid(bob)])
    assert dm.conversation.last_rev == 0
    in_dm = await send(alice, dm.conversation.id, "hi")
    listing: frames.ConversationList = await bob.call("dm.list")
    assert [(c.last_seq, c.last_rev) for c in listing.conversations] == [(1, in_dm.rev)]
