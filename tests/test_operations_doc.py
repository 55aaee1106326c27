"""docs/operations.md stays true to the metrics a running server registers.

The registry of a real, started server is iterated (not a list kept here),
so a metric or collector added anywhere, at construction or at start-up,
must get its row in the doc's metrics table.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from hubbub.server.metrics import BACKGROUND_TASKS
from tests.conftest import RunningServer, http_get

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
ROW = re.compile(
    r"^\| `(?P<name>[a-z_:][a-z0-9_:]*)` \| (?P<type>[a-z]+) \| (?P<labels>[^|]*) \| (?P<meaning>[^|]+) \|"
)


def exposed_name(family: Metric) -> str:
    """The name Prometheus sees: counters end in _total, info metrics in _info."""
    suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
    return family.name + suffix


def documented() -> dict[str, tuple[str, set[str], str]]:
    """Rows of the metrics table: name -> (type, label names, meaning)."""
    text = DOC.read_text()
    table = text.split("<!-- metrics:start -->", 1)[1].split("<!-- metrics:end -->", 1)[0]
    rows: dict[str, tuple[str, set[str], str]] = {}
    for line in table.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        name = match["name"]
        assert name not in rows, f"{name} has two rows"
        rows[name] = (match["type"], set(re.findall(r"`([a-z_]+)`", match["labels"])), match["meaning"].strip())
    return rows


async def test_every_registered_metric_is_documented(server: RunningServer) -> None:
    # Exercise the server a little, so labelled metrics show their label names.
    client = await server.user()
    await client.call("ping")
    status, _ = await asyncio.to_thread(http_get, f"{server.http_url}/metrics")
    assert status == 200

    rows = documented()
    assert rows, "no metrics table rows found between the metrics:start/end markers"
    registered: dict[str, Metric] = {exposed_name(f): f for f in server.app.metrics.registry.collect()}

    missing = sorted(registered.keys() - rows.keys())
    assert not missing, f"add a row for each to the metrics table in docs/operations.md: {missing}"
    stale = sorted(rows.keys() - registered.keys())
    assert not stale, f"docs/operations.md documents metrics that are not registered: {stale}"
    for name, family in registered.items():
        kind, labels, meaning = rows[name]
        assert kind == family.type, f"{name} is a {family.type}, the doc says {kind}"
        seen = {label for sample in family.samples for label in sample.labels if label not in ("le", "quantile")}
        assert seen <= labels, f"{name}: labels {sorted(seen - labels)} are not in its row"
        assert meaning and meaning != "—", f"{name} has no meaning"


def test_every_background_task_is_documented() -> None:
    text = DOC.read_text()
    for task in BACKGROUND_TASKS:
        assert f"| `{task}` |" in text, f"docs/operations.md: no row for task {task}"


def test_readme_links_the_operations_doc() -> None:
    docs_row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `docs/`"))
    assert "`operations.md`" in docs_row
