"""How a reply changes its thread's root: the one rule every backend applies
when it stores a reply (in the reply's own transaction where the store has
transactions, right after it on MongoDB; docs/messages.md)."""

from __future__ import annotations

import msgspec

from hubbub.storage.records import REPLIERS_KEPT, MessageRecord


def with_reply(root: MessageRecord, reply: MessageRecord) -> MessageRecord:
    """``root`` after ``reply`` was added to its thread (``rev`` unchanged: the store sets it)."""
    repliers = (reply.sender_id, *(r for r in root.repliers if r != reply.sender_id))[:REPLIERS_KEPT]
    last = reply.ts if root.last_reply_ts is None else max(root.last_reply_ts, reply.ts)
    return msgspec.structs.replace(root, reply_count=root.reply_count + 1, last_reply_ts=last, repliers=repliers)


def without_reply(root: MessageRecord) -> MessageRecord:
    """``root`` after one of its replies was deleted: the count drops; the
    latest repliers and reply time stay what they were (as in Slack)."""
    return msgspec.structs.replace(root, reply_count=max(0, root.reply_count - 1))
