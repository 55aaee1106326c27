"""storage.threads: how a reply added or deleted changes its thread's root."""

from __future__ import annotations

import msgspec

from hubbub.storage.records import REPLIERS_KEPT, MessageRecord
from hubbub.storage.threads import with_reply, without_reply

ROOT = MessageRecord(id="root", conversation_id=1, seq=1, sender_id=1, text="root", client_msg_id="c0", ts=100, rev=1)


def reply(sender_id: int, ts: int, n: int = 0) -> MessageRecord:
    return MessageRecord(
        id=f"reply-{sender_id}-{ts}-{n}",
        conversation_id=1,
        seq=2 + n,
        sender_id=sender_id,
        text="re",
        client_msg_id=f"r{n}",
        ts=ts,
        rev=2 + n,
        thread_root_id="root",
    )


def test_a_first_reply_counts_and_names_its_sender() -> None:
    root = with_reply(ROOT, reply(2, 150))
    assert (root.reply_count, root.last_reply_ts, root.repliers) == (1, 150, (2,))
    # Only the thread state changes; rev is the store's to set.
    assert root == msgspec.structs.replace(ROOT, reply_count=1, last_reply_ts=150, repliers=(2,))


def test_repliers_are_distinct_and_newest_first() -> None:
    root = ROOT
    for n, sender in enumerate((2, 3, 2, 4, 3)):
        root = with_reply(root, reply(sender, 200 + n, n))
    assert root.repliers == (3, 4, 2)
    assert root.reply_count == 5


def test_repliers_are_capped() -> None:
    root = ROOT
    senders = list(range(10, 10 + REPLIERS_KEPT + 3))
    for n, sender in enumerate(senders):
        root = with_reply(root, reply(sender, 200 + n, n))
    assert root.repliers == tuple(reversed(senders))[:REPLIERS_KEPT]
    assert len(root.repliers) == REPLIERS_KEPT
    # A replier already kept moves to the front without growing the list.
    kept = root.repliers[-1]
    root = with_reply(root, reply(kept, 999, 99))
    assert root.repliers == (kept, *tuple(reversed(senders))[: REPLIERS_KEPT - 1])


def test_the_last_reply_time_is_the_latest() -> None:
    root = with_reply(ROOT, reply(2, 300))
    root = with_reply(root, reply(3, 250, 1))  # stored later with an earlier clock
    assert root.last_reply_ts == 300
    assert root.repliers == (3, 2)  # in the order the replies were stored
    root = with_reply(root, reply(4, 400, 2))
    assert root.last_reply_ts == 400


def test_a_deleted_reply_lowers_the_count_only() -> None:
    root = with_reply(with_reply(ROOT, reply(2, 150)), reply(3, 160, 1))
    less = without_reply(root)
    assert less == msgspec.structs.replace(root, reply_count=1)
    assert (less.last_reply_ts, less.repliers) == (160, (3, 2))


def test_the_count_never_goes_below_zero() -> None:
    assert without_reply(ROOT).reply_count == 0
    once = without_reply(with_reply(ROOT, reply(2, 150)))
    assert once.reply_count == 0
    assert without_reply(once).reply_count == 0
