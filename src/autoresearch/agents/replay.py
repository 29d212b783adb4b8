"""The replay agent: patches from a folder, in name order, one per experiment.

It is the fake every engine test uses, and a way to reproduce a session. A patch file
is either a unified diff (``git diff`` / ``git format-patch`` output) or search/replace
blocks::

    # Raise the learning rate            <- optional description line
    params.py
    <<<<<<< SEARCH
    LR = 0.01
    =======
    LR = 0.02
    >>>>>>> REPLACE

Patches already used in the session (named in the history's ``meta``) are skipped, so a
resumed session carries on where it stopped. When none is left: ``AgentExhausted``.
"""

from __future__ import annotations

import re
from pathlib import Path

from autoresearch.agents._base import Agent, Context, Edit, Proposal
from autoresearch.errors import AgentExhausted, ConfigError, ProposalError

_BLOCK = re.compile(
    r"^(?P<path>[^\n]+)\n<<<<<<< SEARCH\n(?P<search>.*?)^=======\n(?P<replace>.*?)^>>>>>>> REPLACE$",
    re.MULTILINE | re.DOTALL,
)


def parse_patch_file(name: str, text: str) -> Proposal:
    """A Proposal from one patch file's text."""
    description = _description(name, text)
    if _is_diff(text):
        start = text.find("diff --git") if "diff --git" in text else text.find("--- ")
        return Proposal(description=description, patch=text[start:], meta={"patch": name})
    edits = tuple(
        Edit(path=m["path"].strip(), search=m["search"], replace=m["replace"])
        for m in _BLOCK.finditer(text)
    )
    if not edits:
        raise ProposalError(f"patch {name}: neither a unified diff nor search/replace blocks")
    return Proposal(description=description, edits=edits, meta={"patch": name})


def _is_diff(text: str) -> bool:
    return "diff --git" in text or bool(re.search(r"^--- .*\n\+\+\+ ", text, re.MULTILINE))


def _description(name: str, text: str) -> str:
    subject = re.search(r"^Subject: (?:\[PATCH[^\]]*\] )?(.+)$", text, re.MULTILINE)
    if subject:
        return subject.group(1).strip()
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith("#"):
        return first.lstrip("#").strip()
    return Path(name).stem


class ReplayAgent(Agent):
    """Proposes the patches of ``patches`` (a folder) in name order."""

    name = "replay"

    def __init__(self, patches: str | Path) -> None:
        self.folder = Path(patches)
        if not self.folder.is_dir():
            raise ConfigError(f"--patches {self.folder}: not a folder")
        self.files = sorted(
            p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def propose(self, context: Context) -> Proposal:
        used = {str(row.meta.get("patch")) for row in context.history if row.meta.get("patch")}
        for path in self.files:
            if path.name not in used:
                try:
                    return parse_patch_file(path.name, path.read_text(encoding="utf-8"))
                except (ProposalError, UnicodeDecodeError) as exc:
                    raise ProposalError(str(exc), meta={"patch": path.name}) from exc
        raise AgentExhausted(
            f"replay: all {len(self.files)} patches in {self.folder} have been used"
        )
