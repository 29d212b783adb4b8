"""One suite every executor passes: results, failures, slots, kill.

Local and fake here; ``test_executor_ray`` runs the same functions over a real local Ray
cluster (it imports them and gives its own ``make`` fixture).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import git, make_repo

from autoresearch.config import MetricConfig
from autoresearch.executors import Executor, Job, LocalExecutor, RunStatus
from autoresearch.executors.fake import FakeExecutor, FakeRun

# What each behaviour is on each executor: a shell command for real ones, a script for the fake.
COMMANDS = {
    "ok": "echo training; echo ---; echo score: 1.5; echo steps: 7",
    "crash": "echo boom; exit 3",
    "hang": f"{sys.executable} -c 'import time; time.sleep(60)'",
    "slow": f"{sys.executable} -c 'import time; time.sleep(0.6); print(\"---\"); print(\"score: 2\")'",
}


def fake_script(job: Job) -> FakeRun:
    kind = next(k for k, v in COMMANDS.items() if v == job.run)
    return {
        "ok": FakeRun(1.5, metrics={"steps": 7.0}),
        "crash": FakeRun(None, status=RunStatus.CRASH, reason="run step exited with code 3"),
        "hang": FakeRun(None, sleep=60.0),
        "slow": FakeRun(2.0, sleep=0.6),
    }[kind]


@dataclass
class Kind:
    make: Callable[[int], Executor]


KINDS = {
    "local": Kind(lambda slots: LocalExecutor(slots)),
    "fake": Kind(lambda slots: FakeExecutor(fake_script, slots=slots)),
}


@pytest.fixture(params=sorted(KINDS))
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[int], Executor]]:
    made: list[Executor] = []

    def build(slots: int) -> Executor:
        made.append(KINDS[request.param].make(slots))
        return made[-1]

    yield build
    for executor in made:
        executor.close()


def job(tmp_path: Path, kind: str, index: int = 0, **kw: object) -> Job:
    """A job at the commit of a real (tiny) repository, as the engine makes them."""
    repo = tmp_path / "task"
    if not (repo / ".git").exists():
        make_repo(repo, {"README.md": "a task\n"})
    return Job(experiment_id=3, run_index=index, commit=git(repo, "rev-parse", "HEAD"), workdir=repo,
               run=COMMANDS[kind], metric=MetricConfig(name="score"), log_dir=tmp_path / "logs",
               out_dir=tmp_path / "out" / str(index), timeout=30, seed=4242 + index, reset_root=repo,
               **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_good_run_reports_its_metric_and_identity(make: Callable[[int], Executor], tmp_path: Path) -> None:
    result = make(1).submit(job(tmp_path, "ok")).result(timeout=60)
    assert result.status is RunStatus.OK and result.metric == 1.5
    assert result.metrics["steps"] == 7.0
    assert (result.experiment_id, result.run_index, result.seed) == (3, 0, 4242)
    assert result.log_path is not None and result.log_path.is_file()


def test_a_failing_run_is_a_crash_with_a_reason(make: Callable[[int], Executor], tmp_path: Path) -> None:
    result = make(1).submit(job(tmp_path, "crash")).result(timeout=60)
    assert result.status is RunStatus.CRASH and result.metric is None
    assert "exited with code 3" in result.reason


def test_slots_run_at_once_and_no_more(make: Callable[[int], Executor], tmp_path: Path) -> None:
    executor = make(2)
    assert executor.slots() == 2
    start = time.monotonic()
    futures = [executor.submit(job(tmp_path, "slow", i)) for i in range(4)]
    results = [f.result(timeout=120) for f in futures]
    assert all(r.status is RunStatus.OK and r.metric == 2.0 for r in results)
    assert [r.run_index for r in results] == [0, 1, 2, 3]
    assert time.monotonic() - start >= 2 * 0.6  # four runs on two slots: two rounds at least


def test_kill_all_ends_a_running_job_as_killed(make: Callable[[int], Executor], tmp_path: Path) -> None:
    executor = make(1)
    future = executor.submit(job(tmp_path, "hang"))
    threading.Timer(1.0, executor.kill_all).start()
    result = future.result(timeout=60)
    assert result.status is RunStatus.KILLED


def test_gpus_give_one_slot_each() -> None:
    executor = LocalExecutor(gpus=["0", "1", "2"])
    try:
        assert executor.slots() == 3
    finally:
        executor.close()
