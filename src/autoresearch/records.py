"""The records every part shares: one shape of an experiment, its runs, and their outcomes.

Standard library only. The ledger stores these, the engine produces them, agents read
them as history, and the views and reports render them: nothing copies them field by
field into another shape. Outcomes are enum members end to end; the ledger converts
them to text at its edge.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_RATIONALE_CHARS = 20_000  # an agent's rationale is cut here: the ledger and the views hold it
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_of(value: str) -> str:
    """``value`` as text every encoder takes: a lone surrogate (JSON's ``"\\ud800"``, which an
    agent's reply may hold) becomes U+FFFD instead of failing the commit or the ledger."""
    return _SURROGATE.sub("\ufffd", value)


class Verdict(enum.StrEnum):
    """The outcome of one experiment, as recorded in the ledger."""

    PENDING = "pending"  # committed, not yet judged
    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    INTERRUPTED = "interrupted"  # the orchestrator died or was stopped before a verdict
    DUPLICATE = "duplicate"  # the same tree as an earlier experiment: not run again

    @property
    def failed(self) -> bool:
        """A verdict that counts towards the consecutive-failure stop rule."""
        return self in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID)

    @property
    def judged(self) -> bool:
        """A verdict that made the experiment the session's best when it was given."""
        return self in (Verdict.BASELINE, Verdict.KEEP)


class RunStatus(enum.StrEnum):
    """How one run ended, before any judging."""

    OK = "ok"  # every step exited 0 and the metric was read
    CRASH = "crash"  # a step failed, or the metric is missing / not finite
    TIMEOUT = "timeout"  # the hard timeout killed the process group
    INVALID = "invalid"  # the run changed a protected file (the harness)
    KILLED = "killed"  # stopped from outside (a second signal, executor shutdown)


class RunPurpose(enum.StrEnum):
    """Why a run was made: to select a candidate, or to re-score a new best on fresh seeds."""

    SELECT = "select"
    RESCORE = "rescore"


@dataclass(frozen=True)
class Edit:
    """One change to one file: ``search`` -> ``replace``, or the whole ``content``."""

    path: str
    search: str | None = None
    replace: str | None = None
    content: str | None = None

    def __post_init__(self) -> None:
        for name in ("path", "search", "replace", "content"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, text_of(value))

    @property
    def is_whole_file(self) -> bool:
        return self.content is not None


@dataclass(frozen=True)
class Usage:
    """Tokens an agent spent on one proposal, and their price when known."""

    input_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from a prompt cache
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None: unknown (a model missing from the price table)


@dataclass(frozen=True)
class Proposal:
    """What an agent returns for one experiment."""

    description: str  # one line; goes into results.tsv
    rationale: str = ""
    edits: tuple[Edit, ...] = ()
    patch: str = ""  # a unified diff (git format), applied after ``edits``
    usage: Usage = field(default_factory=Usage)
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-able; stored in the ledger

    def __post_init__(self) -> None:
        rationale = text_of(self.rationale)
        if len(rationale) > MAX_RATIONALE_CHARS:
            cut = len(rationale) - MAX_RATIONALE_CHARS
            rationale = rationale[:MAX_RATIONALE_CHARS] + f"\n[... {cut} more characters cut]"
        object.__setattr__(self, "description", text_of(self.description))
        object.__setattr__(self, "rationale", rationale)
        object.__setattr__(self, "patch", text_of(self.patch))


@dataclass(frozen=True)
class Run:
    """One execution of an experiment's code."""

    experiment_id: int
    index: int
    seed: int
    status: RunStatus
    metric: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the run step
    reason: str = ""
    log_path: str = ""
    log_tail: str = ""
    purpose: RunPurpose = RunPurpose.SELECT
    # wall time of the check and evaluate steps (0.0: the task has none; None: not recorded,
    # a ledger from before they were)
    check_seconds: float | None = None
    evaluate_seconds: float | None = None

    def step_seconds(self, name: str) -> float | None:
        """Wall time of the step ``name`` (check, run or evaluate) of this run."""
        return {"check": self.check_seconds, "run": self.seconds, "evaluate": self.evaluate_seconds}[name]


@dataclass(frozen=True)
class Experiment:
    """One experiment: what was proposed, where it ran, how it was judged.

    The first fields are what agents read as history; the order lets a test write
    ``Experiment(3, Verdict.KEEP, 1.2, "set X to 3")``.
    """

    id: int
    verdict: Verdict
    metric: float | None  # the recorded value: for a keep, the mean of its fresh re-runs
    description: str = ""
    commit: str = ""
    reason: str = ""
    agent: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)  # the proposal's meta
    parent: str = ""  # the commit it was applied to
    metrics: Mapping[str, float] = field(default_factory=dict)  # mean of every numeric key
    rationale: str = ""
    diff: str = ""
    usage: Usage = field(default_factory=Usage)
    started: float = 0.0
    finished: float | None = None
    compute_seconds: float = 0.0  # wall time of every step of every run
    tree: str = ""  # git tree of ``commit``: the same code has the same tree
    runs: tuple[Run, ...] = ()

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost_usd

    @property
    def is_baseline(self) -> bool:
        """The harness's run of the unchanged code, whatever its verdict (a failed one too):
        not an agent's proposal."""
        return self.verdict is Verdict.BASELINE or self.agent == "baseline"

    def values(self, purpose: RunPurpose | None = None) -> list[float]:
        """Metric values of the successful runs (of one purpose, if given)."""
        return [
            r.metric
            for r in self.runs
            if r.status is RunStatus.OK
            and r.metric is not None
            and (purpose is None or r.purpose is purpose)
        ]


__all__ = [
    "Edit",
    "Experiment",
    "Proposal",
    "Run",
    "RunPurpose",
    "RunStatus",
    "Usage",
    "Verdict",
]
