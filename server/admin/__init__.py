"""``hubbub admin <group> <command>``: administration on the configured
stores, without a running server (docs/operations.md, Administration).

One module per group (users, channels, conversations, audit); server/admin/common.py
holds what they share. Each group module has ``register(commands, parents)``,
which adds its commands, each with ``handler`` (its body) set as a default.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from hubbub.server import logs
from hubbub.server.admin import audit, channels, conversations, users
from hubbub.server.admin.common import EXIT_OK, EXIT_USAGE, Admin, AdminError
from hubbub.server.config import SETTING_NAMES, Settings, add_flags
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


class _Usage(argparse.HelpFormatter):
    """A usage line without the hundred setting flags (``--help`` still lists them, in their own group)."""

    def add_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup],
        prefix: str | None = None,
    ) -> None:
        shown = [action for action in actions if action.dest not in SETTING_NAMES]
        super().add_usage(usage, [*shown, _SETTINGS], groups, prefix)


_SETTINGS = argparse.Action(["--SETTING"], dest="setting", metavar="VALUE", nargs="*")
"""Stands for the setting flags in usage lines."""


def add_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``admin`` and its groups to the ``hubbub`` subcommands ``commands``."""
    admin = commands.add_parser(
        "admin", help="Administer users, channels and conversations on the configured stores, then exit."
    )

    def leaf_parser(**kwargs: Any) -> argparse.ArgumentParser:
        return parser_class(formatter_class=_Usage, **kwargs)

    groups = admin.add_subparsers(dest="admin_group", required=True, parser_class=parser_class)
    # Every command takes --json and the settings `hubbub serve` takes (as flags or HUBBUB_*).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="Print JSON for scripts (docs/operations.md).")
    add_flags(common.add_argument_group("settings (as for `hubbub serve`)"))  # type: ignore[arg-type]
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
