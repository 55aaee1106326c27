"""Catching up after a reconnect is not throttled into failure: a connection
that has just authenticated may send `catchup_burst` requests beyond the
ordinary `rate_burst` (server/ratelimit.py)."""

from __future__ import annotations

import asyncio

import msgspec

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from tests.conftest import ServerFactory

BURST = 5
CATCHUP = 40


async def pipelined(client: Client, requests: list[dict[str, object]]) -> list[frames.ResultFrame | frames.ErrorFrame]:
    """Send every request without waiting, then collect the replies."""
    ids = [str(r["id"]) for r in requests]
    waiters = [asyncio.ensure_future(client.reply_to(i)) for i in ids]
    await asyncio.sleep(0)  # register the waiters before any reply can arrive
    for request in requests:
        await client.send_raw(msgspec.json.encode(request).decode())
    return list(await asyncio.wait_for(asyncio.gather(*waiters), 10))


def codes(replies: list[frames.ResultFrame | frames.ErrorFrame]) -> list[str]:
    return [r.error.code if isinstance(r, frames.ErrorFrame) else "ok" for r in replies]


async def test_history_pages_and_resends_after_auth_are_not_rate_limited(make_server: ServerFactory) -> None:
    server = await make_server(rate_per_second=0.01, rate_burst=BURST, catchup_burst=CATCHUP)
    first = await server.client()
    await first.register("catcher", "correct horse")
    channel = (await first.call("channel.create", name="failover")).conversation
    await first.close()

    # A reconnect: auth, then history pages and resent sends, all at once.
    again = await server.client()
    assert again.hello is not None
    await again.auth(first.token or "")
    catch_up: list[dict[str, object]] = []
    for index in range(BURST + CATCHUP - 1):  # with the auth, the bucket and the allowance exactly
        if index % 2:
            catch_up.append({"type": "message.history", "id": f"c{index}", "conversation_id": channel.id})
        else:
            catch_up.append(
                {
                    "type": "message.send",
                    "id": f"c{index}",
                    "conversation_id": channel.id,
                    "text": f"resent {index}",
                    "client_msg_id": f"m{index}",
                }
            )
    assert codes(await pipelined(again, catch_up)) == ["ok"] * len(catch_up)

    # The allowance is spent: the ordinary limit applies again.
    (over,) = await pipelined(again, [{"type": "ping", "id": "one-more"}])
    assert codes([over]) == [ErrorCode.RATE_LIMITED]


async def test_no_allowance_before_authentication(make_server: ServerFactory) -> None:
    server = await make_server(rate_per_second=0.01, rate_burst=BURST, catchup_burst=CATCHUP)
    client = await server.client()
    replies = await pipelined(client, [{"type": "ping", "id": f"p{i}"} for i in range(BURST + 3)])
    assert codes(replies) == ["ok"] * BURST + [ErrorCode.RATE_LIMITED] * 3


async def test_allowance_is_granted_once_per_connection(make_server: ServerFactory) -> None:
    """Authenticating again on the same connection (token renewal) grants nothing more."""
    server = await make_server(rate_per_second=0.01, rate_burst=BURST, catchup_burst=CATCHUP)
    client = await server.client()
    await client.register("renewer", "correct horse")  # the bucket's first token
    assert client.token is not None
    spent = BURST - 1 + 10  # the rest of the bucket and part of the allowance
    replies = await pipelined(client, [{"type": "ping", "id": f"p{i}"} for i in range(spent)])
    replies += await pipelined(client, [{"type": "auth", "id": "renew", "token": client.token}])
    rest = CATCHUP - 10 - 1
    replies += await pipelined(client, [{"type": "ping", "id": f"q{i}"} for i in range(rest + 1)])
    assert codes(replies) == ["ok"] * (spent + 1 + rest) + [ErrorCode.RATE_LIMITED]
