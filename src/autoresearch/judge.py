"""The keep/discard rules and the pooled noise estimate. No I/O.

``rule = "sequential"`` (the default) treats every run as evidence, not as a verdict:

- screen: a candidate whose first run is not better than the best is discarded (one run);
- otherwise it runs again, up to ``max_runs``, and is discarded as soon as its running
  mean is no longer better than the best;
- it is kept once its mean beats the best's by ``z * sigma * sqrt(1/n_c + 1/n_b)`` (and by
  more than ``min_delta``), ``z`` from the one-sided ``confidence`` shared by the looks
  that can end in a keep (Bonferroni over half of ``max_runs``), ``sigma`` the standard
  deviation pooled over every experiment of the session with two runs or more;
- a keep is re-run ``max_runs`` times on fresh seeds and recorded at their mean, so the
  best is not the luckiest draw of many (the winner's curse). With no noise seen at all
  (sigma 0: a deterministic task) that costs nothing;
- a candidate whose runs on ``SEED_RUNS`` or more seeds all gave one value, in a task whose
  baseline runs all differed, pins a seed of its own: re-runs cannot tell its gain from that
  seed's luck, so it is discarded (``ignores_seed``).

``rule = "naive"`` is upstream's: strictly better (by ``min_delta``) once, with the older
``noise_factor`` margin and ``confirm_runs`` for comparison.

Time: the baseline is never discarded for time (the hard timeout still applies). A
candidate is over budget when its steps named in ``budget_steps`` (``[task]``; check, run and
evaluate by default) took longer together than the baseline's mean for the same steps plus
the allowance; with no baseline timing yet, when its run step took longer than the budget
plus the allowance. Every step runs the candidate's code (the tests import it, the evaluation
runs its model), so work done in any of them is compute past the budget. A step the baseline's
runs did not record (a ledger from before it was recorded) is left out of both sides. The
fresh runs of a keep are held to the same limit: a candidate's code knows which run it is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autoresearch.config import JudgeConfig, MetricConfig
from autoresearch.records import Run, RunStatus, Verdict


@dataclass(frozen=True)
class Noise:
    """The pooled within-experiment standard deviation of the metric, and what it rests on."""

    sigma: float | None = None  # None: no experiment has two successful runs yet
    runs: int = 0  # runs of the experiments that contributed
    groups: int = 0  # sets of runs of one code that contributed (a keep's selection runs and its
    # re-score are two)

    def detectable(self, z: float, n_candidate: int, n_best: int) -> float | None:
        """The smallest difference of means this noise lets a test at ``z`` detect."""
        if self.sigma is None:
            return None
        return z * self.sigma * math.sqrt(1 / max(1, n_candidate) + 1 / max(1, n_best))

    def text(self) -> str:
        if self.sigma is None:
            return "noise unknown (no experiment has two runs yet)"
        sets = "set" if self.groups == 1 else "sets"
        return f"noise sigma {self.sigma:.4g} ({self.runs} runs, in {self.groups} {sets} of runs of one code)"


def pooled_noise(groups: Iterable[Sequence[float]]) -> Noise:
    """Pool the variance of every group with two values or more (weights: degrees of freedom)."""
    squares, dof, runs, count = 0.0, 0, 0, 0
    for values in groups:
        if len(values) < 2:
            continue
        squares += statistics.variance(values) * (len(values) - 1)
        dof += len(values) - 1
        runs += len(values)
        count += 1
    if dof == 0:
        return Noise()
    return Noise(math.sqrt(squares / dof), runs, count)


@dataclass(frozen=True)
class Standing:
    """The current best as the judge sees it: its recorded value and how many runs it rests on."""

    metric: float
    runs: int = 1
    seconds: float | None = None  # the baseline's mean run-step wall time, for the budget rule
    check_seconds: float | None = None  # its mean check-step wall time (None: not recorded)
    evaluate_seconds: float | None = None  # its mean evaluate-step wall time (None: not recorded)

    def step(self, name: str) -> float | None:
        """The baseline's mean wall time of the step ``name`` (check, run or evaluate)."""
        return {"check": self.check_seconds, "run": self.seconds, "evaluate": self.evaluate_seconds}[name]


@dataclass(frozen=True)
class Decision:
    """A verdict, or a request for more runs before one can be given."""

    verdict: Verdict | None
    metric: float | None = None  # the mean of the runs judged
    reason: str = ""
    more_runs: int = 0  # selection runs still wanted before a verdict
    rescore: int = 0  # with a keep: fresh runs to make; the recorded value is their mean


class Judge:
    """Decides keep or discard from an experiment's runs."""

    def __init__(
        self, config: JudgeConfig, metric: MetricConfig, *, budget: float, allowance: float,
        budget_steps: Sequence[str] = ("run",), allowance_share: float | None = None,
    ) -> None:
        self.config, self.metric = config, metric
        self.budget, self.allowance, self.budget_steps = budget, allowance, tuple(budget_steps)
        self.allowance_share = allowance_share  # of the baseline's time; ``allowance`` the least
        # A test after every run: the error is shared among the looks (Bonferroni) that can
        # end in a keep, taken as half of max_runs (a candidate that stops looking better is
        # discarded early), calibrated with benchmarks/verdict_trust.py.
        looks = math.ceil(config.max_runs / 2) if config.rule == "sequential" else 1
        self.z = statistics.NormalDist().inv_cdf(1 - (1 - config.confidence) / looks)

    # --- the baseline ------------------------------------------------------------------

    def decide_baseline(self, runs: Sequence[Run]) -> Decision:
        """The unchanged code: never discarded for time; runs ``baseline_runs`` times."""
        failed = failure(runs)
        if failed is not None:
            return failed
        wanted = max(1, self.config.baseline_runs)
        values = [r.metric for r in runs if r.metric is not None]
        if len(values) < wanted:
            return Decision(None, reason="baseline", more_runs=wanted - len(values))
        noise = pooled_noise([values])
        return Decision(Verdict.BASELINE, statistics.fmean(values), noise.text())

    # --- candidates ----------------------------------------------------------------------

    def failed(self, runs: Sequence[Run], best: Standing) -> Decision | None:
        """The verdict of runs that failed or went over budget, or None. Over budget comes
        before a crash or a timeout (a run stopped at the limit, one that crashed past it),
        after invalid and interrupted."""
        failed = failure(runs)
        if failed is None or failed.verdict in (Verdict.CRASH, Verdict.TIMEOUT):
            failed = self.over_budget(runs, best) or failed
        return failed

    def decide(self, runs: Sequence[Run], best: Standing, noise: Noise) -> Decision:
        failed = self.failed(runs, best)
        if failed is not None:
            return failed
        values = [r.metric for r in runs if r.metric is not None]
        if self.config.rule == "naive":
            return self._naive(values, best, noise)
        return self._sequential(values, best, noise)

    def most_runs(self) -> int:
        """The most runs one candidate can take: its selection runs, then a keep's re-score."""
        if self.config.rule == "naive":
            return 1 + self.config.confirm_runs
        return 2 * max(2, self.config.max_runs)  # with the noise unknown, two selection runs

    def rescore_runs(self, selected: int, noise: Noise) -> int:
        """Fresh runs a new best gets before its value is recorded (none without noise)."""
        if self.config.rule == "naive" or noise.sigma == 0.0:
            return 0
        return self.config.max_runs

    def margin(self, noise: Noise, n_candidate: int, n_best: int) -> float:
        """How much better than the best a candidate's mean must be to be kept, by the rule."""
        if self.config.rule == "naive":
            return max(self.config.min_delta, self.config.noise_factor * (noise.sigma or 0.0))
        return max(self.config.min_delta, noise.detectable(self.z, n_candidate, n_best) or 0.0)

    def _sequential(self, values: list[float], best: Standing, noise: Noise) -> Decision:
        n, mean = len(values), statistics.fmean(values)
        if not self.metric.better(mean, best.metric, self.config.min_delta):
            word = "screened out" if n == 1 else f"not better after {n} runs"
            return Decision(Verdict.DISCARD, mean, self._delta(word, mean, best.metric))
        if noise.sigma is None:
            if n < 2:
                return Decision(None, mean, "looks better; noise unknown, running again", 1)
            return Decision(Verdict.KEEP, mean, self._delta("better", mean, best.metric),
                            rescore=self.rescore_runs(n, noise))  # fmt: skip
        margin = self.margin(noise, n, best.runs)
        if self.metric.better(mean, best.metric, margin):
            reason = self._delta(f"better at {self.config.confidence:.0%}", mean, best.metric, margin)
            return Decision(Verdict.KEEP, mean, reason, rescore=self.rescore_runs(n, noise))
        if n >= self.config.max_runs:
            word = f"not significant after {n} runs"
            return Decision(Verdict.DISCARD, mean, self._delta(word, mean, best.metric, margin))
        return Decision(None, mean, "looks better; running again", 1)

    def _naive(self, values: list[float], best: Standing, noise: Noise) -> Decision:
        mean = statistics.fmean(values)
        margin = self.margin(noise, len(values), best.runs)
        if not self.metric.better(mean, best.metric, margin):
            return Decision(Verdict.DISCARD, mean, self._delta("not better", mean, best.metric, margin))
        wanted = 1 + self.config.confirm_runs
        if len(values) < wanted:
            return Decision(None, mean, "looks better; confirming", wanted - len(values))
        return Decision(Verdict.KEEP, mean, self._delta("better", mean, best.metric, margin))

    def budget_limit(self, best: Standing) -> tuple[tuple[str, ...], float, str]:
        """The steps the budget rule times, the seconds they may take together, and what the
        limit rests on: the baseline's time of those steps plus the allowance."""
        steps: tuple[str, ...]
        if best.seconds is None:  # no baseline timing yet: the run step against the budget
            steps, base, basis = ("run",), self.budget, "budget"
        else:
            steps = tuple(name for name in self.budget_steps if best.step(name))  # the task's, recorded
            base = sum(best.step(name) or 0.0 for name in steps)
            basis = f"baseline's {base:.1f} s"
        extra = self.allowance if self.allowance_share is None else max(self.allowance, self.allowance_share * base)
        return steps, base + extra, f"{basis} + {round(extra, 1):g} s"

    def over_budget(self, runs: Sequence[Run], best: Standing) -> Decision | None:
        """A discard when a run's timed steps took longer than the baseline's plus the allowance
        (a run the executor stopped at that limit included: before its failure, if it had one)."""
        steps, limit, basis = self.budget_limit(best)
        what = "ran" if steps == ("run",) else f"its {' and '.join(steps)} steps took"
        for run in runs:
            took = sum(run.step_seconds(name) or 0.0 for name in steps)
            if took > limit:
                stopped = f"; {run.reason}" if run.status is RunStatus.TIMEOUT else ""
                return Decision(Verdict.DISCARD, run.metric, f"over budget: {what} {took:.1f} s, "
                                f"limit {limit:.1f} s ({basis}){stopped}")  # fmt: skip
        return None

    def _delta(self, word: str, value: float, best: float, margin: float = 0.0) -> str:
        text = f"{word}: {value:.6g} vs best {best:.6g} (delta {value - best:+.4g}"
        return text + (f", margin {margin:.4g})" if margin else ")")


SEED_RUNS = 3  # runs on as many seeds, all of one value: enough to say the code ignores its seed


def ignores_seed(values: Sequence[float], baseline: Sequence[float], metric: MetricConfig) -> str:
    """Why a candidate is not judged on its values: its runs on different seeds all gave one
    value while the baseline's runs all differed, so it ignores ``AUTORESEARCH_SEED`` (it pins
    a seed of its own). A gain on one chosen seed is luck that no re-run can test. '' if not."""
    if len(values) < SEED_RUNS or len(set(values)) > 1:
        return ""
    if len(baseline) < 2 or len(set(baseline)) < len(baseline):  # a task with ties: no sign
        return ""
    return (
        f"its {len(values)} runs on different seeds all gave {metric.name} {values[0]:.6g}, while "
        f"the baseline's runs differ: the code ignores AUTORESEARCH_SEED, and a gain on a seed of "
        f"its own is luck no re-run can test; use the seed the run is given"
    )


def failure(runs: Sequence[Run]) -> Decision | None:
    """The verdict of the first failed run (timeout, invalid, interrupted, crash), or None."""
    for run in runs:
        if run.status is RunStatus.TIMEOUT:
            return Decision(Verdict.TIMEOUT, None, run.reason or "hard timeout")
        if run.status is RunStatus.INVALID:
            return Decision(Verdict.INVALID, None, run.reason)
        if run.status is RunStatus.KILLED:
            return Decision(Verdict.INTERRUPTED, None, run.reason)
        if run.status is not RunStatus.OK or run.metric is None:
            return Decision(Verdict.CRASH, None, run.reason or "crashed")
    return None


__all__ = ["Decision", "Judge", "Noise", "Standing", "failure", "ignores_seed", "pooled_noise"]
