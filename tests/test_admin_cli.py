"""``hubbub admin``, run as the operator runs it: a subprocess on the
configured stores (HUBBUB_* pointing at the test's databases), with no
server, on every store combination. What each command printed and exited
with, and what the stores hold after it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.protocol.client import ServerError
from hubbub.server import message_changes
from hubbub.server.auth import Passwords
from hubbub.server.config import Settings
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.factory import Stores
from hubbub.storage.records import ConversationRecord, NewMessage, UserRecord
from tests import storage_contract
from tests.backends import free_port
from tests.conftest import TEST_SETTINGS, ServerFactory
from tests.helpers import assert_serving, closed_with
from tests.processes import parse_log, settings_env
from tests.storage_contract import NOW, new_channel, new_user

# Each command is a process of its own (a second idle, far more on a loaded machine), and tests run several.
pytestmark = [pytest.mark.all_backends, pytest.mark.timeout(300)]

ACCOUNT_DISABLED_CLOSE = 4004
"""The close code of a disabled user's connections (PROTOCOL.md)."""

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


class Ran(msgspec.Struct, frozen=True):
    code: int
    stdout: str
    stderr: list[str]

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def logged(self, event: str) -> list[dict[str, Any]]:
        entries = [parse_log(line) for line in self.stderr]
        return [e for e in entries if e is not None and e.get("event") == event]


async def run_admin(env: Mapping[str, str], *args: str, stdin: str = "", timeout: float = 60) -> Ran:
    """``hubbub admin *args`` to its exit: its code, stdout and stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubbub.server",
        "admin",
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode().splitlines())


def refused(ran: Ran, *words: str) -> None:
    """Exit 2 with one JSON error line on stderr that says what was wrong, nothing on stdout."""
    assert ran.code == 2, ran
    assert ran.stdout == ""
    assert len(ran.stderr) == 1, ran.stderr
    entry = parse_log(ran.stderr[0])
    assert entry is not None and entry["level"] == "error", ran.stderr
    for word in words:
        assert word in entry["error"], entry


@pytest.fixture
def env(backend_settings: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The environment that points ``hubbub admin`` at the test's stores (the ``stores`` fixture's)."""
    return settings_env({**TEST_SETTINGS, **backend_settings, "data_dir": str(tmp_path / "data")})


# -- users ----------------------------------------------------------------------


async def test_users_list_pages_and_find(env: dict[str, str], directory: Directory) -> None:
    users = [await new_user(directory, f"admin-list-{n}") for n in range(3)]
    page = await run_admin(env, "users", "list", "--limit", "2", "--json")
    assert page.code == 0, page
    assert [row["username"] for row in page.json_lines()] == ["admin-list-0", "admin-list-1"]
    assert "password_hash" not in page.json_lines()[0]
    rest = await run_admin(env, "users", "list", "--after", str(users[1].id))
    assert rest.code == 0, rest
    header, *rows = rest.stdout.splitlines()
    assert header.split() == ["ID", "USERNAME", "DISPLAY_NAME", "WORKSPACE_ROLE", "DISABLED_AT", "LAST_SEEN_AT"]
    assert [row.split() for row in rows] == [[str(users[2].id), "admin-list-2", "Display", "Name", "member", "-", "-"]]
    found = await run_admin(env, "users", "find", "ADMIN-LIST-1", "--json")
    assert found.code == 0, found
    assert [row["id"] for row in found.json_lines()] == [users[1].id]


async def test_bad_input_is_one_line_and_exit_2(env: dict[str, str], directory: Directory) -> None:
    await new_user(directory, "admin-bad")
    refused(await run_admin(env, "users", "reset-password", "nobody-here"), "nobody-here")
    refused(await run_admin(env, "users", "reset-password", "id:x"), "id:x")
    refused(await run_admin(env, "users", "list", "--limit", "0"), "--limit")
    refused(await run_admin(env, "channels", "archive", "no-such-channel"), "no-such-channel")


async def test_reset_password_from_stdin_and_generated(env: dict[str, str], directory: Directory) -> None:
    user = await new_user(directory, "admin-reset")
    passwords = Passwords(msgspec.convert(TEST_SETTINGS | {"data_dir": "."}, Settings).passwords)
    ran = await run_admin(env, "users", "reset-password", "admin-reset", "--password-stdin", stdin="new secret 1\n")
    assert ran.code == 0, ran
    stored = await directory.get_user(user.id)
    assert stored is not None and stored.token_generation == user.token_generation + 1  # sessions ended
    assert await passwords.verify(stored.password_hash, "new secret 1")
    [action] = ran.logged("audit")
    assert action["actor_id"] is None and action["action"] == "user.reset_password"
    assert action["target"] == {"user_id": user.id, "generated": False}
    assert "new secret 1" not in "\n".join([*ran.stderr, ran.stdout])

    generated = await run_admin(env, "users", "reset-password", f"id:{user.id}", "--json")
    assert generated.code == 0, generated
    [result] = generated.json_lines()
    stored = await directory.get_user(user.id)
    assert stored is not None and stored.token_generation == user.token_generation + 2
    assert await passwords.verify(stored.password_hash, result["password"])

    refused(
        await run_admin(env, "users", "reset-password", "admin-reset", "--password-stdin", stdin="short\n"), "refused"
    )


async def test_disable_and_enable_are_audited(env: dict[str, str], directory: Directory) -> None:
    user = await new_user(directory, "admin-disable")
    disabled = await run_admin(env, "users", "disable", "admin-disable")
    assert disabled.code == 0, disabled
    assert disabled.stdout.strip() == f"admin-disable (id {user.id}) is disabled"
    stored = await directory.get_user(user.id)
    assert stored is not None and stored.disabled_at is not None
    assert stored.token_generation > user.token_generation  # every session ended
    again = await run_admin(env, "users", "disable", f"id:{user.id}", "--json")
    assert again.json_lines()[0]["changed"] is False
    enabled = await run_admin(env, "users", "enable", "admin-disable")
    assert enabled.code == 0, enabled
    stored = await directory.get_user(user.id)
    assert stored is not None and stored.disabled_at is None

    audit = await run_admin(env, "audit", "list", "--json")
    assert audit.code == 0, audit
    entries = audit.json_lines()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("cli", "user.disable", {"user_id": user.id, "changed": True}),
        ("cli", "user.disable", {"user_id": user.id, "changed": False}),
        ("cli", "user.enable", {"user_id": user.id, "changed": True}),
    ]
    # Each entry has its JSON log line.
    [logged] = enabled.logged("audit")
    assert (logged["actor_id"], logged["action"], logged["target"]) == (None, "user.enable", entries[-1]["target"])


async def test_workspace_admins_and_audit_paging(env: dict[str, str], directory: Directory) -> None:
    user = await new_user(directory, "admin-role")
    made = await run_admin(env, "users", "set-admin", "admin-role", "--json")
    assert made.code == 0 and made.json_lines()[0]["workspace_role"] == "admin", made
    assert [u.id for u in await directory.workspace_admins()] == [user.id]
    unmade = await run_admin(env, "users", "unset-admin", "admin-role")
    assert unmade.code == 0, unmade
    assert await directory.workspace_admins() == []
    entries = await directory.audit_entries(0, 10)
    assert [(e.actor_id, e.action, e.target["role"]) for e in entries] == [
        (None, "user.set_workspace_role", "admin"),
        (None, "user.set_workspace_role", "member"),
    ]
    page = await run_admin(env, "audit", "list", "--after", str(entries[0].id), "--limit", "1")
    assert page.code == 0, page
    header, row, more = page.stdout.splitlines()
    assert more == f"(more: --after {entries[1].id})"
    assert header.split() == ["ID", "TS", "ACTOR", "ACTION", "TARGET"]
    assert row.split()[0] == str(entries[1].id) and row.split()[2:4] == ["cli", "user.set_workspace_role"]


async def test_delete_asks_for_yes_then_attributes_messages_to_the_tombstone(
    env: dict[str, str], stores: Stores
) -> None:
    directory, log = stores.directory, stores.messages
    alice, bob = await new_user(directory, "admin-delete-a"), await new_user(directory, "admin-delete-b")
    room = await new_channel(directory, alice)
    await directory.add_member(room.id, bob.id, NOW)
    for n in range(3):
        await log.append(
            NewMessage(conversation_id=room.id, sender_id=bob.id, text=f"m{n}", client_msg_id=f"d{n}", ts=NOW)
        )
    refused(await run_admin(env, "users", "delete", "admin-delete-b"), "--yes")
    assert await directory.get_user_by_username("admin-delete-b") is not None
    deleted = await run_admin(env, "users", "delete", "admin-delete-b", "--yes", "--json")
    assert deleted.code == 0, deleted
    [result] = deleted.json_lines()
    assert result["messages_moved"] == 3
    assert await directory.get_user_by_username("admin-delete-b") is None  # the name is free
    stored = await directory.get_user(bob.id)
    assert stored is not None and stored.deleted_at is not None and stored.display_name == "Deleted user"
    history = await log.history(room.id, before=None, after=0, limit=10, order="asc")
    assert {m.sender_id for m in history} == {result["tombstone_id"]}
    assert await directory.member_ids(room.id) == [alice.id]
    # A deleted account takes no other command.
    refused(await run_admin(env, "users", "disable", f"id:{bob.id}"), "deleted")


async def test_disable_on_the_command_line_closes_a_live_connection(
    env: dict[str, str], make_server: ServerFactory, tmp_path: Path
) -> None:
    """A server running on the same stores closes the disabled user's
    connection with 4004 within its account check, and refuses their login."""
    server = await make_server(data_dir=tmp_path / "data", account_check_seconds=0.2)
    client = await server.user("admin-live", password="correct horse")
    bystander = await server.user("admin-live-other")
    disabled = await run_admin(env, "users", "disable", "admin-live")
    assert disabled.code == 0, disabled
    assert await closed_with(client, timeout=10) == ACCOUNT_DISABLED_CLOSE
    await assert_serving(bystander)
    again = await server.client()
    with pytest.raises(ServerError) as refused_login:
        await again.login("admin-live", "correct horse")
    assert refused_login.value.code == "account_disabled"


# -- channels -------------------------------------------------------------------


async def test_channels_list_archive_and_transfer_owner(env: dict[str, str], directory: Directory) -> None:
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    room = await new_channel(directory, alice)
    secret = await new_channel(directory, alice, private=True)
    await directory.add_member(room.id, bob.id, NOW)
    await directory.open_dm([alice.id, carol.id], alice.id, NOW)

    listed = await run_admin(env, "channels", "list", "--json")
    assert listed.code == 0, listed
    rows = {row["id"]: row for row in listed.json_lines()}
    assert set(rows) == {room.id, secret.id}  # private too, no DM
    assert (rows[room.id]["members"], rows[secret.id]["members"], rows[secret.id]["private"]) == (2, 1, True)

    archived = await run_admin(env, "channels", "archive", str(room.name))
    assert archived.code == 0, archived
    assert archived.stdout.strip() == f"#{room.name} (id {room.id}) is archived"
    assert await _archived(directory, room)
    listed = await run_admin(env, "channels", "list")
    line = next(row for row in listed.stdout.splitlines() if row.startswith(f"{room.id} "))
    assert line.split() == [str(room.id), str(room.name), "no", "yes", "2"]
    unarchived = await run_admin(env, "channels", "unarchive", f"id:{room.id}", "--json")
    assert unarchived.json_lines() == [{"id": room.id, "name": room.name, "archived": False, "changed": True}]
    assert not await _archived(directory, room)

    refused(await run_admin(env, "channels", "transfer-owner", str(room.name), carol.username), "not a member")
    moved = await run_admin(env, "channels", "transfer-owner", str(room.name), bob.username)
    assert moved.code == 0, moved
    assert await directory.member_roles(room.id) == {alice.id: "admin", bob.id: "owner"}
    [action] = moved.logged("audit")
    assert action["action"] == "channel.transfer_owner"
    assert action["target"] == {"channel_id": room.id, "user_id": bob.id, "demoted": [alice.id]}


async def _archived(directory: Directory, channel: ConversationRecord) -> bool:
    stored = await directory.get_conversation(channel.id)
    assert stored is not None
    return stored.archived


# -- conversations ----------------------------------------------------------------


async def _rich_conversation(directory: Directory, log: MessageLog) -> tuple[ConversationRecord, list[UserRecord]]:
    """A channel whose messages have every kind of state: an edit, a tombstone,
    a thread (with a deleted reply), a reply also in the channel, reactions,
    a pin, mentions; members with roles and a mute."""
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    room = await new_channel(directory, alice)
    await directory.add_member(room.id, bob.id, NOW)
    await directory.add_member(room.id, carol.id, NOW)
    await directory.set_role(room.id, alice.id, bob.id, "admin", lambda channel, standing: None)
    await directory.set_muted(room.id, carol.id, True)

    async def send(sender: UserRecord, text: str, **fields: Any) -> str:
        appended = await log.append(
            NewMessage(
                conversation_id=room.id, sender_id=sender.id, text=text, client_msg_id=f"c-{text}", ts=NOW, **fields
            )
        )
        return appended.record.id

    root = await send(alice, f"hello @{bob.username}", mentions=(bob.id,))
    reply = await send(bob, "a reply", thread_root_id=root)
    gone = await send(carol, "a reply taken back", thread_root_id=root)
    await send(carol, "also in the channel", thread_root_id=root, also_in_channel=True)
    edited = await send(bob, "first words", mention_all="channel")
    removed = await send(carol, "never mind")
    change = log.change_message
    await change(room.id, gone, message_changes.delete(by=carol.id, moderator=False))
    await change(room.id, root, message_changes.reply_removed)
    await change(room.id, removed, message_changes.delete(by=carol.id, moderator=False))
    for user, emoji in ((bob, "👍"), (carol, "👍"), (carol, "tada")):
        await change(
            room.id, root, message_changes.add_reaction(user=user.id, emoji=emoji, max_emojis=9, max_per_user=9)
        )
    await change(room.id, reply, message_changes.pin(by=alice.id, now=NOW + 5, pinned=0, max_pins=9))
    await change(
        room.id,
        edited,
        message_changes.edit(by=bob.id, text="better words", mentions=(), mention_all=None, now=NOW + 9, window_ms=0),
    )
    return room, [alice, bob, carol]


def _without_ids(lines: list[Any]) -> list[Any]:
    """An export without what an import renews: the conversation's id and name, message and root ids."""
    header, *rest = lines
    header["conversation"] = {k: v for k, v in header["conversation"].items() if k not in ("id", "name")}
    return [header, *({k: v for k, v in m.items() if k not in ("id", "thread_root_id")} for m in rest)]


async def test_export_import_export_round_trips(env: dict[str, str], stores: Stores, tmp_path: Path) -> None:
    directory, log = stores.directory, stores.messages
    room, (alice, bob, carol) = await _rich_conversation(directory, log)
    first = tmp_path / "first.jsonl"
    exported = await run_admin(env, "conversations", "export", str(room.name), "--output", str(first))
    assert exported.code == 0, exported
    header, *lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert header["format"] == "hubbub.conversation" and header["version"] == 1 and header["messages"] == 6
    assert header["members"] == [
        {"username": alice.username, "role": "owner", "muted": False},
        {"username": bob.username, "role": "admin", "muted": False},
        {"username": carol.username, "role": "member", "muted": True},
    ]
    root, reply, gone, also, edited, removed = lines
    assert (root["reply_count"], root["repliers"]) == (2, [carol.username, bob.username])
    assert root["reactions"] == [
        {"emoji": "👍", "users": [bob.username, carol.username]},
        {"emoji": "tada", "users": [carol.username]},
    ]
    assert root["mentions"] == [bob.username]
    assert reply["thread_root_seq"] == root["seq"] and reply["pinned_by"] == alice.username
    assert gone["deleted"] and gone["text"] == "" and gone["thread_root_seq"] == root["seq"]
    assert also["also_in_channel"]
    assert edited["text"] == "better words" and edited["edited_ts"] == NOW + 9
    assert removed["deleted"] and removed["thread_root_seq"] is None

    imported = await run_admin(env, "conversations", "import", str(first), "--name", "admin-imported", "--json")
    assert imported.code == 0, imported
    [result] = imported.json_lines()
    assert result["messages"] == 6 and result["name"] == "admin-imported" and result["conversation_id"] != room.id
    copy = await directory.channel_by_name("admin-imported")
    assert copy is not None and copy.id == result["conversation_id"]
    # Imported history counts as read.
    state = await directory.member_state(copy.id, carol.id)
    assert state is not None and state.muted and state.read_seq == lines[-1]["seq"]

    again = await run_admin(env, "conversations", "export", f"id:{copy.id}")
    assert again.code == 0, again
    second = again.json_lines()
    assert _without_ids(second) == _without_ids([header, *lines])
    # Same seqs (the original had no gaps on every store here), new ids.
    assert [m["seq"] for m in second[1:]] == [m["seq"] for m in lines]
    assert {m["id"] for m in second[1:]}.isdisjoint(m["id"] for m in lines)

    refused(await run_admin(env, "conversations", "import", str(first), "--name", "admin-imported"), "exists")


async def test_import_refuses_a_bad_file_before_writing(env: dict[str, str], stores: Stores, tmp_path: Path) -> None:
    directory = stores.directory
    room, _ = await _rich_conversation(directory, stores.messages)
    good = tmp_path / "good.jsonl"
    assert (await run_admin(env, "conversations", "export", str(room.name), "--output", str(good))).code == 0
    header, *lines = good.read_text().splitlines()
    before = await directory.list_channels(after_id=0, limit=100)

    stranger = tmp_path / "stranger.jsonl"
    lines[1] = lines[1].replace(json.loads(lines[1])["sender"], "nobody-by-this-name")
    stranger.write_text("\n".join([header, *lines]) + "\n")
    refused(await run_admin(env, "conversations", "import", str(stranger), "--name", "admin-x"), "nobody-by-this-name")
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join([header, *lines[:2]]) + "\n")
    refused(await run_admin(env, "conversations", "import", str(truncated), "--name", "admin-y"), "truncated")
    refused(await run_admin(env, "conversations", "import", str(tmp_path / "missing.jsonl")), "cannot read")
    assert await directory.list_channels(after_id=0, limit=100) == before


# -- stores away ------------------------------------------------------------------


async def test_unavailable_store_is_startup_failed(tmp_path: Path) -> None:
    """A PostgreSQL that refuses: the line `hubbub serve` writes, and its exit code (once: no backend param)."""
    dsn = f"postgresql://hubbub@127.0.0.1:{free_port()}/hubbub"
    env = settings_env(
        {
            **TEST_SETTINGS,
            "accounts_backend": "postgres",
            "messages_backend": "postgres",
            "postgres_dsn": dsn,
            "data_dir": str(tmp_path),
        }
    )
    ran = await run_admin(env, "users", "list")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.stderr) == 1, ran.stderr
    entry = parse_log(ran.stderr[0])
    assert entry is not None and entry["event"] == "startup_failed" and entry["store"] == "postgres"
