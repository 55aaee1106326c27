"""server.channel_roles: who may administer a channel, applied to records and standings directly (no store)."""

from __future__ import annotations

import msgspec
import pytest

from hubbub.protocol.errors import ErrorCode
from hubbub.server import channel_roles as rules
from hubbub.server.errors import ApiError
from hubbub.storage.base import AdminCheck
from hubbub.storage.records import ChannelEdit, ConversationRecord, Role, Standing

CHANNEL = ConversationRecord(
    id=7, kind="channel", name="general", topic="", private=False, created_by=1, created_at=1_000
)
ARCHIVED = msgspec.structs.replace(CHANNEL, archived=True)


def standing(actor: Role | None, target: Role | None = None, *, owners: int = 1, members: int = 3) -> Standing:
    return Standing(actor=actor, target=target, owners=owners, members=members)


def refused(check: AdminCheck, at: Standing, code: str, channel: ConversationRecord = CHANNEL) -> str:
    with pytest.raises(ApiError) as info:
        check(channel, at)
    assert info.value.code == ErrorCode(code)
    return info.value.message


# -- who administers -------------------------------------------------------------


def test_owners_and_admins_administer_members_and_outsiders_do_not() -> None:
    assert [rules.administers(r) for r in ("owner", "admin", "member", None)] == [True, True, False, False]


# -- channel.update ---------------------------------------------------------------


def test_owners_and_admins_update_a_channel() -> None:
    check = rules.update_check(ChannelEdit(topic="new"))
    check(CHANNEL, standing("owner"))
    check(CHANNEL, standing("admin"))


@pytest.mark.parametrize("actor", ["member", None])
def test_members_and_outsiders_may_not_update_a_channel(actor: Role | None) -> None:
    assert "owners and admins" in refused(rules.update_check(ChannelEdit(topic="x")), standing(actor), "forbidden")


def test_an_archived_channel_takes_only_its_unarchiving() -> None:
    assert "archived" in refused(rules.update_check(ChannelEdit(topic="x")), standing("owner"), "archived", ARCHIVED)
    refused(rules.update_check(ChannelEdit(archived=True)), standing("owner"), "archived", ARCHIVED)
    rules.update_check(ChannelEdit(archived=False))(ARCHIVED, standing("admin"))
    rules.update_check(ChannelEdit(archived=False, topic="back"))(ARCHIVED, standing("admin"))


def test_a_member_may_not_unarchive() -> None:
    refused(rules.update_check(ChannelEdit(archived=False)), standing("member"), "forbidden", ARCHIVED)


# -- channel.set_role --------------------------------------------------------------


@pytest.mark.parametrize("actor", ["owner", "admin"])
@pytest.mark.parametrize(("target", "role"), [("member", "admin"), ("admin", "member"), ("member", "member")])
def test_owners_and_admins_promote_and_demote_members_and_admins(actor: Role, target: Role, role: Role) -> None:
    rules.set_role_check(role)(CHANNEL, standing(actor, target))


def test_only_an_owner_makes_owners() -> None:
    rules.set_role_check("owner")(CHANNEL, standing("owner", "admin"))
    assert refused(rules.set_role_check("owner"), standing("admin", "member"), "forbidden") == (
        "only an owner may make owners"
    )


@pytest.mark.parametrize("role", ["admin", "member"])
def test_an_admin_cannot_demote_an_owner(role: Role) -> None:
    message = refused(rules.set_role_check(role), standing("admin", "owner", owners=2), "forbidden")
    assert message == "only an owner may change an owner's role"


def test_an_owner_demotes_another_owner_but_never_the_last() -> None:
    rules.set_role_check("admin")(CHANNEL, standing("owner", "owner", owners=2))
    assert refused(rules.set_role_check("member"), standing("owner", "owner", owners=1), "conflict") == rules.LAST_OWNER


def test_a_member_sets_no_role() -> None:
    refused(rules.set_role_check("member"), standing("member", "member"), "forbidden")
    refused(rules.set_role_check("admin"), standing("member", "member"), "forbidden")


def test_setting_the_role_of_a_non_member_is_not_found() -> None:
    assert refused(rules.set_role_check("admin"), standing("owner", None), "not_found") == "member not found"


# -- channel.kick -------------------------------------------------------------------


@pytest.mark.parametrize("actor", ["owner", "admin"])
@pytest.mark.parametrize("target", ["admin", "member"])
def test_owners_and_admins_kick_admins_and_members(actor: Role, target: Role) -> None:
    rules.kick_check()(CHANNEL, standing(actor, target))


def test_an_admin_cannot_kick_an_owner() -> None:
    assert refused(rules.kick_check(), standing("admin", "owner", owners=2), "forbidden") == (
        "only an owner may remove an owner"
    )


def test_an_owner_kicks_another_owner_but_never_the_last() -> None:
    rules.kick_check()(CHANNEL, standing("owner", "owner", owners=2))
    assert refused(rules.kick_check(), standing("owner", "owner", owners=1), "conflict") == rules.LAST_OWNER


@pytest.mark.parametrize("actor", ["member", None])
def test_members_and_outsiders_kick_nobody(actor: Role | None) -> None:
    refused(rules.kick_check(), standing(actor, "member"), "forbidden")


def test_kicking_a_non_member_is_not_found() -> None:
    refused(rules.kick_check(), standing("owner", None), "not_found")


# -- channel.leave --------------------------------------------------------------------


@pytest.mark.parametrize("actor", ["admin", "member", None])
def test_anyone_but_an_owner_leaves(actor: Role | None) -> None:
    rules.leave_check()(CHANNEL, standing(actor, actor, owners=1))


def test_the_last_owner_cannot_leave_while_others_stay() -> None:
    assert refused(rules.leave_check(), standing("owner", "owner", owners=1, members=2), "conflict") == rules.LAST_OWNER


def test_an_owner_leaves_when_another_owner_stays_or_nobody_does() -> None:
    rules.leave_check()(CHANNEL, standing("owner", "owner", owners=2, members=2))
    rules.leave_check()(CHANNEL, standing("owner", "owner", owners=1, members=1))


# -- invitations, archived channels, DMs -------------------------------------------------


def test_anyone_invites_under_the_default_policy() -> None:
    inviters: tuple[Role, ...] = ("owner", "admin", "member")
    for inviter in inviters:
        rules.check_invite(CHANNEL, inviter)


def test_only_owners_and_admins_invite_under_the_admins_policy() -> None:
    admins_only = msgspec.structs.replace(CHANNEL, invite_policy="admins", private=True)
    rules.check_invite(admins_only, "owner")
    rules.check_invite(admins_only, "admin")
    with pytest.raises(ApiError) as info:
        rules.check_invite(admins_only, "member")
    assert info.value.code == ErrorCode.FORBIDDEN


def test_nobody_invites_into_an_archived_channel_and_no_message_changes_it() -> None:
    with pytest.raises(ApiError) as info:
        rules.check_invite(ARCHIVED, "owner")
    assert info.value.code == ErrorCode.ARCHIVED
    with pytest.raises(ApiError) as info:
        rules.refuse_archived(ARCHIVED)
    assert info.value.code == ErrorCode.ARCHIVED
    rules.refuse_archived(CHANNEL)


def test_only_a_group_dm_is_renamed() -> None:
    rules.check_dm_rename(3)
    rules.check_dm_rename(9)
    with pytest.raises(ApiError) as info:
        rules.check_dm_rename(2)
    assert info.value.code == ErrorCode.FORBIDDEN


# -- workspace admins (issue 15) -------------------------------------------------------


@pytest.mark.parametrize("actor", [None, "member", "admin"])
def test_a_workspace_admin_stands_as_an_owner(actor: Role | None) -> None:
    # What a plain member or an outsider is refused, a workspace admin may.
    edit = ChannelEdit(topic="t")
    rules.as_workspace_admin(rules.update_check(edit))(CHANNEL, standing(actor))
    rules.as_workspace_admin(rules.set_role_check("owner"))(CHANNEL, standing(actor, "owner", owners=2))
    rules.as_workspace_admin(rules.kick_check())(CHANNEL, standing(actor, "owner", owners=2))
    if actor != "admin":
        refused(rules.update_check(edit), standing(actor), "forbidden")


def test_a_workspace_admin_keeps_the_owners_rules() -> None:
    last = standing(None, "owner", owners=1)
    assert refused(rules.as_workspace_admin(rules.kick_check()), last, "conflict") == rules.LAST_OWNER
    refused(rules.as_workspace_admin(rules.set_role_check("member")), last, "conflict")
    refused(rules.as_workspace_admin(rules.set_role_check("member")), standing(None, None), "not_found")
    unarchive_not = ChannelEdit(topic="t")
    refused(rules.as_workspace_admin(rules.update_check(unarchive_not)), standing(None), "archived", ARCHIVED)
