"""Fixtures and helpers of the storage contract tests (tests/test_storage_contract.py,
tests/test_message_changes_contract.py), shared so each exists once.

A test module marked ``pytest.mark.all_backends`` binds the fixtures below
into its own namespace (``stores = storage_contract.stores``, ...), which is
where pytest looks for them, and so runs once per backend in BACKENDS
(tests/backends.py), through the server's own factory.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.server.config import Settings
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.factory import Stores, open_stores
from hubbub.storage.records import ConversationRecord, MessageRecord, NewMessage, UserRecord
from tests.conftest import TEST_SETTINGS

NOW = 1_700_000_000_000
_names = itertools.count(1)


@pytest.fixture
async def stores(backend: str, backend_settings: dict[str, Any], tmp_path: Path) -> AsyncIterator[Stores]:
    """Fresh, empty stores of ``backend``, opened as the server opens them."""
    settings = msgspec.convert({**TEST_SETTINGS, **backend_settings, "data_dir": str(tmp_path / "data")}, Settings)
    opened = await open_stores(settings.storage)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def directory(stores: Stores) -> Directory:
    return stores.directory


@pytest.fixture
def messages(stores: Stores) -> MessageLog:
    return stores.messages


def name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


async def new_user(directory: Directory, username: str | None = None) -> UserRecord:
    return await directory.create_user(username or name("user"), "Display Name", "hash$value", NOW)


async def new_channel(directory: Directory, creator: UserRecord, *, private: bool = False) -> ConversationRecord:
    return await directory.create_channel(name("room"), "topic", private, creator.id, NOW)


def new_message(
    conversation: ConversationRecord,
    sender: UserRecord,
    client_msg_id: str,
    text: str = "",
    *,
    ts: int = NOW + 1,
    thread_root_id: str | None = None,
    also_in_channel: bool = False,
) -> NewMessage:
    return NewMessage(
        conversation_id=conversation.id,
        sender_id=sender.id,
        text=text or f"text of {client_msg_id}",
        client_msg_id=client_msg_id,
        ts=ts,
        thread_root_id=thread_root_id,
        also_in_channel=also_in_channel,
    )


async def fill(
    messages: MessageLog, conversation: ConversationRecord, sender: UserRecord, count: int
) -> list[MessageRecord]:
    stored = []
    for n in range(count):
        appended = await messages.append(new_message(conversation, sender, f"fill-{n}"))
        assert not appended.duplicate
        stored.append(appended.record)
    return stored
