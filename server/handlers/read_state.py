"""conversation.mark_read and conversation.mute (issue 12): the caller's own
state in a conversation, kept in their membership row (PROTOCOL.md §16).

Both go to the caller's own topic (``users=``), as ``user.updated`` and the
end of sessions do: every connection of the user on every instance hears of
it, the one that asked included (every connection of a user sees the same
stream), so reading on the phone clears the badge on the laptop.

``mark_read`` moves the position forward only, in one conditional write
(``Directory.mark_read``): a seq at or below the stored position changes
nothing, announces nothing and answers the position stored; a seq above the
conversation's newest is taken as the newest (a client may not mark what
does not exist yet). Its counts are those after the new position, read from
the log only when it stops short of the head.
"""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.server.errors import not_found
from hubbub.server.handlers.access import require_member
from hubbub.server.handlers.context import Caller, Context


async def mark_read(ctx: Context, caller: Caller, req: frames.ConversationMarkRead) -> frames.ReadState:
    cid, me = req.conversation_id, caller.user_id
    await require_member(ctx, caller, cid)
    head = (await ctx.messages.heads([cid])).get(cid)
    last_seq = 0 if head is None else head.last_seq
    mark = await ctx.directory.mark_read(cid, me, min(req.seq, last_seq), unset_as=last_seq)
    if mark is None:  # left meanwhile
        raise not_found("conversation")
    read_seq = last_seq if mark.state.read_seq is None else mark.state.read_seq
    unread_count = mention_count = 0
    if read_seq < last_seq:
        counted = (await ctx.messages.unread(me, {cid: read_seq}, ctx.message_limits.unread_count_cap)).get(cid)
        if counted is not None:
            unread_count, mention_count = counted.unread_count, counted.mention_count
    if mark.moved:
        event = frames.ConversationRead(
            conversation_id=cid, read_seq=read_seq, unread_count=unread_count, mention_count=mention_count
        )
        ctx.publisher.publish(event, users=(me,))
    return frames.ReadState(
        conversation_id=cid, read_seq=read_seq, unread_count=unread_count, mention_count=mention_count
    )


async def mute(ctx: Context, caller: Caller, req: frames.ConversationMute) -> frames.MuteState:
    cid, me = req.conversation_id, caller.user_id
    await require_member(ctx, caller, cid)
    state = await ctx.directory.set_muted(cid, me, req.muted)
    if state is None:  # left meanwhile
        raise not_found("conversation")
    ctx.publisher.publish(frames.ConversationMuted(conversation_id=cid, muted=state.muted), users=(me,))
    return frames.MuteState(conversation_id=cid, muted=state.muted)
