"""A real PostgreSQL streaming replica for the tests: a primary and a hot standby of their own.

Both are private clusters on free loopback ports (``ThrowawayPostgres`` of
tests/backends.py, never the machine's shared server). The primary streams
its WAL (``wal_level=replica``, a ``replication`` line in pg_hba trusting
127.0.0.1); the standby is a ``pg_basebackup -R`` of it, so it starts as a
hot standby following the primary. Tests make it lag on purpose by pausing
replay (``pg_wal_replay_pause()``), and make it go away by stopping it.
Each server is stopped by the PID in its ``postmaster.pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from tests.backends import ThrowawayPostgres, _postgres_bin

STOP_DEADLINE_SECONDS = 30.0
REPLAY_DEADLINE_SECONDS = 30.0


class PostgresNode(ThrowawayPostgres):
    """One server of the pair, stopped by its postmaster's PID."""

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs (first line of postmaster.pid), if
        that process is this cluster's postmaster: a file a crash left behind
        may name a PID the system has since given to someone else's process."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError):
            return None
        return pid if str(self.data).encode() in command and _alive(pid) else None

    def run(self, *args: str) -> None:
        """A PostgreSQL tool, as the cluster's owner."""
        self._run(*args)

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster): sessions end, the server exits cleanly."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"PostgreSQL {pid} did not stop within {STOP_DEADLINE_SECONDS}s; killed")
            time.sleep(0.05)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=10)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs: an exited postmaster is not our child, so
    it may linger as a zombie until whoever adopted it reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class StreamingReplica:
    """A primary and a hot standby replaying its WAL."""

    def __init__(self) -> None:
        self.primary = PostgresNode()
        self.standby = PostgresNode()

    def start(self) -> None:
        primary = self.primary
        primary.init()
        with open(primary.data / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n")
        with open(primary.data / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        primary.start()
        # -R writes standby.signal and primary_conninfo; -X stream takes the WAL
        # the copy needs through a second connection; a fast checkpoint starts it at once.
        primary.run(
            _postgres_bin("pg_basebackup"),
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.standby.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        self.standby.start()

    def destroy(self) -> None:
        try:
            self.standby.destroy()
        finally:
            self.primary.destroy()

    @property
    def primary_dsn(self) -> str:
        return self.primary.dsn

    @property
    def standby_dsn(self) -> str:
        return self.standby.dsn

    async def replayed(self) -> None:
        """Return once the standby has replayed everything the primary wrote until now."""
        primary = await self.primary.connect()
        try:
            lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
        finally:
            await primary.close()
        await self._standby_until("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn)

    async def pause_replay(self) -> None:
        standby = await self.standby.connect()
        try:
            await standby.execute("SELECT pg_wal_replay_pause()")
        finally:
            await standby.close()
        await self._standby_until("SELECT pg_get_wal_replay_pause_state() = 'paused'")

    async def resume_replay(self) -> None:
        standby = await self.standby.connect()
        try:
            await standby.execute("SELECT pg_wal_replay_resume()")
        finally:
            await standby.close()
        await self.replayed()

    @contextlib.asynccontextmanager
    async def lagging(self) -> AsyncIterator[None]:
        """The standby replays nothing inside the block (all before it, it has), then catches up."""
        await self.replayed()
        await self.pause_replay()
        try:
            yield
        finally:
            await self.resume_replay()

    async def standby_rows(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """What the standby itself answers to ``sql`` (its state, lagging or not)."""
        standby = await self.standby.connect()
        try:
            return list(await standby.fetch(sql, *args))
        finally:
            await standby.close()

    async def _standby_until(self, condition: str, *args: object) -> None:
        """Poll the standby until ``condition`` (one boolean) holds: replay is asynchronous."""
        deadline = time.monotonic() + REPLAY_DEADLINE_SECONDS
        while True:
            try:
                standby = await self.standby.connect()
                try:
                    if await standby.fetchval(condition, *args):
                        return
                finally:
                    await standby.close()
            except (OSError, asyncpg.CannotConnectNowError):
                pass  # the standby is still starting up
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not reach {condition!r} {args} in {REPLAY_DEADLINE_SECONDS}s")
            await asyncio.sleep(0.02)


def streaming_replica() -> StreamingReplica:
    """A started primary and standby, the standby caught up; the caller destroys them."""
    pair = StreamingReplica()
    try:
        pair.start()
    except BaseException:
        pair.destroy()
        raise
    return pair
