"""Storage records as protocol objects."""

from __future__ import annotations

from protocol import frames
from storage.records import MessageRecord, UserRecord


def user_view(u: UserRecord) -> frames.User:
    return frames.User(id=u.id, username=u.username, display_name=u.display_name, created_at=u.created_at)


def message_view(m: MessageRecord) -> frames.Message:
    return frames.Message(
        id=m.id,
        conversation_id=m.conversation_id,
        seq=m.seq,
        sender_id=m.sender_id,
        text=m.text,
        client_msg_id=m.client_msg_id,
        ts=m.ts,
    )
