"""presence.query, and the presence events sent when a user comes and goes.

Who hears a change: every member of every conversation the user belongs to
(DMs, and channels of at most ``presence_max_members`` members), each
connection once. This needs no subscription from clients, at the cost of one
event per connection sharing such a conversation per change; PROTOCOL.md
spells the cost out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from protocol import codec, frames
from server.broker import Delivery
from server.hub import Hub, now_ms

if TYPE_CHECKING:
    from server.session import Session


async def query(hub: Hub, session: Session, req: frames.PresenceQuery) -> frames.PresenceList:
    users = await hub.directory.get_users(req.user_ids)
    online = await hub.presence.online(u.id for u in users)
    now = now_ms()
    return frames.PresenceList(
        presence=[
            frames.Presence(
                user_id=u.id,
                status="online" if u.id in online else "offline",
                last_seen=now if u.id in online else u.last_seen_at,
            )
            for u in users
        ]
    )


async def on_online(hub: Hub, user_id: int, conversation_ids: Sequence[int]) -> None:
    _announce(hub, user_id, await _audience(hub, conversation_ids), "online", now_ms())


async def on_offline(hub: Hub, user_id: int) -> None:
    now = now_ms()
    await hub.directory.set_last_seen(user_id, now)
    conversation_ids = [c.id for c in await hub.directory.conversations_of(user_id)]
    _announce(hub, user_id, await _audience(hub, conversation_ids), "offline", now)


async def _audience(hub: Hub, conversation_ids: Sequence[int]) -> tuple[int, ...]:
    """The conversations a presence change travels through: not the big ones.

    Every member of a conversation hears every member come and go, so a
    room of N people costs N events per change and N² as they all connect;
    beyond ``presence_max_members`` clients ask with presence.query instead.
    """
    if not conversation_ids:
        return ()
    counts = await hub.directory.member_counts(conversation_ids)
    cap = hub.settings.presence_max_members
    return tuple(cid for cid in conversation_ids if counts.get(cid, 0) <= cap)


def _announce(hub: Hub, user_id: int, conversation_ids: Sequence[int], status: str, ts: int) -> None:
    event = frames.PresenceChanged(
        presence=frames.Presence(user_id=user_id, status="online" if status == "online" else "offline", last_seen=ts)
    )
    hub.publish(Delivery(codec.encode(event), "presence", conversations=tuple(conversation_ids), users=(user_id,)))
