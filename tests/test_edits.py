"""Search/replace and whole-file edits in memory, including the whitespace-tolerant fallback."""

from __future__ import annotations

import pytest

from autoresearch.agents._base import Edit
from autoresearch.edits import apply_edits
from autoresearch.errors import ProposalError

SOURCE = "def f():\n    x = 1\n    return x\n\ndef g():\n    return 2\n"


def test_exact_search_replace() -> None:
    out = apply_edits({"a.py": SOURCE}, [Edit("a.py", "    x = 1\n", "    x = 2\n")])
    assert out == {"a.py": SOURCE.replace("x = 1", "x = 2")}


def test_whole_file_and_chained_edits() -> None:
    edits = [Edit("new.py", content="A = 1\n"), Edit("new.py", "A = 1", "A = 3")]
    assert apply_edits({}, edits) == {"new.py": "A = 3\n"}


def test_whitespace_tolerant_match_keeps_the_file_indentation() -> None:
    edit = Edit("a.py", "x = 1\nreturn x", "x = 5\nreturn x + 1")
    out = apply_edits({"a.py": SOURCE}, [edit])["a.py"]
    assert "    x = 5\n    return x + 1\n" in out
    assert out.endswith("def g():\n    return 2\n")


def test_ambiguous_and_missing_search_blocks_are_rejected() -> None:
    text = "a = 1\na = 1\n"
    with pytest.raises(ProposalError, match="matches 2 times"):
        apply_edits({"a.py": text}, [Edit("a.py", "a = 1", "a = 2")])
    with pytest.raises(ProposalError, match="not found"):
        apply_edits({"a.py": SOURCE}, [Edit("a.py", "y = 7", "y = 8")])
    with pytest.raises(ProposalError, match="no such file"):
        apply_edits({}, [Edit("b.py", "x", "y")])
    with pytest.raises(ProposalError, match="either content"):
        apply_edits({"a.py": SOURCE}, [Edit("a.py", search="x")])
