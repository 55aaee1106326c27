"""channel.create, channel.list, channel.join, channel.invite, channel.leave, channel.members."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import codec, frames
from protocol.errors import ErrorCode
from server.broker import Delivery
from server.errors import ApiError, not_found
from server.handlers.views import conversation_view, conversation_views, visible_conversation
from server.hub import Hub, now_ms
from server.wire import user_view
from storage.errors import Conflict
from storage.records import ConversationRecord, UserRecord

if TYPE_CHECKING:
    from server.session import Session


async def create(hub: Hub, session: Session, req: frames.ChannelCreate) -> frames.ConversationResult:
    try:
        record = await hub.directory.create_channel(req.name, req.topic, req.private, session.user_id, now_ms())
    except Conflict:
        raise ApiError(ErrorCode.CONFLICT, f"channel name {req.name!r} is taken") from None
    view = await conversation_view(hub, record, member=True)
    announce_added(hub, view, session.user_id, by=session.user_id)
    return frames.ConversationResult(conversation=view)


async def list_(hub: Hub, session: Session, req: frames.ChannelList) -> frames.ConversationList:
    mine = [c for c in await hub.directory.conversations_of(session.user_id) if c.kind == "channel"]
    member_of = {c.id for c in mine}
    records = {c.id: c for c in await hub.directory.public_channels()}
    records.update((c.id, c) for c in mine)
    ordered = sorted(records.values(), key=lambda c: (c.name or "", c.id))
    return frames.ConversationList(conversations=await conversation_views(hub, ordered, member_of))


async def _channel(hub: Hub, session: Session, channel_id: int, *, require_member: bool) -> ConversationRecord:
    record, _ = await visible_conversation(hub, session, channel_id, require_member=require_member)
    if record.kind != "channel":
        raise not_found("channel")
    return record


async def join(hub: Hub, session: Session, req: frames.ChannelJoin) -> frames.ConversationResult:
    record = await _channel(hub, session, req.channel_id, require_member=False)
    assert session.user is not None
    if await hub.directory.add_member(record.id, session.user_id, now_ms()):
        view = await conversation_view(hub, record, member=True)
        announce_added(hub, view, session.user_id, by=session.user_id)
        announce_joined(hub, record.id, session.user, by=None)
    else:
        view = await conversation_view(hub, record, member=True)
    return frames.ConversationResult(conversation=view)


async def invite(hub: Hub, session: Session, req: frames.ChannelInvite) -> frames.Empty:
    record = await _channel(hub, session, req.channel_id, require_member=True)
    invitee = await hub.directory.get_user(req.user_id)
    if invitee is None:
        raise not_found("user")
    if await hub.directory.add_member(record.id, invitee.id, now_ms()):
        view = await conversation_view(hub, record, member=True)
        announce_added(hub, view, invitee.id, by=session.user_id)
        announce_joined(hub, record.id, invitee, by=session.user_id)
    return frames.Empty()


async def leave(hub: Hub, session: Session, req: frames.ChannelLeave) -> frames.Empty:
    record = await _channel(hub, session, req.channel_id, require_member=False)
    if await hub.directory.remove_member(record.id, session.user_id):
        # Members (the leaver's other devices included) hear of it before the
        # leaver's connections stop receiving the channel.
        left = frames.MemberLeft(conversation_id=record.id, user_id=session.user_id)
        hub.publish(Delivery(codec.encode(left), "member.left", conversations=(record.id,)))
        removed = frames.ConversationRemoved(conversation_id=record.id)
        hub.publish(
            Delivery(
                codec.encode(removed),
                "conversation.removed",
                users=(session.user_id,),
                left=((session.user_id, record.id),),
            )
        )
    return frames.Empty()


async def members(hub: Hub, session: Session, req: frames.ChannelMembers) -> frames.Members:
    record = await _channel(hub, session, req.channel_id, require_member=False)
    users = await hub.directory.get_users(await hub.directory.member_ids(record.id))
    return frames.Members(members=[user_view(u) for u in users])


def announce_added(hub: Hub, view: frames.Conversation, user_id: int, by: int) -> None:
    """Route the conversation to the user's connections and tell them."""
    event = frames.ConversationAdded(conversation=view, by=by)
    hub.publish(
        Delivery(
            codec.encode(event),
            "conversation.added",
            users=(user_id,),
            joined=((user_id, view.id),),
            seq=view.last_seq,
        )
    )


def announce_joined(hub: Hub, conversation_id: int, user: UserRecord, by: int | None) -> None:
    event = frames.MemberJoined(conversation_id=conversation_id, user=user_view(user), by=by)
    # Also to the new member's own topic: an instance that only now starts routing the
    # conversation to their connections may not be subscribed to it yet.
    hub.publish(Delivery(codec.encode(event), "member.joined", conversations=(conversation_id,), users=(user.id,)))
