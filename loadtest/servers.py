"""Starting and stopping the servers under test: Hubbub and the reference peers.

Every process started here is recorded by PID and stopped by PID (SIGTERM,
then SIGKILL after a grace period) when its ``Servers`` context exits, and
``kill_all_now`` stops any survivor from a signal handler or a ``finally``.
Each server prints a JSON line ``{"event": "listening", "port": N}`` on stderr
once it listens on its ephemeral port; stderr is read continuously (so a
chatty log never blocks the server) and its last lines are kept for errors.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hubbub.loadtest.safety import MAX_CONNECTIONS, check_loopback

PEERS_DIR = Path(__file__).resolve().parent / "peers"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
NPM_TIMEOUT_S = 300.0

_live: dict[int, ServerProcess] = {}


class ServerUnavailable(RuntimeError):
    """A server could not be started (missing npm packages, Redis, a crash at start-up)."""


class ServerProcess:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.ensure_future(self._read_stderr())
        _live[self.pid] = self

    @classmethod
    async def start(
        cls, name: str, argv: list[str], env: Mapping[str, str], cwd: Path, cpus: str | None
    ) -> ServerProcess:
        if cpus:
            if shutil.which("taskset") is None:
                raise ServerUnavailable("--server-cpu needs taskset (util-linux)")
            argv = ["taskset", "-c", cpus, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(name, proc)

    async def _read_stderr(self) -> None:
        if self.proc.stderr is None:
            raise RuntimeError(f"{self.name} was started without a pipe for its stderr")
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log.append(line)
            if not self._port.done() and '"listening"' in line:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "listening":
                    self._port.set_result(int(entry["port"]))
        if not self._port.done():
            tail = "\n".join(self.log)
            self._port.set_exception(ServerUnavailable(f"{self.name} exited before listening:\n{tail}"))

    async def port(self, timeout: float = START_TIMEOUT_S) -> int:
        try:
            return await asyncio.wait_for(asyncio.shield(self._port), timeout)
        except TimeoutError:
            raise ServerUnavailable(f"{self.name} did not listen within {timeout:.0f} s") from None

    async def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; the exit code."""
        if self.proc.returncode is None:
            _signal(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                _signal(self.pid, signal.SIGKILL)
                await self.proc.wait()
        _live.pop(self.pid, None)
        try:
            await asyncio.wait_for(self._pump, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._pump.cancel()
        return self.proc.returncode


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_all_now() -> list[int]:
    """SIGKILL every server process still running (by PID); the PIDs signalled."""
    killed = []
    for pid, server in list(_live.items()):
        if server.proc.returncode is None:
            _signal(pid, signal.SIGKILL)
            killed.append(pid)
        _live.pop(pid, None)
    return killed


@dataclass
class ServerOptions:
    cpus: str | None = None
    """taskset CPU list for every server process started (e.g. "0")."""
    conns_per_user: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    """Extra HUBBUB_* settings for a started Hubbub."""
    redis_url: str = "redis://127.0.0.1:6379"
    """Redis of socketio-redis, and of Hubbub when it runs as several instances."""
    instances: int = 1
    """Hubbub processes to start (more than one: one shared store, routed through Redis)."""


@dataclass
class Servers:
    urls: list[str]
    pids: list[int]
    processes: list[ServerProcess]
    notes: list[str] = field(default_factory=list)


PEER_SCRIPTS = {
    "ws": ("node", "ws_server.js", 1),
    "socketio": ("node", "socketio_server.js", 1),
    "socketio-redis": ("node", "socketio_server.js", 2),
    "py-broadcast": ("python", "py_broadcast.py", 1),
}


def store_of(env: dict[str, str]) -> str:
    """The stores a server with these settings serves from, in words (the run's notes)."""
    accounts = env.get("HUBBUB_ACCOUNTS_BACKEND") or ("postgres" if env.get("HUBBUB_POSTGRES_DSN") else "sqlite")
    messages = env.get("HUBBUB_MESSAGES_BACKEND") or ("mongo" if env.get("HUBBUB_MONGO_URL") else accounts)
    if accounts == messages == "sqlite":
        return "SQLite in a temp dir"
    return f"accounts on {accounts}, messages on {messages}"


@asynccontextmanager
async def started_servers(target: str, options: ServerOptions, run_id: str) -> AsyncIterator[Servers]:
    """Start the server(s) of ``target``; stop them all on exit, whatever happens."""
    processes: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="hubbub-loadtest-") as tmp:
        try:
            notes: list[str] = []
            if target == "hubbub":
                env = hubbub_env(Path(tmp) / "data", options)
                argv = [sys.executable, "-m", "hubbub.server", "serve", "--port", "0"]
                count = options.instances
                if count > 1:
                    check_redis(options.redis_url)
                    prefix = f"hubbub-loadtest-{run_id}"
                    env.setdefault("HUBBUB_REDIS_URL", options.redis_url)
                    env.setdefault("HUBBUB_REDIS_PREFIX", prefix)
                    notes.append(
                        f"{count} hubbub instances sharing one store and Redis {env['HUBBUB_REDIS_URL']}, "
                        f"key prefix {env['HUBBUB_REDIS_PREFIX']}"
                    )
                for n in range(count):
                    name = f"hubbub-{n}" if count > 1 else "hubbub"
                    processes.append(await ServerProcess.start(name, argv, env, Path(tmp), options.cpus))
                    # One at a time: the first creates (and migrates) the store the others open.
                    await processes[-1].port()
                notes.append(
                    f"hubbub started with {store_of(env)}, cheap argon2, rate limits 1e6/s, "
                    f"max_connections_per_user={env['HUBBUB_MAX_CONNECTIONS_PER_USER']}"
                )
            else:
                runtime, script, count = PEER_SCRIPTS[target]
                args: list[str] = []
                env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
                env.update({"PORT": "0", "HOST": "127.0.0.1"})
                if runtime == "node":
                    await ensure_node_modules()
                    argv = ["node", str(PEERS_DIR / script)]
                else:
                    argv = [sys.executable, str(PEERS_DIR / script)]
                if target == "socketio-redis":
                    check_redis(options.redis_url)
                    prefix = f"hubbub-loadtest-{run_id}"
                    args = ["--redis", options.redis_url, "--prefix", prefix]
                    notes.append(f"two socket.io processes sharing Redis {options.redis_url}, key prefix {prefix}")
                for n in range(count):
                    name = f"{target}-{n}" if count > 1 else target
                    processes.append(await ServerProcess.start(name, argv + args, env, Path(tmp), options.cpus))
            ports = [await p.port() for p in processes]
            urls = [f"ws://127.0.0.1:{port}/" for port in ports]
            yield Servers(urls=urls, pids=[p.pid for p in processes], processes=processes, notes=notes)
        finally:
            await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)


def hubbub_env(data_dir: Path, options: ServerOptions) -> dict[str, str]:
    """The environment of a Hubbub started for a load test: no inherited HUBBUB_*, high limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env.update(
        {
            "HUBBUB_HOST": "127.0.0.1",
            "HUBBUB_DATA_DIR": str(data_dir),
            "HUBBUB_JWT_SECRET": secrets.token_hex(32),
            "HUBBUB_ARGON2_TIME_COST": "1",
            "HUBBUB_ARGON2_MEMORY_KIB": "8",
            "HUBBUB_ARGON2_PARALLELISM": "1",
            "HUBBUB_RATE_PER_SECOND": "1000000",
            "HUBBUB_RATE_BURST": "1000000",
            "HUBBUB_MAX_CONNECTIONS": str(MAX_CONNECTIONS + 100),
            "HUBBUB_MAX_CONNECTIONS_PER_USER": str(max(10, options.conns_per_user)),
            "HUBBUB_AUTH_TIMEOUT_SECONDS": "120",
            "HUBBUB_SHUTDOWN_GRACE_SECONDS": "3",
        }
    )
    for name, value in options.extra_env.items():
        if not name.startswith("HUBBUB_"):
            raise ValueError(f"--server-env takes HUBBUB_* settings, not {name}")
        env[name] = value
    return env


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


async def ensure_node_modules() -> None:
    """``npm ci`` in loadtest/peers when node_modules is missing or older than package-lock.json."""
    if not node_available():
        raise ServerUnavailable("node and npm are needed for the Node.js peers")
    lock = PEERS_DIR / "package-lock.json"
    marker = PEERS_DIR / "node_modules" / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("hubbub-loadtest: installing the Node.js peers (npm ci in loadtest/peers)...", file=sys.stderr)
    proc = await asyncio.create_subprocess_exec(
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        cwd=PEERS_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NPM_TIMEOUT_S)
    except TimeoutError:
        _signal(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise ServerUnavailable(f"npm ci did not finish within {NPM_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise ServerUnavailable(f"npm ci failed ({proc.returncode}):\n{out.decode(errors='replace')[-2000:]}")


def check_redis(url: str) -> None:
    """Refuse a non-loopback Redis; fail early when nothing listens there."""
    check_loopback(url)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                raise ServerUnavailable(f"{url} does not answer PING like Redis")
    except OSError as exc:
        raise ServerUnavailable(f"Redis is not reachable at {url}: {exc}") from None
