"""Instructions per ``channel.list`` in a reconnect storm, for callgrind: N
concurrent ``channel.list`` requests (each its own user, a member of one of 200
public channels holding 10 messages it has not read) driven through the
handler and the reply's encoding, with the stores wired as server/app.py wires
them (coalesced directory and message log, on SQLite in a temp dir).
BENCHMARKS.md (reconnect storms, third pass) records its runs:

    valgrind --tool=callgrind .venv/bin/python scripts/channel_list_storm.py 200 setup
    valgrind --tool=callgrind .venv/bin/python scripts/channel_list_storm.py 200

(run minus set-up) / 200 is one request's instructions, the store thread
included. The same file runs against an older commit's export put first on
PYTHONPATH (a folder ``hubbub/`` of its ``protocol``, ``server``, ``storage``):
before server/listings.py it wires what that commit's server did.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from hubbub.protocol import codec, frames
from hubbub.server import lookups
from hubbub.server.handlers import channels
from hubbub.server.retention_policy import default_policy
from hubbub.storage.records import NewMessage
from hubbub.storage.sqlite import open_sqlite

ROOMS = 200
UNREAD = 10


async def main(requests: int, setup_only: bool) -> None:
    db, directory, log = await open_sqlite(Path(tempfile.mkdtemp()) / "storm.sqlite", 30.0)
    owner = await directory.create_user("owner", "Owner", "hash", 1)
    rooms = [await directory.create_channel(f"room{i:04d}", "", False, owner.id, 1) for i in range(ROOMS)]
    for room in rooms:
        for k in range(UNREAD):
            await log.append(
                NewMessage(
                    conversation_id=room.id, sender_id=owner.id, text=f"m{k}", client_msg_id=f"{room.id}-{k}", ts=1
                )
            )
    users = []
    for i in range(requests):
        user = await directory.create_user(f"u{i}", "U", "hash", 1)
        await directory.add_member(rooms[i % ROOMS].id, user.id, 1, read_seq=0)
        users.append(user)
    ctx: Any = SimpleNamespace(
        directory=lookups.coalesced(directory),
        messages=log,
        retention=default_policy(),
        message_limits=SimpleNamespace(unread_count_cap=100),
    )
    if hasattr(lookups, "coalesced_log"):  # this branch's wiring (server/app.py)
        from hubbub.server.listings import PublicChannels

        ctx.messages = lookups.coalesced_log(log)
        ctx.public_channels = PublicChannels(directory, log, ctx.retention)
    if not setup_only:

        async def one(n: int, user: Any) -> bytes:
            caller = cast(Any, SimpleNamespace(user_id=user.id, user=user))
            return codec.encode_result(n, await channels.list_(ctx, caller, frames.ChannelList(id=n)))

        replies = await asyncio.gather(*(one(n, user) for n, user in enumerate(users)))
        assert all(len(reply) > ROOMS * 100 for reply in replies), "every reply lists every public channel"
    await log.close()
    await db.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:] == ["setup"]))
