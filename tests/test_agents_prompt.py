"""Prompt rendering (stable prefix, history trimming, state) and parsing propose_change replies."""

from __future__ import annotations

import json

import pytest
from fakes.contexts import make_context

from autoresearch.agents._base import Edit, Experiment
from autoresearch.agents.prompt import (
    TOOL_SCHEMA,
    estimate_tokens,
    history_table,
    log_tail,
    parse_proposal,
    parse_text_reply,
    redact,
    render,
    render_brief,
    secret_values,
    select_history,
)
from autoresearch.errors import ProposalError


def test_stable_prefix_does_not_change_with_history_or_code() -> None:
    a = render(make_context())
    b = render(
        make_context(
            history=(Experiment(1, "baseline", 5.0, "baseline"),),
            editable={"params.py": "X = 3.0\nY = 2.0\n"},
            last_rejection="edit to score.py: not editable",
            last_failure="Traceback\nBoom",
            best_metric=4.0,
        )
    )
    assert a.system == b.system  # cached once per session
    assert a.code != b.code and a.variable != b.variable
    assert "Minimise the score" in a.system and "print('score')" in a.system
    assert "params.py" in a.system and "score" in a.system and "lower is better" in a.system
    assert "X = 1.0" in a.code and "X = 1.0" not in a.system


def test_variable_part_has_state_history_failure_and_rejection() -> None:
    ctx = make_context(
        last_failure="logline\n" * 200 + "NameError: Z",
        last_rejection="edit to score.py: protected",
    )
    p = render(ctx)
    assert "best so far: 1" in p.variable and "baseline (unchanged code): 5" in p.variable
    assert "noise" in p.variable and "0.01" in p.variable
    assert "| 3 | keep | 1 | -4 | set X to 3.0 |" in p.variable
    assert "| 4 | crash | - | - | break everything (crash: NameError: Z) |" in p.variable
    assert "NameError: Z" in p.variable and p.variable.count("logline") == 59
    assert "edit to score.py: protected" in p.variable
    assert p.variable.rstrip().endswith("call `propose_change`.")


def test_the_time_limit_is_the_budget_rules_once_the_baseline_is_timed() -> None:
    """A speed task (no run step, a 1-s benchmark) was told "time budget per run: 300 s"."""
    assert "- time budget per run: 300 s" in render(make_context(time_budget=300.0)).variable
    p = render(make_context(time_budget=300.0, budget_steps=("check", "evaluate"), time_limit=151.2))
    assert "- time limit per run: 151.2 s for its check and evaluate steps together" in p.variable
    assert "300 s" not in p.variable


def test_unknown_noise_and_empty_history_are_said_plainly() -> None:
    p = render(make_context(noise=None, history=(), best_metric=None, baseline_metric=None))
    assert "noise" not in p.variable
    assert "No experiments yet." in p.variable
    assert "best so far: -" in p.variable


def test_file_fence_is_longer_than_backticks_inside() -> None:
    p = render(make_context(editable={"README.md": "```python\nx = 1\n```\n"}))
    assert "````\n```python" in p.code


def test_history_trimmed_keeps_all_keeps_and_recent_rows() -> None:
    rows = [Experiment(1, "baseline", 10.0, "baseline")]
    for i in range(2, 402):
        verdict = "keep" if i % 50 == 0 else ("crash" if i % 7 == 0 else "discard")
        rows.append(
            Experiment(i, verdict, None if verdict == "crash" else 10.0 - i / 1000, f"idea {i}")
        )
    shown = select_history(rows, budget_tokens=800, direction="minimize")
    ids = [r.id for r in shown]
    assert ids == sorted(ids)
    assert 1 in ids and all(i in ids for i in range(50, 401, 50))  # baseline and every keep
    assert 401 in ids and 399 in ids  # the newest discards
    assert 399 in ids and 392 in ids  # recent crashes (multiples of 7) too
    assert 2 not in ids and 3 not in ids  # old discards go first
    table = history_table(make_context(history=tuple(rows)), budget_tokens=800)
    assert estimate_tokens(table) < 1000
    assert "older discard" in table and "older crash" in table


def test_all_history_shown_when_it_fits() -> None:
    table = history_table(make_context())
    assert "left out" not in table and table.count("\n| ") == 5  # header + 4 rows


def test_log_tail_limits() -> None:
    text = "\n".join(f"line {i}" for i in range(1000))
    tail = log_tail(text, lines=10)
    assert tail.splitlines()[0] == "line 990" and tail.endswith("line 999")
    assert len(log_tail("x" * 10000, chars=100)) == 101


def test_brief_for_command_agents_names_the_description_file() -> None:
    brief = render_brief(make_context(), "/tmp/desc.txt")
    assert "/tmp/desc.txt" in brief and "params.py" in brief
    assert "set X to 3.0" in brief and "Minimise the score" in brief
    assert "X = 1.0" not in brief  # the CLI reads the files itself


# --- parsing ---------------------------------------------------------------------------------


def test_parse_search_replace_and_whole_file() -> None:
    p = parse_proposal(
        {
            "description": "  set X\nsecond line",
            "rationale": "why",
            "edits": [
                {"path": "./params.py", "search": "X = 1.0", "replace": "X = 3.0"},
                {"path": "new.py", "content": "Z = 1\n", "search": None},
            ],
        }
    )
    assert p.description == "set X" and p.rationale == "why"
    assert p.edits == (Edit("params.py", "X = 1.0", "X = 3.0"), Edit("new.py", content="Z = 1\n"))


def test_parse_accepts_json_string_and_double_encoded_edits() -> None:
    args = {
        "description": "d",
        "rationale": "r",
        "edits": json.dumps([{"path": "a.py", "content": ""}]),
    }
    assert parse_proposal(json.dumps(args)).edits == (Edit("a.py", content=""),)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"description": "x", "edits": [', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (None, "without arguments"),
        ({"description": "x", "rationale": "r"}, "'edits' must be a non-empty list"),
        ({"description": "x", "edits": []}, "'edits' must be a non-empty list"),
        ({"description": "x", "edits": ["params.py"]}, r"edits\[0\] must be an object"),
        ({"description": "x", "edits": [{"search": "a", "replace": "b"}]}, "'path' is missing"),
        (
            {"description": "x", "edits": [{"path": "/etc/passwd", "content": ""}]},
            "relative to the task root",
        ),
        ({"description": "x", "edits": [{"path": "../x.py", "content": ""}]}, "without '..'"),
        (
            {"description": "x", "edits": [{"path": "a.py", "search": "a"}]},
            "'replace' are required",
        ),
        (
            {"description": "x", "edits": [{"path": "a.py", "search": "", "replace": "b"}]},
            "non-empty 'search'",
        ),
        (
            {
                "description": "x",
                "edits": [{"path": "a.py", "content": "c", "search": "a", "replace": "b"}],
            },
            "not both",
        ),
        (
            {"description": 3, "edits": [{"path": "a.py", "content": ""}]},
            "'description' must be a string",
        ),
        (
            {"description": " ", "edits": [{"path": "a.py", "content": ""}]},
            "'description' is empty",
        ),
        (
            {"description": "x", "edits": [{"path": "a.py", "content": 5}]},
            "'content' must be a string",
        ),
    ],
)
def test_malformed_arguments_are_proposal_errors(arguments: object, message: str) -> None:
    with pytest.raises(ProposalError, match=message):
        parse_proposal(arguments)  # type: ignore[arg-type]


def test_text_reply_with_json_is_accepted() -> None:
    text = 'Here you go:\n```json\n{"description": "d", "rationale": "r", "edits": [{"path": "a.py", "content": "x"}]}\n```'
    assert parse_text_reply(text).edits == (Edit("a.py", content="x"),)


def test_text_reply_without_json_says_what_the_model_said() -> None:
    with pytest.raises(ProposalError, match="did not call propose_change; it said: I think"):
        parse_text_reply("I think we should raise the learning rate.")


def test_tool_schema_requires_the_three_fields() -> None:
    assert TOOL_SCHEMA["required"] == ["description", "rationale", "edits"]
    assert TOOL_SCHEMA["properties"]["edits"]["items"]["required"] == ["path"]


def test_secrets_come_from_key_like_variables_and_are_redacted() -> None:
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-secret-123456",
        "HOME": "/home/me",
        "GH_TOKEN": "ghp_abcdefgh",
    }
    secrets = secret_values(env, extra=["explicit-key-xyz", None])
    assert set(secrets) == {"sk-ant-secret-123456", "ghp_abcdefgh", "explicit-key-xyz"}
    assert redact("key=sk-ant-secret-123456 home=/home/me", secrets) == "key=*** home=/home/me"
