"""Executors: where runs happen. ``LocalExecutor`` here; ``RayExecutor`` on a cluster."""

from __future__ import annotations

from typing import Any

from autoresearch.executors._base import Executor, Job, RunResult, RunStatus, StepResult
from autoresearch.executors.local import LocalExecutor


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":  # imported on use: Ray is an optional extra
        from autoresearch.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Executor", "Job", "LocalExecutor", "RayExecutor", "RunResult", "RunStatus", "StepResult"]
