"""storage.supervision.supervise: a failing iteration never ends the task; a cancellation always does."""

from __future__ import annotations

import asyncio

import pytest

from hubbub.storage.supervision import supervise


async def test_a_cancellation_an_iteration_swallowed_still_ends_the_task(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def swallowing_iteration() -> None:
        """What a driver does that turns a cancelled read into a connection error."""
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ConnectionError("connection closed while reading") from None

    task = asyncio.create_task(supervise("swallower", swallowing_iteration, None))
    await started.wait()
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_iteration_is_followed_by_the_next_one() -> None:
    calls = 0
    done = asyncio.Event()

    async def failing_twice() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"failure {calls}")
        done.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(supervise("flaky", failing_twice, None))
    async with asyncio.timeout(5):
        await done.wait()
    assert calls == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
