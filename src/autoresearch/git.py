"""The one small wrapper over the git CLI, hardened, and what a step must not change in git.

Every git call of the orchestrator runs with hooks, fsmonitor, transports and ssh
commands off, whatever a run wrote into the repository's config, and without the agents'
keys in its environment. ``git_fingerprint`` digests what git obeys (config, hooks, info/,
worktree admin files, refs), so a step that reached git is caught by comparing two.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from autoresearch.errors import WorkspaceError
from autoresearch.process import without_secrets

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
    """The environment of git calls: the caller's, less every secret variable."""
    return without_secrets(os.environ if base is None else base)


class Git:
    """Runs git in one folder; failures become ``WorkspaceError`` with git's own words.

    Every call is hardened (``GIT_HARDENING``) and runs without the agents' API keys. With
    ``worktree`` the repository is named outright (``--git-dir``, ``--work-tree``) instead of
    found by looking up from ``cwd``: a step can plant a ``.git`` of its own in the task folder
    of a worktree, and git would obey that repository's config (a filter runs a command).
    """

    def __init__(
        self, cwd: Path, env: Mapping[str, str] | None = None, *, worktree: Path | None = None
    ) -> None:
        self.cwd = cwd
        self.env = git_environment(env)
        pin = () if worktree is None else (f"--git-dir={worktree / '.git'}", f"--work-tree={worktree}")
        self._pin = pin

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        code, stdout, stderr = self.run(*args, input=input)
        if check and code != 0:
            message = (stderr or stdout).strip().splitlines()
            raise WorkspaceError(f"git {args[0]} failed in {self.cwd}: {' / '.join(message[-3:])}")
        return stdout.rstrip("\n")

    def run(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of one git command."""
        done = subprocess.run(
            git_argv(*self._pin, *args), cwd=self.cwd, input=None if input is None else input.encode(),
            capture_output=True, env=self.env,
        )  # fmt: skip
        # Bytes decoded by hand: text mode would turn CRLF into LF in diffs and file lists.
        out, err = (data.decode("utf-8", errors="replace") for data in (done.stdout, done.stderr))
        return done.returncode, out, err

    def ok(self, *args: str) -> bool:
        """True when the git command exits 0 (for questions such as ``show-ref``)."""
        return self.run(*args)[0] == 0


def remove_nested_git(root: Path) -> None:
    """Remove every entry named ``.git`` below the worktree ``root`` but its own. git never
    tracks, resets or cleans such an entry, so a step could keep state in one from run to run,
    or leave a repository whose config a git call there would obey. Every folder is made
    listable and writable by its owner first (``chmod 111`` hid a repository from the walk,
    ``chmod 555`` would keep files from git clean); links are never followed."""
    todo = [root]
    while todo:
        folder = todo.pop()
        for entry in _listed(folder, writable=True):
            if entry.name == ".git" and folder != root:
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False) and not (folder == root and entry.name == ".git"):
                todo.append(Path(entry.path))


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that first makes every folder below ``path`` listable and writable
    (never through a link: Python's own temporary-folder cleanup chmods through one), and
    removes a tree nested deeper than Python's recursion too (``rmtree`` recurses; a run
    nested 1,100 folders): then ``rm -rf``. OSError when something is left."""
    todo = [path]
    while todo:
        folder = todo.pop()
        todo += [Path(e.path) for e in _listed(folder, writable=True) if e.is_dir(follow_symlinks=False)]
    try:
        shutil.rmtree(path)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False, capture_output=True)
        if os.path.lexists(path):
            raise OSError(f"{path}: could not remove it") from None


def _listed(folder: Path, *, writable: bool = False) -> list[os.DirEntry[str]]:
    """The entries of ``folder``, a folder and no link, made listable (and writable) first
    when it is not."""
    mode = stat.S_IMODE(os.lstat(folder).st_mode)
    wanted = 0o700 if writable else 0o500
    if mode & wanted != wanted:
        os.chmod(folder, mode | wanted)  # a folder (lstat): nothing runs that could swap it now
    with os.scandir(folder) as entries:
        return list(entries)


def git_admin(repo: Path) -> Path | None:
    """The folder git keeps ``repo``'s config, hooks and objects in (None: not a repository)."""
    code, common, _ = Git(repo).run("rev-parse", "--path-format=absolute", "--git-common-dir")
    return Path(common.strip()) if code == 0 else None


def git_fingerprint(
    repo: Path, *, refs: Iterable[str] = (), worktrees: Iterable[Path] = (), admin: Path | None = None
) -> dict[str, str]:
    """Digests of what git obeys in ``repo``: config, hooks, info/, and the given refs' values.

    ``worktrees`` adds each worktree's admin files (``commondir``, ``gitdir``). ``admin`` is
    ``git_admin(repo)`` when the caller knows it (one git call fewer); a ``.git`` file that
    points elsewhere is digested too, so that pointing it at another folder shows. Compare two
    fingerprints taken before and after a step: any difference means the step reached git.
    """
    git = Git(repo)
    admin = admin or git_admin(repo)
    if admin is None:
        return {"git": "not a repository"}
    prints = {f".git/{name}": _tree_digest(admin / name) for name in _GIT_ADMIN}
    if (repo / ".git").is_file() or (repo / ".git").is_symlink():
        prints[".git"] = _tree_digest(repo / ".git")
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


__all__ = [
    "GIT_HARDENING",
    "Git",
    "git_admin",
    "git_argv",
    "git_environment",
    "git_fingerprint",
    "remove_nested_git",
]
