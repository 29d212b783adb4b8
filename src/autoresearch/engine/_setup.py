"""Before the baseline: the task's setup step, and the hashes of its protected data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from autoresearch.config import TaskConfig
from autoresearch.errors import AutoresearchError
from autoresearch.executors._base import Job
from autoresearch.executors._steps import run_environment
from autoresearch.integrity import sha256_files
from autoresearch.process import StepRunner, tail

SETUP_TIMEOUT = 24 * 3600.0


def run_setup(config: TaskConfig, log: Path, runner: StepRunner, env: Mapping[str, str]) -> None:
    """Run the task's ``setup`` step in the task folder (output to ``log``); raise if it fails."""
    job = Job(0, 0, "", config.root, "", config.metric, log.parent, log.parent,
              time_budget=config.time_budget, env=env, pass_env=config.env)  # fmt: skip
    environment = run_environment(job)
    environment.pop("AUTORESEARCH_OUT", None)
    step = runner.step("setup", config.setup, config.root, environment, log, SETUP_TIMEOUT)
    if runner.killed:
        return
    if step.returncode != 0:
        raise AutoresearchError(
            f"setup step {config.setup!r} failed (exit {step.returncode}); log: {log}\n{tail(log, 15)}"
        )


def data_hashes(config: TaskConfig) -> dict[str, str]:
    """sha256 of every file matching the task's ``protected_data`` globs (absolute paths)."""
    files = sorted(
        {p.resolve() for g in config.protected_data for p in config.root.glob(g) if p.is_file()}
    )
    return sha256_files(Path("/"), [str(p) for p in files])


__all__ = ["data_hashes", "run_setup"]
