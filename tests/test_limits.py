"""Limits: request rate, frame and message size, connections per user, failed
logins, the auth timeout, and what the WebSocket handshake accepts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from hubbub.protocol import frames
from hubbub.protocol.client import Client, ServerError, open_client
from hubbub.protocol.errors import CloseCode, ErrorCode
from tests.conftest import RunningServer, ServerFactory, unique_name
from tests.helpers import assert_serving, closed_with, expect_error

PASSWORD = "correct horse"


async def raw_reply(client: Client, data: str | bytes, request_id: frames.RequestId) -> frames.ErrorFrame:
    """Send ``data`` as is; its reply must be an error echoing ``request_id``."""
    waiter = asyncio.ensure_future(client.reply_to(request_id))
    await asyncio.sleep(0)  # register the waiter before the reply can arrive
    await client.send_raw(data)
    reply = await waiter
    assert isinstance(reply, frames.ErrorFrame), reply
    assert reply.id == request_id
    return reply


# ---------------------------------------------------------------------------
# Request rate


async def test_rate_limit(make_server: ServerFactory) -> None:
    server = await make_server(rate_per_second=1, rate_burst=3)
    client = await server.client()
    assert client.hello is not None
    assert client.hello.limits.requests_per_second == 1
    assert client.hello.limits.request_burst == 3
    for _ in range(3):
        await assert_serving(client)
    reply = await raw_reply(client, '{"type":"ping","id":"over-the-limit"}', "over-the-limit")
    assert reply.error.code == ErrorCode.RATE_LIMITED
    assert reply.error.message
    # Other connections have their own budget.
    other = await server.client()
    await assert_serving(other)
    # The budget refills at rate_per_second: waiting for time is the behaviour here.
    await asyncio.sleep(1.1)
    await assert_serving(client)


# ---------------------------------------------------------------------------
# Frame and message size


async def test_oversized_frame_is_too_large_and_connection_survives(make_server: ServerFactory) -> None:
    server = await make_server(max_frame_bytes=1024)
    client = await server.user()
    assert client.hello is not None and client.hello.limits.max_frame_bytes == 1024
    frame = msgspec.json.encode({"type": "ping", "id": "big", "pad": "x" * 2000}).decode()
    assert 1024 < len(frame) < 4 * 1024
    reply = await raw_reply(client, frame, "big")
    assert reply.error.code == ErrorCode.TOO_LARGE
    assert "1024" in reply.error.message
    await assert_serving(client)
    assert (await client.call("me")).user == client.user


async def test_frame_size_counts_bytes_not_characters(make_server: ServerFactory) -> None:
    server = await make_server(max_frame_bytes=1024)
    client = await server.user()
    # 600 characters but 1200+ bytes of UTF-8.
    frame = msgspec.json.encode({"type": "ping", "id": "wide", "pad": "é" * 600}).decode()
    assert len(frame) < 1024 < len(frame.encode())
    reply = await raw_reply(client, frame, "wide")
    assert reply.error.code == ErrorCode.TOO_LARGE
    await assert_serving(client)


async def test_frame_at_the_limit_is_served(make_server: ServerFactory) -> None:
    server = await make_server(max_frame_bytes=1024)
    client = await server.user()
    head = '{"type":"ping","id":"'
    frame = head + "i" * (1024 - len(head) - 2) + '"}'
    assert len(frame.encode()) == 1024
    # Served, not refused as too large: the id is over 64 characters, so bad_request.
    waiter = asyncio.ensure_future(client.orphan_errors.get())
    await client.send_raw(frame)
    error = await asyncio.wait_for(waiter, 10)
    assert error.error.code == ErrorCode.BAD_REQUEST
    assert error.id is None


async def test_frame_over_hard_cap_closes_connection_1009(make_server: ServerFactory) -> None:
    server = await make_server(max_frame_bytes=1024)
    victim = await server.user()
    bystander = await server.user()
    frame = msgspec.json.encode({"type": "ping", "id": "huge", "pad": "x" * (4 * 1024)}).decode()
    assert len(frame) > 4 * 1024
    await victim.send_raw(frame)
    assert await closed_with(victim) == CloseCode.MESSAGE_TOO_BIG
    await assert_serving(bystander)
    assert (await bystander.call("me")).user == bystander.user
    # The server accepts new connections as before.
    await assert_serving(await server.user())


async def test_overlong_message_text_is_too_large(make_server: ServerFactory) -> None:
    server = await make_server(max_message_chars=10)
    client = await server.user()
    assert client.hello is not None and client.hello.limits.max_message_chars == 10
    cid = (await client.call("channel.create", name="limits")).conversation.id
    err = await expect_error(
        client, ErrorCode.TOO_LARGE, "message.send", conversation_id=cid, text="x" * 11, client_msg_id="m1"
    )
    assert "10" in err.message
    await assert_serving(client)
    # Exactly the limit is fine, counted in characters, not bytes.
    ack = await client.call("message.send", conversation_id=cid, text="é" * 10, client_msg_id="m2")
    assert ack.message.text == "é" * 10
    history = await client.call("message.history", conversation_id=cid)
    assert [m.client_msg_id for m in history.messages] == ["m2"]


# ---------------------------------------------------------------------------
# Connections per user, failed logins


async def test_max_connections_per_user(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_user=2)
    first = await server.user("multi", password=PASSWORD)
    assert first.token is not None
    second = await server.client()
    await second.login("multi", PASSWORD)
    third = await server.client()
    await expect_error(third, ErrorCode.RATE_LIMITED, "login", username="multi", password=PASSWORD)
    await expect_error(third, ErrorCode.RATE_LIMITED, "auth", token=first.token)
    await assert_serving(third)
    await expect_error(third, ErrorCode.UNAUTHORIZED, "me")
    # The limit is per user: another user connects, and the first two are untouched.
    await third.register(unique_name(), PASSWORD)
    assert (await third.call("me")).user == third.user
    assert (await first.call("me")).user == first.user
    assert (await second.call("me")).user == first.user


async def test_max_connections_per_user_holds_under_concurrent_auth(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_user=2)
    first = await server.user("racer", password=PASSWORD)
    assert first.token is not None
    token = first.token
    clients = [await server.client() for _ in range(8)]
    results = await asyncio.gather(*(c.auth(token) for c in clients), return_exceptions=True)
    sessions = [r for r in results if isinstance(r, frames.Session)]
    refused = [r for r in results if isinstance(r, ServerError)]
    assert len(sessions) == 1, results
    assert len(refused) == 7, results
    assert all(e.code == ErrorCode.RATE_LIMITED for e in refused), refused
    for client in clients:
        await assert_serving(client)


async def test_failed_logins_per_username(make_server: ServerFactory) -> None:
    server = await make_server(login_failures_per_username=3)
    await server.user("target", password=PASSWORD)
    await server.user("bystander", password=PASSWORD)
    attacker = await server.client()
    for _ in range(3):
        await expect_error(attacker, ErrorCode.UNAUTHORIZED, "login", username="target", password="wrong password")
    await expect_error(attacker, ErrorCode.RATE_LIMITED, "login", username="target", password=PASSWORD)
    await assert_serving(attacker)
    # Blocked for everyone, not per connection...
    fresh = await server.client()
    await expect_error(fresh, ErrorCode.RATE_LIMITED, "login", username="target", password=PASSWORD)
    # ...but only for that username.
    assert (await fresh.login("bystander", PASSWORD)).user.username == "bystander"


async def test_failed_logins_per_address(make_server: ServerFactory) -> None:
    server = await make_server(login_failures_per_address=3, login_failures_per_username=100)
    await server.user("victim", password=PASSWORD)
    sprayer = await server.client()
    for name in ("nobody1", "nobody2", "victim"):
        await expect_error(sprayer, ErrorCode.UNAUTHORIZED, "login", username=name, password="wrong password")
    await expect_error(sprayer, ErrorCode.RATE_LIMITED, "login", username="victim", password=PASSWORD)
    await assert_serving(sprayer)
    # Every connection from the same address is blocked, whatever the username.
    other = await server.client()
    await expect_error(other, ErrorCode.RATE_LIMITED, "login", username="victim", password=PASSWORD)
    # Login is blocked, not the server: registering still works.
    await other.register(unique_name(), PASSWORD)
    assert (await other.call("me")).user == other.user


# ---------------------------------------------------------------------------
# Auth timeout


async def test_auth_timeout(make_server: ServerFactory) -> None:
    server = await make_server(auth_timeout_seconds=0.3)
    # Opened first, so its own deadline passes before the idle one's.
    authed = await server.user()
    idle = await server.client()
    assert idle.hello is not None and idle.hello.limits.auth_timeout_ms == 300
    assert await closed_with(idle) == CloseCode.AUTH_TIMEOUT
    assert idle.ws.close_reason
    await assert_serving(authed)
    assert (await authed.call("me")).user == authed.user
    await assert_serving(await server.client())


class Gate:
    """An async password method made to wait, once it is called, until the test opens the gate."""

    def __init__(self, original: Callable[..., Awaitable[Any]]) -> None:
        self.original = original
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, *args: Any) -> Any:
        self.entered.set()
        await self.open.wait()
        return await self.original(*args)


async def test_auth_timeout_does_not_count_the_time_an_authentication_is_served(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline measures the client's delay in asking: a register served
    (hashed) for longer than auth_timeout_seconds succeeds; a login that fails
    after the deadline leaves the time it had when it was taken up, so the
    connection is closed with 4001 right after; one that never asks is closed."""
    server = await make_server(auth_timeout_seconds=0.3)
    assert server.app.services is not None
    passwords = server.app.services.passwords
    hashing = Gate(passwords.hash)
    monkeypatch.setattr(passwords, "hash", hashing)
    verifying = Gate(passwords.verify)
    monkeypatch.setattr(passwords, "verify", verifying)

    slow = await server.client()
    registering = asyncio.ensure_future(slow.register(unique_name(), PASSWORD))
    failing = await server.client()
    login = asyncio.ensure_future(failing.login(unique_name("nobody"), PASSWORD))
    await hashing.entered.wait()
    await verifying.entered.wait()
    # Opened after both: once its deadline has passed, theirs have too.
    idle = await server.client()
    assert await closed_with(idle) == CloseCode.AUTH_TIMEOUT
    hashing.open.set()
    verifying.open.set()

    session = await registering
    assert (await slow.call("me")).user == session.user
    await assert_serving(slow)
    with pytest.raises(ServerError) as info:
        await login
    assert info.value.code == ErrorCode.UNAUTHORIZED
    assert await closed_with(failing) == CloseCode.AUTH_TIMEOUT


# ---------------------------------------------------------------------------
# Handshake: origins and subprotocols


async def test_allowed_origins(make_server: ServerFactory) -> None:
    server = await make_server(allowed_origins="https://good.example")
    good = await server.client(origin=Origin("https://good.example"))
    await assert_serving(good)
    with pytest.raises(InvalidStatus) as info:
        async with open_client(server.url, origin=Origin("https://evil.example")):
            pass
    assert info.value.response.status_code == 403
    # Origin guards browsers; clients that send none (bots, terminals) are not browsers.
    bot = await server.client()
    await assert_serving(bot)
    await assert_serving(good)


async def test_unknown_subprotocol_only_is_refused(server: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, subprotocols=[Subprotocol("hubbub.v2")]):
            pass
    assert info.value.response.status_code == 400
    assert b"hubbub.v1" in info.value.response.body
    await assert_serving(await server.client())


async def test_no_subprotocol_works_as_v1(server: RunningServer) -> None:
    client = await server.client(subprotocols=None)
    assert client.ws.subprotocol is None
    assert client.hello is not None and client.hello.protocol == frames.PROTOCOL_VERSION
    await client.register(unique_name(), PASSWORD)
    await assert_serving(client)


async def test_v1_is_picked_among_several(server: RunningServer) -> None:
    client = await server.client(subprotocols=[Subprotocol("hubbub.v2"), Subprotocol(frames.PROTOCOL_VERSION)])
    assert client.ws.subprotocol == frames.PROTOCOL_VERSION
    await assert_serving(client)


async def test_failed_logins_counted_per_forwarded_address_behind_trusted_proxy(make_server: ServerFactory) -> None:
    server = await make_server(trusted_proxies="127.0.0.1", login_failures_per_address=2)
    name = unique_name()
    await server.user(name)

    async def attempt(forwarded_for: str, password: str) -> str:
        client = await server.client(additional_headers={"X-Forwarded-For": forwarded_for})
        try:
            await client.login(name, password)
        except ServerError as exc:
            return exc.code
        return "ok"

    # Two failures from one client address behind the proxy block that address only.
    assert await attempt("203.0.113.7", "wrong password") == "unauthorized"
    assert await attempt("198.51.100.1, 203.0.113.7", "wrong password") == "unauthorized"
    assert await attempt("203.0.113.7", "correct horse") == "rate_limited"
    # Another client behind the same proxy is not affected.
    assert await attempt("203.0.113.8", "correct horse") == "ok"


async def test_forwarded_for_ignored_without_trusted_proxies(make_server: ServerFactory) -> None:
    server = await make_server(login_failures_per_address=1)
    name = unique_name()
    await server.user(name)
    spoofer = await server.client(additional_headers={"X-Forwarded-For": "203.0.113.9"})
    with pytest.raises(ServerError):
        await spoofer.login(name, "wrong password")
    # The failure counted against the real peer (127.0.0.1), whatever the header said.
    other = await server.client(additional_headers={"X-Forwarded-For": "203.0.113.10"})
    with pytest.raises(ServerError) as blocked:
        await other.login(name, "correct horse")
    assert blocked.value.code == "rate_limited"
