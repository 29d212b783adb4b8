"""The engine: one session, from setup and baseline to the last experiment.

``Engine`` is the conductor: it holds the session's state and hands the work to the
modules beside it: ``_loop`` (the scheduler: run slots and the agent's proposal queue),
``_experiment`` (one experiment as functions), ``_resume`` (repair after a crash) and
``_stop`` (stop rules and signals). Backends come in as arguments; nothing is global.
The engine never parses output, talks to git or formats prompts itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autoresearch.agents._base import Agent
from autoresearch.config import CONFIG_NAME, STATE_DIR, TaskConfig
from autoresearch.engine._experiment import Flight, context_for, experiment_seed, launch
from autoresearch.engine._loop import Proposer, drain, run_loop
from autoresearch.engine._resume import ResumeDefaults, repair, resume_defaults
from autoresearch.engine._setup import data_hashes, run_setup
from autoresearch.engine._stop import (
    CLOCK_EVERY,
    Clock,
    Signals,
    StopRules,
    carried_over,
    stop_reason,
)
from autoresearch.engine._types import ExperimentEvent, RunStarted, SessionOptions, SessionSummary
from autoresearch.errors import AutoresearchError, LedgerError, WorkspaceError
from autoresearch.executors._base import Executor, Job
from autoresearch.executors.local import LocalExecutor
from autoresearch.executors.sandbox import Sandbox, can_confine, device_copies
from autoresearch.history import History
from autoresearch.judge import Judge
from autoresearch.ledger import Ledger, SessionRow
from autoresearch.lock import SessionLock, running_beside
from autoresearch.process import StepRunner
from autoresearch.records import Experiment, Verdict
from autoresearch.workspace import Workspace


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
        on_run: Callable[[RunStarted], None] | None = None,
    ) -> None:
        self.config, self.agent, self.options = config, agent, options
        self.workspace = Workspace(config, options.tag)
        self.ledger = ledger or Ledger(config.root / STATE_DIR / "ledger.db")
        self._own_executor = executor is None
        self.executor: Executor = executor or LocalExecutor(
            sandbox=Sandbox.for_task(config), max_log_mb=config.max_log_mb
        )
        self.judge = Judge(config.judge, config.metric, budget=config.time_budget, allowance=config.allowance,
                           budget_steps=config.budget_steps, allowance_share=config.budget_allowance_share)  # fmt: skip
        self._on_event = on_event or (lambda event: None)
        self._on_run = on_run or (lambda event: None)
        self.say: Callable[[str], None] = on_message or (lambda text: None)
        self.flights: dict[int, Flight] = {}  # slot -> experiment in flight
        self.proposer: Proposer | None = None  # the agent's worker, while the session runs
        self.requeue: list[Experiment] = []  # pending experiments to run again (resume)
        self.protected: dict[str, str] | None = None
        self.protected_data: dict[str, str] = {}
        self.note = ""  # for the agent's next context
        self.history = History(())
        self.rules = StopRules()
        self.clock = Clock()
        self.since = time.time()  # this invocation's start: the failure streak counts from here
        self._neighbours: set[str] = set()  # other sessions seen running in this task folder
        self._stop, self._clean_stop, self._killed = "", False, False
        self._setup_runner = StepRunner()
        self._signals = Signals(self._on_first_signal, self.kill)
        self._next_id = 0
        self._clock_saved = time.monotonic()
        self._git_print: dict[str, str] = {}
        self.session: SessionRow

    # --- the session --------------------------------------------------------------------

    def run(self) -> SessionSummary:
        """Run the session to its end; the ledger is up to date whatever happens."""
        lock = self.lock = SessionLock(self.config.root / STATE_DIR, self.options.tag)
        lock.acquire()
        try:
            space = self._check_agent()  # before anything is created: a typo costs no session
            self.session = self._open_session()
        except BaseException:
            try:
                self.workspace.remove_worktrees()  # the checkout the agent's check read
            finally:
                lock.release()
            raise
        if space:
            self.say(space)
        self._signals.install()
        lookahead = self.options.lookahead
        proposer = self.proposer = Proposer(self, self.executor.slots() if lookahead is None else lookahead)
        try:
            self._prepare()
            run_loop(self, proposer)
        except BaseException as exc:
            self._stop = self._stop or f"error: {exc}"
            raise
        finally:
            try:  # the handlers stay through the shutdown: a signal then must not cut it short
                self._shutdown(proposer)
            finally:
                self._signals.restore()
                lock.release()
        return self.summary()

    def _prepare(self) -> None:
        if not self.session.setup_done and self.options.run_setup:
            self._setup()
        placement = getattr(self.executor, "placement", "")
        if placement:
            self.say(placement)
        warning = getattr(self.executor, "sandbox", None)
        if isinstance(warning, Sandbox) and warning.warning:
            self.say(f"warning: {warning.warning}")
        if isinstance(warning, Sandbox) and warning.enabled and os.geteuid() == 0:
            with device_copies(self.config.root / STATE_DIR) as copies:
                if not copies:
                    self.say("warning: steps run as root and no file system here allows device nodes, "
                             "so they get the host's /dev/null and the rest, whose mode and times a "
                             "step can change (chmod 000 breaks every later step)")  # fmt: skip
        if self.agent.runs_code and not can_confine():
            self.say(f"warning: bubblewrap cannot confine the {self.agent.name} agent here: it "
                     "can write wherever you can (the runs' checkouts, the Python environment, "
                     "git's config), and a process it starts that leaves its session and "
                     "environment outlives its turn")  # fmt: skip
        for pattern, deeper in self.workspace.shallow_globs():
            more = f" and {len(deeper) - 1} more" if len(deeper) > 1 else ""
            self.say(f"note: editable {pattern!r} matches files in the task folder only, not {deeper[0]}{more}; "
                     f"write '**/{pattern}' to let the agent edit those too")  # fmt: skip
        loose = self.workspace.untracked([CONFIG_NAME, self.config.instructions])
        if loose:
            self.say(f"warning: {' and '.join(loose)} {'is' if len(loose) == 1 else 'are'} not committed: the "
                     "session runs them as they are on disk, and the branch will not record the task it "
                     "ran; commit them")  # fmt: skip
        held = self.workspace.in_history(self.config.holdout)
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            self.say(f"warning: holdout files are in git's history ({shown}): no step can read them, "
                     "but an agent that reads git (claude-code, codex, aider, command) can; keep "
                     "the holdout out of git and its history")  # fmt: skip
        self._git_print = self.workspace.fingerprint()
        if not self._stop:
            self._protect_data()
        if self.config.judge.baseline_runs < 2 and self.history.noise().sigma is None:
            self.say("warning: the noise is unknown (baseline_runs < 2): each candidate that looks "
                     "better runs twice before it can be kept; set [judge] baseline_runs = 5")  # fmt: skip
        self.check_constraints()  # a resumed session's baseline against today's autoresearch.toml
        if not self._stop and self.history.best is None and not self._baseline_queued():
            self._start_baseline()

    def _open_session(self) -> SessionRow:
        opts, ledger = self.options, self.ledger
        existing = ledger.session(opts.tag) if ledger.has_session(opts.tag) else None
        if existing is None:
            if opts.resume:
                self.say(f"resume: no session {opts.tag!r} yet; starting it")
            base = self.workspace.adopt() if opts.resume else self.workspace.start()
            session = ledger.create_session(opts.tag, self.workspace.branch, base, self.agent.name,
                                            self.config.metric.name, self.config.metric.direction,
                                            self._recorded_config({}))  # fmt: skip
            return self._adopt(session)
        self.history = History(ledger.experiments(existing), gpu_price=self._gpu_price())
        if opts.resume:
            return self._resume(existing)
        if self.history.best is None and not self.history.pending:
            return self._restart(existing)
        raise WorkspaceError(
            f"tag {opts.tag!r} is already in the ledger; pass --resume or pick another tag"
        )

    def _recorded_config(self, previous: Mapping[str, Any]) -> dict[str, Any]:
        rules = carried_over(self.options.rules(), previous.get("stop_rules", {}))
        self.rules = rules
        return {**previous, "seed": self.options.seed, "gpu_price": self._gpu_price(),
                "agent_flags": dict(self.options.agent_flags), "run_flags": dict(self.options.run_flags),
                "stop_rules": rules.recorded()}  # fmt: skip

    def _adopt(self, session: SessionRow) -> SessionRow:
        self.session = session
        self.clock = Clock(float(session.config.get("hours_used", 0.0)))  # before any row is recorded
        self.history = History(self.ledger.experiments(session), gpu_price=self._gpu_price())
        self._next_id = max((r.id for r in self.history.rows), default=-1) + 1
        return session

    def _resume(self, session: SessionRow) -> SessionRow:
        metric = self.config.metric
        if self.history.best is not None and (session.metric, session.direction) != (metric.name, metric.direction):
            raise WorkspaceError(
                f"session {session.tag!r} measures {session.metric} ({session.direction}), but "
                f"autoresearch.toml now says {metric.name} ({metric.direction}): its results "
                "are not comparable; put [metric] back, or start a session with a new tag"
            )
        if self.history.rows:
            self.workspace.resume()
        else:  # killed between creating the session and its first experiment
            self.workspace.adopt()
        self._adopt(session)
        repair(self)  # first: a refusal (a branch moved by hand) leaves the session as it was
        self.session = self.ledger.update_session(
            self.session, status="running", stop_reason="", agent=self.agent.name,
            config=self._recorded_config(session.config), metric=metric.name, direction=metric.direction,
        )  # fmt: skip
        return self.session

    def _restart(self, session: SessionRow) -> SessionRow:
        """A session whose baseline failed runs again under its tag, from today's HEAD."""
        base = self.workspace.restart()
        self.say(f"session {session.tag!r}: its baseline failed before; running it again at {base[:10]}")
        session = self.ledger.update_session(
            session, status="running", stop_reason="", agent=self.agent.name, base_commit=base,
            setup_done=0, config=self._recorded_config(session.config),
            metric=self.config.metric.name, direction=self.config.metric.direction,  # fixed, maybe
        )  # fmt: skip
        return self._adopt(session)

    def _check_agent(self) -> str:
        """Let an agent validate its options against the code before setup and baseline run;
        what it has to say (the tuner's search space), said once the session is open."""
        ws = self.workspace
        ws.ensure_excluded()
        head = ws.branch_head() if self.options.resume else None
        ws.checkout(0, head or ws.head())
        return self.agent.check(ws.editable_files(0))

    def _setup(self) -> None:
        if self.config.setup.strip():
            self.say(f"setup: {self.config.setup.strip()}")
            run_setup(self.config, self.log_dir / "setup.log", self._setup_runner, self.task_env())
        if not self._stop:  # a setup cut short by a signal is not done
            self.session = self.ledger.update_session(self.session, setup_done=1)

    def _protect_data(self) -> None:
        """Hash the task's protected data; on resume it must still match the session's record."""
        recorded = dict(self.session.config.get("protected_data", {}))
        current = data_hashes(self.config)
        if recorded and recorded != current:
            changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
            raise AutoresearchError(
                f"protected data changed since the session started: {', '.join(changed)}; "
                "restore it (autoresearch prepare) or start a new session"
            )
        if not recorded and current:
            config = {**self.session.config, "protected_data": current}
            self.session = self.ledger.update_session(self.session, config=config)
        self.protected_data = current

    # --- the baseline ---------------------------------------------------------------------

    def _baseline_queued(self) -> bool:
        return any(r.agent == "baseline" for r in self.requeue)

    def _start_baseline(self) -> None:
        head = self.workspace.branch_head() or self.session.base_commit
        row = Experiment(self.reserve_id(), Verdict.PENDING, None, "baseline", commit=head,
                         agent="baseline", parent=head, tree=self.workspace.tree(head))  # fmt: skip
        self.record(self.ledger.begin(self.session, row))
        self.say(f"baseline: {self.config.judge.baseline_runs} run(s) of {head[:10]}")
        launch(self, 0, row.id, head, baseline=True)

    def baseline_failure(self) -> str:
        failed = [r for r in self.history.rows if r.agent == "baseline" and r.verdict.failed]
        why = f" ({failed[-1].verdict}: {failed[-1].reason})" if failed else ""
        return f"the baseline failed{why}; fix the task, commit, then run again with the same tag"

    # --- what the modules call ---------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.config.root / STATE_DIR / "logs" / self.options.tag

    @property
    def runs_dir(self) -> Path:
        """Where runs keep their outputs (AUTORESEARCH_OUT), one folder each."""
        return self.config.root / STATE_DIR / "runs" / self.options.tag

    def out_dir(self, job_name: str) -> Path:
        return self.runs_dir / job_name

    def task_env(self) -> dict[str, str]:
        return {"AUTORESEARCH_TASK_DIR": str(self.config.root), "AUTORESEARCH_TAG": self.options.tag}

    def reserve_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def record(self, row: Experiment) -> None:
        """A row was written: the history everyone reads is computed again, once."""
        self.history = History(self.ledger.experiments(self.session), gpu_price=self._gpu_price())
        self.save_clock(force=True)

    def save_clock(self, *, force: bool = False) -> None:
        """Record the hours used so far (with each experiment, and every ``CLOCK_EVERY`` s):
        an orchestrator killed outright loses at most that much of ``--max-hours``."""
        now = time.monotonic()
        if not force and now - self._clock_saved < CLOCK_EVERY:
            return
        self._clock_saved = now
        config = {**self.session.config, "hours_used": self.clock.hours()}
        self.session = self.ledger.update_session(self.session, config=config)

    def emit(self, exp_id: int) -> None:
        history = self.history
        row = self.ledger.experiment(self.session, exp_id)
        best, base = history.best, history.baseline
        parent = next((r.metric for r in history.rows if r.verdict.judged and r.commit == row.parent), None)
        self._on_event(ExperimentEvent(row, best.metric if best else None, base.metric if base else None,
                                       parent, done=len(history.done), kept=history.counts[Verdict.KEEP],
                                       spend=history.spend))  # fmt: skip

    def observe_run(self, flight: Flight, job: Job) -> None:
        self._note_neighbours()
        row = self.ledger.experiment(self.session, flight.experiment_id)
        self._on_run(RunStarted(flight.slot, flight.experiment_id, job.run_index,
                                job.log_dir / f"{job.name}.log", job.time_budget, row.description))  # fmt: skip

    def _note_neighbours(self) -> None:
        """Say once of each other session running in this task folder: runs on one machine
        share its CPUs, whatever the slots of each (a comment-only change was kept at -27%)."""
        for tag in running_beside(self.config.root / STATE_DIR, self.options.tag):
            if tag not in self._neighbours:
                self._neighbours.add(tag)
                self.say(f"warning: session {tag!r} is running in this task folder too: its runs share "
                         "this machine's CPUs with this session's, so both are timed under the other's "
                         "load (a baseline timed so makes every later run look faster); run one at a "
                         "time, or `autoresearch remeasure` the best against the baseline after")  # fmt: skip

    def relaunch(self, slot: int, row: Experiment) -> None:
        self.ledger.clear_runs(self.session, row.id)
        self.say(f"resume: running experiment {row.id} again ({row.description})")
        launch(self, slot, row.id, row.commit, baseline=row.agent == "baseline")

    def after_tampering(self, flight: Flight, reason: str) -> None:
        self.workspace.restore(flight.slot, list(self.protected or {}))
        if data_hashes(self.config) != self.protected_data:
            self.stop(f"experiment {flight.experiment_id} changed protected data ({reason}); "
                      "restore it with `autoresearch prepare`, then --resume")  # fmt: skip

    def git_reached(self) -> list[str]:
        """What a run changed of git (config, hooks, the session branch) or of our session lock."""
        now = self.workspace.fingerprint()
        changed = [k for k in set(now) | set(self._git_print) if now.get(k) != self._git_print.get(k)]
        return sorted(changed) + ([] if self.lock.intact() else [f"the session lock {self.lock.path}"])

    def moved_branch(self) -> None:
        """The engine moved the branch itself: that is the state to compare runs against."""
        self._git_print = self.workspace.fingerprint()

    def take_note(self) -> str:
        note, self.note = self.note, ""
        return note

    # --- stopping ------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return bool(self._stop)

    @property
    def killed(self) -> bool:
        return self._killed

    def check_constraints(self) -> None:
        """Stop when a ``[metric] constraints`` key is not among what the baseline's runs (or a
        keep's, on a resume) reported: a typo (``peak_rs_mb``) would leave the guard unapplied
        without a word."""
        judged = [r for r in self.history.rows if r.verdict.judged and r.metric is not None]
        if not judged:
            return
        reported = {key for row in judged for key in row.metrics}
        for constraint in self.config.metric.constraints:
            if constraint.key not in reported:
                keys = ", ".join(sorted(reported)) or "nothing besides the metric"
                self.stop(f"error: [metric] constraint {constraint.text!r}: the baseline's runs never reported "
                          f"{constraint.key} (they reported {keys}); fix autoresearch.toml, then --resume")  # fmt: skip
                return

    def stop(self, reason: str, *, clean: bool = False) -> None:
        if not self._stop:
            self._stop, self._clean_stop = reason, clean

    def check_stop_rules(self) -> bool:
        """True (and the session stops) when a stop rule fires on what is recorded."""
        reason = stop_reason(self.rules, self.history, clock=self.clock, spent=self.spent(), since=self.since,
                             ahead=self.cost_ahead() if self.rules.max_cost is not None else 0.0)  # fmt: skip
        if reason:
            self.stop(reason, clean=True)
        return bool(reason)

    def enough_planned(self, planned: int) -> bool:
        """Proposals asked for already make up ``--max-experiments``: ask for no more."""
        cap = self.rules.max_experiments
        return cap is not None and len(self.history.finished) + planned >= cap

    def spent(self) -> float:
        return self.history.spend

    def cost_ahead(self) -> float:
        """The most the next experiment, those in flight and the proposals made or being made
        can still add to the spend, from the most a proposal and a run have cost so far: every
        run a candidate can take (a keep's re-score included) for each, their proposals (paid
        for, recorded only when they start), and one more proposal."""
        compute = self.history.costliest_run * self.judge.most_runs()
        proposal = self.history.costliest_proposal
        queued = list(self.proposer.ready) if self.proposer else []
        asked = int(self.proposer is not None and self.proposer.future is not None)  # being made
        paid = sum(ready.proposal.usage.cost_usd or 0.0 for ready in queued)
        experiments = 1 + len(self.flights) + len(queued) + asked
        return proposal * (1 + asked) + paid + compute * experiments

    def _gpu_price(self) -> float:
        price = self.options.gpu_price
        return self.config.cost.gpu_per_hour if price is None else price

    def _on_first_signal(self, name: str) -> None:
        self.stop(f"interrupted ({name})")
        again = "Ctrl-C" if name == "Ctrl-C" else "a second signal"
        self.say(f"{name}: finishing the current experiment, then stopping ({again} kills it)")
        self.agent.cancel()  # a proposal being made would never run: no waiting for it
        self.executor.cancel_waiting()  # Ray: runs not yet on a node

    def kill(self) -> None:
        """Kill every running step now (a second signal)."""
        self._killed = True
        self.say("killing the running steps")
        self.agent.cancel()
        self._setup_runner.kill_all()
        self.executor.kill_all()

    def _shutdown(self, proposer: Proposer) -> None:
        try:
            drain(self)
            proposer.abandon()
            self._finish_agent()
        finally:
            proposer.close()
            if self._own_executor:
                self.executor.close()
            if not self.flights:
                self.workspace.remove_worktrees()
            self._close_session()

    def _finish_agent(self) -> None:
        """Show the agent the whole history once more (the last verdicts came after its last call)."""
        best = self.history.best
        if best is None or self.killed:
            return
        try:
            self.agent.finish(context_for(self, self._next_id, best.commit, [], last=True))
        except Exception as exc:  # what an agent keeps for itself cannot undo what is recorded
            self.say(f"warning: agent {self.agent.name}: at the end of the session: {exc}")

    def _close_session(self) -> None:
        status = "stopped" if self._stop.startswith("error") else "finished"
        config = {**self.session.config, "hours_used": self.clock.hours()}
        try:
            self.session = self.ledger.update_session(self.session, status=status,
                                                      stop_reason=self._stop, config=config)  # fmt: skip
        except LedgerError as exc:  # the ledger itself is what went wrong: say so, once
            print(f"autoresearch: {exc}", file=sys.stderr)

    def summary(self) -> SessionSummary:
        history = self.history
        best, base = history.best, history.baseline
        return SessionSummary(
            self.options.tag, self.workspace.branch, best.metric if best else None,
            best.commit if best else "", base.metric if base else None,
            {str(k): v for k, v in history.counts.items()}, self._stop, self.spent(),
            self._signals.received,
        )  # fmt: skip


__all__ = [
    "Engine",
    "ExperimentEvent",
    "ResumeDefaults",
    "RunStarted",
    "SessionOptions",
    "SessionSummary",
    "data_hashes",
    "experiment_seed",
    "resume_defaults",
    "run_setup",
]
