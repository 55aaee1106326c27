"""A login whose presence step meets a store failure still succeeds, and the
"online" announcement it missed is made later (server/session.py)."""

from __future__ import annotations

from typing import Any

import pytest

from hubbub.protocol.client import Client
from hubbub.storage.errors import StoreUnavailable
from tests.conftest import RunningServer, unique_name
from tests.helpers import assert_serving, next_presence_of, uid

PASSWORD = "correct horse"


async def presence_of(client: Client, user_id: int) -> str:
    """The status of the next presence event about ``user_id`` (a client hears its own too)."""
    return (await next_presence_of(client, user_id)).status


async def test_login_succeeds_when_presence_store_fails(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    observer = await server.user()
    name = unique_name("flaky")
    first = await server.user(name, PASSWORD)
    channel = (await observer.call("channel.create", name=unique_name("room"))).conversation
    await first.call("channel.join", channel_id=channel.id)
    await first.close()  # the user is offline again
    assert await presence_of(observer, uid(first)) == "offline"

    assert server.app.services is not None
    hub = server.app.services
    original = hub.directory.member_counts
    failures = 0

    async def failing_once(conversation_ids: Any) -> Any:
        # The presence step's audience lookup: the store fails once, then answers.
        nonlocal failures
        if failures == 0:
            failures += 1
            raise StoreUnavailable(hub.directory.name, "injected failure")
        return await original(conversation_ids)

    monkeypatch.setattr(hub.directory, "member_counts", failing_once)
    again = await server.client()
    session = await again.login(name, PASSWORD)  # not `unavailable`: the login took effect
    assert session.user.username == name
    assert failures == 1
    assert (await again.call("me")).user.id == session.user.id
    assert hub.registry.connections_of(session.user.id) == 1
    await assert_serving(again)

    # The missed announcement is repaired: the observer hears the user come online.
    assert await presence_of(observer, uid(again)) == "online"

    # And the connection leaves cleanly: nothing of it stays registered.
    await again.close()
    assert await presence_of(observer, uid(again)) == "offline"
    assert hub.registry.connections_of(session.user.id) == 0
