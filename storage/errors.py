"""Errors every storage backend raises, so the server never sees driver types."""

from __future__ import annotations


class StorageError(Exception):
    """Base of storage errors."""


class StoreUnavailable(StorageError):
    """The backing store cannot be reached or timed out; nothing was changed."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store} unavailable: {detail}")
        self.store = store
        self.detail = detail


class Conflict(StorageError):
    """A uniqueness rule was violated (taken username, channel name)."""
