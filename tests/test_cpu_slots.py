"""Slots on CPUs of their own: the split by whole cores, the runs' CPUs, and a run that tries to
leave its slot's CPUs."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from autoresearch.config import MetricConfig
from autoresearch.executors import Job, LocalExecutor, RunResult, RunStatus
from autoresearch.executors._steps import execute
from autoresearch.executors.local import cpu_groups
from autoresearch.process import StepRunner

PY = sys.executable
MINE = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(MINE) < 2, reason="this process has fewer than 2 CPUs")

PROBE = (
    "import os, sys\n"
    "wanted = sys.argv[1:]\n"
    "if wanted:\n"
    "    try:\n"
    "        os.sched_setaffinity(0, [int(c) for c in wanted])\n"
    "    except OSError as exc:\n"
    "        print('refused:', exc)\n"
    "print('---')\n"
    "print('score: 1')\n"
    "print('on cpus', ','.join(map(str, sorted(os.sched_getaffinity(0)))))\n"
    "print('threads:', os.environ.get('OMP_NUM_THREADS', '0'))\n"
)


def topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """A fake /sys/devices/system/cpu: CPU -> (package, core)."""
    for cpu, (package, core) in cores.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_cores_stay_whole_and_packages_together(tmp_path: Path) -> None:
    # two packages of two cores, two hyperthreads each: core (p, c) holds CPUs 2p+c and 4+2p+c
    sysfs = topology(tmp_path, {cpu: (cpu % 4 // 2, cpu % 2) for cpu in range(8)})
    cpus = range(8)
    assert cpu_groups(2, cpus, sysfs) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert cpu_groups(4, cpus, sysfs) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    # as many for every slot (a run is judged against the other slots' runs): one core left over
    assert cpu_groups(3, cpus, sysfs) == [(0, 4), (1, 5), (2, 6)]
    # more slots than cores: hyperthreads apart; more slots than CPUs: shared
    assert cpu_groups(5, cpus, sysfs) == [(0,), (1,), (2,), (3,), (4,)]
    assert cpu_groups(9, cpus, sysfs) == []
    # only the CPUs this process may use; a core with one of its two (a cpuset 0-5, or a hybrid
    # CPU's cores without hyperthreads) makes every core count one: as many CPUs for each slot
    assert cpu_groups(2, [1, 2, 5, 6], sysfs) == [(1, 5), (2, 6)]
    assert cpu_groups(2, range(6), sysfs) == [(0, 1), (2, 3)]


def test_the_placement_names_each_slots_cpus_as_ranges() -> None:
    executor = LocalExecutor(slots=2)
    executor.cpus = [(0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)]
    assert executor.placement == "2 slots, each on CPUs of its own (slot 0: 0-3,8-11; slot 1: 4-7,12-15)"
    executor.close()


def test_without_a_readable_topology_each_cpu_is_a_core(tmp_path: Path) -> None:
    assert cpu_groups(2, [0, 1, 2, 3], tmp_path / "none") == [(0, 1), (2, 3)]
    assert cpu_groups(2, [0, 1, 2], tmp_path / "none") == [(0,), (1,)]
    assert cpu_groups(1, [3], tmp_path / "none") == [(3,)]


def probe_job(tmp_path: Path, slot: int, *wanted: int, **kw: object) -> Job:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "probe.py").write_text(PROBE)
    args = " ".join(map(str, wanted))
    return Job(experiment_id=slot + 1, run_index=0, commit="c0ffee", workdir=tmp_path,
               run=f"{PY} probe.py {args}", metric=MetricConfig(name="score"), log_dir=tmp_path / "logs",
               out_dir=tmp_path / f"out{slot}", time_budget=5, timeout=30, slot=slot, **kw)  # type: ignore[arg-type]  # fmt: skip


def cpus_of(result: RunResult) -> tuple[int, ...]:
    """The CPUs the probe ran on, from its log."""
    assert result.log_path is not None
    line = next(x for x in result.log_path.read_text().splitlines() if x.startswith("on cpus "))
    return tuple(int(c) for c in line.removeprefix("on cpus ").split(","))


@needs_two_cpus
def test_each_slot_runs_on_its_own_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    executor = LocalExecutor(slots=2)
    try:
        results = [executor.submit(probe_job(tmp_path / f"s{slot}", slot)).result() for slot in (0, 1)]
    finally:
        executor.close()
    assert all(r.status is RunStatus.OK for r in results), [r.reason for r in results]
    seen = [cpus_of(r) for r in results]
    assert seen == executor.cpus and not set(seen[0]) & set(seen[1])
    assert [r.metrics["threads"] for r in results] == [len(g) for g in executor.cpus]
    assert executor.placement.startswith("2 slots, each on CPUs of its own (slot 0: ")


@needs_two_cpus
def test_the_thread_that_ran_a_pinned_job_has_its_cpus_back(tmp_path: Path) -> None:
    """The slot's thread runs the next job, pinned or not, on what it had before."""
    after: list[list[int]] = []

    def worker() -> None:
        execute(probe_job(tmp_path, 0, cpus=(MINE[0],)), StepRunner())
        after.append(sorted(os.sched_getaffinity(0)))  # 0: this thread

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert after == [MINE]


@needs_two_cpus
def test_the_users_thread_count_and_shared_cpus_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    executor = LocalExecutor(slots=2)
    try:
        assert executor.submit(probe_job(tmp_path, 1)).result().metrics["threads"] == 3
    finally:
        executor.close()
    shared = LocalExecutor(slots=2, share_cpus=True)
    try:
        result = shared.submit(probe_job(tmp_path, 1)).result()
    finally:
        shared.close()
    assert shared.cpus == [] and shared.placement == "2 slots share every CPU (--share-cpus)"
    assert cpus_of(result) == tuple(MINE)
    assert LocalExecutor(slots=1).cpus == [] and LocalExecutor(slots=1).placement == ""
    crowded = LocalExecutor(slots=len(MINE) + 1)  # more slots than cores: not asked for, a warning
    crowded.close()
    assert crowded.cpus == [] and crowded.placement.startswith(f"warning: {len(MINE) + 1} slots, but too few cores")
