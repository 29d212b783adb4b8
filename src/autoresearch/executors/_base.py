"""The executor interface: ``Executor.submit(Job) -> Future[RunResult]``.

An executor runs one experiment's code: the optional ``check`` step, the ``run`` step
under the time budget and hard timeout, then the optional trusted ``evaluate`` step,
and parses the metric (the step plan is ``executors/_steps.py``, shared by every
executor). It knows nothing of agents, verdicts or git history.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from autoresearch.config import MetricConfig
from autoresearch.process import StepResult
from autoresearch.records import RunPurpose, RunStatus


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
    max_memory_mb: float | None = None  # per step: its processes together (None: no limit)
    seed: int = 0
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment variables
    pass_env: tuple[str, ...] = ()  # [task] env: variables handed on even when secret-looking
    slot: int = 0
    cpus: tuple[int, ...] = ()  # the CPUs its steps run on, and cannot leave in the sandbox (): all
    protected: Mapping[str, str] = field(default_factory=dict)  # path -> sha256 that must hold
    protected_data: Mapping[str, str] = field(default_factory=dict)  # absolute path -> sha256
    # Put back before ``evaluate``: the worktree root, and the repo-relative paths to keep
    # (links). The trusted step never sees files the run step wrote or changed.
    reset_root: Path | None = None
    reset_keep: tuple[str, ...] = ()
    purpose: RunPurpose = RunPurpose.SELECT
    # [task] reference: a clean checkout of the session's baseline (its root), read-only to
    # ``evaluate``, which finds its task folder in AUTORESEARCH_REFERENCE (measure --same)
    reference_root: Path | None = None
    reference_commit: str = ""  # what evaluate resets the reference checkout to
    # The session's baseline commit: a node's setup step (Ray) runs its code, never a candidate's
    # ("": the job's own commit).
    setup_commit: str = ""
    # The budget rule, known before the run: once ``budget_steps`` together have taken
    # ``budget_limit`` seconds the run is over budget whatever it does next, so it is stopped
    # there (None: only the steps' hard timeout; the baseline's runs are never stopped early).
    budget_steps: tuple[str, ...] = ()
    budget_limit: float | None = None

    @property
    def name(self) -> str:
        return f"{self.experiment_id:04d}-{self.run_index}"

    @property
    def reference(self) -> Path | None:
        """The task folder inside ``reference_root``, as ``workdir`` is inside ``reset_root``."""
        if self.reference_root is None:
            return None
        return self.reference_root / self.workdir.relative_to(self.reset_root or self.workdir)


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
    fatal: bool = False  # the run reached state outside its sandbox (git, the Python env, the checkout)

    @property
    def compute_seconds(self) -> float:
        """Wall time of every step of this run (what a slot was busy for)."""
        return sum(s.seconds for s in self.steps) or self.seconds

    def step_seconds(self, name: str) -> float:
        """Wall time of the step ``name`` (0 when it did not run)."""
        return sum(s.seconds for s in self.steps if s.name == name)


@runtime_checkable
class Executor(Protocol):
    """Runs jobs, at most ``slots()`` at a time."""

    def slots(self) -> int: ...

    def submit(self, job: Job) -> Future[RunResult]: ...

    def kill_all(self) -> None:
        """Kill every running step now (a second Ctrl-C or SIGTERM)."""

    def cancel_waiting(self) -> None:
        """A first signal: give up the runs that have not started (started ones finish). An
        executor whose runs start when submitted has none."""
        return None

    def close(self) -> None: ...


__all__ = ["Executor", "Job", "RunResult", "RunStatus", "StepResult"]
