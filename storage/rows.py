"""Rows and records: the one mapping between what the backends store and the
records that cross the storage interfaces (storage/records.py).

The SQL backends (SQLite, PostgreSQL) share their tables' shape (the
PostgreSQL migrations and SQLite's ``MIGRATIONS`` create the same columns),
so they select the same column lists and turn rows into records with the
same positional mappers: an ``sqlite3`` row and an ``asyncpg.Record`` both
index by position. MongoDB stores a message as a document; its mapping is
here too, beside the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec

from hubbub.storage.base import HistoryOrder
from hubbub.storage.records import (
    AuditEntry,
    ChannelEdit,
    ConversationRecord,
    Membership,
    MemberState,
    MessageRecord,
    NewMessage,
    ProfileUpdate,
    Reaction,
    Role,
    SearchPosition,
    Standing,
    UserRecord,
)


class Row(Protocol):
    """A result row of one of the column lists below, indexed by position:
    an ``sqlite3`` row tuple or an ``asyncpg.Record``."""

    def __getitem__(self, index: int, /) -> Any: ...


USER_COLUMNS = (
    "id, username, display_name, password_hash, created_at, last_seen_at,"
    " status_text, status_emoji, status_expires_at, time_zone, avatar_url, searchable, token_generation,"
    " disabled_at, workspace_role, deleted_at"
)
CONVERSATION_FIELDS = (
    "id, kind, name, topic, private, created_by, created_at, purpose, archived, invite_policy, dm_name,"
    " retention_max_age_days, retention_max_messages"
)
CONVERSATION_COLUMNS = ", ".join(f"c.{field}" for field in CONVERSATION_FIELDS.split(", "))
"""``CONVERSATION_FIELDS`` qualified for queries that alias ``conversations`` as ``c``."""
MESSAGE_COLUMNS = (
    "conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev, thread_root_id, also_in_channel,"
    " reply_count, last_reply_ts, repliers, edited_ts, deleted, mentions, mention_all, reactions, pinned_by, pinned_ts"
)
"""Every column of a message row, in the order of ``message_values`` and ``message_record``.
``repliers``, ``mentions`` and ``reactions`` are JSON text (``[1,2]``; ``[["👍",[1,2]]]``)."""
MESSAGE_STATE_COLUMNS = (
    "text", "reply_count", "last_reply_ts", "repliers", "edited_ts", "deleted", "mentions", "mention_all",
    "reactions", "pinned_by", "pinned_ts", "rev",
)  # fmt: skip
"""The columns a change may write (storage.base.MessageChange), in the order of ``message_state_values``."""

NO_SEQ_BELOW = -1
"""The lower bound of a history read without ``after``: below every seq (seqs start at 1)."""
NO_SEQ_ABOVE = 2**63 - 1
"""The upper bound of a history read without ``before``: the largest 64-bit
integer (SQLite INTEGER, PostgreSQL BIGINT, BSON int64), above every seq."""


def user_record(row: Row) -> UserRecord:
    """A row of ``USER_COLUMNS``."""
    return UserRecord(
        id=row[0],
        username=row[1],
        display_name=row[2],
        password_hash=row[3],
        created_at=row[4],
        last_seen_at=row[5],
        status_text=row[6],
        status_emoji=row[7],
        status_expires_at=row[8],
        time_zone=row[9],
        avatar_url=row[10],
        searchable=bool(row[11]),
        token_generation=row[12],
        disabled_at=row[13],
        workspace_role=row[14],
        deleted_at=row[15],
    )


AUDIT_COLUMNS = "id, ts, actor_id, action, target"
"""An audit log row (``audit_record``); ``target`` is JSON text (SQLite) or jsonb read as text (PostgreSQL)."""


def audit_record(row: Row) -> AuditEntry:
    """A row of ``AUDIT_COLUMNS``."""
    target = msgspec.json.decode(row[4])
    return AuditEntry(id=row[0], ts=row[1], actor_id=row[2], action=row[3], target=target)


def audit_target(target: Mapping[str, Any]) -> str:
    """An audit entry's target as the JSON text both SQL backends store."""
    return msgspec.json.encode(dict(target)).decode()


TOMBSTONE_USERNAME = "deleted-user"
"""The one user every deleted account's messages are attributed to (Directory.tombstone_user)."""
DELETED_DISPLAY_NAME = "Deleted user"
"""The display name of a deleted account's row and of the tombstone user."""
UNUSABLE_PASSWORD_HASH = "!"
"""No password verifies against it: argon2 refuses it as a hash (server/auth.py)."""
RESERVED_USERNAME_PREFIX = "deleted-"
"""Usernames of deleted accounts (``deleted-<id>``) and the tombstone user: never registered."""


def deleted_username(user_id: int) -> str:
    """The username a deleted account's row keeps, freeing its own."""
    return f"{RESERVED_USERNAME_PREFIX}{user_id}"


TOMBSTONE_SQL = (
    "INSERT INTO users (username, display_name, search_name, password_hash, created_at, searchable,"
    " disabled_at, deleted_at) VALUES ({0}, {1}, {2}, {3}, {4}, FALSE, {4}, {4}) ON CONFLICT (username) DO NOTHING"
)
"""Create the tombstone user unless its username is taken (``tombstone_values``: $1..$5)."""


def tombstone_values(now: int) -> tuple[str, str, str, str, int]:
    return TOMBSTONE_USERNAME, DELETED_DISPLAY_NAME, search_key(DELETED_DISPLAY_NAME), UNUSABLE_PASSWORD_HASH, now


HAND_OVER_OWNERSHIP_SQL = (
    "UPDATE memberships SET role = 'owner' WHERE (conversation_id, user_id) IN ("
    " SELECT m.conversation_id, (SELECT o.user_id FROM memberships o"
    "  WHERE o.conversation_id = m.conversation_id AND o.user_id <> {0}"
    "  ORDER BY o.role = 'admin' DESC, o.joined_at, o.user_id LIMIT 1)"
    " FROM memberships m JOIN conversations c ON c.id = m.conversation_id"
    " WHERE m.user_id = {0} AND m.role = 'owner' AND c.kind = 'channel' AND NOT EXISTS ("
    "  SELECT 1 FROM memberships x WHERE x.conversation_id = m.conversation_id AND x.role = 'owner'"
    "  AND x.user_id <> {0}))"
)
"""Before user {0} leaves every channel (Directory.delete_user): where they are the
only owner, the remaining member who joined first, an admin before a member, becomes
owner (as the roles migration chose owners), so no channel with members is left
without one."""
DELETE_USER_SQL = (
    "UPDATE users SET username = {1}, display_name = {2}, search_name = {3}, password_hash = {4},"
    " status_text = '', status_emoji = '', status_expires_at = NULL, time_zone = '', avatar_url = '',"
    " searchable = FALSE, token_generation = token_generation + 1, disabled_at = coalesce(disabled_at, {5}),"
    " workspace_role = 'member', deleted_at = {5} WHERE id = {0}"
)
"""Make user {0}'s row a deleted account's tombstone (``deleted_user_values``: $1..$6)."""


def deleted_user_values(user_id: int, now: int) -> tuple[int, str, str, str, str, int]:
    name = DELETED_DISPLAY_NAME
    return user_id, deleted_username(user_id), name, search_key(name), UNUSABLE_PASSWORD_HASH, now


def search_key(display_name: str) -> str:
    """The lowercase form of a display name that ``user.search`` matches a prefix against.

    Computed here, in Python, for every store, so SQLite (whose ``lower()``
    folds only ASCII) and PostgreSQL compare the same text."""
    return display_name.lower()


def search_position(user: UserRecord, prefix: str) -> SearchPosition:
    """Where ``user``, found by a search for ``prefix``, stands in its order (the next page's cursor)."""
    low = prefix.lower()
    key = user.username if user.username.startswith(low) else search_key(user.display_name)
    return SearchPosition(key=key, username=user.username)


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """The half-open range [low, high) of the texts that start with ``prefix``,
    in binary (code point) order: U+10FFFF sorts after every other character."""
    return prefix, prefix + "\U0010ffff"


def profile_assignments(update: ProfileUpdate) -> list[tuple[str, Any]]:
    """(column, value) of every users column ``update`` changes, for both SQL backends'
    ``UPDATE users SET``: a new display name also changes ``search_name``."""
    pairs: list[tuple[str, Any]] = []
    if update.display_name is not None:
        pairs += [("display_name", update.display_name), ("search_name", search_key(update.display_name))]
    if update.status is not None:
        status = update.status
        pairs += [("status_text", status.text), ("status_emoji", status.emoji)]
        pairs.append(("status_expires_at", status.expires_at))
    if update.time_zone is not None:
        pairs.append(("time_zone", update.time_zone))
    if update.avatar_url is not None:
        pairs.append(("avatar_url", update.avatar_url))
    if update.searchable is not None:
        pairs.append(("searchable", update.searchable))
    return pairs


MEMBERSHIP_COLUMNS = f"{CONVERSATION_COLUMNS}, m.read_seq, m.muted, m.role"
"""A conversation (``c``) and the member's state in it (``m``, a memberships row): ``membership_record``."""
_STATE_AT = len(CONVERSATION_FIELDS.split(", "))
"""Where the member's state starts in a row of ``MEMBERSHIP_COLUMNS``."""


def member_state(read_seq: int | None, muted: Any, role: Role) -> MemberState:
    return MemberState(read_seq=read_seq, muted=bool(muted), role=role)  # SQLite stores 0/1


def membership_record(row: Row) -> Membership:
    """A row of ``MEMBERSHIP_COLUMNS``."""
    n = _STATE_AT
    return Membership(conversation=conversation_record(row), state=member_state(row[n], row[n + 1], row[n + 2]))


def conversation_record(row: Row) -> ConversationRecord:
    """A row of ``CONVERSATION_FIELDS`` (or ``CONVERSATION_COLUMNS``)."""
    return ConversationRecord(
        id=row[0],
        kind=row[1],
        # A group DM's name is its own column: channel names are unique, DM names need not be.
        name=row[2] if row[2] is not None else row[10],
        topic=row[3],
        private=bool(row[4]),  # SQLite stores 0/1
        created_by=row[5],
        created_at=row[6],
        purpose=row[7],
        archived=bool(row[8]),
        invite_policy=row[9],
        retention_max_age_days=row[11],
        retention_max_messages=row[12],
    )


STANDING_SQL = (
    "SELECT (SELECT role FROM memberships WHERE conversation_id = {0} AND user_id = {1}),"
    " (SELECT role FROM memberships WHERE conversation_id = {0} AND user_id = {2}),"
    " (SELECT count(*) FROM memberships WHERE conversation_id = {0} AND role = 'owner'),"
    " (SELECT count(*) FROM memberships WHERE conversation_id = {0})"
)
"""Where the actor ({1}) and the target ({2}) stand in the channel ({0}), for both SQL
backends' placeholders (``STANDING_SQL.format("?1", "?2", "?3")``)."""


def standing(row: Row) -> Standing:
    """A row of ``STANDING_SQL``."""
    return Standing(actor=row[0], target=row[1], owners=row[2], members=row[3])


def channel_assignments(update: ChannelEdit) -> list[tuple[str, Any]]:
    """(column, value) of every conversations column ``update`` changes, for both SQL backends."""
    pairs: list[tuple[str, Any]] = []
    for column in (
        "name",
        "topic",
        "purpose",
        "archived",
        "invite_policy",
        "retention_max_age_days",
        "retention_max_messages",
    ):
        value = getattr(update, column)
        if value is not None:
            pairs.append((column, value))
    return pairs


def new_message_record(message: NewMessage, seq: int, rev: int, message_id: str | None = None) -> MessageRecord:
    """The record of a message being stored with ``seq`` and ``rev``, under
    ``message_id`` or a fresh one."""
    return MessageRecord(
        id=message_id or new_message_id(),
        conversation_id=message.conversation_id,
        seq=seq,
        sender_id=message.sender_id,
        text=message.text,
        client_msg_id=message.client_msg_id,
        ts=message.ts,
        rev=rev,
        thread_root_id=message.thread_root_id,
        also_in_channel=message.also_in_channel,
        mentions=message.mentions,
        mention_all=message.mention_all,
    )


def new_message_id() -> str:
    return new_message_ids(1)[0]


_VARIANT = "89ab89ab89ab89ab"
"""A hex digit's RFC 4122 variant digit (10xx in binary, its two low bits kept)."""


def new_message_ids(count: int) -> list[str]:
    """``count`` fresh message ids: random (version 4) UUIDs in hex, as
    ``uuid.uuid4().hex`` writes them, from one read of the OS's random source
    for them all. A flush takes its ids here: ``uuid4()`` per message was a
    ``getrandom`` call and a Python-level ``UUID`` each, 5 us (BENCHMARKS.md,
    "The send path on PostgreSQL")."""
    digits = os.urandom(16 * count).hex()
    return [
        f"{digits[i : i + 12]}4{digits[i + 13 : i + 16]}{_VARIANT[int(digits[i + 16], 16)]}{digits[i + 17 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


_ids_json = msgspec.json.Encoder()
_decode_ids = msgspec.json.Decoder(tuple[int, ...]).decode
_decode_reactions = msgspec.json.Decoder(tuple[tuple[str, tuple[int, ...]], ...]).decode


def ids_json(ids: Sequence[int]) -> str:
    """User ids as a JSON array, the SQL backends' ``repliers`` and ``mentions`` columns."""
    return _ids_json.encode(ids).decode()


def mention_needle(user_id: int) -> str:
    """What a ``mentions`` column holds around ``user_id`` once its brackets are
    trimmed and it is wrapped in commas: ``[3,12]`` -> ``,3,12,`` contains
    ``,12,`` and not ``,2,``. ``ids_json`` writes compact JSON (no spaces), so an
    unread count tests a mention with one string search instead of parsing
    JSON per row (MessageLog.unread)."""
    return f",{user_id},"


def reactions_json(reactions: Sequence[Reaction]) -> str:
    """Reactions as the SQL backends' ``reactions`` column: ``[[emoji, [user ids]], ...]``."""
    return _ids_json.encode([(r.emoji, r.user_ids) for r in reactions]).decode()


def reactions_from_json(text: str) -> tuple[Reaction, ...]:
    return tuple(Reaction(emoji=emoji, user_ids=users) for emoji, users in _decode_reactions(text))


def message_record(row: Row) -> MessageRecord:
    """A row of ``MESSAGE_COLUMNS``."""
    return MessageRecord(
        conversation_id=row[0],
        seq=row[1],
        id=row[2],
        sender_id=row[3],
        text=row[4],
        client_msg_id=row[5],
        ts=row[6],
        rev=row[7],
        thread_root_id=row[8],
        also_in_channel=bool(row[9]),  # SQLite stores 0/1
        reply_count=row[10],
        last_reply_ts=row[11],
        repliers=_decode_ids(row[12]),
        edited_ts=row[13],
        deleted=bool(row[14]),
        mentions=_decode_ids(row[15]),
        mention_all=row[16],
        reactions=reactions_from_json(row[17]),
        pinned_by=row[18],
        pinned_ts=row[19],
    )


def message_values(record: MessageRecord) -> tuple[Any, ...]:
    """``record`` as the values of ``MESSAGE_COLUMNS``, in order."""
    return (
        record.conversation_id,
        record.seq,
        record.id,
        record.sender_id,
        record.text,
        record.client_msg_id,
        record.ts,
        *_thread_values(record),
        *_state_values(record)[1:],
    )


def _thread_values(record: MessageRecord) -> tuple[Any, ...]:
    return (record.rev, record.thread_root_id, record.also_in_channel)


def _state_values(record: MessageRecord) -> tuple[Any, ...]:
    """text, then the state columns between ``also_in_channel`` and the end of ``MESSAGE_COLUMNS``."""
    return (
        record.text,
        record.reply_count,
        record.last_reply_ts,
        ids_json(record.repliers),
        record.edited_ts,
        record.deleted,
        ids_json(record.mentions),
        record.mention_all,
        reactions_json(record.reactions),
        record.pinned_by,
        record.pinned_ts,
    )


def message_state_values(record: MessageRecord) -> tuple[Any, ...]:
    """``record``'s values of ``MESSAGE_STATE_COLUMNS``, in order (an UPDATE after a change)."""
    return (*_state_values(record), record.rev)


def message_document(record: MessageRecord) -> dict[str, Any]:
    """``record`` as a MongoDB document (``_id`` is the message id); reactions as ``[{emoji, user_ids}]``."""
    return {
        "_id": record.id,
        "conversation_id": record.conversation_id,
        "seq": record.seq,
        "sender_id": record.sender_id,
        "client_msg_id": record.client_msg_id,
        "ts": record.ts,
        "thread_root_id": record.thread_root_id,
        "also_in_channel": record.also_in_channel,
        **message_state_document(record),
    }


def message_state_document(record: MessageRecord) -> dict[str, Any]:
    """The fields a change may write (storage.base.MessageChange), as a MongoDB ``$set``."""
    return {
        "text": record.text,
        "rev": record.rev,
        "reply_count": record.reply_count,
        "last_reply_ts": record.last_reply_ts,
        "repliers": list(record.repliers),
        "edited_ts": record.edited_ts,
        "deleted": record.deleted,
        "mentions": list(record.mentions),
        "mention_all": record.mention_all,
        "reactions": [{"emoji": r.emoji, "user_ids": list(r.user_ids)} for r in record.reactions],
        "pinned_by": record.pinned_by,
        "pinned_ts": record.pinned_ts,
    }


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def message_from_document(document: dict[str, Any]) -> MessageRecord:
    """A stored MongoDB document; int() because BSON may hand back bson.Int64,
    which JSON encoders refuse. A document stored before revisions existed
    (no ``rev``) reads as ``rev = seq``, as the upgrade sets it."""
    seq = int(document["seq"])
    return MessageRecord(
        id=document["_id"],
        conversation_id=int(document["conversation_id"]),
        seq=seq,
        sender_id=int(document["sender_id"]),
        text=document["text"],
        client_msg_id=document["client_msg_id"],
        ts=int(document["ts"]),
        rev=int(document.get("rev", seq)),
        thread_root_id=document.get("thread_root_id"),
        also_in_channel=bool(document.get("also_in_channel", False)),
        reply_count=int(document.get("reply_count", 0)),
        last_reply_ts=_int_or_none(document.get("last_reply_ts")),
        repliers=tuple(int(i) for i in document.get("repliers", ())),
        edited_ts=_int_or_none(document.get("edited_ts")),
        deleted=bool(document.get("deleted", False)),
        mentions=tuple(int(i) for i in document.get("mentions", ())),
        mention_all=document.get("mention_all"),
        reactions=tuple(
            Reaction(emoji=r["emoji"], user_ids=tuple(int(i) for i in r["user_ids"]))
            for r in document.get("reactions", ())
        ),
        pinned_by=_int_or_none(document.get("pinned_by")),
        pinned_ts=_int_or_none(document.get("pinned_ts")),
    )


def seq_range(before: int | None, after: int | None) -> tuple[int, int]:
    """(after, before) of a history read, each absent bound replaced by one
    no seq can pass: the read is ``after < seq < before``."""
    return (NO_SEQ_BELOW if after is None else after, NO_SEQ_ABOVE if before is None else before)


def history_sql(
    order: HistoryOrder,
    marks: tuple[str, str, str, str],
    *,
    thread_root_id: str | None = None,
    include_replies: bool = True,
    thread_index_hint: str = "",
) -> str:
    """The history read of the SQL backends; ``marks`` are the placeholders of
    (conversation id, after, before, limit) in the backend's paramstyle, and
    ``thread_root_id``, when given, the placeholder of the thread root's id
    (storage.base.MessageLog.history). ``thread_index_hint`` follows the
    table name in a thread read: SQLite, which keeps no statistics unless
    analysed, otherwise walks the whole conversation by primary key instead
    of the thread's index (5x slower at 20,000 messages)."""
    conversation_id, after, before, limit = marks
    direction = "DESC" if order == "desc" else "ASC"
    table = "messages"
    if thread_root_id is not None:
        table = f"messages {thread_index_hint}".rstrip()
        which = f" AND thread_root_id = {thread_root_id}"
    elif not include_replies:
        which = " AND (thread_root_id IS NULL OR also_in_channel)"
    else:
        which = ""
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM {table}"
        f" WHERE conversation_id = {conversation_id} AND seq > {after} AND seq < {before}{which}"
        f" ORDER BY seq {direction} LIMIT {limit}"
    )


def dm_key(member_ids: Sequence[int]) -> str:
    """The identity of a DM (its ``dm_key`` column): its sorted, distinct member ids."""
    return ",".join(str(i) for i in sorted(set(member_ids)))


# -- retention (MessageLog.purge) ----------------------------------------------


def count_below(last_seq: int, keep_last: int | None) -> int:
    """The seq below which a gapless log's messages are expired by count: the
    newest ``keep_last`` are seqs ``last_seq - keep_last + 1 .. last_seq``
    (every seq from the oldest retained up is stored). 0 when the rule is off."""
    return 0 if keep_last is None else max(0, last_seq - keep_last + 1)


def expired_prefix(messages: Sequence[tuple[int, int]], below_seq: int, before_ts: int | None) -> int:
    """How many of ``messages`` ((seq, ts), oldest seq first) from the first
    on are expired: seq below ``below_seq`` or ts below ``before_ts``. The
    first one that is not stops the count (MessageLog.purge removes a prefix)."""
    n = 0
    for seq, ts in messages:
        if not (seq < below_seq or (before_ts is not None and ts < before_ts)):
            break
        n += 1
    return n
