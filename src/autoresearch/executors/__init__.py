"""Executors: where runs happen. ``LocalExecutor`` here; ``RayExecutor`` on a cluster."""

from autoresearch.executors._base import Executor, Job, RunResult, RunStatus, StepResult
from autoresearch.executors.local import LocalExecutor

__all__ = ["Executor", "Job", "LocalExecutor", "RunResult", "RunStatus", "StepResult"]
