"""``python -m hubbub.loadtest.readbench``: the latency of a conversation
listing with read state (``channel.list``, issue 12) for a user in many
conversations with unread messages.

Starts a Hubbub in this process (SQLite in a temporary directory, or
PostgreSQL given by ``--dsn``, an empty database that is left filled, with
messages on PostgreSQL or on MongoDB at ``--mongo-url``), registers a reader
and a writer over WebSockets, then, straight through the server's stores:
``--conversations`` channels of the writer with the reader in each,
``--messages`` messages in each (every fifth mentions the reader; appended
concurrently, so the group commit batches them) and the reader's read
position in each at a random seq, so about half of each conversation is
unread. Then times ``--listings`` ``channel.list`` requests of the reader
over its WebSocket, one at a time after 20 warm-ups: the whole request
(memberships and public channels from the directory, heads and counts from
the log in one ``MessageLog.unread``, 500 conversations encoded), and,
for the split, the store calls alone: ``MessageLog.unread`` over all the
conversations, and ``MessageLog.heads``, what the listing read before read
state existed. Prints p50 and p99 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
from pymongo import AsyncMongoClient

from hubbub.protocol import frames
from hubbub.protocol.client import Client, open_client
from hubbub.server.app import App
from hubbub.server.config import Settings
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import NewMessage
from hubbub.storage.rows import message_document, new_message_record

WARMUP = 20
APPENDS_AT_ONCE = 100
CAP = 100
"""The default ``unread_count_cap``."""


def settings_for(store: str, data_dir: str, dsn: str, mongo_url: str) -> Settings:
    values: dict[str, Any] = {
        "port": 0,
        "data_dir": data_dir,
        "log_level": "warning",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8,
        "argon2_parallelism": 1,
        "rate_per_second": 100_000.0,
        "rate_burst": 100_000,
        "jwt_secret": "readbench-secret-that-is-at-least-32-bytes",
        "storage_timeout_seconds": 60.0,  # the bulk fill, not the listing, needs it (MongoDB test server)
        "mongo_change_lease_seconds": 120.0,  # must outlast the storage timeout
    }
    if store != "sqlite":
        values.update(accounts_backend="postgres", messages_backend="postgres", postgres_dsn=dsn)
    if store == "postgres+mongo":
        values.update(messages_backend="mongo", mongo_url=mongo_url, mongo_database=f"readbench_{uuid.uuid4().hex[:8]}")
    return msgspec.convert(values, Settings)


async def fill(
    settings: Settings,
    directory: Directory,
    messages: MessageLog,
    reader: int,
    writer: int,
    conversations: int,
    per: int,
    seed: int,
) -> list[int]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    ids = []
    for n in range(conversations):
        channel = await directory.create_channel(f"bench-{n}-{uuid.uuid4().hex[:6]}", "", False, writer, now)
        await directory.add_member(channel.id, reader, now, read_seq=0)
        ids.append(channel.id)
    pending = [
        NewMessage(
            conversation_id=cid,
            sender_id=writer,
            text=f"message {k}",
            client_msg_id=f"{cid}-{k}",
            ts=now + k,
            mentions=(reader,) if k % 5 == 0 else (),
        )
        for k in range(per)
        for cid in ids
    ]
    if settings.messages_backend == "mongo":
        await _insert_mongo(settings, pending)
    else:
        for start in range(0, len(pending), APPENDS_AT_ONCE):
            await asyncio.gather(*(messages.append(m) for m in pending[start : start + APPENDS_AT_ONCE]))
    for cid in ids:
        await directory.mark_read(cid, reader, rng.randint(0, per), unset_as=per)
    return ids


async def _insert_mongo(settings: Settings, pending: list[NewMessage]) -> None:
    """The messages as MongoMessageLog stores them (documents and counters),
    inserted in bulk: the MongoDB test server appends about 7 a second one by one."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        db = client.get_database(settings.mongo_database)
        seqs: dict[int, int] = {}
        documents = []
        for message in pending:
            seq = seqs[message.conversation_id] = seqs.get(message.conversation_id, 0) + 1
            documents.append(message_document(new_message_record(message, seq, seq)))
        for start in range(0, len(documents), 1000):
            await db.messages.insert_many(documents[start : start + 1000])
        await db.counters.insert_many([{"_id": c, "seq": n, "rev": n, "pending": {}} for c, n in seqs.items()])
    finally:
        await client.close()


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> tuple[float, float]:
    """p50 and p99 of ``count`` calls, in milliseconds, after the warm-ups."""
    for _ in range(WARMUP):
        await call()
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98]


async def registered(stack: AsyncExitStack, url: str, name: str) -> Client:
    client = await stack.enter_async_context(open_client(url))
    await client.next_event()  # hello
    await client.register(name, "readbench password")
    return client


async def run(store: str, dsn: str, mongo_url: str, conversations: int, per: int, listings: int, seed: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_for(store, folder, dsn, mongo_url)
        app = App(settings)
        await app.start()
        try:
            async with AsyncExitStack() as clients:
                services = app.services
                assert services is not None
                url = f"ws://127.0.0.1:{app.port}/"
                reader = await registered(clients, url, f"reader{uuid.uuid4().hex[:6]}")
                writer = await registered(clients, url, f"writer{uuid.uuid4().hex[:6]}")
                assert reader.user is not None and writer.user is not None
                reader_id = reader.user.id
                ids = await fill(
                    settings, services.directory, services.messages, reader_id, writer.user.id, conversations, per, seed
                )
                listed: frames.ConversationList = await reader.call("channel.list", timeout=120)
                mine = [c for c in listed.conversations if c.id in set(ids)]
                unread = sum(c.unread_count for c in mine)
                mentions = sum(c.mention_count for c in mine)
                states = {m.conversation.id: m.state for m in await services.directory.memberships_of(reader_id)}
                positions = {cid: states[cid].read_seq for cid in ids}
                listing = await timed(lambda: reader.call("channel.list", timeout=60), listings)
                counting = await timed(lambda: services.messages.unread(reader_id, positions, CAP), listings)
                heads = await timed(lambda: services.messages.heads(ids), listings)
        finally:
            await app.stop()
    return (
        f"{store}: a user in {len(mine)} conversations of {per} messages, {unread} unread ({mentions} mentions):"
        f" channel.list p50 {listing[0]:.2f} ms, p99 {listing[1]:.2f} ms;"
        f" MessageLog.unread p50 {counting[0]:.2f} ms, p99 {counting[1]:.2f} ms;"
        f" MessageLog.heads p50 {heads[0]:.2f} ms, p99 {heads[1]:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "postgres", "postgres+mongo"), default="sqlite")
    parser.add_argument("--dsn", default="", help="an empty PostgreSQL database (--store postgres...)")
    parser.add_argument("--mongo-url", default="", help="a MongoDB server (--store postgres+mongo)")
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--messages", type=int, default=40, help="messages per conversation")
    parser.add_argument("--listings", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    if args.store != "sqlite" and not args.dsn:
        parser.error(f"--store {args.store} needs --dsn")
    if args.store == "postgres+mongo" and not args.mongo_url:
        parser.error("--store postgres+mongo needs --mongo-url")
    print(
        asyncio.run(
            run(args.store, args.dsn, args.mongo_url, args.conversations, args.messages, args.listings, args.seed)
        )
    )


if __name__ == "__main__":
    main()
