"""register, login, auth, me."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.protocol.mentions import RESERVED_MENTIONS
from hubbub.server import logs
from hubbub.server.auth import InvalidToken
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import user_view
from hubbub.storage.errors import Conflict
from hubbub.storage.records import UserRecord
from hubbub.storage.rows import RESERVED_USERNAME_PREFIX


async def _start_session(
    ctx: Context, caller: Caller, user: UserRecord, conversation_ids: Sequence[int] | None = None
) -> frames.Session:
    await caller.authenticate(user, conversation_ids)
    token, expires_at = ctx.tokens.issue(user.id, generation=user.token_generation)
    return frames.Session(user=user_view(user), token=token, expires_at=expires_at)


async def register(ctx: Context, caller: Caller, req: frames.Register) -> frames.Session:
    if caller.user is not None:
        raise ApiError(ErrorCode.FORBIDDEN, "this connection is already authenticated")
    if req.username in RESERVED_MENTIONS:  # @channel, @here, @everyone mean everyone, never one user
        raise ApiError(ErrorCode.CONFLICT, f"username {req.username!r} is reserved")
    if req.username.startswith(RESERVED_USERNAME_PREFIX):  # deleted accounts' and their tombstone's names
        raise ApiError(ErrorCode.CONFLICT, f"usernames starting with {RESERVED_USERNAME_PREFIX!r} are reserved")
    password_hash = await ctx.passwords.hash(req.password)
    try:
        user = await ctx.directory.create_user(req.username, req.display_name, password_hash, now_ms())
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"username {req.username!r} is taken") from None
    logs.info("register", conn_id=caller.conn_id, user_id=user.id)
    return await _start_session(ctx, caller, user, ())  # a new account is in no conversation yet


async def login(ctx: Context, caller: Caller, req: frames.Login) -> frames.Session:
    by_name, by_address = ctx.login_failures_by_username, ctx.login_failures_by_address
    if by_name.blocked(req.username) or by_address.blocked(caller.address):
        raise ApiError(ErrorCode.RATE_LIMITED, "too many failed logins; try again later")
    user = await ctx.directory.get_user_by_username(req.username)
    ok = await ctx.passwords.verify(user.password_hash if user else None, req.password)
    if user is None or not ok:
        by_name.record(req.username)
        by_address.record(caller.address)
        logs.info("login_failed", conn_id=caller.conn_id, address=caller.address)
        raise ApiError(ErrorCode.UNAUTHORIZED, "wrong username or password")
    by_name.clear(req.username)
    # Told only to whoever knows the password: the account's state is not public.
    _refuse_disabled(user)
    return await _start_session(ctx, caller, user)


def _refuse_disabled(user: UserRecord) -> None:
    if user.disabled_at is not None:
        raise ApiError(ErrorCode.ACCOUNT_DISABLED, "this account is disabled")


async def auth(ctx: Context, caller: Caller, req: frames.Auth) -> frames.Session:
    try:
        user_id, generation = ctx.tokens.verify_session(req.token)
    except InvalidToken as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
    # The one store read, batched with the storm's other auths (server/lookups.py):
    # the token generation is in the user's row, and their conversations come with it.
    found = (await ctx.directory.sessions_of([user_id])).get(user_id)
    if found is None or found.user.deleted_at is not None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "invalid token: no such user")
    user = found.user
    # Before the generation: disabling raised it, and "disabled" is what the client must show.
    _refuse_disabled(user)
    if generation != user.token_generation:
        raise ApiError(ErrorCode.UNAUTHORIZED, "invalid token: the session ended (password changed or logged out)")
    return await _start_session(ctx, caller, user, found.conversation_ids)


async def me(ctx: Context, caller: Caller, req: frames.Me) -> frames.UserResult:
    if caller.user is None:  # handlers past authentication always have one
        raise ApiError(ErrorCode.UNAUTHORIZED, "authenticate first (register, login or auth)")
    return frames.UserResult(user=user_view(caller.user))
