"""The sending side of delivery: everything this process publishes goes
through one Publisher, which handlers reach as ``ctx.publisher``.

A new message, by function call (the whole path, to every socket):

1. ``messages.send`` (server/handlers/messages.py) validates the request and
   calls ``Publisher.send_message(new)``;
2. ``MessageLog.append`` stores it and gives it its seq;
3. ``Sequencer.complete`` (server/sequencer.py) holds it while an earlier
   append to the conversation is still running here, then calls
   ``Broker.publish(Event(...))``: **this process's messages enter the
   broker in seq order**;
4. the broker (server/broker.py) hands the event at once to this
   instance's ``BrokerEventHandler.on_event``, and the Redis broker also
   publishes it to the conversation's topic; on every other instance with
   members there, the Redis subscriber calls that instance's
   ``BrokerEventHandler.on_event``: **publish order is delivery order**;
5. the handler, ``Catchup.on_event`` (server/catchup.py), delivers the
   conversation's messages in seq order, reading from the store whatever
   the broker lost: **each instance delivers each message once, in seq
   order**;
6. ``Registry.deliver`` (server/registry.py) frames the JSON once and calls
   ``recipient.outbound.send_frame`` (the connection's outbound buffer) for every
   local member's connection.

A new thread reply also changes its root (``MessageLog.append`` returns
the updated root as ``Appended.root``): ``send_message`` hands the root's
message.updated to ``Sequencer.complete`` with the reply, which publishes
it right after the reply's message.new, also when it holds the reply
behind an earlier append. On another instance Catchup may still hold the
reply back to fill a gap while the update passes; clients apply both by
``rev`` (PROTOCOL.md §9), so the result is the same.

A change to a message (server/handlers/messages.py, reactions.py,
pins.py) is stored by ``MessageLog.change_message`` in the handler, which
then calls ``Publisher.message_updated`` or ``Publisher.message_deleted``:
the event for the members of the conversation, through ``publish``.

Every event other than message.new takes steps 4 to 6 from
``Publisher.publish`` (Catchup passes it straight on), so it reaches every
instance with members of its conversations. A membership change is published by
``Publisher.publish_membership`` just before the event that announces it,
to the same users: ``Catchup.on_membership`` calls ``Registry.join`` or
``Registry.leave`` first, so the announcement, and everything after it,
already sees the new routing.
"""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.protocol import codec, frames
from hubbub.server.broker import MESSAGE_NEW, Broker, Event, MembershipChange, event_of
from hubbub.server.metrics import Metrics
from hubbub.server.sequencer import Sequencer
from hubbub.server.views import message_view
from hubbub.storage.base import MessageLog
from hubbub.storage.records import MessageRecord, NewMessage


class Publisher:
    def __init__(self, messages: MessageLog, broker: Broker, metrics: Metrics) -> None:
        self._messages = messages
        self._broker = broker
        self._metrics = metrics
        self._sequencer = Sequencer(broker)

    async def send_message(self, new: NewMessage) -> tuple[frames.Message, bool]:
        """Store a message, then publish its message.new in seq order; the
        stored message, and whether it was a duplicate (same client_msg_id)."""
        cid = new.conversation_id
        ticket = self._sequencer.begin(cid)
        try:
            appended = await self._messages.append(new)
        except BaseException:
            self._sequencer.abort(cid, ticket)
            raise
        record = appended.record
        message = message_view(record)
        payload = codec.encode(frames.MessageNew(message=message))
        if appended.duplicate:
            # Announced again: the first attempt may have been stored after its
            # request timed out, with no event sent. Clients dedupe by id. Not
            # sequenced nor gap-tracked (seq 0): it is an old message.
            self._sequencer.abort(cid, ticket)
            self._broker.publish(Event(payload, MESSAGE_NEW, (record.conversation_id,)))
        else:
            self._metrics.messages_stored.inc()
            # A new reply's root update goes right after the reply, even when the reply is held back.
            then = () if appended.root is None else (updated_event(appended.root, "thread", by=record.sender_id),)
            self._sequencer.complete(cid, ticket, record.seq, payload, then)
        return message, appended.duplicate

    def message_updated(
        self,
        record: MessageRecord,
        change: frames.MessageChangeKind,
        *,
        by: int,
        reaction: frames.ReactionChange | None = None,
    ) -> None:
        """``record``'s new state to the members of its conversation (no
        ``my_reactions``: every member gets the same event)."""
        self._broker.publish(updated_event(record, change, by=by, reaction=reaction))

    def message_deleted(self, tombstone: MessageRecord, *, by: int) -> None:
        """A deleted message's tombstone to the members of its conversation."""
        self.publish(
            frames.MessageDeleted(message=message_view(tombstone), by=by), conversations=(tombstone.conversation_id,)
        )

    def publish(
        self,
        frame: frames.AnyEvent,
        *,
        conversations: Sequence[int] = (),
        users: Sequence[int] = (),
        except_user: int = 0,
    ) -> None:
        """An event to the members of ``conversations`` and the devices of ``users``,
        none of them ``except_user``'s connections (when given)."""
        self._broker.publish(event_of(frame, conversations=conversations, users=users, except_user=except_user))

    def publish_event(self, event: Event) -> None:
        """An event built by the caller (``broker.sessions_ended_event``), published as it is."""
        self._broker.publish(event)

    def publish_membership(self, change: MembershipChange, announcement: frames.AnyEvent) -> None:
        """Change routing, then announce it to the same users: every instance
        applies the change before it delivers ``announcement``."""
        self._broker.publish_membership(change)
        self.publish(announcement, users=change.user_ids)


def updated_event(
    record: MessageRecord,
    change: frames.MessageChangeKind,
    *,
    by: int,
    reaction: frames.ReactionChange | None = None,
) -> Event:
    """The message.updated of ``record``'s new state, to the members of its conversation."""
    frame = frames.MessageUpdated(message=message_view(record), change=change, by=by, reaction=reaction)
    return event_of(frame, conversations=(record.conversation_id,))
