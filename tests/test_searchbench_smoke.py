"""loadtest/searchbench.py runs end to end on a small SQLite log and reports every kind of search."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbub.loadtest.searchbench import run


async def test_searchbench_reports_each_kind_and_reuses_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "bench.db")
    await run("sqlite", "", path, 3_000, 30, 5, 5, seed=3)
    first = capsys.readouterr().out
    for kind in ("rare", "medium", "common", "two words", "prefix", "phrase", "all"):
        assert f"{kind} p50 " in first
    assert "sqlite newest:" in first and "sqlite relevance:" in first
    # The filled file again: reused as it is (loading it twice would break its primary key).
    await run("sqlite", "", path, 3_000, 30, 5, 5, seed=3)
    again = capsys.readouterr().out
    assert "sqlite newest:" in again
    assert (tmp_path / "bench.db").stat().st_size > 0
