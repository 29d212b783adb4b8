"""What goes in and out of a session: its options, the events it sends, its summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import ConfigError
from autoresearch.records import Experiment


@dataclass(frozen=True)
class SessionOptions:
    """How one ``autoresearch run`` behaves. Stop rules left None carry over on resume."""

    tag: str
    max_experiments: int | None = None  # experiments in the session, baseline excluded
    max_hours: float | None = None  # wall-clock hours of the session, all invocations
    max_failures: int | None = None  # consecutive crash / timeout / invalid (default 10)
    max_cost: float | None = None  # dollars: agent spend plus compute
    gpu_price: float | None = None  # dollars per slot-hour; None: the task's [cost] gpu_per_hour
    resume: bool = False
    seed: int = 0
    run_setup: bool = True
    lookahead: int | None = None  # proposals kept ready; None: one per slot; 0: none ahead
    agent_flags: Mapping[str, Any] = field(default_factory=dict)  # recorded for --resume
    run_flags: Mapping[str, Any] = field(default_factory=dict)  # executor and slots, the same

    def __post_init__(self) -> None:
        least = {"max_experiments": 0, "max_hours": 0, "max_failures": 1, "max_cost": 0,
                 "gpu_price": 0, "lookahead": 0}  # fmt: skip
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and not value >= low:  # NaN too
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be {low} or more, got {value}")

    def rules(self) -> dict[str, Any]:
        return {"max_experiments": self.max_experiments, "max_hours": self.max_hours,
                "max_failures": self.max_failures, "max_cost": self.max_cost}  # fmt: skip


@dataclass(frozen=True)
class ExperimentEvent:
    """Sent to ``on_event`` after each experiment is recorded."""

    experiment: Experiment
    best: float | None
    baseline: float | None
    parent: float | None = None  # the recorded value of the code it changed (a keep's "vs best")
    # the session's totals so far, over every invocation (a resume's view starts from them)
    done: int | None = None
    kept: int | None = None
    spend: float | None = None


@dataclass(frozen=True)
class RunStarted:
    """Sent to ``on_run`` when a run is handed to the executor (for live views)."""

    slot: int
    experiment_id: int
    run_index: int
    log_path: Path
    time_budget: float
    description: str = ""


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
    signal: int | None = None  # the signal that stopped the session, if one did


__all__ = ["ExperimentEvent", "RunStarted", "SessionOptions", "SessionSummary"]
