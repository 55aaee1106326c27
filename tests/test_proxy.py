"""Through the real proxy: `hubbub serve` behind nginx running the
deploy/nginx.conf that scripts/dev-stack renders, with the
HUBBUB_TRUSTED_PROXIES the dev stack sets. Failed logins count against each
client's own address (nginx's X-Forwarded-For), so one client's failures
never lock out another's correct login.

Every client reaches nginx over loopback, so each binds its own source
address (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hubbub.protocol.client import Client, ServerError, open_client
from tests.backends import free_port
from tests.processes import FAST_HASHING, running_server, server_env

ROOT = Path(__file__).resolve().parent.parent
DEV_STACK = ROOT / "scripts" / "dev-stack"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FAILURES_PER_ADDRESS = 3


def dev_stack_trusted_proxies() -> str:
    """The HUBBUB_TRUSTED_PROXIES scripts/dev-stack gives its instances."""
    found = re.search(r"^TRUSTED_PROXIES=(\S+)$", DEV_STACK.read_text(), re.M)
    assert found, "scripts/dev-stack sets no TRUSTED_PROXIES"
    assert "HUBBUB_TRUSTED_PROXIES=$TRUSTED_PROXIES" in DEV_STACK.read_text()
    return found.group(1)


@asynccontextmanager
async def nginx_in_front_of(upstream_port: int, directory: Path) -> AsyncIterator[str]:
    """nginx on a spare loopback port with dev-stack's rendering of
    deploy/nginx.conf, both replicas pointed at ``upstream_port``; its URL."""
    proxy_port = free_port()
    (directory / "nginx" / "temp").mkdir(parents=True)
    env = {**os.environ, "DEV_STACK_INSTANCE_PORTS": f"{upstream_port} {upstream_port}"}
    env["DEV_STACK_PROXY_PORT"] = str(proxy_port)
    render = await asyncio.create_subprocess_exec(
        str(DEV_STACK), "nginx-conf", str(directory), env=env, stdout=asyncio.subprocess.PIPE
    )
    conf, _ = await asyncio.wait_for(render.communicate(), 30)
    assert render.returncode == 0
    (directory / "nginx.conf").write_bytes(conf)
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(directory / "nginx.conf"),
        "-g",
        f"daemon off; pid {directory / 'nginx.pid'}; error_log stderr notice;",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The master listens before it starts its workers, so from this line
        # on connections are queued for them.
        assert proc.stderr is not None
        seen: list[str] = []
        while not any("start worker process" in line for line in seen):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "nginx exited:\n" + "".join(seen)
            seen.append(line)
        drain = asyncio.ensure_future(proc.stderr.read())
        yield f"ws://127.0.0.1:{proxy_port}/"
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await drain


@asynccontextmanager
async def client_from(url: str, address: str) -> AsyncIterator[Client]:
    async with open_client(url, local_addr=(address, 0)) as client:
        yield client


async def failed_login(url: str, source: str, username: str) -> str:
    async with client_from(url, source) as client:
        with pytest.raises(ServerError) as info:
            await client.login(username, "wrong password")
        return info.value.code


async def test_one_clients_failed_logins_do_not_lock_out_another(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = server_env(
        data_dir,
        {
            **FAST_HASHING,
            "HUBBUB_TRUSTED_PROXIES": dev_stack_trusted_proxies(),
            "HUBBUB_LOGIN_FAILURES_PER_ADDRESS": str(FAILURES_PER_ADDRESS),
        },
    )
    async with running_server(data_dir, env) as server:
        port = int((await server.http_url()).rsplit(":", 1)[1])
        async with nginx_in_front_of(port, tmp_path / "proxy") as url:
            async with client_from(url, "127.0.0.3") as alice:
                await alice.register("alice", "correct horse")

            # Other people get their own passwords wrong, from their own machines;
            # the one at 127.0.0.2 reaches the per-address limit.
            for n in range(FAILURES_PER_ADDRESS):
                assert await failed_login(url, "127.0.0.2", f"mallory{n}") == "unauthorized"
            assert await failed_login(url, "127.0.0.2", "mallory-again") == "rate_limited"
            for n in range(FAILURES_PER_ADDRESS - 1):
                assert await failed_login(url, "127.0.0.4", f"bob{n}") == "unauthorized"

            async with client_from(url, "127.0.0.3") as alice:
                session = await alice.login("alice", "correct horse")
            assert session.user.username == "alice"

    addresses = {e["address"] for e in server.events if e["event"] == "login_failed"}
    assert addresses == {"127.0.0.2", "127.0.0.4"}, "the server saw each client's own address"
