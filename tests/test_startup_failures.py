"""What an operator meets when a store is wrong or away: `hubbub serve` and
`hubbub migrate` exit 2 with one JSON `startup_failed` line naming the store,
its address (password redacted) and what to do; and during an outage of
running stores every stderr line is still one JSON object."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from hubbub.protocol.client import ServerError, open_client
from tests.backends import ADMIN_DSN, MongoServer, ThrowawayPostgres, dsn_for, free_port
from tests.conftest import http_get
from tests.processes import FAST_HASHING, parse_log, running_server, server_env, stderr_of

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
PASSWORD = "hunter2-not-for-logs"


def with_password(dsn: str, role: str, password: str) -> str:
    """``dsn`` (scheme://user@host...) with another role and a password."""
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{role}:{password}@{rest.split('@', 1)[-1]}"


def base_env(tmp_path: Path, settings: Mapping[str, str]) -> dict[str, str]:
    # A JWT secret is set so that no dev-secret warning precedes the failure.
    return server_env(tmp_path / "data", {**FAST_HASHING, "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_PORT": "0", **settings})


async def run_command(command: str, env: Mapping[str, str], cwd: Path) -> tuple[int, list[str]]:
    return await stderr_of("-m", "hubbub.server", command, env=env, cwd=cwd)


def the_failure(code: int, lines: list[str]) -> dict[str, Any]:
    """Exit 2 and exactly one stderr line: the JSON ``startup_failed``."""
    assert code == 2, lines
    assert len(lines) == 1, "\n".join(lines)
    entry = parse_log(lines[0])
    assert entry is not None, lines[0]
    assert entry["event"] == "startup_failed" and entry["level"] == "error"
    assert entry["store"] and entry["address"] and entry["error"] and entry["hint"]
    assert "Traceback" not in lines[0]
    return entry


POSTGRES_CASES: dict[str, tuple[Callable[[], str], list[str]]] = {
    "wrong database": (lambda: dsn_for("hubbub_no_such_database"), ["hubbub_no_such_database", "does not exist"]),
    "wrong role": (lambda: with_password(ADMIN_DSN, "hubbub_no_such_role", PASSWORD), ["hubbub_no_such_role"]),
    "refused": (lambda: f"postgresql://hubbub:{PASSWORD}@127.0.0.1:{free_port()}/hubbub", ["refused"]),
}


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("case", POSTGRES_CASES)
async def test_postgres_startup_failure(tmp_path: Path, command: str, case: str) -> None:
    make_dsn, mentions = POSTGRES_CASES[case]
    dsn = make_dsn()
    code, lines = await run_command(command, base_env(tmp_path, {"HUBBUB_POSTGRES_DSN": dsn}), tmp_path)
    entry = the_failure(code, lines)
    assert entry["store"] == "postgres"
    host_and_port = dsn.split("@", 1)[1].split("/", 1)[0]
    assert host_and_port in entry["address"]
    for word in mentions:
        assert word in entry["error"], entry
    assert "HUBBUB_POSTGRES_DSN" in entry["hint"]
    assert PASSWORD not in lines[0], "the password is redacted"
    if PASSWORD in dsn:
        assert "***" in entry["address"]


async def test_refused_replica_is_named_not_the_primary(tmp_path: Path, postgres_database: str) -> None:
    replica = f"postgresql://hubbub:{PASSWORD}@127.0.0.1:{free_port()}/hubbub"
    env = base_env(tmp_path, {"HUBBUB_POSTGRES_DSN": postgres_database, "HUBBUB_POSTGRES_REPLICA_DSN": replica})
    code, lines = await run_command("serve", env, tmp_path)
    entry = the_failure(code, lines)
    assert entry["store"] == "postgres"
    assert entry["address"] == replica.replace(PASSWORD, "***")
    assert "HUBBUB_POSTGRES_REPLICA_DSN" in entry["hint"] and "refused" in entry["error"]


async def test_refused_redis_at_startup(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    code, lines = await run_command("serve", base_env(tmp_path, {"HUBBUB_REDIS_URL": url}), tmp_path)
    entry = the_failure(code, lines)
    assert entry["store"] == "redis"
    assert url.split("@", 1)[1] in entry["address"] and PASSWORD not in lines[0]
    assert "refused" in entry["error"].lower()
    assert "HUBBUB_REDIS_URL" in entry["hint"]


async def test_refused_mongo_at_startup(tmp_path: Path) -> None:
    url = f"mongodb://hubbub:{PASSWORD}@127.0.0.1:{free_port()}/?directConnection=true"
    env = base_env(tmp_path, {"HUBBUB_MONGO_URL": url, "HUBBUB_STORAGE_TIMEOUT_SECONDS": "0.5"})
    code, lines = await run_command("serve", env, tmp_path)
    entry = the_failure(code, lines)
    assert entry["store"] == "mongo"
    assert url.split("@", 1)[1].split("/", 1)[0] in entry["address"] and PASSWORD not in lines[0]
    assert "refused" in entry["error"].lower() or "failed" in entry["error"].lower()
    assert "HUBBUB_MONGO_URL" in entry["hint"]


async def test_store_outage_logs_only_json_lines(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres, own_mongo: MongoServer
) -> None:
    """PostgreSQL and MongoDB go away under a running server with clients
    mid-request: whatever the drivers, asyncio and the server log about it,
    each stderr line is one JSON object (tracebacks inside a field)."""
    data_dir = tmp_path / "data"
    env = base_env(
        tmp_path,
        {
            "HUBBUB_POSTGRES_DSN": throwaway_postgres.dsn,
            "HUBBUB_MONGO_URL": own_mongo.url,
            "HUBBUB_STORAGE_TIMEOUT_SECONDS": "1",
            "HUBBUB_LOG_LEVEL": "debug",
        },
    )
    async with running_server(data_dir, env) as server:
        url = await server.url()
        async with open_client(url) as alice, open_client(url) as bob:
            await alice.register("alice", "correct horse")
            await bob.register("bob", "correct horse")
            room = (await alice.call("channel.create", name="ops")).conversation.id
            await bob.call("channel.join", channel_id=room)
            await alice.call("message.send", conversation_id=room, text="before", client_msg_id="b")

            await asyncio.to_thread(throwaway_postgres.stop)
            await asyncio.to_thread(own_mongo.stop)
            calls = [
                alice.call("channel.list"),
                bob.call("dm.list"),
                alice.call("message.send", conversation_id=room, text="during", client_msg_id="d"),
                bob.call("message.history", conversation_id=room),
            ]
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(outcome, ServerError) and outcome.code == "unavailable", outcome
            status, _ = await asyncio.to_thread(http_get, await server.http_url() + "/readyz")
            assert status == 503
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait() == 0

    not_json = [line for line in server.lines if parse_log(line) is None]
    assert not not_json, "\n".join(not_json)
    assert any(e["event"] == "request_failed" for e in server.events)
