"""Real database servers for the tests: PostgreSQL, and a MongoDB-protocol server.

PostgreSQL is the machine's (HUBBUB_TEST_POSTGRES_DSN, default the local
trust-auth server); each test session makes its own database and drops it.
MongoDB is HUBBUB_TEST_MONGO_URL when given, else a secantusd-py process the
session starts from the tool virtualenv `.venv-secantus` (see Makefile); each
test gets its own Mongo database. A missing server fails the tests that need
it: these tests never skip.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path

import asyncpg
from pymongo import AsyncMongoClient, MongoClient

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres+mongo", "postgres+postgres")
"""accounts store + messages store; "sqlite" is both in one file."""

ADMIN_DSN = os.environ.get("HUBBUB_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SECANTUSD = os.environ.get("HUBBUB_TEST_SECANTUSD", str(ROOT / ".venv-secantus" / "bin" / "secantusd-py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dsn_for(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    return admin_dsn.rsplit("/", 1)[0] + "/" + database


async def create_postgres_database(admin_dsn: str = ADMIN_DSN) -> str:
    """A new empty database; returns its DSN."""
    name = f"hubbub_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
    except OSError as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {admin_dsn} (start it, see README): {exc}") from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(name, admin_dsn)


async def apply_released_migrations(conn: asyncpg.Connection, released: Collection[str]) -> None:
    """Apply only the PostgreSQL migrations named in ``released``, each recorded in
    schema_migrations as ``storage.postgres.migrate`` records it: a database as
    that release left it, for the upgrade tests."""
    from hubbub.storage.postgres import migrations

    await conn.execute(
        "CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    for version, sql in migrations():
        if version in released:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)


def write_released_sqlite(path: Path, version: int, seed: Callable[[sqlite3.Connection], None]) -> None:
    """A SQLite file as the release of schema ``version`` left it (its first
    ``version`` migrations, ``user_version`` set), with the rows ``seed`` writes:
    the upgrade tests' SQLite twin of ``released_postgres_database``. The
    migrations get the functions the store registers for them (storage/sqlite.py)."""
    from hubbub.storage.rows import search_key
    from hubbub.storage.search_sql import fts5_text
    from hubbub.storage.sqlite import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function("hubbub_lower", 1, search_key, deterministic=True)
    conn.create_function("hubbub_index_text", 1, fts5_text, deterministic=True)
    try:
        for script in MIGRATIONS[:version]:
            conn.executescript(script)
        conn.execute(f"PRAGMA user_version={version}")
        seed(conn)
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def released_postgres_database(
    released: Collection[str], seed: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
) -> AsyncIterator[str]:
    """A fresh database as the release that applied the migrations ``released``
    left it (``apply_released_migrations``), with the rows ``seed`` writes on its
    own connection (closed before the test runs); dropped after. The upgrade
    tests' one "database of the release before" fixture."""
    dsn = await create_postgres_database()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await apply_released_migrations(conn, released)
            if seed is not None:
                await seed(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await drop_postgres_database(dsn)


async def drop_postgres_database(dsn: str, admin_dsn: str = ADMIN_DSN) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def truncate_postgres(dsn: str) -> None:
    """Empty every table the stores use, between tests sharing one database."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r["tablename"] != "schema_migrations"
        ]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


class MongoServer:
    """A secantusd-py process on a free port, or an external MongoDB."""

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None) -> None:
        self.url = url
        self.process = process
        self._command: list[str] = []
        self._log_path = Path(os.devnull)

    @classmethod
    def start(cls, storage_path: Path) -> MongoServer:
        """The external MongoDB when HUBBUB_TEST_MONGO_URL is set, else our own process."""
        external = os.environ.get("HUBBUB_TEST_MONGO_URL")
        if external:
            return cls(external, None)
        return cls.start_own(storage_path)

    @classmethod
    def start_own(cls, storage_path: Path) -> MongoServer:
        """A secantusd-py process of this test run, which tests may stop and restart."""
        if not Path(SECANTUSD).exists():
            raise RuntimeError(f"{SECANTUSD} is missing: run `make test` (it installs the test tool secantusdb)")
        port = free_port()
        server = cls(f"mongodb://127.0.0.1:{port}/?directConnection=true", None)
        server._command = [SECANTUSD, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage_path)]
        server._log_path = storage_path.parent / f"secantusd-{port}.log"
        storage_path.mkdir(parents=True, exist_ok=True)
        server.restart()
        return server

    def restart(self) -> None:
        """(Re)start our own process on the same port and storage."""
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, deadline_seconds: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}")
            try:
                client: MongoClient[dict[str, object]] = MongoClient(self.url, serverSelectionTimeoutMS=500)
                with client:
                    client.admin.command("ping")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def drop_mongo_database(url: str, name: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


def _postgres_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql (install the postgresql package)")
    return str(candidates[-1])


class ThrowawayPostgres:
    """A private PostgreSQL cluster on a spare port, for tests that stop and restart it.

    Never the machine's shared server. Run as the ``postgres`` user when the
    tests run as root, since initdb refuses root.
    """

    def __init__(self) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="hubbub-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )

    def stop(self) -> None:
        """Stop at once, as a crash would (in-flight transactions are lost, committed ones kept)."""
        if (self.data / "postmaster.pid").exists():
            self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        import shutil

        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
