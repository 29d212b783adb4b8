"""`autoresearch init`: adopting an upstream-shaped checkout, guessing editable, all or nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import git, make_repo, write_patch_dir
from fakes.session import run_cli

from autoresearch import init as init_module
from autoresearch.config import load_config
from autoresearch.errors import ConfigError
from autoresearch.init import guess_editable, init, task_notes, upstream_brief

# An upstream-shaped checkout: our own files, with upstream's layout and summary format.
PREPARE = '''\
"""Fixed preparation and evaluation for this stand-in task. The agent does not edit it."""
import os

TIME_BUDGET = 300  # seconds of training per experiment
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


def evaluate_bpb(loss):
    """Bits per byte from a mean loss in nats (a stand-in for the real evaluation)."""
    return loss / 0.6931


if __name__ == "__main__":
    print(f"data would be prepared in {CACHE_DIR}; nothing to do for the stand-in")
'''

TRAIN = '''\
"""Stand-in training script: the agent edits this file."""
import time

from prepare import evaluate_bpb

LEARNING_RATE = 0.04  # the best value is 0.01
DEPTH = 4

start = time.time()
loss = abs(LEARNING_RATE - 0.01) * 10 + 1.0 / DEPTH
val_bpb = evaluate_bpb(loss)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {time.time() - start:.1f}")
print("peak_vram_mb:     0.0")
print("num_steps:        10")
'''

PROGRAM = """\
# stand-in autoresearch

An experiment in letting a model do research on its own.

## Setup

With the user:
1. Pick a run tag and create the branch `autoresearch/<tag>` from master.
2. Read README.md, prepare.py and train.py.
3. Check that ~/.cache/autoresearch holds the data; else ask the user to run prepare.py.
4. Create results.tsv with its header row.

## Experimentation

Every experiment trains on one GPU for a fixed five minutes of wall clock.

**What you CAN do:**
- Change `train.py`: the model, the optimizer, the hyperparameters, the batch size.

**What you CANNOT do:**
- Change `prepare.py`: it holds the evaluation, the data loader and the constants.
- Add dependencies.

**The goal is simple: get the lowest val_bpb.**

**Simplicity criterion**: at equal results, the simpler code wins.

**The first run**: start with the baseline, the script as it is.

## Output format

After training the script prints a `---` line and then `key: value` lines.

## Logging results

Append one row per experiment to results.tsv: commit, val_bpb, memory, status, description.

## The experiment loop

LOOP FOREVER:
1. git commit the change
2. uv run train.py > run.log 2>&1
3. grep "^val_bpb:" run.log
4. if it got worse, git reset --hard to where you started

NEVER STOP: keep going until the human interrupts you.
"""

UPSTREAM_FILES = {
    "prepare.py": PREPARE,
    "train.py": TRAIN,
    "program.md": PROGRAM,
    "README.md": "# stand-in\n\nA small task with upstream's layout.\n",
    "pyproject.toml": '[project]\nname = "stand-in"\nversion = "0.1.0"\n',
    "uv.lock": "version = 1\n",
    ".gitignore": ".venv/\n__pycache__/\nresults.tsv\nrun.log\n",
}


def upstream_checkout(path: Path) -> Path:
    return make_repo(path, UPSTREAM_FILES)


def stand_in_uv(folder: Path) -> Path:
    """A `uv` that runs `uv run FILE` with this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    uv = folder / "uv"
    uv.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        [ "$1" = run ] || {{ echo "stand-in uv: only 'uv run'" >&2; exit 2; }}
        shift
        exec {sys.executable} "$@"
        """)
    )
    uv.chmod(0o755)
    return folder


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def path_with(*folders: Path) -> str:
    return os.pathsep.join([*(str(f) for f in folders), os.environ.get("PATH", "")])


# --- upstream -------------------------------------------------------------------------------------


def test_upstream_checkout_becomes_a_task_that_runs_it_unmodified(tmp_path: Path) -> None:
    repo = upstream_checkout(tmp_path / "autoresearch")
    before = hashes(repo)
    env = {"PATH": path_with(stand_in_uv(tmp_path / "bin"))}
    done = run_cli(repo, "init", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "an upstream autoresearch checkout; the task runs it unmodified" in out
    assert "editable: train.py\n" in out
    assert "warning: the metric val_bpb is computed by train.py, the file the agent edits" in out
    assert "`autoresearch init --template gpt DIR`" in out
    assert "warning: upstream's train.py ignores AUTORESEARCH_SEED" in out
    after = hashes(repo)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    assert sorted(set(after) - set(before)) == ["autoresearch.toml", "brief.md"]

    config = load_config(repo)
    assert config.editable == ("train.py",) and config.instructions == "brief.md"
    assert config.protected == ("prepare.py", "pyproject.toml", "uv.lock")
    assert (config.run, config.setup) == ("uv run train.py", "uv run prepare.py")
    assert (config.metric.name, config.metric.direction) == ("val_bpb", "minimize")
    assert config.judge.rule == "sequential" and config.judge.baseline_runs == 5
    assert config.sandbox == "none"  # upstream's data lives in ~/.cache, which the sandbox hides
    assert config.evaluate == "" and config.time_budget == 300

    git(repo, "add", "autoresearch.toml", "brief.md")
    git(repo, "commit", "-qm", "autoresearch task")
    patches = write_patch_dir(tmp_path / "patches", {"01.txt": """\
        # Lower the learning rate to 0.01
        train.py
        <<<<<<< SEARCH
        LEARNING_RATE = 0.04  # the best value is 0.01
        =======
        LEARNING_RATE = 0.01  # the best value is 0.01
        >>>>>>> REPLACE
        """})  # fmt: skip
    run = run_cli(repo, "run", "--tag", "up", "--agent", "replay", "--patches", str(patches),
                  "--max-experiments", "1", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Lower the learning rate to 0.01 *" in run.stdout
    assert git(repo, "show", "autoresearch/up:train.py").startswith('"""Stand-in')
    assert "LEARNING_RATE = 0.01" in git(repo, "show", "autoresearch/up:train.py")
    status = run_cli(repo, "status", env=env).stdout
    assert "warning: the metric val_bpb is computed by train.py" in status
    assert "warning: upstream's train.py ignores AUTORESEARCH_SEED" in status


def test_the_brief_keeps_the_research_guidance_and_drops_the_loop() -> None:
    brief = upstream_brief(PROGRAM)
    for kept in ("What you CAN do", "Change `train.py`", "What you CANNOT do",
                 "get the lowest val_bpb", "Simplicity criterion", "fixed five minutes"):  # fmt: skip
        assert kept in brief
    for dropped in ("LOOP FOREVER", "git reset", "results.tsv", "NEVER STOP", "create the branch",
                    "## Setup", "## The experiment loop", "The first run", "run.log"):  # fmt: skip
        assert dropped not in brief
    assert "do not commit, reset, run the training" in brief  # our loop does those


def test_without_uv_the_runs_use_the_checkouts_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = upstream_checkout(tmp_path / "autoresearch")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    only_git = tmp_path / "only-git"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    monkeypatch.setenv("PATH", str(only_git))
    result = init(repo)
    venv = repo.resolve() / ".venv" / "bin" / "python"
    config = load_config(repo)
    assert config.run == f"{venv} train.py" and config.link == (".venv",)
    assert f"uv not found: the runs use {venv}" in result.warnings
    assert f"uv not found: the runs use {venv}" in task_notes(repo)


def test_init_never_overwrites_and_force_leaves_program_md_alone(tmp_path: Path) -> None:
    repo = upstream_checkout(tmp_path / "autoresearch")
    (repo / "brief.md").write_text("my own brief\n")
    with pytest.raises(ConfigError, match=r"not overwriting .*brief\.md: already there"):
        init(repo)
    assert not (repo / "autoresearch.toml").exists()  # all or nothing
    assert (repo / "brief.md").read_text() == "my own brief\n"
    init(repo, force=True)
    assert (repo / "brief.md").read_text().startswith("# Research brief")
    assert (repo / "program.md").read_text() == PROGRAM


def test_a_failure_half_way_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = upstream_checkout(tmp_path / "autoresearch")
    (repo / "autoresearch.toml").write_text("# mine\n")
    real = os.replace

    def failing(src: object, dst: object) -> None:
        if str(dst).endswith("brief.md"):
            raise OSError("disk full")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(init_module.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        init(repo, force=True)
    assert (repo / "autoresearch.toml").read_text() == "# mine\n" and not (
        repo / "brief.md"
    ).exists()
    assert sorted(p.name for p in repo.iterdir() if "autoresearch-" in p.name) == []


# --- any folder -----------------------------------------------------------------------------------


def test_not_a_git_repository_is_refused_or_initialised(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.py").write_text("print('---'); print('score: 1')\n")
    with pytest.raises(ConfigError, match=r"not inside a git repository.*pass --git"):
        init(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["train.py"]
    done = run_cli(folder, "init", "--git")
    assert done.returncode == 0, done.stderr
    assert (folder / ".git").is_dir() and load_config(folder).editable == ("train.py",)
    assert "editable: train.py (guessed from the folder)" in done.stdout


def test_existing_program_md_is_the_brief_and_stays(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mine", {"program.md": "Make it fast.\n", "bench.py": "x = 1\n"})
    result = init(repo)
    assert [p.name for p in result.written] == ["autoresearch.toml"]
    assert (repo / "program.md").read_text() == "Make it fast.\n"
    assert 'editable     = ["bench.py"]' in (repo / "autoresearch.toml").read_text()
    assert "set `run` (the command of one experiment) in autoresearch.toml" in result.warnings


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"train.py": "", "util.py": ""}, ("train.py",)),
        ({"src/fastlib/__init__.py": "", "src/fastlib/core.py": "", "tests/test_core.py": ""},
         ("src/fastlib/**/*.py",)),
        ({"render/__init__.py": "", "tests/__init__.py": "", "setup.py": ""}, ("render/**/*.py",)),
        ({"bench.py": "", "solver.py": "", "setup.py": "", "test_solver.py": ""},
         ("bench.py", "solver.py")),
        ({"README.md": ""}, ()),
    ],
)  # fmt: skip
def test_editable_is_guessed_from_the_folder(
    tmp_path: Path, files: dict[str, str], expected: tuple[str, ...]
) -> None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert guess_editable(tmp_path) == expected
