"""What the bubblewrap sandbox costs: per-step start-up, and GPT training throughput inside it.

Measured side by side in one run, interleaved (ABBA order), through the executor's own
``StepRunner`` and ``Sandbox``:

1. a trivial step (``true``) unsandboxed vs in bwrap: median wall ms each, the ms added per
   step (target <= 50 ms) and the ratio;
2. the GPT template's cpu preset: ``train.py`` for a short budget, tokens/s in bwrap vs
   unsandboxed (target >= 0.98x), then the same checkpoint's ``evaluate`` in both (the
   val_bpb must be identical: the sandbox changes nothing the harness measures).

Usage: python benchmarks/sandbox_overhead.py [--steps N] [--budget S] [--pairs P] [--skip-gpt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import metrics, templates
from autoresearch.config import MetricConfig
from autoresearch.executors._base import Job
from autoresearch.executors._steps import execute
from autoresearch.executors.sandbox import Sandbox, bwrap_problem
from autoresearch.process import StepRunner

MODES = ("none", "bwrap")


def abba(pairs: int) -> list[str]:
    """none, bwrap, bwrap, none, ...: a drift in machine load hits both modes alike."""
    order: list[str] = []
    for i in range(pairs):
        order += list(MODES if i % 2 == 0 else reversed(MODES))
    return order


def make_task(root: Path) -> Path:
    task = root / "task"
    templates.write_template("gpt", task, size="cpu")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "gpt"]):
        subprocess.run(["git", *args], cwd=task, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                            "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})  # fmt: skip
    return task


def step_env(task: Path, out: Path, budget: float) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        AUTORESEARCH_TASK_DIR=str(task), AUTORESEARCH_OUT=str(out), AUTORESEARCH_SEED="1",
        AUTORESEARCH_TIME_BUDGET=f"{budget:g}", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return env


def run_step(sandbox: Sandbox, mode: str, name: str, command: str, task: Path, out: Path,
             budget: float, timeout: float) -> tuple[float, str]:  # fmt: skip
    """Seconds and output of one step in ``mode``."""
    out.mkdir(parents=True, exist_ok=True)
    env = step_env(task, out, budget)
    prefix: list[str] = []
    if mode == "bwrap":
        writable = [out] if name == "evaluate" else [task, out]
        prefix = sandbox.prefix(name, cwd=task, worktree=task, writable=writable)
        env = sandbox.environment(env)
    log = out / f"{name}-{mode}.log"
    result = StepRunner().step(name, command, task, env, log, timeout, prefix)
    if result.returncode != 0:
        raise SystemExit(
            f"{name} step failed in {mode} (exit {result.returncode}):\n{result.output[-2000:]}"
        )
    return result.seconds, result.output


def startup(sandboxes: dict[str, Sandbox], task: Path, steps: int) -> None:
    """A trivial one-step job through ``execute``: prefix, fingerprints, start, pump, parse."""
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    runner, state = StepRunner(), task / ".autoresearch"
    for i, mode in enumerate(abba(steps)):
        job = Job(experiment_id=i, run_index=0, commit="", workdir=task, run="echo ---; echo 'score: 1'",
                  metric=MetricConfig(name="score"), log_dir=state / "logs", out_dir=state / "runs" / str(i),
                  env={"AUTORESEARCH_TASK_DIR": str(task)})  # fmt: skip
        start = time.perf_counter()
        result = execute(job, runner, sandbox=sandboxes[mode])
        seconds[mode].append((time.perf_counter() - start) * 1000)
        assert result.metric == 1.0, result.reason
    none, bwrap = (statistics.median(seconds[m]) for m in MODES)
    verdict = "ok" if bwrap - none <= 50 else "OVER TARGET"
    print(
        f"trivial step through execute(), median of {steps}: unsandboxed {none:.1f} ms, bwrap {bwrap:.1f} ms"
    )
    print(
        f"  added per step: {bwrap - none:+.1f} ms (target <= 50 ms: {verdict}); ratio {bwrap / none:.2f}x"
    )


def gpt(sandbox: Sandbox, task: Path, budget: float, pairs: int) -> None:
    done = subprocess.run([sys.executable, "prepare.py"], cwd=task, capture_output=True, text=True,
                          env=step_env(task, task / ".autoresearch" / "out", budget))  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"prepare.py failed:\n{done.stderr[-2000:]}")
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    outs = task / ".autoresearch" / "runs"
    for i, mode in enumerate(abba(pairs)):
        _, output = run_step(sandbox, mode, "run", "python train.py", task, outs / f"{i}-{mode}",
                             budget, budget * 10 + 120)  # fmt: skip
        rates[mode].append(metrics.parse_summary(output)["tokens_per_sec"])
        print(f"  run {i + 1} ({mode}): {rates[mode][-1]:,.0f} tokens/s")
    none, bwrap = (statistics.mean(rates[m]) for m in MODES)
    verdict = "ok" if bwrap / none >= 0.98 else "UNDER TARGET (noise on a shared machine?)"
    print(f"GPT cpu preset, {budget:g}-s budget, mean of {pairs} each: unsandboxed {none:,.0f} "
          f"tokens/s, bwrap {bwrap:,.0f} tokens/s: {bwrap / none:.3f}x (target >= 0.98x: {verdict})")  # fmt: skip
    checkpoint = outs / f"0-{MODES[0]}"
    scores = {}
    for mode in MODES:
        _, output = run_step(sandbox, mode, "evaluate", "python prepare.py evaluate", task,
                             checkpoint, budget, 600)  # fmt: skip
        scores[mode] = metrics.parse_summary(output)["val_bpb"]
    same = "identical" if scores["none"] == scores["bwrap"] else "DIFFERENT"
    print(f"evaluate of one checkpoint: unsandboxed val_bpb {scores['none']:.6f}, bwrap "
          f"{scores['bwrap']:.6f} ({same}; the holdout is readable in evaluate)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="trivial steps per mode")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds of GPT training per run"
    )
    parser.add_argument("--pairs", type=int, default=2, help="GPT runs per mode")
    parser.add_argument("--skip-gpt", action="store_true", help="only the start-up cost")
    args = parser.parse_args()
    problem = bwrap_problem()
    if problem is not None:
        print(f"sandbox_overhead: skipped, {problem}")
        return
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        task = make_task(Path(tmp))
        # The cpu preset's validation split is its holdout: the run step cannot read it.
        holdout = [".autoresearch/data/val/*"]
        sandboxes = {m: Sandbox(task_root=task, repo=task, mode=m, holdout=holdout) for m in MODES}
        sandbox = sandboxes["bwrap"]
        start = time.monotonic()
        startup(sandboxes, task, args.steps)
        if not args.skip_gpt:
            gpt(sandbox, task, args.budget, args.pairs)
        print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
