"""Prometheus metrics of one server, on a registry of its own.

A registry per server (not the global default) lets several servers run in
one process, as the tests do.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from itertools import accumulate
from typing import Generic, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from hubbub.server.pool_metrics import PoolCollector

_go_float = cast(Callable[[float], str], floatToGoString)
"""prometheus_client's bucket bound format ("1.0", "0.005"), typed: it is unannotated."""

# Every counter and histogram would also be exposed as a `_created` gauge (its
# creation time), doubling the series Prometheus stores for nothing a rule or
# dashboard here reads; prometheus_client's documented switch turns them off,
# process-wide, before any metric is built.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

M = TypeVar("M", Counter, Gauge, Histogram)


class ByLabel(Generic[M]):
    """A one-label metric's children, looked up by label value and created on
    first use: prometheus_client's ``labels()`` validates its arguments and
    takes a lock on every call, a visible share of a request's CPU."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[str, M] = {}

    def __getitem__(self, value: str) -> M:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child


class LoopCounter:
    """One series of a counter that only the event loop's thread changes: a
    float bumped in place. prometheus_client's ``Counter.inc`` checks the
    metric and takes a lock on every call, about ten times the cost, and the
    send path bumps a handful of counters per message (BENCHMARKS.md, "The
    send path's CPU")."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LoopHistogram:
    """One series of a histogram that only the event loop's thread changes:
    per-bucket counts (not cumulative) and a sum, the bucket found by bisection."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket: ``counts[i]`` those <= ``bounds[i]`` and above the bound before; the last, +Inf."""
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


S = TypeVar("S", LoopCounter, LoopHistogram)


class LoopFamily(Generic[S]):
    """A counter or histogram of ``LoopCounter``/``LoopHistogram`` series, by
    label values, exposed as prometheus_client would expose the same metric
    (``LoopCollector``). ``family["x"]`` is a one-label family's series, as
    ``ByLabel``; ``labels(...)`` takes every label's value."""

    __slots__ = ("_make", "doc", "kind", "labelnames", "name", "series")

    def __init__(self, kind: str, name: str, doc: str, labelnames: tuple[str, ...], make: Callable[[], S]) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self._make: Callable[[], S] = make
        self.series: dict[tuple[str, ...], S] = {}

    def labels(self, *values: str) -> S:
        child = self.series.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {values!r}")
            child = self.series[values] = self._make()
        return child

    def __getitem__(self, value: str) -> S:
        return self.labels(value)


class LoopCollector:
    """The ``LoopFamily`` metrics of a registry, collected at scrape time."""

    def __init__(self) -> None:
        self.families: list[LoopFamily[LoopCounter] | LoopFamily[LoopHistogram]] = []

    def counter(self, name: str, doc: str, labelnames: tuple[str, ...] = ()) -> LoopFamily[LoopCounter]:
        family = LoopFamily("counter", name, doc, labelnames, LoopCounter)
        self.families.append(family)
        return family

    def histogram(
        self, name: str, doc: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]
    ) -> LoopFamily[LoopHistogram]:
        family = LoopFamily("histogram", name, doc, labelnames, lambda: LoopHistogram(buckets))
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            labels = list(family.labelnames)
            if family.kind == "counter":
                counters = CounterMetricFamily(family.name, family.doc, labels=labels)
                for values, child in list(family.series.items()):
                    counters.add_metric(list(values), cast(LoopCounter, child).value)
                yield counters
            else:
                histograms = HistogramMetricFamily(family.name, family.doc, labels=labels)
                for values, child in list(family.series.items()):
                    series = cast(LoopHistogram, child)
                    cumulative = list(accumulate(series.counts))
                    bounds = [_go_float(b) for b in series._bounds] + ["+Inf"]
                    histograms.add_metric(list(values), list(zip(bounds, cumulative, strict=True)), series.sum)
                yield histograms


BACKGROUND_TASKS = (
    "presence_heartbeat",
    "presence_offline",
    "broker_subscriber",
    "broker_publisher",
    "broker_probe",
    "broker_subscriptions",
    "keepalive",
    "catchup_fill",
    "catchup_resync",
    "group_commit",
    "event_loop_lag",
    "retention_purge",
    "account_check",
)
"""The ``task`` label values of hubbub_task_failures_total (storage/supervision.py);
each series exists from start-up, at 0, so alerts on its increase work at once."""

LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""hubbub_event_loop_lag_seconds: from a loop that keeps up (a millisecond) to one stalled for seconds."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def build_labels() -> dict[str, str]:
    """What is running, for hubbub_build_info: cheap to read once at start-up."""

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "unknown"

    return {
        "version": installed("hubbub"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "uvloop": installed("uvloop"),
        "websockets": installed("websockets"),
    }


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """prometheus_client's process (CPU, RSS, fds, start time), platform
    (python_info) and GC collectors, and hubbub_build_info, on ``registry``:
    what every dashboard expects beside the application's own series."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    labels = build_labels()
    info = Gauge("hubbub_build_info", "Always 1; the labels say what is running.", list(labels), registry=registry)
    info.labels(**labels).set(1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        add_standard_collectors(r)
        self.connections = Gauge("hubbub_connections", "Open WebSocket connections.", registry=r)
        self.authenticated = Gauge("hubbub_authenticated_connections", "Authenticated connections.", registry=r)
        # What every request or message changes (a handful per send): series
        # bumped without a lock by the event loop, the one thread that changes them.
        loop = self.loop_metrics = LoopCollector()
        r.register(loop)
        self.frames_in_by = loop.counter("hubbub_frames_in", "Client frames received, by request type.", ("type",))
        self.frames_out_by = loop.counter("hubbub_frames_out", "Frames sent, by frame type.", ("type",))
        self.request_latency_by = loop.histogram(
            "hubbub_request_seconds", "Request handling time, by op.", ("op",), LATENCY_BUCKETS
        )
        self.errors_by = loop.counter("hubbub_errors", "Error replies, by code.", ("code",))
        self.messages_stored = loop.counter("hubbub_messages_stored", "Messages stored and acknowledged.").labels()
        self.messages_received = loop.counter(
            "hubbub_messages_received",
            "New messages delivered to this instance's connections, each once however many recipients.",
        ).labels()
        self.deliveries = loop.counter("hubbub_deliveries", "Event frames queued to local connections.").labels()
        self.slow_consumers = Counter(
            "hubbub_slow_consumer_disconnects", "Connections closed because their buffer overflowed.", registry=r
        )
        self.handshakes_refused = Counter(
            "hubbub_handshakes_refused",
            "WebSocket handshakes refused, by reason (origin, subprotocol, connection_limit, shutting_down, "
            "not_websocket, bad_handshake, malformed_http, handshake_timeout, internal_error).",
            ["reason"],
            registry=r,
        )
        self.handshakes_refused_by = ByLabel(self.handshakes_refused)
        self.storage_latency = loop.histogram(
            "hubbub_storage_seconds", "Store call time, by store and op.", ("store", "op"), LATENCY_BUCKETS
        )
        self.gap_filled = Counter(
            "hubbub_gap_filled_messages",
            "Messages this instance read from the store to fill a delivery gap.",
            registry=r,
        )
        self.broker_published = Counter("hubbub_broker_published", "Deliveries sent to other instances.", registry=r)
        self.broker_received = Counter(
            "hubbub_broker_received", "Deliveries received from other instances.", registry=r
        )
        self.broker_dropped = Counter(
            "hubbub_broker_dropped", "Deliveries not sent to other instances (broker down).", registry=r
        )
        self.broker_healthy = Gauge("hubbub_broker_healthy", "1 when routing between instances works.", registry=r)
        self.broker_topics = Gauge(
            "hubbub_broker_topics", "Topics this instance subscribes to, by kind.", ["kind"], registry=r
        )
        self.storage_errors = Counter(
            "hubbub_storage_errors", "Store calls that failed, by store.", ["store"], registry=r
        )
        self.replica_healthy_gauge = Gauge(
            "hubbub_replica_healthy",
            "1 while the read replica serves the lag-tolerant reads (always 1 without one), 0 while the primary does.",
            registry=r,
        )
        self.replica_healthy_gauge.set(1)
        self.replica_fallbacks = Counter(
            "hubbub_replica_fallbacks",
            "Lag-tolerant reads served by the primary because the read replica failed or rests after a failure.",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "hubbub_event_loop_lag_seconds",
            "How much later than asked a timer of the event loop fired (server/loop_lag.py).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )

        self.retention_purged = Counter(
            "hubbub_retention_purged_messages", "Messages removed by the retention purge.", registry=r
        )
        self.retention_purge_seconds = Histogram(
            "hubbub_retention_purge_seconds",
            "Duration of one retention purge pass over every conversation (this instance held the lock).",
            buckets=(0.01, 0.05, 0.25, 1, 5, 15, 60, 300),
            registry=r,
        )
        self.retention_backlog = Gauge(
            "hubbub_retention_backlog_conversations",
            "Conversations the current or last retention pass has still to purge (0 once a pass finished all).",
            registry=r,
        )

        self.task_failures = Counter(
            "hubbub_task_failures",
            "Iterations of a background task that failed with an unexpected error (logged as task_failed), by task.",
            ["task"],
            registry=r,
        )
        self.task_failures_by = ByLabel(self.task_failures)
        for task in BACKGROUND_TASKS:
            self.task_failures_by[task]  # created now: a series at 0, not absent
        self.pools = PoolCollector()
        """hubbub_pool_*: App.start adds each pool once its store is open."""
        r.register(self.pools)

    def task_failed(self, task: str) -> None:
        """The failure hook of storage/supervision.py."""
        self.task_failures_by[task].inc()

    def replica_healthy(self, healthy: bool) -> None:
        """The ReplicaReport hook of storage/replica.py: who serves the lag-tolerant reads."""
        self.replica_healthy_gauge.set(1 if healthy else 0)

    def replica_fallback(self) -> None:
        """The ReplicaReport hook of storage/replica.py: one read the replica should have served."""
        self.replica_fallbacks.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
