"""Any coding-agent CLI as an agent: the generic ``command`` backend (``--cmd``).

The CLI runs in ``Context.workdir`` (a clean checkout of the parent commit) with the
rendered brief; whatever it changes there, as a ``git diff`` against the parent, is the
proposal's patch, checked against the allowlist like any other (``_checkout`` says what is
kept and dropped). Claude Code, Codex and aider have presets of their own
(``autoresearch.agents.presets``) that know their flags; this backend runs what you write.

``cmd`` is a shell command line with placeholders, each replaced by a shell-quoted value:

- ``{prompt_file}``: a file holding the brief (``aider --message-file {prompt_file}``);
- ``{prompt}``: the brief itself, as one argument (``codex exec {prompt}``);
- ``{description_file}``: where the CLI should write its one-line description;
- ``{workdir}``: the checkout it works in.

Where bubblewrap works the CLI is confined (see ``_cli``): it writes only in its checkout and
its private folder, and in the paths ``writable`` names (``[agent.command] writable =
["~/.mycli/"]``: its settings, a cache it keeps across turns).

Without ``{prompt_file}`` or ``{prompt}`` the brief is given on stdin. The description is
the first line of the description file; else, when the last output line is a JSON object
with a ``result`` (``claude -p --output-format json``), that result's last line; else the
subject of a commit the CLI made; else its last output line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from autoresearch.agents._base import Context, Usage
from autoresearch.agents._cli import (
    MAX_COMMAND_BYTES,
    BriefFiles,
    CliAgent,
    CliOutput,
    Reply,
    clip,
    description_file,
)
from autoresearch.agents.prompt import DEFAULT_HISTORY_TOKENS
from autoresearch.errors import ConfigError, ProposalError

PLACEHOLDERS = ("prompt_file", "prompt", "description_file", "workdir")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# words the shell runs itself: what follows them is not checked
_SHELL_WORDS = frozenset(("cd", "exec", "command", "builtin", "eval", "set", "export", "if", "for", "while",
                          "until", "case", "{", "(", "!", ".", "source", "true", "false", "test", "[", "time"))  # fmt: skip


class CommandAgent(CliAgent):
    """Runs the shell command ``cmd`` in the candidate's checkout; its diff is the proposal."""

    name = "command"

    def __init__(
        self,
        cmd: str = "",
        *,
        timeout: float = 1800.0,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        env: dict[str, str] | None = None,
        shell: str = "/bin/sh",
        writable: Sequence[str] = (),
    ) -> None:
        if not isinstance(cmd, str):
            raise ConfigError(
                f"[agent.command] cmd: found {cmd!r}, expected one shell command line (a string), "
                "e.g. 'aider --message-file {prompt_file}'"
            )
        if not cmd.strip():
            raise ConfigError(
                "command: --cmd is missing or empty; e.g. --cmd 'aider --message-file "
                "{prompt_file}' (or [agent.command] cmd; or use --agent claude-code / codex / aider)"
            )
        super().__init__(timeout=timeout, history_tokens=history_tokens, env=env, writable=writable)
        self.cmd, self.shell = cmd, shell
        self.uses_stdin = not re.search(r"\{prompt(_file)?\}", cmd)

    def check(self, editable: Mapping[str, str]) -> str:
        """The program ``cmd`` starts is there, before the session's setup and baseline: a
        typo'd one failed only at the first proposal, after the whole baseline, and then at
        every proposal until the failure stop rule."""
        named = ((self.shell, "[agent.command] shell"), (first_program(self.cmd), "the first word of --cmd"))
        for program, what in named:
            if not program:
                continue
            path = self.env.get("PATH", os.environ.get("PATH"))
            found = os.access(program, os.X_OK) if "/" in program else shutil.which(program, path=path)
            if not found:
                where = "is not an executable file" if "/" in program else "is not on PATH"
                raise ConfigError(f"command: {program!r} ({what}) {where}; install it or fix --cmd")
        return ""

    def command_line(self, files: BriefFiles, context: Context) -> str:
        assert context.workdir is not None
        values = {
            "prompt_file": str(files.prompt),
            "prompt": files.prompt.read_text(encoding="utf-8"),
            "description_file": str(files.description),
            "workdir": str(context.workdir),
        }
        line = _PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), self.cmd)
        if len(line.encode()) > MAX_COMMAND_BYTES:
            raise ProposalError(
                "the brief is too long to pass as {prompt}; use {prompt_file} in --cmd"
            )
        if self.shell != "/bin/sh":
            line = shlex.join([self.shell, "-c", line])
        if self.uses_stdin:
            line = "{ " + line + "\n} < " + shlex.quote(str(files.prompt))
        return line

    def read_reply(self, output: CliOutput, files: BriefFiles) -> Reply:
        result = final_json(output.text) or {}
        described = description_file(files)
        text = result.get("result")
        if described is None and isinstance(text, str) and text.strip():
            lines = [x for x in text.strip().splitlines() if x.strip()]
            described = clip(lines[-1]), text.strip()
        description, rationale = described or ("", "")
        return Reply(description, rationale, reported_usage(result), permission_denials(result))

    def fallback_description(self, output: CliOutput) -> str:
        lines = [x for x in output.text.splitlines() if x.strip()]
        return clip(lines[-1]) if lines else ""


def first_program(cmd: str) -> str:
    """The program a plain command line starts (after ``VAR=value`` words), or "" when the
    shell decides (a builtin, an expansion, a relative path the checkout may hold)."""
    try:
        words = shlex.split(_PLACEHOLDER.sub("x", cmd))
    except ValueError:
        return ""
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    if not words or words[0] in _SHELL_WORDS or set(words[0]) & set("$`;&|<>(){}*?~\\"):
        return ""
    program = words[0]
    return "" if "/" in program and not program.startswith("/") else program


def final_json(output: str) -> dict[str, Any] | None:
    """The last output line, when it is a JSON object (``claude -p --output-format json``)."""
    lines = [x for x in output.splitlines() if x.strip()]
    return _object(lines[-1]) if lines else None


def _object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def reported_usage(result: dict[str, Any]) -> Usage:
    """Tokens and cost of an Anthropic-style result object; an unknown cost when absent."""
    usage = result.get("usage")
    usage = usage if isinstance(usage, dict) else {}

    def count(*keys: str) -> int:
        return sum(int(number(usage.get(k)) or 0) for k in keys)

    cached = count("cache_read_input_tokens", "cached_input_tokens")
    tokens = count("input_tokens", "cache_creation_input_tokens") + cached
    cost = number(result.get("total_cost_usd", result.get("cost_usd")))
    return Usage(tokens, cached, count("output_tokens"), cost)


def number(value: object) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def permission_denials(result: dict[str, Any]) -> tuple[str, ...]:
    """A line naming the tools and files the CLI was refused (Claude Code's JSON), if any."""
    denials = result.get("permission_denials")
    if not isinstance(denials, list) or not denials:
        return ()
    names = []
    for denial in denials[:8]:
        if not isinstance(denial, dict):
            continue
        tool = str(denial.get("tool_name") or "a tool")
        given = denial.get("tool_input")
        given = given if isinstance(given, dict) else {}
        target = given.get("file_path") or given.get("path") or given.get("command") or ""
        names.append(f"{tool}({str(target)[:80]})" if target else tool)
    return (
        f"the CLI was refused permission {len(denials)} time(s): {', '.join(names)} "
        "(permission_denials in its JSON output)",
    )


__all__ = [
    "PLACEHOLDERS",
    "CommandAgent",
    "final_json",
    "permission_denials",
    "reported_usage",
]
