"""storage.replica.ReplicaRoute: lag-tolerant reads on the replica, on the primary while it fails."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest

from hubbub.server.config import ConfigError, Settings, load_settings
from hubbub.storage.config import InvalidStorageConfig
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.replica import ReplicaRoute, reporting_replica


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Report:
    def __init__(self) -> None:
        self.health: list[bool] = []
        self.fallbacks = 0

    def replica_healthy(self, healthy: bool) -> None:
        self.health.append(healthy)

    def replica_fallback(self) -> None:
        self.fallbacks += 1


class Replica:
    """A replica read that answers, fails or hangs, as the test sets it."""

    def __init__(self) -> None:
        self.mode = "up"
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.mode == "down":
            raise StoreUnavailable("postgres", "[Errno 111] Connect call failed")
        if self.mode == "hung":
            await asyncio.sleep(60)
        return "replica"


async def primary() -> str:
    return "primary"


def route(clock: Clock, report: Report, timeout: float = 1.0) -> ReplicaRoute:
    with reporting_replica(report):
        return ReplicaRoute("postgres", timeout_seconds=timeout, retry_seconds=5.0, clock=clock)


def healthy(reads: ReplicaRoute) -> bool:
    """Read afresh each time (mypy would keep an attribute's narrowing across the awaits)."""
    return reads.healthy


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(r.getMessage(), r.levelno) for r in caplog.records if r.name == "hubbub"]


async def test_reads_go_to_the_replica_while_it_answers() -> None:
    clock, report, replica = Clock(), Report(), Replica()
    reads = route(clock, report)
    assert [await reads.read(replica, primary) for _ in range(3)] == ["replica"] * 3
    assert replica.calls == 3 and report.fallbacks == 0
    assert report.health == [True] and healthy(reads)


async def test_a_failing_replica_sends_reads_to_the_primary_rests_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hubbub")
    clock, report, replica = Clock(), Report(), Replica()
    reads = route(clock, report)
    replica.mode = "down"

    assert await reads.read(replica, primary) == "primary"
    assert not healthy(reads) and report.health == [True, False]
    (line,) = [r for r in caplog.records if r.getMessage() == "replica_unavailable"]
    assert line.levelno == logging.WARNING
    assert getattr(line, "fields", {})["error"] == "[Errno 111] Connect call failed"

    # Resting: the replica is not even tried.
    clock.now += 4.9
    assert await reads.read(replica, primary) == "primary"
    assert replica.calls == 1 and report.fallbacks == 2

    # Tried again after the rest, still down: one more attempt, no second log line.
    clock.now += 0.2
    assert await reads.read(replica, primary) == "primary"
    assert replica.calls == 2 and report.fallbacks == 3
    assert events(caplog) == [("replica_unavailable", logging.WARNING)]

    replica.mode = "up"
    clock.now += 4.9
    assert await reads.read(replica, primary) == "primary", "still resting after the second failure"
    clock.now += 0.2
    assert await reads.read(replica, primary) == "replica"
    assert healthy(reads) and report.health == [True, False, True]
    assert events(caplog) == [("replica_unavailable", logging.WARNING), ("replica_recovered", logging.INFO)]


async def test_a_replica_that_does_not_answer_costs_only_its_timeout() -> None:
    clock, report, replica = Clock(), Report(), Replica()
    reads = route(clock, report, timeout=0.05)
    replica.mode = "hung"
    async with asyncio.timeout(5):
        assert await reads.read(replica, primary) == "primary"
    assert not healthy(reads) and report.fallbacks == 1


async def test_other_errors_are_not_the_replicas_to_hide() -> None:
    clock, report = Clock(), Report()
    reads = route(clock, report)

    async def buggy() -> str:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        await reads.read(buggy, primary)
    assert healthy(reads) and report.fallbacks == 0


async def test_a_primary_failure_is_the_reads_own() -> None:
    clock, report, replica = Clock(), Report(), Replica()
    reads = route(clock, report)
    replica.mode = "down"

    async def primary_down() -> str:
        raise StoreUnavailable("postgres", "primary down too")

    with pytest.raises(StoreUnavailable, match="primary down too"):
        await reads.read(replica, primary_down)


async def test_without_a_report_it_still_routes() -> None:
    replica = Replica()
    reads = ReplicaRoute("postgres", timeout_seconds=1.0, retry_seconds=5.0)
    replica.mode = "down"
    assert await reads.read(replica, primary) == "primary"


def test_the_replica_timeout_must_leave_the_primary_time() -> None:
    values = {"postgres_dsn": "postgresql://db/x", "postgres_replica_dsn": "postgresql://replica/x"}
    config = msgspec.convert({**values, "postgres_replica_timeout_seconds": 5.0}, Settings).storage
    with pytest.raises(InvalidStorageConfig, match="postgres_replica_timeout_seconds must be shorter"):
        config.check()
    with pytest.raises(ConfigError, match="--postgres-replica-timeout-seconds"):
        load_settings({}, {**values, "postgres_replica_timeout_seconds": "5"})
    # Without a replica the timeout means nothing, and breaks no rule.
    msgspec.convert(
        {"postgres_dsn": "postgresql://db/x", "postgres_replica_timeout_seconds": 5.0}, Settings
    ).storage.check()
