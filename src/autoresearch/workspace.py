"""Git: the session branch, slot worktrees, candidate commits, the allowlist, protected files.

All git access goes through ``Git``, one small wrapper over the git CLI. The user's own
checkout is never touched: each slot works in its own worktree under
``.autoresearch/worktrees/``, candidates are committed there on a detached HEAD, and the
session branch ``autoresearch/<tag>`` is moved with ``update-ref`` only. Discarded commits
stay reachable under ``refs/autoresearch/<tag>/discarded/<id>``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from autoresearch.config import CONFIG_NAME, STATE_DIR, TaskConfig
from autoresearch.edits import Allowlist, apply_edits, glob_regex, new_file_reason, too_large
from autoresearch.errors import ConfigError, EditRejected, ProposalError, WorkspaceError
from autoresearch.git import Git, git_admin, git_environment, git_fingerprint, remove_nested_git
from autoresearch.integrity import sha256_files
from autoresearch.records import Proposal

_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SlotKey = int | str  # a run slot (0, 1, ...) or a proposal checkout ("p0", ...)


def _size(path: Path) -> int:
    """Bytes of ``path``; 0 when it is not a file (yet)."""
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else 0
    except OSError:
        return 0


def _read_exact(path: Path, errors: str = "strict") -> str:
    """A file's text with its line endings as they are on disk."""
    with path.open(encoding="utf-8", errors=errors, newline="") as fh:
        return fh.read()


class Workspace:
    """The git side of one session: branch, worktrees, commits and refs."""

    def __init__(self, config: TaskConfig, tag: str) -> None:
        if not _TAG.match(tag):
            raise WorkspaceError(f"tag {tag!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        self.config, self.tag = config, tag
        self.git = Git(config.root)
        try:
            top = Path(self.git("rev-parse", "--show-toplevel"))
        except (WorkspaceError, FileNotFoundError) as exc:
            raise WorkspaceError(f"{config.root}: not inside a git repository ({exc})") from exc
        self.repo = top.resolve()
        self.task_rel = config.root.relative_to(self.repo).as_posix()  # "." at the top
        self.state = config.root / STATE_DIR
        self.allow = Allowlist(config.editable, config.protected)
        both = self.allow.contradictions()
        if both:
            raise ConfigError(
                f"{config.root / CONFIG_NAME}: [task] editable names {', '.join(both)}, which "
                f"[task] protected covers too: every edit to it would be refused; take it out of one"
            )
        self._env = self._identity_env()
        self.git = Git(config.root, self._env)
        self._tracked_cache: dict[SlotKey, list[str]] = {}
        self._at: dict[SlotKey, str] = {}  # the commit each checkout was last put at
        self._trees: dict[str, str] = {}  # commit -> tree, for the commits made here
        self._admin: Path | None = None  # git's own folder, found at the first fingerprint

    # --- names -------------------------------------------------------------------------

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.tag}"

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def discarded_ref(self, experiment_id: int) -> str:
        return f"refs/autoresearch/{self.tag}/discarded/{experiment_id}"

    def slot_root(self, slot: SlotKey) -> Path:
        """The worktree of ``slot`` (its repository root)."""
        return self.state / "worktrees" / self.tag / str(slot)

    def slot_dir(self, slot: SlotKey) -> Path:
        """The task folder inside the worktree of ``slot``: where runs execute."""
        return self.slot_root(slot) / self.task_rel

    # --- session -------------------------------------------------------------------------

    def _identity_env(self) -> dict[str, str]:
        env = git_environment()  # nothing git runs may see the agents' keys
        if not self.git("config", "user.email", check=False) and "GIT_AUTHOR_EMAIL" not in env:
            env.update(_FALLBACK_IDENTITY)
        return env

    def ensure_excluded(self) -> None:
        """Add ``.autoresearch/`` to the repository's info/exclude, once."""
        exclude = Path(self.git("rev-parse", "--git-path", "info/exclude"))
        exclude = exclude if exclude.is_absolute() else self.config.root / exclude
        text = exclude.read_text() if exclude.exists() else ""
        if f"{STATE_DIR}/" not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(
                text + ("" if text.endswith("\n") or not text else "\n") + f"{STATE_DIR}/\n"
            )

    def dirty_files(self) -> list[str]:
        # Untracked files are not part of the commit a session starts from: they do not count.
        out = self.git("status", "--porcelain", "--untracked-files=no", "--", ".")
        return [line[3:] for line in out.splitlines() if line.strip()]

    def head(self) -> str:
        found = self.git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
        if not found:
            raise WorkspaceError(f"{self.repo}: the repository has no commit yet; commit the task "
                                 "first (git add -A && git commit -m 'the task')")  # fmt: skip
        return found

    def in_history(self, patterns: Iterable[str]) -> list[str]:
        """Task-relative paths matching ``patterns`` that a commit of any ref added, changed or
        deleted: git's objects keep them for whoever reads git, even once deleted."""
        specs = [f":(glob){pattern}" for pattern in patterns]  # from the task folder, as git runs here
        if not specs:
            return []
        out = self.git("log", "--all", "--format=", "--name-only", "--relative", "--", *specs, check=False)
        return sorted({line for line in out.splitlines() if line.strip()})

    def shallow_globs(self) -> list[tuple[str, list[str]]]:
        """Editable globs without "/" with the tracked files in subfolders they do not match
        (they match from the task folder only; they once matched in any folder)."""
        files = [f for f in self.git("ls-files", "-z", "--", ".", check=False).split("\0") if f]
        found = []
        for pattern in (p for p in self.config.editable if "/" not in p):
            anywhere, here = glob_regex(pattern), glob_regex(pattern, anywhere=False)
            deeper = [f for f in files if anywhere.match(f) and not here.match(f)]
            if deeper:
                found.append((pattern, deeper))
        return found

    def untracked(self, paths: Iterable[str]) -> list[str]:
        """Those of the task-relative ``paths`` present in the task folder that git does not track."""
        present = [os.path.normpath(p) for p in paths if (self.config.root / p).is_file()]  # ./program.md
        if not present:
            return []
        tracked = set(self.git("ls-files", "-z", "--", *present, check=False).split("\0"))
        return [p for p in present if p not in tracked]

    def branch_head(self) -> str | None:
        out = self.git("rev-parse", "--verify", "--quiet", self.branch_ref, check=False)
        return out or None

    def start(self) -> str:
        """Create the session branch at HEAD; refuse a dirty tree or a used tag. Returns HEAD."""
        self.ensure_excluded()
        dirty = self.dirty_files()
        if dirty:
            shown = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
            raise WorkspaceError(
                f"the work tree has uncommitted changes: {shown}; commit or stash them first"
            )
        if self.branch_head() is not None:
            raise WorkspaceError(
                f"tag {self.tag!r} is in use (branch {self.branch}); pass --resume or pick another tag"
            )
        head = self.head()
        self.git("update-ref", self.branch_ref, head, "")
        return head

    def restart(self) -> str:
        """Point a session whose baseline failed at HEAD again (the task was fixed and committed)."""
        self.ensure_excluded()
        dirty = self.dirty_files()
        if dirty:
            raise WorkspaceError(
                f"the work tree has uncommitted changes: {', '.join(dirty[:10])}; commit them first"
            )
        head = self.head()
        self.git("update-ref", self.branch_ref, head)
        return head

    def adopt(self) -> str:
        """The session branch, created now at HEAD if a killed start left none; returns its head."""
        return self.branch_head() or self.start()

    def tree(self, commit: str) -> str:
        """The git tree of ``commit``: two commits with the same tree hold the same code."""
        if commit not in self._trees:
            self._trees[commit] = self.git("rev-parse", f"{commit}^{{tree}}")
        return self._trees[commit]

    def resume(self) -> str:
        """Check the session branch exists; return its head."""
        self.ensure_excluded()
        head = self.branch_head()
        if head is None:
            raise WorkspaceError(f"no session branch {self.branch}; start one without --resume")
        return head

    def move_branch(self, commit: str) -> None:
        self.git("update-ref", self.branch_ref, commit)

    def keep_discarded(self, experiment_id: int, commit: str) -> None:
        self.git("update-ref", self.discarded_ref(experiment_id), commit)

    def keep_kept(self, experiment_id: int, commit: str) -> None:
        """Every keep stays reachable, also when a parallel slot's keep replaces it as best."""
        self.git("update-ref", f"refs/autoresearch/{self.tag}/kept/{experiment_id}", commit)

    def discarded_refs(self) -> dict[int, str]:
        return self._numbered_refs("discarded")

    def kept_refs(self) -> dict[int, str]:
        return self._numbered_refs("kept")

    def _numbered_refs(self, kind: str) -> dict[int, str]:
        """``refs/autoresearch/<tag>/<kind>/<id>``: id -> commit."""
        out = self.git(
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            f"refs/autoresearch/{self.tag}/{kind}/",
        )
        refs = {}
        for line in out.splitlines():
            name, sha = line.split()
            refs[int(name.rsplit("/", 1)[1])] = sha
        return refs

    # --- slots ---------------------------------------------------------------------------

    def checkout(self, slot: SlotKey, commit: str, *, reuse: bool = False) -> Path:
        """Put ``slot``'s worktree at ``commit``, clean; create it on first use. Returns the task folder.

        ``reuse``: nothing but this workspace writes to the checkout, so one already at
        ``commit`` is taken as it is (two git calls saved per experiment).
        """
        root = self.slot_root(slot)
        if reuse and self._at.get(slot) == commit and (root / ".git").exists():
            return self.slot_dir(slot)
        git = self._slot_git(slot)
        self._tracked_cache.pop(slot, None)
        self._at[slot] = commit
        if not (root / ".git").exists():
            if root.exists():
                shutil.rmtree(root)
            self.git("worktree", "prune")
            self.git("worktree", "add", "-q", "--detach", str(root), commit)
        else:
            remove_nested_git(root)  # first: it makes every folder one git clean can empty
            git("reset", "-q", "--hard", commit)
            git("clean", "-qffdx", *[f"--exclude=/{self._in_repo(p)}" for p in self.config.link])
        self._link(slot)
        return self.slot_dir(slot)

    def _slot_git(self, slot: SlotKey, cwd: Path | None = None) -> Git:
        """git in ``slot``'s worktree (run from ``cwd``, default its root), the repository named
        outright: a run may have planted a ``.git`` of its own in the task folder."""
        root = self.slot_root(slot)
        return Git(cwd or root, self._env, worktree=root)

    def linked_paths(self) -> tuple[str, ...]:
        """The task's ``link`` paths, relative to the worktree root."""
        return tuple(self._in_repo(p) for p in self.config.link)

    def _in_repo(self, rel: str) -> str:
        return rel if self.task_rel == "." else f"{self.task_rel}/{rel}"

    def _link(self, slot: SlotKey) -> None:
        """Link each ``link`` path to the task folder's; a link pointed elsewhere (by a step of
        an earlier experiment: its target's name can carry a message) is pointed back."""
        for rel in self.config.link:
            source, target = self.config.root / rel, self.slot_dir(slot) / rel
            if not source.exists() or (target.exists() and not target.is_symlink()):
                continue
            if target.is_symlink():
                if str(target.readlink()) == str(source.resolve()):
                    continue
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())

    def editable_files(self, slot: SlotKey) -> dict[str, str]:
        """Text of the files the agent may change: ``editable`` less the protected files an
        editable glob also matches (an agent shown them wastes proposals on refused edits)."""
        files = self.read_files(slot, self.config.editable)
        return {path: text for path, text in files.items() if self.allow.reason(path) is None}

    def read_files(self, slot: SlotKey, patterns: Iterable[str]) -> dict[str, str]:
        """Text of the tracked task files matching ``patterns`` (globs, from the task folder: as
        ``editable`` matches) in ``slot``'s worktree."""
        regexes = [glob_regex(p, anywhere=False) for p in patterns]
        base = self.slot_dir(slot)
        files = self._tracked(slot)
        out = {}
        for rel in files:
            if (
                any(r.match(rel) for r in regexes)
                and (base / rel).is_file()
                and not (base / rel).is_symlink()
            ):
                out[rel] = _read_exact(base / rel, errors="replace")
        return out

    def _tracked(self, slot: SlotKey) -> list[str]:
        """Tracked task files in ``slot`` (cached per checkout)."""
        if slot not in self._tracked_cache:
            out = self._slot_git(slot, self.slot_dir(slot))("ls-files", "-z", "--", ".")
            self._tracked_cache[slot] = [p for p in out.split("\0") if p]
        return self._tracked_cache[slot]

    def apply(self, slot: SlotKey, proposal: Proposal) -> list[str]:
        """Apply a proposal's edits and patch in ``slot``; returns the changed task-relative paths.

        Raises ``EditRejected`` when an edit leaves the allowlist (nothing is written) or grows
        a file past ``max_file_kb`` (the slot is left for the caller to check out again), and
        ``ProposalError`` when an edit does not apply.
        """
        base = self.slot_dir(slot)
        for edit in proposal.edits:
            self._check_path(base, edit.path)
        current = {e.path: self._read(base, e.path) for e in proposal.edits if e.content is None}
        changed = apply_edits({k: v for k, v in current.items() if v is not None}, proposal.edits)
        paths = set(changed)
        if proposal.patch.strip():
            for path in self._patch_paths(base, proposal.patch):
                self._check_path(base, path)
                paths.add(path)
            self._git_apply(base, proposal.patch, check_only=True)
        sizes = {rel: _size(base / rel) for rel in paths}
        for rel, text in changed.items():
            target = base / rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("w", encoding="utf-8", newline="") as fh:  # CRLF stays CRLF
                    fh.write(text)
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:  # a/ vs a/b
                self._at.pop(slot, None)  # maybe written: not the commit it was checked out at
                raise EditRejected(f"{rel}: cannot be written: {exc.strerror}") from exc
        if proposal.patch.strip():
            self._git_apply(base, proposal.patch, check_only=False)
        if not paths:
            raise EditRejected("the proposal changes nothing")
        self._check_sizes(slot, base, sizes)
        return sorted(paths)

    def _check_sizes(self, slot: SlotKey, base: Path, before: dict[str, int]) -> None:
        """A file the proposal grew past ``max_file_kb``: what the run should compute (trained
        weights, a table of answers) can be carried in a file that large."""
        why = too_large({rel: (_size(base / rel), old) for rel, old in before.items()}, self.config.max_file_kb)
        if why:
            self._at.pop(slot, None)  # written: not the commit it was checked out at any more
            raise EditRejected(why)

    def _read(self, base: Path, rel: str) -> str | None:
        target = base / rel
        if not target.is_file():
            return None
        try:
            return _read_exact(target)
        except UnicodeDecodeError as exc:
            raise ProposalError(
                f"edit to {rel}: the file is not UTF-8 text ({exc.reason}); use a patch"
            ) from exc

    def _check_path(self, base: Path, rel: str) -> None:
        reason = self.allow.reason(rel)
        if reason is None:
            reason = self._path_reason(base, rel)
        if reason is not None:
            raise EditRejected(reason)

    def _path_reason(self, base: Path, rel: str) -> str | None:
        current, parts = base, PurePosixPath(rel).parts
        for i, part in enumerate(parts):
            current = current / part
            if current.is_symlink():
                return f"{rel}: goes through a symlink ({current.relative_to(base)})"
            if i < len(parts) - 1 and current.exists() and not current.is_dir():
                return f"{rel}: {current.relative_to(base)} is a file, not a folder"
        return None

    def _patch_paths(self, base: Path, patch: str) -> list[str]:
        top = self._top(base)
        try:
            out = Git(top, self._env, worktree=top)(
                "apply", "--numstat", "-z", *self._directory(), input=patch
            )
        except WorkspaceError as exc:  # git cannot even read it: the agent's reply, not ours
            raise ProposalError(f"the patch is malformed: {exc}") from exc
        paths: list[str] = []
        fields = out.split("\0")
        i = 0
        while i < len(fields):
            entry = fields[i]
            if not entry:
                i += 1
                continue
            parts = entry.split("\t")
            if len(parts) == 3 and parts[2]:
                paths.append(parts[2])
                i += 1
            else:  # a rename: "added\tdeleted\t" then old and new path
                paths.extend(fields[i + 1 : i + 3])
                i += 3
        prefix = "" if self.task_rel == "." else self.task_rel + "/"
        return [
            p.removeprefix(prefix)
            if prefix and p.startswith(prefix)
            else "../" + p
            if prefix
            else p
            for p in paths
        ]

    def _top(self, base: Path) -> Path:
        """The worktree root holding the task folder ``base``."""
        return base if self.task_rel == "." else base.parents[len(Path(self.task_rel).parts) - 1]

    def _directory(self) -> list[str]:
        """Patches name task-relative paths; git applies them from the worktree root."""
        return [] if self.task_rel == "." else [f"--directory={self.task_rel}"]

    def _git_apply(self, base: Path, patch: str, *, check_only: bool) -> None:
        args = ["apply", "--whitespace=nowarn", "--recount", *self._directory()]
        top = self._top(base)
        try:
            Git(top, self._env, worktree=top)(
                *args, *(["--check"] if check_only else []), input=patch
            )
        except WorkspaceError as exc:
            raise ProposalError(f"the patch does not apply: {exc}") from exc

    def commit(self, slot: SlotKey, message: str) -> tuple[str, str]:
        """Commit everything changed in ``slot``'s worktree; returns the commit's sha and diff.

        Raises ``EditRejected`` when a changed file is not editable, or nothing changed.
        """
        git = self._slot_git(slot)
        self._check_changes(slot)
        git("add", "-A", "--", self.task_rel)
        code, out, err = git.run("commit", "-q", "--no-verify", "-m", message)
        if code != 0 and "nothing to commit" in out + err:
            raise EditRejected("the proposal changes nothing")
        if code != 0:
            raise WorkspaceError(f"git commit failed in {git.cwd}: {(err or out).strip()}")
        self._at.pop(slot, None)
        shown = self._slot_git(slot, self.slot_dir(slot))(
            "show", "--no-ext-diff", "--no-textconv", "--relative", "--format=%H %T", "HEAD", "--", "."
        )
        head, _, diff = shown.partition("\n")
        sha, tree = head.split()
        self._trees[sha] = tree
        return sha, diff.lstrip("\n") + "\n"

    def _check_changes(self, slot: SlotKey) -> None:
        """Every changed or new file in the worktree must be editable (whoever wrote it)."""
        out = self._slot_git(slot, self.slot_dir(slot))(
            "status", "--porcelain", "-z", "--untracked-files=all", "--", "."
        )
        entries, tracked = iter(out.split("\0")), None
        for entry in entries:
            if not entry:
                continue
            path = entry[3:]
            if entry[0] in "RC":
                next(entries, None)  # the rename's source path follows
            rel = path if self.task_rel == "." else path.removeprefix(self.task_rel + "/")
            if rel in self.config.link:
                continue
            reason = self.allow.reason(rel) or self._path_reason(self.slot_dir(slot), rel)
            if reason is None and entry[0] in "?ARC":  # a new file (or a new name)
                tracked = self._tracked(slot) if tracked is None else tracked
                reason = new_file_reason(rel, tracked)
            if reason is not None:
                raise EditRejected(reason)

    # --- protected files -------------------------------------------------------------------

    def protected_files(self, slot: SlotKey) -> list[str]:
        regexes = [glob_regex(p) for p in (*self.config.protected, CONFIG_NAME)]
        return [p for p in self._tracked(slot) if any(r.match(p) for r in regexes)]

    def protected_hashes(self, slot: SlotKey) -> dict[str, str]:
        return sha256_files(self.slot_dir(slot), self.protected_files(slot))

    def fingerprint(self) -> dict[str, str]:
        """What a step must not change in git: admin files, hooks and the session branch."""
        if self._admin is None:
            self._admin = git_admin(self.repo)
        return git_fingerprint(self.repo, refs=[self.branch_ref], admin=self._admin)

    def restore(self, slot: SlotKey, paths: Iterable[str]) -> None:
        """Put tracked files back as committed (after a run rewrote the harness)."""
        self._slot_git(slot, self.slot_dir(slot))("checkout", "-f", "HEAD", "--", *paths)

    # --- history -------------------------------------------------------------------------

    def exists(self, commit: str) -> bool:
        return self.git.ok("cat-file", "-e", f"{commit}^{{commit}}")

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git.ok("merge-base", "--is-ancestor", older, newer)

    def remove_worktrees(self) -> None:
        """Remove this session's worktrees (the commits stay); other tags' are left alone."""
        folder = self.state / "worktrees" / self.tag
        for root in sorted(folder.iterdir()) if folder.is_dir() else []:
            self.git("worktree", "remove", "--force", str(root), check=False)
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        self.git("worktree", "prune", check=False)
