"""The exception hierarchy of autoresearch.

Every error the library raises on purpose is an ``AutoresearchError``; the CLI prints
its message as one line (``--debug`` shows the traceback)::

    AutoresearchError
    ├── ConfigError            autoresearch.toml is missing, malformed or inconsistent
    ├── WorkspaceError         git state forbids the operation (dirty tree, tag in use, ...)
    │   └── EditRejected       an edit the allowlist refuses (-> verdict ``invalid``)
    ├── AgentError             an agent could not produce a proposal
    │   ├── ProposalError      a malformed reply or an unusable edit (-> verdict ``invalid``)
    │   ├── AgentUnavailable   the backend failed too many times in a row (-> session stops)
    │   ├── AgentExhausted     the agent has nothing more to propose (-> session ends cleanly)
    │   └── AgentCancelled     the session stopped while the agent was proposing (-> ``interrupted``)
    ├── ExecutorError          a run could not be started or collected at all
    ├── MetricError            the primary metric is missing, non-numeric or non-finite
    └── LedgerError            the ledger is unreadable or does not match the repository
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoresearch.agents._base import Usage


class AutoresearchError(Exception):
    """Base class of every error raised on purpose by autoresearch."""


class ConfigError(AutoresearchError):
    """The task configuration is missing, malformed or inconsistent."""


class WorkspaceError(AutoresearchError):
    """The git repository is not in a state that allows the operation."""


class EditRejected(WorkspaceError):
    """An edit touches a path the task does not allow; the experiment is ``invalid``."""


class AgentError(AutoresearchError):
    """An agent failed to produce a proposal."""

    def __init__(
        self, message: str, *, usage: Usage | None = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.usage = usage  # tokens spent on the failed attempt, still paid for
        self.meta = dict(meta or {})  # recorded with the invalid experiment (e.g. which patch)


class ProposalError(AgentError):
    """The agent replied, but the reply is unusable; the experiment is ``invalid``."""


class AgentUnavailable(AgentError):
    """The agent's backend failed repeatedly; the session stops with everything recorded."""


class AgentExhausted(AgentError):
    """The agent has nothing left to propose; the session ends cleanly."""


class AgentCancelled(AgentError):
    """The session is stopping: the agent gave up the proposal it was making (``Agent.cancel``)."""


class ExecutorError(AutoresearchError):
    """A run could not be started or its result could not be collected."""


class MetricError(AutoresearchError):
    """The primary metric could not be read from a run's output."""


class LedgerError(AutoresearchError):
    """The ledger is unreadable or inconsistent with the repository."""


__all__ = [
    "AgentCancelled",
    "AgentError",
    "AgentExhausted",
    "AgentUnavailable",
    "AutoresearchError",
    "ConfigError",
    "EditRejected",
    "ExecutorError",
    "LedgerError",
    "MetricError",
    "ProposalError",
    "WorkspaceError",
]
