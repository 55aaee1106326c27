"""The real CLI in a subprocess: settings validation, graceful shutdown on
signals, and durability across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from protocol import frames
from protocol.client import Client, ServerError, open_client
from protocol.errors import CloseCode

FAST_HASHING = {
    "HUBBUB_ARGON2_TIME_COST": "1",
    "HUBBUB_ARGON2_MEMORY_KIB": "8",
    "HUBBUB_ARGON2_PARALLELISM": "1",
}
START_TIMEOUT = 20.0


def server_env(data_dir: Path, extra: Mapping[str, str] = FAST_HASHING) -> dict[str, str]:
    """This process's environment without any HUBBUB_ setting, plus the data dir and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env["HUBBUB_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


class ServerProcess:
    """``python -m server serve`` with its stderr log collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            entry = parse_log(line)
            if entry and entry.get("event") == "listening" and not self.port.done():
                self.port.set_result(int(entry["port"]))
        if not self.port.done():
            self.port.set_exception(RuntimeError("server exited before listening:\n" + "\n".join(self.lines)))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [entry for entry in map(parse_log, self.lines) if entry is not None]

    async def url(self) -> str:
        port = await asyncio.wait_for(asyncio.shield(self.port), START_TIMEOUT)
        return f"ws://127.0.0.1:{port}/"

    async def wait(self, timeout: float = 20) -> int:
        """The exit code, once the process has exited and its log is read."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._pump, timeout)
        return code


def parse_log(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


@asynccontextmanager
async def running_server(data_dir: Path, env: Mapping[str, str] | None = None) -> AsyncIterator[ServerProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        "0",
        env=dict(env if env is not None else server_env(data_dir)),
        cwd=data_dir.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = ServerProcess(proc)
    try:
        yield server
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        await server._pump


async def run_to_exit(data_dir: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``serve`` with settings from ``env`` only (no flags: a flag would win over it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        env=dict(env),
        cwd=data_dir.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def wait_closed(client: Client) -> int | None:
    await asyncio.wait_for(client.ws.wait_closed(), 20)
    return client.ws.close_code


@pytest.mark.parametrize(
    ("variable", "value", "mentions"),
    [
        ("HUBBUB_PORT", "abc", "HUBBUB_PORT"),
        ("HUBBUB_PORT", "70000", "HUBBUB_PORT"),
        ("HUBBUB_RATE_PER_SECOND", "-1", "HUBBUB_RATE_PER_SECOND"),
        ("HUBBUB_LOG_LEVEL", "loud", "HUBBUB_LOG_LEVEL"),
        ("HUBBUB_JWT_SECRET", "short", "HUBBUB_JWT_SECRET"),
        ("HUBBUB_NOPE", "1", "HUBBUB_NOPE"),
    ],
)
async def test_invalid_setting_exits_2_with_one_line(tmp_path: Path, variable: str, value: str, mentions: str) -> None:
    data_dir = tmp_path / "data"
    # Port 0 unless the port is what is being tested: should validation wrongly
    # pass, the server must not take a fixed port.
    env = server_env(data_dir, {"HUBBUB_PORT": "0", variable: value})
    code, stderr = await run_to_exit(data_dir, env)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hubbub: ")
    assert mentions in lines[0]
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
