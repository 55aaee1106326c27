"""Message texts for the benchmarks: words from a made-up vocabulary, drawn with
Zipf frequencies (searchbench, appendbench). Depends on nothing of the
server, so a benchmark can run against another revision's store."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator

VOCABULARY = 20_000
SYLLABLES = [a + b for a in "bcdfghjklmnprstvz" for b in "aeiou"]


def vocabulary(seed: int) -> list[str]:
    """``VOCABULARY`` distinct lowercase words, in Zipf rank order."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def texts(count: int, words: list[str], seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, len(words) + 1)))
    total = cumulative[-1]
    for _ in range(count):
        n = rng.randint(6, 16)
        yield " ".join(words[bisect.bisect(cumulative, rng.random() * total)] for _ in range(n))
