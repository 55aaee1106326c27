"""/metrics carries the standard process, platform and GC collectors next to
Hubbub's own, and hubbub_build_info says what is running."""

from __future__ import annotations

import asyncio
import platform
from importlib.metadata import version

from tests.conftest import RunningServer, http_get


async def test_metrics_have_process_platform_gc_and_build_info(server: RunningServer) -> None:
    status, body = await asyncio.to_thread(http_get, server.http_url + "/metrics")
    assert status == 200
    samples = {line.split(" ")[0].split("{")[0] for line in body.splitlines() if line and not line.startswith("#")}
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in samples, name
    (build,) = [line for line in body.splitlines() if line.startswith("hubbub_build_info{")]
    assert build.endswith(" 1.0")
    for label, value in (
        ("version", version("hubbub")),
        ("python", platform.python_version()),
        ("uvloop", version("uvloop")),
        ("websockets", version("websockets")),
    ):
        assert f'{label}="{value}"' in build, build
    # Process samples describe this process, not zero placeholders.
    rss = next(line for line in body.splitlines() if line.startswith("process_resident_memory_bytes "))
    assert float(rss.split(" ")[1]) > 1_000_000
