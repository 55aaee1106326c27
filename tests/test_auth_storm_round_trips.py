"""A reconnect storm's store round trips on PostgreSQL, counted (issue 13).

Timing a storm on a shared machine measures the machine; counting does not.
N clients authenticate at once with their tokens: every store call this makes
must be a batch of server/lookups.py on the lookup lane (one pool acquisition,
one statement each, whatever N), and nothing may touch the primary pool, the
one the storm's catch-up requests queue for. The lane is held while the auths
arrive, as a loaded store would, so the count is exact: the first batch and
one more for everyone who arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.server.lookups import CoalescedReads
from hubbub.storage import postgres
from hubbub.storage.pool_usage import counted_acquire
from hubbub.storage.postgres import PostgresDirectory, PostgresPools
from tests.backends import truncate_postgres
from tests.conftest import RunningServer, ServerFactory
from tests.helpers import uid

USERS = 40
ROOMS = 3


@pytest.fixture
async def postgres_dsn(postgres_database: str) -> str:
    await truncate_postgres(postgres_database)
    return postgres_database


@contextlib.contextmanager
def counting_acquisitions(monkeypatch: pytest.MonkeyPatch, pools: PostgresPools) -> Any:
    """Every pool acquisition storage/postgres.py makes, by pool (``lookups`` or ``primary``)."""
    counts: Counter[str] = Counter()

    def counted(pool: Any) -> counted_acquire:
        counts["lookups" if pool is pools.lookups else "primary" if pool is pools.primary else "other"] += 1
        return counted_acquire(pool)

    with monkeypatch.context() as patch:
        patch.setattr(postgres, "counted_acquire", counted)
        yield counts


@contextlib.asynccontextmanager
async def held(pool: Any, connections: int) -> AsyncIterator[None]:
    """The pool's connections lent out: its callers wait, as behind a slow store."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(connections):
            await stack.enter_async_context(pool.acquire())
        yield


async def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the server's own tasks make it true; no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def recording(lookup: Any) -> list[int]:
    """The size of every batch ``lookup`` makes from now on."""
    sizes: list[int] = []
    fetch: Callable[[list[Any]], Awaitable[Any]] = lookup._fetch

    async def recorded(keys: list[Any]) -> Any:
        sizes.append(len(keys))
        return await fetch(keys)

    lookup._fetch = recorded
    return sizes


async def test_a_storm_of_auths_is_a_constant_number_of_lookup_lane_batches_and_no_primary_query(
    make_server: ServerFactory, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: RunningServer = await make_server(
        accounts_backend="postgres", messages_backend="postgres", postgres_dsn=postgres_dsn, postgres_lookup_pool_max=2
    )
    assert server.app.services is not None
    reads = server.app.services.directory
    assert isinstance(reads, CoalescedReads)
    store = server.app._stores.directory if server.app._stores else None
    assert isinstance(store, PostgresDirectory)
    pools = store.pools
    assert pools.lookups is not pools.primary

    owner = await server.user()
    rooms = [(await owner.call("channel.create", name=f"storm{i}")).conversation.id for i in range(ROOMS)]
    tokens: dict[int, str] = {}
    for i in range(USERS):
        member = await server.user()
        for room in rooms[: 1 + i % ROOMS]:
            await member.call("channel.join", channel_id=room)
        assert member.token is not None
        tokens[uid(member)] = member.token
        await member.close()
    await until(lambda: len(server.app.sessions) == 1, "the members' disconnects are torn down")
    await until(lambda: reads.last_seen._flusher is None, "their last-seen writes are made")

    clients: list[Client] = [await server.client() for _ in range(USERS)]
    sizes = recording(reads.sessions)
    counts_before = reads.member_counts_lookup.batches
    with counting_acquisitions(monkeypatch, pools) as acquired:
        async with held(pools.lookups, 2):
            authing = [asyncio.ensure_future(c.auth(t)) for c, t in zip(clients, tokens.values(), strict=True)]
            waiting = reads.sessions._waiting
            await until(lambda: sum(sizes) + len(waiting) == USERS, "every auth is asked")
        sessions = await asyncio.gather(*authing)
        await until(lambda: reads.member_counts_lookup._flusher is None, "the online announcements are made")
    assert sorted(s.user.id for s in sessions) == sorted(tokens)
    assert sum(sizes) == USERS and len(sizes) <= 2, sizes  # 40 auths: one or two batches, not 40 reads
    count_batches = reads.member_counts_lookup.batches - counts_before  # presence's audiences, batched too
    assert 1 <= count_batches <= 3, count_batches
    # One acquisition per batch, on the lane; the primary pool is not asked at all.
    assert acquired == Counter(lookups=len(sizes) + count_batches), acquired

    # The conversations read in the batch are routed: a message in the first room reaches a member.
    listener = clients[0]
    sent = await owner.call("message.send", conversation_id=rooms[0], text="after the storm", client_msg_id="s1")
    heard = await listener.next_event(frames.MessageNew)
    assert heard.message.id == sent.message.id
