"""CPU time and resident memory of processes, read from /proc."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Sample:
    """One reading of one process (or the sum over several)."""

    wall: float
    """time.monotonic() of the reading."""
    cpu_s: float
    """user + system CPU seconds since the process started (all threads)."""
    rss_kb: int

    def __add__(self, other: Sample) -> Sample:
        return Sample(max(self.wall, other.wall), self.cpu_s + other.cpu_s, self.rss_kb + other.rss_kb)


def sample(pid: int) -> Sample | None:
    """A reading of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_pages = int(statm.split()[1])
    return Sample(time.monotonic(), (utime + stime) / CLOCK_TICKS, rss_pages * PAGE_KB)


def memory_kb(pid: int) -> dict[str, int] | None:
    """VmRSS and its parts from /proc/PID/status (RssAnon: heap and other private memory;
    RssFile: mapped files such as shared libraries; RssShmem), in KiB; None if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[name] = int(value.split()[0])
    return out


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None for fewer than 2 times."""
    n = len(points)
    if n < 2:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def sample_all(pids: list[int]) -> Sample | None:
    """The sum over ``pids`` (None if any is gone)."""
    total: Sample | None = None
    for pid in pids:
        one = sample(pid)
        if one is None:
            return None
        total = one if total is None else total + one
    return total


def cpu_share(before: Sample | None, after: Sample | None) -> float | None:
    """CPU used between two readings, in cores (1.0 = one core fully busy)."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    return (after.cpu_s - before.cpu_s) / (after.wall - before.wall)


def machine() -> dict[str, str | int]:
    """nproc, CPU model, kernel and load average (other work on the machine skews results)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uname = os.uname()
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "kernel": f"{uname.sysname} {uname.release}",
        "memory_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows + ListenDrops of the whole machine (SYNs dropped because an
    accept queue was full), from /proc/net/netstat."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0)) + int(table.get("ListenDrops", 0))
    return None


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out: dict[str, list[int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            out[name[3:]] = [int(v) for v in values[:8]]
    return out


def cpu_busy(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per CPU over an interval: the busy fraction (everything but idle and iowait),
    and the softirq and steal fractions (network processing and the hypervisor's
    share, which no process's /proc/PID/stat counts)."""
    out = {}
    for cpu, end in after.items():
        start = before.get(cpu)
        if start is None:
            continue
        delta = [b - a for a, b in zip(start, end, strict=False)]
        total = sum(delta)
        if total <= 0:
            continue
        idle = delta[3] + delta[4]
        out[cpu] = {
            "busy": round((total - idle) / total, 3),
            "softirq": round(delta[6] / total, 3),
            "steal": round(delta[7] / total, 3) if len(delta) > 7 else 0.0,
        }
    return out
