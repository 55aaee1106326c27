"""The ``storm`` scenario: every client dropped at once, every client back at once.

What a deploy or a network blip does to a chat server. Phases, per target:

1. set-up (rooms, accounts: as every scenario), then every subscriber and
   publisher connects ``connect_concurrency`` at a time (not measured);
2. Hubbub only: ``gap_messages`` messages into every room, acked, and seen
   live by every subscriber (its ``last`` per conversation, PROTOCOL.md §9);
3. every subscriber connection is aborted at once; the tool waits for the
   servers to go quiet (they announce N users offline);
4. Hubbub only: ``gap_messages`` more messages into every room, acked,
   while nobody listens: what the reconnecting clients have to catch up;
5. **the storm**: every subscriber reconnects at the same instant (no
   concurrency limit), authenticates with its token (the peers: joins its
   room) and, on Hubbub, catches up as PROTOCOL.md §9 says: ``channel.list``
   and ``dm.list``, then ``message.history`` ``after: last``, ``order:
   "asc"``, following ``next_cursor``, for every conversation it is a
   member of whose ``last_seq`` is past its ``last``.

Figures: seconds from the storm's start until all are ready (authenticated
or joined) and until all have caught up, and per connection the same as
p50 / p99 / max; failures by error; server CPU seconds during the storm.
**Correctness** (Hubbub): every subscriber's live seqs and fetched seqs
together are exactly 1..(last acked seq) of its room, each once; anything
else is counted as lost or duplicated. The peers keep no history, so they
report no catch-up (``null``): their figure is the reconnect alone, as is
Hubbub's with ``--no-catch-up`` (``Scenario.catch_up``: phase 5 stops at
``auth``'s reply, nothing is checked).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from array import array
from typing import Any

import msgspec

from hubbub.loadtest import procstat
from hubbub.loadtest.conn import Conn, stamp_text
from hubbub.loadtest.report import Progress, summarize_ns
from hubbub.loadtest.safety import SETUP_TIMEOUT_S
from hubbub.loadtest.scenarios import ConnSpec, Plan, Room, Scenario
from hubbub.loadtest.servers import Servers
from hubbub.loadtest.targets import CALL_TIMEOUT_S, SetupError, Target, error_code

QUIET_CPU = 0.1
"""Servers below this many cores are quiet again (after the drop, before the storm)."""
QUIET_TIMEOUT_S = 60.0
HISTORY_PAGE = 100
SETUP_SEND_ATTEMPTS = 5
"""A set-up send (before the drop, or while all are away) answered ``unavailable`` is sent again, this often at most."""
SETUP_SEND_RETRY_S = 1.0


class _Listed(msgspec.Struct):
    id: int
    member: bool
    last_seq: int


class _Listing(msgspec.Struct):
    conversations: list[_Listed]


class _Seq(msgspec.Struct):
    seq: int


class _Page(msgspec.Struct):
    messages: list[_Seq]
    next_cursor: int | None = None


_listing = msgspec.json.Decoder(_Listing)
_page = msgspec.json.Decoder(_Page)


class StormError(SetupError):
    """A send before the storm was refused (the run fails), or a reconnecting client
    could not catch up (counted by kind)."""


class Storm:
    def __init__(self, scenario: Scenario, target: Target, plan: Plan, progress: Progress) -> None:
        self.s = scenario
        self.target = target
        self.plan = plan
        self.progress = progress
        self.failures: collections.Counter[str] = collections.Counter()
        self.live: dict[int, dict[int, int]] = {}
        """Per subscriber index: the highest seq it saw live per conversation before the drop."""
        self.fetched: dict[int, list[int]] = {}
        """Per subscriber index: every seq its catch-up fetched, in order."""
        self.acked: dict[int, int] = {}
        """Per conversation: the highest acknowledged seq."""
        self.conns: list[Conn] = []
        self.catching_up = target.history and scenario.catch_up
        """Reconnected clients catch up (Hubbub, unless ``--no-catch-up``): only then is there a catch-up to check."""

    # -- connections ---------------------------------------------------------

    async def _connect(self, spec: ConnSpec) -> Conn:
        conn = await self.target.open(spec.url, array("q"), spec.role == "sub", CALL_TIMEOUT_S)
        self.conns.append(conn)
        await self.target.ready(conn, spec, self.plan)
        return conn

    async def _connect_all(self, specs: list[ConnSpec]) -> list[Conn]:
        semaphore = asyncio.Semaphore(self.s.connect_concurrency)

        async def one(spec: ConnSpec) -> Conn:
            async with semaphore:
                return await self._connect(spec)

        return list(await asyncio.gather(*(one(spec) for spec in specs)))

    def close_all(self) -> None:
        for conn in self.conns:
            conn.on_lost = None
            conn.abort()

    # -- messages ------------------------------------------------------------

    async def _send_round(self, publishers: list[tuple[Conn, ConnSpec]]) -> None:
        """``gap_messages`` acked messages into every room, one at a time per room."""

        async def room_sends(conn: Conn, spec: ConnSpec, room: Room) -> None:
            for _ in range(self.s.gap_messages):
                for attempt in range(SETUP_SEND_ATTEMPTS):
                    request_id = conn.next_id()
                    text = stamp_text(time.monotonic_ns(), self.s.size)
                    payload = self.target.encode_send(request_id, room, spec.index, 0, text)
                    ok, body = await conn.call(payload, request_id, CALL_TIMEOUT_S)
                    # Not the storm: a store that is slow while 10,000 connections
                    # settle says `unavailable`, and a client sends again, as here.
                    if ok or error_code(body) != "unavailable" or attempt + 1 == SETUP_SEND_ATTEMPTS:
                        break
                    await asyncio.sleep(SETUP_SEND_RETRY_S)
                if not ok:
                    raise StormError(f"send refused: {error_code(body)}")
                ref = self.target.ack_ref(body)
                if ref is not None:
                    cid, seq = ref
                    self.acked[cid] = max(self.acked.get(cid, 0), seq)

        await asyncio.gather(
            *(room_sends(conn, spec, self.plan.rooms[k]) for conn, spec in publishers for k in spec.rooms)
        )

    async def _wait_seen(self, subscribers: list[tuple[Conn, ConnSpec]]) -> None:
        """Until every subscriber saw its room's last acked seq live."""

        def behind() -> int:
            return sum(
                1
                for conn, spec in subscribers
                if conn.last.get(self.plan.rooms[spec.rooms[0]].channel_id, 0)
                < self.acked.get(self.plan.rooms[spec.rooms[0]].channel_id, 0)
            )

        async with asyncio.timeout(SETUP_TIMEOUT_S):
            while behind():  # noqa: ASYNC110 - deliveries arrive on the protocol's callbacks, not as awaitables
                await asyncio.sleep(0.05)

    async def _quiet(self, pids: list[int]) -> float:
        """Seconds until the servers use less than QUIET_CPU (or QUIET_TIMEOUT_S)."""
        started = time.monotonic()
        if not pids:
            await asyncio.sleep(1.0)
            return 1.0
        before = procstat.sample_all(pids)
        while time.monotonic() - started < QUIET_TIMEOUT_S:
            await asyncio.sleep(0.5)
            after = procstat.sample_all(pids)
            share = procstat.cpu_share(before, after)
            if share is not None and share < QUIET_CPU:
                break
            before = after
        return round(time.monotonic() - started, 2)

    # -- the storm -----------------------------------------------------------

    async def _catch_up(self, conn: Conn, spec: ConnSpec) -> None:
        """PROTOCOL.md §9 on reconnect: the lists, then history after ``last`` for each member conversation."""
        last = self.live.get(spec.index, {})
        fetched = self.fetched.setdefault(spec.index, [])
        listed: list[_Listed] = []
        for kind in (b"channel.list", b"dm.list"):
            request_id = conn.next_id()
            ok, body = await conn.call(b'{"type":"%s","id":%d}' % (kind, request_id), request_id, CALL_TIMEOUT_S)
            if not ok:
                raise StormError(f"{kind.decode()}: {error_code(body)}")
            listed.extend(_listing.decode(body).conversations)
        for conversation in listed:
            after = last.get(conversation.id, 0)
            if not conversation.member or conversation.last_seq <= after:
                continue
            cursor: int | None = after
            while cursor is not None:
                request_id = conn.next_id()
                request = (
                    b'{"type":"message.history","id":%d,"conversation_id":%d,"after":%d,"order":"asc","limit":%d}'
                    % (request_id, conversation.id, cursor, HISTORY_PAGE)
                )
                ok, body = await conn.call(request, request_id, CALL_TIMEOUT_S)
                if not ok:
                    raise StormError(f"message.history: {error_code(body)}")
                page = _page.decode(body)
                fetched.extend(m.seq for m in page.messages)
                cursor = page.next_cursor

    async def _reconnect(self, spec: ConnSpec, t0: float, ready: list[float], caught: list[float]) -> None:
        try:
            conn = await self._connect(spec)
            ready.append((time.monotonic() - t0) * 1000)
            if self.catching_up:
                await self._catch_up(conn, spec)
                caught.append((time.monotonic() - t0) * 1000)
        except Exception as exc:
            detail = str(exc) or ("no answer within the timeout" if isinstance(exc, TimeoutError) else "")
            self.failures[f"{type(exc).__name__}: {detail}"[:160]] += 1

    def _correctness(self) -> dict[str, Any]:
        lost = duplicated = unexpected = 0
        for spec in self.plan.subscribers if self.catching_up else ():
            cid = self.plan.rooms[spec.rooms[0]].channel_id
            top = self.acked.get(cid, 0)
            seen = self.live.get(spec.index, {}).get(cid, 0)
            fetched = self.fetched.get(spec.index, [])
            counts = collections.Counter(fetched)
            duplicated += sum(n - 1 for n in counts.values() if n > 1)
            unexpected += sum(1 for seq in counts if seq <= seen or seq > top)
            lost += sum(1 for seq in range(seen + 1, top + 1) if seq not in counts)
        return {
            "checked": self.catching_up,
            "lost": lost,
            "duplicated": duplicated,
            "unexpected": unexpected,
            "ok": lost == duplicated == unexpected == 0,
        }

    async def execute(self, servers: Servers) -> dict[str, Any]:
        s = self.s
        name = self.target.name
        pids = servers.pids
        result: dict[str, Any] = {
            "target": name,
            "mode": "storm",
            "urls": servers.urls,
            "notes": list(servers.notes),
            "warnings": [],
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            setup = await self.target.setup(self.plan, s)
        result["setup"] = {"seconds": round(setup.seconds, 2), "users": setup.users_registered}
        result["notes"].extend(setup.notes)
        self.progress.note(f"[{name}] connecting {len(self.plan.subscribers)} subscribers before the drop")
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            subscribers = list(zip(await self._connect_all(self.plan.subscribers), self.plan.subscribers, strict=True))
            publishers = list(zip(await self._connect_all(self.plan.publishers), self.plan.publishers, strict=True))
        sends = self.target.history and s.gap_messages > 0
        if sends:
            await self._send_round(publishers)
            await self._wait_seen(subscribers)
        self.live = {spec.index: dict(conn.last) for conn, spec in subscribers}
        self.progress.note(f"[{name}] dropping all {len(subscribers)} subscribers at once")
        for conn, _ in subscribers:
            conn.on_lost = None
            conn.abort()
        result["quiet_after_drop_seconds"] = await self._quiet(pids)
        if sends:
            await self._send_round(publishers)
        result["gap_messages_per_room"] = s.gap_messages if sends else 0

        self.progress.note(f"[{name}] storm: {len(self.plan.subscribers)} reconnecting at once")
        ready: list[float] = []
        caught: list[float] = []
        overflows_before = procstat.listen_overflows()
        cpu_before = procstat.sample_all(pids)
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(self._reconnect(spec, t0, ready, caught)) for spec in self.plan.subscribers]
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            while tasks:
                _, pending = await asyncio.wait(tasks, timeout=1.0)
                tasks = list(pending)
                self.progress.update(
                    f"[{name}] storm: {len(ready)} ready, {len(caught)} caught up, {sum(self.failures.values())} failed"
                )
        self.progress.done()
        cpu_after = procstat.sample_all(pids)
        total = len(self.plan.subscribers)
        result["storm"] = {
            "connections": total,
            "ready": len(ready),
            "caught_up": len(caught) if self.catching_up else None,
            "failures": sum(self.failures.values()),
            "errors": dict(self.failures.most_common(5)),
            "all_ready_seconds": round(max(ready) / 1000, 3) if len(ready) == total else None,
            "all_caught_up_seconds": round(max(caught) / 1000, 3)
            if self.catching_up and len(caught) == total
            else None,
            "ready_ms": _summary_ms(ready),
            "caught_up_ms": _summary_ms(caught) if self.catching_up else None,
            "server_cpu_seconds": None
            if cpu_before is None or cpu_after is None
            else round(cpu_after.cpu_s - cpu_before.cpu_s, 2),
            "listen_overflows": None
            if overflows_before is None
            else (procstat.listen_overflows() or 0) - overflows_before,
            "what": "TCP + WebSocket handshake + auth with a token, then channel.list, dm.list and message.history "
            "after the last seq seen (PROTOCOL.md §9)"
            if self.catching_up
            else "TCP + WebSocket handshake + auth with a token (--no-catch-up)"
            if self.target.history
            else "TCP + WebSocket handshake + join (no history: no catch-up)",
        }
        result["correctness"] = self._correctness()
        result["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if self.failures:
            result["warnings"].append(f"WARNING: {sum(self.failures.values())} reconnecting clients failed")
        if not result["correctness"]["ok"]:
            c = result["correctness"]
            result["warnings"].append(
                f"WARNING: catch-up not correct: {c['lost']} lost, {c['duplicated']} duplicated, "
                f"{c['unexpected']} unexpected"
            )
        return result


def storm_ok(result: dict[str, Any]) -> bool:
    """Every client back and ready (and caught up, where there is history), nothing lost."""
    storm = result.get("storm")
    if result.get("error") is not None or storm is None:
        return False
    caught = storm["caught_up"] is None or storm["caught_up"] == storm["connections"]
    return bool(
        storm["failures"] == 0 and storm["ready"] == storm["connections"] and caught and result["correctness"]["ok"]
    )


def _summary_ms(values_ms: list[float]) -> dict[str, float | int | None]:
    return summarize_ns(array("q", (int(v * 1e6) for v in values_ms)))


def storm_table(results: list[dict[str, Any]]) -> str:
    """One row per target: ready and caught-up times, failures, correctness."""
    header = ["target", "all ready s", "ready p50/p99 ms", "all caught up s", "caught p50/p99 ms", "failed", "lost"]
    rows = [header]
    for r in results:
        storm = r.get("storm")
        if storm is None:
            rows.append([r["target"], "error: " + str(r.get("error")), "", "", "", "", ""])
            continue

        def pair(summary: dict[str, Any] | None) -> str:
            if not summary or summary.get("p50") is None:
                return "-"
            return f"{summary['p50']:.0f} / {summary['p99']:.0f}"

        correctness = r["correctness"]
        rows.append(
            [
                r["target"],
                "-" if storm["all_ready_seconds"] is None else f"{storm['all_ready_seconds']:.2f}",
                pair(storm["ready_ms"]),
                "-" if storm["all_caught_up_seconds"] is None else f"{storm['all_caught_up_seconds']:.2f}",
                pair(storm["caught_up_ms"]),
                str(storm["failures"]),
                str(correctness["lost"] + correctness["duplicated"] + correctness["unexpected"])
                if correctness["checked"]
                else "n/a",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    warnings = [w for r in results for w in r.get("warnings", [])]
    return "\n".join(lines + warnings)
