"""Real `hubbub serve` processes, for tests of the CLI, signals, and several
servers sharing databases. Each process's stderr (the JSON log) is collected
line by line; its port is read from the "listening" line. Processes are
always killed by PID on the way out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any


def settings_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """This process's environment without HUBBUB_* plus ``settings`` as HUBBUB_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    for name, value in settings.items():
        env["HUBBUB_" + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


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
    """``python -m hubbub.server serve`` with its stderr log collected line by line."""

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

    async def http_url(self) -> str:
        port = await asyncio.wait_for(asyncio.shield(self.port), START_TIMEOUT)
        return f"http://127.0.0.1:{port}"

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
        "hubbub.server",
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


async def stderr_of(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> tuple[int, list[str]]:
    """Run ``python *args`` to its exit (killed after ``timeout``): its exit code and stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode is None:
        raise RuntimeError("the process was waited for but has no exit code")
    return proc.returncode, stderr.decode().splitlines()


async def run_to_exit(data_dir: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``serve`` with settings from ``env`` only (no flags: a flag would win over it)."""
    code, lines = await stderr_of("-m", "hubbub.server", "serve", env=env, cwd=data_dir.parent, timeout=15)
    return code, "\n".join(lines)
