"""The ledger: every session, experiment, run and proposal, in SQLite (WAL) on disk.

An experiment row is written as ``pending`` once its candidate is committed, and its
verdict is written before the branch moves: a kill at any point leaves either a recorded
experiment or nothing. Rows come back as ``records.Experiment`` (with its runs); the
ledger converts verdicts and statuses to text at this edge only.

Reads are served from an in-memory mirror of each session that this process keeps in
step with its own writes, so a write costs O(1) however long the session. Another
writer is noticed through ``PRAGMA data_version`` (it changes when any other connection
commits): only then are this process's sessions read back and compared, every table of
them, and a difference stops the recording. Two sessions (tags) of one task folder write
the same file side by side without disturbing each other.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoresearch.errors import LedgerError
from autoresearch.records import Experiment, Run, RunPurpose, RunStatus, Usage, Verdict

SCHEMA_VERSION = 3

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
    tree TEXT NOT NULL DEFAULT '',
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
    log_tail TEXT NOT NULL DEFAULT '', purpose TEXT NOT NULL DEFAULT 'select', check_seconds REAL,
    evaluate_seconds REAL, PRIMARY KEY (session_id, experiment_id, idx)
);
"""

# Columns added since the first release, and how older ledgers get them.
_MIGRATIONS = (
    ("experiments", "tree", "ALTER TABLE experiments ADD COLUMN tree TEXT NOT NULL DEFAULT ''"),
    ("runs", "purpose", "ALTER TABLE runs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'select'"),
    ("runs", "check_seconds", "ALTER TABLE runs ADD COLUMN check_seconds REAL"),  # NULL: not recorded
    ("runs", "evaluate_seconds", "ALTER TABLE runs ADD COLUMN evaluate_seconds REAL"),
)


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


_SESSION_SELECT = (
    "SELECT id, tag, branch, base_commit, agent, metric, direction, created, updated, status,"
    " stop_reason, noise, setup_done, config FROM sessions "
)
_EXPERIMENT_SELECT = """
SELECT e.id, e.verdict, e.metric, COALESCE(p.description, e.description), e.commit_sha, e.reason,
       e.agent, COALESCE(p.meta, '{}'), e.parent, e.metrics, COALESCE(p.rationale, ''),
       COALESCE(p.diff, ''), COALESCE(p.input_tokens, 0), COALESCE(p.cached_tokens, 0),
       COALESCE(p.output_tokens, 0), CASE WHEN p.experiment_id IS NULL THEN 0.0 ELSE p.cost_usd END,
       e.started, e.finished, e.compute_seconds, e.tree
FROM experiments e LEFT JOIN proposals p ON p.session_id = e.session_id AND p.experiment_id = e.id
WHERE e.session_id = ? ORDER BY e.id
"""
_RUN_SELECT = (
    "SELECT experiment_id, idx, seed, status, metric, metrics, seconds, reason, log_path, log_tail,"
    " purpose, check_seconds, evaluate_seconds FROM runs WHERE session_id = ? ORDER BY experiment_id, idx"
)


class Ledger:
    """The SQLite store of one task folder (``.autoresearch/ledger.db``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._set_up()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{self.path}: not a readable autoresearch ledger ({exc}); move it away to start "
                "afresh, or restore it from a backup"
            ) from exc
        self._mirror: dict[int, dict[int, Experiment]] = {}  # session id -> id -> record
        self._sessions: dict[int, SessionRow] = {}  # as this process last wrote them
        self._version = self._data_version()

    def close(self) -> None:
        self._db.close()

    def _set_up(self, wait: float = 30.0) -> None:
        """WAL mode and the schema. Two processes opening a new ledger at once (two tags in one
        folder) can find it locked where SQLite calls no busy handler (switching the journal
        mode): that is waited out, like any other lock."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: written by a newer autoresearch (schema {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade autoresearch"
            )
        self._db.executescript(_SCHEMA)
        for table, column, sql in _MIGRATIONS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                try:
                    self._db.execute(sql)
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
        if version != SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # --- transactions and the outside-writer check ---------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from exc
        try:
            if self._data_version() != self._version:
                self._check_unchanged()
            yield self._db
        except sqlite3.DatabaseError as exc:
            self._db.execute("ROLLBACK")
            raise LedgerError(f"{self.path}: cannot write the ledger: {exc}") from exc
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._version = self._data_version()

    def _check_unchanged(self) -> None:
        """Another connection wrote: this process's sessions must read back as it left them."""
        for session_id, mirror in self._mirror.items():
            written = self._sessions.get(session_id)
            if written is not None and self._read_session("WHERE id = ?", (session_id,)) != written:
                self._foreign(f"session {written.tag!r}")
            if self._read_experiments(session_id) != mirror:
                self._foreign("its experiments, runs or proposals")

    def _foreign(self, what: str) -> None:
        raise LedgerError(
            f"{self.path}: {what} changed by another process since this orchestrator last wrote "
            "(a run writing to the ledger?); refusing to record on top of it"
        )

    # --- sessions --------------------------------------------------------------------

    def create_session(self, tag: str, branch: str, base_commit: str, agent: str, metric: str,
                       direction: str, config: Mapping[str, Any] | None = None) -> SessionRow:  # fmt: skip
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions (tag, branch, base_commit, agent, metric, direction, created,"
                " updated, status, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (tag, branch, base_commit, agent, metric, direction, now, now,
                 json.dumps(dict(config or {}))),
            )  # fmt: skip
        session = self.session(tag)
        self._sessions[session.id] = session
        self._mirror[session.id] = {}
        return session

    def _read_session(self, where: str, args: tuple[Any, ...]) -> SessionRow | None:
        try:
            row = self._db.execute(_SESSION_SELECT + where, args).fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot read the ledger: {exc}") from exc
        if row is None:
            return None
        values: list[Any] = list(row)
        values[12] = bool(values[12])
        values[13] = json.loads(values[13])
        return SessionRow(*values)

    def session(self, tag: str | None = None) -> SessionRow:
        """The session with ``tag``, or the most recent one."""
        if tag:
            found = self._read_session("WHERE tag = ?", (tag,))
        else:
            found = self._read_session("ORDER BY created DESC, id DESC LIMIT 1", ())
        if found is None:
            raise LedgerError(
                f"no session {tag!r} in {self.path}" if tag else f"no sessions yet in {self.path}"
            )
        return found

    def has_session(self, tag: str) -> bool:
        return self._read_session("WHERE tag = ?", (tag,)) is not None

    def sessions(self) -> list[SessionRow]:
        tags = [r[0] for r in self._db.execute("SELECT tag FROM sessions ORDER BY created, id")]
        return [self.session(t) for t in tags]

    def update_session(self, session: SessionRow, **fields: Any) -> SessionRow:
        """Change a session's fields; returns the session as now recorded."""
        allowed = {"status", "stop_reason", "noise", "setup_done", "agent", "config", "base_commit",
                   "metric", "direction"}  # fmt: skip
        if not set(fields) <= allowed:
            raise LedgerError(f"cannot update session fields {sorted(set(fields) - allowed)}")
        values = {k: json.dumps(dict(v)) if k == "config" else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            db.execute(f"UPDATE sessions SET {sets}, updated = ? WHERE id = ?",
                       (*values.values(), time.time(), session.id))  # fmt: skip
            updated = self._read_session("WHERE id = ?", (session.id,))
        assert updated is not None
        self._sessions[session.id] = updated
        return updated

    # --- experiments -------------------------------------------------------------------

    def _rows(self, session: SessionRow) -> dict[int, Experiment]:
        if session.id not in self._mirror:
            self._mirror[session.id] = self._read_experiments(session.id)
            self._sessions.setdefault(session.id, session)
        return self._mirror[session.id]

    def next_experiment_id(self, session: SessionRow) -> int:
        rows = self._rows(session)
        return max(rows, default=-1) + 1

    def begin(self, session: SessionRow, experiment: Experiment) -> Experiment:
        """Record a candidate (``pending``) or a proposal that never ran (``invalid``, ...)."""
        now = time.time()
        exp = replace(experiment, started=experiment.started or now, runs=(),
                      finished=None if experiment.verdict is Verdict.PENDING else now)  # fmt: skip
        usage = exp.usage
        with self._tx() as db:
            db.execute(
                "INSERT INTO experiments (session_id, id, parent, commit_sha, verdict, metric, metrics,"
                " reason, description, agent, started, finished, tree)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, exp.id, exp.parent, exp.commit, str(exp.verdict), exp.metric,
                 json.dumps(dict(exp.metrics)), exp.reason, exp.description, exp.agent,
                 exp.started, exp.finished, exp.tree),
            )  # fmt: skip
            db.execute(
                "INSERT INTO proposals (session_id, experiment_id, agent, description, rationale, diff,"
                " input_tokens, cached_tokens, output_tokens, cost_usd, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, exp.id, exp.agent, exp.description, exp.rationale, exp.diff,
                 usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.cost_usd,
                 json.dumps(dict(exp.meta), default=str)),
            )  # fmt: skip
        exp = replace(exp, meta=json.loads(json.dumps(dict(exp.meta), default=str)))
        self._rows(session)[exp.id] = exp
        return exp

    def add_run(self, session: SessionRow, run: Run) -> Experiment:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (session_id, experiment_id, idx, seed, status, metric, metrics,"
                " seconds, reason, log_path, log_tail, purpose, check_seconds, evaluate_seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, run.experiment_id, run.index, run.seed, str(run.status), run.metric,
                 json.dumps(dict(run.metrics)), run.seconds, run.reason, run.log_path, run.log_tail,
                 str(run.purpose), run.check_seconds, run.evaluate_seconds),
            )  # fmt: skip
        rows = self._rows(session)
        exp = rows[run.experiment_id]
        runs = (*tuple(r for r in exp.runs if r.index != run.index), run)
        rows[exp.id] = replace(exp, runs=tuple(sorted(runs, key=lambda r: r.index)))
        return rows[exp.id]

    def finish(self, session: SessionRow, experiment_id: int, verdict: Verdict, metric: float | None,
               reason: str, metrics: Mapping[str, float], compute_seconds: float) -> Experiment:  # fmt: skip
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE experiments SET verdict = ?, metric = ?, reason = ?, metrics = ?, finished = ?,"
                " compute_seconds = ? WHERE session_id = ? AND id = ?",
                (str(verdict), metric, reason, json.dumps(dict(metrics)), now, compute_seconds,
                 session.id, experiment_id),
            )  # fmt: skip
        rows = self._rows(session)
        rows[experiment_id] = replace(rows[experiment_id], verdict=verdict, metric=metric,
                                      reason=reason, metrics=dict(metrics), finished=now,
                                      compute_seconds=compute_seconds)  # fmt: skip
        return rows[experiment_id]

    def clear_runs(self, session: SessionRow, experiment_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM runs WHERE session_id = ? AND experiment_id = ?",
                (session.id, experiment_id),
            )
        rows = self._rows(session)
        rows[experiment_id] = replace(rows[experiment_id], runs=())

    def experiments(self, session: SessionRow) -> list[Experiment]:
        """Every experiment of ``session`` by id, each with its runs."""
        rows = self._rows(session)  # recorded in id order but for proposals a stop leaves unrun
        return [rows[i] for i in sorted(rows)]

    def marks(self, session: SessionRow) -> list[tuple[int, str, float | None]]:
        """(id, verdict, finished) of every experiment of ``session``: a cheap look for change
        (no proposal text, no runs)."""
        try:
            query = "SELECT id, verdict, finished FROM experiments WHERE session_id = ? ORDER BY id"
            return [tuple(r) for r in self._db.execute(query, (session.id,)).fetchall()]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot read the ledger: {exc}") from exc

    def experiment(self, session: SessionRow, experiment_id: int) -> Experiment:
        found = self._rows(session).get(experiment_id)
        if found is None:
            raise LedgerError(f"session {session.tag!r} has no experiment {experiment_id}")
        return found

    def _read_experiments(self, session_id: int) -> dict[int, Experiment]:
        try:
            rows = self._db.execute(_EXPERIMENT_SELECT, (session_id,)).fetchall()
            runs = self._db.execute(_RUN_SELECT, (session_id,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot read the ledger: {exc}") from exc
        by_experiment: dict[int, list[Run]] = {}
        for r in runs:
            by_experiment.setdefault(r[0], []).append(_run(r))
        out = {}
        for r in rows:
            exp = _experiment(r, tuple(by_experiment.get(r[0], ())))
            out[exp.id] = exp
        return out


def _run(r: Sequence[Any]) -> Run:
    return Run(
        experiment_id=r[0], index=r[1], seed=r[2], status=RunStatus(r[3]), metric=r[4],
        metrics=json.loads(r[5]), seconds=r[6], reason=r[7], log_path=r[8], log_tail=r[9],
        purpose=RunPurpose(r[10]), check_seconds=r[11], evaluate_seconds=r[12],
    )  # fmt: skip


def _experiment(r: Sequence[Any], runs: tuple[Run, ...]) -> Experiment:
    try:
        verdict = Verdict(r[1])
    except ValueError as exc:
        raise LedgerError(f"experiment {r[0]} has an unknown verdict {r[1]!r}") from exc
    usage = Usage(input_tokens=r[12], cached_tokens=r[13], output_tokens=r[14], cost_usd=r[15])
    return Experiment(
        id=r[0], verdict=verdict, metric=r[2], description=r[3], commit=r[4], reason=r[5],
        agent=r[6], meta=json.loads(r[7]), parent=r[8], metrics=json.loads(r[9]), rationale=r[10],
        diff=r[11], usage=usage, started=r[16], finished=r[17], compute_seconds=r[18], tree=r[19],
        runs=runs,
    )  # fmt: skip




__all__ = ["SCHEMA_VERSION", "Ledger", "SessionRow"]
