"""The ``hubbub`` command: ``hubbub serve`` (and ``python -m server``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvloop

from server import logs
from server.config import ConfigError, add_flags, load_settings, settings_markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hubbub", description="Hubbub chat server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="Run the server (settings from HUBBUB_* and flags).")
    add_flags(serve_parser)
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
    from server.app import run

    uvloop.run(run(settings))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
