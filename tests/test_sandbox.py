"""The sandbox: each attack a run can try, stopped inside bubblewrap and (where possible) detected without it.

Every attack is the code of ``train.py`` in a committed experiment, run through the real
executor (check/run/evaluate, a real git worktree, a throwaway venv) with ``sandbox = "bwrap"``
and with ``sandbox = "none"``. The honest score is 5.0 (read by the protected ``evaluate.py``
from the holdout file); an attack that works makes it lower.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import git, make_repo, write_patch_dir

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import TaskConfig, load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.errors import ConfigError
from autoresearch.executors._base import Job, RunResult, RunStatus
from autoresearch.executors._steps import execute
from autoresearch.executors.local import LocalExecutor
from autoresearch.executors.sandbox import Sandbox, bwrap_problem, resolve_mode
from autoresearch.git import git_fingerprint
from autoresearch.process import StepRunner, kill_orphans
from autoresearch.workspace import Workspace

HONEST = 5.0
CANARY = "sk-proj-SANDBOXCANARY-0123456789"
NO_BWRAP = bwrap_problem()
needs_bwrap = pytest.mark.skipif(
    NO_BWRAP is not None, reason=f"bubblewrap cannot run here: {NO_BWRAP}"
)
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]

EVALUATE = """\
import os
answer = os.path.join(os.environ["AUTORESEARCH_TASK_DIR"], ".autoresearch", "data", "answer.txt")
print("---")
print("score:", open(answer).read().strip())
"""

TOML = """\
[task]
editable = ["train.py"]
protected = ["evaluate.py"]
run = "{python} train.py"
evaluate = "{python} evaluate.py"
holdout = [".autoresearch/data/answer.txt"]
sandbox = "{mode}"
time_budget = 5
timeout = 30

[metric]
name = "score"
"""


@dataclass
class Task:
    """A committed attack task: its config, workspace, throwaway venv and python."""

    config: TaskConfig
    workspace: Workspace
    venv: Path

    @property
    def repo(self) -> Path:
        return self.config.root

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def sandbox(self, **overrides: object) -> Sandbox:
        return Sandbox.for_task(self.config, python=[self.venv, Path(sys.base_prefix)], **overrides)


@pytest.fixture(scope="module")
def venv_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv (no pip), copied per test: attacks may wreck their copy, never a real venv."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(path, with_pip=False, symlinks=True)
    return path


def make_task(tmp_path: Path, venv_template: Path, mode: str, extra: str = "") -> Task:
    env = tmp_path / "venv"
    shutil.copytree(venv_template, env, symlinks=True)
    toml = TOML.format(python=env / "bin" / "python", mode=mode).replace(
        "[metric]", extra + "\n[metric]"
    )
    repo = make_repo(tmp_path / "task", {
        "autoresearch.toml": toml, "evaluate.py": EVALUATE, "train.py": "print('trained')\n",
        "program.md": "Lower the score.\n", "lib/README.md": "A tracked folder.\n",
    })  # fmt: skip
    state = repo / ".autoresearch"
    (state / "data").mkdir(parents=True)
    (state / "data" / "answer.txt").write_text(f"{HONEST}\n")
    (state / "locks").mkdir()
    (state / "locks" / "t.lock").write_text("1234")
    (state / "ledger.db").write_bytes(b"SQLite format 3\0 the ledger")
    config = load_config(repo)
    workspace = Workspace(config, "t")
    workspace.start()
    return Task(config, workspace, env)


@pytest.fixture(params=MODES)
def task(request: pytest.FixtureRequest, tmp_path: Path, venv_template: Path) -> Task:
    return make_task(tmp_path, venv_template, request.param)


@dataclass
class Outcome:
    result: RunResult
    log: str  # the run step's log
    job: Job


def attack(task: Task, code: str, *, max_log_mb: float = 64.0, max_memory_mb: float | None = None,
           cpus: tuple[int, ...] = (), **sandbox: object) -> Outcome:  # fmt: skip
    """Commit ``code`` as train.py (as a proposal would) and run the experiment's steps."""
    ws, config = task.workspace, task.config
    workdir = ws.checkout(0, ws.head())
    protected = ws.protected_hashes(0)
    (workdir / "train.py").write_text(textwrap.dedent(code))
    sha, _ = ws.commit(0, "attack")
    state = config.root / ".autoresearch"
    job = Job(
        experiment_id=1, run_index=0, commit=sha, workdir=workdir, run=config.run, check=config.check,
        metric=config.metric, log_dir=state / "logs" / "t", out_dir=state / "runs" / "t" / "0001-0",
        evaluate=config.evaluate, time_budget=config.time_budget, timeout=config.timeout,
        env={"AUTORESEARCH_TASK_DIR": str(config.root)}, protected=protected,
        reset_root=ws.slot_root(0), reset_keep=ws.linked_paths(), max_memory_mb=max_memory_mb, cpus=cpus,
    )  # fmt: skip
    result = execute(job, StepRunner(max_log_mb=max_log_mb), sandbox=task.sandbox(**sandbox))
    return Outcome(result, (job.log_dir / f"{job.name}.log").read_text(errors="replace"), job)


def outside(task: Task) -> dict[str, str]:
    """Everything a run must not change: the checkout's files, .git's admin and refs, the venv."""
    prints = git_fingerprint(task.repo, refs=[task.workspace.branch_ref, "refs/heads/main"])
    skip = (".git", ".autoresearch/worktrees", ".autoresearch/runs", ".autoresearch/logs")
    for root in (task.repo, task.venv):
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if root == task.repo and any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            data = (
                os.readlink(path)
                if path.is_symlink()
                else path.read_bytes()
                if path.is_file()
                else ""
            )
            prints[str(path)] = hashlib.sha256(str(data).encode()).hexdigest()
    return prints


def mode_of(task: Task) -> str:
    return task.config.sandbox


def assert_honest(outcome: Outcome) -> None:
    assert outcome.result.status is RunStatus.OK, outcome.result.reason
    assert outcome.result.metric == HONEST


# --- the Python environment ----------------------------------------------------------------------

PTH = """\
import os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
line = "import sys; sys.argv[0].endswith('evaluate.py') and (print('---'), print('score: 0.0'), sys.exit(0))"
try:
    open(os.path.join(site, "zz_fake.pth"), "w").write(line + "\\n")
    print("planted")
except OSError as exc:
    print("refused:", exc)
"""


def test_a_pth_file_in_site_packages(task: Task) -> None:
    before = outside(task)
    outcome = attack(task, PTH)
    if mode_of(task) == "bwrap":
        assert "refused: [Errno 30] Read-only file system" in outcome.log
        assert_honest(outcome)
        assert outside(task) == before
    else:  # planted, and caught: the run is invalid, its fake score never read
        assert "planted" in outcome.log
        assert outcome.result.status is RunStatus.INVALID
        assert "the run step changed the Python environment" in outcome.result.reason
        assert [s.name for s in outcome.result.steps] == ["run"]


REPLACE_PYTHON = """\
import os, sys
try:
    os.unlink(sys.executable)  # the venv's link, never what it points to
    with open(sys.executable, "w") as fh:
        fh.write("#!/bin/sh\\necho ---\\necho 'score: 0.0'\\n")
    os.chmod(sys.executable, 0o755)
    print("replaced")
except OSError as exc:
    print("refused:", exc)
"""


def test_the_python_next_to_sys_executable_replaced(task: Task) -> None:
    before = outside(task)
    outcome = attack(task, REPLACE_PYTHON)
    if mode_of(task) == "bwrap":
        assert "refused:" in outcome.log and "Read-only file system" in outcome.log
        assert_honest(outcome)
        assert outside(task) == before
    else:
        assert "replaced" in outcome.log
        assert outcome.result.status is RunStatus.INVALID
        assert "the Python environment" in outcome.result.reason


# --- git ---------------------------------------------------------------------------------------

COMMIT_HARNESS = """\
import subprocess
original = open("evaluate.py").read()
open("evaluate.py", "w").write("print('---'); print('score: 0.0')\\n")
done = subprocess.run("git commit -qam fake && git rev-parse HEAD", shell=True,
                      capture_output=True, text=True)
print("commit:", done.returncode, done.stdout.strip(), done.stderr.strip()[:200])
open("evaluate.py", "w").write(original)  # on disk as it was: the hash check passes
"""


def test_a_commit_inside_the_worktree_then_restored_on_disk(task: Task) -> None:
    before = outside(task)
    outcome = attack(task, COMMIT_HARNESS)
    assert_honest(outcome)  # evaluate ran on the recorded commit, not the run's HEAD
    assert git(task.workspace.slot_root(0), "rev-parse", "HEAD") == outcome.job.commit
    if mode_of(task) == "bwrap":
        assert "commit: 128" in outcome.log  # git cannot even find the repository
        assert outside(task) == before
    else:
        assert "commit: 0 " in outcome.log  # it committed; the reset by sha undid it


NESTED_GIT = """\
import os
os.makedirs("lib/.git", exist_ok=True)
open("lib/.git/state", "w").write("steps taken so far: 42")  # git never resets nor cleans it
open("lib/.git/HEAD", "w").write("ref: refs/heads/main")
print("planted")
"""


def test_state_kept_in_a_nested_dot_git_does_not_outlive_the_run(task: Task) -> None:
    """A ``.git`` below the worktree root would survive every reset and clean, a cache the next
    run of a null edit could read; it is gone before evaluate, and so before any later run."""
    outcome = attack(task, NESTED_GIT)
    assert_honest(outcome)
    assert "planted" in outcome.log
    root = task.workspace.slot_root(0)
    assert (root / "lib" / "README.md").is_file() and not (root / "lib" / ".git").exists()
    assert (root / ".git").is_file()


@pytest.mark.parametrize("mode", MODES)
def test_work_done_in_the_check_step_does_not_reach_the_run(
    mode: str, tmp_path: Path, venv_template: Path
) -> None:
    """``check`` is not timed: what it leaves in the worktree (a model trained ahead, in a
    folder git cleans or in a nested .git it does not) is gone when the run starts."""
    python = tmp_path / "venv" / "bin" / "python"
    task = make_task(tmp_path, venv_template, mode, f'check = "{python} train.py check"')
    outcome = attack(task, """\
        import os, sys
        if sys.argv[1:] == ["check"]:
            open("trained_ahead.pt", "w").write("weights")
            os.makedirs("lib/.git", exist_ok=True)
            open("lib/.git/weights", "w").write("weights")
            print("trained ahead")
        else:
            found = [p for p in ("trained_ahead.pt", "lib/.git/weights") if os.path.exists(p)]
            print("the run finds:", found)
        """)
    assert_honest(outcome)
    assert "the run finds: []" in outcome.log


def write_into(path_expr: str, text: str) -> str:
    return f"""\
import os
repo = os.environ["AUTORESEARCH_TASK_DIR"]
path = os.path.join(repo, {path_expr})
try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fh.write({text!r})
    os.chmod(path, 0o755)
    print("wrote", path)
except OSError as exc:
    print("refused:", exc)
"""


def test_writing_the_users_checkout_ledger_and_lock(task: Task) -> None:
    before = outside(task)
    code = write_into('"evaluate.py"', "print('score: 0.0')\n") + textwrap.dedent("""\
        for name in (".autoresearch/ledger.db", ".autoresearch/locks/t.lock"):
            try:
                os.unlink(os.path.join(repo, name))
            except OSError as exc:
                print("refused:", exc)
        """)
    outcome = attack(task, code)
    if mode_of(task) == "bwrap":  # written into an empty, private tmpfs: nothing outside changed
        assert_honest(outcome)
        assert outside(task) == before
        assert (task.repo / ".autoresearch" / "ledger.db").exists()
    else:
        assert outcome.result.status is RunStatus.INVALID
        assert "the user's checkout" in outcome.result.reason
        assert not (task.repo / ".autoresearch" / "locks" / "t.lock").exists()  # not stopped


HOOK = '#!/bin/sh\nenv > "$(git rev-parse --git-common-dir)/../hook-ran"\n'


def test_planting_a_git_hook(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    before = outside(task)
    hooks = [write_into(f'".git/hooks/{name}"', HOOK) for name in ("post-checkout", "pre-commit")]
    outcome = attack(task, "\n".join(hooks))
    if mode_of(task) == "bwrap":
        assert_honest(outcome)
        assert outside(task) == before
        assert not (task.repo / ".git" / "hooks" / "post-checkout").exists()
    else:
        assert outcome.result.status is RunStatus.INVALID
        assert "the run step changed .git/hooks" in outcome.result.reason
    # Either way the orchestrator's own git calls never run a hook.
    (task.workspace.slot_dir(0) / "train.py").write_text("print('next')\n")
    task.workspace.commit(0, "next")
    task.workspace.checkout(0, task.workspace.head())
    assert not (task.repo / "hook-ran").exists()


FSMONITOR = """\
import os
repo = os.environ["AUTORESEARCH_TASK_DIR"]
evil = os.path.join(repo, ".autoresearch", "runs", "evil.sh")
try:  # inside, the emptied checkout is read-only: the script cannot even be written there
    open(evil, "w").write("#!/bin/sh\\nenv > " + os.path.join(repo, "fsmonitor-ran") + "\\n")
    os.chmod(evil, 0o755)
    with open(os.path.join(repo, ".git", "config"), "a") as fh:
        fh.write("[core]\\n\\tfsmonitor = " + evil + "\\n")
    print("configured")
except OSError as exc:
    print("refused:", exc)
"""


def test_setting_core_fsmonitor_in_git_config(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    outcome = attack(task, FSMONITOR)
    if mode_of(task) == "bwrap":
        assert "refused:" in outcome.log
        assert_honest(outcome)
        assert "fsmonitor" not in (task.repo / ".git" / "config").read_text()
    else:
        assert "configured" in outcome.log
        assert outcome.result.status is RunStatus.INVALID
        assert "the run step changed .git/config" in outcome.result.reason
    task.workspace.dirty_files()  # git status: where an fsmonitor hook would run
    task.workspace.checkout(0, task.workspace.head())
    assert not (task.repo / "fsmonitor-ran").exists()


MOVE_BRANCH = """\
import subprocess, os
repo = os.environ["AUTORESEARCH_TASK_DIR"]
mine = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
done = subprocess.run(["git", "-C", repo, "update-ref", "refs/heads/autoresearch/t", mine or "HEAD"],
                      capture_output=True, text=True)
print("update-ref:", done.returncode, done.stderr.strip()[:200])
"""


def test_moving_the_session_branch(task: Task) -> None:
    ws = task.workspace  # the run points the branch at its own commit (HEAD of its worktree)
    branch_before, prints_before = ws.branch_head(), ws.fingerprint()
    outcome = attack(task, MOVE_BRANCH)
    assert_honest(outcome)
    if mode_of(task) == "bwrap":
        assert "update-ref: 128" in outcome.log or "update-ref: 1" in outcome.log
        assert ws.branch_head() == branch_before
        assert ws.fingerprint() == prints_before
    else:  # it moved; the engine's check of Workspace.fingerprint() after each run says so
        assert ws.branch_head() != branch_before
        assert Sandbox.changes(prints_before, ws.fingerprint()) == [ws.branch_ref]


SWAP_LINK = """\
import os, shutil
try:
    os.unlink("shared")  # the link to the user's untracked data: replaced by the run's own
    os.mkdir("shared")
    open("shared/answer.txt", "w").write("0.0\\n")
    print("swapped")
except OSError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("mode", MODES)
def test_replacing_a_linked_data_folder(mode: str, tmp_path: Path, venv_template: Path) -> None:
    task = make_task(tmp_path, venv_template, mode, extra='link = ["shared"]')
    (task.repo / "shared").mkdir()
    (task.repo / "shared" / "answer.txt").write_text(f"{HONEST}\n")
    evaluate = EVALUATE.replace('os.path.join(os.environ["AUTORESEARCH_TASK_DIR"], ".autoresearch", "data", "answer.txt")',
                                '"shared/answer.txt"')  # fmt: skip
    (task.repo / "evaluate.py").write_text(evaluate)
    (task.repo / ".gitignore").write_text("shared\n")  # data stays out of the commits
    git(task.repo, "add", "-A")
    git(task.repo, "commit", "-qm", "evaluate reads the linked folder")
    ws = Workspace(task.config, "u")
    ws.start()
    task.workspace = ws
    outcome = attack(task, SWAP_LINK)
    assert "swapped" in outcome.log  # the worktree is the run's to write, links included
    assert_honest(outcome)  # evaluate saw the link put back, not the run's folder
    assert (task.repo / "shared" / "answer.txt").read_text() == f"{HONEST}\n"


LINK_HARNESS = """\
import os
with open("big.bin", "wb") as fh:
    fh.truncate(1 << 30)  # sparse: a GiB that costs nothing to make, much to read
os.unlink("evaluate.py")
os.symlink(os.path.abspath("big.bin"), "evaluate.py")
print("linked")
"""


def test_a_protected_file_swapped_for_a_link_is_hashed_as_a_link(task: Task) -> None:
    outcome = attack(task, LINK_HARNESS)
    assert "linked" in outcome.log
    assert outcome.result.status is RunStatus.INVALID
    assert outcome.result.reason == "the run step changed protected files: evaluate.py"


# --- extended attributes -----------------------------------------------------------------------

XATTRS = """\
import os, struct, sys
out = os.environ["AUTORESEARCH_OUT"]
STAMP = 1234567890123456789
# an access control list whose entries carry ids of the step's choice (version 2; user::rwx,
# user:12345:r-x, group::r-x, mask::r-x, other::r-x)
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in
                                      ((1, 7, 2**32 - 1), (2, 5, 12345), (4, 5, 2**32 - 1), (16, 5, 2**32 - 1), (32, 5, 2**32 - 1)))
for path in (".", "lib", "lib/README.md", "train.py", out):
    if sys.argv[1:] == ["keep"]:  # the check step, or an earlier experiment: work kept
        try:
            os.setxattr(path, "user.kept", b"trained weights")
            print("kept on", path)
        except OSError as exc:
            print("refused on", path, exc)
        try:
            os.setxattr(path, "system.posix_acl_access", acl)
            print("acl kept on", path)
        except OSError as exc:
            print("acl refused on", path, exc)
        if os.path.isdir(path):  # 64 bits in each time, and the mode bits git does not track
            os.utime(path, ns=(STAMP, STAMP))
            os.chmod(path, 0o1751)
    else:
        try:
            print("found on", path, os.getxattr(path, "user.kept"))
        except OSError:
            print("nothing on", path)
        try:
            print("acl found on", path, os.getxattr(path, "system.posix_acl_access"))
        except OSError:
            pass
        st = os.stat(path)
        if STAMP in (st.st_atime_ns, st.st_mtime_ns) or st.st_mode & 0o7777 == 0o1751:
            print("stamp found on", path)
"""


@pytest.mark.parametrize("mode", MODES)
def test_metadata_carries_no_work_to_a_later_step(tmp_path: Path, venv_template: Path, mode: str) -> None:
    """git's reset and clean, and emptying AUTORESEARCH_OUT, leave extended attributes and the
    times and modes of folders: the check step (work ahead) and an earlier experiment (work past
    its budget, then a crash) could leave kilobytes there for the run step, and a later
    experiment, to pick up."""
    task = make_task(tmp_path, venv_template, mode, extra=f'check = "{tmp_path}/venv/bin/python train.py keep"')
    first = attack(task, XATTRS)
    check_log = (first.job.log_dir / f"{first.job.name}.check.log").read_text()
    if "kept on lib" not in check_log:
        pytest.skip(f"no user extended attributes on this file system: {check_log}")
    assert "kept on ." in check_log and "kept on train.py" in check_log
    assert "found on" not in first.log and "nothing on lib" in first.log, first.log  # check -> run
    assert "acl found" not in first.log, first.log
    keep = attack(task, XATTRS.replace('sys.argv[1:] == ["keep"]', "True"))  # its run step keeps too
    assert "kept on lib" in keep.log
    later = attack(task, XATTRS.replace('sys.argv[1:] == ["keep"]', "False"))  # the next experiment
    later_check = (later.job.log_dir / f"{later.job.name}.check.log").read_text()
    assert "found on" not in later_check + later.log and "nothing on lib" in later_check, later_check  # incl. acl


REPOINT = """\
import os, sys
print("data points at", os.readlink("data"))
if "--repoint" in sys.argv:  # a message for the runs after this one, in the link's target
    os.unlink("data")
    os.symlink("/nonexistent/stash/0.7853981608973315", "data")
    sys.exit(3)  # a crash: no evaluate step, whose reset would have put the link back
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_linked_path_pointed_elsewhere_is_pointed_back(tmp_path: Path, venv_template: Path, mode: str) -> None:
    """`link` paths are left by git's clean; the name a crashing step gives a link's target
    reached the next run of the experiment, and the next experiment, unless the link is put
    back to the task folder's own path."""
    task = make_task(tmp_path, venv_template, mode, extra='link = ["data"]')
    (task.repo / "data").mkdir()
    (task.repo / "data" / "shard.bin").write_bytes(b"training data")
    honest = f"data points at {task.repo / 'data'}"
    first = attack(task, REPOINT.replace('"--repoint" in sys.argv', "True"))
    assert first.result.status is RunStatus.CRASH and honest in first.log, first.log
    assert os.readlink(first.job.workdir / "data").startswith("/nonexistent/stash")
    again = execute(first.job, StepRunner(), sandbox=task.sandbox())  # its next run, same checkout
    log = (first.job.log_dir / f"{first.job.name}.log").read_text()
    assert again.status is RunStatus.CRASH and honest in log and "stash" not in log, log
    later = attack(task, REPOINT)  # the next experiment
    assert honest in later.log and "stash" not in later.log, later.log


# --- processes, output, data, network ------------------------------------------------------------

ENVIRON = f"""\
import glob
found = set()
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        data = open(path, "rb").read()
    except OSError:
        continue
    if b"{CANARY[:12]}" in data:
        found.add(path)
print("leaked from", sorted(found) or "nowhere")
"""


def test_reading_a_parents_environment(task: Task) -> None:
    # The orchestrator holds the key in its environment from the start (the SDKs read it there).
    holder = subprocess.Popen(["sleep", "30"], env={**os.environ, "OPENAI_API_KEY": CANARY})
    try:
        outcome = attack(task, ENVIRON)
    finally:
        holder.kill()
        holder.wait()
    assert_honest(outcome)
    if mode_of(task) == "bwrap":
        assert "leaked from nowhere" in outcome.log
    else:  # not stopped without the sandbox (README: what `none` does not cover)
        assert f"/proc/{holder.pid}/environ" in outcome.log


FLOOD = """\
import os
block = b"x" * (1 << 20) + b"\\n"
for _ in range(1024):
    os.write(1, block)
print("last line: the tail is kept")
"""


def test_a_one_gib_log(task: Task) -> None:
    outcome = attack(task, FLOOD, max_log_mb=1)
    assert_honest(outcome)
    log = outcome.job.log_dir / f"{outcome.job.name}.log"
    assert log.stat().st_size <= 1 << 20
    assert outcome.log.startswith("[autoresearch: this log is capped at 1 MB ([task] max_log_mb)")
    assert outcome.log.rstrip().endswith("last line: the tail is kept")
    dropped = int(outcome.log.split("the first ", 1)[1].split(" ", 1)[0])
    assert dropped > 1000 * (1 << 20)


def escaper(tag: str) -> str:
    return f"""\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "{tag}"], {{}})  # no environment: no marker to find
    os._exit(0)
time.sleep(0.2)
print("forked")
"""


def sleepers(tag: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "cmdline").read_bytes() == f"sleep\0{tag}\0".encode():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_double_forked_process_outliving_the_step(task: Task) -> None:
    tag = f"{time.time() % 1000 + 30:.6f}"
    outcome = attack(task, escaper(tag))
    assert_honest(outcome)
    survivors = sleepers(tag)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    if mode_of(task) == "bwrap":  # the PID namespace died with the step
        assert survivors == []
    else:  # not stopped without the sandbox (README: what `none` does not cover)
        assert len(survivors) == 1


HIDDEN_HOG = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # no group, no parent, no environment: no marker to find
        code = "x = b'x' * (400 << 20); open('held', 'w').close(); import time; time.sleep(60)"
        os.execve(sys.executable, [sys.executable, "-c", code], {})
    os._exit(0)
for _ in range(600):
    if os.path.exists("held"):
        break
    time.sleep(0.1)
time.sleep(5)  # the step's memory is looked at 20 times meanwhile
print("not stopped")
"""


SPREAD = """\
import ctypes, os
mine = sorted(os.sched_getaffinity(0))
try:
    os.sched_setaffinity(0, {wanted})
except OSError as exc:
    print("refused:", exc)
print("asked for {wanted} on", mine, "; got", sorted(os.sched_getaffinity(0)))
# an io_uring whose kernel thread polls on a CPU of our choice (IORING_SETUP_SQPOLL|SQ_AFF)
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_uint32 * 30)()
params[2], params[3] = 0x2 | 0x4, {wanted}[0]  # flags, sq_thread_cpu
fd = libc.syscall(425, 4, params)
print("io_uring:", fd, os.strerror(ctypes.get_errno()) if fd < 0 else "set up")
"""


@needs_bwrap
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="this process has fewer than 2 CPUs")
def test_a_run_on_its_slots_cpus_cannot_spread_to_the_others(tmp_path: Path, venv_template: Path) -> None:
    """A slot's run that took every CPU would be timed on the other slots' share too."""
    task = make_task(tmp_path, venv_template, "bwrap")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = attack(task, SPREAD.format(wanted=cpus), cpus=(cpus[0],))
    assert_honest(pinned)
    assert f"asked for {cpus} on {[cpus[0]]} ; got {[cpus[0]]}" in pinned.log
    assert f"io_uring: -1 {os.strerror(38)}" in pinned.log
    # unpinned (one slot), a run sets its own CPUs as it likes
    free = attack(task, SPREAD.format(wanted=[cpus[-1]]))
    assert f"asked for {[cpus[-1]]} on {cpus} ; got {[cpus[-1]]}" in free.log


def test_memory_held_by_a_process_that_hid_from_the_step(task: Task) -> None:
    outcome = attack(task, HIDDEN_HOG, max_memory_mb=300)
    if mode_of(task) == "bwrap":  # it is still in the step's PID namespace, below bwrap
        assert outcome.result.status is RunStatus.CRASH, outcome.result.reason
        assert "run step killed: its processes held" in outcome.result.reason
        assert "not stopped" not in outcome.log
    else:  # not found without the sandbox (README: what `none` does not cover)
        assert_honest(outcome)
        assert "not stopped" in outcome.log
        for entry in Path("/proc").glob("[0-9]*"):  # the hidden hog, found by its command line
            with contextlib.suppress(OSError):
                if b"400 << 20" in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


TMPFS_HOG = """\
import time
with open("/tmp/held", "wb") as fh:  # the sandbox's /tmp: memory, not disk
    for _ in range(400):
        fh.write(b"x" * (1 << 20))
time.sleep(20)
print("not stopped")
"""


@needs_bwrap
def test_memory_written_to_the_sandboxs_tmp_counts(tmp_path: Path, venv_template: Path) -> None:
    outcome = attack(make_task(tmp_path, venv_template, "bwrap"), TMPFS_HOG, max_memory_mb=300)
    assert outcome.result.status is RunStatus.CRASH, outcome.result.reason
    assert "run step killed: its processes held" in outcome.result.reason
    assert "not stopped" not in outcome.log


SHARED_TENSORS = """\
import mmap, os, time
with open("/dev/shm/batch", "w+b") as fh:  # as a data loader's workers share their batches
    fh.truncate(200 << 20)
    view = mmap.mmap(fh.fileno(), 200 << 20)
    chunk = b"x" * (1 << 20)
    for i in range(200):  # a megabyte at a time: no 200-MB bytes object on the side
        view[i << 20 : (i + 1) << 20] = chunk
    if os.fork() == 0:
        assert view[::4096].count(b"x") == 51200  # the same 200 MB, mapped by a second process
        time.sleep(1.5)
        os._exit(0)
    time.sleep(1.5)
    os.wait()
print("shared 200 MB")
"""


@needs_bwrap
def test_shared_memory_counts_once(tmp_path: Path, venv_template: Path) -> None:
    """200 MB in /dev/shm, mapped by two processes: under a 300-MB limit, not 400 or 600."""
    task = make_task(tmp_path, venv_template, "bwrap")
    outcome = attack(task, SHARED_TENSORS, max_memory_mb=300)
    assert_honest(outcome)
    assert "shared 200 MB" in outcome.log


READ_HOLDOUT = """\
import os
answer = os.path.join(os.environ["AUTORESEARCH_TASK_DIR"], ".autoresearch", "data", "answer.txt")
try:
    print("holdout says", open(answer).read().strip())
except OSError as exc:
    print("refused:", exc)
"""


def test_reading_the_holdout_in_the_run_step(task: Task) -> None:
    outcome = attack(task, READ_HOLDOUT)
    assert_honest(outcome)  # evaluate, and only evaluate, reads it
    if mode_of(task) == "bwrap":
        assert "refused: [Errno 13] Permission denied" in outcome.log
        assert "answer.txt" in outcome.log
    else:  # not stopped without the sandbox
        assert f"holdout says {HONEST}" in outcome.log


LINK_TO_HOLDOUT = """\
import os
out, task = os.environ["AUTORESEARCH_OUT"], os.environ["AUTORESEARCH_TASK_DIR"]
os.makedirs(os.path.join(out, "preds"))
os.symlink("preds/final.txt", os.path.join(out, "latest.txt"))  # inside: fine
open(os.path.join(out, "preds", "final.txt"), "w").write("1.0")
os.symlink(os.path.join(task, ".autoresearch", "data", "answer.txt"), os.path.join(out, "preds", "pred.txt"))
os.symlink("/proc/self/root/etc", os.path.join(out, "etc"))
"""


def test_a_link_out_of_autoresearch_out_makes_the_run_invalid(task: Task) -> None:
    """The run cannot read the holdout, but it can name it: a link left in AUTORESEARCH_OUT
    made the trusted evaluate read the holdout as the run's predictions (kept at -49.6%)."""
    outcome = attack(task, LINK_TO_HOLDOUT)
    assert outcome.result.status is RunStatus.INVALID and outcome.result.metric is None
    reason = outcome.result.reason
    assert reason.startswith("the run left links out of AUTORESEARCH_OUT, or folders too deep to check "
                             "(etc -> /proc/self/root/etc, preds/pred.txt -> ")
    assert "answer.txt" in reason and "latest.txt" not in reason
    assert [s.name for s in outcome.result.steps] == ["run"]  # evaluate never ran


@needs_bwrap
def test_link_chains_and_deep_folders_in_autoresearch_out_are_invalid_not_a_crash(task: Task) -> None:
    """Python's realpath and walks recurse: a chain of 1,000 links, or 1,100 nested folders,
    raised RecursionError in the orchestrator, and the session ended."""
    code = """\
    import os
    out = os.environ["AUTORESEARCH_OUT"]
    for i in range(1000):
        os.symlink(f"L{i + 1}", os.path.join(out, f"L{i}"))
    os.chdir(out)
    for _ in range(1100):
        os.mkdir("a")
        os.chdir("a")
    """
    from autoresearch.executors._steps import links_out
    from autoresearch.git import remove_tree

    out = task.repo / ".autoresearch" / "runs" / "t" / "0001-0"
    try:
        outcome = attack(task, code)
        assert outcome.result.status is RunStatus.INVALID, outcome.result.reason
        assert "(L0 -> L1, " in outcome.result.reason
        assert "a/...: folders nested over 64 deep" in links_out(out)
    finally:  # what the session does to outputs it does not keep (pytest's own cleanup recurses)
        remove_tree(out)
    assert not out.exists()


@needs_bwrap
def test_a_step_changes_only_its_own_device_nodes(tmp_path: Path, venv_template: Path) -> None:
    """A step runs as root where the session does: the host's /dev nodes were its own to chmod
    (000 on /dev/null broke every later step) and to utime (state from run to run)."""
    from autoresearch.executors.sandbox import device_copies

    task = make_task(tmp_path, venv_template, "bwrap")
    with device_copies(tmp_path) as copies:
        if os.geteuid() == 0 and not copies:
            pytest.skip("no file system here allows device nodes: no copies to give the step")
    before = {name: os.stat(f"/dev/{name}") for name in ("full", "zero")}
    code = """\
    import os
    for name, change in (("full", lambda p: os.chmod(p, 0)), ("zero", lambda p: os.utime(p, ns=(10**9, 10**9)))):
        try:
            change("/dev/" + name)
            print("changed", name)
        except OSError as exc:
            print("refused", name, exc)
    """
    try:
        outcome = attack(task, code)
    finally:  # put the host's nodes back should the sandbox have let the step through
        if os.stat("/dev/full").st_mode != before["full"].st_mode:
            os.chmod("/dev/full", before["full"].st_mode & 0o7777)
        if os.stat("/dev/zero").st_mtime_ns != before["zero"].st_mtime_ns:
            os.utime("/dev/zero", ns=(before["zero"].st_atime_ns, before["zero"].st_mtime_ns))
    after = {name: os.stat(f"/dev/{name}") for name in ("full", "zero")}
    assert after["full"].st_ctime_ns == before["full"].st_ctime_ns, "the host's /dev/full was changed"
    assert after["zero"].st_ctime_ns == before["zero"].st_ctime_ns, "the host's /dev/zero was changed"
    assert_honest(outcome)
    if os.geteuid() == 0:  # the step's own copies: changed, and gone with the step
        assert "changed full" in outcome.log and "changed zero" in outcome.log
    else:  # another user's nodes
        assert "refused full" in outcome.log


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on the host's 127.0.0.1; what it receives."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                received.append(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def exfiltrate(port: int) -> str:
    return f"""\
import socket
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=3) as conn:
        conn.sendall(b"leak")
    print("sent")
except OSError as exc:
    print("refused:", exc)
"""


def test_network_access(task: Task, listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    outcome = attack(task, exfiltrate(port))
    assert_honest(outcome)
    time.sleep(0.3)
    if mode_of(task) == "bwrap":
        assert "refused:" in outcome.log and received == []
    else:  # not stopped without the sandbox
        assert received == [b"leak"]


@needs_bwrap
def test_network_true_lets_the_step_connect(
    tmp_path: Path, venv_template: Path, listener: tuple[int, list[bytes]]
) -> None:
    task = make_task(tmp_path, venv_template, "bwrap")
    port, received = listener
    outcome = attack(task, exfiltrate(port), network=True)
    assert "sent" in outcome.log
    time.sleep(0.3)
    assert received == [b"leak"]


# --- a whole session ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_session_never_keeps_the_pth_attack(
    mode: str, tmp_path: Path, venv_template: Path
) -> None:
    task = make_task(tmp_path, venv_template, mode)
    (task.repo / ".autoresearch" / "ledger.db").unlink()  # the session makes a real one
    patch = (
        "# a .pth file that fakes evaluate\ntrain.py\n<<<<<<< SEARCH\nprint('trained')\n=======\n"
    )
    patches = write_patch_dir(tmp_path / "patches", {"01": patch + PTH + ">>>>>>> REPLACE\n"})
    options = SessionOptions(tag="s", max_experiments=2)
    executor = LocalExecutor(sandbox=task.sandbox())
    engine = Engine(task.config, ReplayAgent(patches), options=options, executor=executor)
    try:
        engine.run()
    finally:
        executor.close()
    rows = engine.ledger.experiments(engine.session)
    verdicts = [(row.verdict, row.metric) for row in rows]
    expected = "discard" if mode == "bwrap" else "invalid"
    assert verdicts[0] == ("baseline", HONEST)
    assert verdicts[1][0] == expected
    assert git(task.repo, "rev-parse", "autoresearch/s") == rows[0].commit


# --- settings and helpers -------------------------------------------------------------------------


def test_auto_without_bwrap_warns_and_bwrap_without_it_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "autoresearch.executors.sandbox.bwrap_problem", lambda: "bwrap is not installed"
    )
    mode, warning = resolve_mode("auto")
    assert mode == "none" and warning.startswith(
        "WARNING: steps run UNSANDBOXED: bwrap is not installed"
    )
    with pytest.raises(ConfigError, match='sandbox = "bwrap", but bwrap is not installed'):
        resolve_mode("bwrap")
    assert resolve_mode("none")[0] == "none"


@needs_bwrap
def test_auto_is_bwrap_where_it_works() -> None:
    assert resolve_mode("auto") == ("bwrap", "")


def test_config_keys_are_validated(tmp_path: Path) -> None:
    base = "[metric]\nname = 's'\n[task]\neditable = ['a.py']\nrun = 'true'\n"
    for line, message in [
        (
            "sandbox = 'docker'",
            "[task] sandbox: found 'docker', expected one of 'auto', 'bwrap', 'none'",
        ),
        ("network = 'yes'", "[task] network: found 'yes', expected true or false"),
        ("env = ['A B']", "[task] env: found 'A B', expected names of environment variables"),
        ("holdout = ['../val']", "[task] holdout: found '../val', expected paths relative"),
        ("max_log_mb = 0", "[task] max_log_mb: found 0, expected a number > 0"),
    ]:
        (tmp_path / "autoresearch.toml").write_text(base + line + "\n")
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path)
        assert message in str(info.value)
    (tmp_path / "autoresearch.toml").write_text(base)
    config = load_config(tmp_path)
    assert (config.sandbox, config.network, config.env, config.holdout, config.max_log_mb) == (
        "auto",
        False,
        (),
        (),
        64.0,
    )


def test_an_api_key_named_in_task_env_is_refused(tmp_path: Path, venv_template: Path) -> None:
    task = make_task(tmp_path, venv_template, "none")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY would hand an agent's API key"):
        task.sandbox(env=["HF_TOKEN", "OPENAI_API_KEY"])


@needs_bwrap
def test_the_environment_inside_is_an_allowlist(
    tmp_path: Path, venv_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("HF_TOKEN", "hf-passed")
    monkeypatch.setenv("SOME_SETTING", "not-passed")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    task = make_task(tmp_path, venv_template, "bwrap")
    code = "import os\nfor k, v in sorted(os.environ.items()):\n    print(f'env {k}={v}')\n"
    outcome = attack(task, code, env=["HF_TOKEN"])
    assert_honest(outcome)
    names = {line.split("=")[0][4:] for line in outcome.log.splitlines() if line.startswith("env ")}
    assert "env HF_TOKEN=hf-passed" in outcome.log and "env CUDA_VISIBLE_DEVICES=3" in outcome.log
    assert "env HOME=/tmp/home" in outcome.log
    assert CANARY not in outcome.log and "SOME_SETTING" not in names
    assert {"PATH", "AUTORESEARCH_SEED", "AUTORESEARCH_OUT", "AUTORESEARCH_TASK_DIR"} <= names


@needs_bwrap
def test_inside_home_and_other_runs_are_empty_and_tmp_is_private(
    tmp_path: Path, venv_template: Path
) -> None:
    task = make_task(tmp_path, venv_template, "bwrap")
    (Path.home() / ".autoresearch-sandbox-test").write_text("secret")
    marker = Path("/tmp") / f"autoresearch-sandbox-{os.getpid()}"
    try:
        code = f"""\
            import os
            repo = os.environ["AUTORESEARCH_TASK_DIR"]
            print("home:", sorted(os.listdir(os.path.expanduser("~"))))
            print("state:", sorted(os.listdir(os.path.join(repo, ".autoresearch"))))
            print("checkout:", sorted(os.listdir(repo)))
            print("tmp sees marker:", os.path.exists({str(marker)!r}))
            open("/tmp/left-behind", "w").write("x")
            for folder in ("/tmp", "/dev/shm"):
                st = os.statvfs(folder)
                print(folder, "holds", st.f_blocks * st.f_frsize)
            """
        marker.write_text("host")
        outcome = attack(task, code)
    finally:
        (Path.home() / ".autoresearch-sandbox-test").unlink()
        marker.unlink()
    assert_honest(outcome)
    assert "home: []" in outcome.log
    assert "state: ['data', 'runs', 'worktrees']" in outcome.log  # no ledger, logs, locks
    assert "checkout: ['.autoresearch']" in outcome.log  # not even .git
    assert "tmp sees marker: False" in outcome.log
    assert not Path("/tmp/left-behind").exists()
    from autoresearch.executors.sandbox import _scratch_size

    if _scratch_size():  # a quarter of the memory each, not the kernel's half: the two cannot fill it
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        for folder in ("/tmp", "/dev/shm"):
            held = int(outcome.log.split(f"{folder} holds ")[1].split()[0])
            assert abs(held - memory // 4) <= 2**20, (folder, held, memory)  # rounded to pages
        two = LocalExecutor(slots=2, sandbox=task.sandbox())  # two slots: an eighth each, half in all
        two.close()
        argv = two.sandbox.prefix("run", cwd=task.repo, worktree=task.repo, writable=[task.repo])
        assert argv[argv.index("--size") + 1] == str(memory // 8)


@needs_bwrap
def test_folders_named_hidden_are_empty_inside(tmp_path: Path, venv_template: Path) -> None:
    """A Ray node hides its other runs' folders (its scratch root may lie outside /tmp, which is
    private anyway): a folder named in ``hidden`` is empty inside, even below a visible one."""
    task = make_task(tmp_path, venv_template, "bwrap")
    others = Path("/var/tmp") / f"autoresearch-runs-{os.getpid()}"
    (others / "0007-0" / "out").mkdir(parents=True)
    (others / "0007-0" / "out" / "model.pt").write_text("another candidate's checkpoint")
    code = f"""\
        import os
        print("others:", sorted(os.listdir({str(others)!r})))
        """
    try:
        shown = attack(task, code)
        hidden = attack(make_task(tmp_path / "h", venv_template, "bwrap"), code, hidden=[others])
    finally:
        shutil.rmtree(others)
    assert "others: ['0007-0']" in shown.log  # read-only, but there
    assert_honest(hidden)
    assert "others: []" in hidden.log


def test_pid_files_without_a_start_time_are_ignored(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        logs = tmp_path / "logs"
        logs.mkdir()
        (logs / "0001-0.pid").write_text(f"{victim.pid}")  # planted: no start time
        (logs / "0002-0.pid").write_text(f"{victim.pid} 1 {'0' * 32}")  # the wrong start time
        assert kill_orphans(logs) == []
        assert victim.poll() is None and not list(logs.glob("*.pid"))
        started = Path(f"/proc/{victim.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (logs / "0003-0.pid").write_text(f"{victim.pid} {started} {'0' * 32}")
        assert kill_orphans(logs) == [victim.pid]
        assert victim.wait(timeout=5) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_the_argv_binds_gpus_and_keeps_the_network_off(
    tmp_path: Path, venv_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("autoresearch.executors.sandbox._gpu_devices", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr("autoresearch.executors.sandbox.bwrap_problem", lambda: None)
    task = make_task(tmp_path, venv_template, "bwrap")
    work = task.workspace.slot_root(0)
    out = task.repo / ".autoresearch" / "runs" / "x"
    argv = task.sandbox().prefix("run", cwd=work, worktree=work, writable=[work, out])
    pairs = list(itertools.pairwise(argv))
    assert ("--dev-bind", "/dev/nvidia0") in pairs
    assert "--unshare-net" in argv and ("--cap-drop", "ALL") in pairs
    assert ("--tmpfs", str(task.repo)) in pairs and ("--tmpfs", str(Path.home())) in pairs
    assert ("--bind", str(work)) in pairs and ("--bind", str(out)) in pairs
    assert argv.index("--tmpfs") < argv.index("--bind")  # hidden first, then shown again
    evaluate = task.sandbox(network=True).prefix(
        "evaluate", cwd=work, worktree=work, writable=[out]
    )
    assert "--unshare-net" not in evaluate and ("--ro-bind", str(work)) in itertools.pairwise(
        evaluate
    )


def test_the_folder_autoresearch_is_imported_from_is_readable_inside() -> None:
    """An editable install's src/ (under /tmp in a CI clone) is bound back: steps run `autoresearch`."""
    import autoresearch
    from autoresearch.executors.sandbox import python_roots

    source = Path(autoresearch.__file__).resolve().parents[1]
    assert source in python_roots()


# --- what is writable, and the kernel's keyrings ------------------------------------------------

KEYS_AND_FOLDERS = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
key = libc.syscall(248, b"user", b"autoresearch-test", b"cached", 6, ctypes.c_long(-4))  # add_key
print("add_key:", "refused" if key < 0 else "stored", os.strerror(ctypes.get_errno()))
if key >= 0:
    libc.syscall(250, 3, ctypes.c_long(key))  # KEYCTL_REVOKE: leave nothing behind outside
repo = os.environ["AUTORESEARCH_TASK_DIR"]
for folder in ("/dev", "/dev/shm", "/dev/mqueue", "/tmp", "/run", repo, os.environ["AUTORESEARCH_OUT"]):
    try:
        open(os.path.join(folder, "zz-written"), "w").close()
        print("writable:", folder)
    except OSError as exc:
        print("refused:", folder, exc.strerror)
try:  # as root, a pipe here would start a program outside the sandbox: written unchanged
    same = open("/proc/sys/kernel/core_pattern").read()
    with open("/proc/sys/kernel/core_pattern", "w") as fh:
        fh.write(same)
    print("writable: core_pattern")
except OSError as exc:
    print("refused: core_pattern", exc.strerror)
print("inside:", os.environ.get("AUTORESEARCH_SANDBOX"))
"""


@needs_bwrap
def test_only_scratch_folders_are_writable_and_the_keyrings_are_out_of_reach(
    tmp_path: Path, venv_template: Path
) -> None:
    task = make_task(tmp_path, venv_template, "bwrap")
    outcome = attack(task, KEYS_AND_FOLDERS)
    assert_honest(outcome)
    log = outcome.log
    assert "add_key: refused Operation not permitted" in log  # root's keys are the host's
    for folder in ("/dev/shm", "/dev/mqueue", "/tmp", outcome.job.out_dir):
        assert f"writable: {folder}" in log
    for folder in ("/dev", "/run", task.repo):
        assert f"refused: {folder} Read-only file system" in log
    assert "refused: core_pattern" in log
    assert "inside: bwrap" in log


def test_without_bwrap_the_step_is_not_told_it_is_inside(
    tmp_path: Path, venv_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "bwrap")  # set by hand: not believed
    task = make_task(tmp_path, venv_template, "none")
    outcome = attack(task, "import os\nprint('inside:', os.environ.get('AUTORESEARCH_SANDBOX'))\n")
    assert "inside: None" in outcome.log


def _seccomp(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """What the classic-BPF ``program`` returns for a call (a small interpreter of its opcodes)."""
    import struct

    ops = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, a = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # load a word of seccomp_data: nr at 0, arch at 4, argument i's low word at 16 + 8i
            a = {0: nr, 4: arch, **{16 + 8 * i: v & 0xFFFFFFFF for i, v in enumerate(args)}}[k]
        elif code == 0x54:
            a &= k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


def test_the_keyring_filter_refuses_the_keyring_calls_of_every_abi() -> None:
    from autoresearch.executors.sandbox import keyring_filter

    allow, eperm = 0x7FFF0000, 0x00050001
    x86 = keyring_filter("x86_64")
    assert x86 is not None and keyring_filter("sparc") is None
    for arch, calls, other in ((0xC000003E, (248, 249, 250), (0, 1, 59, 251)),
                               (0x40000003, (286, 287, 288), (1, 4, 248))):  # fmt: skip
        assert [_seccomp(x86, arch, nr) for nr in calls] == [eperm] * 3
        assert [_seccomp(x86, arch, nr) for nr in other] == [allow] * len(other)
    assert _seccomp(x86, 0xC000003E, 0x40000000 | 250) == eperm  # the x32 ABI's keyctl
    arm = keyring_filter("aarch64")
    assert arm is not None
    assert [_seccomp(arm, 0xC00000B7, nr) for nr in (217, 218, 219, 220, 63)] == [eperm] * 3 + [allow] * 2
    assert _seccomp(arm, 0x40000028, 311) == eperm
    assert _seccomp(x86, 0xC000003E, 112) == allow  # a step may start a session of its own
    assert _seccomp(x86, 0xC000003E, 203) == allow  # and, on one slot, set its CPUs


# (the calls' table, which a filter makes do nothing: x86-64, i386, arm64, arm), a call it refuses
# with EPERM (keyctl) and one it lets run
_NOTHING = {
    "STEP_CALLS": ((221, 272, 223, 270), (222, 273, 224, 271)),  # fadvise: the page cache slots share
    "AGENT_CALLS": ((112, 66, 157, 66), (59, 11, 221, 11)),  # setsid: the CLI stays in its session
    "PINNED_CALLS": ((203, 241, 122, 241), (204, 242, 123, 242)),  # sched_setaffinity: a slot's CPUs
}


@pytest.mark.parametrize("table", ["STEP_CALLS", "PINNED_CALLS", "AGENT_CALLS"])
def test_every_filter_says_io_uring_is_not_there_on_every_abi(table: str) -> None:
    """io_uring's kernel threads run where the caller's CPUs do not bind them (a polling thread
    on the other slot's CPU halved its speed): ENOSYS, as on a kernel without it."""
    from autoresearch.executors import sandbox

    enosys = 0x00050000 | 38
    for machine, arches in (("x86_64", (0xC000003E, 0x40000003)), ("aarch64", (0xC00000B7, 0x40000028))):
        program = sandbox.seccomp_filter(getattr(sandbox, table), machine)
        assert program is not None
        for arch in arches:
            assert [_seccomp(program, arch, nr) for nr in (425, 426, 427)] == [enosys] * 3
            assert _seccomp(program, arch, 424) == 0x7FFF0000  # pidfd_send_signal runs


@pytest.mark.parametrize("table", sorted(_NOTHING))
def test_a_filter_makes_its_calls_do_nothing_on_every_abi(table: str) -> None:
    from autoresearch.executors import sandbox

    allow, eperm, nothing = 0x7FFF0000, 0x00050001, 0x00050000  # nothing: returns 0, not run
    calls = getattr(sandbox, table)
    x86, arm = sandbox.seccomp_filter(calls, "x86_64"), sandbox.seccomp_filter(calls, "aarch64")
    assert x86 is not None and arm is not None
    abis = ((x86, 0xC000003E, 250), (x86, 0x40000003, 288), (arm, 0xC00000B7, 219), (arm, 0x40000028, 311))
    ignored, others = _NOTHING[table]
    for (program, arch, keyctl), call, other in zip(abis, ignored, others, strict=True):
        assert _seccomp(program, arch, call) == nothing
        assert _seccomp(program, arch, keyctl) == eperm and _seccomp(program, arch, other) == allow


def test_madvise_drops_no_page_cache_but_runs_the_rest_on_every_abi() -> None:
    """MADV_COLD and MADV_PAGEOUT on a mapped read-only file evicted the other slot's Python
    environment from the page cache; an allocator's MADV_DONTNEED must still run."""
    from autoresearch.executors import sandbox

    allow, nothing = 0x7FFF0000, 0x00050000
    for machine, abis in (("x86_64", ((0xC000003E, 28), (0x40000003, 219))),
                          ("aarch64", ((0xC00000B7, 233), (0x40000028, 220)))):  # fmt: skip
        program = sandbox.seccomp_filter(sandbox.STEP_CALLS, machine)
        assert program is not None
        for arch, madvise in abis:
            for advice, wanted in ((20, nothing), (21, nothing), (4, allow), (8, allow), (21 + 2**32, nothing)):
                assert _seccomp(program, arch, madvise, (0x1000, 4096, advice)) == wanted, (machine, arch, advice)
            assert _seccomp(program, arch, madvise + 1, (0, 0, 21)) == allow  # the argument of another call
            assert _seccomp(program, arch, 440, (3, 0, 1, 21)) == nothing  # process_madvise: advice 4th
            assert _seccomp(program, arch, 440, (3, 0, 1, 4)) == allow


@needs_bwrap
def test_madvise_pageout_does_nothing_in_a_step(tmp_path: Path, venv_template: Path) -> None:
    task = make_task(tmp_path, venv_template, "bwrap")
    code = """\
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    nowhere, page = ctypes.c_void_p(4096), ctypes.c_size_t(4096)  # below any mapping: ENOMEM when it runs
    print("pageout", libc.madvise(nowhere, page, 21), "dontneed", libc.madvise(nowhere, page, 4))
    """
    outcome = attack(task, code)
    assert_honest(outcome)
    assert "pageout 0 dontneed -1" in outcome.log


@needs_bwrap
def test_the_evaluate_step_is_the_sandboxs_first_process(tmp_path: Path, venv_template: Path) -> None:
    """No bwrap reaper or shell above the trusted step: what it runs cannot open, signal or
    write the step's output through a process above it (a shell-free command only)."""
    task = make_task(tmp_path, venv_template, "bwrap")
    probe = ("import os\nprint('---')\nprint('score: 5.0')\nprint('pid:', os.getpid())\n"
             "print('parent:', os.getppid())\n")  # fmt: skip
    (task.repo / "probe.py").write_text(probe)
    git(task.repo, "add", "probe.py")
    git(task.repo, "commit", "-qm", "probe")
    for evaluate, pid in ((f"{task.python} probe.py", 1), (f"cd . && {task.python} probe.py", None)):
        config = replace(task.config, evaluate=evaluate)
        outcome = attack(Task(config, task.workspace, task.venv), f"print('trained for {pid}')\n")
        assert outcome.result.status is RunStatus.OK, outcome.result.reason
        if pid is None:  # through the shell: the shell is above it
            assert outcome.result.metrics["pid"] > 1
        else:
            assert outcome.result.metrics["pid"] == pid and outcome.result.metrics["parent"] == 0


@needs_bwrap
@pytest.mark.skipif(not Path("/var/cache/apt/archives").is_dir(), reason="no apt package archives here")
def test_the_package_archives_are_empty_inside(tmp_path: Path) -> None:
    """Downloaded packages hold copies of public text (one machine's held the GPT template's
    validation text, the King James Bible, as a .deb): a step sees none of them."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    box = Sandbox(task_root=repo, repo=repo, mode="bwrap")
    argv = box.prefix("run", cwd=repo, worktree=repo, writable=[])
    listed = subprocess.run([*argv, "ls", "-A", "/var/cache/apt/archives"], capture_output=True,
                            text=True, timeout=60, env=box.environment(dict(os.environ)))  # fmt: skip
    assert listed.returncode == 0 and listed.stdout == "", listed.stdout + listed.stderr
