"""storage.batching.GroupCommit: group commit per key (per conversation, or
one group as SQLite uses it), driven with a fake ``store_batch`` that records
its batches and is released by hand."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from hubbub.storage.batching import GroupCommit, Stored, one_group
from hubbub.storage.errors import Conflict, StoreUnavailable
from hubbub.storage.records import Appended, MessageRecord, NewMessage


def new(cid: int, client_msg_id: str, sender: int = 1) -> NewMessage:
    return NewMessage(
        conversation_id=cid, sender_id=sender, text=f"text {client_msg_id}", client_msg_id=client_msg_id, ts=1
    )


@dataclass
class FakeStore:
    """Stores each batch when released; seqs per conversation, resends deduplicated
    by (conversation, sender, client_msg_id) as every real store does."""

    batches: list[list[str]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)
    hold: bool = False
    fail_next: Exception | None = None
    per_message_errors: dict[str, BaseException] = field(default_factory=dict)
    stored: dict[tuple[int, int, str], MessageRecord] = field(default_factory=dict)
    last_seq: dict[int, int] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, batch: list[NewMessage]) -> list[Stored | BaseException]:
        self.batches.append([m.client_msg_id for m in batch])
        self.started.set()
        if self.hold:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        outcomes: list[Stored | BaseException] = []
        for m in batch:
            if m.client_msg_id in self.per_message_errors:
                outcomes.append(self.per_message_errors[m.client_msg_id])
                continue
            key = (m.conversation_id, m.sender_id, m.client_msg_id)
            if key in self.stored:
                outcomes.append(Appended(record=self.stored[key], duplicate=True))
                continue
            seq = self.last_seq[m.conversation_id] = self.last_seq.get(m.conversation_id, 0) + 1
            record = MessageRecord(
                id=f"id{m.conversation_id}-{seq}",
                conversation_id=m.conversation_id,
                seq=seq,
                sender_id=m.sender_id,
                text=m.text,
                client_msg_id=m.client_msg_id,
                ts=m.ts,
            )
            self.stored[key] = record
            outcomes.append(Appended(record=record, duplicate=False))
        return outcomes

    async def wait_started(self, batches: int) -> None:
        async with asyncio.timeout(2):
            while len(self.batches) < batches:
                self.started.clear()
                await self.started.wait()

    def release(self) -> None:
        self.gates.pop(0).set()


async def next_turn() -> None:
    """Let every task already scheduled take its next step."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def submit(batches: GroupCommit, *messages: NewMessage) -> list[asyncio.Task[Stored]]:
    return [asyncio.create_task(batches.append(m)) for m in messages]


async def test_a_lone_append_is_a_batch_of_one_at_once() -> None:
    store = FakeStore()
    batches = GroupCommit("fake", store)
    outcome = await batches.append(new(1, "a"))
    record, duplicate = outcome.record, outcome.duplicate
    assert (record.seq, record.client_msg_id, duplicate) == (1, "a", False)
    assert store.batches == [["a"]]


async def test_appends_during_a_batch_go_together_in_the_next_in_submission_order() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    first = submit(batches, new(1, "a"))
    await store.wait_started(1)
    waiting = submit(batches, *(new(1, name) for name in "bcde"))
    await next_turn()
    store.release()
    await store.wait_started(2)
    store.release()
    results = await asyncio.gather(*first, *waiting)
    assert store.batches == [["a"], ["b", "c", "d", "e"]]
    assert [(r.client_msg_id, r.seq) for r in (o.record for o in results)] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
    ]
    await batches.close()


async def test_a_batch_is_at_most_max_batch_messages() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_batch=2)
    tasks = submit(batches, *(new(1, name) for name in "abcde"))
    for count in (1, 2, 3):
        await store.wait_started(count)
        store.release()
    results = await asyncio.gather(*tasks)
    assert store.batches == [["a", "b"], ["c", "d"], ["e"]]
    assert [r.seq for r in (o.record for o in results)] == [1, 2, 3, 4, 5]


async def test_conversations_batch_independently() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    slow = submit(batches, new(1, "slow"))
    await store.wait_started(1)
    other = submit(batches, new(2, "other"))
    await store.wait_started(2)  # not queued behind conversation 1's batch in flight
    store.gates[1].set()
    (outcome,) = await asyncio.gather(*other)
    record = outcome.record
    assert record.conversation_id == 2
    assert not slow[0].done()
    store.release()
    await asyncio.gather(*slow)


async def test_a_failing_batch_fails_its_waiters_and_the_next_batch_is_still_served() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    failing = submit(batches, new(1, "a"), new(1, "b"))
    await store.wait_started(1)
    next_batch = submit(batches, new(1, "c"))
    await next_turn()
    store.fail_next = ConnectionResetError("connection lost")
    store.release()
    await store.wait_started(2)
    store.release()
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, StoreUnavailable)
        assert outcome.store == "fake"
    (outcome,) = await asyncio.gather(*next_batch)
    record, duplicate = outcome.record, outcome.duplicate
    assert (record.client_msg_id, record.seq, duplicate) == ("c", 1, False)


async def test_a_store_unavailable_error_reaches_the_waiters_as_raised() -> None:
    store = FakeStore()
    error = StoreUnavailable("fake", "timed out")
    store.fail_next = error
    batches = GroupCommit("fake", store)
    with pytest.raises(StoreUnavailable) as caught:
        await batches.append(new(1, "a"))
    assert caught.value is error


async def test_one_messages_error_fails_only_its_own_waiter() -> None:
    conflict = Conflict("no such conversation")
    store = FakeStore(per_message_errors={"b": conflict})
    batches = GroupCommit("fake", store)
    tasks = submit(batches, new(1, "a"), new(1, "b"), new(1, "c"))
    a, b, c = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.batches == [["a", "b", "c"]]
    assert b is conflict
    assert not isinstance(a, BaseException) and a.record.client_msg_id == "a"
    assert not isinstance(c, BaseException) and c.record.client_msg_id == "c"


async def test_a_resend_in_the_same_batch_gets_the_original_back_as_a_duplicate() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    blocker = submit(batches, new(1, "first"))
    await store.wait_started(1)
    tasks = submit(batches, new(1, "x"), new(1, "x"), new(1, "x", sender=2))
    await next_turn()
    store.release()
    await store.wait_started(2)
    store.release()
    await asyncio.gather(*blocker)
    first, again, by_other = await asyncio.gather(*tasks)
    assert store.batches[1] == ["x", "x", "x"]  # batching itself never merges sends
    assert (first.duplicate, again.duplicate, by_other.duplicate) == (False, True, False)
    assert again.record == first.record
    assert by_other.record.seq == first.record.seq + 1


async def test_a_waiter_that_gave_up_does_not_disturb_the_others() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    blocker = submit(batches, new(1, "first"))
    await store.wait_started(1)
    gave_up, kept = submit(batches, new(1, "gave-up"), new(1, "kept"))
    await next_turn()
    gave_up.cancel()
    store.release()
    await store.wait_started(2)
    store.release()
    record = (await kept).record
    assert gave_up.cancelled()
    assert store.batches[1] == ["gave-up", "kept"]  # it was stored all the same
    assert record.seq == 3
    await asyncio.gather(*blocker)


async def test_close_waits_for_the_batch_in_flight() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    tasks = submit(batches, new(1, "a"))
    await store.wait_started(1)
    closing = asyncio.create_task(batches.close())
    await next_turn()
    assert not closing.done()
    store.release()
    await closing
    assert tasks[0].done()


async def test_after_a_batch_drains_the_next_append_starts_a_fresh_batch() -> None:
    store = FakeStore()
    batches = GroupCommit("fake", store)
    await batches.append(new(1, "a"))
    await batches.append(new(1, "b"))
    assert store.batches == [["a"], ["b"]]


async def test_one_group_batches_every_conversation_together_in_submission_order() -> None:
    """SQLite's grouping: whatever queued during a commit goes in the next, across conversations."""
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, key=one_group)
    first = submit(batches, new(1, "a"))
    await store.wait_started(1)
    waiting = submit(batches, new(2, "b"), new(1, "c"), new(3, "d"), new(2, "e"))
    await next_turn()
    assert len(store.batches) == 1  # conversation 2 waits behind conversation 1's batch
    store.release()
    await store.wait_started(2)
    store.release()
    results = await asyncio.gather(*first, *waiting)
    assert store.batches == [["a"], ["b", "c", "d", "e"]]
    assert [(r.conversation_id, r.seq) for r in (o.record for o in results)] == [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2)]
    await batches.close()


async def test_a_batch_with_an_outcome_missing_fails_whole_and_the_next_is_served() -> None:
    store = FakeStore()
    batches = GroupCommit("fake", store)
    original = store.__call__

    async def short(batch: list[NewMessage]) -> list[Stored | BaseException]:
        return (await original(batch))[:-1]

    broken = GroupCommit("fake", short)
    with pytest.raises(StoreUnavailable):
        await broken.append(new(1, "a"))
    record = (await batches.append(new(1, "b"))).record
    assert record.seq == 2  # the short batch was stored; its waiter was told it may not have been


async def test_a_flush_takes_every_conversation_waiting_each_in_submission_order() -> None:
    """Across conversations: what queued during a flush goes together in the next,
    whatever the conversations, each conversation's appends in submission order."""
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_flights=1)
    first = submit(batches, new(1, "a"))
    await store.wait_started(1)
    waiting = submit(batches, new(2, "b"), new(1, "c"), new(3, "d"), new(2, "e"))
    await next_turn()
    assert len(store.batches) == 1  # one flight: the others wait for it
    store.release()
    await store.wait_started(2)
    store.release()
    results = await asyncio.gather(*first, *waiting)
    assert store.batches == [["a"], ["b", "e", "c", "d"]]  # oldest conversation first, each in order
    assert [(r.conversation_id, r.seq) for r in (o.record for o in results)] == [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2)]
    await batches.close()


async def test_a_burst_into_many_conversations_is_one_flush() -> None:
    store = FakeStore()
    batches = GroupCommit("fake", store)
    results = await asyncio.gather(*submit(batches, *(new(cid, f"m{cid}") for cid in range(100))))
    assert store.batches == [[f"m{cid}" for cid in range(100)]]
    assert batches.flushes == 1
    assert [o.record.conversation_id for o in results] == list(range(100))


async def test_a_conversation_in_flight_waits_while_a_second_flight_takes_the_others() -> None:
    """At most one batch per conversation in flight (its order), up to max_flights
    batches at once: the second flight takes the other conversations, and the busy
    conversation's appends go in the first batch after its own is stored."""
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_flights=2)
    first = submit(batches, new(1, "a"))
    await store.wait_started(1)
    second = submit(batches, new(1, "b"), new(2, "c"), new(3, "d"))
    await store.wait_started(2)
    assert store.batches == [["a"], ["c", "d"]]
    third = submit(batches, new(4, "e"))
    await next_turn()
    assert len(store.batches) == 2  # both flights busy: conversation 4 waits
    store.release()  # "a" stored: its flight takes conversation 1's "b" and conversation 4's "e"
    await store.wait_started(3)
    assert store.batches[2] == ["b", "e"]
    store.release()
    store.release()
    results = await asyncio.gather(*first, *second, *third)
    assert [(r.conversation_id, r.seq) for r in (o.record for o in results)] == [(1, 1), (1, 2), (2, 1), (3, 1), (4, 1)]
    await batches.close()


async def test_max_batch_spans_conversations_and_the_rest_waits_in_order() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_batch=3, max_flights=1)
    tasks = submit(batches, new(1, "a"), new(1, "b"), new(2, "c"), new(2, "d"), new(3, "e"))
    for count in (1, 2):
        await store.wait_started(count)
        store.release()
    results = await asyncio.gather(*tasks)
    assert store.batches == [["a", "b", "c"], ["e", "d"]]
    assert [(r.conversation_id, r.seq) for r in (o.record for o in results)] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]


async def test_a_failing_flush_fails_exactly_its_appends_across_conversations() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_flights=1)
    failing = submit(batches, new(1, "a"), new(2, "b"), new(3, "c"))
    await store.wait_started(1)
    later = submit(batches, new(1, "d"), new(4, "e"))
    await next_turn()
    store.fail_next = ConnectionResetError("connection lost")
    store.release()
    await store.wait_started(2)
    store.release()
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    served = await asyncio.gather(*later)
    assert [(o.record.conversation_id, o.record.seq) for o in served] == [(1, 1), (4, 1)]


async def test_a_burst_over_max_batch_is_stored_in_batches_side_by_side() -> None:
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store, max_batch=4, max_flights=3)
    tasks = submit(batches, *(new(cid, f"m{cid}-{k}") for k in range(2) for cid in range(5)))
    await store.wait_started(3)  # three flights at once, none waiting for another
    assert store.batches == [
        ["m0-0", "m0-1", "m1-0", "m1-1"],
        ["m2-0", "m2-1", "m3-0", "m3-1"],
        ["m4-0", "m4-1"],
    ]
    for _ in range(3):
        store.release()
    results = await asyncio.gather(*tasks)
    assert [(r.conversation_id, r.seq) for r in (o.record for o in results)] == [
        (cid, k + 1) for k in range(2) for cid in range(5)
    ]
    await batches.close()


def timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers the loop has scheduled and not yet run or dropped (asyncio's own heap)."""
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled())


async def test_appends_past_their_deadline_answer_timeout_waiting_or_in_flight_with_one_timer() -> None:
    """A deadline bounds an append whether its batch is being stored ("a") or
    waits behind it ("b", same conversation); an append without one waits on.
    The message of an append that timed out may be stored all the same."""
    loop = asyncio.get_running_loop()
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    before = timers(loop)
    deadline = loop.time() + 0.05
    in_flight = asyncio.create_task(batches.append(new(1, "a"), deadline))
    await store.wait_started(1)
    waiting = asyncio.create_task(batches.append(new(1, "b"), deadline + 0.01))
    patient = asyncio.create_task(batches.append(new(1, "c")))
    await next_turn()
    assert timers(loop) - before == 1, "one timer for every waiting append"
    with pytest.raises(TimeoutError):
        await in_flight
    assert loop.time() >= deadline
    with pytest.raises(TimeoutError):
        await waiting
    assert not patient.done()
    store.release()
    await store.wait_started(2)
    assert store.batches == [["a"], ["b", "c"]]
    store.release()
    assert (await patient).record.seq == 3
    await batches.close()
    assert timers(loop) == before


async def test_an_earlier_deadline_after_a_later_one_still_ends_at_its_own_time() -> None:
    loop = asyncio.get_running_loop()
    store = FakeStore(hold=True)
    batches = GroupCommit("fake", store)
    late = asyncio.create_task(batches.append(new(1, "late"), loop.time() + 60))
    await store.wait_started(1)
    soon = loop.time() + 0.05
    early = asyncio.create_task(batches.append(new(2, "early"), soon))
    with pytest.raises(TimeoutError):
        await early
    assert loop.time() >= soon
    assert not late.done()
    store.release()
    await store.wait_started(2)
    store.release()
    assert (await late).record.client_msg_id == "late"
    await batches.close()


async def test_an_append_whose_deadline_has_passed_answers_at_once_and_stores_nothing() -> None:
    loop = asyncio.get_running_loop()
    store = FakeStore()
    batches = GroupCommit("fake", store)
    with pytest.raises(TimeoutError):
        await batches.append(new(1, "late"), loop.time())
    await next_turn()
    assert store.batches == []
    assert (await batches.append(new(1, "next"), loop.time() + 60)).record.seq == 1
    await batches.close()
