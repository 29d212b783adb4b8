"""API keys never leak: with keys in the environment, nothing under .autoresearch/, no export and no report holds them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.llm_servers import FakeAnthropic, FakeOpenAI, edit_args
from fakes.session import files_under, run_cli

ANTHROPIC_KEY = "sk-ant-api03-LEAKCANARY-anthropic-0123456789"
OPENAI_KEY = "sk-proj-LEAKCANARY-openai-0123456789"
KEYS = (ANTHROPIC_KEY, OPENAI_KEY)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "OPENAI_API_KEY": OPENAI_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    yield env


def assert_no_keys(repo: Path, *texts: str) -> None:
    """No key in any file of the task's state, the export, or the given command outputs."""
    files = [*files_under(repo / ".autoresearch"), repo / "results.tsv"]
    assert len(files) > 3  # the ledger, its logs: something was written
    for path in files:
        data = path.read_bytes()
        for key in KEYS:
            assert key.encode() not in data, f"{key[:12]}... found in {path}"
            assert key[8:30].encode() not in data, f"part of {key[:12]}... found in {path}"
    for text in texts:
        assert not any(key in text for key in KEYS)


def reports(repo: Path, env: dict[str, str]) -> list[str]:
    """What a user sees afterwards: status, log, show of every experiment, and the export."""
    outputs = []
    for args in (
        ["status", "--tag", "t"],
        ["log", "--tag", "t"],
        ["export", "--tag", "t", "--tsv", str(repo / "results.tsv")],
    ):
        done = run_cli(repo, *args, env=env)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    for exp in range(4):
        done = run_cli(repo, "show", str(exp), "--tag", "t", env=env)
        outputs += [done.stdout, done.stderr]
    return outputs


PROTECTED = edit_args("zero the score", "print(f", "score = 0\nprint(f", path="score.py")
BAD = {"description": "oops", "edits": "params.py"}


def test_anthropic_session(keys: dict[str, str], toy_repo: Path) -> None:
    with FakeAnthropic(key=ANTHROPIC_KEY) as server:
        server.queue(
            FakeAnthropic.tool(edit_args()), FakeAnthropic.tool(PROTECTED), FakeAnthropic.tool(BAD)
        )
        server.default = lambda body: FakeAnthropic.error(
            401, "authentication_error", "invalid x-api-key"
        )
        env = {**keys, "ANTHROPIC_BASE_URL": server.url}
        run = run_cli(
            toy_repo, "run", "--tag", "t", "--agent", "anthropic", "--max-experiments", "5", env=env
        )
    assert run.returncode == 0, run.stderr
    assert_no_keys(toy_repo, run.stdout, run.stderr, *reports(toy_repo, env))


def test_openai_session(keys: dict[str, str], toy_repo: Path) -> None:
    with FakeOpenAI(key=OPENAI_KEY) as server:
        server.queue(
            FakeOpenAI.tool(edit_args()), FakeOpenAI.tool(PROTECTED), FakeOpenAI.tool("{not json")
        )
        server.default = lambda body: FakeOpenAI.error(
            401, "invalid_request_error", "Incorrect API key provided"
        )
        run = run_cli(
            toy_repo,
            "run",
            "--tag",
            "t",
            "--agent",
            "openai",
            "--base-url",
            server.url,
            "--max-experiments",
            "5",
            env=keys,
        )
    assert run.returncode == 0, run.stderr
    assert_no_keys(toy_repo, run.stdout, run.stderr, *reports(toy_repo, keys))


def test_command_session_with_a_cli_that_prints_the_keys(
    keys: dict[str, str], toy_repo: Path, tmp_path: Path
) -> None:
    cli = tmp_path / "cli.py"
    cli.write_text(
        "import os\n"
        "text = open('params.py').read()\n"
        "open('params.py', 'w').write(text.replace('X = 1.0', 'X = 3.0'))\n"
        "print('keys:', os.environ['ANTHROPIC_API_KEY'], os.environ['OPENAI_API_KEY'])\n"
    )
    cmd = f"{sys.executable} {cli} --key $OPENAI_API_KEY"
    run = run_cli(
        toy_repo,
        "run",
        "--tag",
        "t",
        "--agent",
        "command",
        "--cmd",
        cmd,
        "--max-experiments",
        "1",
        env=keys,
    )
    assert run.returncode == 0, run.stderr
    assert_no_keys(toy_repo, run.stdout, run.stderr, *reports(toy_repo, keys))


def test_runs_do_not_see_the_keys(keys: dict[str, str], toy_repo: Path) -> None:
    """Code the agent wrote runs without the user's API keys: it cannot print them into the logs."""
    dump = edit_args(
        "print the environment", "X = 1.0", "X = 3.0\nimport os\nprint(dict(os.environ))"
    )
    with FakeAnthropic(key=ANTHROPIC_KEY) as server:
        server.queue(FakeAnthropic.tool(dump))
        env = {**keys, "ANTHROPIC_BASE_URL": server.url}
        run = run_cli(
            toy_repo, "run", "--tag", "t", "--agent", "anthropic", "--max-experiments", "1", env=env
        )
    assert run.returncode == 0, run.stderr
    logs = files_under(toy_repo / ".autoresearch" / "logs")
    assert any("AUTORESEARCH_SEED" in p.read_text() for p in logs)  # the dump happened
    assert_no_keys(toy_repo, *reports(toy_repo, env))


HOOK = "#!/bin/sh\nenv > {out}\n"


def test_git_never_runs_a_planted_hook_or_fsmonitor(keys: dict[str, str], toy_repo: Path) -> None:
    """What a run could plant in .git (hooks, core.fsmonitor) never runs in the orchestrator's git."""
    from autoresearch.agents._checkout import git as checkout_git
    from autoresearch.config import load_config
    from autoresearch.git import Git
    from autoresearch.workspace import Workspace

    ran = toy_repo / "ran"
    hooks = toy_repo / ".git" / "hooks"
    for name in ("post-checkout", "pre-commit", "post-commit", "reference-transaction"):
        (hooks / name).write_text(HOOK.format(out=ran))
        (hooks / name).chmod(0o755)
    evil = toy_repo / "evil.sh"
    evil.write_text(HOOK.format(out=ran))
    evil.chmod(0o755)
    with (toy_repo / ".git" / "config").open("a") as fh:
        fh.write(f"[core]\n\tfsmonitor = {evil}\n")
    assert not any(k in Git(toy_repo).env for k in keys)
    ws = Workspace(load_config(toy_repo), "t")
    ws.start()
    workdir = ws.checkout(0, ws.head())
    (workdir / "params.py").write_text("X = 2.0\nY = 2.0\n")
    sha, _ = ws.commit(0, "an experiment")
    ws.move_branch(sha)
    ws.dirty_files()
    checkout_git(workdir, "status", "--porcelain")
    assert not ran.exists()


RUN_READS_PARENT = edit_args(
    "read the orchestrator's environment",
    "X = 1.0",
    "X = 3.0\nimport glob\n"
    "for p in glob.glob('/proc/[0-9]*/environ'):\n"
    "    try:\n        print(p, open(p, 'rb').read())\n    except OSError:\n        pass",
)
SANDBOXED_SESSION = """\
import sys
from autoresearch.agents import get_agent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.executors.local import LocalExecutor
from autoresearch.executors.sandbox import Sandbox
config = load_config(sys.argv[1])
executor = LocalExecutor(sandbox=Sandbox.for_task(config, mode="bwrap"))
agent = get_agent("anthropic", max_retries=0, backoff=0.0)
Engine(config, agent, options=SessionOptions(tag="t", max_experiments=1), executor=executor).run()
executor.close()
"""


def test_a_sandboxed_run_cannot_read_the_orchestrators_environment(
    keys: dict[str, str], toy_repo: Path
) -> None:
    from autoresearch.executors.sandbox import bwrap_problem

    if bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")
    with FakeAnthropic(key=ANTHROPIC_KEY) as server:
        server.queue(FakeAnthropic.tool(RUN_READS_PARENT))
        env = {**os.environ, **keys, "ANTHROPIC_BASE_URL": server.url}
        done = subprocess.run(
            [sys.executable, "-c", SANDBOXED_SESSION, str(toy_repo)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logs = "".join(p.read_text() for p in files_under(toy_repo / ".autoresearch" / "logs"))
    assert "/proc/1/environ" in logs  # it looked: it sees its own PID namespace only
    for path in files_under(toy_repo / ".autoresearch"):
        assert not any(key.encode() in path.read_bytes() for key in KEYS), path
