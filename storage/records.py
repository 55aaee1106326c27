"""Plain records that cross the storage interfaces."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class UserRecord(Struct, kw_only=True, frozen=True):
    id: int
    username: str
    display_name: str
    password_hash: str
    created_at: int
    last_seen_at: int | None


class ConversationRecord(Struct, kw_only=True, frozen=True):
    id: int
    kind: Literal["channel", "dm"]
    name: str | None
    topic: str
    private: bool
    created_by: int
    created_at: int


class MessageRecord(Struct, kw_only=True, frozen=True):
    id: str
    conversation_id: int
    seq: int
    sender_id: int
    text: str
    client_msg_id: str
    ts: int


class NewMessage(Struct, kw_only=True, frozen=True):
    """A message to append; the store assigns id and seq."""

    conversation_id: int
    sender_id: int
    text: str
    client_msg_id: str
    ts: int
