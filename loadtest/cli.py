"""The ``hubbub-loadtest`` command."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import uvloop

from hubbub.loadtest import procstat
from hubbub.loadtest.changes import STORES, ChangesOptions, run_changes
from hubbub.loadtest.changes import commit as git_commit
from hubbub.loadtest.changes import table as changes_table
from hubbub.loadtest.report import Progress, table, write_json, write_plot
from hubbub.loadtest.runner import RunOptions, run_target
from hubbub.loadtest.safety import (
    DRAIN_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_DURATION_S,
    MAX_SOAK_DURATION_S,
    UnsafeTarget,
    check_loopback,
    raise_fd_limit,
)
from hubbub.loadtest.scenarios import BENCHMARK_TABLE, SCENARIOS, Scenario
from hubbub.loadtest.servers import ServerOptions, ServerUnavailable, kill_all_now
from hubbub.loadtest.storm import storm_ok, storm_table
from hubbub.loadtest.targets import TARGETS, SetupError

SCENARIO_FLAGS = (
    "subscribers",
    "rooms",
    "publishers",
    "rate",
    "inflight",
    "size",
    "duration",
    "connect_concurrency",
    "idle",
    "history_reads",
    "conns_per_user",
    "login",
    "instances",
    "rss_interval",
    "warmup",
    "gap_messages",
    "catch_up",
)


def build_parser() -> argparse.ArgumentParser:
    table_lines = "\n".join(f"  {name}: {s.description}" for name, s in SCENARIOS.items())
    parser = argparse.ArgumentParser(
        prog="hubbub-loadtest",
        description="Fan-out load test of Hubbub (and reference peers) on this machine's loopback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Named scenarios (flags given as well override their values):\n{table_lines}\n\n"
        f"Caps: at most {MAX_CONNECTIONS} connections and {MAX_DURATION_S:g} s per run "
        f"({MAX_SOAK_DURATION_S:g} s for a soak); loopback targets only.",
    )
    what = parser.add_argument_group("what to test")
    what.add_argument(
        "--scenario",
        choices=[*sorted(SCENARIOS), "all"],
        help="a named scenario; all: the rows of the benchmark table (a-d) one after another",
    )
    what.add_argument("--target", choices=TARGETS, default="hubbub", help="server to test (default hubbub)")
    what.add_argument("--compare", action="store_true", help="run against hubbub and every peer, one table")
    what.add_argument(
        "--url", action="append", default=[], help="a running server (repeatable: round-robin); loopback only"
    )
    what.add_argument(
        "--start-server", action="store_true", help="start the target's server(s) (the default without --url)"
    )
    what.add_argument(
        "--server-pid", type=int, action="append", default=[], help="a server PID to measure (repeatable)"
    )
    what.add_argument("--server-cpu", help="pin started servers with taskset -c CPUS (e.g. 0)")
    what.add_argument("--generator-cpu", help="pin this generator to CPUS (e.g. 1)")
    what.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="HUBBUB_NAME=VALUE",
        help="extra setting for a started Hubbub (repeatable)",
    )
    what.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379",
        help="Redis of --target socketio-redis and of several Hubbub instances (keys under a per-run prefix)",
    )
    what.add_argument(
        "--instances", type=int, help="Hubbub instances to start, sharing one store and Redis (default 1; soak 2)"
    )

    load = parser.add_argument_group("load")
    load.add_argument("--subscribers", type=int, help="subscriber connections (default 100)")
    load.add_argument("--rooms", type=int, help="rooms; subscriber j joins room j %% K (default 1)")
    load.add_argument("--publishers", type=int, help="publisher connections (default 1)")
    rate = load.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="open loop: messages/s over all publishers (default 10)")
    rate.add_argument("--max-rate", action="store_true", default=None, help="closed loop, as fast as possible")
    load.add_argument("--inflight", type=int, help="closed loop: messages in flight end to end (default 32)")
    load.add_argument("--size", type=int, help="message text bytes (default 100)")
    load.add_argument("--duration", type=float, help="seconds of sending (or of holding idle connections)")
    load.add_argument("--connect-storm", action="store_true", default=None, help="connect all N at once")
    load.add_argument("--connect-concurrency", type=int, help="connections opened at a time otherwise (64)")
    load.add_argument("--idle", type=int, help="idle authenticated connections (memory per connection)")
    load.add_argument("--history-reads", type=float, help="message.history requests/s during the run (Hubbub)")
    load.add_argument("--conns-per-user", type=int, help="Hubbub: connections per account (default 1)")
    load.add_argument(
        "--login",
        action="store_true",
        default=None,
        help="Hubbub: connect with login (password hashing) instead of auth with a token; "
        "a started server hashes cheaply",
    )
    soak = parser.add_argument_group("soak (memory over time)")
    soak.add_argument(
        "--rss-interval",
        type=float,
        help="seconds between RSS readings of each server during the run; > 0 makes it a soak (soak: 5)",
    )
    soak.add_argument("--warmup", type=float, help="seconds of the run left out of the RSS slope (soak: 60)")
    load.add_argument(
        "--gap-messages",
        type=int,
        help="storm: messages per room seen before the drop and sent while all are away (default 10)",
    )
    load.add_argument(
        "--no-catch-up",
        dest="catch_up",
        action="store_false",
        default=None,
        help="storm, Hubbub: reconnect and auth only, no PROTOCOL.md §9 catch-up (the connect cost alone)",
    )
    load.add_argument("--drain-timeout", type=float, default=10.0, help="wait for late acks/deliveries (s)")

    changes = parser.add_argument_group(
        "message changes (--changes: sends, edits, reactions, history pages, message.changes on one store)"
    )
    changes.add_argument(
        "--changes", action="store_true", help="measure message changes in one channel (loadtest/README.md)"
    )
    changes.add_argument("--store", choices=STORES, default="sqlite", help="message store of the started Hubbub")
    changes.add_argument(
        "--postgres-dsn",
        default="",
        help="PostgreSQL server (loopback; the run creates and drops a database of its own); "
        "holds the accounts too with --store mongo",
    )
    changes.add_argument("--mongo-url", default="", help="MongoDB server of --store mongo (loopback)")
    changes.add_argument("--members", type=int, default=50, help="members of the channel, one connection each")
    changes.add_argument("--seed-messages", type=int, default=1000, help="messages stored before measuring")
    changes.add_argument(
        "--per-conn-inflight", type=int, default=4, help="requests in flight per connection (send, edit, reaction)"
    )
    changes.add_argument("--page", type=int, default=100, help="messages per history page and thread replies")
    changes.add_argument(
        "--hot-messages", type=int, default=1, help="shared messages every member toggles reactions on"
    )

    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the JSON report here (and a PNG latency CDF next to it)")
    out.add_argument("--no-plot", action="store_true", help="no PNG, even with matplotlib installed")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    out.add_argument(
        "--parser-bench", action="store_true", help="measure the delivery parser's CPU per frame, then exit"
    )
    return parser


def scenario_from_args(args: argparse.Namespace, name: str | None = None) -> Scenario:
    """The scenario ``name`` (default: the one named by --scenario) with the flags given applied."""
    name = name if name is not None else args.scenario
    base = SCENARIOS[name] if name else Scenario()
    overrides: dict[str, Any] = {k: getattr(args, k) for k in SCENARIO_FLAGS if getattr(args, k) is not None}
    if args.rate is not None:
        overrides["max_rate"] = False
    if args.max_rate:
        overrides["max_rate"] = True
    if args.connect_storm:
        overrides["connect_storm"] = True
    if not name and args.idle and not {"subscribers", "publishers", "rooms"} & overrides.keys():
        overrides.update(subscribers=0, publishers=0, rooms=0)
    if overrides:
        base = replace(base, **overrides)
        if name:
            base = replace(base, name=f"{name} (modified)")
    return base.check()


def json_path(path: Path, scenario: str, several: bool) -> Path:
    """Where one scenario's report goes: ``path``, or ``path`` with ``-<scenario>`` when several run."""
    return path.with_name(f"{path.stem}-{scenario}{path.suffix}") if several else path


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.parser_bench:
        from hubbub.loadtest.parserbench import run_bench

        print(run_bench())
        return 0
    if args.changes:
        return _changes_main(args, argv, parser)
    names: list[str | None] = list(BENCHMARK_TABLE) if args.scenario == "all" else [args.scenario]
    try:
        scenarios = [scenario_from_args(args, name) for name in names]
        for url in args.url:
            check_loopback(url)
        check_loopback(args.redis_url)
    except (ValueError, UnsafeTarget) as exc:
        parser.error(str(exc))
    if args.url and (args.start_server or args.compare):
        parser.error("--url tests a running server: it does not go with --start-server or --compare")
    extra_env = _server_env(args, parser)
    if args.generator_cpu:
        os.sched_setaffinity(0, parse_cpus(args.generator_cpu))
    raise_fd_limit(max(s.connections for s in scenarios) + 4096)
    targets = list(TARGETS) if args.compare else [args.target]
    progress = Progress(enabled=not args.quiet)
    options = RunOptions(
        urls=list(args.url),
        server_pids=list(args.server_pid),
        server=ServerOptions(
            cpus=args.server_cpu,
            conns_per_user=max(s.conns_per_user for s in scenarios),
            extra_env=extra_env,
            redis_url=args.redis_url,
        ),
        drain_timeout=min(args.drain_timeout, DRAIN_TIMEOUT_S),
        progress=progress,
    )
    status = 0
    for scenario in scenarios:
        status = max(status, _run_scenario(scenario, targets, options, args, argv, several=len(scenarios) > 1))
        if status == 130:
            break
    return status


def _server_env(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    extra_env = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("HUBBUB_"):
            parser.error(f"--server-env takes HUBBUB_NAME=VALUE, not {item!r}")
        extra_env[name] = value
    return extra_env


def _changes_main(args: argparse.Namespace, argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """--changes: one run on one store, its table and JSON report; the exit status."""
    if args.url:
        parser.error("--changes starts its own server: it does not go with --url")
    try:
        options = ChangesOptions(
            store=args.store,
            postgres_dsn=args.postgres_dsn,
            mongo_url=args.mongo_url,
            members=args.members,
            seed_messages=args.seed_messages,
            window=args.per_conn_inflight,
            duration=args.duration if args.duration is not None else 10.0,
            size=args.size if args.size is not None else 100,
            page=args.page,
            hot_messages=args.hot_messages,
        ).check()
    except (ValueError, UnsafeTarget) as exc:
        parser.error(str(exc))
    if args.generator_cpu:
        os.sched_setaffinity(0, parse_cpus(args.generator_cpu))
    raise_fd_limit(options.members + 1024)
    server = ServerOptions(cpus=args.server_cpu, extra_env=_server_env(args, parser))
    progress = Progress(enabled=not args.quiet)
    document: dict[str, Any] = {
        "tool": "hubbub-loadtest",
        "format": 1,
        "mode": "changes",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["hubbub-loadtest", *(argv if argv is not None else sys.argv[1:])],
        "commit": git_commit(),
        "machine": procstat.machine(),
        "generator_cpus": sorted(os.sched_getaffinity(0)),
        "server_cpus": args.server_cpu,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "options": asdict(options),
        "results": [],
    }
    interrupted = False
    started = time.monotonic()
    try:
        result = uvloop.run(_cancellable(run_changes(options, server, progress)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        result = {"target": "hubbub", "store": options.store, "error": "interrupted", "warnings": []}
    except (ServerUnavailable, SetupError, OSError, TimeoutError, ValueError) as exc:
        result = {"target": "hubbub", "store": options.store, "error": str(exc) or type(exc).__name__, "warnings": []}
    finally:
        killed = kill_all_now()
        if killed:
            print(f"hubbub-loadtest: killed leftover server processes {killed}", file=sys.stderr)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    document["results"].append(result)
    print()
    print(
        f"changes on {options.store}: {options.members} members, {options.seed_messages} seeded, "
        f"{options.window} in flight per connection, {options.duration:g} s per phase"
    )
    print(changes_table(result))
    if args.json:
        write_json(args.json, document)
        print(f"JSON report written to {args.json}")
    if interrupted:
        return 130
    ok = result.get("error") is None and not result.get("errors") and result.get("correctness", {}).get("ok")
    return 0 if ok else 1


async def _cancellable(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """``work`` in a task that SIGINT and SIGTERM cancel (its finally blocks stop the servers)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run_scenario(
    scenario: Scenario,
    targets: list[str],
    options: RunOptions,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    several: bool,
) -> int:
    """Run one scenario against every target; print its table, write its JSON; the exit status."""
    document: dict[str, Any] = {
        "tool": "hubbub-loadtest",
        "format": 1,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["hubbub-loadtest", *(argv if argv is not None else sys.argv[1:])],
        "machine": procstat.machine(),
        "generator_cpus": sorted(os.sched_getaffinity(0)),
        "server_cpus": args.server_cpu,
        "scenario": asdict(scenario),
        "results": [],
    }
    interrupted = False
    try:
        uvloop.run(_run_all(scenario, targets, options, document["results"]))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        killed = kill_all_now()
        if killed:
            print(f"hubbub-loadtest: killed leftover server processes {killed}", file=sys.stderr)
    results: list[dict[str, Any]] = document["results"]
    if interrupted:
        print("hubbub-loadtest: interrupted", file=sys.stderr)
    if not results:
        return 130 if interrupted else 1
    print()
    print(f"scenario {scenario.name}: {_describe(scenario)}")
    print(storm_table(results) if scenario.storm else table(results))
    if args.json:
        path = json_path(args.json, scenario.name.split()[0], several)
        write_json(path, document)
        print(f"JSON report written to {path}")
        if not args.no_plot and not scenario.storm:
            print(write_plot(path.with_suffix(".png"), results, f"scenario {scenario.name}: {_describe(scenario)}"))
    if interrupted:
        return 130
    if scenario.storm:
        return 0 if all(storm_ok(r) for r in results) else 1
    return 0 if all(r.get("error") is None for r in results) else 1


def _describe(s: Scenario) -> str:
    if s.storm:
        return (
            f"{s.subscribers} clients in {s.rooms} rooms dropped at once and reconnecting at once, "
            + (f"{s.gap_messages} messages per room to catch up" if s.catch_up else "no catch-up")
            + f", {s.instances} instance(s)"
        )
    parts = []
    if s.subscribers:
        parts.append(f"{s.subscribers} subscribers in {s.rooms} room{'s' if s.rooms != 1 else ''}")
    if s.sends:
        parts.append(f"{s.publishers} publisher{'s' if s.publishers != 1 else ''}, {s.mode}, {s.size} B")
    if s.idle:
        parts.append(f"{s.idle} idle connections")
    parts.append(f"{s.duration:g} s")
    if s.connect_storm:
        parts.append("connect storm")
    return ", ".join(parts)


async def _run_all(scenario: Scenario, targets: list[str], options: RunOptions, results: list[dict[str, Any]]) -> None:
    main_task = asyncio.current_task()
    if main_task is None:
        raise RuntimeError("_run_all must run in a task: the signal handlers cancel it")
    loop = asyncio.get_running_loop()
    # Both signals cancel the run, whose finally blocks stop every server it started
    # (set explicitly: a background job may have inherited SIGINT ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        for name in targets:
            started = time.monotonic()
            try:
                result = await run_target(scenario, replace(options, target=name))
            except (ServerUnavailable, SetupError, OSError, TimeoutError, ValueError) as exc:
                options.progress.note(f"[{name}] failed: {exc}")
                result = {"target": name, "error": str(exc) or type(exc).__name__, "notes": [], "warnings": []}
            result["wall_seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
