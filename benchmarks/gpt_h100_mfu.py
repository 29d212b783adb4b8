"""Device check: the GPT template's h100 preset on one CUDA GPU, tokens/s and MFU.

One prepared script for a device session: writes the h100 preset to a temporary folder,
prepares the offline `kjv` data (the device machine has no network; throughput does not
depend on the text), trains for --budget seconds (default 60) through the task's own `run`
command, then runs the `evaluate` step, and prints tokens/s and MFU against upstream's H100
reference (39.8% MFU with FlashAttention-3, 499.6M tokens in 300 s = 1.665M tokens/s).

MFU comes from train.py's peak-FLOPS table by device name (dense bf16), so the same script
reports a meaningful figure on an A100 or H200 too.

Usage: python benchmarks/gpt_h100_mfu.py [--budget 60] [--size h100] [--keep DIR]
       python benchmarks/gpt_h100_mfu.py --size cpu --budget 5   # smoke test of the script on CPU
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

UPSTREAM_MFU = 39.8  # percent, upstream's H100 reference run
UPSTREAM_TOKENS_PER_SEC = 499.6e6 / 300.1


def step(name: str, command: str, task: Path, env: dict[str, str], timeout: float) -> str:
    """Run one task step, echoing its output as it comes; exit on failure."""
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
    print(f"== {name}: exit {code} in {time.time() - t0:.1f}s", flush=True)
    if code != 0:
        sys.exit(f"{name} failed (exit {code})")
    return "".join(lines)


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

    if args.size != "cpu" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --size cpu for a smoke test)")
        return
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name} | torch {torch.__version__} | CUDA {torch.version.cuda}", flush=True)

    task = (args.keep or Path(tempfile.mkdtemp(prefix="gpt-mfu-")) / "task").resolve()
    templates.write_template("gpt", task, size=args.size, overwrite=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        AUTORESEARCH_TASK_DIR=str(task),
        AUTORESEARCH_OUT=str(task / ".autoresearch" / "out"),
        AUTORESEARCH_TIME_BUDGET=f"{args.budget:g}",
        AUTORESEARCH_SEED="1",
        PYTHONUNBUFFERED="1",
    )
    step("prepare", "python prepare.py --data kjv", task, env, timeout=600)
    run = step("train", "python train.py", task, env, timeout=args.budget + 900)
    summary = metrics.parse_summary(run)
    val = ""
    if not args.no_eval:
        evaluated = step("evaluate", "python prepare.py evaluate", task, env, timeout=900)
        val = f"{metrics.parse_summary(evaluated).get('val_bpb', float('nan')):.4f}"

    tps = summary.get("tokens_per_sec", 0.0)
    mfu = summary.get("mfu_percent")  # absent when the device has no known peak
    print("---")
    print(f"device:            {name}")
    print(
        f"preset:            {args.size} ({summary.get('num_params_M', 0):.1f}M params, depth {summary.get('depth', 0):g})"
    )
    print(f"training_seconds:  {summary.get('training_seconds', 0):.1f} (budget {args.budget:g})")
    print(
        f"tokens_per_sec:    {tps:,.0f} ({tps / UPSTREAM_TOKENS_PER_SEC:.2f}x upstream's H100 run)"
    )
    if mfu is not None:
        print(
            f"mfu_percent:       {mfu:.2f} ({mfu / UPSTREAM_MFU:.2f}x upstream's {UPSTREAM_MFU}%)"
        )
    else:
        print("mfu_percent:       unknown (no peak FLOPS for this device, or fp32)")
    print(f"peak_vram_mb:      {summary.get('peak_vram_mb', 0):,.0f}")
    if val:
        print(f"val_bpb (kjv):     {val}")


if __name__ == "__main__":
    main()
