"""protocol.mentions.parse: which @names a message's text mentions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubbub.protocol.frames import USERNAME_PATTERN
from hubbub.protocol.mentions import MAX_MENTIONS, NO_MENTIONS, RESERVED_MENTIONS, Mentions, parse


@pytest.mark.parametrize(
    ("text", "usernames"),
    [
        ("@alice", ("alice",)),
        ("hi @alice and @bob", ("alice", "bob")),
        ("(@alice) [@bob], @carol; 'dave': @erin!", ("alice", "bob", "carol", "erin")),
        ("line one\n@alice\t@bob", ("alice", "bob")),
        ("thanks @bob.", ("bob",)),  # a full stop ends the sentence, not the name
        ("@bob... @carol-- @dave.-", ("bob", "carol", "dave")),
        ("@j.doe and @j-doe and @j_doe_", ("j.doe", "j-doe", "j_doe_")),  # inner punctuation is the name's
        ("@bob's turn", ("bob",)),
        ("@Alice @ALICE @alice", ("alice",)),  # uppercase normalised, then deduplicated
        ("@bob @alice @bob", ("bob", "alice")),  # order of first appearance
        ("@007", ("007",)),
        ("@" + "a" * 32, ("a" * 32,)),
        ("ü@alice", ()),  # a Unicode word character before the @
    ],
)
def test_usernames(text: str, usernames: tuple[str, ...]) -> None:
    assert parse(text).usernames == usernames


@pytest.mark.parametrize(
    "text",
    [
        "mail alice@example.com",  # an email address
        "a@b.c",
        "@@bob",  # a doubled @
        "x@@bob",
        "@ bob",
        "@_bob",  # a name starts with a letter or digit
        "@.bob",
        "@ab",  # too short for a username
        "@ab.",
        "@" + "a" * 33,  # too long: not cut down to some other name
        "@",
        "no mention here",
        "",
        "@élodie",  # usernames are ASCII
    ],
)
def test_no_mention(text: str) -> None:
    assert parse(text) == NO_MENTIONS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@channel lunch!", Mentions(all="channel")),
        ("@here anyone?", Mentions(all="here")),
        ("@HERE", Mentions(all="here")),
        ("@here and @channel", Mentions(all="channel")),  # @channel wins
        ("@channel @here", Mentions(all="channel")),
        ("@here, @bob.", Mentions(usernames=("bob",), all="here")),
        ("@channel.", Mentions(all="channel")),
        ("@everyone", NO_MENTIONS),  # reserved, and no username
        ("me@channel", NO_MENTIONS),
        ("@channels @hereby", Mentions(usernames=("channels", "hereby"))),  # only the whole words are reserved
    ],
)
def test_channel_and_here(text: str, expected: Mentions) -> None:
    assert parse(text) == expected


def test_reserved_words_are_never_usernames() -> None:
    text = " ".join(f"@{word}" for word in sorted(RESERVED_MENTIONS))
    assert parse(text).usernames == ()


def test_at_most_max_mentions_usernames_the_first_ones() -> None:
    names = [f"user{i:03}" for i in range(MAX_MENTIONS + 10)]
    mentions = parse(" ".join(f"@{n}" for n in names) + " @channel")
    assert mentions.usernames == tuple(names[:MAX_MENTIONS])
    assert mentions.all == "channel"  # the cap is on usernames only


def test_repeats_do_not_count_against_the_cap() -> None:
    names = [f"user{i:03}" for i in range(MAX_MENTIONS)]
    text = " ".join(f"@{names[0]} @{n}" for n in names)
    assert parse(text).usernames == tuple(names)


@given(st.text(alphabet=st.sampled_from("@aZ09_.-é \n,!'"), max_size=200))
def test_every_username_found_is_a_valid_distinct_username(text: str) -> None:
    usernames = parse(text).usernames
    assert len(set(usernames)) == len(usernames) <= MAX_MENTIONS
    for name in usernames:
        assert re.search(USERNAME_PATTERN, name) and 3 <= len(name) <= 32, name
        assert name not in RESERVED_MENTIONS
        assert f"@{name}" in text.lower()
