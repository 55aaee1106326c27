"""The event loop's lock-free counters and histograms (server/metrics.py's
LoopCollector) expose exactly what prometheus_client's own Counter and
Histogram expose for the same observations: names, labels, buckets, sums."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from hubbub.server.metrics import LATENCY_BUCKETS, LoopCollector, Metrics

# On a bound, between bounds, below the first, above the last (+Inf only), and zero.
OBSERVATIONS = (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.0999, 0.1, 4.9, 5.0, 5.01, 120.0)


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for metric in registry.collect() for s in metric.samples}


def test_a_loop_histogram_exposes_what_a_prometheus_histogram_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "Doc.", ["op", "store"], buckets=LATENCY_BUCKETS, registry=theirs)
    loop = LoopCollector()
    ours.register(loop)
    family = loop.histogram("h_seconds", "Doc.", ("op", "store"), LATENCY_BUCKETS)
    for i, amount in enumerate(OBSERVATIONS):
        labels = ("append", "sqlite") if i % 3 else ("history", "postgres")
        reference.labels(*labels).observe(amount)
        family.labels(*labels).observe(amount)
    assert _samples(ours) == _samples(theirs)


def test_a_loop_counter_exposes_what_a_prometheus_counter_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    labelled = Counter("frames", "Doc.", ["type"], registry=theirs)
    plain = Counter("messages", "Doc.", registry=theirs)
    loop = LoopCollector()
    ours.register(loop)
    loop_labelled = loop.counter("frames", "Doc.", ("type",))
    loop_plain = loop.counter("messages", "Doc.").labels()
    for kind, count in (("message.send", 3), ("result", 1), ("message.send", 2)):
        labelled.labels(kind).inc(count)
        loop_labelled[kind].inc(count)
    plain.inc()
    loop_plain.inc()
    assert _samples(ours) == _samples(theirs)


def test_an_unlabelled_loop_counter_is_exposed_at_zero_from_the_start() -> None:
    metrics = Metrics()
    assert metrics.registry.get_sample_value("hubbub_messages_stored_total") == 0
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 0


def test_label_values_must_match_the_label_names() -> None:
    family = LoopCollector().counter("frames", "Doc.", ("type",))
    with pytest.raises(ValueError):
        family.labels("a", "b")
