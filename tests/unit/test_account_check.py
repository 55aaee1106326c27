"""The account check's reads (server/account_check.py) on a real SQLite
directory and a real registry, with a clock of its own: where each check
starts reading (its last good check less the lookback), paging through many
users disabled at once, and that only sessions older than the disabling are
closed, as disabled."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hubbub.server import account_check
from hubbub.server.account_check import AccountCheck
from hubbub.server.broker import InProcessBroker
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Registry
from hubbub.storage.sqlite import open_sqlite

NOW = 1_700_000_000_000


@dataclass(eq=False)
class Device:
    """A registered connection of a user authenticated under ``generation``."""

    user_id: int
    generation: int
    conversations: set[int] = field(default_factory=set)
    closed: list[bool] = field(default_factory=list)

    def send_frame(self, frame: bytes) -> None:
        pass

    def end_session_before(self, generation: int, *, disabled: bool = False) -> bool:
        if self.closed or self.generation >= generation:  # closing already, or of the current generation
            return False
        self.closed.append(disabled)
        return True

    @property
    def outbound(self) -> Device:
        return self


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


async def test_a_check_reads_from_its_last_good_one_less_the_lookback(tmp_path: Path) -> None:
    db, directory, _log = await open_sqlite(tmp_path / "h.db", 5.0)
    try:
        registry = Registry(InProcessBroker(), Metrics())
        clock = Clock()
        check = AccountCheck(directory, registry, interval=1, lookback=10, clock=clock)
        alice, bob = [await directory.create_user(f"user{n}", "U", "h", NOW) for n in range(2)]
        alice_device, bob_device = Device(alice.id, 0), Device(bob.id, 0)
        registry.add(alice_device, [])
        registry.add(bob_device, [])

        # Disabled with a clock 5 s behind this server's: still within the lookback.
        clock.now = NOW + 2_000
        await directory.set_disabled(alice.id, True, NOW - 5_000)
        assert await check.check_once() == 1
        assert alice_device.closed == [True]
        assert bob_device.closed == []

        # 10 s of lookback before the last check (NOW + 2 s): bob, disabled 9 s before it, is found.
        clock.now = NOW + 60_000
        await directory.set_disabled(bob.id, True, NOW - 7_000)
        assert await check.check_once() == 1
        assert bob_device.closed == [True]
        # A connection of the current generation (none can authenticate while disabled) is not closed.
        fresh = await directory.get_user(bob.id)
        assert fresh is not None
        registry.add(Device(bob.id, fresh.token_generation), [])
        # Outside the lookback of this last check (NOW + 60 s): nothing is read at all.
        clock.now = NOW + 120_000
        assert await check.check_once() == 0
    finally:
        await db.close()


async def test_a_check_pages_through_many_users_disabled_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(account_check, "CHECK_PAGE", 2)
    db, directory, _log = await open_sqlite(tmp_path / "h.db", 5.0)
    try:
        registry = Registry(InProcessBroker(), Metrics())
        check = AccountCheck(directory, registry, interval=1, lookback=60, clock=Clock())
        devices = []
        for n in range(5):
            user = await directory.create_user(f"user{n}", "U", "h", NOW)
            devices.append(Device(user.id, 0))
            registry.add(devices[-1], [])
            await directory.set_disabled(user.id, True, NOW - 1_000 + n)
        assert await check.check_once() == 5
        assert [d.closed for d in devices] == [[True]] * 5
    finally:
        await db.close()
