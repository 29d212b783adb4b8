"""Words and word counts.

A word is a run of letters and digits (in any script), with inner apostrophes kept:
``don't``, ``l'eau`` and ``rock’n’roll`` are one word each. Punctuation, spaces and
underscores separate words.
"""

from __future__ import annotations

import re
from collections import Counter

USE_REGEX = 0  # 0: scan the text character by character; 1: one precompiled regular expression
COUNT_CHUNK_SIZE = 1  # words lower-cased and counted per step of word_counts

apostrophes = frozenset("'\u2019")  # ' and ’
word_pattern = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")  # [^\W_]: what str.isalnum accepts


def tokenize(text: str) -> list[str]:
    """The words of ``text``, in order, as written (case kept)."""
    if USE_REGEX:
        return word_pattern.findall(text)
    return _scan(text)


def _scan(text: str) -> list[str]:
    words = []
    start = -1  # where the current word began; -1 between words
    n = len(text)
    for i in range(n):
        ch = text[i]
        if ch.isalnum():
            if start < 0:
                start = i
        elif start >= 0 and ch in apostrophes and i + 1 < n and text[i + 1].isalnum():
            continue  # an apostrophe inside a word: the word goes on
        elif start >= 0:
            words.append(text[start:i])
            start = -1
    if start >= 0:
        words.append(text[start:])
    return words


def word_counts(text: str) -> Counter[str]:
    """How often each word occurs, case-folded to lower case."""
    counts: Counter[str] = Counter()
    words = tokenize(text)
    step = max(1, COUNT_CHUNK_SIZE)
    for i in range(0, len(words), step):
        counts.update([word.lower() for word in words[i : i + step]])
    return counts


def top_words(text: str, n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent words with their counts; ties in alphabetical order."""
    if n <= 0:
        return []
    ranked = sorted(word_counts(text).items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]
