"""The ledger: every session, experiment, run and proposal, in SQLite (WAL) on disk.

An experiment row is written as ``pending`` once its candidate is committed, and its
verdict is written before the branch moves: a kill at any point leaves either a recorded
experiment or nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import LedgerError

PENDING = "pending"  # the verdict of an experiment that is committed but not yet judged

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, tag TEXT UNIQUE NOT NULL, branch TEXT NOT NULL,
    base_commit TEXT NOT NULL, agent TEXT NOT NULL, metric TEXT NOT NULL, direction TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, status TEXT NOT NULL,
    stop_reason TEXT NOT NULL DEFAULT '', noise REAL, setup_done INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS experiments (
    session_id INTEGER NOT NULL REFERENCES sessions(id), id INTEGER NOT NULL,
    parent TEXT NOT NULL, commit_sha TEXT NOT NULL DEFAULT '', verdict TEXT NOT NULL,
    metric REAL, metrics TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '', agent TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL, finished REAL, compute_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, id)
);
CREATE TABLE IF NOT EXISTS proposals (
    session_id INTEGER NOT NULL, experiment_id INTEGER NOT NULL, agent TEXT NOT NULL,
    description TEXT NOT NULL, rationale TEXT NOT NULL DEFAULT '', diff TEXT NOT NULL DEFAULT '',
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL, meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, experiment_id)
);
CREATE TABLE IF NOT EXISTS runs (
    session_id INTEGER NOT NULL, experiment_id INTEGER NOT NULL, idx INTEGER NOT NULL,
    seed INTEGER NOT NULL, status TEXT NOT NULL, metric REAL, metrics TEXT NOT NULL DEFAULT '{}',
    seconds REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', log_path TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, experiment_id, idx)
);
"""


@dataclass(frozen=True)
class SessionRow:
    id: int
    tag: str
    branch: str
    base_commit: str
    agent: str
    metric: str
    direction: str
    created: float
    updated: float
    status: str  # running | stopped | finished
    stop_reason: str
    noise: float | None
    setup_done: bool
    config: Mapping[str, Any] = field(default_factory=dict)  # options the session started with


@dataclass(frozen=True)
class ProposalRecord:
    """What the ledger keeps of a proposal (never an API key)."""

    agent: str
    description: str
    rationale: str = ""
    diff: str = ""
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentRow:
    id: int
    parent: str
    commit: str
    verdict: str
    metric: float | None
    metrics: Mapping[str, float]
    reason: str
    description: str
    agent: str
    started: float
    finished: float | None
    compute_seconds: float
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRow:
    experiment_id: int
    idx: int
    seed: int
    status: str
    metric: float | None
    metrics: Mapping[str, float]
    seconds: float
    reason: str
    log_path: str
    log_tail: str = ""


_EXPERIMENT_SELECT = """
SELECT e.id, e.parent, e.commit_sha, e.verdict, e.metric, e.metrics, e.reason, e.description,
       e.agent, e.started, e.finished, e.compute_seconds,
       COALESCE(p.input_tokens, 0), COALESCE(p.cached_tokens, 0), COALESCE(p.output_tokens, 0),
       CASE WHEN p.experiment_id IS NULL THEN 0.0 ELSE p.cost_usd END, COALESCE(p.meta, '{}')
FROM experiments e LEFT JOIN proposals p ON p.session_id = e.session_id AND p.experiment_id = e.id
WHERE e.session_id = ?
"""


class Ledger:
    """The SQLite store of one task folder (``.autoresearch/ledger.db``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger: {exc}") from exc
        self._cache: dict[tuple[str, int], list[ExperimentRow]] = {}
        self._expected: str | None = None  # the experiments' digest after this ledger's last write

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._cache.clear()  # this process's reads are cached between its own writes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._expected is not None and self._fingerprint() != self._expected:
                raise LedgerError(
                    f"{self.path} was changed by another process since this orchestrator last wrote "
                    "it (a run writing to the ledger?); refusing to record on top of it"
                )
            yield self._db
            self._expected = self._fingerprint()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _fingerprint(self) -> str:
        """A digest of every experiment's outcome: what another writer must not change."""
        rows = self._db.execute(
            "SELECT session_id, id, parent, commit_sha, verdict, metric, metrics FROM experiments"
            " ORDER BY session_id, id"
        ).fetchall()
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    # --- sessions --------------------------------------------------------------------

    def create_session(self, tag: str, branch: str, base_commit: str, agent: str, metric: str,
                       direction: str, config: Mapping[str, Any] | None = None) -> SessionRow:  # fmt: skip
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions (tag, branch, base_commit, agent, metric, direction, created,"
                " updated, status, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (
                    tag,
                    branch,
                    base_commit,
                    agent,
                    metric,
                    direction,
                    now,
                    now,
                    json.dumps(config or {}),
                ),
            )
        return self.session(tag)

    def session(self, tag: str | None = None) -> SessionRow:
        """The session with ``tag``, or the most recent one."""
        sql = "SELECT id, tag, branch, base_commit, agent, metric, direction, created, updated, status,"
        sql += " stop_reason, noise, setup_done, config FROM sessions "
        row = self._db.execute(
            sql + ("WHERE tag = ?" if tag else "ORDER BY created DESC, id DESC LIMIT 1"),
            (tag,) if tag else (),
        ).fetchone()
        if row is None:
            raise LedgerError(
                f"no session {tag!r} in {self.path}" if tag else f"no sessions yet in {self.path}"
            )
        values: list[Any] = list(row)
        values[12] = bool(values[12])
        values[13] = json.loads(values[13])
        return SessionRow(*values)

    def has_session(self, tag: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM sessions WHERE tag = ?", (tag,)).fetchone() is not None
        )

    def sessions(self) -> list[SessionRow]:
        tags = [r[0] for r in self._db.execute("SELECT tag FROM sessions ORDER BY created, id")]
        return [self.session(t) for t in tags]

    def update_session(self, session: SessionRow, **fields: Any) -> None:
        allowed = {"status", "stop_reason", "noise", "setup_done", "agent", "config"}
        if not set(fields) <= allowed:
            raise LedgerError(f"cannot update session fields {sorted(set(fields) - allowed)}")
        if "config" in fields:
            fields["config"] = json.dumps(dict(fields["config"]))
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE sessions SET {sets}, updated = ? WHERE id = ?",
                       (*fields.values(), time.time(), session.id))  # fmt: skip

    # --- experiments -------------------------------------------------------------------

    def next_experiment_id(self, session: SessionRow) -> int:
        row = self._db.execute(
            "SELECT MAX(id) FROM experiments WHERE session_id = ?", (session.id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def begin_experiment(self, session: SessionRow, experiment_id: int, parent: str, commit: str,
                         proposal: ProposalRecord, *, verdict: str = PENDING, reason: str = "") -> None:  # fmt: skip
        """Record a candidate (pending) or a proposal that never ran (e.g. ``invalid``)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO experiments (session_id, id, parent, commit_sha, verdict, reason, description,"
                " agent, started, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, experiment_id, parent, commit, verdict, reason, proposal.description,
                 proposal.agent, now, None if verdict == PENDING else now),
            )  # fmt: skip
            db.execute(
                "INSERT INTO proposals (session_id, experiment_id, agent, description, rationale, diff,"
                " input_tokens, cached_tokens, output_tokens, cost_usd, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, experiment_id, proposal.agent, proposal.description, proposal.rationale,
                 proposal.diff, proposal.input_tokens, proposal.cached_tokens, proposal.output_tokens,
                 proposal.cost_usd, json.dumps(dict(proposal.meta), default=str)),
            )  # fmt: skip

    def add_run(self, session: SessionRow, run: RunRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (session_id, experiment_id, idx, seed, status, metric, metrics,"
                " seconds, reason, log_path, log_tail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, run.experiment_id, run.idx, run.seed, run.status, run.metric,
                 json.dumps(dict(run.metrics)), run.seconds, run.reason, run.log_path, run.log_tail),
            )  # fmt: skip

    def finish_experiment(self, session: SessionRow, experiment_id: int, verdict: str, metric: float | None,
                          reason: str, metrics: Mapping[str, float], compute_seconds: float) -> None:  # fmt: skip
        with self._tx() as db:
            db.execute(
                "UPDATE experiments SET verdict = ?, metric = ?, reason = ?, metrics = ?, finished = ?,"
                " compute_seconds = ? WHERE session_id = ? AND id = ?",
                (verdict, metric, reason, json.dumps(dict(metrics)), time.time(), compute_seconds,
                 session.id, experiment_id),
            )  # fmt: skip

    def clear_runs(self, session: SessionRow, experiment_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM runs WHERE session_id = ? AND experiment_id = ?",
                (session.id, experiment_id),
            )

    def experiments(self, session: SessionRow) -> list[ExperimentRow]:
        """Every experiment of ``session`` by id (cached until this ledger writes again)."""
        key = ("experiments", session.id)
        if key not in self._cache:
            rows = self._db.execute(_EXPERIMENT_SELECT + " ORDER BY e.id", (session.id,)).fetchall()
            self._cache[key] = [_experiment(r) for r in rows]
        return list(self._cache[key])

    def experiment(self, session: SessionRow, experiment_id: int) -> ExperimentRow:
        row = self._db.execute(
            _EXPERIMENT_SELECT + " AND e.id = ?", (session.id, experiment_id)
        ).fetchone()
        if row is None:
            raise LedgerError(f"session {session.tag!r} has no experiment {experiment_id}")
        return _experiment(row)

    def proposal(self, session: SessionRow, experiment_id: int) -> ProposalRecord | None:
        row = self._db.execute(
            "SELECT agent, description, rationale, diff, input_tokens, cached_tokens, output_tokens,"
            " cost_usd, meta FROM proposals WHERE session_id = ? AND experiment_id = ?",
            (session.id, experiment_id),
        ).fetchone()
        if row is None:
            return None
        values: list[Any] = [*row[:8], json.loads(row[8])]
        return ProposalRecord(*values)

    def runs(self, session: SessionRow, experiment_id: int) -> list[RunRow]:
        rows = self._db.execute(
            "SELECT experiment_id, idx, seed, status, metric, metrics, seconds, reason, log_path, log_tail"
            " FROM runs WHERE session_id = ? AND experiment_id = ? ORDER BY idx",
            (session.id, experiment_id),
        ).fetchall()
        return [
            RunRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])
            for r in rows
        ]


def _experiment(r: Sequence[Any]) -> ExperimentRow:
    return ExperimentRow(
        id=r[0], parent=r[1], commit=r[2], verdict=r[3], metric=r[4], metrics=json.loads(r[5]),
        reason=r[6], description=r[7], agent=r[8], started=r[9], finished=r[10], compute_seconds=r[11],
        input_tokens=r[12], cached_tokens=r[13], output_tokens=r[14], cost_usd=r[15], meta=json.loads(r[16]),
    )  # fmt: skip


class SessionLock:
    """One orchestrator per session: an exclusive ``flock`` on ``.autoresearch/locks/<tag>.lock``."""

    def __init__(self, state_dir: Path, tag: str) -> None:
        self.path = state_dir / "locks" / f"{tag}.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        import fcntl
        import os

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

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def held_elsewhere(self) -> bool:
        """True while some process holds the lock (for ``status``)."""
        import fcntl

        if not self.path.exists():
            return False
        with self.path.open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False


def best_row(rows: Sequence[ExperimentRow]) -> ExperimentRow | None:
    """The current best: the last ``baseline`` or ``keep`` to be judged."""
    judged = [r for r in rows if r.verdict in ("baseline", "keep")]
    return max(judged, key=lambda r: (r.finished or 0.0, r.id)) if judged else None


def export_tsv(rows: Sequence[ExperimentRow], metric: str, path: Path) -> int:
    """results.tsv with our verdicts; ``autoresearch.report.export`` writes it now (old callers)."""
    from autoresearch.report.export import write_tsv

    return write_tsv(rows, metric, path, verdicts=True)


__all__ = [
    "PENDING",
    "ExperimentRow",
    "Ledger",
    "ProposalRecord",
    "RunRow",
    "SessionLock",
    "SessionRow",
    "best_row",
    "export_tsv",
]
