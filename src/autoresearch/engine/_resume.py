"""Resume: make git and the processes match the ledger after the orchestrator died.

An experiment left ``pending`` by a killed orchestrator is run again from its recorded
commit (same id, same proposal), so nothing is lost and nothing is counted twice; a
verdict recorded before the branch moved is carried out; missing discarded refs are
recreated; steps a dead orchestrator left running are killed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoresearch.config import STATE_DIR, TaskConfig
from autoresearch.errors import WorkspaceError
from autoresearch.ledger import Ledger
from autoresearch.process import kill_orphans
from autoresearch.records import Verdict

if TYPE_CHECKING:
    from autoresearch.engine import Engine


@dataclass(frozen=True)
class ResumeDefaults:
    """What a session was started with, for ``run --resume`` without repeating the flags."""

    agent: str
    agent_flags: Mapping[str, Any]
    seed: int
    rules: Mapping[str, Any] = field(default_factory=dict)
    run_flags: Mapping[str, Any] = field(default_factory=dict)  # the executor, the slots


def resume_defaults(config: TaskConfig, tag: str) -> ResumeDefaults | None:
    """The agent, its CLI flags, the seed, the stop rules and the executor's flags session ``tag``
    started with."""
    path = config.root / STATE_DIR / "ledger.db"
    if not path.exists():
        return None
    ledger = Ledger(path)
    try:
        if not ledger.has_session(tag):
            return None
        cfg = ledger.session(tag).config
        agent = ledger.session(tag).agent
    finally:
        ledger.close()
    return ResumeDefaults(agent, dict(cfg.get("agent_flags", {})), int(cfg.get("seed", 0)),
                          dict(cfg.get("stop_rules", {})), dict(cfg.get("run_flags", {})))  # fmt: skip


def repair(engine: Engine) -> None:
    """Kill orphans, queue pending experiments again, and put the branch at the ledger's best."""
    for pgid in kill_orphans(engine.log_dir):
        engine.say(f"resume: killed process group {pgid} left running by the previous orchestrator")
    _requeue_pending(engine)
    _restore_refs(engine)
    _move_branch(engine)


def _requeue_pending(engine: Engine) -> None:
    ws = engine.workspace
    for row in engine.history.pending:
        if row.commit and ws.exists(row.commit):
            engine.requeue.append(row)
            continue
        engine.record(engine.ledger.finish(engine.session, row.id, Verdict.INTERRUPTED, None,
                                           "interrupted; its commit is gone", {}, 0.0))  # fmt: skip


def _restore_refs(engine: Engine) -> None:
    """The refs a kill cut off between the ledger's verdict and git: ``discarded/<id>`` of each
    settled experiment, ``kept/<id>`` of each keep."""
    ws = engine.workspace
    discarded, kept = ws.discarded_refs(), ws.kept_refs()
    for row in engine.history.rows:
        settled = row.verdict is not Verdict.PENDING and not row.verdict.judged
        if settled and row.commit and row.id not in discarded:
            ws.keep_discarded(row.id, row.commit)
        if row.verdict is Verdict.KEEP and row.commit and row.id not in kept:
            ws.keep_kept(row.id, row.commit)


def _move_branch(engine: Engine) -> None:
    ws, best = engine.workspace, engine.history.best
    head = ws.branch_head()
    if best is None or head == best.commit:
        return
    judged = {r.commit for r in engine.history.rows if r.verdict.judged}
    if head is None or (head not in judged and not ws.is_ancestor(head, best.commit)):
        raise WorkspaceError(
            f"branch {ws.branch} is at {(head or '?')[:10]} but the ledger's best is "
            f"experiment {best.id} ({best.commit[:10]}); it was moved by hand. Reset it with "
            f"`git update-ref refs/heads/{ws.branch} {best.commit}` and resume again"
        )
    ws.move_branch(best.commit)
    engine.say(f"resume: moved {ws.branch} to experiment {best.id} ({best.commit[:10]}), recorded as kept")


__all__ = ["ResumeDefaults", "repair", "resume_defaults"]
