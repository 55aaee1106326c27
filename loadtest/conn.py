"""A load-test connection: the delivery hot path and request/reply bookkeeping.

Every delivery of every target is a text frame that starts with a fixed
prefix (``Dialect.delivery_prefix``) and carries, in this order, the keys
``"conversation_id":``, ``"seq":`` and ``"text":"``, the text beginning with
the 19-digit ``time.monotonic_ns()`` of its send. Hubbub's ``message.new``
has that shape because msgspec encodes struct fields in declaration order
(protocol/frames.py ``Message``); the reference peers emit the same keys in
the same order. ``Conn.on_text`` finds them with one regular-expression search and never
JSON-decodes a delivery. Every other frame goes to the dialect.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from array import array
from collections.abc import Callable
from time import monotonic_ns
from typing import Protocol

from hubbub.loadtest.wsclient import Buffer, WsClient

STAMP_DIGITS = 19
"""Width of the send timestamp at the start of every message text (zero-padded ns)."""


class Dialect(Protocol):
    """What a connection needs from its target's protocol."""

    @property
    def subprotocol(self) -> str | None: ...

    @property
    def delivery_prefix(self) -> bytes: ...

    def control(self, conn: Conn, buf: Buffer, start: int, end: int) -> None:
        """Handle a frame that is not a delivery (replies, other events, keepalives)."""


class Window(Protocol):
    """Closed-loop bookkeeping: told of each delivery of each message."""

    def delivered(self, key: int) -> None: ...


DELIVERY_KEYS = re.compile(rb'"conversation_id":([^,]*),.*?"seq":([^,]*),.*?"text":"(.{%d})' % STAMP_DIGITS, re.S)
"""A delivery's conversation, seq and send stamp, in one search: five ``bytes.find``
calls with start and end (each parsing its arguments) cost about a third more per
delivery (BENCHMARKS.md, "One instance's (c), per delivery and per send")."""


def stamp_text(stamp_ns: int, size: int) -> bytes:
    """A message text of ``size`` bytes starting with the send timestamp."""
    head = b"%019d " % stamp_ns
    return head + b"x" * max(0, size - len(head))


def message_key(conversation: int, seq: int) -> int:
    """One int per (conversation, seq), cheaper to hash than a tuple."""
    return (conversation << 32) | seq


class Conn(WsClient):
    """One connection of the run: a subscriber, a publisher or an idle one."""

    _ids = itertools.count(1)

    def __init__(
        self,
        host: str,
        port: int,
        resource: str,
        dialect: Dialect,
        latencies: array[int] | None = None,
        counting: bool = True,
    ) -> None:
        super().__init__(host, port, resource, dialect.subprotocol)
        self.dialect = dialect
        self.prefix = dialect.delivery_prefix
        self.counting = counting
        """Subscribers count deliveries; a publisher only counts its own echoes."""
        self._lat_append = (latencies if latencies is not None else array("q")).append
        self.now = 0
        self.last: dict[int, int] = {}
        """Highest seq seen per conversation."""
        self.missing: dict[int, set[int]] = {}
        """Seqs skipped over per conversation (a gap), removed again if they arrive late."""
        self.deliveries = 0
        self.duplicates: dict[int, int] = {}
        self.late: dict[int, int] = {}
        """Per conversation: deliveries seen twice, and skipped seqs that came later."""
        self.echoes = 0
        self.other_frames = 0
        self.window: Window | None = None
        self.pending: dict[int | str, asyncio.Future[tuple[bool, bytes]]] = {}
        self.early: dict[str, tuple[bool, bytes]] = {}
        """Named handshake steps (e.g. Engine.IO's open packet) that came before anyone waited."""
        self.on_reply: Callable[[Conn, int | str, bool, bytes], None] | None = None
        """Replies nobody awaits (publishers' acks) go here."""
        self.on_lost: Callable[[Conn], None] | None = None

    # -- the hot path --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.now = monotonic_ns()
        if self._handshake is None:
            self.feed(data)
        else:
            super().data_received(data)

    def on_text(self, buf: Buffer, start: int, end: int) -> None:
        if not buf.startswith(self.prefix, start, end):
            self.dialect.control(self, buf, start, end)
            return
        if not self.counting:
            self.echoes += 1
            return
        keys = DELIVERY_KEYS.search(buf, start, end)
        if keys is None:
            raise ValueError(f"a delivery without conversation_id, seq and a stamped text: {bytes(buf[start:end])!r}")
        conversation_key, seq_key, stamp = keys.groups()
        conversation = int(conversation_key)
        seq = int(seq_key)
        self._lat_append(self.now - int(stamp))
        self.deliveries += 1
        last = self.last.get(conversation, 0)
        if seq == last + 1:
            self.last[conversation] = seq
        else:
            self._out_of_line(conversation, seq, last)
        if self.window is not None:
            self.window.delivered((conversation << 32) | seq)

    def _out_of_line(self, conversation: int, seq: int, last: int) -> None:
        if seq > last:
            self.missing.setdefault(conversation, set()).update(range(last + 1, seq))
            self.last[conversation] = seq
            return
        missing = self.missing.get(conversation)
        if missing is not None and seq in missing:
            missing.discard(seq)
            self.late[conversation] = self.late.get(conversation, 0) + 1
        else:
            self.duplicates[conversation] = self.duplicates.get(conversation, 0) + 1

    # -- requests ------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def expect(self, key: int | str) -> asyncio.Future[tuple[bool, bytes]]:
        """A future for the reply (or handshake step) named ``key``."""
        future: asyncio.Future[tuple[bool, bytes]] = asyncio.get_running_loop().create_future()
        if isinstance(key, str) and key in self.early:
            future.set_result(self.early.pop(key))
        else:
            self.pending[key] = future
        return future

    async def call(self, payload: bytes, request_id: int | str, timeout: float) -> tuple[bool, bytes]:
        """Send ``payload`` and wait for the reply to ``request_id``: (ok, body)."""
        future = self.expect(request_id)
        self.send_text(payload)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self.pending.pop(request_id, None)

    def resolve(self, key: int | str, ok: bool, body: bytes) -> None:
        future = self.pending.pop(key, None)
        if future is not None:
            if not future.done():
                future.set_result((ok, body))
        elif isinstance(key, str):
            self.early[key] = (ok, body)
        elif self.on_reply is not None:
            self.on_reply(self, key, ok, body)

    def on_closed(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"connection closed ({self.close_code})"))
        self.pending.clear()
        if self.on_lost is not None:
            self.on_lost(self)
