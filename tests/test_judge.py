"""The keep/discard rule: strict improvement, min_delta, noise margin, confirmation runs, failures."""

from __future__ import annotations

import pytest

from autoresearch.config import JudgeConfig, MetricConfig
from autoresearch.executors import RunResult, RunStatus
from autoresearch.judge import Judge, Verdict, noise_of


def ok(value: float, seconds: float = 1.0) -> RunResult:
    return RunResult(1, 0, 0, RunStatus.OK, metric=value, metrics={"m": value}, seconds=seconds)


MIN = MetricConfig(name="m", direction="minimize")
MAX = MetricConfig(name="m", direction="maximize")


def test_strictly_better_is_kept_ties_and_worse_are_discarded() -> None:
    judge = Judge(JudgeConfig(), MIN)
    assert judge.decide([ok(0.9)], 1.0).verdict is Verdict.KEEP
    assert judge.decide([ok(1.0)], 1.0).verdict is Verdict.DISCARD
    assert judge.decide([ok(1.1)], 1.0).verdict is Verdict.DISCARD
    assert Judge(JudgeConfig(), MAX).decide([ok(1.1)], 1.0).verdict is Verdict.KEEP


def test_min_delta_and_noise_margin() -> None:
    assert Judge(JudgeConfig(min_delta=0.2), MIN).decide([ok(0.85)], 1.0).verdict is Verdict.DISCARD
    noisy = Judge(JudgeConfig(noise_factor=2.0), MIN)
    assert noisy.decide([ok(0.9)], 1.0, noise=0.06).verdict is Verdict.DISCARD  # within 2 sigma
    assert noisy.decide([ok(0.85)], 1.0, noise=0.06).verdict is Verdict.KEEP


def test_confirmation_runs_judge_on_the_mean() -> None:
    judge = Judge(JudgeConfig(confirm_runs=2), MIN)
    first = judge.decide([ok(0.5)], 1.0)
    assert first.verdict is None and first.more_runs == 2
    assert (
        judge.decide([ok(0.5), ok(1.6)], 1.0).verdict is Verdict.DISCARD
    )  # the lucky seed is exposed
    kept = judge.decide([ok(0.5), ok(0.9), ok(0.7)], 1.0)
    assert kept.verdict is Verdict.KEEP and kept.metric == pytest.approx(0.7)


def test_failures_and_over_budget() -> None:
    judge = Judge(JudgeConfig(), MIN, max_seconds=10)
    crash = RunResult(1, 0, 0, RunStatus.CRASH, reason="boom")
    assert judge.decide([crash], 1.0).verdict is Verdict.CRASH
    assert judge.decide([RunResult(1, 0, 0, RunStatus.TIMEOUT)], 1.0).verdict is Verdict.TIMEOUT
    assert (
        judge.decide([RunResult(1, 0, 0, RunStatus.INVALID, reason="x")], 1.0).verdict
        is Verdict.INVALID
    )
    slow = judge.decide([ok(0.1, seconds=11)], 1.0)
    assert slow.verdict is Verdict.DISCARD and slow.reason.startswith("over budget")


def test_noise_estimate() -> None:
    assert noise_of([1.0]) is None
    assert abs((noise_of([1.0, 1.2, 0.8]) or 0) - 0.2) < 1e-12
