"""The subscriber bench (loadtest/subscriberbench.py) receives through the real
RedisBroker, on the machine's Redis, exactly what its publisher sent."""

from __future__ import annotations

import asyncio
import secrets

from hubbub.loadtest import subscriberbench


async def test_the_broker_receives_every_envelope_published() -> None:
    prefix = f"test-subbench-{secrets.token_hex(4)}"
    async with asyncio.timeout(60):
        seen, _ = await asyncio.gather(subscriberbench.subscribe(25, prefix), subscriberbench.publish(25, prefix))
    assert seen == 25
    assert not subscriberbench.ready_file(prefix).exists()
