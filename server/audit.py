"""The audit log (issue 15): every admin action, as a store row and a JSON log line.

One call for both, used by the admin.* requests, by workspace admins'
channel administration, and available to ``hubbub admin`` (actor None: the
command line). The log line goes first: it cannot fail, so even when the
store refuses the row (``unavailable``) the action is on record somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubbub.server import logs
from hubbub.storage.base import Directory
from hubbub.storage.records import AuditEntry


async def audit(
    directory: Directory, actor_id: int | None, action: str, target: Mapping[str, Any], now: int
) -> AuditEntry:
    """Record that ``actor_id`` (None: the command line) did ``action`` to ``target`` at ``now`` (ms)."""
    logs.info("audit", actor_id=actor_id, action=action, target=dict(target), ts=now)
    return await directory.record_audit(actor_id, action, target, now)
