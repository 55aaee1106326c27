"""admin.disable_user, admin.enable_user, admin.set_workspace_role (issue 15).

Only workspace admins, as the directory has them now (not as of their
login: a demotion takes effect at once), and never on a deleted account.
Every change is written to the audit log (server/audit.py). Disabling ends
the user's sessions in the same write (the token generation) and closes
their connections on every instance at once (``sessions.ended``, disabled:
close code 4004); instances also notice it on their own within
``account_check_seconds`` (server/account_check.py), which is how a
disabling by ``hubbub admin`` reaches them.
"""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server import logs
from hubbub.server.audit import audit
from hubbub.server.broker import sessions_ended_event
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError, not_found
from hubbub.server.handlers.context import Caller, Context
from hubbub.storage.errors import LastAdmin
from hubbub.storage.records import UserRecord

NOT_AN_ADMIN = "only workspace admins may do this"


async def workspace_admin(ctx: Context, caller: Caller) -> UserRecord | None:
    """The caller as stored now when they are an active workspace admin, else None."""
    if caller.user is None:
        return None
    user = await ctx.directory.get_user(caller.user.id)
    if user is None or user.workspace_role != "admin" or user.disabled_at is not None or user.deleted_at is not None:
        return None
    return user


async def _require_admin(ctx: Context, caller: Caller) -> UserRecord:
    admin = await workspace_admin(ctx, caller)
    if admin is None:
        raise ApiError(ErrorCode.FORBIDDEN, NOT_AN_ADMIN)
    return admin


async def _target(ctx: Context, user_id: int) -> UserRecord:
    user = await ctx.directory.get_user(user_id)
    if user is None or user.deleted_at is not None:
        raise not_found("user")
    return user


def _account(user: UserRecord) -> frames.AccountResult:
    account = frames.Account(user_id=user.id, disabled_at=user.disabled_at, workspace_role=user.workspace_role)
    return frames.AccountResult(account=account)


async def disable_user(ctx: Context, caller: Caller, req: frames.AdminDisableUser) -> frames.AccountResult:
    admin = await _require_admin(ctx, caller)
    target = await _target(ctx, req.user_id)
    if target.id == admin.id:
        raise ApiError(ErrorCode.FORBIDDEN, "you cannot disable your own account")
    if target.disabled_at is not None:
        return _account(target)  # already disabled: nothing changes, nothing to record
    now = now_ms()
    user = await ctx.directory.set_disabled(target.id, True, now)
    if user is None:
        raise not_found("user")
    ctx.publisher.publish_event(sessions_ended_event(user.id, user.token_generation, disabled=True))
    await audit(ctx.directory, admin.id, "user.disable", {"user_id": user.id}, now)
    logs.info("user_disabled", conn_id=caller.conn_id, user_id=user.id, by=admin.id)
    return _account(user)


async def enable_user(ctx: Context, caller: Caller, req: frames.AdminEnableUser) -> frames.AccountResult:
    admin = await _require_admin(ctx, caller)
    target = await _target(ctx, req.user_id)
    if target.disabled_at is None:
        return _account(target)
    now = now_ms()
    user = await ctx.directory.set_disabled(target.id, False, now)
    if user is None:
        raise not_found("user")
    await audit(ctx.directory, admin.id, "user.enable", {"user_id": user.id}, now)
    return _account(user)


async def set_workspace_role(ctx: Context, caller: Caller, req: frames.AdminSetWorkspaceRole) -> frames.AccountResult:
    admin = await _require_admin(ctx, caller)
    target = await _target(ctx, req.user_id)
    if target.workspace_role == req.role:
        return _account(target)
    try:
        user = await ctx.directory.set_workspace_role(target.id, req.role, keep_an_admin=True)
    except LastAdmin:
        raise ApiError(ErrorCode.CONFLICT, "the workspace's last active admin: make another user admin first") from None
    if user is None:
        raise not_found("user")
    await audit(ctx.directory, admin.id, "user.set_workspace_role", {"user_id": user.id, "role": req.role}, now_ms())
    return _account(user)
