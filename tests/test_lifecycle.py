"""The real CLI in a subprocess: settings validation, graceful shutdown on
signals, and durability across a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError, open_client
from hubbub.protocol.errors import CloseCode
from tests.processes import FAST_HASHING, parse_log, run_to_exit, running_server, server_env


async def wait_closed(client: Client) -> int | None:
    await asyncio.wait_for(client.ws.wait_closed(), 20)
    return client.ws.close_code


PLACEHOLDER_SECRET = "change-me-to-a-random-secret-of-at-least-32-bytes"  # .env.example's


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"HUBBUB_PORT": "abc"}, ["HUBBUB_PORT"]),
        ({"HUBBUB_PORT": "70000"}, ["HUBBUB_PORT"]),
        ({"HUBBUB_RATE_PER_SECOND": "-1"}, ["HUBBUB_RATE_PER_SECOND"]),
        # Enum settings say what is valid.
        ({"HUBBUB_LOG_LEVEL": "verbose"}, ["HUBBUB_LOG_LEVEL", "'verbose'", "debug, info, warning, error"]),
        ({"HUBBUB_PROFILE": "production"}, ["HUBBUB_PROFILE", "local, cloud"]),
        ({"HUBBUB_MESSAGES_BACKEND": "redis"}, ["HUBBUB_MESSAGES_BACKEND", "sqlite, mongo, postgres"]),
        ({"HUBBUB_JWT_SECRET": "short"}, ["HUBBUB_JWT_SECRET"]),
        ({"HUBBUB_NOPE": "1"}, ["HUBBUB_NOPE"]),
        # The placeholder secret of .env.example, in every profile, with how to make a real one.
        ({"HUBBUB_JWT_SECRET": PLACEHOLDER_SECRET}, ["HUBBUB_JWT_SECRET", ".env.example", "secrets.token_urlsafe"]),
        (
            {"HUBBUB_JWT_SECRET": PLACEHOLDER_SECRET, "HUBBUB_PROFILE": "cloud"},
            ["HUBBUB_JWT_SECRET", "secrets.token_urlsafe"],
        ),
        # Allowed origins that no browser's Origin header can ever equal.
        ({"HUBBUB_ALLOWED_ORIGINS": "https://chat.example.com/"}, ["HUBBUB_ALLOWED_ORIGINS", "trailing slash"]),
        (
            {"HUBBUB_ALLOWED_ORIGINS": "https://ok.example,https://chat.example.com/app"},
            ["'https://chat.example.com/app'", "path"],
        ),
        ({"HUBBUB_ALLOWED_ORIGINS": "chat.example.com"}, ["'chat.example.com'", "scheme"]),
        ({"HUBBUB_ALLOWED_ORIGINS": "*"}, ["'*'", "empty"]),
        ({"HUBBUB_ALLOWED_ORIGINS": "https://chat.example.com:99999"}, ["port"]),
        ({"HUBBUB_TRUSTED_PROXIES": "10.0.0.300"}, ["HUBBUB_TRUSTED_PROXIES"]),
        # Rules between settings, each checked in one place (its group's check).
        ({"HUBBUB_ACCOUNTS_BACKEND": "postgres"}, ["the postgres backend needs HUBBUB_POSTGRES_DSN"]),
        ({"HUBBUB_MESSAGES_BACKEND": "mongo"}, ["the mongo messages backend needs HUBBUB_MONGO_URL"]),
        (
            {
                "HUBBUB_POSTGRES_DSN": "postgresql://db/x",
                "HUBBUB_POSTGRES_POOL_MIN": "5",
                "HUBBUB_POSTGRES_POOL_MAX": "2",
            },
            ["HUBBUB_POSTGRES_POOL_MIN is larger than HUBBUB_POSTGRES_POOL_MAX"],
        ),
        (
            {"HUBBUB_PRESENCE_TTL_SECONDS": "5", "HUBBUB_PRESENCE_HEARTBEAT_SECONDS": "5"},
            ["HUBBUB_PRESENCE_TTL_SECONDS must be longer than HUBBUB_PRESENCE_HEARTBEAT_SECONDS"],
        ),
    ],
)
async def test_invalid_setting_exits_2_with_one_json_line(
    tmp_path: Path, settings: dict[str, str], mentions: list[str]
) -> None:
    data_dir = tmp_path / "data"
    # Port 0 unless the port is what is being tested: should validation wrongly
    # pass, the server must not take a fixed port.
    env = server_env(data_dir, {"HUBBUB_PORT": "0", **settings})
    code, stderr = await run_to_exit(data_dir, env)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    entry = parse_log(lines[0])
    assert entry is not None, lines[0]
    assert entry["event"] == "invalid_settings" and entry["level"] == "error"
    for mention in mentions:
        assert mention in entry["error"], entry["error"]
    assert not data_dir.exists()  # nothing was started


@pytest.mark.parametrize(
    ("sig", "close_code", "reason"),
    [
        (signal.SIGTERM, CloseCode.SERVICE_RESTART, "server restarting"),
        (signal.SIGINT, CloseCode.GOING_AWAY, "server shutting down"),
    ],
)
async def test_signal_closes_clients_and_exits_0(
    tmp_path: Path, sig: signal.Signals, close_code: CloseCode, reason: str
) -> None:
    data_dir = tmp_path / "data"
    async with running_server(data_dir) as server, AsyncExitStack() as clients:
        url = await server.url()
        alice = await clients.enter_async_context(open_client(url))
        await alice.register("alice", "correct horse")
        bob = await clients.enter_async_context(open_client(url))
        await bob.register("bob", "correct horse")
        anonymous = await clients.enter_async_context(open_client(url))
        await anonymous.call("ping")
        room = (await alice.call("channel.create", name="general")).conversation.id
        await bob.call("channel.join", channel_id=room)

        os.kill(server.proc.pid, sig)

        for client in (alice, bob, anonymous):
            assert await wait_closed(client) == close_code
            assert client.ws.close_reason == reason
        assert await server.wait() == 0
        events = [e["event"] for e in server.events]
        assert "shutdown" in events and events[-1] == "stopped"
        (shutdown,) = [e for e in server.events if e["event"] == "shutdown"]
        assert shutdown["close_code"] == close_code


async def test_restart_keeps_users_channels_and_messages(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_server(data_dir) as server, AsyncExitStack() as clients:
        url = await server.url()
        alice = await clients.enter_async_context(open_client(url))
        await alice.register("alice", "correct horse", "Alice")
        bob = await clients.enter_async_context(open_client(url))
        await bob.register("bob", "battery staple")
        assert bob.token is not None
        bob_token = bob.token
        room = (await alice.call("channel.create", name="general", topic="everything")).conversation
        secret = (await alice.call("channel.create", name="secret", private=True)).conversation
        await bob.call("channel.join", channel_id=room.id)
        dm = (await bob.call("dm.open", user_ids=[alice.user.id if alice.user else 0])).conversation
        sent: list[frames.Message] = []
        for n in range(5):
            ack = await alice.call("message.send", conversation_id=room.id, text=f"before {n}", client_msg_id=str(n))
            sent.append(ack.message)
        dm_ack = await bob.call("message.send", conversation_id=dm.id, text="psst", client_msg_id="dm")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await wait_closed(alice) == CloseCode.SERVICE_RESTART
        assert await server.wait() == 0

    async with running_server(data_dir) as server, AsyncExitStack() as clients:
        url = await server.url()
        alice = await clients.enter_async_context(open_client(url))
        session = await alice.login("alice", "correct horse")
        assert (session.user.username, session.user.display_name) == ("alice", "Alice")
        bob = await clients.enter_async_context(open_client(url))
        # A token issued before the restart is still valid (the secret is kept).
        assert (await bob.auth(bob_token)).user.username == "bob"

        listing = {c.id: c for c in (await alice.call("channel.list")).conversations}
        assert listing[room.id].name == "general" and listing[room.id].topic == "everything"
        assert listing[room.id].last_seq == 5
        assert listing[secret.id].private and listing[secret.id].member
        members = await alice.call("channel.members", channel_id=room.id)
        assert {m.username for m in members.members} == {"alice", "bob"}
        page = await bob.call("message.history", conversation_id=room.id, order="asc")
        assert page.messages == sent
        dms = (await alice.call("dm.list")).conversations
        assert [c.id for c in dms] == [dm.id]
        assert (await alice.call("message.history", conversation_id=dm.id)).messages == [dm_ack.message]

        # Sequences continue, and idempotency survives the restart.
        again = await alice.call("message.send", conversation_id=room.id, text="before 0", client_msg_id="0")
        assert again.duplicate is True and again.message == sent[0]
        after = await alice.call("message.send", conversation_id=room.id, text="after", client_msg_id="after")
        assert after.message.seq == 6
        while (new := (await bob.next_event(frames.MessageNew)).message) != after.message:
            assert new == sent[0]  # only the duplicate's (re-)announcement may come first

        # The stored password hash still tells right from wrong.
        fresh = await clients.enter_async_context(open_client(url))
        with pytest.raises(ServerError) as info:
            await fresh.login("alice", "wrong password")
        assert info.value.code == "unauthorized"


async def test_only_a_data_dir_uses_a_dev_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_server(data_dir, server_env(data_dir, {})) as server, AsyncExitStack() as clients:
        url = await server.url()
        secret_file = data_dir / "jwt-secret"
        assert secret_file.exists()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(secret_file.read_text().strip()) >= 32
        warnings = [e for e in server.events if e["event"] == "dev_jwt_secret"]
        assert len(warnings) == 1
        assert warnings[0]["level"] == "warning"
        assert warnings[0]["path"] == str(secret_file)
        listening = [e for e in server.events if e["event"] == "listening"]
        assert listening[0]["host"] == "127.0.0.1"

        # It serves with the production defaults.
        client = await clients.enter_async_context(open_client(url))
        hello = await client.next_event(frames.Hello)
        assert hello.protocol == frames.PROTOCOL_VERSION
        assert hello.limits.max_message_chars == 4000
        session = await client.register("carol", "correct horse")
        assert session.user.username == "carol"
        assert (data_dir / "hubbub.db").exists()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait() == 0


async def test_logs_are_json_lines_without_secrets(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    password = "a very secret passphrase"
    env = server_env(data_dir, {**FAST_HASHING, "HUBBUB_LOG_LEVEL": "debug"})
    async with running_server(data_dir, env) as server, AsyncExitStack() as clients:
        url = await server.url()
        alice = await clients.enter_async_context(open_client(url))
        session = await alice.register("alice", password)
        again = await clients.enter_async_context(open_client(url))
        await again.auth(session.token)
        with pytest.raises(ServerError):
            await again.call("login", username="alice", password=password + "!")
        room = (await alice.call("channel.create", name="logs")).conversation.id
        await alice.call("message.send", conversation_id=room, text="hi", client_msg_id="m1")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait() == 0

    assert server.lines and all(parse_log(line) is not None for line in server.lines), "one JSON object per line"
    text = "\n".join(server.lines)
    assert password not in text and session.token not in text
    assert all({"time", "level", "event"} <= entry.keys() for entry in server.events)
    by_event = {e["event"]: e for e in server.events}
    assert {"connect", "auth", "disconnect", "register", "request", "request_failed"} <= by_event.keys()
    sent = [e for e in server.events if e["event"] == "request" and e["op"] == "message.send"]
    assert sent[0]["conversation_id"] == room and sent[0]["user_id"] == session.user.id
    assert sent[0]["latency_ms"] >= 0 and sent[0]["request_id"]
    failed = by_event["request_failed"]
    assert failed["op"] == "login" and failed["code"] == "unauthorized"
