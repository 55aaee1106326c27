"""dm.open, dm.list, dm.rename."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.broker import MembershipChange
from hubbub.server.channel_roles import check_dm_rename
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError, not_found
from hubbub.server.handlers.access import visible_conversation
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import conversation_view, conversation_views, shared_view
from hubbub.storage.records import MemberState


async def open_(ctx: Context, caller: Caller, req: frames.DmOpen) -> frames.ConversationResult:
    others = set(req.user_ids) - {caller.user_id}
    if not others:
        raise ApiError(ErrorCode.BAD_REQUEST, "user_ids: name at least one user other than yourself")
    if len(await ctx.directory.get_users(sorted(others))) != len(others):
        raise not_found("user")
    members = sorted(others | {caller.user_id})
    record, created = await ctx.directory.open_dm(members, caller.user_id, now_ms())
    # A new DM starts read at 0 for everyone (it is empty); an existing one shows the caller's state.
    state = MemberState(read_seq=0) if created else await ctx.directory.member_state(record.id, caller.user_id)
    cap = ctx.message_limits.unread_count_cap
    view = await conversation_view(
        ctx.directory, ctx.messages, record, state, viewer=caller.user_id, cap=cap, retention=ctx.retention
    )
    if created:
        ctx.publisher.publish_membership(
            MembershipChange(record.id, tuple(members), joined=True, since_seq=view.last_seq),
            frames.ConversationAdded(conversation=view, by=caller.user_id),
        )
    return frames.ConversationResult(conversation=view)


async def list_(ctx: Context, caller: Caller, req: frames.DmList) -> frames.ConversationList:
    dms = [m for m in await ctx.directory.memberships_of(caller.user_id) if m.conversation.kind == "dm"]
    views = await conversation_views(
        ctx.directory,
        ctx.messages,
        [m.conversation for m in dms],
        {m.conversation.id: m.state for m in dms},
        viewer=caller.user_id,
        cap=ctx.message_limits.unread_count_cap,
        retention=ctx.retention,
    )
    return frames.ConversationList(conversations=views)


async def rename(ctx: Context, caller: Caller, req: frames.DmRename) -> frames.ConversationResult:
    record, _ = await visible_conversation(ctx, caller, req.conversation_id, require_member=True)
    if record.kind != "dm":
        raise not_found("dm")
    check_dm_rename(len(await ctx.directory.member_ids(record.id)))
    renamed = await ctx.directory.rename_dm(record.id, req.name)
    if renamed is None:  # conversations are never deleted
        raise not_found("dm")
    if renamed != record:
        event_view = await shared_view(ctx.directory, ctx.messages, renamed, ctx.retention)
        ctx.publisher.publish(frames.DmUpdated(conversation=event_view, by=caller.user_id), conversations=(record.id,))
    state = await ctx.directory.member_state(record.id, caller.user_id)
    cap = ctx.message_limits.unread_count_cap
    view = await conversation_view(
        ctx.directory, ctx.messages, renamed, state, viewer=caller.user_id, cap=cap, retention=ctx.retention
    )
    return frames.ConversationResult(conversation=view)
