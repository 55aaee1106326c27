"""The bounds every run stays within: loopback targets only, capped time and connections."""

from __future__ import annotations

import ipaddress
import resource
from urllib.parse import urlsplit

MAX_DURATION_S = 600.0
"""No measured phase lasts longer than this, whatever --duration says."""
MAX_SOAK_DURATION_S = 3600.0
"""A soak (RSS sampled during the run) may run this long: still bounded, long enough to see a slope."""
MAX_CONNECTIONS = 20000
"""Subscribers + publishers + idle connections of one run."""
SETUP_TIMEOUT_S = 600.0
"""Accounts, rooms and connections must be ready within this."""
DRAIN_TIMEOUT_S = 30.0
"""Longest wait, after the last send, for outstanding acks and deliveries."""


class UnsafeTarget(ValueError):
    """A URL that is not on this machine's loopback."""


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback(url: str) -> str:
    """``url`` unchanged if its host is 127.0.0.0/8, ::1 or localhost; UnsafeTarget otherwise."""
    host = urlsplit(url).hostname or ""
    if not is_loopback_host(host):
        raise UnsafeTarget(f"refusing {url!r}: only loopback targets (127.0.0.0/8, ::1, localhost) are allowed")
    return url


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
