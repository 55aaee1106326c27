"""Plain records that cross the storage interfaces."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from hubbub.protocol.search import Term

MentionAll = Literal["channel", "here"]
"""A channel-wide mention: ``@channel`` (every member) or ``@here`` (every member online)."""


WorkspaceRole = Literal["member", "admin"]
"""A user's role in the workspace (issue 15): admins administer every channel and the accounts."""
WORKSPACE_ROLES: tuple[WorkspaceRole, ...] = ("member", "admin")


class UserRecord(Struct, kw_only=True, frozen=True):
    id: int
    username: str
    display_name: str
    password_hash: str
    created_at: int
    last_seen_at: int | None
    # The profile (issue 12); every field's default is what a user who never
    # set it has, which is also what the migration gives existing rows.
    status_text: str = ""
    status_emoji: str = ""
    status_expires_at: int | None = None
    """When the status stops showing (ms); None: until changed."""
    time_zone: str = ""
    """An IANA zone name, e.g. ``Europe/Paris``; empty when not set."""
    avatar_url: str = ""
    searchable: bool = True
    """False: left out of ``user.search`` (still readable by id)."""
    token_generation: int = 0
    """Tokens issued under an older generation no longer authenticate: a
    password change or "log out everywhere" raises it (server/auth.py)."""
    # Administration (issue 15); the defaults are what the migration gives existing rows.
    disabled_at: int | None = None
    """When an admin disabled the account (ms); None: active. A disabled user
    cannot log in or authenticate, and their connections are closed."""
    workspace_role: WorkspaceRole = "member"
    """``admin``: a workspace admin (docs/operations.md, Administration)."""
    deleted_at: int | None = None
    """When the account was deleted (ms): the row is a tombstone (``Directory.delete_user``)."""


class Status(Struct, kw_only=True, frozen=True):
    """A status as set: text and emoji, either may be empty, and when it expires."""

    text: str
    emoji: str
    expires_at: int | None


class SearchPosition(Struct, kw_only=True, frozen=True):
    """Where a user stands in a search's order: by the text it matched (``key``), then username."""

    key: str
    """The username when it starts with the prefix, else the lowercased display name (``search_name``)."""
    username: str


class ProfileUpdate(Struct, kw_only=True, frozen=True):
    """The profile fields to change; None leaves a field as it is."""

    display_name: str | None = None
    status: Status | None = None
    time_zone: str | None = None
    avatar_url: str | None = None
    searchable: bool | None = None


Role = Literal["owner", "admin", "member"]
"""A channel member's role (issue 12): owners and admins administer the channel. DMs have none."""
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
InvitePolicy = Literal["anyone", "admins"]
"""Who may invite to a channel: any member, or only its owners and admins."""


class ConversationRecord(Struct, kw_only=True, frozen=True):
    id: int
    kind: Literal["channel", "dm"]
    name: str | None
    """A channel's name; a group DM's name once a participant gave it one, else None."""
    topic: str
    private: bool
    created_by: int
    created_at: int
    # Channel administration (issue 12); the defaults are what the migration gives existing rows.
    purpose: str = ""
    archived: bool = False
    """Read-only: no message, reaction or pin changes; hidden from browsing."""
    invite_policy: InvitePolicy = "anyone"
    # Retention (issue 15): a channel's own override of the server's retention; 0 follows the server's.
    retention_max_age_days: int = 0
    """Messages older than this many days are purged; 0: the server's ``HUBBUB_RETENTION_MAX_AGE_DAYS``."""
    retention_max_messages: int = 0
    """Only the newest this many messages are kept; 0: the server's ``HUBBUB_RETENTION_MAX_MESSAGES``."""


class Standing(Struct, kw_only=True, frozen=True):
    """Where an actor and a target stand in a channel, as the store reads it
    inside the transaction that then changes it (Directory.set_role and co.)."""

    actor: Role | None
    """The actor's role; None when not a member."""
    target: Role | None
    """The target's role; None when not a member (or no target)."""
    owners: int
    """How many owners the channel has."""
    members: int
    """How many members the channel has."""


class ChannelEdit(Struct, kw_only=True, frozen=True):
    """The channel fields to change; None leaves a field as it is."""

    name: str | None = None
    topic: str | None = None
    purpose: str | None = None
    archived: bool | None = None
    invite_policy: InvitePolicy | None = None
    retention_max_age_days: int | None = None
    """0 removes the channel's override (the server's retention applies again)."""
    retention_max_messages: int | None = None

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.name,
                self.topic,
                self.purpose,
                self.archived,
                self.invite_policy,
                self.retention_max_age_days,
                self.retention_max_messages,
            )
        )


class UserSession(Struct, kw_only=True, frozen=True):
    """What authenticating a user needs, read together (``Directory.sessions_of``)."""

    user: UserRecord
    """The record as stored: its ``token_generation`` decides whether a token still authenticates."""
    conversation_ids: tuple[int, ...]
    """Every channel and DM the user is a member of, in id order: routed to the new connection."""


class MemberState(Struct, kw_only=True, frozen=True):
    """A member's own state in one conversation: read position, mute and role (issue 12)."""

    read_seq: int | None
    """The seq of the newest message the member has read; None for a membership
    from before read state existed, which counts as read up to the head until
    the first listing stores that (docs/storage.md, read state upgrade)."""
    muted: bool = False
    role: Role = "member"
    """Their role: a channel's creator is its owner (PROTOCOL.md, Roles); every DM participant a member."""


class Membership(Struct, kw_only=True, frozen=True):
    """A conversation the user is a member of, with their state in it."""

    conversation: ConversationRecord
    state: MemberState


class ReadMark(Struct, kw_only=True, frozen=True):
    """The outcome of ``Directory.mark_read``."""

    state: MemberState
    """The membership as stored after it (``read_seq`` is never None here)."""
    moved: bool
    """False when the stored position was already at or past the seq asked for."""


class Reaction(Struct, kw_only=True, frozen=True):
    """One emoji on a message and everyone who reacted with it, in the order they did."""

    emoji: str
    user_ids: tuple[int, ...]


class MessageRecord(Struct, kw_only=True, frozen=True):
    """A message as stored: what it was sent with, and its current state.

    ``id``, ``conversation_id``, ``seq``, ``sender_id``, ``client_msg_id``,
    ``ts``, ``thread_root_id`` and ``also_in_channel`` never change once
    stored; every other field is the message's current state, and ``rev``
    is the conversation revision of the latest change to it (its append
    included): unique within the conversation, strictly increasing with
    every change (docs/messages.md).
    """

    id: str
    conversation_id: int
    seq: int
    sender_id: int
    text: str
    client_msg_id: str
    ts: int
    rev: int = 0
    thread_root_id: str | None = None
    """The id of the thread's root, for a reply; None for every other message."""
    also_in_channel: bool = False
    """A reply that is also shown in the conversation's main timeline."""
    reply_count: int = 0
    """For a thread root: its replies not deleted."""
    last_reply_ts: int | None = None
    repliers: tuple[int, ...] = ()
    """For a thread root: the latest distinct repliers, newest first (at most ``REPLIERS_KEPT``)."""
    edited_ts: int | None = None
    deleted: bool = False
    """A tombstone: text, mentions, reactions and pin are gone; the rest stays."""
    mentions: tuple[int, ...] = ()
    """Members mentioned by ``@username``, resolved when the text was sent or edited."""
    mention_all: MentionAll | None = None
    reactions: tuple[Reaction, ...] = ()
    """In the order each emoji was first used."""
    pinned_by: int | None = None
    pinned_ts: int | None = None


REPLIERS_KEPT = 5
"""How many of a thread's latest distinct repliers its root keeps."""


class NewMessage(Struct, kw_only=True, frozen=True):
    """A message to append; the store assigns id, seq and rev."""

    conversation_id: int
    sender_id: int
    text: str
    client_msg_id: str
    ts: int
    thread_root_id: str | None = None
    """The root (never itself a reply) of the thread this message replies in."""
    also_in_channel: bool = False
    mentions: tuple[int, ...] = ()
    mention_all: MentionAll | None = None


class Appended(Struct, kw_only=True, frozen=True):
    """An append's outcome."""

    record: MessageRecord
    duplicate: bool
    """True when the message had been stored before (same sender and client_msg_id): ``record`` is that original."""
    root: MessageRecord | None = None
    """For a new reply: its thread root as updated by it (reply count, latest repliers), when the root exists."""


class Head(Struct, kw_only=True, frozen=True):
    """Where a conversation's two counters stand."""

    last_seq: int
    """The newest message's seq."""
    last_rev: int
    """The newest change's revision."""
    oldest_seq: int = 1
    """The oldest seq retention may have left: every message below it was purged (1 when none was)."""


class Unread(Struct, kw_only=True, frozen=True):
    """A conversation's head and what one member has not read of it (``MessageLog.unread``)."""

    head: Head
    unread_count: int
    """Messages after the read position that count (docs/storage.md, unread counts), at most the cap."""
    mention_count: int
    """Those of them that mention the member (``@username``, ``@channel``, ``@here``)."""


class UnreadAsk(Struct, kw_only=True, frozen=True):
    """One ``MessageLog.unread`` question, as a value: a user and their read
    position per conversation (None: only the head), in conversation id order.
    Hashable, so equal asks made together are read once (``MessageLog.unread_many``)."""

    user_id: int
    positions: tuple[tuple[int, int | None], ...]


HistoryOrder = Literal["desc", "asc"]


class HistoryRead(Struct, kw_only=True, frozen=True):
    """One ``MessageLog.history`` read, as a value (its arguments): hashable, so
    equal reads asked together are read once, and many distinct ones are one
    store call (``MessageLog.history_many``: a reconnect storm's catch-up)."""

    conversation_id: int
    before: int | None
    after: int | None
    limit: int
    order: HistoryOrder
    thread_root_id: str | None = None
    include_replies: bool = True


class ChangesPage(Struct, kw_only=True, frozen=True):
    """Messages changed after a revision, oldest change first."""

    messages: list[MessageRecord]
    horizon: int
    """Every change up to this revision is stored and visible: a reader that
    has applied every change up to here has missed nothing. Every message of
    the page has ``rev <= horizon``."""
    oldest_seq: int = 1
    """Every message below this seq was purged by retention (1 when none was): ``Head.oldest_seq``."""


class PurgeResult(Struct, kw_only=True, frozen=True):
    """The outcome of ``MessageLog.purge``."""

    purged: int
    """How many messages this call removed."""
    oldest_seq: int
    """The conversation's ``Head.oldest_seq`` after it."""
    more: bool
    """True when expired messages remain (the call stopped at its limit): call again."""


SearchOrder = Literal["newest", "relevance"]


class MessageQuery(Struct, kw_only=True, frozen=True):
    """A ``message.search`` as a store runs it (``MessageLog.search``)."""

    terms: tuple[Term, ...]
    """Every term must match (protocol.search: words, prefixes, phrases; normalised)."""
    conversation_ids: tuple[int, ...]
    """Only these conversations: the caller's at the time of the search (never empty)."""
    sender_id: int | None = None
    after_ts: int | None = None
    """Only messages with ``ts >= after_ts``."""
    before_ts: int | None = None
    """Only messages with ``ts < before_ts``."""
    threads_only: bool = False
    """Only thread replies."""
    order: SearchOrder = "newest"
    after: str | None = None
    """For ``newest``: a ``SearchHit.position`` this store returned; only the hits after it."""
    offset: int = 0
    """For ``relevance``: how many of the best hits to skip."""
    window: int = 1000
    """For ``relevance``: only the newest ``window`` matches are ranked (the work of a ranking is bounded)."""
    limit: int = 20


class SearchHit(Struct, kw_only=True, frozen=True):
    record: MessageRecord
    position: str
    """Where the hit stands in ``newest`` order, opaque and store-specific: ``MessageQuery.after`` of the next page."""


class InvalidPosition(ValueError):
    """A ``MessageQuery.after`` that is no position of this store (a forged or foreign cursor)."""


class AuditEntry(Struct, kw_only=True, frozen=True):
    """One row of the audit log (issue 15): who did what to what, and when."""

    id: int
    """Increasing in the order entries were recorded: ``Directory.audit_entries`` pages by it."""
    ts: int
    """When (ms)."""
    actor_id: int | None
    """The workspace admin who did it; None: the command line (``hubbub admin``)."""
    action: str
    """What, e.g. ``user.disable`` (docs/operations.md lists them)."""
    target: dict[str, Any]
    """What it was done to and with, e.g. ``{"user_id": 7}``: a JSON object."""
