"""register, login, auth, me."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import frames
from protocol.errors import ErrorCode
from server import logs
from server.auth import InvalidToken
from server.errors import ApiError
from server.hub import Hub, now_ms
from server.wire import user_view
from storage.errors import Conflict
from storage.records import UserRecord

if TYPE_CHECKING:
    from server.session import Session


async def _start_session(hub: Hub, session: Session, user: UserRecord) -> frames.Session:
    await session.authenticate(user)
    token, expires_at = hub.tokens.issue(user.id)
    return frames.Session(user=user_view(user), token=token, expires_at=expires_at)


async def register(hub: Hub, session: Session, req: frames.Register) -> frames.Session:
    if session.user is not None:
        raise ApiError(ErrorCode.FORBIDDEN, "this connection is already authenticated")
    password_hash = await hub.passwords.hash(req.password)
    try:
        user = await hub.directory.create_user(req.username, req.display_name, password_hash, now_ms())
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"username {req.username!r} is taken") from None
    logs.info("register", conn_id=session.conn_id, user_id=user.id)
    return await _start_session(hub, session, user)


async def login(hub: Hub, session: Session, req: frames.Login) -> frames.Session:
    by_name, by_address = hub.login_failures_by_username, hub.login_failures_by_address
    if by_name.blocked(req.username) or by_address.blocked(session.address):
        raise ApiError(ErrorCode.RATE_LIMITED, "too many failed logins; try again later")
    user = await hub.directory.get_user_by_username(req.username)
    ok = await hub.passwords.verify(user.password_hash if user else None, req.password)
    if user is None or not ok:
        by_name.record(req.username)
        by_address.record(session.address)
        logs.info("login_failed", conn_id=session.conn_id, address=session.address)
        raise ApiError(ErrorCode.UNAUTHORIZED, "wrong username or password")
    by_name.clear(req.username)
    return await _start_session(hub, session, user)


async def auth(hub: Hub, session: Session, req: frames.Auth) -> frames.Session:
    try:
        user_id = hub.tokens.verify(req.token)
    except InvalidToken as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
    user = await hub.directory.get_user(user_id)
    if user is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "invalid token: no such user")
    return await _start_session(hub, session, user)


async def me(hub: Hub, session: Session, req: frames.Me) -> frames.UserResult:
    assert session.user is not None
    return frames.UserResult(user=user_view(session.user))
