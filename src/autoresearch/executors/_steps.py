"""The step plan every executor runs: ``check`` -> ``run`` -> ``evaluate``, then the metric.

Between steps the protected files (and protected data) are hashed again, so a run that
rewrites the harness never gets its evaluation; before ``evaluate`` the worktree is put
back to the experiment's commit, so the trusted step never sees what the run step wrote.
Executors differ only in where this runs (a thread here, a Ray worker there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from autoresearch import metrics
from autoresearch.errors import ExecutorError, MetricError
from autoresearch.executors._base import Job, RunResult
from autoresearch.integrity import sha256_files
from autoresearch.process import TAIL_LINES, StepResult, StepRunner, without_secrets
from autoresearch.records import RunStatus
from autoresearch.workspace import HARDENED_GIT


def run_environment(job: Job, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: the caller's less secrets, plus the job's, plus AUTORESEARCH_*."""
    env = without_secrets(base)
    env.update(job.env)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # `python` is the interpreter we run on
    env.update(
        AUTORESEARCH_TIME_BUDGET=f"{job.time_budget:g}",
        AUTORESEARCH_SEED=str(job.seed),
        AUTORESEARCH_OUT=str(job.out_dir),
        AUTORESEARCH_EXPERIMENT=str(job.experiment_id),
        AUTORESEARCH_RUN=str(job.run_index),
        PYTHONUNBUFFERED="1",
    )
    return env


def execute(job: Job, runner: StepRunner, env: Mapping[str, str] | None = None) -> RunResult:
    """Run one job's steps and read its metric. Never raises for a failing run."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    environment = run_environment(job, env)
    steps: list[StepResult] = []
    for name, command in (("check", job.check), ("run", job.run), ("evaluate", job.evaluate)):
        if not command.strip():
            continue
        suffix = "" if name == "run" else f".{name}"
        log = job.log_dir / f"{job.name}{suffix}.log"
        if name == "evaluate":
            _pristine(job)
            if job.metric.format == "json":  # only the harness writes it
                (job.out_dir / job.metric.path).unlink(missing_ok=True)
        result = runner.step(name, command, job.workdir, environment, log, job.timeout)
        steps.append(result)
        failure = _failure(job, result, runner)
        if failure is not None:
            return _result(job, steps, *failure)
        tampered = _tampered(job)
        if tampered:
            why = f"the {name} step changed protected files: {', '.join(tampered)}"
            return _result(job, steps, RunStatus.INVALID, why)
    return _measure(job, steps)


def _failure(job: Job, step: StepResult, runner: StepRunner) -> tuple[RunStatus, str] | None:
    if runner.killed:
        return RunStatus.KILLED, f"{step.name} step killed from outside"
    if step.timed_out:
        return RunStatus.TIMEOUT, f"{step.name} step hit the hard timeout ({job.timeout:g} s)"
    if step.returncode is not None and step.returncode < 0:
        return RunStatus.CRASH, f"{step.name} step killed by signal {-step.returncode}"
    if step.returncode != 0:
        return RunStatus.CRASH, f"{step.name} step exited with code {step.returncode}"
    return None


def _pristine(job: Job) -> None:
    """Put the worktree back to the job's commit (by sha, not whatever HEAD the run left)."""
    if job.reset_root is None:
        return
    keep = [f"--exclude=/{path}" for path in job.reset_keep]
    target = [job.commit] if job.commit else []
    for args in (["reset", "-q", "--hard", *target], ["clean", "-qffdx", *keep]):
        done = subprocess.run(["git", *HARDENED_GIT, *args], cwd=job.reset_root,
                              capture_output=True, env=without_secrets())  # fmt: skip
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()
            raise ExecutorError(f"cannot reset {job.reset_root} before evaluate: {message}")


def _tampered(job: Job) -> list[str]:
    """Protected files (in the worktree) and protected data (anywhere) whose hash changed."""
    changed = []
    for root, expected in ((job.workdir, job.protected), (Path("/"), job.protected_data)):
        if expected:
            now = sha256_files(root, expected)
            changed += [p for p, digest in expected.items() if now[p] != digest]
    return sorted(changed)


def _measure(job: Job, steps: Sequence[StepResult]) -> RunResult:
    source = steps[-1]  # evaluate when the task has one, else run: the harness's word wins
    try:
        found = metrics.parse(job.metric, source.output, job.out_dir)
    except MetricError as exc:
        return _result(job, steps, RunStatus.CRASH, str(exc))
    return _result(job, steps, RunStatus.OK, "", found)


def _result(job: Job, steps: Sequence[StepResult], status: RunStatus, reason: str,
            found: Mapping[str, float] | None = None) -> RunResult:  # fmt: skip
    run_step = next((s for s in steps if s.name == "run"), None)
    last = steps[-1] if steps else None
    found = dict(found or {})
    return RunResult(
        experiment_id=job.experiment_id, run_index=job.run_index, seed=job.seed, status=status,
        metric=found.get(job.metric.name), metrics=found,
        seconds=run_step.seconds if run_step else 0.0, reason=reason,
        log_path=run_step.log_path if run_step else (last.log_path if last else None),
        log_tail="\n".join(last.output.splitlines()[-TAIL_LINES:]) if last else "", steps=tuple(steps),
    )  # fmt: skip


__all__ = ["execute", "run_environment"]
