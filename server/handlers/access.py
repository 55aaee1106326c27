"""Who may see a conversation: the visibility rule every conversation request
shares, and the membership check behind it."""

from __future__ import annotations

from hubbub.protocol.errors import ErrorCode
from hubbub.server.channel_roles import ARCHIVED, refuse_archived
from hubbub.server.errors import ApiError, not_found
from hubbub.server.handlers.context import Caller, Context
from hubbub.storage.records import ConversationRecord


def routed_here(caller: Caller, conversation_id: int) -> bool:
    """Membership from this connection's routing: the registry's routing set
    is also the membership cache (server/registry.py). True is current,
    because routing changes only with membership itself; False is not proof
    (the change for a just-made membership may be on its way from another
    instance), so callers ask the store then."""
    return conversation_id in caller.conversations


async def is_member(ctx: Context, caller: Caller, conversation_id: int) -> bool:
    """Membership, from this connection's routing when it knows, else from the store."""
    if routed_here(caller, conversation_id):
        return True
    return await ctx.directory.is_member(conversation_id, caller.user_id)


async def visible_conversation(
    ctx: Context, caller: Caller, conversation_id: int, *, require_member: bool
) -> tuple[ConversationRecord, bool]:
    """The conversation if the caller may see it, and whether they are a member.

    Private channels and DMs are invisible to non-members: ``not_found``,
    never ``forbidden``, so their existence does not leak. A public channel
    is visible to all; ``require_member`` makes non-members ``forbidden``.
    """
    record = await ctx.directory.get_conversation(conversation_id)
    if record is None:
        raise not_found("conversation")
    member = await is_member(ctx, caller, conversation_id)
    if not member:
        if record.private:
            raise not_found("conversation")
        if require_member:
            raise ApiError(ErrorCode.FORBIDDEN, "join the channel first")
    return record, member


async def require_member(ctx: Context, caller: Caller, conversation_id: int) -> None:
    """Raise unless the caller is a member (``not_found`` or ``forbidden`` as above)."""
    if not routed_here(caller, conversation_id):
        await visible_conversation(ctx, caller, conversation_id, require_member=True)


async def writable_conversation(ctx: Context, caller: Caller, conversation_id: int) -> ConversationRecord:
    """The conversation, if the caller is a member and may change its messages:
    ``archived`` for an archived channel (read-only), else as ``require_member``.
    Read from the store every time (the requests that change a sent message)."""
    if routed_here(caller, conversation_id):
        epoch = ctx.archived_channels.epoch
        record = await ctx.directory.get_conversation(conversation_id)
        if record is None:  # conversations are never deleted
            raise not_found("conversation")
        ctx.archived_channels.learn(record, epoch)  # routed here: its channel.updated events come here
    else:
        record, _ = await visible_conversation(ctx, caller, conversation_id, require_member=True)
    refuse_archived(record)
    return record


def writable_known(ctx: Context, caller: Caller, conversation_id: int) -> bool:
    """True when this instance knows, without a store read, that the caller may
    write to the conversation (routed here, known not archived): message.send's
    hot path checks this first and awaits ``require_writable`` only when not."""
    return routed_here(caller, conversation_id) and ctx.archived_channels.archived(conversation_id) is False


async def require_writable(ctx: Context, caller: Caller, conversation_id: int) -> None:
    """As ``writable_conversation``, for message.send: a routed conversation's
    archived state comes from what this instance knows (server/archived.py),
    so the hot path reads no store while it knows."""
    if routed_here(caller, conversation_id):
        archived = ctx.archived_channels.archived(conversation_id)
        if archived is False:
            return
        if archived:
            raise ApiError(ErrorCode.ARCHIVED, ARCHIVED)
    await writable_conversation(ctx, caller, conversation_id)
