"""Presence: a user is online while they have at least one connection.

This tracker counts this process's connections per user. The choice of who
hears about a change is made by the caller (server/handlers/presence.py):
everyone who shares a conversation with the user.
"""

from __future__ import annotations

from collections.abc import Iterable


class PresenceTracker:
    def __init__(self) -> None:
        self._connections: dict[int, int] = {}

    def connected(self, user_id: int) -> bool:
        """Count a connection; True when the user just came online."""
        count = self._connections.get(user_id, 0) + 1
        self._connections[user_id] = count
        return count == 1

    def disconnected(self, user_id: int) -> bool:
        """Uncount a connection; True when the user just went offline."""
        count = self._connections.get(user_id, 0) - 1
        if count <= 0:
            self._connections.pop(user_id, None)
            return True
        self._connections[user_id] = count
        return False

    def online(self, user_ids: Iterable[int]) -> set[int]:
        return {uid for uid in user_ids if uid in self._connections}
