"""The presets with the real CLIs (when installed) against scripted model servers on 127.0.0.1.

Slow, and skipped unless the CLI is there: ``AUTORESEARCH_CLAUDE_BIN`` names Claude Code's
binary, else ``claude`` on PATH; ``AUTORESEARCH_AIDER_BIN`` aider's, else ``aider`` on PATH;
``AUTORESEARCH_CODEX_BIN`` Codex's, else ``codex``. Install them apart from the project's
environment (``.ci/run`` does): ``npm install -g @anthropic-ai/claude-code @openai/codex``;
``python -m venv /opt/aider && /opt/aider/bin/pip install aider-chat``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import git
from fakes.anthropic_stream import ScriptedAnthropic
from fakes.llm_servers import FakeOpenAI
from fakes.responses_stream import ScriptedResponses, call, message
from fakes.session import run_toy_session

from autoresearch.agents.presets import AiderAgent, ClaudeCodeAgent, CodexAgent

CLAUDE = os.environ.get("AUTORESEARCH_CLAUDE_BIN") or shutil.which("claude")
AIDER = os.environ.get("AUTORESEARCH_AIDER_BIN") or shutil.which("aider")
CODEX = os.environ.get("AUTORESEARCH_CODEX_BIN") or shutil.which("codex")

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
    assert rows[1].cost_usd is not None and rows[1].cost_usd > 0 and rows[1].usage.input_tokens > 0
    assert "refused permission 1 time(s): Bash(python score.py)" in rows[2].reason
    assert git(toy_repo, "show", "autoresearch/t:params.py").startswith("X = 3.0")


AIDER_REPLY = """set X to 3.0

The score is (X - 3)^2 + (Y + 1)^2, smallest at X = 3.

params.py
```
<<<<<<< SEARCH
X = 1.0
=======
X = 3.0
>>>>>>> REPLACE
```
"""


@pytest.mark.slow
@pytest.mark.skipif(
    AIDER is None, reason="aider is not installed (set AUTORESEARCH_AIDER_BIN or put `aider` on PATH)"
)
def test_real_aider_applies_a_search_replace_reply_from_chat_completions(
    toy_repo: Path, tmp_path: Path
) -> None:
    assert AIDER is not None
    answer = FakeOpenAI.completion({"role": "assistant", "content": AIDER_REPLY}, finish_reason="stop",
                                   prompt_tokens=1200, completion_tokens=80, model="gpt-4o")  # fmt: skip
    with FakeOpenAI(lambda body: answer, key="sk-fake-openai-key-0123456789") as server:
        env = {
            "OPENAI_API_BASE": server.url,
            "OPENAI_API_KEY": "sk-fake-openai-key-0123456789",
            "HOME": str(tmp_path / "home"),  # its settings and caches, not the user's
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of litellm's price list
        }
        agent = AiderAgent(binary=AIDER, model="openai/gpt-4o", env=env, timeout=240)
        _, rows = run_toy_session(toy_repo, agent, max_experiments=1)
        posted = [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert [r.verdict for r in rows] == ["baseline", "keep"], [r.reason for r in rows]
    assert rows[1].description == "set X to 3.0"
    assert "X = 3.0" in rows[1].diff and rows[1].usage.input_tokens > 0
    assert posted and "params.py" in str(posted[0].body)  # the editable file went into the chat


PATCH = "*** Begin Patch\n*** Update File: params.py\n@@\n-X = 1.0\n+X = 3.0\n*** End Patch\n"
CODEX_CONFIG = """\
model = "gpt-5-codex"
model_provider = "scripted"

[model_providers.scripted]
name = "scripted"
base_url = "{url}"
env_key = "SCRIPTED_API_KEY"
wire_api = "responses"
"""


@pytest.mark.slow
@pytest.mark.skipif(
    CODEX is None, reason="Codex is not installed (set AUTORESEARCH_CODEX_BIN or put `codex` on PATH)"
)
def test_real_codex_applies_a_patch_over_the_responses_stream(toy_repo: Path, tmp_path: Path) -> None:
    assert CODEX is not None
    turns = [[call("exec_command", {"cmd": f"apply_patch <<'EOF'\n{PATCH}EOF\n"}, 1)],
             [message("set X to 3.0\n\nthe score is smallest at X = 3", 2)]]  # fmt: skip
    with ScriptedResponses(turns, input_tokens=1500, output_tokens=60) as server:
        home = tmp_path / "codex-home"
        home.mkdir()
        (home / "config.toml").write_text(CODEX_CONFIG.format(url=server.url))
        env = {"CODEX_HOME": str(home), "HOME": str(home), "SCRIPTED_API_KEY": "sk-fake-0123456789"}
        # Codex's own Linux sandbox cannot start in some containers (every file change fails):
        # the checkout is a scratch worktree, so the test lets Codex write it directly
        agent = CodexAgent(binary=CODEX, env=env, timeout=240, sandbox="danger-full-access")
        _, rows = run_toy_session(toy_repo, agent, max_experiments=1)
        bodies = list(server.bodies)
    assert [r.verdict for r in rows] == ["baseline", "keep"], [r.reason for r in rows]
    assert rows[1].description == "set X to 3.0"
    assert "X = 3.0" in rows[1].diff and rows[1].usage.input_tokens == 2 * 1500
    assert len(bodies) == 2 and bodies[0]["stream"] is True
