"""``hubbub admin audit list``: the audit log, oldest first (docs/operations.md, Administration)."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from hubbub.server.admin.common import Admin
from hubbub.server.admin.users import LIST_LIMIT, _limit
from hubbub.storage.records import AuditEntry


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser(
        "list",
        parents=[common],
        help="The audit log's entries, oldest first, a page at a time.",
        description="The audit log's entries (what admins and admin commands did), oldest first.",
    )
    listing.add_argument("--limit", type=_limit, default=LIST_LIMIT, help=f"Entries per page (default {LIST_LIMIT}).")
    listing.add_argument("--after", type=int, default=0, metavar="ID", help="Only entries with an id above this.")
    listing.set_defaults(handler=list_entries)


def entry_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "ts": entry.ts,
        "actor": "cli" if entry.actor_id is None else entry.actor_id,
        "action": entry.action,
        "target": entry.target,
    }


async def list_entries(admin: Admin, args: argparse.Namespace) -> None:
    # Reading the audit log writes no entry of its own: a reader paging it would otherwise never reach its end.
    entries = await admin.stores.directory.audit_entries(args.after, args.limit)
    rows = [entry_row(e) for e in entries]
    if not admin.json:
        rows = [{**row, "target": orjson.dumps(row["target"]).decode()} for row in rows]
    admin.table(rows, ("id", "ts", "actor", "action", "target"))
    if not admin.json and len(entries) == args.limit:
        print(f"(more: --after {entries[-1].id})", file=admin.out)
