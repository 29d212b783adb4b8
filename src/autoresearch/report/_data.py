"""The report package's one door to the ledger.

Everything in ``autoresearch.report`` reads sessions through this module and nothing else;
the records are ``autoresearch.records``' and the numbers ``autoresearch.history``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.config import STATE_DIR
from autoresearch.errors import LedgerError
from autoresearch.history import History
from autoresearch.ledger import Ledger, SessionRow
from autoresearch.lock import SessionLock
from autoresearch.records import Experiment, Run, Usage, Verdict

LEDGER_NAME = "ledger.db"


@dataclass(frozen=True)
class Session:
    """What the views need of one session."""

    tag: str
    branch: str
    base_commit: str
    agent: str
    metric: str
    direction: str  # minimize | maximize
    created: float
    updated: float
    status: str  # running | stopped | finished
    stop_reason: str
    rules: Mapping[str, Any]  # the stop rules it runs under (max_hours, max_cost, ...)
    gpu_price: float | None  # dollars per slot-hour the session was started with
    alive: bool  # an orchestrator holds the session's lock now
    remeasured: Mapping[str, Any] = field(default_factory=dict)  # the latest `remeasure` reading

    @property
    def state(self) -> str:
        """The status to show: a session recorded running that no orchestrator holds died
        (``--resume`` carries on): 'not running', never 'running'."""
        return "not running" if self.status == "running" and not self.alive else self.status


# --- Store: the ledger, read only ------------------------------------------------------------


def ledger_path(task_root: Path) -> Path:
    return task_root / STATE_DIR / LEDGER_NAME


class Store:
    """Read-only access to a task folder's ledger; each call sees the newest committed state."""

    def __init__(self, task_root: Path) -> None:
        self.root = task_root
        self.path = ledger_path(task_root)

    def exists(self) -> bool:
        return self.path.is_file()

    def _open(self) -> Ledger:
        # A fresh connection per read: the Ledger caches its reads until it writes itself.
        if not self.exists():  # a reader never creates the ledger
            raise LedgerError(f"no ledger at {self.path}: run `autoresearch run` first")
        return Ledger(self.path)

    def sessions(self) -> list[Session]:
        ledger = self._open()
        try:
            return [self._session(row) for row in ledger.sessions()]
        finally:
            ledger.close()

    def session(self, tag: str | None = None) -> Session:
        ledger = self._open()
        try:
            return self._session(ledger.session(tag))
        finally:
            ledger.close()

    def experiments(self, tag: str, *, details: bool = False) -> list[Experiment]:
        """Every experiment of session ``tag`` by id, with rationale, diff and runs (``details``
        is the caller's note of what it reads; the ledger reads them all at once)."""
        ledger = self._open()
        try:
            row = ledger.session(tag)
            found = ledger.experiments(row)
            return list(found)
        finally:
            ledger.close()

    def experiment(self, tag: str, experiment_id: int) -> Experiment:
        ledger = self._open()
        try:
            row = ledger.session(tag)
            return ledger.experiment(row, experiment_id)
        finally:
            ledger.close()

    def history(self, session: Session, rows: Sequence[Experiment] | None = None) -> History:
        rows = self.experiments(session.tag) if rows is None else rows
        return History(rows, gpu_price=session.gpu_price or 0.0)

    def version(self, tag: str) -> tuple[Any, ...]:
        """Changes whenever an experiment of ``tag`` is added or judged (cheap, for polling)."""
        ledger = self._open()
        try:
            row = ledger.session(tag)
            return (row.status, row.updated, tuple(ledger.marks(row)))
        finally:
            ledger.close()

    def _session(self, row: SessionRow) -> Session:
        price = row.config.get("gpu_price")
        alive = (
            row.status == "running" and SessionLock(self.root / STATE_DIR, row.tag).held_elsewhere()
        )
        return Session(
            tag=row.tag,
            branch=row.branch,
            base_commit=row.base_commit,
            agent=row.agent,
            metric=row.metric,
            direction=row.direction,
            created=row.created,
            updated=row.updated,
            status=row.status,
            stop_reason=row.stop_reason,
            rules=dict(row.config.get("stop_rules", {})),
            gpu_price=None if price is None else float(price),
            alive=alive,
            remeasured=dict(row.config.get("remeasured", {})),
        )


def from_row(row: Experiment) -> Experiment:
    """An engine event's record, as the views take it (the same record: kept for callers)."""
    return row


def log_dir(task_root: Path, tag: str) -> Path:
    """Where the runs of session ``tag`` write their logs (``<experiment:04d>-<run>.log``)."""
    return task_root / STATE_DIR / "logs" / tag


__all__ = [
    "Experiment",
    "History",
    "Run",
    "Session",
    "Store",
    "Usage",
    "Verdict",
    "from_row",
    "ledger_path",
    "log_dir",
]
