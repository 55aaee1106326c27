"""What a handler needs from its caller, as two small protocols.

``Context`` is the process's side (stores, credentials, presence, the
publisher, a few limits); the wiring object ``server.services.Services``
implements it. ``Caller`` is the connection's side (who is asking, what is
routed to them, its typing limit); ``server.session.Session`` implements
it. A handler is ``async def op(ctx: Context, caller: Caller, request) -> result`` and
depends on nothing else, so it can be driven without a transport
(tests/unit/test_handlers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hubbub.server.archived import ArchivedChannels
from hubbub.server.auth import Passwords, Tokens
from hubbub.server.config import MessagesConfig, ProfilesConfig
from hubbub.server.listings import PublicChannels
from hubbub.server.presence import PresenceTracker
from hubbub.server.publisher import Publisher
from hubbub.server.ratelimit import FailureWindow, TokenBucket
from hubbub.server.retention_policy import RetentionPolicy
from hubbub.server.send_order import SendOrder
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import UserRecord


class Context(Protocol):
    @property
    def directory(self) -> Directory: ...

    @property
    def messages(self) -> MessageLog: ...

    @property
    def public_channels(self) -> PublicChannels:
        """The public channels with their views for a non-member, read once for the requests asking together."""

    @property
    def publisher(self) -> Publisher:
        """Where every event, message and membership change is published."""

    @property
    def presence(self) -> PresenceTracker: ...

    @property
    def passwords(self) -> Passwords: ...

    @property
    def tokens(self) -> Tokens: ...

    @property
    def login_failures_by_username(self) -> FailureWindow: ...

    @property
    def login_failures_by_address(self) -> FailureWindow: ...

    @property
    def max_message_chars(self) -> int: ...

    @property
    def message_limits(self) -> MessagesConfig:
        """What may be done to a sent message: edit window, reaction and pin limits."""

    @property
    def presence_max_members(self) -> int:
        """Presence events go through conversations of at most this many members."""

    @property
    def typing_ttl_ms(self) -> int:
        """How long a typing indicator shows unless renewed (the event's ``expires_in_ms``)."""

    @property
    def typing_max_members(self) -> int:
        """Typing events go through conversations of at most this many members."""

    @property
    def profile_limits(self) -> ProfilesConfig:
        """Profile field lengths and the largest ``user.search`` page."""

    @property
    def retention(self) -> RetentionPolicy:
        """Which retention applies to a conversation, and the bounds of a channel's override."""

    @property
    def archived_channels(self) -> ArchivedChannels:
        """Which channels are archived, as this instance knows (server/archived.py)."""


class Caller(Protocol):
    @property
    def conn_id(self) -> int: ...

    @property
    def address(self) -> str:
        """The client's address (failed-login limits)."""

    @property
    def user(self) -> UserRecord | None:
        """None until the connection authenticates."""

    @property
    def user_id(self) -> int:
        """0 until the connection authenticates."""

    @property
    def conversations(self) -> set[int]:
        """The conversations routed to this connection (server/registry.py):
        a hit is proof of membership, a miss is not proof of the opposite."""

    @property
    def typing_limit(self) -> TokenBucket:
        """This connection's ``typing`` rate limit (its own, apart from the request limit)."""

    @property
    def send_order(self) -> SendOrder:
        """The turns that keep this connection's pipelined sends in request order."""

    async def authenticate(self, user: UserRecord, conversation_ids: Sequence[int] | None = None) -> None:
        """Make the connection the user's (routing, presence); raises ApiError when it may not."""

    def refresh_user(self, user: UserRecord) -> None:
        """The caller's own record as a request just stored it (``user``, ``me``, the token generation)."""
