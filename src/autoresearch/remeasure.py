"""How much of a session's gain holds: the best commit and the baseline re-run side by side.

A kept result was selected because it looked better, so its recorded value is biased
toward luck; re-running both ends of the session on seeds no run of the session used, in
alternating order (baseline, best, best, baseline, ...) so that a machine getting slower
or faster during the check costs both the same, says what the session really bought.

No experiment is recorded: the check is a reading, kept with the session (its latest
reading, ``remeasured`` in the session's config) for ``status``, the report and the dashboard
to show next to the recorded gain. It holds the session's lock, so it never competes with a
running session of the same tag.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from autoresearch.config import STATE_DIR, TaskConfig
from autoresearch.engine import data_hashes, experiment_seed
from autoresearch.errors import AutoresearchError
from autoresearch.executors import Job, LocalExecutor
from autoresearch.executors.sandbox import Sandbox
from autoresearch.ledger import Ledger
from autoresearch.lock import SessionLock
from autoresearch.records import RunPurpose, RunStatus, Verdict
from autoresearch.workspace import Workspace

SLOT = "remeasure"
REFERENCE = "remeasure-reference"  # [task] reference = "baseline": the baseline, for measure --same
SEED_STREAM = 900_000  # experiment ids no session reaches: seeds no session run used


@dataclass(frozen=True)
class Remeasured:
    """Fresh runs of the baseline and the best, and what the session had recorded for them."""

    metric: str
    direction: str
    baseline: tuple[float, ...]
    best: tuple[float, ...]
    recorded_baseline: float
    recorded_best: float
    failures: tuple[str, ...] = ()  # runs that produced no metric, with why
    baseline_commit: str = ""
    best_commit: str = ""

    @property
    def nothing_kept(self) -> bool:
        """The best is the baseline: any difference seen is noise."""
        return self.best_commit == self.baseline_commit

    @property
    def ratio(self) -> float | None:
        """Mean of the best's fresh runs over the baseline's (None without both)."""
        if not self.baseline or not self.best:
            return None
        base = statistics.fmean(self.baseline)
        return statistics.fmean(self.best) / base if base else None

    @property
    def held(self) -> float | None:
        """The share of the recorded gain seen again (1.0: all of it; <= 0: none)."""
        recorded = self._gain(self.recorded_baseline, self.recorded_best)
        if not self.baseline or not self.best or recorded == 0:
            return None
        return self._gain(statistics.fmean(self.baseline), statistics.fmean(self.best)) / recorded

    def reading(self) -> dict[str, float | str]:
        """What the session keeps of this check (its latest re-measure)."""
        assert self.ratio is not None
        out: dict[str, float | str] = {"at": time.time(), "runs": min(len(self.baseline), len(self.best)),
                                       "best_commit": self.best_commit, "ratio": self.ratio}  # fmt: skip
        if self.held is not None and not self.nothing_kept:
            out["held"] = self.held
        return out

    def _gain(self, baseline: float, best: float) -> float:
        return baseline - best if self.direction == "minimize" else best - baseline

    def text(self) -> str:
        def line(name: str, values: tuple[float, ...], recorded: float) -> str:
            runs = ", ".join(f"{v:.6g}" for v in values) or "no run finished"
            mean = f"mean {statistics.fmean(values):.6g}" if values else "mean -"
            return f"  {name:<8} {mean}  (recorded {recorded:.6g}; fresh runs: {runs})"

        if self.nothing_kept:
            return (f"Nothing to re-measure ({self.metric}): nothing was kept, so the best is the "
                    f"baseline ({self.recorded_baseline:.6g}) and there is no gain to check")  # fmt: skip
        lines = [
            f"Re-measured on fresh seeds ({self.metric}, {self.direction}):",
            line("baseline", self.baseline, self.recorded_baseline),
            line("best", self.best, self.recorded_best),
        ]
        ratio, held = self.ratio, self.held
        if ratio is not None and held is not None:
            lines.append(f"  best / baseline = {ratio:.4f}; {max(held, 0.0):.0%} of the recorded gain held")
        elif ratio is not None:
            lines.append(f"  best / baseline = {ratio:.4f}; the session recorded no gain")
        lines += [f"  failed run: {why}" for why in self.failures]
        return "\n".join(lines)


def remeasure(
    config: TaskConfig,
    tag: str,
    *,
    runs: int = 3,
    seed: int = 0,
    on_run: Callable[[str, int, float | None], None] | None = None,
) -> Remeasured:
    """Run the baseline and the best of session ``tag`` ``runs`` times each, interleaved."""
    if runs < 1:
        raise AutoresearchError(f"runs = {runs}: re-measure at least once")
    state = config.root / STATE_DIR
    ledger = Ledger(state / "ledger.db")
    if not ledger.has_session(tag):
        raise AutoresearchError(f"no session {tag!r} in {state / 'ledger.db'}")
    rows = ledger.experiments(ledger.session(tag))
    base = next((r for r in rows if r.verdict is Verdict.BASELINE and r.metric is not None), None)
    kept = [r for r in rows if r.verdict is Verdict.KEEP and r.metric is not None]
    if base is None:
        raise AutoresearchError(f"session {tag!r} has no measured baseline: nothing to compare")
    sign = 1.0 if config.metric.direction == "minimize" else -1.0
    best = min(kept, key=lambda r: sign * (r.metric or 0.0)) if kept else base
    assert base.metric is not None and best.metric is not None
    if best is base:  # the same code twice: the runs could only measure the noise
        ledger.close()
        return Remeasured(config.metric.name, config.metric.direction, (), (), base.metric, best.metric,
                          baseline_commit=base.commit, best_commit=best.commit)  # fmt: skip
    lock = SessionLock(state, tag)
    lock.acquire()
    session = ledger.session(tag)  # read under the lock: a session that just ended wrote its last
    workspace = Workspace(config, tag)
    executor = LocalExecutor(sandbox=Sandbox.for_task(config), max_log_mb=config.max_log_mb)
    values: dict[str, list[float]] = {"baseline": [], "best": []}
    failures: list[str] = []
    try:
        order = [("baseline", base.commit), ("best", best.commit)]
        plan = [pair for i in range(runs) for pair in (order if i % 2 == 0 else order[::-1])]
        for index, (name, commit) in enumerate(plan):
            workdir = workspace.checkout(SLOT, commit)
            if config.reference == "baseline":  # measure --same compares with the baseline's output
                workspace.checkout(REFERENCE, base.commit)
            job = Job(
                experiment_id=SEED_STREAM, run_index=index, commit=commit, workdir=workdir,
                run=config.run, metric=config.metric, log_dir=state / "logs" / tag / SLOT,
                out_dir=state / "runs" / tag / f"{SLOT}-{index}", check=config.check,
                evaluate=config.evaluate, time_budget=config.time_budget, timeout=config.timeout,
                max_memory_mb=config.max_memory_mb,
                seed=experiment_seed(seed, SEED_STREAM, index), pass_env=config.env,
                env={"AUTORESEARCH_TASK_DIR": str(config.root), "AUTORESEARCH_TAG": tag},
                protected=workspace.protected_hashes(SLOT), protected_data=data_hashes(config),
                reset_root=workspace.slot_root(SLOT), reset_keep=workspace.linked_paths(),
                purpose=RunPurpose.RESCORE,
                reference_root=workspace.slot_root(REFERENCE) if config.reference == "baseline" else None,
                reference_commit=base.commit if config.reference == "baseline" else "",
            )  # fmt: skip
            result = executor.submit(job).result()
            ok = result.status is RunStatus.OK and result.metric is not None
            if ok:
                assert result.metric is not None
                values[name].append(result.metric)
            else:
                failures.append(f"{name}: {result.status}: {result.reason}")
            if on_run is not None:
                on_run(name, index, result.metric if ok else None)
        reading = Remeasured(
            config.metric.name, config.metric.direction, tuple(values["baseline"]),
            tuple(values["best"]), base.metric, best.metric, tuple(failures), base.commit, best.commit,
        )  # fmt: skip
        if reading.ratio is not None:
            ledger.update_session(session, config={**session.config, "remeasured": reading.reading()})
    finally:
        executor.close()
        workspace.remove_worktrees()
        lock.release()
        ledger.close()
    return reading


__all__ = ["Remeasured", "remeasure"]
