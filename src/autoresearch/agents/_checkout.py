"""The checkout a coding-agent CLI works in: what it changed, and putting it back.

Before the CLI runs, ``Checkout.open`` notes the parent commit, the branch and the untracked
files already there (links, caches). Afterwards ``Checkout.changes`` is everything the CLI
changed since the parent, commits included, as one patch with task-relative paths:

- a new file (untracked, or added in a commit of the CLI's own) that matches no ``editable``
  glob is dropped, not refused: it is the CLI's own state (``.aider*``, caches) and never
  reaches a run, because the engine checks the worktree out again before applying the patch;
- a change to a tracked file stays in the patch, so that the workspace refuses it with the
  allowlist's reason (a protected file, a file that is not editable);
- a change to a tracked file outside the task folder is a ``ProposalError``.

``Checkout.restore`` puts the checkout back at the parent, clean, whatever the CLI did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoresearch.edits import glob_regex
from autoresearch.errors import AgentUnavailable, ProposalError, WorkspaceError
from autoresearch.git import Git


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """One git command through the workspace's wrapper; a failure stops the agent."""
    try:
        return Git(cwd)(*args, check=check)
    except (WorkspaceError, OSError) as exc:
        raise AgentUnavailable(f"the coding-agent checkout: {exc}") from exc


@dataclass(frozen=True)
class Changes:
    """What the CLI changed since the parent commit."""

    patch: str  # a git diff with task-relative paths; "" when nothing kept changed
    dropped: tuple[str, ...]  # new files matching no editable glob, left out of the patch
    subject: str  # the subject of the CLI's last own commit; "" when it made none


@dataclass(frozen=True)
class Checkout:
    """The state of the CLI's checkout before it ran, to diff against and restore."""

    workdir: Path  # the task folder, where the CLI runs
    top: Path  # the worktree root
    prefix: str  # the task folder inside it: "" or "sub/dir/"
    base: str  # the parent commit
    head_ref: str | None  # the branch HEAD was on; None when detached
    untracked: frozenset[str]  # untracked paths present before (links, caches): left alone

    @classmethod
    def open(cls, workdir: Path, parent: str) -> Checkout:
        top = Path(git(workdir, "rev-parse", "--show-toplevel").strip())
        base = git(workdir, "rev-parse", f"{parent or 'HEAD'}^{{commit}}").strip()
        ref = git(top, "symbolic-ref", "-q", "HEAD", check=False).strip() or None
        prefix = git(workdir, "rev-parse", "--show-prefix").strip()
        return cls(workdir, top, prefix, base, ref, frozenset(_untracked(top)))

    def changes(self, editable: Sequence[str]) -> Changes:
        """The CLI's changes since ``base``; see the module's docstring for what is kept."""
        allowed = [glob_regex(g) for g in editable]
        new = [p for p in _untracked(self.top) if p not in self.untracked]
        kept_new = [p for p in new if self._editable(p, allowed)]
        if kept_new:
            git(self.top, "add", "--intent-to-add", "--", *_literal(kept_new))
        changed = _name_status(
            git(self.top, "diff", "--name-status", "--no-renames", "-z", self.base)
        )
        added = [p for status, p in changed if status == "A" and not self._editable(p, allowed)]
        dropped = sorted({*added, *(p for p in new if p not in kept_new)})
        kept = [p for _, p in changed if p not in added]
        outside = [p for p in kept if not p.startswith(self.prefix)]
        if outside:
            raise ProposalError(
                f"the command changed files outside the task folder: {', '.join(outside[:5])}"
            )
        return Changes(
            self._patch(kept), tuple(self._relative(p) for p in dropped), self._subject()
        )

    def _editable(self, path: str, allowed: Sequence[re.Pattern[str]]) -> bool:
        return path.startswith(self.prefix) and any(r.match(self._relative(path)) for r in allowed)

    def _relative(self, path: str) -> str:
        return path.removeprefix(self.prefix) if path.startswith(self.prefix) else f"/{path}"

    def _patch(self, paths: Sequence[str]) -> str:
        if not paths:
            return ""
        flags = ("--binary", "--no-color", "--no-ext-diff", "--no-renames", "--relative")
        patch = git(self.workdir, "diff", *flags, self.base, "--", *_literal(paths, top=True))
        return patch + "\n" if patch else ""  # the wrapper strips the final newline

    def _subject(self) -> str:
        """The subject of the newest commit the CLI made on top of ``base``, if any."""
        return git(self.top, "log", "-1", "--format=%s", f"{self.base}..HEAD", check=False).strip()

    def restore(self) -> None:
        """Put the checkout back at ``base``, clean, whatever the CLI did (branches included)."""
        current = git(self.top, "symbolic-ref", "-q", "HEAD", check=False).strip()
        if current != (self.head_ref or ""):
            target = (
                ["--detach", self.base]
                if self.head_ref is None
                else [self.head_ref.removeprefix("refs/heads/")]
            )
            git(self.top, "checkout", "-q", "-f", *target, check=False)
        git(self.top, "reset", "-q", "--hard", self.base)
        excludes = [
            arg for path in sorted(self.untracked) for arg in ("-e", "/" + _escape_glob(path))
        ]
        git(self.top, "clean", "-q", "-f", "-d", *excludes)


def _untracked(top: Path) -> list[str]:
    out = git(top, "ls-files", "-z", "--others", "--exclude-standard")
    return [p for p in out.split("\0") if p]


def _name_status(out: str) -> list[tuple[str, str]]:
    """``git diff --name-status -z`` output as (status letter, path) pairs."""
    fields = [f for f in out.split("\0") if f]
    return [(fields[i][:1], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]


def _literal(paths: Iterable[str], *, top: bool = False) -> list[str]:
    """Pathspecs that match exactly these paths (no glob magic; from the root with ``top``)."""
    magic = ":(top,literal)" if top else ":(literal)"
    return [magic + p for p in paths]


def _escape_glob(path: str) -> str:
    return re.sub(r"([*?\[\]\\!#])", r"\\\1", path)


__all__ = ["Changes", "Checkout", "git"]
