"""presence.batch at the default window: users of one room coming online
together reach each member in fewer frames than changes, nothing lost."""

from __future__ import annotations

import asyncio

from hubbub.protocol import frames
from tests.conftest import RunningServer, unique_name
from tests.helpers import presence_changes, uid


async def test_a_room_reconnecting_together_is_heard_in_batches_with_every_change(server: RunningServer) -> None:
    watcher = await server.user()
    room = (await watcher.call("channel.create", name=unique_name("room"))).conversation.id
    members = [await server.user() for _ in range(8)]
    for member in members:
        await member.call("channel.join", channel_id=room)
    tokens = [member.token for member in members]
    ids = {uid(member) for member in members}
    for member in members:
        await member.close()
    gone: set[int] = set()
    async with asyncio.timeout(10):
        while gone < ids:
            batch = await watcher.next_event(frames.PresenceBatch)
            gone |= {c.user_id for c in batch.presence if c.status == "offline"}

    async def back(token: str | None) -> None:
        client = await server.client()
        assert token is not None
        await client.auth(token)

    await asyncio.gather(*(back(token) for token in tokens))
    batches: list[frames.PresenceBatch] = []
    async with asyncio.timeout(10):
        while {c.user_id for c in presence_changes(list(batches)) if c.status == "online"} < ids:
            batches.append(await watcher.next_event(frames.PresenceBatch))
    changes = presence_changes(list(batches))
    assert sorted(c.user_id for c in changes) == sorted(ids)  # each once, nothing else
    assert all(c.status == "online" and c.last_seen is not None for c in changes)
    assert len(batches) < len(ids)  # coalesced: 8 changes in fewer frames
    statuses = await watcher.call("presence.query", user_ids=sorted(ids))
    assert {p.user_id: p.status for p in statuses.presence} == dict.fromkeys(ids, "online")
