"""The broker: how what one instance publishes reaches every instance that
has a connection it concerns.

What travels (both msgspec Structs, array-like, so the Redis envelope stays
a few bytes of framing around the event's JSON):

- an ``Event``: one server frame's JSON, encoded once, with its tag and
  its addressing (members of conversations, all devices of users). A new
  message carries its ``seq`` for gap detection; every other event has 0.
- a ``MembershipChange``: users' connections start (joined) or stop (left)
  receiving a conversation. It is its own kind because it is not shown to
  anyone: it changes routing. A publisher publishes it *before* the event
  that announces it, to the same users, so every instance routes the
  conversation before (or stops routing it after) that announcement.

The path of one publish, by function call:

1. ``Broker.publish(event)`` / ``Broker.publish_membership(change)`` on the
   publishing instance hands it at once to the local ``BrokerEventHandler``
   (no round trip through Redis), and the Redis broker
   (server/broker_redis.py) also sends it to the topics of its addressing;
2. on every other instance subscribed to one of those topics, the Redis
   subscriber calls that instance's ``BrokerEventHandler.on_event`` /
   ``on_membership``;
3. the handler is ``server.catchup.Catchup`` (gap-filling, in seq order),
   which calls ``server.registry.Registry.deliver`` (one frame to each local
   connection) or ``Registry.join`` / ``Registry.leave``.

Ordering decided here: **publish order is delivery order**, on this
instance (synchronous) and on every other one (one publisher task, one
write per event-loop turn on one connection, Redis keeps a channel's order). That is what
makes "membership change before the event that announces it" hold. Seq
order across instances is not the broker's job: Catchup restores it.

The registry tells the broker which topics this instance needs (``watch``:
a conversation's first local member, a user's first local connection;
``unwatch``: the last ones), so an instance receives only the traffic of
its own connections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from msgspec import Struct

from hubbub.protocol import codec, frames
from hubbub.server.metrics import Metrics

MESSAGE_NEW = frames.tag_of(frames.MessageNew)
"""The tag of the one event that carries a seq."""


class Event(Struct, array_like=True, frozen=True, tag=1):
    """One server frame, encoded once, and who gets it."""

    payload: bytes
    """The frame's JSON, the same bytes for every recipient."""
    frame_type: str
    """The frame's tag (``frames.tag_of``), for metrics; never parsed from the payload."""
    conversations: tuple[int, ...] = ()
    """Deliver to local connections of members of these conversations."""
    users: tuple[int, ...] = ()
    """Deliver to local connections of these users."""
    seq: int = 0
    """A new message's seq in ``conversations[0]`` (gap detection); 0 for
    every other event and for a message announced again (not gap-tracked)."""
    except_user: int = 0
    """Not to this user's connections (``typing``: not shown to the typist); 0: nobody left out.
    Last, with a default: an instance that does not know it decodes the envelope all the same."""


class MembershipChange(Struct, array_like=True, frozen=True, tag=2):
    """Routing: these users' connections start or stop receiving a conversation.

    Published to the users' topics just before the event that announces it
    (``conversation.added``, ``conversation.removed``)."""

    conversation_id: int
    user_ids: tuple[int, ...]
    joined: bool
    """True: route the conversation to the users' connections; False: stop."""
    since_seq: int = 0
    """Joined only: the conversation's newest seq when they joined. An
    instance that starts routing the conversation with this change delivers
    its messages from the next seq on (and fills from the store up to it)."""


SESSIONS_ENDED = "sessions.ended"
"""The frame type of a broker-only event: close a user's connections of older token generations."""


class SessionsEnded(Struct, frozen=True):
    """The payload of a ``sessions.ended`` event; never sent to a client."""

    user_id: int
    generation: int
    """Connections whose session is of an older generation are closed (``CloseCode.SESSION_ENDED``)."""
    disabled: bool = False
    """The account was disabled (issue 15): closed with ``CloseCode.ACCOUNT_DISABLED`` instead.
    Last, with a default: an instance that does not know it closes them all the same (4003)."""


def sessions_ended_event(user_id: int, generation: int, *, disabled: bool = False) -> Event:
    """The event that closes ``user_id``'s connections of generations below ``generation``
    on every instance: addressed to the user's topic like any event to their devices."""
    return Event(codec.encode(SessionsEnded(user_id, generation, disabled)), SESSIONS_ENDED, users=(user_id,))


def event_of(
    frame: frames.AnyEvent, *, conversations: Sequence[int] = (), users: Sequence[int] = (), except_user: int = 0
) -> Event:
    """The Event of one server frame: encoded once, tagged from its type."""
    return Event(
        codec.encode(frame), frames.tag_of(type(frame)), tuple(conversations), tuple(users), except_user=except_user
    )


class BrokerEventHandler(Protocol):
    """What a broker delivers to: one per instance (server.catchup.Catchup)."""

    def on_event(self, event: Event) -> None:
        """An event published here or on another instance, in publish order."""

    def on_membership(self, change: MembershipChange) -> None:
        """A routing change, before the event that announces it."""

    def on_resync(self, conversation_ids: Sequence[int] | None) -> None:
        """Events may have been missed: of every conversation (None, after a
        reconnect), or of the conversations whose subscription just took effect."""


class Broker(Protocol):
    async def start(self, handler: BrokerEventHandler) -> None:
        """Begin routing to ``handler``."""

    async def close(self) -> None: ...

    def publish(self, event: Event) -> None:
        """Hand to the local handler now and route to other instances; never blocks.

        Events and membership changes leave in publish order. Routing to
        other instances is at-most-once: the message store, not the broker,
        is the truth.
        """

    def publish_membership(self, change: MembershipChange) -> None:
        """As ``publish``, to the topics of ``change.user_ids``."""

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        """This instance now has local interest in these topics."""

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        """This instance no longer has local interest in these topics."""

    def status(self) -> str | None:
        """None when healthy; otherwise why routing between instances is degraded."""

    def topics(self) -> dict[str, list[int]]:
        """The conversations and users this broker routes to this instance (debug view)."""


class InProcessBroker:
    """A single instance: every publish is handed to the local handler, at once."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._handler: BrokerEventHandler | None = None
        self._metrics = metrics

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        if self._metrics is not None:
            # Routing works (there is nowhere else to route to), so the gauge says
            # so: 1 rather than absent, and one alert (== 0) fits every deployment.
            self._metrics.broker_healthy.set(1)

    async def close(self) -> None:
        self._handler = None

    def publish(self, event: Event) -> None:
        if self._handler is not None:
            self._handler.on_event(event)

    def publish_membership(self, change: MembershipChange) -> None:
        if self._handler is not None:
            self._handler.on_membership(change)

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        pass

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        pass

    def status(self) -> str | None:
        return None

    def topics(self) -> dict[str, list[int]]:
        return {"conversations": [], "users": []}


_: type[Broker] = InProcessBroker
