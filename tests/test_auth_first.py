"""A reconnect storm's authentications go before the requests of clients
already authenticated (server/auth_first.py), on a real server: while
``auth_first_threshold`` auths are being served, an authenticated client's
request waits, and is served once they are answered, or after
``auth_first_hold_seconds`` at the latest. The auths are kept in flight by
holding their store read, as a loaded store would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hubbub.protocol import frames
from tests.conftest import RunningServer, ServerFactory

AUTHS = 3


async def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the server's own tasks make it true; no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def storm_in_flight(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, store_answers: asyncio.Event
) -> list[asyncio.Task[Any]]:
    """AUTHS clients sending ``auth`` whose store read waits for ``store_answers``."""
    tokens = []
    for _ in range(AUTHS):
        client = await server.user()
        assert client.token is not None
        tokens.append(client.token)
        await client.close()
    services = server.app.services
    assert services is not None
    directory = services.directory
    read = directory.sessions_of

    async def slow(user_ids: Any) -> Any:
        await store_answers.wait()
        return await read(user_ids)

    monkeypatch.setattr(directory, "sessions_of", slow)
    clients = [await server.client() for _ in tokens]
    auths = [asyncio.ensure_future(c.auth(t)) for c, t in zip(clients, tokens, strict=True)]
    await until(lambda: services.auth_first.in_flight == AUTHS, "every auth in flight")
    return auths


async def test_an_authenticated_request_waits_for_the_storms_auths(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(auth_first_threshold=AUTHS, auth_first_hold_seconds=60)
    services = server.app.services
    assert services is not None
    ready = await server.user()  # authenticated before the storm
    store_answers = asyncio.Event()
    auths = await storm_in_flight(server, monkeypatch, store_answers)
    me = asyncio.ensure_future(ready.call("me"))
    await until(lambda: services.auth_first.held_total == 1, "the request held")
    assert not me.done()
    store_answers.set()
    sessions = await asyncio.gather(*auths)
    result = await me  # served once the auths were answered
    assert isinstance(result, frames.UserResult) and ready.user is not None and result.user.id == ready.user.id
    assert all(isinstance(s, frames.Session) for s in sessions)
    assert services.auth_first.in_flight == 0


async def test_a_held_request_waits_no_longer_than_the_hold(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(auth_first_threshold=AUTHS, auth_first_hold_seconds=0.2)
    services = server.app.services
    assert services is not None
    ready = await server.user()
    store_answers = asyncio.Event()
    auths = await storm_in_flight(server, monkeypatch, store_answers)
    result = await ready.call("me")  # answered while the auths are still in flight
    assert services.auth_first.held_total == 1 and services.auth_first.in_flight == AUTHS
    assert isinstance(result, frames.UserResult)
    store_answers.set()
    await asyncio.gather(*auths)


async def test_outside_a_storm_nothing_waits(make_server: ServerFactory) -> None:
    server = await make_server(auth_first_threshold=AUTHS, auth_first_hold_seconds=60)
    services = server.app.services
    assert services is not None
    client = await server.user()
    for _ in range(5):
        await client.call("me")
    assert services.auth_first.held_total == 0 and services.auth_first.in_flight == 0
