"""message.send, message.history."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError
from hubbub.server.handlers.access import require_member
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import message_view
from hubbub.storage.records import NewMessage


async def send(ctx: Context, caller: Caller, req: frames.MessageSend) -> frames.SendAck:
    limit = ctx.max_message_chars
    if len(req.text) > limit:
        raise ApiError(ErrorCode.TOO_LARGE, f"text: longer than {limit} characters")
    await require_member(ctx, caller, req.conversation_id)
    message, duplicate = await ctx.publisher.send_message(
        NewMessage(
            conversation_id=req.conversation_id,
            sender_id=caller.user_id,
            text=req.text,
            client_msg_id=req.client_msg_id,
            ts=now_ms(),
        )
    )
    return frames.SendAck(message=message, duplicate=duplicate)


async def history(ctx: Context, caller: Caller, req: frames.MessageHistory) -> frames.HistoryPage:
    await require_member(ctx, caller, req.conversation_id)
    # One extra row tells whether another page follows.
    records = await ctx.messages.history(
        req.conversation_id, before=req.before, after=req.after, limit=req.limit + 1, order=req.order
    )
    more = len(records) > req.limit
    page = records[: req.limit]
    return frames.HistoryPage(
        messages=[message_view(r) for r in page],
        next_cursor=page[-1].seq if more else None,
    )
