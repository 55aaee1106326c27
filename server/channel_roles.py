"""The rules of channel administration (issue 12), as pure functions: who may
change a channel, give roles, remove members and invite, and what an archived
channel still takes.

Owners and admins administer a channel; plain members may not. An admin
cannot touch an owner (change their role or remove them) nor make owners;
a channel never loses its last owner while it has other members (the last
owner hands over first). Each ``*_check`` builds an ``AdminCheck``
(storage/base.py) that the store calls inside the transaction of the change,
with the Standing that transaction reads, so a rule holds under concurrent
changes (two owners demoting each other leave one). No clock, no I/O: a
check raises ApiError to refuse, and then nothing is stored.
"""

from __future__ import annotations

import msgspec

from hubbub.protocol.errors import ErrorCode
from hubbub.server.errors import ApiError, not_found
from hubbub.storage.base import AdminCheck
from hubbub.storage.records import ChannelEdit, ConversationRecord, Role, Standing

ADMINISTERS: frozenset[Role | None] = frozenset({"owner", "admin"})

ARCHIVED = "the channel is archived: unarchive it first"
LAST_OWNER = "the channel's last owner: make another member owner first"


def administers(role: Role | None) -> bool:
    """Whether a member of this role may administer the channel (and delete anyone's message)."""
    return role in ADMINISTERS


def require_admin(standing: Standing) -> None:
    if not administers(standing.actor):
        raise ApiError(ErrorCode.FORBIDDEN, "only the channel's owners and admins may do this")


def as_workspace_admin(check: AdminCheck) -> AdminCheck:
    """``check`` for a workspace admin (issue 15): they stand as an owner of every
    channel, member or not, so they may do what an owner may, and the owners'
    own rules (never the last owner) still hold."""

    def checked(channel: ConversationRecord, standing: Standing) -> None:
        check(channel, msgspec.structs.replace(standing, actor="owner"))

    return checked


def refuse_archived(channel: ConversationRecord) -> None:
    """An archived channel is read-only: no message, reaction, pin or member changes into it."""
    if channel.archived:
        raise ApiError(ErrorCode.ARCHIVED, ARCHIVED)


def update_check(update: ChannelEdit) -> AdminCheck:
    """Owners and admins change the name, topic, purpose, invite policy and
    archived state. An archived channel takes only its unarchiving (alone or
    with other changes: they apply to the unarchived channel)."""

    def check(channel: ConversationRecord, standing: Standing) -> None:
        require_admin(standing)
        if channel.archived and update.archived is not False:
            raise ApiError(ErrorCode.ARCHIVED, ARCHIVED)

    return check


def set_role_check(role: Role) -> AdminCheck:
    """Give the target ``role``: owners and admins may, but only an owner
    changes an owner's role or makes owners; the last owner keeps theirs."""

    def check(channel: ConversationRecord, standing: Standing) -> None:
        require_admin(standing)
        if standing.target is None:
            raise not_found("member")
        if standing.target == "owner" and standing.actor != "owner":
            raise ApiError(ErrorCode.FORBIDDEN, "only an owner may change an owner's role")
        if role == "owner" and standing.actor != "owner":
            raise ApiError(ErrorCode.FORBIDDEN, "only an owner may make owners")
        if standing.target == "owner" and role != "owner" and standing.owners <= 1:
            raise ApiError(ErrorCode.CONFLICT, LAST_OWNER)

    return check


def kick_check() -> AdminCheck:
    """Remove the target from the channel: owners and admins may, but only an
    owner removes an owner, and never the last one."""

    def check(channel: ConversationRecord, standing: Standing) -> None:
        require_admin(standing)
        if standing.target is None:
            raise not_found("member")
        if standing.target == "owner" and standing.actor != "owner":
            raise ApiError(ErrorCode.FORBIDDEN, "only an owner may remove an owner")
        if standing.target == "owner" and standing.owners <= 1:
            raise ApiError(ErrorCode.CONFLICT, LAST_OWNER)

    return check


def leave_check() -> AdminCheck:
    """Anyone leaves, but the last owner of a channel others are still in (they hand over first)."""

    def check(channel: ConversationRecord, standing: Standing) -> None:
        if standing.actor == "owner" and standing.owners <= 1 and standing.members > 1:
            raise ApiError(ErrorCode.CONFLICT, LAST_OWNER)

    return check


def check_invite(channel: ConversationRecord, inviter: Role | None) -> None:
    """Under ``invite_policy: "admins"`` only owners and admins invite; nobody invites into an archived channel."""
    refuse_archived(channel)
    if channel.invite_policy == "admins" and not administers(inviter):
        raise ApiError(ErrorCode.FORBIDDEN, "only the channel's owners and admins may invite to it")


def check_dm_rename(participants: int) -> None:
    """Any participant names a group DM (three or more people); a 1:1 DM has no name."""
    if participants < 3:
        raise ApiError(ErrorCode.FORBIDDEN, "only a group DM (three or more participants) can be renamed")
