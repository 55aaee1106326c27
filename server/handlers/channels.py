"""channel.create, channel.list, channel.join, channel.invite, channel.leave, channel.members."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.broker import MembershipChange
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError, not_found
from hubbub.server.handlers.access import visible_conversation
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import conversation_view, conversation_views, user_view
from hubbub.storage.errors import Conflict
from hubbub.storage.records import ConversationRecord, MemberState, UserRecord


async def create(ctx: Context, caller: Caller, req: frames.ChannelCreate) -> frames.ConversationResult:
    try:
        record = await ctx.directory.create_channel(req.name, req.topic, req.private, caller.user_id, now_ms())
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"channel name {req.name!r} is taken") from None
    view = await _view(ctx, record, MemberState(read_seq=0), viewer=caller.user_id)  # the creator starts at 0
    announce_added(ctx, view, caller.user_id, by=caller.user_id)
    return frames.ConversationResult(conversation=view)


async def list_(ctx: Context, caller: Caller, req: frames.ChannelList) -> frames.ConversationList:
    mine = [m for m in await ctx.directory.memberships_of(caller.user_id) if m.conversation.kind == "channel"]
    records = {c.id: c for c in await ctx.directory.public_channels()}
    records.update((m.conversation.id, m.conversation) for m in mine)
    ordered = sorted(records.values(), key=lambda c: (c.name or "", c.id))
    views = await conversation_views(
        ctx.directory,
        ctx.messages,
        ordered,
        {m.conversation.id: m.state for m in mine},
        viewer=caller.user_id,
        cap=ctx.message_limits.unread_count_cap,
    )
    return frames.ConversationList(conversations=views)


async def _view(
    ctx: Context, record: ConversationRecord, state: MemberState | None, *, viewer: int
) -> frames.Conversation:
    return await conversation_view(
        ctx.directory, ctx.messages, record, state, viewer=viewer, cap=ctx.message_limits.unread_count_cap
    )


async def _head(ctx: Context, conversation_id: int) -> int:
    """The conversation's newest seq: where a new member's read position starts."""
    head = (await ctx.messages.heads([conversation_id])).get(conversation_id)
    return 0 if head is None else head.last_seq


async def _channel(ctx: Context, caller: Caller, channel_id: int, *, require_member: bool) -> ConversationRecord:
    record, _ = await visible_conversation(ctx, caller, channel_id, require_member=require_member)
    if record.kind != "channel":
        raise not_found("channel")
    return record


async def join(ctx: Context, caller: Caller, req: frames.ChannelJoin) -> frames.ConversationResult:
    record = await _channel(ctx, caller, req.channel_id, require_member=False)
    user = caller.user
    if user is None:  # handlers past authentication always have one
        raise ApiError(ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
    head = await _head(ctx, record.id)  # history from before joining is not unread
    joined = await ctx.directory.add_member(record.id, user.id, now_ms(), read_seq=head)
    state = MemberState(read_seq=head) if joined else await ctx.directory.member_state(record.id, user.id)
    view = await _view(ctx, record, state, viewer=user.id)
    if joined:
        announce_added(ctx, view, user.id, by=user.id)
        announce_joined(ctx, record.id, user, by=None)
    return frames.ConversationResult(conversation=view)


async def invite(ctx: Context, caller: Caller, req: frames.ChannelInvite) -> frames.Empty:
    record = await _channel(ctx, caller, req.channel_id, require_member=True)
    invitee = await ctx.directory.get_user(req.user_id)
    if invitee is None:
        raise not_found("user")
    head = await _head(ctx, record.id)
    if await ctx.directory.add_member(record.id, invitee.id, now_ms(), read_seq=head):
        view = await _view(ctx, record, MemberState(read_seq=head), viewer=invitee.id)
        announce_added(ctx, view, invitee.id, by=caller.user_id)
        announce_joined(ctx, record.id, invitee, by=caller.user_id)
    return frames.Empty()


async def leave(ctx: Context, caller: Caller, req: frames.ChannelLeave) -> frames.Empty:
    record = await _channel(ctx, caller, req.channel_id, require_member=False)
    if await ctx.directory.remove_member(record.id, caller.user_id):
        # Members (the leaver's other devices included) hear of it before the
        # leaver's connections stop receiving the channel.
        ctx.publisher.publish(
            frames.MemberLeft(conversation_id=record.id, user_id=caller.user_id), conversations=(record.id,)
        )
        ctx.publisher.publish_membership(
            MembershipChange(record.id, (caller.user_id,), joined=False),
            frames.ConversationRemoved(conversation_id=record.id),
        )
    return frames.Empty()


async def members(ctx: Context, caller: Caller, req: frames.ChannelMembers) -> frames.Members:
    record = await _channel(ctx, caller, req.channel_id, require_member=False)
    users = await ctx.directory.get_users(await ctx.directory.member_ids(record.id))
    return frames.Members(members=[user_view(u) for u in users])


def announce_added(ctx: Context, view: frames.Conversation, user_id: int, by: int) -> None:
    """Route the conversation to the user's connections, then tell them."""
    ctx.publisher.publish_membership(
        MembershipChange(view.id, (user_id,), joined=True, since_seq=view.last_seq),
        frames.ConversationAdded(conversation=view, by=by),
    )


def announce_joined(ctx: Context, conversation_id: int, user: UserRecord, by: int | None) -> None:
    event = frames.MemberJoined(conversation_id=conversation_id, user=user_view(user), by=by)
    # Also to the new member's own topic: an instance that only now starts routing the
    # conversation to their connections may not be subscribed to it yet.
    ctx.publisher.publish(event, conversations=(conversation_id,), users=(user.id,))
