"""channel.create, channel.list, channel.join, channel.invite, channel.leave, channel.members;
channel.update, channel.kick, channel.set_role (administration, issue 12: the
rules are server/channel_roles.py, checked by the store inside the change).
A workspace admin (issue 15) administers every channel as its owner would,
member or not, and each such change is written to the audit log."""

from __future__ import annotations

import msgspec

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.audit import audit
from hubbub.server.broker import MembershipChange
from hubbub.server.channel_roles import (
    as_workspace_admin,
    check_invite,
    kick_check,
    leave_check,
    refuse_archived,
    set_role_check,
    update_check,
)
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError, not_found
from hubbub.server.handlers.access import visible_conversation
from hubbub.server.handlers.admin import workspace_admin
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.listings import EncodedConversationList
from hubbub.server.views import conversation_view, conversation_views, member_view, shared_view, user_view
from hubbub.storage.base import AdminCheck
from hubbub.storage.errors import Conflict
from hubbub.storage.records import ChannelEdit, ConversationRecord, MemberState, Role, UserRecord


async def create(ctx: Context, caller: Caller, req: frames.ChannelCreate) -> frames.ConversationResult:
    try:
        record = await ctx.directory.create_channel(req.name, req.topic, req.private, caller.user_id, now_ms())
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"channel name {req.name!r} is taken") from None
    # The creator is its owner and starts read at 0 (it is empty).
    view = await _view(ctx, record, MemberState(read_seq=0, role="owner"), viewer=caller.user_id)
    announce_added(ctx, view, caller.user_id, by=caller.user_id)
    return frames.ConversationResult(conversation=view)


async def list_(ctx: Context, caller: Caller, req: frames.ChannelList) -> EncodedConversationList:
    """A ``frames.ConversationList`` on the wire (server/listings.py)."""
    mine = [m for m in await ctx.directory.memberships_of(caller.user_id) if m.conversation.kind == "channel"]
    # The public channels a non-member sees are the same for everybody: read and
    # viewed once for all the requests asking together (server/listings.py).
    listing = await ctx.public_channels.listing()
    own = await conversation_views(
        ctx.directory,
        ctx.messages,
        [m.conversation for m in mine],
        {m.conversation.id: m.state for m in mine},
        viewer=caller.user_id,
        cap=ctx.message_limits.unread_count_cap,
        retention=ctx.retention,
    )
    # Archived channels are hidden from browsing unless asked for; members keep theirs.
    records = {c.id: c for c in listing.channels if req.include_archived or not c.archived}
    items: dict[int, frames.Conversation | msgspec.Raw] = {c_id: listing.encoded[c_id] for c_id in records}
    records.update((m.conversation.id, m.conversation) for m in mine)
    items.update((view.id, view) for view in own)
    ordered = sorted(records.values(), key=lambda c: (c.name or "", c.id))
    return EncodedConversationList(conversations=[items[c.id] for c in ordered])


async def _view(
    ctx: Context, record: ConversationRecord, state: MemberState | None, *, viewer: int
) -> frames.Conversation:
    return await conversation_view(
        ctx.directory,
        ctx.messages,
        record,
        state,
        viewer=viewer,
        cap=ctx.message_limits.unread_count_cap,
        retention=ctx.retention,
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
    record, member = await visible_conversation(ctx, caller, req.channel_id, require_member=False)
    if record.kind != "channel":
        raise not_found("channel")
    user = caller.user
    if user is None:  # handlers past authentication always have one
        raise ApiError(ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
    if not member:
        refuse_archived(record)
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
    check_invite(record, await _role(ctx, record.id, caller.user_id))
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
    if await ctx.directory.remove_member_as(record.id, caller.user_id, caller.user_id, leave_check()):
        # Members (the leaver's other devices included) hear of it before the
        # leaver's connections stop receiving the channel.
        announce_removed(
            ctx, record.id, caller.user_id, frames.MemberLeft(conversation_id=record.id, user_id=caller.user_id)
        )
    return frames.Empty()


def announce_removed(ctx: Context, conversation_id: int, user_id: int, event: frames.AnyEvent) -> None:
    """Tell the members (the removed one's devices included) that ``user_id``
    is gone, then stop routing the channel to their connections on every
    instance (conversation.removed): the one path of leave and kick."""
    ctx.publisher.publish(event, conversations=(conversation_id,))
    ctx.publisher.publish_membership(
        MembershipChange(conversation_id, (user_id,), joined=False),
        frames.ConversationRemoved(conversation_id=conversation_id),
    )


async def members(ctx: Context, caller: Caller, req: frames.ChannelMembers) -> frames.Members:
    try:
        record = await _channel(ctx, caller, req.channel_id, require_member=False)
    except ApiError:
        # A private channel a workspace admin is not in: they administer it, so they see who is.
        record, by_admin = await _administered(ctx, caller, req.channel_id)
        if not by_admin:
            raise
    roles = await ctx.directory.member_roles(record.id)
    users = await ctx.directory.get_users(list(roles))
    return frames.Members(members=[member_view(u, roles[u.id]) for u in users])


async def _administered(ctx: Context, caller: Caller, channel_id: int) -> tuple[ConversationRecord, bool]:
    """The channel a request administers, and whether the caller does it as a
    workspace admin (any channel, member or not: as an owner, audited) rather
    than as a member."""
    if caller.user is not None and caller.user.workspace_role == "admin" and await workspace_admin(ctx, caller):
        record = await ctx.directory.get_conversation(channel_id)
        if record is None or record.kind != "channel":
            raise not_found("channel")
        return record, True
    return await _channel(ctx, caller, channel_id, require_member=True), False


def _as(by_admin: bool, check: AdminCheck) -> AdminCheck:
    return as_workspace_admin(check) if by_admin else check


async def update(ctx: Context, caller: Caller, req: frames.ChannelUpdate) -> frames.ConversationResult:
    record, by_admin = await _administered(ctx, caller, req.channel_id)
    edit = ChannelEdit(
        name=req.name,
        topic=req.topic,
        purpose=req.purpose,
        archived=req.archived,
        invite_policy=req.invite_policy,
        retention_max_age_days=req.retention_max_age_days,
        retention_max_messages=req.retention_max_messages,
    )
    if edit.is_empty():
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            "name at least one of name, topic, purpose, archived, invite_policy,"
            " retention_max_age_days, retention_max_messages",
        )
    ctx.retention.check_override(edit)
    try:
        updated = await ctx.directory.update_channel(record.id, caller.user_id, edit, _as(by_admin, update_check(edit)))
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"channel name {req.name!r} is taken") from None
    if updated is None:
        raise not_found("channel")
    if by_admin:
        changed = {k: v for k, v in msgspec.structs.asdict(edit).items() if v is not None}
        await audit(ctx.directory, caller.user_id, "channel.update", {"channel_id": record.id, **changed}, now_ms())
    if updated != record:
        event_view = await shared_view(ctx.directory, ctx.messages, updated, ctx.retention)
        ctx.publisher.publish(
            frames.ChannelUpdated(conversation=event_view, by=caller.user_id), conversations=(record.id,)
        )
    state = await ctx.directory.member_state(record.id, caller.user_id)
    return frames.ConversationResult(conversation=await _view(ctx, updated, state, viewer=caller.user_id))


async def kick(ctx: Context, caller: Caller, req: frames.ChannelKick) -> frames.Empty:
    record, by_admin = await _administered(ctx, caller, req.channel_id)
    if await ctx.directory.remove_member_as(record.id, caller.user_id, req.user_id, _as(by_admin, kick_check())):
        if by_admin:
            target = {"channel_id": record.id, "user_id": req.user_id}
            await audit(ctx.directory, caller.user_id, "channel.kick", target, now_ms())
        removed = frames.MemberRemoved(conversation_id=record.id, user_id=req.user_id, by=caller.user_id)
        announce_removed(ctx, record.id, req.user_id, removed)
    return frames.Empty()


async def set_role(ctx: Context, caller: Caller, req: frames.ChannelSetRole) -> frames.Empty:
    record, by_admin = await _administered(ctx, caller, req.channel_id)
    check = _as(by_admin, set_role_check(req.role))
    if await ctx.directory.set_role(record.id, caller.user_id, req.user_id, req.role, check):
        if by_admin:
            target = {"channel_id": record.id, "user_id": req.user_id, "role": req.role}
            await audit(ctx.directory, caller.user_id, "channel.set_role", target, now_ms())
        event = frames.MemberRoleChanged(
            conversation_id=record.id, user_id=req.user_id, role=req.role, by=caller.user_id
        )
        ctx.publisher.publish(event, conversations=(record.id,))
    return frames.Empty()


async def _role(ctx: Context, channel_id: int, user_id: int) -> Role | None:
    return (await ctx.directory.roles_of(user_id, [channel_id])).get(channel_id)


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
