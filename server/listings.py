"""The public channels of ``channel.list``, read and viewed once for every
request that asks together.

In a reconnect storm every client's catch-up (PROTOCOL.md §9) lists every
public channel with its ``last_seq``: 10,000 clients in 200 rooms asked the
store for the same 200 rows and heads 10,000 times, and built the same 200
non-member views 10,000 times (issue 13). Here the channels and their heads
are one ``KeyedLookup`` batch (server/lookups.py) for all requests asking
together, read after each of them asked (so no request sees older data than it
would alone), and a public channel's view for a non-member, which is the same
for everybody, is built and encoded to JSON once per batch: each reply
embeds those bytes (``EncodedConversationList``). Only what is the caller's own (their
memberships, read state, unread counts) is read and viewed per request, and
that is batched across requests too (server/lookups.py ``CoalescedReads``,
``CoalescedLog``).
"""

from __future__ import annotations

import msgspec

from hubbub.protocol import frames
from hubbub.server.lookups import BatchProgress, KeyedLookup, answered
from hubbub.server.retention_policy import RetentionPolicy
from hubbub.server.views import shared_views
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import ConversationRecord, UnreadAsk


class PublicListing:
    """The public channels (archived ones too) as one read saw them, with their views for a non-member, encoded."""

    __slots__ = ("channels", "encoded")

    def __init__(self, channels: list[ConversationRecord], encoded: dict[int, msgspec.Raw]) -> None:
        self.channels = channels
        self.encoded = encoded
        """Channel id -> the channel as a non-member sees it, as JSON: encoded once for every reply."""


class EncodedConversationList(msgspec.Struct, kw_only=True):
    """``channel.list``'s reply as it is encoded: a ``frames.ConversationList``
    (the same JSON, PROTOCOL.md) whose non-member public channels are the
    listing's pre-encoded views (``msgspec.Raw`` is written as it is)."""

    conversations: list[frames.Conversation | msgspec.Raw]


class PublicChannels:
    """``listing()``: the public channels and their non-member views, coalesced across concurrent requests.

    ``directory`` and ``messages`` are the stores the batches are read from
    (server/app.py: bounded by ``lookup_batch_timeout_seconds``; on PostgreSQL
    on the lookup lane); ``progress``: the directory store's (server/lookups.py ``answered``)."""

    def __init__(
        self,
        directory: Directory,
        messages: MessageLog,
        retention: RetentionPolicy,
        progress: BatchProgress | None = None,
    ) -> None:
        self._directory = directory
        self._messages = messages
        self._retention = retention
        self.lookup: KeyedLookup[int, PublicListing] = KeyedLookup(self._read, progress=progress)
        """One key (0): every request asks the same listing."""

    async def listing(self) -> PublicListing:
        found = await answered(self.lookup, 0, self._directory.name, "public_channels")
        if found is None:  # _read always answers key 0
            raise AssertionError("the public listing batch gave no listing")
        return found

    async def _read(self, _keys: list[int]) -> dict[int, PublicListing]:
        channels = await self._directory.public_channels()
        # The heads as unread_many reads them for a non-member (no position: only
        # the head), so on PostgreSQL from the lookup lane, not the primary pool.
        ask = UnreadAsk(user_id=0, positions=tuple((c.id, None) for c in channels))
        heads = (await self._messages.unread_many([ask], 0)).get(ask, {})
        views = shared_views(channels, heads, self._retention)
        return {0: PublicListing(channels, {c_id: msgspec.Raw(_encode(view)) for c_id, view in views.items()})}


_encode = msgspec.json.Encoder().encode
"""As protocol/codec.py encodes every frame (the same JSON as the view encoded in place)."""
