"""The retention purge (issue 15): a background task that removes expired
messages, in bounded batches, one instance of a cluster at a time.

Each interval (``HUBBUB_RETENTION_INTERVAL_SECONDS``) the task takes the
purge lock (server/retention_lock.py); without it (another instance
purges) it waits for the next interval. With it, a pass pages through the
conversations in id order (every conversation when the server's own
retention is on, else only the channels with an override) and, for each
that has a rule (server/retention_policy.py), calls ``MessageLog.purge``
with at most ``HUBBUB_RETENTION_BATCH_SIZE`` messages per call until nothing
expired is left. Every call is one short store transaction through the
store's async API (the guarded stores: bounded in time, timed per op), and
the task yields to the event loop between them, so sends interleave with a
purge and never wait for more than one batch. A pass stops after half the
lock's lifetime and the next one resumes from the conversation it reached.

A store that is down fails the pass with one warning line
(``retention_purge_unavailable``) and the next interval tries again; any
other failure is a ``task_failed`` line (storage/supervision.py) and the
task goes on. Metrics: ``hubbub_retention_purged_messages_total``,
``hubbub_retention_purge_seconds``, ``hubbub_retention_backlog_conversations``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hubbub.server import logs
from hubbub.server.clock import now_ms
from hubbub.server.config import RetentionConfig
from hubbub.server.metrics import Metrics
from hubbub.server.retention_lock import PurgeLock
from hubbub.server.retention_policy import RetentionPolicy
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.supervision import SupervisedTask

PAGE = 200
"""Conversations read from the directory at a time."""


class RetentionPurge:
    def __init__(
        self,
        directory: Directory,
        messages: MessageLog,
        policy: RetentionPolicy,
        config: RetentionConfig,
        lock: PurgeLock,
        metrics: Metrics,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.directory = directory
        self.messages = messages
        self.policy = policy
        self.config = config
        self.lock = lock
        self.metrics = metrics
        self._clock = clock
        self._resume_after = 0
        """The id of the last conversation a pass finished: a pass cut short resumes after it."""
        self._task = SupervisedTask("retention_purge", self._interval, metrics.task_failed)

    # -- the background task ----------------------------------------------------

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _interval(self) -> None:
        await asyncio.sleep(self.config.retention_interval_seconds)
        try:
            await self.run_once()
        except StoreUnavailable as exc:
            logs.warning("retention_purge_unavailable", store=exc.store, error=str(exc))

    # -- one pass ---------------------------------------------------------------

    async def run_once(self, now: int | None = None) -> int | None:
        """One pass at ``now`` (ms; default the clock): the messages it purged,
        or None when another instance holds the lock (nothing was done)."""
        if not await self.lock.acquire():
            return None
        try:
            return await self._pass(self._clock() if now is None else now)
        finally:
            await self.lock.release()

    async def _pass(self, now: int) -> int:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + self.config.retention_lock_seconds / 2
        overridden_only = not self.policy.global_active
        after, purged, visited = self._resume_after, 0, 0
        finished = False
        while True:
            page = await self.directory.conversations_after(after, PAGE, overridden_only=overridden_only)
            if not page:
                finished = True
                break
            for record in page:
                rule = self.policy.rule(record, now)
                if rule is not None:
                    purged += await self._purge_conversation(record.id, rule.before_ts, rule.keep_last, deadline)
                    if loop.time() >= deadline:
                        break
                after = record.id
                visited += 1
            else:
                continue
            break  # the deadline: the next pass resumes after the last conversation finished
        self._resume_after = 0 if finished else after
        backlog = 0 if finished else await self._count_after(after, overridden_only)
        self.metrics.retention_backlog.set(backlog)
        seconds = time.perf_counter() - started
        self.metrics.retention_purge_seconds.observe(seconds)
        # A pass that found nothing to do is not worth an info line every interval.
        report = logs.info if purged or not finished else logs.debug
        report(
            "retention_purged",
            messages=purged,
            conversations=visited,
            finished=finished,
            backlog=backlog,
            lock=self.lock.name,
            seconds=round(seconds, 3),
        )
        return purged

    async def _purge_conversation(
        self, conversation_id: int, before_ts: int | None, keep_last: int | None, deadline: float
    ) -> int:
        loop = asyncio.get_running_loop()
        purged = 0
        while True:
            result = await self.messages.purge(
                conversation_id, before_ts=before_ts, keep_last=keep_last, limit=self.config.retention_batch_size
            )
            purged += result.purged
            self.metrics.retention_purged.inc(result.purged)
            if not result.more or loop.time() >= deadline:
                return purged
            await asyncio.sleep(0)  # sends and everything else go between two batches

    async def _count_after(self, after: int, overridden_only: bool) -> int:
        """The conversations a pass cut short has not finished (the backlog gauge):
        the one it stopped in and those after it."""
        count = 0
        while page := await self.directory.conversations_after(after, PAGE, overridden_only=overridden_only):
            count += len(page)
            after = page[-1].id
        return count
