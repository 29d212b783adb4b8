"""Edits that change only the targeted literals: the rest of each file stays byte for byte."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from autoresearch.agents._base import Edit
from autoresearch.agents._constants import Constant, Value, rewrite, statement_lines
from autoresearch.edits import apply_edits
from autoresearch.errors import ProposalError


def make_edits(files: Mapping[str, str], changes: Mapping[Constant, Value]) -> tuple[Edit, ...]:
    """Search/replace edits (one per group of touched lines) that change only the literals.

    Falls back to a whole-file edit where the search blocks would not apply exactly once
    (the same line text elsewhere in the file): the result must equal ``rewrite``'s.
    """
    edits: list[Edit] = []
    by_path: dict[str, dict[Constant, Value]] = {}
    for const, value in changes.items():
        by_path.setdefault(const.path, {})[const] = value
    for path, file_changes in sorted(by_path.items()):
        text = files[path]
        expected = rewrite(text, file_changes)
        blocks = _line_blocks(text, file_changes)
        try:
            ok = apply_edits({path: text}, blocks).get(path) == expected
        except ProposalError:
            ok = False
        edits.extend(blocks if ok else [Edit(path, content=expected)])
    return tuple(edits)


def _line_blocks(text: str, changes: Mapping[Constant, Value]) -> list[Edit]:
    groups: list[tuple[int, int, list[Constant]]] = []
    for const in sorted(changes, key=lambda c: c.start):
        start, end = statement_lines(text, const)
        if groups and start < groups[-1][1]:
            groups[-1] = (groups[-1][0], max(end, groups[-1][1]), [*groups[-1][2], const])
        else:
            groups.append((start, end, [const]))
    edits = []
    for start, end, consts in groups:
        local = {_shifted(c, start): changes[c] for c in consts}
        block = text[start:end]
        edits.append(Edit(consts[0].path, search=block, replace=rewrite(block, local)))
    return edits


def _shifted(const: Constant, offset: int) -> Constant:
    return dataclasses.replace(const, start=const.start - offset, end=const.end - offset)


__all__ = ["make_edits"]
