"""Errors every storage backend raises, so the server never sees driver types."""

from __future__ import annotations

import functools


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


@functools.cache
def _driver_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(faults, outcomes): the drivers' error bases, and their integrity
    violations, which are the caller's outcome (a taken name), not a fault.
    Imported on first use: a SQLite-only server never loads the other drivers
    for this."""
    import sqlite3

    import asyncpg
    import bson.errors
    import pymongo.errors

    faults = (
        sqlite3.Error,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        pymongo.errors.PyMongoError,
        bson.errors.BSONError,
    )
    outcomes = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError, pymongo.errors.DuplicateKeyError)
    return faults, outcomes


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a database driver's error that a backend let through.

    Backends translate their driver's errors themselves; this is the net under
    them (server/guarded.py), so that a store fault answers `unavailable` and
    never `internal`. Integrity violations are not faults: a backend turns the
    ones it expects into Conflict, and an unexpected one is a bug of ours.
    """
    faults, outcomes = _driver_errors()
    return isinstance(exc, faults) and not isinstance(exc, outcomes)


def describe(exc: BaseException) -> str:
    """An exception for a log line or a readiness reason: never empty, as the
    str() of TimeoutError and many driver errors is."""
    if isinstance(exc, StoreUnavailable):
        return exc.detail or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LastAdmin(Conflict):
    """The change would leave the workspace without an active admin (Directory.set_workspace_role)."""
