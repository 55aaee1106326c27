"""dm.open, dm.list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import codec, frames
from protocol.errors import ErrorCode
from server.broker import Delivery
from server.errors import ApiError, not_found
from server.handlers.views import conversation_view, conversation_views
from server.hub import Hub, now_ms

if TYPE_CHECKING:
    from server.session import Session


async def open_(hub: Hub, session: Session, req: frames.DmOpen) -> frames.ConversationResult:
    others = set(req.user_ids) - {session.user_id}
    if not others:
        raise ApiError(ErrorCode.BAD_REQUEST, "user_ids: name at least one user other than yourself")
    if len(await hub.directory.get_users(sorted(others))) != len(others):
        raise not_found("user")
    members = sorted(others | {session.user_id})
    record, created = await hub.directory.open_dm(members, session.user_id, now_ms())
    view = await conversation_view(hub, record, member=True)
    if created:
        event = frames.ConversationAdded(conversation=view, by=session.user_id)
        hub.publish(
            Delivery(
                codec.encode(event),
                "conversation.added",
                users=tuple(members),
                joined=tuple((uid, record.id) for uid in members),
                seq=view.last_seq,
            )
        )
    return frames.ConversationResult(conversation=view)


async def list_(hub: Hub, session: Session, req: frames.DmList) -> frames.ConversationList:
    dms = [c for c in await hub.directory.conversations_of(session.user_id) if c.kind == "dm"]
    return frames.ConversationList(conversations=await conversation_views(hub, dms, {c.id for c in dms}))
