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
from hubbub.server.views import conversation_view, conversation_views


async def open_(ctx: Context, caller: Caller, req: frames.DmOpen) -> frames.ConversationResult:
    others = set(req.user_ids) - {caller.user_id}
    if not others:
        raise ApiError(ErrorCode.BAD_REQUEST, "user_ids: name at least one user other than yourself")
    if len(await ctx.directory.get_users(sorted(others))) != len(others):
        raise not_found("user")
    members = sorted(others | {caller.user_id})
    record, created = await ctx.directory.open_dm(members, caller.user_id, now_ms())
    view = await conversation_view(ctx.directory, ctx.messages, record, member=True)
    if created:
        ctx.publisher.publish_membership(
            MembershipChange(record.id, tuple(members), joined=True, since_seq=view.last_seq),
            frames.ConversationAdded(conversation=view, by=caller.user_id),
        )
    return frames.ConversationResult(conversation=view)


async def list_(ctx: Context, caller: Caller, req: frames.DmList) -> frames.ConversationList:
    dms = [c for c in await ctx.directory.conversations_of(caller.user_id) if c.kind == "dm"]
    return frames.ConversationList(
        conversations=await conversation_views(ctx.directory, ctx.messages, dms, {c.id for c in dms})
    )


async def rename(ctx: Context, caller: Caller, req: frames.DmRename) -> frames.ConversationResult:
    record, _ = await visible_conversation(ctx, caller, req.conversation_id, require_member=True)
    if record.kind != "dm":
        raise not_found("dm")
    check_dm_rename(len(await ctx.directory.member_ids(record.id)))
    renamed = await ctx.directory.rename_dm(record.id, req.name)
    if renamed is None:  # conversations are never deleted
        raise not_found("dm")
    view = await conversation_view(ctx.directory, ctx.messages, renamed, member=True)
    if renamed != record:
        ctx.publisher.publish(frames.DmUpdated(conversation=view, by=caller.user_id), conversations=(record.id,))
    return frames.ConversationResult(conversation=view)
