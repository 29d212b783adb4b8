"""Word wrapping and justifying by display width.

Widths are terminal columns: East Asian wide and full-width characters take two columns,
combining marks none, everything else one. Paragraphs are separated by blank lines.
"""

from __future__ import annotations

import unicodedata

WIDTH_CACHE_SIZE = 0  # words whose display width is remembered (0: measure every time)
ASCII_FAST_PATH = 0  # 1: an ASCII-only word is as wide as it is long (no per-character lookup)

_widths: dict[str, int] = {}  # word -> display width, oldest first


def char_width(ch: str) -> int:
    """Columns one character takes: 0, 1 or 2."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _measure(text: str) -> int:
    total = 0
    for ch in text:
        total += char_width(ch)
    return total


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (no tabs or line breaks expected)."""
    if ASCII_FAST_PATH and text.isascii():
        return len(text)
    if WIDTH_CACHE_SIZE <= 0:
        return _measure(text)
    width = _widths.get(text)
    if width is None:
        width = _measure(text)
        while len(_widths) >= WIDTH_CACHE_SIZE:  # full: forget the oldest
            del _widths[next(iter(_widths))]
        _widths[text] = width
    return width


def _break_word(word: str, width: int) -> list[str]:
    """``word`` in pieces of at most ``width`` columns (a piece holds at least one character)."""
    pieces, piece, used = [], "", 0
    for ch in word:
        w = char_width(ch)
        if piece and used + w > width:
            pieces.append(piece)
            piece, used = "", 0
        piece += ch
        used += w
    pieces.append(piece)
    return pieces


def _lines(text: str, width: int) -> list[tuple[list[str], int]]:
    """Greedy wrap of one paragraph: each line's words and its width with single spaces."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    lines: list[tuple[list[str], int]] = []
    words: list[str] = []
    used = 0
    for word in text.split():
        w = display_width(word)
        if w > width:  # too long for any line: it starts a line and is broken across lines
            if words:
                lines.append((words, used))
            pieces = _break_word(word, width)
            lines.extend(([piece], display_width(piece)) for piece in pieces[:-1])
            words, used = [pieces[-1]], display_width(pieces[-1])
        elif not words:
            words, used = [word], w
        elif used + 1 + w <= width:
            words.append(word)
            used += 1 + w
        else:
            lines.append((words, used))
            words, used = [word], w
    if words:
        lines.append((words, used))
    return lines


def _justified(words: list[str], used: int, width: int) -> str:
    """One line padded to ``width`` by widening its gaps, the leftmost gaps first."""
    gaps = len(words) - 1
    if gaps == 0 or used >= width:
        return " ".join(words)
    extra, left = divmod(width - used, gaps)
    out = words[0]
    for i, word in enumerate(words[1:]):
        out += " " * (1 + extra + (1 if i < left else 0)) + word
    return out


def paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text``: runs of non-blank lines, each joined by single newlines."""
    found, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    if current:
        found.append("\n".join(current))
    return found


def wrap(text: str, width: int = 70) -> list[str]:
    """The lines of one paragraph wrapped to ``width`` columns (words split on whitespace).

    A word wider than ``width`` starts a new line and is broken into pieces; words may
    follow its last piece. Empty or blank text gives no lines.
    """
    return [" ".join(words) for words, _ in _lines(text, width)]


def fill(text: str, width: int = 70, justify: bool = False) -> str:
    """Every paragraph of ``text`` wrapped to ``width``; paragraphs apart by a blank line.

    With ``justify``, every line but the last of a paragraph is padded to exactly ``width``
    columns (lines of one word are left as they are).
    """
    out = []
    for para in paragraphs(text):
        lines = _lines(para, width)
        if justify:
            rendered = [_justified(words, used, width) for words, used in lines[:-1]]
            rendered.append(" ".join(lines[-1][0]))
        else:
            rendered = [" ".join(words) for words, _ in lines]
        out.append("\n".join(rendered))
    return "\n\n".join(out)
