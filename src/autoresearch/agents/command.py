"""An external coding-agent CLI (Claude Code, Codex, aider, ...) as an agent.

The CLI runs in ``Context.workdir`` (a clean checkout of the parent commit) with the
rendered brief; whatever it changes there, as a ``git diff`` against the parent, is the
proposal's patch, checked against the allowlist like any other. The description is the
first line of a file we name in the brief, or else the CLI's last output line.

``cmd`` is a shell command line with placeholders, each replaced by a shell-quoted value:

- ``{prompt_file}``: a file holding the brief (``claude -p "$(cat {prompt_file})"``,
  ``aider --message-file {prompt_file}``);
- ``{prompt}``: the brief itself, as one argument (``codex exec {prompt}``);
- ``{description_file}``: where the CLI should write its one-line description;
- ``{workdir}``: the checkout it works in.

Without ``{prompt_file}`` or ``{prompt}`` the brief is given on stdin. The command runs in
its own process group; past ``timeout`` seconds the whole group is killed and the
experiment is ``invalid``. The checkout is reset to the parent afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from autoresearch.agents._base import Agent, Context, Proposal, Usage
from autoresearch.agents.prompt import (
    DEFAULT_HISTORY_TOKENS,
    DESCRIPTION_CHARS,
    log_tail,
    redact,
    render_brief,
    secret_values,
)
from autoresearch.errors import AgentUnavailable, ConfigError, ProposalError
from autoresearch.process import kill_group

PLACEHOLDERS = ("prompt_file", "prompt", "description_file", "workdir")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
MAX_COMMAND_BYTES = 120_000  # one argument may not exceed 128 KiB on Linux
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a timed-out command


class CommandAgent(Agent):
    """Runs a coding-agent CLI in the candidate's checkout; its diff is the proposal."""

    name = "command"
    @property
    def needs_workdir(self) -> bool:
        return True  # the CLI edits the proposal checkout; its diff is the proposal

    def __init__(
        self,
        cmd: str,
        *,
        timeout: float = 1800.0,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        env: Mapping[str, str] | None = None,
        shell: str = "/bin/sh",
    ) -> None:
        if not cmd or not cmd.strip():
            raise ConfigError(
                "command: --cmd is empty; e.g. --cmd 'claude -p \"$(cat {prompt_file})\"'"
            )
        if timeout <= 0:
            raise ConfigError(f"command: timeout must be > 0 seconds, got {timeout}")
        self.cmd, self.timeout, self.history_tokens = cmd, float(timeout), history_tokens
        self.env = dict(env or {})
        self.shell = shell
        self.uses_stdin = not re.search(r"\{prompt(_file)?\}", cmd)

    def propose(self, context: Context) -> Proposal:
        if context.workdir is None:
            raise AgentUnavailable("command: the engine gave no work directory to run the CLI in")
        checkout = _Checkout.open(Path(context.workdir), context.parent)
        with tempfile.TemporaryDirectory(prefix="autoresearch-cmd-") as tmp:
            try:
                return self._run(context, checkout, Path(tmp))
            finally:
                checkout.restore()

    def _run(self, context: Context, checkout: _Checkout, tmp: Path) -> Proposal:
        description_file = tmp / "description.txt"
        prompt = render_brief(context, str(description_file), history_tokens=self.history_tokens)
        (tmp / "prompt.md").write_text(prompt, encoding="utf-8")
        values = {
            "prompt_file": str(tmp / "prompt.md"),
            "prompt": prompt,
            "description_file": str(description_file),
            "workdir": str(checkout.workdir),
        }
        line = _PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), self.cmd)
        if len(line.encode()) > MAX_COMMAND_BYTES:
            raise ProposalError(
                "the brief is too long to pass as {prompt}; use {prompt_file} in --cmd"
            )
        started = time.monotonic()
        code, output = self._execute(line, checkout.workdir, prompt, tmp, values)
        seconds = time.monotonic() - started
        if code is None:
            self._fail(f"command timed out after {self.timeout:g} s and was killed", output)
        if code != 0:
            self._fail(f"command exited with status {code}", output)
        patch = checkout.diff()
        if not patch.strip():
            self._fail("command made no change to the files", output)
        description, rationale = _description(description_file, output)
        secrets = self._secrets()
        return Proposal(
            description=redact(description, secrets),
            rationale=redact(rationale, secrets),
            patch=patch,
            usage=_reported_usage(output),
            meta={
                "command": redact(self.cmd, secrets),
                "exit_code": code,
                "seconds": round(seconds, 3),
            },
        )

    def _secrets(self) -> list[str]:
        return secret_values({**os.environ, **self.env})

    def _fail(self, what: str, output: str) -> NoReturn:
        tail = redact(log_tail(output, 20, 2000), self._secrets())
        raise ProposalError(f"{what}; output tail:\n{tail}" if tail.strip() else what)

    def _execute(
        self, line: str, workdir: Path, prompt: str, tmp: Path, values: Mapping[str, str]
    ) -> tuple[int | None, str]:
        """Run ``line``; (exit status or None on timeout, combined output)."""
        env = {
            **os.environ,
            **self.env,
            "AUTORESEARCH_PROMPT_FILE": values["prompt_file"],
            "AUTORESEARCH_DESCRIPTION_FILE": values["description_file"],
        }
        log_path = tmp / "output.log"
        with open(log_path, "wb") as log, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                [self.shell, "-c", line],
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE if self.uses_stdin else devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            code = _wait(proc, prompt if self.uses_stdin else None, self.timeout)
        return code, log_path.read_text(encoding="utf-8", errors="replace")


def _wait(proc: subprocess.Popen[bytes], stdin_text: str | None, timeout: float) -> int | None:
    """Feed stdin (a command that does not read it is fine) and wait up to ``timeout``;
    on timeout kill the whole process group."""
    data = stdin_text.encode("utf-8") if proc.stdin is not None and stdin_text is not None else None
    try:
        proc.communicate(input=data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None
    except BaseException:  # Ctrl-C, or the engine stopping: the CLI must not outlive us
        _kill_group(proc)
        raise
    return proc.returncode


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the CLI's whole group, then SIGKILL whatever is left after a grace period."""
    kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE)
    kill_group(proc.pid, signal.SIGKILL)  # the leader may be gone; its children are not
    proc.wait()


# --- git ----------------------------------------------------------------------------------------


def _git(workdir: Path, *args: str, check: bool = True) -> str:
    from autoresearch.git import git_argv, git_environment  # hooks off, no API keys

    done = subprocess.run(
        git_argv("-c", "core.quotepath=off", *args), cwd=workdir, capture_output=True, text=True,
        env=git_environment(),
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AgentUnavailable(
            f"command: git {' '.join(args)} failed in {workdir}: {done.stderr.strip()}"
        )
    return done.stdout


@dataclass(frozen=True)
class _Checkout:
    """The state of the agent's checkout before the CLI ran, to diff against and restore."""

    workdir: Path  # the task folder, where the CLI runs
    top: Path  # the worktree root
    prefix: str  # the task folder inside it: "" or "sub/dir/"
    base: str  # the parent commit
    head_ref: str | None  # the branch HEAD was on; None when detached
    untracked: frozenset[str]  # untracked paths (links, caches) present before: left alone

    @classmethod
    def open(cls, workdir: Path, parent: str) -> _Checkout:
        top = Path(_git(workdir, "rev-parse", "--show-toplevel").strip())
        base = _git(workdir, "rev-parse", f"{parent or 'HEAD'}^{{commit}}").strip()
        ref = _git(top, "symbolic-ref", "-q", "HEAD", check=False).strip() or None
        prefix = _git(workdir, "rev-parse", "--show-prefix").strip()
        return cls(workdir, top, prefix, base, ref, frozenset(_untracked(top)))

    def diff(self) -> str:
        """Everything the CLI changed since ``base`` (commits, edits, new files) as one patch
        with task-relative paths; a change outside the task folder is a ``ProposalError``."""
        new = [p for p in _untracked(self.top) if p not in self.untracked]
        if new:
            _git(self.top, "add", "--intent-to-add", "--", *new)
        changed = _git(self.top, "diff", "--name-only", "-z", self.base).split("\0")
        outside = [p for p in changed if p and not p.startswith(self.prefix)]
        if outside:
            raise ProposalError(
                f"the command changed files outside the task folder: {', '.join(outside[:5])}"
            )
        return _git(
            self.workdir, "diff", "--binary", "--no-color", "--no-ext-diff", "--relative", self.base
        )

    def restore(self) -> None:
        """Put the checkout back at ``base``, clean, whatever the CLI did (branches included)."""
        if _git(self.top, "symbolic-ref", "-q", "HEAD", check=False).strip() != (
            self.head_ref or ""
        ):
            target = (
                ["--detach", self.base]
                if self.head_ref is None
                else [self.head_ref.removeprefix("refs/heads/")]
            )
            _git(self.top, "checkout", "-q", "-f", *target, check=False)
        _git(self.top, "reset", "-q", "--hard", self.base)
        excludes = [
            arg for path in sorted(self.untracked) for arg in ("-e", "/" + _escape_glob(path))
        ]
        _git(self.top, "clean", "-q", "-f", "-d", *excludes)


def _untracked(top: Path) -> list[str]:
    out = _git(top, "ls-files", "-z", "--others", "--exclude-standard")
    return [p for p in out.split("\0") if p]


def _escape_glob(path: str) -> str:
    return re.sub(r"([*?\[\]\\!#])", r"\\\1", path)


# --- what the CLI said ------------------------------------------------------------------------------


def _description(description_file: Path, output: str) -> tuple[str, str]:
    """(one-line description, rationale) from the description file, else the last output line."""
    if description_file.is_file():
        text = description_file.read_text(encoding="utf-8", errors="replace").strip()
        lines = text.splitlines()
        if lines and lines[0].strip():
            return _clip(lines[0]), "\n".join(lines[1:]).strip()
    result = _final_json(output)
    if result and isinstance(result.get("result"), str) and result["result"].strip():
        lines = [x for x in result["result"].strip().splitlines() if x.strip()]
        return _clip(lines[-1]), result["result"].strip()
    lines = [x for x in output.splitlines() if x.strip()]
    return (_clip(lines[-1]) if lines else "change by the command agent"), ""


def _clip(line: str) -> str:
    flat = " ".join(line.split()).strip("#*` ")
    return flat[:DESCRIPTION_CHARS] or "change by the command agent"


def _final_json(output: str) -> dict[str, Any] | None:
    """The last output line, when it is a JSON object (``claude -p --output-format json``)."""
    lines = [x for x in output.splitlines() if x.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _reported_usage(output: str) -> Usage:
    """Tokens and cost when the CLI reports them in a final JSON line; else an unknown cost."""
    result = _final_json(output) or {}
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    assert isinstance(usage, dict)

    def count(*keys: str) -> int:
        return sum(int(v) for k in keys if isinstance(v := usage.get(k), int | float))

    cached = count("cache_read_input_tokens", "cached_input_tokens")
    tokens = count("input_tokens", "cache_creation_input_tokens") + cached
    cost = result.get("total_cost_usd", result.get("cost_usd"))
    cost_usd = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None
    return Usage(tokens, cached, count("output_tokens"), cost_usd)


__all__ = ["PLACEHOLDERS", "CommandAgent"]
