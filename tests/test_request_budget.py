"""storage_timeout_seconds bounds a request's whole wait on the store, not each call of it.

A request that makes several store calls, each of them under the timeout,
must still be answered `unavailable` once their sum reaches it: the setting
is the longest a request's store calls wait, together (server/guarded.py).
Only that waiting is spent: the time between two calls (the handler's own
work, a loaded loop's queue) is not the store's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hubbub.protocol.client import ServerError
from hubbub.server.guarded import guarded, request_budget
from hubbub.server.metrics import Metrics
from hubbub.storage.errors import StoreUnavailable
from tests.conftest import ServerFactory
from tests.helpers import assert_serving

TIMEOUT = 1.0
SLOW_CALL = 0.6 * TIMEOUT
"""Each slow call alone is within the timeout; two in one request are not."""


class SlowStore:
    name = "slow"

    def __init__(self) -> None:
        self.calls = 0
        self.latency = SLOW_CALL

    async def read(self) -> int:
        self.calls += 1
        await asyncio.sleep(self.latency)  # the store's own latency, not a wait for an event
        return self.calls


async def test_calls_of_one_request_share_one_budget() -> None:
    store = guarded(SlowStore(), Metrics(), TIMEOUT)
    start = time.monotonic()
    with request_budget(TIMEOUT):
        assert await store.read() == 1
        with pytest.raises(StoreUnavailable):
            await store.read()
    assert time.monotonic() - start < TIMEOUT + 0.3


async def test_the_time_between_a_requests_store_calls_is_not_spent() -> None:
    slow = SlowStore()
    store = guarded(slow, Metrics(), TIMEOUT)
    with request_budget(TIMEOUT):
        assert await store.read() == 1
        # Longer than the budget has left, but spent on other work, not on the store.
        await asyncio.sleep(TIMEOUT)
        slow.latency = TIMEOUT - SLOW_CALL - 0.2  # 0.2 s to spare: a loaded machine's sleeps overshoot
        assert await store.read() == 2
        # What is left now is less than one more slow call: that one is refused.
        slow.latency = SLOW_CALL
        with pytest.raises(StoreUnavailable):
            await store.read()


async def test_each_call_outside_a_request_has_the_whole_timeout() -> None:
    store = guarded(SlowStore(), Metrics(), TIMEOUT)
    assert await store.read() == 1
    assert await store.read() == 2


async def test_a_task_a_request_starts_does_not_inherit_its_budget() -> None:
    store = guarded(SlowStore(), Metrics(), TIMEOUT)
    with request_budget(SLOW_CALL / 2):
        # A background task started mid-request (a gap fill, say) is not the request.
        background = asyncio.get_running_loop().create_task(store.read())
    assert await background == 1


async def test_a_request_with_several_slow_store_calls_answers_within_the_timeout(
    make_server: ServerFactory,
) -> None:
    server = await make_server(storage_timeout_seconds=TIMEOUT)
    alice = await server.user()
    assert server.app.services is not None
    # channel.list reads the caller's memberships, then the public channels: two
    # calls, each a batch of server/lookups.py made on the batch-bounded directory;
    # the request's budget runs while its batches do.
    reads: Any = server.app.services.directory  # server/lookups.py CoalescedReads
    wrappers: list[Any] = [reads._directory, reads._batches]
    backend: Any = wrappers[0]._store
    for op in ("memberships_of_many", "public_channels"):
        original = getattr(backend, op)

        async def slow(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            await asyncio.sleep(SLOW_CALL)  # a slow but live database
            return await _original(*args, **kwargs)

        # The guarded wrappers keep the bound method they first looked up; drop it so they see `slow`.
        setattr(backend, op, slow)
        for wrapper in wrappers:
            wrapper.__dict__.pop(op, None)

    start = time.monotonic()
    with pytest.raises(ServerError) as refused:
        await alice.call("channel.list")
    waited = time.monotonic() - start
    assert refused.value.code == "unavailable"
    assert waited < TIMEOUT + 0.4, f"waited {waited:.2f}s for a {TIMEOUT}s storage timeout"
    await assert_serving(alice)
