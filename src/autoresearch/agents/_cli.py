"""What every coding-agent CLI backend shares: the brief, the process, the proposal.

A CLI agent runs a program in ``Context.workdir`` (a clean checkout of the parent commit)
with the rendered brief in a private folder. What it changes there is the proposal's patch
(``_checkout``); what it said (description, rationale, tokens, cost, why it changed
nothing) is read from its output by the backend's ``read_reply``.

The program runs through the same process-group code as the experiments' runs
(``StepRunner``), confined where bubblewrap can (``sandbox.confined``): a PID namespace of its
own, so that when it ends or is killed (past ``timeout`` seconds) everything it started dies
with it, processes that left its group and environment too; no capabilities; and a file
system it can write only in its checkout, its private folder and its own state (``state``,
``writable``). Elsewhere it could reach what judges it: the runs' worktrees, the Python
environment, git's objects and config (a filter runs a command in the orchestrator's git).
While it runs its pid file lies in the session's log folder, so that ``--resume`` kills what
a dead orchestrator left behind. Its output is kept there as
``agent-<experiment>.log``, with the keys of the environment redacted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from autoresearch.agents._base import Agent, Context, Proposal, Usage
from autoresearch.agents._checkout import Changes, Checkout, read_regular
from autoresearch.agents.prompt import (
    DEFAULT_HISTORY_TOKENS,
    DESCRIPTION_CHARS,
    log_tail,
    redact,
    render_brief,
    secret_values,
)
from autoresearch.errors import (
    AgentCancelled,
    AgentUnavailable,
    ConfigError,
    ExecutorError,
    ProposalError,
)
from autoresearch.executors.sandbox import confined, device_copies
from autoresearch.git import remove_tree
from autoresearch.process import StepRunner

MAX_COMMAND_BYTES = 120_000  # one argument may not exceed 128 KiB on Linux
# The CLI's priority: what it runs on this machine (tests, a script) while it proposes must not
# take the CPU from the runs it overlaps, the baseline's and the best's fresh runs included.
NICE = 19
TAIL_LINES, TAIL_CHARS = 20, 2000  # of the CLI's output, in a recorded reason
MAX_DESCRIPTION_BYTES = 1 << 20  # of its description file (the rationale is cut shorter still)
MAX_OUTPUT_BYTES = 64 << 20  # of its output, copied (keys redacted) into the session's logs


@dataclass(frozen=True)
class BriefFiles:
    """The CLI's private folder: the brief it reads and where it writes its description."""

    folder: Path

    @property
    def prompt(self) -> Path:
        return self.folder / "prompt.md"

    @property
    def description(self) -> Path:
        return self.folder / "description.txt"

    @property
    def scratch(self) -> Path:
        """Its ``TMPDIR`` when it is confined."""
        path = self.folder / "tmp"
        path.mkdir(exist_ok=True)
        return path


@dataclass(frozen=True)
class CliOutput:
    """One finished CLI process."""

    code: int | None  # exit status; None when it timed out and was killed
    text: str  # stdout and stderr together, as read from the pipe
    seconds: float
    log: Path


@dataclass(frozen=True)
class Reply:
    """What the CLI said, read from its output by the backend."""

    description: str = ""  # one line; "" when the CLI gave none
    rationale: str = ""
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=None))  # unknown unless reported
    problems: tuple[str, ...] = ()  # refusals and errors it reported (why nothing changed)


class CliAgent(Agent):
    """The shared machinery; a backend says how to call its CLI and how to read its reply."""

    name = "cli"
    runs_code = True
    reporting = ""  # appended to the brief: how this CLI should report its description
    # Where the CLI keeps its settings and sessions: "~/..." or "$VAR/..." (the CLI's
    # environment's; left out when unset); a folder (ending in "/") is made when missing.
    state: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        timeout: float = 1800.0,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        env: Mapping[str, str] | None = None,
        writable: Sequence[str] = (),
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(
                f"{self.name}: timeout must be a number > 0 (seconds), got {timeout!r}"
            )
        if isinstance(history_tokens, bool) or not isinstance(history_tokens, int):
            raise ConfigError(
                f"{self.name}: history_tokens must be an integer, got {history_tokens!r}"
            )
        if env is not None and not all(isinstance(v, str) for v in dict(env).values()):
            raise ConfigError(f"{self.name}: env must map names to strings, got {env!r}")
        if isinstance(writable, str) or not all(isinstance(w, str) for w in writable):
            raise ConfigError(
                f"{self.name}: writable must be a list of paths, got {writable!r}"
            )
        self.timeout, self.history_tokens = float(timeout), history_tokens
        self.env = dict(env or {})
        self.writable = tuple(writable)
        self._runner = StepRunner()  # cancel() kills what it runs, now and from then on

    # --- what a backend says ------------------------------------------------------------------

    def command_line(self, files: BriefFiles, context: Context) -> str:
        """The shell command line that runs the CLI in the checkout."""
        raise NotImplementedError

    def read_reply(self, output: CliOutput, files: BriefFiles) -> Reply:
        """Description, rationale, usage and reported problems, from the CLI's output."""
        return Reply(*(description_file(files) or ("", "")))

    def fallback_description(self, output: CliOutput) -> str:
        """A description when the reply gave none and the CLI made no commit of its own."""
        return ""

    def brief(self, context: Context, files: BriefFiles) -> str:
        text = render_brief(context, str(files.description), history_tokens=self.history_tokens)
        return text + ("\n" + self.reporting.strip() + "\n" if self.reporting.strip() else "")

    # --- the proposal ---------------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        if context.workdir is None:
            raise AgentUnavailable(
                f"{self.name}: the engine gave no work directory to run the CLI in"
            )
        tmp = Path(tempfile.mkdtemp(prefix="autoresearch-cli-"))
        try:
            checkout = Checkout.open(Path(context.workdir), context.parent, tmp / "git")
            try:
                return self._propose(context, checkout, BriefFiles(tmp))
            finally:
                checkout.restore()
        finally:  # what the CLI left there, links included, without following one
            remove_tree(tmp)

    def _propose(self, context: Context, checkout: Checkout, files: BriefFiles) -> Proposal:
        files.prompt.write_text(self.brief(context, files), encoding="utf-8")
        line = self.command_line(files, context)
        if len(line.encode()) > MAX_COMMAND_BYTES:
            raise ProposalError(f"{self.name}: the brief is too long for one command-line argument")
        output = self._execute(line, checkout, files, context)
        reply = self.read_reply(output, files)
        meta: dict[str, object] = {
            "command": self._redact(line[:500]),
            "exit_code": output.code,
            "seconds": round(output.seconds, 3),
        }
        if files.folder not in output.log.parents:  # kept in the session's log folder
            meta["log"] = str(output.log)
        if output.code is None:
            self._fail(
                f"{self.name} timed out after {self.timeout:g} s and was killed",
                output,
                reply,
                meta,
            )
        if output.code != 0:
            self._fail(f"{self.name} exited with status {output.code}", output, reply, meta)
        changes = checkout.changes(context.editable_globs or tuple(context.editable), context.max_file_kb)
        meta["dropped"] = list(changes.dropped)
        if not changes.patch.strip():
            self._fail(_nothing_kept(self.name, changes), output, reply, meta)
        description = reply.description or changes.subject or self.fallback_description(output)
        return Proposal(
            description=self._redact(clip(description) or f"change by {self.name}"),
            rationale=self._redact(reply.rationale),
            patch=changes.patch,
            usage=reply.usage,
            meta=meta,
        )

    @property
    def needs_workdir(self) -> bool:
        return True  # the CLI edits the proposal checkout; its diff is the proposal

    def own_paths(self) -> list[Path]:
        """Outside its checkout, what the CLI may write: ``state`` and ``writable``, ``~`` and
        ``$VAR`` read from the CLI's environment (its ``env`` over this process's)."""
        env = {**os.environ, **self.env}
        paths = []
        for entry in (*self.state, *self.writable):
            head, sep, rest = entry.partition("/")
            if head == "~":
                head = env.get("HOME") or str(Path.home())
            elif head.startswith("$"):
                head = env.get(head[1:], "")
                if not head:
                    continue
            path = Path(head + sep + rest)
            path = path if path.is_absolute() else Path.cwd() / path
            if entry.endswith("/") and entry in self.state:
                path.mkdir(parents=True, exist_ok=True)
            paths.append(path)
        return paths

    def _execute(self, line: str, checkout: Checkout, files: BriefFiles, context: Context) -> CliOutput:
        env = {
            **os.environ,
            **self.env,
            "AUTORESEARCH_PROMPT_FILE": str(files.prompt),
            "AUTORESEARCH_DESCRIPTION_FILE": str(files.description),
            **checkout.environment(),
        }
        with device_copies(context.log_dir or Path(tempfile.gettempdir())) as devices:  # /tmp may be nodev
            prefix = confined([checkout.top, files.folder, *self.own_paths()], [checkout.top / ".git"],
                              context.hidden, devices)  # fmt: skip
            return self._confined(line, checkout, files, context, env, prefix)

    def _confined(self, line: str, checkout: Checkout, files: BriefFiles, context: Context,
                  env: dict[str, str], prefix: list[str]) -> CliOutput:  # fmt: skip
        if prefix:  # /tmp is read-only: a scratch folder of its own
            env["TMPDIR"] = str(files.scratch)
        log = _log_path(context, files.folder)
        raw = files.folder / "output.log"  # the CLI may print keys: they stay out of the task
        if log != raw:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.unlink(missing_ok=True)
            log.symlink_to(raw)  # the pid file lands next to it, where --resume looks
        try:
            step = self._runner.step(self.name, line, checkout.workdir, env, log, self.timeout,
                                     prefix=prefix, nice=NICE)  # fmt: skip
        except ExecutorError as exc:
            raise AgentUnavailable(f"{self.name}: {exc}") from exc
        finally:
            if log != raw:
                log.unlink(missing_ok=True)
                text = (read_regular(raw, MAX_OUTPUT_BYTES) or b"").decode("utf-8", errors="replace")
                log.write_text(self._redact(text), encoding="utf-8")
        if self._runner.killed:
            raise AgentCancelled(f"{self.name} was stopped: the session is stopping")
        return CliOutput(step.returncode, step.output, step.seconds, log)

    def cancel(self) -> None:
        self._runner.kill_all()

    def _redact(self, text: str) -> str:
        return redact(text, secret_values({**os.environ, **self.env}))

    def _fail(
        self, what: str, output: CliOutput, reply: Reply, meta: dict[str, object]
    ) -> NoReturn:
        """Raise the ``invalid`` reason: what happened, why when the CLI said, its last lines."""
        text = what + "".join(f"; {p}" for p in reply.problems)
        tail = log_tail(output.text, TAIL_LINES, TAIL_CHARS)
        if tail.strip():
            text += f"; output tail:\n{tail}"
        raise ProposalError(self._redact(text), usage=reply.usage, meta=meta)


def _nothing_kept(name: str, changes: Changes) -> str:
    if not changes.dropped:
        return f"{name} made no change to the files"
    shown = ", ".join(changes.dropped[:5]) + (" ..." if len(changes.dropped) > 5 else "")
    return (
        f"{name} made no change to the files (it only created files that match no editable "
        f"glob, which were dropped: {shown})"
    )


def _log_path(context: Context, fallback: Path) -> Path:
    """``agent-<id>.log`` in the session's log folder (where ``--resume`` looks for pid files);
    else a file in ``fallback``."""
    if context.log_dir is not None:
        return context.log_dir / f"agent-{context.experiment_id}.log"
    return fallback / "output.log"


def own_text(path: Path) -> str | None:
    """A file the CLI wrote in its private folder (its description, last message, chat): at
    most ``MAX_DESCRIPTION_BYTES``, and ``None`` unless it is a regular file (never through a
    link, never a FIFO)."""
    data = read_regular(path, MAX_DESCRIPTION_BYTES)
    return None if data is None else data.decode("utf-8", errors="replace")


def description_file(files: BriefFiles) -> tuple[str, str] | None:
    """(first line, the rest) of the description file, when the CLI wrote one."""
    text = (own_text(files.description) or "").strip()
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        return None
    return clip(lines[0]), "\n".join(lines[1:]).strip()


def clip(line: str) -> str:
    """One line of at most ``DESCRIPTION_CHARS``, without markdown decoration."""
    flat = " ".join(line.split()).strip("#*`> ")
    return flat[:DESCRIPTION_CHARS]


def first_line(text: str) -> tuple[str, str]:
    """(the first non-empty line, clipped; the whole text) of a reply."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return (clip(lines[0]) if lines else ""), text.strip()


__all__ = ["BriefFiles", "CliAgent", "CliOutput", "Reply", "clip", "description_file", "first_line", "own_text"]
