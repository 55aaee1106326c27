"""Read state across server instances: the multi-device test of issue 12 (the
same user on two instances: a mark on one reaches the other at once, whose
next listing shows nothing unread), mute announced across instances, the
documented errors on the other instance, and marks racing sends made on
the other instance.

Real `hubbub serve` processes on PostgreSQL (messages on PostgreSQL or on
MongoDB), routed through Redis (tests/cluster.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from tests.backends import MongoServer, drop_mongo_database
from tests.cluster import SHARED_REDIS, Cluster, Peer, create_channel, send_many
from tests.helpers import expect_error

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)


@pytest.fixture(params=["postgres", "postgres+mongo"])
async def any_cluster(request: pytest.FixtureRequest, tmp_path: Path, stores: dict[str, Any]) -> AsyncIterator[Cluster]:
    """A cluster with its messages on PostgreSQL, or on MongoDB."""
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


async def listed(peer: Peer, conversation_id: int) -> frames.Conversation:
    found: frames.ConversationList = await peer.call("channel.list")
    (view,) = [c for c in found.conversations if c.id == conversation_id]
    return view


async def test_reading_on_one_instance_clears_the_badge_on_the_other(any_cluster: Cluster) -> None:
    a, b = await any_cluster.start("a", "b")
    alice = await any_cluster.connect(a, name="alice")
    laptop = await any_cluster.connect(a, name="bob")
    phone = await any_cluster.connect(b, peer=laptop.device("bob-phone"))
    room = await create_channel(alice, [laptop])
    await any_cluster.settle()
    sent = await send_many(alice, room, "unread", 4)
    await phone.has_messages(m.id for m in sent)
    before = await listed(phone, room)
    assert (before.read_seq, before.unread_count) == (0, 4)

    marked: frames.ReadState = await laptop.call("conversation.mark_read", conversation_id=room, seq=sent[-1].seq)
    assert (marked.read_seq, marked.unread_count) == (4, 0)
    event = await phone.expect(frames.ConversationRead, lambda e: e.conversation_id == room)
    assert event == frames.ConversationRead(conversation_id=room, read_seq=4, unread_count=0, mention_count=0)
    after = await listed(phone, room)
    assert (after.read_seq, after.unread_count, after.mention_count) == (4, 0, 0)
    assert alice.find(frames.ConversationRead, lambda e: True) == []  # only bob's devices hear of it


async def test_mute_on_one_instance_is_announced_on_the_other(any_cluster: Cluster) -> None:
    a, b = await any_cluster.start("a", "b")
    alice = await any_cluster.connect(a, name="alice")
    laptop = await any_cluster.connect(b, name="bob")
    phone = await any_cluster.connect(a, peer=laptop.device("bob-phone"))
    room = await create_channel(alice, [laptop])
    await any_cluster.settle()

    await phone.call("conversation.mute", conversation_id=room, muted=True)
    event = await laptop.expect(frames.ConversationMuted, lambda e: e.conversation_id == room)
    assert event.muted
    (message,) = await send_many(alice, room, "muted", 1)
    await laptop.has_messages([message.id])  # still delivered
    view = await listed(laptop, room)
    assert (view.muted, view.unread_count) == (True, 1)


async def test_refusals_on_the_other_instance_change_nothing(any_cluster: Cluster) -> None:
    a, b = await any_cluster.start("a", "b")
    alice = await any_cluster.connect(a, name="alice")
    stranger = await any_cluster.connect(b, name="stranger")
    private = await create_channel(alice, [], private=True)
    public = await create_channel(alice, [])
    await any_cluster.settle()
    for op, fields in (("conversation.mark_read", {"seq": 1}), ("conversation.mute", {"muted": True})):
        await expect_error(stranger.client, ErrorCode.NOT_FOUND, op, conversation_id=private, **fields)
        await expect_error(stranger.client, ErrorCode.FORBIDDEN, op, conversation_id=public, **fields)
    view = await listed(alice, private)
    assert (view.read_seq, view.muted) == (0, False)
    assert stranger.find(frames.ConversationRead, lambda e: True) == []


async def test_marks_on_one_instance_racing_sends_on_the_other_stay_exact(any_cluster: Cluster) -> None:
    a, b = await any_cluster.start("a", "b")
    writer = await any_cluster.connect(a, name="writer")
    reader = await any_cluster.connect(b, name="reader")
    other = await any_cluster.connect(a, peer=reader.device("reader-2"))
    room = await create_channel(writer, [reader])
    await any_cluster.settle()
    total = 24

    async def marks(peer: Peer) -> list[int]:
        positions = []
        for seq in range(0, total + 1, 4):
            state: frames.ReadState = await peer.call("conversation.mark_read", conversation_id=room, seq=seq)
            positions.append(state.read_seq)
        return positions

    sent, first, second = await asyncio.gather(send_many(writer, room, "race", total), marks(reader), marks(other))
    assert first == sorted(first) and second == sorted(second)
    await reader.has_messages(m.id for m in sent)
    view = await listed(reader, room)
    assert view.last_seq == total
    assert view.unread_count == min(100, total - view.read_seq)  # the default cap
    # Every move reached the other device, in order, ending where the store is.
    # The mark that stored the final position announced it to both devices. Marks made on
    # two instances may be announced in either order: clients keep the furthest (PROTOCOL.md).
    if view.read_seq > 0:  # some mark moved (not all of them ran before the first send was stored)
        for peer in (reader, other):
            await peer.expect(frames.ConversationRead, lambda e: e.read_seq == view.read_seq)
    for peer in (reader, other):
        moves = [e.read_seq for e in peer.find(frames.ConversationRead, lambda e: e.conversation_id == room)]
        assert all(0 < seq <= view.read_seq for seq in moves)
