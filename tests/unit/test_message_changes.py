"""server.message_changes: the rules of changing a message, applied to records directly (no store)."""

from __future__ import annotations

import msgspec
import pytest

from hubbub.protocol.errors import ErrorCode
from hubbub.server import message_changes as rules
from hubbub.server.errors import ApiError
from hubbub.storage.base import MessageChange
from hubbub.storage.records import MessageRecord, Reaction

AUTHOR, OTHER, THIRD = 1, 2, 3
SENT = 1_000_000


def message(**state: object) -> MessageRecord:
    base = MessageRecord(
        id="m1", conversation_id=7, seq=4, sender_id=AUTHOR, text="hello @bob", client_msg_id="c1", ts=SENT, rev=9
    )
    return msgspec.structs.replace(base, **state)


def refused(change: MessageChange, current: MessageRecord, code: str) -> str:
    with pytest.raises(ApiError) as info:
        change(current)
    assert info.value.code == ErrorCode(code)
    return info.value.message


def edit(by: int = AUTHOR, text: str = "hi", now: int = SENT + 10, window_ms: int = 0) -> MessageChange:
    return rules.edit(by=by, text=text, mentions=(THIRD,), mention_all="here", now=now, window_ms=window_ms)


# -- edit -------------------------------------------------------------------------


def test_an_edit_replaces_text_and_mentions_and_marks_the_time() -> None:
    current = message(mentions=(OTHER,))
    assert edit()(current) == message(text="hi", edited_ts=SENT + 10, mentions=(THIRD,), mention_all="here")


def test_only_the_author_edits_a_message_that_still_exists() -> None:
    assert refused(edit(by=OTHER), message(), "forbidden") == "only its author may edit a message"
    assert refused(edit(), message(deleted=True, text=""), "conflict") == "message was deleted"


def test_the_edit_window() -> None:
    assert edit(now=SENT + 5_000, window_ms=5_000)(message()) is not None
    assert refused(edit(now=SENT + 5_001, window_ms=5_000), message(), "forbidden") == "the edit window has closed"
    assert edit(now=SENT + 10**9, window_ms=0)(message()) is not None  # 0: no limit


def test_the_same_text_again_is_no_change() -> None:
    assert edit(text="hello @bob")(message()) is None


# -- delete -----------------------------------------------------------------------


def test_a_tombstone_keeps_identity_place_and_thread_and_drops_the_content() -> None:
    current = message(
        thread_root_id=None,
        reply_count=2,
        last_reply_ts=SENT + 1,
        repliers=(OTHER,),
        edited_ts=SENT + 2,
        mentions=(OTHER,),
        mention_all="channel",
        reactions=(Reaction(emoji="x", user_ids=(OTHER,)),),
        pinned_by=OTHER,
        pinned_ts=SENT + 3,
    )
    tombstone = rules.delete(by=AUTHOR, moderator=False)(current)
    assert tombstone == msgspec.structs.replace(
        current,
        text="",
        deleted=True,
        mentions=(),
        mention_all=None,
        reactions=(),
        pinned_by=None,
        pinned_ts=None,
    )
    assert rules.delete(by=AUTHOR, moderator=False)(tombstone) is None  # deleting it again: nothing to do


def test_who_may_delete() -> None:
    assert rules.delete(by=OTHER, moderator=True)(message()) is not None
    assert refused(rules.delete(by=OTHER, moderator=False), message(), "forbidden")


def test_a_removed_reply_lowers_its_roots_count_to_zero_at_most() -> None:
    root = message(reply_count=2, last_reply_ts=SENT + 5, repliers=(OTHER, THIRD))
    assert rules.reply_removed(root) == message(reply_count=1, last_reply_ts=SENT + 5, repliers=(OTHER, THIRD))
    assert rules.reply_removed(message(reply_count=0)) is None


# -- reactions --------------------------------------------------------------------


def add(user: int, emoji: str, max_emojis: int = 3, max_per_user: int = 2) -> MessageChange:
    return rules.add_reaction(user=user, emoji=emoji, max_emojis=max_emojis, max_per_user=max_per_user)


def test_reactions_keep_users_in_order_per_emoji_in_order_of_first_use() -> None:
    current = message()
    for user, emoji in ((OTHER, "a"), (THIRD, "b"), (AUTHOR, "a")):
        changed = add(user, emoji)(current)
        assert changed is not None
        current = changed
    assert current.reactions == (Reaction(emoji="a", user_ids=(OTHER, AUTHOR)), Reaction(emoji="b", user_ids=(THIRD,)))
    assert add(OTHER, "a")(current) is None  # already reacted with it


def test_reaction_limits() -> None:
    full = message(reactions=(Reaction(emoji="a", user_ids=(OTHER,)), Reaction(emoji="b", user_ids=(OTHER,))))
    assert "at most 2 emojis" in refused(add(OTHER, "c", max_emojis=3), full, "too_large")
    assert "at most 2 distinct emojis" in refused(add(THIRD, "c", max_emojis=2), full, "too_large")
    joined = add(THIRD, "a", max_emojis=2)(full)  # an emoji already there is no new one
    assert joined is not None and joined.reactions[0].user_ids == (OTHER, THIRD)


def test_removing_a_reaction_and_the_last_user_taking_the_emoji_away() -> None:
    current = message(reactions=(Reaction(emoji="a", user_ids=(OTHER, THIRD)), Reaction(emoji="b", user_ids=(OTHER,))))
    fewer = rules.remove_reaction(user=OTHER, emoji="b")(current)
    assert fewer is not None and fewer.reactions == (Reaction(emoji="a", user_ids=(OTHER, THIRD)),)
    one = rules.remove_reaction(user=OTHER, emoji="a")(fewer)
    assert one is not None and one.reactions == (Reaction(emoji="a", user_ids=(THIRD,)),)
    assert rules.remove_reaction(user=AUTHOR, emoji="a")(one) is None  # never reacted
    assert rules.remove_reaction(user=THIRD, emoji="z")(one) is None


def test_a_tombstone_takes_no_reaction_nor_pin() -> None:
    tombstone = message(deleted=True, text="")
    for change in (
        add(OTHER, "a"),
        rules.remove_reaction(user=OTHER, emoji="a"),
        rules.pin(by=OTHER, now=SENT, pinned=0, max_pins=3),
        rules.unpin,
    ):
        assert refused(change, tombstone, "conflict") == "message was deleted"


# -- pins -------------------------------------------------------------------------


def test_pin_and_unpin() -> None:
    pinned = rules.pin(by=OTHER, now=SENT + 7, pinned=2, max_pins=3)(message())
    assert pinned == message(pinned_by=OTHER, pinned_ts=SENT + 7)
    assert rules.pin(by=THIRD, now=SENT + 8, pinned=3, max_pins=3)(pinned) is None  # already pinned, even when full
    assert "at most 3 pinned" in refused(rules.pin(by=OTHER, now=SENT, pinned=3, max_pins=3), message(), "too_large")
    assert rules.unpin(pinned) == message()
    assert rules.unpin(message()) is None
