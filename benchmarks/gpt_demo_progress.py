"""Progress of the offline tuner on the GPT template (cpu preset): a gain that holds.

A real session through the CLI: `autoresearch init --template gpt --size cpu`, then
`autoresearch run --agent tuner` for N experiments at the given budget (default: the preset's
60 s and 20 experiments; an hour or more on 2 cores, since the judge runs a promising
candidate several times), then `autoresearch export`, then the baseline and the best
re-measured side by side on fresh seeds (`autoresearch remeasure`: R runs each,
interleaved). Prints each experiment, the recorded ratio and the re-measured one.

Target: a re-measured gain of at least 3% val_bpb (best / baseline <= 0.97).

Usage: python benchmarks/gpt_demo_progress.py [--budget S] [--experiments N] [--runs R] [--dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "autoresearch")


def autoresearch(*args: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    done = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"autoresearch {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument(
        "--experiments", type=int, default=20, help="experiments after the baseline"
    )
    parser.add_argument("--runs", type=int, default=3, help="re-measure runs of each (default: 3)")
    parser.add_argument("--dir", type=Path, help="task folder to create (default: a temporary one)")
    args = parser.parse_args()
    task = (args.dir or Path(tempfile.mkdtemp(prefix="gpt-demo-")) / "gpt").resolve()
    autoresearch("init", "--template", "gpt", "--size", "cpu", str(task), cwd=task.parent)
    toml = task / "autoresearch.toml"
    text = re.sub(
        r"^time_budget = .*$",
        f"time_budget = {args.budget:g}",
        toml.read_text(),
        flags=re.MULTILINE,
    )
    toml.write_text(text)
    subprocess.run(["git", "commit", "-qam", f"budget {args.budget:g}s"], cwd=task, check=False)

    t0 = time.time()
    autoresearch(
        "run",
        "--tag",
        "bench",
        "--agent",
        "tuner",
        "--max-experiments",
        str(args.experiments),
        cwd=task,
    )
    minutes = (time.time() - t0) / 60
    autoresearch("export", "--tag", "bench", "--tsv", str(task / "results.tsv"), cwd=task)
    with (task / "results.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        print(f"{row['status']:9s} {row['val_bpb']:>10s}  {row['description']}")
    # upstream's statuses: the baseline is the first row, a "keep"
    measured = [float(r["val_bpb"]) for r in rows if r["status"] == "keep" and r["val_bpb"]]
    if not rows or rows[0]["status"] != "keep" or not rows[0]["val_bpb"]:
        sys.exit("the baseline did not produce a val_bpb")
    baseline = [float(rows[0]["val_bpb"])]
    best = min(measured)
    kept = sum(r["status"] == "keep" for r in rows)
    print(
        f"budget {args.budget:g}s, {len(rows) - 1} experiments ({kept} kept) in {minutes:.1f} min; task: {task}"
    )
    print(
        f"recorded: baseline val_bpb {baseline[0]:.4f} -> best {best:.4f} "
        f"(best / baseline = {best / baseline[0]:.3f})"
    )
    from autoresearch.config import load_config
    from autoresearch.remeasure import remeasure

    result = remeasure(load_config(task), "bench", runs=args.runs, seed=1)
    print(result.text())
    if result.ratio is None:
        sys.exit("the re-measure runs produced no val_bpb")
    met = "met" if result.ratio <= 0.97 and not result.nothing_kept else "not met"
    if result.nothing_kept:
        met += " (nothing was kept: the same code measured twice)"
    print(f"re-measured best / baseline = {result.ratio:.4f}; target <= 0.97 (a 3% gain): {met}")


if __name__ == "__main__":
    main()
