"""Agents: what proposes the next experiment. ``get_agent`` maps a CLI name to a backend."""

from __future__ import annotations

from typing import Any

from autoresearch.agents._base import Agent, Context, Edit, HistoryRow, Proposal, Usage
from autoresearch.errors import ConfigError

AGENT_NAMES = ("replay", "tuner", "anthropic", "openai", "command")


def get_agent(name_or_obj: str | Agent, **options: Any) -> Agent:
    """Return an agent: an ``Agent`` passes through, a name builds that backend.

    ``options`` are the backend's keyword arguments (CLI flags merged over the task's
    ``[agent.<name>]`` table); a backend's optional dependencies are imported only here.
    """
    if not isinstance(name_or_obj, str):
        return name_or_obj
    name = name_or_obj
    if name == "replay":
        from autoresearch.agents.replay import ReplayAgent

        return ReplayAgent(**options)
    if name == "tuner":
        from autoresearch.agents.tuner import TunerAgent

        return TunerAgent(**options)
    if name == "anthropic":
        from autoresearch.agents.anthropic import AnthropicAgent

        return AnthropicAgent(**options)
    if name == "openai":
        from autoresearch.agents.openai import OpenAIAgent

        return OpenAIAgent(**options)
    if name == "command":
        from autoresearch.agents.command import CommandAgent

        return CommandAgent(**options)
    raise ConfigError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_NAMES)}")


__all__ = [
    "AGENT_NAMES",
    "Agent",
    "Context",
    "Edit",
    "HistoryRow",
    "Proposal",
    "Usage",
    "get_agent",
]
