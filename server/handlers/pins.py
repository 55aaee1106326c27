"""message.pin, message.unpin, conversation.pins."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.server import message_changes
from hubbub.server.clock import now_ms
from hubbub.server.handlers.access import require_member, writable_conversation
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.handlers.messages import changed, result
from hubbub.server.views import message_view


async def pin(ctx: Context, caller: Caller, req: frames.MessagePin) -> frames.MessageResult:
    cid = req.conversation_id
    await writable_conversation(ctx, caller, cid)
    max_pins = ctx.message_limits.max_pins
    # Counted before the change, not under it: two pins racing for the last
    # place may both get it (the list shows max_pins of them all the same).
    pinned = len(await ctx.messages.pins(cid, max_pins))
    change = message_changes.pin(by=caller.user_id, now=now_ms(), pinned=pinned, max_pins=max_pins)
    record, stored = await changed(ctx, cid, req.message_id, change)
    if stored:
        ctx.publisher.message_updated(record, "pinned", by=caller.user_id)
    return result(record, caller)


async def unpin(ctx: Context, caller: Caller, req: frames.MessageUnpin) -> frames.MessageResult:
    await writable_conversation(ctx, caller, req.conversation_id)
    record, stored = await changed(ctx, req.conversation_id, req.message_id, message_changes.unpin)
    if stored:
        ctx.publisher.message_updated(record, "unpinned", by=caller.user_id)
    return result(record, caller)


async def list_(ctx: Context, caller: Caller, req: frames.ConversationPins) -> frames.MessageList:
    await require_member(ctx, caller, req.conversation_id)
    pinned = await ctx.messages.pins(req.conversation_id, ctx.message_limits.max_pins)
    return frames.MessageList(messages=[message_view(r, caller.user_id) for r in pinned])
