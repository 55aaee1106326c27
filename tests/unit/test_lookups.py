"""server.lookups.KeyedLookup: concurrent reads by key coalesced into one store call each batch."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from hubbub.server.guarded import request_budget
from hubbub.server.lookups import BatchProgress, KeyedLookup, KeyedWrites, answered
from hubbub.server.loop_lag import STALL_TICK_SECONDS, LoopLagMonitor
from hubbub.storage.errors import StoreUnavailable


class FakeStore:
    """Squares of the keys it is asked for (negative keys do not exist); one call at a time, released by the test."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def fetch(self, keys: list[int]) -> dict[int, int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("fake", "store down")
        return {k: k * k for k in keys if k >= 0}


async def test_a_lone_lookup_is_a_batch_of_one_and_absent_keys_are_none() -> None:
    store = FakeStore()
    lookup = KeyedLookup(store.fetch)
    assert await lookup.get(3) == 9
    assert await lookup.get(-1) is None
    assert await lookup.get_many([2, -5, 2]) == {2: 4}
    assert store.calls == [[3], [-1], [2, -5]]


async def test_lookups_asked_while_a_batch_is_in_flight_go_together_in_the_next() -> None:
    store = FakeStore()
    store.gate.clear()
    lookup = KeyedLookup(store.fetch)
    first = asyncio.ensure_future(lookup.get(1))
    while not store.calls:  # noqa: ASYNC110 - the fake store records the call on its own task
        await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(lookup.get(k)) for k in (2, 3, 2, 4)]
    many = asyncio.ensure_future(lookup.get_many([4, 5]))
    await asyncio.sleep(0)
    store.gate.set()
    assert await first == 1
    assert [await w for w in waiting] == [4, 9, 4, 16]
    assert await many == {4: 16, 5: 25}
    assert store.calls == [[1], [2, 3, 4, 5]]  # 1,000 auths at once: two store calls, not 1,000
    assert lookup.batches == 2


async def test_a_failed_batch_fails_its_lookups_only_and_the_next_goes_on() -> None:
    store = FakeStore()
    store.gate.clear()
    store.fail_next = True
    lookup = KeyedLookup(store.fetch)
    doomed = [asyncio.ensure_future(lookup.get(k)) for k in (1, 2)]
    while not store.calls:  # noqa: ASYNC110 - as above
        await asyncio.sleep(0)
    later = asyncio.ensure_future(lookup.get(3))
    await asyncio.sleep(0)
    store.gate.set()
    for task in doomed:
        with pytest.raises(StoreUnavailable):
            await task
    assert await later == 9
    assert store.calls == [[1, 2], [3]]


async def test_batches_are_bounded() -> None:
    store = FakeStore()
    lookup = KeyedLookup(store.fetch, max_batch=2)
    assert await asyncio.gather(*(lookup.get(k) for k in range(5))) == [0, 1, 4, 9, 16]
    assert store.calls == [[0, 1], [2, 3], [4]]


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    store = FakeStore()
    store.gate.clear()
    lookup = KeyedLookup(store.fetch)
    impatient = asyncio.ensure_future(lookup.get(7))
    patient = asyncio.ensure_future(lookup.get(7))
    while not store.calls:  # noqa: ASYNC110 - as above
        await asyncio.sleep(0)
    impatient.cancel()
    store.gate.set()
    assert await patient == 49
    assert impatient.cancelled()


class FakeWrites:
    """Records each batch written; one at a time, released by the test."""

    def __init__(self) -> None:
        self.batches: list[dict[int, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def write(self, batch: dict[int, int]) -> None:
        self.batches.append(dict(batch))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("fake", "store down")


async def test_writes_asked_while_one_is_in_flight_are_one_batch_and_the_later_value_wins() -> None:
    store = FakeWrites()
    store.gate.clear()
    writes: KeyedWrites[int, int] = KeyedWrites(store.write)
    first = asyncio.ensure_future(writes.put(1, 10))
    while not store.batches:  # noqa: ASYNC110 - the fake store records the call on its own task
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(writes.put(k, v)) for k, v in ((2, 20), (3, 30), (2, 21), (1, 11))]
    await asyncio.sleep(0)
    assert not any(w.done() for w in [first, *later])  # nobody is answered before their batch is written
    store.gate.set()
    await asyncio.gather(first, *later)
    assert store.batches == [{1: 10}, {2: 21, 3: 30, 1: 11}]  # 1,000 disconnects: two writes, not 1,000
    assert writes.batches == 2


async def test_a_failed_write_fails_its_batch_only() -> None:
    store = FakeWrites()
    store.gate.clear()
    store.fail_next = True
    writes: KeyedWrites[int, int] = KeyedWrites(store.write)
    doomed = [asyncio.ensure_future(writes.put(k, k)) for k in (1, 2)]
    while not store.batches:  # noqa: ASYNC110 - as above
        await asyncio.sleep(0)
    later = asyncio.ensure_future(writes.put(3, 3))
    await asyncio.sleep(0)
    store.gate.set()
    for task in doomed:
        with pytest.raises(StoreUnavailable):
            await task
    await later
    assert store.batches == [{1: 1, 2: 2}, {3: 3}]


async def test_write_batches_are_bounded() -> None:
    store = FakeWrites()
    writes: KeyedWrites[int, int] = KeyedWrites(store.write, max_batch=2)
    await asyncio.gather(*(writes.put(k, k) for k in range(5)))
    assert store.batches == [{0: 0, 1: 1}, {2: 2, 3: 3}, {4: 4}]


class TimedStore:
    """Squares, each call taking ``latency`` seconds (a live but loaded store), or held by the test."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, keys: list[int]) -> dict[int, int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        await asyncio.sleep(self.latency)  # the store's own latency, not a wait for an event
        return {k: k * k for k in keys}


BUDGET = 0.5


async def _answered_within_a_request(lookup: KeyedLookup[int, int], key: int) -> int | None:
    with request_budget(BUDGET):
        return await answered(lookup, key, "fake", "read")


async def test_a_request_is_not_refused_for_queueing_behind_batches_that_keep_finishing() -> None:
    store = TimedStore(latency=0.3)
    lookup = KeyedLookup(store.fetch, max_batch=1)  # one key per batch: four batches before the request's
    ahead = [asyncio.ensure_future(lookup.get(k)) for k in (1, 2, 3, 4)]
    while len(store.calls) + len(lookup._waiting) < len(ahead):  # noqa: ASYNC110 - the lookups run on their own tasks
        await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert await _answered_within_a_request(lookup, 5) == 25
    waited = asyncio.get_running_loop().time() - started
    assert waited > 3 * BUDGET, waited  # queued far longer than its budget, and answered
    assert [await a for a in ahead] == [1, 4, 9, 16]
    assert store.calls == [[1], [2], [3], [4], [5]]


async def test_queueing_behind_batches_spends_only_the_requests_own_batch_of_its_budget() -> None:
    # Each batch takes 0.15 s. The request's first lookup waits behind two
    # batches, then its own (0.45 s, answered within the 0.5 s budget, so no
    # batch before it was given back while it waited): only its own batch's
    # 0.15 s is spent. A second lookup (0.15 s) is answered from what is left;
    # a third, 0.3 s at the store, is more than that and is refused.
    store = TimedStore(latency=0.15)
    lookup = KeyedLookup(store.fetch, max_batch=1)
    ahead = [asyncio.ensure_future(lookup.get(k)) for k in (1, 2)]
    while len(store.calls) + len(lookup._waiting) < len(ahead):  # noqa: ASYNC110 - the lookups run on their own tasks
        await asyncio.sleep(0)
    with request_budget(BUDGET):
        assert await answered(lookup, 5, "fake", "read") == 25
        assert await answered(lookup, 6, "fake", "read") == 36
        store.latency = 0.3
        with pytest.raises(StoreUnavailable, match="budget is spent"):
            await answered(lookup, 7, "fake", "read")
    assert [await a for a in ahead] == [1, 4]


async def test_a_request_behind_a_stalled_batch_is_refused_within_its_budget() -> None:
    store = TimedStore(latency=0.0)
    store.gate.clear()  # a frozen store: the batch in flight never finishes
    lookup = KeyedLookup(store.fetch)
    stuck = asyncio.ensure_future(lookup.get(1))
    while not store.calls:  # noqa: ASYNC110 - the fake store records the call on its own task
        await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailable, match="budget is spent"):
        await _answered_within_a_request(lookup, 2)
    assert asyncio.get_running_loop().time() - started < BUDGET + 0.3
    with pytest.raises(StoreUnavailable, match="budget is spent"):  # its own batch stalled: refused too
        await _answered_within_a_request(lookup, 1)
    store.gate.set()
    assert await stuck == 1
    assert await lookup.get(2) == 4  # the refused key's batch still went on; the next reads again


async def test_a_slow_batch_is_waited_for_while_its_store_answers_others_and_refused_alone() -> None:
    progress = BatchProgress()  # one store's: shared by its lookups
    slow = TimedStore(latency=3 * BUDGET)
    fast = TimedStore(latency=0.1)
    others = KeyedLookup(fast.fetch, max_batch=1, progress=progress)
    answering = [asyncio.ensure_future(others.get(k)) for k in range(1, 21)]  # 2 s of batches answered
    assert await _answered_within_a_request(KeyedLookup(slow.fetch, progress=progress), 3) == 9
    assert [await a for a in answering] == [k * k for k in range(1, 21)]
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailable, match="budget is spent"):  # nothing else answered: the budget holds
        await _answered_within_a_request(KeyedLookup(slow.fetch, progress=progress), 4)
    assert asyncio.get_running_loop().time() - started < BUDGET + 0.3


async def test_a_request_is_not_refused_for_time_the_event_loop_could_not_run() -> None:
    monitor = LoopLagMonitor(Histogram("lag", "lag", registry=CollectorRegistry()), interval=0.05)
    monitor.start()
    try:
        store = TimedStore(latency=3 * BUDGET + 0.2)  # answers after the stall, within the budget of the rest
        lookup = KeyedLookup(store.fetch, progress=BatchProgress(monitor))
        # The loop blocked past the budget while the batch is in flight (a loaded server's storm).
        asyncio.get_running_loop().call_later(0.02, time.sleep, 3 * BUDGET)
        assert await _answered_within_a_request(lookup, 3) == 9
        assert monitor.stalled() >= 2 * BUDGET
    finally:
        await monitor.stop()


async def test_the_stall_clock_runs_only_while_a_request_waits_on_a_batch() -> None:
    monitor = LoopLagMonitor(Histogram("lag2", "lag", registry=CollectorRegistry()))
    loop = asyncio.get_running_loop()
    time.sleep(0.1)  # noqa: ASYNC251 - a stall nobody is waiting through: not counted
    await asyncio.sleep(0)
    assert monitor.stalled() == 0.0
    monitor.watch()
    try:
        ticked = loop.create_future()
        loop.call_later(STALL_TICK_SECONDS, ticked.set_result, None)
        await ticked  # the clock's first tick is due by now
        time.sleep(0.2)  # noqa: ASYNC251 - the loop blocked while somebody waits
        assert monitor.stalled() >= 0.2 - STALL_TICK_SECONDS
    finally:
        monitor.unwatch()
    counted = monitor.stalled()
    time.sleep(0.1)  # noqa: ASYNC251 - nobody waits any more: not counted
    await asyncio.sleep(0)
    assert monitor.stalled() == counted
