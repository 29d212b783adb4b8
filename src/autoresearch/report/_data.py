"""The report package's one door to the ledger, and the numbers every view shows.

Everything in ``autoresearch.report`` reads sessions through this module and nothing else.
``Verdict``, ``Usage``, ``Run`` and ``Experiment`` have the shape of ``autoresearch.records``
(the engine rework), and ``History`` the numbers of ``autoresearch.history``: when those land,
this module imports them instead and only ``Store`` changes.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from autoresearch.cost import compute_cost
from autoresearch.errors import LedgerError
from autoresearch.ledger import ExperimentRow, Ledger, RunRow, SessionLock, SessionRow
from autoresearch.workspace import STATE_DIR

LEDGER_NAME = "ledger.db"


class Verdict(enum.StrEnum):
    """The outcome of one experiment (``records.Verdict``: the judge's verdicts and two more)."""

    PENDING = "pending"  # committed, not yet judged
    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    INTERRUPTED = "interrupted"
    DUPLICATE = "duplicate"

    @property
    def failed(self) -> bool:
        """A verdict that counts towards the consecutive-failure stop rule."""
        return self in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID)

    @property
    def judged(self) -> bool:
        """A verdict that made the experiment the session's best when it was given."""
        return self in (Verdict.BASELINE, Verdict.KEEP)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None: unknown price


@dataclass(frozen=True)
class Run:
    experiment_id: int
    index: int
    seed: int
    status: str
    metric: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""
    log_path: str = ""
    log_tail: str = ""


@dataclass(frozen=True)
class Experiment:
    id: int
    verdict: Verdict
    metric: float | None
    description: str = ""
    commit: str = ""
    reason: str = ""
    agent: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    parent: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    rationale: str = ""
    diff: str = ""
    usage: Usage = field(default_factory=Usage)
    started: float = 0.0
    finished: float | None = None
    compute_seconds: float = 0.0
    runs: tuple[Run, ...] = ()

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost_usd


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
    noise: float | None
    gpu_price: float | None  # dollars per slot-hour the session was started with
    alive: bool  # an orchestrator holds the session's lock now


# --- History: computed once, read by every view ------------------------------------------


class History:
    """Best, baseline, noise, counts, spend and pace of one session's experiments."""

    def __init__(
        self,
        rows: Sequence[Experiment],
        *,
        noise: float | None = None,
        gpu_price: float = 0.0,
        now: float | None = None,
    ) -> None:
        self.rows = list(rows)
        self.noise = noise
        self.gpu_price = gpu_price
        self._now = time.time() if now is None else now

    @cached_property
    def baseline(self) -> Experiment | None:
        return next((r for r in self.rows if r.verdict is Verdict.BASELINE), None)

    @cached_property
    def best(self) -> Experiment | None:
        """The current best: the last baseline or keep to be judged."""
        judged = [r for r in self.rows if r.verdict.judged]
        return max(judged, key=lambda r: (r.finished or 0.0, r.id)) if judged else None

    @cached_property
    def counts(self) -> Counter[Verdict]:
        return Counter(r.verdict for r in self.rows)

    @property
    def kept(self) -> list[Experiment]:
        return [r for r in self.rows if r.verdict is Verdict.KEEP]

    @property
    def done(self) -> list[Experiment]:
        """Judged experiments proposed by an agent (the baseline and pending ones excluded)."""
        return [r for r in self.rows if r.verdict not in (Verdict.BASELINE, Verdict.PENDING)]

    @property
    def agent_cost(self) -> float:
        return sum(r.cost_usd or 0.0 for r in self.rows)

    @property
    def compute_cost(self) -> float:
        return compute_cost(sum(r.compute_seconds for r in self.rows), self.gpu_price)

    @property
    def spend(self) -> float:
        return self.agent_cost + self.compute_cost

    @property
    def unknown_prices(self) -> int:
        return sum(1 for r in self.rows if r.cost_usd is None)

    @property
    def wall_seconds(self) -> float:
        """From the first experiment's start to the last finish (or now, while one is pending)."""
        if not self.rows:
            return 0.0
        ends = [r.finished for r in self.rows if r.finished is not None]
        pending = any(r.verdict is Verdict.PENDING for r in self.rows)
        end = self._now if pending or not ends else max(ends)
        return max(0.0, end - min(r.started for r in self.rows))

    @property
    def per_hour(self) -> float | None:
        """Experiments judged per wall-clock hour; None in the first minute (no rate yet)."""
        seconds = self.wall_seconds
        return len(self.done) * 3600.0 / seconds if seconds >= 60.0 and self.done else None

    def gain(self, value: float | None) -> float | None:
        """``value`` against the baseline, in percent (negative: smaller)."""
        base = self.baseline.metric if self.baseline else None
        if value is None or base is None or base == 0:
            return None
        return (value - base) / abs(base) * 100.0


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
        """Every experiment of session ``tag`` by id; ``details`` adds rationale, diff and runs."""
        ledger = self._open()
        try:
            row = ledger.session(tag)
            found = ledger.experiments(row)
            return [_experiment(ledger, row, r) if details else _plain(r) for r in found]
        finally:
            ledger.close()

    def experiment(self, tag: str, experiment_id: int) -> Experiment:
        ledger = self._open()
        try:
            row = ledger.session(tag)
            return _experiment(ledger, row, ledger.experiment(row, experiment_id))
        finally:
            ledger.close()

    def history(self, session: Session, rows: Sequence[Experiment] | None = None) -> History:
        rows = self.experiments(session.tag) if rows is None else rows
        return History(rows, noise=session.noise, gpu_price=session.gpu_price or 0.0)

    def version(self, tag: str) -> tuple[Any, ...]:
        """Changes whenever an experiment of ``tag`` is added or judged (cheap, for polling)."""
        ledger = self._open()
        try:
            row = ledger.session(tag)
            marks = [(r.id, r.verdict, r.finished) for r in ledger.experiments(row)]
            return (row.status, row.updated, tuple(marks))
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
            noise=row.noise,
            gpu_price=None if price is None else float(price),
            alive=alive,
        )


def from_row(row: ExperimentRow) -> Experiment:
    """An engine event's ledger row as an ``Experiment`` (no rationale, diff or runs)."""
    return _plain(row)


def _plain(r: ExperimentRow) -> Experiment:
    usage = Usage(r.input_tokens, r.cached_tokens, r.output_tokens, r.cost_usd)
    return Experiment(
        id=r.id,
        verdict=Verdict(r.verdict),
        metric=r.metric,
        description=r.description,
        commit=r.commit,
        reason=r.reason,
        agent=r.agent,
        meta=r.meta,
        parent=r.parent,
        metrics=r.metrics,
        usage=usage,
        started=r.started,
        finished=r.finished,
        compute_seconds=r.compute_seconds,
    )


def _experiment(ledger: Ledger, session: SessionRow, r: ExperimentRow) -> Experiment:
    plain = _plain(r)
    proposal = ledger.proposal(session, r.id)
    runs = tuple(_run(x) for x in ledger.runs(session, r.id))
    if proposal is None:
        return replace(plain, runs=runs)
    return replace(plain, rationale=proposal.rationale, diff=proposal.diff, runs=runs)


def _run(r: RunRow) -> Run:
    return Run(
        experiment_id=r.experiment_id,
        index=r.idx,
        seed=r.seed,
        status=str(r.status),
        metric=r.metric,
        metrics=r.metrics,
        seconds=r.seconds,
        reason=r.reason,
        log_path=r.log_path,
        log_tail=r.log_tail,
    )


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
