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
from hubbub.server.clock import now_ms
from hubbub.storage.accounts import CannotDelete, delete_account

LIST_LIMIT = 100
"""Users per ``users list`` page unless ``--limit`` says otherwise."""
MAX_LIMIT = 10_000
"""The most ``--limit`` takes: a page is read in one query."""
GENERATED_PASSWORD_BYTES = 18
"""Random bytes of a generated password (24 URL-safe characters)."""
COLUMNS = ("id", "username", "display_name", "workspace_role", "disabled_at", "last_seen_at")
"""The columns of a user table (``--json`` has every field of ``user_row``)."""


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

    for name, disabled, text in (
        (
            "disable",
            True,
            "Disable a user: their sessions end, their connections close on every server within seconds "
            "(the servers poll the directory), and they cannot log in until enabled.",
        ),
        ("enable", False, "Re-enable a disabled user: they can log in again (old sessions stay ended)."),
    ):
        command = commands.add_parser(name, parents=[common], help=text.split(":")[0] + ".", description=text)
        command.add_argument("user", help="A username or id:<n>.")
        command.set_defaults(handler=set_disabled, disabled=disabled)

    for name, role, text in (
        ("set-admin", "admin", "Make a user a workspace admin (they administer every channel and the accounts)."),
        ("unset-admin", "member", "Make a workspace admin a plain member of the workspace again."),
    ):
        command = commands.add_parser(name, parents=[common], help=text, description=text)
        command.add_argument("user", help="A username or id:<n>.")
        command.set_defaults(handler=set_workspace_role, role=role)

    delete = commands.add_parser(
        "delete",
        parents=[common],
        help="Delete an account: its profile is gone, its messages are attributed to the tombstone user.",
        description=(
            "Delete USER's account (docs/storage.md, Administration): the profile is erased, every session ends, "
            "every membership is removed, and their messages are attributed to the shared tombstone user "
            "`deleted-user`. Cannot be undone: asks for --yes. Running it again finishes an interrupted deletion."
        ),
    )
    delete.add_argument("user", help="A username or id:<n>.")
    delete.add_argument("--yes", action="store_true", help="Yes, delete the account (required).")
    delete.set_defaults(handler=delete_user)


def _limit(value: str) -> int:
    number = int(value)
    if not 1 <= number <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_LIMIT}")
    return number


async def list_users(admin: Admin, args: argparse.Namespace) -> None:
    users = await admin.stores.directory.list_users(after_id=args.after, limit=args.limit)
    admin.table([user_row(u) for u in users], COLUMNS)
    await admin.record("user.list", after=args.after, count=len(users))
    if not admin.json and len(users) == args.limit:
        print(f"(more: --after {users[-1].id})", file=admin.out)


async def find_users(admin: Admin, args: argparse.Namespace) -> None:
    users = await admin.stores.directory.search_users(args.prefix, after=None, limit=args.limit)
    admin.table([user_row(u) for u in users], COLUMNS)
    await admin.record("user.find", prefix=args.prefix, count=len(users))


async def reset_password(admin: Admin, args: argparse.Namespace) -> None:
    user = await admin.live_user(args.user)
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
    await admin.record("user.reset_password", user_id=user.id, generated=generated)
    result: dict[str, Any] = {"id": user.id, "username": user.username, "token_generation": updated.token_generation}
    if generated:
        result["password"] = password
    text = f"password of {user.username} (id {user.id}) reset; sessions ended"
    admin.document(result, f"{text}\nnew password: {password}" if generated else text)


async def set_disabled(admin: Admin, args: argparse.Namespace) -> None:
    user = await admin.live_user(args.user)
    updated = await admin.stores.directory.set_disabled(user.id, args.disabled, now_ms())
    if updated is None:
        raise AdminError(f"no such user: {args.user}")
    changed = (user.disabled_at is None) == args.disabled
    action = "user.disable" if args.disabled else "user.enable"
    await admin.record(action, user_id=user.id, changed=changed)
    state = "disabled" if args.disabled else "enabled"
    admin.document(
        {**user_row(updated), "changed": changed},
        f"{user.username} (id {user.id}) is {state}" + ("" if changed else " (it already was)"),
    )


async def set_workspace_role(admin: Admin, args: argparse.Namespace) -> None:
    user = await admin.live_user(args.user)
    # No keep_an_admin: the command line is how an operator appoints admins, so a
    # workspace left without one is mended by `set-admin`, not refused here.
    updated = await admin.stores.directory.set_workspace_role(user.id, args.role)
    if updated is None:
        raise AdminError(f"no such user: {args.user}")
    changed = user.workspace_role != args.role
    await admin.record("user.set_workspace_role", user_id=user.id, role=args.role, changed=changed)
    admin.document(
        {**user_row(updated), "changed": changed},
        f"{user.username} (id {user.id}) is a workspace {args.role}" + ("" if changed else " (it already was)"),
    )


async def delete_user(admin: Admin, args: argparse.Namespace) -> None:
    if not args.yes:
        raise AdminError("deleting an account cannot be undone: pass --yes")
    user = await admin.user(args.user)  # a deleted one too: running again finishes an interrupted deletion
    try:
        deleted = await delete_account(admin.stores.directory, admin.stores.messages, user.id, now_ms())
    except CannotDelete as exc:
        raise AdminError(str(exc)) from None
    if deleted is None:
        raise AdminError(f"no such user: {args.user}")
    await admin.record(
        "user.delete",
        user_id=user.id,
        tombstone_id=deleted.tombstone.id,
        messages_moved=deleted.messages_moved,
    )
    admin.document(
        {
            "id": user.id,
            "username": user.username,
            "tombstone_id": deleted.tombstone.id,
            "messages_moved": deleted.messages_moved,
        },
        f"{user.username} (id {user.id}) deleted; {deleted.messages_moved} messages now by "
        f"{deleted.tombstone.username} (id {deleted.tombstone.id})",
    )
