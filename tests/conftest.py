"""Fixtures: a real server on an ephemeral port, real WebSocket clients."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.client import Client, open_client
from server.app import App
from server.config import Settings

# Cheap hashing keeps registration fast in tests; production defaults are in Settings.
TEST_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "argon2_time_cost": 1,
    "argon2_memory_kib": 8,
    "argon2_parallelism": 1,
    "rate_per_second": 1000.0,
    "rate_burst": 1000,
    "jwt_secret": "test-secret-that-is-at-least-32-bytes-long",
}

_names = itertools.count(1)


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{next(_names)}"


class RunningServer:
    def __init__(self, app: App, stack: AsyncExitStack) -> None:
        self.app = app
        self._stack = stack

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.app.port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    async def client(self, **connect_kwargs: Any) -> Client:
        """A connected, unauthenticated client, closed at the end of the test."""
        client = await self._stack.enter_async_context(open_client(self.url, **connect_kwargs))
        await client.next_event()  # hello
        return client

    async def user(self, name: str | None = None, password: str = "correct horse") -> Client:
        """A connected client of a freshly registered user."""
        client = await self.client()
        await client.register(name or unique_name(), password)
        return client


def http_get(url: str) -> tuple[int, str]:
    """Blocking GET for health endpoints (run it in a thread from async tests)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers with setting overrides; all are stopped after the test."""
    async with AsyncExitStack() as stack:

        async def factory(data_dir: Path | None = None, **overrides: Any) -> RunningServer:
            values = {**TEST_SETTINGS, "data_dir": str(data_dir or tmp_path / "data"), **overrides}
            settings = msgspec.convert(values, Settings)
            app = App(settings)
            await app.start()
            stack.push_async_callback(app.stop)
            # Clients are closed before their server stops (LIFO).
            client_stack = await stack.enter_async_context(AsyncExitStack())
            return RunningServer(app, client_stack)

        yield factory


@pytest.fixture
async def server(make_server: ServerFactory) -> RunningServer:
    return await make_server()
