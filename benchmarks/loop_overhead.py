"""Orchestrator overhead per experiment against the floor of a bare git commit + reset.

500 experiments of one session whose run is trivial, with the replay agent. The
orchestrator's own time is the wall time between two recorded experiments minus the
run (executor); the agent proposes on its own thread, in the shadow of the run. The
floor is a shell script doing `git commit` + `git reset` per experiment in the same repo
kind. Targets: median overhead <= 3x the floor, and the overhead of experiments 450-500
within 1.2x that of experiments 1-50 (it does not grow with the session).
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import load_config
from autoresearch.engine import Engine, ExperimentEvent, SessionOptions
from autoresearch.executors import Job, LocalExecutor, RunResult

N = 500
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip


def sh(cwd: Path, script: str) -> None:
    import os

    subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={**os.environ, **IDENTITY},
    )


def make_task(root: Path) -> tuple[Path, Path]:
    repo, patches = root / "task", root / "patches"
    repo.mkdir()
    patches.mkdir()
    (repo / "params.py").write_text("# marker\nZ = 0\n")
    (repo / "autoresearch.toml").write_text(
        '[task]\neditable = ["params.py"]\nrun = "echo ---; echo score: $AUTORESEARCH_SEED"\n'
        'time_budget = 5\ntimeout = 10\n[metric]\nname = "score"\n[judge]\nrule = "naive"\nbaseline_runs = 1\n'
    )
    sh(repo, "git init -q -b main && git add -A && git commit -qm init")
    for i in range(N):
        (patches / f"{i:04d}").write_text(
            f"# step {i}\nparams.py\n<<<<<<< SEARCH\n# marker\n=======\n# marker\nZ = {i}\n>>>>>>> REPLACE\n"
        )
    return repo, patches


class TimedExecutor(LocalExecutor):
    """Adds up the wall time of each job inside the executor (the run itself)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.seconds = 0.0

    def submit(self, job: Job) -> Future[RunResult]:
        start = time.perf_counter()
        future = super().submit(job)
        future.add_done_callback(
            lambda f: setattr(self, "seconds", self.seconds + time.perf_counter() - start)
        )
        return future


def orchestrator_overheads() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, patches = make_task(Path(tmp))
        import os

        os.environ.update(IDENTITY)
        agent, executor = ReplayAgent(patches), TimedExecutor()
        marks: list[tuple[float, float]] = []

        def on_event(event: ExperimentEvent) -> None:
            marks.append((time.perf_counter(), executor.seconds))

        Engine(load_config(repo), agent, options=SessionOptions(tag="bench"), executor=executor,
               on_event=on_event).run()  # fmt: skip
        executor.close()
    out = []
    for (t0, r0), (t1, r1) in itertools.pairwise(marks):
        out.append((t1 - t0) - (r1 - r0))
    return out


def floor_per_experiment() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        sh(repo, "git init -q -b main && echo 0 > f && git add f && git commit -qm init")
        script = f"for i in $(seq {N}); do echo $i > f; git commit -qam step; git reset -q --hard HEAD~1; done"
        start = time.perf_counter()
        sh(repo, script)
        return (time.perf_counter() - start) / N


def main() -> int:
    floor = floor_per_experiment()
    in_order = orchestrator_overheads()
    early, late = statistics.median(in_order[:50]), statistics.median(in_order[-50:])
    overheads = sorted(in_order)
    median = statistics.median(overheads)
    p95 = overheads[int(0.95 * (len(overheads) - 1))]
    print(f"experiments                      {len(overheads) + 1}")
    print(f"floor: git commit + reset        {floor * 1000:7.2f} ms / experiment")
    print(
        f"orchestrator overhead median     {median * 1000:7.2f} ms   ratio to floor {median / floor:5.2f}x"
    )
    print(
        f"orchestrator overhead p95        {p95 * 1000:7.2f} ms   ratio to floor {p95 / floor:5.2f}x"
    )
    print(f"experiments 1-50 median          {early * 1000:7.2f} ms")
    print(f"experiments {len(in_order) - 49}-{len(in_order)} median      {late * 1000:7.2f} ms   ratio to 1-50 {late / early:5.2f}x")
    ok = median <= 3 * floor and late <= 1.2 * early
    print(f"targets (median <= 3x floor; late <= 1.2x early): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
