"""The agent interface: ``Agent.propose(Context) -> Proposal``.

An agent sees a ``Context`` (the brief, the best code, the history) and returns a
``Proposal``: a one-line description, a rationale, and edits. Edits are search/replace
blocks or whole files (``Edit``), or a unified diff (``Proposal.patch``, as the replay and
command agents produce). The workspace, not the agent, applies them and enforces the
allowlist.

``Agent`` declares everything the engine may ask of an agent, with defaults: a backend
subclasses it and overrides what it needs. ``propose`` runs on the engine's agent
thread, one call at a time, while runs go on.

An agent signals trouble by raising (see ``autoresearch.errors``):
``ProposalError`` for an unusable reply (recorded as ``invalid``; the loop goes on),
``AgentUnavailable`` when its backend keeps failing (the session stops),
``AgentExhausted`` when it has nothing left to propose (the session ends cleanly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearch.records import Edit, Experiment, Proposal, Usage


@dataclass(frozen=True)
class Context:
    """Everything an agent may know when it proposes one experiment."""

    instructions: str  # the brief (program.md)
    editable: Mapping[str, str]  # path -> text of each editable file at the parent commit
    readonly: Mapping[str, str]  # path -> text of each context file
    history: tuple[Experiment, ...]  # oldest first; pending ones (still running) included
    metric_name: str
    direction: str  # "minimize" | "maximize"
    best_metric: float | None = None
    baseline_metric: float | None = None
    noise: float | None = None  # pooled standard deviation of the metric between runs
    noise_runs: int = 0  # runs the noise estimate rests on
    detectable: float | None = None  # smallest effect the judge can confirm at this noise
    last_failure: str = ""  # log tail of the most recent crash or timeout
    last_rejection: str = ""  # why the previous proposal was invalid, if it was
    parent: str = ""  # the commit the proposal is made against
    workdir: Path | None = None  # a clean checkout of ``parent`` an agent may work in
    experiment_id: int = 0
    tag: str = ""  # the session's tag
    seed: int = 0
    editable_globs: tuple[str, ...] = ()
    time_budget: float = 0.0
    # once the baseline is timed: the steps the budget rule times and the seconds they may take
    # together (its time plus the allowance; past it a run is stopped and discarded)
    budget_steps: tuple[str, ...] = ()
    time_limit: float | None = None
    log_dir: Path | None = None  # where an agent's own processes leave logs and pid files
    # what an agent's own processes may not read (the ledger, the holdout): a confined CLI
    # sees them empty
    hidden: tuple[Path, ...] = ()
    note: str = ""  # what happened to the previous proposal on the way to a run (stale parent)
    max_file_kb: float | None = None  # an editable file may not grow past this ([task] max_file_kb)


class Agent:
    """Proposes one code change per call. Subclass and override; the defaults are no-ops."""

    name: str = "agent"
    # True when proposing runs programs on this machine (the command CLIs): the agent then does
    # not propose while the baseline's runs are timed, which its programs could slow down
    # (nice does not hold against a process that starts a session of its own)
    runs_code: bool = False

    def check(self, editable: Mapping[str, str]) -> str:
        """Validate the agent's options against the code before setup runs (raise ConfigError);
        returns lines to print once at session start (a search space), or ""."""
        return ""

    @property
    def needs_workdir(self) -> bool:
        """True when ``propose`` edits ``Context.workdir`` itself (the command CLIs)."""
        return False

    def propose(self, context: Context) -> Proposal:
        raise NotImplementedError(f"{type(self).__name__} must implement propose()")

    def cancel(self) -> None:
        """The session is stopping (a signal): give up the proposal being made, soon, by raising
        ``AgentCancelled`` from ``propose`` (kill a CLI's processes, stop waiting to retry).
        Called from another thread than ``propose``'s; after it, no proposal is asked for."""

    def finish(self, context: Context) -> None:
        """The session ended: ``context`` holds its whole history (the last verdicts too).

        For agents that keep a record outside the ledger; raise nothing the session needs."""


__all__ = ["Agent", "Context", "Edit", "Experiment", "Proposal", "Usage"]
