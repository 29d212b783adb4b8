"""Executor conformance: env contract, steps, metrics, timeouts killing whole process groups, tampering."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from autoresearch.config import MetricConfig
from autoresearch.executors import Executor, Job, LocalExecutor, RunStatus
from autoresearch.integrity import sha256_files

PY = sys.executable


@pytest.fixture(params=["local"])
def executor(request: pytest.FixtureRequest) -> Executor:
    ex = LocalExecutor(slots=2)
    yield ex
    ex.close()


def job(tmp_path: Path, run: str, **kw: object) -> Job:
    defaults: dict[str, object] = dict(
        experiment_id=1, run_index=0, commit="c0ffee", workdir=tmp_path, run=run,
        metric=MetricConfig(name="score"), log_dir=tmp_path / "logs", out_dir=tmp_path / "out",
        time_budget=5, timeout=10, seed=1234,
    )  # fmt: skip
    defaults.update(kw)
    return Job(**defaults)  # type: ignore[arg-type]


def script(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / name).write_text(body)
    return f"{PY} {name}"


def test_environment_contract_and_summary(executor: Executor, tmp_path: Path) -> None:
    run = script(tmp_path, "r.py", (
        "import os\n"
        "print('---')\n"
        "print('score:', float(os.environ['AUTORESEARCH_TIME_BUDGET']) + int(os.environ['AUTORESEARCH_SEED']))\n"
        "print('out_ok:', int(os.path.isdir(os.environ['AUTORESEARCH_OUT'])))\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, run)).result()
    assert result.status is RunStatus.OK, result.reason
    assert result.metric == 1239.0 and result.metrics["out_ok"] == 1.0
    assert result.log_path == tmp_path / "logs" / "0001-0.log"


def test_evaluate_step_owns_the_metric(executor: Executor, tmp_path: Path) -> None:
    run = script(tmp_path, "train.py", "print('---'); print('score: 0.0001')\n")
    evaluate = script(tmp_path, "ev.py", "print('---'); print('score: 2.5')\n")
    result = executor.submit(job(tmp_path, run, evaluate=evaluate)).result()
    assert result.status is RunStatus.OK and result.metric == 2.5
    assert (tmp_path / "logs" / "0001-0.evaluate.log").is_file()


def test_failing_check_is_a_crash_and_skips_the_run(executor: Executor, tmp_path: Path) -> None:
    run = script(tmp_path, "r.py", "open('ran', 'w').write('x')\n")
    result = executor.submit(job(tmp_path, run, check="echo lint failed; exit 4")).result()
    assert result.status is RunStatus.CRASH and "check step exited with code 4" in result.reason
    assert "lint failed" in result.log_tail and not (tmp_path / "ran").exists()


def test_a_coloured_pytest_failure_still_names_its_tests(executor: Executor, tmp_path: Path) -> None:
    """A project's addopts had --color=yes: the reason was escape codes, no test named."""
    run = script(tmp_path, "r.py", "print('---'); print('score: 1')\n")
    coloured = script(tmp_path, "check.py", (
        "print('\\x1b[31mFAILED\\x1b[0m tests/test_a.py::\\x1b[1mtest_one\\x1b[0m - assert 1 == 2')\n"
        "print('\\x1b[31m\\x1b[1m1 failed\\x1b[0m, \\x1b[32m9 passed\\x1b[0m in 0.1s')\n"
        "raise SystemExit(1)\n"))  # fmt: skip
    result = executor.submit(job(tmp_path, run, check=coloured)).result()
    assert result.reason == "check step exited with code 1; failing: tests/test_a.py::test_one", result.reason
    plain = script(tmp_path, "c2.py", "print('\\x1b[31m\\x1b[1m3 failed\\x1b[0m in 0.1s'); raise SystemExit(1)\n")
    assert executor.submit(job(tmp_path, run, check=plain)).result().reason.endswith("code 1: 3 failed in 0.1s")


def test_missing_metric_and_nonzero_exit(executor: Executor, tmp_path: Path) -> None:
    silent = executor.submit(job(tmp_path, "echo hello")).result()
    assert silent.status is RunStatus.CRASH and "missing" in silent.reason
    crash = executor.submit(job(tmp_path, f"{PY} -c 'raise ValueError(\"boom\")'")).result()
    assert crash.status is RunStatus.CRASH and "exited with code 1" in crash.reason
    assert "ValueError: boom" in crash.log_tail
    assert crash.reason.endswith("exited with code 1: ValueError: boom")  # the error, not only its code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_timeout_kills_grandchildren_that_ignore_sigterm(
    executor: Executor, tmp_path: Path
) -> None:
    run = script(tmp_path, "hang.py", (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "time.sleep(300)\n"
    ))  # fmt: skip
    start = time.monotonic()
    result = executor.submit(job(tmp_path, run, timeout=1.5)).result()
    assert result.status is RunStatus.TIMEOUT and "hard timeout" in result.reason
    assert time.monotonic() - start < 15
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def test_leftover_background_processes_die_with_the_step(
    executor: Executor, tmp_path: Path
) -> None:
    run = "sleep 120 & echo $! > bg; echo ---; echo score: 1"
    result = executor.submit(job(tmp_path, run)).result()
    assert result.status is RunStatus.OK
    time.sleep(0.2)
    assert not _alive(int((tmp_path / "bg").read_text()))


def test_a_run_that_rewrites_protected_files_is_invalid_and_never_evaluated(
    executor: Executor, tmp_path: Path
) -> None:
    (tmp_path / "harness.py").write_text("print('---'); print('score: 5')\n")
    protected = sha256_files(tmp_path, ["harness.py"])
    run = script(
        tmp_path, "r.py", "open('harness.py', 'w').write(\"print('---'); print('score: 0')\")\n"
    )
    result = executor.submit(
        job(tmp_path, run, evaluate=f"{PY} harness.py", protected=protected)
    ).result()
    assert result.status is RunStatus.INVALID and "harness.py" in result.reason
    assert not (tmp_path / "logs" / "0001-0.evaluate.log").exists()


def test_slots_run_in_parallel(executor: Executor, tmp_path: Path) -> None:
    run = "sleep 1; echo ---; echo score: 1"
    start = time.monotonic()
    futures = [executor.submit(job(tmp_path, run, run_index=i, slot=i)) for i in range(2)]
    assert all(f.result().status is RunStatus.OK for f in futures)
    assert executor.slots() == 2
    assert time.monotonic() - start < 1.9


def test_json_result_counts_only_from_the_evaluate_step(executor: Executor, tmp_path: Path) -> None:
    metric = MetricConfig(name="loss", format="json", path="result.json")
    run = script(
        tmp_path,
        "r.py",
        "import json, os\njson.dump({'loss': 0.0001}, open(os.environ['AUTORESEARCH_OUT'] + '/result.json', 'w'))\n",
    )
    result = executor.submit(job(tmp_path, run, evaluate="true", metric=metric)).result()
    assert result.status is RunStatus.CRASH and "was not written" in result.reason
    honest = script(
        tmp_path,
        "ev.py",
        "import json, os\njson.dump({'loss': 2.5}, open(os.environ['AUTORESEARCH_OUT'] + '/result.json', 'w'))\n",
    )
    assert (
        executor.submit(job(tmp_path, run, evaluate=honest, metric=metric)).result().metric == 2.5
    )


def test_a_link_on_the_json_result_path_is_removed_not_followed(
    executor: Executor, tmp_path: Path
) -> None:
    """The run points ``res`` at a folder of this machine: the run is invalid (a link out of
    AUTORESEARCH_OUT), the file it leads to untouched; one inside it is removed, not followed;
    a link evaluate leaves is not read."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "result.json").write_text('{"loss": 0.0001}')
    metric = MetricConfig(name="loss", format="json", path="res/result.json")
    run = script(tmp_path, "r.py", f"import os\nos.symlink({str(victim)!r}, os.environ['AUTORESEARCH_OUT'] + '/res')\n")
    honest = script(tmp_path, "ev.py", (
        "import json, os\nout = os.environ['AUTORESEARCH_OUT']\n"
        "print('res left:', os.path.lexists(out + '/res'))\n"
        "os.makedirs(out + '/res')\njson.dump({'loss': 2.5}, open(out + '/res/result.json', 'w'))\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, run, evaluate=honest, metric=metric)).result()
    assert result.status is RunStatus.INVALID and "links out of AUTORESEARCH_OUT, or folders too deep to check (res -> " in result.reason
    assert (victim / "result.json").read_text() == '{"loss": 0.0001}'
    inside = script(tmp_path, "r2.py", (
        "import json, os\nout = os.environ['AUTORESEARCH_OUT']\nos.makedirs(out + '/mine')\n"
        "json.dump({'loss': 0.0001}, open(out + '/mine/result.json', 'w'))\nos.symlink('mine', out + '/res')\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, inside, evaluate=honest, metric=metric, out_dir=tmp_path / "o1")).result()
    assert result.status is RunStatus.OK and result.metric == 2.5, result.reason
    linking = script(tmp_path, "ev2.py", f"import os\nos.symlink({str(victim)!r}, os.environ['AUTORESEARCH_OUT'] + '/res')\n")
    result = executor.submit(job(tmp_path, "true", evaluate=linking, metric=metric, out_dir=tmp_path / "o2")).result()
    assert result.status is RunStatus.CRASH and "goes through a link (res)" in result.reason


def test_a_check_that_ran_no_test_is_a_crash(executor: Executor, tmp_path: Path) -> None:
    """unittest (before 3.12) exits 0 when it finds no test: a gate that tests nothing."""
    empty = script(tmp_path, "t.py", "import sys\nsys.stderr.write('\\n' + '-' * 70 + '\\nRan 0 tests in 0.000s\\n\\nOK\\n')\n")
    result = executor.submit(job(tmp_path, "true", check=empty)).result()
    assert result.status is RunStatus.CRASH and "check step ran no test" in result.reason
    some = script(tmp_path, "t2.py", "import sys\nsys.stderr.write('Ran 3 tests in 0.001s\\n\\nOK\\n')\n")
    run = script(tmp_path, "r.py", "print('---'); print('score: 1')\n")
    assert executor.submit(job(tmp_path, run, check=some)).result().status is RunStatus.OK


def test_a_run_made_again_under_its_name_finds_nothing_of_the_killed_one(
    executor: Executor, tmp_path: Path
) -> None:
    """Resume runs a pending experiment again into the same out folder: a checkpoint the killed
    run left must not be what evaluate scores."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_text("from the killed run")
    evaluate = script(tmp_path, "e.py", (
        "import os\nprint('---'); print('score:', len(os.listdir(os.environ['AUTORESEARCH_OUT'])))\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, "true", evaluate=evaluate)).result()
    assert result.status is RunStatus.OK and result.metric == 0.0, result.reason


def test_a_protected_file_made_huge_is_compared_by_size_unread(tmp_path: Path) -> None:
    """A run can truncate a protected file to terabytes of holes: hashing it would take hours."""
    from autoresearch.integrity import HASH_LIMIT

    with (tmp_path / "harness.py").open("wb") as fh:
        fh.truncate(HASH_LIMIT + 1)
    assert sha256_files(tmp_path, ["harness.py"]) == {"harness.py": f"size {HASH_LIMIT + 1}"}


def test_a_process_that_leaves_the_group_dies_with_the_step(
    executor: Executor, tmp_path: Path
) -> None:
    run = script(tmp_path, "escape.py", (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon', 'w').write(str(os.getpid()))\n"
        "        time.sleep(1.5)\n"
        "        print('---'); print('score: -1000', flush=True)\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "print('---'); print('score: 5', flush=True)\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, run)).result()
    assert result.status is RunStatus.OK and result.metric == 5.0
    time.sleep(0.2)
    assert not _alive(int((tmp_path / "daemon").read_text()))


def test_what_the_check_step_left_in_the_out_folder_is_gone_before_evaluate(
    executor: Executor, tmp_path: Path
) -> None:
    """A speed task has no run step: tests that did the benchmark's work ahead must not serve it."""
    check = script(tmp_path, "c.py", (
        "import os\n"
        "out = os.environ['AUTORESEARCH_OUT']\n"
        "open(os.path.join(out, 'precomputed'), 'w').write('42')\n"
        "os.makedirs(os.path.join(out, 'cache', 'deep'))\n"
    ))  # fmt: skip
    evaluate = script(tmp_path, "e.py", (
        "import os\n"
        "print('---'); print('score:', len(os.listdir(os.environ['AUTORESEARCH_OUT'])))\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, "", check=check, evaluate=evaluate)).result()
    assert result.status is RunStatus.OK, result.reason
    assert result.metric == 0.0


MEMORY_HOG = (
    "import os, sys, time\n"
    "mine = b'x' * (120 << 20)  # every page written: resident\n"
    "if os.fork() == 0:  # a child that leaves the group, and one that stays\n"
    "    os.setsid()\n"
    "    theirs = b'y' * (120 << 20)\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "if os.fork() == 0:\n"
    "    theirs = b'z' * (120 << 20)\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "time.sleep(float(sys.argv[1]))\n"
    "print('---'); print('score: 1')\n"
)


def test_a_step_whose_processes_together_pass_the_memory_limit_is_killed(
    executor: Executor, tmp_path: Path
) -> None:
    """Three processes of 120 MB each (one in a session of its own), each under a 300-MB limit:
    together over it, they are killed long before the timeout, and the reason says why."""
    run = script(tmp_path, "hog.py", MEMORY_HOG) + " 60"
    start = time.monotonic()
    result = executor.submit(job(tmp_path, run, timeout=60, max_memory_mb=300)).result()
    assert result.status is RunStatus.CRASH, result.reason
    assert "run step killed: its processes held" in result.reason
    assert "over [task] max_memory_mb = 300" in result.reason
    held = float(result.reason.split("held ")[1].split(" MB")[0])
    assert 300 < held < 2000
    assert time.monotonic() - start < 50
    assert result.steps[0].over_memory_mb is not None and result.steps[0].over_memory_mb > 300


def test_pages_forked_workers_share_count_once(executor: Executor, tmp_path: Path) -> None:
    """200 MB written before forking three idle workers: 800 MB resident in all, 200 MB of RAM."""
    run = script(tmp_path, "workers.py", (
        "import os, time\n"
        "batch = b'x' * (200 << 20)\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(2)\n"
        "        os._exit(0)\n"
        "time.sleep(2)\n"
        "print('---'); print('score: 1')\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, run, max_memory_mb=400)).result()
    assert result.status is RunStatus.OK, result.reason


def test_what_the_memory_limit_counts_it_kills(executor: Executor, tmp_path: Path) -> None:
    """A child in a session of its own without the step's environment, and a grandchild handed
    to init that kept it: both counted, both killed."""
    run = script(tmp_path, "spread.py", (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    code = \"import os, time; open('child', 'w').write(str(os.getpid())); x = b'x' * (200 << 20);"
        " time.sleep(60)\"\n"
        "    os.execve(sys.executable, [sys.executable, '-c', code], {})\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('grandchild', 'w').write(str(os.getpid()))\n"
        "        x = b'y' * (200 << 20)\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    ))  # fmt: skip
    result = executor.submit(job(tmp_path, run, timeout=90, max_memory_mb=300)).result()
    assert result.status is RunStatus.CRASH and "max_memory_mb = 300" in result.reason, result.reason
    time.sleep(0.2)
    for name in ("child", "grandchild"):
        assert not _alive(int((tmp_path / name).read_text())), name


def test_a_step_under_its_memory_limit_is_measured(executor: Executor, tmp_path: Path) -> None:
    run = script(tmp_path, "hog.py", MEMORY_HOG) + " 1"
    result = executor.submit(job(tmp_path, run, max_memory_mb=2000)).result()
    assert result.status is RunStatus.OK and result.metric == 1.0, result.reason
    assert result.steps[0].over_memory_mb is None
