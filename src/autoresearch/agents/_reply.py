"""Parsing an agent's reply: tool-call arguments or a JSON block in text, into a ``Proposal``.

Anything malformed is a ``ProposalError`` that says what was wrong, so the experiment is
recorded ``invalid`` with a reason the agent reads next time.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from autoresearch.errors import ProposalError
from autoresearch.records import Edit, Proposal

TOOL_NAME = "propose_change"
DESCRIPTION_CHARS = 200


def one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- parsing the reply --------------------------------------------------------------------------


def parse_proposal(arguments: str | Mapping[str, Any] | None) -> Proposal:
    """A ``Proposal`` from ``propose_change`` arguments (a JSON string or an object).

    Raises ``ProposalError`` naming what is wrong, so the model can fix it next time.
    """
    args = _load_arguments(arguments)
    description = _optional_str(args, "description")
    rationale = _optional_str(args, "rationale")
    edits = _edits(args.get("edits"))
    line = next((x.strip() for x in (description or rationale).splitlines() if x.strip()), "")
    if not line:
        raise ProposalError(
            f"{TOOL_NAME}: 'description' is empty; give one line saying what changes"
        )
    return Proposal(
        description=one_line(line, DESCRIPTION_CHARS), rationale=rationale.strip(), edits=edits
    )


def _load_arguments(arguments: str | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if arguments is None:
        raise ProposalError(f"{TOOL_NAME} was called without arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ProposalError(
                f"{TOOL_NAME} arguments are not valid JSON ({exc.msg} at position {exc.pos})"
            ) from exc
    if not isinstance(arguments, Mapping):
        raise ProposalError(
            f"{TOOL_NAME} arguments must be a JSON object, got {type(arguments).__name__}"
        )
    return arguments


def _optional_str(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProposalError(f"{TOOL_NAME}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _edits(raw: Any) -> tuple[Edit, ...]:
    if isinstance(raw, str):  # some models send the list JSON-encoded a second time
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(raw)
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ProposalError(
            f"{TOOL_NAME}: 'edits' must be a non-empty list of {{path, search, replace}} "
            "or {path, content} objects"
        )
    return tuple(_edit(i, item) for i, item in enumerate(raw))


def _edit(index: int, item: Any) -> Edit:
    where = f"{TOOL_NAME}: edits[{index}]"
    if not isinstance(item, Mapping):
        raise ProposalError(f"{where} must be an object, got {type(item).__name__}")
    fields: dict[str, str | None] = {}
    for key in ("path", "search", "replace", "content"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise ProposalError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        fields[key] = value
    path = _clean_path(where, fields["path"])
    search, replace, content = fields["search"], fields["replace"], fields["content"]
    if content is not None and search is None and replace is None:
        return Edit(path=path, content=content)
    if content is not None:
        raise ProposalError(
            f"{where} to {path}: give either content, or search and replace, not both"
        )
    if not search or replace is None:
        raise ProposalError(f"{where} to {path}: a non-empty 'search' and a 'replace' are required")
    return Edit(path=path, search=search, replace=replace)


def _clean_path(where: str, path: str | None) -> str:
    if not path or not path.strip():
        raise ProposalError(f"{where}: 'path' is missing")
    clean = PurePosixPath(path.strip().replace("\\", "/"))
    if clean.is_absolute() or ".." in clean.parts:
        raise ProposalError(
            f"{where}: path {path!r} must be relative to the task root, without '..'"
        )
    return clean.as_posix()


def parse_text_reply(text: str) -> Proposal:
    """A ``Proposal`` from a reply that called no tool but wrote the arguments as JSON."""
    for candidate in _json_candidates(text):
        try:
            args = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(args, dict) and "edits" in args:
            return parse_proposal(args)
    preview = one_line(text, 200) or "(empty reply)"
    raise ProposalError(f"the reply did not call {TOOL_NAME}; it said: {preview}")


def _json_candidates(text: str) -> list[str]:
    fenced = re.findall(r"```(?:json)?\s*\n(.*?)\n\s*```", text, flags=re.DOTALL)
    start, end = text.find("{"), text.rfind("}")
    whole = [text[start : end + 1]] if 0 <= start < end else []
    return fenced + whole


__all__ = ["DESCRIPTION_CHARS", "TOOL_NAME", "one_line", "parse_proposal", "parse_text_reply"]
