"""A known coding-agent CLI as an agent: its binary, model, extra arguments and timeout.

Each preset (one file per CLI) says which flags make its CLI edit files in the checkout
without a terminal, how it is given the brief, and how its reply is read. The options come
from ``[agent.<name>]`` in autoresearch.toml (``--model`` on the command line wins):

- ``model``: passed with the CLI's own model flag; absent, the CLI's default;
- ``args``: extra arguments (a list, or one string split like a shell would);
- ``timeout``: seconds before the CLI's whole process group is killed (default 1800);
- ``binary``: the program to run, when it is not on PATH under its usual name;
- ``history_tokens``, ``env``, ``writable``: as for the ``command`` agent (the CLI's own
  settings folder, e.g. ``~/.claude/``, is writable without it).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from autoresearch.agents._base import Context
from autoresearch.agents._cli import BriefFiles, CliAgent
from autoresearch.agents.prompt import DEFAULT_HISTORY_TOKENS
from autoresearch.errors import ConfigError


class PresetAgent(CliAgent):
    """A coding-agent CLI run with the flags it needs; a subclass per CLI."""

    binary_name = ""  # the program's usual name on PATH
    install = ""  # how to install it: shown when it is missing

    def __init__(
        self,
        *,
        model: str | None = None,
        args: Sequence[str] | str = (),
        timeout: float = 1800.0,
        binary: str | None = None,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        env: Mapping[str, str] | None = None,
        writable: Sequence[str] = (),
    ) -> None:
        super().__init__(timeout=timeout, history_tokens=history_tokens, env=env, writable=writable)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(f"{self.name}: model must be a non-empty string, got {model!r}")
        self.model = model
        self.args = _arguments(self.name, args)
        self.binary = self._find(binary)

    def _find(self, binary: str | None) -> str:
        """The absolute path of the CLI; a missing one is one error saying how to install it."""
        if binary is not None and (not isinstance(binary, str) or not binary.strip()):
            raise ConfigError(
                f"{self.name}: binary must be a path or a program name, got {binary!r}"
            )
        wanted = binary or self.binary_name
        path = self.env.get("PATH", os.environ.get("PATH", ""))
        found = shutil.which(wanted, path=path)
        if found is None:
            where = (
                f"{wanted} is not an executable file"
                if "/" in wanted
                else f"`{wanted}` is not on PATH"
            )
            raise ConfigError(
                f"{self.name}: {where}; install it with `{self.install}`, or set "
                f'binary = "/path/to/{self.binary_name}" in [agent.{self.name}]'
            )
        return str(Path(found).absolute())

    def command_line(self, files: BriefFiles, context: Context) -> str:
        line = shlex.join([self.binary, *self.arguments(files, context)])
        if self.reads_stdin(files):
            line += " < " + shlex.quote(str(files.prompt))
        return line

    def arguments(self, files: BriefFiles, context: Context) -> list[str]:
        """The CLI's arguments, ``self.args`` included where the CLI expects them."""
        raise NotImplementedError

    def reads_stdin(self, files: BriefFiles) -> bool:
        """True when the brief goes to the CLI on stdin."""
        return False


def _arguments(name: str, args: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(args, str):
        try:
            return tuple(shlex.split(args))
        except ValueError as exc:
            raise ConfigError(f"{name}: args {args!r}: {exc}") from exc
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{name}: args must be a list of strings, got {args!r}")
    return tuple(args)


__all__ = ["PresetAgent"]
