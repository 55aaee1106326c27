"""Who a message's text mentions: ``@username``, ``@channel`` and ``@here``.

Pure text rules, no lookup: the server resolves the usernames found here
among the conversation's members (a name that is no member's is simply not a
mention). A mention is ``@`` followed by a name of the username rule
(protocol.frames.USERNAME_PATTERN, in any case: ``@Alice`` is ``alice``),
where the ``@`` starts the text or follows a character that is neither a word
character nor another ``@``: so ``a@b.co`` (an email address) and ``@@bob``
mention nobody. A name's trailing ``.`` and ``-`` are punctuation, not part of
it (``thanks @bob.`` mentions ``bob``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from hubbub.protocol.frames import MentionAll

MAX_MENTIONS = 50
"""Distinct usernames one message may mention; further ones are not mentions."""
RESERVED_MENTIONS = frozenset({"channel", "here", "everyone"})
"""Words after ``@`` that are never usernames: ``@channel`` and ``@here`` notify
everyone (Mentions.all); ``everyone`` is kept back for a later version."""
USERNAME_MIN_CHARS = 3
USERNAME_MAX_CHARS = 32
"""The username rule's lengths (protocol.frames.Username)."""

_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.-]*)")
"""``@`` not after a word character or ``@``, then a name as the username rule
has it, in either case (ASCII only, as usernames are)."""
_TRAILING_PUNCTUATION = ".-"


class Mentions(NamedTuple):
    usernames: tuple[str, ...] = ()
    """Distinct usernames, lowercase, in order of first appearance, at most MAX_MENTIONS."""
    all: MentionAll | None = None
    """``channel`` for ``@channel``, ``here`` for ``@here``; ``channel`` when the text has both."""


NO_MENTIONS = Mentions()


def parse(text: str) -> Mentions:
    """Every mention in ``text`` (see the module docstring for what is one)."""
    if "@" not in text:
        return NO_MENTIONS  # most messages: no regex pass at all
    usernames: dict[str, None] = {}  # ordered and distinct
    words: set[str] = set()
    for match in _MENTION.finditer(text):
        name = match[1].rstrip(_TRAILING_PUNCTUATION).lower()
        if name in RESERVED_MENTIONS:
            words.add(name)
        elif _is_username(name) and len(usernames) < MAX_MENTIONS:
            usernames[name] = None
    return Mentions(usernames=tuple(usernames), all=_mention_all(words))


def _is_username(name: str) -> bool:
    """Within the username rule's lengths (its characters are the regex's)."""
    return USERNAME_MIN_CHARS <= len(name) <= USERNAME_MAX_CHARS


def _mention_all(words: set[str]) -> MentionAll | None:
    if "channel" in words:
        return "channel"
    if "here" in words:
        return "here"
    return None
