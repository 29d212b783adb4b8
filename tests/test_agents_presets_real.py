"""The presets with the real CLIs (when installed) against scripted model servers on 127.0.0.1.

Slow, and skipped unless the CLI is there: ``AUTORESEARCH_CLAUDE_BIN`` names Claude Code's
binary, else ``claude`` on PATH. Install it apart from the project's environment, e.g.
``npm install --prefix /tmp/clis @anthropic-ai/claude-code`` (its native binary is then
``/tmp/clis/node_modules/@anthropic-ai/claude-code-linux-x64/claude``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import git
from fakes.anthropic_stream import ScriptedAnthropic
from fakes.session import run_toy_session

from autoresearch.agents.presets import ClaudeCodeAgent

CLAUDE = os.environ.get("AUTORESEARCH_CLAUDE_BIN") or shutil.which("claude")

SCRIPTS = {
    1: [  # read, edit, describe, answer
        [{"tool": "Read", "input": {"file_path": "{cwd}/params.py"}}],
        [{"tool": "Write", "input": {"file_path": "{cwd}/params.py", "content": "X = 3.0\nY = 2.0\n"}}],
        [{"tool": "Write", "input": {"file_path": "{description_file}",
                                     "content": "set X to 3.0\n\nthe score is (X - 3)^2 + ..."}}],
        [{"text": "Set X to 3.0."}],
    ],
    2: [  # wants to run the experiment itself: print mode refuses the shell
        [{"tool": "Bash", "input": {"command": "python score.py", "description": "Score it"}}],
        [{"text": "I could not run the score."}],
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    CLAUDE is None,
    reason="Claude Code is not installed (set AUTORESEARCH_CLAUDE_BIN or put `claude` on PATH)",
)
def test_real_claude_code_keeps_an_edit_and_reports_a_refusal(
    toy_repo: Path, tmp_path: Path
) -> None:
    assert CLAUDE is not None
    with ScriptedAnthropic(SCRIPTS, model="claude-sonnet-4-5") as server:
        env = {
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": "sk-ant-fake-key-for-tests-0123456789",
            "HOME": str(tmp_path / "home"),  # its settings and sessions, not the user's
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        agent = ClaudeCodeAgent(binary=CLAUDE, model="claude-sonnet-4-5", env=env, timeout=120)
        _, rows = run_toy_session(toy_repo, agent, max_experiments=2)
    assert [r.verdict for r in rows] == ["baseline", "keep", "invalid"], [r.reason for r in rows]
    assert rows[1].description == "set X to 3.0"
    assert rows[1].cost_usd is not None and rows[1].cost_usd > 0 and rows[1].input_tokens > 0
    assert "refused permission 1 time(s): Bash(python score.py)" in rows[2].reason
    assert git(toy_repo, "show", "autoresearch/t:params.py").startswith("X = 3.0")
