"""The storage interfaces the server depends on.

Two narrow stores, because the design keeps them in different databases:
the directory (accounts, conversations, memberships; SQLite or PostgreSQL)
and the message log (SQLite, MongoDB or PostgreSQL). Every backend passes the
same contract tests in tests/test_storage_contract.py and
tests/test_message_changes_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from hubbub.storage.records import (
    Appended,
    AuditEntry,
    ChangesPage,
    ChannelEdit,
    ConversationRecord,
    Head,
    HistoryRead,
    Membership,
    MemberState,
    MessageQuery,
    MessageRecord,
    NewMessage,
    ProfileUpdate,
    PurgeResult,
    ReadMark,
    Role,
    SearchHit,
    SearchPosition,
    Standing,
    Unread,
    UnreadAsk,
    UserRecord,
    UserSession,
    WorkspaceRole,
)
from hubbub.storage.records import HistoryOrder as HistoryOrder  # where it was first defined; kept importable here

AdminCheck = Callable[[ConversationRecord, Standing], None]
"""A rule of channel administration (server/channel_roles.py), called by the
store inside the transaction of the change it guards, with the channel and
where the actor and target stand as that transaction reads them: it raises
to refuse, and then nothing is stored and the exception reaches the caller.
Pure, like MessageChange."""


class Directory(Protocol):
    """Accounts, channels, DMs and memberships."""

    name: str
    """Store name used in readiness reports and errors, e.g. ``sqlite``."""

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""

    async def close(self) -> None: ...

    async def create_user(self, username: str, display_name: str, password_hash: str, now: int) -> UserRecord:
        """Raise Conflict when the username is taken."""

    async def get_user(self, user_id: int) -> UserRecord | None: ...

    async def get_user_by_username(self, username: str) -> UserRecord | None: ...

    async def get_users(self, user_ids: Sequence[int]) -> list[UserRecord]:
        """The users that exist among ``user_ids``, in id order."""

    async def set_last_seen(self, user_id: int, ts: int) -> None: ...

    async def set_last_seen_many(self, seen: Mapping[int, int]) -> None:
        """Each user's ``last_seen_at`` (user id -> ms) in one write: the users a
        reconnect storm's disconnects took offline together (server/lookups.py)."""

    async def sessions_of(self, user_ids: Sequence[int]) -> dict[int, UserSession]:
        """Each existing user among ``user_ids`` with the ids of their conversations,
        in one read: ``auth``'s token check and membership load (server/lookups.py
        batches thousands of them into one call in a reconnect storm)."""

    async def update_profile(self, user_id: int, update: ProfileUpdate) -> UserRecord | None:
        """Change the fields ``update`` sets, the others as they are; the user as stored, None when none."""

    async def search_users(self, prefix: str, *, after: SearchPosition | None, limit: int) -> list[UserRecord]:
        """Searchable users whose username or display name starts with ``prefix``
        (case-insensitive: both are matched lowercased), each once, the first
        ``limit`` of them after ``after``.

        The order is by the text each matched (``SearchPosition``: the username
        when it matches, else the lowercased display name), then username, in
        code point order: both matches are read in index order, so a page costs
        its size, not the number of matches."""

    async def contacts_of(self, user_id: int) -> list[int]:
        """The user and everyone who shares a conversation with them, each once, in id order."""

    # -- administration (``hubbub admin``, server/admin/) ----------------------

    async def list_users(self, *, after_id: int, limit: int) -> list[UserRecord]:
        """Every user (searchable or not) with an id above ``after_id``, the first ``limit`` in id order."""

    async def list_channels(self, *, after_id: int, limit: int) -> list[ConversationRecord]:
        """Every channel (private and archived too; no DM) with an id above
        ``after_id``, the first ``limit`` in id order."""

    async def channel_by_name(self, name: str) -> ConversationRecord | None:
        """The channel of this name (names are unique among channels), archived or not."""

    async def set_password(self, user_id: int, password_hash: str) -> UserRecord | None:
        """Store a new password hash and raise the token generation (one write); None when no such user."""

    async def end_sessions(self, user_id: int) -> UserRecord | None:
        """Raise the user's token generation: every token issued before stops authenticating."""

    async def create_channel(
        self, name: str, topic: str, private: bool, creator_id: int, now: int
    ) -> ConversationRecord:
        """Create a channel with its creator as first member; Conflict when the name is taken."""

    async def get_conversation(self, conversation_id: int) -> ConversationRecord | None: ...

    async def public_channels(self) -> list[ConversationRecord]: ...

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        """Every channel and DM the user is a member of."""

    async def is_member(self, conversation_id: int, user_id: int) -> bool: ...

    async def add_member(self, conversation_id: int, user_id: int, now: int, *, read_seq: int = 0) -> bool:
        """Add a member whose read position is ``read_seq`` (the head when they
        join: history from before is not unread); False when they already were one."""

    async def remove_member(self, conversation_id: int, user_id: int) -> bool:
        """Remove a member; False when they were not one."""

    async def member_ids(self, conversation_id: int) -> list[int]: ...

    async def members_of_many(self, conversation_ids: Sequence[int]) -> dict[int, list[int]]:
        """Member ids per conversation, for DM listings."""

    async def member_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """How many members each conversation has; conversations without members are absent."""

    async def members_by_username(self, conversation_id: int, usernames: Sequence[str]) -> dict[str, int]:
        """Username -> user id of those of ``usernames`` who are members of the conversation (mentions)."""

    async def open_dm(self, member_ids: Sequence[int], creator_id: int, now: int) -> tuple[ConversationRecord, bool]:
        """The one DM for exactly this set of users, created if missing; True when created."""

    # Read state and mute (issue 12): kept in the membership row.

    async def memberships_of(self, user_id: int) -> list[Membership]:
        """Every channel and DM the user is a member of, with their state in each (one query)."""

    async def memberships_of_many(self, user_ids: Sequence[int]) -> dict[int, list[Membership]]:
        """``memberships_of`` for each of ``user_ids`` in one statement (users with
        none are absent): the catch-up ``channel.list`` / ``dm.list`` of a reconnect
        storm, batched across requests by server/lookups.py."""

    async def member_state(self, conversation_id: int, user_id: int) -> MemberState | None:
        """The user's state in the conversation; None when not a member."""

    async def mark_read(self, conversation_id: int, user_id: int, seq: int, *, unset_as: int) -> ReadMark | None:
        """Move the read position forward to ``seq``, atomically: a position at
        or past it stays (``moved`` False). A position never stored counts as
        ``unset_as`` (the conversation's head). None when not a member."""

    async def set_muted(self, conversation_id: int, user_id: int, muted: bool) -> MemberState | None:
        """Mute or unmute; the state as stored, None when not a member."""

    async def init_read_positions(self, user_id: int, positions: Mapping[int, int]) -> None:
        """Store these read positions (conversation id -> seq) where none is stored yet (one write)."""

    # -- roles and channel administration (issue 12) ------------------------
    # The creator of a channel is its owner (create_channel), everyone who
    # joins or is invited a member (add_member). Each change below reads the
    # Standing and calls its AdminCheck inside one transaction, serialised
    # with every other such change of the channel (PostgreSQL: the channel's
    # row locked FOR NO KEY UPDATE; SQLite: the one writer), so a rule such as
    # "never zero owners" holds under concurrent changes.

    async def roles_of(self, user_id: int, conversation_ids: Sequence[int]) -> dict[int, Role]:
        """The user's role in each of these channels they are a member of (DMs: "member")."""

    async def member_roles(self, conversation_id: int) -> dict[int, Role]:
        """Every member's role, in user id order."""

    async def update_channel(
        self, conversation_id: int, actor_id: int, update: ChannelEdit, check: AdminCheck
    ) -> ConversationRecord | None:
        """Change the fields ``update`` sets once ``check`` passes (no target:
        ``Standing.target`` is None); the channel as stored, None when no such
        channel. Conflict when the new name is taken."""

    async def set_role(self, conversation_id: int, actor_id: int, user_id: int, role: Role, check: AdminCheck) -> bool:
        """Give a member ``role`` once ``check`` passes; False when it was already theirs."""

    async def remove_member_as(self, conversation_id: int, actor_id: int, user_id: int, check: AdminCheck) -> bool:
        """Remove a member (``actor_id`` == ``user_id``: they leave) once
        ``check`` passes; False when they were not one."""

    async def rename_dm(self, conversation_id: int, name: str | None) -> ConversationRecord | None:
        """Name a DM (None: no name); the DM as stored, None when no such DM."""

    async def conversations_after(
        self, after_id: int, limit: int, *, overridden_only: bool
    ) -> list[ConversationRecord]:
        """Conversations (channels and DMs) with an id above ``after_id``, the
        first ``limit`` in id order (the retention purge pages through them);
        with ``overridden_only``, only channels with a retention override."""

    # -- administration (issue 15): accounts and the audit log ----------------
    # Called by the server (admin.* frames) and by ``hubbub admin`` with no
    # server running; servers notice a disabling through ``disabled_since``.

    async def set_disabled(self, user_id: int, disabled: bool, now: int) -> UserRecord | None:
        """Disable (``disabled_at`` = ``now``, and the token generation raised, so no
        token issued before authenticates again) or re-enable (``disabled_at`` None) a
        user; one that already is as asked is left as it is (a disabled one keeps its
        first ``disabled_at``). A deleted account stays disabled. The user as stored,
        None when no such user."""

    async def disabled_since(self, ts: int, limit: int = 1000) -> list[UserRecord]:
        """Users disabled at or after ``ts`` (ms) and still disabled, in ``disabled_at``
        order, the first ``limit`` of them: what a server polls to close their
        connections when the disabling was done elsewhere (the command line)."""

    async def set_workspace_role(
        self, user_id: int, role: WorkspaceRole, *, keep_an_admin: bool = False
    ) -> UserRecord | None:
        """Give the user ``role`` in the workspace; the user as stored, None when no
        such user (or a deleted one). With ``keep_an_admin``, LastAdmin (nothing
        changed) when that would leave no active (not disabled) admin, checked in
        the transaction of the change, serialised with every other such change."""

    async def workspace_admins(self) -> list[UserRecord]:
        """Every user whose workspace role is ``admin``, disabled ones too, in id order."""

    async def tombstone_user(self, now: int) -> UserRecord:
        """The one user deleted accounts' messages are attributed to (username
        ``deleted-user``, storage.rows.TOMBSTONE_USERNAME), created on first use: it
        cannot log in, is not searchable, and is a member of nothing. Conflict when a
        live account holds that username (registration refuses it since issue 15)."""

    async def delete_user(self, user_id: int, now: int) -> UserRecord | None:
        """Delete an account, in one transaction: its row stays as a tombstone (other
        rows refer to its id: channels it created, reactions, pins) with its profile
        gone: username ``deleted-<id>`` (the old one is free), display name
        ``Deleted user``, status, time zone and avatar cleared, not searchable, a
        password nothing verifies against, the token generation raised (every session
        ends), disabled, a member of the workspace, ``deleted_at`` = ``now``. Every
        membership is removed; in a channel where it was the only owner, the
        remaining member who joined first (an admin before a member) becomes owner.
        Its messages are not touched: ``MessageLog.reattribute`` moves them
        (storage/accounts.py does both). Deleting a deleted account changes nothing.
        The row as stored, None when no such user; Conflict (nothing changed) when
        another account holds ``deleted-<id>`` (registered before issue 15 reserved it)."""

    async def record_audit(self, actor_id: int | None, action: str, target: Mapping[str, Any], now: int) -> AuditEntry:
        """Append an entry to the audit log: ``actor_id`` None is the command line."""

    async def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        """The audit log's entries with an id above ``after_id``, oldest first, the first ``limit`` of them."""


MessageChange = Callable[[MessageRecord], MessageRecord | None]
"""A change to one message: given its current state, its new state, or None
to leave it as it is (nothing stored, no revision used). It may raise to
refuse the change: nothing is stored and the exception reaches the caller.
It changes only a message's state (text, edited_ts, deleted, mentions,
mention_all, reactions, pins, reply_count, last_reply_ts, repliers), never
its identity (id, conversation, seq, sender, client_msg_id, ts, thread);
the store sets ``rev``. It is a pure function: a store may call it more than
once (MongoDB retries a change that raced another)."""


class MessageLog(Protocol):
    """Messages, ordered per conversation by a strictly increasing seq, and
    every change to them by a strictly increasing revision (docs/messages.md)."""

    name: str
    gapless: bool
    """True when seqs never skip a number (the store allocates them transactionally)."""
    ordered_appends: bool
    """True when concurrent appends get seqs in the order they were submitted,
    so one connection's sends can be pipelined without reordering them."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, message: NewMessage, deadline: float | None = None) -> Appended:
        """Store durably with the next seq and the next rev.

        ``deadline``: the loop time the caller stops waiting, with TimeoutError
        (the message may be stored all the same); None waits until it is stored.
        The group commit bounds every waiting append with one timer
        (storage/batching.py), cheaper than a timeout around each call.

        A duplicate is a message with the same (conversation, sender,
        client_msg_id) as one already stored: that original is returned and
        nothing new is written. A new reply (``thread_root_id`` set) also
        updates its root with ``storage.threads.with_reply`` under a revision
        of its own, and the outcome carries the updated root.
        """

    async def get_message(self, conversation_id: int, message_id: str) -> MessageRecord | None:
        """The message with this id in this conversation, tombstone or not."""

    async def change_message(
        self, conversation_id: int, message_id: str, change: MessageChange
    ) -> tuple[MessageRecord, bool] | None:
        """Apply ``change`` to the message's current state, atomically with
        every other change and append of the conversation, and store the result
        under the conversation's next revision.

        The stored record and True; the current record and False when
        ``change`` returned None; None when there is no such message in the
        conversation. Whatever ``change`` raises propagates, nothing stored.
        """

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
        thread_root_id: str | None = None,
        include_replies: bool = True,
    ) -> list[MessageRecord]:
        """Messages with after < seq < before, the first ``limit`` of them in ``order``.

        With ``thread_root_id``, only that thread's replies (not its root).
        Without ``include_replies``, only the main timeline: replies are left
        out unless ``also_in_channel``.
        """

    async def history_many(self, reads: Sequence[HistoryRead]) -> dict[HistoryRead, list[MessageRecord]]:
        """``history`` for each of ``reads`` (equal reads once) in one store call:
        the catch-up of a reconnect storm, where every room's members ask their
        room's page after the seq they saw last, batched across requests by
        server/lookups.py. Each read's answer is what ``history`` with its
        arguments gives (an empty list when nothing matches)."""

    async def pins(self, conversation_id: int, limit: int) -> list[MessageRecord]:
        """The conversation's pinned messages, the most recently pinned first."""

    async def changes(self, conversation_id: int, *, after_rev: int, limit: int) -> ChangesPage:
        """The messages whose latest change has a revision above ``after_rev``,
        oldest change first, the first ``limit`` of them; and the horizon
        (``ChangesPage.horizon``) up to which nothing can still appear."""

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        """The newest seq and revision per conversation; conversations with no message are absent."""

    async def unread(self, user_id: int, positions: Mapping[int, int | None], cap: int) -> dict[int, Unread]:
        """Heads and ``user_id``'s unread and mention counts, for every
        conversation of ``positions`` (conversation id -> read seq) in one
        store round trip; conversations with no message are absent.

        A message after the read position counts unless ``user_id`` sent it, it
        is deleted, or it is a thread reply not also in the channel; it is a
        mention when its current state mentions ``user_id`` or everyone. Each
        count stops at ``cap`` (a range read of at most ``cap`` counting
        messages per conversation). A position of None counts nothing (only the head)."""

    async def unread_many(self, asks: Sequence[UnreadAsk], cap: int) -> dict[UnreadAsk, dict[int, Unread]]:
        """``unread`` for each of ``asks`` (equal asks once), in one store round
        trip: the listings of a reconnect storm's catch-up, batched across
        requests by server/lookups.py. Each ask's answer is what ``unread`` of its
        user and positions gives; an ask whose conversations have no message maps
        to an empty dict."""

    async def search(self, query: MessageQuery) -> list[SearchHit]:
        """The first ``query.limit`` messages of ``query.conversation_ids`` whose
        current text matches every term and the filters, tombstones never, in
        ``query.order``: ``newest`` by ts descending (a store orders equal ts
        its own stable way), after ``query.after``; ``relevance``: the newest
        ``query.window`` matches, best first, after ``query.offset``. InvalidPosition for an ``after`` it never
        returned. An edit or delete changes what is found as it is stored."""

    async def purge(
        self, conversation_id: int, *, before_ts: int | None, keep_last: int | None, limit: int
    ) -> PurgeResult:
        """Remove the conversation's expired messages, oldest first, at most ``limit`` (retention, issue 15).

        A message is expired when its ts is below ``before_ts`` or when at least
        ``keep_last`` messages have a higher seq (None: that rule is off). Only
        a prefix of seqs goes: the oldest message that is not expired stops the
        purge (a ts out of order, from clock skew between instances, only delays
        its successors). So a thread's root, older than its replies, always goes
        first; replies of a purged root stay (the root's counts go with it).
        The search index forgets the purged messages in the same step, and the
        conversation's ``Head.oldest_seq`` rises above them; seqs are never
        reused (the counters stay)."""

    async def reattribute(self, sender_id: int, to_id: int, limit: int) -> int:
        """Attribute up to ``limit`` of ``sender_id``'s messages to ``to_id``
        (account deletion, issue 15), tombstones too; how many it moved (0: none
        is left). Each moved message's ``client_msg_id`` becomes its own id, so
        it stays unique per (conversation, sender) under the new sender; nothing
        else changes and no revision is used (docs/operations.md, deleting an
        account). One bounded transaction per call: call until it returns 0."""
