"""Authentications before catch-ups, while a reconnect storm authenticates.

When thousands of clients come back at once, those already authenticated
start their catch-up (PROTOCOL.md §9: listings, history pages) while the
others still wait for their handshake and ``auth``: on one core, every
catch-up read served then delays a later client's ``auth``. While at least
``auth_first_threshold`` authentication requests are being served, the
requests of authenticated connections wait here, in arrival order, and go
to their dispatchers once fewer are in flight, or after
``auth_first_hold_seconds`` at the latest, so that everyone is meant to be
ready sooner and the catch-up to follow. Outside a storm (fewer
authentications in flight than the threshold) nothing waits. Off by default
(threshold 0): on the shared machine it was measured on it neither clearly
helped nor hurt (BENCHMARKS.md, "Reconnect storms, fourth pass"); a quiet
machine's storms decide. A connection with more than ``read_ahead_bytes``
waiting has them served at once, so its dispatcher's own backpressure still
bounds what a client can make the server hold.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Held(Protocol):
    """What the gate holds requests for (server/session.py's Session)."""

    def serve(self, raw: str | bytes) -> None:
        """Give a request to the connection's dispatcher."""


class AuthFirst:
    def __init__(self, threshold: int, hold_seconds: float, held_bytes_limit: int) -> None:
        self._threshold = threshold
        self._hold_seconds = hold_seconds
        self._held_bytes_limit = held_bytes_limit
        self.in_flight = 0
        """Authentication requests being served now (``register``, ``login``, ``auth``)."""
        self._held: dict[Held, list[str | bytes]] = {}
        self._held_bytes: dict[Held, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.held_total = 0
        """Requests that ever waited here (tests, BENCHMARKS.md)."""

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self._held and self.in_flight < self._threshold:
            self.release()

    def admit(self, client: Held, raw: str | bytes) -> bool:
        """True when the request may be served now; otherwise it waits here."""
        held = self._held.get(client)
        if held is None:
            if self._threshold == 0 or self.in_flight < self._threshold:
                return True
            held = self._held[client] = []
            self._held_bytes[client] = 0
        held.append(raw)
        self.held_total += 1
        size = self._held_bytes[client] = self._held_bytes[client] + len(raw)
        if size > self._held_bytes_limit:
            self._serve(client)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._hold_seconds, self.release)
        return False

    def forget(self, client: Held) -> None:
        """The connection is gone: what it sent and was held is dropped with it."""
        self._held.pop(client, None)
        self._held_bytes.pop(client, None)

    def release(self) -> None:
        """Everything held to its dispatchers, connection by connection in arrival order."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for client in list(self._held):
            self._serve(client)

    def _serve(self, client: Held) -> None:
        held = self._held.pop(client, ())
        self._held_bytes.pop(client, None)
        for raw in held:
            client.serve(raw)
