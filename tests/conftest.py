"""Fixtures: a real server on an ephemeral port, real WebSocket clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings

from hubbub.protocol.client import Client, open_client
from hubbub.server.app import App
from hubbub.server.config import Settings
from tests.backends import (
    BACKENDS,
    MongoServer,
    ThrowawayPostgres,
    create_postgres_database,
    drop_mongo_database,
    drop_postgres_database,
    truncate_postgres,
)

# Hypothesis's per-example deadline (200 ms) is a timing assertion, and timing is
# never what a test here checks (speed is claimed in BENCHMARKS.md): on a loaded
# 2-core machine it failed codec properties whose examples are correct, only slow.
hypothesis_settings.register_profile("hubbub", deadline=None)
hypothesis_settings.load_profile("hubbub")

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

T = TypeVar("T")
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked ``all_backends`` run against every store combination; the rest on SQLite."""
    if "backend" in metafunc.fixturenames:
        every = metafunc.definition.get_closest_marker("all_backends") is not None
        metafunc.parametrize("backend", BACKENDS if every else ("sqlite",), scope="function")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_backends: run against every storage backend combination")


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One PostgreSQL database per test session (per xdist worker), dropped at the end."""
    dsn = run_in_thread(create_postgres_database())
    try:
        yield dsn
    finally:
        run_in_thread(drop_postgres_database(dsn))


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer.start(tmp_path_factory.mktemp("mongo") / "data")
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def settings_for_backend(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Setting overrides selecting ``backend`` (e.g. ``postgres+mongo``), on
    freshly emptied databases; a MongoDB database of its own, dropped after."""
    accounts, _, messages = backend.partition("+")
    values: dict[str, Any] = {"accounts_backend": accounts, "messages_backend": messages or accounts}
    mongo: MongoServer | None = None
    if accounts == "postgres":
        dsn: str = request.getfixturevalue("postgres_database")
        await truncate_postgres(dsn)
        values["postgres_dsn"] = dsn
    if messages == "mongo":
        mongo = request.getfixturevalue("mongo_server")
        values["mongo_url"] = mongo.url
        values["mongo_database"] = f"hubbub_test_{uuid.uuid4().hex[:12]}"
    try:
        yield values
    finally:
        if mongo is not None:
            await drop_mongo_database(mongo.url, values["mongo_database"])


@contextlib.asynccontextmanager
async def app_on_backend(
    backend: str, request: pytest.FixtureRequest, data_dir: Path, overrides: dict[str, Any]
) -> AsyncIterator[App]:
    """A started App on ``backend`` with ``overrides`` (``module_app`` and
    tests that need a server of their own on a given store)."""
    async with settings_for_backend(backend, request) as values:
        settings = msgspec.convert({**TEST_SETTINGS, **values, **overrides, "data_dir": str(data_dir)}, Settings)
        app = App(settings)
        await app.start()
        try:
            yield app
        finally:
            await app.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def module_backend(request: pytest.FixtureRequest) -> str:
    """The store combination a module-shared server runs on (one per param)."""
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_app(
    module_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[App]:
    """One started App shared by a module's tests on ``module_backend``, with
    the module's own ``LIMITS`` setting overrides (if it has any). Starting a
    server per test would cost more than the tests on it."""
    limits: dict[str, Any] = getattr(request.module, "LIMITS", {})
    data_dir = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    async with app_on_backend(module_backend, request, data_dir, limits) as app:
        yield app


@pytest_asyncio.fixture(loop_scope="module")
async def shared_server(module_app: App) -> AsyncIterator[RunningServer]:
    """The module's shared server, with the clients of one test (closed at its
    end). Tests on it make their own users and conversations: others share it."""
    async with AsyncExitStack() as stack:
        yield RunningServer(module_app, stack)


@pytest.fixture
async def backend_settings(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Setting overrides selecting ``backend``, on freshly emptied databases."""
    async with settings_for_backend(backend, request) as values:
        yield values


@pytest.fixture
async def make_server(tmp_path: Path, backend_settings: dict[str, Any]) -> AsyncIterator[ServerFactory]:
    """Start servers with setting overrides; all are stopped after the test."""
    async with AsyncExitStack() as stack:

        async def factory(data_dir: Path | None = None, **overrides: Any) -> RunningServer:
            values = {
                **TEST_SETTINGS,
                **backend_settings,
                "data_dir": str(data_dir or tmp_path / "data"),
                **overrides,
            }
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


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of the test's own on a loopback port, to stop and start."""
    pg = ThrowawayPostgres()
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """A MongoDB-protocol server of the test's own, to stop and restart."""
    mongo = MongoServer.start_own(tmp_path / "mongo")
    try:
        yield mongo
    finally:
        mongo.stop()
