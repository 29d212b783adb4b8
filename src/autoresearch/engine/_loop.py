"""The scheduler: run slots and the proposal queue, so the device never waits for the agent.

An agent worker (one thread: agents need not be thread-safe) keeps up to ``lookahead``
proposals ready while runs train (0: it is asked only when a slot is free). The main thread
collects finished runs, judges and records them while the agent thinks, and starts a ready
proposal on every free slot.
The baseline's runs overlap the first proposals, unless the agent runs programs on this
machine (``Agent.runs_code``): those could slow the baseline that every candidate is judged
against.

Stale proposals: a proposal made against best B, when the branch has meanwhile moved to
B', is applied onto B' if its edits apply there (and judged against B'); otherwise it
runs on B and is judged against the current best. The parent used is recorded, and the
agent's next context says which happened.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from autoresearch.engine._experiment import (
    Ready,
    collect,
    context_for,
    record_unrun,
    start_candidate,
)
from autoresearch.errors import AgentCancelled, AgentError, AgentExhausted, ProposalError
from autoresearch.records import Proposal, Usage, Verdict

if TYPE_CHECKING:
    from autoresearch.engine import Engine

POLL = 0.5  # seconds between looks at the stop flag while waiting


class Proposer:
    """The agent worker: one ``propose`` at a time on its own thread, results queued."""

    def __init__(self, engine: Engine, lookahead: int) -> None:
        self.engine, self.lookahead = engine, lookahead  # 0: asked only for a free slot
        self.ready: deque[Ready] = deque()
        self.future: Future[Proposal] | None = None
        self._asked: tuple[int, str] = (0, "")  # experiment id and parent of the call in flight
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoresearch-agent")
        self.exhausted = ""  # why the agent has nothing more to propose

    @property
    def planned(self) -> int:
        """Proposals asked for or ready, not yet recorded."""
        return len(self.ready) + (self.future is not None)

    def top_up(self) -> None:
        """Ask the agent for one more proposal when the queue has room and nothing stops us."""
        eng = self.engine
        if self.future is not None or self.exhausted or len(self.ready) >= max(1, self.lookahead):
            return
        if self.lookahead == 0 and len(eng.flights) >= eng.executor.slots():  # every result first
            return
        if eng.stopping or eng.check_stop_rules() or eng.enough_planned(self.planned):
            return
        if eng.agent.runs_code and eng.history.baseline is None:  # it could slow the baseline down
            return
        parent = eng.history.best.commit if eng.history.best else eng.session.base_commit
        exp_id = eng.reserve_id()
        context = context_for(eng, exp_id, parent, list(self.ready))
        self._asked = (exp_id, parent)
        self.future = self._pool.submit(eng.agent.propose, context)

    def collect(self) -> None:
        """Queue the finished proposal; a failed one is recorded (or stops the session)."""
        if self.future is None or not self.future.done():
            return
        future, self.future = self.future, None
        exp_id, parent = self._asked
        try:
            self.ready.append(Ready(exp_id, parent, future.result()))
        except AgentExhausted as exc:  # what is ready still runs; then the session ends
            self.exhausted = f"the agent has nothing more to propose: {exc}"
        except AgentCancelled as exc:  # a signal: the session is stopping
            cancelled = Proposal("(cancelled)", usage=exc.usage or Usage(), meta=exc.meta)
            record_unrun(self.engine, Ready(exp_id, parent, cancelled), Verdict.INTERRUPTED,
                         f"not run: the session stopped while the agent was proposing ({exc})",
                         parent=parent)  # fmt: skip
        except ProposalError as exc:
            failed = Proposal("(no valid proposal)", usage=exc.usage or Usage(), meta=exc.meta)
            record_unrun(self.engine, Ready(exp_id, parent, failed), Verdict.INVALID, str(exc),
                         parent=parent)  # fmt: skip
        except AgentError as exc:
            self.engine.stop(f"the agent failed: {exc}")

    def abandon(self) -> None:
        """The session stopped: proposals never run are recorded (their tokens were spent)."""
        if self.future is not None and not self.engine.killed and not self.future.cancel():
            wait([self.future])  # a proposal being made is paid for: record it
            self.collect()
        # A paid-for proposal is recorded; a free one is made again on resume, unless a later id
        # is recorded (a resume numbers on from the last id: the ones between would be missing).
        paid = [r.experiment_id for r in self.ready if _paid(r.proposal.usage)]
        last = max([r.id for r in self.engine.history.rows] + paid, default=-1)
        while self.ready:
            ready = self.ready.popleft()
            if ready.experiment_id < last or ready.experiment_id in paid:
                record_unrun(self.engine, ready, Verdict.INTERRUPTED,
                             "not run: the session stopped first", parent=ready.parent)  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=not self.engine.killed, cancel_futures=True)


def _paid(usage: Usage) -> bool:
    return bool(usage.input_tokens or usage.output_tokens or usage.cost_usd)


def run_loop(engine: Engine, proposer: Proposer) -> None:
    """Until a stop rule fires and everything in flight is recorded."""
    while True:
        engine.save_clock()
        proposer.collect()
        fill_slots(engine, proposer)
        if not engine.flights and engine.history.best is None and not engine.requeue:
            engine.stop(engine.baseline_failure())
        proposer.top_up()
        idle = not engine.flights and (proposer.future is None or engine.stopping)
        if idle and (engine.stopping or not proposer.ready):
            if proposer.exhausted:
                engine.stop(proposer.exhausted, clean=True)
            return
        wait_for_something(engine, proposer)
        collect_runs(engine)


def fill_slots(engine: Engine, proposer: Proposer) -> None:
    for slot in range(engine.executor.slots()):
        if slot in engine.flights:
            continue
        if engine.requeue and not engine.stopping:  # a stop before they ran: the next resume runs them
            engine.relaunch(slot, engine.requeue.pop(0))
        elif engine.history.best is None or not proposer.ready or engine.stopping or engine.check_stop_rules():
            return
        else:
            start_candidate(engine, slot, proposer.ready.popleft())


def wait_for_something(engine: Engine, proposer: Proposer) -> None:
    futures: list[Future[object]] = [f.future for f in engine.flights.values() if f.future]  # type: ignore[misc]
    if proposer.future is not None:
        futures.append(proposer.future)  # type: ignore[arg-type]
    if futures:
        wait(futures, timeout=POLL, return_when=FIRST_COMPLETED)


def collect_runs(engine: Engine) -> None:
    for flight in list(engine.flights.values()):
        if flight.future is not None and flight.future.done():
            collect(engine, flight)


def drain(engine: Engine) -> None:
    """Collect every run in flight (after a stop: they finish, or were killed)."""
    while engine.flights:
        futures = [f.future for f in engine.flights.values() if f.future is not None]
        wait(futures, timeout=POLL, return_when=FIRST_COMPLETED)
        collect_runs(engine)


__all__ = ["Proposer", "drain", "run_loop"]
