"""Presence tracking: a user is online while they have at least one
connection, on any instance.

Two implementations of ``PresenceTracker``: LocalPresence counts this
process's connections (a single instance); RedisPresence
(server/presence_redis.py) also records them in Redis so every instance
agrees. (The frame a client sees is ``protocol.frames.Presence``; who hears
about a change is decided by server/handlers/presence.py.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

ExpiredHandler = Callable[[int], Awaitable[None]]
"""Called with a user who went offline because their instance died."""


class PresenceTracker(Protocol):
    """Who is online; told of every authenticated connection opening and closing."""

    async def start(self, on_expired: ExpiredHandler) -> None: ...

    async def close(self) -> None: ...

    async def connected(self, user_id: int) -> bool:
        """Count a connection; True when the user just came online everywhere."""

    async def disconnected(self, user_id: int) -> bool:
        """Uncount a connection; True when the user just went offline everywhere."""

    async def online(self, user_ids: Iterable[int]) -> set[int]: ...


class LocalCounts:
    """Connections per user in this process."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, user_id: int) -> bool:
        """True when this is the user's first local connection."""
        count = self.counts.get(user_id, 0) + 1
        self.counts[user_id] = count
        return count == 1

    def remove(self, user_id: int) -> bool:
        """True when that was the user's last local connection."""
        count = self.counts.get(user_id, 0) - 1
        if count <= 0:
            self.counts.pop(user_id, None)
            return True
        self.counts[user_id] = count
        return False


class LocalPresence:
    def __init__(self) -> None:
        self._local = LocalCounts()

    async def start(self, on_expired: ExpiredHandler) -> None:
        pass

    async def close(self) -> None:
        pass

    async def connected(self, user_id: int) -> bool:
        return self._local.add(user_id)

    async def disconnected(self, user_id: int) -> bool:
        return self._local.remove(user_id)

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return {uid for uid in user_ids if uid in self._local.counts}


_: type[PresenceTracker] = LocalPresence
