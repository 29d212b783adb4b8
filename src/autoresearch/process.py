"""Processes: start, mark, time out, hold to a memory limit and kill process groups; which
variables are secret.

The one place that runs a command for autoresearch: the steps of a run, the task's
``setup`` and the ``command`` agent's CLI all go through ``StepRunner.step``. Each command
starts in a new session (its own process group), carries an environment marker so that
processes which leave the group (``setsid``, a double fork) are found too, and leaves a
pid file (pid and start time) so that a resumed orchestrator can kill what a dead one
left running. Whatever a step leaves behind when it ends is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER = "AUTORESEARCH_STEP"  # environment variable that tags every process of one step
SANDBOXED = "AUTORESEARCH_SANDBOX"  # "bwrap" in the environment of a step inside the sandbox
REFERENCE = "AUTORESEARCH_REFERENCE"  # evaluate's: the reference checkout's task folder (measure --same)
# The nodes bubblewrap's --dev binds from the host into a step's /dev (the sandbox gives a step
# run as root copies of its own; measure checks that no run changed them)
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out group
MEMORY_POLL = 0.25  # seconds between looks at the memory of a step that has a limit
TAIL_LINES = 40
DEFAULT_LOG_BYTES = 64 << 20  # a step's log is cut here; the tail in memory is kept

# --- secrets ------------------------------------------------------------------------------------

# The one rule: a variable is secret when its name says key, token, secret or password.
# Code the agent wrote never sees such a variable, and no record holds its value.
_SECRET_NAME = re.compile(r"(API_KEY|_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)


# The agents' own credentials: never handed to a run, not even when [task] env names them.
AGENT_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "OPENAI_ADMIN_KEY")


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def without_secrets(
    env: Mapping[str, str] | None = None, keep: Iterable[str] = ()
) -> dict[str, str]:
    """``env`` (default: this process's environment) less every secret variable, but those
    named in ``keep`` (``[task] env``: a data hub token the user hands on); never an agent's key."""
    kept = set(keep) - set(AGENT_KEYS)
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k in kept or not is_secret(k)}


def secret_values(
    env: Mapping[str, str] | None = None, extra: Iterable[str | None] = ()
) -> list[str]:
    """Values that must never be recorded: secret variables' values, and ``extra``."""
    env = os.environ if env is None else env
    found = [v for k, v in env.items() if is_secret(k)]
    return sorted({v for v in [*found, *extra] if v and len(v) >= 8}, key=len, reverse=True)


# --- groups and orphans -------------------------------------------------------------------------


def kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), where /proc tells; None otherwise."""
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
        if pgid <= 1 or not started:
            continue
        leader = start_time(pgid)
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


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process whose environment carries ``MARKER=marker`` (Linux /proc)."""
    killed = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        if _carries(int(entry.name), marker):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def step_processes(pgid: int, marker: str, known: dict[tuple[int, str], bool] | None = None) -> dict[int, str]:
    """The processes of one step, pid -> start time: its process group, everything below its
    leader (in a sandbox, every process of its PID namespace) and what carries its marker.
    ``known`` remembers which processes carry the marker, so that each environment is read once."""
    stats: dict[int, tuple[int, int, str]] = {}  # pid -> parent, group, start time (as start_time)
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                stats[int(name)] = int(fields[1]), int(fields[2]), fields[19].decode()
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found = {pid for pid, (_, group, _) in stats.items() if group == pgid}
    below, todo = set(), [pgid, *found]
    while todo:  # everything below the leader, and below what else the group holds
        for child in children.get(todo.pop(), ()):
            if child not in below:
                below.add(child)
                todo.append(child)
    found |= below
    known = {} if known is None else known
    for pid in stats.keys() - found:
        key = (pid, stats[pid][2])
        if key not in known:
            known[key] = _carries(pid, marker)
        if known[key]:
            found.add(pid)
    return {pid: stats[pid][2] for pid in found}


def held_mb(pids: Iterable[int], *, exact: bool = False) -> float:
    """RAM the processes hold together, in MB: their anonymous memory, and their shared memory
    or what the tmpfs mounts of their own (the sandbox's /tmp and /dev/shm) hold, the larger
    (the same pages, mostly). Pages of files on disk are left out: the kernel can drop them.

    Resident sizes (cheap, from /proc/PID/status) count a page that forked processes share once
    in each: an upper bound. ``exact`` takes proportional sizes (smaps_rollup: 1/n of a page in
    each of n processes), where the process's memory map can be read."""
    pids = list(pids)
    anon = shared = 0
    for pid in pids:
        a, s = (_proportional(pid) if exact else None) or _resident(pid)
        anon, shared = anon + a, shared + s
    return (anon + max(shared, _tmpfs_bytes(pids))) / 2**20


def _sizes(path: str, keys: tuple[bytes, ...]) -> dict[bytes, int] | None:
    """The ``key: N kB`` lines of a /proc file that ``keys`` names, in bytes (None: unreadable)."""
    found: dict[bytes, int] = {}
    try:
        with open(path, "rb") as fh:
            for line in fh:
                key, _, rest = line.partition(b":")
                if key in keys:
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return found


def _resident(pid: int) -> tuple[int, int]:
    """Bytes of anonymous and shared memory resident in the process (0, 0 when it is gone)."""
    found = _sizes(f"/proc/{pid}/status", (b"RssAnon", b"RssShmem")) or {}
    return found.get(b"RssAnon", 0), found.get(b"RssShmem", 0)


def _proportional(pid: int) -> tuple[int, int] | None:
    """Proportional bytes of anonymous and shared memory (None where Linux does not tell)."""
    found = _sizes(f"/proc/{pid}/smaps_rollup", (b"Pss", b"Pss_Anon", b"Pss_Shmem"))
    if found is None:
        return None
    if b"Pss_Anon" in found:
        return found[b"Pss_Anon"], found.get(b"Pss_Shmem", 0)
    return (found[b"Pss"], 0) if b"Pss" in found else None  # older kernels: with files' pages


def _tmpfs_bytes(pids: Iterable[int]) -> int:
    """Bytes written to memory-backed file systems the processes mounted for themselves (the
    sandbox's private /tmp and /dev/shm): RAM that no process's set size shows."""
    seen, spaces, total = set(_tmpfs_mounts("self")), {_namespace("self")}, 0
    for pid in sorted(pids):
        space = _namespace(str(pid))
        if space is None or space in spaces:
            continue
        spaces.add(space)
        for device, point in _tmpfs_mounts(str(pid)).items():
            if device in seen:
                continue
            seen.add(device)
            with contextlib.suppress(OSError):
                fs = os.statvfs(f"/proc/{pid}/root{point}")
                total += (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    return total


def _namespace(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _tmpfs_mounts(pid: str) -> dict[str, str]:
    """A process's tmpfs mounts: device (major:minor) -> mount point."""
    mounts: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as fh:
            for line in fh:
                fields = line.decode(errors="replace").split()
                if "-" in fields and fields[fields.index("-") + 1] == "tmpfs":
                    mounts.setdefault(fields[2], fields[4].replace("\\040", " "))
    except OSError:
        pass
    return mounts


def _carries(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{MARKER}={marker}".encode() in fh.read().split(b"\0")
    except OSError:
        return False


class _MemoryWatch:
    """A step's memory against its limit: ``over()`` is True once it was found above it (and
    every process counted was killed)."""

    def __init__(self, pgid: int, marker: str, limit_mb: float) -> None:
        self.pgid, self.marker, self.limit_mb = pgid, marker, limit_mb
        self.found: float | None = None  # MB when it was found over the limit
        self._marked: dict[tuple[int, str], bool] = {}

    def over(self) -> bool:
        if self.found is not None:
            return True
        processes = step_processes(self.pgid, self.marker, self._marked)
        used = held_mb(processes)  # the cheap upper bound first
        if used > self.limit_mb:
            used = held_mb(processes, exact=True)
        if used > self.limit_mb:
            self.found = used
            kill_group(self.pgid, signal.SIGKILL)  # at once, as the kernel's OOM killer would
            for pid, started in processes.items():
                if start_time(pid) == started:  # the same process, not a reused pid
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            kill_marked(self.marker)
        return self.found is not None


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 64_000))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --- running one command --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """One command (a step of a run, setup, an agent's CLI) after it ended."""

    name: str
    returncode: int | None  # None when killed on timeout
    seconds: float
    log_path: Path
    timed_out: bool = False
    output: str = ""  # the end of the output, as read from the command itself
    log_dropped: int = 0  # bytes of output the capped log file no longer holds (its start)
    over_memory_mb: float | None = None  # what it held when its memory limit killed it


class StepRunner:
    """Runs commands in fresh process groups; can kill every running group at once."""

    def __init__(self, *, max_log_mb: float = DEFAULT_LOG_BYTES / 2**20) -> None:
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

    def step(self, name: str, command: str | list[str], cwd: Path, env: Mapping[str, str],
             log: Path, timeout: float, *, prefix: Sequence[str] = (),
             stdin: bytes | None = None, max_memory_mb: float | None = None, nice: int = 0) -> StepResult:  # fmt: skip
        """Run ``command`` (a shell line, or an argv); output to ``log`` and to the result.

        ``prefix`` (a sandbox's argv, e.g. bwrap's) runs the command inside it. With
        ``max_memory_mb``, the step's processes are killed when together they hold more
        (looked at every ``MEMORY_POLL`` seconds: a step can pass it for that long). ``nice``
        lowers the priority of its process group as soon as it starts (what it forks inherits
        it; an unprivileged process cannot raise it again), and of its session's autogroup,
        which the kernel weighs against the other sessions' before any nice inside it counts.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        marker = uuid.uuid4().hex  # finds processes that left the group (setsid, double fork)
        start = time.monotonic()
        if prefix:
            command = [*prefix, *(["/bin/sh", "-c", command] if isinstance(command, str) else command)]
        proc, read_fd = self._start(name, command, cwd, {**env, MARKER: marker}, stdin)
        if nice:
            with contextlib.suppress(OSError):  # gone already
                os.setpriority(os.PRIO_PGRP, proc.pid, nice)
            with contextlib.suppress(OSError):  # no autogroups here (or gone already)
                Path(f"/proc/{proc.pid}/autogroup").write_text(str(nice))
        with self._lock:
            self._groups.add(proc.pid)
            killed = self._killed
        if killed:  # kill_all came while it started: it goes the way of the others
            kill_group(proc.pid, signal.SIGKILL)
        pidfile = log.with_suffix(".pid")  # lets a resumed session kill what a dead one left
        pidfile.write_text(f"{proc.pid} {start_time(proc.pid) or '?'} {marker}")
        output = _Output(log, self.max_log_bytes)
        memory = _MemoryWatch(proc.pid, marker, max_memory_mb) if max_memory_mb else None
        try:
            if stdin is not None:
                _feed(proc, stdin)
            stopped = not output.pump(read_fd, proc, start + timeout, memory.over if memory else None)
            timed_out = stopped and (memory is None or memory.found is None)
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
        code = None if timed_out else proc.returncode
        return StepResult(name, code, time.monotonic() - start, log, timed_out, output.text(),
                          output.dropped, memory.found if memory else None)  # fmt: skip

    def _start(self, name: str, command: str | list[str], cwd: Path, env: Mapping[str, str],
               stdin: bytes | None) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
        from autoresearch.errors import ExecutorError

        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                command, shell=isinstance(command, str), cwd=cwd, env=dict(env), stdout=write_fd,
                stderr=subprocess.STDOUT, start_new_session=True,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            os.close(read_fd)
            raise ExecutorError(f"cannot start {name} {command!r} in {cwd}: {exc}") from exc
        finally:
            os.close(write_fd)
        return proc, read_fd


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write ``data`` to the command's stdin from a thread (a command that never reads is fine)."""

    def write() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(data)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    threading.Thread(target=write, daemon=True).start()


class _Output:
    """A step's output: copied to its log file, the last ``KEEP_BYTES`` kept in memory.

    The metric is parsed from this copy, read from a pipe only the orchestrator holds, so
    nothing that writes to the log file afterwards can change what was measured. The log
    holds at most ``cap`` bytes: past it, the start is dropped (the tail is what matters)
    and a first line says so, so a step that floods its output cannot fill the disk.
    """

    KEEP_BYTES = 1 << 20

    def __init__(self, log: Path, cap: int = DEFAULT_LOG_BYTES) -> None:
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

    def pump(self, fd: int, proc: subprocess.Popen[bytes], deadline: float,
             stop: Callable[[], bool] | None = None) -> bool:  # fmt: skip
        """Copy output until the process exits (True), or the deadline passes or ``stop``
        (asked every ``MEMORY_POLL`` seconds) says so (False)."""
        asked, open_ = 0.0, True
        while proc.poll() is None:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return False
            if stop is not None and now - asked >= MEMORY_POLL:
                asked = now
                if stop():
                    return False
            wait = min(0.2, left) if stop is None else max(0.0, min(0.2, left, asked + MEMORY_POLL - now))
            if not open_:  # the step closed its output: wait for it to exit
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                continue
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._add(chunk)
                else:
                    open_ = False
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


__all__ = [
    "AGENT_KEYS",
    "MARKER",
    "StepResult",
    "StepRunner",
    "is_secret",
    "kill_group",
    "kill_marked",
    "kill_orphans",
    "secret_values",
    "start_time",
    "tail",
    "without_secrets",
]
