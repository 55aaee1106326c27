"""Message changes across server instances: every change reaches every
member on every instance, and a client that follows PROTOCOL.md §9 (one
revision per conversation) converges to the server's state after missing
changes made on other instances, whatever instance it reconnects to.

Real `hubbub serve` processes on PostgreSQL, routed through Redis
(tests/cluster.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.protocol import frames
from tests.backends import MongoServer, drop_mongo_database
from tests.cluster import SHARED_REDIS, Cluster, Peer, create_channel, full_history
from tests.helpers import expect_error

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)


@pytest.fixture(params=["postgres", "postgres+mongo"])
async def any_cluster(request: pytest.FixtureRequest, tmp_path: Path, stores: dict[str, Any]) -> AsyncIterator[Cluster]:
    """A cluster with its messages on PostgreSQL, or on MongoDB (whose
    revisions come from compare-and-set and leases, docs/messages.md)."""
    settings = dict(stores)
    database = ""
    mongo: MongoServer | None = None
    if request.param == "postgres+mongo":
        mongo = request.getfixturevalue("mongo_server")
        database = f"hubbub_test_{uuid.uuid4().hex[:12]}"
        settings.update(messages_backend="mongo", mongo_url=mongo.url, mongo_database=database)
    async with AsyncExitStack() as stack:
        instances = Cluster(tmp_path, settings, SHARED_REDIS, stack)
        stack.push_async_callback(instances.close)
        yield instances
    if mongo is not None:
        await drop_mongo_database(mongo.url, database)


MessageEvent = frames.MessageNew | frames.MessageUpdated | frames.MessageDeleted


class Replica:
    """A client's copy of one conversation, kept by PROTOCOL.md §9: live
    events applied when newer, and ``message.changes`` from the revision it
    last synced to."""

    def __init__(self, peer: Peer, conversation_id: int) -> None:
        self.peer = peer
        self.conversation_id = conversation_id
        self.messages: dict[str, frames.Message] = {}
        self.synced = 0
        self._applied_events = 0

    def _keep_if_newer(self, message: frames.Message) -> None:
        held = self.messages.get(message.id)
        if held is None or message.rev > held.rev:
            self.messages[message.id] = message

    def apply_events(self) -> None:
        """Every event the peer received since the last call."""
        events = self.peer.events[self._applied_events :]
        self._applied_events = len(self.peer.events)
        for event in events:
            if isinstance(event, MessageEvent):
                message = event.message
                if message.conversation_id != self.conversation_id:
                    continue
                self._keep_if_newer(msgspec.structs.replace(message, my_reactions=self._my_reactions_after(event)))

    def _my_reactions_after(self, event: MessageEvent) -> list[str] | None:
        """Events carry no ``my_reactions``: a client keeps its own from what it had and the
        event's ``reaction``; absent (None) on a message without reactions (PROTOCOL.md §6)."""
        if not event.message.reactions:
            return None
        held = self.messages.get(event.message.id)
        mine = list(held.my_reactions or []) if held is not None else []
        change = event.reaction if isinstance(event, frames.MessageUpdated) else None
        if change is not None and change.user_id == self.peer.user_id:
            if change.added and change.emoji not in mine:
                mine.append(change.emoji)
            if not change.added and change.emoji in mine:
                mine.remove(change.emoji)
        return mine

    async def sync(self) -> int:
        """``message.changes`` from ``synced`` to the end; the number of messages applied."""
        applied = 0
        cursor: int | None = self.synced
        while cursor is not None:
            page: frames.ChangesPage = await self.peer.call(
                "message.changes", conversation_id=self.conversation_id, after_rev=cursor, limit=7
            )
            for message in page.messages:
                self._keep_if_newer(message)
                applied += 1
            cursor = page.next_cursor
            if cursor is None:
                self.synced = page.rev
        return applied

    def view(self) -> dict[str, frames.Message]:
        return dict(sorted(self.messages.items(), key=lambda item: item[1].seq))


async def server_view(peer: Peer, conversation_id: int) -> dict[str, frames.Message]:
    """What the server holds, as ``peer`` sees it (history includes thread replies and tombstones)."""
    return {m.id: m for m in await full_history(peer, conversation_id)}


async def call(peer: Peer, op: str, **fields: Any) -> frames.Message:
    """A change request; the message's state after it."""
    result: frames.MessageResult = await peer.call(op, **fields)
    return result.message


async def send(peer: Peer, conversation_id: int, text: str, **fields: Any) -> frames.Message:
    ack: frames.SendAck = await peer.call(
        "message.send", conversation_id=conversation_id, text=text, client_msg_id=f"{peer.name}-{text}", **fields
    )
    return ack.message


async def test_every_change_reaches_every_member_on_every_instance(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    cid = await create_channel(alice, [bob])
    await cluster.settle()

    root = await send(alice, cid, "root")
    reply = await send(bob, cid, f"hi @{await username(alice)}", thread_root_id=root.id)
    assert reply.thread_root_id == root.id and reply.mentions == [alice.user_id]
    await alice.expect(frames.MessageNew, lambda e: e.message.id == reply.id)
    thread = await alice.expect(frames.MessageUpdated, lambda e: e.message.id == root.id and e.change == "thread")
    assert (thread.by, thread.message.reply_count, thread.message.repliers) == (bob.user_id, 1, [bob.user_id])

    await call(alice, "message.edit", conversation_id=cid, message_id=root.id, text="root, edited")
    edited = await bob.expect(frames.MessageUpdated, lambda e: e.message.id == root.id and e.change == "edited")
    assert edited.message.text == "root, edited" and edited.message.edited_ts is not None

    await call(bob, "reaction.add", conversation_id=cid, message_id=root.id, emoji=":+1:")
    reacted = await alice.expect(frames.MessageUpdated, lambda e: e.change == "reaction")
    assert reacted.reaction == frames.ReactionChange(emoji="👍", user_id=bob.user_id, added=True)
    assert [(r.emoji, r.count, r.users) for r in reacted.message.reactions] == [("👍", 1, [bob.user_id])]
    assert reacted.message.my_reactions is None  # events are shared by every member

    await call(alice, "message.pin", conversation_id=cid, message_id=root.id)
    pinned = await bob.expect(frames.MessageUpdated, lambda e: e.change == "pinned")
    assert pinned.message.pinned_by == alice.user_id

    await call(bob, "message.delete", conversation_id=cid, message_id=reply.id)
    deleted = await alice.expect(frames.MessageDeleted, lambda e: e.message.id == reply.id)
    assert (deleted.message.deleted, deleted.message.text, deleted.message.seq) == (True, "", reply.seq)
    uncounted = await alice.expect(
        frames.MessageUpdated,
        lambda e: e.message.id == root.id and e.change == "thread" and e.by == bob.user_id,
        since=alice.events.index(deleted),
    )
    assert uncounted.message.reply_count == 0


async def username(peer: Peer) -> str:
    me: frames.UserResult = await peer.call("me")
    return me.user.username


CONCURRENT_ROUNDS = 6


async def test_a_client_that_missed_changes_on_other_instances_converges(any_cluster: Cluster) -> None:
    """Carol syncs, goes away while alice (instance a) and bob (instance b) edit,
    delete, react, pin and reply, concurrently; she reconnects to the other
    instance, syncs by revision while changes go on, and ends with exactly the
    server's state."""
    cluster = any_cluster
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    carol = await cluster.connect(b, name="carol")
    cid = await create_channel(alice, [bob, carol])
    await cluster.settle()

    first = [await send(alice, cid, f"m{i}") for i in range(6)]
    await call(carol, "reaction.add", conversation_id=cid, message_id=first[0].id, emoji="🎉")
    replica = Replica(carol, cid)
    assert await replica.sync() == len(first)
    assert replica.view() == await server_view(carol, cid)

    await carol.client.close()
    m0, m1, m2, m3, m4, m5 = first
    await call(alice, "message.edit", conversation_id=cid, message_id=m0.id, text="m0, edited")
    await call(alice, "message.delete", conversation_id=cid, message_id=m1.id)
    await call(alice, "message.pin", conversation_id=cid, message_id=m2.id)
    bob_reply = await send(bob, cid, "bob's reply", thread_root_id=m3.id)
    await send(alice, cid, "alice's reply", thread_root_id=bob_reply.id, also_in_channel=True)  # joins m3's thread
    await call(bob, "message.delete", conversation_id=cid, message_id=bob_reply.id)
    await call(alice, "reaction.remove", conversation_id=cid, message_id=m0.id, emoji="🎉")  # not hers: no-op

    async def edits_on_a(round_: str) -> None:
        for i in range(CONCURRENT_ROUNDS):
            await call(alice, "message.edit", conversation_id=cid, message_id=m4.id, text=f"m4 {round_} v{i}")
            await send(alice, cid, f"late-{round_}-{i}")

    async def reactions_on_b() -> None:
        for i in range(CONCURRENT_ROUNDS):
            op = "reaction.add" if i % 2 == 0 else "reaction.remove"
            await call(bob, op, conversation_id=cid, message_id=m4.id, emoji="👀")
            emoji = (":thumbsup:", ":heart:", ":tada:")[i % 3]
            await call(bob, "reaction.add", conversation_id=cid, message_id=m5.id, emoji=emoji)

    await asyncio.gather(edits_on_a("away"), reactions_on_b())

    carol = await cluster.connect(a, peer=carol)  # the other instance
    replica.peer = carol
    listed: frames.ConversationList = await carol.call("channel.list")
    (conversation,) = [c for c in listed.conversations if c.id == cid]
    assert conversation.last_rev > replica.synced

    changing = asyncio.gather(edits_on_a("back"), reactions_on_b())  # changes go on while she syncs
    await replica.sync()
    replica.apply_events()
    await changing
    await replica.sync()  # what the live events may have missed
    replica.apply_events()

    truth = await server_view(carol, cid)
    assert replica.view() == truth
    assert truth[m1.id].deleted and truth[m1.id].text == ""
    assert truth[m3.id].reply_count == 1  # bob's reply deleted, alice's counted
    assert truth[m0.id].my_reactions == ["🎉"] and truth[m0.id].text == "m0, edited"
    final: frames.ChangesPage = await carol.call("message.changes", conversation_id=cid, after_rev=replica.synced)
    assert final.messages == [] and final.next_cursor is None and final.rev == replica.synced


async def test_refused_changes_are_refused_alike_on_every_instance_and_change_nothing(cluster: Cluster) -> None:
    """The rules hold whichever instance a request reaches: bob, and alice's
    second device (instance b) ask for what alice's messages (sent on
    instance a) do not allow, and a stranger
    probes a private channel; every refusal is the documented error, and
    nobody anywhere receives an event for it."""
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    stranger = await cluster.connect(b, name="stranger")
    alice_on_b = await cluster.connect(b, peer=alice.device("alice-on-b"))
    cid = await create_channel(alice, [bob], private=True)
    other = await create_channel(alice, [])
    await cluster.settle()
    kept = await send(alice, cid, "kept")
    gone = await send(alice, cid, "gone")
    await call(alice, "message.delete", conversation_id=cid, message_id=gone.id)
    elsewhere = await send(alice, other, "elsewhere")
    await alice.expect(frames.MessageDeleted, lambda e: e.message.id == gone.id)
    await bob.expect(frames.MessageDeleted, lambda e: e.message.id == gone.id)
    seen = {peer.name: len(peer.events) for peer in (alice, bob)}
    before = await server_view(alice, cid)

    on = {"conversation_id": cid}
    refusals: list[tuple[Peer, str, str, dict[str, Any]]] = [
        (bob, "forbidden", "message.edit", {**on, "message_id": kept.id, "text": "not yours"}),
        (bob, "forbidden", "message.delete", {**on, "message_id": kept.id}),
        (alice_on_b, "conflict", "message.edit", {**on, "message_id": gone.id, "text": "x"}),
        (bob, "conflict", "reaction.add", {**on, "message_id": gone.id, "emoji": ":tada:"}),
        (bob, "conflict", "message.pin", {**on, "message_id": gone.id}),
        (bob, "conflict", "message.send", {**on, "text": "re", "client_msg_id": "r1", "thread_root_id": gone.id}),
        (bob, "bad_request", "reaction.add", {**on, "message_id": kept.id, "emoji": ":no_such_emoji:"}),
        (bob, "not_found", "message.send", {**on, "text": "re", "client_msg_id": "r2", "thread_root_id": elsewhere.id}),
        (bob, "not_found", "message.edit", {**on, "message_id": "no-such-message", "text": "x"}),
        (stranger, "not_found", "message.changes", {**on, "after_rev": 0}),
        (stranger, "not_found", "reaction.add", {**on, "message_id": kept.id, "emoji": ":tada:"}),
        (stranger, "not_found", "thread.history", {**on, "thread_root_id": kept.id}),
        (stranger, "not_found", "conversation.pins", on),
    ]
    for peer, code, op, fields in refusals:
        await expect_error(peer.client, code, op, **fields)

    assert await server_view(alice, cid) == before
    probe = await send(alice, cid, "after the refusals")  # every event after this one would have come before it
    for peer in (alice, bob):
        await peer.expect(frames.MessageNew, lambda e: e.message.id == probe.id)
        # Presence is left out: a presence batch (the connects above, coalesced over
        # a window and routed through Redis) may still arrive in this span, and no
        # refusal can cause one.
        late = [
            e for e in peer.events[seen[peer.name] :] if not isinstance(e, (frames.MessageNew, frames.PresenceBatch))
        ]
        assert late == [], f"{peer.name} got events for refused changes: {late}"
