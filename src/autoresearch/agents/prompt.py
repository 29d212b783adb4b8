"""What an LLM agent is told, and how its reply becomes a ``Proposal``: one place for every backend.

A ``Context`` is rendered in three parts, in an order that keeps provider prompt caches warm:

- ``system``: the rules, the research brief (program.md) and the read-only context files.
  Stable for a whole session, so Anthropic caches it once and OpenAI's automatic prefix
  cache reuses it.
- ``code``: the editable files in full, as they are at the parent commit. It changes only
  when an experiment is kept, so it is cached too.
- ``variable``: the state (best and baseline metric, noise), the history table trimmed to a
  token budget, the last failure's log tail and why the last proposal was rejected.

The reply is one call of the tool ``propose_change(description, rationale, edits[])``;
``parse_proposal`` turns its arguments into a ``Proposal`` or raises ``ProposalError`` with
a reason the model will read next time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from autoresearch.agents._base import Context, Experiment
from autoresearch.agents._reply import (
    DESCRIPTION_CHARS,
    TOOL_NAME,
    one_line,
    parse_proposal,
    parse_text_reply,
)
from autoresearch.errors import AgentCancelled, AgentUnavailable
from autoresearch.process import secret_values
from autoresearch.records import Verdict

log = logging.getLogger(__name__)

DEFAULT_HISTORY_TOKENS = 6000  # budget of the history table (about 200 rows)
LOG_TAIL_LINES = 60
LOG_TAIL_CHARS = 4000
MAX_BACKOFF = 600.0  # seconds between two failed calls, at most

TOOL_DESCRIPTION = (
    "Propose the next experiment: one focused change to the editable files. "
    "The harness applies the edits, runs the code under the time budget and measures the metric."
)

_EDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "File to change, relative to the task root."},
        "search": {
            "type": "string",
            "description": "Exact text copied from the current file; must match exactly once.",
        },
        "replace": {"type": "string", "description": "Text that replaces `search`."},
        "content": {
            "type": "string",
            "description": "The whole new file; use instead of search/replace to rewrite or create a file.",
        },
    },
    "required": ["path"],
}

TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "description": {
            "type": "string",
            "description": "One line, under 100 characters: what this experiment changes.",
        },
        "rationale": {
            "type": "string",
            "description": "Why you expect it to improve the metric, given the history.",
        },
        "edits": {
            "type": "array",
            "minItems": 1,
            "description": "Each edit is {path, search, replace} or {path, content}.",
            "items": _EDIT_SCHEMA,
        },
    },
    "required": ["description", "rationale", "edits"],
}

_RULES = """\
You are an autonomous research engineer. Each turn you propose ONE experiment: a focused
change to the code. A trusted harness runs the changed code under a fixed time budget and
measures `{metric}` ({better} is better). A change that beats the best result by more than
the noise is kept and becomes the code you edit next; anything else is discarded.

Rules:
- Reply by calling the tool `{tool}` exactly once. If you cannot call tools, reply
  with one JSON object with the tool's fields (description, rationale, edits) and nothing else.
- Only these files may be changed: {editable}. Every other file, the harness included, is
  read-only: an edit to it is rejected.
- An edit is either {{path, search, replace}} or {{path, content}}. `search` must be copied
  exactly from the current file and match exactly once: include enough surrounding lines.
  `content` replaces (or creates) the whole file.
- `description` is one line under 100 characters (e.g. "double the learning rate to 0.08");
  it goes in the results table. `rationale` says why it should help.
- Change one idea at a time, so the result says something. Learn from the history: do not
  repeat a discarded idea unchanged; crashes and timeouts show what breaks.
- The run must finish within the time budget, its tests and evaluation included (they run your
  code too); code that crashes or runs over is discarded. Each editable file has a size limit.
"""


@dataclass(frozen=True)
class Prompt:
    """A rendered context: the cacheable parts first, the per-experiment part last."""

    system: str  # rules, brief, read-only files: stable for the session
    code: str  # the editable files: stable until the next keep
    variable: str  # state, history, last failure, last rejection

    @property
    def user(self) -> str:
        """The user message: the code, then the variable part."""
        return f"{self.code}\n\n{self.variable}"

    @property
    def text(self) -> str:
        """Everything as one document."""
        return f"{self.system}\n\n{self.user}"


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token), for budgets only."""
    return len(text) // 4 + 1


# --- rendering ------------------------------------------------------------------------------


def render(context: Context, *, history_tokens: int = DEFAULT_HISTORY_TOKENS) -> Prompt:
    """The prompt of an API agent: files in full, the history trimmed to ``history_tokens``."""
    system = "\n\n".join(
        [_rules(context), _brief(context), _files("Read-only files", context.readonly)]
    )
    code = _files(
        "Editable files (the current best code; your edits apply to this text)", context.editable
    )
    task = f"# Task\n\nPropose experiment #{context.experiment_id} now: call `{TOOL_NAME}`."
    variable = "\n\n".join([*_variable_sections(context, history_tokens), task])
    return Prompt(system=system.strip(), code=code, variable=variable)


def render_brief(
    context: Context, description_file: str, *, history_tokens: int = DEFAULT_HISTORY_TOKENS
) -> str:
    """The prompt of a coding-agent CLI that works in a checkout and reads the files itself."""
    editable = ", ".join(context.editable_globs or tuple(context.editable)) or "(none)"
    readonly = ", ".join(context.readonly) or "(none)"
    head = f"""\
# Research experiment #{context.experiment_id}

You are working in a git checkout of the current best code of a research task. Make ONE
focused change that you expect to improve `{context.metric_name}` ({_better(context)} is better),
by editing files in this directory. A trusted harness will run the code afterwards under a
fixed time budget and keep the change only if it beats the best result by more than the noise.

Rules:
- Only these files may be changed: {editable}. Others (read them, do not change them): {readonly}.
  A change to any other file makes the whole experiment invalid.
- Do not commit, do not switch branches, and do not run the full experiment yourself.
- When done, write a one-line description of the change (under 100 characters) as the first
  line of the file {description_file}, then a blank line and your rationale.
"""
    sections = [head, _brief(context), *_variable_sections(context, history_tokens)]
    return "\n\n".join(s for s in sections if s).strip() + "\n"


def _better(context: Context) -> str:
    return "lower" if context.direction == "minimize" else "higher"


def _rules(context: Context) -> str:
    editable = ", ".join(context.editable_globs or tuple(context.editable)) or "(none)"
    return _RULES.format(
        metric=context.metric_name, better=_better(context), tool=TOOL_NAME, editable=editable
    ).strip()


def _brief(context: Context) -> str:
    text = context.instructions.strip()
    return f"# Research brief\n\n{text}" if text else ""


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _file_block(path: str, text: str) -> str:
    fence = _fence(text)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"## {path}\n\n{fence}\n{body}{fence}"


def _files(title: str, files: Mapping[str, str]) -> str:
    if not files:
        return ""
    return "\n\n".join([f"# {title}", *(_file_block(p, t) for p, t in sorted(files.items()))])


def _variable_sections(context: Context, history_tokens: int) -> list[str]:
    sections = [_state(context), history_table(context, history_tokens)]
    if context.note.strip():  # what happened to a proposal on its way to a run (a stale parent)
        sections.append(f"# Note\n\n{context.note.strip()}")
    if context.last_failure.strip():
        tail = log_tail(context.last_failure)
        fence = _fence(tail)
        sections.append(f"# Last failure (log tail)\n\n{fence}\n{tail}\n{fence}")
    if context.last_rejection.strip():
        sections.append(
            "# Your previous proposal was rejected\n\n"
            f"{context.last_rejection.strip()}\n\nFix this in the next proposal."
        )
    return [s for s in sections if s]


def _num(value: float | None) -> str:
    return "-" if value is None else format(value, ".6g")


def _state(context: Context) -> str:
    lines = [f"# State\n\n- metric: `{context.metric_name}`, {_better(context)} is better"]
    lines.append(f"- best so far: {_num(context.best_metric)}")
    lines.append(f"- baseline (unchanged code): {_num(context.baseline_metric)}")
    if context.noise is not None:
        lines.append(
            f"- noise (std of the metric between baseline runs): {_num(context.noise)}; "
            "smaller differences are chance"
        )
    if context.time_limit is not None and context.budget_steps:
        lines.append(f"- time limit per run: {context.time_limit:.1f} s for its {' and '.join(context.budget_steps)} "
                     "steps together; past it the run is stopped and discarded")  # fmt: skip
    elif context.time_budget:
        lines.append(f"- time budget per run: {context.time_budget:g} s")
    return "\n".join(lines)


# --- history ----------------------------------------------------------------------------------

_ALWAYS = (Verdict.BASELINE, Verdict.KEEP)


def _deltas(rows: Sequence[Experiment], direction: str) -> dict[int, float | None]:
    """Each row's metric minus the best recorded before it (negative is better when minimizing)."""
    best: float | None = None
    out: dict[int, float | None] = {}
    for row in rows:
        out[row.id] = None if row.metric is None or best is None else row.metric - best
        if row.verdict in _ALWAYS and row.metric is not None:
            beats = best is None or (
                row.metric < best if direction == "minimize" else row.metric > best
            )
            best = row.metric if beats else best
    return out


def _row_line(row: Experiment, delta: float | None) -> str:
    text = row.description
    if row.reason and row.verdict not in _ALWAYS:
        text = f"{text} ({row.verdict}: {row.reason})"
    shown = "-" if delta is None else f"{delta:+.6g}"
    return f"| {row.id} | {row.verdict} | {_num(row.metric)} | {shown} | {one_line(text, 160)} |"


def _priority(rows: Sequence[Experiment]) -> list[Experiment]:
    """Rows that are not always shown, most informative first: two recent discards for each
    recent failure (crash, timeout, invalid), newest first."""
    discards = [r for r in reversed(rows) if r.verdict == "discard"]
    failures = [r for r in reversed(rows) if r.verdict not in (*_ALWAYS, "discard")]
    order: list[Experiment] = []
    for i in range(max(len(discards) // 2 + 1, len(failures))):
        order += discards[2 * i : 2 * i + 2] + failures[i : i + 1]
    return order


def select_history(
    rows: Sequence[Experiment], budget_tokens: int, direction: str
) -> list[Experiment]:
    """The rows shown: all baselines and keeps, then recent discards and failures while the
    table fits ``budget_tokens``; in their original order."""
    deltas = _deltas(rows, direction)
    chosen = {r.id for r in rows if r.verdict in _ALWAYS}
    used = sum(estimate_tokens(_row_line(r, deltas[r.id])) for r in rows if r.id in chosen)
    for row in _priority(rows):
        cost = estimate_tokens(_row_line(row, deltas[row.id]))
        if used + cost > budget_tokens:
            break
        chosen.add(row.id)
        used += cost
    return [r for r in rows if r.id in chosen]


def history_table(context: Context, budget_tokens: int = DEFAULT_HISTORY_TOKENS) -> str:
    """The history as a table trimmed to ``budget_tokens``, with a note on what was left out."""
    rows = context.history
    if not rows:
        return "# History\n\nNo experiments yet."
    shown = select_history(rows, budget_tokens, context.direction)
    deltas = _deltas(rows, context.direction)
    head = [
        f"# History ({len(rows)} experiments, oldest first; delta = metric minus the best before it)",
        "",
        "| id | verdict | metric | delta | description |",
        "|---|---|---|---|---|",
    ]
    lines = head + [_row_line(r, deltas[r.id]) for r in shown]
    shown_ids = {r.id for r in shown}
    left_out = _count_verdicts(r for r in rows if r.id not in shown_ids)
    if left_out:
        lines += ["", f"({left_out} left out to save space)"]
    return "\n".join(lines)


def _count_verdicts(rows: Iterable[Experiment]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    return ", ".join(f"{n} older {verdict}" for verdict, n in sorted(counts.items()))


def log_tail(text: str, lines: int = LOG_TAIL_LINES, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``lines`` lines of a log, at most ``chars`` characters."""
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail if len(tail) <= chars else "…" + tail[-chars:]


# --- the call -------------------------------------------------------------------------------

T = TypeVar("T")


def call_with_retries(
    call: Callable[[], T],
    *,
    agent: str,
    errors: tuple[type[Exception], ...],
    transient: Callable[[Exception], bool],
    max_failures: int,
    backoff: float,
    secrets: Sequence[str] = (),
    cancelled: threading.Event | None = None,
) -> T:
    """``call()``, tried again after a transient error (the SDK has already retried it).

    ``max_failures`` transient errors in a row, or one error that retrying cannot fix
    (a bad key, an unknown model), raise ``AgentUnavailable``: the session stops. The wait
    before another try ends at once when ``cancelled`` is set: ``AgentCancelled``.
    """
    failures = 0
    while True:
        try:
            return call()
        except errors as exc:
            message = redact(f"{type(exc).__name__}: {exc}", secrets)
            if not transient(exc):
                raise AgentUnavailable(f"{agent}: {message}") from exc
            failures += 1
            if failures >= max(1, max_failures):
                raise AgentUnavailable(
                    f"{agent}: the backend failed {failures} times in a row; last error: {message}"
                ) from exc
            wait = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            log.warning("%s: %s; trying again in %.0f s", agent, message, wait)
            if (cancelled or threading.Event()).wait(wait):
                raise AgentCancelled(f"{agent}: the session is stopping; not trying again") from exc


# --- secrets ----------------------------------------------------------------------------------

def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


__all__ = [
    "DEFAULT_HISTORY_TOKENS",
    "DESCRIPTION_CHARS",
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "TOOL_SCHEMA",
    "Prompt",
    "call_with_retries",
    "estimate_tokens",
    "history_table",
    "log_tail",
    "parse_proposal",
    "parse_text_reply",
    "redact",
    "render",
    "render_brief",
    "secret_values",
    "select_history",
]
