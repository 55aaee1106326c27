"""Account deletion across both stores (issue 15), for ``hubbub admin``.

The directory and the message log may be different databases (PostgreSQL and
MongoDB), so deleting an account is not one transaction: the directory's part
is (``Directory.delete_user``), then the messages move to the tombstone user
in bounded batches (``MessageLog.reattribute``). Every step is idempotent, so
a deletion interrupted half-way (a store fault, a killed command) is finished
by running it again.
"""

from __future__ import annotations

from msgspec import Struct

from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import UserRecord

REATTRIBUTE_BATCH = 500
"""Messages moved per message-log transaction while deleting an account."""


class DeletedAccount(Struct, kw_only=True, frozen=True):
    user: UserRecord
    """The deleted account's row as stored now (its tombstone: ``deleted_at`` set)."""
    tombstone: UserRecord
    """The user its messages are attributed to now."""
    messages_moved: int
    """How many messages this call moved (0 when an earlier run moved them all)."""


class CannotDelete(ValueError):
    """The account is the tombstone user itself."""


async def delete_account(
    directory: Directory, messages: MessageLog, user_id: int, now: int, *, batch: int = REATTRIBUTE_BATCH
) -> DeletedAccount | None:
    """Delete ``user_id``'s account and attribute its messages to the tombstone
    user; None when no such user. CannotDelete for the tombstone user."""
    tombstone = await directory.tombstone_user(now)
    if user_id == tombstone.id:
        raise CannotDelete(f"user {user_id} is the tombstone user")
    user = await directory.delete_user(user_id, now)
    if user is None:
        return None
    moved = 0
    while True:
        count = await messages.reattribute(user_id, tombstone.id, batch)
        moved += count
        if count == 0:
            return DeletedAccount(user=user, tombstone=tombstone, messages_moved=moved)
