"""The Redis broker's receiving side alone, for instruction counts per received
envelope (BENCHMARKS.md, "Per delivery").

``sub``: a RedisBroker watching one conversation, whose handler only counts,
runs until it has received N envelopes. ``pub`` (another process, not under
callgrind) waits for the subscriber to be ready, then publishes N envelopes
of message.new events from another instance id, in one pipeline::

    for n in 300 2300; do
      PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cgs-$n.out \\
        python -m hubbub.loadtest.subscriberbench sub $n bench-$n &
      python -m hubbub.loadtest.subscriberbench pub $n bench-$n; wait
    done
    # (totals of cgs-2300 - totals of cgs-300) / 2000 = instructions per envelope

``send`` is the publishing side alone: a RedisBroker publishes N message.new
events, ``PER_TURN`` per loop turn as a busy instance does, and each turn's
batch is sent by calling the broker's ``_publish_once`` in step (its own
publisher task is cancelled, so nothing spins while Redis answers), to a topic
nobody reads::

    for n in 300 2300; do
      PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cgp-$n.out \
        python -m hubbub.loadtest.subscriberbench send $n bench-$n
    done
    # (totals of cgp-2300 - totals of cgp-300) / 2000 = instructions per published envelope

The key prefix (third argument) keeps the run's topics apart; Redis keeps
nothing (pub/sub only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as redis
import uvloop

from hubbub.loadtest.fanoutbench import CONVERSATION, message_events
from hubbub.server.broker import Event, MembershipChange
from hubbub.server.broker_redis import Envelope, RedisBroker, _encoder
from hubbub.server.config import RedisConfig
from hubbub.server.metrics import Metrics

PER_TURN = 10
"""Envelopes published per loop turn by ``send``."""
REDIS_URL = os.environ.get("HUBBUB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def ready_file(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"hubbub-subscriberbench-{prefix}.ready"


class Counting:
    """The broker's handler: counts events, done at ``expected``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = 0
        self.done = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.seen += 1
        if self.seen >= self.expected:
            self.done.set()

    def on_membership(self, change: MembershipChange) -> None:
        pass

    def on_resync(self, conversation_ids: Sequence[int] | None) -> None:
        pass


def config(prefix: str) -> RedisConfig:
    return RedisConfig(
        redis_url=REDIS_URL,
        redis_cluster=False,
        redis_prefix=prefix,
        redis_pool_max=4,
        broker_probe_seconds=3600.0,
        storage_timeout_seconds=600.0,
    )


async def subscribe(count: int, prefix: str) -> int:
    """Receive ``count`` envelopes; the number the handler saw."""
    broker = RedisBroker(config(prefix), "receiver", Metrics())
    handler = Counting(count)
    await broker.start(handler)
    try:
        broker.watch(conversations=(CONVERSATION,))
        # No event says "subscribed": poll the broker's status.
        while broker.status() is not None or not broker.topics()["conversations"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ready_file(prefix).touch()
        await handler.done.wait()
    finally:
        await broker.close()
    return handler.seen


async def publish(count: int, prefix: str) -> None:
    """Once the subscriber is ready: ``count`` envelopes to its conversation's topic."""
    ready = ready_file(prefix)
    while not ready.exists():  # noqa: ASYNC110  # another process: a file is the signal
        await asyncio.sleep(0.1)
    ready.unlink()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for event in message_events(count, 100):
                pipe.spublish(f"{prefix}:c:{CONVERSATION}", _encoder.encode(Envelope("sender", event.seq, event)))
            await pipe.execute()
    finally:
        await client.aclose()


async def send(count: int, prefix: str) -> int:
    """Publish ``count`` envelopes through the broker's own publishing path; the number published."""
    metrics = Metrics()
    broker = RedisBroker(config(prefix), "sender", metrics)
    await broker.start(Counting(count))
    try:
        # The bench drives the publisher itself, one batch per step.
        broker._tasks[1].cancel()
        while broker.status() is not None:  # noqa: ASYNC110  # no event says "subscribed"
            await asyncio.sleep(0.05)
        events = message_events(count, 100)
        for start in range(0, count, PER_TURN):
            for event in events[start : start + PER_TURN]:
                broker.publish(event)
            await broker._publish_once()
    finally:
        await broker.close()
    return int(metrics.broker_published._value.get())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubbub.loadtest.subscriberbench")
    parser.add_argument("role", choices=["sub", "pub", "send"])
    parser.add_argument("count", type=int)
    parser.add_argument("prefix", help="Redis key prefix of this run")
    args = parser.parse_args(argv)
    if args.role == "pub":
        uvloop.run(publish(args.count, args.prefix))
        return 0
    if args.role == "send":
        sent = uvloop.run(send(args.count, args.prefix))
        print(f"published {sent}", file=sys.stderr)
        return 0 if sent == args.count else 1
    seen = uvloop.run(subscribe(args.count, args.prefix))
    print(f"received {seen}", file=sys.stderr)
    return 0 if seen == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
