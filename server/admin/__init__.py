"""``hubbub admin <group> <command>``: administration on the configured
stores, without a running server (docs/operations.md, Administration).

One module per group (users, channels, conversations, audit); server/admin/common.py
holds what they share. Each group module has ``register(commands, parents)``,
which adds its commands, each with ``handler`` (its body) set as a default.
"""

from __future__ import annotations

import argparse
from typing import Any

from hubbub.server import logs
from hubbub.server.admin import audit, channels, conversations, users
from hubbub.server.admin.common import EXIT_OK, EXIT_USAGE, Admin, AdminError
from hubbub.server.config import Settings, describe_settings
from hubbub.server.errors import ApiError
from hubbub.server.startup import EXIT_CODE, explain
from hubbub.storage.errors import Conflict
from hubbub.storage.factory import open_stores

GROUPS = {
    "users": (users, "Accounts: list, find, disable, reset passwords, workspace admins, delete."),
    "channels": (channels, "Channels: list with member counts, archive, transfer ownership."),
    "conversations": (conversations, "Export a conversation as JSON Lines, import one back."),
    "audit": (audit, "The audit log: what admins and admin commands did."),
}


SETTINGS_EPILOG = (
    "Settings: as for `hubbub serve`, from HUBBUB_* variables or the same flags "
    "(--data-dir, --postgres-dsn, --mongo-url, ...; `hubbub settings` lists every one)."
)


def add_parser(commands: Any, parser_class: type[argparse.ArgumentParser], *, full: bool = True) -> None:
    """Add ``admin`` and its groups to the ``hubbub`` subcommands ``commands``;
    with ``full`` False only ``admin`` itself (its commands cost 0.1 s to build,
    which ``hubbub serve`` need not pay)."""
    admin = commands.add_parser(
        "admin", help="Administer users, channels and conversations on the configured stores, then exit."
    )
    if not full:
        return

    def leaf_parser(**kwargs: Any) -> argparse.ArgumentParser:
        return parser_class(epilog=SETTINGS_EPILOG, **kwargs)

    groups = admin.add_subparsers(dest="admin_group", required=True, parser_class=parser_class)
    # Every command takes --json and every setting flag of `hubbub serve`; the
    # hundred setting flags are left out of each command's --help (the epilog points at them).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="Print JSON for scripts (docs/operations.md).")
    for _env, flag, _default, _description in describe_settings():
        common.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, help=argparse.SUPPRESS)
    for name, (module, description) in GROUPS.items():
        group = groups.add_parser(name, help=description, description=description)
        module.register(group.add_subparsers(dest="admin_command", required=True, parser_class=leaf_parser), common)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the parsed admin command on the configured stores: its exit code."""
    command = f"{args.admin_group} {args.admin_command}"
    try:
        stores = await open_stores(settings.storage)
    except Exception as exc:
        return await _store_failed(exc, settings)
    try:
        await args.handler(Admin(settings, stores, command, json=args.json), args)
    except (AdminError, ApiError, Conflict) as exc:
        # ApiError: a rule of the server's refused (e.g. channel_roles); Conflict: a name taken.
        logs.error("admin_refused", command=command, error=str(exc))
        return EXIT_USAGE
    except Exception as exc:
        return await _store_failed(exc, settings)
    finally:
        await stores.close()
    return EXIT_OK


async def _store_failed(exc: Exception, settings: Settings) -> int:
    """The ``startup_failed`` line ``hubbub serve`` would write for a store's failure; a bug re-raises."""
    failure = await explain(exc, settings.storage, settings.redis)
    if failure is None:
        raise exc
    failure.log()
    return EXIT_CODE
