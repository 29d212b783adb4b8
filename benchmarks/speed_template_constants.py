"""The speed template: bench.py at its default constants against the best constants.

The template ships slow defaults for the tuning constants of ``minitext`` (no caches, the
character scanner, one word per counting step); the best settings must make the whole
``python bench.py`` process at least 1.5x faster (target) with a byte-identical output
(the same checksum: a mismatch is a failure, exit 1).

Both copies are made with ``templates.write_template("speed", ...)``; the best copy has its
constants rewritten in place. Runs are interleaved (default, best, best, default, ...) and
each side's median wall time of ``--repeat`` runs is compared. With ``--each``, every
constant is also timed alone at its best value, from the defaults.

Usage: python benchmarks/speed_template_constants.py [--repeat 5] [--each]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import metrics, templates

BEST = {  # file -> constant -> its fast value
    "minitext/tokens.py": {"USE_REGEX": 1, "COUNT_CHUNK_SIZE": 4096},
    "minitext/layout.py": {"WIDTH_CACHE_SIZE": 16384, "ASCII_FAST_PATH": 1},
    "minitext/template.py": {"TEMPLATE_CACHE_SIZE": 16},
}
TARGET = 1.5  # best/default speedup of the whole bench.py process


def set_constants(task: Path, settings: dict[str, dict[str, int]]) -> None:
    """Rewrite ``NAME = value`` lines of the copied template (comments kept)."""
    for rel, values in settings.items():
        path = task / rel
        text = path.read_text(encoding="utf-8")
        for name, value in values.items():
            text, n = re.subn(
                rf"(?m)^({name}\s*=\s*)[^#\n]*?(\s*(?:#.*)?)$", rf"\g<1>{value}\2", text
            )
            if n != 1:
                raise SystemExit(f"{rel}: constant {name} not found exactly once")
        path.write_text(text, encoding="utf-8")


def run_once(task: Path) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-B", "bench.py"], cwd=task, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - start, metrics.parse_summary(done.stdout)


def compare(tasks: dict[str, Path], repeat: int) -> dict[str, tuple[float, float]]:
    """Median seconds and the checksum of every task, interleaved ABBA."""
    times: dict[str, list[float]] = {name: [] for name in tasks}
    sums: dict[str, set[float]] = {name: set() for name in tasks}
    for name in tasks:  # warm-up: the file cache, the interpreter
        run_once(tasks[name])
    names = list(tasks)
    for i in range(repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, summary = run_once(tasks[name])
            times[name].append(seconds)
            sums[name].add(summary["checksum"])
    out = {}
    for name in names:
        if len(sums[name]) != 1:
            raise SystemExit(f"{name}: the checksum changed between runs: {sorted(sums[name])}")
        out[name] = (statistics.median(times[name]), sums[name].pop())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each side")
    parser.add_argument("--each", action="store_true", help="also time each constant alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {"default": Path(tmp, "default"), "best": Path(tmp, "best")}
        wanted: dict[str, dict[str, dict[str, int]]] = {"default": {}, "best": BEST}
        if args.each:
            for rel, values in BEST.items():
                for name, value in values.items():
                    tasks[f"{name}={value}"] = Path(tmp, name)
                    wanted[f"{name}={value}"] = {rel: {name: value}}
        for name, task in tasks.items():
            templates.write_template("speed", task)
            set_constants(task, wanted[name])
        results = compare(tasks, args.repeat)
    base_seconds, base_sum = results["default"]
    print(f"speed template, bench.py wall seconds, median of {args.repeat} (interleaved):")
    for name, (seconds, checksum) in results.items():
        same = "same output" if checksum == base_sum else "OUTPUT DIFFERS"
        print(f"  {name:<26} {seconds:7.3f} s  {base_seconds / seconds:5.2f}x  ({same})")
    best_seconds = results["best"][0]
    speedup = base_seconds / best_seconds
    verdict = "met" if speedup >= TARGET else "MISSED"
    print(f"best/default speedup: {speedup:.2f}x (target >= {TARGET}x: {verdict})")
    wrong = [name for name, (_, checksum) in results.items() if checksum != base_sum]
    if wrong:
        print(f"FAILED: a different output under {', '.join(wrong)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
