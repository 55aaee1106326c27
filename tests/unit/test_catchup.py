"""server.catchup.Catchup, the broker's event handler: events and membership
changes fed in as the broker would, gaps filled from a real (SQLite) message
log, what reaches the registry asserted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import pytest

from hubbub.protocol import codec, frames
from hubbub.server.broker import MESSAGE_NEW, Event, InProcessBroker, MembershipChange
from hubbub.server.catchup import FILL_PAGE, SEEN_WINDOW, Catchup
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Registry
from hubbub.storage.base import HistoryOrder
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.records import Head, MessageRecord, NewMessage
from hubbub.storage.sqlite import SqliteDatabase, SqliteMessageLog

CID = 11
OTHER = 12


class FlakyLog(SqliteMessageLog):
    """The real SQLite log, with reads that can be made to fail and are counted."""

    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__(db)
        self.fail_history = False
        self.fail_heads = False
        self.history_calls = 0

    async def history(
        self,
        conversation_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        order: HistoryOrder,
        thread_root_id: str | None = None,
        include_replies: bool = True,
    ) -> list[MessageRecord]:
        self.history_calls += 1
        if self.fail_history:
            raise StoreUnavailable("sqlite", "history made to fail")
        return await super().history(
            conversation_id,
            before=before,
            after=after,
            limit=limit,
            order=order,
            thread_root_id=thread_root_id,
            include_replies=include_replies,
        )

    async def heads(self, conversation_ids: Sequence[int]) -> dict[int, Head]:
        if self.fail_heads:
            raise StoreUnavailable("sqlite", "heads made to fail")
        return await super().heads(conversation_ids)


class RecordingRegistry(Registry):
    """The registry's side of Catchup: which conversations have local members
    (``local``), and what Catchup hands over, recorded."""

    def __init__(self, local: set[int]) -> None:
        super().__init__(InProcessBroker(), Metrics())
        self.local = local
        self.delivered: list[Event] = []
        self.routing: list[tuple[str, tuple[int, ...], int]] = []

    def has_local_members(self, conversation_id: int) -> bool:
        return conversation_id in self.local

    def deliver(self, event: Event) -> None:
        self.delivered.append(event)

    def join(self, user_ids: Iterable[int], conversation_id: int) -> None:
        self.routing.append(("join", tuple(user_ids), conversation_id))

    def leave(self, user_ids: Iterable[int], conversation_id: int) -> None:
        self.routing.append(("leave", tuple(user_ids), conversation_id))


class Harness:
    def __init__(self, log: FlakyLog, local: set[int]) -> None:
        self.log = log
        self.local = local
        self.registry = RecordingRegistry(local)
        self.delivered = self.registry.delivered
        self.metrics = Metrics()
        self.catchup = Catchup(log, self.registry, self.metrics)

    def seqs(self, cid: int = CID) -> list[int]:
        return [d.seq for d in self.delivered if d.frame_type == MESSAGE_NEW and d.conversations == (cid,)]

    async def store(self, count: int, cid: int = CID) -> list[MessageRecord]:
        """Append ``count`` messages to the log (seqs continue from the newest)."""
        head = (await self.log.heads([cid])).get(cid)
        base = head.last_seq if head else 0
        stored = await asyncio.gather(
            *(
                self.log.append(
                    NewMessage(
                        conversation_id=cid, sender_id=1, text=f"text {base + i}", client_msg_id=f"c{base + i}", ts=i
                    )
                )
                for i in range(1, count + 1)
            )
        )
        return [appended.record for appended in stored]

    async def settle(self) -> None:
        """Wait until every fill and resync the catchup started has finished."""
        current = asyncio.current_task()
        async with asyncio.timeout(5):
            while others := [t for t in asyncio.all_tasks() if t is not current and not t.done()]:
                await asyncio.wait(others)


def message(seq: int, cid: int = CID) -> Event:
    return Event(f"broker payload {seq}".encode(), MESSAGE_NEW, conversations=(cid,), seq=seq)


def text_of(delivery: Event) -> str:
    frame = codec.decode_server_frame(delivery.payload)
    assert isinstance(frame, frames.MessageNew)
    return frame.message.text


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[FlakyLog]:
    db = SqliteDatabase(tmp_path / "catchup.sqlite", 5.0)
    await db.open()
    try:
        yield FlakyLog(db)
    finally:
        await db.close()


@pytest.fixture
async def harness(log: FlakyLog) -> AsyncIterator[Harness]:
    h = Harness(log, {CID, OTHER})
    try:
        yield h
    finally:
        await h.catchup.close()


def test_events_other_than_new_messages_pass_straight_through(harness: Harness) -> None:
    presence = Event(b"{}", "presence", users=(1, 2))
    elsewhere = Event(b"{}", "conversation.updated", conversations=(999,))
    unsequenced = Event(b"{}", MESSAGE_NEW, conversations=(999,), seq=0)
    for delivery in (presence, elsewhere, unsequenced):
        harness.catchup.on_event(delivery)
    assert harness.delivered == [presence, elsewhere, unsequenced]


def test_a_message_to_a_conversation_without_local_members_is_dropped(harness: Harness) -> None:
    harness.catchup.on_event(message(1, cid=999))
    assert harness.delivered == []


def test_consecutive_messages_are_delivered_at_once(harness: Harness) -> None:
    for seq in (1, 2, 3):
        harness.catchup.on_event(message(seq))
        assert harness.seqs() == list(range(1, seq + 1))
    assert harness.log.history_calls == 0


def test_the_first_message_seen_is_delivered_without_a_fill(harness: Harness) -> None:
    """Nothing tells this instance where delivery started: no gap to fill."""
    harness.catchup.on_event(message(40))
    assert harness.seqs() == [40]
    assert harness.log.history_calls == 0


async def test_a_gap_is_filled_from_the_store_in_order_before_the_message_that_revealed_it(harness: Harness) -> None:
    stored = await harness.store(5)
    harness.catchup.on_event(message(1))
    revealing = message(5)
    harness.catchup.on_event(revealing)
    assert harness.seqs() == [1]  # 5 waits for the fill
    await harness.settle()
    assert harness.seqs() == [1, 2, 3, 4, 5]
    assert [text_of(d) for d in harness.delivered[1:4]] == [r.text for r in stored[1:4]]
    assert harness.delivered[4] is revealing
    assert harness.metrics.registry.get_sample_value("hubbub_gap_filled_messages_total") == 3


async def test_a_message_already_delivered_by_a_fill_is_not_delivered_again(harness: Harness) -> None:
    await harness.store(5)
    harness.catchup.on_event(message(1))
    harness.catchup.on_event(message(5))
    await harness.settle()
    for late in (3, 2, 5, 1):  # the broker's own copies, late or repeated
        harness.catchup.on_event(message(late))
    assert harness.seqs() == [1, 2, 3, 4, 5]


async def test_messages_arriving_during_a_fill_wait_for_it_and_keep_their_order(harness: Harness) -> None:
    await harness.store(8)
    harness.catchup.on_event(message(1))
    for seq in (4, 5, 7, 6, 8):
        harness.catchup.on_event(message(seq))
    assert harness.seqs() == [1]
    await harness.settle()
    assert harness.seqs() == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_a_fill_larger_than_a_page_reads_every_page(harness: Harness) -> None:
    total = 2 * FILL_PAGE + 50
    await harness.store(total)
    harness.catchup.on_event(message(1))
    harness.catchup.on_event(message(total))
    await harness.settle()
    assert harness.seqs() == list(range(1, total + 1))
    assert harness.log.history_calls == 3


async def test_a_gap_in_one_conversation_does_not_hold_another(harness: Harness) -> None:
    await harness.store(4)
    harness.catchup.on_event(message(1))
    harness.catchup.on_event(message(4))
    harness.catchup.on_event(message(1, cid=OTHER))
    assert harness.seqs(OTHER) == [1]
    await harness.settle()
    assert harness.seqs() == [1, 2, 3, 4]


async def test_a_seq_the_store_never_had_does_not_hold_the_conversation(harness: Harness) -> None:
    # Seqs 1..5 stored; 6 was taken by an insert that failed (MongoDB leaves it unused).
    await harness.store(5)
    harness.catchup.on_event(message(5))
    harness.catchup.on_event(message(7))
    await harness.settle()
    assert harness.seqs() == [5, 7]
    assert harness.log.history_calls == 1  # one fill, not one per retry of the same gap
    harness.catchup.on_event(message(6))  # a late one still arrives
    assert harness.seqs() == [5, 7, 6]


async def test_a_failed_fill_gives_the_range_up_instead_of_holding_the_conversation(harness: Harness) -> None:
    await harness.store(8)
    harness.catchup.on_event(message(1))
    harness.log.fail_history = True
    harness.catchup.on_event(message(5))
    harness.catchup.on_event(message(6))
    await harness.settle()
    assert harness.seqs() == [1, 5, 6]  # clients see the gap by seq and fill it themselves
    harness.catchup.on_event(message(7))
    assert harness.seqs() == [1, 5, 6, 7]  # no new fill for the range given up
    assert harness.log.history_calls == 1

    harness.log.fail_history = False  # the store is back: the next gap is filled again
    await harness.store(2)  # seqs 9 and 10
    harness.catchup.on_event(message(10))
    await harness.settle()
    assert harness.seqs() == [1, 5, 6, 7, 8, 9, 10]


async def test_resync_after_a_reconnect_fills_what_was_missed(harness: Harness) -> None:
    await harness.store(4)
    await harness.store(2, cid=OTHER)
    harness.catchup.on_event(message(1))
    harness.catchup.on_event(message(1, cid=OTHER))
    harness.catchup.on_resync(None)
    await harness.settle()
    assert harness.seqs() == [1, 2, 3, 4]
    assert harness.seqs(OTHER) == [1, 2]
    harness.catchup.on_event(message(3))  # the broker's late copy
    assert harness.seqs() == [1, 2, 3, 4]


async def test_resync_with_nothing_missed_delivers_nothing(harness: Harness) -> None:
    await harness.store(2)
    harness.catchup.on_event(message(1))
    harness.catchup.on_event(message(2))
    harness.catchup.on_resync(None)
    await harness.settle()
    assert harness.seqs() == [1, 2]
    assert harness.log.history_calls == 0


async def test_a_new_subscription_starts_at_the_stores_newest_seq(harness: Harness) -> None:
    await harness.store(6)
    harness.catchup.on_resync([CID])
    await harness.settle()
    assert harness.delivered == []  # history before the subscription is not pushed
    harness.catchup.on_event(message(7))  # the next one follows at once, no fill
    assert harness.seqs() == [7]
    await harness.store(2)  # seqs 7 and 8 in the store
    harness.catchup.on_event(message(9))
    await harness.settle()
    assert harness.seqs() == [7, 8, 9]


async def test_a_failed_resync_changes_nothing(harness: Harness) -> None:
    await harness.store(3)
    harness.catchup.on_event(message(1))
    harness.log.fail_heads = True
    harness.catchup.on_resync(None)
    await harness.settle()
    assert harness.seqs() == [1]
    harness.catchup.on_event(message(2))
    assert harness.seqs() == [1, 2]


async def test_resync_skips_conversations_without_local_members(harness: Harness) -> None:
    await harness.store(3)
    harness.catchup.on_event(message(1))
    harness.local.discard(CID)
    harness.catchup.on_resync(None)
    await harness.settle()
    assert harness.seqs() == [1]
    assert harness.log.history_calls == 0


async def test_a_join_sets_where_delivery_starts(harness: Harness) -> None:
    await harness.store(5)
    harness.catchup.on_membership(MembershipChange(CID, (3,), joined=True, since_seq=3))
    assert harness.registry.routing == [("join", (3,), CID)]
    assert harness.delivered == []  # a membership change is routing, never shown
    harness.catchup.on_event(message(5))
    await harness.settle()
    assert harness.seqs() == [4, 5]  # 4 was sent after the join; 1-3 before it


async def test_a_join_does_not_move_a_conversation_already_tracked(harness: Harness) -> None:
    await harness.store(4)
    harness.catchup.on_event(message(1))
    harness.catchup.on_membership(MembershipChange(CID, (3,), joined=True, since_seq=3))
    harness.catchup.on_event(message(4))
    await harness.settle()
    assert harness.seqs() == [1, 2, 3, 4]


async def test_a_join_that_routes_nothing_here_tracks_nothing(harness: Harness) -> None:
    # The joiner has no connection on this instance: the registry routes nothing,
    # so the conversation's first message here is delivered without a fill.
    await harness.store(5)
    harness.catchup.on_membership(MembershipChange(999, (3,), joined=True, since_seq=2))
    harness.local.add(999)
    harness.catchup.on_event(message(5, cid=999))
    assert harness.seqs(999) == [5]
    assert harness.log.history_calls == 0


def test_a_leave_is_handed_to_the_registry_and_delivers_nothing(harness: Harness) -> None:
    harness.catchup.on_event(message(1))
    harness.catchup.on_membership(MembershipChange(CID, (3, 4), joined=False))
    assert harness.registry.routing == [("leave", (3, 4), CID)]
    assert harness.seqs() == [1]


async def test_forgetting_a_conversation_without_local_members_starts_it_afresh(harness: Harness) -> None:
    await harness.store(5)
    harness.catchup.on_event(message(1))
    harness.local.discard(CID)
    harness.catchup.forget([CID])  # the registry's last local member went
    harness.local.add(CID)
    harness.catchup.on_event(message(5))  # no memory of 1: no gap to fill
    assert harness.seqs() == [1, 5]
    assert harness.log.history_calls == 0


def test_recent_seqs_stay_deduplicated_past_the_window_trim(harness: Harness) -> None:
    last = 3 * SEEN_WINDOW
    for seq in range(1, last + 1):
        harness.catchup.on_event(message(seq))
    assert harness.seqs() == list(range(1, last + 1))
    for seq in range(last - SEEN_WINDOW + 1, last + 1):
        harness.catchup.on_event(message(seq))
    assert len(harness.delivered) == last
