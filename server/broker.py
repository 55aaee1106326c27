"""The broker: how an event reaches every connection that should see it.

An event is published once as a Delivery, addressed to conversations (their
members) and/or users (all their devices). The in-process broker hands it
straight to the local registry; the Redis broker (scale-out) carries the same
Delivery between instances, and each instance delivers to its own
connections. Membership changes ride along, so every instance updates its
routing before it delivers the event that announces the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from msgspec import Struct


class Delivery(Struct, array_like=True, frozen=True):
    payload: bytes
    """The event's JSON, encoded once for every recipient."""
    event_type: str
    conversations: tuple[int, ...] = ()
    """Deliver to local connections of members of these conversations."""
    users: tuple[int, ...] = ()
    """Deliver to local connections of these users."""
    joined: tuple[tuple[int, int], ...] = ()
    """(user_id, conversation_id) pairs: route the conversation to the user's connections first."""
    left: tuple[tuple[int, int], ...] = ()
    """(user_id, conversation_id) pairs: stop routing the conversation to the user's connections first."""


DeliveryHandler = Callable[[Delivery], None]


class Broker(Protocol):
    async def start(self, on_delivery: DeliveryHandler) -> None: ...

    async def close(self) -> None: ...

    def publish(self, delivery: Delivery) -> None:
        """Deliver locally now and route to other instances; never blocks.

        Deliveries leave in publish order. Routing to other instances is
        at-most-once: the message store, not the broker, is the truth.
        """

    def interest_added(self, conversation_ids: Iterable[int]) -> None:
        """The first local member of these conversations connected or joined."""

    def interest_removed(self, conversation_ids: Iterable[int]) -> None:
        """The last local member of these conversations left or disconnected."""

    def status(self) -> str | None:
        """None when healthy; otherwise a reason for /readyz."""


class InProcessBroker:
    """A single instance: every publish is delivered locally, at once."""

    def __init__(self) -> None:
        self._on_delivery: DeliveryHandler | None = None

    async def start(self, on_delivery: DeliveryHandler) -> None:
        self._on_delivery = on_delivery

    async def close(self) -> None:
        self._on_delivery = None

    def publish(self, delivery: Delivery) -> None:
        if self._on_delivery is not None:
            self._on_delivery(delivery)

    def interest_added(self, conversation_ids: Iterable[int]) -> None:
        pass

    def interest_removed(self, conversation_ids: Iterable[int]) -> None:
        pass

    def status(self) -> str | None:
        return None
