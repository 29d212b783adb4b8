"""``autoresearch measure``: time a command the way a speed task needs it timed.

One timing of one run on a machine whose speed drifts is not a metric. ``measure`` runs
the command ``repeat`` times after ``warmup`` untimed runs and prints one summary block
(``---`` then ``key: value``) that the task's metric is read from:

- ``seconds``: the median wall time of a run; ``seconds_mad`` its median absolute deviation;
- ``cpu_seconds``: the median user + system time of the run's process tree (every
  descendant that was waited for), and ``cpu_seconds_mad``;
- ``peak_rss_mb``: the largest resident set size of any process of a run, the largest
  over the runs;
- every numeric ``key: value`` of the command's own summary block, as its median (a
  benchmark that times its own inner loop is aggregated the same way);
- ``alloc_peak_mb`` (``--allocations``, Python commands): the peak of the memory Python
  allocated, traced by ``tracemalloc`` (the median over runs);
- ``runs``: how many timed runs the figures come from.

The command's own output goes to stderr, so the block above is the last one on stdout.
Each run gets a fresh, empty ``TMPDIR`` and ``AUTORESEARCH_OUT``, removed after it, so a
warm-up cannot leave a cache there for the timed runs (a command that writes elsewhere,
such as ``/tmp`` by name, is not stopped by this), and whatever a run leaves running (a
daemon, a double fork: measure is their subreaper) is killed before the next one starts.
A run that exits non-zero ends ``measure`` with that status and the output's tail: a
crash, never a number. It runs as a task's trusted ``evaluate`` step, so the step's
timeout and sandbox apply to it and to everything it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.metrics import parse_summary

# measure's own keys: a command that prints one of them is ignored for it (it cannot set its own time)
OWN_KEYS = ("seconds", "seconds_mad", "cpu_seconds", "cpu_seconds_mad", "peak_rss_mb", "alloc_peak_mb", "runs")
_ALLOC_ENV = "AUTORESEARCH_MEASURE_ALLOC"
_TRACE = """\
import os, runpy, sys, tracemalloc
target, sys.argv = sys.argv[1], sys.argv[1:]
tracemalloc.start()
def report():
    with open(os.environ["{env}"], "w") as fh:
        fh.write(str(tracemalloc.get_traced_memory()[1]))
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


def run_once(argv: Sequence[str], *, allocations: bool = False) -> Sample:
    """Run ``argv`` once; its output goes to our stderr. Raises MeasureError when it fails."""
    command = list(argv)
    scratch = tempfile.mkdtemp(prefix="measure-run-")
    # each run starts with empty scratch space: nothing a warm-up wrote there speeds up a timed run
    env = {**os.environ, "TMPDIR": scratch, "AUTORESEARCH_OUT": scratch}
    try:
        return _run(argv, command, env, allocations)
    finally:
        kill_leftovers()
        shutil.rmtree(scratch, ignore_errors=True)


def guard_measure() -> bool:
    """Orphaned descendants (double forks and daemons too) become our children (Linux); and
    this process is not dumpable, so a run cannot open our /proc/<pid>/mem, environ or fds
    (it would rewrite the start time of its own timing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def kill_leftovers() -> None:
    """Kill and reap what a run left running, so nothing of it serves or slows the next run."""
    me = str(os.getpid())
    for _ in range(50):  # a leftover may fork while it is being killed: until none is left
        pids = [int(p) for p in _children_of(me)]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _children_of(ppid: str) -> list[str]:
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[1] == ppid:
            out.append(entry)
    return out


def _run(argv: Sequence[str], command: list[str], env: dict[str, str], allocations: bool) -> Sample:
    alloc_file = None
    if allocations:
        command = _traced(command)
        fd, alloc_file = tempfile.mkstemp(prefix="measure-alloc-")
        os.close(fd)
        env[_ALLOC_ENV] = alloc_file
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise MeasureError(f"cannot start {shlex.join(argv)}: {exc}", 127) from exc
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
    sys.stderr.write(text)
    sys.stderr.flush()
    alloc = _read_alloc(alloc_file)
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        raise MeasureError(f"{shlex.join(argv)} exited with {proc.returncode}:\n{tail}",
                           proc.returncode if proc.returncode > 0 else 1)  # fmt: skip
    rss_kb = usage.ru_maxrss  # Linux: kilobytes, of the largest process of the tree
    return Sample(seconds, usage.ru_utime + usage.ru_stime, rss_kb / 1024, parse_summary(text), alloc)


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
    finally:
        Path(path).unlink(missing_ok=True)
    return int(text) / 2**20 if text.isdigit() else None


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median."""
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values)


def summarize(samples: Sequence[Sample], require: str | None = None) -> dict[str, float]:
    """The summary block's values for ``samples`` (the command's own keys as medians)."""
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
        out[key] = statistics.median(values)
    if require and require not in out:
        printed = ", ".join(keys) or "none"
        raise MeasureError(f"--metric {require}: the command did not print it (its own keys: {printed})")
    out["runs"] = float(len(samples))
    return out


def measure(argv: Sequence[str], *, repeat: int = 5, warmup: int = 1, metric: str | None = None,
            allocations: bool = False) -> dict[str, float]:  # fmt: skip
    if repeat < 1 or warmup < 0:
        raise MeasureError(f"--repeat {repeat} --warmup {warmup}: at least one timed run, no negative warm-ups")
    guard_measure()
    for _ in range(warmup):
        run_once(argv)
    samples = [run_once(argv, allocations=allocations) for _ in range(repeat)]
    return summarize(samples, metric)


def block(values: dict[str, float]) -> str:
    lines = ["---"]
    for key, value in values.items():
        exact = value.is_integer() and abs(value) < 2**53  # counts and checksums, digit for digit
        lines.append(f"{key}: {int(value)}" if exact else f"{key}: {value:.6g}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument("--metric", help="a key the command prints itself that must be there")
    parser.add_argument("--allocations", action="store_true",
                        help="Python commands: also the peak of memory Python allocated (tracemalloc)")  # fmt: skip
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")


def main(args: argparse.Namespace) -> int:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        print("autoresearch measure: error: give the command after --", file=sys.stderr)
        return 2
    try:
        values = measure(argv, repeat=args.repeat, warmup=args.warmup, metric=args.metric,
                         allocations=args.allocations)  # fmt: skip
    except MeasureError as exc:
        print(f"autoresearch measure: {exc}", file=sys.stderr)
        return exc.code
    print(block(values), flush=True)
    return 0


__all__ = ["MeasureError", "Sample", "add_arguments", "block", "mad", "main", "measure", "run_once", "summarize"]
