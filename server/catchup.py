"""Instance-side gap filling: every message reaches local members even when
the broker lost it. ``Catchup`` is this instance's BrokerEventHandler: the
broker hands it every Event and MembershipChange, local or from another
instance, and it hands them on to the Registry:

- ``on_event``: a new message (``seq`` > 0) goes through the per-conversation
  order below, then ``Registry.deliver``; any other event straight to
  ``Registry.deliver``;
- ``on_membership``: ``Registry.join`` / ``Registry.leave``; a conversation
  that a join routes here for the first time starts being tracked at the
  change's ``since_seq``;
- ``on_resync``: compare with the store and fill what was missed.

This is the last of the three places where delivery order is decided (after
server/sequencer.py and the broker's publish order): per conversation,
messages reach local members in seq order, each once.

Routing between instances is at-most-once (Redis pub/sub), and messages sent
through different instances may arrive out of seq order. This instance keeps,
per conversation with local members, the seqs it has delivered. A message
whose seq jumps past the highest delivered one first has the missing range
read from the message store and delivered in order; a message already
delivered (by such a fill) is not delivered again. After a broker reconnect,
``resync`` compares every locally routed conversation's newest stored seq
with what was delivered and fills the difference, so subscribers catch up
without waiting for the next message.

A fill or resync that fails unexpectedly (not a store outage) is logged,
counted in hubbub_task_failures_total and handled like an outage: the range
is given up (clients fill it by seq) and the next gap is filled as usual.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence

from hubbub.protocol import codec, frames
from hubbub.server import logs
from hubbub.server.archived import ArchivedChannels
from hubbub.server.broker import MESSAGE_NEW, BrokerEventHandler, Event, MembershipChange
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Registry
from hubbub.server.views import message_view
from hubbub.storage.base import MessageLog
from hubbub.storage.errors import StorageError
from hubbub.storage.supervision import report

CHANNEL_UPDATED = frames.tag_of(frames.ChannelUpdated)

SEEN_WINDOW = 1024
"""How many recent seqs per conversation are remembered for deduplication."""
FILL_PAGE = 100
_WINDOW_MASK = (1 << SEEN_WINDOW) - 1


class SeenWindow:
    """The seqs delivered among the SEEN_WINDOW ending at the highest one, as the bits
    of one int: ~150 bytes per conversation, where a set of ints grew to ~190 KB
    (2,048 seqs before each trim) and made every instance's RSS climb for as long
    as its conversations took to reach that many messages."""

    __slots__ = ("bits", "top")

    def __init__(self) -> None:
        self.top = 0
        self.bits = 0
        """Bit i set: seq ``top - i`` was delivered."""

    def add(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = 1 if shift >= SEEN_WINDOW else ((self.bits << shift) | 1) & _WINDOW_MASK
            self.top = seq
        elif self.top - seq < SEEN_WINDOW:
            self.bits |= 1 << (self.top - seq)

    def __contains__(self, seq: int) -> bool:
        offset = self.top - seq
        return 0 <= offset < SEEN_WINDOW and bool(self.bits >> offset & 1)


class _Conversation:
    __slots__ = ("filling", "high", "queue", "seen")

    def __init__(self, high: int | None = None) -> None:
        self.high = high
        """The highest seq known delivered here; None until something tells us."""
        self.seen = SeenWindow()
        self.filling = False
        self.queue: deque[Event] = deque()


class Catchup:
    def __init__(
        self, messages: MessageLog, registry: Registry, metrics: Metrics, archived: ArchivedChannels | None = None
    ) -> None:
        self._messages = messages
        self._registry = registry
        self._metrics = metrics
        self._archived = archived
        """What this instance knows of archived channels (server/archived.py): forgotten as events say."""
        self._conversations: dict[int, _Conversation] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- BrokerEventHandler --------------------------------------------------

    def on_event(self, event: Event) -> None:
        if not event.seq:  # not a sequenced message: nothing to order
            if event.frame_type == CHANNEL_UPDATED and self._archived is not None:
                self._archived.forget(event.conversations)  # archived or not may have changed
            self._registry.deliver(event)
            return
        cid = event.conversations[0]
        if not self._registry.has_local_members(cid):
            self._conversations.pop(cid, None)
            return
        state = self._conversations.get(cid)
        if state is None:
            state = self._conversations[cid] = _Conversation()
        if state.filling:
            state.queue.append(event)
            return
        self._accept(cid, state, event)

    def on_membership(self, change: MembershipChange) -> None:
        cid = change.conversation_id
        if not change.joined:
            self._registry.leave(change.user_ids, cid)  # the last member going: ``forget``
            return
        self._registry.join(change.user_ids, cid)
        if cid not in self._conversations and self._registry.has_local_members(cid):
            # Routed here by this join: delivery here starts after the conversation's
            # seq at the join (older messages are history the client asks for).
            self._conversations[cid] = _Conversation(high=change.since_seq)

    def on_resync(self, conversation_ids: Sequence[int] | None) -> None:
        """Deliveries may have been missed: all of them (None, after a broker
        reconnect) or those of conversations whose subscription just started."""
        if self._archived is not None:  # a channel.updated may have been missed too
            if conversation_ids is None:
                self._archived.forget_all()
            else:
                self._archived.forget(conversation_ids)
        task = asyncio.get_running_loop().create_task(self._resync(conversation_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- UnroutedListener (server/registry.py) -------------------------------

    def forget(self, conversation_ids: Sequence[int]) -> None:
        """The last local member of these conversations is gone (the registry's
        unroute): drop their state, or it would stay for good, since no more of
        their deliveries come to prune it. A member coming back starts afresh,
        as the first one did (resync on the new subscription, or the first message)."""
        for cid in conversation_ids:
            if not self._registry.has_local_members(cid):
                self._conversations.pop(cid, None)
                if self._archived is not None:  # its channel.updated events no longer come here
                    self._archived.forget((cid,))

    # -- ordering ------------------------------------------------------------

    def _accept(self, cid: int, state: _Conversation, event: Event) -> None:
        seq = event.seq
        if seq in state.seen:
            return
        if state.high is not None and seq > state.high + 1:  # nothing above high was seen: a gap
            state.queue.append(event)
            self._start_fill(cid, state, after=state.high, before=seq)
            return
        self._deliver_message(state, event)

    def _deliver_message(self, state: _Conversation, event: Event) -> None:
        if self._conversations.get(event.conversations[0]) is not state:
            return  # forgotten during a fill: a member who came back has a fresh state
        self._registry.deliver(event)
        state.seen.add(event.seq)
        if state.high is None or event.seq > state.high:
            state.high = event.seq

    def _start_fill(self, cid: int, state: _Conversation, *, after: int, before: int | None) -> None:
        state.filling = True
        task = asyncio.get_running_loop().create_task(self._fill(cid, state, after, before))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, cid: int, state: _Conversation, after: int, before: int | None) -> None:
        try:
            cursor = after
            while True:
                page = await self._messages.history(cid, before=before, after=cursor, limit=FILL_PAGE, order="asc")
                for record in page:
                    if record.seq not in state.seen:
                        self._metrics.gap_filled.inc()
                        payload = codec.encode(frames.MessageNew(message=message_view(record)))
                        self._deliver_message(state, Event(payload, MESSAGE_NEW, (cid,), (), record.seq))
                if len(page) < FILL_PAGE:
                    break
                cursor = page[-1].seq
        except Exception as exc:
            if isinstance(exc, StorageError | TimeoutError):
                logs.warning("gap_fill_failed", conversation_id=cid, error=str(exc))
            else:
                report("catchup_fill", exc, self._metrics.task_failed, conversation_id=cid)
        finally:
            # Whatever the range still lacks is given up, after a failed read
            # and after a complete one alike: a seq the store does not have
            # (MongoDB leaves seqs a failed insert took unused) would otherwise
            # restart this fill for every later message, holding the
            # conversation back for good. A late one is still delivered when
            # it arrives; clients see a gap by seq and fill it themselves.
            if before is not None and (state.high is None or before - 1 > state.high):
                state.high = before - 1
            state.filling = False
            while state.queue and not state.filling:
                self._accept(cid, state, state.queue.popleft())

    async def _resync(self, conversation_ids: Iterable[int] | None) -> None:
        try:
            await self._resync_from_store(conversation_ids)
        except (StorageError, TimeoutError) as exc:
            logs.warning("resync_failed", error=str(exc))
        except Exception as exc:
            report("catchup_resync", exc, self._metrics.task_failed)

    async def _resync_from_store(self, conversation_ids: Iterable[int] | None) -> None:
        wanted = list(self._conversations) if conversation_ids is None else list(conversation_ids)
        wanted = [cid for cid in wanted if self._registry.has_local_members(cid)]
        if not wanted:
            return
        heads = await self._messages.heads(wanted)
        for cid in wanted:
            head = heads.get(cid)
            last = head.last_seq if head else 0
            state = self._conversations.get(cid)
            if state is None or state.high is None:
                # Nothing delivered or promised here yet: start from the store's position.
                if state is None:
                    state = self._conversations[cid] = _Conversation()
                if not state.filling:
                    state.high = last
            elif last > state.high and not state.filling:
                self._start_fill(cid, state, after=state.high, before=last + 1)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


_: type[BrokerEventHandler] = Catchup
