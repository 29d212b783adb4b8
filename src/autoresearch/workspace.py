"""Git: the session branch, slot worktrees, candidate commits, the allowlist, protected files.

All git access goes through ``Git``, one small wrapper over the git CLI. The user's own
checkout is never touched: each slot works in its own worktree under
``.autoresearch/worktrees/``, candidates are committed there on a detached HEAD, and the
session branch ``autoresearch/<tag>`` is moved with ``update-ref`` only. Discarded commits
stay reachable under ``refs/autoresearch/<tag>/discarded/<id>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from autoresearch.agents._base import Proposal
from autoresearch.agents.edits import apply_edits
from autoresearch.config import CONFIG_NAME, TaskConfig
from autoresearch.errors import EditRejected, ProposalError, WorkspaceError

STATE_DIR = ".autoresearch"
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# Every git call of the orchestrator: no hooks, no fsmonitor, no transports, no ssh command,
# whatever a run wrote into the repository's config (the run step could write .git/config).
GIT_HARDENING = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
    "-c", "core.sshCommand=false", "-c", "protocol.allow=never",
)  # fmt: skip
# What git reads or runs from the repository: checked before and after each step.
_GIT_ADMIN = ("config", "hooks", "info", "commondir")
_WORKTREE_ADMIN = ("commondir", "gitdir", "config.worktree")


def git_argv(*args: str) -> list[str]:
    """The argv of one hardened git call."""
    return ["git", *GIT_HARDENING, *args]


def git_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of git calls: the caller's, less the agents' API keys."""
    from autoresearch.executors.local import without_secrets  # the one secret rule

    return without_secrets(os.environ if base is None else base)


class Git:
    """Runs git in one folder; failures become ``WorkspaceError`` with git's own words.

    Every call is hardened (``GIT_HARDENING``) and runs without the agents' API keys.
    """

    def __init__(self, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.cwd = cwd
        self.env = git_environment(env)

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        code, stdout, stderr = self.run(*args, input=input)
        if check and code != 0:
            message = (stderr or stdout).strip().splitlines()
            raise WorkspaceError(f"git {args[0]} failed in {self.cwd}: {' / '.join(message[-3:])}")
        return stdout.rstrip("\n")

    def run(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of one git command."""
        done = subprocess.run(
            git_argv(*args), cwd=self.cwd, input=None if input is None else input.encode(),
            capture_output=True, env=self.env,
        )  # fmt: skip
        # Bytes decoded by hand: text mode would turn CRLF into LF in diffs and file lists.
        out, err = (data.decode("utf-8", errors="replace") for data in (done.stdout, done.stderr))
        return done.returncode, out, err

    def ok(self, *args: str) -> bool:
        """True when the git command exits 0 (for questions such as ``show-ref``)."""
        return self.run(*args)[0] == 0


def git_fingerprint(
    repo: Path, *, refs: Iterable[str] = (), worktrees: Iterable[Path] = ()
) -> dict[str, str]:
    """Digests of what git obeys in ``repo``: config, hooks, info/, and the given refs' values.

    ``worktrees`` adds each worktree's admin files (``commondir``, ``gitdir``). Compare two
    fingerprints taken before and after a step: any difference means the step reached git.
    """
    git = Git(repo)
    code, common, _ = git.run("rev-parse", "--path-format=absolute", "--git-common-dir")
    if code != 0:
        return {"git": "not a repository"}
    admin = Path(common.strip())
    prints = {f".git/{name}": _tree_digest(admin / name) for name in _GIT_ADMIN}
    for root in worktrees:
        gitfile = root / ".git"
        text = gitfile.read_text(errors="replace") if gitfile.is_file() else ""
        own = Path(text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else None
        for name in _WORKTREE_ADMIN:
            digest = _tree_digest(own / name) if own is not None else "no gitdir"
            prints[f"{root}/.git ({name})"] = digest
        prints[f"{root}/.git"] = hashlib.sha256(text.encode()).hexdigest()
    for ref in refs:
        prints[ref] = git("rev-parse", "--verify", "--quiet", ref, check=False) or "missing"
    return prints


def _tree_digest(path: Path) -> str:
    """sha256 over a file, or a folder's file names, modes and contents ('missing' when absent)."""
    if path.is_symlink():
        return "link " + os.readlink(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        mode = item.lstat().st_mode
        digest.update(f"{item.relative_to(path)}\0{mode:o}\0{_tree_digest(item)}\n".encode())
    return digest.hexdigest()


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses folders, ``*`` and ``?`` do not; a pattern without ``/`` matches names anywhere."""
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
    prefix = "" if "/" in pattern else "(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"\Z")


@dataclass(frozen=True)
class Allowlist:
    """Which task-relative paths the agent may change."""

    editable: tuple[str, ...]
    protected: tuple[str, ...]

    @cached_property
    def _editable(self) -> list[re.Pattern[str]]:
        return [glob_regex(g) for g in self.editable]

    @cached_property
    def _protected(self) -> list[re.Pattern[str]]:
        return [glob_regex(g) for g in (*self.protected, CONFIG_NAME)]

    def reason(self, path: str) -> str | None:
        """Why ``path`` may not be edited, or None when it may."""
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


def _read_exact(path: Path, errors: str = "strict") -> str:
    """A file's text with its line endings as they are on disk."""
    with path.open(encoding="utf-8", errors=errors, newline="") as fh:
        return fh.read()


def sha256_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file under ``root`` ('' for a missing one or one that is not a regular file).

    A symlink is hashed as its target's name, never followed, and files are read in chunks:
    a run that swaps a protected file for a link to /dev/zero or a FIFO cannot hang us.
    """
    out = {}
    for rel in paths:
        target = root / rel
        if target.is_symlink():
            out[rel] = "link " + os.readlink(target)
        elif target.is_file():
            with target.open("rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
        else:
            out[rel] = ""
    return out


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
        self._env = self._identity_env()
        self.git = Git(config.root, self._env)
        self._tracked_cache: dict[int, list[str]] = {}

    # --- names -------------------------------------------------------------------------

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.tag}"

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def discarded_ref(self, experiment_id: int) -> str:
        return f"refs/autoresearch/{self.tag}/discarded/{experiment_id}"

    def slot_root(self, slot: int) -> Path:
        """The worktree of ``slot`` (its repository root)."""
        return self.state / "worktrees" / f"{self.tag}-{slot}"

    def slot_dir(self, slot: int) -> Path:
        """The task folder inside the worktree of ``slot``: where runs execute."""
        return self.slot_root(slot) / self.task_rel

    # --- session -------------------------------------------------------------------------

    def _identity_env(self) -> dict[str, str]:
        env = git_environment()
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
        return self.git("rev-parse", "HEAD")

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
        out = self.git(
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            f"refs/autoresearch/{self.tag}/discarded/",
        )
        refs = {}
        for line in out.splitlines():
            name, sha = line.split()
            refs[int(name.rsplit("/", 1)[1])] = sha
        return refs

    # --- slots ---------------------------------------------------------------------------

    def checkout(self, slot: int, commit: str) -> Path:
        """Put ``slot``'s worktree at ``commit``, clean; create it on first use. Returns the task folder."""
        root = self.slot_root(slot)
        git = Git(root, self._env)
        self._tracked_cache.pop(slot, None)
        if not (root / ".git").exists():
            if root.exists():
                shutil.rmtree(root)
            self.git("worktree", "prune")
            self.git("worktree", "add", "-q", "--detach", str(root), commit)
        else:
            git("reset", "-q", "--hard", commit)
            git("clean", "-qffdx", *[f"--exclude=/{self._in_repo(p)}" for p in self.config.link])
        self._link(slot)
        return self.slot_dir(slot)

    def linked_paths(self) -> tuple[str, ...]:
        """The task's ``link`` paths, relative to the worktree root."""
        return tuple(self._in_repo(p) for p in self.config.link)

    def _in_repo(self, rel: str) -> str:
        return rel if self.task_rel == "." else f"{self.task_rel}/{rel}"

    def _link(self, slot: int) -> None:
        for rel in self.config.link:
            source, target = self.config.root / rel, self.slot_dir(slot) / rel
            if target.is_symlink() or not source.exists() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())

    def read_files(self, slot: int, patterns: Iterable[str]) -> dict[str, str]:
        """Text of the tracked task files matching ``patterns`` (globs) in ``slot``'s worktree."""
        regexes = [glob_regex(p) for p in patterns]
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

    def _tracked(self, slot: int) -> list[str]:
        """Tracked task files in ``slot`` (cached per checkout)."""
        if slot not in self._tracked_cache:
            out = Git(self.slot_dir(slot), self._env)("ls-files", "-z", "--", ".")
            self._tracked_cache[slot] = [p for p in out.split("\0") if p]
        return self._tracked_cache[slot]

    def apply(self, slot: int, proposal: Proposal) -> list[str]:
        """Apply a proposal's edits and patch in ``slot``; returns the changed task-relative paths.

        Raises ``EditRejected`` (nothing is written) when an edit leaves the allowlist,
        and ``ProposalError`` when an edit does not apply.
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
        for rel, text in changed.items():
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w", encoding="utf-8", newline="") as fh:  # CRLF stays CRLF
                fh.write(text)
        if proposal.patch.strip():
            self._git_apply(base, proposal.patch, check_only=False)
        if not paths:
            raise EditRejected("the proposal changes nothing")
        return sorted(paths)

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
            reason = self._symlink_reason(base, rel)
        if reason is not None:
            raise EditRejected(reason)

    def _symlink_reason(self, base: Path, rel: str) -> str | None:
        current = base
        for part in PurePosixPath(rel).parts:
            current = current / part
            if current.is_symlink():
                return f"{rel}: goes through a symlink ({current.relative_to(base)})"
        return None

    def _patch_paths(self, base: Path, patch: str) -> list[str]:
        out = Git(self._top(base), self._env)(
            "apply", "--numstat", "-z", *self._directory(), input=patch
        )
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
        try:
            Git(self._top(base), self._env)(
                *args, *(["--check"] if check_only else []), input=patch
            )
        except WorkspaceError as exc:
            raise ProposalError(f"the patch does not apply: {exc}") from exc

    def commit(self, slot: int, message: str) -> tuple[str, str]:
        """Commit everything changed in ``slot``'s worktree; returns the commit's sha and diff.

        Raises ``EditRejected`` when a changed file is not editable, or nothing changed.
        """
        git = Git(self.slot_root(slot), self._env)
        self._check_changes(slot)
        git("add", "-A", "--", self.task_rel)
        code, out, err = git.run("commit", "-q", "--no-verify", "-m", message)
        if code != 0 and "nothing to commit" in out + err:
            raise EditRejected("the proposal changes nothing")
        if code != 0:
            raise WorkspaceError(f"git commit failed in {git.cwd}: {(err or out).strip()}")
        shown = Git(self.slot_dir(slot), self._env)(
            "show", "--no-ext-diff", "--no-textconv", "--relative", "--format=%H", "HEAD", "--", "."
        )
        sha, _, diff = shown.partition("\n")
        return sha, diff.lstrip("\n") + "\n"

    def _check_changes(self, slot: int) -> None:
        """Every changed or new file in the worktree must be editable (whoever wrote it)."""
        out = Git(self.slot_dir(slot), self._env)(
            "status", "--porcelain", "-z", "--untracked-files=all", "--", "."
        )
        entries = iter(out.split("\0"))
        for entry in entries:
            if not entry:
                continue
            path = entry[3:]
            if entry[0] in "RC":
                next(entries, None)  # the rename's source path follows
            rel = path if self.task_rel == "." else path.removeprefix(self.task_rel + "/")
            if rel in self.config.link:
                continue
            reason = self.allow.reason(rel) or self._symlink_reason(self.slot_dir(slot), rel)
            if reason is not None:
                raise EditRejected(reason)

    # --- protected files -------------------------------------------------------------------

    def protected_files(self, slot: int) -> list[str]:
        regexes = [glob_regex(p) for p in (*self.config.protected, CONFIG_NAME)]
        return [p for p in self._tracked(slot) if any(r.match(p) for r in regexes)]

    def protected_hashes(self, slot: int) -> dict[str, str]:
        return sha256_files(self.slot_dir(slot), self.protected_files(slot))

    def fingerprint(self) -> dict[str, str]:
        """What a step must not change in git: admin files, hooks and the session branch."""
        return git_fingerprint(self.repo, refs=[self.branch_ref])

    def restore(self, slot: int, paths: Iterable[str]) -> None:
        """Put tracked files back as committed (after a run rewrote the harness)."""
        Git(self.slot_dir(slot), self._env)("checkout", "-f", "HEAD", "--", *paths)

    # --- history -------------------------------------------------------------------------

    def exists(self, commit: str) -> bool:
        return self.git.ok("cat-file", "-e", f"{commit}^{{commit}}")

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git.ok("merge-base", "--is-ancestor", older, newer)

    def remove_worktrees(self) -> None:
        """Remove this session's slot worktrees (the commits stay)."""
        folder = self.state / "worktrees"
        for root in sorted(folder.glob(f"{self.tag}-*")) if folder.exists() else []:
            self.git("worktree", "remove", "--force", str(root), check=False)
            shutil.rmtree(root, ignore_errors=True)
        self.git("worktree", "prune", check=False)
