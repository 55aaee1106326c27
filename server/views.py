"""Storage records as protocol frames: the one place that turns a record
into what a client sees (replies, events, gap fills)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from hubbub.protocol import frames
from hubbub.protocol.frames import REACTION_USERS_SHOWN
from hubbub.server.clock import now_ms
from hubbub.server.retention_policy import RetentionPolicy
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import (
    ConversationRecord,
    Head,
    MemberState,
    MessageRecord,
    Reaction,
    Role,
    Unread,
    UserRecord,
)


def user_view(u: UserRecord, now: int | None = None) -> frames.User:
    """The user as clients see it at ``now`` (ms; default: the clock): an expired status is left out."""
    view = frames.User(id=u.id, username=u.username, display_name=u.display_name, created_at=u.created_at)
    if u.time_zone:
        view.time_zone = u.time_zone
    if u.avatar_url:
        view.avatar_url = u.avatar_url
    if not u.searchable:
        view.searchable = False
    if u.workspace_role != "member":
        view.workspace_role = u.workspace_role
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
    states: Mapping[int, MemberState],
    *,
    viewer: int,
    cap: int,
    retention: RetentionPolicy,
) -> list[frames.Conversation]:
    """Views as ``viewer`` sees them: last_seq, last_rev and, for the
    conversations of ``states`` (theirs), their read state and unread counts;
    for DMs, their member ids. Two store reads for all of them (the log's
    ``unread``, the DMs' members), and once after the read state upgrade one
    write: the heads become the read positions never stored (PROTOCOL.md §16)."""
    positions = {r.id: _read_seq(states.get(r.id)) for r in records}
    unread = await messages.unread(viewer, positions, cap)
    unset = {r.id: unread[r.id].head.last_seq if r.id in unread else 0 for r in records if _unset(states.get(r.id))}
    if unset:
        await directory.init_read_positions(viewer, unset)
    dm_ids = [r.id for r in records if r.kind == "dm"]
    dm_members = await directory.members_of_many(dm_ids) if dm_ids else {}
    return [
        _conversation_view(r, unread.get(r.id, _EMPTY), states.get(r.id), dm_members.get(r.id, []), retention)
        for r in records
    ]


def shared_views(
    records: Sequence[ConversationRecord], heads: Mapping[int, Unread], retention: RetentionPolicy
) -> dict[int, frames.Conversation]:
    """Each of ``records`` (channels) as a non-member sees it, with its head from
    ``heads`` (``MessageLog.unread`` without a position): the same for every
    caller, so built once for all of them (server/listings.py)."""
    return {r.id: _conversation_view(r, heads.get(r.id, _EMPTY), None, [], retention) for r in records}


async def shared_view(
    directory: Directory, messages: MessageLog, record: ConversationRecord, retention: RetentionPolicy
) -> frames.Conversation:
    """The conversation as every member sees it, without anyone's own state
    (role, read state): for events to all its members (``channel.updated``, ``dm.updated``)."""
    heads = await messages.heads([record.id])
    dm_members = await directory.members_of_many([record.id]) if record.kind == "dm" else {}
    view = _conversation_view(record, _EMPTY, None, dm_members.get(record.id, []), retention)
    view.member = True
    head = heads.get(record.id)
    if head is not None:
        view.last_seq, view.last_rev, view.oldest_seq = head.last_seq, head.last_rev, head.oldest_seq
    return view


def _read_seq(state: MemberState | None) -> int | None:
    return None if state is None else state.read_seq


def _unset(state: MemberState | None) -> bool:
    """A membership from before read state existed: it reads as at the head."""
    return state is not None and state.read_seq is None


_EMPTY = Unread(head=Head(last_seq=0, last_rev=0), unread_count=0, mention_count=0)
"""A conversation without messages."""


def _conversation_view(
    r: ConversationRecord, unread: Unread, state: MemberState | None, dm_members: list[int], retention: RetentionPolicy
) -> frames.Conversation:
    head = unread.head
    view = frames.Conversation(
        id=r.id,
        kind=r.kind,
        name=r.name,
        topic=r.topic,
        private=r.private,
        created_by=r.created_by,
        created_at=r.created_at,
        last_seq=head.last_seq,
        last_rev=head.last_rev,
        member=state is not None,
        member_ids=dm_members if r.kind == "dm" else None,
        purpose=r.purpose,
        archived=r.archived,
        invite_policy=r.invite_policy,
        oldest_seq=head.oldest_seq,
        retention=retention.view(r),
    )
    if state is not None:
        view.read_seq = head.last_seq if state.read_seq is None else min(state.read_seq, head.last_seq)
        view.unread_count = unread.unread_count
        view.mention_count = unread.mention_count
        view.muted = state.muted
        if r.kind == "channel":
            view.role = state.role
    return view


async def conversation_view(
    directory: Directory,
    messages: MessageLog,
    record: ConversationRecord,
    state: MemberState | None,
    *,
    viewer: int,
    cap: int,
    retention: RetentionPolicy,
) -> frames.Conversation:
    """One conversation as ``viewer`` sees it, with their ``state`` in it (None: not a member)."""
    states = {} if state is None else {record.id: state}
    (view,) = await conversation_views(
        directory, messages, [record], states, viewer=viewer, cap=cap, retention=retention
    )
    return view
