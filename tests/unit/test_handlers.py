"""Request handlers driven without a transport: a fake Context (the real
Publisher over a broker that records what it is given) and a fake Caller, on
a real SQLite store. What each request stores, answers and publishes, in
which order, is asserted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from hubbub.protocol import codec, frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.archived import ArchivedChannels
from hubbub.server.auth import Passwords, Tokens
from hubbub.server.broker import MESSAGE_NEW, Event, InProcessBroker, MembershipChange
from hubbub.server.config import MessagesConfig, ProfilesConfig
from hubbub.server.errors import ApiError
from hubbub.server.handlers import channels, dms, messages, presence, typing_indicator
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.listings import PublicChannels
from hubbub.server.metrics import Metrics
from hubbub.server.presence import LocalPresence, PresenceTracker
from hubbub.server.publisher import Publisher
from hubbub.server.ratelimit import FailureWindow, TokenBucket
from hubbub.server.retention_policy import default_policy
from hubbub.server.send_order import SendOrder
from hubbub.storage.records import Head, NewMessage, UserRecord
from hubbub.storage.sqlite import SqliteDirectory, SqliteMessageLog, open_sqlite

Published = Event | MembershipChange


class RecordingBroker(InProcessBroker):
    """Records every publish, in order; routes nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Published] = []

    def publish(self, event: Event) -> None:
        self.published.append(event)

    def publish_membership(self, change: MembershipChange) -> None:
        self.published.append(change)

    def take(self) -> list[Published]:
        published, self.published = self.published, []
        return published


class FakeContext:
    def __init__(self, directory: SqliteDirectory, messages: SqliteMessageLog) -> None:
        self.directory = directory
        self.messages = messages
        self.broker = RecordingBroker()
        self.metrics = Metrics()
        self.publisher = Publisher(messages, self.broker, self.metrics)
        self.presence: PresenceTracker = LocalPresence()
        self.tokens = Tokens("x" * 32, "hubbub", "hubbub", 3600)
        self.login_failures_by_username = FailureWindow(5, 60.0)
        self.login_failures_by_address = FailureWindow(5, 60.0)
        self.max_message_chars = 20
        self.archived_channels = ArchivedChannels()
        self.retention = default_policy()
        self.public_channels = PublicChannels(directory, messages, self.retention)
        self.presence_max_members = 2
        self.typing_ttl_ms = 5000
        self.typing_max_members = 3
        self.profile_limits = ProfilesConfig(max_status_chars=10, max_avatar_url_chars=40, user_search_max_limit=3)
        self.message_limits = MessagesConfig(
            edit_window_seconds=60.0,
            archived_known_seconds=1.0,
            max_reaction_emojis=3,
            max_reactions_per_user=2,
            max_pins=2,
            search_max_limit=3,
            search_relevance_window=100,
            unread_count_cap=5,
        )

    @property
    def passwords(self) -> Passwords:
        raise AssertionError("no handler tested here hashes passwords")


@dataclass(eq=False)
class FakeCaller:
    user: UserRecord | None
    conn_id: int = 1
    address: str = "127.0.0.1"
    conversations: set[int] = field(default_factory=set)
    typing_limit: TokenBucket = field(default_factory=lambda: TokenBucket(0.001, 2))
    send_order: SendOrder = field(default_factory=SendOrder)

    @property
    def user_id(self) -> int:
        return self.user.id if self.user is not None else 0

    async def authenticate(self, user: UserRecord, conversation_ids: Sequence[int] | None = None) -> None:
        raise AssertionError("no handler tested here authenticates")

    def refresh_user(self, user: UserRecord) -> None:
        self.user = user


def _typed(ctx: FakeContext, caller: FakeCaller) -> tuple[Context, Caller]:
    return ctx, caller  # both satisfy the protocols handlers are written against


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[FakeContext]:
    db, directory, log = await open_sqlite(tmp_path / "handlers.sqlite", 5.0)
    try:
        yield FakeContext(directory, log)
    finally:
        await log.close()
        await db.close()


async def caller(ctx: FakeContext, name: str) -> FakeCaller:
    return FakeCaller(await ctx.directory.create_user(name, name.title(), "hash", 1))


def frame_of(item: Published) -> frames.AnyServerFrame:
    assert isinstance(item, Event)
    decoded = codec.decode_server_frame(item.payload)
    assert item.frame_type == frames.tag_of(type(decoded)), "the tag is the frame's own"
    return decoded


async def test_creating_a_channel_routes_it_to_the_creator_before_announcing_it(ctx: FakeContext) -> None:
    alice = await caller(ctx, "alice")
    result = await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))
    cid = result.conversation.id
    assert await ctx.directory.is_member(cid, alice.user_id)
    change, added = ctx.broker.take()
    assert change == MembershipChange(cid, (alice.user_id,), joined=True, since_seq=0)
    assert isinstance(added, Event) and added.users == (alice.user_id,) and added.conversations == ()
    assert frame_of(added) == frames.ConversationAdded(conversation=result.conversation, by=alice.user_id)


async def test_joining_routes_announces_to_the_joiner_then_to_the_members(ctx: FakeContext) -> None:
    alice, bob = await caller(ctx, "alice"), await caller(ctx, "bob")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))).conversation.id
    await ctx.publisher.send_message(_new(cid, alice.user_id, "before bob"))
    ctx.broker.take()

    result = await channels.join(*_typed(ctx, bob), frames.ChannelJoin(id=2, channel_id=cid))
    assert result.conversation.member and result.conversation.last_seq == 1
    change, added, joined = ctx.broker.take()
    assert change == MembershipChange(cid, (bob.user_id,), joined=True, since_seq=1)
    assert isinstance(added, Event) and added.users == (bob.user_id,)
    assert isinstance(frame_of(added), frames.ConversationAdded)
    assert isinstance(joined, Event) and joined.conversations == (cid,) and joined.users == (bob.user_id,)
    assert frame_of(joined) == frames.MemberJoined(
        conversation_id=cid, user=frames.User(id=bob.user_id, username="bob", display_name="Bob", created_at=1), by=None
    )

    again = await channels.join(*_typed(ctx, bob), frames.ChannelJoin(id=3, channel_id=cid))
    assert again.conversation == result.conversation
    assert ctx.broker.take() == []  # already a member: nothing to announce


async def test_leaving_tells_the_members_then_stops_routing_then_tells_the_leaver(ctx: FakeContext) -> None:
    alice, bob = await caller(ctx, "alice"), await caller(ctx, "bob")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))).conversation.id
    await channels.join(*_typed(ctx, bob), frames.ChannelJoin(id=2, channel_id=cid))
    bob.conversations.add(cid)
    ctx.broker.take()

    await channels.leave(*_typed(ctx, bob), frames.ChannelLeave(id=3, channel_id=cid))
    assert not await ctx.directory.is_member(cid, bob.user_id)
    left, change, removed = ctx.broker.take()
    assert isinstance(left, Event) and left.conversations == (cid,) and left.users == ()
    assert frame_of(left) == frames.MemberLeft(conversation_id=cid, user_id=bob.user_id)
    assert change == MembershipChange(cid, (bob.user_id,), joined=False)
    assert isinstance(removed, Event) and removed.users == (bob.user_id,)
    assert frame_of(removed) == frames.ConversationRemoved(conversation_id=cid)


async def test_opening_a_dm_routes_it_to_every_member_once(ctx: FakeContext) -> None:
    alice, bob, carol = await caller(ctx, "alice"), await caller(ctx, "bob"), await caller(ctx, "carol")
    request = frames.DmOpen(id=1, user_ids=[carol.user_id, bob.user_id])
    result = await dms.open_(*_typed(ctx, alice), request)
    members = tuple(sorted((alice.user_id, bob.user_id, carol.user_id)))
    assert result.conversation.member_ids == list(members)
    change, added = ctx.broker.take()
    assert change == MembershipChange(result.conversation.id, members, joined=True, since_seq=0)
    assert isinstance(added, Event) and added.users == members
    assert (await dms.open_(*_typed(ctx, bob), frames.DmOpen(id=2, user_ids=[alice.user_id, carol.user_id]))) == result
    assert ctx.broker.take() == []  # the same DM: not created again, not announced again


async def test_a_new_message_is_stored_then_published_with_its_seq(ctx: FakeContext) -> None:
    alice = await caller(ctx, "alice")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))).conversation.id
    ctx.broker.take()
    send = frames.MessageSend(id=2, conversation_id=cid, text="hello", client_msg_id="c1")

    ack = await messages.send(*_typed(ctx, alice), send)  # not routed yet: membership read from the store
    assert (ack.message.seq, ack.message.text, ack.duplicate) == (1, "hello", False)
    (event,) = ctx.broker.take()
    assert isinstance(event, Event)
    assert (event.frame_type, event.conversations, event.users, event.seq) == (MESSAGE_NEW, (cid,), (), 1)
    assert frame_of(event) == frames.MessageNew(message=ack.message)
    assert ctx.metrics.registry.get_sample_value("hubbub_messages_stored_total") == 1

    again = await messages.send(*_typed(ctx, alice), send)
    assert again.duplicate and again.message == ack.message
    (repeat,) = ctx.broker.take()
    assert isinstance(repeat, Event) and repeat.payload == event.payload
    assert repeat.seq == 0  # announced again, not gap-tracked
    assert ctx.metrics.registry.get_sample_value("hubbub_messages_stored_total") == 1


async def test_a_message_is_refused_before_anything_is_stored_or_published(ctx: FakeContext) -> None:
    alice, mallory = await caller(ctx, "alice"), await caller(ctx, "mallory")
    secret = await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="secret", private=True))
    public = await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=2, name="public"))
    ctx.broker.take()
    refusals = [
        (frames.MessageSend(id=3, conversation_id=secret.conversation.id, text="hi", client_msg_id="a"), "not_found"),
        (frames.MessageSend(id=4, conversation_id=public.conversation.id, text="hi", client_msg_id="b"), "forbidden"),
        (frames.MessageSend(id=5, conversation_id=999, text="hi", client_msg_id="c"), "not_found"),
        (
            frames.MessageSend(id=6, conversation_id=public.conversation.id, text="x" * 21, client_msg_id="d"),
            "too_large",
        ),
    ]
    for request, code in refusals:
        with pytest.raises(ApiError) as refused:
            await messages.send(*_typed(ctx, mallory), request)
        assert refused.value.code == ErrorCode(code)
    assert ctx.broker.take() == []
    assert await ctx.messages.heads([secret.conversation.id, public.conversation.id]) == {}


async def test_presence_goes_through_small_conversations_only(ctx: FakeContext) -> None:
    alice, bob, carol = await caller(ctx, "alice"), await caller(ctx, "bob"), await caller(ctx, "carol")
    small = (await dms.open_(*_typed(ctx, alice), frames.DmOpen(id=1, user_ids=[bob.user_id]))).conversation.id
    big = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=2, name="big"))).conversation.id
    for member in (bob, carol):
        await channels.join(*_typed(ctx, member), frames.ChannelJoin(id=3, channel_id=big))
    ctx.broker.take()

    await presence.on_online(ctx, alice.user_id, [small, big])  # presence_max_members is 2
    (event,) = ctx.broker.take()
    assert isinstance(event, Event)
    assert (event.conversations, event.users) == ((small,), (alice.user_id,))
    # The broker's payload, one change; the registry batches it on delivery.
    changed = msgspec.json.decode(event.payload, type=frames.PresenceChanged)
    assert event.frame_type == "presence"
    assert (changed.presence.user_id, changed.presence.status) == (alice.user_id, "online")


async def test_typing_goes_to_the_other_members_of_the_conversation_and_stores_nothing(ctx: FakeContext) -> None:
    alice, bob = await caller(ctx, "alice"), await caller(ctx, "bob")
    dm = (await dms.open_(*_typed(ctx, alice), frames.DmOpen(id=1, user_ids=[bob.user_id]))).conversation.id
    ctx.broker.take()

    request = frames.Typing(id=2, conversation_id=dm, thread_root_id="m-1")
    assert await typing_indicator.typing(*_typed(ctx, bob), request) == frames.Empty()
    (event,) = ctx.broker.take()
    assert isinstance(event, Event)
    assert (event.conversations, event.users, event.seq, event.except_user) == ((dm,), (), 0, bob.user_id)
    assert frame_of(event) == frames.UserTyping(
        conversation_id=dm, user_id=bob.user_id, thread_root_id="m-1", expires_in_ms=5000
    )
    assert await ctx.messages.heads([dm]) == {}


async def test_typing_is_refused_as_a_message_would_be_before_anything_is_published(ctx: FakeContext) -> None:
    alice, mallory = await caller(ctx, "alice"), await caller(ctx, "mallory")
    secret = await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="secret", private=True))
    public = await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=2, name="public"))
    ctx.broker.take()
    refusals = [(secret.conversation.id, "not_found"), (999, "not_found"), (public.conversation.id, "forbidden")]
    for cid, code in refusals:
        with pytest.raises(ApiError) as refused:
            await typing_indicator.typing(*_typed(ctx, mallory), frames.Typing(id=3, conversation_id=cid))
        assert refused.value.code == ErrorCode(code)
    assert mallory.typing_limit.tokens == 2, "a refused typing spends none of the typing limit"
    assert ctx.broker.take() == []


async def test_typing_beyond_the_connections_limit_is_answered_and_announced_to_nobody(ctx: FakeContext) -> None:
    alice, bob = await caller(ctx, "alice"), await caller(ctx, "bob")
    dm = (await dms.open_(*_typed(ctx, alice), frames.DmOpen(id=1, user_ids=[bob.user_id]))).conversation.id
    ctx.broker.take()
    phone, laptop = FakeCaller(alice.user), FakeCaller(alice.user, conn_id=2)
    for request_id in range(4):  # a burst of 2, refilled once in ~17 minutes
        assert await typing_indicator.typing(*_typed(ctx, phone), frames.Typing(id=request_id, conversation_id=dm))
    assert len(ctx.broker.take()) == 2
    assert await typing_indicator.typing(*_typed(ctx, laptop), frames.Typing(id=9, conversation_id=dm))
    assert len(ctx.broker.take()) == 1, "each connection has a limit of its own"


async def test_typing_goes_through_small_conversations_only(ctx: FakeContext) -> None:
    alice = await caller(ctx, "alice")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="big"))).conversation.id
    for name in ("bob", "carol"):
        await channels.join(*_typed(ctx, await caller(ctx, name)), frames.ChannelJoin(id=2, channel_id=cid))
    ctx.broker.take()

    await typing_indicator.typing(*_typed(ctx, alice), frames.Typing(id=3, conversation_id=cid))
    assert len(ctx.broker.take()) == 1  # 3 members: typing_max_members
    await channels.join(*_typed(ctx, await caller(ctx, "dave")), frames.ChannelJoin(id=4, channel_id=cid))
    ctx.broker.take()
    assert await typing_indicator.typing(*_typed(ctx, alice), frames.Typing(id=5, conversation_id=cid))
    assert ctx.broker.take() == []


def _new(cid: int, sender: int, text: str) -> NewMessage:
    return NewMessage(conversation_id=cid, sender_id=sender, text=text, client_msg_id=text, ts=2)


async def test_a_reply_is_published_before_its_roots_new_count(ctx: FakeContext) -> None:
    alice = await caller(ctx, "alice")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))).conversation.id
    root = (
        await messages.send(
            *_typed(ctx, alice), frames.MessageSend(id=2, conversation_id=cid, text="root", client_msg_id="r")
        )
    ).message
    ctx.broker.take()
    reply = await messages.send(
        *_typed(ctx, alice),
        frames.MessageSend(id=3, conversation_id=cid, text="reply", client_msg_id="a", thread_root_id=root.id),
    )
    new, updated = ctx.broker.take()
    assert isinstance(new, Event) and (new.seq, new.conversations) == (2, (cid,))
    assert frame_of(new) == frames.MessageNew(message=reply.message)
    assert isinstance(updated, Event) and (updated.seq, updated.conversations) == (0, (cid,))
    event = frame_of(updated)
    assert isinstance(event, frames.MessageUpdated)
    assert (event.change, event.by, event.message.id, event.message.reply_count) == (
        "thread",
        alice.user_id,
        root.id,
        1,
    )


async def test_a_change_that_changes_nothing_publishes_nothing_and_a_refused_one_stores_nothing(
    ctx: FakeContext,
) -> None:
    alice, bob = await caller(ctx, "alice"), await caller(ctx, "bob")
    cid = (await channels.create(*_typed(ctx, alice), frames.ChannelCreate(id=1, name="general"))).conversation.id
    await channels.join(*_typed(ctx, bob), frames.ChannelJoin(id=2, channel_id=cid))
    sent = (
        await messages.send(
            *_typed(ctx, alice), frames.MessageSend(id=3, conversation_id=cid, text="hi", client_msg_id="h")
        )
    ).message
    ctx.broker.take()
    same = await messages.edit(
        *_typed(ctx, alice), frames.MessageEdit(id=4, conversation_id=cid, message_id=sent.id, text="hi")
    )
    assert same.message == sent
    with pytest.raises(ApiError) as refused:
        await messages.edit(
            *_typed(ctx, bob), frames.MessageEdit(id=5, conversation_id=cid, message_id=sent.id, text="bob's now")
        )
    assert refused.value.code == ErrorCode.FORBIDDEN
    assert ctx.broker.take() == []
    assert await ctx.messages.heads([cid]) == {cid: Head(last_seq=1, last_rev=1)}
