"""The local executor: a thread pool, one slot per thread, each run a group of subprocesses.

``gpus`` (e.g. ``["0", "1"]``) pins slot *i* to ``CUDA_VISIBLE_DEVICES=gpus[i]``; with
``gpus`` and no ``slots``, there is one slot per GPU.

With more than one slot, each slot's steps run on CPUs of their own (``cpu_groups``: this
process's CPUs in whole cores, a core's hyperthreads together, as many for every slot), with
``OMP_NUM_THREADS`` set to their number unless the environment sets it: two runs at once would
otherwise share every core, and each would time the other's load. ``share_cpus=True`` leaves
every step on every CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.errors import ExecutorError
from autoresearch.executors._base import Executor, Job, RunResult
from autoresearch.executors._steps import execute
from autoresearch.process import StepRunner

if TYPE_CHECKING:
    from autoresearch.executors.sandbox import Sandbox


class LocalExecutor(Executor):
    """Runs jobs as subprocesses on this machine, ``slots`` at a time."""

    def __init__(self, slots: int | None = None, *, gpus: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, sandbox: Sandbox | None = None,
                 max_log_mb: float = 64.0, share_cpus: bool = False) -> None:  # fmt: skip
        slots = slots if slots is not None else max(1, len(gpus or ()))
        if slots < 1:
            raise ExecutorError(f"slots must be >= 1, got {slots}")
        if gpus and len(gpus) < slots:
            raise ExecutorError(
                f"{slots} slots but only {len(gpus)} GPUs given ({', '.join(gpus)})"
            )
        self._slots, self._gpus, self._env = slots, list(gpus or []), env
        self.sandbox = sandbox  # every step of every run inside it, when given
        if sandbox is not None:
            sandbox.slots = slots  # the steps at once, whose scratch folders share the memory
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="autoresearch-slot")
        self._runner = StepRunner(max_log_mb=max_log_mb)
        self.cpus = [] if share_cpus or slots == 1 else cpu_groups(slots)  # one tuple per slot, or []
        self._asked_to_share = share_cpus

    @property
    def placement(self) -> str:
        """Where the slots run, for the session's first lines ("" for one slot)."""
        if self._slots == 1:
            return ""
        if not self.cpus and self._asked_to_share:
            return f"{self._slots} slots share every CPU (--share-cpus)"
        if not self.cpus:
            return (f"warning: {self._slots} slots, but too few cores for a whole one each: the slots "
                    "share every CPU, so each run is timed under the others' load; use fewer slots")  # fmt: skip
        groups = "; ".join(f"slot {i}: {_ranges(group)}" for i, group in enumerate(self.cpus))
        return f"{self._slots} slots, each on CPUs of its own ({groups})"

    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        env = dict(job.env)
        if self._gpus:
            env["CUDA_VISIBLE_DEVICES"] = self._gpus[job.slot % len(self._gpus)]
        cpus = self.cpus[job.slot % len(self.cpus)] if self.cpus else ()
        if cpus and "OMP_NUM_THREADS" not in {**(self._env or os.environ), **env}:
            env["OMP_NUM_THREADS"] = str(len(cpus))
        job = replace(job, env=env, cpus=cpus)
        return self._pool.submit(execute, job, self._runner, self._env, self.sandbox)

    def kill_all(self) -> None:
        self._runner.kill_all()

    def close(self) -> None:
        self._runner.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=True)


def cpu_groups(slots: int, cpus: Iterable[int] | None = None,
               sysfs: Path = Path("/sys/devices/system/cpu")) -> list[tuple[int, ...]]:
    """``cpus`` (this process's, by default) split into ``slots`` groups of whole cores (by
    ``sysfs``'s topology), in order and all of one size: a run is judged against runs on other
    slots, so no slot may have more to run on. Every core counts as many CPUs as the narrowest
    (a core with some of its hyperthreads outside ``cpus``, or without any, gives the others'
    extra ones no slot). What is left over runs no step. With fewer cores than slots, single
    CPUs; with fewer CPUs than slots, [] (the slots share them)."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    cores: dict[tuple[int, str], list[int]] = {}
    for cpu in cpus:
        cores.setdefault(_core_of(cpu, sysfs), []).append(cpu)
    by_package = sorted(cores.items(), key=lambda item: (item[0][0], item[1]))
    width = min((len(group) for group in cores.values()), default=1)  # a core's CPUs, the same for all
    units = [group[:width] for _, group in by_package] if len(cores) >= slots else [[cpu] for cpu in cpus]
    if len(units) < slots:
        return []
    size = len(units) // slots
    groups = [units[slot * size : (slot + 1) * size] for slot in range(slots)]
    return [tuple(sorted(cpu for unit in group for cpu in unit)) for group in groups]


def _core_of(cpu: int, sysfs: Path) -> tuple[int, str]:
    """(package, core) of a CPU; the CPU itself where the topology cannot be read."""
    topology = sysfs / f"cpu{cpu}" / "topology"
    try:
        package = int((topology / "physical_package_id").read_text())
        return package, (topology / "core_id").read_text().strip()
    except (OSError, ValueError):
        return 0, f"cpu{cpu}"


def _ranges(cpus: Sequence[int]) -> str:
    """0-3,8-11 for (0, 1, 2, 3, 8, 9, 10, 11)."""
    spans: list[list[int]] = []
    for cpu in cpus:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


__all__ = ["LocalExecutor", "cpu_groups"]
