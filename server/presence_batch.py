"""Presence changes coalesced per connection into ``presence.batch`` frames.

When a room's members all come online at once (a deploy, a network blip),
each of N members hears N - 1 changes: N²/2 frames, each a syscall-sized
write, a wake-up and a parse on the client. Instead, a connection's changes
wait in its pending list for at most ``presence_batch_seconds`` (one timer
for the whole process, started by the first change after a flush) and go
out as one frame, in the order they were heard. Connections of one room
usually pend the very same changes in the same order, so a flush frames
each distinct list once and writes those bytes to all of them.

Nothing is merged or dropped: every change a connection was addressed to
reaches it once (the registry's fan-out already sends each connection a
change once however many conversations it shares), so a user who comes and
goes within one window appears twice, in order. A connection that leaves
the registry before the flush loses its pending changes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import msgspec

from hubbub.protocol import frames
from hubbub.protocol.codec import websocket_text_frame
from hubbub.server.metrics import Metrics


class _Writer(Protocol):
    def send_frame(self, frame: bytes) -> None: ...


class Recipient(Protocol):
    """A connection as the registry holds it (server.registry.Recipient)."""

    @property
    def outbound(self) -> _Writer: ...


PRESENCE_CHANGE = frames.tag_of(frames.PresenceChanged)
"""The broker events this module takes over from the registry's fan-out."""
PRESENCE_BATCH = frames.tag_of(frames.PresenceBatch)
_CHANGE_PREFIX = b'{"type":"presence","presence":'
_BATCH_PREFIX = b'{"type":"presence.batch","presence":['


def change_item(payload: bytes) -> bytes:
    """The ``Presence`` object's JSON inside an encoded ``PresenceChanged`` frame.

    msgspec writes the tag first and no whitespace, so the object is the bytes
    between the prefix and the final brace; anything else is decoded."""
    if payload.startswith(_CHANGE_PREFIX) and payload.endswith(b"}"):
        return payload[len(_CHANGE_PREFIX) : -1]
    changed = msgspec.json.decode(payload, type=frames.PresenceChanged)  # framed differently: never by this server
    return msgspec.json.encode(changed.presence)


def batch_payload(items: Iterable[bytes]) -> bytes:
    """A ``presence.batch`` frame's JSON from the changes' ``Presence`` JSON, in order."""
    return _BATCH_PREFIX + b",".join(items) + b"]}"


class PresenceCoalescer:
    def __init__(self, window_seconds: float, metrics: Metrics) -> None:
        self.window_seconds = window_seconds
        self._metrics = metrics
        self._pending: dict[Recipient, list[bytes]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, recipients: Iterable[Recipient], item: bytes) -> None:
        """One change (``change_item``) for these connections, each once."""
        if self.window_seconds <= 0:
            frame = websocket_text_frame(batch_payload((item,)))
            count = 0
            for recipient in recipients:
                recipient.outbound.send_frame(frame)
                count += 1
            self._count(count)
            return
        pending = self._pending
        for recipient in recipients:
            items = pending.get(recipient)
            if items is None:
                pending[recipient] = [item]
            else:
                items.append(item)
        if pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_seconds, self.flush)

    def discard(self, recipient: Recipient) -> None:
        """The connection left the registry: nothing more is written to it."""
        self._pending.pop(recipient, None)

    def flush(self) -> None:
        """Write every connection's pending changes as one frame each."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        # Keyed by the identities of the items (alive in `pending` throughout):
        # the members of one room pend the same change objects in the same order.
        framed: dict[tuple[int, ...], bytes] = {}
        for recipient, items in pending.items():
            key = tuple(map(id, items))
            frame = framed.get(key)
            if frame is None:
                frame = framed[key] = websocket_text_frame(batch_payload(items))
            recipient.outbound.send_frame(frame)
        self._count(len(pending))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()

    def _count(self, count: int) -> None:
        if count:
            self._metrics.deliveries.inc(count)
            self._metrics.frames_out_by[PRESENCE_BATCH].inc(count)
