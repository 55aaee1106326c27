"""Storage records as protocol frames: the one place that turns a record
into what a client sees (replies, events, gap fills)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from hubbub.protocol import frames
from hubbub.protocol.frames import REACTION_USERS_SHOWN
from hubbub.server.clock import now_ms
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import ConversationRecord, Head, MessageRecord, Reaction, Role, UserRecord


def user_view(u: UserRecord, now: int | None = None) -> frames.User:
    """The user as clients see it at ``now`` (ms; default: the clock): an expired status is left out."""
    view = frames.User(id=u.id, username=u.username, display_name=u.display_name, created_at=u.created_at)
    if u.time_zone:
        view.time_zone = u.time_zone
    if u.avatar_url:
        view.avatar_url = u.avatar_url
    if not u.searchable:
        view.searchable = False
    if (u.status_text or u.status_emoji) and not _expired(u.status_expires_at, now):
        view.status_text, view.status_emoji, view.status_expires_at = u.status_text, u.status_emoji, u.status_expires_at
    return view


def member_view(u: UserRecord, role: Role) -> frames.Member:
    """A channel member as ``channel.members`` lists them: the user and their role."""
    return frames.Member(**msgspec.structs.asdict(user_view(u)), role=role)


def _expired(expires_at: int | None, now: int | None) -> bool:
    return expires_at is not None and expires_at <= (now if now is not None else now_ms())


def message_view(m: MessageRecord, viewer: int | None = None) -> frames.Message:
    """The message as clients see it; with ``viewer`` (replies to that user's
    request, never events) also their own reactions, ``my_reactions``, on a
    message that has reactions (without any, it has none of the viewer's
    either, and the field is left out like every other empty one).

    Only the state a message has is set: a plain message (the send path)
    costs one constructor and a few tests, and omit_defaults leaves the rest
    out of the JSON."""
    view = frames.Message(
        id=m.id,
        conversation_id=m.conversation_id,
        seq=m.seq,
        sender_id=m.sender_id,
        text=m.text,
        client_msg_id=m.client_msg_id,
        ts=m.ts,
        rev=m.rev,
    )
    if m.thread_root_id is not None:
        view.thread_root_id = m.thread_root_id
        view.also_in_channel = m.also_in_channel
    if m.last_reply_ts is not None:  # a root that has had a reply
        view.reply_count = m.reply_count
        view.last_reply_ts = m.last_reply_ts
        view.repliers = list(m.repliers)
    if m.edited_ts is not None:
        view.edited_ts = m.edited_ts
    if m.deleted:
        view.deleted = True
    if m.mentions:
        view.mentions = list(m.mentions)
    if m.mention_all is not None:
        view.mention_all = m.mention_all
    if m.reactions:
        view.reactions = [reaction_view(r) for r in m.reactions]
        if viewer is not None:
            view.my_reactions = [r.emoji for r in m.reactions if viewer in r.user_ids]
    if m.pinned_by is not None:
        view.pinned_by = m.pinned_by
        view.pinned_ts = m.pinned_ts
    return view


def reaction_view(r: Reaction) -> frames.Reaction:
    return frames.Reaction(emoji=r.emoji, count=len(r.user_ids), users=list(r.user_ids[:REACTION_USERS_SHOWN]))


async def conversation_views(
    directory: Directory,
    messages: MessageLog,
    records: Sequence[ConversationRecord],
    member_of: set[int],
    roles: Mapping[int, Role] | None = None,
) -> list[frames.Conversation]:
    """Views with last_seq, last_rev and, for DMs, their member ids (two store reads for all of them);
    ``roles``: the caller's role per channel (none: no ``role``, as in events)."""
    heads = await messages.heads([r.id for r in records])
    dm_ids = [r.id for r in records if r.kind == "dm"]
    dm_members = await directory.members_of_many(dm_ids) if dm_ids else {}
    views = [
        _conversation_view(r, heads.get(r.id, _EMPTY), r.id in member_of, dm_members.get(r.id, [])) for r in records
    ]
    if roles:
        for view in views:
            if view.kind == "channel" and view.member:
                view.role = roles.get(view.id)
    return views


_EMPTY = Head(last_seq=0, last_rev=0)
"""The head of a conversation without messages."""


def _conversation_view(r: ConversationRecord, head: Head, member: bool, dm_members: list[int]) -> frames.Conversation:
    return frames.Conversation(
        id=r.id,
        kind=r.kind,
        name=r.name,
        topic=r.topic,
        private=r.private,
        created_by=r.created_by,
        created_at=r.created_at,
        last_seq=head.last_seq,
        last_rev=head.last_rev,
        member=member,
        member_ids=dm_members if r.kind == "dm" else None,
        purpose=r.purpose,
        archived=r.archived,
        invite_policy=r.invite_policy,
    )


async def conversation_view(
    directory: Directory, messages: MessageLog, record: ConversationRecord, member: bool, role: Role | None = None
) -> frames.Conversation:
    roles = {record.id: role} if role is not None else None
    (view,) = await conversation_views(directory, messages, [record], {record.id} if member else set(), roles)
    return view
