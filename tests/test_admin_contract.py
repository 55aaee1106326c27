"""The contract of administration (issue 15) in the stores, on every backend
(tests/storage_contract.py binds the fixtures): disabling and re-enabling
users and the poll servers make of it, workspace roles and the last-admin
rule (under concurrent demotions too), account deletion (the directory's
tombstone, the messages re-attributed in batches, search following them) and
the audit log."""

from __future__ import annotations

import asyncio

import pytest

from hubbub.protocol.search import parse
from hubbub.storage.accounts import CannotDelete, delete_account
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.errors import Conflict, LastAdmin
from hubbub.storage.factory import Stores
from hubbub.storage.records import MessageQuery, ProfileUpdate, Status
from hubbub.storage.rows import DELETED_DISPLAY_NAME, TOMBSTONE_USERNAME, deleted_username
from tests import storage_contract
from tests.storage_contract import NOW, fill, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


# -- disabling ---------------------------------------------------------------------


async def test_new_users_are_active_workspace_members(directory: Directory) -> None:
    alice = await new_user(directory)
    assert (alice.disabled_at, alice.workspace_role, alice.deleted_at) == (None, "member", None)
    assert await directory.get_user(alice.id) == alice


async def test_disabling_ends_sessions_and_re_enabling_keeps_them_ended(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    disabled = await directory.set_disabled(alice.id, True, NOW + 5)
    assert disabled is not None
    assert (disabled.disabled_at, disabled.token_generation) == (NOW + 5, alice.token_generation + 1)
    assert await directory.get_user(alice.id) == disabled
    assert await directory.get_user_by_username(alice.username) == disabled
    # Disabling a disabled user changes nothing: the first time stays, no second generation.
    assert await directory.set_disabled(alice.id, True, NOW + 9) == disabled
    enabled = await directory.set_disabled(alice.id, False, NOW + 10)
    assert enabled is not None
    assert (enabled.disabled_at, enabled.token_generation) == (None, disabled.token_generation)
    assert await directory.set_disabled(alice.id, False, NOW + 11) == enabled
    assert await directory.get_user(bob.id) == bob
    assert await directory.set_disabled(10**9, True, NOW) is None
    assert await directory.set_disabled(10**9, False, NOW) is None


async def test_disabled_since_lists_the_still_disabled_in_order(directory: Directory) -> None:
    alice, bob, carol = [await new_user(directory) for _ in range(3)]
    await directory.set_disabled(bob.id, True, NOW + 20)
    await directory.set_disabled(alice.id, True, NOW + 10)
    await directory.set_disabled(carol.id, True, NOW + 30)
    assert [u.id for u in await directory.disabled_since(NOW)] == [alice.id, bob.id, carol.id]
    assert [u.id for u in await directory.disabled_since(NOW + 20)] == [bob.id, carol.id]
    assert [u.id for u in await directory.disabled_since(NOW, limit=2)] == [alice.id, bob.id]
    assert await directory.disabled_since(NOW + 31) == []
    await directory.set_disabled(bob.id, False, NOW + 40)
    assert [u.id for u in await directory.disabled_since(NOW)] == [alice.id, carol.id]
    # Disabled again later: found from the new time.
    await directory.set_disabled(bob.id, True, NOW + 50)
    assert [u.id for u in await directory.disabled_since(NOW + 45)] == [bob.id]


# -- workspace roles -----------------------------------------------------------------


async def test_workspace_roles_and_the_last_admin(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    assert await directory.workspace_admins() == []
    promoted = await directory.set_workspace_role(alice.id, "admin")
    assert promoted is not None and promoted.workspace_role == "admin"
    assert await directory.get_user(alice.id) == promoted
    assert [u.id for u in await directory.workspace_admins()] == [alice.id]
    # The last active admin: refused when asked to keep one, nothing changed.
    with pytest.raises(LastAdmin):
        await directory.set_workspace_role(alice.id, "member", keep_an_admin=True)
    assert await directory.get_user(alice.id) == promoted
    assert isinstance(LastAdmin("x"), Conflict)
    # A disabled admin does not count as one.
    await directory.set_workspace_role(bob.id, "admin")
    await directory.set_disabled(bob.id, True, NOW)
    with pytest.raises(LastAdmin):
        await directory.set_workspace_role(alice.id, "member", keep_an_admin=True)
    await directory.set_disabled(bob.id, False, NOW)
    demoted = await directory.set_workspace_role(alice.id, "member", keep_an_admin=True)
    assert demoted is not None and demoted.workspace_role == "member"
    assert [u.id for u in await directory.workspace_admins()] == [bob.id]
    # Without the rule (the command line may), and a member "demoted" to member is no change.
    gone = await directory.set_workspace_role(bob.id, "member")
    assert gone is not None and gone.workspace_role == "member"
    assert await directory.set_workspace_role(bob.id, "member", keep_an_admin=True) == gone
    assert await directory.set_workspace_role(10**9, "admin") is None


async def test_two_admins_demoting_each_other_at_once_leave_one(directory: Directory) -> None:
    for _ in range(5):
        alice, bob = await new_user(directory), await new_user(directory)
        for user in (alice, bob):
            await directory.set_workspace_role(user.id, "admin")
        for other in await directory.workspace_admins():
            if other.id not in (alice.id, bob.id):
                await directory.set_workspace_role(other.id, "member")
        outcomes = await asyncio.gather(
            directory.set_workspace_role(alice.id, "member", keep_an_admin=True),
            directory.set_workspace_role(bob.id, "member", keep_an_admin=True),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["LastAdmin", "UserRecord"]
        assert len(await directory.workspace_admins()) == 1


# -- account deletion ------------------------------------------------------------------


async def test_the_tombstone_user_is_one_and_cannot_be_anyone(directory: Directory) -> None:
    tombstone = await directory.tombstone_user(NOW)
    assert tombstone.username == TOMBSTONE_USERNAME
    assert tombstone.display_name == DELETED_DISPLAY_NAME
    assert tombstone.deleted_at is not None and tombstone.disabled_at is not None
    assert not tombstone.searchable
    assert await directory.tombstone_user(NOW + 1) == tombstone
    assert await directory.search_users("deleted", after=None, limit=10) == []


async def test_a_live_account_holding_the_tombstone_name_is_a_conflict(directory: Directory) -> None:
    await directory.create_user(TOMBSTONE_USERNAME, "Someone", "hash$x", NOW)
    with pytest.raises(Conflict):
        await directory.tombstone_user(NOW)


async def test_deleting_a_user_leaves_a_tombstone_row_and_frees_the_name(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    await directory.update_profile(alice.id, _profile())
    await directory.set_workspace_role(alice.id, "admin")
    owned = await new_channel(directory, alice)
    await directory.add_member(owned.id, bob.id, NOW)
    joined = await new_channel(directory, bob, private=True)
    await directory.add_member(joined.id, alice.id, NOW)
    dm, _ = await directory.open_dm([alice.id, bob.id], alice.id, NOW)

    deleted = await directory.delete_user(alice.id, NOW + 7)
    assert deleted is not None
    assert deleted.id == alice.id
    assert (deleted.username, deleted.display_name) == (deleted_username(alice.id), DELETED_DISPLAY_NAME)
    assert (deleted.status_text, deleted.status_emoji, deleted.status_expires_at) == ("", "", None)
    assert (deleted.time_zone, deleted.avatar_url, deleted.searchable) == ("", "", False)
    assert deleted.password_hash != alice.password_hash
    assert deleted.token_generation == alice.token_generation + 1
    assert (deleted.disabled_at, deleted.deleted_at, deleted.workspace_role) == (NOW + 7, NOW + 7, "member")
    assert await directory.get_user(alice.id) == deleted
    assert await directory.get_user_by_username(alice.username) is None
    assert await directory.memberships_of(alice.id) == []
    assert await directory.member_ids(owned.id) == [bob.id]
    assert await directory.member_ids(joined.id) == [bob.id]
    assert await directory.member_ids(dm.id) == [bob.id]
    # Bob was only a member of Alice's channel: now its owner.
    assert await directory.member_roles(owned.id) == {bob.id: "owner"}
    assert await directory.workspace_admins() == []
    # The name is free again; deleting twice changes nothing; a deleted account cannot be re-enabled or promoted.
    again = await directory.create_user(alice.username, "New Alice", "hash$new", NOW + 8)
    assert again.id != alice.id
    assert await directory.delete_user(alice.id, NOW + 9) == deleted
    assert await directory.set_disabled(alice.id, False, NOW + 9) == deleted
    assert await directory.set_workspace_role(alice.id, "admin") is None
    assert await directory.delete_user(10**9, NOW) is None


async def test_a_live_account_holding_the_deleted_name_is_a_conflict(directory: Directory) -> None:
    alice = await new_user(directory)
    await directory.create_user(deleted_username(alice.id), "Someone", "hash$x", NOW)
    room = await new_channel(directory, alice)
    with pytest.raises(Conflict):
        await directory.delete_user(alice.id, NOW)
    assert await directory.get_user(alice.id) == alice
    assert await directory.member_ids(room.id) == [alice.id]


async def test_a_co_owner_keeps_the_channel_and_an_admin_goes_before_a_member(directory: Directory) -> None:
    alice, bob, carol, dave = [await new_user(directory) for _ in range(4)]
    shared = await new_channel(directory, alice)
    await directory.add_member(shared.id, bob.id, NOW)
    await directory.set_role(shared.id, alice.id, bob.id, "owner", _pass)
    ranked = await new_channel(directory, alice)
    await directory.add_member(ranked.id, carol.id, NOW + 1)
    await directory.add_member(ranked.id, dave.id, NOW + 2)
    await directory.set_role(ranked.id, alice.id, dave.id, "admin", _pass)
    alone = await new_channel(directory, alice)
    await directory.delete_user(alice.id, NOW + 3)
    assert await directory.member_roles(shared.id) == {bob.id: "owner"}
    assert await directory.member_roles(ranked.id) == {carol.id: "member", dave.id: "owner"}
    assert await directory.member_roles(alone.id) == {}


async def test_reattribute_moves_a_senders_messages_in_batches(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice, bob = await new_user(directory), await new_user(directory)
    tombstone = await directory.tombstone_user(NOW)
    room = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    mine = await fill(log, room, alice, 5)
    # Bob's message with the same client_msg_id as one of Alice's: both end up the tombstone's, no conflict.
    bobs = (await log.append(new_message(room, bob, "fill-0", "bob's words"))).record
    elsewhere = (await log.append(new_message(other, alice, "x", "needle in the other room"))).record
    assert await log.reattribute(alice.id, tombstone.id, 4) == 4
    assert await log.reattribute(alice.id, tombstone.id, 4) == 2
    assert await log.reattribute(alice.id, tombstone.id, 4) == 0
    assert await log.reattribute(bob.id, tombstone.id, 4) == 1
    history = await log.history(room.id, before=None, after=None, limit=10, order="asc")
    assert [m.id for m in history] == [m.id for m in [*mine, bobs]]
    assert all(m.sender_id == tombstone.id for m in history)
    assert all(m.client_msg_id == m.id for m in history)
    # Nothing else changed: text, seq, revision.
    assert [(m.text, m.seq, m.rev) for m in history] == [(m.text, m.seq, m.rev) for m in [*mine, bobs]]
    moved = await log.get_message(other.id, elsewhere.id)
    assert moved is not None and moved.sender_id == tombstone.id
    # Search follows: the sender filter finds them under the tombstone only.
    assert await _found(log, "needle", (room.id, other.id), alice.id) == []
    assert await _found(log, "needle", (room.id, other.id), tombstone.id) == [elsewhere.id]


async def test_delete_account_does_both_and_finishes_an_interrupted_run(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice, bob = await new_user(directory), await new_user(directory)
    room = await new_channel(directory, alice)
    await directory.add_member(room.id, bob.id, NOW)
    sent = await fill(log, room, alice, 7)
    bobs = await fill(log, room, bob, 2)
    # As if a first run stopped after the directory and one batch.
    tombstone = await directory.tombstone_user(NOW)
    await directory.delete_user(alice.id, NOW + 1)
    assert await log.reattribute(alice.id, tombstone.id, 3) == 3
    outcome = await delete_account(directory, log, alice.id, NOW + 2, batch=2)
    assert outcome is not None
    assert outcome.tombstone == tombstone
    assert outcome.messages_moved == 4
    assert outcome.user.deleted_at == NOW + 1  # the first run's
    history = await log.history(room.id, before=None, after=None, limit=20, order="asc")
    assert [m.sender_id for m in history] == [tombstone.id] * len(sent) + [bob.id] * len(bobs)
    with pytest.raises(CannotDelete):
        await delete_account(directory, log, tombstone.id, NOW)
    assert await delete_account(directory, log, 10**9, NOW) is None


# -- the audit log ---------------------------------------------------------------------


async def test_audit_entries_are_listed_in_order_and_paged(directory: Directory) -> None:
    admin = await new_user(directory)
    first = await directory.record_audit(admin.id, "user.disable", {"user_id": 7}, NOW)
    second = await directory.record_audit(None, "user.set_workspace_role", {"user_id": 7, "role": "admin"}, NOW + 1)
    third = await directory.record_audit(admin.id, "channel.update", {"channel_id": 3, "fields": ["topic"]}, NOW + 2)
    assert (first.actor_id, first.action, first.target, first.ts) == (admin.id, "user.disable", {"user_id": 7}, NOW)
    assert second.actor_id is None and second.target == {"user_id": 7, "role": "admin"}
    assert first.id < second.id < third.id
    assert await directory.audit_entries(0, 10) == [first, second, third]
    assert await directory.audit_entries(first.id, 1) == [second]
    assert await directory.audit_entries(third.id, 10) == []


# -- helpers ---------------------------------------------------------------------------


def _pass(*_: object) -> None:
    """An AdminCheck that allows everything (the rules are tested in tests/test_roles_contract.py)."""


def _profile() -> ProfileUpdate:
    return ProfileUpdate(
        status=Status(text="away", emoji=":palm_tree:", expires_at=NOW + 99),
        time_zone="Europe/Paris",
        avatar_url="https://example.test/a.png",
    )


async def _found(log: MessageLog, text: str, conversation_ids: tuple[int, ...], sender_id: int) -> list[str]:
    query = MessageQuery(terms=tuple(parse(text)), conversation_ids=conversation_ids, sender_id=sender_id)
    return [hit.record.id for hit in await log.search(query)]
