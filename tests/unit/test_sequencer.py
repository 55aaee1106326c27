"""server.sequencer.Sequencer: completed appends are published in seq order,
held only while an append that was in flight at their completion still runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from hubbub.server.broker import MESSAGE_NEW, Event, InProcessBroker, MembershipChange
from hubbub.server.sequencer import Sequencer

CID = 7


class Emitted(InProcessBroker):
    """A broker that records what the sequencer publishes, as (conversation, seq, payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, int, bytes]] = []

    def publish(self, event: Event) -> None:
        assert event.frame_type == MESSAGE_NEW and len(event.conversations) == 1 and not event.users
        self.events.append((event.conversations[0], event.seq, event.payload))

    def publish_membership(self, change: MembershipChange) -> None:
        raise AssertionError("the sequencer publishes messages only")

    def seqs(self, conversation_id: int = CID) -> list[int]:
        return [seq for cid, seq, _ in self.events if cid == conversation_id]


def payload(seq: int) -> bytes:
    return f"message {seq}".encode()


def test_a_lone_append_is_published_at_once() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    ticket = sequencer.begin(CID)
    assert emitted.events == []
    sequencer.complete(CID, ticket, 1, payload(1))
    assert emitted.events == [(CID, 1, payload(1))]


def test_a_later_seq_completing_first_waits_for_the_earlier_one() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    first = sequencer.begin(CID)
    second = sequencer.begin(CID)
    sequencer.complete(CID, second, 10, payload(10))
    assert emitted.seqs() == []
    sequencer.complete(CID, first, 9, payload(9))
    assert emitted.events == [(CID, 9, payload(9)), (CID, 10, payload(10))]


def test_an_earlier_completion_is_held_while_an_append_in_flight_may_still_get_a_lower_seq() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    first = sequencer.begin(CID)
    second = sequencer.begin(CID)
    sequencer.complete(CID, first, 5, payload(5))
    assert emitted.seqs() == []  # ``second`` may still come back with seq 4
    sequencer.complete(CID, second, 6, payload(6))
    assert emitted.seqs() == [5, 6]


def test_an_append_begun_after_a_completion_does_not_hold_it() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    first = sequencer.begin(CID)
    sequencer.complete(CID, first, 1, payload(1))
    later = sequencer.begin(CID)
    assert emitted.seqs() == [1]
    sequencer.complete(CID, later, 2, payload(2))
    assert emitted.seqs() == [1, 2]


def test_an_abort_releases_what_it_was_holding_back() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    failing = sequencer.begin(CID)
    ok = sequencer.begin(CID)
    sequencer.complete(CID, ok, 3, payload(3))
    assert emitted.seqs() == []
    sequencer.abort(CID, failing)
    assert emitted.seqs() == [3]


def test_an_abort_with_nothing_held_emits_nothing_and_leaves_the_conversation_usable() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    sequencer.abort(CID, sequencer.begin(CID))
    assert emitted.events == []
    ticket = sequencer.begin(CID)
    sequencer.complete(CID, ticket, 1, payload(1))
    assert emitted.seqs() == [1]


def test_conversations_do_not_hold_each_other() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    slow = sequencer.begin(1)
    fast = sequencer.begin(2)
    sequencer.complete(2, fast, 40, payload(40))
    assert emitted.events == [(2, 40, payload(40))]
    sequencer.complete(1, slow, 3, payload(3))
    assert emitted.events == [(2, 40, payload(40)), (1, 3, payload(3))]


def test_many_held_messages_come_out_in_seq_order_whatever_order_they_completed_in() -> None:
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    tickets = [sequencer.begin(CID) for _ in range(5)]
    # Replies come back in the order 3, 5, 1, 4, 2 (seq = position + 1).
    for index in (2, 4, 0, 3, 1):
        sequencer.complete(CID, tickets[index], index + 1, payload(index + 1))
    assert emitted.seqs() == [1, 2, 3, 4, 5]
    assert [p for _, _, p in emitted.events] == [payload(s) for s in (1, 2, 3, 4, 5)]


def test_a_steady_stream_of_overlapping_sends_is_not_starved() -> None:
    """There is always an append in flight, yet every message goes out as soon
    as the appends that overlapped its completion are done."""
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    running = [sequencer.begin(CID), sequencer.begin(CID)]
    for seq in range(1, 200):
        sequencer.complete(CID, running.pop(0), seq, payload(seq))
        running.append(sequencer.begin(CID))
        # Held only behind the one append that was running when it completed.
        assert emitted.seqs() == list(range(1, seq))
    assert len(running) == 2


@dataclass
class _Append:
    ticket: int = 0
    seq: int | None = None
    completed: bool = False
    in_flight_at_completion: set[int] = field(default_factory=set)


@given(
    schedule=st.integers(min_value=1, max_value=7).flatmap(
        lambda n: st.tuples(
            st.permutations([i for i in range(n) for _ in range(3)]),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )
)
def test_any_interleaving_publishes_in_seq_order_and_holds_nothing_longer_than_needed(
    schedule: tuple[list[int], list[bool]],
) -> None:
    """Each append begins, is committed by the store (which hands out the next
    seq), and then reports back; any interleaving of those steps is possible
    across appends. Some fail after their seq was taken (MongoDB's unused seqs)."""
    order, fails = schedule
    emitted = Emitted()
    sequencer = Sequencer(emitted)
    appends = [_Append() for _ in fails]
    steps = [0] * len(fails)
    next_seq = 1
    for index in order:
        append = appends[index]
        step = steps[index]
        steps[index] += 1
        if step == 0:
            append.ticket = sequencer.begin(CID)
        elif step == 1:
            append.seq, next_seq = next_seq, next_seq + 1
        elif fails[index]:
            sequencer.abort(CID, append.ticket)
        else:
            assert append.seq is not None
            append.in_flight_at_completion = {
                i for i, other in enumerate(appends) if other is not append and steps[i] in (1, 2)
            }
            append.completed = True
            sequencer.complete(CID, append.ticket, append.seq, payload(append.seq))

        published = emitted.seqs()
        assert published == sorted(published)
        assert len(published) == len(set(published))
        held = [a for a in appends if a.completed and a.seq not in published]
        for a in held:
            blocked_by_running = any(steps[i] in (1, 2) for i in a.in_flight_at_completion)
            blocked_by_lower = any(b.seq is not None and a.seq is not None and b.seq < a.seq for b in held)
            assert blocked_by_running or blocked_by_lower, f"seq {a.seq} held with nothing before it"

    expected = sorted(a.seq for a in appends if a.completed and a.seq is not None)
    assert emitted.seqs() == expected
    assert [p for _, _, p in emitted.events] == [payload(s) for s in expected]


class EmittedAll(InProcessBroker):
    """Records the payload of everything published, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    def publish(self, event: Event) -> None:
        self.payloads.append(event.payload)


def test_what_follows_a_message_is_published_right_after_it_even_when_it_was_held() -> None:
    emitted = EmittedAll()
    sequencer = Sequencer(emitted)
    first = sequencer.begin(CID)
    reply = sequencer.begin(CID)
    root_update = Event(b"root updated", "message.updated", (CID,))
    sequencer.complete(CID, reply, 10, payload(10), (root_update,))
    assert emitted.payloads == []  # held behind the earlier append, with what follows it
    sequencer.complete(CID, first, 9, payload(9))
    assert emitted.payloads == [payload(9), payload(10), b"root updated"]
