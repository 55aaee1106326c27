"""Storage records as protocol frames: the one place that turns a record
into what a client sees (replies, events, gap fills)."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.protocol import frames
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import ConversationRecord, MessageRecord, UserRecord


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


async def conversation_views(
    directory: Directory, messages: MessageLog, records: Sequence[ConversationRecord], member_of: set[int]
) -> list[frames.Conversation]:
    """Views with last_seq and, for DMs, their member ids (two store reads for all of them)."""
    ids = [r.id for r in records]
    seqs = await messages.last_seqs(ids)
    dm_ids = [r.id for r in records if r.kind == "dm"]
    dm_members = await directory.members_of_many(dm_ids) if dm_ids else {}
    return [
        frames.Conversation(
            id=r.id,
            kind=r.kind,
            name=r.name,
            topic=r.topic,
            private=r.private,
            created_by=r.created_by,
            created_at=r.created_at,
            last_seq=seqs.get(r.id, 0),
            member=r.id in member_of,
            member_ids=dm_members.get(r.id, []) if r.kind == "dm" else None,
        )
        for r in records
    ]


async def conversation_view(
    directory: Directory, messages: MessageLog, record: ConversationRecord, member: bool
) -> frames.Conversation:
    (view,) = await conversation_views(directory, messages, [record], {record.id} if member else set())
    return view
