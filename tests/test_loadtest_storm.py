"""hubbub-loadtest --scenario storm: everyone dropped and back at once, each
client catching up per PROTOCOL.md §9, against Hubbubs the tool starts (one,
and two on Redis), and the catch-up check on its own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hubbub.loadtest import cli
from hubbub.loadtest.report import Progress
from hubbub.loadtest.scenarios import build_plan
from hubbub.loadtest.storm import Storm, storm_ok
from hubbub.loadtest.targets import HubbubTarget

SHARED_REDIS = os.environ.get("HUBBUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def run_storm(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    report = tmp_path / "storm.json"
    args = ["--scenario", "storm", "--subscribers", "60", "--rooms", "3", "--publishers", "2"]
    code = cli.main([*args, "--gap-messages", "120", *extra, "--json", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    (result,) = json.loads(report.read_text())["results"]
    assert "all caught up s" in out
    return dict(result)


def assert_everyone_back_and_caught_up(result: dict[str, Any]) -> None:
    storm = result["storm"]
    assert storm["connections"] == storm["ready"] == storm["caught_up"] == 60
    assert storm["failures"] == 0
    assert 0 < storm["all_ready_seconds"] <= storm["all_caught_up_seconds"]
    # 120 seen live, 120 sent while away: more than one history page each.
    assert result["gap_messages_per_room"] == 120
    assert result["correctness"] == {"checked": True, "lost": 0, "duplicated": 0, "unexpected": 0, "ok": True}
    assert storm_ok(result)


def test_storm_on_one_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_everyone_back_and_caught_up(run_storm(tmp_path, capsys))


def test_storm_on_two_instances_with_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_storm(tmp_path, capsys, "--instances", "2", "--redis-url", SHARED_REDIS)
    assert len(result["urls"]) == 2
    assert_everyone_back_and_caught_up(result)


def test_the_catch_up_check_counts_lost_duplicated_and_unexpected_seqs() -> None:
    args = cli.build_parser().parse_args(["--scenario", "storm", "--subscribers", "4", "--rooms", "2"])
    scenario = cli.scenario_from_args(args)
    plan = build_plan(scenario, ["ws://127.0.0.1:1/"], "t")
    plan.rooms[0].channel_id, plan.rooms[1].channel_id = 7, 8
    storm = Storm(scenario, HubbubTarget(["ws://127.0.0.1:1/"]), plan, Progress(enabled=False))
    storm.acked = {7: 6, 8: 6}
    storm.live = {0: {7: 3}, 1: {8: 3}, 2: {7: 3}, 3: {8: 3}}
    storm.fetched = {0: [4, 5, 6], 1: [4, 5, 6], 2: [4, 6, 6], 3: [3, 4, 5, 6]}
    # Subscriber 2 lost 5 and got 6 twice; subscriber 3 fetched 3, which it had seen live.
    assert storm._correctness() == {"checked": True, "lost": 1, "duplicated": 1, "unexpected": 1, "ok": False}
    storm.fetched[2], storm.fetched[3] = [4, 5, 6], [4, 5, 6]
    assert storm._correctness()["ok"]


def test_storm_without_the_catch_up_measures_the_reconnect_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "storm.json"
    args = ["--scenario", "storm", "--subscribers", "40", "--rooms", "2", "--publishers", "1", "--gap-messages", "5"]
    code = cli.main([*args, "--no-catch-up", "--json", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    (result,) = json.loads(report.read_text())["results"]
    storm = result["storm"]
    assert storm["connections"] == storm["ready"] == 40
    assert storm["failures"] == 0 and storm["all_ready_seconds"] > 0
    # Nobody asked for history: nothing caught up, nothing to check.
    assert storm["caught_up"] is None and storm["all_caught_up_seconds"] is None
    assert "--no-catch-up" in storm["what"]
    assert result["correctness"]["checked"] is False and result["correctness"]["ok"]
    assert storm_ok(result)
