"""The tuner's TPE sampler against random search, side by side, on three synthetic tasks.

Each task is a small file of constants (learning rate, weight decay, depth, warmup) and a
known objective, minimised, optimum 1.0, every optimum inside the tuner's default ranges:

- smooth: a correlated bowl in log space;
- noisy: the same bowl measured with Gaussian noise (sd 0.05); the loop keeps what it
  measured, the regret is that of the true value of what it kept;
- crash: the same bowl, but runs with LR * DEPTH > 0.25 crash, and the optimum lies
  close to that cliff (as a too-high learning rate diverges).

The loop is the engine's rule in miniature: propose, apply the edits, measure, keep when
strictly better. Regret = true objective of the kept best - 1.0, after 10, 30 and 60
experiments, median over 10 seeds. Usage: ``python benchmarks/tuner_vs_random.py [--seeds N]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from autoresearch.agents import Context, Experiment
from autoresearch.agents._constants import discover
from autoresearch.agents.tuner import TunerAgent
from autoresearch.edits import apply_edits

SOURCE = """\
# constants of a pretend training run
LR = 0.01  # learning rate
WD = 0.5  # weight decay
DEPTH = 5  # layers
WARMUP = 0.1  # fraction of the budget
"""
CHECKPOINTS = (10, 30, 60)
NOISE = 0.05


def bowl(v: Mapping[str, Any]) -> float:
    """1.0 at LR 0.03, WD 0.2, DEPTH 7, WARMUP 0.05; LR and WD interact."""
    lr, wd = math.log(v["LR"] / 0.03), math.log(v["WD"] / 0.2)
    depth, warmup = v["DEPTH"] - 7, math.log(v["WARMUP"] / 0.05)
    return 1.0 + lr**2 + 0.5 * wd**2 + 0.5 * lr * wd + 0.02 * depth**2 + 0.3 * warmup**2


def crashes(v: Mapping[str, Any]) -> bool:
    return bool(v["LR"] * v["DEPTH"] > 0.25)


Measure = Callable[[Mapping[str, Any], random.Random], float | None]

TASKS: dict[str, Measure] = {
    "smooth": lambda v, rng: bowl(v),
    "noisy": lambda v, rng: bowl(v) + rng.gauss(0.0, NOISE),
    "crash": lambda v, rng: None if crashes(v) else bowl(v),
}


def session(task: str, sampler: str, seed: int, n: int = max(CHECKPOINTS)) -> list[float]:
    """One session of ``n`` experiments; the true regret of the kept best after each."""
    measure, rng = TASKS[task], random.Random(f"{task}:{seed}")
    agent = TunerAgent(sampler=sampler, seed=seed)
    files = {"train.py": SOURCE}
    values = _values(files)
    best_measured, best_true = measure(values, rng), bowl(values)
    assert best_measured is not None
    history = [Experiment(0, "baseline", best_measured, "baseline", commit="c0")]
    parent, regrets = "c0", []
    for i in range(1, n + 1):
        context = Context("", files, {}, tuple(history), "loss", "minimize", parent=parent)
        proposal = agent.propose(context)
        candidate = {**files, **apply_edits(files, proposal.edits)}
        values = _values(candidate)
        metric = measure(values, rng)
        verdict = "crash" if metric is None else "discard"
        if metric is not None and metric < best_measured:
            verdict, best_measured, best_true = "keep", metric, bowl(values)
            files, parent = candidate, f"c{i}"
        history.append(
            Experiment(i, verdict, metric, proposal.description, f"c{i}", meta=proposal.meta)
        )
        regrets.append(best_true - 1.0)
    return regrets


def _values(files: Mapping[str, str]) -> dict[str, Any]:
    return {c.name: c.value for c in discover("train.py", files["train.py"])}


def _job(args: tuple[str, str, int]) -> tuple[str, str, int, list[float]]:
    task, sampler, seed = args
    return task, sampler, seed, session(task, sampler, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    jobs = [(t, s, seed) for t in TASKS for s in ("tpe", "random") for seed in range(args.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_job, jobs))
    runs: dict[tuple[str, str], list[list[float]]] = {}
    for task, sampler, _seed, regrets in results:
        runs.setdefault((task, sampler), []).append(regrets)
    print(f"median regret over {args.seeds} seeds (objective - optimum; lower is better)\n")
    print(f"{'task':<8} {'experiments':>11} {'tpe':>10} {'random':>10} {'tpe/random':>11}")
    ratios = []
    for task in TASKS:
        for n in CHECKPOINTS:
            tpe = statistics.median(r[n - 1] for r in runs[(task, "tpe")])
            rnd = statistics.median(r[n - 1] for r in runs[(task, "random")])
            ratio = tpe / rnd if rnd > 0 else float("nan")
            ratios.append(ratio)
            print(f"{task:<8} {n:>11} {tpe:>10.4f} {rnd:>10.4f} {ratio:>11.2f}")
    finite = [r for r in ratios if math.isfinite(r) and r > 0]
    geo = math.exp(statistics.fmean(math.log(r) for r in finite)) if finite else float("nan")
    print(f"\ngeometric mean of tpe/random: {geo:.2f} ({len(jobs)} sessions, "
          f"{time.perf_counter() - started:.0f} s on {args.workers} workers)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
