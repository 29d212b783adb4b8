"""autoresearch: an autonomous research loop.

An agent edits the code of a research task, the code runs under a fixed budget, a
trusted harness measures one metric, and the change is kept or reverted.
"""

from __future__ import annotations

from autoresearch.agents import Agent, Context, Edit, Experiment, Proposal, Usage, get_agent
from autoresearch.config import MetricConfig, TaskConfig, load_config
from autoresearch.engine import Engine, ExperimentEvent, SessionOptions, SessionSummary
from autoresearch.errors import AutoresearchError
from autoresearch.executors import Executor, Job, LocalExecutor, RunResult, RunStatus
from autoresearch.judge import Judge
from autoresearch.ledger import Ledger
from autoresearch.records import Verdict

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AutoresearchError",
    "Context",
    "Edit",
    "Engine",
    "Executor",
    "Experiment",
    "ExperimentEvent",
    "Job",
    "Judge",
    "Ledger",
    "LocalExecutor",
    "MetricConfig",
    "Proposal",
    "RunResult",
    "RunStatus",
    "SessionOptions",
    "SessionSummary",
    "TaskConfig",
    "Usage",
    "Verdict",
    "__version__",
    "get_agent",
    "load_config",
]  # fmt: skip
