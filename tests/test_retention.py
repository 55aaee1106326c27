"""Retention end to end (issue 15): real clients on real sockets against one
real server per store combination (shared by the module's tests: each makes
its own users and channels, with a per-channel override, so the purge of one
test's channel never touches another's).

The purge is driven deterministically: ``App.retention.run_once(now=...)``
runs one pass as of a chosen time, which the test awaits; nothing sleeps for
messages to expire. tests/test_retention_task.py covers the background task
itself and the lock between instances.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from hubbub.server.app import App
from hubbub.server.retention import RetentionPurge
from hubbub.server.retention_policy import DAY_MS
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("retention")]

LIMITS: dict[str, Any] = {
    "retention_override_min_messages": 2,
    "retention_override_max_messages": 1000,
    "retention_override_min_age_days": 1,
    "retention_override_max_age_days": 30,
    # The background task stays out of the way: the tests run the passes.
    "retention_interval_seconds": 3600.0,
    "retention_batch_size": 3,
}
_words = itertools.count(1)


def word() -> str:
    """A word no other test's message has (letters only: one search word)."""
    n, letters = next(_words), ""
    while True:
        n, r = divmod(n, 26)
        letters += chr(ord("a") + r)
        if n == 0:
            return "zr" + letters + "x"


def purger(server: RunningServer) -> RetentionPurge:
    app: App = server.app
    assert app.retention is not None
    return app.retention


async def send(client: Client, cid: int, text: str = "") -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=cid, text=text or unique_name("text "), client_msg_id=unique_name("m")
    )
    return ack.message


async def channel(owner: Client, *members: Client) -> int:
    cid: int = (await owner.call("channel.create", name=unique_name("room"))).conversation.id
    for member in members:
        await member.call("channel.join", channel_id=cid)
    return cid


async def history(client: Client, cid: int) -> frames.HistoryPage:
    page: frames.HistoryPage = await client.call("message.history", conversation_id=cid, limit=100, order="asc")
    return page


async def listed(client: Client, cid: int) -> frames.Conversation:
    channels: list[frames.Conversation] = (await client.call("channel.list")).conversations
    return next(c for c in channels if c.id == cid)


async def test_admins_set_the_override_within_bounds_and_members_see_it(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    cid = await channel(alice, bob)
    fresh = await listed(bob, cid)
    assert fresh.retention == frames.Retention()  # nothing applies: kept forever
    assert fresh.oldest_seq == 1

    await expect_error(bob, ErrorCode.FORBIDDEN, "channel.update", channel_id=cid, retention_max_messages=10)
    too_few = await expect_error(
        alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=cid, retention_max_messages=1
    )
    assert "between 2 and 1000" in too_few.message
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=cid, retention_max_age_days=31)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.update", channel_id=cid, retention_max_messages=-1)
    assert (await listed(bob, cid)).retention == frames.Retention()  # nothing half-written

    bob.drain_events()
    reply = await alice.call("channel.update", channel_id=cid, retention_max_age_days=7, retention_max_messages=50)
    expected = frames.Retention(max_age_days=7, max_messages=50, effective_max_age_days=7, effective_max_messages=50)
    assert reply.conversation.retention == expected
    event = await bob.next_event(frames.ChannelUpdated)
    assert event.conversation.retention == expected
    assert (await listed(bob, cid)).retention == expected

    # 0 removes one override; the server's own retention (off here) applies again.
    cleared = await alice.call("channel.update", channel_id=cid, retention_max_age_days=0)
    assert cleared.conversation.retention == frames.Retention(max_messages=50, effective_max_messages=50)


async def test_exactly_the_expired_messages_go_while_sends_go_on(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    cid = await channel(alice, bob)
    await alice.call("channel.update", channel_id=cid, retention_max_age_days=1)
    old = [await send(alice, cid) for _ in range(8)]
    newer = [await send(alice, cid) for _ in range(3)]
    cutoff = old[-1].ts + 1  # everything sent up to the last old message expires (one ms may hold a newer one)
    expired = {m.id for m in old + newer if m.ts < cutoff}
    assert len(expired) >= len(old)

    # A pass as of a day after the cutoff, while 12 more sends go on (batches of 3 between them).
    async def sends() -> list[frames.Message]:
        return list(await asyncio.gather(*(send(bob, cid) for _ in range(12))))

    purged, during = await asyncio.gather(purger(shared_server).run_once(now=cutoff + DAY_MS), sends())
    assert purged == len(expired)

    page = await history(alice, cid)
    kept = [m for m in old + newer if m.id not in expired]
    assert [m.id for m in page.messages] == [m.id for m in kept] + [m.id for m in sorted(during, key=lambda m: m.seq)]
    oldest = page.messages[0].seq
    assert page.oldest_seq == oldest == len(expired) + 1
    changes: frames.ChangesPage = await alice.call("message.changes", conversation_id=cid, after_rev=0)
    assert changes.oldest_seq == oldest
    assert {m.id for m in changes.messages}.isdisjoint(expired)
    assert (await listed(bob, cid)).oldest_seq == oldest
    # A page reaching below the oldest seq ends there: nothing to fetch, no gap to fill.
    below: frames.HistoryPage = await alice.call("message.history", conversation_id=cid, before=oldest + 1)
    assert ([m.seq for m in below.messages], below.next_cursor, below.oldest_seq) == ([oldest], None, oldest)

    # The next pass finds nothing more as of the same time.
    assert await purger(shared_server).run_once(now=cutoff + DAY_MS) == 0


async def test_message_count_in_bounded_batches_search_and_unread_follow(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    cid = await channel(alice, bob)
    w = word()
    sent = [await send(alice, cid, f"{w} number {n} @{bob.user.username if bob.user else ''}") for n in range(8)]
    before = await listed(bob, cid)
    assert (before.unread_count, before.mention_count) == (8, 8)
    found: frames.SearchPage = await bob.call("message.search", query=w, limit=20)
    assert len(found.results) == 8

    await alice.call("channel.update", channel_id=cid, retention_max_messages=3)
    assert await purger(shared_server).run_once() == 5  # in batches of 3: two purge calls
    assert [m.id for m in (await history(bob, cid)).messages] == [m.id for m in sent[5:]]

    after = await listed(bob, cid)
    assert (after.unread_count, after.mention_count, after.oldest_seq, after.last_seq) == (3, 3, 6, 8)
    found = await bob.call("message.search", query=w, limit=20)
    assert [hit.message.id for hit in found.results] == [m.id for m in reversed(sent[5:])]
    read: frames.ReadState = await bob.call("conversation.mark_read", conversation_id=cid, seq=7)
    assert read.unread_count == 1


async def test_pins_and_threads_after_a_purge(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    root = await send(alice, cid, "the root")
    await alice.call("message.pin", conversation_id=cid, message_id=root.id)
    replies = []
    for n in range(3):
        ack = await alice.call(
            "message.send",
            conversation_id=cid,
            text=f"reply {n}",
            client_msg_id=unique_name("r"),
            thread_root_id=root.id,
        )
        replies.append(ack.message)
    await alice.call("channel.update", channel_id=cid, retention_max_messages=3)
    assert await purger(shared_server).run_once() == 1

    pins: frames.MessageList = await alice.call("conversation.pins", conversation_id=cid)
    assert pins.messages == []
    # The replies stay in the conversation's history; the purged root's thread is gone with it.
    page: frames.HistoryPage = await alice.call("message.history", conversation_id=cid, order="asc")
    assert [m.id for m in page.messages] == [m.id for m in replies]
    await expect_error(alice, ErrorCode.NOT_FOUND, "thread.history", conversation_id=cid, thread_root_id=root.id)
