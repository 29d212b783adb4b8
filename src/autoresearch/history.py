"""What a session's experiments add up to, computed once and read by everyone.

``History(rows)`` is built from the ledger's records of one session; the engine, the
stop rules, the agents' context, the views and the reports all read its properties
instead of re-deriving best, baseline, noise, counts and spend on their own.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property

from autoresearch.config import STEPS
from autoresearch.cost import compute_cost
from autoresearch.judge import Noise, Standing, pooled_noise
from autoresearch.records import Experiment, RunPurpose, Verdict


class History:
    """One session's experiments, oldest first, with what follows from them."""

    def __init__(self, rows: Iterable[Experiment], *, gpu_price: float = 0.0,
                 now: float | None = None) -> None:  # fmt: skip
        self.rows: tuple[Experiment, ...] = tuple(sorted(rows, key=lambda r: r.id))
        self.gpu_price = gpu_price  # dollars per slot-hour, for the compute spend
        self._now = time.time() if now is None else now

    def __len__(self) -> int:
        return len(self.rows)

    # --- best and baseline --------------------------------------------------------------

    @cached_property
    def best(self) -> Experiment | None:
        """The current best: the last baseline or keep to be judged."""
        judged = [r for r in self.rows if r.verdict.judged]
        return max(judged, key=lambda r: (r.finished or 0.0, r.id)) if judged else None

    @cached_property
    def baseline(self) -> Experiment | None:
        return next((r for r in self.rows if r.verdict is Verdict.BASELINE), None)

    def standing(self) -> Standing | None:
        """The best as the judge sees it: its value, the runs behind it, the baseline's timing."""
        best = self.best
        if best is None or best.metric is None:
            return None
        rescored = best.values(RunPurpose.RESCORE)
        runs = len(rescored) or len(best.values()) or 1
        return Standing(best.metric, runs, self.baseline_seconds, self._baseline_step("check"),
                        self._baseline_step("evaluate"))  # fmt: skip

    @cached_property
    def baseline_seconds(self) -> float | None:
        """Mean wall time of the baseline's run steps: the yardstick of the budget rule."""
        return self._baseline_step("run")

    def _baseline_step(self, name: str) -> float | None:
        """Mean wall time of the baseline's ``name`` steps (check, evaluate); None when a run
        did not record it (a ledger written before it was recorded)."""
        base = self.baseline
        seconds = [r.step_seconds(name) for r in base.runs if r.metric is not None] if base else []
        known = [s for s in seconds if s is not None]
        return statistics.fmean(known) if known and len(known) == len(seconds) else None

    # --- noise -----------------------------------------------------------------------------

    def noise(self, extra: Iterable[Sequence[float]] = ()) -> Noise:
        """Pooled within-experiment sigma over every experiment with two runs (plus ``extra``)."""
        return pooled_noise([*self._groups, *extra])

    @cached_property
    def _groups(self) -> list[list[float]]:
        groups = []
        for row in self.rows:
            for purpose in RunPurpose:  # lucky selection runs and fresh re-runs apart
                values = row.values(purpose)
                if len(values) >= 2:
                    groups.append(values)
        return groups

    # --- counts, failures and spend ----------------------------------------------------------

    @cached_property
    def counts(self) -> Counter[Verdict]:
        return Counter(r.verdict for r in self.rows)

    @cached_property
    def finished(self) -> list[Experiment]:
        """Experiments with a verdict, baseline excluded: what ``--max-experiments`` counts."""
        return [r for r in self.rows if not r.is_baseline]

    @cached_property
    def pending(self) -> list[Experiment]:
        return [r for r in self.rows if r.verdict is Verdict.PENDING]

    def trailing_failures(self, since: float = 0.0) -> int:
        """Crashes, timeouts and invalid proposals since the last proposal that worked, among
        those finished from ``since`` on (a resume starts a new count). The baseline is the
        harness's run, not a proposal: failures on either side of it add up."""
        count = 0
        done = [r for r in self.rows
                if r.verdict is not Verdict.PENDING and not r.is_baseline and (r.finished or 0.0) >= since]
        for row in sorted(done, key=lambda r: (r.finished or 0.0, r.id), reverse=True):
            if not row.verdict.failed:
                break
            count += 1
        return count

    @cached_property
    def last_failure(self) -> Experiment | None:
        """The most recent crash or timeout (whose log the agent should read)."""
        failed = [r for r in self.rows if r.verdict in (Verdict.CRASH, Verdict.TIMEOUT)]
        return failed[-1] if failed else None

    @cached_property
    def last_rejection(self) -> str:
        done = [r for r in self.rows if r.verdict is not Verdict.PENDING]
        last = done[-1] if done else None
        return last.reason if last is not None and last.verdict is Verdict.INVALID else ""

    @cached_property
    def unknown_prices(self) -> int:
        """Proposals whose price is unknown (counted as $0 in the spend)."""
        return sum(1 for r in self.rows if r.usage.cost_usd is None)

    @cached_property
    def agent_cost(self) -> float:
        return sum(r.usage.cost_usd or 0.0 for r in self.rows)

    @cached_property
    def compute_cost(self) -> float:
        return compute_cost(sum(r.compute_seconds for r in self.rows), self.gpu_price)

    @property
    def spend(self) -> float:
        """Dollars so far: agent tokens plus compute at ``gpu_price`` per slot-hour."""
        return self.agent_cost + self.compute_cost

    @cached_property
    def costliest_run(self) -> float:
        """Dollars of the run whose steps took longest so far (what ``--max-cost`` expects of a run)."""
        seconds = (sum(run.step_seconds(step) or 0.0 for step in STEPS) for row in self.rows for run in row.runs)
        return compute_cost(max(seconds, default=0.0), self.gpu_price)

    @cached_property
    def costliest_proposal(self) -> float:
        return max((r.usage.cost_usd or 0.0 for r in self.rows), default=0.0)

    @cached_property
    def kept(self) -> list[Experiment]:
        return [r for r in self.rows if r.verdict is Verdict.KEEP]

    @cached_property
    def lineage(self) -> frozenset[int]:
        """The experiments whose changes the best code holds: the best, the keep its commit was
        made on, and so on to the baseline. A keep outside it was superseded by a proposal that
        ran on an older best (it did not apply to the newer one) and measured better."""
        by_commit = {r.commit: r for r in self.rows if r.verdict.judged and r.commit}
        found: set[int] = set()
        row = self.best
        while row is not None and row.id not in found:
            found.add(row.id)
            row = by_commit.get(row.parent)
        return frozenset(found)

    @cached_property
    def done(self) -> list[Experiment]:
        """Judged experiments proposed by an agent (the baseline, failed or not, and pending ones
        excluded): what every view counts as experiments."""
        return [r for r in self.rows if r.verdict is not Verdict.PENDING and not r.is_baseline]

    @property
    def sigma(self) -> float | None:
        """The pooled noise's standard deviation (None while unknown)."""
        return self.noise().sigma

    @cached_property
    def wall_seconds(self) -> float:
        """From the first experiment's start to the last finish (or now, while one is pending)."""
        if not self.rows:
            return 0.0
        ends = [r.finished for r in self.rows if r.finished is not None]
        end = self._now if self.pending or not ends else max(ends)
        return max(0.0, end - min(r.started for r in self.rows))

    @property
    def per_hour(self) -> float | None:
        """Experiments judged per wall-clock hour; None in the first minute (no rate yet)."""
        seconds = self.wall_seconds
        return len(self.done) * 3600.0 / seconds if seconds >= 60.0 and self.done else None

    def gain(self, value: float | None) -> float | None:
        """``value`` against the baseline, in percent (negative: smaller)."""
        base = self.baseline.metric if self.baseline else None
        if value is None or base is None or base == 0:
            return None
        return (value - base) / abs(base) * 100.0

    def duplicate_of(self, tree: str) -> Experiment | None:
        """An earlier experiment that ran exactly this tree (the same code) to a verdict; one
        that was interrupted (killed, cut short) measured nothing, so the code runs again."""
        if not tree:
            return None
        unmeasured = (Verdict.DUPLICATE, Verdict.PENDING, Verdict.INVALID, Verdict.INTERRUPTED)
        return next((r for r in self.rows if r.tree == tree and r.verdict not in unmeasured), None)


__all__ = ["History"]
