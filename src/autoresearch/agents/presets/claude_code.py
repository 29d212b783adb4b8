"""Claude Code (``claude``) as an agent: ``--agent claude-code``.

Runs ``claude -p BRIEF --permission-mode acceptEdits --add-dir FOLDER --output-format json``
in the checkout: print mode (no terminal), file edits accepted in the checkout and in the
brief's private folder (where it writes its description), one JSON result on stdout. Shell
commands still need a permission that print mode cannot grant, so Claude Code edits and
reads, and does not run the experiment. A brief longer than one argument may be goes on stdin.

From the JSON result: ``result`` (the final message; its first line is the description when
no description file was written), ``total_cost_usd`` and ``usage``, and
``permission_denials`` (the reason recorded when nothing changed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

from autoresearch.agents._base import Context
from autoresearch.agents._cli import (
    MAX_COMMAND_BYTES,
    BriefFiles,
    CliOutput,
    Reply,
    description_file,
    first_line,
)
from autoresearch.agents.command import permission_denials, reported_usage
from autoresearch.agents.presets._base import PresetAgent
from autoresearch.errors import AgentUnavailable, ConfigError

AUTH_TIMEOUT = 30.0  # seconds for `claude auth status`
# Claude Code's reply when it has no credentials: no later call can do better.
_SIGNED_OUT = re.compile(r"not logged in|please run /login|invalid api key", re.IGNORECASE)


class ClaudeCodeAgent(PresetAgent):
    """Claude Code in print mode, allowed to edit files in the checkout."""

    name = "claude-code"
    binary_name = "claude"
    state = ("$CLAUDE_CONFIG_DIR/", "~/.claude/", "~/.claude.json")  # settings, sessions
    install = "npm install -g @anthropic-ai/claude-code"
    reporting = (
        "Finish with a short final message whose first line is that same one-line description."
    )

    def check(self, editable: Mapping[str, str]) -> str:
        """Claude Code's own word on whether it can log in (``claude auth status``), before the
        session's setup and baseline: a signed-out CLI failed only at the first proposal, after
        the whole baseline. An older CLI without the command, or no clear answer, passes."""
        try:
            done = subprocess.run([self.binary, "auth", "status"], env={**os.environ, **self.env},
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=AUTH_TIMEOUT, errors="replace")  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""
        try:
            status = json.loads(done.stdout)
        except json.JSONDecodeError:
            return ""
        if done.returncode != 0 and isinstance(status, dict) and status.get("loggedIn") is False:
            raise ConfigError("claude-code: Claude Code is not logged in (`claude auth status`); log "
                              "in once by running `claude`, or set ANTHROPIC_API_KEY for it")  # fmt: skip
        return ""

    def arguments(self, files: BriefFiles, context: Context) -> list[str]:
        brief = [] if self.reads_stdin(files) else [files.prompt.read_text(encoding="utf-8")]
        args = ["-p", *brief, "--permission-mode", "acceptEdits", "--add-dir", str(files.folder)]
        args += ["--output-format", "json"]  # after --add-dir, which takes several folders
        if self.model:
            args += ["--model", self.model]
        return [*args, *self.args]

    def reads_stdin(self, files: BriefFiles) -> bool:
        return files.prompt.stat().st_size > MAX_COMMAND_BYTES

    def read_reply(self, output: CliOutput, files: BriefFiles) -> Reply:
        result = _result(output.text)
        if result is None:
            return Reply(
                *(description_file(files) or ("", "")),
                problems=("Claude Code printed no JSON result (is --output-format overridden?)",),
            )
        raw = result.get("result")
        text = raw if isinstance(raw, str) else ""
        if result.get("is_error") and _SIGNED_OUT.search(text):  # every call would fail alike
            raise AgentUnavailable(
                f"claude-code: {text.strip()[:200]}; log in once by running `claude`, or set "
                "ANTHROPIC_API_KEY for it"
            )
        description, rationale = description_file(files) or first_line(str(text))
        return Reply(description, rationale, reported_usage(result), _problems(result))


def _result(output: str) -> dict[str, Any] | None:
    """The last ``{"type": "result", ...}`` line (warnings on stderr may follow it)."""
    for line in reversed(output.splitlines()):
        if not line.lstrip().startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("type") == "result":
            return value
    return None


def _problems(result: dict[str, Any]) -> tuple[str, ...]:
    problems = list(permission_denials(result))
    subtype = result.get("subtype")
    if result.get("is_error") or (subtype not in (None, "success")):
        text = str(result.get("result") or "")[:300]
        why = "an error" if subtype in (None, "success") else str(subtype)  # is_error on 'success'
        problems.append(f"Claude Code stopped with {why}" + (f": {text}" if text else ""))
    return tuple(problems)


__all__ = ["ClaudeCodeAgent"]
