"""The ``hubbub`` command: ``hubbub serve`` (and ``python -m hubbub.server``),
``migrate``, ``reindex``, ``settings`` and ``admin`` (server/admin/).

Whatever goes wrong, stderr gets JSON lines only (server/logs.py): an invalid
setting or flag is one ``invalid_settings`` / ``invalid_command_line`` line,
an unusable store one ``startup_failed`` line (server/startup.py), all exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import uvloop

from hubbub.server import logs
from hubbub.server.config import ConfigError, Settings, add_flags, load_settings, settings_markdown

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints a usage block; an operator's log wants one line.
        logs.error("invalid_command_line", error=message, hint=f"see `{self.prog} --help`")
        sys.exit(USAGE_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything can log: even a bad flag is a JSON line.
    logs.configure("info")
    parser = _Parser(prog="hubbub", description="Hubbub chat server.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve_parser = commands.add_parser("serve", help="Run the server (settings from HUBBUB_* and flags).")
    add_flags(serve_parser)
    migrate_parser = commands.add_parser("migrate", help="Apply pending PostgreSQL migrations, then exit.")
    add_flags(migrate_parser)
    reindex_parser = commands.add_parser(
        "reindex", help="Rebuild the message search index from the message store, then exit (docs/storage.md)."
    )
    add_flags(reindex_parser)
    commands.add_parser("settings", help="Print every setting with its default as a Markdown table.")
    from hubbub.server import admin

    arguments = sys.argv[1:] if argv is None else list(argv)
    admin.add_parser(commands, _Parser, full=arguments[:1] == ["admin"])
    args = parser.parse_args(arguments)
    if args.command == "settings":
        print(settings_markdown(), end="")
        return 0
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(os.environ, flags)
    except ConfigError as exc:
        logs.error("invalid_settings", error=str(exc))
        return USAGE_ERROR
    logs.configure(settings.process.log_level)
    if args.command == "migrate":
        return uvloop.run(migrate(settings))
    if args.command == "admin":
        return uvloop.run(admin.run(args, settings))
    if args.command == "reindex":
        from hubbub.server.reindex import reindex

        return uvloop.run(reindex(settings))
    from hubbub.server import tracing
    from hubbub.server.app import run

    try:
        exporter = tracing.configure(os.environ)
    except ValueError as exc:
        logs.error("invalid_settings", error=str(exc))
        return USAGE_ERROR
    if exporter is not None:
        logs.info("tracing", exporter=exporter)
    try:
        return uvloop.run(run(settings))
    finally:
        tracing.shutdown()  # export the spans still queued


async def migrate(settings: Settings) -> int:
    from hubbub.server.startup import EXIT_CODE, postgres_failure
    from hubbub.storage.postgres import migrate as migrate_postgres

    dsn = settings.storage.postgres_dsn
    if not dsn:
        logs.error("invalid_settings", error="migrate needs HUBBUB_POSTGRES_DSN (the embedded store migrates itself)")
        return USAGE_ERROR
    try:
        applied = await migrate_postgres(dsn, search_config=settings.storage.postgres_search_config)
    except Exception as exc:
        # Whatever asyncpg raises (a wrong database or role, a refused port)
        # is about the one DSN this command uses.
        postgres_failure(exc, dsn, "HUBBUB_POSTGRES_DSN").log()
        return EXIT_CODE
    logs.info("migrated", applied=applied)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
