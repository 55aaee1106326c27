"""What /metrics exposes beyond docs/operations.md's table: no `_created`
duplicates, and an event-loop lag that is measured and tells a stall."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

from hubbub.server.loop_lag import LoopLagMonitor
from tests.conftest import RunningServer, http_get


async def exposition(server: RunningServer) -> str:
    status, body = await asyncio.to_thread(http_get, f"{server.http_url}/metrics")
    assert status == 200
    return body


def series_names(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def lag_count(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("hubbub_event_loop_lag_seconds_count "))
    return float(line.rsplit(" ", 1)[1])


async def test_metrics_have_no_created_series(server: RunningServer) -> None:
    client = await server.user()
    await client.call("ping")  # labelled counters and histograms now have children
    names = series_names(await exposition(server))
    assert "hubbub_frames_in_total" in names and "hubbub_request_seconds_count" in names
    created = sorted(name for name in names if name.endswith("_created"))
    assert not created, f"prometheus_client's _created series are exposed: {created}"


async def test_event_loop_lag_is_measured_while_the_server_runs(server: RunningServer) -> None:
    text = await exposition(server)
    assert "hubbub_event_loop_lag_seconds_bucket" in series_names(text)
    async with asyncio.timeout(10):  # the first measurement lands after one interval (0.5 s)
        while lag_count(text) < 1:
            await asyncio.sleep(0.1)
            text = await exposition(server)


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    histogram = Histogram("lag_seconds", "test", buckets=(0.05, 0.1, 1.0), registry=CollectorRegistry())
    monitor = LoopLagMonitor(histogram, interval=0.01)
    measuring = asyncio.create_task(monitor.measure_once())
    await asyncio.sleep(0)  # the measurement's timer is now armed
    time.sleep(0.2)  # noqa: ASYNC251 -- the point: a handler that blocks the loop
    await measuring
    samples = next(iter(histogram.collect())).samples
    assert next(s.value for s in samples if s.name.endswith("_sum")) >= 0.15
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.1"] == 0 and buckets["1.0"] == 1
