"""server.send_order: a connection's sends are handed over in the order they started, whatever each awaited first."""

from __future__ import annotations

import asyncio

from hubbub.server.send_order import SendOrder, SendTurn


async def send(turn: SendTurn, before_ready: asyncio.Event, handed: list[int], n: int, fail: bool = False) -> None:
    """A send as the handler makes it: some awaited work, its turn, the hand-over, released on every way out."""
    try:
        await before_ready.wait()
        if fail:
            raise RuntimeError("refused before its turn")
        await turn.wait()
        turn.release()
        handed.append(n)
    finally:
        turn.release()


async def test_sends_are_handed_over_in_the_order_they_started() -> None:
    order = SendOrder()
    ready = [asyncio.Event() for _ in range(3)]
    handed: list[int] = []
    tasks = [asyncio.ensure_future(send(order.reserve(), ready[n], handed, n)) for n in range(3)]
    for n in (2, 1, 0):  # the last one's work is done first
        ready[n].set()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert handed == [0, 1, 2]


async def test_a_send_that_gives_up_lets_the_next_go() -> None:
    order = SendOrder()
    ready = asyncio.Event()
    handed: list[int] = []
    failing = asyncio.ensure_future(send(order.reserve(), ready, handed, 0, fail=True))
    next_one = asyncio.ensure_future(send(order.reserve(), ready, handed, 1))
    ready.set()
    await asyncio.gather(failing, next_one, return_exceptions=True)
    assert handed == [1]


async def test_a_cancelled_send_keeps_the_next_behind_the_earlier_ones() -> None:
    order = SendOrder()
    first_ready, now = asyncio.Event(), asyncio.Event()
    now.set()
    handed: list[int] = []
    first = asyncio.ensure_future(send(order.reserve(), first_ready, handed, 0))
    second = asyncio.ensure_future(send(order.reserve(), now, handed, 1))
    third = asyncio.ensure_future(send(order.reserve(), now, handed, 2))
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.sleep(0)
    assert handed == [] and not third.done()  # still behind the first
    first_ready.set()
    await asyncio.gather(first, third)
    assert handed == [0, 2] and second.cancelled()


async def test_a_turn_with_nothing_before_it_does_not_wait() -> None:
    turn = SendOrder().reserve()
    await asyncio.wait_for(turn.wait(), 0.01)
    turn.release()
    turn.release()  # idempotent
