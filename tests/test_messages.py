"""Messages: send acks, idempotency, access, ordering, history paging, catch-up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from tests.conftest import RunningServer, ServerFactory, unique_name
from tests.helpers import expect_error, settled_events, uid

pytestmark = pytest.mark.all_backends


async def send(client: Client, conversation_id: int, text: str, client_msg_id: str | None = None) -> frames.SendAck:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=conversation_id, text=text, client_msg_id=client_msg_id or unique_name("m")
    )
    return ack


async def history(client: Client, conversation_id: int, **fields: Any) -> frames.HistoryPage:
    page: frames.HistoryPage = await client.call("message.history", conversation_id=conversation_id, **fields)
    return page


async def all_history(client: Client, conversation_id: int) -> list[frames.Message]:
    page = await history(client, conversation_id, limit=100, order="asc")
    assert page.next_cursor is None
    return page.messages


async def channel_with(owner: Client, *members: Client, private: bool = False) -> int:
    cid: int = (await owner.call("channel.create", name=unique_name("room"), private=private)).conversation.id
    for member in members:
        if private:
            await owner.call("channel.invite", channel_id=cid, user_id=uid(member))
        else:
            await member.call("channel.join", channel_id=cid)
    return cid


async def fill(client: Client, conversation_id: int, count: int) -> list[frames.Message]:
    return [(await send(client, conversation_id, f"message {i}")).message for i in range(1, count + 1)]


# -- send -----------------------------------------------------------------------


async def test_send_ack(server: RunningServer) -> None:
    alice = await server.user()
    cid = await channel_with(alice)
    before = int(time.time() * 1000)
    ack = await send(alice, cid, "hello, world", "c-1")
    after = int(time.time() * 1000)
    assert ack.duplicate is False
    m = ack.message
    assert m.seq == 1
    assert before - 1000 <= m.ts <= after + 1000
    assert isinstance(m.id, str) and m.id
    assert (m.conversation_id, m.sender_id, m.text, m.client_msg_id) == (cid, uid(alice), "hello, world", "c-1")

    second = (await send(alice, cid, "again", "c-2")).message
    assert second.seq == 2
    assert second.id != m.id
    assert second.ts >= m.ts
    # The ack means stored: history has it at once.
    assert await all_history(alice, cid) == [m, second]


async def test_idempotent_resend(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    cid = await channel_with(alice, bob)
    first = await send(alice, cid, "only once", "retry-me")
    assert (await bob.next_event(frames.MessageNew)).message == first.message

    for text in ("only once", "a different text under the same id"):
        again = await send(alice, cid, text, "retry-me")
        assert again.duplicate is True
        assert again.message == first.message

    stored = await all_history(alice, cid)
    assert stored == [first.message]
    listing = {c.id: c for c in (await alice.call("channel.list")).conversations}
    assert listing[cid].last_seq == 1
    # A duplicate may be announced again (clients dedupe by id), but never as a new message.
    assert {e.message.id for e in await settled_events(bob) if isinstance(e, frames.MessageNew)} <= {first.message.id}

    # The id is scoped to its sender and conversation.
    from_bob = await send(bob, cid, "bob's own", "retry-me")
    assert from_bob.duplicate is False and from_bob.message.seq == 2
    other = await channel_with(alice)
    elsewhere = await send(alice, other, "other room", "retry-me")
    assert elsewhere.duplicate is False and elsewhere.message.seq == 1


async def test_text_limits(make_server: ServerFactory) -> None:
    server = await make_server(max_message_chars=10)
    alice = await server.user()
    cid = await channel_with(alice)
    assert (await send(alice, cid, "x" * 10)).message.text == "x" * 10
    await expect_error(alice, "too_large", "message.send", conversation_id=cid, text="x" * 11, client_msg_id="big")
    await expect_error(alice, "bad_request", "message.send", conversation_id=cid, text="", client_msg_id="empty")
    assert len(await all_history(alice, cid)) == 1


async def test_send_and_history_access(server: RunningServer) -> None:
    alice = await server.user()
    outsider = await server.user()
    public = await channel_with(alice)
    private = await channel_with(alice, private=True)
    await send(alice, public, "public words")
    await send(alice, private, "private words")

    for op, fields in (
        ("message.send", {"text": "x", "client_msg_id": "x"}),
        ("message.history", {}),
    ):
        await expect_error(outsider, "forbidden", op, conversation_id=public, **fields)
        await expect_error(outsider, "not_found", op, conversation_id=private, **fields)
        await expect_error(outsider, "not_found", op, conversation_id=999_999, **fields)
        await expect_error(alice, "not_found", op, conversation_id=999_999, **fields)

    assert [m.text for m in await all_history(alice, public)] == ["public words"]
    assert [m.text for m in await all_history(alice, private)] == ["private words"]
    assert not [e for e in await settled_events(outsider) if isinstance(e, frames.MessageNew)]


# -- ordering -------------------------------------------------------------------


async def test_concurrent_senders_get_gapless_increasing_seqs(server: RunningServer) -> None:
    senders = [await server.user() for _ in range(5)]
    owner = senders[0]
    cid = await channel_with(owner, *senders[1:])
    listener = await server.user()  # a member that only listens
    await listener.call("channel.join", channel_id=cid)
    everyone = [*senders, listener]
    for client in everyone:
        client.drain_events()
    per_sender = 40
    total = per_sender * len(senders)

    async def burst(client: Client, index: int) -> list[frames.SendAck]:
        return await asyncio.gather(*(send(client, cid, f"{index}:{n}", f"{index}-{n}") for n in range(per_sender)))

    results = await asyncio.gather(*(burst(c, i) for i, c in enumerate(senders)))

    seqs = sorted(ack.message.seq for acks in results for ack in acks)
    assert seqs == list(range(1, total + 1))
    for index, acks in enumerate(results):
        assert all(not ack.duplicate for ack in acks)
        # One connection's requests are served in the order they were sent.
        own = [ack.message.seq for ack in acks]
        assert own == sorted(own), f"sender {index} saw its messages reordered"
        assert [ack.message.text for ack in acks] == [f"{index}:{n}" for n in range(per_sender)]

    acked = {ack.message.seq: ack.message for acks in results for ack in acks}
    for client in everyone:
        received = [(await client.next_event(frames.MessageNew)).message for _ in range(total)]
        assert [m.seq for m in received] == list(range(1, total + 1))
        assert received == [acked[seq] for seq in range(1, total + 1)]
        assert not [e for e in await settled_events(client) if isinstance(e, frames.MessageNew)]

    stored = await history(owner, cid, limit=100, order="asc")
    assert stored.messages == [acked[seq] for seq in range(1, 101)]


# -- history --------------------------------------------------------------------


async def test_history_empty(server: RunningServer) -> None:
    alice = await server.user()
    cid = await channel_with(alice)
    for order in ("desc", "asc"):
        page = await history(alice, cid, order=order)
        assert page.messages == [] and page.next_cursor is None


async def test_history_pages_desc_and_asc(server: RunningServer) -> None:
    alice = await server.user()
    cid = await channel_with(alice)
    sent = await fill(alice, cid, 25)

    page = await history(alice, cid, limit=10)  # desc by default
    assert [m.seq for m in page.messages] == list(range(25, 15, -1))
    assert page.messages[0] == sent[-1]
    assert page.next_cursor == 16
    page = await history(alice, cid, limit=10, before=page.next_cursor)
    assert [m.seq for m in page.messages] == list(range(15, 5, -1))
    assert page.next_cursor == 6
    page = await history(alice, cid, limit=10, before=page.next_cursor)
    assert [m.seq for m in page.messages] == [5, 4, 3, 2, 1]
    assert page.next_cursor is None

    page = await history(alice, cid, limit=10, order="asc")
    assert [m.seq for m in page.messages] == list(range(1, 11))
    assert page.next_cursor == 10
    page = await history(alice, cid, limit=10, order="asc", after=page.next_cursor)
    assert [m.seq for m in page.messages] == list(range(11, 21))
    assert page.next_cursor == 20
    page = await history(alice, cid, limit=10, order="asc", after=page.next_cursor)
    assert [m.seq for m in page.messages] == list(range(21, 26))
    assert page.next_cursor is None

    # A page that ends exactly at the end of the range says so.
    page = await history(alice, cid, limit=5, before=6)
    assert [m.seq for m in page.messages] == [5, 4, 3, 2, 1]
    assert page.next_cursor is None
    page = await history(alice, cid, limit=25)
    assert len(page.messages) == 25 and page.next_cursor is None
    assert (await history(alice, cid, limit=10, after=25, order="asc")).messages == []
    assert (await history(alice, cid, limit=10, before=1)).messages == []


async def test_history_range(server: RunningServer) -> None:
    alice = await server.user()
    cid = await channel_with(alice)
    await fill(alice, cid, 12)

    page = await history(alice, cid, after=3, before=10, order="asc")
    assert [m.seq for m in page.messages] == [4, 5, 6, 7, 8, 9]
    assert page.next_cursor is None
    page = await history(alice, cid, after=3, before=10)
    assert [m.seq for m in page.messages] == [9, 8, 7, 6, 5, 4]

    page = await history(alice, cid, after=3, before=10, limit=3)
    assert [m.seq for m in page.messages] == [9, 8, 7]
    page = await history(alice, cid, after=3, before=page.next_cursor, limit=3)
    assert [m.seq for m in page.messages] == [6, 5, 4]
    assert page.next_cursor is None

    page = await history(alice, cid, after=3, before=10, limit=4, order="asc")
    assert [m.seq for m in page.messages] == [4, 5, 6, 7]
    page = await history(alice, cid, after=page.next_cursor, before=10, limit=4, order="asc")
    assert [m.seq for m in page.messages] == [8, 9]
    assert page.next_cursor is None

    assert (await history(alice, cid, after=5, before=6)).messages == []
    assert (await history(alice, cid, after=9, before=3)).messages == []


async def test_history_limit_bounds(server: RunningServer) -> None:
    alice = await server.user()
    cid = await channel_with(alice)
    await fill(alice, cid, 3)
    for limit in (0, 101, -1):
        await expect_error(alice, "bad_request", "message.history", conversation_id=cid, limit=limit)
    await expect_error(alice, "bad_request", "message.history", conversation_id=cid, order="sideways")
    await expect_error(alice, "bad_request", "message.history", conversation_id=cid, before=-1)
    assert len((await history(alice, cid, limit=1)).messages) == 1
    assert len((await history(alice, cid, limit=100)).messages) == 3
    assert len((await history(alice, cid)).messages) == 3  # default limit 50


async def test_pages_are_stable_while_messages_arrive(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    cid = await channel_with(alice, bob)
    await fill(alice, cid, 25)

    # Backwards: new messages land above the first page and never shift the cursor.
    seen: list[int] = []
    page = await history(bob, cid, limit=10)
    seen += [m.seq for m in page.messages]
    extra = 0
    while page.next_cursor is not None:
        await fill(alice, cid, 3)
        extra += 3
        page = await history(bob, cid, limit=10, before=page.next_cursor)
        seen += [m.seq for m in page.messages]
    assert seen == list(range(25, 0, -1))

    # Forwards: new messages arrive at the end and are picked up once each.
    total = 25 + extra
    seen = []
    page = await history(bob, cid, limit=7, order="asc")
    seen += [m.seq for m in page.messages]
    rounds = 0
    while page.next_cursor is not None:
        if rounds < 3:
            await fill(alice, cid, 4)
            total += 4
        rounds += 1
        page = await history(bob, cid, limit=7, order="asc", after=page.next_cursor)
        seen += [m.seq for m in page.messages]
    assert seen == list(range(1, total + 1))


# -- reconnect ------------------------------------------------------------------


async def test_reconnect_catch_up(server: RunningServer) -> None:
    alice = await server.user()
    bob = await server.user()
    cid = await channel_with(alice, bob)
    for i in range(3):
        await send(alice, cid, f"live {i}")
    live = [(await bob.next_event(frames.MessageNew)).message for _ in range(3)]
    last_seen = live[-1].seq
    assert last_seen == 3
    token = bob.token
    assert token is not None
    await bob.close()

    missed = [(await send(alice, cid, f"missed {i}")).message for i in range(8)]

    again = await server.client()
    session = await again.auth(token)
    assert session.user.id == uid(bob)
    listing = {c.id: c for c in (await again.call("channel.list")).conversations}
    assert listing[cid].member is True
    assert listing[cid].last_seq == 11 > last_seen  # the gap

    fetched: list[frames.Message] = []
    cursor: int | None = last_seen
    while cursor is not None:
        page = await history(again, cid, after=cursor, limit=3, order="asc")
        fetched += page.messages
        cursor = page.next_cursor
    assert fetched == missed
    # Missed messages come from history only, never replayed as events.
    assert not [e for e in await settled_events(again) if isinstance(e, frames.MessageNew)]

    # Caught up, the connection receives what comes next live.
    newest = (await send(alice, cid, "welcome back")).message
    assert (await again.next_event(frames.MessageNew)).message == newest


async def test_pipelined_frames_get_replies_in_request_order(server: RunningServer) -> None:
    """A client that does not wait for replies: sends (possibly stored together),
    an invalid frame and a history read, interleaved. Replies come back in
    request order, the sends' seqs follow the order they were sent in, and the
    history read sees every send before it."""
    alice = await server.user()
    cid = await channel_with(alice)
    frames_sent: list[tuple[str, bytes]] = []
    for n in range(40):
        body = {
            "type": "message.send",
            "id": f"s{n}",
            "conversation_id": cid,
            "text": f"m{n}",
            "client_msg_id": f"c{n}",
        }
        frames_sent.append((f"s{n}", msgspec.json.encode(body)))
        if n == 20:
            frames_sent.append(("bad", b'{"type": "message.send", "id": "bad", "conversation_id": "x"}'))
            history_request = {"type": "message.history", "id": "h", "conversation_id": cid, "order": "asc"}
            frames_sent.append(("h", msgspec.json.encode(history_request)))
    order: list[str] = []
    replies: dict[str, frames.ResultFrame | frames.ErrorFrame] = {}

    async def collect(request_id: str) -> None:
        replies[request_id] = await alice.reply_to(request_id)
        order.append(request_id)

    collectors = [asyncio.create_task(collect(request_id)) for request_id, _ in frames_sent]
    await asyncio.sleep(0)  # every collector is registered before the first reply can arrive
    for _, raw in frames_sent:
        await alice.send_raw(raw.decode())
    await asyncio.gather(*collectors)

    assert order == [request_id for request_id, _ in frames_sent]
    bad = replies["bad"]
    assert isinstance(bad, frames.ErrorFrame) and bad.error.code == "bad_request"
    seqs = []
    for n in range(40):
        reply = replies[f"s{n}"]
        assert isinstance(reply, frames.ResultFrame)
        ack = msgspec.convert(reply.result, frames.SendAck)
        assert ack.message.text == f"m{n}"
        seqs.append(ack.message.seq)
    assert seqs == list(range(1, 41))
    seen = replies["h"]
    assert isinstance(seen, frames.ResultFrame)
    page = msgspec.convert(seen.result, frames.HistoryPage)
    assert [m.text for m in page.messages] == [f"m{n}" for n in range(21)]
