"""The local connection registry: which connections here belong to which users
and which conversations, and the fan-out that writes one event to all of them.

The last step of delivery: ``server.catchup.Catchup`` (the broker's event
handler) calls ``Registry.deliver(event)``, which frames the event's JSON
once and calls ``send_frame`` of each recipient's ``outbound`` (its
connection) with the same bytes for every local connection it is
addressed to, in the order events arrive (each
connection's outbound buffer keeps that order on the wire). Routing
changes come as their own calls, ``join`` and ``leave`` (a MembershipChange
applied by Catchup before the event that announces it), never in the middle
of a fan-out.

Routing state doubles as a membership cache, on purpose: a connection's
``conversations`` holds exactly the conversations routed to it, which are
conversations its user is a member of, because routing changes only with
the membership changes themselves. Handlers may take a hit there as proof
of membership (``server.handlers.access.routed_here``); a miss is not proof
of the opposite (a join made on another instance may still be on its way),
so they ask the store.

The registry tells the broker the topics this instance needs (the first
local member of a conversation, a user's first local connection) and no
longer needs (the last ones), and tells Catchup which conversations lost
their last local member, so their catch-up state goes with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec

from hubbub.protocol.codec import websocket_text_frame
from hubbub.server.broker import SESSIONS_ENDED, Broker, Event, SessionsEnded
from hubbub.server.metrics import Metrics
from hubbub.server.presence_batch import PRESENCE_CHANGE, PresenceCoalescer, change_item


class Sender(Protocol):
    """Where a connection's frames are queued (server.connection.Connection)."""

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame; never blocks, never changes the registry."""


class Recipient(Protocol):
    """What the registry needs of a connection (server.session.Session)."""

    user_id: int
    conversations: set[int]
    """The conversations routed to this connection; only the registry changes it."""

    def end_session_before(self, generation: int, *, disabled: bool = False) -> bool:
        """Close the connection (``CloseCode.SESSION_ENDED``; ``ACCOUNT_DISABLED`` when
        ``disabled``) if its session is of an older token generation; whether it did."""

    @property
    def outbound(self) -> Sender:
        """Its socket's writer. The fan-out holds it beside the recipient and calls
        it directly: one object touched per recipient in the hot loop, not two (at
        5,000 connections the extra hop was measurable, BENCHMARKS.md)."""


class UnroutedListener(Protocol):
    """Told of conversations whose last local member just went (server.catchup.Catchup)."""

    def forget(self, conversation_ids: Sequence[int]) -> None: ...


class Registry:
    def __init__(self, broker: Broker, metrics: Metrics, *, presence_batch_seconds: float = 0.0) -> None:
        self._broker = broker
        self._metrics = metrics
        self.presence = PresenceCoalescer(presence_batch_seconds, metrics)
        """Presence changes wait here, per connection, to go out as one ``presence.batch``."""
        self.by_user: dict[int, set[Recipient]] = {}
        self.by_conversation: dict[int, dict[Recipient, Sender]] = {}
        """Each conversation's local recipients, with their writers."""
        self._unrouted: UnroutedListener | None = None

    def tell_unrouted(self, listener: UnroutedListener) -> None:
        """Who forgets per-conversation state when a conversation's last local
        member goes (set once by the wiring: Catchup, built after this registry)."""
        self._unrouted = listener

    # -- queries -------------------------------------------------------------

    def has_local_members(self, conversation_id: int) -> bool:
        return conversation_id in self.by_conversation

    def connections_of(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    # -- connections ---------------------------------------------------------

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
        self.presence.discard(recipient)
        if not devices:
            del self.by_user[recipient.user_id]
            self._broker.unwatch(users=(recipient.user_id,))
        self._unroute(recipient, list(recipient.conversations))

    # -- membership changes (from Catchup.on_membership) ---------------------

    def join(self, user_ids: Iterable[int], conversation_id: int) -> None:
        """Route the conversation to every local connection of these users."""
        for user_id in user_ids:
            for recipient in self.by_user.get(user_id, ()):
                self._route(recipient, (conversation_id,))

    def leave(self, user_ids: Iterable[int], conversation_id: int) -> None:
        """Stop routing the conversation to the local connections of these users."""
        for user_id in user_ids:
            for recipient in self.by_user.get(user_id, ()):
                self._unroute(recipient, (conversation_id,))

    def _route(self, recipient: Recipient, conversation_ids: Iterable[int]) -> None:
        first: list[int] = []
        for cid in conversation_ids:
            members = self.by_conversation.get(cid)
            if members is None:
                members = self.by_conversation[cid] = {}
                first.append(cid)
            members[recipient] = recipient.outbound
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
            members.pop(recipient, None)
            if not members:
                del self.by_conversation[cid]
                last.append(cid)
        if last:
            self._broker.unwatch(conversations=last)
            if self._unrouted is not None:
                self._unrouted.forget(last)

    # -- fan-out -------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Write the event to every local connection it is addressed to, once each
        (but those of ``event.except_user``)."""
        members: dict[Recipient, Sender] | None
        if len(event.conversations) == 1 and not event.users:
            # The hot path: a message into one conversation.
            members = self.by_conversation.get(event.conversations[0])
        elif event.frame_type == SESSIONS_ENDED:
            self._end_sessions(msgspec.json.decode(event.payload, type=SessionsEnded))
            return
        else:
            members = {}
            for cid in event.conversations:
                members.update(self.by_conversation.get(cid, {}))
            for uid in event.users:
                members.update((recipient, recipient.outbound) for recipient in self.by_user.get(uid, ()))
        if not members:
            return
        if event.frame_type == PRESENCE_CHANGE:
            self.presence.add(members, change_item(event.payload))
            return
        frame = websocket_text_frame(event.payload)
        if event.except_user:
            # Not the hot path (typing): the recipient is looked at, to leave one user out.
            count = 0
            for recipient, sender in members.items():
                if recipient.user_id != event.except_user:
                    sender.send_frame(frame)
                    count += 1
            self._count(event, count)
            return
        # send_frame never touches the registry (a slow consumer is unregistered
        # later, when its connection is finished), so iterating the live set is safe,
        # and every member is sent the frame: counted once, not once per member.
        for sender in members.values():
            sender.send_frame(frame)
        self._count(event, len(members))

    def _end_sessions(self, ended: SessionsEnded) -> None:
        self.end_sessions(ended.user_id, ended.generation, disabled=ended.disabled)

    def end_sessions(self, user_id: int, generation: int, *, disabled: bool = False) -> int:
        """Close this instance's connections of ``user_id`` whose session is of a
        generation below ``generation``; how many it closed (server/account_check.py)."""
        # A copy: a connection that closes may leave the registry before this loop ends.
        recipients = list(self.by_user.get(user_id, ()))
        return sum(recipient.end_session_before(generation, disabled=disabled) for recipient in recipients)

    def _count(self, event: Event, count: int) -> None:
        if count:
            self._metrics.deliveries.inc(count)
            self._metrics.frames_out_by[event.frame_type].inc(count)
            if event.seq:  # a new message (only message.new carries a seq; a re-announcement has 0)
                self._metrics.messages_received.inc()
