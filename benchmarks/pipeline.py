"""Does the device wait for the agent? Real sessions, a scripted agent, runs that only sleep.

The agent thinks for 20% of a run's length; each run sleeps. Printed side by side:
device utilization with one slot (run-step seconds / session window) against the serial
design's run / (run + think), and steady-state experiments/hour with 2 and 4 slots as a
ratio of one slot's. Targets: utilization >= 0.97; 2 slots >= 1.9x, 4 slots >= 3.8x.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.agents._base import Agent, Context
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.executors._base import Job
from autoresearch.executors.fake import FakeExecutor
from autoresearch.records import Edit, Proposal

RUN = 3.0  # seconds a run sleeps (orchestration adds ~50 ms per experiment: see loop_overhead.py)
THINK = 0.2 * RUN  # seconds the agent thinks per proposal
EXPERIMENTS = 12

TOML = """\
[task]
editable = ["params.py"]
run = "true"
time_budget = 60
[metric]
name = "score"
[judge]
rule = "naive"
baseline_runs = 1
"""


class Thinker(Agent):
    """Proposes a new value of X after thinking for THINK seconds."""

    name = "thinker"

    def propose(self, context: Context) -> Proposal:
        time.sleep(THINK)
        value = context.experiment_id
        return Proposal(f"X = {value}", edits=(Edit("params.py", content=f"X = {value}\n"),))


def score(job: Job) -> float:
    text = (job.workdir / "params.py").read_text()
    return 100.0 - float(text.split("=")[1])  # every proposal is a keep: the worst case for git


def make_task(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "params.py").write_text("X = 0\n")
    (root / "program.md").write_text("Tune X.\n")
    (root / "autoresearch.toml").write_text(TOML)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "task"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
                            "GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return root


def session(root: Path, slots: int) -> tuple[float, float]:
    """(utilization of the slots after the baseline, experiments per hour in steady state)."""
    executor = FakeExecutor(score, slots=slots, sleep=RUN)
    options = SessionOptions(tag=f"s{slots}", max_experiments=EXPERIMENTS * slots)
    engine = Engine(load_config(root), Thinker(), options=options, executor=executor)
    engine.run()
    executor.close()
    rows = [r for r in engine.history.rows if r.agent != "baseline"]
    start = min(r.started for r in rows)  # the first candidate committed: steady state
    end = max(r.finished or 0.0 for r in rows)
    busy = sum(r.runs[0].seconds for r in rows if r.runs)
    return busy / ((end - start) * slots), len(rows) / ((end - start) / 3600)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: session(make_task(Path(tmp) / f"t{n}"), n) for n in (1, 2, 4)}
    serial = RUN / (RUN + THINK)
    one = results[1][1]
    print(f"run {RUN:g} s, agent thinks {THINK:g} s, {EXPERIMENTS} experiments per slot")
    print(f"utilization, 1 slot: pipelined {results[1][0]:.3f}  serial design {serial:.3f}  (target >= 0.97)")
    for n in (2, 4):
        ratio = results[n][1] / one
        target = 1.9 if n == 2 else 3.8
        print(f"experiments/hour, {n} slots: {results[n][1]:.0f} = {ratio:.2f}x one slot "
              f"({one:.0f}/h); utilization {results[n][0]:.3f}  (target >= {target}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
