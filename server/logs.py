"""Structured logs: one JSON object per line on stderr.

Callers pass fields as keywords (event, user_id, conversation_id, conn_id,
request_id, latency_ms, ...). Passwords and tokens are never passed here.

``configure`` puts every logger of the process behind the same JSON
formatter: Hubbub's own, the drivers' (asyncpg, pymongo, redis), websockets',
asyncio's (unretrieved task exceptions), Python warnings and uncaught
exceptions. A traceback is a field of its line, never lines of its own, so a
log shipper never sees half an event.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

import orjson

LOGGER_NAME = "hubbub"

# Libraries whose records are routed explicitly; any other logger reaches the
# root handler too, since nothing else installs one.
LIBRARY_LOGGERS = ("asyncpg", "pymongo", "redis", "websockets", "asyncio", "py.warnings")

# Libraries log at warning and above whatever HUBBUB_LOG_LEVEL says: their
# debug output (a line per MongoDB command, per WebSocket frame) would drown
# Hubbub's own debug events and cost CPU on every frame.
LIBRARY_LEVEL = logging.WARNING

_FOREIGN_EVENTS = {"py.warnings": "python_warning"}


_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: a storm logs thousands of lines in each."""


def _time(record: logging.LogRecord) -> str:
    global _second
    whole = int(record.created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": _time(record), "level": record.levelname.lower()}
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format arguments must not cost the line
            message = f"{record.msg!s} {record.args!r}"
        fields = getattr(record, "fields", None)
        if record.name == LOGGER_NAME:
            entry["event"] = message
            if fields:
                entry.update(fields)
        else:
            # A library's free text is its message; the event says where it came from.
            entry["event"] = _FOREIGN_EVENTS.get(record.name, "library_log")
            entry["logger"] = record.name
            entry["message"] = message.strip()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler whose own failures are JSON lines too (logging's
    default prints a multi-line "--- Logging error ---" report)."""

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            fallback = {
                "time": _time(record),
                "level": "error",
                "event": "log_failed",
                "logger": record.name,
                "message": str(record.msg),
                "error": repr(sys.exc_info()[1]),
            }
            self.stream.write(orjson.dumps(fallback, default=str).decode() + "\n")
            self.flush()
        except Exception:
            pass


_logger = logging.getLogger(LOGGER_NAME)


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    _logger.critical("uncaught_exception", exc_info=(kind, value, tb), extra={"fields": {}})


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _logger.critical(
            "uncaught_exception",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            extra={"fields": {"thread": args.thread.name if args.thread else None}},
        )


def configure(level: str) -> None:
    """Every log record of the process as one JSON line on stderr; Hubbub's
    own from ``level`` up, the libraries' from warning up."""
    handler = JsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    hubbub_level = logging.getLevelName(level.upper())
    if not isinstance(hubbub_level, int):
        raise ValueError(f"unknown log level {level!r}")
    root.setLevel(max(hubbub_level, LIBRARY_LEVEL))
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        # A library's own stream handler would print plain text beside ours.
        library.handlers[:] = [h for h in library.handlers if isinstance(h, logging.NullHandler)]
        library.propagate = True
        library.setLevel(logging.NOTSET)
    _logger.handlers.clear()
    _logger.setLevel(hubbub_level)
    _logger.propagate = True
    logging.captureWarnings(True)
    # Fields no JSON line shows (its thread, process and process name): logging
    # looks each up for every record, a third of a record's making, and a storm
    # makes three records per connection (connect, auth, disconnect).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


_SOURCE = "(hubbub)"
"""The ``pathname`` of Hubbub's own records: the JSON line has no file or line field."""


def enabled(level: int) -> bool:
    """Whether a line of ``level`` would be logged: a caller whose fields cost
    something to compute (a line per request) asks first."""
    return _logger.isEnabledFor(level)


def log(level: int, event: str, **fields: Any) -> None:
    if _logger.isEnabledFor(level):
        # The record is made here rather than by Logger.log, which first walks
        # the stack to find the caller's file and line (findCaller), fields no
        # line shows: a reconnect storm logs connect, auth and disconnect for
        # every connection, and logging was 4-13% of its samples (BENCHMARKS.md).
        # The handlers, filters and levels are logging's own, as before.
        _logger.handle(_logger.makeRecord(LOGGER_NAME, level, _SOURCE, 0, event, (), None, extra={"fields": fields}))


def info(event: str, **fields: Any) -> None:
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    log(logging.WARNING, event, **fields)


def error(event: str, exc_info: bool = False, **fields: Any) -> None:
    if _logger.isEnabledFor(logging.ERROR):
        _logger.error(event, exc_info=exc_info, extra={"fields": fields})


def debug(event: str, **fields: Any) -> None:
    log(logging.DEBUG, event, **fields)
