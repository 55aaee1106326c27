"""``hubbub admin`` without stores: every command has --help and is
documented with an example, and an import file is checked whole before
anything is written (server/admin/conversations.py parse_export)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec
import pytest

from hubbub.server import admin, cli
from hubbub.server.admin.common import AdminError
from hubbub.server.admin.conversations import (
    ExportedConversation,
    ExportedMessage,
    Header,
    parse_export,
)

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def admin_commands() -> list[tuple[str, str]]:
    """Every (group, command) the admin parser has."""
    top = argparse.ArgumentParser()
    admin.add_parser(top.add_subparsers(), argparse.ArgumentParser)
    found: list[tuple[str, str]] = []

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(action.choices)

    for group, group_parser in subcommands(subcommands(top)["admin"]).items():
        found.extend((group, command) for command in subcommands(group_parser))
    return found


def test_the_commands_the_brief_names_exist() -> None:
    assert set(admin_commands()) >= {
        ("users", c)
        for c in ("list", "find", "disable", "enable", "reset-password", "set-admin", "unset-admin", "delete")
    } | {("channels", c) for c in ("list", "archive", "unarchive", "transfer-owner")} | {
        ("conversations", "export"),
        ("conversations", "import"),
        ("audit", "list"),
    }


@pytest.mark.parametrize(("group", "command"), admin_commands())
def test_every_command_has_help(group: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["admin", group, command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hubbub admin {group} {command} ")
    assert "--json" in out and "--data-dir" in out  # the settings, as for `hubbub serve`
    assert "--max-frame-bytes" not in out  # not each of them


@pytest.mark.parametrize(("group", "command"), admin_commands())
def test_every_command_is_documented_with_an_example(group: str, command: str) -> None:
    text = OPERATIONS.read_text()
    section = text[text.index("### The `hubbub admin` command line") :]
    assert f"| `{group} {command}" in section or f"/ `{group} {command}" in section
    assert re.search(rf"^\$ .*hubbub admin {group} {command}\b", section, re.M), f"no example of {group} {command}"


def test_a_bad_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["admin", "users", "list", "--no-such-flag"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and '"invalid_command_line"' in err[0]


# -- the import file ----------------------------------------------------------------


def header(messages: int) -> str:
    conversation = ExportedConversation(id=1, kind="channel", name="general", created_by="alice", created_at=0)
    value = Header(format="hubbub.conversation", version=1, conversation=conversation, members=[], messages=messages)
    return msgspec.json.encode(value).decode()


def message(seq: int, root: int | None = None) -> str:
    value = ExportedMessage(
        seq=seq, id=f"m{seq}", sender="alice", ts=seq, client_msg_id=f"c{seq}", text="hi", thread_root_seq=root
    )
    return msgspec.json.encode(value).decode()


def test_a_good_file_parses() -> None:
    parsed = parse_export(iter([header(3), message(1), message(2, root=1), "", message(5, root=1)]))
    assert [m.seq for m in parsed.messages] == [1, 2, 5]
    assert parsed.header.conversation.name == "general"


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([], "empty"),
        ([header(0).replace('"version":1', '"version":2')], "version 1"),
        ([header(1), "{not json"], "line 2: not JSON"),
        ([header(1), '{"seq": 1}'], "line 2"),
        ([header(2), message(2), message(1)], "line 3: seq 1 does not follow 2"),
        ([header(1), message(1, root=1)], "no earlier root"),
        ([header(3), message(1), message(2, root=1), message(3, root=2)], "line 4: thread_root_seq 2"),
        ([header(3), message(1), message(2)], "truncated"),
    ],
)
def test_a_bad_file_names_what_is_wrong(lines: list[str], error: str) -> None:
    with pytest.raises(AdminError, match=re.escape(error)):
        parse_export(iter(lines))
