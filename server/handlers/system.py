"""ping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import frames
from server.hub import Hub, now_ms

if TYPE_CHECKING:
    from server.session import Session


async def ping(hub: Hub, session: Session, req: frames.Ping) -> frames.Pong:
    return frames.Pong(ts=now_ms())
