"""Publishing this process's new messages in seq order.

Stores assign seq inside the database, and with PostgreSQL or MongoDB two
concurrent appends to one conversation can come back in the other order
(seq 10's reply before seq 9's). Published as they come back, members would
see 10 before 9. The sequencer holds a completed message while any append
to the same conversation that was already in flight when it completed is
still running: only those can still produce a lower seq here. The wait is
bounded by those appends, so a steady stream of sends never starves it.
Seqs taken by other instances are not waited for; the delivery guarantee
(gap-fill by seq, server/catchup.py) covers those.

This is the first of the three places where delivery order is decided:
this process's new messages enter the broker in seq order per conversation
(here); the broker keeps publish order (server/broker.py); each receiving
instance delivers in seq order, filling gaps (server/catchup.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from hubbub.server.broker import MESSAGE_NEW, Broker, Event


class _Conversation:
    # Slots and a plain __init__ (not a dataclass with default factories): one
    # is made and dropped per send into a conversation with nothing in flight.
    __slots__ = ("held", "in_flight")

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        # (seq, barrier ticket, payload, what follows it): publishable once no ticket <= barrier is in flight.
        self.held: list[tuple[int, int, bytes, Sequence[Event]]] = []


class Sequencer:
    """Between the message log and ``Broker.publish``: one per process."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._tickets = itertools.count(1)
        self._conversations: dict[int, _Conversation] = {}

    def begin(self, conversation_id: int) -> int:
        """Call before the append; returns its ticket."""
        ticket = next(self._tickets)
        state = self._conversations.get(conversation_id)
        if state is None:
            state = self._conversations[conversation_id] = _Conversation()
        state.in_flight.add(ticket)
        return ticket

    def abort(self, conversation_id: int, ticket: int) -> None:
        """The append failed: it will produce no message."""
        self._finish(conversation_id, ticket)

    def complete(self, conversation_id: int, ticket: int, seq: int, payload: bytes, then: Sequence[Event] = ()) -> None:
        """The append stored ``seq`` (``payload``: its message.new frame); publish
        it, and whatever it held back, in seq order; ``then`` right after it
        (a reply's root update follows the reply)."""
        state = self._conversations[conversation_id]
        state.in_flight.discard(ticket)
        barrier = max(state.in_flight, default=0)
        heapq.heappush(state.held, (seq, barrier, payload, then))
        self._finish(conversation_id, None)

    def _finish(self, conversation_id: int, ticket: int | None) -> None:
        state = self._conversations[conversation_id]
        if ticket is not None:
            state.in_flight.discard(ticket)
        oldest_running = min(state.in_flight, default=None)
        while state.held and (oldest_running is None or state.held[0][1] < oldest_running):
            seq, _, payload, then = heapq.heappop(state.held)
            self._broker.publish(Event(payload, MESSAGE_NEW, (conversation_id,), (), seq))
            for event in then:
                self._broker.publish(event)
        if not state.in_flight and not state.held:
            del self._conversations[conversation_id]
