"""The socket as a client's session and its dispatcher see it.

server/connection.py implements it and is the socket's only owner: it
buffers frames and writes them once per event-loop turn, cuts a slow
consumer, pings, pauses and resumes reading, and sends the close frame after
every frame queued before it. Everything above it (server/session.py,
server/dispatch.py) writes to this interface and nothing else, so tests can
stand a fake in its place (tests/unit/test_dispatch.py).
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    def send_frame(self, frame: bytes) -> None:
        """Queue a complete WebSocket frame, written at the end of this
        event-loop turn; never blocks. Dropped once the connection is closing."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake after every frame already queued."""

    def is_closing(self) -> bool:
        """Whether a close has started (by either side) or the connection is gone."""

    def pause_reading(self) -> None:
        """Stop reading the socket: TCP pushes back on the client."""

    def resume_reading(self) -> None:
        """Read the socket again."""

    @property
    def close_code(self) -> int | None:
        """The code of the closing handshake, once there was one."""

    def remote_address(self) -> str | None:
        """The TCP peer's IP."""
