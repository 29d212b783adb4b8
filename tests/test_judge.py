"""The keep/discard rules on scripted run values: screening, early discard, pooled noise, re-scoring, naive, time."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autoresearch.config import JudgeConfig, MetricConfig
from autoresearch.judge import SEED_RUNS, Judge, Noise, Standing, ignores_seed, pooled_noise
from autoresearch.records import Run, RunStatus, Verdict

MIN = MetricConfig(name="m", direction="minimize")
MAX = MetricConfig(name="m", direction="maximize")


def ok(value: float, seconds: float = 1.0) -> Run:
    return Run(1, 0, 0, RunStatus.OK, metric=value, metrics={"m": value}, seconds=seconds)


def judge(metric: MetricConfig = MIN, **config: object) -> Judge:
    return Judge(JudgeConfig(**config), metric, budget=10.0, allowance=30.0)  # type: ignore[arg-type]


SIGMA = Noise(sigma=1.0, runs=10, groups=2)
BEST = Standing(100.0, runs=5)


def test_pooled_noise_weights_each_experiment_by_its_degrees_of_freedom() -> None:
    noise = pooled_noise([[1.0, 3.0], [10.0, 10.0, 13.0, 13.0], [5.0]])  # variances 2 and 3
    assert noise.sigma == pytest.approx(math.sqrt((2 * 1 + 3 * 3) / 4))
    assert (noise.runs, noise.groups) == (6, 2)  # the single run does not count
    assert pooled_noise([[1.0], [2.0]]).sigma is None


def test_first_run_not_better_is_screened_out_after_one_run() -> None:
    decision = judge().decide([ok(100.5)], BEST, SIGMA)
    assert decision.verdict is Verdict.DISCARD and "screened out" in decision.reason


def test_lucky_first_run_is_not_kept_and_runs_again() -> None:
    # 1.5 sigma better once: below z * sigma * sqrt(1/1 + 1/5) = 2.33 (z = 2.13: 5% over 3 looks)
    decision = judge().decide([ok(98.5)], BEST, SIGMA)
    assert decision.verdict is None and decision.more_runs == 1


def test_early_discard_when_the_running_mean_is_no_longer_better() -> None:
    decision = judge().decide([ok(98.5), ok(102.0)], BEST, SIGMA)
    assert decision.verdict is Verdict.DISCARD and "not better after 2 runs" in decision.reason


def test_keep_when_the_mean_clears_the_margin_of_a_difference_of_means() -> None:
    runs = [ok(98.2), ok(98.3), ok(98.1)]  # mean 98.2; margin 2.13 * sqrt(1/3 + 1/5) = 1.55
    decision = judge().decide(runs, BEST, SIGMA)
    assert decision.verdict is Verdict.KEEP and decision.metric == pytest.approx(98.2)
    assert decision.rescore == 5  # the new best gets max_runs fresh runs
    assert judge().z == pytest.approx(2.128, abs=1e-3)


def test_not_significant_after_max_runs_is_discarded() -> None:
    runs = [ok(99.5)] * 5  # better, but 0.5 < 2.13 * sqrt(2/5) = 1.35
    decision = judge().decide(runs, BEST, SIGMA)
    assert decision.verdict is Verdict.DISCARD and "not significant after 5 runs" in decision.reason


def test_more_runs_of_the_best_shrink_the_margin() -> None:
    runs = [ok(98.5)] * 3
    assert judge().decide(runs, Standing(100.0, runs=1), SIGMA).verdict is None  # 1.5 < 2.46
    assert judge().decide(runs, Standing(100.0, runs=20), SIGMA).verdict is Verdict.KEEP  # > 1.32


def test_unknown_noise_needs_a_second_run_and_no_noise_needs_no_rescore() -> None:
    first = judge().decide([ok(99.0)], BEST, Noise())
    assert first.verdict is None and "noise unknown" in first.reason
    exact = judge().decide([ok(99.0)], BEST, Noise(sigma=0.0, runs=5, groups=1))
    assert exact.verdict is Verdict.KEEP and exact.rescore == 0


def test_min_delta_applies_on_top_of_the_sequential_rule() -> None:
    runs = [ok(99.0)] * 3
    exact = Noise(sigma=0.0, runs=5, groups=1)
    assert judge(min_delta=2.0).decide(runs, BEST, exact).verdict is Verdict.DISCARD
    assert judge(min_delta=0.5).decide(runs, BEST, exact).verdict is Verdict.KEEP


def test_maximize_direction() -> None:
    assert judge(MAX).decide([ok(101.0)], BEST, Noise(0.0, 2, 1)).verdict is Verdict.KEEP
    assert judge(MAX).decide([ok(99.0)], BEST, Noise(0.0, 2, 1)).verdict is Verdict.DISCARD


def test_naive_rule_is_upstreams_strictly_better_once() -> None:
    naive = judge(rule="naive")
    assert naive.decide([ok(99.99)], BEST, SIGMA).verdict is Verdict.KEEP
    assert naive.decide([ok(100.0)], BEST, SIGMA).verdict is Verdict.DISCARD
    assert naive.rescore_runs(1, SIGMA) == 0
    confirming = judge(rule="naive", confirm_runs=1, noise_factor=0.5)
    assert confirming.decide([ok(99.0)], BEST, SIGMA).more_runs == 1
    assert confirming.decide([ok(99.8)], BEST, SIGMA).verdict is Verdict.DISCARD  # margin 0.5


def test_baseline_runs_its_count_and_is_never_discarded_for_time() -> None:
    j = judge(baseline_runs=3)
    slow = [ok(100.0, seconds=500.0), ok(101.0, seconds=500.0)]
    assert j.decide_baseline(slow).more_runs == 1
    done = j.decide_baseline([*slow, ok(102.0, seconds=500.0)])
    assert done.verdict is Verdict.BASELINE and done.metric == pytest.approx(101.0)


def test_over_budget_is_measured_against_the_baselines_wall_time() -> None:
    base = Standing(100.0, runs=5, seconds=50.0)  # a slow machine: the baseline took 50 s
    j = judge()
    assert j.decide([ok(90.0, seconds=70.0)], base, Noise(0.0, 2, 1)).verdict is Verdict.KEEP
    slow = j.decide([ok(90.0, seconds=100.0)], base, Noise(0.0, 2, 1))
    assert slow.verdict is Verdict.DISCARD and "over budget" in slow.reason
    absolute = j.decide([ok(90.0, seconds=45.0)], Standing(100.0), Noise(0.0, 2, 1))
    assert absolute.verdict is Verdict.DISCARD  # no baseline timing: budget 10 + allowance 30


def test_over_budget_comes_before_a_crash_or_a_timeout_but_not_before_invalid() -> None:
    """A run stopped at the limit (a timeout) or crashed past it is over budget whatever it did;
    tampering (invalid) and a signal (interrupted) keep their own verdicts."""
    base, j, noise = Standing(100.0, runs=5, seconds=50.0), judge(), Noise(0.0, 2, 1)
    stopped = Run(1, 0, 0, RunStatus.TIMEOUT, seconds=81.0, reason="run step stopped after 81.0 s: past the budget")
    decided = j.decide([stopped], base, noise)
    assert decided.verdict is Verdict.DISCARD and decided.reason.startswith("over budget: ran 81.0 s, limit 80.0 s")
    assert decided.reason.endswith("; run step stopped after 81.0 s: past the budget")
    late = replace(stopped, status=RunStatus.CRASH, seconds=90.0, reason="run step exited with code 1")
    assert j.decide([late], base, noise).verdict is Verdict.DISCARD
    early = replace(late, seconds=5.0)  # within the limit: a crash is a crash
    assert j.decide([early], base, noise).verdict is Verdict.CRASH
    for status, verdict in ((RunStatus.INVALID, Verdict.INVALID), (RunStatus.KILLED, Verdict.INTERRUPTED)):
        assert j.decide([replace(late, status=status)], base, noise).verdict is verdict
    assert j.budget_limit(base) == (("run",), 80.0, "baseline's 50.0 s + 30 s")


def test_an_allowance_given_as_a_share_scales_with_the_baseline_and_has_a_floor() -> None:
    """``budget_allowance = "100%"``: a 6-s benchmark's candidate may take 12 s before it is
    stopped, not 6 s + 150 s; a 2-s one still gets 10 s of room, so noise is not over budget."""
    share = Judge(JudgeConfig(), MIN, budget=300.0, allowance=10.0, allowance_share=1.0,
                  budget_steps=("check", "evaluate"))  # fmt: skip
    long = Standing(1.0, runs=5, seconds=0.0, check_seconds=2.0, evaluate_seconds=22.0)
    assert share.budget_limit(long) == (("check", "evaluate"), 48.0, "baseline's 24.0 s + 24 s")
    short = replace(long, check_seconds=1.0, evaluate_seconds=1.0)
    assert share.budget_limit(short)[1] == 12.0  # 2 s + at least 10 s
    slow = Run(1, 0, 0, RunStatus.OK, metric=0.5, seconds=0.0, check_seconds=2.0, evaluate_seconds=47.0)
    decided = share.decide([slow], long, Noise(0.0, 2, 1))
    assert decided.verdict is Verdict.DISCARD
    assert decided.reason == "over budget: its check and evaluate steps took 49.0 s, limit 48.0 s (baseline's 24.0 s + 24 s)"


def test_every_step_named_in_budget_steps_counts_against_the_baselines() -> None:
    """The candidate's code runs in its check (tests import it) and evaluate (a model's forward
    passes) steps too: work done there is compute past the budget."""
    base = Standing(100.0, runs=5, seconds=50.0, check_seconds=4.0, evaluate_seconds=10.0)
    counts = Judge(JudgeConfig(), MIN, budget=10.0, allowance=30.0, budget_steps=("check", "run", "evaluate"))
    slow = Run(1, 0, 0, RunStatus.OK, metric=90.0, seconds=50.0, check_seconds=4.0, evaluate_seconds=45.0)
    decided = counts.decide([slow], base, Noise(0.0, 2, 1))
    assert decided.verdict is Verdict.DISCARD
    assert decided.reason == (
        "over budget: its check and run and evaluate steps took 99.0 s, limit 94.0 s (baseline's 64.0 s + 30 s)"
    )
    within = replace(slow, seconds=40.0)  # less run, more evaluate: the sum is what counts
    assert counts.decide([within], base, Noise(0.0, 2, 1)).verdict is Verdict.KEEP
    trained_in_check = replace(slow, check_seconds=40.0, evaluate_seconds=10.0)
    assert counts.decide([trained_in_check], base, Noise(0.0, 2, 1)).verdict is Verdict.DISCARD
    assert judge().decide([slow], base, Noise(0.0, 2, 1)).verdict is Verdict.KEEP  # budget_steps = run
    unrecorded = replace(base, check_seconds=None, evaluate_seconds=None)  # a ledger from before them
    assert counts.decide([slow], unrecorded, Noise(0.0, 2, 1)).verdict is Verdict.KEEP
    no_run_step = Standing(100.0, runs=5, seconds=0.0, check_seconds=4.0, evaluate_seconds=10.0)
    alone = Run(1, 0, 0, RunStatus.OK, metric=90.0, seconds=0.0, check_seconds=4.0, evaluate_seconds=50.0)
    assert "its check and evaluate steps took 54.0 s" in counts.decide([alone], no_run_step, Noise(0.0, 2, 1)).reason


def test_failures_become_verdicts() -> None:
    runs = {
        RunStatus.TIMEOUT: Verdict.TIMEOUT, RunStatus.INVALID: Verdict.INVALID,
        RunStatus.KILLED: Verdict.INTERRUPTED, RunStatus.CRASH: Verdict.CRASH,
    }  # fmt: skip
    for status, verdict in runs.items():
        run = Run(1, 0, 0, status, reason="why")
        assert judge().decide([run], BEST, SIGMA).verdict is verdict
        assert judge().decide_baseline([run]).verdict is verdict


def test_runs_that_ignore_their_seeds_are_named_as_such() -> None:
    """Three seeds, one value, where the baseline's runs all differ: the code pins a seed."""
    varied = [100.2, 99.7, 100.4]
    assert SEED_RUNS == 3
    reason = ignores_seed([97.5] * 3, varied, MIN)
    assert "all gave m 97.5" in reason and "ignores AUTORESEARCH_SEED" in reason
    assert ignores_seed([97.5] * 2, varied, MIN) == ""  # two equal runs can be chance
    assert ignores_seed([97.5, 97.5, 97.6], varied, MIN) == ""
    assert ignores_seed([97.5] * 3, [100.0, 100.0, 100.4], MIN) == ""  # ties: a coarse metric
    assert ignores_seed([97.5] * 3, [100.0] * 3, MIN) == ""  # a deterministic task
    assert ignores_seed([97.5] * 3, [100.0], MIN) == ""
