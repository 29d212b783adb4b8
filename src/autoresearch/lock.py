"""One orchestrator per session: an exclusive ``flock`` on ``.autoresearch/locks/<tag>.lock``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from autoresearch.errors import LedgerError


class SessionLock:
    """One orchestrator per session: an exclusive ``flock`` on ``.autoresearch/locks/<tag>.lock``."""

    def __init__(self, state_dir: Path, tag: str) -> None:
        self.path = state_dir / "locks" / f"{tag}.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise LedgerError(
                f"session {self.path.stem!r} is running in another process (pid {holder})"
            ) from exc
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def intact(self) -> bool:
        """True while the file at our path is the one we hold locked (a run may delete it,
        so that a second orchestrator could lock a new one)."""
        if self._fh is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def held_elsewhere(self) -> bool:
        """True while some process holds the lock (for ``status``)."""
        if not self.path.exists():
            return False
        with self.path.open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False


def running_beside(state_dir: Path, tag: str) -> list[str]:
    """The tags of the other sessions whose orchestrator runs now in this task folder: the pid
    its lock file names is an autoresearch process. (Probing the lock itself would take it for
    a moment, and a session starting then would be refused.)"""
    folder = state_dir / "locks"
    paths = sorted(folder.glob("*.lock")) if folder.is_dir() else []
    return [p.stem for p in paths if p.stem != tag and _orchestrator(p)]


def _orchestrator(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):  # no pid yet, or no such process
        return False
    return pid != os.getpid() and b"autoresearch" in command


__all__ = ["SessionLock", "running_beside"]
