"""Agents: what proposes the next experiment. ``get_agent`` maps a CLI name to a backend."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from autoresearch.agents._base import Agent, Context, Edit, Experiment, Proposal, Usage
from autoresearch.config import AGENT_NAMES, TaskConfig
from autoresearch.errors import ConfigError

# Flags of `autoresearch run` that configure an agent, and the agents that take them.
AGENT_FLAGS: dict[str, tuple[str, ...]] = {
    "patches": ("replay",),
    "sampler": ("tuner",),
    "model": ("anthropic", "openai", "claude-code", "codex", "aider"),
    "base_url": ("anthropic", "openai"),
    "cmd": ("command",),
}


def agent_options(name: str, config: TaskConfig, flags: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
    """Agent ``name``'s options: the task's ``[agent.<name>]`` table, the given flags over it.

    A flag the agent does not take is an error naming the agents that do.
    """
    options = dict(config.agent_options(name))
    for flag, value in flags.items():
        takers = AGENT_FLAGS[flag]
        if name not in takers:
            raise ConfigError(f"--{flag.replace('_', '-')} applies to --agent {' / '.join(takers)}, not {name}")
        options[flag] = value
    if name == "replay" and "patches" not in options:
        raise ConfigError("--agent replay needs --patches DIR (or [agent.replay] patches in the toml)")
    if name == "tuner":
        options.setdefault("seed", seed)
    if name in ("anthropic", "openai", "codex") and config.cost.models:
        options.setdefault("prices", config.cost.models)
    return options


def get_agent(name_or_obj: str | Agent, **options: Any) -> Agent:
    """Return an agent: an ``Agent`` passes through, a name builds that backend.

    ``options`` are the backend's keyword arguments (CLI flags merged over the task's
    ``[agent.<name>]`` table); a backend's optional dependencies are imported only here.
    """
    if not isinstance(name_or_obj, str):
        return name_or_obj
    backend = _backend(name_or_obj)
    unknown = _unknown_key(name_or_obj, backend, options)
    if unknown:  # a typo in the task's [agent.<name>] table: never a TypeError from deep inside
        raise ConfigError(unknown)
    try:
        agent: Agent = backend(**options)
    except TypeError as exc:
        raise ConfigError(
            f"agent {name_or_obj!r}: bad option ({exc}); check [agent.{name_or_obj}]"
        ) from exc
    return agent


def table_warnings(config: TaskConfig, using: str) -> list[str]:
    """Unknown keys in the ``[agent.<name>]`` tables of agents other than ``using`` (whose
    table is an error when it is built): a typo there is found before that agent's night."""
    found = []
    for name, table in config.agents.items():
        if name == using:
            continue
        try:
            why = _unknown_key(name, _backend(name), table)
        except ConfigError:  # its optional SDK is not installed here: nothing to check against
            continue
        if why:
            found.append(why)
    return found


def _unknown_key(name: str, backend: type, options: Mapping[str, Any]) -> str:
    """A key of ``[agent.<name>]`` that ``backend`` does not take ("" when there is none)."""
    allowed = _keywords(backend)
    unknown = sorted(set(options) - set(allowed or options))
    return f"[agent.{name}] unknown key {unknown[0]!r}; allowed: {', '.join(allowed or ())}" if unknown else ""


def _keywords(backend: type) -> list[str] | None:
    """The options ``backend`` takes: its ``__init__``'s, and those its ``**options`` hand to
    the classes above it. None when a class takes any."""
    names: list[str] = []
    for cls in backend.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return list(dict.fromkeys(names))
    return None


def _backend(name: str) -> Any:
    """The class of backend ``name``; its optional dependencies are imported only here."""
    if name == "replay":
        from autoresearch.agents.replay import ReplayAgent

        return ReplayAgent
    if name == "tuner":
        from autoresearch.agents.tuner import TunerAgent

        return TunerAgent
    if name in ("anthropic", "openai"):
        try:
            if name == "anthropic":
                from autoresearch.agents.anthropic import AnthropicAgent

                return AnthropicAgent
            from autoresearch.agents.openai import OpenAIAgent

            return OpenAIAgent
        except ImportError as exc:  # the SDKs are an optional extra
            raise ConfigError(f"the {name} agent needs its SDK ({exc}): pip install 'autoresearch[llm]'") from exc
    if name == "command":
        from autoresearch.agents.command import CommandAgent

        return CommandAgent
    # --- presets of the command agent for known CLIs ---
    if name == "claude-code":
        from autoresearch.agents.presets import ClaudeCodeAgent

        return ClaudeCodeAgent
    if name == "codex":
        from autoresearch.agents.presets import CodexAgent

        return CodexAgent
    if name == "aider":
        from autoresearch.agents.presets import AiderAgent

        return AiderAgent
    raise ConfigError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_NAMES)}")


__all__ = [
    "AGENT_FLAGS",
    "AGENT_NAMES",
    "Agent",
    "Context",
    "Edit",
    "Experiment",
    "Proposal",
    "Usage",
    "agent_options",
    "get_agent",
    "table_warnings",
]
