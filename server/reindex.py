"""``hubbub reindex``: rebuild the message search index from the message store.

For when the index and the messages may disagree: after changing
``postgres_search_config`` (rows indexed under the old configuration), or, on
the MongoDB topology, after an index write failed where the MongoDB write
had succeeded (docs/storage.md, Search). Safe while servers run: each store's
rebuild is transactional or idempotent (a message sent meanwhile is indexed
by its own send, and indexing it again stores the same row).
"""

from __future__ import annotations

import asyncpg

from hubbub.server import logs
from hubbub.server.config import Settings
from hubbub.server.startup import EXIT_CODE
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.factory import open_stores


async def reindex(settings: Settings) -> int:
    """Rebuild the configured message store's search index; 0, or EXIT_CODE when a store fails."""
    config = settings.storage
    try:
        stores = await open_stores(config)
    except (StoreUnavailable, OSError, asyncpg.PostgresError) as exc:
        logs.error("reindex_failed", error=str(exc))
        return EXIT_CODE
    try:
        indexed = await _rebuild(stores.messages)
    except (StoreUnavailable, OSError, asyncpg.PostgresError) as exc:
        logs.error("reindex_failed", error=str(exc))
        return EXIT_CODE
    finally:
        await stores.close()
    logs.info("reindexed", messages_backend=config.resolved_messages_backend, messages=indexed)
    return 0


async def _rebuild(messages: object) -> int:
    from hubbub.storage.mongo import MongoMessageLog
    from hubbub.storage.postgres import PostgresMessageLog, reindex_postgres
    from hubbub.storage.search_index import IndexedMessageLog, reindex_mongo
    from hubbub.storage.sqlite import SqliteMessageLog, reindex_sqlite

    if isinstance(messages, SqliteMessageLog):
        return await reindex_sqlite(messages.db)
    if isinstance(messages, PostgresMessageLog):
        async with messages.pools.primary.acquire() as conn:
            return await reindex_postgres(conn, messages.search_config)
    if isinstance(messages, IndexedMessageLog):
        return await reindex_mongo(messages.log, messages.index)
    if isinstance(messages, MongoMessageLog):
        return 0  # with a SQLite directory it has no index: its search scans (docs/storage.md)
    raise TypeError(f"no search index to rebuild for {type(messages).__name__}")
