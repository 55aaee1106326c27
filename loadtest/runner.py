"""One run of one scenario against one target: set up, connect, send, drain, measure.

Phases: set-up (rooms, accounts; not measured beyond its duration), connect
(every subscriber and idle connection, then the publishers: TCP, WebSocket
handshake, authentication or join; timed), run (open or closed loop for
``duration``), drain (until every ack and every expected delivery is in, or
the drain timeout), then the report. Server and generator CPU are read from
/proc at the start and end of run + drain; server RSS before and after
connecting.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import secrets
import time
from array import array
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from time import monotonic_ns
from typing import Any

from hubbub.loadtest import procstat
from hubbub.loadtest.conn import Conn
from hubbub.loadtest.correctness import Correctness, check
from hubbub.loadtest.load import STALL_TIMEOUT_S, Load
from hubbub.loadtest.report import Progress, summarize_ns
from hubbub.loadtest.safety import SETUP_TIMEOUT_S
from hubbub.loadtest.scenarios import ConnSpec, Plan, Scenario, build_plan
from hubbub.loadtest.servers import ServerOptions, Servers, started_servers
from hubbub.loadtest.storm import Storm
from hubbub.loadtest.targets import CALL_TIMEOUT_S, SetupInfo, Target, make_target

LAG_PROBE_S = 0.005
SETTLE_TIMEOUT_S = 60.0
SETTLED_CPU = 0.1
"""After connecting, the run starts once the servers use less than this (cores) or after SETTLE_TIMEOUT_S."""
OTHER_LOAD = 0.25
"""Machine CPU (in cores) used by neither server nor generator above which a run is flagged."""
GENERATOR_SATURATED = 0.85
"""Generator CPU (in cores) above which the figures are the generator's limit."""


@dataclass
class RunOptions:
    target: str = "hubbub"
    urls: list[str] = field(default_factory=list)
    """Servers to test; empty: start them (see servers.py)."""
    server_pids: list[int] = field(default_factory=list)
    server: ServerOptions = field(default_factory=ServerOptions)
    drain_timeout: float = 10.0
    progress: Progress = field(default_factory=Progress)


class Run:
    def __init__(self, scenario: Scenario, target: Target, plan: Plan, options: RunOptions) -> None:
        self.s = scenario
        self.target = target
        self.plan = plan
        self.options = options
        self.progress = options.progress
        self.latencies: array[int] = array("q")
        self.loop_lag: array[int] = array("q")
        self.subscribers: list[tuple[Conn, ConnSpec]] = []
        self.publishers: list[tuple[Conn, ConnSpec]] = []
        self.idle: list[Conn] = []
        self.connect_ms: list[float] = []
        self.connect_errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.load: Load | None = None
        self.measuring = False
        self.memory: dict[int, list[tuple[float, dict[str, int]]]] = {}
        """Soak: per server PID, (seconds since the run started, /proc/PID/status memory) readings."""

    # -- connections ---------------------------------------------------------

    def all_conns(self) -> list[Conn]:
        return [c for c, _ in self.subscribers] + [c for c, _ in self.publishers] + self.idle

    def close_all(self) -> None:
        self.measuring = False
        for conn in self.all_conns():
            conn.on_lost = None
            conn.abort()

    def _on_lost(self, conn: Conn) -> None:
        if self.measuring:
            self.closes[str(conn.close_code)] += 1

    async def _open(self, spec: ConnSpec) -> Conn | None:
        started = time.monotonic()
        conn: Conn | None = None
        try:
            conn = await self.target.open(
                spec.url, self.latencies if spec.role == "sub" else None, spec.role == "sub", CALL_TIMEOUT_S
            )
            await self.target.ready(conn, spec, self.plan)
        except Exception as exc:
            if conn is not None:
                conn.abort()
            detail = str(exc) or ("no answer within the timeout" if isinstance(exc, TimeoutError) else "")
            self.connect_errors[f"{type(exc).__name__}: {detail}"[:160]] += 1
            return None
        self.connect_ms.append((time.monotonic() - started) * 1000)
        conn.on_lost = self._on_lost
        return conn

    async def _open_many(self, specs: list[ConnSpec], storm: bool) -> list[tuple[Conn, ConnSpec]]:
        opened: list[tuple[Conn, ConnSpec]] = []
        semaphore = asyncio.Semaphore(len(specs) if storm else self.s.connect_concurrency)

        async def one(spec: ConnSpec) -> None:
            async with semaphore:
                conn = await self._open(spec)
            if conn is not None:
                opened.append((conn, spec))

        tasks = [asyncio.ensure_future(one(spec)) for spec in specs]
        while tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            tasks = list(pending)
            self.progress.update(
                f"connecting: {len(opened)}/{len(specs)} ready, {sum(self.connect_errors.values())} failed"
            )
        self.progress.done()
        return opened

    async def _watch_loop_lag(self) -> None:
        """How late the generator's event loop wakes up: its own queueing, part of every latency."""
        while True:
            started = monotonic_ns()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag.append(max(0, monotonic_ns() - started - int(LAG_PROBE_S * 1e9)))

    async def _settle(self, pids: list[int]) -> float:
        """Wait until the servers are quiet again after the connect phase (its presence
        fan-out can keep them busy for seconds); the seconds waited."""
        started = time.monotonic()
        if not pids:
            await asyncio.sleep(1.0)
            return round(time.monotonic() - started, 2)
        self.progress.note(f"[{self.target.name}] waiting for the server to settle")
        while time.monotonic() - started < SETTLE_TIMEOUT_S:
            before = procstat.sample_all(pids)
            await asyncio.sleep(0.25)
            share = procstat.cpu_share(before, procstat.sample_all(pids))
            if share is None or share < SETTLED_CPU:
                break
        return round(time.monotonic() - started, 2)

    def deliveries(self) -> int:
        return sum(conn.deliveries for conn, _ in self.subscribers)

    async def _report_progress(self, t0: int, duration_s: float, label: str) -> None:
        last_deliveries, last_t = 0, t0
        while True:
            await asyncio.sleep(1.0)
            now = monotonic_ns()
            deliveries = self.deliveries()
            rate = (deliveries - last_deliveries) / max(1e-9, (now - last_t) / 1e9)
            last_deliveries, last_t = deliveries, now
            elapsed = (now - t0) / 1e9
            phase = "drain" if elapsed > duration_s else "run"
            if self.load is not None:
                load = self.load
                line = f"sent {load.sent}  acked {load.acked_count}  deliveries {deliveries} ({rate:,.0f}/s)"
            else:
                line = f"holding {len(self.all_conns())} connections"
            line += self._memory_line()
            self.progress.update(
                f"{label} {phase} {min(elapsed, duration_s):5.1f}/{duration_s:g}s  {line}",
                bar=min(1.0, elapsed / duration_s),
            )

    def _read_memory(self, t0: int) -> None:
        t = (monotonic_ns() - t0) / 1e9
        for pid, readings in self.memory.items():
            reading = procstat.memory_kb(pid)
            if reading is not None:
                readings.append((round(t, 3), reading))

    async def _sample_memory(self, t0: int) -> None:
        """Soak: every ``rss_interval`` seconds from the run's start, each server's memory."""
        interval_ns = int(self.s.rss_interval * 1e9)
        k = 0
        while True:
            due = t0 + k * interval_ns
            now = monotonic_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            self._read_memory(t0)
            k = (monotonic_ns() - t0) // interval_ns + 1

    def _memory_line(self) -> str:
        rss = [readings[-1][1].get("VmRSS", 0) / 1024 for readings in self.memory.values() if readings]
        return "  RSS " + " / ".join(f"{mib:.1f}" for mib in rss) + " MiB" if rss else ""

    # -- the run -------------------------------------------------------------

    async def execute(self, servers: Servers) -> dict[str, Any]:
        s = self.s
        pids = servers.pids
        me = os.getpid()
        result: dict[str, Any] = {
            "target": self.target.name,
            "urls": servers.urls,
            "server_pids": pids,
            "started_servers": bool(servers.processes),
            "notes": list(servers.notes),
            "warnings": [],
            "error": None,
        }
        accounts = f", {len(self.plan.users)} users" if self.target.name == "hubbub" else ""
        self.progress.note(f"[{self.target.name}] set-up: {len(self.plan.rooms)} rooms{accounts}")
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            info: SetupInfo = await self.target.setup(self.plan, s)
        result["notes"].extend(n for n in info.notes if not n.startswith("WARNING"))
        result["warnings"].extend(n for n in info.notes if n.startswith("WARNING"))
        result["setup"] = {
            "seconds": round(info.seconds, 3),
            "users_registered": info.users_registered,
            "accounts": self._accounts_note(),
        }

        before_connect = procstat.sample_all(pids)
        generator_before_connect = procstat.sample(me)
        conn_specs = self.plan.subscribers + self.plan.idle
        self.progress.note(
            f"[{self.target.name}] connecting {len(conn_specs)} connections"
            + (" all at once (storm)" if s.connect_storm else f", {s.connect_concurrency} at a time")
        )
        overflows_before = procstat.listen_overflows()
        started = time.monotonic()
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            opened = await self._open_many(conn_specs, s.connect_storm)
        connect_seconds = time.monotonic() - started
        subscriber_ms = list(self.connect_ms)
        self.subscribers = [(c, spec) for c, spec in opened if spec.role == "sub"]
        self.idle = [c for c, spec in opened if spec.role == "idle"]
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            self.publishers = await self._open_many(self.plan.publishers, False)
        self.publishers.sort(key=lambda pair: pair[1].index)
        result["connect"] = {
            "connections": len(conn_specs),
            "ready": len(opened),
            "failures": sum(self.connect_errors.values()),
            "errors": dict(self.connect_errors.most_common(5)),
            "storm": s.connect_storm,
            "concurrency": None if s.connect_storm else s.connect_concurrency,
            "seconds": round(connect_seconds, 3),
            "per_connection_ms": _summary_ms(subscriber_ms),
            "listen_overflows": _delta(overflows_before, procstat.listen_overflows()),
            "publishers_ready": len(self.publishers),
            "what": self._connect_note(),
        }
        # Everything allocated so far lives until the end: keep the cyclic GC from walking
        # thousands of connections during the run.
        gc.collect()
        gc.freeze()
        result["connect"]["settle_seconds"] = await self._settle(pids)
        after_connect = procstat.sample_all(pids)
        generator_after_connect = procstat.sample(me)
        connections = len(opened) + len(self.publishers)

        room_size = dict.fromkeys(self.plan.stream_ids(), 0)
        for _conn, spec in self.subscribers:
            for conversation in set(self.plan.rooms[spec.rooms[0]].streams.values()):
                room_size[conversation] += 1
        load: Load | None = None
        if s.sends and self.publishers:
            self.load = load = Load(s, self.target, self.plan, self.publishers, room_size)
            for conn, _ in self.subscribers:
                conn.window = load.window

        cpu_start = procstat.sample_all(pids)
        generator_start = procstat.sample(me)
        machine_start = procstat.cpu_times()
        self.measuring = True
        t0 = monotonic_ns() + 50_000_000
        end = t0 + int(s.duration * 1e9)
        lag_task = asyncio.ensure_future(self._watch_loop_lag())
        memory_task = None
        if s.soak:
            self.memory = {pid: [] for pid in pids}
            memory_task = asyncio.ensure_future(self._sample_memory(t0))
        progress_task = None
        if s.duration > 3:
            progress_task = asyncio.ensure_future(self._report_progress(t0, s.duration, f"[{self.target.name}]"))
        drain_s = 0.0
        try:
            if load is not None:
                if s.history_reads > 0 and not self.target.history:
                    result["notes"].append(f"--history-reads ignored: {self.target.name} has no history")
                await asyncio.sleep((t0 - monotonic_ns()) / 1e9)
                await load.run(t0, end)
                send_end = monotonic_ns()
                if memory_task is not None:  # the steady part ends with the sending
                    memory_task.cancel()
                    self._read_memory(t0)
                drain_deadline = send_end + int(self.options.drain_timeout * 1e9)
                while monotonic_ns() < drain_deadline:
                    if not load.outstanding and self.deliveries() >= load.expected_deliveries():
                        break
                    await asyncio.sleep(0.01)
                finished = monotonic_ns()
                drain_s = (finished - send_end) / 1e9
            else:
                await asyncio.sleep(max(0.0, (end - monotonic_ns()) / 1e9))
                finished = monotonic_ns()
                if memory_task is not None:
                    memory_task.cancel()
                    self._read_memory(t0)
        finally:
            self.measuring = False
            lag_task.cancel()
            if memory_task is not None:
                memory_task.cancel()
            if progress_task is not None:
                progress_task.cancel()
                self.progress.done()
        cpu_end = procstat.sample_all(pids)
        generator_end = procstat.sample(me)
        result["cpus"] = procstat.cpu_busy(machine_start, procstat.cpu_times())
        gc.unfreeze()
        result["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        elapsed_s = (finished - t0) / 1e9

        deliveries = self.deliveries()
        if load is None:  # nothing sent: an empty Load reports zeros
            load = Load(s, self.target, self.plan, [], {})
        result["run"] = {
            "mode": s.mode,
            "seconds": round(elapsed_s, 3),
            "drain_seconds": round(drain_s, 3),
            "sent": load.sent,
            "acked": load.acked_count,
            "unacked_sends": len(load.pending_sends),
            "send_errors": dict(load.send_errors),
            "sent_per_s": round(load.sent / elapsed_s, 1) if load.sent else 0.0,
            "stalled": load.stalled,
            "closes": dict(self.closes),
        }
        result["deliveries"] = deliveries
        result["deliveries_per_s"] = round(deliveries / elapsed_s, 1) if deliveries else 0.0
        result["latency_ms"] = summarize_ns(self.latencies)
        result["latency_cdf_ms"] = _cdf_ms(self.latencies)
        result["ack_latency_ms"] = summarize_ns(load.ack_latencies)
        result["history_reads"] = (
            {"count": len(load.history_latencies), "errors": dict(load.history_errors)}
            | {"latency_ms": summarize_ns(load.history_latencies)}
            if s.history_reads > 0 and self.target.history
            else None
        )
        correctness: Correctness = check(
            [(conn, sorted(set(self.plan.rooms[spec.rooms[0]].streams.values()))) for conn, spec in self.subscribers],
            load.acked,
        )
        result["correctness"] = correctness.as_dict()

        server_cores = procstat.cpu_share(cpu_start, cpu_end)
        generator_cores = procstat.cpu_share(generator_start, generator_end)
        result["server"] = {
            "pids": pids,
            "cpu_cores": _round(server_cores),
            "rss_mb_before_connect": _mb(before_connect),
            "rss_mb_after_connect": _mb(after_connect),
            "rss_mb_end": _mb(cpu_end),
            "kb_per_connection": _per_conn_kb(before_connect, after_connect, connections),
            "connect_cpu_seconds": _cpu_delta(before_connect, after_connect),
        }
        result["soak"] = self._soak_report(servers) if s.soak else None
        generator_cpu_s = _cpu_delta(generator_start, generator_end)
        result["generator"] = {
            "pid": me,
            "cpu_cores": _round(generator_cores),
            "cpu_seconds": generator_cpu_s,
            "us_per_delivery": round(generator_cpu_s * 1e6 / deliveries, 2)
            if deliveries and generator_cpu_s is not None
            else None,
            "rss_mb": _mb(generator_end),
            "kb_per_connection": _per_conn_kb(generator_before_connect, generator_after_connect, connections),
            "loop_lag_ms": summarize_ns(self.loop_lag),
            "saturated": generator_cores is not None and generator_cores >= GENERATOR_SATURATED,
        }
        busy = sum(v["busy"] for v in result["cpus"].values())
        other = None if server_cores is None or generator_cores is None else busy - server_cores - generator_cores
        result["other_cores"] = _round(other, 2)
        if other is not None and other > OTHER_LOAD:
            result["warnings"].append(
                f"WARNING: other processes used about {other:.2f} cores during the run "
                "(another program, or a store or Redis not given with --server-pid): figures are skewed"
            )
        if result["generator"]["saturated"]:
            result["warnings"].append(
                f"WARNING: the generator used {generator_cores:.2f} cores: these figures are the "
                "generator's limit, not the server's"
            )
        if not pids:
            result["warnings"].append("no server PID given (--server-pid): server CPU and memory not measured")
        if load.stalled:
            result["warnings"].append(f"WARNING: closed loop stalled: no message completed for {STALL_TIMEOUT_S:g} s")
        if self.connect_errors:
            result["warnings"].append(f"WARNING: {sum(self.connect_errors.values())} connections failed")
        if not correctness.ok:
            result["warnings"].append(
                f"WARNING: deliveries not correct: {correctness.lost} lost, {correctness.duplicated} duplicated, "
                f"{correctness.out_of_order} out of order"
            )
        return result

    def _soak_report(self, servers: Servers) -> dict[str, Any]:
        """Per server process: RSS at the start and end of the steady part (after the warm-up)
        and its least-squares slope, with the readings; connections and deliveries per URL."""
        s = self.s
        url_of = dict(zip(servers.pids, servers.urls, strict=False)) if len(servers.pids) == len(servers.urls) else {}
        instances = []
        for pid, readings in self.memory.items():
            url = url_of.get(pid)
            steady = [(t, m) for t, m in readings if t >= s.warmup] or readings[-1:]
            one: dict[str, Any] = {
                "pid": pid,
                "url": url,
                "connections": sum(1 for _, spec in self.subscribers + self.publishers if spec.url == url),
                "deliveries": sum(c.deliveries for c, spec in self.subscribers if spec.url == url),
                "samples": len(readings),
                "steady_samples": len(steady),
            }
            for key, name in (("VmRSS", "rss"), ("RssAnon", "anon"), ("RssFile", "file")):
                points = [(t, m[key] / 1024) for t, m in steady if key in m]
                slope = procstat.slope_per_minute(points)
                one[f"{name}_mib_start"] = round(points[0][1], 2) if points else None
                one[f"{name}_mib_end"] = round(points[-1][1], 2) if points else None
                one[f"{name}_slope_mib_per_min"] = None if slope is None else round(slope, 3)
            one["rss_mib_run_start"] = round(readings[0][1]["VmRSS"] / 1024, 2) if readings else None
            one["rss_mib_max"] = round(max(m["VmRSS"] for _, m in readings) / 1024, 2) if readings else None
            one["readings"] = [
                [t, round(m.get("VmRSS", 0) / 1024, 2), round(m.get("RssAnon", 0) / 1024, 2)] for t, m in readings
            ]
            instances.append(one)
        steady_s = 0.0
        if self.memory and any(self.memory.values()):
            last = max(readings[-1][0] for readings in self.memory.values() if readings)
            steady_s = max(0.0, last - s.warmup)
        return {
            "interval_s": s.rss_interval,
            "warmup_s": s.warmup,
            "steady_seconds": round(steady_s, 1),
            "readings_format": ["seconds since run start", "VmRSS MiB", "RssAnon MiB"],
            "instances": instances,
        }

    def _accounts_note(self) -> str:
        if self.target.name != "hubbub":
            return "no accounts (the peer has no authentication)"
        if self.s.conns_per_user == 1:
            return "one user per connection, registered during set-up"
        return f"{self.s.conns_per_user} connections per user, users registered during set-up"

    def _connect_note(self) -> str:
        if self.target.name == "hubbub":
            how = "login with the password" if self.s.login else "auth with a token (the reconnect path)"
            return f"TCP + WebSocket handshake + {how}; rooms joined at set-up"
        if self.target.name.startswith("socketio"):
            return "TCP + WebSocket handshake + Engine.IO open + Socket.IO connect + join"
        return "TCP + WebSocket handshake + join"


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _mb(one: procstat.Sample | None) -> float | None:
    return None if one is None else round(one.rss_kb / 1024, 1)


def _cpu_delta(before: procstat.Sample | None, after: procstat.Sample | None) -> float | None:
    return None if before is None or after is None else round(after.cpu_s - before.cpu_s, 3)


def _per_conn_kb(before: procstat.Sample | None, after: procstat.Sample | None, connections: int) -> float | None:
    if before is None or after is None or connections == 0:
        return None
    return round((after.rss_kb - before.rss_kb) / connections, 2)


def _summary_ms(values_ms: list[float]) -> dict[str, float | int | None]:
    return summarize_ns(array("q", (int(v * 1e6) for v in values_ms)))


def _cdf_ms(latencies: array[int], points: int = 200) -> list[list[float]]:
    """(fraction, latency ms) pairs, enough to draw the CDF."""
    n = len(latencies)
    if n == 0:
        return []
    ordered = sorted(latencies)
    out = []
    for k in range(points + 1):
        fraction = k / points
        index = min(n - 1, int(fraction * (n - 1)))
        out.append([round(fraction, 4), round(ordered[index] / 1e6, 3)])
    return out


async def run_target(scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """Run ``scenario`` against ``options.target``; servers started here are always stopped."""
    run_id = secrets.token_hex(3)
    run: Run | None = None
    async with AsyncExitStack() as stack:
        # Exit order (LIFO): servers stop first, then our connections are dropped.
        stack.callback(lambda: run.close_all() if run is not None else None)
        if options.urls:
            servers = Servers(urls=list(options.urls), pids=list(options.server_pids), processes=[])
        else:
            server_options = replace(options.server, instances=scenario.instances)
            servers = await stack.enter_async_context(started_servers(options.target, server_options, run_id))
            servers.pids.extend(p for p in options.server_pids if p not in servers.pids)
        target = make_target(options.target, servers.urls)
        plan = build_plan(scenario, servers.urls, run_id)
        if scenario.storm:
            storm = Storm(scenario, target, plan, options.progress)
            stack.callback(storm.close_all)
            return await storm.execute(servers)
        run = Run(scenario, target, plan, options)
        return await run.execute(servers)
    raise AssertionError("unreachable")
