"""Request rate limits: a token bucket per connection, failure windows per key."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FailureWindow:
    """Counts failures per key over a sliding window (failed logins)."""

    def __init__(self, limit: int, window_seconds: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window_seconds
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        stamps = self._failures.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return None
        return stamps

    def blocked(self, key: str) -> bool:
        stamps = self._recent(key, time.monotonic())
        return stamps is not None and len(stamps) >= self.limit

    def record(self, key: str) -> None:
        now = time.monotonic()
        stamps = self._recent(key, now)
        if stamps is None:
            if len(self._failures) >= self.max_keys:
                # Bounded memory under a spray of usernames: forget the oldest key.
                self._failures.pop(next(iter(self._failures)))
            stamps = self._failures[key] = deque()
        stamps.append(now)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
