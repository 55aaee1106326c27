"""The ``hubbub`` command: ``hubbub serve`` (and ``python -m server``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvloop

from server import logs
from server.config import ConfigError, Settings, add_flags, load_settings, settings_markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hubbub", description="Hubbub chat server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="Run the server (settings from HUBBUB_* and flags).")
    add_flags(serve_parser)
    migrate_parser = commands.add_parser("migrate", help="Apply pending PostgreSQL migrations, then exit.")
    add_flags(migrate_parser)
    commands.add_parser("settings", help="Print every setting with its default as a Markdown table.")
    args = parser.parse_args(argv)
    if args.command == "settings":
        print(settings_markdown(), end="")
        return 0
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(os.environ, flags)
    except ConfigError as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if args.command == "migrate":
        return uvloop.run(migrate(settings))
    from server.app import run

    return uvloop.run(run(settings))


async def migrate(settings: Settings) -> int:
    from storage.errors import StoreUnavailable
    from storage.postgres import migrate as migrate_postgres

    if not settings.postgres_dsn:
        print("hubbub: migrate needs HUBBUB_POSTGRES_DSN (the embedded store migrates itself)", file=sys.stderr)
        return 2
    try:
        applied = await migrate_postgres(settings.postgres_dsn)
    except (StoreUnavailable, OSError) as exc:
        logs.error("migrate_failed", error=str(exc))
        return 1
    logs.info("migrated", applied=applied)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
