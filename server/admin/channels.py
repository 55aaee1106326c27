"""``hubbub admin channels ...``: list channels, archive and unarchive, transfer ownership."""

from __future__ import annotations

import argparse
from typing import Any

from hubbub.server.admin.common import Admin, AdminError
from hubbub.server.admin.users import LIST_LIMIT, _limit
from hubbub.server.channel_roles import set_role_check
from hubbub.storage.records import ChannelEdit, ConversationRecord, Standing


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser(
        "list",
        parents=[common],
        help="Every channel (private and archived too) with its member count.",
        description="Every channel in id order, private and archived ones too, with member counts.",
    )
    listing.add_argument("--limit", type=_limit, default=LIST_LIMIT, help=f"Channels per page (default {LIST_LIMIT}).")
    listing.add_argument("--after", type=int, default=0, metavar="ID", help="Only channels with an id above this.")
    listing.set_defaults(handler=list_channels)

    for name, archived, text in (
        ("archive", True, "Make a channel read-only and hide it from browsing."),
        ("unarchive", False, "Make an archived channel writable again."),
    ):
        command = commands.add_parser(name, parents=[common], help=text, description=text)
        command.add_argument("channel", help="A channel name, or id:<n>.")
        command.set_defaults(handler=set_archived, archived=archived)

    transfer = commands.add_parser(
        "transfer-owner",
        parents=[common],
        help="Make a member the channel's owner; its other owners become admins.",
        description=(
            "Make USER (already a member) the owner of CHANNEL; every other owner becomes an admin, "
            "so USER is its one owner after."
        ),
    )
    transfer.add_argument("channel", help="A channel name, or id:<n>.")
    transfer.add_argument("user", help="A username, or id:<n>.")
    transfer.set_defaults(handler=transfer_owner)


def channel_row(channel: ConversationRecord, members: int) -> dict[str, Any]:
    return {
        "id": channel.id,
        "name": channel.name,
        "private": channel.private,
        "archived": channel.archived,
        "members": members,
        "created_by": channel.created_by,
        "created_at": channel.created_at,
        "topic": channel.topic,
    }


async def list_channels(admin: Admin, args: argparse.Namespace) -> None:
    channels = await admin.stores.directory.list_channels(after_id=args.after, limit=args.limit)
    counts = await admin.stores.directory.member_counts([c.id for c in channels])
    rows = [channel_row(c, counts.get(c.id, 0)) for c in channels]
    admin.table(rows, ("id", "name", "private", "archived", "members"))
    await admin.record("channel.list", after=args.after, count=len(rows))
    if not admin.json and len(channels) == args.limit:
        print(f"(more: --after {channels[-1].id})", file=admin.out)


def _operator(channel: ConversationRecord, standing: Standing) -> None:
    """The operator administers every channel: no rule of channel roles applies to them."""


async def set_archived(admin: Admin, args: argparse.Namespace) -> None:
    channel = await admin.channel(args.channel)
    updated = await admin.stores.directory.update_channel(
        channel.id, channel.created_by, ChannelEdit(archived=args.archived), _operator
    )
    if updated is None:
        raise AdminError(f"no such conversation: {args.channel}")
    changed = channel.archived != args.archived
    action = "archive" if args.archived else "unarchive"
    await admin.record(f"channel.{action}", channel_id=channel.id, changed=changed)
    state = "archived" if args.archived else "not archived"
    admin.document(
        {"id": channel.id, "name": channel.name, "archived": updated.archived, "changed": changed},
        f"#{channel.name} (id {channel.id}) is {state}" + ("" if changed else " (it already was)"),
    )


async def transfer_owner(admin: Admin, args: argparse.Namespace) -> None:
    directory = admin.stores.directory
    channel = await admin.channel(args.channel)
    user = await admin.user(args.user)
    roles = await directory.member_roles(channel.id)
    if user.id not in roles:
        raise AdminError(f"{user.username} is not a member of #{channel.name}: invite them first")
    owners = [uid for uid, role in roles.items() if role == "owner"]
    # The channel's own rules (server/channel_roles.py), as an owner applies them: an owner
    # makes the new owner, then the new owner makes the others admins (never zero owners).
    if user.id not in owners:
        if owners:
            await directory.set_role(channel.id, owners[0], user.id, "owner", set_role_check("owner"))
        else:  # a channel whose owners all left: the operator appoints one
            await directory.set_role(channel.id, user.id, user.id, "owner", _member_check)
    demoted = [uid for uid in owners if uid != user.id]
    for uid in demoted:
        await directory.set_role(channel.id, user.id, uid, "admin", set_role_check("admin"))
    await admin.record("channel.transfer_owner", channel_id=channel.id, user_id=user.id, demoted=demoted)
    admin.document(
        {"id": channel.id, "name": channel.name, "owner": user.id, "demoted_to_admin": demoted},
        f"{user.username} owns #{channel.name} (id {channel.id}); now admins: {demoted or 'nobody'}",
    )


def _member_check(channel: ConversationRecord, standing: Standing) -> None:
    if standing.target is None:
        raise AdminError("the new owner is no longer a member")
