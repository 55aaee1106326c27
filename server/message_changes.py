"""The rules of changing a message after it is sent, as pure MessageChange
builders (storage/base.py): who may edit or delete, the edit window, what a
tombstone keeps, reaction and pin limits (docs/messages.md).

Each builder takes what the rule needs to know besides the message (who
asks, when, the limits) and returns ``change(current) -> new | None``, which
a store applies with ``MessageLog.change_message`` under its own
serialisation, so every rule is checked against the message's state at the
instant it changes. ``None`` is a no-op (nothing stored, no revision, no
event); an ApiError refuses the change (nothing stored). A store may call a
change more than once (MongoDB retries one that raced another), so these
are pure: no clock, no I/O, no state of their own.
"""

from __future__ import annotations

from msgspec.structs import replace

from hubbub.protocol.errors import ErrorCode
from hubbub.server.errors import ApiError
from hubbub.storage.base import MessageChange
from hubbub.storage.records import MentionAll, MessageRecord, Reaction
from hubbub.storage.threads import without_reply

DELETED = "message was deleted"


def refuse_deleted(current: MessageRecord) -> None:
    """A tombstone takes no change but a repeated delete (and its root's count)."""
    if current.deleted:
        raise ApiError(ErrorCode.CONFLICT, DELETED)


def edit(
    *, by: int, text: str, mentions: tuple[int, ...], mention_all: MentionAll | None, now: int, window_ms: int
) -> MessageChange:
    """``by`` replaces the text (``mentions`` resolved from it); ``window_ms``
    after sending it closes (0: never). The same text again is a no-op."""

    def change(current: MessageRecord) -> MessageRecord | None:
        if current.sender_id != by:
            raise ApiError(ErrorCode.FORBIDDEN, "only its author may edit a message")
        refuse_deleted(current)
        if window_ms and now - current.ts > window_ms:
            raise ApiError(ErrorCode.FORBIDDEN, "the edit window has closed")
        if current.text == text:
            return None
        return replace(current, text=text, edited_ts=now, mentions=mentions, mention_all=mention_all)

    return change


def delete(*, by: int, moderator: bool) -> MessageChange:
    """``by`` deletes the message: its author may, and a ``moderator`` (a
    channel's owner or admin) may delete anyone's. A tombstone again is a no-op."""

    def change(current: MessageRecord) -> MessageRecord | None:
        if current.sender_id != by and not moderator:
            raise ApiError(
                ErrorCode.FORBIDDEN, "only its author or the channel's owners and admins may delete a message"
            )
        if current.deleted:
            return None
        return tombstone(current)

    return change


def tombstone(current: MessageRecord) -> MessageRecord:
    """What a delete keeps: identity, place, thread fields and reply count; the content goes."""
    return replace(
        current,
        text="",
        deleted=True,
        mentions=(),
        mention_all=None,
        reactions=(),
        pinned_by=None,
        pinned_ts=None,
    )


def reply_removed(root: MessageRecord) -> MessageRecord | None:
    """A root after one of its replies was deleted (storage.threads.without_reply); a tombstone's too."""
    if root.reply_count == 0:
        return None
    return without_reply(root)


def add_reaction(*, user: int, emoji: str, max_emojis: int, max_per_user: int) -> MessageChange:
    """``user`` reacts with ``emoji`` (already normalised). At most
    ``max_emojis`` distinct emojis on the message, ``max_per_user`` of them the
    user's; reacting again with the same emoji is a no-op."""

    def change(current: MessageRecord) -> MessageRecord | None:
        refuse_deleted(current)
        existing = next((r for r in current.reactions if r.emoji == emoji), None)
        if existing is not None and user in existing.user_ids:
            return None
        if existing is None and len(current.reactions) >= max_emojis:
            raise ApiError(ErrorCode.TOO_LARGE, f"a message carries at most {max_emojis} distinct emojis")
        if sum(user in r.user_ids for r in current.reactions) >= max_per_user:
            raise ApiError(ErrorCode.TOO_LARGE, f"one user puts at most {max_per_user} emojis on a message")
        if existing is None:
            reactions = (*current.reactions, Reaction(emoji=emoji, user_ids=(user,)))
        else:
            reactions = tuple(
                Reaction(emoji=emoji, user_ids=(*r.user_ids, user)) if r is existing else r for r in current.reactions
            )
        return replace(current, reactions=reactions)

    return change


def remove_reaction(*, user: int, emoji: str) -> MessageChange:
    """``user`` takes back their ``emoji``; an emoji nobody is left on goes. Not reacted: a no-op."""

    def change(current: MessageRecord) -> MessageRecord | None:
        refuse_deleted(current)
        existing = next((r for r in current.reactions if r.emoji == emoji), None)
        if existing is None or user not in existing.user_ids:
            return None
        left = tuple(u for u in existing.user_ids if u != user)
        reactions = tuple(
            r if r is not existing else Reaction(emoji=emoji, user_ids=left)
            for r in current.reactions
            if r is not existing or left
        )
        return replace(current, reactions=reactions)

    return change


def pin(*, by: int, now: int, pinned: int, max_pins: int) -> MessageChange:
    """``by`` pins the message; ``pinned`` messages of the conversation already
    are, and at most ``max_pins`` may be. A pinned message again is a no-op."""

    def change(current: MessageRecord) -> MessageRecord | None:
        refuse_deleted(current)
        if current.pinned_by is not None:
            return None
        if pinned >= max_pins:
            raise ApiError(ErrorCode.TOO_LARGE, f"a conversation has at most {max_pins} pinned messages")
        return replace(current, pinned_by=by, pinned_ts=now)

    return change


def unpin(current: MessageRecord) -> MessageRecord | None:
    """The message is no longer pinned (by anyone); not pinned: a no-op."""
    refuse_deleted(current)
    if current.pinned_by is None:
        return None
    return replace(current, pinned_by=None, pinned_ts=None)
