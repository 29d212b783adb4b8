"""The step plan every executor runs: ``check`` -> ``run`` -> ``evaluate``, then the metric.

Between steps the protected files (and protected data) are hashed again, so a run that
rewrites the harness never gets its evaluation; before ``run`` and ``evaluate`` the worktree is
put back to the experiment's commit, so the trusted step never sees what the run step wrote
and the run never finds work that ``check`` did ahead of it, outside the time budget.
``AUTORESEARCH_OUT`` is emptied after ``check``: it holds what ``run`` made, never work the
tests did ahead for a task with no run step (``evaluate`` would time it done). Git's reset and
clean leave extended attributes, and the times and modes of folders, where they are: they are
scrubbed on the worktree and ``AUTORESEARCH_OUT`` before every step (``scrub_metadata``), so
no step (and no earlier experiment) leaves work in them for the next.
Executors differ only in where this runs (a thread here, a Ray worker there).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch import metrics
from autoresearch.errors import ExecutorError, MetricError
from autoresearch.executors._base import Job, RunResult
from autoresearch.executors.sandbox import device_copies
from autoresearch.integrity import sha256_files
from autoresearch.process import REFERENCE, TAIL_LINES, StepResult, StepRunner, without_secrets

if TYPE_CHECKING:
    from autoresearch.executors.sandbox import Sandbox
from autoresearch.git import Git, remove_nested_git, remove_tree
from autoresearch.records import RunStatus


def run_environment(job: Job, base: Mapping[str, str] | None = None,
                    keep: tuple[str, ...] = ()) -> dict[str, str]:  # fmt: skip
    """The environment of a run: the caller's less secrets, plus the job's, plus AUTORESEARCH_*."""
    env = without_secrets(base, keep=(*job.pass_env, *keep))
    env.update(job.env)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # `python` is the interpreter we run on
    env.update(
        AUTORESEARCH_TIME_BUDGET=f"{job.time_budget:g}",
        AUTORESEARCH_SEED=str(job.seed),
        AUTORESEARCH_OUT=str(job.out_dir),
        AUTORESEARCH_EXPERIMENT=str(job.experiment_id),
        AUTORESEARCH_RUN=str(job.run_index),
        PYTHONUNBUFFERED="1",
    )
    return env


def execute(job: Job, runner: StepRunner, env: Mapping[str, str] | None = None,
            sandbox: Sandbox | None = None) -> RunResult:  # fmt: skip
    """Run one job's steps and read its metric. Never raises for a failing run.

    With a ``sandbox`` each step runs inside it, and a step that changed what the sandbox
    fingerprints (git's admin files, the Python environment...) makes the run invalid. With
    ``job.cpus`` every step runs on those CPUs: they are this thread's while the job runs, and
    a process inherits the CPUs of the thread that started it (no window in which it has more).
    """
    if not job.cpus:
        return _execute(job, runner, env, sandbox)
    before = os.sched_getaffinity(0)  # 0: this thread
    try:
        os.sched_setaffinity(0, job.cpus)
    except OSError:  # a CPU gone offline since the slots were laid out: the job runs on ours
        return _execute(replace(job, cpus=()), runner, env, sandbox)
    try:
        return _execute(job, runner, env, sandbox)
    finally:
        os.sched_setaffinity(0, before)


def _execute(job: Job, runner: StepRunner, env: Mapping[str, str] | None,
             sandbox: Sandbox | None) -> RunResult:  # fmt: skip
    if job.out_dir.is_symlink():
        job.out_dir.unlink()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    _empty(job.out_dir)  # a run again under its name (resume) finds nothing of the killed one
    if job.reset_root is not None:  # what an earlier experiment left on the reused worktree
        scrub_metadata(job.reset_root)
    links = _links(job)  # where the worktree's links must point
    _relink(job, links)
    environment = run_environment(job, env, sandbox.env_names if sandbox else ())
    environment = sandbox.environment(environment) if sandbox else environment
    steps: list[StepResult] = []
    plan = [("check", job.check), ("run", job.run), ("evaluate", job.evaluate)]
    for name, command in plan:
        if not command.strip():
            continue
        suffix = "" if name == "run" else f".{name}"
        log = job.log_dir / f"{job.name}{suffix}.log"
        if name == "evaluate":
            _pristine(job, links, "evaluate")
            _pristine_reference(job)
            tampered = _tampered(job)  # the ruler is the session start's, byte for byte
            if tampered:
                reason = f"protected files differ from the session's before evaluate: {', '.join(tampered)}"
                return _result(job, steps, RunStatus.INVALID, reason)
            leaving = links_out(job.out_dir)
            if leaving:
                reason = (f"the run left links out of AUTORESEARCH_OUT, or folders too deep to check "
                          f"({', '.join(leaving[:3])}): evaluate, which may read the holdout, reads "
                          "only what the run wrote")  # fmt: skip
                return _result(job, steps, RunStatus.INVALID, reason)
            if job.metric.format == "json":
                _clear_result(job.out_dir, job.metric.path)  # only the harness writes it
        step_env = environment
        if name == "evaluate" and job.reference is not None:
            step_env = {**environment, REFERENCE: str(job.reference)}
        timeout = step_timeout(job, name, steps)
        if timeout <= 0:
            return _result(job, steps, RunStatus.TIMEOUT, f"stopped before the {name} step: {_past_budget(job)}")
        result, reached = _sandboxed_step(job, runner, sandbox, name, command, step_env, log, timeout)
        steps.append(result)
        if reached:  # what it changed outlives the run: the session must stop
            why = f"the {name} step changed {', '.join(reached)}"
            return replace(_result(job, steps, RunStatus.INVALID, why), fatal=True)
        failure = _failure(job, result, runner, timeout)
        if failure is not None:
            return _result(job, steps, *failure)
        tampered = _tampered(job)
        if tampered:
            reason = f"the {name} step changed protected files: {', '.join(tampered)}"
            return _result(job, steps, RunStatus.INVALID, reason)
        if name == "check":  # the run starts from the commit: no work done ahead, untimed
            _empty(job.out_dir)
            _pristine(job, links, "run")
    return _measure(job, steps)


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)  # a folder the check step made read-only too: emptied, or a crash
        else:
            entry.unlink()
    scrub_metadata(folder)


# extended attributes a step can set on what it owns: its own, and access control lists (each
# entry a 32-bit id of its choice); security labels (security.*) are the system's, left alone
_DROPPED_ATTRIBUTES = ("user.", "system.posix_acl_")
FOLDER_MODE = 0o755  # what git's checkout gives a folder (the mode bits are not tracked)


def scrub_metadata(root: Path) -> None:
    """Remove what a step could leave on ``root`` and everything under it that git's reset and
    clean leave in place: the extended attributes a step can set (``user.``, access control
    lists: kilobytes per entry), and the times and mode bits of folders and links, which git
    does not track (a time set with ``utime`` holds 64 bits of the step's choice). Tracked
    files git rewrites when their times or mode changed; links are never followed."""
    now = time.time_ns()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name != ".git"]  # git's own (a checkout made on a node)
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.utime(path, ns=(now, now), follow_symlinks=False)
            elif name in files:
                _drop_attributes(path)
        _drop_attributes(folder)
        with contextlib.suppress(OSError):
            os.chmod(folder, FOLDER_MODE)
            os.utime(folder, ns=(now, now))


def _drop_attributes(path: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # gone, or a file system without them
        return
    for name in names:
        if name.startswith(_DROPPED_ATTRIBUTES):
            with contextlib.suppress(OSError):
                os.removexattr(path, name, follow_symlinks=False)


LAST_LINE_CHARS = 200  # of a failed step's last output line, in its reason
MAX_OUT_DEPTH = 64  # folders nested deeper in AUTORESEARCH_OUT make a run invalid


def links_out(out_dir: Path) -> list[str]:
    """What in ``out_dir`` leads out of it (``name -> target``), never followed: links, and
    folders nested past ``MAX_OUT_DEPTH`` (Python's own walks recurse; a run nested 1,100).
    One link at the holdout would hand it to evaluate as the run's predictions."""
    root, found, todo = out_dir.resolve(), [], [(out_dir, 0)]
    while todo:
        folder, depth = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:  # a name too long, a folder the run made unlistable
            found.append(f"{folder.relative_to(out_dir)}: {exc.strerror}")
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                if not _resolves_inside(path, root):
                    found.append(f"{path.relative_to(out_dir)} -> {os.readlink(path)}")
            elif entry.is_dir(follow_symlinks=False):
                if depth + 1 >= MAX_OUT_DEPTH:
                    found.append(f"{path.relative_to(out_dir).parts[0]}/...: folders nested over {MAX_OUT_DEPTH} deep")
                else:
                    todo.append((path, depth + 1))
    return sorted(found)


def _resolves_inside(link: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(link)).is_relative_to(root)
    except (OSError, RecursionError):  # a chain of links longer than Python's recursion
        return False


def _clear_result(out_dir: Path, rel: str) -> None:
    """Remove what a step left at the json result's path. A link on the way is removed itself,
    never followed: the run made it, and it could point anywhere on this machine."""
    link = metrics.link_on(out_dir, rel)
    if link is not None:
        link.unlink()
        return
    path = out_dir / rel
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def step_timeout(job: Job, name: str, done: Sequence[StepResult]) -> float:
    """The step's hard timeout, or less: what is left of the budget limit for a budget step
    (0 or less: the steps before it went past it)."""
    if job.budget_limit is None or name not in job.budget_steps:
        return job.timeout
    spent = sum(step.seconds for step in done if step.name in job.budget_steps)
    return min(job.timeout, job.budget_limit - spent)


def _past_budget(job: Job) -> str:
    return (f"past the budget ({job.budget_limit:.1f} s for its {' and '.join(job.budget_steps)} steps, "
            "the baseline's and the allowance): over budget whatever it did next")  # fmt: skip


def _sandboxed_step(job: Job, runner: StepRunner, sandbox: Sandbox | None, name: str, command: str,
                    env: Mapping[str, str], log: Path, timeout: float) -> tuple[StepResult, list[str]]:  # fmt: skip
    """One step, in ``sandbox`` when there is one; also what it changed that it must not."""
    if sandbox is None:
        return runner.step(name, command, job.workdir, env, log, timeout,
                           max_memory_mb=job.max_memory_mb), []
    worktree = job.reset_root or job.workdir
    writable = [job.out_dir] if name == "evaluate" else [worktree, job.out_dir]
    shown = [job.reference_root] if name == "evaluate" and job.reference_root else []
    # the trusted step (measure wherever it is) runs as the sandbox's pid 1, without a shell: no
    # process above it for the code it runs to open, signal or write the step's output through
    argv = plain_argv(command)
    first = argv if argv and (name == "evaluate" or is_measure(argv)) else None
    with device_copies(job.out_dir.parent) as devices:
        prefix = sandbox.prefix(name, cwd=job.workdir, worktree=worktree, writable=writable, readonly=shown,
                                first=first is not None, pinned=bool(job.cpus), devices=devices)  # fmt: skip
        before = sandbox.fingerprint(worktree)
        result = runner.step(name, first or command, job.workdir, env, log, timeout, prefix=prefix,
                             max_memory_mb=job.max_memory_mb)  # fmt: skip
    return result, sandbox.changes(before, sandbox.fingerprint(worktree))


def plain_argv(command: str) -> list[str] | None:
    """``command`` as an argv to exec without a shell, or None when the shell would change it
    (an operator such as ``&&``, a variable, a glob outside quotes). What is inside single
    quotes (``-- sh -c 'cd b && python x'``) is the command's own business."""
    try:
        raw = list(shlex.shlex(command, posix=False, punctuation_chars=True))
        argv = shlex.split(command)
    except ValueError:
        return None
    for token in raw:
        if token[0] in "();<>|&" or (token[0] != "'" and set(token) & set("$`\\")):
            return None
        if token[0] not in "'\"" and set(token) & set("*?[~{"):
            return None  # a glob, a brace or a ~ the shell would expand
    if not argv or "=" in raw[0]:  # VAR=value before the command
        return None
    return argv


def is_measure(argv: Sequence[str]) -> bool:
    """``autoresearch measure ...`` or ``python -m autoresearch measure ...``."""
    if argv[:1] == ["autoresearch"]:
        return argv[1:2] == ["measure"]
    return Path(argv[0]).name.startswith("python") and argv[1:4] == ["-m", "autoresearch", "measure"]


def _failure(job: Job, step: StepResult, runner: StepRunner, timeout: float) -> tuple[RunStatus, str] | None:
    if runner.killed:
        return RunStatus.KILLED, f"{step.name} step killed: the session stopped it (a second signal)"
    if step.over_memory_mb is not None:
        return RunStatus.CRASH, (f"{step.name} step killed: its processes held {step.over_memory_mb:.0f} MB, "
                                 f"over [task] max_memory_mb = {job.max_memory_mb:g}")  # fmt: skip
    if step.timed_out and timeout < job.timeout:
        return RunStatus.TIMEOUT, f"{step.name} step stopped after {step.seconds:.1f} s: {_past_budget(job)}"
    if step.timed_out:
        return RunStatus.TIMEOUT, f"{step.name} step hit the hard timeout ({job.timeout:g} s)"
    if step.returncode is not None and step.returncode < 0:
        return RunStatus.CRASH, f"{step.name} step killed by signal {-step.returncode}"
    if step.returncode == 0 and step.name == "check" and _NO_TESTS.search(step.output):
        return RunStatus.CRASH, ("check step ran no test (unittest: 'Ran 0 tests'): a gate that "
                                 "tests nothing passes any change; check the test command")  # fmt: skip
    if step.returncode != 0:
        output = _ANSI.sub("", step.output)  # pytest with --color=yes in its addopts
        failing = failing_tests(output) if step.name == "check" else []
        named = f"; failing: {', '.join(failing[:5])}" + (" ..." if len(failing) > 5 else "") if failing else ""
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
        said = f": {last[:LAST_LINE_CHARS]}" if last and not failing else ""  # the error, most often
        return RunStatus.CRASH, f"{step.name} step exited with code {step.returncode}{named}{said}"
    return None


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")  # colours, titles
# unittest exits 0 when it found no test at all (Python < 3.12; pytest exits 5 by itself)
_NO_TESTS = re.compile(r"^Ran 0 tests in ", re.M)
# unittest: "FAIL: test_wrap (tests.test_text.WrapTests.test_wrap)"; pytest: "FAILED tests/t.py::test_x - ..."
_FAILING = re.compile(r"^(?:(?:FAIL|ERROR): (\S+)(?: \(([\w.]+)\))?|(?:FAILED|ERROR) (\S+::\S+))", re.M)


def failing_tests(output: str) -> list[str]:
    """Names of the failing tests a unittest or pytest run printed, in order, once each."""
    names: list[str] = []
    for match in _FAILING.finditer(output):
        name = (match.group(2) or match.group(1) or match.group(3)).removeprefix("unittest.loader._FailedTest.")
        if name and name not in names:
            names.append(name)
    return names


def _links(job: Job) -> dict[str, str]:
    """Where each linked path of the worktree (``reset_keep``) must point: the task folder's own
    path (``AUTORESEARCH_TASK_DIR``), as the workspace links it; without one, where it points
    now. A link an earlier experiment re-pointed is not taken as it is: its target's name is a
    message it left (trained state, say) for the experiments after it."""
    root = job.reset_root
    if root is None:
        return {}
    task_dir = job.env.get("AUTORESEARCH_TASK_DIR")
    links = {}
    for rel in job.reset_keep:
        path = root / rel
        if task_dir and path.is_relative_to(job.workdir):
            source = Path(task_dir) / path.relative_to(job.workdir)
            if source.exists():
                links[rel] = os.path.realpath(source)
        elif path.is_symlink():
            links[rel] = os.readlink(path)
    return links


def _relink(job: Job, links: Mapping[str, str]) -> None:
    """Point every linked path where ``links`` says, before the first step."""
    root = job.reset_root
    if root is None:
        return
    for rel, target in links.items():
        path = root / rel
        if path.is_symlink() and os.readlink(path) == target:
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


def _pristine(job: Job, links: Mapping[str, str], step: str) -> None:
    """Reset the worktree to the commit before ``step`` (outputs live in AUTORESEARCH_OUT).

    The reset goes to the job's commit by sha (a run may have committed in its worktree), and
    a link the run replaced or re-pointed is removed by the clean and put back as it was;
    ``.git`` entries a step left below the root go too (git itself never removes them).
    """
    if job.reset_root is None:
        return
    root = job.reset_root
    intact = [rel for rel, target in links.items() if (root / rel).is_symlink()
              and os.readlink(root / rel) == target]  # fmt: skip
    git = Git(root, without_secrets(), worktree=root)
    keep = [f"--exclude=/{path}" for path in intact]
    for args in (["reset", "-q", "--hard", job.commit or "HEAD"], ["clean", "-qffdx", *keep]):
        code, _, err = git.run(*args)
        if code != 0:
            raise ExecutorError(f"cannot reset {root} before {step}: {err.strip()}")
    remove_nested_git(root)
    scrub_metadata(root)
    for rel, target in links.items():
        path = root / rel
        if rel not in intact and not path.is_symlink() and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)


def _pristine_reference(job: Job) -> None:
    """Put the reference checkout back at its commit (by sha: a step may have moved its HEAD):
    an unsandboxed ``check`` or ``run`` step could have rewritten the code whose output every
    run of ``evaluate`` must match."""
    root = job.reference_root
    if root is None or not (root / ".git").exists():
        return
    git = Git(root, without_secrets(), worktree=root)
    for args in (["reset", "-q", "--hard", job.reference_commit or "HEAD"], ["clean", "-qffdx"]):
        code, _, err = git.run(*args)
        if code != 0:
            raise ExecutorError(f"cannot reset the reference {root} before evaluate: {err.strip()}")
    remove_nested_git(root)


def _tampered(job: Job) -> list[str]:
    """Protected files (in the worktree) and protected data (anywhere) whose hash changed."""
    changed = []
    for root, expected in ((job.workdir, job.protected), (Path("/"), job.protected_data)):
        if expected:
            now = sha256_files(root, expected)
            changed += [p for p, digest in expected.items() if now[p] != digest]
    return sorted(changed)


def _measure(job: Job, steps: Sequence[StepResult]) -> RunResult:
    source = steps[-1]  # evaluate when the task has one, else run: the harness's word wins
    try:
        found = metrics.parse(job.metric, source.output, job.out_dir)
    except MetricError as exc:
        return _result(job, steps, RunStatus.CRASH, str(exc))
    return _result(job, steps, RunStatus.OK, "", found)


def _result(job: Job, steps: Sequence[StepResult], status: RunStatus, reason: str,
            found: Mapping[str, float] | None = None) -> RunResult:  # fmt: skip
    run_step = next((s for s in steps if s.name == "run"), None)
    last = steps[-1] if steps else None
    found = dict(found or {})
    return RunResult(
        experiment_id=job.experiment_id, run_index=job.run_index, seed=job.seed, status=status,
        metric=found.get(job.metric.name), metrics=found,
        seconds=run_step.seconds if run_step else 0.0, reason=reason,
        log_path=run_step.log_path if run_step else (last.log_path if last else None),
        log_tail="\n".join(last.output.splitlines()[-TAIL_LINES:]) if last else "", steps=tuple(steps),
    )  # fmt: skip


__all__ = ["execute", "run_environment"]
