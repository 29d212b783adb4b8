"""What changing train.py's constants is worth on the GPT cpu preset: the ceiling for a tuner.

Creates the task (`autoresearch init --template gpt --size cpu`, `python prepare.py`), then
trains and scores the unchanged code and each change below side by side, interleaved (for
each seed, every change once), at the preset's budget: `python train.py` then
`python evaluate.py`, as the loop's run and evaluate steps do, without the loop. A change is
one or a few constants rewritten by the tuner's own literal rewriter. Prints, per change,
val_bpb on each seed and its median ratio to the unchanged code on the same seeds (< 1 is
better), then the best ratio found.

It sizes what `gpt_demo_progress.py` can show: a tuner that searches these constants from the
preset's values cannot find a gain the scan does not have. No target of its own.

Usage: python benchmarks/gpt_constant_scan.py [--budget S] [--seeds N] [--dir DIR]
           [--change 'DEPTH=2,MODEL_DIM=192' ...]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch import metrics
from autoresearch.agents._constants import Value, discover, rewrite

CLI = str(Path(sys.executable).parent / "autoresearch")
CHANGES = (  # the searched constants' best single steps, and the shapes the tuner leaves alone
    "HEAD_DIM=64",
    "HEAD_DIM=64,UNEMBEDDING_LR=0.008",
    "MATRIX_LR=0.04",
    "WARMDOWN_RATIO=0.5",
    "DEPTH=3",
    "DEPTH=2",
    "MODEL_DIM=96",
    "MODEL_DIM=192,HEAD_DIM=64",
    "DEPTH=2,MODEL_DIM=192,HEAD_DIM=64",
    "DEPTH=1,MODEL_DIM=192,HEAD_DIM=64",
    "MLP_RATIO=2",
    "TOTAL_BATCH_SIZE=2048,DEVICE_BATCH_SIZE=8",
    "TOTAL_BATCH_SIZE=8192,DEVICE_BATCH_SIZE=32",
    "NS_STEPS=3",
    "MUON_WARMUP_STEPS=30",
    # the tuner's best in gpt_demo_progress (20 experiments), and one more step from it
    "DEPTH=2,HEAD_DIM=64,SCALAR_LR=0.25",
    "DEPTH=2,HEAD_DIM=64,SCALAR_LR=0.25,LOGIT_SOFTCAP=30",
    "DEPTH=2,HEAD_DIM=64,SCALAR_LR=0.25,MLP_RATIO=2",
    "DEPTH=2,HEAD_DIM=64,SCALAR_LR=0.25,MODEL_DIM=192",
    "DEPTH=2,HEAD_DIM=64,SCALAR_LR=0.25,TOTAL_BATCH_SIZE=8192",
)


def parse_change(text: str) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value:
            sys.exit(f"--change {text!r}: expected NAME=VALUE[,NAME=VALUE]")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if not isinstance(parsed, int | float | str):
            sys.exit(f"--change {text!r}: {value.strip()} is not a number, bool or string")
        out[name.strip()] = parsed
    return out


def changed_source(source: str, change: dict[str, Value]) -> str:
    consts = {c.name: c for c in discover("train.py", source)}
    missing = sorted(set(change) - set(consts))
    if missing:
        sys.exit(f"train.py defines no constant {', '.join(missing)}")
    return rewrite(source, {consts[k]: v for k, v in change.items()})


def run_once(task: Path, budget: float, seed: int) -> float | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_TIME_BUDGET=f"{budget:g}", AUTORESEARCH_SEED=str(seed))
    for step in ("train.py", "evaluate.py"):
        done = subprocess.run(
            [sys.executable, step], cwd=task, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            return None
    return metrics.parse_summary(done.stdout).get("val_bpb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, default=2, help="runs of each change (default: 2)")
    parser.add_argument("--change", action="append", help="NAME=VALUE[,NAME=VALUE] (repeatable)")
    parser.add_argument("--dir", type=Path, help="task folder to create (default: a temporary one)")
    args = parser.parse_args()
    changes = {n: parse_change(n) for n in args.change or CHANGES}  # bad input fails before setup
    task = (args.dir or Path(tempfile.mkdtemp(prefix="gpt-scan-")) / "gpt").resolve()
    init = [CLI, "init", "--template", "gpt", "--size", "cpu", str(task)]
    subprocess.run(init, check=True, capture_output=True)
    subprocess.run([sys.executable, "prepare.py"], cwd=task, check=True, capture_output=True)
    source = (task / "train.py").read_text()
    sources = {"unchanged": source, **{n: changed_source(source, c) for n, c in changes.items()}}
    names = list(sources)
    results: dict[str, list[float | None]] = {n: [] for n in names}
    try:
        for seed in range(1, args.seeds + 1):
            for name in names:
                (task / "train.py").write_text(sources[name])
                results[name].append(run_once(task, args.budget, seed))
                print(f"seed {seed}  {name:<44} {results[name][-1]}", flush=True)
    finally:
        (task / "train.py").write_text(source)
    base = results["unchanged"]
    print(f"\nbudget {args.budget:g}s, {args.seeds} seeds; ratio = median over seeds of change / unchanged")
    ratios: dict[str, float] = {}
    for name in names:
        runs = results[name]
        paired = [r / b for r, b in zip(runs, base, strict=True) if r is not None and b]
        shown = " ".join("crash" if r is None else f"{r:.4f}" for r in runs)
        if paired and name != "unchanged":
            ratios[name] = statistics.median(paired)
        ratio = f"{ratios[name]:.4f}" if name in ratios else "-"
        print(f"{name:<44} {shown:<24} {ratio}")
    if ratios:
        best = min(ratios, key=ratios.__getitem__)
        print(f"\nbest change: {best} (ratio {ratios[best]:.4f}; the demo's target is <= 0.97)")


if __name__ == "__main__":
    main()
