"""One experiment as functions: context -> apply and commit -> runs -> judge -> record -> move.

The order is the guarantee: the ledger row is written before the branch moves, so a kill
anywhere leaves a recorded experiment or a ``pending`` one that resume runs again.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.agents._base import Context
from autoresearch.constraints import first_violation
from autoresearch.edits import task_paths
from autoresearch.errors import EditRejected, ExecutorError, ProposalError
from autoresearch.executors._base import Job, RunResult
from autoresearch.git import remove_tree
from autoresearch.judge import Decision, failure, ignores_seed
from autoresearch.measure import same_keys
from autoresearch.records import Experiment, Proposal, Run, RunPurpose, RunStatus, Verdict

if TYPE_CHECKING:
    from concurrent.futures import Future

    from autoresearch.engine import Engine

PROPOSAL_CHECKOUT = "p0"  # where contexts are read and command agents work (one at a time)


@dataclass
class Flight:
    """An experiment whose runs are under way on one slot."""

    slot: int
    experiment_id: int
    commit: str
    baseline: bool
    workdir: Path
    future: Future[RunResult] | None = None
    runs: list[Run] = field(default_factory=list)
    compute: float = 0.0  # seconds of every step of every run so far
    keep: Decision | None = None  # a keep waiting for its fresh re-runs
    rescore_left: int = 0
    selected_against: float | None = None  # the best's value when it was selected

    @property
    def purpose(self) -> RunPurpose:
        return RunPurpose.RESCORE if self.keep is not None else RunPurpose.SELECT


@dataclass(frozen=True)
class Ready:
    """A proposal back from the agent, not yet applied."""

    experiment_id: int
    parent: str  # the best when it was asked for
    proposal: Proposal


def experiment_seed(session_seed: int, experiment_id: int, run_index: int) -> int:
    """Seeds vary per run, so a change that only moves the seed cannot look like a gain."""
    return (session_seed * 1_000_003 + experiment_id * 7_919 + run_index * 104_729 + 17) % 2**31


def one_line(text: str) -> str:
    """A description as one line of at most 200 characters, without control characters (a NUL
    cannot go into a commit message, and none belongs in a line)."""
    line = " ".join("".join(" " if c < " " or c == "\x7f" else c for c in text).split())
    return (line[:197] + "...") if len(line) > 200 else (line or "(no description)")


# --- the agent's context ------------------------------------------------------------------------


def context_for(engine: Engine, exp_id: int, parent: str, planned: list[Ready], *,
                last: bool = False) -> Context:  # fmt: skip
    """What the agent sees for experiment ``exp_id``, made against ``parent`` (the best now).

    Its history ends with the proposals it made that are waiting for a slot (``pending``),
    so an agent that reads its history never proposes the same thing twice. The engine's
    note goes to the next proposal only once; the ``last`` context (``Agent.finish``) shows
    it without taking it.
    """
    ws, cfg, history = engine.workspace, engine.config, engine.history
    workdir = ws.checkout(PROPOSAL_CHECKOUT, parent, reuse=not engine.agent.needs_workdir)
    best, base = history.best, history.baseline
    noise = history.noise()
    standing = history.standing()
    failure = history.last_failure
    steps, limit, _basis = engine.judge.budget_limit(standing) if standing else ((), None, "")
    return Context(
        instructions=_read(cfg.root / cfg.instructions),
        editable=ws.editable_files(PROPOSAL_CHECKOUT),
        readonly=ws.read_files(PROPOSAL_CHECKOUT, cfg.context),
        history=(*history.rows, *(_row(engine, r, Verdict.PENDING, parent=r.parent) for r in planned)),
        metric_name=cfg.metric.name, direction=cfg.metric.direction,
        best_metric=best.metric if best else None, baseline_metric=base.metric if base else None,
        noise=noise.sigma, noise_runs=noise.runs,
        detectable=noise.detectable(engine.judge.z, 1, standing.runs if standing else 1),
        last_failure=_failure_text(failure), last_rejection=history.last_rejection,
        parent=parent, workdir=workdir, experiment_id=exp_id, tag=engine.options.tag,
        seed=experiment_seed(engine.options.seed, exp_id, 0), editable_globs=cfg.editable,
        time_budget=cfg.time_budget, log_dir=engine.log_dir, note=engine.note if last else engine.take_note(),
        hidden=_hidden(engine, workdir), budget_steps=steps, time_limit=limit, max_file_kb=cfg.max_file_kb,
    )  # fmt: skip


def _hidden(engine: Engine, workdir: Path) -> tuple[Path, ...]:
    """What the agent's own processes may not read: the ledger's files (a lock on one stopped
    the session) and the holdout, in the task folder and in the agent's checkout."""
    ledger = engine.ledger.path
    paths = {ledger.with_name(ledger.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    paths |= task_paths(engine.config.holdout, engine.config.root, workdir)
    return tuple(sorted(p for p in paths if p.exists()))


def _failure_text(row: Experiment | None) -> str:
    if row is None:
        return ""
    return f"experiment {row.id} ({row.reason}):\n" + (row.runs[-1].log_tail if row.runs else "")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


# --- from proposal to a running candidate ------------------------------------------------------------


def start_candidate(engine: Engine, slot: int, ready: Ready) -> None:
    """Apply ``ready`` on the current best (else on its own parent), commit, and run it."""
    best = engine.history.best
    assert best is not None
    attempts = [best.commit] + ([ready.parent] if ready.parent != best.commit else [])
    error: Exception | None = None
    for parent in attempts:
        try:
            commit, diff = _apply(engine, slot, parent, ready)
        except (EditRejected, ProposalError) as exc:
            error = exc
            continue
        _note_parent(engine, ready, parent, best.commit)
        _record_candidate(engine, slot, ready, parent, commit, diff)
        return
    engine.workspace.checkout(slot, best.commit)
    record_unrun(engine, ready, Verdict.INVALID, str(error), parent=ready.parent)


def _apply(engine: Engine, slot: int, parent: str, ready: Ready) -> tuple[str, str]:
    ws = engine.workspace
    ws.checkout(slot, parent)
    tag, description = engine.options.tag, one_line(ready.proposal.description)
    ws.apply(slot, ready.proposal)
    return ws.commit(slot, f"autoresearch {tag} #{ready.experiment_id}: {description}")


def _note_parent(engine: Engine, ready: Ready, parent: str, best: str) -> None:
    if ready.parent == best:
        return
    if parent == best:
        engine.note = (f"experiment {ready.experiment_id} was proposed against {ready.parent[:10]}; "
                       f"the best moved to {best[:10]} meanwhile and it was applied there")  # fmt: skip
    else:
        engine.note = (f"experiment {ready.experiment_id} does not apply to the new best {best[:10]}; "
                       f"it ran on its own parent {parent[:10]} and is judged against the best")  # fmt: skip


def _record_candidate(engine: Engine, slot: int, ready: Ready, parent: str, commit: str,
                      diff: str) -> None:  # fmt: skip
    tree = engine.workspace.tree(commit)
    twin = engine.history.duplicate_of(tree)
    row = _row(engine, ready, Verdict.PENDING, parent=parent, commit=commit, diff=diff, tree=tree)
    if twin is not None:
        row = replace(row, verdict=Verdict.DUPLICATE, metric=twin.metric, metrics=twin.metrics,
                      reason=f"duplicate of #{twin.id} (the same code; not run again)")  # fmt: skip
        engine.record(engine.ledger.begin(engine.session, row))
        engine.workspace.keep_discarded(row.id, commit)
        engine.say(f"#{row.id} {row.reason}")
        engine.emit(row.id)
        return
    engine.record(engine.ledger.begin(engine.session, row))
    launch(engine, slot, row.id, commit, baseline=False, checked_out=True)


def record_unrun(engine: Engine, ready: Ready, verdict: Verdict, reason: str, *,
                 parent: str) -> None:  # fmt: skip
    """A proposal that never ran (invalid, or left over when the session stopped)."""
    row = _row(engine, ready, verdict, parent=parent, reason=reason)
    engine.record(engine.ledger.begin(engine.session, row))
    engine.say(f"#{row.id} {verdict}: {reason}")
    engine.emit(row.id)


def _row(engine: Engine, ready: Ready, verdict: Verdict, *, parent: str, commit: str = "",
         diff: str = "", tree: str = "", reason: str = "") -> Experiment:  # fmt: skip
    proposal = ready.proposal
    return Experiment(
        id=ready.experiment_id, verdict=verdict, metric=None, reason=reason,
        description=one_line(proposal.description), agent=engine.agent.name, meta=proposal.meta,
        rationale=proposal.rationale, usage=proposal.usage, parent=parent, commit=commit,
        diff=diff, tree=tree,
    )  # fmt: skip


# --- runs --------------------------------------------------------------------------------------------


def launch(engine: Engine, slot: int, exp_id: int, commit: str, *, baseline: bool,
           checked_out: bool = False) -> None:  # fmt: skip
    ws = engine.workspace
    workdir = ws.slot_dir(slot) if checked_out else ws.checkout(slot, commit)
    if engine.protected is None:  # protected files are identical in every commit of the session
        engine.protected = ws.protected_hashes(slot)
    flight = Flight(slot, exp_id, commit, baseline, workdir)
    engine.flights[slot] = flight
    submit(engine, flight)


BUDGET_GRACE = 1.0  # seconds past the budget limit before a run is stopped: past it, not at it


def _budget(engine: Engine, flight: Flight) -> tuple[tuple[str, ...], float | None]:
    """A candidate's budget steps and the seconds after which they are over budget for sure."""
    standing = engine.history.standing()
    if flight.baseline or standing is None:
        return (), None
    steps, limit, _basis = engine.judge.budget_limit(standing)
    return steps, limit + BUDGET_GRACE


def submit(engine: Engine, flight: Flight) -> None:
    cfg, index = engine.config, len(flight.runs)
    name = f"{flight.experiment_id:04d}-{index}"
    reference_root, reference_commit = _reference(engine, flight)
    budget_steps, budget_limit = _budget(engine, flight)
    job = Job(
        experiment_id=flight.experiment_id, run_index=index, commit=flight.commit,
        workdir=flight.workdir, run=cfg.run, metric=cfg.metric, log_dir=engine.log_dir,
        out_dir=engine.out_dir(name), check=cfg.check, evaluate=cfg.evaluate,
        time_budget=cfg.time_budget, timeout=cfg.timeout, max_memory_mb=cfg.max_memory_mb,
        seed=experiment_seed(engine.options.seed, flight.experiment_id, index),
        env=engine.task_env(), pass_env=cfg.env, slot=flight.slot, protected=engine.protected or {},
        protected_data=engine.protected_data, reset_root=engine.workspace.slot_root(flight.slot),
        reset_keep=engine.workspace.linked_paths(), purpose=flight.purpose,
        reference_root=reference_root, reference_commit=reference_commit,
        setup_commit=engine.session.base_commit, budget_steps=budget_steps, budget_limit=budget_limit,
    )  # fmt: skip
    flight.future = engine.executor.submit(job)
    engine.observe_run(flight, job)


def _reference(engine: Engine, flight: Flight) -> tuple[Path | None, str]:
    """``[task] reference = "baseline"``: the slot's clean checkout of the session's baseline.

    Put back at every run (two git calls), so nothing a step wrote there outlives its run.
    """
    if engine.config.reference != "baseline":
        return None, ""
    base = engine.history.baseline
    commit = flight.commit if flight.baseline or base is None else base.commit
    key = f"reference-{flight.slot}"
    engine.workspace.checkout(key, commit)
    return engine.workspace.slot_root(key), commit


def collect(engine: Engine, flight: Flight) -> None:
    """Record the run that just ended, then decide: another run, or a verdict."""
    result = _outside_damage(engine, _result_of(flight))
    run = _run_record(result, flight.purpose)
    flight.runs.append(run)
    flight.compute += result.compute_seconds
    engine.record(engine.ledger.add_run(engine.session, run))
    if run.status is RunStatus.INVALID:
        engine.after_tampering(flight, run.reason)
    decision = _decide(engine, flight)
    if decision.verdict is None and engine.killed:  # a second signal: no more runs
        decision = Decision(Verdict.INTERRUPTED, None, "interrupted: the session was killed "
                            f"after {len(flight.runs)} run(s), before its verdict")  # fmt: skip
    if decision.verdict is None:
        done, judge = len(flight.runs), engine.config.judge
        if flight.keep is None and not flight.baseline and judge.rule == "sequential":  # it may stop early
            count = f"run {done + 1}, at most {max(done + decision.more_runs, judge.max_runs)}"
        else:
            count = f"run {done + 1} of {done + decision.more_runs}"
        engine.say(f"#{flight.experiment_id}: {decision.reason} ({count})")
        submit(engine, flight)
        return
    del engine.flights[flight.slot]
    finish(engine, flight, decision)


def _outside_damage(engine: Engine, result: RunResult) -> RunResult:
    """A run that reached git or the Python environment is invalid, and the session stops."""
    reached = engine.git_reached()
    if reached:
        why = f"the run changed git state outside its worktree: {', '.join(reached)}"
        result = replace(result, status=RunStatus.INVALID, reason=why, fatal=True)
    if result.fatal:
        engine.stop(f"experiment {result.experiment_id}: {result.reason}; undo that by hand, "
                    "then --resume")  # fmt: skip
    return result


def _result_of(flight: Flight) -> RunResult:
    assert flight.future is not None
    try:
        return flight.future.result()
    except (ExecutorError, OSError, RecursionError) as exc:  # recursion: a tree a run nested too deep
        return RunResult(flight.experiment_id, len(flight.runs), 0, RunStatus.CRASH,
                         reason=f"executor: {exc}")  # fmt: skip


def _run_record(result: RunResult, purpose: RunPurpose) -> Run:
    return Run(
        experiment_id=result.experiment_id, index=result.run_index, seed=result.seed,
        status=result.status, metric=result.metric, metrics=dict(result.metrics),
        seconds=result.seconds, reason=result.reason, log_path=str(result.log_path or ""),
        log_tail=result.log_tail, purpose=purpose, check_seconds=result.step_seconds("check"),
        evaluate_seconds=result.step_seconds("evaluate"),
    )  # fmt: skip


def _decide(engine: Engine, flight: Flight) -> Decision:
    judge, history = engine.judge, engine.history
    if flight.baseline:
        return judge.decide_baseline(flight.runs)
    if flight.keep is not None:
        return _rescored(engine, flight)
    standing = history.standing()
    assert standing is not None, "candidates start only once the baseline is recorded"
    select = [r.metric for r in flight.runs if r.metric is not None]
    decision = judge.decide(flight.runs, standing, history.noise([select]))
    judged = decision.verdict in (None, Verdict.KEEP, Verdict.DISCARD) and judge.failed(flight.runs, standing) is None
    if judged:  # measured, within the budget: bounds apply at once
        broken = _broken_constraint(engine, flight) or _pinned_seed(engine, flight)
        if broken:
            return Decision(Verdict.DISCARD, decision.metric, broken)
    if decision.verdict is Verdict.KEEP and decision.rescore > 0:
        flight.keep, flight.rescore_left, flight.selected_against = decision, decision.rescore, standing.metric
        return Decision(None, decision.metric, "selected; re-scoring on fresh seeds before it is kept",
                        decision.rescore)  # fmt: skip
    return decision


def _broken_constraint(engine: Engine, flight: Flight) -> str:
    """``[metric] constraints``: why a candidate the judge would keep must be discarded."""
    bounds = engine.config.metric.constraints
    if not bounds:
        return ""
    best, base = engine.history.best, engine.history.baseline
    return first_violation(bounds, mean_metrics(flight.runs, same_keys(engine.config.evaluate), complete=True), best.metrics if best else {},
                           base.metrics if base else {})  # fmt: skip


def _pinned_seed(engine: Engine, flight: Flight) -> str:
    """Why the candidate's runs are no evidence: they ignore the seed each run was given."""
    values = [r.metric for r in flight.runs if r.status is RunStatus.OK and r.metric is not None]
    base = engine.history.baseline
    return ignores_seed(values, base.values() if base else [], engine.config.metric)


def _rescored(engine: Engine, flight: Flight) -> Decision:
    """A keep's fresh runs: it is recorded at their mean, not at the runs that selected it.

    When that mean is no better than the best, the selecting runs were luck: a discard.
    """
    assert flight.keep is not None
    standing = engine.history.standing()
    failed = engine.judge.failed(flight.runs, standing) if standing is not None else failure(flight.runs)
    if failed is not None and failed.verdict is Verdict.DISCARD:  # the code knows its run (AUTORESEARCH_RUN):
        return replace(failed, reason=f"{flight.keep.reason}; a fresh run was {failed.reason}")  # fresh runs are timed too
    if failed is not None:  # a fresh run that fails is the experiment's verdict, not a pass
        return replace(failed, reason=f"{flight.keep.reason}; a fresh run failed: {failed.reason}")
    flight.rescore_left -= 1
    if flight.rescore_left > 0:
        return Decision(None, flight.keep.metric, "re-scoring on fresh seeds", flight.rescore_left)
    fresh = [r.metric for r in flight.runs if r.purpose is RunPurpose.RESCORE and r.metric is not None]
    if not fresh:
        return flight.keep
    value = statistics.fmean(fresh)
    note = f"; re-scored on {len(fresh)} fresh seeds: {value:.6g}"
    broken = _broken_constraint(engine, flight) or _pinned_seed(engine, flight)  # the fresh runs' metrics
    if broken:  # a candidate that held 60 MB only in its fresh runs was kept past peak_rss_mb <= 1.25 * best
        return Decision(Verdict.DISCARD, value, f"{flight.keep.reason}{note}; but {broken}")
    standing, metric, delta = engine.history.standing(), engine.config.metric, engine.config.judge.min_delta
    if standing is not None and not metric.better(value, standing.metric, delta):
        before = flight.selected_against
        why = ("the selecting runs were luck" if before is None or not metric.better(value, before, delta)
               else f"it still beats {before:.6g}, the best it was selected against, but a better one "
               "was kept meanwhile")  # fmt: skip
        return Decision(Verdict.DISCARD, value, f"{flight.keep.reason}{note}, not better than the best "
                        f"{standing.metric:.6g}: {why}")  # fmt: skip
    return Decision(Verdict.KEEP, value, flight.keep.reason + note)


def finish(engine: Engine, flight: Flight, decision: Decision) -> None:
    """Record the verdict, then (only then) move the branch or keep the commit reachable."""
    assert decision.verdict is not None
    ws = engine.workspace
    row = engine.ledger.finish(engine.session, flight.experiment_id, decision.verdict,
                               decision.metric, decision.reason,
                               mean_metrics(flight.runs, same_keys(engine.config.evaluate)),
                               flight.compute)  # fmt: skip
    previous, lineage = engine.history.best, engine.history.lineage
    engine.record(row)
    if decision.verdict is Verdict.BASELINE:
        engine.check_constraints()
    if decision.verdict is Verdict.KEEP:
        _note_dropped(engine, row, lineage - engine.history.lineage)
    if decision.verdict.judged:
        if decision.verdict is Verdict.KEEP:  # reachable even if a parallel keep supersedes it
            ws.keep_kept(flight.experiment_id, flight.commit)
        ws.move_branch(flight.commit)
        engine.moved_branch()
        if previous is not None and previous.verdict is Verdict.KEEP:
            drop_outputs(engine, previous.id)
    else:
        ws.keep_discarded(flight.experiment_id, flight.commit)
        drop_outputs(engine, flight.experiment_id)
    engine.emit(flight.experiment_id)


def _note_dropped(engine: Engine, row: Experiment, dropped: set[int] | frozenset[int]) -> None:
    """A keep made on an older best: the keeps since are not in the best code now. Say so to
    the user and, in its next context, to the agent."""
    base = engine.history.baseline
    names = ", ".join(f"#{i}" for i in sorted(dropped) if base is None or i != base.id)
    if not names:
        return
    engine.note = (f"experiment {row.id} was kept on an older best ({row.parent[:10]}); the "
                   f"changes of {names} are not in the best code now: propose them again if "
                   "they still help")  # fmt: skip
    engine.say(f"#{row.id}: kept on an older best; not in the best code now: {names}")


def mean_metrics(runs: list[Run], last: Sequence[str] = (), *, complete: bool = False) -> dict[str, float]:
    """Each metric's mean over the runs the recorded value rests on: a keep's fresh runs when
    it has them (as its metric is), else every run. ``last``: keys taken as the last of those
    runs printed them (``--same`` checksums: each run had a workload of its own). ``complete``:
    only keys every one of them reported, for a constraint to see a key missing (a candidate
    that hid its checksum in the runs where it skipped the work was kept on the others')."""
    fresh = [r for r in runs if r.purpose is RunPurpose.RESCORE and r.status is RunStatus.OK]
    chosen = fresh or [r for r in runs if r.status is RunStatus.OK] or runs  # a failed run reports nothing
    keys: dict[str, list[float]] = {}
    for run in chosen:
        for key, value in run.metrics.items():
            keys.setdefault(key, []).append(value)
    return {k: v[-1] if k in last else sum(v) / len(v) for k, v in keys.items()
            if (len(v) == len(chosen) or not complete) and all(math.isfinite(x) for x in v)}  # fmt: skip


def drop_outputs(engine: Engine, exp_id: int) -> None:
    """Run outputs (checkpoints) are kept for the best experiment and the baseline only."""
    folder = engine.runs_dir
    for out in folder.glob(f"{exp_id:04d}-*") if folder.is_dir() else []:
        with contextlib.suppress(OSError):  # a checkpoint it cannot remove stays: the session goes on
            remove_tree(out)


__all__ = ["Flight", "Ready", "experiment_seed"]
