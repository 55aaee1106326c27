"""The catch-up state an instance keeps per conversation (server/catchup.py)
stays small and goes away with the conversation's last local member.

Found by the soak (`hubbub-loadtest --scenario soak`, BENCHMARKS.md): each
conversation's set of delivered seqs grew to 2,048 ints (~190 KB) before each
trim, so every instance's RSS climbed for as long as its conversations took
to reach that many messages; and the state of a conversation whose local
members had all gone was never dropped, since no more of its deliveries came
to prune it.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import Any

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.server.app import App
from hubbub.server.catchup import SEEN_WINDOW, Catchup
from tests.conftest import ServerFactory
from tests.helpers import next_presence_of, uid

MESSAGES = SEEN_WINDOW + SEEN_WINDOW // 2
"""Past one window, so the remembered seqs have slid along."""
STATE_BUDGET_BYTES = 2048
"""What one conversation's catch-up state may hold (a window of 1,024 seqs is 128 bytes of bits)."""


def footprint(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and what it references through slots, sets, deques and lists."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, bool):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, set | frozenset | deque | list | tuple):
        size += sum(footprint(item, seen) for item in obj)
    for name in getattr(type(obj), "__slots__", ()):
        size += footprint(getattr(obj, name, None), seen)
    return size


def catchup_of(app: App) -> Catchup:
    assert app.services is not None
    return app.services.catchup


def routed(app: App, conversation_id: int) -> bool:
    return conversation_id in catchup_of(app)._conversations


async def send_all(client: Client, conversation_id: int, count: int) -> None:
    for start in range(0, count, 64):
        await asyncio.gather(
            *(
                client.call("message.send", conversation_id=conversation_id, text=f"m{i}", client_msg_id=f"c{i}")
                for i in range(start, min(start + 64, count))
            )
        )


async def test_state_per_conversation_stays_bounded(make_server: ServerFactory) -> None:
    server = await make_server(rate_per_second=1e6, rate_burst=1_000_000)
    alice, bob = await server.user(), await server.user()
    channel = (await alice.call("channel.create", name="busy")).conversation
    await bob.call("channel.join", channel_id=channel.id)
    bob.drain_events()

    await send_all(alice, channel.id, MESSAGES)
    seqs: list[int] = []
    while len(seqs) < MESSAGES:
        event = await bob.next_event(frames.MessageNew)
        seqs.append(event.message.seq)
    assert seqs == list(range(1, MESSAGES + 1)), "every message once, in order"

    state = catchup_of(server.app)._conversations[channel.id]
    assert state.high == MESSAGES
    assert MESSAGES in state.seen and MESSAGES - SEEN_WINDOW + 1 in state.seen
    held = footprint(state)
    assert held < STATE_BUDGET_BYTES, f"{held} bytes of catch-up state for one conversation"

    # A message seen again (a fill racing the broker) is still not delivered twice.
    again = await alice.call("message.send", conversation_id=channel.id, text="last", client_msg_id="last")
    latest = await bob.next_event(frames.MessageNew)
    assert latest.message.seq == again.message.seq == MESSAGES + 1
    assert footprint(state) < STATE_BUDGET_BYTES


async def test_state_goes_with_the_last_member_leaving(make_server: ServerFactory) -> None:
    server = await make_server()
    alice, bob = await server.user(), await server.user()
    channel = (await alice.call("channel.create", name="leaving")).conversation
    await bob.call("channel.join", channel_id=channel.id)
    await alice.call("message.send", conversation_id=channel.id, text="hi", client_msg_id="c1")
    assert routed(server.app, channel.id)

    await bob.call("channel.leave", channel_id=channel.id)
    assert routed(server.app, channel.id), "alice is still here"
    await alice.call("channel.leave", channel_id=channel.id)
    assert not routed(server.app, channel.id)


async def test_state_goes_with_the_last_member_disconnecting(make_server: ServerFactory) -> None:
    server = await make_server()
    alice, carol = await server.user(), await server.user()
    channel = (await alice.call("channel.create", name="alone")).conversation
    await alice.call("dm.open", user_ids=[uid(carol)])
    await alice.call("message.send", conversation_id=channel.id, text="hi", client_msg_id="c1")
    assert routed(server.app, channel.id)
    carol.drain_events()

    await alice.close()
    # The server unregisters a connection before announcing its user offline.
    while (await next_presence_of(carol, uid(alice))).status != "offline":
        pass
    assert not routed(server.app, channel.id)

    # Back again: the conversation is caught up afresh and delivers as before.
    again = await server.client()
    await again.auth(alice.token or "")
    await again.call("message.send", conversation_id=channel.id, text="back", client_msg_id="c2")
    event = await again.next_event(frames.MessageNew)
    while event.message.conversation_id != channel.id:
        event = await again.next_event(frames.MessageNew)
    assert event.message.seq == 2
