"""``hubbub admin users ...``: list and find accounts, reset a password."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

import msgspec

from hubbub.protocol import frames
from hubbub.server.admin.common import Admin, AdminError, user_row
from hubbub.server.auth import Passwords

LIST_LIMIT = 100
"""Users per ``users list`` page unless ``--limit`` says otherwise."""
MAX_LIMIT = 10_000
"""The most ``--limit`` takes: a page is read in one query."""
GENERATED_PASSWORD_BYTES = 18
"""Random bytes of a generated password (24 URL-safe characters)."""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser(
        "list",
        parents=[common],
        help="Every user in id order, a page at a time.",
        description="Every user in id order.",
    )
    listing.add_argument("--limit", type=_limit, default=LIST_LIMIT, help=f"Users per page (default {LIST_LIMIT}).")
    listing.add_argument("--after", type=int, default=0, metavar="ID", help="Only users with an id above this.")
    listing.set_defaults(handler=list_users)

    find = commands.add_parser(
        "find",
        parents=[common],
        help="Users whose username or display name starts with a prefix.",
        description="Searchable users whose username or display name starts with PREFIX (case-insensitive).",
    )
    find.add_argument("prefix")
    find.add_argument("--limit", type=_limit, default=LIST_LIMIT, help=f"At most this many (default {LIST_LIMIT}).")
    find.set_defaults(handler=find_users)

    reset = commands.add_parser(
        "reset-password",
        parents=[common],
        help="Set a new password and end the user's sessions.",
        description=(
            "Set USER's password (read from stdin with --password-stdin, else generated and printed) and raise "
            "their token generation: every token issued before stops authenticating."
        ),
    )
    reset.add_argument("user", help="A username or id:<n>.")
    reset.add_argument("--password-stdin", action="store_true", help="Read the new password from stdin's first line.")
    reset.set_defaults(handler=reset_password)


def _limit(value: str) -> int:
    number = int(value)
    if not 1 <= number <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_LIMIT}")
    return number


async def list_users(admin: Admin, args: argparse.Namespace) -> None:
    users = await admin.stores.directory.list_users(after_id=args.after, limit=args.limit)
    admin.table([user_row(u) for u in users], ("id", "username", "display_name", "last_seen_at"))
    if not admin.json and len(users) == args.limit:
        print(f"(more: --after {users[-1].id})", file=admin.out)


async def find_users(admin: Admin, args: argparse.Namespace) -> None:
    users = await admin.stores.directory.search_users(args.prefix, after=None, limit=args.limit)
    admin.table([user_row(u) for u in users], ("id", "username", "display_name", "last_seen_at"))


async def reset_password(admin: Admin, args: argparse.Namespace) -> None:
    user = await admin.user(args.user)
    generated = not args.password_stdin
    password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES) if generated else sys.stdin.readline().rstrip("\r\n")
    try:
        msgspec.convert(password, frames.Password)  # the rule account.create and password.change apply
    except msgspec.ValidationError as exc:
        raise AdminError(f"the new password is refused: {exc}") from None
    passwords = Passwords(admin.settings.passwords)
    updated = await admin.stores.directory.set_password(user.id, await passwords.hash(password))
    if updated is None:
        raise AdminError(f"no such user: {args.user}")  # deleted meanwhile
    await admin.record("reset_password", user_id=user.id, username=user.username, generated=generated)
    result: dict[str, Any] = {"id": user.id, "username": user.username, "token_generation": updated.token_generation}
    if generated:
        result["password"] = password
    text = f"password of {user.username} (id {user.id}) reset; sessions ended"
    admin.document(result, f"{text}\nnew password: {password}" if generated else text)
