"""Device check: the GPT template's h100 preset on one CUDA GPU: tokens/s, MFU, and where time goes.

One prepared script for a device session (<= 5 minutes at the default budget): writes the h100
preset to a temporary folder, prepares the offline `kjv` data (the device machine has no network;
throughput does not depend on the text), trains for --budget seconds (default 60) through the
task's own `run` command, then runs its `evaluate` step, and prints, from the steps' summaries:
tokens/s (against upstream's H100 reference, 499.6M tokens in 300 s), MFU against the device's
dense bf16 peak (prepare.py's PEAK_FLOPS table: H100, H200, A100, L4, RTX 4090, MI300X and more;
a device it does not know says so), the loader's wait per step, start-up (compilation
included), peak memory, and the wall seconds of each step.

Without a CUDA device it runs the cpu preset for a few seconds instead: a smoke test of this
script (so that `make bench` passes anywhere), not a GPU measurement, and it says so.

Usage: python benchmarks/gpt_h100_mfu.py [--budget 60] [--size h100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import metrics, templates
from autoresearch.config import load_config

UPSTREAM_MFU = 39.8  # percent, upstream's H100 reference run
UPSTREAM_TOKENS_PER_SEC = 499.6e6 / 300.1


def step(
    name: str, command: str, task: Path, env: dict[str, str], timeout: float
) -> tuple[str, float]:
    """Run one task step, echoing its output as it comes; exit on failure. (output, seconds)"""
    print(f"== {name}: {command}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(
        command,
        shell=True,
        cwd=task,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    code = proc.wait(timeout=timeout)
    seconds = time.time() - t0
    print(f"== {name}: exit {code} in {seconds:.1f}s", flush=True)
    if code != 0:
        sys.exit(f"{name} failed (exit {code})")
    return "".join(lines), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds")
    parser.add_argument("--size", default="h100", help="template preset (cpu: smoke test)")
    parser.add_argument(
        "--keep", type=Path, help="write the task here instead of a temporary folder"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluate step")
    args = parser.parse_args()

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and args.size != "cpu":
        print("no CUDA device: running the cpu preset for 3 s instead, a smoke test of this "
              "script; NOT a GPU measurement")  # fmt: skip
        args.size, args.budget = "cpu", 3.0
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"device: {name} | torch {torch.__version__} | CUDA {torch.version.cuda}", flush=True)

    task = (args.keep or Path(tempfile.mkdtemp(prefix="gpt-mfu-")) / "task").resolve()
    templates.write_template("gpt", task, size=args.size, overwrite=True)
    config = load_config(task)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        AUTORESEARCH_TASK_DIR=str(task),
        AUTORESEARCH_OUT=str(task / ".autoresearch" / "out"),
        AUTORESEARCH_TIME_BUDGET=f"{args.budget:g}",
        AUTORESEARCH_SEED="1",
        PYTHONUNBUFFERED="1",
    )
    step("prepare", f"{config.setup} --data kjv", task, env, timeout=600)
    run, run_seconds = step("train", config.run, task, env, timeout=args.budget + 900)
    summary = metrics.parse_summary(run)
    val, eval_wall, eval_inside = "", 0.0, 0.0
    if not args.no_eval:
        evaluated, eval_wall = step("evaluate", config.evaluate, task, env, timeout=900)
        found = metrics.parse_summary(evaluated)
        val = f"{found.get('val_bpb', float('nan')):.4f}"
        eval_inside = found.get("eval_seconds", 0.0)

    peak = peak_bf16(task, name) if on_gpu else None
    tps = summary.get("tokens_per_sec", 0.0)
    flops = summary.get("flops_per_token", 0.0)
    steps = max(summary.get("num_steps", 0.0), 1.0)
    print("---")
    print(
        f"device:            {name}{'' if on_gpu else ' (smoke test of the script, not a GPU run)'}"
    )
    print(f"preset:            {args.size} ({summary.get('num_params_M', 0):.1f}M params, depth {summary.get('depth', 0):g})")  # fmt: skip
    print(f"training_seconds:  {summary.get('training_seconds', 0):.1f} (budget {args.budget:g}, {steps:g} steps)")  # fmt: skip
    print(f"tokens_per_sec:    {tps:,.0f} ({tps / UPSTREAM_TOKENS_PER_SEC:.2f}x upstream's H100 run)")  # fmt: skip
    if peak:
        mfu = 100 * flops * tps / peak
        print(f"mfu_percent:       {mfu:.2f} against {peak / 1e12:g} TFLOP/s bf16 ({mfu / UPSTREAM_MFU:.2f}x upstream's {UPSTREAM_MFU}%)")  # fmt: skip
    elif on_gpu:
        print(f"mfu_percent:       unknown: {name!r} is not in prepare.py's PEAK_FLOPS table")
    else:
        print("mfu_percent:       unknown (CPU: no bf16 peak)")
    wait = summary.get("loader_wait_percent", float("nan"))
    step_ms = 1000 * summary.get("training_seconds", 0) / steps
    print(f"loader_wait:       {wait:.2f}% of the timed steps ({wait / 100 * step_ms:.2f} ms of a {step_ms:.0f} ms step)")  # fmt: skip
    print(f"startup_seconds:   {summary.get('startup_seconds', 0):.1f} (train.py's start to its first timed step: model, compilation, first batches)")  # fmt: skip
    print(f"train_wall:        {run_seconds:.1f} s (the whole run step: import, start-up, training, checkpoint)")  # fmt: skip
    print(f"peak_vram_mb:      {summary.get('peak_vram_mb', 0):,.0f}")
    if val:
        print(f"evaluate_seconds:  {eval_wall:.1f} wall, {eval_inside:.1f} inside (val_bpb on kjv: {val})")  # fmt: skip


def peak_bf16(task: Path, name: str) -> float | None:
    """The device's dense bf16 peak from the task's own table (prepare.PEAK_FLOPS)."""
    import ast

    tree = ast.parse((task / "prepare.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PEAK_FLOPS":
            table: dict[str, float] = ast.literal_eval(node.value)
            return next((flops for key, flops in table.items() if key in name), None)
    return None


if __name__ == "__main__":
    main()
