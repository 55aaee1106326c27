"""Opening the configured stores: which backend holds the directory and which the messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from msgspec import Struct

from storage.base import Directory, MessageLog

DirectoryBackend = Literal["sqlite", "postgres"]
MessagesBackend = Literal["sqlite", "mongo", "postgres"]


class StorageConfig(Struct, kw_only=True, frozen=True):
    directory_backend: DirectoryBackend = "sqlite"
    messages_backend: MessagesBackend = "sqlite"
    data_dir: str = "./data"
    postgres_dsn: str = ""
    postgres_replica_dsn: str = ""
    postgres_pool_min: int = 1
    postgres_pool_max: int = 10
    auto_migrate: bool = True
    mongo_url: str = ""
    mongo_database: str = "hubbub"
    mongo_write_concern: str = "majority"
    timeout: float = 5.0


class Stores:
    """The two stores and what must be closed after them."""

    def __init__(self, directory: Directory, messages: MessageLog, closers: list[Callable[[], Awaitable[None]]]):
        self.directory = directory
        self.messages = messages
        self._closers = closers

    async def close(self) -> None:
        await self.messages.close()
        await self.directory.close()
        for close in reversed(self._closers):
            await close()


async def open_stores(config: StorageConfig) -> Stores:
    """Open, and migrate when asked, the backends ``config`` names."""
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        return await _open(config, closers)
    except BaseException:
        for close in reversed(closers):
            await close()
        raise


async def _open(config: StorageConfig, closers: list[Callable[[], Awaitable[None]]]) -> Stores:
    needs_sqlite = "sqlite" in (config.directory_backend, config.messages_backend)
    needs_postgres = "postgres" in (config.directory_backend, config.messages_backend)
    directory: Directory | None = None
    messages: MessageLog | None = None

    if needs_sqlite:
        from storage.sqlite import open_sqlite

        db, sqlite_directory, sqlite_messages = await open_sqlite(Path(config.data_dir) / "hubbub.db", config.timeout)
        closers.append(db.close)
        if config.directory_backend == "sqlite":
            directory = sqlite_directory
        if config.messages_backend == "sqlite":
            messages = sqlite_messages

    if needs_postgres:
        from storage.postgres import PostgresDirectory, PostgresMessageLog, PostgresPools, migrate

        if not config.postgres_dsn:
            raise ValueError("the postgres backend needs a PostgreSQL DSN")
        if config.auto_migrate:
            await migrate(config.postgres_dsn, timeout=max(config.timeout, 30.0))
        pools = await PostgresPools.open(
            config.postgres_dsn,
            config.postgres_replica_dsn or None,
            min_size=config.postgres_pool_min,
            max_size=config.postgres_pool_max,
            timeout=config.timeout,
        )
        closers.append(pools.close)
        if config.directory_backend == "postgres":
            directory = PostgresDirectory(pools)
        if config.messages_backend == "postgres":
            messages = PostgresMessageLog(pools)

    if config.messages_backend == "mongo":
        from storage.mongo import MongoMessageLog

        if not config.mongo_url:
            raise ValueError("the mongo messages backend needs a MongoDB URL")
        messages = await MongoMessageLog.open(
            config.mongo_url, config.mongo_database, config.mongo_write_concern, config.timeout
        )

    assert directory is not None and messages is not None
    return Stores(directory, messages, closers)
