"""A private redis-server on a spare port, for tests that stop and restart it.

Never the machine's shared Redis: the process is this test's own, started
with no persistence, and always stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import redis.asyncio as redis
from redis.exceptions import RedisError

from tests.backends import free_port

REDIS_SERVER = os.environ.get("HUBBUB_TEST_REDIS_SERVER", "redis-server")


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            return subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, deadline_seconds: float = 10.0) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        self.process = self._spawn()
        end = time.monotonic() + deadline_seconds
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}, see {self.directory}")
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    if time.monotonic() > end:
                        raise
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self) -> None:
        """Kill it at once, as a crash would (Redis keeps nothing: no persistence)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
