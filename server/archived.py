"""Which channels are archived, as this instance knows it: message.send's
archived check without a store read per message.

A send into a channel routed to the sender's connection (the hot path, which
otherwise reads no store before the append) asks here first. An entry comes
from a store read (the first send into the channel here, or any other read of
its record by a message request) and is dropped when the channel may have
changed:

- at once, when a ``channel.updated`` of the channel passes through this
  instance (server/catchup.py): the instance that archived it first, every
  instance with members of it as soon as the event arrives;
- when the broker says events may have been missed (a resync) or the
  channel's last local member goes (no more of its events come here);
- and in any case ``archived_known_seconds`` (a setting, 1 s by default)
  after it was read, which bounds what a lost event could cost.

So a send racing an archive made on another instance may still be stored
until that instance hears of it (as a send racing a kick is, until the
MembershipChange arrives); every later one is refused. The requests that
change a sent message read the channel from the store each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hubbub.server.clock import now_ms
from hubbub.storage.records import ConversationRecord

ARCHIVED_KNOWN_MS = 1000
"""How long an entry is trusted without news (ms) by default
(``archived_known_seconds``): a store read per channel and second per
instance costs little; a setting so that a benchmark counting instructions
per send (loadtest/sendbench.py, whose rounds take longer than a second under
callgrind) does not count a store read per send that a real run does not make."""
PRUNE_AT = 10_000
"""Entries past which learning a new one first drops the expired ones."""


class ArchivedChannels:
    def __init__(self, ttl_ms: int = ARCHIVED_KNOWN_MS, clock: Callable[[], int] = now_ms) -> None:
        self._ttl_ms = ttl_ms
        self._clock = clock
        self._known: dict[int, tuple[bool, int]] = {}
        """Channel id -> (archived, when it was read)."""
        self.epoch = 0
        """Raised by every forget: a read begun before one may be stale, and is not learnt."""

    def archived(self, conversation_id: int) -> bool | None:
        """True or False while known; None when not (read the store, then ``learn``)."""
        entry = self._known.get(conversation_id)
        if entry is None:
            return None
        archived, read_at = entry
        if self._clock() - read_at >= self._ttl_ms:
            del self._known[conversation_id]
            return None
        return archived

    def learn(self, record: ConversationRecord, epoch: int) -> None:
        """The conversation as read from the store by a read begun at ``epoch``
        (``self.epoch`` then): not learnt when something was forgotten since,
        since the read may have missed the change that made it forget."""
        if epoch != self.epoch:
            return
        now = self._clock()
        if len(self._known) >= PRUNE_AT:
            self._known = {cid: e for cid, e in self._known.items() if now - e[1] < self._ttl_ms}
        self._known[record.id] = (record.archived, now)

    def forget(self, conversation_ids: Iterable[int]) -> None:
        self.epoch += 1
        for cid in conversation_ids:
            self._known.pop(cid, None)

    def forget_all(self) -> None:
        self.epoch += 1
        self._known.clear()
