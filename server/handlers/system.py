"""ping."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.server.clock import now_ms
from hubbub.server.handlers.context import Caller, Context


async def ping(ctx: Context, caller: Caller, req: frames.Ping) -> frames.Pong:
    return frames.Pong(ts=now_ms())
