"""Request handlers, one module per domain, and the table that dispatches to them.

A handler is ``async def op(ctx: Context, caller: Caller, request)``
(server/handlers/context.py: what it needs of the process and of the
connection), returns the result struct, or raises ApiError /
StoreUnavailable. server/dispatch.py calls ``HANDLERS[op](services, session, request)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hubbub.protocol import frames
from hubbub.server.handlers import (
    accounts,
    admin,
    channels,
    dms,
    messages,
    pins,
    presence,
    profiles,
    reactions,
    read_state,
    search,
    system,
    typing_indicator,
)
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.handlers.presence import on_offline, on_online

Handler = Callable[[Context, Caller, Any], Awaitable[Any]]

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
    "channel.update": channels.update,
    "channel.kick": channels.kick,
    "channel.set_role": channels.set_role,
    "dm.open": dms.open_,
    "dm.rename": dms.rename,
    "dm.list": dms.list_,
    "message.send": messages.send,
    "message.history": messages.history,
    "thread.history": messages.thread_history,
    "message.edit": messages.edit,
    "message.delete": messages.delete,
    "reaction.add": reactions.add,
    "reaction.remove": reactions.remove,
    "message.pin": pins.pin,
    "message.unpin": pins.unpin,
    "conversation.pins": pins.list_,
    "message.changes": messages.changes,
    "message.search": search.search,
    "presence.query": presence.query,
    "typing": typing_indicator.typing,
    "user.update": profiles.update,
    "user.get": profiles.get,
    "user.search": profiles.search,
    "password.change": profiles.change_password,
    "session.end_all": profiles.end_all,
    "conversation.mark_read": read_state.mark_read,
    "conversation.mute": read_state.mute,
    "admin.disable_user": admin.disable_user,
    "admin.enable_user": admin.enable_user,
    "admin.set_workspace_role": admin.set_workspace_role,
}


if HANDLERS.keys() != frames.RESULT_TYPES.keys():
    raise ImportError(f"handlers and result types differ: {sorted(HANDLERS.keys() ^ frames.RESULT_TYPES.keys())}")

__all__ = ["HANDLERS", "Caller", "Context", "Handler", "on_offline", "on_online"]
