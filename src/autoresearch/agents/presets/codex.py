"""The Codex CLI (``codex``) as an agent: ``--agent codex``.

Runs ``codex exec --json --sandbox workspace-write --skip-git-repo-check -o FILE -`` (the
sandbox is ``[agent.codex] sandbox``) in the
checkout with the brief on stdin: no terminal, no approvals, writes allowed in the checkout
(and the temporary folder where the description file lies) by its sandbox, commands run in
that sandbox too; one JSON event per line on stdout.

From the events: the last ``agent_message`` (also written to FILE by ``-o``; its first line
is the description when no description file was written), the ``usage`` of every
``turn.completed`` (priced from ``model`` when the price table knows it), and the reason
recorded when nothing changed: a failed turn, an error event, a failed file change, a
command the sandbox refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from autoresearch.agents._base import Context, Usage
from autoresearch.agents._cli import (
    BriefFiles,
    CliOutput,
    Reply,
    description_file,
    first_line,
    own_text,
)
from autoresearch.agents.presets._base import PresetAgent
from autoresearch.cost import PriceTable, TokenCounts
from autoresearch.errors import ConfigError

# Codex's own sandbox for its edits and commands. "danger-full-access" where Codex's Linux
# sandbox cannot start (some containers: every file change fails); the checkout is a scratch
# worktree either way, and the engine's git tripwires still apply.
SANDBOXES = ("workspace-write", "danger-full-access")
_REFUSED = re.compile(
    r"read-only|readonly|sandbox|operation not permitted|permission denied|rejected", re.I
)


class CodexAgent(PresetAgent):
    """``codex exec`` in a workspace-write sandbox."""

    name = "codex"
    binary_name = "codex"
    state = ("$CODEX_HOME/", "~/.codex/")  # config, sessions, logs
    install = "npm install -g @openai/codex"
    reporting = (
        "If you cannot write the description file, make the first line of your final message "
        "that one-line description."
    )

    def __init__(
        self,
        *,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        sandbox: str = "workspace-write",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if sandbox not in SANDBOXES:
            raise ConfigError(f"codex: sandbox must be one of {', '.join(SANDBOXES)}, got {sandbox!r}")
        self.prices, self.sandbox = PriceTable(prices), sandbox

    def arguments(self, files: BriefFiles, context: Context) -> list[str]:
        args = ["exec", "--json", "--sandbox", self.sandbox, "--skip-git-repo-check"]
        args += ["-o", str(files.folder / "last-message.txt")]
        if self.model:
            args += ["--model", self.model]
        return [*args, *self.args, "-"]  # "-": the brief is read from stdin

    def reads_stdin(self, files: BriefFiles) -> bool:
        return True

    def read_reply(self, output: CliOutput, files: BriefFiles) -> Reply:
        events = list(_events(output.text))
        message = own_text(files.folder / "last-message.txt") or ""
        messages = [i.get("text", "") for i in _items(events) if i.get("type") == "agent_message"]
        message = message.strip() or (str(messages[-1]) if messages else "")
        description, rationale = description_file(files) or first_line(message)
        problems = [*_problems(events), *self._read_only()]
        if not events:
            problems.append("Codex printed no JSON events")
        elif message.strip():  # its failed commands are not all in the events: its own words
            problems.append(f"Codex's last message: {' '.join(message.split())[:300]}")
        return Reply(description, rationale, self._usage(events), tuple(problems))

    def _read_only(self) -> list[str]:
        """A read-only sandbox asked for in ``args`` (its refusals do not reach the events)."""
        args = list(self.args)
        modes = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-s", "--sandbox")]
        modes += [a.split("=", 1)[1] for a in args if a.startswith("--sandbox=")]
        if modes and modes[-1] == "read-only":
            return ["its sandbox is read-only (--sandbox read-only in [agent.codex] args)"]
        return []

    def _usage(self, events: list[dict[str, Any]]) -> Usage:
        counts = TokenCounts()
        for event in events:
            usage = event.get("usage") if event.get("type") == "turn.completed" else None
            if isinstance(usage, dict):
                counts = TokenCounts(
                    counts.input + _int(usage.get("input_tokens")),
                    counts.output + _int(usage.get("output_tokens")),
                    counts.cached + _int(usage.get("cached_input_tokens")),
                )
        cost = self.prices.cost(self.model, counts) if self.model else None
        return Usage(counts.input, counts.cached, counts.output, cost)


def _events(output: str) -> Iterator[dict[str, Any]]:
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and isinstance(value.get("type"), str):
                yield value


def _items(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for event in events:
        item = event.get("item")
        if event.get("type") == "item.completed" and isinstance(item, dict):
            yield item


def _problems(events: list[dict[str, Any]]) -> tuple[str, ...]:
    found: list[str] = []
    for event in events:
        error = event.get("error") if event.get("type") == "turn.failed" else None
        if isinstance(error, dict) and error.get("message"):
            found.append(f"Codex's turn failed: {str(error['message'])[:300]}")
        elif event.get("type") == "error" and event.get("message"):
            found.append(f"Codex reported an error: {str(event['message'])[:300]}")
    for item in _items(events):
        found.extend(_item_problem(item))
    if any(_REFUSED.search(p) for p in found):
        found.append(
            "its sandbox refused a write: Codex must run with --sandbox workspace-write "
            "(check [agent.codex] args and ~/.codex/config.toml)"
        )
    return tuple(dict.fromkeys(found))[:6]


def _item_problem(item: dict[str, Any]) -> list[str]:
    kind, status = item.get("type"), item.get("status")
    if kind == "file_change" and status == "failed":
        paths = [str(c.get("path")) for c in item.get("changes", []) if isinstance(c, dict)]
        return [f"Codex's edit of {', '.join(paths) or 'a file'} failed"]
    if kind == "command_execution" and status in ("failed", "declined"):
        out = str(item.get("aggregated_output") or "")
        refused = [line for line in out.splitlines() if _REFUSED.search(line)]
        if refused:
            return [
                f"Codex's command `{str(item.get('command'))[:120]}` was refused: {refused[-1][:200]}"
            ]
    if kind == "error" and item.get("message"):
        return [f"Codex reported an error: {str(item['message'])[:300]}"]
    return []


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


__all__ = ["CodexAgent"]
