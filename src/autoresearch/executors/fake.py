"""The fake executor: scripted results, no processes, for tests and benchmarks of the loop.

``FakeExecutor(script)`` calls ``script(job)`` for every run; the script reads what it
needs (the job's checkout holds the experiment's code, ``job.seed`` its seed) and
returns a metric, a ``FakeRun`` (status, metrics, how long to take), or a whole
``RunResult``. A run's log file is written like a real one's, so everything downstream
(ledger, views, reports) sees the same shapes. ``sleep`` makes each run take that long
in wall time (a slot is busy), which is what pipelining benchmarks measure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from autoresearch.executors._base import Executor, Job, RunResult
from autoresearch.records import RunStatus


@dataclass(frozen=True)
class FakeRun:
    """What one scripted run reports."""

    metric: float | None
    status: RunStatus = RunStatus.OK
    metrics: Mapping[str, float] = field(default_factory=dict)
    seconds: float | None = None  # reported run-step wall time (default: the time slept)
    sleep: float | None = None  # wall time to take (default: the executor's ``sleep``)
    reason: str = ""


Script = Callable[[Job], "float | FakeRun | RunResult | None"]


class FakeExecutor(Executor):
    """Runs scripted jobs on ``slots`` threads; a killed run ends as ``killed``."""

    def __init__(self, script: Script, *, slots: int = 1, sleep: float = 0.0) -> None:
        self._script, self._slots, self._sleep = script, slots, sleep
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="fake-slot")
        self._killed = threading.Event()
        self.jobs: list[Job] = []  # every job submitted, in order
        self.busy_seconds = 0.0  # wall time spent inside runs, over all slots
        self._lock = threading.Lock()

    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        with self._lock:
            self.jobs.append(job)
        return self._pool.submit(self._execute, job)

    def kill_all(self) -> None:
        self._killed.set()

    def close(self) -> None:
        self._killed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _execute(self, job: Job) -> RunResult:
        start = time.monotonic()
        outcome = self._script(job)
        if isinstance(outcome, RunResult):
            return outcome
        run = outcome if isinstance(outcome, FakeRun) else FakeRun(outcome)
        pause = self._sleep if run.sleep is None else run.sleep
        killed = self._killed.wait(pause) if pause > 0 else self._killed.is_set()
        took = time.monotonic() - start
        with self._lock:
            self.busy_seconds += took
        return self._result(job, run, took, killed)

    def _result(self, job: Job, run: FakeRun, took: float, killed: bool) -> RunResult:
        status = RunStatus.KILLED if killed else run.status
        metrics = dict(run.metrics)
        if run.metric is not None and status is RunStatus.OK:
            metrics[job.metric.name] = run.metric
        log = job.log_dir / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        lines = ["(fake run)", "---", *(f"{k}: {v}" for k, v in metrics.items())]
        log.write_text("\n".join(lines) + "\n", encoding="utf-8")
        reason = "killed: the session stopped it" if killed else run.reason
        if status is RunStatus.OK and run.metric is None:
            status, reason = RunStatus.CRASH, reason or f"no {job.metric.name} reported"
        return RunResult(
            experiment_id=job.experiment_id, run_index=job.run_index, seed=job.seed,
            status=status, metric=metrics.get(job.metric.name) if status is RunStatus.OK else None,
            metrics=metrics, seconds=took if run.seconds is None else run.seconds, reason=reason,
            log_path=log, log_tail="\n".join(lines),
        )  # fmt: skip


__all__ = ["FakeExecutor", "FakeRun"]
