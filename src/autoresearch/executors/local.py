"""The local executor: one subprocess per run, each in its own process group.

Steps run through the shell in the job's worktree: ``check`` (optional), ``run`` (hard
timeout), then the trusted ``evaluate`` (optional), each with its own log. Between steps
the protected files are re-hashed, so a run that rewrites the harness never gets its
evaluation. Whatever a step leaves behind in its process group is killed when it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch import metrics
from autoresearch.errors import ExecutorError, MetricError
from autoresearch.executors._base import Job, RunResult, RunStatus, StepResult
from autoresearch.workspace import Git, sha256_files

if TYPE_CHECKING:
    from autoresearch.executors.sandbox import Sandbox

MARKER = "AUTORESEARCH_STEP"  # environment variable that tags every process of one step
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out group
TAIL_LINES = 40
MAX_LOG_MB = 64.0  # per step; beyond it the log keeps its tail ([task] max_log_mb)


# Credentials of the agents' APIs: code the agent wrote must never see them (it could print
# them into logs and the ledger).
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "OPENAI_ADMIN_KEY")


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the agents' API keys: the one rule for runs, git calls and anything else."""
    return {k: v for k, v in env.items() if k not in SECRET_ENV}


def run_environment(job: Job, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: the caller's less API keys, plus the job's, plus AUTORESEARCH_*."""
    env = without_secrets(os.environ if base is None else base)
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


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 64_000))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def kill_orphans(log_dir: Path) -> list[int]:
    """Kill the process groups of steps whose orchestrator died (their ``.pid`` files remain).

    A pid file reads ``pgid start-time marker``. One without the start time is ignored (it
    was not written by us). A live leader must have started at that time; when the leader
    is gone, only the processes carrying the step's marker are killed, so a planted or stale
    file never kills an unrelated process group.
    """
    killed = []
    for pidfile in sorted(log_dir.glob("*.pid")) if log_dir.is_dir() else []:
        pgid, started, marker = _read_pidfile(pidfile)
        pidfile.unlink(missing_ok=True)
        if pgid <= 0 or not started:
            continue
        leader = _start_time(pgid)
        if leader == started and _group_alive(pgid):
            kill_group(pgid, signal.SIGKILL)
            killed.append(pgid)
        elif leader is None and marker and kill_marked(marker):
            killed.append(pgid)
    return killed


def _read_pidfile(path: Path) -> tuple[int, str, str]:
    try:
        pgid, started, marker = [*path.read_text().split(), "", "", ""][:3]
        return int(pgid), started, marker
    except (OSError, ValueError, IndexError):
        return 0, "", ""


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), where /proc tells; None otherwise.

    While a process group has members its id is not reused, so a group whose leader is
    gone is still safe to kill; a live leader must be the process that was recorded.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class StepRunner:
    """Runs shell commands in fresh process groups; can kill every running group at once."""

    def __init__(self, *, max_log_mb: float = MAX_LOG_MB) -> None:
        self.max_log_bytes = int(max_log_mb * 2**20)
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._killed = False

    def kill_all(self) -> None:
        with self._lock:
            self._killed = True
            groups = list(self._groups)
        for pgid in groups:
            kill_group(pgid, signal.SIGKILL)

    @property
    def killed(self) -> bool:
        return self._killed

    def step(self, name: str, command: str, cwd: Path, env: Mapping[str, str], log: Path,
             timeout: float, prefix: Sequence[str] = ()) -> StepResult:  # fmt: skip
        """Run ``command``; its output goes to ``log`` and, through a pipe we hold, to the result.

        ``prefix`` (a sandbox's argv, e.g. bwrap's) runs the shell inside it.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        marker = uuid.uuid4().hex  # finds processes that left the group (setsid, double fork)
        start = time.monotonic()
        argv: str | list[str] = [*prefix, "/bin/sh", "-c", command] if prefix else command
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(argv, shell=not prefix, cwd=cwd, env={**env, MARKER: marker},
                                    stdout=write_fd, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except OSError as exc:
            os.close(read_fd)
            raise ExecutorError(f"cannot start {name} step {command!r} in {cwd}: {exc}") from exc
        finally:
            os.close(write_fd)
        with self._lock:
            self._groups.add(proc.pid)
        pidfile = log.with_suffix(".pid")  # lets a resumed session kill what a dead one left
        pidfile.write_text(f"{proc.pid} {_start_time(proc.pid) or '?'} {marker}")
        output = _Output(log, self.max_log_bytes)
        try:
            timed_out = not output.pump(read_fd, proc, start + timeout)
            if timed_out:
                kill_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=TERM_GRACE)
        finally:
            kill_group(proc.pid, signal.SIGKILL)  # leftovers in the group die with the step
            kill_marked(marker)  # and so do processes that left the group
            proc.wait()
            output.drain(read_fd)
            os.close(read_fd)
            output.close()
            pidfile.unlink(missing_ok=True)
            with self._lock:
                self._groups.discard(proc.pid)
        seconds = time.monotonic() - start
        code = None if timed_out else proc.returncode
        return StepResult(name, code, seconds, log, timed_out, output.text())


class _Output:
    """A step's output: copied to its log file, the last ``KEEP_BYTES`` kept in memory.

    The metric is parsed from this copy, read from a pipe only the orchestrator holds, so
    nothing that writes to the log file afterwards can change what was measured. The log
    holds at most ``cap`` bytes: past it, the start is dropped (the tail is what matters)
    and a first line says so, so a step that floods its output cannot fill the disk.
    """

    KEEP_BYTES = 1 << 20

    def __init__(self, log: Path, cap: int = int(MAX_LOG_MB * 2**20)) -> None:
        self._file = log.open("w+b")
        self._tail = bytearray()
        self._cap, self._dropped, self._header = max(cap, 1 << 16), 0, 0

    def _add(self, chunk: bytes) -> None:
        if self._file.tell() + len(chunk) > self._cap:
            self._compact(chunk)
        else:
            self._file.write(chunk)
        self._file.flush()
        self._tail += chunk
        if len(self._tail) > 2 * self.KEEP_BYTES:
            del self._tail[: -self.KEEP_BYTES]

    def _compact(self, chunk: bytes) -> None:
        """Rewrite the log as a header and its last half-cap bytes (amortized O(1) per byte)."""
        self._file.seek(self._header)
        data = self._file.read() + chunk
        cut = len(data) - self._cap // 2
        newline = data.find(b"\n", cut, len(data) - 1)
        cut = newline + 1 if newline >= 0 else cut  # the kept part starts at a line
        self._dropped += cut
        header = (
            f"[autoresearch: this log is capped at {self._cap / 2**20:g} MB ([task] max_log_mb); "
            f"the first {self._dropped} bytes of output were dropped]\n"
        ).encode()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(header + data[cut:])
        self._header = len(header)

    @property
    def dropped(self) -> int:
        """Bytes of output not in the log (0 unless the cap was reached)."""
        return self._dropped

    def pump(self, fd: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """Copy output until the process exits (True) or the deadline passes (False)."""
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], min(0.2, left))
            if ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._add(chunk)
                else:  # the step closed its output; wait for it to exit
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        return False
        return True

    def drain(self, fd: int, grace: float = 1.0) -> None:
        """Read what is left in the pipe (its writers are dead by now)."""
        end = time.monotonic() + grace
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._add(chunk)

    def close(self) -> None:
        self._file.close()

    def text(self) -> str:
        return bytes(self._tail[-self.KEEP_BYTES :]).decode("utf-8", errors="replace")


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process whose environment carries ``MARKER=marker`` (Linux /proc)."""
    needle = f"{MARKER}={marker}".encode()
    killed = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return killed


def execute(job: Job, runner: StepRunner, env: Mapping[str, str] | None = None,
            sandbox: Sandbox | None = None) -> RunResult:  # fmt: skip
    """Run one job's steps and read its metric. Never raises for a failing run.

    With a ``sandbox`` each step runs inside it, and a step that changed what the sandbox
    fingerprints (git's admin files, the Python environment...) makes the run invalid.
    """
    job.out_dir.mkdir(parents=True, exist_ok=True)
    links = _links(job)  # where the worktree's links point before any step ran
    environment = run_environment(job, env)
    environment = sandbox.environment(environment) if sandbox else environment
    steps: list[StepResult] = []
    plan = [("check", job.check), ("run", job.run), ("evaluate", job.evaluate)]
    for name, command in plan:
        if not command.strip():
            continue
        suffix = "" if name == "run" else f".{name}"
        log = job.log_dir / f"{job.name}{suffix}.log"
        if name == "evaluate":
            _pristine(job, links)
            tampered = _tampered(job)  # the ruler is the session start's, byte for byte
            if tampered:
                reason = f"protected files differ from the session's before evaluate: {', '.join(tampered)}"
                return _result(job, steps, RunStatus.INVALID, reason)
            if job.metric.format == "json":
                (job.out_dir / job.metric.path).unlink(missing_ok=True)  # only the harness writes it
        result, reached = _sandboxed_step(job, runner, sandbox, name, command, environment, log)
        steps.append(result)
        if reached:
            return _result(job, steps, RunStatus.INVALID, f"the {name} step changed {', '.join(reached)}")
        failure = _failure(job, result, runner)
        if failure is not None:
            return _result(job, steps, *failure)
        tampered = _tampered(job)
        if tampered:
            reason = f"the {name} step changed protected files: {', '.join(tampered)}"
            return _result(job, steps, RunStatus.INVALID, reason)
    return _measure(job, steps)


def _sandboxed_step(job: Job, runner: StepRunner, sandbox: Sandbox | None, name: str, command: str,
                    env: Mapping[str, str], log: Path) -> tuple[StepResult, list[str]]:  # fmt: skip
    """One step, in ``sandbox`` when there is one; also what it changed that it must not."""
    if sandbox is None:
        return runner.step(name, command, job.workdir, env, log, job.timeout), []
    worktree = job.reset_root or job.workdir
    writable = [job.out_dir] if name == "evaluate" else [worktree, job.out_dir]
    prefix = sandbox.prefix(name, cwd=job.workdir, worktree=worktree, writable=writable)
    before = sandbox.fingerprint(worktree)
    result = runner.step(name, command, job.workdir, env, log, job.timeout, prefix)
    return result, sandbox.changes(before, sandbox.fingerprint(worktree))


def _failure(job: Job, step: StepResult, runner: StepRunner) -> tuple[RunStatus, str] | None:
    if runner.killed:
        return RunStatus.KILLED, f"{step.name} step killed from outside"
    if step.timed_out:
        return RunStatus.TIMEOUT, f"{step.name} step hit the hard timeout ({job.timeout:g} s)"
    if step.returncode is not None and step.returncode < 0:
        return RunStatus.CRASH, f"{step.name} step killed by signal {-step.returncode}"
    if step.returncode != 0:
        return RunStatus.CRASH, f"{step.name} step exited with code {step.returncode}"
    return None


def _links(job: Job) -> dict[str, str]:
    """Target of each linked path of the worktree (``reset_keep``) that is a symlink now."""
    root = job.reset_root
    if root is None:
        return {}
    return {rel: os.readlink(root / rel) for rel in job.reset_keep if (root / rel).is_symlink()}


def _pristine(job: Job, links: Mapping[str, str]) -> None:
    """Reset the worktree to the commit before the trusted step (outputs live in AUTORESEARCH_OUT).

    The reset goes to the job's commit by sha (a run may have committed in its worktree), and
    a link the run replaced or re-pointed is removed by the clean and put back as it was.
    """
    if job.reset_root is None:
        return
    root = job.reset_root
    intact = [rel for rel, target in links.items() if (root / rel).is_symlink()
              and os.readlink(root / rel) == target]  # fmt: skip
    git = Git(root)
    keep = [f"--exclude=/{path}" for path in intact]
    for args in (["reset", "-q", "--hard", job.commit or "HEAD"], ["clean", "-qffdx", *keep]):
        code, _, err = git.run(*args)
        if code != 0:
            raise ExecutorError(f"cannot reset {root} before evaluate: {err.strip()}")
    for rel, target in links.items():
        path = root / rel
        if rel not in intact and not path.is_symlink() and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)


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


class LocalExecutor:
    """Runs jobs as subprocesses on this machine, ``slots`` at a time.

    ``gpus`` (e.g. ``["0", "1"]``) pins slot *i* to ``CUDA_VISIBLE_DEVICES=gpus[i]``.
    """

    def __init__(self, slots: int = 1, *, gpus: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, sandbox: Sandbox | None = None,
                 max_log_mb: float = MAX_LOG_MB) -> None:  # fmt: skip
        if slots < 1:
            raise ExecutorError(f"slots must be >= 1, got {slots}")
        if gpus is not None and len(gpus) < slots:
            raise ExecutorError(
                f"{slots} slots but only {len(gpus)} GPUs given ({', '.join(gpus)})"
            )
        self._slots, self._gpus, self._env = slots, list(gpus or []), env
        self.sandbox = sandbox
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="autoresearch-slot")
        self._runner = StepRunner(max_log_mb=max_log_mb)

    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        if self._gpus:
            job = _with_env(job, CUDA_VISIBLE_DEVICES=self._gpus[job.slot % len(self._gpus)])
        return self._pool.submit(execute, job, self._runner, self._env, self.sandbox)

    def kill_all(self) -> None:
        """Kill every running step now (a second Ctrl-C)."""
        self._runner.kill_all()

    def close(self) -> None:
        self._runner.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _with_env(job: Job, **extra: str) -> Job:
    from dataclasses import replace

    return replace(job, env={**job.env, **extra})
