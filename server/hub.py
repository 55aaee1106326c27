"""The Hub: every long-lived component of one server process, wired together.

Handlers receive the Hub and a Session; nothing else is global.
"""

from __future__ import annotations

import time

from server.auth import Passwords, Tokens
from server.broker import Broker, Delivery
from server.catchup import Catchup
from server.config import Settings
from server.metrics import Metrics
from server.outbound import Flusher
from server.presence import Presence
from server.ratelimit import FailureWindow
from server.registry import Registry
from server.sequencer import Sequencer
from storage.base import Directory, MessageLog


def now_ms() -> int:
    return int(time.time() * 1000)


class Hub:
    def __init__(
        self,
        settings: Settings,
        directory: Directory,
        messages: MessageLog,
        broker: Broker,
        presence: Presence,
        passwords: Passwords,
        tokens: Tokens,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.messages = messages
        self.broker = broker
        self.passwords = passwords
        self.tokens = tokens
        self.metrics = metrics
        self.registry = Registry(broker, metrics)
        self.flusher = Flusher()
        self.trusted_proxies = settings.proxy_networks
        self.presence = presence
        self.sequencer = Sequencer(self._publish_message)
        self.catchup = Catchup(messages, self.registry.deliver, self.registry.has_local_members, metrics)
        self.registry.on_unrouted = self.catchup.forget
        window = settings.login_failure_window_seconds
        self.login_failures_by_username = FailureWindow(settings.login_failures_per_username, window)
        self.login_failures_by_address = FailureWindow(settings.login_failures_per_address, window)

    def _publish_message(self, conversation_id: int, seq: int, payload: bytes) -> None:
        self.publish(Delivery(payload, "message.new", conversations=(conversation_id,), seq=seq))

    async def start(self) -> None:
        # Imported here: the handlers import this module for the Hub type.
        from server.handlers.presence import on_offline

        await self.broker.start(self.catchup.receive, self.catchup.resync)
        await self.presence.start(lambda user_id: on_offline(self, user_id))

    async def close(self) -> None:
        await self.presence.close()
        await self.broker.close()
        await self.catchup.close()

    def publish(self, delivery: Delivery) -> None:
        """Send an event on its way; delivery order follows publish order."""
        self.broker.publish(delivery)
