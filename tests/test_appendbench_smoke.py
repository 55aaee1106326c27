"""loadtest/appendbench.py runs end to end and tells the search index's cost apart:
none in the batches' commits, all in the deferred index transactions."""

from __future__ import annotations

from pathlib import Path

from hubbub.loadtest.appendbench import arguments, run
from hubbub.storage import sqlite


def test_appendbench_reports_per_batch_and_the_index_adds_to_the_wal(tmp_path: Path) -> None:
    small = ["--batches", "20", "--warmup", "2", "--size", "5", "--index-every", "4"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    indexed = run(arguments(small), tmp_path / "a")
    unindexed = run(arguments([*small, "--no-index"]), tmp_path / "b")
    for figures in (indexed, unindexed):
        per_batch = {k: v for k, v in figures.items() if not k.startswith("index_")}
        assert set(per_batch) == {
            "work_ms_median",
            "work_ms_mean",
            "commit_ms_median",
            "commit_ms_mean",
            "wal_kib_per_batch",
        }
        assert all(isinstance(v, float) and v > 0 for v in per_batch.values())
    # The store indexes in a deferred index transaction (storage/sqlite_index.py), every 4 batches here.
    assert indexed["index_every"] == 4 and unindexed["index_every"] == 0
    assert unindexed["index_wal_kib_per_batch"] == unindexed["index_ms_per_batch"] == 0
    index_wal = indexed["index_wal_kib_per_batch"]
    assert isinstance(index_wal, float) and index_wal > 0, "the index transactions write the FTS5 segments"
    assert isinstance(indexed["index_ms_per_batch"], float) and indexed["index_ms_per_batch"] > 0


def test_appendbench_without_the_index_leaves_the_store_as_it_found_it(tmp_path: Path) -> None:
    """--no-index stubs the store's word cutting for its run only: tests share the process."""
    before = vars(sqlite)["fts5_text"]
    run(arguments(["--batches", "2", "--warmup", "0", "--size", "2", "--no-index"]), tmp_path)
    assert vars(sqlite)["fts5_text"] is before
    assert vars(sqlite)["fts5_text"]("hello world") == "hello world"
