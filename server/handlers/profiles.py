"""Profiles and the directory (issue 12): user.update, user.get, user.search,
password.change and session.end_all.

Who hears of a profile change: every user who shares a conversation with
the changed user (one store query, ``Directory.contacts_of``), the user's
own other devices included, each of their connections once on every
instance (one event addressed to all of those users).

Signing out: a token carries its user's token generation (server/auth.py).
``password.change`` and ``session.end_all`` raise it in the same write as
the change, so ``auth`` refuses every older token without reading more than
the user row it reads anyway; the live connections of the user with an
older generation are closed (``CloseCode.SESSION_ENDED``) on every instance
by one ``sessions.ended`` broker event (server/registry.py). A password
change keeps the connection that made it: it gets a token of the new
generation in its reply and its session moves to that generation first.
"""

from __future__ import annotations

import functools
import zoneinfo
from urllib.parse import urlsplit

from hubbub.protocol import emoji, frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server import logs
from hubbub.server.broker import sessions_ended_event
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import user_view
from hubbub.storage.records import ProfileUpdate, SearchPosition, Status, UserRecord
from hubbub.storage.rows import search_position

_DONE = frames.Empty()


def _me(caller: Caller) -> UserRecord:
    if caller.user is None:  # handlers past authentication always have one
        raise ApiError(ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
    return caller.user


@functools.cache
def _time_zones() -> frozenset[str]:
    """Every IANA zone name zoneinfo knows here (read once: it walks the tz database)."""
    return frozenset(zoneinfo.available_timezones())


def _time_zone(name: str) -> str:
    if name and name not in _time_zones():
        raise ApiError(ErrorCode.BAD_REQUEST, f"unknown time zone {name!r} (an IANA name such as Europe/Paris)")
    return name


def _avatar_url(ctx: Context, url: str) -> str:
    if len(url) > ctx.profile_limits.max_avatar_url_chars:
        raise ApiError(ErrorCode.TOO_LARGE, f"avatar_url longer than {ctx.profile_limits.max_avatar_url_chars}")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(ErrorCode.BAD_REQUEST, "avatar_url must be an http or https URL with a host")
    return url


def _status(ctx: Context, req: frames.UserUpdate) -> Status | None:
    """The status to set, None to leave it: set whole when ``status_text`` or ``status_emoji`` is given."""
    if req.status_text is None and req.status_emoji is None:
        if req.status_expires_at is not None:
            raise ApiError(ErrorCode.BAD_REQUEST, "status_expires_at needs status_text or status_emoji")
        return None
    text, emoji_text = req.status_text or "", req.status_emoji or ""
    if len(text) > ctx.profile_limits.max_status_chars:
        raise ApiError(ErrorCode.TOO_LARGE, f"status_text longer than {ctx.profile_limits.max_status_chars}")
    canonical = ""
    if emoji_text:
        found = emoji.normalize(emoji_text)
        if found is None:
            raise ApiError(ErrorCode.BAD_REQUEST, f"{emoji_text!r} is not an emoji")
        canonical = found
    if req.status_expires_at is not None and req.status_expires_at <= now_ms():
        raise ApiError(ErrorCode.BAD_REQUEST, "status_expires_at is in the past")
    return Status(text=text, emoji=canonical, expires_at=req.status_expires_at)


def _profile_update(ctx: Context, req: frames.UserUpdate) -> ProfileUpdate:
    """The request checked whole before anything is stored: one bad field changes nothing."""
    return ProfileUpdate(
        display_name=req.display_name,
        status=_status(ctx, req),
        time_zone=None if req.time_zone is None else _time_zone(req.time_zone),
        avatar_url=None if req.avatar_url is None else _avatar_url(ctx, req.avatar_url),
        searchable=req.searchable,
    )


async def update(ctx: Context, caller: Caller, req: frames.UserUpdate) -> frames.UserResult:
    me = _me(caller)
    changes = _profile_update(ctx, req)
    user = await ctx.directory.update_profile(me.id, changes)
    if user is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "this account no longer exists")
    caller.refresh_user(user)
    view = user_view(user)
    ctx.publisher.publish(frames.UserUpdated(user=view), users=await ctx.directory.contacts_of(user.id))
    return frames.UserResult(user=view)


async def get(ctx: Context, caller: Caller, req: frames.UserGet) -> frames.UserList:
    _me(caller)
    now = now_ms()
    return frames.UserList(users=[user_view(u, now) for u in await ctx.directory.get_users(req.user_ids)])


async def search(ctx: Context, caller: Caller, req: frames.UserSearch) -> frames.UserPage:
    _me(caller)
    limit = min(req.limit, ctx.profile_limits.user_search_max_limit)
    # One more than the page: whether there is a next page, without a second query.
    after = None if req.cursor is None else _position(req.cursor)
    found = await ctx.directory.search_users(req.query, after=after, limit=limit + 1)
    page = found[:limit]
    now = now_ms()
    next_cursor = _cursor(search_position(page[-1], req.query)) if len(found) > limit else None
    return frames.UserPage(users=[user_view(u, now) for u in page], next_cursor=next_cursor)


def _cursor(position: SearchPosition) -> str:
    """A page's ``next_cursor``: the last user's username and matched text (no username has a space)."""
    return f"{position.username} {position.key}"


def _position(cursor: str) -> SearchPosition:
    username, _, key = cursor.partition(" ")
    return SearchPosition(key=key, username=username)


async def change_password(ctx: Context, caller: Caller, req: frames.PasswordChange) -> frames.Session:
    me = _me(caller)
    current = await ctx.directory.get_user(me.id)  # the hash as stored now, not as of this connection's login
    if current is None or not await ctx.passwords.verify(current.password_hash, req.old_password):
        raise ApiError(ErrorCode.UNAUTHORIZED, "wrong password")
    user = await ctx.directory.set_password(me.id, await ctx.passwords.hash(req.new_password))
    if user is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "this account no longer exists")
    caller.refresh_user(user)  # before the event: this connection is of the new generation
    ctx.publisher.publish_event(sessions_ended_event(user.id, user.token_generation))
    logs.info("password_changed", conn_id=caller.conn_id, user_id=user.id)
    token, expires_at = ctx.tokens.issue(user.id, generation=user.token_generation)
    return frames.Session(user=user_view(user), token=token, expires_at=expires_at)


async def end_all(ctx: Context, caller: Caller, req: frames.SessionEndAll) -> frames.Empty:
    me = _me(caller)
    user = await ctx.directory.end_sessions(me.id)
    if user is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "this account no longer exists")
    # This connection keeps its old generation, so it is closed too, after this reply.
    ctx.publisher.publish_event(sessions_ended_event(user.id, user.token_generation))
    logs.info("sessions_ended", conn_id=caller.conn_id, user_id=user.id)
    return _DONE
