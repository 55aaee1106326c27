"""Closing a disabled user's connections when the disabling was done elsewhere.

An admin disabling a user over the protocol publishes ``sessions.ended``
(disabled) at once, which every instance hears. ``hubbub admin`` runs with no
server and no broker, so every server also polls the directory every
``account_check_seconds`` for accounts disabled since its last successful
check (``Directory.disabled_since``), looking ``account_check_lookback_seconds``
further back to cover the clocks of the two hosts being apart and a commit
that lands late. Each user found has the local connections of sessions older
than their token generation (disabling raised it) closed with
``CloseCode.ACCOUNT_DISABLED``; found again by the next checks, a user has no
such connection left, so a check costs one indexed query and a dict lookup
per user disabled lately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hubbub.server import logs
from hubbub.server.clock import now_ms
from hubbub.server.registry import Registry
from hubbub.storage.base import Directory
from hubbub.storage.errors import StoreUnavailable
from hubbub.storage.supervision import FailureHook, SupervisedTask

CHECK_PAGE = 500
"""Users read per query while a check pages through those disabled since."""


class AccountCheck:
    def __init__(
        self,
        directory: Directory,
        registry: Registry,
        *,
        interval: float,
        lookback: float,
        on_failure: FailureHook | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._directory = directory
        self._registry = registry
        self._interval = interval
        self._lookback_ms = int(lookback * 1000)
        self._clock = clock
        self._checked_from = clock()
        """When the last successful check started (ms): the next one reads from there, less the lookback."""
        self._task = SupervisedTask("account_check", self._iteration, on_failure)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _iteration(self) -> None:
        await asyncio.sleep(self._interval)
        try:
            await self.check_once()
        except StoreUnavailable as exc:  # an outage, with its own metrics: the next check reads from further back
            logs.warning("account_check_unavailable", error=exc.detail)

    async def check_once(self) -> int:
        """Close the local connections of accounts disabled lately; how many users had some to close."""
        started = self._clock()
        since = self._checked_from - self._lookback_ms
        closed = 0
        seen: set[int] = set()  # a page starts at the last one's time, so its users may come twice
        while True:
            users = await self._directory.disabled_since(since, CHECK_PAGE)
            for user in users:
                if user.id in seen:
                    continue
                seen.add(user.id)
                if count := self._registry.end_sessions(user.id, user.token_generation, disabled=True):
                    closed += 1
                    logs.info("disabled_user_closed", user_id=user.id, connections=count, disabled_at=user.disabled_at)
            if len(users) < CHECK_PAGE:
                break
            last = users[-1].disabled_at
            if last is None or last <= since:  # a page of one millisecond: read no further than it
                break
            since = last
        self._checked_from = started
        return closed
