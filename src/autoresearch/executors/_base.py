"""The executor interface: ``Executor.submit(Job) -> Future[RunResult]``.

An executor runs one experiment's code: the optional ``check`` step, the ``run`` step
under the time budget and hard timeout, then the optional trusted ``evaluate`` step,
and parses the metric. It knows nothing of agents, verdicts or git history.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from autoresearch.config import MetricConfig


class RunStatus(enum.StrEnum):
    """How one run ended, before any judging."""

    OK = "ok"  # every step exited 0 and the metric was read
    CRASH = "crash"  # a step failed, or the metric is missing / not finite
    TIMEOUT = "timeout"  # the hard timeout killed the process group
    INVALID = "invalid"  # the run changed a protected file (the harness)
    KILLED = "killed"  # stopped from outside (a second Ctrl-C, executor shutdown)


@dataclass(frozen=True)
class Job:
    """One run of one experiment's code."""

    experiment_id: int
    run_index: int
    commit: str
    workdir: Path  # a checkout of ``commit`` at the task folder (local executors run here)
    run: str
    metric: MetricConfig
    log_dir: Path
    out_dir: Path  # AUTORESEARCH_OUT: result files and checkpoints of this run
    check: str = ""
    evaluate: str = ""
    time_budget: float = 300.0
    timeout: float = 600.0
    seed: int = 0
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment variables
    slot: int = 0
    protected: Mapping[str, str] = field(default_factory=dict)  # path -> sha256 that must hold
    protected_data: Mapping[str, str] = field(default_factory=dict)  # absolute path -> sha256
    # Put back before ``evaluate``: the worktree root, and the repo-relative paths to keep
    # (links). The trusted step never sees files the run step wrote or changed.
    reset_root: Path | None = None
    reset_keep: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.experiment_id:04d}-{self.run_index}"


@dataclass(frozen=True)
class StepResult:
    """One step (check, run or evaluate) of a run."""

    name: str
    returncode: int | None  # None when killed on timeout
    seconds: float
    log_path: Path
    timed_out: bool = False
    output: str = ""  # the end of the step's output, as read from the step itself


@dataclass(frozen=True)
class RunResult:
    """The outcome of one ``Job``."""

    experiment_id: int
    run_index: int
    seed: int
    status: RunStatus
    metric: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)  # every numeric summary key
    seconds: float = 0.0  # wall time of the ``run`` step
    reason: str = ""
    log_path: Path | None = None  # the ``run`` step's log
    log_tail: str = ""  # the last lines of the failing (or last) step's log
    steps: tuple[StepResult, ...] = ()


@runtime_checkable
class Executor(Protocol):
    """Runs jobs, one per slot at a time."""

    def slots(self) -> int: ...

    def submit(self, job: Job) -> Future[RunResult]: ...

    def close(self) -> None: ...


__all__ = ["Executor", "Job", "RunResult", "RunStatus", "StepResult"]
