"""Request rate limits: a token bucket per connection, failure windows per key."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; plus, after
    ``grant``, an extra allowance spent only once the bucket is empty and
    only until it expires."""

    __slots__ = ("burst", "extra", "extra_until", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.extra = 0
        self.extra_until = 0.0

    def grant(self, extra: int, seconds: float) -> None:
        """Allow ``extra`` requests beyond the bucket during the next ``seconds``
        (a reconnecting client catching up: history pages, resent sends)."""
        self.extra = extra
        self.extra_until = time.monotonic() + seconds

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        # Only an empty bucket looks at the allowance: the common path costs nothing more.
        if self.extra > 0 and now < self.extra_until:
            self.extra -= 1
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
