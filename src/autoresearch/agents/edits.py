"""Applying search/replace and whole-file edits to text, in memory.

A search block must match exactly once. When it matches nowhere, a whitespace-tolerant
match is tried (each line compared with its surrounding whitespace stripped); the
replacement then takes the indentation of the matched text. Anything else is a
``ProposalError`` that tells the agent what went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from autoresearch.agents._base import Edit
from autoresearch.errors import ProposalError


def apply_edits(files: Mapping[str, str], edits: Iterable[Edit]) -> dict[str, str]:
    """Return the changed files only: path -> new text. ``files`` holds the current texts."""
    changed: dict[str, str] = {}
    for edit in edits:
        if edit.content is not None:
            changed[edit.path] = edit.content
            continue
        if edit.search is None or edit.replace is None:
            raise ProposalError(f"edit to {edit.path}: give either content, or search and replace")
        current = changed.get(edit.path, files.get(edit.path))
        if current is None:
            raise ProposalError(f"edit to {edit.path}: no such file (use content to create one)")
        search, replace = edit.search, edit.replace
        if "\r\n" in current:  # a CRLF file: blocks written with LF match and stay CRLF
            search, replace = _crlf(search), _crlf(replace)
        changed[edit.path] = replace_once(current, search, replace, edit.path)
    return changed


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def replace_once(text: str, search: str, replace: str, path: str = "") -> str:
    """Replace the single occurrence of ``search``; whitespace-tolerant as a fallback."""
    if not search:
        raise ProposalError(f"edit to {path}: empty search block")
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1)
    if count > 1:
        raise ProposalError(f"edit to {path}: search block matches {count} times; add context")
    return _replace_loose(text, search, replace, path)


def _replace_loose(text: str, search: str, replace: str, path: str) -> str:
    lines = text.splitlines(keepends=True)
    wanted = [line.strip() for line in search.strip("\n").splitlines()]
    while wanted and not wanted[-1]:
        wanted.pop()
    if not wanted:
        raise ProposalError(f"edit to {path}: search block is only whitespace")
    starts = [
        i for i in range(len(lines) - len(wanted) + 1)
        if all(lines[i + k].strip() == wanted[k] for k in range(len(wanted)))
    ]  # fmt: skip
    if len(starts) != 1:
        how = "not found" if not starts else f"matches {len(starts)} times"
        raise ProposalError(f"edit to {path}: search block {how} (even ignoring whitespace)")
    start, end = starts[0], starts[0] + len(wanted)
    new = _reindent(replace, _indent(lines[start]), _indent(search.strip("\n").splitlines()[0]))
    if new and not new.endswith("\n") and lines[end - 1].endswith("\n"):
        new += "\n"
    return "".join(lines[:start]) + new + "".join(lines[end:])


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(block: str, target: str, source: str) -> str:
    """Move ``block`` from the search block's indentation to the file's."""
    out = []
    for line in block.strip("\n").splitlines(keepends=False):
        body = line[len(source) :] if line.startswith(source) else line.lstrip()
        out.append(target + body if line.strip() else "")
    return "\n".join(out)


__all__ = ["apply_edits", "replace_once"]
