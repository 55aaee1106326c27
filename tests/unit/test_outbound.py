"""hubbub.server.outbound.Flusher: one callback per event-loop turn flushes every
session that queued frames in that turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import hubbub.server.outbound
from hubbub.server.outbound import Flusher


@dataclass(eq=False)
class FakeSession:
    name: str
    log: list[str]
    on_flush: Callable[[], None] | None = None
    flushes: int = field(default=0)

    def flush(self) -> None:
        self.flushes += 1
        self.log.append(self.name)
        if self.on_flush is not None:
            self.on_flush()


async def next_turn() -> None:
    """Return after every callback already scheduled has run."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


class CountingLoop:
    """The running loop, counting the callbacks scheduled through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.scheduled = 0

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> asyncio.Handle:
        self.scheduled += 1
        return self._loop.call_soon(callback, *args)


@pytest.fixture
async def counting_loop(monkeypatch: pytest.MonkeyPatch) -> CountingLoop:
    counting = CountingLoop(asyncio.get_running_loop())
    monkeypatch.setattr(hubbub.server.outbound, "asyncio", SimpleNamespace(get_running_loop=lambda: counting))
    return counting


async def test_sessions_added_in_one_turn_are_flushed_together_at_its_end(counting_loop: CountingLoop) -> None:
    log: list[str] = []
    sessions = [FakeSession(name, log) for name in "abcd"]
    flusher = Flusher()
    for session in sessions:
        flusher.add(session)
    assert log == []  # nothing is written during the turn
    assert counting_loop.scheduled == 1
    await next_turn()
    assert log == ["a", "b", "c", "d"]
    assert counting_loop.scheduled == 1


async def test_each_turn_gets_its_own_flush(counting_loop: CountingLoop) -> None:
    log: list[str] = []
    a, b = FakeSession("a", log), FakeSession("b", log)
    flusher = Flusher()
    flusher.add(a)
    await next_turn()
    flusher.add(b)
    flusher.add(a)
    await next_turn()
    assert log == ["a", "b", "a"]
    assert counting_loop.scheduled == 2
    await next_turn()
    assert counting_loop.scheduled == 2  # an idle turn schedules nothing


async def test_a_session_queued_during_a_flush_is_flushed_in_the_next_turn(counting_loop: CountingLoop) -> None:
    log: list[str] = []
    flusher = Flusher()
    late = FakeSession("late", log)
    early = FakeSession("early", log, on_flush=lambda: flusher.add(late))
    flusher.add(early)
    await next_turn()
    await next_turn()
    assert log == ["early", "late"]  # not lost, and not flushed inside the flush that queued it
    assert counting_loop.scheduled == 2
    assert late.flushes == 1


async def test_with_the_real_loop_every_added_session_is_flushed_once() -> None:
    log: list[str] = []
    sessions = [FakeSession(str(i), log) for i in range(100)]
    flusher = Flusher()
    for session in sessions:
        flusher.add(session)
    await next_turn()
    assert log == [str(i) for i in range(100)]
    await next_turn()
    assert all(s.flushes == 1 for s in sessions)
