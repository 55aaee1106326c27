"""The storage interfaces the server depends on.

Two narrow stores, because the design keeps them in different databases:
the directory (accounts, conversations, memberships; SQLite or PostgreSQL)
and the message log (SQLite, MongoDB or PostgreSQL). Every backend passes the
same contract tests in tests/test_storage_contract.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from hubbub.storage.records import ConversationRecord, MessageRecord, NewMessage, UserRecord


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

    async def create_channel(
        self, name: str, topic: str, private: bool, creator_id: int, now: int
    ) -> ConversationRecord:
        """Create a channel with its creator as first member; Conflict when the name is taken."""

    async def get_conversation(self, conversation_id: int) -> ConversationRecord | None: ...

    async def public_channels(self) -> list[ConversationRecord]: ...

    async def conversations_of(self, user_id: int) -> list[ConversationRecord]:
        """Every channel and DM the user is a member of."""

    async def is_member(self, conversation_id: int, user_id: int) -> bool: ...

    async def add_member(self, conversation_id: int, user_id: int, now: int) -> bool:
        """Add a member; False when they already were one."""

    async def remove_member(self, conversation_id: int, user_id: int) -> bool:
        """Remove a member; False when they were not one."""

    async def member_ids(self, conversation_id: int) -> list[int]: ...

    async def members_of_many(self, conversation_ids: Sequence[int]) -> dict[int, list[int]]:
        """Member ids per conversation, for DM listings."""

    async def member_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """How many members each conversation has; conversations without members are absent."""

    async def open_dm(self, member_ids: Sequence[int], creator_id: int, now: int) -> tuple[ConversationRecord, bool]:
        """The one DM for exactly this set of users, created if missing; True when created."""


HistoryOrder = Literal["desc", "asc"]


class MessageLog(Protocol):
    """Messages, ordered per conversation by a strictly increasing seq."""

    name: str
    gapless: bool
    """True when seqs never skip a number (the store allocates them transactionally)."""
    ordered_appends: bool
    """True when concurrent appends get seqs in the order they were submitted,
    so one connection's sends can be pipelined without reordering them."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, message: NewMessage) -> tuple[MessageRecord, bool]:
        """Store durably and return the record with its seq; True when it is a duplicate.

        A duplicate is a message with the same (conversation, sender,
        client_msg_id) as one already stored: that original is returned and
        nothing new is written.
        """

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
    ) -> list[MessageRecord]:
        """Messages with after < seq < before, the first ``limit`` of them in ``order``."""

    async def last_seqs(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """The newest seq per conversation; conversations with no message are absent."""
