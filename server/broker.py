"""The broker: how an event reaches every connection that should see it.

An event is published once as a Delivery, addressed to conversations (their
members) and/or users (all their devices). The in-process broker hands it
straight to the local registry; the Redis broker (server/broker_redis.py)
also carries it to the other instances, each of which delivers to its own
connections. Membership changes ride along, so every instance updates its
routing before it delivers the event that announces the change.

The registry tells the broker which topics this instance needs (a
conversation with a local member, a user with a local connection) when the
first local interest appears and when the last one goes, so an instance
receives only the traffic of its own connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from msgspec import Struct

from server.metrics import Metrics


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
    seq: int = 0
    """For message.new: the message's seq in ``conversations[0]``, for gap
    detection. With ``joined``: the conversation's newest seq at the join."""


DeliveryHandler = Callable[[Delivery], None]
ResyncHandler = Callable[[Sequence[int] | None], None]


class Broker(Protocol):
    async def start(self, on_delivery: DeliveryHandler, on_resync: ResyncHandler) -> None:
        """Begin routing. ``on_resync(ids)`` runs when deliveries may have been
        missed: for every conversation (None) after a reconnect, or for the
        conversations whose subscription just took effect."""

    async def close(self) -> None: ...

    def publish(self, delivery: Delivery) -> None:
        """Deliver locally now and route to other instances; never blocks.

        Deliveries leave in publish order. Routing to other instances is
        at-most-once: the message store, not the broker, is the truth.
        """

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        """This instance now has local interest in these topics."""

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        """This instance no longer has local interest in these topics."""

    def status(self) -> str | None:
        """None when healthy; otherwise why routing between instances is degraded."""

    def topics(self) -> dict[str, list[int]]:
        """The conversations and users this broker routes to this instance (debug view)."""


class InProcessBroker:
    """A single instance: every publish is delivered locally, at once."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._on_delivery: DeliveryHandler | None = None
        self._metrics = metrics

    async def start(self, on_delivery: DeliveryHandler, on_resync: ResyncHandler) -> None:
        self._on_delivery = on_delivery
        if self._metrics is not None:
            # Routing works (there is nowhere else to route to), so the gauge says
            # so: 1 rather than absent, and one alert (== 0) fits every deployment.
            self._metrics.broker_healthy.set(1)

    async def close(self) -> None:
        self._on_delivery = None

    def publish(self, delivery: Delivery) -> None:
        if self._on_delivery is not None:
            self._on_delivery(delivery)

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        pass

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        pass

    def status(self) -> str | None:
        return None

    def topics(self) -> dict[str, list[int]]:
        return {"conversations": [], "users": []}
