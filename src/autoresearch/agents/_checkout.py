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

The CLI's own git gets a repository of its own (``Checkout.environment``): HEAD at the parent,
a copy of the index, git's objects read through an alternate, and what it commits written
there. Confined, it cannot write the repository's own files (a planted object, a config
with a filter), and its commits still work.

After the CLI ran, git is told where the repository is (``--git-dir``, ``--work-tree``, as
found before it ran) rather than left to look up from the task folder: a ``.git`` the CLI
planted there would be obeyed, and its config can make git run a command (a filter).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoresearch.edits import glob_regex, too_large
from autoresearch.errors import AgentUnavailable, ProposalError, WorkspaceError
from autoresearch.git import Git, remove_nested_git

MAX_COMMIT_BYTES = 1 << 20  # of the CLI's last commit object, read for its subject


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
    admin: Path  # the checkout's git folder, as found before the CLI ran
    own: Path  # the CLI's own repository (see the module's docstring)

    @classmethod
    def open(cls, workdir: Path, parent: str, own: Path) -> Checkout:
        """Note the checkout's state and make the CLI's own repository in the new folder ``own``."""
        top = Path(git(workdir, "rev-parse", "--show-toplevel").strip())
        admin = Path(git(top, "rev-parse", "--absolute-git-dir").strip())
        common = Path(git(top, "rev-parse", "--path-format=absolute", "--git-common-dir").strip())
        base = git(workdir, "rev-parse", f"{parent or 'HEAD'}^{{commit}}").strip()
        ref = git(top, "symbolic-ref", "-q", "HEAD", check=False).strip() or None
        prefix = git(workdir, "rev-parse", "--show-prefix").strip()
        untracked = frozenset(_untracked(lambda *a: git(top, *a)))
        for folder in ("objects/info", "refs/heads", "refs/tags", "info"):
            (own / folder).mkdir(parents=True)
        (own / "HEAD").write_text(base + "\n")
        (own / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = false\n")
        (own / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
        for name, source in (("index", admin / "index"), ("info/exclude", common / "info" / "exclude")):
            if source.is_file():
                shutil.copyfile(source, own / name)
        return cls(workdir, top, prefix, base, ref, untracked, admin, own)

    def environment(self) -> dict[str, str]:
        """What points the CLI's git at its own repository."""
        return {"GIT_DIR": str(self.own), "GIT_WORK_TREE": str(self.top)}

    def _git(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        """git in the checkout (run from ``cwd``, default its root), the repository named
        outright, and no look inside a folder that holds a repository of its own."""
        pin = (f"--git-dir={self.admin}", f"--work-tree={self.top}", "-c", "diff.ignoreSubmodules=all")
        return git(cwd or self.top, *pin, *args, check=check)

    def changes(self, editable: Sequence[str], max_file_kb: float | None = None) -> Changes:
        """The CLI's changes since ``base``; see the module's docstring for what is kept. A file
        grown past ``max_file_kb`` is refused before any diff reads it (a sparse file of any
        size costs the CLI nothing; a diff of it would write it out)."""
        remove_nested_git(self.top)  # before any git call: a repository it made has a config
        allowed = [glob_regex(g, anywhere=False) for g in editable]
        new = [p for p in _untracked(self._git) if p not in self.untracked]
        kept_new = [p for p in new if self._editable(p, allowed)]
        if kept_new:
            self._git("add", "--intent-to-add", "--", *_literal(kept_new))
        changed = _name_status(self._git("diff", "--name-status", "--no-renames", "-z", self.base))
        added = [p for status, p in changed if status == "A" and not self._editable(p, allowed)]
        dropped = sorted({*added, *(p for p in new if p not in kept_new)})
        kept = [p for _, p in changed if p not in added]
        outside = [p for p in kept if not p.startswith(self.prefix)]
        if outside:
            raise ProposalError(
                f"the command changed files outside the task folder: {', '.join(outside[:5])}"
            )
        if max_file_kb is not None:
            self._check_sizes(kept, max_file_kb)
        return Changes(
            self._patch(kept), tuple(self._relative(p) for p in dropped), self._subject()
        )

    def _check_sizes(self, paths: Sequence[str], max_file_kb: float) -> None:
        sizes = {}
        for path in paths:
            try:
                sizes[path] = (self.top / path).lstat().st_size
            except OSError:  # deleted: what it held counts against what the others grew
                sizes[path] = 0
        if sum(sizes.values()) <= max_file_kb * 1024:  # the common case: no git call
            return
        grown = {}
        for path, size in sizes.items():
            before = self._git("cat-file", "-s", f"{self.base}:{path}", check=False).strip()
            grown[self._relative(path)] = (size, int(before) if before.isdigit() else 0)
        why = too_large(grown, max_file_kb, by="the command")
        if why:
            raise ProposalError(why)

    def _editable(self, path: str, allowed: Sequence[re.Pattern[str]]) -> bool:
        return path.startswith(self.prefix) and any(r.match(self._relative(path)) for r in allowed)

    def _relative(self, path: str) -> str:
        return path.removeprefix(self.prefix) if path.startswith(self.prefix) else f"/{path}"

    def _patch(self, paths: Sequence[str]) -> str:
        if not paths:
            return ""
        flags = ("--binary", "--no-color", "--no-ext-diff", "--no-renames", "--relative")
        patch = self._git("diff", *flags, self.base, "--", *_literal(paths, top=True), cwd=self.workdir)
        return patch + "\n" if patch else ""  # the wrapper strips the final newline

    def _subject(self) -> str:
        """The subject of the newest commit the CLI made on top of ``base``, if any: read from
        its own repository's files (git there would obey a config the CLI wrote)."""
        head = _read(self.own / "HEAD", 200).strip()
        ref = re.fullmatch(r"ref: (refs/heads/[\w.-]+(?:/[\w.-]+)*)", head)
        if ref is not None and ".." not in ref.group(1):
            head = _read(self.own / ref.group(1), 200).strip()
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head) or head == self.base:
            return ""
        packed = read_regular(self.own / "objects" / head[:2] / head[2:], MAX_COMMIT_BYTES)
        try:
            raw = zlib.decompressobj().decompress(packed or b"", MAX_COMMIT_BYTES)
        except zlib.error:
            return ""
        header, _, body = raw.partition(b"\0")
        if not header.startswith(b"commit "):
            return ""
        message = body.decode("utf-8", errors="replace").partition("\n\n")[2]
        return message.strip().split("\n", 1)[0].strip()

    def restore(self) -> None:
        """Put the checkout back at ``base``, clean, whatever the CLI did (branches and
        repositories of its own included)."""
        remove_nested_git(self.top)
        current = self._git("symbolic-ref", "-q", "HEAD", check=False).strip()
        if current != (self.head_ref or ""):
            target = (
                ["--detach", self.base]
                if self.head_ref is None
                else [self.head_ref.removeprefix("refs/heads/")]
            )
            self._git("checkout", "-q", "-f", *target, check=False)
        self._git("reset", "-q", "--hard", self.base)
        excludes = [
            arg for path in sorted(self.untracked) for arg in ("-e", "/" + _escape_glob(path))
        ]
        self._git("clean", "-q", "-f", "-d", *excludes)


def read_regular(path: Path, limit: int) -> bytes | None:
    """At most ``limit`` bytes of ``path`` when it is a regular file; ``None`` when it is not,
    or is a link (the CLI can leave a link to a file only this process may read, or a FIFO
    that would block the read for ever, where its output or description should be)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fh.read(limit)


def _read(path: Path, limit: int) -> str:
    return (read_regular(path, limit) or b"").decode("utf-8", errors="replace")


def _untracked(run: Callable[..., str]) -> list[str]:
    out = run("ls-files", "-z", "--others", "--exclude-standard")
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


__all__ = ["Changes", "Checkout", "git", "read_regular"]
