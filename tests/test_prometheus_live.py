"""A real Prometheus scraping two real Hubbub instances: every panel query of
deploy/grafana/ and every rule of deploy/prometheus/ parses and returns series.

Prometheus (Debian's `prometheus` binary, which .ci/run installs) runs as a
process of this test on a free loopback port, on deploy/prometheus/prometheus.yml
re-pointed at two `hubbub serve` processes (tests/cluster.py: PostgreSQL stores,
the machine's Redis), scraping and evaluating every second. A little traffic
makes the labelled series exist (requests of several ops, an error reply, a
refused handshake, messages across the instances); then every expression goes
through the HTTP API.

Alert expressions compare against a threshold, so on a healthy service they
are empty by design: for those, ``HEALTHY_EMPTY_ALERTS`` names the part of the
expression (the series it tests) that must return series, and the whole
expression must still evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub.protocol.client import ServerError
from tests.cluster import Cluster, create_channel
from tests.test_dashboards import DASHBOARDS, PROMETHEUS_CONFIG, load, queries
from tests.test_prometheus_rules import RULE_FILES

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)

GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$instance": ".*", "$job": "hubbub"}
"""What Grafana substitutes into the queries, as it would for "All" instances (1 s scrapes)."""
HEALTHY_EMPTY_ALERTS = {
    "HubbubInternalErrors": "hubbub:errors:rate5m",
    "HubbubHighErrorRate": "hubbub:errors:ratio_rate5m",
    "HubbubStoreUnavailable": "hubbub:errors:rate5m",
    "HubbubStoreErrors": "hubbub:storage_errors:rate5m",
    "HubbubStorageSlow": "hubbub:storage_seconds:p99_5m",
    "HubbubConnectionsLow": "hubbub:connections:sum",
    "HubbubSlowConsumers": "hubbub:slow_consumer_disconnects:rate5m",
    "HubbubBrokerDegraded": "hubbub_broker_healthy",
    "HubbubMetricsAbsent": "hubbub_broker_healthy",
    "HubbubGapFills": "instance:hubbub_gap_filled_messages:rate5m",
    "HubbubEventLoopLag": "instance:hubbub_event_loop_lag_seconds:p99_5m",
    "HubbubPoolExhausted": "min_over_time(hubbub_pool_waiting[5m])",
    "HubbubTaskFailures": "increase(hubbub_task_failures_total[10m])",
}
"""Alert -> the part of its expression that a healthy service must answer with series."""
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rules() -> list[dict[str, str]]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        """A GET of the HTTP API: its ``data``, or AssertionError with Prometheus's error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                status: int = response.status
                return status == 200
        except (urllib.error.URLError, ConnectionError):
            return False  # not listening yet, or still loading (503)

    def series(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}, not an instant vector"
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path is not None, "prometheus not found: apt-get install prometheus (.ci/run does)"
    return path


def start_prometheus(binary: str, tmp_path: Path, targets: list[str]) -> Prometheus:
    """deploy/prometheus/prometheus.yml, scraping ``targets`` every second, on a free port."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Prometheus(f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "prometheus"
    path.mkdir()
    yield path


def stop(prometheus: Prometheus) -> None:
    """By its PID: TERM, then KILL if it will not go."""
    if prometheus.proc.poll() is None:
        os.kill(prometheus.proc.pid, signal.SIGTERM)
        try:
            prometheus.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(prometheus.proc.pid, signal.SIGKILL)
            prometheus.proc.wait(10)


async def until(prometheus: Prometheus, what: str, check: Any) -> None:
    """Poll ``check()`` (run in a thread: it makes blocking HTTP calls) until it is true."""
    end = time.monotonic() + WAIT
    while not await asyncio.to_thread(check):
        assert prometheus.proc.poll() is None, f"prometheus exited: {prometheus.log.read_text()}"
        assert time.monotonic() < end, f"no {what} within {WAIT}s; log: {prometheus.log.read_text()[-2000:]}"
        await asyncio.sleep(0.25)


def substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


async def test_every_panel_query_and_rule_returns_series_from_a_real_prometheus(
    cluster: Cluster, prometheus_binary: str, prometheus_dir: Path
) -> None:
    started = time.monotonic()
    a, b = await cluster.start("a", "b")
    targets = [instance.http_url.removeprefix("http://") for instance in (a, b)]
    prometheus = start_prometheus(prometheus_binary, prometheus_dir, targets)
    try:
        await until(prometheus, "ready Prometheus", prometheus.ready)

        def scraped_both() -> bool:
            up = prometheus.series('up{job="hubbub"}')
            return len(up) == 2 and all(s["value"][1] == "1" for s in up)

        await until(prometheus, "scrape of both instances", scraped_both)
        # Then a little traffic on both instances, seen by Prometheus as increases:
        # messages both ways, an error reply (not_found), a refused handshake
        # (plain HTTP on the WebSocket path).
        alice = await cluster.connect(a, name="alice")
        bob = await cluster.connect(b, name="bob")
        channel = await create_channel(alice, [bob])
        for i in range(3):
            await alice.send(channel, f"a{i}")
            await bob.send(channel, f"b{i}")
        with pytest.raises(ServerError):
            await alice.call("message.history", conversation_id=987654321)
        for instance in (a, b):
            status, _ = await instance.get("/")
            assert status >= 400

        recorded = sorted({rule["record"] for rule in rules() if "record" in rule})
        await until(prometheus, "series of every recording rule", lambda: all(prometheus.series(r) for r in recorded))

        def sent_on_both() -> bool:
            rates = prometheus.series("instance:hubbub_messages_sent:rate1m > 0")
            return {s["metric"]["instance"] for s in rates} == set(targets)

        await until(prometheus, "messages sent per second on both instances", sent_on_both)

        # Grafana's panels, as Grafana would send them for "All" instances.
        empty: list[str] = []
        dashboard_queries = [query for path in DASHBOARDS for query in queries(load(path))]
        assert dashboard_queries
        for title, expr in dashboard_queries:
            if not await asyncio.to_thread(prometheus.series, substituted(expr)):
                empty.append(f"panel {title!r}: {expr}")

        # Every rule: recorded series exist; an alert's whole expression
        # evaluates, and the series it tests exist.
        alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
        assert set(HEALTHY_EMPTY_ALERTS) <= set(alerts), "HEALTHY_EMPTY_ALERTS names an alert that is gone"
        for rule in rules():
            expr = rule["expr"]
            result = await asyncio.to_thread(prometheus.series, expr)  # fails on any that does not parse
            name = rule.get("record") or rule["alert"]
            probe = HEALTHY_EMPTY_ALERTS.get(name)
            if probe is not None:
                assert probe in expr, f"{name}: {probe!r} is not part of its expression {expr!r}"
                result = await asyncio.to_thread(prometheus.series, probe)
            if not result:
                empty.append(f"rule {name}: {probe or expr}")
        assert not empty, "no series for:\n" + "\n".join(empty)

    finally:
        stop(prometheus)
    assert time.monotonic() - started < 60, "keep this test under a minute"
