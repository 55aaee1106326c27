"""The publishing side of a run: sends on an open or closed loop, acks, history reads.

Open loop: message i is due at t0 + i/rate, round-robin over the publishers
(each cycling over its rooms), and is stamped with its due time, so a late
send shows up as latency. Closed loop: at most ``inflight`` messages are
outstanding end to end (``Window``); each is stamped when sent.
"""

from __future__ import annotations

import asyncio
import collections
from array import array
from time import monotonic_ns

from hubbub.loadtest.conn import Conn, message_key, stamp_text
from hubbub.loadtest.scenarios import ConnSpec, Plan, Scenario
from hubbub.loadtest.targets import Target, error_code

STALL_TIMEOUT_S = 10.0
"""Closed loop: give up when no message completes for this long with the window full."""


class Window:
    """Closed loop: a message completes when it is acked and every subscriber of its room has it."""

    def __init__(self, room_size: dict[int, int]) -> None:
        self.room_size = room_size
        self.outstanding: dict[int, int] = {}
        """key -> deliveries so far (before the ack), or deliveries - room size (after it)."""
        self.inflight = 0
        self.completed = 0
        self.wakeup = asyncio.Event()

    def delivered(self, key: int) -> None:
        count = self.outstanding.get(key, 0) + 1
        if count == 0:
            del self.outstanding[key]
            self._done()
        else:
            self.outstanding[key] = count

    def acked(self, conversation: int, seq: int) -> None:
        key = message_key(conversation, seq)
        count = self.outstanding.pop(key, 0) - self.room_size.get(conversation, 0)
        if count == 0:
            self._done()
        else:
            self.outstanding[key] = count

    def failed(self) -> None:
        self._done()

    def _done(self) -> None:
        self.inflight -= 1
        self.completed += 1
        self.wakeup.set()


class Load:
    def __init__(
        self,
        scenario: Scenario,
        target: Target,
        plan: Plan,
        publishers: list[tuple[Conn, ConnSpec]],
        room_size: dict[int, int],
    ) -> None:
        self.s = scenario
        self.target = target
        self.plan = plan
        self.publishers = publishers
        self.room_size = room_size
        """Subscribers ready per conversation."""
        self.window = Window(room_size) if scenario.max_rate else None
        self.pending_sends: dict[int, tuple[int, int, int]] = {}
        """request id -> (conversation, seq, send time ns)."""
        self.pending_history: dict[int, int] = {}
        self.acked: dict[int, list[int]] = {}
        self.acked_count = 0
        self.sent = 0
        self.next_seq: dict[int, int] = {}
        self.send_errors: collections.Counter[str] = collections.Counter()
        self.history_errors: collections.Counter[str] = collections.Counter()
        self.ack_latencies: array[int] = array("q")
        self.history_latencies: array[int] = array("q")
        self.stalled = False
        for conn, _ in publishers:
            conn.on_reply = self.on_reply

    @property
    def outstanding(self) -> bool:
        return bool(self.pending_sends or self.pending_history)

    def expected_deliveries(self) -> int:
        """Deliveries the subscribers should have for the messages acked so far."""
        return sum(len(seqs) * self.room_size.get(c, 0) for c, seqs in self.acked.items())

    async def run(self, t0: int, end: int) -> None:
        """Send from ``t0`` (monotonic ns) until ``end``; history reads alongside."""
        readers = None
        if self.s.history_reads > 0 and self.target.history:
            readers = asyncio.ensure_future(self._history_loop(t0, end))
        try:
            if self.s.max_rate:
                await self._closed_loop(end)
            else:
                await self._open_loop(t0, end)
            if readers is not None:
                await readers
        finally:
            if readers is not None:
                readers.cancel()

    def on_reply(self, conn: Conn, key: int | str, ok: bool, body: bytes) -> None:
        now = monotonic_ns()
        if not isinstance(key, int):
            return
        record = self.pending_sends.pop(key, None)
        if record is None:
            started = self.pending_history.pop(key, None)
            if started is not None:
                self.history_latencies.append(now - started)
                if not ok:
                    self.history_errors[error_code(body)] += 1
            return
        conversation, seq, sent_ns = record
        self.ack_latencies.append(now - sent_ns)
        if ok:
            ref = self.target.ack_ref(body)
            if ref is not None:
                conversation, seq = ref
            self.acked.setdefault(conversation, []).append(seq)
            self.acked_count += 1
            if self.window is not None:
                self.window.acked(conversation, seq)
        else:
            self.send_errors[error_code(body)] += 1
            if self.window is not None:
                self.window.failed()

    def _send(self, i: int, stamp_ns: int) -> None:
        conn, spec = self.publishers[i % len(self.publishers)]
        room = self.plan.rooms[spec.rooms[(i // len(self.publishers)) % len(spec.rooms)]]
        conversation = room.streams[spec.index]
        seq = self.next_seq.get(conversation, 0) + 1
        self.next_seq[conversation] = seq
        request_id = conn.next_id()
        payload = self.target.encode_send(request_id, room, spec.index, seq, stamp_text(stamp_ns, self.s.size))
        self.pending_sends[request_id] = (conversation, seq, monotonic_ns())
        conn.send_text(payload)
        self.sent += 1

    async def _open_loop(self, t0: int, end: int) -> None:
        period = 1e9 / self.s.rate
        i = 0
        while True:
            now = monotonic_ns()
            due = t0 + int(i * period)
            if due >= end:
                break
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            while due <= now and due < end:
                self._send(i, due)  # stamped with its due time: a late send counts as latency
                i += 1
                due = t0 + int(i * period)
            await asyncio.sleep(0)

    async def _closed_loop(self, end: int) -> None:
        window = self.window
        if window is None:
            raise RuntimeError("closed-loop sending needs a window (a scenario with max_rate)")
        i = 0
        while monotonic_ns() < end:
            if window.inflight >= self.s.inflight:
                window.wakeup.clear()
                before = window.completed
                try:
                    await asyncio.wait_for(window.wakeup.wait(), STALL_TIMEOUT_S)
                except TimeoutError:
                    if window.completed == before:
                        self.stalled = True
                        break
                continue
            window.inflight += 1
            self._send(i, monotonic_ns())
            i += 1
            if i % 256 == 0:
                await asyncio.sleep(0)

    async def _history_loop(self, t0: int, end: int) -> None:
        period = 1e9 / self.s.history_reads
        i = 0
        pubs = self.publishers
        while True:
            due = t0 + int(i * period)
            if due >= end:
                break
            now = monotonic_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            conn, spec = pubs[i % len(pubs)]
            room = self.plan.rooms[spec.rooms[(i // len(pubs)) % len(spec.rooms)]]
            request_id = conn.next_id()
            self.pending_history[request_id] = monotonic_ns()
            conn.send_text(self.target.encode_history(request_id, room))
            i += 1
