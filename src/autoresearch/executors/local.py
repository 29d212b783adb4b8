"""The local executor: a thread pool, one slot per thread, each run a group of subprocesses.

``gpus`` (e.g. ``["0", "1"]``) pins slot *i* to ``CUDA_VISIBLE_DEVICES=gpus[i]``; with
``gpus`` and no ``slots``, there is one slot per GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from autoresearch.errors import ExecutorError
from autoresearch.executors._base import Executor, Job, RunResult
from autoresearch.executors._steps import execute
from autoresearch.process import StepRunner

if TYPE_CHECKING:
    from autoresearch.executors.sandbox import Sandbox


class LocalExecutor(Executor):
    """Runs jobs as subprocesses on this machine, ``slots`` at a time."""

    def __init__(self, slots: int | None = None, *, gpus: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, sandbox: Sandbox | None = None,
                 max_log_mb: float = 64.0) -> None:  # fmt: skip
        slots = slots if slots is not None else max(1, len(gpus or ()))
        if slots < 1:
            raise ExecutorError(f"slots must be >= 1, got {slots}")
        if gpus and len(gpus) < slots:
            raise ExecutorError(
                f"{slots} slots but only {len(gpus)} GPUs given ({', '.join(gpus)})"
            )
        self._slots, self._gpus, self._env = slots, list(gpus or []), env
        self.sandbox = sandbox  # every step of every run inside it, when given
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="autoresearch-slot")
        self._runner = StepRunner(max_log_mb=max_log_mb)

    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        if self._gpus:
            gpu = self._gpus[job.slot % len(self._gpus)]
            job = replace(job, env={**job.env, "CUDA_VISIBLE_DEVICES": gpu})
        return self._pool.submit(execute, job, self._runner, self._env, self.sandbox)

    def kill_all(self) -> None:
        self._runner.kill_all()

    def close(self) -> None:
        self._runner.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["LocalExecutor"]
