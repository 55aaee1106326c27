"""protocol.emoji.normalize: which reaction texts are one emoji, and the form they are stored in."""

from __future__ import annotations

import pytest

from hubbub.protocol.emoji import normalize
from hubbub.protocol.frames import MAX_EMOJI_CHARS

THUMBS_UP = "\N{THUMBS UP SIGN}"
RED_HEART = "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"
MEDIUM_SKIN_TONE = "\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"
ZWJ = "\N{ZERO WIDTH JOINER}"
FAMILY = f"\N{MAN}{ZWJ}\N{WOMAN}{ZWJ}\N{GIRL}"
ASTRONAUT = f"\N{MAN}{MEDIUM_SKIN_TONE}{ZWJ}\N{ROCKET}"
RAINBOW_FLAG = f"\N{WAVING WHITE FLAG}\N{VARIATION SELECTOR-16}{ZWJ}\N{RAINBOW}"
FRANCE = "\N{REGIONAL INDICATOR SYMBOL LETTER F}\N{REGIONAL INDICATOR SYMBOL LETTER R}"
KEYCAP_1 = "1\N{VARIATION SELECTOR-16}\N{COMBINING ENCLOSING KEYCAP}"


@pytest.mark.parametrize(
    "text",
    [
        THUMBS_UP,
        f"{THUMBS_UP}{MEDIUM_SKIN_TONE}",
        FAMILY,
        ASTRONAUT,
        RAINBOW_FLAG,
        FRANCE,
        KEYCAP_1,
        RED_HEART,
        "\N{MELTING FACE}",  # Unicode 14: the library's table is current, ours would not be
    ],
    ids=["plain", "skin-tone", "zwj-family", "zwj-skin-tone", "zwj-flag", "flag", "keycap", "heart", "recent"],
)
def test_a_fully_qualified_unicode_emoji_is_itself(text: str) -> None:
    assert normalize(text) == text


def test_forms_of_one_emoji_are_one_reaction() -> None:
    # The heart without its variation selector (unqualified) is stored as the fully-qualified one.
    assert normalize("\N{HEAVY BLACK HEART}") == RED_HEART
    assert normalize(":heart:") == normalize(":red_heart:") == RED_HEART


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (":thumbsup:", THUMBS_UP),
        (":+1:", THUMBS_UP),
        (":thumbs_up:", THUMBS_UP),  # the CLDR name
        (":tada:", "\N{PARTY POPPER}"),
        (":thumbs_up_medium_skin_tone:", f"{THUMBS_UP}{MEDIUM_SKIN_TONE}"),
        (":fr:", FRANCE),
    ],
)
def test_a_short_name_becomes_its_unicode_emoji(name: str, expected: str) -> None:
    assert normalize(name) == expected


@pytest.mark.parametrize(
    "text",
    [
        ":nope:",  # no such name
        ":Thumbsup:",  # names are matched as the library spells them
        "thumbsup",
        ":thumbsup",
        "::",
        ": thumbsup:",
        f"{THUMBS_UP}{THUMBS_UP}",  # two emojis
        ":thumbsup::tada:",  # two names
        f":thumbsup:{THUMBS_UP}",
        f"ok {THUMBS_UP}",  # text with an emoji
        f"{THUMBS_UP} ",  # nothing is stripped
        "a",
        "1",  # a keycap's base alone is a digit
        f"\N{SAUROPOD}{ZWJ}",  # a dangling joiner
        "",
        THUMBS_UP * (MAX_EMOJI_CHARS + 1),
        ":" + "a" * MAX_EMOJI_CHARS + ":",  # over-long, though shaped like a name
    ],
    ids=[
        "unknown-name",
        "name-case",
        "bare-word",
        "half-name",
        "empty-name",
        "spaced-name",
        "two-emojis",
        "two-names",
        "name-and-emoji",
        "text-with-emoji",
        "trailing-space",
        "letter",
        "digit",
        "dangling-zwj",
        "empty",
        "over-long",
        "over-long-name",
    ],
)
def test_anything_but_exactly_one_known_emoji_is_none(text: str) -> None:
    assert normalize(text) is None


def test_the_result_is_stable() -> None:
    # What is stored normalises to itself, so a stored reaction and a new request for it match.
    for text in (":+1:", "\N{HEAVY BLACK HEART}", ASTRONAUT, ":tada:"):
        canonical = normalize(text)
        assert canonical is not None
        assert normalize(canonical) == canonical
