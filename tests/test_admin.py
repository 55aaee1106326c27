"""Workspace administration (issue 15), end to end: admin.disable_user,
admin.enable_user and admin.set_workspace_role (admins only, the last active
admin kept), a disabled user's logins and tokens refused and their
connections closed with 4004 (by the protocol at once, by a change made in
the store as ``hubbub admin`` makes it within the account check), workspace
admins administering channels they are not in, and the audit log of all of
it; over real sockets against one real server per store combination (shared
by the module's tests, which run one after another: each makes its own users
and channels, and the last-admin test demotes the others' admins first).
Two instances: tests/test_admin_cluster.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import CloseCode, ErrorCode
from hubbub.server.clock import now_ms
from hubbub.storage.base import Directory
from hubbub.storage.records import AuditEntry
from tests.conftest import RunningServer, unique_name
from tests.helpers import closed_with, expect_error, settled_events, uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("admin")]

CHECK_SECONDS = 0.2
LIMITS: dict[str, Any] = {"account_check_seconds": CHECK_SECONDS}
PASSWORD = "correct horse"


def directory_of(server: RunningServer) -> Directory:
    services = server.app.services
    assert services is not None
    return services.directory


async def named_user(server: RunningServer) -> tuple[Client, str]:
    name = unique_name("member")
    return await server.user(name, PASSWORD), name


async def admin(server: RunningServer) -> Client:
    """A new user made workspace admin in the store (as ``hubbub admin`` would), then logged in."""
    client, name = await named_user(server)
    await directory_of(server).set_workspace_role(uid(client), "admin")
    fresh = await server.client()
    await fresh.login(name, PASSWORD)
    return fresh


async def audit_since(server: RunningServer, first: int) -> list[AuditEntry]:
    return [e for e in await directory_of(server).audit_entries(0, 10_000) if e.id > first]


async def last_audit_id(server: RunningServer) -> int:
    entries = await directory_of(server).audit_entries(0, 10_000)
    return entries[-1].id if entries else 0


# -- who may --------------------------------------------------------------------------


async def test_members_may_not_administer_the_workspace(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    bob = await shared_server.user()
    for op, fields in (
        ("admin.disable_user", {"user_id": uid(bob)}),
        ("admin.enable_user", {"user_id": uid(bob)}),
        ("admin.set_workspace_role", {"user_id": uid(alice), "role": "admin"}),
    ):
        error = await expect_error(alice, ErrorCode.FORBIDDEN, op, **fields)
        assert error.message == "only workspace admins may do this"
    found = await directory_of(shared_server).get_user(uid(bob))
    assert found is not None and found.disabled_at is None
    assert (await directory_of(shared_server).get_user(uid(alice)) or found).workspace_role == "member"


async def test_deleted_account_names_are_reserved(shared_server: RunningServer) -> None:
    client = await shared_server.client()
    for name in ("deleted-user", "deleted-42"):
        await expect_error(client, ErrorCode.CONFLICT, "register", username=name, password=PASSWORD, display_name="D")


# -- disabling over the protocol ---------------------------------------------------------


async def test_a_disabled_user_is_closed_everywhere_refused_and_re_enabled(shared_server: RunningServer) -> None:
    boss = await admin(shared_server)
    bob, bob_name = await named_user(shared_server)
    bob_phone = await shared_server.client()
    session = await bob_phone.login(bob_name, PASSWORD)
    first = await last_audit_id(shared_server)

    result: frames.AccountResult = await boss.call("admin.disable_user", user_id=uid(bob))
    assert result.account.user_id == uid(bob) and result.account.workspace_role == "member"
    assert result.account.disabled_at is not None
    assert await closed_with(bob) == CloseCode.ACCOUNT_DISABLED
    assert await closed_with(bob_phone) == CloseCode.ACCOUNT_DISABLED
    # Disabling again changes nothing and records nothing.
    again: frames.AccountResult = await boss.call("admin.disable_user", user_id=uid(bob))
    assert again.account == result.account

    # Refused: the right password and any token; a wrong password is just wrong.
    retry = await shared_server.client()
    error = await expect_error(retry, ErrorCode.ACCOUNT_DISABLED, "login", username=bob_name, password=PASSWORD)
    assert error.message == "this account is disabled"
    await expect_error(retry, ErrorCode.UNAUTHORIZED, "login", username=bob_name, password="wrong horse")
    await expect_error(retry, ErrorCode.ACCOUNT_DISABLED, "auth", token=session.token)

    enabled: frames.AccountResult = await boss.call("admin.enable_user", user_id=uid(bob))
    assert enabled.account.disabled_at is None
    # The old token stays refused (its generation is gone); the password works again.
    await expect_error(retry, ErrorCode.UNAUTHORIZED, "auth", token=session.token)
    back = await retry.login(bob_name, PASSWORD)
    assert back.user.id == uid(bob)

    entries = await audit_since(shared_server, first)
    assert [(e.actor_id, e.action, e.target) for e in entries] == [
        (uid(boss), "user.disable", {"user_id": uid(bob)}),
        (uid(boss), "user.enable", {"user_id": uid(bob)}),
    ]


async def test_admins_cannot_disable_themselves_or_nobody(shared_server: RunningServer) -> None:
    boss = await admin(shared_server)
    await expect_error(boss, ErrorCode.FORBIDDEN, "admin.disable_user", user_id=uid(boss))
    await expect_error(boss, ErrorCode.NOT_FOUND, "admin.disable_user", user_id=10**9)
    await expect_error(boss, ErrorCode.NOT_FOUND, "admin.enable_user", user_id=10**9)
    await expect_error(boss, ErrorCode.NOT_FOUND, "admin.set_workspace_role", user_id=10**9, role="admin")
    await expect_error(boss, ErrorCode.BAD_REQUEST, "admin.set_workspace_role", user_id=uid(boss), role="owner")


async def test_a_demoted_admin_loses_their_powers_at_once(shared_server: RunningServer) -> None:
    boss = await admin(shared_server)
    bob = await shared_server.user()
    await directory_of(shared_server).set_workspace_role(uid(boss), "member")
    await expect_error(boss, ErrorCode.FORBIDDEN, "admin.disable_user", user_id=uid(bob))


# -- disabling in the store (the command line) ---------------------------------------------


async def test_a_user_disabled_in_the_store_is_closed_within_the_check(shared_server: RunningServer) -> None:
    carol, carol_name = await named_user(shared_server)
    other = await shared_server.user()
    started = time.monotonic()
    disabled = await directory_of(shared_server).set_disabled(uid(carol), True, now_ms())
    assert disabled is not None
    assert await closed_with(carol, timeout=5) == CloseCode.ACCOUNT_DISABLED
    assert time.monotonic() - started < CHECK_SECONDS + 2  # one check interval, and slack for a busy machine
    await settled_events(other)  # nobody else is touched
    retry = await shared_server.client()
    await expect_error(retry, ErrorCode.ACCOUNT_DISABLED, "login", username=carol_name, password=PASSWORD)


# -- workspace roles ----------------------------------------------------------------------


async def test_admins_make_admins_and_the_last_active_admin_stays(shared_server: RunningServer) -> None:
    directory = directory_of(shared_server)
    boss = await admin(shared_server)
    for other in await directory.workspace_admins():  # the earlier tests' admins
        if other.id != uid(boss):
            await directory.set_workspace_role(other.id, "member")
    bob = await shared_server.user()
    first = await last_audit_id(shared_server)

    promoted: frames.AccountResult = await boss.call("admin.set_workspace_role", user_id=uid(bob), role="admin")
    assert promoted.account.workspace_role == "admin"
    seen: frames.UserList = await boss.call("user.get", user_ids=[uid(bob), uid(boss)])
    assert {u.id: u.workspace_role for u in seen.users} == {uid(bob): "admin", uid(boss): "admin"}
    # Bob's admin.* requests see it at once.
    carol = await shared_server.user()
    await bob.call("admin.disable_user", user_id=uid(carol))
    assert await closed_with(carol) == CloseCode.ACCOUNT_DISABLED

    await boss.call("admin.set_workspace_role", user_id=uid(boss), role="member")  # bob is still admin
    error = await expect_error(bob, ErrorCode.CONFLICT, "admin.set_workspace_role", user_id=uid(bob), role="member")
    assert "last active admin" in error.message
    assert [u.id for u in await directory.workspace_admins()] == [uid(bob)]

    entries = await audit_since(shared_server, first)
    assert [(e.actor_id, e.action, e.target) for e in entries] == [
        (uid(boss), "user.set_workspace_role", {"user_id": uid(bob), "role": "admin"}),
        (uid(bob), "user.disable", {"user_id": uid(carol)}),
        (uid(boss), "user.set_workspace_role", {"user_id": uid(boss), "role": "member"}),
    ]


# -- channels --------------------------------------------------------------------------------


async def test_a_workspace_admin_administers_channels_they_are_not_in(shared_server: RunningServer) -> None:
    owner = await shared_server.user()
    member = await shared_server.user()
    private = (await owner.call("channel.create", name=unique_name("secret"), private=True)).conversation
    await owner.call("channel.invite", channel_id=private.id, user_id=uid(member))
    await settled_events(owner)
    await settled_events(member)
    boss = await admin(shared_server)
    first = await last_audit_id(shared_server)

    listed: frames.Members = await boss.call("channel.members", channel_id=private.id)
    assert {m.id: m.role for m in listed.members} == {uid(owner): "owner", uid(member): "member"}
    updated: frames.ConversationResult = await boss.call("channel.update", channel_id=private.id, topic="by the admin")
    assert updated.conversation.topic == "by the admin"
    event = await member.next_event(frames.ChannelUpdated)
    assert event.by == uid(boss)
    await boss.call("channel.set_role", channel_id=private.id, user_id=uid(member), role="owner")
    await boss.call("channel.kick", channel_id=private.id, user_id=uid(owner))
    await owner.next_event(frames.ConversationRemoved)
    # Owners' own rules still hold: the last owner stays.
    await expect_error(boss, ErrorCode.CONFLICT, "channel.kick", channel_id=private.id, user_id=uid(member))
    # Not a member: still no messages of it.
    await expect_error(boss, ErrorCode.NOT_FOUND, "message.history", conversation_id=private.id)

    entries = await audit_since(shared_server, first)
    assert [(e.actor_id, e.action, e.target) for e in entries] == [
        (uid(boss), "channel.update", {"channel_id": private.id, "topic": "by the admin"}),
        (uid(boss), "channel.set_role", {"channel_id": private.id, "user_id": uid(member), "role": "owner"}),
        (uid(boss), "channel.kick", {"channel_id": private.id, "user_id": uid(owner)}),
    ]

    # Demoted: the private channel is invisible to them again, at once.
    await directory_of(shared_server).set_workspace_role(uid(boss), "member")
    await expect_error(boss, ErrorCode.NOT_FOUND, "channel.update", channel_id=private.id, topic="again")
    await expect_error(boss, ErrorCode.NOT_FOUND, "channel.members", channel_id=private.id)


async def test_the_account_check_survives_many_disabled_users(shared_server: RunningServer) -> None:
    directory = directory_of(shared_server)
    users = [await shared_server.user() for _ in range(3)]
    await asyncio.gather(*(directory.set_disabled(uid(u), True, now_ms()) for u in users))
    codes = await asyncio.gather(*(closed_with(u, timeout=5) for u in users))
    assert codes == [CloseCode.ACCOUNT_DISABLED] * 3
