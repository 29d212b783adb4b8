"""The agent interface: ``Agent.propose(Context) -> Proposal``.

An agent sees a ``Context`` (the brief, the best code, the history) and returns a
``Proposal``: a one-line description, a rationale, and edits. Edits are search/replace
blocks or whole files (``Edit``), or a unified diff (``Proposal.patch``, as the replay and
command agents produce). The workspace, not the agent, applies them and enforces the
allowlist.

An agent signals trouble by raising (see ``autoresearch.errors``):
``ProposalError`` for an unusable reply (recorded as ``invalid``; the loop goes on),
``AgentUnavailable`` when its backend keeps failing (the session stops),
``AgentExhausted`` when it has nothing left to propose (the session ends cleanly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Edit:
    """One change to one file: ``search`` -> ``replace``, or the whole ``content``."""

    path: str
    search: str | None = None
    replace: str | None = None
    content: str | None = None

    @property
    def is_whole_file(self) -> bool:
        return self.content is not None


@dataclass(frozen=True)
class Usage:
    """Tokens an agent spent on one proposal, and their price when known."""

    input_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from a prompt cache
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None: a model missing from the price table


@dataclass(frozen=True)
class Proposal:
    """What an agent returns for one experiment."""

    description: str  # one line; goes into results.tsv
    rationale: str = ""
    edits: tuple[Edit, ...] = ()
    patch: str = ""  # a unified diff (git format), applied after ``edits``
    usage: Usage = field(default_factory=Usage)
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-able; stored in the ledger


@dataclass(frozen=True)
class HistoryRow:
    """One recorded experiment, as agents see it."""

    id: int
    verdict: str  # a Verdict value: baseline keep discard crash timeout invalid interrupted
    metric: float | None
    description: str
    commit: str = ""
    reason: str = ""
    agent: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)  # the proposal's meta


@dataclass(frozen=True)
class Context:
    """Everything an agent may know when it proposes one experiment."""

    instructions: str  # the brief (program.md)
    editable: Mapping[str, str]  # path -> text of each editable file at the parent commit
    readonly: Mapping[str, str]  # path -> text of each context file
    history: tuple[HistoryRow, ...]  # oldest first
    metric_name: str
    direction: str  # "minimize" | "maximize"
    best_metric: float | None = None
    baseline_metric: float | None = None
    noise: float | None = None  # standard deviation of the metric between baseline runs
    last_failure: str = ""  # log tail of the most recent crash or timeout
    last_rejection: str = ""  # why the previous proposal was invalid, if it was
    parent: str = ""  # the commit the proposal will be applied to
    workdir: Path | None = None  # a clean checkout of ``parent`` an agent may work in
    experiment_id: int = 0
    tag: str = ""  # the session's tag
    seed: int = 0
    editable_globs: tuple[str, ...] = ()
    time_budget: float = 0.0


@runtime_checkable
class Agent(Protocol):
    """Proposes one code change per call."""

    name: str

    def propose(self, context: Context) -> Proposal: ...


__all__ = ["Agent", "Context", "Edit", "HistoryRow", "Proposal", "Usage"]
