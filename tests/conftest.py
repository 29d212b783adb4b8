"""Shared fixtures: git identity for test repos, and the toy task repo used across the suite."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

TOY_PARAMS = """\
# Constants the agent tunes. The score is smallest at X = 3.0, Y = -1.0.
X = 1.0
Y = 2.0
"""

TOY_SCORE = """\
import json, math, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import params

score = (params.X - 3.0) ** 2 + (params.Y + 1.0) ** 2
print("training...")
print("---")
print(f"score: {score:.6f}")
print("steps: 10")
"""

TOY_TOML = """\
[task]
instructions = "program.md"
editable = ["params.py"]
protected = ["score.py"]
context = ["score.py"]
run = "{python} score.py"
time_budget = 5
timeout = 20

[metric]
name = "score"
direction = "minimize"

[judge]
baseline_runs = 1  # the toy task is deterministic: one run tells its value
"""


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test repos commit as a fixed identity, whatever the machine's git config says."""
    for kind in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{kind}_NAME", "autoresearch tests")
        monkeypatch.setenv(f"GIT_{kind}_EMAIL", "tests@autoresearch.invalid")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stripped stdout (raises on failure)."""
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A fresh git repo at ``path`` with ``files`` committed on branch main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    """A committed toy task: ``score.py`` (protected) scores the constants in ``params.py``."""
    import sys

    toml = TOY_TOML.replace("{python}", sys.executable)
    return make_repo(
        tmp_path / "toy",
        {
            "params.py": TOY_PARAMS,
            "score.py": TOY_SCORE,
            "program.md": "Minimise the score by changing the constants in params.py.\n",
            "autoresearch.toml": toml,
        },
    )


def running(token: str) -> list[int]:
    """Live processes whose command line holds ``token``, seen from the test's PID namespace:
    a CLI agent's pids inside its own namespace mean nothing here."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if token.encode() not in (entry / "cmdline").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        if state != "Z":  # a zombie (exited, not yet reaped) is not running
            found.append(int(entry.name))
    return found


def write_patch_dir(path: Path, patches: dict[str, str]) -> Path:
    """A folder of replay patches (name -> unified diff or search/replace text)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in patches.items():
        (path / name).write_text(textwrap.dedent(text))
    return path
