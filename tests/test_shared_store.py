"""Two server processes on the same databases: seqs stay unique and
strictly increasing when both send into one conversation at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.protocol.client import Client, open_client
from tests.conftest import TEST_SETTINGS
from tests.processes import ServerProcess, running_server, settings_env

pytestmark = pytest.mark.all_backends

PER_SENDER = 15


@pytest.fixture
async def two_servers(backend_settings: dict[str, Any], tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    env = settings_env({**TEST_SETTINGS, **backend_settings, "data_dir": tmp_path / "data"})
    async with running_server(tmp_path / "data", env) as first, running_server(tmp_path / "data", env) as second:
        yield [first, second]


async def sender(client: Client, conversation_id: int, name: str) -> list[tuple[str, int]]:
    acks = await asyncio.gather(
        *(
            client.call(
                "message.send", conversation_id=conversation_id, text=f"{name}-{i}", client_msg_id=f"{name}-{i}"
            )
            for i in range(PER_SENDER)
        )
    )
    return [(ack.message.client_msg_id, ack.message.seq) for ack in acks]


async def test_concurrent_senders_on_two_processes(two_servers: list[ServerProcess], backend: str) -> None:
    first, second = two_servers
    async with open_client(await first.url()) as alice, open_client(await second.url()) as bob:
        await alice.register("alice", "correct horse")
        await bob.register("bob", "correct horse")
        channel = (await alice.call("channel.create", name="busy")).conversation
        await bob.call("channel.join", channel_id=channel.id)

        results = await asyncio.gather(
            sender(alice, channel.id, "a1"), sender(alice, channel.id, "a2"), sender(bob, channel.id, "b1")
        )
        acked = dict(pair for result in results for pair in result)
        seqs = sorted(acked.values())
        assert len(set(seqs)) == len(seqs) == 3 * PER_SENDER, "every ack has its own seq"
        if not backend.endswith("mongo"):
            assert seqs == list(range(1, 3 * PER_SENDER + 1)), "transactional stores leave no gaps"

        page = await bob.call("message.history", conversation_id=channel.id, order="asc", limit=100)
        assert {m.client_msg_id: m.seq for m in page.messages} == acked
        assert [m.seq for m in page.messages] == seqs
