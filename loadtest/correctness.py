"""Lost, duplicated and out-of-order deliveries, checked against the publishers' acks.

Each subscriber keeps, per conversation, the highest seq it saw and the seqs
it skipped over (``Conn.last`` / ``Conn.missing``); a skipped seq that arrives
later is out of order, one that arrives again is a duplicate. Every
conversation starts empty (rooms are created for the run), so what a
subscriber received is ``1..last`` minus what is still missing. A message is
lost for a subscriber when it was acked to its publisher but not received.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hubbub.loadtest.conn import Conn


@dataclass
class ConversationCheck:
    acked: int = 0
    subscribers: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unacked_received: int = 0


@dataclass
class Correctness:
    deliveries: int = 0
    expected_deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unacked_deliveries: int = 0
    """Deliveries of messages whose ack never came (sent just before a timeout, or never stored)."""
    per_conversation: dict[int, ConversationCheck] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_order == 0

    def as_dict(self, with_conversations: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "deliveries": self.deliveries,
            "expected_deliveries": self.expected_deliveries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "unacked_deliveries": self.unacked_deliveries,
        }
        if with_conversations:
            out["per_conversation"] = {str(k): vars(v) for k, v in sorted(self.per_conversation.items())}
        return out


def check(subscribers: Sequence[tuple[Conn, Sequence[int]]], acked: dict[int, list[int]]) -> Correctness:
    """``subscribers``: each connection with the conversations it should receive;
    ``acked``: the seqs acked per conversation."""
    result = Correctness()
    sorted_acks = {c: sorted(set(seqs)) for c, seqs in acked.items()}
    for conn, conversations in subscribers:
        result.deliveries += conn.deliveries
        for c in conversations:
            check_one = result.per_conversation.setdefault(c, ConversationCheck())
            acks = sorted_acks.get(c, [])
            acked_set_size = len(acks)
            last = conn.last.get(c, 0)
            missing = conn.missing.get(c, set())
            lost = acked_set_size - bisect_right(acks, last)
            if missing:
                ack_set = set(acks)
                lost += sum(1 for seq in missing if seq in ack_set)
            received = last - len(missing)
            check_one.acked = acked_set_size
            check_one.subscribers += 1
            check_one.expected += acked_set_size
            check_one.received += received
            check_one.lost += lost
            check_one.duplicated += conn.duplicates.get(c, 0)
            check_one.out_of_order += conn.late.get(c, 0)
            check_one.unacked_received += received - (acked_set_size - lost)
    for one in result.per_conversation.values():
        result.expected_deliveries += one.expected
        result.lost += one.lost
        result.duplicated += one.duplicated
        result.out_of_order += one.out_of_order
        result.unacked_deliveries += one.unacked_received
    return result
