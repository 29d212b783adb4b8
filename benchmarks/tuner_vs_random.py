"""The tuner's local start + TPE, plain TPE and random search, side by side, on three toy tasks.

Each task is a small file of constants (learning rate, weight decay, depth, warmup) and a
known objective, minimised, optimum 1.0, every optimum inside the tuner's default ranges:

- smooth: a correlated bowl in log space;
- noisy: the same bowl measured with Gaussian noise (sd 0.05) on every run; the regret is
  that of the true value of what the judge kept;
- crash: the same bowl, but runs with LR * DEPTH > 0.25 crash, and the optimum lies
  close to that cliff (as a too-high learning rate diverges).

Methods: ``local+tpe`` is the tuner's default (local moves from the code's values for the
first ``local_trials`` experiments, then TPE over everything measured); ``tpe`` and
``random`` are the plain samplers (``local_trials = 0``). The loop is the engine's in
miniature, judged by ``autoresearch.judge`` with the default ``[judge]`` settings
(``--rule sequential``): the baseline runs ``baseline_runs`` times; a candidate is screened
on one run and runs again while it looks better; a keep is re-scored on fresh runs and
recorded at their mean (a discard when that mean is no better: the selecting runs were
luck). ``--rule naive`` keeps whatever measured strictly better once, upstream's rule. The
agent sees what the engine's agents see: the recorded values and verdicts, the pooled noise
(``Context.noise``) and the smallest difference the judge can confirm. On the deterministic
tasks the noise is 0 and both rules keep what is strictly better, after one run.
Regret = true objective of the kept best - 1.0, after 5, 10, 30 and 60 experiments (an
experiment is one proposal, however many runs the judge asked of it), median over 10 seeds;
the target is ``local+tpe`` at <= 0.5x plain TPE's regret after 10 experiments.
Usage: ``python benchmarks/tuner_vs_random.py [--seeds N] [--workers N] [--rule R]``.
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
from dataclasses import replace
from typing import Any

from autoresearch.agents import Context, Experiment
from autoresearch.agents._constants import discover
from autoresearch.agents.tuner import TunerAgent
from autoresearch.config import JUDGE_RULES, JudgeConfig, MetricConfig
from autoresearch.edits import apply_edits
from autoresearch.judge import Decision, Judge, Standing, pooled_noise
from autoresearch.records import Run, RunStatus, Verdict

SOURCE = """\
# constants of a pretend training run
LR = 0.01  # learning rate
WD = 0.5  # weight decay
DEPTH = 5  # layers
WARMUP = 0.1  # fraction of the budget
"""
CHECKPOINTS = (5, 10, 30, 60)
NOISE = 0.05
METHODS: dict[str, dict[str, Any]] = {
    "local+tpe": {"sampler": "tpe"},
    "tpe": {"sampler": "tpe", "local_trials": 0},
    "random": {"sampler": "random", "local_trials": 0},
}
TARGET = 0.5  # local+tpe / tpe after 10 experiments


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


def session(
    task: str, method: str, seed: int, rule: str = "sequential", n: int = max(CHECKPOINTS)
) -> list[float]:
    """One session of ``n`` experiments; the true regret of the kept best after each."""
    measure, rng = TASKS[task], random.Random(f"{task}:{seed}")
    agent = TunerAgent(seed=seed, **METHODS[method])
    judge = Judge(JudgeConfig(rule=rule), MetricConfig("loss"), budget=1.0, allowance=math.inf)
    files = {"train.py": SOURCE}
    values = _values(files)
    base, first = run_until_verdict(judge.decide_baseline, values, measure, rng)
    assert base.verdict is Verdict.BASELINE and base.metric is not None
    groups, best, best_true = [first], Standing(base.metric, len(first)), bowl(values)
    history = [Experiment(0, Verdict.BASELINE, best.metric, "baseline", commit="c0")]
    parent, regrets = "c0", []
    for i in range(1, n + 1):
        noise = pooled_noise(groups)
        context = Context(
            "", files, {}, tuple(history), "loss", "minimize", noise=noise.sigma,
            noise_runs=noise.runs, detectable=noise.detectable(judge.z, 1, best.runs),
            parent=parent,
        )  # fmt: skip
        proposal = agent.propose(context)
        candidate = {**files, **apply_edits(files, proposal.edits)}
        values = _values(candidate)

        def decide(runs: list[Run]) -> Decision:  # the noise counts the runs so far, as the engine's
            so_far = [r.metric for r in runs if r.metric is not None]
            return judge.decide(runs, best, pooled_noise([*groups, so_far]))  # noqa: B023

        decision, selecting = run_until_verdict(decide, values, measure, rng)
        groups.append(selecting)
        if decision.verdict is Verdict.KEEP and decision.rescore:  # the engine's re-score
            fresh = [m for m in (measure(values, rng) for _ in range(decision.rescore)) if m is not None]
            if fresh:  # recorded at their mean; no better than the best: the selection was luck
                groups.append(fresh)
                value = statistics.fmean(fresh)
                verdict = Verdict.KEEP if value < best.metric else Verdict.DISCARD
                decision = replace(decision, verdict=verdict, metric=value)
        assert decision.verdict is not None
        if decision.verdict is Verdict.KEEP:
            assert decision.metric is not None
            best = Standing(decision.metric, len(groups[-1]))
            best_true, files, parent = bowl(values), candidate, f"c{i}"
        history.append(Experiment(i, decision.verdict, decision.metric,
                                  proposal.description, f"c{i}", meta=proposal.meta))  # fmt: skip
        regrets.append(best_true - 1.0)
    return regrets


def run_until_verdict(
    decide: Callable[[list[Run]], Decision],
    values: Mapping[str, Any],
    measure: Measure,
    rng: random.Random,
) -> tuple[Decision, list[float]]:
    """Runs one code until ``decide`` gives a verdict; that and the successful runs' values."""
    runs: list[Run] = []
    while True:
        metric = measure(values, rng)
        status = RunStatus.CRASH if metric is None else RunStatus.OK
        runs.append(Run(0, len(runs), len(runs), status, metric))
        decision = decide(runs)
        if decision.verdict is not None:
            return decision, [r.metric for r in runs if r.metric is not None]


def _values(files: Mapping[str, str]) -> dict[str, Any]:
    return {c.name: c.value for c in discover("train.py", files["train.py"])}


def _job(args: tuple[str, str, int, str]) -> tuple[str, str, int, list[float]]:
    task, method, seed, rule = args
    return task, method, seed, session(task, method, seed, rule)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rule", choices=JUDGE_RULES, default=JudgeConfig.rule,
                        help="the judge's keep rule (default: the engine's, sequential)")  # fmt: skip
    args = parser.parse_args(argv)
    jobs = [(t, m, s, args.rule) for t in TASKS for m in METHODS for s in range(args.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_job, jobs))
    runs: dict[tuple[str, str], list[list[float]]] = {}
    for task, method, _seed, regrets in results:
        runs.setdefault((task, method), []).append(regrets)
    print(f"median regret over {args.seeds} seeds (objective - optimum; lower is better), "
          f"judge rule {args.rule}\n")
    names = list(METHODS)
    print(f"{'task':<8} {'experiments':>11} " + " ".join(f"{m:>10}" for m in names)
          + f" {'local/tpe':>10} {'tpe/random':>11}")  # fmt: skip
    at_ten = []
    for task in TASKS:
        for n in CHECKPOINTS:
            med = {m: statistics.median(r[n - 1] for r in runs[(task, m)]) for m in names}
            local, tpe = _ratio(med["local+tpe"], med["tpe"]), _ratio(med["tpe"], med["random"])
            if n == 10:
                at_ten.append(local)
            print(f"{task:<8} {n:>11} " + " ".join(f"{med[m]:>10.4f}" for m in names)
                  + f" {local:>10.2f} {tpe:>11.2f}")  # fmt: skip
    worst = max(at_ten)
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"\nlocal+tpe / tpe after 10 experiments: {', '.join(f'{r:.2f}' for r in at_ten)} "
          f"(target <= {TARGET}: {verdict}); {len(jobs)} sessions, "
          f"{time.perf_counter() - started:.0f} s on {args.workers} workers")  # fmt: skip
    return 0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == b else math.inf)


if __name__ == "__main__":
    sys.exit(main())
