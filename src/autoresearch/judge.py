"""The keep/discard rule, the noise estimate, and the verdict enum.

A candidate is kept only when its metric beats the best by strictly more than a margin:
``max(min_delta, noise_factor * noise)``, where ``noise`` is the standard deviation of the
baseline's repeated runs. With ``confirm_runs``, a candidate that looks better is run
again (other seeds) and judged on the mean, so a lucky seed is not kept.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from autoresearch.config import JudgeConfig, MetricConfig
from autoresearch.executors._base import RunResult, RunStatus


class Verdict(enum.StrEnum):
    """The outcome of one experiment, as recorded in the ledger."""

    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    INTERRUPTED = "interrupted"  # the orchestrator died before the experiment was judged

    @property
    def failed(self) -> bool:
        """A verdict that counts towards the consecutive-failure stop rule."""
        return self in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID)


@dataclass(frozen=True)
class Decision:
    """A verdict, or a request for more runs before one can be given."""

    verdict: Verdict | None
    metric: float | None = None  # the value recorded for the experiment (mean of its runs)
    reason: str = ""
    more_runs: int = 0


def noise_of(values: Sequence[float]) -> float | None:
    """Sample standard deviation, or None with fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


class Judge:
    """Decides keep or discard from an experiment's runs."""

    def __init__(
        self, config: JudgeConfig, metric: MetricConfig, *, max_seconds: float | None = None
    ) -> None:
        self.config = config
        self.metric = metric
        self.max_seconds = max_seconds  # budget + allowance; a slower run is over budget

    def margin(self, noise: float | None) -> float:
        return max(self.config.min_delta, self.config.noise_factor * (noise or 0.0))

    def decide(
        self, runs: Sequence[RunResult], best: float | None, noise: float | None = None
    ) -> Decision:
        failed = self._failure(runs)
        if failed is not None:
            return failed
        values = [r.metric for r in runs if r.metric is not None]
        mean = statistics.fmean(values)
        if best is None:
            return Decision(Verdict.KEEP, mean, "no best yet")
        margin = self.margin(noise)
        if not self.metric.better(mean, best, margin):
            return Decision(
                Verdict.DISCARD, mean, self._delta_text(mean, best, margin, "not better")
            )
        wanted = 1 + self.config.confirm_runs
        if len(runs) < wanted:
            return Decision(None, mean, "looks better; confirming", more_runs=wanted - len(runs))
        return Decision(Verdict.KEEP, mean, self._delta_text(mean, best, margin, "better"))

    def _failure(self, runs: Sequence[RunResult]) -> Decision | None:
        for run in runs:
            if run.status is RunStatus.TIMEOUT:
                return Decision(Verdict.TIMEOUT, None, run.reason or "hard timeout")
            if run.status is RunStatus.INVALID:
                return Decision(Verdict.INVALID, None, run.reason)
            if run.status is RunStatus.KILLED:
                return Decision(Verdict.INTERRUPTED, None, run.reason)
            if run.status is not RunStatus.OK or run.metric is None:
                return Decision(Verdict.CRASH, None, run.reason or "crashed")
        for run in runs:
            if self.max_seconds is not None and run.seconds > self.max_seconds:
                return Decision(
                    Verdict.DISCARD, run.metric,
                    f"over budget: ran {run.seconds:.1f} s, limit {self.max_seconds:.1f} s",
                )  # fmt: skip
        return None

    def _delta_text(self, value: float, best: float, margin: float, word: str) -> str:
        text = f"{word}: {value:.6g} vs best {best:.6g} (delta {value - best:+.4g}"
        return text + (f", margin {margin:.4g})" if margin else ")")


__all__ = ["Decision", "Judge", "Verdict", "noise_of"]
