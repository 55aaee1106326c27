"""presence.query, and the presence events sent when a user comes and goes.

Who hears a change: every member of every conversation the user belongs to
(DMs, and channels of at most ``presence_max_members`` members), each
connection once. This needs no subscription from clients, at the cost of one
entry per connection sharing such a conversation per change; PROTOCOL.md
spells the cost out. Each change is published once (a ``presence`` broker
event); every instance's registry coalesces them per connection into
``presence.batch`` frames (server/presence_batch.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.protocol import codec, frames
from hubbub.server.broker import Event
from hubbub.server.clock import now_ms
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.presence_batch import PRESENCE_CHANGE


async def query(ctx: Context, caller: Caller, req: frames.PresenceQuery) -> frames.PresenceList:
    users = await ctx.directory.get_users(req.user_ids)
    online = await ctx.presence.online(u.id for u in users)
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


async def on_online(ctx: Context, user_id: int, conversation_ids: Sequence[int]) -> None:
    """The user's first connection anywhere opened (called by the session)."""
    _announce(ctx, user_id, await _audience(ctx, conversation_ids), "online", now_ms())


async def on_offline(ctx: Context, user_id: int) -> None:
    """The user's last connection anywhere closed, or their instance died
    (called by the session, or by the presence tracker for a dead instance)."""
    now = now_ms()
    # Both batched with the other users going offline now (server/lookups.py):
    # a storm's disconnects are one write and one read per batch, not two each.
    await ctx.directory.set_last_seen(user_id, now)
    found = (await ctx.directory.sessions_of([user_id])).get(user_id)
    conversation_ids = found.conversation_ids if found is not None else ()
    _announce(ctx, user_id, await _audience(ctx, conversation_ids), "offline", now)


async def _audience(ctx: Context, conversation_ids: Sequence[int]) -> tuple[int, ...]:
    """The conversations a presence change travels through: not the big ones.

    Every member of a conversation hears every member come and go, so a
    room of N people costs N events per change and N² as they all connect;
    beyond ``presence_max_members`` clients ask with presence.query instead.
    """
    if not conversation_ids:
        return ()
    counts = await ctx.directory.member_counts(conversation_ids)
    cap = ctx.presence_max_members
    return tuple(cid for cid in conversation_ids if counts.get(cid, 0) <= cap)


def _announce(ctx: Context, user_id: int, conversation_ids: Sequence[int], status: str, ts: int) -> None:
    change = frames.PresenceChanged(
        presence=frames.Presence(user_id=user_id, status="online" if status == "online" else "offline", last_seen=ts)
    )
    # Not a client frame: each instance's registry batches these into presence.batch per connection.
    event = Event(codec.encode(change), PRESENCE_CHANGE, tuple(conversation_ids), (user_id,))
    ctx.publisher.publish_event(event)
