"""The claude-code, codex and aider presets against fake CLIs that behave like the real ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from fakes.clis import calls, install, write_plan
from fakes.contexts import make_context
from fakes.session import BEST_PARAMS, run_cli, run_toy_session

from autoresearch.agents import get_agent
from autoresearch.agents.command import CommandAgent
from autoresearch.agents.presets import AiderAgent, ClaudeCodeAgent, CodexAgent
from autoresearch.errors import AgentUnavailable, ConfigError, ProposalError

X3 = "X = 3.0\nY = 2.0\n"
PLANS = "plans"  # a folder the fake CLIs may write in: [agent.<name>] writable
BEST = BEST_PARAMS


def fake(tmp_path: Path, name: str, steps: list[dict[str, Any]]) -> tuple[Path, dict[str, str]]:
    """The fake CLI ``name`` and the env that gives it ``steps``; returns (binary, env). The
    fake notes its arguments beside the plan: the agents below may write there (``PLANS``)."""
    (tmp_path / PLANS).mkdir(exist_ok=True)
    plan = write_plan(tmp_path / PLANS / f"{name}-plan.json", steps)
    return install(tmp_path / "bin", name), {"FAKE_CLI_PLAN": str(plan)}


def argv(tmp_path: Path, name: str) -> list[list[str]]:
    """The arguments of each call of the CLI that made a proposal (not `claude auth status`)."""
    return [a for a in calls(tmp_path / PLANS / f"{name}-plan.json") if a[:2] != ["auth", "status"]]


def proposal_of(engine: Any, exp_id: int) -> Any:
    record = engine.ledger.experiment(engine.session, exp_id)
    assert record is not None
    return record


# --- Claude Code ---------------------------------------------------------------------------------


def test_claude_code_session_keeps_describes_and_records_cost(
    toy_repo: Path, tmp_path: Path
) -> None:
    binary, env = fake(tmp_path, "claude", [
        {"files": {"params.py": X3}, "describe": "set X to 3.0\n\nthe score is (X-3)^2",
         "reply": "Done: I set X to 3.0.", "cost": 0.0421,
         "usage": {"input": 12, "cached": 900, "cache_write": 88, "output": 321}},
        {"files": {"params.py": BEST}, "reply": "Set Y to -1.0\n\nY is squared away from -1.",
         "cost": 0.02, "usage": {"input": 10, "output": 50}},
        {"bash": "python score.py", "reply": "I need to run the score first.", "cost": 0.005,
         "usage": {"input": 5, "output": 7}},
    ])  # fmt: skip
    agent = ClaudeCodeAgent(binary=str(binary), model="claude-sonnet-4-5", env=env, writable=[str(tmp_path / PLANS)], timeout=60)
    engine, rows = run_toy_session(toy_repo, agent, max_experiments=3)
    assert [r.verdict for r in rows] == ["baseline", "keep", "keep", "invalid"]
    assert [r.description for r in rows[1:3]] == ["set X to 3.0", "Set Y to -1.0"]
    assert (rows[1].usage.input_tokens, rows[1].usage.cached_tokens, rows[1].usage.output_tokens) == (1000, 900, 321)
    assert rows[1].cost_usd == pytest.approx(0.0421) and rows[3].cost_usd == pytest.approx(0.005)
    assert proposal_of(engine, 2).rationale == "Set Y to -1.0\n\nY is squared away from -1."
    assert rows[3].reason.startswith(
        "claude-code made no change to the files; the CLI was refused permission 1 time(s): "
        "Bash(python score.py) (permission_denials in its JSON output)"
    )
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST.strip()
    first = argv(tmp_path, "claude")[0]
    assert first[0] == "-p" and "# Research experiment #1" in first[1]
    brief_folder = first[first.index("--add-dir") + 1]
    assert first[2:] == [
        "--permission-mode", "acceptEdits", "--add-dir", brief_folder,
        "--output-format", "json", "--model", "claude-sonnet-4-5",
    ]  # fmt: skip
    assert f"{brief_folder}/description.txt" in first[1]  # the folder it may write in


def test_claude_code_edit_outside_its_folders_is_refused_with_the_reason(
    toy_repo: Path, tmp_path: Path
) -> None:
    binary, env = fake(tmp_path, "claude", [
        {"files": {"../elsewhere.py": "x = 1\n"}, "reply": "Wrote the helper.", "cost": 0.01},
    ])  # fmt: skip
    with pytest.raises(ProposalError) as info:
        ClaudeCodeAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]).propose(_context(toy_repo))
    assert "refused permission 1 time(s): Write(" in str(info.value)
    assert info.value.usage is not None and info.value.usage.cost_usd == 0.01
    assert not (toy_repo.parent / "elsewhere.py").exists()


def test_claude_code_error_result_and_long_brief_on_stdin(toy_repo: Path, tmp_path: Path) -> None:
    binary, env = fake(tmp_path, "claude", [
        {"subtype": "error_max_turns", "reply": "", "exit": 1, "cost": 0.3},
    ])  # fmt: skip
    long = _context(toy_repo, instructions="Minimise the score. " * 8000)  # > one argument
    with pytest.raises(ProposalError) as info:
        ClaudeCodeAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]).propose(long)
    assert str(info.value).startswith(
        "claude-code exited with status 1; Claude Code stopped with error_max_turns"
    )
    assert argv(tmp_path, "claude")[0][:3] == ["-p", "--permission-mode", "acceptEdits"]


def test_claude_code_without_credentials_stops_the_session_saying_how_to_log_in(
    toy_repo: Path, tmp_path: Path
) -> None:
    """Claude Code's reply when it is not logged in (an error with subtype 'success'): every
    later call would fail alike, so it is no one experiment's verdict but the session's end."""
    binary, env = fake(tmp_path, "claude", [
        {"is_error": True, "reply": "Not logged in · Please run /login", "exit": 1},
    ])  # fmt: skip
    with pytest.raises(AgentUnavailable, match=r"claude-code: Not logged in .*log in once by running `claude`"):
        ClaudeCodeAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]).propose(_context(toy_repo))


def test_a_signed_out_claude_code_is_refused_before_the_baseline(toy_repo: Path, tmp_path: Path) -> None:
    """`claude auth status` says so at session start: the error came after the whole baseline."""
    from autoresearch.config import load_config
    from autoresearch.engine import Engine, SessionOptions

    binary, env = fake(tmp_path, "claude", [{"files": {"params.py": X3}, "reply": "Set X to 3.0"}])
    signed_out = ClaudeCodeAgent(binary=str(binary), env={**env, "FAKE_CLAUDE_SIGNED_OUT": "1"})
    engine = Engine(load_config(toy_repo), signed_out, options=SessionOptions(tag="t"))
    with pytest.raises(ConfigError, match=r"Claude Code is not logged in \(`claude auth status`\)"):
        engine.run()
    assert not (toy_repo / ".autoresearch" / "logs" / "t" / "0000-0.log").exists()  # no baseline ran
    assert ClaudeCodeAgent(binary=str(binary), env=env).check({}) == ""  # logged in


def test_the_old_readme_command_for_claude_now_says_why(toy_repo: Path, tmp_path: Path) -> None:
    binary, env = fake(tmp_path, "claude", [
        {"files": {"params.py": X3}, "reply": "Set X to 3.0", "cost": 0.01},
    ])  # fmt: skip
    cmd = f'{binary} -p "$(cat {{prompt_file}})" --output-format json'
    with pytest.raises(
        ProposalError, match=r"refused permission 1 time\(s\): Edit\(.*params\.py\)"
    ):
        CommandAgent(cmd, env=env, writable=[str(tmp_path / PLANS)]).propose(_context(toy_repo))


# --- Codex ---------------------------------------------------------------------------------------


def test_codex_session_keeps_describes_and_prices_its_tokens(
    toy_repo: Path, tmp_path: Path
) -> None:
    binary, env = fake(tmp_path, "codex", [
        {"files": {"params.py": X3}, "describe": "set X to 3.0\n\nsquared distance",
         "reply": "Updated params.py.", "usage": {"input": 2000, "cached": 1000, "output": 100}},
        {"files": {"params.py": BEST}, "reply": "Set Y to -1.0\n\nThe score falls with Y.",
         "usage": {"input": 500, "output": 10}},
        {"reply": "Nothing to improve.", "usage": {"input": 100, "output": 5}},
    ])  # fmt: skip
    prices = {"fake-codex": {"input": 1.0, "output": 10.0, "cached": 0.1}}  # $ per Mtok
    agent = CodexAgent(binary=str(binary), model="fake-codex", env=env, writable=[str(tmp_path / PLANS)], prices=prices)
    _, rows = run_toy_session(toy_repo, agent, max_experiments=3)
    assert [r.verdict for r in rows] == ["baseline", "keep", "keep", "invalid"]
    assert [r.description for r in rows[1:3]] == ["set X to 3.0", "Set Y to -1.0"]
    assert (rows[1].usage.input_tokens, rows[1].usage.cached_tokens, rows[1].usage.output_tokens) == (2000, 1000, 100)
    assert rows[1].cost_usd == pytest.approx((1000 * 1.0 + 1000 * 0.1 + 100 * 10.0) / 1e6)
    assert rows[3].reason.startswith(
        "codex made no change to the files; Codex's last message: Nothing to improve.; output tail:"
    )
    first = argv(tmp_path, "codex")[0]
    assert first[:5] == ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    assert first[5] == "-o" and first[-3:] == ["--model", "fake-codex", "-"]


def test_codex_in_a_read_only_sandbox_says_so(toy_repo: Path, tmp_path: Path) -> None:
    binary, env = fake(tmp_path, "codex", [
        {"files": {"params.py": X3}, "reply": "I could not write params.py.",
         "usage": {"input": 300, "output": 20}},
    ])  # fmt: skip
    agent = CodexAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)], args=["--sandbox", "read-only"])
    with pytest.raises(ProposalError) as info:
        agent.propose(_context(toy_repo))
    text = str(info.value)
    assert text.startswith(
        "codex made no change to the files; its sandbox is read-only (--sandbox read-only in "
        "[agent.codex] args); Codex's last message: I could not write params.py."
    )
    assert info.value.usage is not None and info.value.usage.input_tokens == 300
    assert info.value.usage.cost_usd is None  # no model named: the price is unknown


def test_codex_failed_turn_and_the_old_full_auto_flag(toy_repo: Path, tmp_path: Path) -> None:
    binary, env = fake(tmp_path, "codex", [{"fail": "stream disconnected before completion"}])
    with pytest.raises(ProposalError) as info:
        CodexAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]).propose(_context(toy_repo))
    assert str(info.value).startswith(
        "codex exited with status 1; Codex's turn failed: stream disconnected before completion"
    )
    old = CommandAgent(f"{binary} exec --full-auto {{prompt}}", env=env, writable=[str(tmp_path / PLANS)])
    with pytest.raises(ProposalError, match="unexpected argument '--full-auto' found"):
        old.propose(_context(toy_repo))


# --- aider ---------------------------------------------------------------------------------------

AIDER_REPLY = """Set X to 3.0

The score is smallest at X = 3.

params.py
```python
<<<<<<< SEARCH
X = 1.0
=======
X = 3.0
>>>>>>> REPLACE
```
"""


def test_aider_session_keeps_describes_from_its_reply_and_records_cost(
    toy_repo: Path, tmp_path: Path
) -> None:
    binary, env = fake(tmp_path, "aider", [
        {"files": {"params.py": X3}, "reply": AIDER_REPLY, "cost": 0.0123,
         "usage": {"sent": "2.3k", "received": "150"}},
        {"reply": "Set Y to -1\n\nparams.py\n```python\nbroken\n```", "malformed": True,
         "cost": 0.002, "usage": {"sent": "1.1k", "received": "20"}},
    ])  # fmt: skip
    engine, rows = run_toy_session(toy_repo, AiderAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]), 2)
    assert [r.verdict for r in rows] == ["baseline", "keep", "invalid"]
    assert rows[1].description == "Set X to 3.0"  # not "Applied edit to params.py"
    assert proposal_of(engine, 1).rationale == "Set X to 3.0\nThe score is smallest at X = 3."
    assert (rows[1].usage.input_tokens, rows[1].usage.output_tokens, rows[1].cost_usd) == (2300, 150, 0.0123)
    assert rows[2].reason.startswith(
        "aider made no change to the files; The LLM did not conform to the edit format.; "
        "Only 3 reflections allowed, stopping."
    )
    assert rows[2].cost_usd == pytest.approx(0.002)
    diff = proposal_of(engine, 1).diff
    assert "+++ b/params.py" in diff and ".aider" not in diff and ".gitignore" not in diff
    assert not list(toy_repo.glob(".aider*")) and not (toy_repo / ".gitignore").exists()
    first = argv(tmp_path, "aider")[0]
    for flag in (
        "--yes-always",
        "--no-gitignore",
        "--no-auto-commits",
        "--no-suggest-shell-commands",
    ):
        assert flag in first
    assert first[first.index("--edit-format") + 1] == "diff" and first[-1] == "params.py"
    assert first[first.index("--read") + 1] == "score.py"
    assert first[first.index("--input-history-file") + 1] == os.devnull


def test_aider_with_its_default_flags_through_the_command_agent(
    toy_repo: Path, tmp_path: Path
) -> None:
    """What users tried first: its own files and its commit no longer spoil the experiment."""
    binary, env = fake(tmp_path, "aider", [
        {"files": {"params.py": X3}, "reply": AIDER_REPLY, "usage": {"sent": "900", "received": "80"}},
    ])  # fmt: skip
    agent = CommandAgent(f"{binary} --message-file {{prompt_file}} params.py", env=env, writable=[str(tmp_path / PLANS)])
    engine, rows = run_toy_session(toy_repo, agent, max_experiments=1)
    assert [r.verdict for r in rows] == ["baseline", "keep"]
    assert rows[1].description == "feat: Set X to 3.0"  # its commit's subject
    assert rows[1].meta["dropped"] == [".gitignore"]  # which hides its other files (.aider*)
    assert "+X = 3.0" in proposal_of(engine, 1).diff


def test_aider_edit_of_a_read_only_file_is_no_change_with_the_reason(
    toy_repo: Path, tmp_path: Path
) -> None:
    binary, env = fake(tmp_path, "aider", [
        {"files": {"score.py": "print('---')\nprint('score: 0')\n"}, "reply": "Score zero"},
    ])  # fmt: skip
    with pytest.raises(ProposalError, match=r"Skipping edits to score\.py, it is read-only"):
        AiderAgent(binary=str(binary), env=env, writable=[str(tmp_path / PLANS)]).propose(_context(toy_repo))


# --- options and the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "install_hint"),
    [
        ("claude-code", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("aider", "python -m pip install aider-chat"),
    ],
)
def test_missing_binary_is_one_error_saying_how_to_install_it(
    tmp_path: Path, name: str, install_hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        get_agent(name, env={"PATH": str(tmp_path)})
    text = str(info.value)
    assert f"install it with `{install_hint}`" in text and f"[agent.{name}]" in text


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    binary = install(tmp_path / "bin", "aider")
    with pytest.raises(ConfigError, match="args must be a list of strings"):
        AiderAgent(binary=str(binary), args=[1])
    with pytest.raises(ConfigError, match="timeout must be a number > 0"):
        AiderAgent(binary=str(binary), timeout=0)
    with pytest.raises(ConfigError, match=r"\[agent.aider\] unknown key 'cmd'; allowed: model, args"):
        get_agent("aider", binary=str(binary), cmd="aider")
    agent = AiderAgent(binary=str(binary), args="--model 'my model'")
    assert agent.args == ("--model", "my model")


def test_run_with_a_preset_from_the_command_line(toy_repo: Path, tmp_path: Path) -> None:
    binary, env = fake(tmp_path, "codex", [
        {"files": {"params.py": X3}, "reply": "Set X to 3.0", "usage": {"input": 10, "output": 2}},
    ])  # fmt: skip
    toml = toy_repo / "autoresearch.toml"
    toml.write_text(toml.read_text() + f'\n[agent.codex]\nbinary = "{binary}"\ntimeout = 60\n'
                    f'writable = ["{tmp_path / PLANS}"]\n')
    git(toy_repo, "commit", "-qam", "use the codex preset")
    done = run_cli(toy_repo, "run", "--tag", "c", "--agent", "codex", "--model", "gpt-5",
                   "--max-experiments", "1", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Set X to 3.0 *" in done.stdout
    assert argv(tmp_path, "codex")[0][-3:] == ["--model", "gpt-5", "-"]
    missing = run_cli(toy_repo, "run", "--tag", "d", "--agent", "claude-code",
                      env={"PATH": str(Path(sys.executable).parent)})  # fmt: skip
    assert missing.returncode == 1
    assert "install it with `npm install -g @anthropic-ai/claude-code`" in missing.stderr


def _context(repo: Path, **over: Any) -> Any:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return make_context(workdir=repo, parent=head.stdout.strip(), **over)
