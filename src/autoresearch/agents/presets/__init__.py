"""Presets of the command agent for known coding-agent CLIs, one file each.

``claude-code`` (Claude Code), ``codex`` (Codex CLI) and ``aider``: each knows the flags that
let its CLI edit files in the checkout without a terminal, and how to read its reply.
"""

from __future__ import annotations

from autoresearch.agents.presets._base import PresetAgent
from autoresearch.agents.presets.aider import AiderAgent
from autoresearch.agents.presets.claude_code import ClaudeCodeAgent
from autoresearch.agents.presets.codex import CodexAgent

__all__ = ["AiderAgent", "ClaudeCodeAgent", "CodexAgent", "PresetAgent"]
