"""loadtest/appendbench.py runs end to end and tells the search index's cost apart."""

from __future__ import annotations

from pathlib import Path

from hubbub.loadtest.appendbench import arguments, run
from hubbub.storage import sqlite


def test_appendbench_reports_per_batch_and_the_index_adds_to_the_wal(tmp_path: Path) -> None:
    small = ["--batches", "20", "--warmup", "2", "--size", "5"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    indexed = run(arguments(small), tmp_path / "a")
    unindexed = run(arguments([*small, "--no-index"]), tmp_path / "b")
    for figures in (indexed, unindexed):
        assert set(figures) == {
            "work_ms_median",
            "work_ms_mean",
            "commit_ms_median",
            "commit_ms_mean",
            "wal_kib_per_batch",
        }
        assert all(isinstance(v, float) and v > 0 for v in figures.values())
    wal_indexed, wal_unindexed = indexed["wal_kib_per_batch"], unindexed["wal_kib_per_batch"]
    assert isinstance(wal_indexed, float) and isinstance(wal_unindexed, float)
    assert wal_indexed > wal_unindexed, "the FTS5 segment is written by each commit"


def test_appendbench_without_the_index_leaves_the_store_as_it_found_it(tmp_path: Path) -> None:
    """--no-index stubs the store's word cutting for its run only: tests share the process."""
    before = vars(sqlite)["fts5_text"]
    run(arguments(["--batches", "2", "--warmup", "0", "--size", "2", "--no-index"]), tmp_path)
    assert vars(sqlite)["fts5_text"] is before
    assert vars(sqlite)["fts5_text"]("hello world") == "hello world"
