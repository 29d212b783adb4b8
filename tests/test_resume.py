"""Resume: SIGKILL the orchestrator at various points; --resume loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import git, write_patch_dir
from test_engine import sr, toy

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.ledger import Ledger

VALUES = [2.0, 1.5, 2.5, 3.0, 0.5, 2.9]
SLOW_PARAMS = "".join(f"V{i} = None\n" for i in range(len(VALUES))) + (
    "X = next(v for v in ["
    + ", ".join(f"V{i}" for i in reversed(range(len(VALUES))))
    + ", 1.0] if v is not None)\n"
    "Y = 2.0\n"
    "import time\n"
    "time.sleep(0.4)  # every run takes a moment, so kills land mid-run too\n"
)


def slow_task(tmp_path: Path) -> Path:
    repo = toy(tmp_path)
    (repo / "params.py").write_text(SLOW_PARAMS)
    git(repo, "commit", "-qam", "slow params")
    return repo


def slow_patches(folder: Path) -> Path:
    """Patch i sets V{i}; the latest set V wins, so every patch applies to any parent."""
    patches = {
        f"{i:02d}": sr("params.py", f"V{i} = None", f"V{i} = {v}", f"X {v}")
        for i, v in enumerate(VALUES)
    }
    return write_patch_dir(folder, patches)


def cli(repo: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "autoresearch", "-C", str(repo), "run", "--tag", "t",
                             "--agent", "replay", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def check_consistent(repo: Path) -> None:
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.db")
    rows = db.execute(
        "SELECT e.id, e.verdict, e.metric, e.commit_sha, p.meta FROM experiments e"
        " LEFT JOIN proposals p ON p.experiment_id = e.id ORDER BY e.id"
    ).fetchall()
    ids = [r[0] for r in rows]
    assert ids == list(range(len(ids)))
    patches = [r[4] for r in rows if r[1] != "baseline"]
    assert len(patches) == len(set(patches)) == len(VALUES)  # every patch exactly once
    assert all(r[1] in ("baseline", "keep", "discard") for r in rows), rows
    best = min((r for r in rows if r[1] in ("baseline", "keep")), key=lambda r: r[2])
    assert best[2] <= 13.0 and all(r[2] >= best[2] for r in rows if r[2] is not None)
    assert git(repo, "rev-parse", "autoresearch/t") == best[3]
    refs = git(
        repo, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t/discarded/"
    ).split()
    assert sorted(int(r.rsplit("/", 1)[1]) for r in refs) == [
        r[0] for r in rows if r[1] == "discard"
    ]
    assert git(repo, "status", "--porcelain") == ""
    assert not list((repo / ".autoresearch" / "logs" / "t").glob("*.pid"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "delays", [(0.4,), (1.1,), (2.3,), (1.6, 1.2)], ids=["setup", "baseline", "mid", "twice"]
)
def test_sigkill_then_resume(tmp_path: Path, delays: tuple[float, ...]) -> None:
    repo = slow_task(tmp_path)
    patches = slow_patches(tmp_path / "p")
    args: list[str] = ["--patches", str(patches)]
    for i, delay in enumerate(delays):
        proc = cli(repo, *args, *(["--resume"] if i else []))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = cli(repo, *args, "--resume")  # whatever state the kill left, even none at all
    assert final.wait(timeout=120) == 0
    check_consistent(repo)


def test_resume_moves_the_branch_when_the_kill_came_after_the_verdict(tmp_path: Path) -> None:
    repo = slow_task(tmp_path)
    patches = slow_patches(tmp_path / "p")
    opts = SessionOptions(tag="t", max_experiments=2)
    Engine(load_config(repo), ReplayAgent(patches), options=opts).run()
    best = git(repo, "rev-parse", "autoresearch/t")
    git(
        repo, "update-ref", "refs/heads/autoresearch/t", f"{best}~1"
    )  # as if killed before the move
    git(repo, "update-ref", "-d", "refs/autoresearch/t/discarded/2")
    kept = git(repo, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t/kept/").split()
    assert kept
    for ref in kept:  # killed after the verdict, before the kept ref was written
        git(repo, "update-ref", "-d", ref)
    messages: list[str] = []
    opts = SessionOptions(tag="t", resume=True, max_experiments=len(VALUES))  # lifts the limit of 2
    engine = Engine(load_config(repo), ReplayAgent(patches), options=opts, on_message=messages.append)
    engine.run()
    assert any("moved autoresearch/t" in m for m in messages)
    check_consistent(repo)
    for ref in kept:
        assert git(repo, "rev-parse", "--verify", "--quiet", ref), f"{ref} not restored"


def test_resume_refuses_a_branch_moved_by_hand(tmp_path: Path) -> None:
    from autoresearch.errors import WorkspaceError

    repo = slow_task(tmp_path)
    patches = slow_patches(tmp_path / "p")
    Engine(
        load_config(repo), ReplayAgent(patches), options=SessionOptions(tag="t", max_experiments=1)
    ).run()
    (repo / "other.txt").write_text("x")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-qm", "unrelated")
    git(repo, "update-ref", "refs/heads/autoresearch/t", "HEAD")
    with pytest.raises(WorkspaceError, match="moved by hand"):
        Engine(
            load_config(repo), ReplayAgent(patches), options=SessionOptions(tag="t", resume=True)
        ).run()
    ledger = Ledger(repo / ".autoresearch" / "ledger.db")
    try:  # the refusal changed nothing: the session is still the finished one it was
        session = ledger.session("t")
        assert (session.status, session.stop_reason) == ("finished", "reached --max-experiments 1")
    finally:
        ledger.close()


def test_orphaned_run_is_killed_on_resume(tmp_path: Path) -> None:
    # The re-run of the hanging experiment times out fast; unsandboxed, its pid is the host's.
    repo = toy(tmp_path, timeout=3, task='sandbox = "none"')
    code = "import os, time\nopen(os.environ['AUTORESEARCH_OUT'] + '/../pid', 'w').write(str(os.getpid()))\ntime.sleep(300)"
    hang = {"01": sr("params.py", "Y = 2.0", "Y = 2.0\n" + code, "hang")}
    patches = write_patch_dir(tmp_path / "p", hang)
    proc = cli(repo, "--patches", str(patches))
    pidfile = repo / ".autoresearch" / "runs" / "t" / "pid"
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphan = int(pidfile.read_text())
    os.kill(orphan, 0)  # still running after its orchestrator died
    resumed = cli(repo, "--patches", str(patches), "--resume", "--max-experiments", "0")
    assert resumed.wait(timeout=60) == 0
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)


def test_resume_with_two_slots_waits_for_a_rerun_baseline(tmp_path: Path) -> None:
    from autoresearch.executors import LocalExecutor

    repo = slow_task(tmp_path)
    patches = slow_patches(tmp_path / "p")
    proc = cli(repo, "--patches", str(patches))
    log = repo / ".autoresearch" / "logs" / "t" / "0000-0.log"
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed during the baseline
    proc.wait()
    executor = LocalExecutor(slots=2)
    opts = SessionOptions(tag="t", resume=True)
    Engine(load_config(repo), ReplayAgent(patches), options=opts, executor=executor).run()
    executor.close()
    check_consistent(repo)


def test_the_hours_of_an_invocation_killed_outright_count_towards_max_hours(tmp_path: Path) -> None:
    """hours_used was written only when a session closed: after a kill -9 a resume started the
    --max-hours budget again (a night of preemptions never reached it)."""
    import json

    repo = slow_task(tmp_path)
    proc = cli(repo, "--patches", str(slow_patches(tmp_path / "p")), "--max-hours", "1")
    db_path, deadline, rows = repo / ".autoresearch" / "ledger.db", time.monotonic() + 120, 0
    while rows < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        if db_path.exists():
            with sqlite3.connect(db_path) as db:
                rows = db.execute("SELECT COUNT(*) FROM experiments WHERE finished IS NOT NULL").fetchone()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows >= 3
    with sqlite3.connect(db_path) as db:
        config, status = db.execute("SELECT config, status FROM sessions").fetchone()
        first, last = db.execute("SELECT MIN(started), MAX(finished) FROM experiments").fetchone()
    assert status == "running"  # killed: never closed
    hours = json.loads(config)["hours_used"]
    assert hours * 3600 >= last - first > 0, (hours * 3600, last - first)
    resumed = subprocess.run([sys.executable, "-m", "autoresearch", "-C", str(repo), "run", "--tag", "t", "--resume",
                              "--max-hours", f"{hours / 2:.8f}"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "reached --max-hours" in resumed.stdout, resumed.stdout
