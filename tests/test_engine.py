"""The loop end to end on the toy task: verdicts, ledger rows, branch head, refs, tsv, stop rules."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOY_PARAMS, TOY_SCORE, TOY_TOML, git, make_repo, write_patch_dir

from autoresearch.agents._base import Agent, Context, Proposal
from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import load_config
from autoresearch.engine import Engine, ExperimentEvent, SessionOptions
from autoresearch.errors import (
    AgentExhausted,
    AgentUnavailable,
    AutoresearchError,
    ProposalError,
    WorkspaceError,
)
from autoresearch.ledger import Ledger
from autoresearch.records import Verdict
from autoresearch.report.export import write_tsv

PY = sys.executable


def sr(path: str, search: str, replace: str, title: str) -> str:
    """A search/replace patch file."""
    return f"# {title}\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def toy(tmp_path: Path, *, timeout: float = 20, budget: float | None = None, task: str = "",
        extra: str = "", files: dict[str, str] | None = None) -> Path:  # fmt: skip
    """The toy task as a committed repo; ``task`` lines go under [task], ``extra`` at the end."""
    toml = TOY_TOML.replace("{python}", PY).replace("timeout = 20", f"timeout = {timeout}")
    toml = toml.replace(
        "time_budget = 5", f"time_budget = {budget if budget is not None else min(5, timeout)}"
    )
    toml = toml.replace("[task]\n", f"[task]\n{task}\n" if task else "[task]\n") + extra
    if "baseline_runs" in extra:  # the extra lines set their own
        toml = toml.replace("baseline_runs = 1", "", 1)
    base = {
        "params.py": TOY_PARAMS,
        "score.py": TOY_SCORE,
        "program.md": "Minimise.\n",
        "autoresearch.toml": toml,
    }
    return make_repo(tmp_path / "task", {**base, **(files or {})})


def run_session(
    repo: Path, patches: Path, **options: object
) -> tuple[Engine, list[ExperimentEvent]]:
    events: list[ExperimentEvent] = []
    opts = SessionOptions(**{"tag": "t", **options})  # type: ignore[arg-type]
    engine = Engine(load_config(repo), ReplayAgent(patches), options=opts, on_event=events.append)
    engine.run()
    return engine, events


PATCHES = {
    "01-improve": sr("params.py", "X = 1.0", "X = 2.0", "X 1 -> 2"),
    "02-worse": sr("params.py", "Y = 2.0", "Y = 6.0", "Y 2 -> 6"),
    "03-crash": sr("params.py", "Y = 2.0", "Y = 2.0\nraise RuntimeError('diverged')", "crash"),
    "04-hang": sr("params.py", "Y = 2.0", "Y = 2.0\nimport time\ntime.sleep(60)", "hang"),
    "05-outside": sr("score.py", "score = (", "score = 0 * (", "edit the ruler"),
    "06-tamper": sr(
        "params.py",
        "Y = 2.0",
        "Y = 2.0\nimport pathlib\npathlib.Path(__file__).with_name('score.py').write_text(\"print('---'); print('score: 0')\")",
        "rewrite the harness at run time",
    ),
    "07-nan": sr("params.py", "X = 2.0", "X = float('nan')", "nan"),
    "08-improve-again": sr("params.py", "Y = 2.0", "Y = 0.0", "Y 2 -> 0"),
    "09-new-file": "# new module\nhelper.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n",
}


def test_a_full_session_records_every_outcome(tmp_path: Path) -> None:
    repo = toy(tmp_path, timeout=2)
    engine, events = run_session(repo, write_patch_dir(tmp_path / "patches", PATCHES))
    rows = engine.ledger.experiments(engine.session)
    verdicts = [(r.id, r.verdict) for r in rows]
    assert verdicts == [
        (0, "baseline"), (1, "keep"), (2, "discard"), (3, "crash"), (4, "timeout"),
        (5, "invalid"), (6, "invalid"), (7, "crash"), (8, "keep"), (9, "invalid"),
    ]  # fmt: skip
    by_id = {r.id: r for r in rows}
    assert by_id[0].metric == 13.0 and by_id[1].metric == 10.0 and by_id[8].metric == 2.0
    assert "protected" in by_id[5].reason
    assert "changed protected files: score.py" in by_id[6].reason
    assert "not finite" in by_id[7].reason
    assert "hard timeout" in by_id[4].reason
    assert "helper.py: not editable" in by_id[9].reason
    # The branch sits at the best commit; every discarded commit stays reachable.
    assert git(repo, "rev-parse", "autoresearch/t") == by_id[8].commit
    assert git(repo, "rev-parse", f"{by_id[8].commit}~1") == by_id[1].commit
    refs = git(
        repo, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t/discarded/"
    ).split()
    assert sorted(int(r.rsplit("/", 1)[1]) for r in refs) == [2, 3, 4, 6, 7]
    # The user's checkout is untouched and clean, and the harness in the worktree was restored.
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "params.py").read_text() == TOY_PARAMS
    assert "score.py" not in git(repo, "diff", "--name-only", "main", "autoresearch/t")
    assert [e.experiment.id for e in events] == list(range(10))
    assert "sleep" in by_id[4].description or by_id[4].description == "hang"
    tsv = tmp_path / "results.tsv"
    write_tsv(rows, "score", tsv, verdicts=True)
    lines = tsv.read_text().splitlines()
    assert lines[0] == "commit\tscore\tmemory_gb\tstatus\tdescription"
    assert lines[2] == f"{by_id[1].commit[:7]}\t10.000000\t0.0\tkeep\tX 1 -> 2"
    assert len(lines) == 11


def test_proposals_and_runs_are_in_sqlite(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    run_session(repo, patches)
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    agent, diff, meta = db.execute(
        "SELECT agent, diff, meta FROM proposals WHERE experiment_id = 1"
    ).fetchone()
    assert agent == "replay" and "+X = 2.0" in diff and '"patch": "01"' in meta
    seeds = [r[0] for r in db.execute("SELECT seed FROM runs ORDER BY experiment_id")]
    assert len(seeds) == 3 and len(set(seeds)) == 3  # seeds vary per run (a keep is run twice)


NOISY_SCORE = """\
import os, random, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import params

seed = params.SEED if params.SEED is not None else int(os.environ["AUTORESEARCH_SEED"])
score = (params.X - 3.0) ** 2 + (params.Y + 1.0) ** 2 + random.Random(seed).gauss(0, 0.1)
print("---")
print(f"score: {score:.6f}")
"""


def test_a_null_edit_that_pins_a_lucky_seed_is_not_kept(tmp_path: Path) -> None:
    """The seed that gives the luckiest draw of a thousand, pinned in the code: every run and
    every fresh re-run repeats its luck, so more runs cannot expose it. Runs on different seeds
    with one value, where the baseline's differ, are named for what they are: a discard."""
    import random

    lucky = min(range(1000), key=lambda s: random.Random(s).gauss(0, 0.1))  # about -3 sigma
    repo = toy(tmp_path, extra="baseline_runs = 3\nmax_runs = 3\n", files={
        "params.py": TOY_PARAMS + "SEED = None\n", "score.py": NOISY_SCORE,
    })  # fmt: skip
    patches = write_patch_dir(tmp_path / "p", {
        "01": sr("params.py", "SEED = None", f"SEED = {lucky}", "reproducible runs"),
        "02": sr("params.py", "X = 1.0", "X = 2.0", "X 1 -> 2"),
    })  # fmt: skip
    engine, _ = run_session(repo, patches)
    rows = engine.history.rows
    assert [r.verdict for r in rows] == [Verdict.BASELINE, Verdict.DISCARD, Verdict.KEEP], [r.reason for r in rows]
    assert "ignores AUTORESEARCH_SEED" in rows[1].reason, rows[1].reason
    assert len(set(rows[1].values())) == 1 and len(rows[1].values()) >= 3
    assert "ignores" not in rows[2].reason  # a real gain, on seeds that vary, is kept


def test_max_experiments_and_consecutive_failures(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    crash = {
        f"{i:02d}": sr("params.py", "Y = 2.0", f"Y = 2.0\nraise SystemExit({i})", f"crash {i}")
        for i in range(1, 9)
    }
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", crash), max_failures=3)
    assert engine.summary().stop_reason.startswith("3 crashes/invalid experiments in a row")
    assert len(engine.ledger.experiments(engine.session)) == 4
    engine2, _ = run_session(
        toy(tmp_path / "b"), write_patch_dir(tmp_path / "p2", crash), max_experiments=2
    )
    assert engine2.summary().stop_reason == "reached --max-experiments 2"
    assert len(engine2.ledger.experiments(engine2.session)) == 3


def test_min_delta_and_confirmation_runs(tmp_path: Path) -> None:
    repo = toy(tmp_path, extra="rule = \"naive\"\nmin_delta = 3.5\nbaseline_runs = 2\nconfirm_runs = 1\n")
    patches = {"01": PATCHES["01-improve"], "02": sr("params.py", "X = 1.0", "X = 3.0", "X 1 -> 3")}
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", patches))
    rows = engine.ledger.experiments(engine.session)
    assert [r.verdict for r in rows] == [
        "baseline",
        "discard",
        "keep",
    ]  # 13 -> 10 is within min_delta, 13 -> 9 is not
    assert len(engine.ledger.experiment(engine.session, 0).runs) == 2  # baseline repeated
    assert len(engine.ledger.experiment(engine.session, 1).runs) == 1  # not better: no confirmation
    assert len(engine.ledger.experiment(engine.session, 2).runs) == 2  # better: confirmed once more
    assert engine.history.noise().sigma == 0.0


def test_over_budget_run_is_discarded(tmp_path: Path) -> None:
    repo = toy(tmp_path, budget=0.5, task="budget_allowance = 0.5")
    slow = sr("params.py", "X = 1.0", "X = 2.0\nimport time\ntime.sleep(1.5)", "slow but better")
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", {"01": slow}))
    row = engine.ledger.experiment(engine.session, 1)
    assert row.verdict == "discard" and row.reason.startswith("over budget")


def test_time_spent_in_the_evaluate_step_counts_against_the_budget(tmp_path: Path) -> None:
    """The candidate's code runs in the trusted step too (a model's forward passes): what it does
    there past the baseline's time, training on what the run left it, is over budget."""
    evaluate = TOY_SCORE.replace('print("training...")', 'print("scoring...")')
    repo = toy(tmp_path, budget=0.5, task=f"budget_allowance = 0.5\nevaluate = \"{PY} evaluate.py\"",
               files={"evaluate.py": evaluate})  # fmt: skip
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('protected = ["score.py"]', 'protected = ["score.py", "evaluate.py"]'))
    git(repo, "commit", "-qam", "an evaluate step")
    slow = sr("params.py", "X = 1.0", "X = 2.0\nimport sys, time\nif sys.argv[0].endswith('evaluate.py'):\n"
              "    time.sleep(30)", "better, and trains on while it is evaluated")  # fmt: skip
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", {"01": slow}))
    row = engine.ledger.experiment(engine.session, 1)
    assert row.verdict == "discard" and row.reason.startswith("over budget: its run and evaluate steps took"), row.reason
    assert "; evaluate step stopped after" in row.reason  # at the limit: not 30 s, not the hard timeout
    assert row.runs[0].evaluate_seconds is not None and row.runs[0].evaluate_seconds < 15
    assert row.runs[0].seconds < 1.5  # its run step was as quick as the baseline's


def test_a_run_over_budget_for_sure_is_stopped_there(tmp_path: Path) -> None:
    """A hanging candidate ran to the hard timeout (15 minutes for init --bench's tasks), long
    after it was over budget whatever it did next."""
    repo = toy(tmp_path, timeout=60, budget=0.5, task="budget_allowance = 0.5")
    hang = sr("params.py", "X = 1.0", "X = 2.0\nimport time\ntime.sleep(120)", "better, eventually")
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", {"01": hang}))
    rows = engine.ledger.experiments(engine.session)
    assert [r.verdict for r in rows] == ["baseline", "discard"], [r.reason for r in rows]
    hung = rows[1]
    assert hung.reason.startswith("over budget: ran ") and "; run step stopped after" in hung.reason
    assert hung.runs[0].status == "timeout" and hung.runs[0].seconds < 30  # not the 60 s hard timeout


def test_a_session_says_when_another_runs_in_its_task_folder(tmp_path: Path) -> None:
    """Their runs share the CPUs: a comment-only change was kept at -27% against a baseline
    timed under the other session's load. Its lock names a live orchestrator; a finished
    session's lock (a dead pid) and the lock itself (never probed) say nothing."""
    repo = toy(tmp_path)
    locks = repo / ".autoresearch" / "locks"
    locks.mkdir(parents=True)
    other = subprocess.Popen([PY, "-c", "import time; time.sleep(120)", "autoresearch"])  # as its cmdline reads
    try:
        (locks / "night.lock").write_text(str(other.pid))
        (locks / "old.lock").write_text("999999999")
        said: list[str] = []
        opts = SessionOptions(tag="t", max_experiments=1)
        patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
        Engine(load_config(repo), ReplayAgent(patches), options=opts, on_message=said.append).run()
    finally:
        other.kill()
        other.wait()
    warned = [m for m in said if "is running in this task folder too" in m]
    assert len(warned) == 1 and warned[0].startswith("warning: session 'night' is running"), said


def test_a_root_session_without_device_copies_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoresearch.executors import sandbox

    if os.geteuid() != 0 or sandbox.bwrap_problem() is not None:
        pytest.skip("steps run as root in bubblewrap only where the session is root and bwrap works")
    monkeypatch.setattr(sandbox, "_device_folder", lambda near: None)  # every file system nodev
    repo = toy(tmp_path, task='sandbox = "bwrap"')
    said: list[str] = []
    opts = SessionOptions(tag="t", max_experiments=0)
    Engine(load_config(repo), ReplayAgent(write_patch_dir(tmp_path / "p", {})), options=opts,
           on_message=said.append).run()  # fmt: skip
    assert any(m.startswith("warning: steps run as root and no file system here allows device nodes") for m in said)


def test_a_failing_baseline_stops_the_session(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    (repo / "params.py").write_text("raise SystemExit(2)\n")
    git(repo, "commit", "-qam", "broken")
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]}))
    assert "the baseline failed (crash" in engine.summary().stop_reason
    assert [r.verdict for r in engine.ledger.experiments(engine.session)] == ["crash"]


class ScriptedAgent(Agent):
    """An agent whose replies are given up front (exceptions are raised)."""

    name = "scripted"

    def __init__(self, replies: list[object]) -> None:
        self.replies = replies
        self.contexts: list[Context] = []

    def propose(self, context: Context) -> Proposal:
        self.contexts.append(context)
        reply = self.replies.pop(0) if self.replies else AgentExhausted("done")
        if isinstance(reply, Exception):
            raise reply
        assert isinstance(reply, Proposal)
        return reply


def test_a_reply_with_lone_surrogates_and_a_huge_rationale_is_recorded(tmp_path: Path) -> None:
    """JSON lets an agent's reply hold "\\ud800", which no encoder takes: the commit or the
    ledger failed and the session died. A 100-MB rationale made a 100-MB ledger row and report."""
    from autoresearch.agents._base import Edit
    from autoresearch.records import MAX_RATIONALE_CHARS
    from autoresearch.report._data import Store
    from autoresearch.report.text import show_text

    repo = toy(tmp_path)
    edit = Edit("params.py", "X = 1.0", "X = 2.5  # \ud800")
    forged = "\nrun 0: seed 9, ok, score 0.000000 (a line of the agent's)\n"
    agent = ScriptedAgent([Proposal("move X \udfff", "why \ud800" + forged + "x" * 10_000_000,
                                    edits=(edit,))])
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="t"))
    engine.run()
    rows = engine.ledger.experiments(engine.session)
    assert [r.verdict for r in rows] == ["baseline", "keep"], [r.reason for r in rows]
    assert rows[1].description == "move X \ufffd"
    assert rows[1].rationale.startswith("why \ufffd\nrun 0") and "more characters cut" in rows[1].rationale
    assert len(rows[1].rationale) < MAX_RATIONALE_CHARS + 100
    assert "+X = 2.5  # \ufffd" in rows[1].diff
    store = Store(repo)
    shown = show_text(store, store.session("t"), 1).splitlines()
    assert "  run 0: seed 9, ok, score 0.000000 (a line of the agent's)" in shown
    assert not any(line.startswith("run 0: seed 9") for line in shown)


def test_agent_errors_become_verdicts_or_stop_reasons(tmp_path: Path) -> None:
    from autoresearch.agents._base import Edit, Usage

    repo = toy(tmp_path)
    agent = ScriptedAgent([
        ProposalError("tool arguments are not JSON", usage=Usage(100, 0, 20, 0.01)),
        Proposal("good", edits=(Edit("params.py", "X = 1.0", "X = 2.5"),), usage=Usage(50, 10, 5, 0.002)),
        AgentUnavailable("rate limited 5 times in a row"),
    ])  # fmt: skip
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="t"))
    summary = engine.run()
    rows = engine.ledger.experiments(engine.session)
    assert [r.verdict for r in rows] == ["baseline", "invalid", "keep"]
    assert rows[1].reason == "tool arguments are not JSON" and rows[1].cost_usd == 0.01
    assert summary.stop_reason == "the agent failed: rate limited 5 times in a row"
    assert summary.cost_usd == pytest.approx(0.012)
    # The next context told the agent why its last proposal was rejected, and what happened.
    # Proposals are made while runs train: the baseline may still be running for the second.
    second = agent.contexts[1]
    assert second.last_rejection == "tool arguments are not JSON"
    assert [h.verdict for h in second.history][1:] == ["invalid"]
    assert "X = 1.0" in second.editable["params.py"]
    third = agent.contexts[2]  # asked for as soon as "good" started its run
    assert third.best_metric == 13.0 and [h.verdict for h in third.history][-1] == "pending"


def test_max_cost_stops_before_the_spend_passes_it(tmp_path: Path) -> None:
    from autoresearch.agents._base import Edit, Usage

    repo = toy(tmp_path)
    replies: list[object] = [
        Proposal(
            f"X {v}", edits=(Edit("params.py", "X = 1.0", f"X = {v}"),), usage=Usage(1, 0, 1, 0.4)
        )
        for v in (1.5, 2.0, 2.5, 2.8)
    ]
    engine = Engine(
        load_config(repo), ScriptedAgent(replies), options=SessionOptions(tag="t", max_cost=1.0)
    )
    summary = engine.run()
    assert "--max-cost $1.00" in summary.stop_reason
    assert summary.cost_usd == pytest.approx(0.8)


def test_existing_tag_needs_resume(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    run_session(repo, patches)
    with pytest.raises(WorkspaceError, match="already in the ledger"):
        run_session(repo, patches)
    Ledger(repo / ".autoresearch" / "ledger.db")  # still readable


def test_parallel_slots(tmp_path: Path) -> None:
    from autoresearch.executors import LocalExecutor

    repo = toy(tmp_path)
    patches = {
        f"{i:02d}": sr("params.py", "Y = 2.0", f"Y = {v}", f"Y {v}")
        for i, v in enumerate([1.0, 0.0, -1.0, 3.0])
    }
    executor, said = LocalExecutor(slots=2), []
    engine = Engine(load_config(repo), ReplayAgent(write_patch_dir(tmp_path / "p", patches)),
                    options=SessionOptions(tag="t"), executor=executor, on_message=said.append)  # fmt: skip
    summary = engine.run()
    executor.close()
    assert executor.placement in said  # which CPUs each slot runs on (or that they share them)
    rows = engine.ledger.experiments(engine.session)
    # Which patches still apply depends on which keep landed first; the invariants do not.
    assert len(rows) == 5 and all(r.verdict != "pending" for r in rows)
    judged = [r for r in rows if r.verdict in ("baseline", "keep")]
    assert summary.best_metric == min(r.metric for r in judged if r.metric is not None) <= 5.0
    assert git(repo, "rev-parse", "autoresearch/t") == summary.best_commit


def test_replay_of_git_diffs_and_linked_untracked_data(tmp_path: Path) -> None:
    repo = toy(tmp_path, task='link = ["data"]', files={".gitignore": "data/\n"})
    (repo / "data").mkdir()
    (repo / "data" / "offset.txt").write_text("0.5\n")
    diff = (
        "From 0000 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] read the offset from data/\n\n"
        "diff --git a/params.py b/params.py\n--- a/params.py\n+++ b/params.py\n@@ -1,3 +1,4 @@\n"
        " # Constants the agent tunes. The score is smallest at X = 3.0, Y = -1.0.\n"
        "-X = 1.0\n+import pathlib\n+X = 2.0 + float(pathlib.Path('data/offset.txt').read_text())\n Y = 2.0\n"
    )
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", {"01.patch": diff}))
    row = engine.ledger.experiment(engine.session, 1)
    assert (row.verdict, row.metric, row.description) == (
        "keep",
        9.25,
        "read the offset from data/",
    )


def test_max_hours_stops_after_the_baseline(tmp_path: Path) -> None:
    engine, _ = run_session(
        toy(tmp_path), write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]}), max_hours=0.0
    )
    assert engine.summary().stop_reason == "reached --max-hours 0"
    assert [r.verdict for r in engine.ledger.experiments(engine.session)] == ["baseline"]


def test_a_run_that_rewrites_protected_data_stops_the_session(tmp_path: Path) -> None:
    # Unsandboxed: the run can reach the data, and the tripwire must catch it (test_sandbox: it cannot).
    repo = toy(tmp_path, task='protected_data = ["data/*.txt"]\nsandbox = "none"', files={".gitignore": "data/\n"})
    (repo / "data").mkdir()
    (repo / "data" / "val.txt").write_text("the validation set\n")
    code = (
        "import os\nopen(os.environ['AUTORESEARCH_TASK_DIR'] + '/data/val.txt', 'w').write('easy')"
    )
    patches = {
        "01": sr("params.py", "Y = 2.0", "Y = 2.0\n" + code, "rewrite val"),
        "02": PATCHES["01-improve"],
    }
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", patches))
    rows = engine.ledger.experiments(engine.session)
    assert [r.verdict for r in rows] == ["baseline", "invalid"]
    assert "data/val.txt" in rows[1].reason
    assert "changed protected data" in engine.summary().stop_reason
    messages: list[str] = []
    with pytest.raises(AutoresearchError, match="protected data changed since the session started"):
        Engine(load_config(repo), ReplayAgent(tmp_path / "p"), options=SessionOptions(tag="t", resume=True),
               on_message=messages.append).run()  # fmt: skip


def test_one_orchestrator_per_session(tmp_path: Path) -> None:
    from autoresearch.errors import LedgerError
    from autoresearch.lock import SessionLock

    repo = toy(tmp_path)
    lock = SessionLock(repo / ".autoresearch", "t")
    lock.acquire()
    try:
        with pytest.raises(
            LedgerError, match=r"session 't' is running in another process \(pid \d+\)"
        ):
            run_session(repo, write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]}))
    finally:
        lock.release()
    run_session(repo, tmp_path / "p")  # free again


def test_run_outputs_are_kept_for_the_baseline_and_the_best_only(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = {k: PATCHES[k] for k in ("01-improve", "02-worse", "08-improve-again")}
    run_session(repo, write_patch_dir(tmp_path / "p", patches))
    runs = sorted(p.name for p in (repo / ".autoresearch" / "runs" / "t").iterdir())
    assert runs == ["0000-0", "0003-0"]  # #1 ran twice (noise unknown), then sigma was 0
    assert not (repo / ".autoresearch" / "worktrees" / "t").exists()  # removed at the end
    kept = git(repo, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t/kept/").split()
    assert kept == ["refs/autoresearch/t/kept/1", "refs/autoresearch/t/kept/3"]


def test_agent_options_are_checked_before_setup_and_baseline(tmp_path: Path) -> None:
    from autoresearch.agents.tuner import TunerAgent
    from autoresearch.errors import ConfigError

    repo = toy(tmp_path, task='setup = "touch setup-ran"')
    agent = TunerAgent(include=["NOPE"])
    with pytest.raises(ConfigError, match=r"\[agent.tuner\] include: NOPE not found"):
        Engine(load_config(repo), agent, options=SessionOptions(tag="t")).run()
    assert not (repo / "setup-ran").exists()
    assert "autoresearch/t" not in git(repo, "branch", "--list")  # the tag is still free


def test_a_task_in_a_subfolder_records_task_relative_diffs(tmp_path: Path) -> None:
    toml = TOY_TOML.replace("{python}", PY)
    files = {"README.md": "monorepo\n", "sub/params.py": TOY_PARAMS, "sub/score.py": TOY_SCORE,
             "sub/program.md": "Minimise.\n", "sub/autoresearch.toml": toml}  # fmt: skip
    repo = make_repo(tmp_path / "mono", files)
    engine, _ = run_session(
        repo / "sub", write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    )
    diff = engine.ledger.experiment(engine.session, 1).diff
    assert "--- a/params.py" in diff and "sub/" not in diff
    assert engine.ledger.experiment(engine.session, 1).verdict == "keep"
    # The recorded diff replays as a patch on a fresh session of the same task.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "01.patch").write_text(diff)
    engine2, _ = run_session(repo / "sub", tmp_path / "again", tag="t2")
    assert engine2.ledger.experiment(engine2.session, 1).metric == 10.0


def test_the_evaluate_step_runs_on_a_clean_checkout(tmp_path: Path) -> None:
    judge = "import json\nimport params\nprint('---')\nprint('score:', json.dumps((params.X - 3) ** 2 + (params.Y + 1) ** 2))\n"
    task = f'evaluate = "{PY} judge.py"'
    repo = toy(tmp_path, task=task + '\nsandbox = "none"', files={"judge.py": judge})  # the run writes json.py
    toml = (
        (repo / "autoresearch.toml").read_text().replace('["score.py"]', '["score.py", "judge.py"]')
    )
    (repo / "autoresearch.toml").write_text(toml)
    git(repo, "commit", "-qam", "protect the judge")
    shadow = "open('json.py', 'w').write(\"def dumps(x): return '-1000'\")"
    patches = {"01": sr("params.py", "Y = 2.0", "Y = 0.0\n" + shadow, "Y 0, and shadow json")}
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", patches))
    assert (
        engine.ledger.experiment(engine.session, 1).metric == 5.0
    )  # the real json module measured it


def test_a_run_that_rewrites_the_ledger_stops_the_session(tmp_path: Path) -> None:
    from autoresearch.errors import LedgerError

    repo = toy(tmp_path, task='sandbox = "none"')  # sandboxed, the ledger is out of reach
    code = (
        "import os, sqlite3\n"
        "db = sqlite3.connect(os.environ['AUTORESEARCH_TASK_DIR'] + '/.autoresearch/ledger.db')\n"
        "db.execute(\"UPDATE experiments SET metric = 1000 WHERE verdict IN ('baseline', 'keep')\")\n"
        "db.commit()"
    )
    patches = {
        "01": sr("params.py", "X = 1.0", "X = 0.0\n" + code, "worse, and rewrite the ledger")
    }
    with pytest.raises(LedgerError, match="changed by another process"):
        run_session(repo, write_patch_dir(tmp_path / "p", patches))
    assert git(repo, "rev-parse", "autoresearch/t") == git(
        repo, "rev-parse", "main"
    )  # nothing kept


def test_a_holdout_file_in_gits_history_is_named_at_session_start(tmp_path: Path) -> None:
    """No step reads git's objects, but an agent's CLI does: a holdout file once committed,
    even deleted since, stays readable there."""
    repo = toy(tmp_path, task='holdout = ["hold/*"]', files={"hold/answers.txt": "X = 3.0\n"})
    git(repo, "rm", "-q", "hold/answers.txt")
    git(repo, "commit", "-qm", "the answers out of git")
    (repo / "hold").mkdir()
    (repo / "hold" / "answers.txt").write_text("X = 3.0\n")
    (repo / "hold" / "fresh.txt").write_text("never committed\n")
    said: list[str] = []
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    Engine(load_config(repo), ReplayAgent(patches), options=SessionOptions(tag="t"),
           on_message=said.append).run()  # fmt: skip
    warnings = [m for m in said if "holdout files are in git's history" in m]
    assert len(warnings) == 1 and "(hold/answers.txt)" in warnings[0], said
    said.clear()  # a holdout never committed: nothing to say
    clean = toy(tmp_path / "clean", task='holdout = ["hold/*"]', files={".gitignore": "hold/\n"})
    (clean / "hold").mkdir()
    (clean / "hold" / "answers.txt").write_text("X = 3.0\n")
    Engine(load_config(clean), ReplayAgent(patches), options=SessionOptions(tag="t"),
           on_message=said.append).run()  # fmt: skip
    assert not [m for m in said if "holdout" in m], said


def test_a_baseline_run_again_after_fixing_the_metric_records_the_new_metric(tmp_path: Path) -> None:
    """The summary key was wrong: the baseline crashed. The fixed [metric] is what the session
    measures from then on, in the ledger too (status, log, export and the plot read it there)."""
    repo = toy(tmp_path)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('name = "score"', 'name = "loss"'))
    git(repo, "commit", "-qam", "a wrong metric name")
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    engine, _ = run_session(repo, patches)
    assert engine.ledger.experiments(engine.session)[0].verdict == "crash"
    toml.write_text(toml.read_text().replace('name = "loss"', 'name = "steps"').replace(
        'direction = "minimize"', 'direction = "maximize"'))  # fmt: skip
    git(repo, "commit", "-qam", "the metric fixed")
    engine, _ = run_session(repo, patches)
    session = engine.ledger.session("t")
    assert (session.metric, session.direction) == ("steps", "maximize")
    assert engine.summary().best_metric == 10.0


def test_resuming_with_another_metric_is_refused(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    run_session(repo, patches, max_experiments=1)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('direction = "minimize"', 'direction = "maximize"'))
    git(repo, "commit", "-qam", "the other way round")
    with pytest.raises(WorkspaceError, match=r"measures score \(minimize\), but autoresearch.toml now says score \(maximize\)"):
        run_session(repo, patches, resume=True)
    Ledger(repo / ".autoresearch" / "ledger.db").session("t")  # nothing lost


def test_a_refused_session_leaves_no_worktree_and_says_nothing_of_its_search(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    run_session(repo, patches)
    from autoresearch.agents.tuner import TunerAgent

    said: list[str] = []
    engine = Engine(load_config(repo), TunerAgent(seed=0), options=SessionOptions(tag="t"),
                    on_message=said.append)  # fmt: skip
    with pytest.raises(WorkspaceError, match="already in the ledger"):
        engine.run()
    assert said == []  # the tuner's search space is said once a session opens
    (repo / "params.py").write_text("X = 2.0\nY = 2.0\n")  # uncommitted
    with pytest.raises(WorkspaceError, match="uncommitted changes"):
        Engine(load_config(repo), ReplayAgent(patches), options=SessionOptions(tag="u")).run()
    assert not (repo / ".autoresearch" / "worktrees" / "t").exists()
    assert not (repo / ".autoresearch" / "worktrees" / "u").exists()
    assert "worktrees" not in git(repo, "worktree", "list")


def test_a_repository_without_a_commit_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "autoresearch.toml").write_text(TOY_TOML.replace("{python}", PY))
    (repo / "params.py").write_text(TOY_PARAMS)
    (repo / "score.py").write_text(TOY_SCORE)
    (repo / "program.md").write_text("Minimise.\n")
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    with pytest.raises(WorkspaceError, match=r"has no commit yet; commit the task first"):
        run_session(repo, patches)
