"""Ray executor scaling: steady-state experiments/hour with 1, 2 and 4 run slots, and per-run overhead.

A local Ray cluster (one node, 4 CPUs) runs a task whose run sleeps RUN_SECONDS; a fake agent
thinks 10% of a run per proposal. Steady state: the experiments finished after the first N
(warm-up), per hour of the time between them. Target: N slots >= 0.95 * N x one slot.
Overhead: a trivial run submitted one at a time, Ray against local, mean wall ms per run.

The engine makes proposals on its main thread between runs (pipelined proposals are another
issue), so with N slots the agent's think time is paid N times per cycle of runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from autoresearch.agents._base import Context, Edit, Proposal
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.executors import Executor, Job, LocalExecutor
from autoresearch.executors.ray import SCRATCH_ENV, RayExecutor

RUN_SECONDS = 2.0
THINK = 0.1 * RUN_SECONDS
PER_SLOT = 6  # measured experiments per slot, after the warm-up
OVERHEAD_RUNS = 15
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
TOML = f"""\
[task]
editable = ["params.py"]
run = "sleep {RUN_SECONDS}; {sys.executable} score.py"
time_budget = 10
timeout = 30

[metric]
name = "score"

[ray]
gpus_per_run = 0
"""


class ThinkingAgent:
    """Thinks THINK seconds, then proposes a new constant (every proposal is a new commit)."""

    name = "thinking"

    def __init__(self) -> None:
        self.count = 0

    def propose(self, context: Context) -> Proposal:
        time.sleep(THINK)
        self.count += 1
        text = f"X = {self.count}\n"
        return Proposal(f"X = {self.count}", edits=(Edit("params.py", content=text),))


def make_task(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "params.py").write_text("X = 0\n")
    (folder / "score.py").write_text("import params\nprint('---'); print('score:', 1 / (1 + params.X))\n")
    (folder / "autoresearch.toml").write_text(TOML)
    (folder / "program.md").write_text("Benchmark.\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "task"]):
        subprocess.run(["git", *args], cwd=folder, check=True, env={**os.environ, **IDENTITY})
    return folder


def steady_rate(base: Path, slots: int) -> float:
    """Experiments per hour once ``slots`` runs are in flight."""
    repo = make_task(base / f"slots{slots}")
    config = load_config(repo)
    finished: list[float] = []
    executor = RayExecutor(config, address="auto", slots=slots)
    options = SessionOptions(tag="bench", max_experiments=slots * (PER_SLOT + 1), run_setup=False)
    engine = Engine(config, ThinkingAgent(), options=options, executor=executor,
                    on_event=lambda event: finished.append(time.monotonic()))  # fmt: skip
    try:
        engine.run()
    finally:
        executor.close()
    measured = finished[1 + slots :]  # after the baseline and the first round (workers starting)
    return 3600 * (len(measured) - 1) / (measured[-1] - measured[0])


def overhead_ms(executor: Executor, repo: Path, base: Path) -> float:
    """Mean wall time of a trivial run, submitted one at a time (the first one left out)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    config = load_config(repo)
    times = []
    for i in range(OVERHEAD_RUNS + 1):
        job = Job(experiment_id=1, run_index=i, commit=commit, workdir=repo, run="echo ---; echo score: 1",
                  metric=config.metric, log_dir=base / "logs", out_dir=base / "out" / str(i),
                  timeout=30, reset_root=repo)  # fmt: skip
        start = time.perf_counter()
        result = executor.submit(job).result()
        assert result.status.value == "ok", result.reason
        times.append(time.perf_counter() - start)
    return 1000 * statistics.mean(times[1:])


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ar-raybench-"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster on this machine only
    os.environ[SCRATCH_ENV] = str(base / "scratch")  # the node's run folders, removed below
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             _temp_dir=str(base / "t"))  # fmt: skip
    try:
        rates = {n: steady_rate(base, n) for n in (1, 2, 4)}
        repo = make_task(base / "overhead")
        local = LocalExecutor(slots=1)
        remote = RayExecutor(load_config(repo), address="auto", slots=1)
        try:
            costs: dict[str, Any] = {"local": overhead_ms(local, repo, base / "l"),
                                     "ray": overhead_ms(remote, repo, base / "r")}  # fmt: skip
        finally:
            local.close()
            remote.close()
    finally:
        ray.shutdown()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    print(f"run {RUN_SECONDS:g} s, agent thinks {THINK:g} s per proposal, {os.cpu_count()} CPU cores here")
    print(f"{'slots':>5} {'exp/hour':>9} {'x one slot':>10} {'target':>7}")
    for n, rate in rates.items():
        ratio = rate / rates[1]
        verdict = "ok" if ratio >= 0.95 * n else "MISSED"
        print(f"{n:>5} {rate:>9.0f} {ratio:>10.2f} {0.95 * n:>7.2f}  {verdict}")
    extra = costs["ray"] - costs["local"]
    print(f"per-run wall time of a trivial run: local {costs['local']:.0f} ms, ray {costs['ray']:.0f} ms "
          f"(ray adds {extra:.0f} ms, {costs['ray'] / costs['local']:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
