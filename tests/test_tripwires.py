"""Without a sandbox, what a run does to git and to the session lock is detected: the run is invalid and the session stops."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git, write_patch_dir
from test_engine import run_session, sr, toy

from autoresearch.records import Verdict

MOVE_BRANCH = (
    "import os, subprocess\n"
    "task = os.environ['AUTORESEARCH_TASK_DIR']\n"
    "head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()\n"
    "subprocess.run(['git', '-C', task, 'update-ref', 'refs/heads/autoresearch/t', head])\n"
)
DROP_LOCK = (
    "import os\n"
    "os.remove(os.path.join(os.environ['AUTORESEARCH_TASK_DIR'], '.autoresearch', 'locks', 't.lock'))\n"
)
HOOK = (
    "import os\n"
    "hook = os.path.join(os.environ['AUTORESEARCH_TASK_DIR'], '.git', 'hooks', 'post-commit')\n"
    "open(hook, 'w').write('#!/bin/sh\\ntouch /tmp/pwned-by-hook\\n')\n"
    "os.chmod(hook, 0o755)\n"
)


@pytest.mark.parametrize(("code", "what"), [
    (MOVE_BRANCH, "refs/heads/autoresearch/t"), (DROP_LOCK, "session lock"), (HOOK, ".git/hooks"),
], ids=["branch", "lock", "hook"])  # fmt: skip
def test_a_run_reaching_outside_is_invalid_and_stops_the_session(
    tmp_path: Path, code: str, what: str
) -> None:
    repo = toy(tmp_path, task='sandbox = "none"')
    patches = {
        "01": sr("params.py", "Y = 2.0", "Y = 0.0\n" + code, "better, and reaches out"),
        "02": sr("params.py", "X = 1.0", "X = 3.0", "never runs"),
    }
    engine, _ = run_session(repo, write_patch_dir(tmp_path / "p", patches))
    rows = engine.history.rows
    assert [r.verdict for r in rows] == [Verdict.BASELINE, Verdict.INVALID]
    assert what in rows[1].reason
    assert what in engine.summary().stop_reason and "--resume" in engine.summary().stop_reason
    if what != "refs/heads/autoresearch/t":  # the branch was not moved to the invalid candidate
        assert git(repo, "rev-parse", "autoresearch/t") == rows[0].commit
