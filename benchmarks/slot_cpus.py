"""Two slots at once: each on CPUs of its own (the default) vs both on every CPU (--share-cpus).

Every round starts one run on each of the executor's two slots at the same time, through
``LocalExecutor`` and its step runner, as a session with ``--slots 2`` does. A run is a fixed
amount of multi-threaded work (float32 matrix products in PyTorch, its default thread count)
and prints its own compute time. Rounds alternate the two layouts (ABBA), so a drift in the
machine's load hits both alike. Printed per layout: the median seconds of a run and the
spread of the runs (coefficient of variation, and max/min); then the medians' ratio and the
spread's ratio, pinned over shared. What a session judges is a difference between runs on different slots: the
spread is the noise the layout adds to it. Target: the pinned spread below the shared one.

Usage: python benchmarks/slot_cpus.py [--rounds N] [--size N] [--products N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from autoresearch.config import MetricConfig
from autoresearch.executors import Job, LocalExecutor, RunStatus

WORK = """\
import sys, time
import torch
size, products = int(sys.argv[1]), int(sys.argv[2])
a = torch.randn(size, size)
b = torch.randn(size, size)
a @ b
start = time.perf_counter()
for _ in range(products):
    a = torch.tanh(a @ b)
print("---")
print(f"seconds: {time.perf_counter() - start:.4f}")
print("threads:", torch.get_num_threads())
"""


def one_round(executor: LocalExecutor, folder: Path, index: int, size: int, products: int) -> list[float]:
    jobs = [
        Job(experiment_id=index, run_index=slot, commit="-", workdir=folder, slot=slot,
            run=f"{sys.executable} work.py {size} {products}", metric=MetricConfig(name="seconds"),
            log_dir=folder / "logs", out_dir=folder / f"out{slot}", time_budget=300, timeout=600)
        for slot in (0, 1)
    ]  # fmt: skip
    results = [f.result() for f in [executor.submit(job) for job in jobs]]
    for result in results:
        if result.status is not RunStatus.OK or result.metric is None:
            sys.exit(f"a run failed: {result.reason}\n{result.log_tail}")
    return [float(r.metric) for r in results if r.metric is not None]


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.stdev(values) / statistics.mean(values), max(values) / min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds per layout (default: 8)")
    parser.add_argument("--size", type=int, default=384, help="matrix side (default: 384)")
    parser.add_argument("--products", type=int, default=400, help="products per run (default: 400)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pinned, shared = LocalExecutor(slots=2), LocalExecutor(slots=2, share_cpus=True)
    if not pinned.cpus:
        sys.exit(f"{len(cpus)} CPU(s) here: too few to give two slots CPUs of their own")
    print(f"{len(cpus)} CPUs here; pinned: {pinned.placement}")
    seconds: dict[str, list[float]] = {"pinned": [], "shared": []}
    with tempfile.TemporaryDirectory(prefix="slot-cpus-") as tmp:
        folder = Path(tmp)
        (folder / "work.py").write_text(WORK)
        try:
            for i in range(2 * args.rounds):
                order = ("pinned", "shared") if i % 4 in (0, 3) else ("shared", "pinned")
                layout = order[i % 2]
                executor = pinned if layout == "pinned" else shared
                seconds[layout] += one_round(executor, folder, i, args.size, args.products)
        finally:
            pinned.close()
            shared.close()
    print(f"{'layout':8} {'median s':>9} {'cv':>7} {'max/min':>8}   ({2 * args.rounds} runs each)")
    for layout, values in seconds.items():
        cv, ratio = spread(values)
        print(f"{layout:8} {statistics.median(values):9.3f} {cv:7.3f} {ratio:8.3f}")
    cv_pinned, cv_shared = spread(seconds["pinned"])[0], spread(seconds["shared"])[0]
    verdict = "met" if cv_pinned < cv_shared else "NOT met"
    median = statistics.median(seconds["shared"]) / statistics.median(seconds["pinned"])
    print(f"median run, shared/pinned: {median:.2f}x")
    print(f"spread, pinned/shared: {cv_pinned / cv_shared:.2f}x (target < 1: {verdict})")


if __name__ == "__main__":
    main()
