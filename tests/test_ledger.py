"""The ledger: records round-trip, version-1 files migrate, outside writers are caught in any table, two sessions share a file, corrupt files are one clear error."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.errors import LedgerError
from autoresearch.ledger import SCHEMA_VERSION, Ledger
from autoresearch.records import Experiment, Run, RunPurpose, RunStatus, Usage, Verdict

V1 = """
CREATE TABLE sessions (id INTEGER PRIMARY KEY, tag TEXT UNIQUE NOT NULL, branch TEXT NOT NULL,
    base_commit TEXT NOT NULL, agent TEXT NOT NULL, metric TEXT NOT NULL, direction TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, status TEXT NOT NULL,
    stop_reason TEXT NOT NULL DEFAULT '', noise REAL, setup_done INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE experiments (session_id INTEGER NOT NULL, id INTEGER NOT NULL, parent TEXT NOT NULL,
    commit_sha TEXT NOT NULL DEFAULT '', verdict TEXT NOT NULL, metric REAL,
    metrics TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '', agent TEXT NOT NULL DEFAULT '', started REAL NOT NULL,
    finished REAL, compute_seconds REAL NOT NULL DEFAULT 0, PRIMARY KEY (session_id, id));
CREATE TABLE proposals (session_id INTEGER NOT NULL, experiment_id INTEGER NOT NULL,
    agent TEXT NOT NULL, description TEXT NOT NULL, rationale TEXT NOT NULL DEFAULT '',
    diff TEXT NOT NULL DEFAULT '', input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL, meta TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (session_id, experiment_id));
CREATE TABLE runs (session_id INTEGER NOT NULL, experiment_id INTEGER NOT NULL, idx INTEGER NOT NULL,
    seed INTEGER NOT NULL, status TEXT NOT NULL, metric REAL, metrics TEXT NOT NULL DEFAULT '{}',
    seconds REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', log_path TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '', PRIMARY KEY (session_id, experiment_id, idx));
INSERT INTO sessions VALUES (1, 'old', 'autoresearch/old', 'abc', 'tuner', 'score', 'minimize',
    1.0, 2.0, 'finished', '', 0.5, 1, '{"seed": 3}');
INSERT INTO experiments VALUES (1, 0, 'abc', 'abc', 'baseline', 2.5, '{"score": 2.5}', '',
    'baseline', 'baseline', 1.0, 1.5, 0.5);
INSERT INTO proposals VALUES (1, 0, 'baseline', 'baseline', '', '', 0, 0, 0, 0.0, '{}');
INSERT INTO runs VALUES (1, 0, 0, 17, 'ok', 2.5, '{"score": 2.5}', 0.4, '', 'log', 'tail');
"""


def session(ledger: Ledger, tag: str = "t"):  # type: ignore[no-untyped-def]
    return ledger.create_session(tag, f"autoresearch/{tag}", "abc", "replay", "score", "minimize")


def test_records_round_trip_with_their_runs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    s = session(ledger)
    row = Experiment(1, Verdict.PENDING, None, "try X", commit="c1", agent="replay", parent="abc",
                     meta={"patch": "01"}, diff="+X", usage=Usage(10, 2, 3, None), tree="t1")  # fmt: skip
    ledger.begin(s, row)
    ledger.add_run(s, Run(1, 0, 5, RunStatus.OK, 1.5, {"score": 1.5}, 0.3, purpose=RunPurpose.SELECT))
    ledger.add_run(s, Run(1, 1, 6, RunStatus.OK, 1.4, {"score": 1.4}, 0.3, purpose=RunPurpose.RESCORE,
                          evaluate_seconds=2.5))  # fmt: skip
    ledger.finish(s, 1, Verdict.KEEP, 1.4, "better", {"score": 1.45}, 0.6)
    mirrored = ledger.experiment(s, 1)
    fresh = Ledger(tmp_path / "ledger.db").experiment(s, 1)
    assert fresh == mirrored  # what this process keeps in memory is what is on disk
    assert fresh.verdict is Verdict.KEEP and fresh.usage.cost_usd is None and fresh.tree == "t1"
    assert [r.purpose for r in fresh.runs] == [RunPurpose.SELECT, RunPurpose.RESCORE]
    assert [r.evaluate_seconds for r in fresh.runs] == [None, 2.5]


def test_a_version_1_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.close()
    ledger = Ledger(path)
    old = ledger.session("old")
    rows = ledger.experiments(old)
    assert rows[0].verdict is Verdict.BASELINE and rows[0].metric == 2.5
    assert rows[0].runs[0].purpose is RunPurpose.SELECT and rows[0].runs[0].seed == 17
    assert rows[0].runs[0].evaluate_seconds is None  # not recorded then: the budget rule leaves it out
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION


@pytest.mark.parametrize("sql", [
    "UPDATE experiments SET metric = 0.001 WHERE id = 1",
    "UPDATE proposals SET meta = '{\"cmd\": \"rm -rf ~\"}' WHERE experiment_id = 1",
    "UPDATE runs SET metric = 0.001",
    "UPDATE sessions SET config = '{\"agent_flags\": {\"cmd\": \"evil\"}}'",
], ids=["experiments", "proposals", "runs", "sessions"])  # fmt: skip
def test_a_change_by_another_process_to_any_table_stops_the_recording(tmp_path: Path, sql: str) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    s = session(ledger)
    ledger.begin(s, Experiment(1, Verdict.PENDING, None, "x", parent="abc", commit="c1"))
    ledger.add_run(s, Run(1, 0, 5, RunStatus.OK, 1.5))
    other = sqlite3.connect(tmp_path / "ledger.db")
    other.execute(sql)
    other.commit()
    with pytest.raises(LedgerError, match="changed by another process"):
        ledger.finish(s, 1, Verdict.KEEP, 1.5, "", {}, 0.1)


def test_two_sessions_write_one_file_side_by_side(tmp_path: Path) -> None:
    a, b = Ledger(tmp_path / "ledger.db"), Ledger(tmp_path / "ledger.db")
    sa, sb = session(a, "a"), session(b, "b")
    for i in range(3):
        a.begin(sa, Experiment(i, Verdict.PENDING, None, f"a{i}", parent="abc"))
        b.begin(sb, Experiment(i, Verdict.PENDING, None, f"b{i}", parent="abc"))
    assert [r.description for r in Ledger(tmp_path / "ledger.db").experiments(sa)] == ["a0", "a1", "a2"]


def test_a_corrupt_ledger_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="not a readable autoresearch ledger"):
        Ledger(path)


def test_many_processes_opening_a_new_ledger_at_once_all_get_it(tmp_path: Path) -> None:
    """Two tags started together in one folder open a ledger that does not exist yet: switching
    it to WAL can find it locked without SQLite waiting, and that must be waited out."""
    code = ("import sys, time; from autoresearch.ledger import Ledger\n"
            "t = float(sys.argv[2])\n"
            "while time.time() < t: pass\n"
            "Ledger(sys.argv[1]).close()")  # fmt: skip
    for attempt in range(3):
        path = tmp_path / f"l{attempt}" / "ledger.db"
        start = f"{time.time() + 1.5:.3f}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path), start], stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]  # fmt: skip
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(errors)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
