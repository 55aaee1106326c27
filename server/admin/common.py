"""What every ``hubbub admin`` command shares: its settings and stores,
opened exactly as ``hubbub serve`` opens them; naming users and
conversations; printing; refusing bad input; and recording what it did.

A command runs without a server, on the configured stores, through the
stores' own interfaces (storage/base.py): every change is one of the
store's transactions, so it is safe while servers run on the same stores.

Exit codes: 0 done; 2 bad input (one ``admin_refused`` JSON line on stderr
naming what was wrong), an unusable store (one ``startup_failed`` line, as
``hubbub serve`` writes) or a bad flag or setting (``invalid_command_line``,
``invalid_settings``).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from hubbub.server.audit import audit
from hubbub.server.clock import now_ms
from hubbub.server.config import Settings
from hubbub.storage.factory import Stores
from hubbub.storage.records import ConversationRecord, UserRecord

EXIT_OK = 0
EXIT_USAGE = 2


class AdminError(Exception):
    """Bad input (an unknown user, a refused change): one line on stderr, exit 2, nothing stored."""


@dataclass
class Admin:
    """One command's context: the settings, the open stores and how to print."""

    settings: Settings
    stores: Stores
    command: str
    """``group command``, e.g. ``users disable``, for log lines and audit entries."""
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)

    # -- naming things ------------------------------------------------------

    async def user(self, name: str) -> UserRecord:
        """The user a command line names: a username, or ``id:<n>``."""
        user_id = _id_of(name)
        user = (
            await self.stores.directory.get_user(user_id)
            if user_id is not None
            else await self.stores.directory.get_user_by_username(name)
        )
        if user is None:
            raise AdminError(f"no such user: {name}")
        return user

    async def live_user(self, name: str) -> UserRecord:
        """A user a command changes: not a deleted account's tombstone."""
        user = await self.user(name)
        if user.deleted_at is not None:
            raise AdminError(f"{name} is a deleted account")
        return user

    async def conversation(self, name: str) -> ConversationRecord:
        """The conversation a command line names: a channel name (``#`` optional), or ``id:<n>`` (DMs too)."""
        conversation_id = _id_of(name)
        if conversation_id is not None:
            found = await self.stores.directory.get_conversation(conversation_id)
        else:
            found = await self.stores.directory.channel_by_name(name.removeprefix("#"))
        if found is None:
            raise AdminError(f"no such conversation: {name}")
        return found

    async def channel(self, name: str) -> ConversationRecord:
        found = await self.conversation(name)
        if found.kind != "channel":
            raise AdminError(f"{name} is a DM, not a channel")
        return found

    # -- output -------------------------------------------------------------

    def document(self, value: Any, text: str) -> None:
        """One result: a JSON document with ``--json``, else ``text``."""
        print(orjson.dumps(value).decode() if self.json else text, file=self.out)

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """A listing: JSON lines (one object per row) with ``--json``, else an aligned table."""
        if self.json:
            for row in rows:
                print(orjson.dumps(row).decode(), file=self.out)
            return
        cells = [[_cell(row.get(column)) for column in columns] for row in rows]
        widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=self.out)
        for line in cells:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=self.out)

    # -- recording ----------------------------------------------------------

    async def record(self, action: str, **target: Any) -> None:
        """What a command did: an audit log entry with the command line as its
        actor (None), and its JSON log line (``audit``), as server/audit.py writes them."""
        await audit(self.stores.directory, None, action, target, now_ms())


def _id_of(name: str) -> int | None:
    """``n`` of ``id:<n>``; None for a plain name; AdminError for ``id:`` and no number."""
    if not name.startswith("id:"):
        return None
    digits = name[3:]
    if not digits.isdigit() or len(digits) > 18:
        raise AdminError(f"bad id {name!r}: write id:<number>")
    return int(digits)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


Command = Callable[[Admin, Any], Awaitable[None]]
"""A command's body: given the context and its parsed arguments, print its result, or raise AdminError."""


def user_row(user: UserRecord) -> dict[str, Any]:
    """A user as listings show it (never the password hash)."""
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "created_at": user.created_at,
        "last_seen_at": user.last_seen_at,
        "searchable": user.searchable,
        "workspace_role": user.workspace_role,
        "disabled_at": user.disabled_at,
        "deleted_at": user.deleted_at,
    }
