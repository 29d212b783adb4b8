"""The scheduler on the fake executor: pipelined proposals, full slots, stale parents, the judge, stop rules on resume, duplicates."""

from __future__ import annotations

import difflib
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import git, make_repo

from autoresearch.agents._base import Agent, Context
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.errors import ConfigError
from autoresearch.executors._base import Job
from autoresearch.executors.fake import FakeExecutor, FakeRun
from autoresearch.ledger import Ledger
from autoresearch.records import Edit, Proposal, RunPurpose, RunStatus, Verdict

TOML = """\
[task]
editable = ["params.py"]
run = "true"
time_budget = 60
[metric]
name = "score"
[judge]
{judge}
"""


def task(tmp_path: Path, judge: str = "baseline_runs = 1", params: str = "A = 0\nB = 0\n") -> Path:
    return make_repo(tmp_path / "task", {"params.py": params, "program.md": "Tune.\n",
                                         "autoresearch.toml": TOML.format(judge=judge)})  # fmt: skip


def params(job: Job) -> dict[str, float]:
    scope: dict[str, float] = {}
    exec((job.workdir / "params.py").read_text(), {}, scope)
    return scope


class Scripted(Agent):
    """Proposes the given whole-file texts of params.py in order, noting when each call ran."""

    name = "scripted"

    def __init__(self, texts: list[str], think: float = 0.0) -> None:
        self.texts, self.think = list(texts), think
        self.calls: list[tuple[float, float, Context]] = []

    def propose(self, context: Context) -> Proposal:
        start = time.monotonic()
        time.sleep(self.think)
        text = self.texts.pop(0)
        self.calls.append((start, time.monotonic(), context))
        return Proposal(text.strip().splitlines()[-1], edits=(Edit("params.py", content=text),))


def session(repo: Path, agent: Agent, executor: FakeExecutor, **options: object) -> Engine:
    opts = SessionOptions(**{"tag": "t", **options})  # type: ignore[arg-type]
    engine = Engine(load_config(repo), agent, options=opts, executor=executor)
    engine.run()
    executor.close()
    return engine


def test_the_agent_thinks_while_the_run_trains(tmp_path: Path) -> None:
    repo = task(tmp_path)
    agent = Scripted([f"A = {i}\nB = 0\n" for i in range(1, 4)], think=0.2)
    starts: dict[int, float] = {}

    def run(job: Job) -> FakeRun:
        starts.setdefault(job.experiment_id, time.monotonic())
        return FakeRun(10.0 - params(job)["A"], sleep=0.6)

    engine = session(repo, agent, FakeExecutor(run, sleep=0.6), max_experiments=3)
    first_call_start = agent.calls[0][0]
    assert first_call_start < starts[0] + 0.6  # the first proposal overlaps the baseline's run
    second_call_start = agent.calls[1][0]
    assert second_call_start < starts[1] + 0.6  # the next proposal is made while #1 trains
    assert [r.verdict for r in engine.history.rows] == [Verdict.BASELINE] + [Verdict.KEEP] * 3


def test_an_agent_that_runs_programs_here_waits_for_the_baseline(tmp_path: Path) -> None:
    """A CLI's programs share the machine: they could slow the baseline every candidate is
    judged against (nice does not hold against a process in a session of its own)."""
    repo = task(tmp_path)
    agent = Scripted([f"A = {i}\nB = 0\n" for i in range(1, 3)])
    agent.runs_code = True
    starts: dict[int, float] = {}

    def run(job: Job) -> FakeRun:
        starts.setdefault(job.experiment_id, time.monotonic())
        return FakeRun(10.0 - params(job)["A"], sleep=0.6)

    engine = session(repo, agent, FakeExecutor(run, sleep=0.6), max_experiments=2)
    assert agent.calls[0][0] >= starts[0] + 0.6  # after the baseline's run, not beside it
    assert [r.verdict for r in engine.history.rows] == [Verdict.BASELINE, Verdict.KEEP, Verdict.KEEP]


def test_every_slot_is_kept_busy(tmp_path: Path) -> None:
    repo = task(tmp_path)
    agent = Scripted([f"A = {i}\nB = 0\n" for i in range(1, 7)])
    running, peak, lock = [0], [0], threading.Lock()

    def run(job: Job) -> FakeRun:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        return FakeRun(100.0 + params(job)["A"], sleep=0.0)  # every candidate is worse

    engine = session(repo, agent, FakeExecutor(run, slots=3), max_experiments=6)
    assert peak[0] == 3
    assert engine.history.counts[Verdict.DISCARD] == 6


PAD = "# -\n# -\n# -\n"


def test_a_stale_proposal_is_applied_onto_the_new_best_when_it_can_be(tmp_path: Path) -> None:
    base = f"A = 0\n{PAD}B = 0\n"
    repo = task(tmp_path, params=base)
    # All three are proposed against the baseline while it runs. #1 is kept; #2 edits
    # another line, so it is applied onto #1; #3 conflicts with #1, so it runs on the
    # baseline it was made for and is judged against the best.
    agent = Scripted([f"A = 5\n{PAD}B = 0\n", f"A = 0\n{PAD}B = 1\n", f"A = 7\n{PAD}B = 0\n"])

    def run(job: Job) -> float:
        p = params(job)
        return 100.0 - p["A"] - p["B"]

    engine = session(repo, PatchAgent(agent, base), FakeExecutor(run, sleep=0.3),
                     max_experiments=3, lookahead=3)  # fmt: skip
    rows = engine.history.rows
    assert all(c.parent == rows[0].commit for _, _, c in agent.calls)
    assert [r.verdict for r in rows] == [Verdict.BASELINE, Verdict.KEEP, Verdict.KEEP, Verdict.KEEP]
    assert rows[2].parent == rows[1].commit  # rebased onto the new best
    assert rows[3].parent == rows[0].commit  # ran where it was made
    assert rows[2].metric == 94.0 and rows[3].metric == 93.0
    # #3 ran on the baseline and beat #2: the best code is the baseline plus #3 alone, and the
    # agent's next context and the report say that #1 and #2 are not in it
    assert engine.history.lineage == {0, 3}
    assert "the changes of #1, #2 are not in the best code now" in engine.note
    from autoresearch.agents.prompt import render
    from autoresearch.report.html import kept_changes

    assert "# Note" in render(replace(agent.calls[0][2], note=engine.note)).variable
    assert {k.experiment.id: k.in_best for k in kept_changes(engine.history, "minimize")} == {
        1: False, 2: False, 3: True,
    }  # fmt: skip


class PatchAgent(Agent):
    """Turns the scripted texts into unified diffs against the baseline (so they can go stale)."""

    name = "patches"

    def __init__(self, inner: Scripted, base: str) -> None:
        self.inner, self.base = inner, base

    def propose(self, context: Context) -> Proposal:
        proposal = self.inner.propose(context)
        new = proposal.edits[0].content or ""
        diff = difflib.unified_diff(self.base.splitlines(True), new.splitlines(True),
                                    "a/params.py", "b/params.py", n=1)  # fmt: skip
        return Proposal(proposal.description, patch="".join(diff))


def lucky_session(tmp_path: Path, rule: str) -> Engine:
    """A null edit whose first run is 1.5 sigma lucky; the other runs scatter around the truth."""
    repo = task(tmp_path / rule, judge=f'rule = "{rule}"\nbaseline_runs = 5\nmax_runs = 5')
    values = {0: [99.0, 101.0, 100.0, 99.0, 101.0], 1: [98.5, 100.5, 99.5, 100.5, 100.0]}

    def run(job: Job) -> float:
        return values[job.experiment_id][job.run_index]

    agent = Scripted(["A = 0\nB = 0  # a comment changes nothing\n"])
    return session(repo, agent, FakeExecutor(run), max_experiments=1)


def test_a_lucky_first_run_is_not_kept(tmp_path: Path) -> None:
    row = lucky_session(tmp_path, "sequential").history.rows[1]
    assert row.verdict is Verdict.DISCARD
    assert len(row.runs) >= 2  # it was run again before the verdict
    assert lucky_session(tmp_path, "naive").history.rows[1].verdict is Verdict.KEEP  # upstream's


def test_a_keep_is_recorded_at_the_mean_of_fresh_runs(tmp_path: Path) -> None:
    repo = task(tmp_path, judge="baseline_runs = 3\nmax_runs = 3")
    rng = random.Random(2)

    def run(job: Job) -> float:
        true = 100.0 - 5.0 * params(job)["A"]
        return true + rng.gauss(0.0, 0.5)

    engine = session(repo, Scripted(["A = 1\nB = 0\n"]), FakeExecutor(run), max_experiments=1)
    row = engine.history.rows[1]
    assert row.verdict is Verdict.KEEP
    fresh = row.values(RunPurpose.RESCORE)
    assert len(fresh) >= 2 and row.metric == sum(fresh) / len(fresh)
    assert row.metrics["score"] == row.metric  # the exported metrics rest on the same runs
    assert "re-scored" in row.reason


def stopped_at_the_limit(job: Job) -> FakeRun:
    """What the executor gives for a run it stopped once its budget steps passed the limit."""
    assert job.budget_limit is not None and job.budget_steps == ("run",)
    return FakeRun(None, status=RunStatus.TIMEOUT, seconds=job.budget_limit + 0.1,
                   reason="run step stopped after 16.1 s: past the budget")  # fmt: skip


def test_a_run_stopped_at_the_budget_limit_says_so_whatever_the_constraints(tmp_path: Path) -> None:
    """It was recorded as a broken constraint (the stopped run reported no peak_rss_mb)."""
    toml = TOML.format(judge="baseline_runs = 1").replace("time_budget = 60", "time_budget = 10\nbudget_allowance = 5")
    toml = toml.replace('name = "score"', 'name = "score"\nconstraints = ["peak_rss_mb <= 1.25 * best"]')
    repo = make_repo(tmp_path / "task", {"params.py": "A = 0\n", "program.md": "x\n", "autoresearch.toml": toml})

    def run(job: Job) -> FakeRun:
        if job.experiment_id == 0:
            assert job.budget_limit is None  # the baseline is never stopped early
            return FakeRun(100.0, seconds=10.0, metrics={"score": 100.0, "peak_rss_mb": 50.0})
        return stopped_at_the_limit(job)

    row = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1).history.rows[1]
    assert row.verdict is Verdict.DISCARD and row.reason.startswith("over budget: ran 16.1 s, limit 15.0 s"), row.reason
    assert row.reason.endswith("; run step stopped after 16.1 s: past the budget")


def test_a_fresh_run_stopped_at_the_budget_limit_is_over_budget_not_a_failure(tmp_path: Path) -> None:
    """A keep's fresh runs are held to the same limit: one stopped there was a timeout."""
    toml = TOML.format(judge="baseline_runs = 3\nmax_runs = 3")
    repo = make_repo(tmp_path / "task", {"params.py": "A = 0\n", "program.md": "x\n",
                                         "autoresearch.toml": toml.replace("time_budget = 60", "time_budget = 10\nbudget_allowance = 5")})  # fmt: skip

    def run(job: Job) -> FakeRun:
        noise = (job.seed % 7) * 0.01
        if job.experiment_id == 0:
            return FakeRun(100.0 + noise, seconds=10.0)
        return stopped_at_the_limit(job) if job.purpose is RunPurpose.RESCORE else FakeRun(90.0 + noise, seconds=10.0)

    row = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1).history.rows[1]
    assert row.verdict is Verdict.DISCARD and "; a fresh run was over budget: ran 16.1 s" in row.reason, row.reason


def test_the_same_tree_is_not_run_twice(tmp_path: Path) -> None:
    repo = task(tmp_path)
    agent = Scripted(["A = 1\nB = 0\n", "A = 2\nB = 0\n", "A = 1\nB = 0\n"])
    executor = FakeExecutor(lambda job: 100.0 + params(job)["A"])  # both candidates are worse
    engine = session(repo, agent, executor, max_experiments=3)
    rows = engine.history.rows
    assert rows[3].verdict is Verdict.DUPLICATE and "duplicate of #1" in rows[3].reason
    assert not rows[3].runs and len(executor.jobs) == 3  # baseline, #1, #2: no run for #3
    assert (
        rows[3].metrics == rows[1].metrics and rows[3].metrics
    )  # its twin's (results.tsv's memory_gb)


def test_baseline_is_not_discarded_for_time_but_a_much_slower_candidate_is(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "task", {
        "params.py": "A = 0\n", "program.md": "x\n",
        "autoresearch.toml": TOML.format(judge="baseline_runs = 1").replace(
            "time_budget = 60", "time_budget = 10\nbudget_allowance = 5"),
    })  # fmt: skip

    def run(job: Job) -> FakeRun:
        a = params(job)["A"]
        seconds = 30.0 if job.experiment_id == 0 else 30.0 * (1 + a)  # the baseline: 3x budget
        return FakeRun(100.0 - a, seconds=seconds)

    agent = Scripted(["A = 0.1\n", "A = 1\n"])  # 33 s: within 5 s of 30; 60 s: not
    engine = session(repo, agent, FakeExecutor(run), max_experiments=2)
    verdicts = [r.verdict for r in engine.history.rows]
    assert verdicts == [Verdict.BASELINE, Verdict.KEEP, Verdict.DISCARD]
    assert "over budget" in engine.history.rows[2].reason


def test_the_fresh_runs_of_a_keep_are_held_to_the_budget_too(tmp_path: Path) -> None:
    """Code that trains within the budget while it is selected, and longer once it is kept (it
    knows which run it is: AUTORESEARCH_RUN), is discarded, not recorded at its longer runs."""
    repo = make_repo(tmp_path / "task", {
        "params.py": "A = 0\n", "program.md": "x\n",
        "autoresearch.toml": TOML.format(judge="baseline_runs = 3\nmax_runs = 3").replace(
            "time_budget = 60", "time_budget = 10\nbudget_allowance = 5"),
    })  # fmt: skip

    def run(job: Job) -> FakeRun:
        noise = (job.seed % 7) * 0.01  # the baseline's runs differ: a keep is re-scored
        if job.experiment_id == 0:
            return FakeRun(100.0 + noise, seconds=10.0)
        longer = job.purpose is RunPurpose.RESCORE
        return FakeRun((80.0 if longer else 90.0) + noise, seconds=40.0 if longer else 10.0)

    engine = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1)
    row = engine.history.rows[1]
    assert row.verdict is Verdict.DISCARD, row.reason
    assert "a fresh run was over budget: ran 40.0 s, limit 15.0 s" in row.reason
    assert engine.history.best is engine.history.rows[0]


def test_resume_keeps_the_stop_rules_it_started_with(tmp_path: Path) -> None:
    repo = task(tmp_path)
    texts = [f"A = {i}\nB = 0\n" for i in range(1, 9)]
    worse = FakeExecutor(lambda job: 100.0 + params(job)["A"])
    session(repo, Scripted(texts[:2]), worse, max_experiments=2)
    again = session(repo, Scripted(texts[2:]), FakeExecutor(lambda j: 100.0), resume=True)
    assert len(again.history.finished) == 2 and "max-experiments 2" in again.summary().stop_reason
    more = session(repo, Scripted(texts[2:]), FakeExecutor(lambda j: 100.0 + params(j)["A"]),
                   resume=True, max_experiments=3)  # fmt: skip
    assert len(more.history.finished) == 3


def test_a_resume_counts_failures_in_a_row_afresh(tmp_path: Path) -> None:
    """A session stopped by --max-failures, resumed with the agent fixed, stopped again at once
    on the old streak, blaming the old agent."""
    repo = task(tmp_path)

    def run(job: Job) -> float | None:
        return None if params(job)["A"] < 0 else 100.0 - params(job)["A"]  # a negative A crashes

    first = session(repo, Scripted([f"A = -{i}\nB = 0\n" for i in range(1, 4)]), FakeExecutor(run), max_failures=2)
    assert first.summary().stop_reason.startswith("2 crashes/invalid experiments in a row")
    again = session(repo, Scripted(["A = 1\nB = 0\n", "A = 2\nB = 0\n"]), FakeExecutor(run), resume=True,
                    max_failures=2, max_experiments=3)  # fmt: skip
    assert [str(r.verdict) for r in again.history.rows] == ["baseline", "crash", "crash", "keep"]


def test_resume_of_a_tag_never_created_starts_it(tmp_path: Path) -> None:
    repo = task(tmp_path)
    engine = session(repo, Scripted(["A = 1\nB = 0\n"]), FakeExecutor(lambda j: 1.0),
                     resume=True, max_experiments=1)  # fmt: skip
    assert next(r.verdict for r in engine.history.rows) is Verdict.BASELINE


def test_resume_after_a_kill_between_branch_and_session_row(tmp_path: Path) -> None:
    repo = task(tmp_path)
    git(repo, "update-ref", "refs/heads/autoresearch/t", "HEAD")  # the branch, but no session
    (repo / ".autoresearch").mkdir()
    Ledger(repo / ".autoresearch" / "ledger.db").close()  # and an empty ledger
    engine = session(repo, Scripted(["A = 1\nB = 0\n"]), FakeExecutor(lambda j: 1.0 - params(j)["A"]),
                     resume=True, max_experiments=1)  # fmt: skip
    assert [r.verdict for r in engine.history.rows] == [Verdict.BASELINE, Verdict.KEEP]


def test_a_keep_whose_fresh_runs_are_no_better_than_the_best_is_discarded(tmp_path: Path) -> None:
    """Selected on three lucky runs; the fresh seeds put it back above the baseline."""
    repo = task(tmp_path, judge="baseline_runs = 5\nmax_runs = 3")
    baseline = [99.0, 101.0, 100.0, 99.5, 100.5]

    def run(job: Job) -> float:
        if job.experiment_id == 0:
            return baseline[job.run_index]
        lucky = job.purpose is not RunPurpose.RESCORE
        return (95.0 if lucky else 100.8) + 0.2 * (job.run_index % 2)

    engine = session(repo, Scripted(["A = 0\nB = 1  # a null edit\n"]), FakeExecutor(run), max_experiments=1)
    row = engine.history.rows[1]
    assert len(row.values(RunPurpose.RESCORE)) == 3
    assert row.verdict is Verdict.DISCARD, row.reason
    assert "not better than the best 100" in row.reason and "luck" in row.reason
    assert engine.history.best is not None and engine.history.best.id == 0  # the baseline stands
    assert git(repo, "rev-parse", "autoresearch/t") == git(repo, "rev-parse", "main")


def test_code_whose_run_was_interrupted_is_not_a_duplicate() -> None:
    """A second signal cut experiment 1 short: its code was never measured, so the same code
    proposed again after --resume runs; a measured one is a duplicate."""
    from autoresearch.history import History
    from autoresearch.records import Experiment

    rows = (Experiment(0, Verdict.BASELINE, 1.0, "baseline", tree="t0"),
            Experiment(1, Verdict.INTERRUPTED, None, "cut short", tree="t1"),
            Experiment(2, Verdict.DISCARD, 2.0, "measured", tree="t2"))  # fmt: skip
    history = History(rows)
    assert history.duplicate_of("t1") is None
    found = history.duplicate_of("t2")
    assert found is not None and found.id == 2


def test_invalid_proposals_made_while_the_baseline_runs_count_towards_max_failures(
    tmp_path: Path,
) -> None:
    """The baseline is the harness's run, not a proposal that worked: an agent that fails twice
    while it runs and once after has failed three times in a row."""
    from autoresearch.errors import ProposalError

    released = threading.Event()

    class Failing(Agent):
        name = "failing"
        engine: Engine | None = None
        calls = 0

        def propose(self, context: Context) -> Proposal:
            self.calls += 1
            if self.calls == 3:  # two invalid proposals are recorded; the baseline still runs
                assert self.engine is not None and self.engine.history.best is None
                released.set()
                deadline = time.monotonic() + 30
                while self.engine.history.best is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            raise ProposalError(f"malformed reply {self.calls}")

    def run(job: Job) -> FakeRun:
        if job.experiment_id == 0:
            assert released.wait(30)
        return FakeRun(1.0, sleep=0.0)

    agent = Failing()
    executor = FakeExecutor(run)
    engine = Engine(load_config(task(tmp_path)), agent, options=SessionOptions(tag="t", max_failures=3),
                    executor=executor)  # fmt: skip
    agent.engine = engine
    summary = engine.run()
    executor.close()
    rows = sorted(engine.history.rows, key=lambda r: (r.finished or 0.0, r.id))
    assert [r.verdict for r in rows] == [Verdict.INVALID, Verdict.INVALID, Verdict.BASELINE, Verdict.INVALID]
    assert summary.stop_reason.startswith("3 crashes/invalid experiments in a row"), summary.stop_reason
    assert "malformed reply 3" in summary.stop_reason


def test_max_cost_holds_when_keeps_take_their_re_scores(tmp_path: Path) -> None:
    """Each run costs $1 (36 s at $100 a slot-hour). Screened-out candidates take one run each,
    then a keep takes its selection runs and a re-score: the average so far said the next
    experiment costs about $1. The spend never passes --max-cost: the next experiment is
    counted at the most runs a candidate can take."""
    repo = task(tmp_path, judge="baseline_runs = 2\nmax_runs = 3")

    def run(job: Job) -> FakeRun:  # negative A is worse, positive a large gain; a small noise
        return FakeRun(10.0 - params(job)["A"] + 0.01 * (job.seed % 3), seconds=36.0)

    texts = [f"A = {-i}\nB = 0\n" for i in range(1, 16)] + [f"A = {i}\nB = 0\n" for i in range(1, 9)]
    engine = session(repo, Scripted(texts), FakeExecutor(run), max_cost=20.0, gpu_price=100.0)
    summary = engine.summary()
    rows = engine.ledger.experiments(engine.session)
    assert "--max-cost $20.00" in summary.stop_reason, summary.stop_reason
    assert summary.cost_usd <= 20.0, [(r.verdict, len(r.runs)) for r in rows]


def test_lookahead_zero_asks_only_for_a_free_slot(tmp_path: Path) -> None:
    """Upstream's serial loop: with one slot the agent sees every result before it proposes."""
    repo = task(tmp_path)
    agent = Scripted([f"A = {i}\nB = 0\n" for i in range(1, 4)])
    session(repo, agent, FakeExecutor(lambda job: 10.0 - params(job)["A"], sleep=0.3),
            max_experiments=3, lookahead=0)  # fmt: skip
    assert len(agent.calls) == 3
    for _, _, context in agent.calls:
        assert "pending" not in [h.verdict for h in context.history], context.history
    with pytest.raises(ConfigError, match="--lookahead must be 0 or more, got -1"):
        SessionOptions(tag="t", lookahead=-1)
    with pytest.raises(ConfigError, match="--max-failures must be 1 or more, got 0"):
        SessionOptions(tag="t", max_failures=0)


def test_a_keep_overtaken_while_it_is_re_scored_is_not_called_luck(tmp_path: Path) -> None:
    """Two slots: A is selected against the baseline; B, faster, is kept while A's fresh runs go
    on. A's fresh runs still beat the baseline: not luck, a better one was kept meanwhile."""
    repo = task(tmp_path, judge="baseline_runs = 2\nmax_runs = 3")

    def run(job: Job) -> FakeRun:  # A: selected first, re-scored slowly; B: selected second, fast
        a = int(params(job)["A"])
        value = {0: 10.0, 1: 8.0, 2: 5.0}[a] + 0.01 * (job.seed % 3)
        fresh = job.purpose is RunPurpose.RESCORE
        return FakeRun(value, sleep={0: 0.0, 1: 1.0 if fresh else 0.02, 2: 0.02 if fresh else 0.6}[a])

    said: list[str] = []
    agent = Scripted(["B = 0\nA = 1\n", "B = 0\nA = 2\n"])
    opts = SessionOptions(tag="t", max_experiments=2)
    executor = FakeExecutor(run, slots=2)
    engine = Engine(load_config(repo), agent, options=opts, executor=executor, on_message=said.append)
    engine.run()
    executor.close()
    rows = {r.description: r for r in engine.ledger.experiments(engine.session)}
    assert rows["A = 2"].verdict == "keep", rows["A = 2"].reason
    a = rows["A = 1"]
    assert a.verdict == "discard" and "a better one was kept meanwhile" in a.reason and "luck" not in a.reason
    assert any("selected; re-scoring on fresh seeds before it is kept (run 2 of 4)" in m for m in said), said


@pytest.mark.parametrize(("slots", "lookahead"), [(2, None), (1, 3)])
def test_max_cost_counts_the_proposals_made_ahead(tmp_path: Path, slots: int, lookahead: int | None) -> None:
    """$3 a proposal, compute free: proposals waiting for a slot are paid for before they are
    recorded. They count: the spend stayed at $12 and $15 of $10."""
    from autoresearch.records import Usage

    class Paid(Scripted):
        def propose(self, context: Context) -> Proposal:
            return replace(super().propose(context), usage=Usage(1, 0, 1, 3.0))

    agent = Paid([f"A = {-i}\nB = 0\n" for i in range(1, 30)])
    executor = FakeExecutor(lambda job: FakeRun(10.0 - params(job)["A"], sleep=0.3), slots=slots)
    engine = session(task(tmp_path), agent, executor, max_cost=10.0, gpu_price=0.0, lookahead=lookahead)
    summary = engine.summary()
    assert "--max-cost $10.00" in summary.stop_reason and summary.cost_usd <= 10.0, summary


def test_a_signal_while_free_proposals_wait_leaves_no_gap_in_the_ids(tmp_path: Path) -> None:
    """One slot, three free proposals queued, the agent cancelled while making the next: the
    cancelled one is recorded, so the free ones queued before it are recorded too (a resume
    would number on from the cancelled one and never show the ids in between)."""
    from autoresearch.errors import AgentCancelled

    started, cancelled = threading.Event(), threading.Event()

    class Waits(Scripted):
        def propose(self, context: Context) -> Proposal:
            if len(self.calls) == 4:  # the fifth call: blocks until the signal cancels it
                started.set()
                cancelled.wait(60)
                raise AgentCancelled("cancelled")
            return super().propose(context)

        def cancel(self) -> None:
            cancelled.set()

    repo = task(tmp_path)
    agent = Waits([f"A = {i}\nB = 0\n" for i in range(1, 9)])
    executor = FakeExecutor(lambda job: FakeRun(10.0 - params(job)["A"], sleep=0.5))
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="t", lookahead=3), executor=executor)

    def signal() -> None:
        started.wait(60)
        engine._on_first_signal("SIGTERM")

    threading.Thread(target=signal, daemon=True).start()
    engine.run()
    executor.close()
    rows = engine.ledger.experiments(engine.session)
    assert [r.id for r in rows] == list(range(len(rows))), [(r.id, r.verdict) for r in rows]
    assert rows[-1].verdict == "interrupted" and "while the agent was proposing" in rows[-1].reason
    assert [r.verdict for r in rows].count("interrupted") >= 2, [(r.id, r.verdict) for r in rows]


def test_a_constraint_on_a_key_the_baseline_never_reported_stops_the_session(tmp_path: Path) -> None:
    """``peak_rs_mb`` for ``peak_rss_mb``: the guard was never applied, and nothing said so. The
    session stops after the baseline, naming the keys there are; fixed, a resume goes on."""
    toml = TOML.format(judge="baseline_runs = 1")
    bad = toml.replace('name = "score"', 'name = "score"\nconstraints = ["peak_rs_mb <= 1.25 * best"]')
    repo = make_repo(tmp_path / "task", {"params.py": "A = 0\n", "program.md": "x\n", "autoresearch.toml": bad})

    def run(job: Job) -> FakeRun:
        return FakeRun(10.0 - params(job)["A"], metrics={"peak_rss_mb": 50.0 + 100 * params(job)["A"]})

    engine = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1)
    assert [r.verdict for r in engine.history.rows] == ["baseline"]
    reason = engine.summary().stop_reason
    assert reason == ("error: [metric] constraint 'peak_rs_mb <= 1.25 * best': the baseline's runs never "
                      "reported peak_rs_mb (they reported peak_rss_mb, score); fix autoresearch.toml, then --resume")
    (repo / "autoresearch.toml").write_text(bad.replace("peak_rs_mb", "peak_rss_mb"))
    git(repo, "commit", "-qam", "the key fixed")
    resumed = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1, resume=True)
    row = resumed.history.rows[1]
    assert row.verdict is Verdict.DISCARD and "constraint 'peak_rss_mb <= 1.25 * best' broken" in row.reason


def test_a_resumed_sessions_events_carry_the_sessions_totals(tmp_path: Path) -> None:
    """The live view's footer read "1 experiments, 0 kept" at #4 of a resumed session."""
    from autoresearch.engine import ExperimentEvent

    repo = task(tmp_path)
    texts = [f"A = {i}\nB = 0\n" for i in range(1, 5)]
    run = FakeExecutor(lambda job: 10.0 - params(job)["A"])
    session(repo, Scripted(texts[:2]), run, max_experiments=2)
    events: list[ExperimentEvent] = []
    executor = FakeExecutor(lambda job: 10.0 - params(job)["A"])
    opts = SessionOptions(tag="t", resume=True, max_experiments=3)
    Engine(load_config(repo), Scripted(texts[2:]), options=opts, executor=executor, on_event=events.append).run()
    executor.close()
    assert [(e.experiment.id, e.done, e.kept) for e in events] == [(3, 3, 3)], events


def test_a_keeps_fresh_runs_are_held_to_the_constraints_too(tmp_path: Path) -> None:
    """A candidate light in its selecting run and 60 MB heavier in its fresh runs
    (``AUTORESEARCH_RUN`` tells them apart) was kept past ``peak_rss_mb <= 1.25 * best``."""
    toml = TOML.format(judge="baseline_runs = 2\nmax_runs = 3")
    toml = toml.replace('name = "score"', 'name = "score"\nconstraints = ["peak_rss_mb <= 1.25 * best"]')
    repo = make_repo(tmp_path / "task", {"params.py": "A = 0\n", "program.md": "x\n", "autoresearch.toml": toml})

    def run(job: Job) -> FakeRun:
        a = params(job)["A"]
        heavy = a and job.purpose is RunPurpose.RESCORE
        return FakeRun(10.0 - a + 0.01 * (job.seed % 3), metrics={"peak_rss_mb": 90.0 if heavy else 30.0})

    engine = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1)
    row = engine.history.rows[1]
    assert row.verdict is Verdict.DISCARD, row.reason
    assert "but constraint 'peak_rss_mb <= 1.25 * best' broken: peak_rss_mb 90" in row.reason
    assert engine.history.best is not None and engine.history.best.metrics["peak_rss_mb"] == 30.0


def test_a_key_some_runs_do_not_report_breaks_a_constraint_on_it(tmp_path: Path) -> None:
    """The fresh runs hid their checksum where they skipped the work: the mean of the runs that
    printed one passed ``checksum == baseline``, and the skipped work was kept at -51%."""
    toml = TOML.format(judge="baseline_runs = 2\nmax_runs = 3")
    toml = toml.replace('name = "score"', 'name = "score"\nconstraints = ["checksum == baseline"]')
    repo = make_repo(tmp_path / "task", {"params.py": "A = 0\n", "program.md": "x\n", "autoresearch.toml": toml})

    def run(job: Job) -> FakeRun:
        if params(job)["A"] and job.run_index >= 1:  # the fresh runs: no work, and no checksum
            return FakeRun(5.0 + 0.01 * (job.seed % 3))
        return FakeRun(10.0 - params(job)["A"] + 0.01 * (job.seed % 3), metrics={"checksum": 42.0})

    engine = session(repo, Scripted(["A = 1\n"]), FakeExecutor(run), max_experiments=1)
    row = engine.history.rows[1]
    assert row.verdict is Verdict.DISCARD and "the runs did not report checksum" in row.reason, row.reason
