"""message.send, message.history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import codec, frames
from protocol.errors import ErrorCode
from server.broker import Delivery
from server.errors import ApiError
from server.handlers.views import visible_conversation
from server.hub import Hub, now_ms
from server.wire import message_view
from storage.records import NewMessage

if TYPE_CHECKING:
    from server.session import Session


async def send(hub: Hub, session: Session, req: frames.MessageSend) -> frames.SendAck:
    limit = hub.settings.max_message_chars
    if len(req.text) > limit:
        raise ApiError(ErrorCode.TOO_LARGE, f"text: longer than {limit} characters")
    if req.conversation_id not in session.conversations:
        await visible_conversation(hub, session, req.conversation_id, require_member=True)
    ticket = hub.sequencer.begin(req.conversation_id)
    try:
        record, duplicate = await hub.messages.append(
            NewMessage(
                conversation_id=req.conversation_id,
                sender_id=session.user_id,
                text=req.text,
                client_msg_id=req.client_msg_id,
                ts=now_ms(),
            )
        )
    except BaseException:
        hub.sequencer.abort(req.conversation_id, ticket)
        raise
    message = message_view(record)
    event = codec.encode(frames.MessageNew(message=message))
    if duplicate:
        # Announced again: the first attempt may have been stored after its
        # request timed out, with no event sent. Clients dedupe by id. Not
        # sequenced nor gap-tracked (seq 0): it is an old message.
        hub.sequencer.abort(req.conversation_id, ticket)
        hub.publish(Delivery(event, "message.new", conversations=(record.conversation_id,)))
    else:
        hub.metrics.messages_stored.inc()
        hub.sequencer.complete(req.conversation_id, ticket, record.seq, event)
    return frames.SendAck(message=message, duplicate=duplicate)


async def history(hub: Hub, session: Session, req: frames.MessageHistory) -> frames.HistoryPage:
    if req.conversation_id not in session.conversations:
        await visible_conversation(hub, session, req.conversation_id, require_member=True)
    # One extra row tells whether another page follows.
    records = await hub.messages.history(
        req.conversation_id, before=req.before, after=req.after, limit=req.limit + 1, order=req.order
    )
    more = len(records) > req.limit
    page = records[: req.limit]
    return frames.HistoryPage(
        messages=[message_view(r) for r in page],
        next_cursor=page[-1].seq if more else None,
    )
