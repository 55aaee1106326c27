"""Disabled accounts across server instances (issue 15): a user disabled
directly in the store, as ``hubbub admin`` does with no server involved, has
their connections on both instances closed with 4004 within the account
check interval; one disabled over the protocol on one instance is closed on
the other at once (the broker's ``sessions.ended``); and either way neither
instance lets them back in until they are re-enabled.

Real `hubbub serve` processes on PostgreSQL, routed through Redis (tests/cluster.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from hubbub.protocol.client import Client, ServerError, open_client
from hubbub.protocol.errors import CloseCode, ErrorCode
from hubbub.server.clock import now_ms
from hubbub.server.config import Settings
from hubbub.storage.factory import Stores, open_stores
from tests.cluster import Cluster, Peer
from tests.conftest import TEST_SETTINGS
from tests.helpers import closed_with

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)

CHECK_SECONDS = 0.5


@pytest.fixture
async def store(stores: dict[str, Any], tmp_path: Any) -> AsyncIterator[Stores]:
    """The cluster's stores opened by the test itself, as the command line opens them."""
    settings = msgspec.convert({**TEST_SETTINGS, **stores, "data_dir": str(tmp_path / "cli")}, Settings)
    opened = await open_stores(settings.storage)
    try:
        yield opened
    finally:
        await opened.close()


async def refused(url: str, token: str) -> str:
    """The error code ``auth`` with ``token`` gets on a new connection to ``url``."""
    async with open_client(url) as client:
        await client.next_event()  # hello
        try:
            await client.auth(token)
        except ServerError as exc:
            return exc.code
    raise AssertionError("auth succeeded")


async def both_closed(*clients: Client, timeout: float) -> list[int | None]:
    return list(await asyncio.gather(*(closed_with(c, timeout) for c in clients)))


async def test_a_user_disabled_in_the_store_is_closed_on_every_instance(cluster: Cluster, store: Stores) -> None:
    cluster.settings["account_check_seconds"] = CHECK_SECONDS
    a, b = await cluster.start("a", "b")
    bob = await cluster.connect(a, name="bob")
    bob_phone = await cluster.connect(b, bob.device("phone"))
    carol = await cluster.connect(b, name="carol")
    await cluster.settle()

    started = time.monotonic()
    disabled = await store.directory.set_disabled(bob.user_id, True, now_ms())
    assert disabled is not None
    codes = await both_closed(bob.client, bob_phone.client, timeout=10)
    elapsed = time.monotonic() - started
    assert codes == [CloseCode.ACCOUNT_DISABLED, CloseCode.ACCOUNT_DISABLED]
    # Within a check interval (each instance checks on its own), with slack for a loaded machine.
    assert elapsed < CHECK_SECONDS + 2.5, elapsed
    assert await refused(a.url, bob.token) == ErrorCode.ACCOUNT_DISABLED
    assert await refused(b.url, bob.token) == ErrorCode.ACCOUNT_DISABLED
    await carol.call("ping")  # nobody else is touched

    await store.directory.set_disabled(bob.user_id, False, now_ms())
    # Re-enabled: the old token stays refused all the same (its generation is gone).
    assert await refused(b.url, bob.token) == ErrorCode.UNAUTHORIZED


async def test_a_user_disabled_over_the_protocol_is_closed_on_the_other_instance_at_once(
    cluster: Cluster, store: Stores
) -> None:
    # A check far slower than the test: only the broker's event can close them in time.
    cluster.settings["account_check_seconds"] = 60
    a, b = await cluster.start("a", "b")
    boss = await cluster.connect(a, name="boss")
    await store.directory.set_workspace_role(boss.user_id, "admin")
    boss_again = await cluster.connect(a, boss.device("again"))  # authenticated as an admin
    dave: Peer = await cluster.connect(b, name="dave")
    dave_laptop = await cluster.connect(a, dave.device("laptop"))
    await cluster.settle()

    started = time.monotonic()
    await boss_again.call("admin.disable_user", user_id=dave.user_id)
    codes = await both_closed(dave.client, dave_laptop.client, timeout=10)
    assert codes == [CloseCode.ACCOUNT_DISABLED, CloseCode.ACCOUNT_DISABLED]
    assert time.monotonic() - started < 5
    assert await refused(b.url, dave.token) == ErrorCode.ACCOUNT_DISABLED
    entries = await store.directory.audit_entries(0, 100)
    assert [(e.actor_id, e.action, e.target) for e in entries] == [
        (boss.user_id, "user.disable", {"user_id": dave.user_id})
    ]
