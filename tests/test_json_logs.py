"""Every stderr line of the process is one JSON object, whoever writes it:
the drivers' and websockets' loggers, asyncio under uvloop, Python warnings,
an uncaught exception, and the command line itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tests.processes import server_env, stderr_of

ROOT = Path(__file__).resolve().parent.parent

# What a library or the runtime does on its own, in a process set up like
# `hubbub serve` sets itself up (server.logs.configure, then uvloop).
NOISY_PROCESS = textwrap.dedent(
    """
    import asyncio, gc, logging, warnings
    import uvloop
    from hubbub.server import logs

    logs.configure("info")
    for name in ("asyncpg", "pymongo.topology", "redis.asyncio.connection", "websockets.server"):
        logging.getLogger(name).warning("from %s\\nsecond line", name)
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError:
        logging.getLogger("asyncpg.pool").exception("Failed to restore the pool connection floor; retrying")
    logging.getLogger("pymongo").info("below the libraries' level: not logged")
    logs.info("hubbub_event", answer=42)
    warnings.warn("a warning\\nover two lines", RuntimeWarning)

    async def fails() -> None:
        raise ValueError("nobody awaited me")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del task
        gc.collect()  # "Task exception was never retrieved", from asyncio's handler

    uvloop.run(main())
    raise RuntimeError("uncaught\\nat the top")
    """
)


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    entries = []
    for line in lines:
        entry = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(entry, dict), line
        assert {"time", "level", "event"} <= entry.keys(), line
        entries.append(entry)
    return entries


async def test_library_runtime_and_uncaught_output_is_json_lines() -> None:
    code, lines = await stderr_of("-c", NOISY_PROCESS, cwd=ROOT)
    assert code == 1
    entries = parsed(lines)
    library = {e["logger"]: e for e in entries if e["event"] == "library_log"}
    for name in ("asyncpg", "pymongo.topology", "redis.asyncio.connection", "websockets.server"):
        assert library[name]["message"] == f"from {name}\nsecond line"
        assert library[name]["level"] == "warning"
    assert "ConnectionRefusedError" in library["asyncpg.pool"]["exception"]
    assert "pymongo" not in library
    assert {"event": "hubbub_event", "answer": 42}.items() <= entries[
        [e["event"] for e in entries].index("hubbub_event")
    ].items()
    (warning,) = [e for e in entries if e["event"] == "python_warning"]
    assert "RuntimeWarning: a warning" in warning["message"]
    assert "nobody awaited me" in library["asyncio"]["exception"]
    assert library["asyncio"]["level"] == "error"
    assert entries[-1]["event"] == "uncaught_exception"
    assert "RuntimeError: uncaught" in entries[-1]["exception"]


async def test_command_line_errors_are_json_lines(tmp_path: Path) -> None:
    env = server_env(tmp_path / "data")
    code, lines = await stderr_of("-m", "hubbub.server", "serve", "--no-such-flag", env=env, cwd=ROOT)
    assert code == 2
    (entry,) = parsed(lines)
    assert entry["event"] == "invalid_command_line" and "--no-such-flag" in entry["error"]
