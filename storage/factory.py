"""Opening the configured stores: which backend holds the directory (the
accounts) and which the messages, as a ``StorageConfig`` (storage/config.py) says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.config import StorageConfig

if TYPE_CHECKING:  # the module imports the drivers, and a SQLite server needs none
    from hubbub.storage.pool_usage import PoolReader
    from hubbub.storage.postgres import PostgresPools


class Stores:
    """The two stores and what must be closed after them."""

    def __init__(
        self,
        directory: Directory,
        messages: MessageLog,
        closers: list[Callable[[], Awaitable[None]]],
        pool_readers: Sequence[PoolReader] = (),
        postgres_pools: PostgresPools | None = None,
    ):
        self.directory = directory
        self.messages = messages
        self._closers = closers
        self.pool_readers = pool_readers
        """The connection pools' usage of the backends that pool (hubbub_pool_*)."""
        self.postgres_pools = postgres_pools
        """PostgreSQL's pools when a store is there (the retention purge's advisory lock)."""

    async def close(self) -> None:
        await self.messages.close()
        await self.directory.close()
        for close in reversed(self._closers):
            await close()


async def open_stores(config: StorageConfig) -> Stores:
    """Open, and migrate when asked, the backends ``config`` names;
    InvalidStorageConfig when it breaks one of its rules."""
    config.check()
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        return await _open(config, closers)
    except BaseException:
        for close in reversed(closers):
            await close()
        raise


async def _open(config: StorageConfig, closers: list[Callable[[], Awaitable[None]]]) -> Stores:
    accounts_backend, messages_backend = config.backends
    timeout = config.storage_timeout_seconds
    directory: Directory | None = None
    messages: MessageLog | None = None
    pool_readers: list[PoolReader] = []
    postgres_pools = None

    if "sqlite" in config.backends:
        from hubbub.storage.sqlite import open_sqlite

        db, sqlite_directory, sqlite_messages = await open_sqlite(
            Path(config.data_dir) / "hubbub.db",
            timeout,
            index_idle_seconds=config.sqlite_index_idle_seconds,
            index_max_pending=config.sqlite_index_max_pending,
        )
        closers.append(db.close)
        if accounts_backend == "sqlite":
            directory = sqlite_directory
        if messages_backend == "sqlite":
            messages = sqlite_messages

    if "postgres" in config.backends:
        from hubbub.storage.postgres import PostgresDirectory, PostgresMessageLog, PostgresPools, migrate

        if config.auto_migrate:
            await migrate(config.postgres_dsn, timeout=max(timeout, 30.0), search_config=config.postgres_search_config)
        pools = await PostgresPools.open(
            config.postgres_dsn,
            config.postgres_replica_dsn or None,
            min_size=config.postgres_pool_min,
            max_size=config.postgres_pool_max,
            timeout=timeout,
            lookup_max=config.postgres_lookup_pool_max,
            replica_timeout=config.postgres_replica_timeout_seconds,
            replica_retry=config.postgres_replica_retry_seconds,
        )
        closers.append(pools.close)
        pool_readers.append(pools.usage)
        postgres_pools = pools
        if accounts_backend == "postgres":
            directory = PostgresDirectory(pools)
        if messages_backend == "postgres":
            messages = PostgresMessageLog(pools, search_config=config.postgres_search_config)

    if messages_backend == "mongo":
        from hubbub.storage.mongo import MongoMessageLog
        from hubbub.storage.search_index import IndexedMessageLog, PostgresSearchIndex

        mongo = await MongoMessageLog.open(
            config.mongo_url,
            config.mongo_database,
            config.mongo_write_concern,
            timeout,
            change_lease_seconds=config.mongo_change_lease_seconds,
        )
        if mongo.pool_events is not None:
            pool_readers.append(mongo.pool_events.usage)
        # The search index lives beside the directory, in PostgreSQL (docs/storage.md, Search);
        # with a SQLite directory there is none, and MongoMessageLog.search scans.
        messages = mongo
        if postgres_pools is not None:
            messages = IndexedMessageLog(mongo, PostgresSearchIndex(postgres_pools, config.postgres_search_config))

    if directory is None or messages is None:  # every backend of the Literals is opened above
        raise RuntimeError(f"no store opened for {accounts_backend} accounts and {messages_backend} messages")
    return Stores(directory, messages, closers, pool_readers, postgres_pools)
