"""The contract of the Directory's roles and channel administration (issue 12)
on every backend (tests/storage_contract.py binds the fixtures): roles on
create, join and invite, channel updates, role changes and removals checked
inside the store's transaction, DM names; and the concurrency the last-owner
rule must survive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from hubbub.protocol.errors import ErrorCode
from hubbub.server import channel_roles as rules
from hubbub.server.errors import ApiError
from hubbub.storage.base import AdminCheck, Directory
from hubbub.storage.errors import Conflict
from hubbub.storage.records import ChannelEdit, ConversationRecord, Role, Standing
from tests import storage_contract
from tests.storage_contract import NOW, name, new_channel, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


class Seen:
    """An AdminCheck that passes and remembers what the store showed it."""

    def __init__(self) -> None:
        self.calls: list[tuple[ConversationRecord, Standing]] = []

    def __call__(self, channel: ConversationRecord, standing: Standing) -> None:
        self.calls.append((channel, standing))


def refuse(channel: ConversationRecord, standing: Standing) -> None:
    raise ApiError(ErrorCode.FORBIDDEN, "refused by the test")


async def test_the_creator_is_owner_and_everyone_added_a_member(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    carol = await new_user(directory)
    channel = await new_channel(directory, alice)
    assert (channel.purpose, channel.archived, channel.invite_policy) == ("", False, "anyone")
    await directory.add_member(channel.id, carol.id, NOW)
    await directory.add_member(channel.id, bob.id, NOW)
    assert await directory.member_roles(channel.id) == {alice.id: "owner", bob.id: "member", carol.id: "member"}
    assert list(await directory.member_roles(channel.id)) == sorted([alice.id, bob.id, carol.id])

    other = await new_channel(directory, bob)
    dm, _ = await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    missing = dm.id + 1000
    assert await directory.roles_of(bob.id, [channel.id, other.id, dm.id, missing]) == {
        channel.id: "member",
        other.id: "owner",
        dm.id: "member",
    }
    assert await directory.roles_of(carol.id, [other.id]) == {}
    assert await directory.roles_of(carol.id, []) == {}


async def test_update_channel_changes_only_the_fields_given(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    seen = Seen()
    edit = ChannelEdit(topic="new topic", purpose="why we are here", invite_policy="admins")
    updated = await directory.update_channel(channel.id, alice.id, edit, seen)
    assert updated is not None
    assert (updated.name, updated.topic, updated.purpose, updated.invite_policy, updated.archived) == (
        channel.name,
        "new topic",
        "why we are here",
        "admins",
        False,
    )
    assert await directory.get_conversation(channel.id) == updated
    assert seen.calls == [(channel, Standing(actor="owner", target=None, owners=1, members=1))]

    renamed = await directory.update_channel(channel.id, alice.id, ChannelEdit(name="renamed-" + name("c")), Seen())
    assert renamed is not None and renamed.topic == "new topic" and renamed.name != channel.name
    archived = await directory.update_channel(channel.id, alice.id, ChannelEdit(archived=True), Seen())
    assert archived is not None and archived.archived and archived.name == renamed.name
    assert await directory.update_channel(channel.id, alice.id, ChannelEdit(), Seen()) == archived
    assert archived in await directory.public_channels()


async def test_update_channel_to_a_taken_name_is_a_conflict_and_changes_nothing(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    other = await new_channel(directory, alice)
    assert other.name is not None
    with pytest.raises(Conflict):
        await directory.update_channel(channel.id, alice.id, ChannelEdit(name=other.name, topic="t2"), Seen())
    assert await directory.get_conversation(channel.id) == channel


async def test_a_refusing_check_stores_nothing(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    channel = await new_channel(directory, alice)
    await directory.add_member(channel.id, bob.id, NOW)
    with pytest.raises(ApiError):
        await directory.update_channel(channel.id, bob.id, ChannelEdit(topic="x"), refuse)
    with pytest.raises(ApiError):
        await directory.set_role(channel.id, bob.id, alice.id, "member", refuse)
    with pytest.raises(ApiError):
        await directory.remove_member_as(channel.id, bob.id, alice.id, refuse)
    assert await directory.get_conversation(channel.id) == channel
    assert await directory.member_roles(channel.id) == {alice.id: "owner", bob.id: "member"}


async def test_set_role_and_remove_member_as_see_the_standing(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    carol = await new_user(directory)
    channel = await new_channel(directory, alice)
    await directory.add_member(channel.id, bob.id, NOW)
    seen = Seen()
    assert await directory.set_role(channel.id, alice.id, bob.id, "admin", seen) is True
    assert await directory.set_role(channel.id, alice.id, bob.id, "admin", seen) is False  # already theirs
    assert seen.calls[0][1] == Standing(actor="owner", target="member", owners=1, members=2)
    assert seen.calls[1][1] == Standing(actor="owner", target="admin", owners=1, members=2)
    assert await directory.set_role(channel.id, alice.id, bob.id, "owner", Seen()) is True
    assert await directory.member_roles(channel.id) == {alice.id: "owner", bob.id: "owner"}

    seen = Seen()
    assert await directory.remove_member_as(channel.id, bob.id, carol.id, seen) is False  # not a member
    assert seen.calls[0][1] == Standing(actor="owner", target=None, owners=2, members=2)
    assert await directory.remove_member_as(channel.id, bob.id, alice.id, Seen()) is True
    assert await directory.member_roles(channel.id) == {bob.id: "owner"}
    assert await directory.is_member(channel.id, alice.id) is False
    # Joining again makes a plain member, whatever one was before.
    await directory.add_member(channel.id, alice.id, NOW + 1)
    assert await directory.roles_of(alice.id, [channel.id]) == {channel.id: "member"}


async def test_changes_to_a_missing_channel_change_nothing(directory: Directory) -> None:
    alice = await new_user(directory)
    channel = await new_channel(directory, alice)
    missing = channel.id + 1000
    seen = Seen()
    assert await directory.update_channel(missing, alice.id, ChannelEdit(topic="x"), seen) is None
    assert await directory.set_role(missing, alice.id, alice.id, "admin", seen) is False
    assert await directory.remove_member_as(missing, alice.id, alice.id, seen) is False
    assert seen.calls == []


async def test_a_dm_takes_a_name_that_need_not_be_unique(directory: Directory) -> None:
    alice = await new_user(directory)
    bob = await new_user(directory)
    carol = await new_user(directory)
    dm, _ = await directory.open_dm([alice.id, bob.id, carol.id], alice.id, NOW)
    other, _ = await directory.open_dm([alice.id, bob.id], alice.id, NOW)
    assert dm.name is None
    named = await directory.rename_dm(dm.id, "weekend plans")
    assert named is not None and named.name == "weekend plans" and named.kind == "dm"
    assert await directory.get_conversation(dm.id) == named
    again = await directory.rename_dm(other.id, "weekend plans")
    assert again is not None and again.name == "weekend plans"
    assert {c.id: c.name for c in await directory.conversations_of(carol.id)} == {dm.id: "weekend plans"}
    cleared = await directory.rename_dm(dm.id, None)
    assert cleared is not None and cleared.name is None
    channel = await new_channel(directory, alice)
    assert await directory.rename_dm(channel.id, "nope") is None
    assert await directory.get_conversation(channel.id) == channel


# -- concurrency: the rules hold because the store checks them inside the change --


async def _refused_or_done(change: Awaitable[bool]) -> str:
    try:
        await change
    except ApiError as exc:
        return exc.code.value
    return "done"


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(directory: Directory) -> None:
    for _ in range(5):
        alice = await new_user(directory)
        bob = await new_user(directory)
        channel = await new_channel(directory, alice)
        await directory.add_member(channel.id, bob.id, NOW)
        await directory.set_role(channel.id, alice.id, bob.id, "owner", rules.set_role_check("owner"))
        demote: AdminCheck = rules.set_role_check("member")
        outcomes = await asyncio.gather(
            _refused_or_done(directory.set_role(channel.id, alice.id, bob.id, "member", demote)),
            _refused_or_done(directory.set_role(channel.id, bob.id, alice.id, "member", demote)),
        )
        roles = await directory.member_roles(channel.id)
        assert sorted(roles.values()) == ["member", "owner"], outcomes
        # The second to commit saw the first: it was no owner any more (forbidden), or the last owner (conflict).
        assert sorted(outcomes) in (["done", "forbidden"], ["conflict", "done"]), outcomes


async def test_two_owners_kicking_and_leaving_at_once_leave_one_owner(directory: Directory) -> None:
    for _ in range(5):
        alice = await new_user(directory)
        bob = await new_user(directory)
        carol = await new_user(directory)
        channel = await new_channel(directory, alice)
        for user in (bob, carol):
            await directory.add_member(channel.id, user.id, NOW)
        await directory.set_role(channel.id, alice.id, bob.id, "owner", rules.set_role_check("owner"))
        outcomes = await asyncio.gather(
            _refused_or_done(directory.remove_member_as(channel.id, alice.id, alice.id, rules.leave_check())),
            _refused_or_done(directory.remove_member_as(channel.id, bob.id, bob.id, rules.leave_check())),
        )
        roles = await directory.member_roles(channel.id)
        assert list(roles.values()).count("owner") == 1, (outcomes, roles)
        assert sorted(outcomes) == ["conflict", "done"]


async def test_two_admins_changing_roles_at_once_stay_consistent(directory: Directory) -> None:
    alice = await new_user(directory)
    admins = [await new_user(directory) for _ in range(2)]
    targets = [await new_user(directory) for _ in range(6)]
    channel = await new_channel(directory, alice)
    for user in (*admins, *targets):
        await directory.add_member(channel.id, user.id, NOW)
    for admin in admins:
        await directory.set_role(channel.id, alice.id, admin.id, "admin", rules.set_role_check("admin"))
    # Both admins promote and demote the same targets at once, and demote each other.
    changes = []
    for n, target in enumerate(targets):
        for admin in admins:
            role: Role = "admin" if (n + admin.id) % 2 else "member"
            changes.append(directory.set_role(channel.id, admin.id, target.id, role, rules.set_role_check(role)))
    changes.append(directory.set_role(channel.id, admins[0].id, admins[1].id, "member", rules.set_role_check("member")))
    changes.append(directory.set_role(channel.id, admins[1].id, admins[0].id, "member", rules.set_role_check("member")))
    outcomes = await asyncio.gather(*(_refused_or_done(c) for c in changes))
    assert set(outcomes) <= {"done", "forbidden"}
    roles = await directory.member_roles(channel.id)
    assert roles[alice.id] == "owner" and set(roles.values()) <= {"owner", "admin", "member"}
    assert len(roles) == 1 + len(admins) + len(targets)
    # The two admins demoting each other: the second was refused, having lost the role to the first.
    assert sorted(outcomes[-2:]) == ["done", "forbidden"]
    assert sorted([roles[admins[0].id], roles[admins[1].id]]) == ["admin", "member"]
