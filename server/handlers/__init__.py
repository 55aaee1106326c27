"""Request handlers, one module per domain, and the table that dispatches to them.

A handler takes (hub, session, request), returns the result struct, or
raises ApiError / StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from protocol import frames
from server.handlers import accounts, channels, dms, messages, presence, system
from server.handlers.presence import on_offline, on_online

if TYPE_CHECKING:
    from server.hub import Hub
    from server.session import Session

Handler = Callable[["Hub", "Session", Any], Awaitable[Any]]

HANDLERS: dict[str, Handler] = {
    "ping": system.ping,
    "register": accounts.register,
    "login": accounts.login,
    "auth": accounts.auth,
    "me": accounts.me,
    "channel.create": channels.create,
    "channel.list": channels.list_,
    "channel.join": channels.join,
    "channel.invite": channels.invite,
    "channel.leave": channels.leave,
    "channel.members": channels.members,
    "dm.open": dms.open_,
    "dm.list": dms.list_,
    "message.send": messages.send,
    "message.history": messages.history,
    "presence.query": presence.query,
}
assert HANDLERS.keys() == frames.RESULT_TYPES.keys()

__all__ = ["HANDLERS", "on_offline", "on_online"]
