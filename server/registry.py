"""The local connection registry: which connections here belong to which users
and which conversations, and the fan-out that writes one event to all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from protocol.codec import websocket_text_frame
from server.broker import Broker, Delivery
from server.metrics import Metrics


class Recipient(Protocol):
    """What the registry needs of a connection."""

    user_id: int
    conversations: set[int]

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; never blocks, never changes the registry."""


class Registry:
    def __init__(self, broker: Broker, metrics: Metrics) -> None:
        self._broker = broker
        self._metrics = metrics
        self.by_user: dict[int, set[Recipient]] = {}
        self.by_conversation: dict[int, set[Recipient]] = {}
        self.on_unrouted: Callable[[list[int]], None] | None = None
        """Told of conversations whose last local member just went (the Hub forgets their catch-up state)."""

    def has_local_members(self, conversation_id: int) -> bool:
        return conversation_id in self.by_conversation

    def connections_of(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def add(self, recipient: Recipient, conversation_ids: Iterable[int]) -> None:
        """Register an authenticated connection and route its conversations to it."""
        devices = self.by_user.get(recipient.user_id)
        if devices is None:
            devices = self.by_user[recipient.user_id] = set()
            self._broker.watch(users=(recipient.user_id,))
        devices.add(recipient)
        self._route(recipient, conversation_ids)

    def remove(self, recipient: Recipient) -> None:
        devices = self.by_user.get(recipient.user_id)
        if devices is None or recipient not in devices:
            return
        devices.discard(recipient)
        if not devices:
            del self.by_user[recipient.user_id]
            self._broker.unwatch(users=(recipient.user_id,))
        self._unroute(recipient, list(recipient.conversations))

    def _route(self, recipient: Recipient, conversation_ids: Iterable[int]) -> None:
        first: list[int] = []
        for cid in conversation_ids:
            members = self.by_conversation.get(cid)
            if members is None:
                members = self.by_conversation[cid] = set()
                first.append(cid)
            members.add(recipient)
            recipient.conversations.add(cid)
        if first:
            self._broker.watch(conversations=first)

    def _unroute(self, recipient: Recipient, conversation_ids: Iterable[int]) -> None:
        last: list[int] = []
        for cid in conversation_ids:
            recipient.conversations.discard(cid)
            members = self.by_conversation.get(cid)
            if members is None:
                continue
            members.discard(recipient)
            if not members:
                del self.by_conversation[cid]
                last.append(cid)
        if last:
            self._broker.unwatch(conversations=last)
            if self.on_unrouted is not None:
                self.on_unrouted(last)

    def deliver(self, delivery: Delivery) -> None:
        """Apply a Delivery from the broker to the connections of this process."""
        for user_id, cid in delivery.joined:
            for recipient in self.by_user.get(user_id, ()):
                self._route(recipient, (cid,))
        for user_id, cid in delivery.left:
            for recipient in self.by_user.get(user_id, ()):
                self._unroute(recipient, (cid,))

        targets: Iterable[Recipient]
        if len(delivery.conversations) == 1 and not delivery.users:
            # The hot path: a message into one conversation.
            targets = self.by_conversation.get(delivery.conversations[0], ())
        else:
            union: set[Recipient] = set()
            for cid in delivery.conversations:
                union.update(self.by_conversation.get(cid, ()))
            for uid in delivery.users:
                union.update(self.by_user.get(uid, ()))
            targets = union
        if not targets:
            return
        frame = websocket_text_frame(delivery.payload)
        count = 0
        # send_frame never touches the registry (a slow consumer is unregistered
        # later, when its connection task ends), so iterating the live set is safe.
        for recipient in targets:
            recipient.send_frame(frame)
            count += 1
        self._metrics.deliveries.inc(count)
        self._metrics.frames_out_by[delivery.event_type].inc(count)
