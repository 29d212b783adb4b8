"""aider as an agent: ``--agent aider``.

Runs ``aider --message-file BRIEF ... EDITABLE_FILES`` in the checkout: one message, then
exit; the editable files (those at the parent commit) are named on its command line and the
context files are added read-only (``--read``). The flags keep aider from touching anything
but those files and from asking anything: ``--yes-always`` answers its questions, edits are
in the diff format, it leaves git alone (``--no-git``: without it, aider writes a
placeholder ``user.name`` into the repository's shared ``.git/config`` where no global git
identity exists, which the tripwire reports), neither commits (``--no-auto-commits``) nor
edits ``.gitignore`` (``--no-gitignore``), builds no repository map (``--map-tokens 0``), runs no shell
commands, opens no URLs, sends no analytics, and its chat history goes to the brief's
private folder, not the checkout.

The reply is read from that chat history (aider's own record of the conversation: the
brief as ``####`` lines, tool messages as ``>`` lines, the model's text as is): its first
line is the description, never a status line such as "Applied edit to train.py". Tokens
and cost come from its ``Tokens: ... sent, ... received. Cost: ... session.`` lines.
"""

from __future__ import annotations

import os
import re
import shlex

from autoresearch.agents._base import Context, Usage
from autoresearch.agents._cli import BriefFiles, CliOutput, Reply, clip, description_file, own_text
from autoresearch.agents.presets._base import PresetAgent

_TOKENS = re.compile(
    r"^Tokens: (?P<body>.*?received)\.(?: Cost: .*?\$(?P<session>[0-9.]+) session\.)?"
)
_COUNT = re.compile(r"(?P<n>[0-9.]+)(?P<unit>[kM]?) (?P<what>sent|received|cache hit|cache write)")
_STATUS = re.compile(
    r"^(Aider v|Model:|Main model:|Weak model:|Editor model:|Git repo:|Repo-map:|Added .* to the chat"
    r"|Applied edit to|Commit [0-9a-f]{7}|Tokens:|Cost:|Warning|Use /help|Did not apply edit)"
)
_FAILURES = re.compile(
    r"did not conform to the edit format|SearchReplaceNoExactMatch|failed to match|"
    r"reflections allowed|Skipping edits to|litellm\.\w+Error|API ?Error|Unable to|"
    r"is not in the chat|No such file|Error:",
    re.I,
)
_FLAGS = shlex.split(  # see the module's docstring
    "--edit-format diff --yes-always --no-git --no-gitignore --no-auto-commits --map-tokens 0 "
    "--no-pretty --no-stream --no-check-update --no-show-release-notes --no-analytics "
    "--no-show-model-warnings --no-detect-urls --no-suggest-shell-commands"
)
_FENCE = re.compile(r"^(```|<<<<<<< SEARCH|=======$|>>>>>>> REPLACE)")


class AiderAgent(PresetAgent):
    """aider with one message, the editable files in the chat, nothing else written."""

    name = "aider"
    binary_name = "aider"
    state = ("~/.aider/",)  # caches, analytics id
    install = "python -m pip install aider-chat"
    reporting = (
        "You can only edit the files in this chat, so do not write the description file: begin "
        "your reply with the one-line description instead, then your rationale, then the edits."
    )

    def arguments(self, files: BriefFiles, context: Context) -> list[str]:
        args = ["--model", self.model] if self.model else []
        args += [*_FLAGS, "--chat-history-file", str(files.folder / "chat.md")]
        args += ["--input-history-file", os.devnull, "--message-file", str(files.prompt)]
        for path in sorted(set(context.readonly) - set(context.editable)):
            args += ["--read", path]
        return [*args, *self.args, *sorted(context.editable)]

    def read_reply(self, output: CliOutput, files: BriefFiles) -> Reply:
        chat = own_text(files.folder / "chat.md")
        text = _assistant_text(chat) if chat is not None else _without_status(output.text)
        description, rationale = description_file(files) or _describe(text)
        return Reply(description, rationale, _usage(output.text), _problems(output.text))


def _assistant_text(history: str) -> str:
    """The model's text in an aider chat history: what follows the brief (``####`` lines),
    without aider's own messages (``>`` lines)."""
    lines = history.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("####")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("####")), len(lines))
    return "\n".join(line for line in lines[end:] if not line.startswith(">")).strip()


def _without_status(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if not _STATUS.match(line)).strip()


def _describe(text: str) -> tuple[str, str]:
    """(description, rationale): the first prose line of the reply, and its prose."""
    prose = _prose(text)
    return (clip(prose[0]) if prose else ""), "\n".join(prose).strip()


def _prose(text: str) -> list[str]:
    """The reply's lines outside fenced edit blocks, without the file name line before one."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            while not fenced and out and not out[-1].strip():
                out.pop()
            if not fenced and out and " " not in out[-1].strip(" `*"):
                out.pop()  # the file name line that opens an edit block
            fenced = not fenced
            continue
        if not fenced and not _FENCE.match(line) and (line.strip() or out):
            out.append(line)
    return [line for line in out if line.strip()]


def _usage(output: str) -> Usage:
    sent = received = cached = 0
    session: float | None = None
    for line in output.splitlines():
        match = _TOKENS.match(line.strip())
        if match is None:
            continue
        counts = {m["what"]: _tokens(m["n"], m["unit"]) for m in _COUNT.finditer(match["body"])}
        sent += counts.get("sent", 0)
        received += counts.get("received", 0)
        cached += counts.get("cache hit", 0)
        session = float(match["session"]) if match["session"] else session
    return Usage(sent, cached, received, session)


def _tokens(number: str, unit: str) -> int:
    return round(float(number) * {"": 1, "k": 1_000, "M": 1_000_000}[unit])


def _problems(output: str) -> tuple[str, ...]:
    found = [line.strip()[:200] for line in output.splitlines() if _FAILURES.search(line)]
    return tuple(dict.fromkeys(found))[-4:]


__all__ = ["AiderAgent"]
