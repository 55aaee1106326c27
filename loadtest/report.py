"""What a run prints and writes: a progress line, a table, a JSON file and a latency CDF plot.

JSON report (``--json PATH``), format 1:

* ``tool``, ``format``, ``started_at`` (ISO 8601, UTC), ``command`` (argv),
  ``machine`` (``nproc``, ``cpu_model``, ``kernel``, ``memory_mb``),
  ``scenario`` (every field of loadtest.scenarios.Scenario),
* ``results``: one object per target, with ``target``, ``urls``, ``server_pids``,
  ``started_servers``, ``notes``, ``warnings``, ``error`` (null or a message),
  ``setup``, ``connect``, ``run``, ``deliveries``, ``deliveries_per_s``,
  ``latency_ms`` / ``ack_latency_ms`` (``count``, ``mean``, ``p50``, ``p95``, ``p99``,
  ``max``), ``latency_cdf_ms`` ([fraction, ms] pairs), ``history_reads``,
  ``correctness`` (``ok``, ``deliveries``, ``expected_deliveries``, ``lost``,
  ``duplicated``, ``out_of_order``, ``unacked_deliveries``, ``per_conversation``),
  ``server`` (``pids``, ``cpu_cores``, ``rss_mb_*``, ``kb_per_connection``) and
  ``generator`` (``pid``, ``cpu_cores``, ``cpu_seconds``, ``us_per_delivery``,
  ``rss_mb``, ``kb_per_connection``, ``loop_lag_ms``, ``saturated``), and ``cpus``
  (per CPU of the machine over run + drain: ``busy``, ``softirq``, ``steal`` fractions)
  and ``other_cores`` (machine CPU used by neither the servers nor the generator),
  ``soak`` (null unless RSS was sampled through the run: ``interval_s``, ``warmup_s``,
  ``steady_seconds`` and ``instances``, one per server PID with ``pid``, ``url``,
  ``connections``, ``deliveries``, ``rss_mib_start`` / ``rss_mib_end`` (the steady part,
  after the warm-up), ``rss_slope_mib_per_min`` (least squares over the steady part),
  the same for ``anon`` (RssAnon) and ``file`` (RssFile), ``rss_mib_run_start``,
  ``rss_mib_max`` and the ``readings`` as [seconds, VmRSS MiB, RssAnon MiB]).

See loadtest/README.md for what each figure means.
"""

from __future__ import annotations

import json
import math
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

REPORT_KEYS = (
    "target",
    "urls",
    "server_pids",
    "started_servers",
    "notes",
    "warnings",
    "error",
    "setup",
    "connect",
    "run",
    "deliveries",
    "deliveries_per_s",
    "latency_ms",
    "latency_cdf_ms",
    "ack_latency_ms",
    "history_reads",
    "correctness",
    "server",
    "generator",
    "cpus",
    "other_cores",
    "soak",
)
"""The keys of every entry of ``results`` in the JSON report (entries of a failed target
have ``target``, ``error``, ``notes`` and ``warnings`` at least)."""


class Progress:
    """One self-overwriting stderr line on a terminal; a line every few seconds otherwise."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval_s: float = 5.0) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self._active = False
        self._last_print = 0.0

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        self.done()
        print(message, file=self.stream, flush=True)

    def update(self, line: str, bar: float | None = None) -> None:
        if not self.enabled:
            return
        if bar is not None:
            filled = round(bar * 20)
            line = f"[{'#' * filled}{'.' * (20 - filled)}] {line}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._active = True
        elif time.monotonic() - self._last_print >= self.interval_s:
            self._last_print = time.monotonic()
            print(line, file=self.stream, flush=True)

    def done(self) -> None:
        if self._active:
            self.stream.write("\n")
            self.stream.flush()
            self._active = False


def summarize_ns(values: array[int]) -> dict[str, float | int | None]:
    """count, mean and percentiles (nearest rank) of nanosecond values, in milliseconds."""
    n = len(values)
    if n == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * n) - 1)] / 1e6, 3)

    return {
        "count": n,
        "mean": round(sum(ordered) / n / 1e6, 3),
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": round(ordered[-1] / 1e6, 3),
    }


def _get(result: dict[str, Any], *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pair(result: dict[str, Any], section: str, a: str, b: str, digits: int = 1) -> str:
    return f"{_num(_get(result, section, a), digits)} / {_num(_get(result, section, b), digits)}"


Row = tuple[str, Callable[[dict[str, Any]], str]]

ROWS: list[Row] = [
    ("mode", lambda r: str(_get(r, "run", "mode") or "-")),
    ("connections ready / failed", lambda r: _pair(r, "connect", "ready", "failures")),
    ("connect all N (s)", lambda r: _num(_get(r, "connect", "seconds"), 2)),
    ("connect per conn p50 / p99 (ms)", lambda r: f"{_pair(r['connect'], 'per_connection_ms', 'p50', 'p99')}"),
    ("sent / acked", lambda r: _pair(r, "run", "sent", "acked")),
    ("send errors", lambda r: _num(_get(r, "run", "send_errors") or "-")),
    ("deliveries", lambda r: _num(r.get("deliveries"))),
    ("deliveries/s", lambda r: _num(r.get("deliveries_per_s"), 0)),
    ("latency p50 (ms)", lambda r: _num(_get(r, "latency_ms", "p50"), 2)),
    ("latency p95 (ms)", lambda r: _num(_get(r, "latency_ms", "p95"), 2)),
    ("latency p99 (ms)", lambda r: _num(_get(r, "latency_ms", "p99"), 2)),
    ("latency max (ms)", lambda r: _num(_get(r, "latency_ms", "max"), 2)),
    ("ack latency p50 / p99 (ms)", lambda r: _pair(r, "ack_latency_ms", "p50", "p99", 2)),
    (
        "lost / dup / out-of-order",
        lambda r: " / ".join(_num(_get(r, "correctness", k)) for k in ("lost", "duplicated", "out_of_order")),
    ),
    ("server CPU (cores)", lambda r: _num(_get(r, "server", "cpu_cores"), 2)),
    ("server RSS end (MB)", lambda r: _num(_get(r, "server", "rss_mb_end"))),
    ("server KB / connection", lambda r: _num(_get(r, "server", "kb_per_connection"))),
    ("generator CPU (cores)", lambda r: _num(_get(r, "generator", "cpu_cores"), 2)),
    ("generator us CPU / delivery", lambda r: _num(_get(r, "generator", "us_per_delivery"), 2)),
    ("generator loop lag p99 (ms)", lambda r: _num(_get(r, "generator", "loop_lag_ms", "p99"), 2)),
    ("other processes (cores)", lambda r: _num(r.get("other_cores"), 2)),
    (
        "CPUs busy (softirq, steal) %",
        lambda r: (
            " ".join(
                f"{cpu}:{v['busy'] * 100:.0f}({v['softirq'] * 100:.0f},{v['steal'] * 100:.0f})"
                for cpu, v in sorted((r.get("cpus") or {}).items())
            )
            or "-"
        ),
    ),
]

HISTORY_ROW: Row = (
    "history reads n, p50 / p99 (ms)",
    lambda r: (
        "-"
        if not r.get("history_reads")
        else f"{r['history_reads']['count']}, {_pair(r['history_reads'], 'latency_ms', 'p50', 'p99', 2)}"
    ),
)


def _per_instance(result: dict[str, Any], fmt: Callable[[dict[str, Any]], str]) -> str:
    return " | ".join(fmt(one) for one in (_get(result, "soak", "instances") or [])) or "-"


SOAK_ROWS: list[Row] = [
    ("soak steady part (s)", lambda r: _num(_get(r, "soak", "steady_seconds"))),
    (
        "RSS start -> end, each server (MiB)",
        lambda r: _per_instance(r, lambda o: f"{_num(o['rss_mib_start'])} -> {_num(o['rss_mib_end'])}"),
    ),
    (
        "RSS slope, each server (MiB/min)",
        lambda r: _per_instance(r, lambda o: _num(o["rss_slope_mib_per_min"], 3)),
    ),
    (
        "RssAnon slope, each server (MiB/min)",
        lambda r: _per_instance(r, lambda o: _num(o["anon_slope_mib_per_min"], 3)),
    ),
    ("deliveries, each server", lambda r: _per_instance(r, lambda o: _num(o["deliveries"]))),
    ("connection closes during run", lambda r: _num(sum((_get(r, "run", "closes") or {}).values()))),
]


def table(results: list[dict[str, Any]]) -> str:
    """Metrics as rows, one column per target."""
    rows = list(ROWS)
    if any(r.get("history_reads") for r in results):
        rows.append(HISTORY_ROW)
    if any(r.get("soak") for r in results):
        rows.extend(SOAK_ROWS)
    header = ["", *(r["target"] for r in results)]
    body: list[list[str]] = []
    for label, cell in rows:
        line = [label]
        for r in results:
            if r.get("error"):
                line.append("error" if label == "mode" else "")
                continue
            try:
                line.append(cell(r))
            except (KeyError, TypeError):
                line.append("-")
        body.append(line)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines.extend(fmt(row) for row in body)
    for r in results:
        for message in [*(r.get("warnings") or []), *([f"ERROR: {r['error']}"] if r.get("error") else [])]:
            lines.append(f"[{r['target']}] {message}")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_plot(path: Path, results: list[dict[str, Any]], title: str) -> str:
    """A PNG of the latency CDF of every target; a one-line message saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e './loadtest[plot]'): no latency plot"
    curves = [(r["target"], r.get("latency_cdf_ms") or []) for r in results if not r.get("error")]
    curves = [(name, cdf) for name, cdf in curves if cdf]
    if not curves:
        return "no latency samples: no plot"
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, cdf in curves:
        ax.plot([max(ms, 1e-3) for _, ms in cdf], [f for f, _ in cdf], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"latency CDF written to {path}"
