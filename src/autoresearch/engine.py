"""The loop: setup, baseline, then experiment after experiment until a stop rule fires.

The engine owns the loop and nothing else: agents propose, the workspace applies and
commits, the executor runs, the judge decides, the ledger records, and only then does
the branch move. It is slot-based: up to ``executor.slots()`` experiments are in flight,
each in its own worktree, each applied to the best commit at proposal time.

Resume (``SessionOptions(resume=True)``): an experiment left ``pending`` by a killed
orchestrator is run again from its recorded commit (same id, same proposal), so nothing
is lost and nothing is counted twice; a verdict recorded before the branch moved is
carried out; missing discarded refs are recreated.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from autoresearch.agents._base import Agent, Context, HistoryRow, Proposal, Usage
from autoresearch.config import TaskConfig
from autoresearch.cost import compute_cost
from autoresearch.errors import (
    AgentError,
    AgentExhausted,
    AutoresearchError,
    EditRejected,
    ExecutorError,
    ProposalError,
    WorkspaceError,
)
from autoresearch.executors._base import Executor, Job, RunResult, RunStatus
from autoresearch.executors.local import (
    LocalExecutor,
    StepRunner,
    kill_orphans,
    run_environment,
    tail,
)
from autoresearch.judge import Decision, Judge, Verdict, noise_of
from autoresearch.ledger import (
    PENDING,
    ExperimentRow,
    Ledger,
    ProposalRecord,
    RunRow,
    SessionLock,
    SessionRow,
    best_row,
)
from autoresearch.workspace import STATE_DIR, Workspace, sha256_files

SETUP_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class SessionOptions:
    """How one ``autoresearch run`` behaves."""

    tag: str
    max_experiments: int | None = None  # experiments in the session, baseline excluded
    max_hours: float | None = None  # wall-clock hours of this invocation
    max_failures: int = 10  # consecutive crash / timeout / invalid verdicts
    max_cost: float | None = None  # dollars: agent spend plus compute
    gpu_price: float | None = None  # dollars per slot-hour; None: the task's [cost] gpu_per_hour
    resume: bool = False
    seed: int = 0
    run_setup: bool = True
    agent_flags: Mapping[str, Any] = field(default_factory=dict)  # recorded for --resume


@dataclass(frozen=True)
class ExperimentEvent:
    """Sent to ``on_event`` after each experiment is recorded."""

    experiment: ExperimentRow
    best: float | None
    baseline: float | None


@dataclass(frozen=True)
class SessionSummary:
    tag: str
    branch: str
    best_metric: float | None
    best_commit: str
    baseline_metric: float | None
    counts: Mapping[str, int]
    stop_reason: str
    cost_usd: float


@dataclass
class _InFlight:
    """An experiment whose runs are under way on one slot."""

    slot: int
    experiment_id: int
    commit: str
    baseline: bool
    workdir: Path
    protected: dict[str, str]
    future: Future[RunResult] | None = None
    runs: list[RunResult] = field(default_factory=list)


@dataclass(frozen=True)
class ResumeDefaults:
    """What a session was started with, for ``run --resume`` without repeating the flags."""

    agent: str
    agent_flags: Mapping[str, Any]
    seed: int


def resume_defaults(config: TaskConfig, tag: str) -> ResumeDefaults | None:
    """The agent, its CLI flags and the seed session ``tag`` started with; None if unknown."""
    path = config.root / STATE_DIR / "ledger.db"
    if not path.exists():
        return None
    ledger = Ledger(path)
    try:
        if not ledger.has_session(tag):
            return None
        session = ledger.session(tag)
    finally:
        ledger.close()
    flags = dict(session.config.get("agent_flags", {}))
    return ResumeDefaults(session.agent, flags, int(session.config.get("seed", 0)))


def run_setup(config: TaskConfig, log: Path, runner: StepRunner, env: Mapping[str, str]) -> None:
    """Run the task's ``setup`` step in the task folder (output to ``log``); raise if it fails."""
    job = Job(0, 0, "", config.root, "", config.metric, log.parent, log.parent,
              time_budget=config.time_budget, env=env)  # fmt: skip
    environment = run_environment(job)
    environment.pop("AUTORESEARCH_OUT", None)
    step = runner.step("setup", config.setup, config.root, environment, log, SETUP_TIMEOUT)
    if runner.killed:
        return
    if step.returncode != 0:
        raise AutoresearchError(
            f"setup step {config.setup!r} failed (exit {step.returncode}); log: {log}\n{tail(log, 15)}"
        )


def data_hashes(config: TaskConfig) -> dict[str, str]:
    """sha256 of every file matching the task's ``protected_data`` globs (absolute paths)."""
    files = sorted(
        {p.resolve() for g in config.protected_data for p in config.root.glob(g) if p.is_file()}
    )
    return sha256_files(Path("/"), [str(p) for p in files])


def experiment_seed(session_seed: int, experiment_id: int, run_index: int) -> int:
    """Seeds vary per run, so a change that only moves the seed cannot look like a gain."""
    return (session_seed * 1_000_003 + experiment_id * 7_919 + run_index * 104_729 + 17) % 2**31


class Engine:
    """Runs one session. Backends come in as arguments; nothing is global."""

    def __init__(
        self,
        config: TaskConfig,
        agent: Agent,
        *,
        options: SessionOptions,
        executor: Executor | None = None,
        ledger: Ledger | None = None,
        on_event: Callable[[ExperimentEvent], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.agent, self.options = config, agent, options
        self.workspace = Workspace(config, options.tag)
        self.ledger = ledger or Ledger(config.root / STATE_DIR / "ledger.db")
        self._own_executor = executor is None
        self.executor: Executor = executor or LocalExecutor()
        self.judge = Judge(
            config.judge, config.metric, max_seconds=config.time_budget + config.allowance
        )
        self._on_event = on_event or (lambda event: None)
        self._say = on_message or (lambda text: None)
        self._inflight: dict[int, _InFlight] = {}  # slot -> experiment
        self._requeue: list[ExperimentRow] = []  # pending experiments to run again (resume)
        self._stop = ""
        self._protected: dict[str, str] | None = None
        self._protected_data: dict[str, str] = {}
        self._setup_runner = StepRunner()
        self._warned_unknown_cost = False
        self._interrupts = 0
        self._started = time.monotonic()
        self.session: SessionRow

    # --- the session --------------------------------------------------------------------

    def run(self) -> SessionSummary:
        """Run the session to its end; the ledger is up to date whatever happens."""
        lock = SessionLock(self.config.root / STATE_DIR, self.options.tag)
        lock.acquire()
        try:
            self._check_agent()  # before anything is created: a typo costs no session
            self.session = self._open_session()
        except BaseException:
            lock.release()
            raise
        previous = self._install_sigint()
        try:
            if not self.session.setup_done and self.options.run_setup:
                self._setup()
            if not self._stop:
                self._protect_data()
            if not self._stop and self._baseline() is None and not self._requeue_has_baseline():
                self._run_baseline()
            self._loop()
        except BaseException as exc:
            self._stop = self._stop or f"error: {exc}"
            raise
        finally:
            self._restore_sigint(previous)
            try:
                self._shutdown()
            finally:
                lock.release()
        return self.summary()

    def _open_session(self) -> SessionRow:
        ws, opts = self.workspace, self.options
        if opts.resume:
            ws.resume()
            session = self.ledger.session(opts.tag)
            config = {
                **session.config,
                "agent_flags": dict(opts.agent_flags),
            }  # a later resume's defaults
            self.ledger.update_session(
                session, status="running", stop_reason="", agent=self._agent_name(), config=config
            )
            self.session = session
            self._repair()
            return self.ledger.session(opts.tag)
        if self.ledger.has_session(opts.tag):
            raise WorkspaceError(
                f"tag {opts.tag!r} is already in the ledger; pass --resume or pick another tag"
            )
        base = ws.start()
        return self.ledger.create_session(
            opts.tag, ws.branch, base, getattr(self.agent, "name", type(self.agent).__name__),
            self.config.metric.name, self.config.metric.direction,
            {"seed": opts.seed, "gpu_price": self._gpu_price(), "agent_flags": dict(opts.agent_flags)},
        )  # fmt: skip

    def _repair(self) -> None:
        """Make git match the ledger after a crash of the orchestrator."""
        for pgid in kill_orphans(self._log_dir()):
            self._say(
                f"resume: killed process group {pgid} left running by the previous orchestrator"
            )
        ws, rows = self.workspace, self.ledger.experiments(self.session)
        for row in rows:
            if row.verdict != PENDING:
                continue
            if row.commit and ws.exists(row.commit):
                self._requeue.append(row)
            else:
                self.ledger.finish_experiment(self.session, row.id, Verdict.INTERRUPTED, None,
                                              "interrupted; its commit is gone", {}, 0.0)  # fmt: skip
        refs = ws.discarded_refs()
        for row in rows:
            if (
                row.verdict not in (PENDING, Verdict.KEEP, Verdict.BASELINE)
                and row.commit
                and row.id not in refs
            ):
                ws.keep_discarded(row.id, row.commit)
        best, head = best_row(rows), ws.branch_head()
        judged = {r.commit for r in rows if r.verdict in (Verdict.KEEP, Verdict.BASELINE)}
        if best is not None and head != best.commit:
            if head is None or (head not in judged and not ws.is_ancestor(head, best.commit)):
                raise WorkspaceError(
                    f"branch {ws.branch} is at {(head or '?')[:10]} but the ledger's best is "
                    f"experiment {best.id} ({best.commit[:10]}); it was moved by hand. Reset it with "
                    f"`git update-ref refs/heads/{ws.branch} {best.commit}` and resume again"
                )
            ws.move_branch(best.commit)
            self._say(
                f"resume: moved {ws.branch} to experiment {best.id} ({best.commit[:10]}), recorded as kept"
            )

    def _check_agent(self) -> None:
        """Let an agent validate its options against the code before setup and baseline run."""
        check = getattr(self.agent, "check", None)
        if callable(check):
            ws = self.workspace
            ws.ensure_excluded()
            head = ws.branch_head() if self.options.resume else None
            ws.checkout(0, head or ws.head())
            check(ws.read_files(0, self.config.editable))

    def _setup(self) -> None:
        if self.config.setup.strip():
            self._say(f"setup: {self.config.setup.strip()}")
            run_setup(
                self.config, self._log_dir() / "setup.log", self._setup_runner, self._task_env()
            )
        if not self._stop:  # a setup cut short by Ctrl-C is not done
            self.ledger.update_session(self.session, setup_done=1)

    def _protect_data(self) -> None:
        """Hash the task's protected data; on resume it must still match the session's record."""
        recorded = dict(self.session.config.get("protected_data", {}))
        current = data_hashes(self.config)
        if recorded and recorded != current:
            changed = sorted(
                k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k)
            )
            raise AutoresearchError(
                f"protected data changed since the session started: {', '.join(changed)}; "
                "restore it (autoresearch prepare) or start a new session"
            )
        if not recorded and current:
            self.ledger.update_session(
                self.session, config={**self.session.config, "protected_data": current}
            )
            self.session = self.ledger.session(self.options.tag)
        self._protected_data = current

    def _task_env(self) -> dict[str, str]:
        return {
            "AUTORESEARCH_TASK_DIR": str(self.config.root),
            "AUTORESEARCH_TAG": self.options.tag,
        }

    def _log_dir(self) -> Path:
        return self.config.root / STATE_DIR / "logs" / self.options.tag

    def _out_dir(self, job_name: str) -> Path:
        return self.config.root / STATE_DIR / "runs" / self.options.tag / job_name

    # --- baseline -----------------------------------------------------------------------

    def _baseline(self) -> ExperimentRow | None:
        rows = self.ledger.experiments(self.session)
        return next((r for r in rows if r.verdict == Verdict.BASELINE), None)

    def _requeue_has_baseline(self) -> bool:
        return any(r.agent == "baseline" for r in self._requeue)

    def _run_baseline(self) -> None:
        head = self.workspace.branch_head() or self.session.base_commit
        exp_id = self.ledger.next_experiment_id(self.session)
        record = ProposalRecord(agent="baseline", description="baseline")
        self.ledger.begin_experiment(self.session, exp_id, head, head, record)
        self._say(f"baseline: {self.config.judge.baseline_runs} run(s) of {head[:10]}")
        self._launch(0, exp_id, head, baseline=True)
        self._drain()
        if self._baseline() is None and not self._stop:
            row = self.ledger.experiment(self.session, exp_id)
            self._stop = (
                f"the baseline failed ({row.verdict}: {row.reason}); fix the task, then run again"
            )

    # --- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            while not self._stop and len(self._inflight) < self.executor.slots():
                if not self._fill(self._free_slot()):
                    break
            if not self._inflight:
                break
            self._collect_some(timeout=0.5)

    def _drain(self) -> None:
        while self._inflight:
            self._collect_some(timeout=0.5)

    def _free_slot(self) -> int:
        return next(s for s in range(self.executor.slots()) if s not in self._inflight)

    def _fill(self, slot: int) -> bool:
        """Start one experiment on ``slot``; False when nothing more will start now."""
        if self._requeue:
            row = self._requeue.pop(0)
            self.ledger.clear_runs(self.session, row.id)
            self._say(f"resume: running experiment {row.id} again ({row.description})")
            self._launch(slot, row.id, row.commit, baseline=row.agent == "baseline")
            return True
        if (
            best_row(self.ledger.experiments(self.session)) is None
        ):  # a re-run baseline is in flight
            if not self._inflight:
                self._stop = "the baseline failed; fix the task, then run again"
            return False
        reason = self._stop_reason()
        if reason:
            self._stop = self._stop or reason
        if self._stop:
            return False
        self._propose_and_launch(slot)
        return not self._stop

    def _stop_reason(self) -> str:
        rows = self.ledger.experiments(self.session)
        opts = self.options
        done = [r for r in rows if r.agent != "baseline"]
        if opts.max_experiments is not None and len(done) >= opts.max_experiments:
            return f"reached --max-experiments {opts.max_experiments}"
        if opts.max_hours is not None and time.monotonic() - self._started >= opts.max_hours * 3600:
            return f"reached --max-hours {opts.max_hours:g}"
        failures = _trailing_failures(rows)
        if failures >= opts.max_failures:
            last = rows[-1] if rows else None
            why = f" (last: {last.verdict}: {last.reason})" if last else ""
            return f"{failures} crashes/invalid experiments in a row{why}"
        if opts.max_cost is not None:
            if any(r.cost_usd is None for r in rows) and not self._warned_unknown_cost:
                self._warned_unknown_cost = True
                self._say(
                    "warning: some proposals have no known price; --max-cost counts them as $0"
                )
            spent = self.spent(rows)
            per = spent / max(1, len(done))
            if spent + per > opts.max_cost:
                return f"--max-cost ${opts.max_cost:.2f}: spent ${spent:.2f}, the next experiment would pass it"
        return ""

    def spent(self, rows: list[ExperimentRow] | None = None) -> float:
        """Dollars so far: agent tokens plus compute at the GPU price."""
        rows = self.ledger.experiments(self.session) if rows is None else rows
        tokens = sum(r.cost_usd or 0.0 for r in rows)
        return tokens + compute_cost(sum(r.compute_seconds for r in rows), self._gpu_price())

    def _gpu_price(self) -> float:
        price = self.options.gpu_price
        return self.config.cost.gpu_per_hour if price is None else price

    def _propose_and_launch(self, slot: int) -> None:
        best = self._best()
        workdir = self.workspace.checkout(slot, best.commit)
        context = self._context(slot, best, workdir)
        exp_id = context.experiment_id
        try:
            proposal = self.agent.propose(context)
        except AgentExhausted as exc:
            self._stop = f"the agent has nothing more to propose: {exc}"
            return
        except ProposalError as exc:
            self._record_invalid(exp_id, best.commit, Proposal("(no valid proposal)", usage=exc.usage or Usage(),
                                                                meta=exc.meta), str(exc))  # fmt: skip
            return
        except AgentError as exc:
            self._stop = f"the agent failed: {exc}"
            return
        self._apply_and_launch(slot, exp_id, best.commit, proposal)

    def _apply_and_launch(self, slot: int, exp_id: int, parent: str, proposal: Proposal) -> None:
        ws = self.workspace
        if getattr(self.agent, "uses_workdir", False):
            ws.checkout(slot, parent)  # nothing the agent left there (ignored files too) may run
        message = f"autoresearch {self.options.tag} #{exp_id}: {_one_line(proposal.description)}"
        try:
            ws.apply(slot, proposal)
            commit, diff = ws.commit(slot, message)
        except (EditRejected, ProposalError) as exc:
            self._record_invalid(exp_id, parent, proposal, str(exc))
            ws.checkout(slot, parent)
            return
        record = _record(self._agent_name(), proposal, diff)
        self.ledger.begin_experiment(self.session, exp_id, parent, commit, record)
        self._launch(slot, exp_id, commit, baseline=False, checked_out=True)

    def _record_invalid(self, exp_id: int, parent: str, proposal: Proposal, reason: str) -> None:
        record = _record(self._agent_name(), proposal, "")
        self.ledger.begin_experiment(
            self.session, exp_id, parent, "", record, verdict=Verdict.INVALID, reason=reason
        )
        self._say(f"#{exp_id} invalid: {reason}")
        self._emit(exp_id)

    def _agent_name(self) -> str:
        return str(getattr(self.agent, "name", type(self.agent).__name__))

    def _launch(
        self, slot: int, exp_id: int, commit: str, *, baseline: bool, checked_out: bool = False
    ) -> None:
        workdir = (
            self.workspace.slot_dir(slot) if checked_out else self.workspace.checkout(slot, commit)
        )
        if self._protected is None:  # protected files are identical in every commit of the session
            self._protected = self.workspace.protected_hashes(slot)
        flight = _InFlight(slot, exp_id, commit, baseline, workdir, self._protected)
        self._inflight[slot] = flight
        self._submit(flight)

    def _submit(self, flight: _InFlight) -> None:
        cfg, index = self.config, len(flight.runs)
        name = f"{flight.experiment_id:04d}-{index}"
        job = Job(
            experiment_id=flight.experiment_id, run_index=index, commit=flight.commit, workdir=flight.workdir,
            run=cfg.run, metric=cfg.metric, log_dir=self._log_dir(), out_dir=self._out_dir(name),
            check=cfg.check, evaluate=cfg.evaluate, time_budget=cfg.time_budget, timeout=cfg.timeout,
            seed=experiment_seed(self.options.seed, flight.experiment_id, index), env=self._task_env(),
            slot=flight.slot, protected=flight.protected, protected_data=self._protected_data,
            reset_root=self.workspace.slot_root(flight.slot), reset_keep=self.workspace.linked_paths(),
        )  # fmt: skip
        flight.future = self.executor.submit(job)

    # --- collecting results ---------------------------------------------------------------

    def _collect_some(self, timeout: float) -> None:
        futures = {f.future: f for f in self._inflight.values() if f.future is not None}
        done, _ = wait(list(futures), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            self._collect(futures[future])

    def _collect(self, flight: _InFlight) -> None:
        assert flight.future is not None
        result = _result_of(flight)
        flight.runs.append(result)
        self.ledger.add_run(self.session, _run_row(result))
        if result.status is RunStatus.INVALID:
            self.workspace.restore(flight.slot, list(flight.protected))
            if data_hashes(self.config) != self._protected_data:
                self._stop = (
                    f"experiment {flight.experiment_id} changed protected data ({result.reason}); "
                    "restore it with `autoresearch prepare`, then --resume"
                )
        decision = self._decide(flight)
        if decision.verdict is None:
            total = len(flight.runs) + decision.more_runs
            self._say(
                f"#{flight.experiment_id}: {decision.reason} (run {len(flight.runs) + 1} of {total})"
            )
            self._submit(flight)
            return
        del self._inflight[flight.slot]
        self._finish(flight, decision)

    def _decide(self, flight: _InFlight) -> Decision:
        if not flight.baseline:
            best = self._best()
            noise = self.ledger.session(self.options.tag).noise
            return self.judge.decide(flight.runs, best.metric, noise)
        decision = self.judge.decide(flight.runs[-1:], None)
        if decision.verdict is not Verdict.KEEP:
            return decision
        if len(flight.runs) < self.config.judge.baseline_runs:
            more = self.config.judge.baseline_runs - len(flight.runs)
            return Decision(None, reason="baseline", more_runs=more)
        values = [r.metric for r in flight.runs if r.metric is not None]
        noise = noise_of(values)
        self.ledger.update_session(self.session, noise=noise)
        return Decision(Verdict.BASELINE, sum(values) / len(values), _noise_text(noise))

    def _finish(self, flight: _InFlight, decision: Decision) -> None:
        assert decision.verdict is not None
        seconds = sum(s.seconds for r in flight.runs for s in r.steps)
        self.ledger.finish_experiment(self.session, flight.experiment_id, decision.verdict, decision.metric,
                                      decision.reason, _mean_metrics(flight.runs), seconds)  # fmt: skip
        if decision.verdict in (Verdict.KEEP, Verdict.BASELINE):
            previous = self.workspace.branch_head()
            if decision.verdict is Verdict.KEEP:  # reachable even if a parallel keep supersedes it
                self.workspace.keep_kept(flight.experiment_id, flight.commit)
            self.workspace.move_branch(flight.commit)
            self._drop_outputs(previous)
        else:
            self.workspace.keep_discarded(flight.experiment_id, flight.commit)
            self._drop_outputs_of(flight.experiment_id)
        self._emit(flight.experiment_id)

    def _drop_outputs(self, commit: str | None) -> None:
        """Delete the run outputs (checkpoints) of the keep at ``commit``, now superseded."""
        rows = self.ledger.experiments(self.session)
        for row in rows:
            if row.commit == commit and row.verdict == Verdict.KEEP:
                self._drop_outputs_of(row.id)

    def _drop_outputs_of(self, exp_id: int) -> None:
        """Run outputs are kept for the best experiment and the baseline only."""
        folder = self.config.root / STATE_DIR / "runs" / self.options.tag
        for out in folder.glob(f"{exp_id:04d}-*") if folder.is_dir() else []:
            shutil.rmtree(out, ignore_errors=True)

    def _emit(self, exp_id: int) -> None:
        row = self.ledger.experiment(self.session, exp_id)
        baseline = self._baseline()
        best = best_row(self.ledger.experiments(self.session))
        self._on_event(
            ExperimentEvent(
                row, best.metric if best else None, baseline.metric if baseline else None
            )
        )

    # --- context for the agent ----------------------------------------------------------------

    def _best(self) -> ExperimentRow:
        best = best_row(self.ledger.experiments(self.session))
        if best is None:
            raise AutoresearchError("no baseline recorded; cannot propose experiments")
        return best

    def _context(self, slot: int, best: ExperimentRow, workdir: Path) -> Context:
        rows = self.ledger.experiments(self.session)
        baseline = next((r for r in rows if r.verdict == Verdict.BASELINE), None)
        exp_id = self.ledger.next_experiment_id(self.session)
        return Context(
            instructions=_read(self.config.root / self.config.instructions),
            editable=self.workspace.read_files(slot, self.config.editable),
            readonly=self.workspace.read_files(slot, self.config.context),
            history=tuple(_history_row(r) for r in rows),
            metric_name=self.config.metric.name, direction=self.config.metric.direction,
            best_metric=best.metric, baseline_metric=baseline.metric if baseline else None,
            noise=self.ledger.session(self.options.tag).noise,
            last_failure=self._last_failure(rows),
            last_rejection=rows[-1].reason if rows and rows[-1].verdict == Verdict.INVALID else "",
            parent=best.commit, workdir=workdir, experiment_id=exp_id, tag=self.options.tag,
            seed=experiment_seed(self.options.seed, exp_id, 0),
            editable_globs=self.config.editable, time_budget=self.config.time_budget,
        )  # fmt: skip

    def _last_failure(self, rows: list[ExperimentRow]) -> str:
        failed = [r for r in rows if r.verdict in (Verdict.CRASH, Verdict.TIMEOUT)]
        if not failed:
            return ""
        runs = self.ledger.runs(self.session, failed[-1].id)
        return f"experiment {failed[-1].id} ({failed[-1].reason}):\n" + (
            runs[-1].log_tail if runs else ""
        )

    # --- signals and shutdown -------------------------------------------------------------------

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self._stop = "interrupted (Ctrl-C)"
            self._say(
                "Ctrl-C: finishing the current experiment, then stopping (Ctrl-C again kills it)"
            )
            return
        self._say("Ctrl-C again: killing the running step")
        self._setup_runner.kill_all()
        kill = getattr(self.executor, "kill_all", None)
        if callable(kill):
            kill()

    def _shutdown(self) -> None:
        try:
            self._drain()
        finally:
            if self._own_executor:
                self.executor.close()
            if not self._inflight:
                self.workspace.remove_worktrees()
            status = "finished" if not self._stop.startswith("error") else "stopped"
            self.ledger.update_session(self.session, status=status, stop_reason=self._stop)

    def summary(self) -> SessionSummary:
        rows = self.ledger.experiments(self.session)
        best, baseline = (
            best_row(rows),
            next((r for r in rows if r.verdict == Verdict.BASELINE), None),
        )
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.verdict] = counts.get(row.verdict, 0) + 1
        return SessionSummary(
            self.options.tag, self.workspace.branch, best.metric if best else None, best.commit if best else "",
            baseline.metric if baseline else None, counts, self._stop, self.spent(rows),
        )  # fmt: skip


# --- small helpers ---------------------------------------------------------------------------


def _trailing_failures(rows: list[ExperimentRow]) -> int:
    count = 0
    for row in sorted(
        (r for r in rows if r.verdict != PENDING),
        key=lambda r: (r.finished or 0.0, r.id),
        reverse=True,
    ):
        if not Verdict(row.verdict).failed:
            break
        count += 1
    return count


def _result_of(flight: _InFlight) -> RunResult:
    assert flight.future is not None
    try:
        return flight.future.result()
    except (ExecutorError, OSError) as exc:
        return RunResult(
            flight.experiment_id, len(flight.runs), 0, RunStatus.CRASH, reason=f"executor: {exc}"
        )


def _run_row(result: RunResult) -> RunRow:
    return RunRow(result.experiment_id, result.run_index, result.seed, result.status, result.metric,
                  dict(result.metrics), result.seconds, result.reason,
                  str(result.log_path or ""), result.log_tail)  # fmt: skip


def _mean_metrics(runs: list[RunResult]) -> dict[str, float]:
    keys: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run.metrics.items():
            keys.setdefault(key, []).append(value)
    return {k: sum(v) / len(v) for k, v in keys.items() if all(math.isfinite(x) for x in v)}


def _noise_text(noise: float | None) -> str:
    return (
        "noise unknown (one baseline run)"
        if noise is None
        else f"noise (stdev between runs) {noise:.4g}"
    )


def _record(agent: str, proposal: Proposal, diff: str) -> ProposalRecord:
    usage = proposal.usage
    return ProposalRecord(
        agent=agent, description=_one_line(proposal.description), rationale=proposal.rationale, diff=diff,
        input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens, output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd, meta=proposal.meta,
    )  # fmt: skip


def _history_row(row: ExperimentRow) -> HistoryRow:
    return HistoryRow(
        row.id,
        row.verdict,
        row.metric,
        row.description,
        row.commit,
        row.reason,
        row.agent,
        row.meta,
    )


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return (line[:197] + "...") if len(line) > 200 else (line or "(no description)")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


__all__ = ["Engine", "ExperimentEvent", "SessionOptions", "SessionSummary", "experiment_seed"]
