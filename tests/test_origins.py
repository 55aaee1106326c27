"""HUBBUB_ALLOWED_ORIGINS as a browser meets it: scheme and host compare
without case, a default port is the same origin as none, and `null` (what
file:// pages and sandboxed frames send) is allowed only when listed."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from hubbub.protocol.client import open_client
from tests.conftest import ServerFactory
from tests.helpers import assert_serving


async def refused(url: str, origin: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with open_client(url, origin=Origin(origin)):
            pass
    status: int = info.value.response.status_code
    return status


async def test_origins_compare_scheme_and_host_without_case(make_server: ServerFactory) -> None:
    server = await make_server(allowed_origins="HTTPS://Chat.Example.com:443, http://LOCALHOST:8080")
    for origin in ("https://chat.example.com", "https://CHAT.example.COM", "http://localhost:8080"):
        await assert_serving(await server.client(origin=Origin(origin)))
    for origin in (
        "https://chat.example.com.evil.example",
        "http://chat.example.com",  # another scheme is another origin
        "http://localhost:8081",  # and so is another port
        "null",
    ):
        assert await refused(server.url, origin) == 403, origin


async def test_null_origin_when_listed(make_server: ServerFactory) -> None:
    server = await make_server(allowed_origins="null,https://chat.example.com")
    await assert_serving(await server.client(origin=Origin("null")))
    await assert_serving(await server.client(origin=Origin("https://chat.example.com")))
    assert await refused(server.url, "https://other.example") == 403
