"""Which reaction texts are emoji, and the one form each is stored in.

A reaction names one emoji, either as Unicode (any sequence the ``emoji``
library knows as exactly one emoji: skin tones, ZWJ sequences, flags and
keycaps included) or as a ``:short_name:`` of the library's alias names
(``:thumbsup:``, ``:+1:``, ``:tada:``) or its CLDR names (``:thumbs_up:``).
Both become the fully-qualified Unicode emoji, so ``❤``, ``❤️`` and
``:heart:`` are one reaction. Which emoji exist is the library's word: this
module keeps no table of its own.
"""

from __future__ import annotations

import re

import emoji as emoji_library

from hubbub.protocol.frames import MAX_EMOJI_CHARS

_SHORT_NAME = re.compile(r":[^:\s]+:")
"""One ``:name:``, matched whole: names hold no colon and no white space."""


def normalize(text: str) -> str | None:
    """The canonical Unicode emoji ``text`` names; None unless it is exactly one known emoji.

    Nothing is stripped or case-folded: ``" 👍"`` and ``":ThumbsUp:"`` are not emoji.
    """
    if len(text) > MAX_EMOJI_CHARS:
        return None  # longer than any request may carry, and than any emoji (10 code points at most)
    if _SHORT_NAME.fullmatch(text):
        text = emoji_library.emojize(text, language="alias")  # unchanged when the name is unknown
    if not emoji_library.is_emoji(text):
        return None
    return _fully_qualified(text)


def _fully_qualified(unicode_emoji: str) -> str:
    """The fully-qualified form of one emoji (``❤`` without its variation selector becomes ``❤️``).

    Every form of an emoji shares its CLDR name, and the name gives the fully-qualified form.
    """
    return emoji_library.emojize(emoji_library.demojize(unicode_emoji))
