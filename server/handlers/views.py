"""Conversation views with their seqs and members, and the visibility rule
every conversation request shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from protocol import frames
from protocol.errors import ErrorCode
from server.errors import ApiError, not_found
from server.hub import Hub
from storage.records import ConversationRecord

if TYPE_CHECKING:
    from server.session import Session


async def conversation_views(
    hub: Hub, records: Sequence[ConversationRecord], member_of: set[int]
) -> list[frames.Conversation]:
    """Views with last_seq and, for DMs, their member ids."""
    ids = [r.id for r in records]
    seqs = await hub.messages.last_seqs(ids)
    dm_ids = [r.id for r in records if r.kind == "dm"]
    dm_members = await hub.directory.members_of_many(dm_ids) if dm_ids else {}
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


async def conversation_view(hub: Hub, record: ConversationRecord, member: bool) -> frames.Conversation:
    (view,) = await conversation_views(hub, [record], {record.id} if member else set())
    return view


async def is_member(hub: Hub, session: Session, conversation_id: int) -> bool:
    """Membership, from this connection's routing when it knows, else from the store.

    The routing set is updated by every membership event, so a hit is
    current; a miss is checked against the store because the event for a
    just-made membership may still be on its way from another instance.
    """
    if conversation_id in session.conversations:
        return True
    return await hub.directory.is_member(conversation_id, session.user_id)


async def visible_conversation(
    hub: Hub, session: Session, conversation_id: int, *, require_member: bool
) -> tuple[ConversationRecord, bool]:
    """The conversation if the caller may see it, and whether they are a member.

    Private channels and DMs are invisible to non-members: ``not_found``,
    never ``forbidden``, so their existence does not leak. A public channel
    is visible to all; ``require_member`` makes non-members ``forbidden``.
    """
    record = await hub.directory.get_conversation(conversation_id)
    if record is None:
        raise not_found("conversation")
    member = await is_member(hub, session, conversation_id)
    if not member:
        if record.private:
            raise not_found("conversation")
        if require_member:
            raise ApiError(ErrorCode.FORBIDDEN, "join the channel first")
    return record, member
