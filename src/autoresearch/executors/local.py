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

from autoresearch import metrics
from autoresearch.errors import ExecutorError, MetricError
from autoresearch.executors._base import Job, RunResult, RunStatus, StepResult
from autoresearch.workspace import sha256_files

MARKER = "AUTORESEARCH_STEP"  # environment variable that tags every process of one step
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out group
TAIL_LINES = 40


# Credentials of the agents' APIs: code the agent wrote must never see them (it could print
# them into logs and the ledger).
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "OPENAI_ADMIN_KEY")


def run_environment(job: Job, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: the caller's less API keys, plus the job's, plus AUTORESEARCH_*."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SECRET_ENV}
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
    """Kill the process groups of steps whose orchestrator died (their ``.pid`` files remain)."""
    killed = []
    for pidfile in sorted(log_dir.glob("*.pid")) if log_dir.is_dir() else []:
        try:
            fields = pidfile.read_text().split()
            pgid, started = int(fields[0]), fields[1] if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            pgid, started = 0, None
        leader = _start_time(pgid) if pgid > 0 else None
        if leader is not None and started is not None and leader != started:
            pidfile.unlink(missing_ok=True)  # the pid was reused by an unrelated process
            continue
        if pgid > 0 and _group_alive(pgid):
            kill_group(pgid, signal.SIGKILL)
            killed.append(pgid)
        pidfile.unlink(missing_ok=True)
    return killed


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

    def __init__(self) -> None:
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
             timeout: float) -> StepResult:  # fmt: skip
        """Run ``command``; its output goes to ``log`` and, through a pipe we hold, to the result."""
        log.parent.mkdir(parents=True, exist_ok=True)
        marker = uuid.uuid4().hex  # finds processes that left the group (setsid, double fork)
        start = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(command, shell=True, cwd=cwd, env={**env, MARKER: marker},
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
        pidfile.write_text(f"{proc.pid} {_start_time(proc.pid) or ''}")
        output = _Output(log)
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
    nothing that writes to the log file afterwards can change what was measured.
    """

    KEEP_BYTES = 1 << 20

    def __init__(self, log: Path) -> None:
        self._file = log.open("wb")
        self._tail = bytearray()

    def _add(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._file.flush()
        self._tail += chunk
        if len(self._tail) > 2 * self.KEEP_BYTES:
            del self._tail[: -self.KEEP_BYTES]

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


def execute(job: Job, runner: StepRunner, env: Mapping[str, str] | None = None) -> RunResult:
    """Run one job's steps and read its metric. Never raises for a failing run."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    environment = run_environment(job, env)
    steps: list[StepResult] = []
    plan = [("check", job.check), ("run", job.run), ("evaluate", job.evaluate)]
    for name, command in plan:
        if not command.strip():
            continue
        suffix = "" if name == "run" else f".{name}"
        log = job.log_dir / f"{job.name}{suffix}.log"
        if name == "evaluate":
            _pristine(job)
            if job.metric.format == "json":
                (job.out_dir / job.metric.path).unlink(
                    missing_ok=True
                )  # only the harness writes it
        result = runner.step(name, command, job.workdir, environment, log, job.timeout)
        steps.append(result)
        failure = _failure(job, result, runner)
        if failure is not None:
            return _result(job, steps, *failure)
        tampered = _tampered(job)
        if tampered:
            return _result(
                job,
                steps,
                RunStatus.INVALID,
                f"the {name} step changed protected files: {', '.join(tampered)}",
            )
    return _measure(job, steps)


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


def _pristine(job: Job) -> None:
    """Reset the worktree to the commit before the trusted step (outputs live in AUTORESEARCH_OUT)."""
    if job.reset_root is None:
        return
    keep = [f"--exclude=/{path}" for path in job.reset_keep]
    for args in (["reset", "-q", "--hard"], ["clean", "-qffdx", *keep]):
        done = subprocess.run(["git", *args], cwd=job.reset_root, capture_output=True)
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()
            raise ExecutorError(f"cannot reset {job.reset_root} before evaluate: {message}")


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
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        if slots < 1:
            raise ExecutorError(f"slots must be >= 1, got {slots}")
        if gpus is not None and len(gpus) < slots:
            raise ExecutorError(
                f"{slots} slots but only {len(gpus)} GPUs given ({', '.join(gpus)})"
            )
        self._slots, self._gpus, self._env = slots, list(gpus or []), env
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="autoresearch-slot")
        self._runner = StepRunner()

    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        if self._gpus:
            job = _with_env(job, CUDA_VISIBLE_DEVICES=self._gpus[job.slot % len(self._gpus)])
        return self._pool.submit(execute, job, self._runner, self._env)

    def kill_all(self) -> None:
        """Kill every running step now (a second Ctrl-C)."""
        self._runner.kill_all()

    def close(self) -> None:
        self._runner.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _with_env(job: Job, **extra: str) -> Job:
    from dataclasses import replace

    return replace(job, env={**job.env, **extra})
