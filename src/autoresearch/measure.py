"""``autoresearch measure``: time a command the way a speed task needs it timed.

One timing of one run on a machine whose speed drifts is not a metric. ``measure`` runs
the command ``repeat`` times after ``warmup`` untimed runs and prints one summary block
(``---`` then ``key: value``) that the task's metric is read from:

- ``seconds``: the median wall time of a run; ``seconds_mad`` its median absolute deviation;
- ``cpu_seconds``: the median user + system time of the run's process tree (every
  descendant, also one it left running, which measure kills and reaps), and
  ``cpu_seconds_mad``;
- ``peak_rss_mb``: the largest resident set size of any process of a run (what it left
  running too), or what its processes held together (proportional set sizes, summed at a
  look of the watch) when that is more; the largest over the runs;
- every numeric ``key: value`` of the command's own summary block, as its median (a
  benchmark that times its own inner loop is aggregated the same way);
- ``alloc_peak_mb`` (``--allocations``, Python commands): the peak of the memory Python
  allocated, traced by ``tracemalloc`` (the median over runs);
- ``runs``: how many timed runs the figures come from.

The command's own output goes to stderr, so the block above is the last one on stdout.
A key the command prints twice (in one block or in two) makes the run a crash: code the
benchmark imports must not be able to print the value measure takes.

No run leaves anything for the next one. Each gets a fresh, empty ``TMPDIR`` and
``AUTORESEARCH_OUT``; what it leaves running (a daemon, a double fork: measure is their
subreaper) is killed before the next one starts; a file it adds to the ``AUTORESEARCH_OUT``
measure was given is removed, and changing one there is a crash. Inside the sandbox
(``AUTORESEARCH_SANDBOX=bwrap``, where those folders are the step's own) ``/tmp``,
``/dev/shm`` and ``/dev/mqueue`` are emptied and System V IPC objects removed between
runs, ``/dev/pts`` gets its mode and times back, and a run that changed the mode or times of
a ``/dev`` node or measure's own attributes (nice, out-of-memory score, core dump filter,
autogroup, name: a run can set them on its parent) is a crash, so a warm-up cannot leave a cache
anywhere the timed runs could read it. Outside the
sandbox a command can still keep one in a folder it names itself.

``--same KEY`` (with ``--reference DIR``, or ``AUTORESEARCH_REFERENCE``, which the engine
sets to a checkout of the session's baseline) guards what the command computes, not only
how fast: before every run (warm-ups too) measure draws a secret workload seed, hands it
to that run as ``AUTORESEARCH_SEED``, runs the command on it once, untimed, in the reference
folder, and the run must print the same value of each ``KEY`` (a checksum or a digest of
the output, compared as printed) as the reference did on that seed. No run's answer is any
other run's, so nothing a warm-up leaves behind (in the page cache, say) holds it. A benchmark that builds its workload from
the seed cannot then be answered from a table, a library cannot fake its own tests, and a
run that prints a checksum and exits early prints the wrong one: a crash, with both values.

In the sandbox ``measure`` is the step's first process (pid 1: the engine runs an evaluate
that is ``autoresearch measure ...`` without a shell, and measure refuses to run there
otherwise). No process above the runs is visible to them, measure itself can be neither
opened (it is not dumpable) nor killed from inside, and it alone holds the step's output.
A folder a run made read-only is opened up and emptied all the same; what cannot be
removed is a crash.

A run that exits non-zero ends ``measure`` with that status and the output's tail: a
crash, never a number. It runs as a task's trusted ``evaluate`` step, so the step's
timeout and sandbox apply to it and to everything it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoresearch.metrics import SUMMARY_LINE, parse_summary
from autoresearch.process import DEVICE_NODES, SANDBOXED
from autoresearch.process import REFERENCE as REFERENCE_ENV

# measure's own keys: a command that prints one of them is ignored for it (it cannot set its own time)
OWN_KEYS = ("seconds", "seconds_mad", "cpu_seconds", "cpu_seconds_mad", "peak_rss_mb", "alloc_peak_mb", "runs")
_ALLOC_ENV = "AUTORESEARCH_MEASURE_ALLOC"
_SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue")  # a sandboxed step's own: emptied between runs
_TRACE = """\
import os, runpy, sys, tracemalloc, _tracemalloc
target, sys.argv = sys.argv[1], sys.argv[1:]
path, peak, tracing, touched = os.environ.pop("{env}"), tracemalloc.get_traced_memory, tracemalloc.is_tracing, []
def guard(name, call):
    def guarded(*args, **kwargs):  # a run that stops or resets the trace hides its allocations
        touched.append(name)
        return call(*args, **kwargs)
    return guarded
for module in (tracemalloc, _tracemalloc):
    for name in ("stop", "reset_peak", "clear_traces"):
        setattr(module, name, guard(name, getattr(module, name)))
tracemalloc.start()
def report():
    with open(path, "w") as fh:
        fh.write("tracemalloc." + (touched or ["stop"])[0] if touched or not tracing() else str(peak()[1]))
import atexit
atexit.register(report)
if target == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
""".replace("{env}", _ALLOC_ENV)


class MeasureError(Exception):
    """The command could not be measured; ``code`` is the exit status to end with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sample:
    """One timed run of the command."""

    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    printed: dict[str, float] = field(default_factory=dict)
    alloc_peak_mb: float | None = None
    words: dict[str, str] = field(default_factory=dict)  # the summary's values as printed (--same)


class Between:
    """Puts back the state every run starts from (see the module's docstring).

    ``measure`` makes one and calls :meth:`run_dir` before, :meth:`reset` after each run.
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self.private = environ.get(SANDBOXED) == "bwrap"
        self.own = Path(tempfile.mkdtemp(prefix="measure-"))
        self.home = Path(environ["HOME"]) if environ.get("HOME") and Path(environ["HOME"]).is_dir() else None
        given = environ.get("AUTORESEARCH_OUT")
        self.out = Path(given) if given and Path(given).is_dir() else None
        self.out_before = _listing(self.out) if self.out else {}
        kept = [self.own, self.out, *([Path(p) for p in _SCRATCH] if self.private else [])]
        self.kept = {root: root.stat() for root in kept if root is not None and root.is_dir()}
        self.devices = _device_state() if self.private else {}
        self.terminals = {p: os.stat(p) for p in _TERMINALS if self.private and os.path.exists(p)}
        self.attributes = _own_attributes()

    def run_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.own))

    def reset(self) -> None:
        """After a run (its leftovers killed): nothing it wrote is there for the next one."""
        for entry in self.own.iterdir():
            _remove(entry)
        left = [str(p) for p in self.own.iterdir()]
        if self.private:
            mounts = _mount_points()
            for root in (Path(p) for p in _SCRATCH if Path(p).is_dir()):
                keep = {self.own, *mounts}
                _empty(root, keep=keep, mounts=mounts)
                left += [str(p) for p in _left_in(root, keep, mounts)]
            _remove_sysv_ipc()
            if self.home is not None:
                self.home.mkdir(parents=True, exist_ok=True)
        if self.out is not None:
            self._restore_out()
        for root, st in self.kept.items():  # the folders kept between runs hold nothing either
            _restore_attributes(root, st)
        now = _device_state() if self.devices else {}
        changed = [path for path, state in self.devices.items() if now.get(path) != state]
        if changed:  # the step's own copies (as root), but the runs share them: state could pass
            raise MeasureError(f"a run changed the mode or times of {', '.join(changed)}: "
                               "the next run would find what it set there")  # fmt: skip
        for path, st in self.terminals.items():  # opening a terminal changes them: put back, always
            _restore_attributes(Path(path), st)
        attributes = _own_attributes()
        changed = [key for key, value in self.attributes.items() if attributes.get(key) != value]
        if changed:  # runs are this process's children and user: they can set these, not undo them
            raise MeasureError(f"a run changed measure's own {', '.join(changed)}: every later run "
                               "(and the reference's) would inherit or read it")  # fmt: skip
        if left:
            raise MeasureError(f"a run left {', '.join(sorted(left)[:5])} where measure cannot remove it: "
                               "the next run would find it")  # fmt: skip

    def _restore_out(self) -> None:
        assert self.out is not None
        now = _listing(self.out)
        changed = sorted(k for k in self.out_before if now.get(k) != self.out_before[k])
        for rel in sorted(set(now) - set(self.out_before), key=len):
            _remove(self.out / rel)
        changed += sorted(set(_listing(self.out)) - set(self.out_before))  # what could not be removed
        if changed:
            raise MeasureError(f"a run changed {', '.join(changed[:5])} in AUTORESEARCH_OUT ({self.out}): "
                               "a run writes only to its own, fresh AUTORESEARCH_OUT")  # fmt: skip

    def close(self) -> None:
        shutil.rmtree(self.own, ignore_errors=True)


_TERMINALS = ("/dev/pts", "/dev/pts/ptmx")  # the sandbox's own devpts: its mode and times are writable
_OWN = ("oom_score_adj", "coredump_filter", "autogroup", "comm")  # /proc/self files another process of ours can write


def _own_attributes() -> dict[str, str]:
    """What a run can set on this process from outside it and the next run can read: its
    nice, out-of-memory score, core dump filter, autogroup and name. (Not its I/O priority:
    what the kernel reports changes by itself once the process first does block I/O.)"""
    found = {"nice": str(os.getpriority(os.PRIO_PROCESS, 0))}
    for name in _OWN:
        with contextlib.suppress(OSError):
            found[name] = Path(f"/proc/self/{name}").read_text(errors="replace").strip()
    return found


def _device_state() -> dict[str, tuple[int, int, int, int]]:
    """Mode, owner and change time of ``/dev``'s nodes. chmod, chown and utime (touch) each
    set the change time, which no call can set back; reads and writes leave it alone."""
    state = {}
    for path in (f"/dev/{name}" for name in DEVICE_NODES):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)
    return state


def _restore_attributes(root: Path, st: os.stat_result) -> None:
    """Put back a kept folder's mode and times and drop its extended attributes: a run could
    keep an answer in them (``setxattr`` on /tmp, ``utime`` to a chosen 64-bit time)."""
    with contextlib.suppress(OSError):
        for name in os.listxattr(root, follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.removexattr(root, name, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.chmod(root, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(OSError):
        os.utime(root, ns=(st.st_atime_ns, st.st_mtime_ns))


def _listing(root: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime, content digest) of every file and folder under ``root``, by relative path:
    a file rewritten at its size with its time put back is still a change."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder, name)
            with contextlib.suppress(OSError):
                st = path.lstat()
                digest = _digest(path) if name in files else ""
                out[str(path.relative_to(root))] = (st.st_size if name in files else -1, st.st_mtime_ns, digest)
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _unlock(path)  # a folder a run made read-only would keep what it holds
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _unlock(folder: Path) -> None:
    """Make ``folder`` and every folder in it ours to empty again (mode 0700)."""
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o700)
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _unlock(Path(entry.path))


def _empty(folder: Path, *, keep: set[Path], mounts: set[Path]) -> None:
    """Remove what ``folder`` holds, except ``keep`` and mount points (a bind is not ours to empty)."""
    with contextlib.suppress(OSError):
        for entry in list(folder.iterdir()):
            if entry in keep:
                continue
            if any(entry in m.parents for m in mounts):
                _empty(entry, keep=keep, mounts=mounts)
            else:
                _remove(entry)


def _left_in(folder: Path, keep: set[Path], mounts: set[Path]) -> list[Path]:
    """What ``_empty`` could not remove from ``folder``."""
    left = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry in keep:
                continue
            left += _left_in(entry, keep, mounts) if any(entry in m.parents for m in mounts) else [entry]
    return left


def _mount_points() -> set[Path]:
    points = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            field = line.split()[4]  # the mount point, with octal escapes for spaces and such
            points.add(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)))
    return points


def _remove_sysv_ipc() -> None:
    """Remove every System V shared memory segment, semaphore set and message queue (IPC_RMID)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, remove in (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl)):
        with contextlib.suppress(OSError):
            rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
            for row in rows:
                ident = int(row.split()[1])
                remove(ident, 0, 0, None) if kind == "sem" else remove(ident, 0, None)


def run_once(argv: Sequence[str], between: Between, *, allocations: bool = False,
             seed: int | None = None, cwd: Path | None = None, quiet: bool = False) -> Sample:  # fmt: skip
    """Run ``argv`` once (in ``cwd``, with ``AUTORESEARCH_SEED`` = ``seed`` when given); its
    output goes to our stderr unless ``quiet``. Raises MeasureError when it fails."""
    scratch = str(between.run_dir())
    # each run starts with empty scratch space: nothing a warm-up wrote there speeds up a timed run
    env = {**os.environ, "TMPDIR": scratch, "AUTORESEARCH_OUT": scratch}
    env.pop(REFERENCE_ENV, None)  # the runs have no business with the reference's checkout
    if seed is not None:
        env["AUTORESEARCH_SEED"] = str(seed)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        sample, status = _run(argv, list(argv), env, allocations, cwd, quiet)
        left_kb = kill_leftovers()
    finally:
        kill_leftovers()
        between.reset()
    if status is not None:
        raise status
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and what it left, all reaped now
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    cpu = max(cpu, sample.cpu_seconds)  # what the watch saw: children the kernel dropped count too
    return replace(sample, cpu_seconds=cpu, peak_rss_mb=max(sample.peak_rss_mb, left_kb / 1024))


def guard_measure() -> bool:
    """Orphaned descendants (double forks and daemons too) become our children (Linux); and
    this process is not dumpable, so a run cannot open our /proc/<pid>/mem, environ or fds
    (it would rewrite the start time of its own timing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def kill_leftovers() -> int:
    """Kill and reap what a run left running, so nothing of it serves or slows the next run.

    Returns the peak resident set (kB) of the largest of them, those that already exited too
    (from their reaping: an exited helper has no /proc status left). As the sandbox's first process
    measure kills every other process there at once (``kill(-1)``: one that forks and exits
    in a loop has no pid to chase); elsewhere it kills its children until none is left. One
    that outlives fifty rounds is a crash.
    """
    me, peak = str(os.getpid()), 0
    for _ in range(50):  # a leftover may fork while it is being killed: until none is left
        pids = [int(p) for p in (_all_others() if me == "1" else _children_of(me))]
        if not pids:
            return peak
        peak = max([peak, *(_peak_kb(pid) for pid in pids)])
        if me == "1":
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, 9)
            peak = max(peak, _reap_all())
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                peak = max(peak, os.wait4(pid, 0)[2].ru_maxrss)
    raise MeasureError("a run left processes running that measure could not kill (they fork as fast as "
                       "they are killed): a crash, or they would serve the next run")  # fmt: skip


def _all_others() -> list[str]:
    """Every process of this pid namespace but its first (us, as pid 1)."""
    return [e for e in os.listdir("/proc") if e.isdigit() and e != "1"]


def _reap_all() -> int:
    """After ``kill(-1)``: wait until no child is left (every orphan of the namespace is ours,
    and a process with SIGKILL pending cannot fork). Returns the largest peak (kB) reaped."""
    peak = 0
    while True:
        try:
            peak = max(peak, os.wait4(-1, 0)[2].ru_maxrss)
        except ChildProcessError:
            return peak


def _peak_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return _kb(Path(f"/proc/{pid}/status").read_text(), "VmHWM")
    return 0


def _children_of(ppid: str) -> list[str]:
    return [pid for pid, parent in _parents().items() if parent == ppid]


def _parents() -> dict[str, str]:
    """Every process of /proc and its parent's pid."""
    parent: dict[str, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[entry] = _stat_fields(Path(f"/proc/{entry}/stat").read_text())[1]
    return parent


def _stat_fields(stat: str) -> list[str]:
    """/proc/<pid>/stat's fields after "pid (comm) " (a name may hold spaces and parentheses):
    state, ppid, ..., utime at 11, stime at 12, starttime at 19."""
    return stat[stat.rindex(")") + 2 :].split()


def _kb(status: str, name: str) -> int:
    """A "Name:   123 kB" line of /proc/<pid>/status or smaps_rollup, in kB (0 when absent)."""
    return int((_status_field(status, name) or "0 kB").split()[0])


WATCH_SECONDS = 0.02  # how often the watch looks at a run's processes (as the sandbox's first process)
WATCH_SECONDS_OUTSIDE = 0.1  # elsewhere a look walks measure's descendants: less often
TOGETHER_EVERY = 5  # looks between two sums of the memory the run's processes hold together


class _Watch(threading.Thread):
    """Looks at a run's processes while it runs: the CPU time and peak memory of each (a lower
    bound where the kernel's own accounting is short), the memory they hold together, and
    whether one ignores SIGCHLD.

    The kernel adds a child's CPU time and memory to its parent's only when the parent reaps
    it; a process that ignores SIGCHLD (or sets SA_NOCLDWAIT) has its children reaped for it
    and their times dropped: a benchmark that forked its work so was timed at -86% CPU. And a
    table split over two processes halves the largest one's peak: the sum is what was held."""

    def __init__(self) -> None:
        super().__init__(name="measure-watch", daemon=True)
        self.done, self.looks = threading.Event(), 0
        self.first = os.getpid() == 1  # the sandbox's first process: its namespace is the run's
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}  # (pid, start) -> (CPU ticks, peak kB)
        self.ignores_sigchld = ""  # the command line of a process that did
        self.together_kb = 0  # the most resident memory the run's processes held at one look

    def run(self) -> None:
        self.look()
        while not self.done.wait(WATCH_SECONDS if self.first else WATCH_SECONDS_OUTSIDE):
            self.look()

    def look(self) -> None:
        # every process of the run: orphans too, which measure keeps as their subreaper
        pids = _all_others() if self.first else _descendants(str(os.getpid()))
        self.looks += 1
        together = 0 if self.looks % TOGETHER_EVERY == 1 else None  # Pss costs a walk of the pages
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = _stat_fields(stat)
                status = Path(f"/proc/{pid}/status").read_text()
                ignored = int(_status_field(status, "SigIgn") or "0", 16)
                self.seen[(pid, fields[19])] = (int(fields[11]) + int(fields[12]), _kb(status, "VmHWM"))
                if ignored >> (signal.SIGCHLD - 1) & 1 and not self.ignores_sigchld:
                    self.ignores_sigchld = stat[stat.index("(") + 1 : stat.rindex(")")]
                if together is not None:  # proportional: pages shared after a fork count once in all
                    together += _kb(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
        if together is not None:
            self.together_kb = max(self.together_kb, together)

    def stop(self) -> tuple[float, float]:
        """CPU seconds over every process the run had, and the peak (MB): the largest one's, or
        what they held together at one look, whichever is more."""
        self.done.set()
        self.join()
        ticks = sum(cpu for cpu, _ in self.seen.values())
        largest = max((kb for _, kb in self.seen.values()), default=0)
        return ticks / os.sysconf("SC_CLK_TCK"), max(largest, self.together_kb) / 1024


def _status_field(status: str, name: str) -> str:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def _descendants(root: str) -> list[str]:
    """Every process below ``root``: from each thread's ``children`` list where the kernel
    has one (not all of /proc: on a busy machine that is hundreds of files a look), else from
    one pass over /proc."""
    if not _HAS_CHILDREN:
        return _descendants_by_scan(root)
    found: list[str] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    found += children
                    frontier += children
    return found


_HAS_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")  # CONFIG_PROC_CHILDREN


def _descendants_by_scan(root: str) -> list[str]:
    parent = _parents()
    found: list[str] = []
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in found}
        found.extend(frontier)
    return found


def _run(argv: Sequence[str], command: list[str], env: dict[str, str], allocations: bool,
         cwd: Path | None = None, quiet: bool = False) -> tuple[Sample, MeasureError | None]:  # fmt: skip
    """One run: its sample (wall time, the main process's peak), or why it is a crash."""
    alloc_file = None
    if allocations:
        command = _traced(command)
        alloc_file = os.path.join(env["TMPDIR"], "..", f"alloc-{os.getpid()}")
        env[_ALLOC_ENV] = alloc_file
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        except OSError as exc:
            raise MeasureError(f"cannot start {shlex.join(argv)}: {exc}", 127) from exc
        watch = _Watch()
        watch.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            seconds = time.perf_counter() - start
            watched_cpu, watched_peak = watch.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
    if not quiet:
        sys.stderr.write(text)
        sys.stderr.flush()
    alloc = _read_alloc(alloc_file)
    peak_mb = max(usage.ru_maxrss / 1024, watched_peak)  # kB on Linux
    sample = Sample(seconds, watched_cpu, peak_mb, parse_summary(text), alloc, printed_words(text))
    if watch.ignores_sigchld:
        return sample, MeasureError(f"{shlex.join(argv)}: a process of the run ({watch.ignores_sigchld}) ignored "
                                    "SIGCHLD: the kernel drops the CPU time and memory of the children it "
                                    "reaps for it, which measure counts")  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        code = proc.returncode if proc.returncode > 0 else 1
        said = f":\n{tail}" if tail.strip() else " (it printed nothing)"
        return sample, MeasureError(f"{shlex.join(argv)} exited with {proc.returncode}{said}", code)
    twice = printed_twice(text)
    if twice:
        return sample, MeasureError(f"{shlex.join(argv)} printed {', '.join(twice)} more than once: measure "
                                    "takes one value of a key per run (from the command, not code it imports)")  # fmt: skip
    return sample, None


def printed_words(text: str) -> dict[str, str]:
    """Every ``key: value`` of the last summary block as printed (a hex digest too)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    matches = (SUMMARY_LINE.match(line) for line in lines[starts[-1] + 1 :]) if starts else iter(())
    return {m.group(1): m.group(2) for m in matches if m}


def printed_twice(text: str) -> list[str]:
    """Keys of the last summary block that are printed more than once after the first ``---``."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return []
    seen: dict[str, int] = {}
    for line in lines[starts[0] + 1 :]:
        match = SUMMARY_LINE.match(line)
        if match:
            seen[match.group(1)] = seen.get(match.group(1), 0) + 1
    return sorted(k for k in parse_summary(text) if seen.get(k, 0) > 1)


def _traced(argv: list[str]) -> list[str]:
    python = Path(argv[0]).name
    if not python.startswith("python") or len(argv) < 2 or (argv[1].startswith("-") and argv[1] != "-m"):
        raise MeasureError("--allocations: the command must be `python SCRIPT ...` or `python -m MODULE ...`")
    return [argv[0], "-c", _TRACE, *argv[1:]]


def _read_alloc(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError:
        raise MeasureError("the run ended before measure could read its allocations (os._exit, or a "
                           "signal): alloc_peak_mb cannot be known") from None  # fmt: skip
    finally:
        Path(path).unlink(missing_ok=True)
    if text.startswith("tracemalloc."):
        raise MeasureError(f"the run called {text}() (or stopped the trace): alloc_peak_mb would not see "
                           "its allocations")  # fmt: skip
    return int(text) / 2**20 if text.isdigit() else None


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median."""
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values)


def summarize(samples: Sequence[Sample], require: str | None = None,
              same: Sequence[str] = ()) -> dict[str, float]:  # fmt: skip
    """The summary block's values for ``samples``: the command's own keys as medians, but a
    ``--same`` key as the last run printed it (each run had a workload of its own, so a median
    of their checksums would be nobody's checksum)."""
    walls = [s.seconds for s in samples]
    cpus = [s.cpu_seconds for s in samples]
    out: dict[str, float] = {
        "seconds": statistics.median(walls), "seconds_mad": mad(walls),
        "cpu_seconds": statistics.median(cpus), "cpu_seconds_mad": mad(cpus),
        "peak_rss_mb": max(s.peak_rss_mb for s in samples),
    }  # fmt: skip
    allocs = [s.alloc_peak_mb for s in samples if s.alloc_peak_mb is not None]
    if allocs:
        out["alloc_peak_mb"] = statistics.median(allocs)
    keys = sorted({k for s in samples for k in s.printed if k not in OWN_KEYS})
    for key in keys:
        values = [s.printed[key] for s in samples if key in s.printed]
        if len(values) < len(samples):
            raise MeasureError(f"the command printed {key!r} in {len(values)} of {len(samples)} runs")
        out[key] = values[-1] if key in same else statistics.median(values)
    if require and require not in out:
        printed = ", ".join(keys) or "none"
        raise MeasureError(f"--metric {require}: the command did not print it (its own keys: {printed})")
    out["runs"] = float(len(samples))
    return out


def measure(argv: Sequence[str], *, repeat: int = 5, warmup: int = 1, metric: str | None = None,
            allocations: bool = False, same: Sequence[str] = (),
            reference: Path | None = None) -> dict[str, float]:  # fmt: skip
    if repeat < 1 or warmup < 0:
        raise MeasureError(f"--repeat {repeat} --warmup {warmup}: at least one timed run, no negative warm-ups")
    folder = _reference_folder(same, reference)
    if os.environ.get(SANDBOXED) == "bwrap" and os.getpid() != 1:
        raise MeasureError("in the sandbox measure must be the step's command itself (evaluate = "
                           "\"autoresearch measure ... -- CMD\", no shell syntax around it), so that it "
                           "runs as the sandbox's first process: the runs could open a process above it")  # fmt: skip
    guard_measure()
    between = Between()
    if folder:
        print(f"measure: each run on a secret workload of its own, checked against the reference in "
              f"{folder} (its output is not shown: the runs could read it)", file=sys.stderr)  # fmt: skip
    try:
        samples = []
        for index in range(warmup + repeat):
            # fresh for every run: no table, and nothing an earlier run left anywhere, holds the answer
            seed = secrets.randbelow(2**31) if folder else None
            expected = _reference_values(argv, between, same, seed, folder) if folder else {}
            sample = run_once(argv, between, allocations=allocations and index >= warmup, seed=seed)
            _check_same(sample, expected, seed)
            samples.append(sample)
    finally:
        between.close()
    return summarize(samples[warmup:], metric, same)


def _reference_folder(same: Sequence[str], given: Path | None) -> Path | None:
    if not same:
        return None
    keys = " ".join(f"--same {key}" for key in same)
    folder = given or (Path(os.environ[REFERENCE_ENV]) if os.environ.get(REFERENCE_ENV) else None)
    if folder is None:
        raise MeasureError(f"{keys}: no reference to compare with: give --reference DIR (a checkout of the "
                           f"code whose output is right), or set [task] reference = \"baseline\" so that "
                           f"the engine sets {REFERENCE_ENV}")  # fmt: skip
    if not folder.is_dir():
        raise MeasureError(f"{keys}: the reference {folder} is not a folder")
    return folder.resolve()


def _reference_values(argv: Sequence[str], between: Between, same: Sequence[str], seed: int | None,
                      folder: Path) -> dict[str, str]:  # fmt: skip
    """Run the command once in the reference folder, untimed: the values every run must print."""
    try:
        sample = run_once(argv, between, seed=seed, cwd=folder, quiet=True)
    except MeasureError as exc:
        raise MeasureError(f"the reference run (in {folder}) failed: {exc}", exc.code) from exc
    missing = [key for key in same if key not in sample.words]
    if missing:
        raise MeasureError(f"--same {' '.join(missing)}: the reference run (in {folder}) did not print it")
    return {key: sample.words[key] for key in same}


def _check_same(sample: Sample, expected: dict[str, str], seed: int | None) -> None:
    """Each key as the reference printed it, character for character (a number or a digest)."""
    for key, want in expected.items():
        got = sample.words.get(key)
        if got != want:
            raise MeasureError(f"{key} is {got or 'nothing'}, the reference printed {want} on the same "
                               f"workload (seed {seed}): the output changed", 1)  # fmt: skip


def block(values: dict[str, float]) -> str:
    lines = ["---"]
    for key, value in values.items():
        exact = value.is_integer() and abs(value) < 2**53  # counts and checksums, digit for digit
        lines.append(f"{key}: {int(value)}" if exact else f"{key}: {value:.6g}")
    return "\n".join(lines)


def same_keys(command: str) -> tuple[str, ...]:
    """The ``--same`` keys of an ``autoresearch measure`` command line (an ``evaluate``): over
    an experiment's runs they are shown as the last run printed them, never averaged."""
    try:
        words = shlex.split(command)
    except ValueError:
        return ()
    if "measure" not in words:
        return ()
    out: list[str] = []
    for before, word in zip(["", *words], words, strict=False):
        if word == "--":
            break
        if before == "--same":
            out.append(word)
        elif word.startswith("--same="):
            out.append(word.removeprefix("--same="))
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument("--metric", help="a key the command prints itself that must be there")
    parser.add_argument("--allocations", action="store_true",
                        help="Python commands: also the peak of memory Python allocated (tracemalloc)")  # fmt: skip
    parser.add_argument("--same", action="append", default=[], metavar="KEY",
                        help="a key (a checksum) every run must print as the reference run does, "
                        "on a secret workload seed drawn for each run (repeatable)")  # fmt: skip
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help=f"the folder --same runs the command in first (default: ${REFERENCE_ENV})")  # fmt: skip
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")


def main(args: argparse.Namespace) -> int:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        print("autoresearch measure: error: give the command after --", file=sys.stderr)
        return 2
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # not inherited ignored: that is the run's to choose
    try:
        values = measure(argv, repeat=args.repeat, warmup=args.warmup, metric=args.metric,
                         allocations=args.allocations, same=args.same, reference=args.reference)  # fmt: skip
    except MeasureError as exc:
        print(f"autoresearch measure: {exc}", file=sys.stderr)
        return exc.code
    print(block(values), flush=True)
    return 0


__all__ = ["Between", "MeasureError", "Sample", "add_arguments", "block", "mad", "main", "measure", "printed_twice", "run_once", "same_keys", "summarize"]
