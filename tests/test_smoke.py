from __future__ import annotations

import pytest

from hubbub.protocol import frames
from tests.conftest import RunningServer

pytestmark = pytest.mark.all_backends


async def test_register_send_receive(server: RunningServer) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    created = await alice.call("channel.create", name="general")
    cid = created.conversation.id
    await bob.call("channel.join", channel_id=cid)
    ack = await alice.call("message.send", conversation_id=cid, text="hi", client_msg_id="m1")
    assert ack.message.seq == 1
    event = await bob.next_event(frames.MessageNew)
    assert event.message.text == "hi"
    assert event.message.seq == 1
