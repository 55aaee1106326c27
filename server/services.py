"""Services: every long-lived component of one server process, wired together.

This is the handlers' ``Context`` (server/handlers/context.py) and what a
session is given; nothing else is global. The delivery components it wires:

- ``publisher`` (server/publisher.py): what handlers publish goes out here;
  its Sequencer orders this process's new messages, then ``broker.publish``;
- ``broker`` (server/broker.py, server/broker_redis.py): publish order is
  delivery order, here and on every other instance;
- ``catchup`` (server/catchup.py): the broker's BrokerEventHandler; seq
  order and gap-filling per conversation, then
- ``registry`` (server/registry.py): this process's connections, and the
  fan-out to them.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from hubbub.server.archived import ArchivedChannels
from hubbub.server.auth import Passwords, Tokens
from hubbub.server.auth_first import AuthFirst
from hubbub.server.broker import Broker
from hubbub.server.catchup import Catchup
from hubbub.server.config import LimitsConfig, MessagesConfig, ProfilesConfig, TypingConfig
from hubbub.server.handlers.context import Context
from hubbub.server.handlers.presence import on_offline
from hubbub.server.listings import PublicChannels
from hubbub.server.metrics import Metrics
from hubbub.server.presence import PresenceTracker
from hubbub.server.publisher import Publisher
from hubbub.server.ratelimit import FailureWindow
from hubbub.server.registry import Registry
from hubbub.server.retention_policy import RetentionPolicy, default_policy
from hubbub.storage.base import Directory, MessageLog


class Services:
    def __init__(
        self,
        *,
        limits: LimitsConfig,
        trusted_proxies: list[IPv4Network | IPv6Network],
        presence_max_members: int,
        typing: TypingConfig,
        message_limits: MessagesConfig,
        profile_limits: ProfilesConfig,
        directory: Directory,
        messages: MessageLog,
        broker: Broker,
        presence: PresenceTracker,
        passwords: Passwords,
        tokens: Tokens,
        metrics: Metrics,
        instance_id: str = "",
        presence_batch_seconds: float = 0.0,
        retention: RetentionPolicy | None = None,
        public_channels: PublicChannels | None = None,
    ) -> None:
        self.limits = limits
        """What one client may do (dispatch and sessions read it)."""
        self.auth_first = AuthFirst(
            limits.auth_first_threshold, limits.auth_first_hold_seconds, limits.read_ahead_bytes
        )
        """A storm's authentications before the catch-up requests of those already in (sessions use it)."""
        self.trusted_proxies = trusted_proxies
        """Proxies whose X-Forwarded-For gives a client's address."""
        self.presence_max_members = presence_max_members
        """Presence events go through conversations of at most this many members."""
        self.typing = typing
        """Typing indicators: their lifetime, rate limit (sessions read it) and size cap."""
        self.message_limits = message_limits
        self.profile_limits = profile_limits
        """Profile field lengths and the largest user.search page (the profile handlers read it)."""
        """What may be done to a sent message (the change handlers read it)."""
        self.retention = retention or default_policy()
        """Which retention applies to a conversation; the bounds of a channel's override."""
        self.directory = directory
        self.messages = messages
        self.public_channels = public_channels or PublicChannels(directory, messages, self.retention)
        """channel.list's shared part (server/listings.py); server/app.py reads it from the batch-bounded stores."""
        self.broker = broker
        self.passwords = passwords
        self.tokens = tokens
        self.metrics = metrics
        self.instance_id = instance_id
        """This process among the instances (App.instance_id): on its spans (server/tracing.py)."""
        self.presence = presence
        self.registry = Registry(broker, metrics, presence_batch_seconds=presence_batch_seconds)
        self.archived_channels = ArchivedChannels(round(message_limits.archived_known_seconds * 1000))
        """Which channels are archived, as this instance knows (message.send's check)."""
        self.catchup = Catchup(messages, self.registry, metrics, self.archived_channels)
        self.registry.tell_unrouted(self.catchup)
        self.publisher = Publisher(messages, broker, metrics)
        window = limits.login_failure_window_seconds
        self.login_failures_by_username = FailureWindow(limits.login_failures_per_username, window)
        self.login_failures_by_address = FailureWindow(limits.login_failures_per_address, window)

    @property
    def max_message_chars(self) -> int:
        return self.limits.max_message_chars

    @property
    def typing_ttl_ms(self) -> int:
        return round(self.typing.typing_ttl_seconds * 1000)

    @property
    def typing_max_members(self) -> int:
        return self.typing.typing_max_members

    async def start(self) -> None:
        await self.broker.start(self.catchup)
        await self.presence.start(self._expired)

    async def _expired(self, user_id: int) -> None:
        """A user whose instance died (or whose grace ran out) is offline everywhere."""
        await on_offline(self, user_id)

    async def close(self) -> None:
        self.registry.presence.close()
        await self.presence.close()
        await self.broker.close()
        await self.catchup.close()


_: type[Context] = Services
