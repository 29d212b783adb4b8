"""How people really run it, as real processes: two tags side by side, a failed baseline run again, a closed pipe."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import git, write_patch_dir
from test_engine import toy
from test_resume import slow_patches, slow_task


def ar(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "autoresearch", "-C", str(repo), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_two_tags_in_one_folder_run_side_by_side(tmp_path: Path) -> None:
    repo = slow_task(tmp_path)
    patches = slow_patches(tmp_path / "p")
    procs = [ar(repo, "run", "--tag", tag, "--agent", "replay", "--patches", str(patches),
                "--max-experiments", "3") for tag in ("a", "b")]  # fmt: skip
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "reached --max-experiments 3" in out
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.db")
    for tag in ("a", "b"):
        rows = db.execute(
            "SELECT e.verdict FROM experiments e JOIN sessions s ON s.id = e.session_id"
            " WHERE s.tag = ? ORDER BY e.id", (tag,)
        ).fetchall()
        assert rows[0][0] == "baseline" and len(rows) == 4
        assert "pending" not in {r[0] for r in rows}
        assert git(repo, "rev-parse", f"autoresearch/{tag}")


def test_a_failed_baseline_runs_again_under_its_tag_once_fixed(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    (repo / "params.py").write_text("raise SystemExit('broken task')\n")
    git(repo, "commit", "-qam", "break the task")
    patches = write_patch_dir(tmp_path / "p", {"01": "# nothing\nparams.py\n<<<<<<< SEARCH\nX = 1.0\n=======\nX = 2.0\n>>>>>>> REPLACE\n"})
    first = ar(repo, "run", "--tag", "t", "--agent", "replay", "--patches", str(patches))
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1 and "the baseline failed" in out + err
    git(repo, "checkout", "-q", "HEAD~1", "--", "params.py")
    git(repo, "commit", "-qam", "fix the task")
    again = ar(repo, "run", "--tag", "t", "--agent", "replay", "--patches", str(patches))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "its baseline failed before; running it again" in err
    log = ar(repo, "log", "--tag", "t").communicate(timeout=60)[0]
    verdicts = [line.split()[2] for line in log.splitlines()[1:]]
    assert verdicts == ["crash", "baseline", "keep"]  # the failed attempt stays recorded


def test_log_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {f"{i:02d}": f"# p{i}\nparams.py\n<<<<<<< SEARCH\nY = 2.0\n=======\nY = {i}.5\n>>>>>>> REPLACE\n" for i in range(3)})
    assert ar(repo, "run", "--tag", "t", "--agent", "replay", "--patches", str(patches)).wait(120) == 0
    shell = f"{sys.executable} -m autoresearch -C {repo} log | head -1; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_run_whose_reader_goes_away_finishes_its_session(tmp_path: Path) -> None:
    """``run ... | head -1`` ended the session: "stopped — error: [Errno 32] Broken pipe"."""
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {f"{i:02d}": f"# p{i}\nparams.py\n<<<<<<< SEARCH\nY = 2.0\n=======\nY = {i}.5\n>>>>>>> REPLACE\n" for i in range(4)})
    shell = (f"{sys.executable} -m autoresearch -C {repo} run --tag t --agent replay --patches {patches} "
             "2>/dev/null | head -1; exit ${PIPESTATUS[0]}")  # fmt: skip
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.db")
    status, reason = db.execute("SELECT status, stop_reason FROM sessions WHERE tag = 't'").fetchone()
    assert status == "finished" and "Broken pipe" not in reason, (status, reason)
    assert db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 5  # the baseline and 4 patches
    broken = toy(tmp_path / "broken", files={"score.py": "import sys\nsys.exit(3)\n"})
    shell = (f"{sys.executable} -m autoresearch -C {broken} run --tag t --agent replay --patches {patches} "
             "2>/dev/null | head -1; exit ${PIPESTATUS[0]}")  # fmt: skip
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # no baseline, whoever reads the output


SLOW_AGENT = """\
import sys, time
from pathlib import Path
from autoresearch.agents._base import Agent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.records import Edit, Proposal

class Slow(Agent):
    name = "slow"

    def propose(self, context):
        if context.experiment_id > 1:  # ignores cancel(): the shutdown waits for this proposal
            Path(sys.argv[2]).write_text("proposing")
            time.sleep(8)
        text = f"X = {1.0 + context.experiment_id}\\nY = 2.0\\n"
        return Proposal(f"X {context.experiment_id}", edits=(Edit("params.py", content=text),))

summary = Engine(load_config(sys.argv[1]), Slow(), options=SessionOptions(tag="t")).run()
sys.exit(128 + summary.signal if summary.signal else 0)
"""


def start_slow_session(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A session whose agent, asked for its third proposal, sleeps 8 s and ignores cancel();
    returned once it is in that call."""
    import time

    repo = toy(tmp_path)
    (tmp_path / "agent.py").write_text(SLOW_AGENT)
    marker = tmp_path / "proposing"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "agent.py"), str(repo), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    return proc, repo


def test_a_second_signal_while_the_session_shuts_down_still_closes_it(tmp_path: Path) -> None:
    """The handlers were put back before the shutdown: a second SIGTERM while it waited for the
    agent's last proposal killed the orchestrator (-15), leaving the session 'running'."""
    import os
    import signal
    import time

    proc, repo = start_slow_session(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(2)  # the loop has ended; the shutdown waits for the proposal
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, out, err)
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.db")
    status, reason = db.execute("SELECT status, stop_reason FROM sessions WHERE tag = 't'").fetchone()
    assert status == "finished" and "interrupted (SIGTERM)" in reason, (status, reason)


def test_a_third_ctrl_c_ends_the_process_at_once(tmp_path: Path) -> None:
    """It went to Python's own handler: a KeyboardInterrupt unwound the shutdown instead."""
    import os
    import signal
    import time

    proc, _ = start_slow_session(tmp_path)
    for _ in range(3):
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.5)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err, (proc.returncode, err)
