"""The Ray executor on a real local cluster: executor contract, sessions, lost workers, resume."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import git, make_repo, write_patch_dir
from test_engine import PATCHES, toy
from test_executor_conformance import (  # the shared executor suite, run here over Ray
    test_a_failing_run_is_a_crash_with_a_reason,  # noqa: F401
    test_a_good_run_reports_its_metric_and_identity,  # noqa: F401
    test_kill_all_ends_a_running_job_as_killed,  # noqa: F401
    test_slots_run_at_once_and_no_more,  # noqa: F401
)

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import MetricConfig, RayConfig, TaskConfig, load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.errors import ConfigError, ExecutorError
from autoresearch.executors import Executor, Job, LocalExecutor, RunStatus
from autoresearch.integrity import sha256_files
from autoresearch.ledger import Ledger
from autoresearch.records import Experiment

ray = pytest.importorskip("ray")

from autoresearch.executors.ray import SCRATCH_ENV, RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow
PY = sys.executable
SRC = Path(__file__).resolve().parents[1] / "src"
CLUSTER_SECRET = "sk-ant-cluster-shell-secret"  # in the environment the cluster was started from
# A test cluster on 127.0.0.1, whatever ~/.ray holds (a token there turns token auth on).
RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


# --- the cluster: one head (4 CPUs) and one worker node (2 CPUs) on 127.0.0.1 ------------------


@dataclass
class Cluster:
    address: str
    base: Path
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]

    def scratch(self, node: str) -> Path:
        return self.base / f"scratch-{node}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_node(base: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "RAY_USAGE_STATS_ENABLED": "0", **RAY_ENV,
           "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0",
           SCRATCH_ENV: str(base / f"scratch-{name}"), "ANTHROPIC_API_KEY": CLUSTER_SECRET}  # fmt: skip
    ray_cli = str(Path(PY).parent / "ray")
    log = (base / f"{name}.log").open("wb")
    return subprocess.Popen([ray_cli, "start", "--block", "--node-ip-address", "127.0.0.1",
                             "--disable-usage-stats", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop_node(proc: subprocess.Popen[bytes]) -> None:
    """Every Ray process of a node shares its `ray start --block` process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue


def _wait_for_nodes(count: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while sum(1 for n in ray.nodes() if n["Alive"]) < count:
        assert time.monotonic() < end, "the test cluster did not come up"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)  # this process and the CLIs it starts
        yield from _cluster()


def _cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="ar-ray-"))  # short: Ray's socket paths have a limit
    port = _free_port()
    head = _start_node(base, "head", ["--head", "--port", str(port), "--num-cpus", "4",
                                      "--temp-dir", str(base / "t"), "--include-dashboard=false"])  # fmt: skip
    worker = None
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_port(port)
        worker = _start_node(base, "worker", ["--address", address, "--num-cpus", "2"])
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        _wait_for_nodes(2)
        yield Cluster(address, base, head, worker)
    finally:
        ray.shutdown()
        for proc in (worker, head):
            if proc is not None:
                _stop_node(proc)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _wait_for_port(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < end, "the Ray head did not start"
            time.sleep(0.2)


def cpu_config(root: Path, sandbox: str = "none", **ray_settings: object) -> TaskConfig:
    """Unsandboxed like the local executor of these tests: they look at the node from outside."""
    settings = RayConfig(**{"gpus_per_run": 0.0, **ray_settings})  # type: ignore[arg-type]
    return TaskConfig(root=root, editable=("x.py",), run="true", ray=settings, sandbox=sandbox)


@pytest.fixture
def ray_executor(cluster: Cluster, tmp_path: Path) -> Iterator[Executor]:
    """A ready Ray executor with two slots (for the shared executor conformance suite)."""
    executor = RayExecutor(cpu_config(tmp_path / "repo"), address=cluster.address, slots=2)
    yield executor
    executor.close()


@pytest.fixture
def make(cluster: Cluster, tmp_path: Path) -> Iterator[object]:
    """Ray executors for the shared conformance suite (imported below)."""
    made: list[Executor] = []

    def build(slots: int) -> Executor:
        made.append(RayExecutor(cpu_config(tmp_path / "task"), address=cluster.address, slots=slots))
        return made[-1]

    yield build
    for executor in made:
        executor.close()


@pytest.fixture(params=["local", "ray"])
def executor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Executor]:
    if request.param == "local":
        local = LocalExecutor(slots=2)
        yield local
        local.close()
    else:
        yield request.getfixturevalue("ray_executor")


# --- [ray] in autoresearch.toml ------------------------------------------------------------------


def _toml(tmp_path: Path, ray_table: str) -> Path:
    (tmp_path / "autoresearch.toml").write_text(
        f'[task]\neditable = ["x.py"]\nrun = "true"\n[metric]\nname = "s"\n[ray]\n{ray_table}'
    )
    return tmp_path


def test_ray_table_defaults_and_values(tmp_path: Path) -> None:
    assert load_config(_toml(tmp_path, "")).ray == RayConfig()
    config = load_config(_toml(tmp_path, 'gpus_per_run = 0.5\ndata = "shared"\nshared = "/mnt/d"\n'))
    assert config.ray.gpus_per_run == 0.5 and config.ray.data == "shared" and config.ray.shared == "/mnt/d"


@pytest.mark.parametrize("table, message", [
    ("gpus = 1", "[ray] unknown key 'gpus'"),
    ('data = "nfs"', "[ray] data: found 'nfs', expected one of 'setup', 'shared'"),
    ('data = "shared"', "[ray] shared: found '', expected with data = 'shared': an absolute path"),
    ('shared = "/mnt/d"', "[ray] data: found 'setup', expected 'shared' when [ray] shared is set"),
    ("gpus_per_run = 0\ncpus_per_run = 0", "[ray] cpus_per_run: found 0.0, expected > 0 when"),
    ("cpus_per_run = -1", "[ray] cpus_per_run: found -1, expected a number >= 0"),
])  # fmt: skip
def test_bad_ray_table_is_a_clear_error(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_toml(tmp_path, table))


# --- jobs: a committed folder of scripts; results observed through files, not the cwd -----------


def job(repo: Path, run: str, **kw: object) -> Job:
    """A job at ``repo``'s HEAD (commit the scripts first)."""
    commit = str(kw.pop("commit")) if "commit" in kw else git(repo, "rev-parse", "HEAD")
    defaults: dict[str, object] = dict(
        experiment_id=1, run_index=0, commit=commit, workdir=repo, run=run,
        metric=MetricConfig(name="score"), log_dir=repo.parent / "logs", out_dir=repo.parent / "out",
        time_budget=5, timeout=10, seed=1234, reset_root=repo,
    )  # fmt: skip
    defaults.update(kw)
    return Job(**defaults)  # type: ignore[arg-type]


def scripts(tmp_path: Path, files: dict[str, str]) -> Path:
    return make_repo(tmp_path / "repo", files)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


# --- the executor contract (local and ray side by side) -----------------------------------------


def test_environment_contract_summary_and_result_files(
    executor: Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-orchestrator")  # the ray nodes have their own
    repo = scripts(tmp_path, {"r.py": (
        "import os\n"
        "out = os.environ['AUTORESEARCH_OUT']\n"
        "open(os.path.join(out, 'note.txt'), 'w').write('hello')\n"
        "print('---')\n"
        "print('score:', float(os.environ['AUTORESEARCH_TIME_BUDGET']) + int(os.environ['AUTORESEARCH_SEED']))\n"
        "print('secret_seen:', int('ANTHROPIC_API_KEY' in os.environ))\n"
    )})  # fmt: skip
    result = executor.submit(job(repo, f"{PY} r.py")).result()
    assert result.status is RunStatus.OK, result.reason
    assert result.metric == 1239.0 and result.metrics["secret_seen"] == 0.0
    assert result.log_path == tmp_path / "logs" / "0001-0.log"
    assert "score: 1239" in result.log_path.read_text()
    assert (tmp_path / "out" / "note.txt").read_text() == "hello"


def test_evaluate_owns_the_metric_and_runs_on_a_clean_checkout(
    executor: Executor, tmp_path: Path
) -> None:
    repo = scripts(tmp_path, {
        "train.py": "open('junk.txt', 'w').write('x'); print('---'); print('score: 0.0001')\n",
        "ev.py": "import os; print('---'); print('score: 2.5'); print('junk:', int(os.path.exists('junk.txt')))\n",
    })  # fmt: skip
    result = executor.submit(job(repo, f"{PY} train.py", evaluate=f"{PY} ev.py")).result()
    assert result.status is RunStatus.OK and result.metric == 2.5 and result.metrics["junk"] == 0
    assert (tmp_path / "logs" / "0001-0.evaluate.log").is_file()


CALC = "import os\nprint('---'); print('score: 1'); print('checksum:', int(os.environ['AUTORESEARCH_SEED']) * {k})\n"


def test_evaluate_reads_the_reference_checkout_for_measure_same(executor: Executor, tmp_path: Path) -> None:
    """[task] reference: evaluate runs the reference's committed code first and holds every run to
    its output (the engine's clean checkout of the baseline; a copy of that commit on a node)."""
    reference = make_repo(tmp_path / "reference", {"calc.py": CALC.format(k=3)})
    (reference / "calc.py").write_text(CALC.format(k=5))  # not committed: the reference is the commit
    same = make_repo(tmp_path / "same", {"calc.py": CALC.format(k=3) + "# reworded\n"})
    other = make_repo(tmp_path / "other", {"calc.py": CALC.format(k=4)})
    evaluate = "autoresearch measure --repeat 1 --warmup 0 --same checksum -- python calc.py"
    ok = executor.submit(job(same, "", evaluate=evaluate, reference_root=reference)).result()
    assert ok.status is RunStatus.OK, (ok.reason, ok.log_tail)
    assert ok.metrics["checksum"] % 3 == 0
    bad = executor.submit(job(other, "", evaluate=evaluate, reference_root=reference)).result()
    assert bad.status is RunStatus.CRASH and "evaluate step exited with code 1" in bad.reason
    assert "the reference printed" in bad.log_tail


def test_failing_check_is_a_crash_and_skips_the_run(executor: Executor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    repo = scripts(tmp_path, {"r.py": f"open({str(marker)!r}, 'w').write('x')\n"})
    result = executor.submit(job(repo, f"{PY} r.py", check="echo lint failed; exit 4")).result()
    assert result.status is RunStatus.CRASH and "check step exited with code 4" in result.reason
    assert "lint failed" in result.log_tail and not marker.exists()


def test_timeout_kills_the_whole_group_on_the_node(executor: Executor, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    repo = scripts(tmp_path, {"hang.py": (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(300)\n"
    )})  # fmt: skip
    start = time.monotonic()
    result = executor.submit(job(repo, f"{PY} hang.py", timeout=1.5)).result()
    assert result.status is RunStatus.TIMEOUT and "hard timeout" in result.reason
    assert time.monotonic() - start < 20
    time.sleep(0.2)
    assert not any(_alive(int(pid)) for pid in pids.read_text().split())


def test_a_run_that_rewrites_protected_files_is_invalid_and_never_evaluated(
    executor: Executor, tmp_path: Path
) -> None:
    repo = scripts(tmp_path, {
        "harness.py": "print('---'); print('score: 5')\n",
        "r.py": "open('harness.py', 'w').write(\"print('---'); print('score: 0')\")\n",
    })  # fmt: skip
    protected = sha256_files(repo, ["harness.py"])
    result = executor.submit(
        job(repo, f"{PY} r.py", evaluate=f"{PY} harness.py", protected=protected)
    ).result()
    assert result.status is RunStatus.INVALID and "harness.py" in result.reason
    assert not (tmp_path / "logs" / "0001-0.evaluate.log").exists()


def test_slots_run_in_parallel(executor: Executor, tmp_path: Path) -> None:
    repo = scripts(tmp_path, {"s.py": (
        "import os, time\n"
        "start = time.time(); time.sleep(1.5)\n"
        "print('---'); print('score: 1'); print('start:', start); print('end:', time.time())\n"
    )})  # fmt: skip
    futures = [executor.submit(job(repo, f"{PY} s.py", run_index=i, slot=i)) for i in range(2)]
    results = [f.result() for f in futures]
    assert all(r.status is RunStatus.OK for r in results) and executor.slots() == 2
    assert max(r.metrics["start"] for r in results) < min(r.metrics["end"] for r in results)


def test_the_code_is_the_commit_not_the_checkout(ray_executor: Executor, tmp_path: Path) -> None:
    repo = scripts(tmp_path, {"r.py": "print('---'); print('score: 1')\n"})
    (repo / "r.py").write_text("print('---'); print('score: 99')\n")  # uncommitted
    (repo / "untracked.py").write_text("x = 1\n")
    run = f"{PY} r.py; test -e untracked.py && echo 'seen: 1' || echo 'seen: 0'"
    result = ray_executor.submit(job(repo, run)).result()
    assert result.status is RunStatus.OK and result.metric == 1.0 and result.metrics["seen"] == 0


def test_a_folder_outside_git_is_a_clear_error(ray_executor: Executor, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="not in a git repository"):
        ray_executor.submit(job(tmp_path, "true", commit="c0ffee")).result()


def test_logs_and_result_files_are_capped(cluster: Cluster, tmp_path: Path) -> None:
    config = cpu_config(tmp_path, max_log_mb=0.01, max_out_mb=0.01)
    executor = RayExecutor(config, address=cluster.address, slots=1)
    repo = scripts(tmp_path, {"r.py": (
        "import os\n"
        "out = os.environ['AUTORESEARCH_OUT']\n"
        "open(os.path.join(out, 'small.txt'), 'w').write('s')\n"
        "open(os.path.join(out, 'zbig.bin'), 'wb').write(b'x' * 50_000)\n"
        "for i in range(5000): print('line', i)\n"
        "print('---'); print('score: 3')\n"
    )})  # fmt: skip
    try:
        result = executor.submit(job(repo, f"{PY} r.py")).result()
    finally:
        executor.close()
    assert result.status is RunStatus.OK and result.metric == 3.0
    log = (tmp_path / "logs" / "0001-0.log").read_text()
    assert "bytes of this log were left out" in log and "line 4999" in log and "line 0\n" not in log
    assert "zbig.bin (50000 bytes)" in log
    assert (tmp_path / "out" / "small.txt").exists() and not (tmp_path / "out" / "zbig.bin").exists()


def test_slots_default_to_what_the_cluster_holds(cluster: Cluster, tmp_path: Path) -> None:
    executor = RayExecutor(cpu_config(tmp_path, cpus_per_run=2), address=cluster.address)
    try:
        assert executor.slots() == 3  # 4 CPUs on the head, 2 on the worker node
        repo = scripts(tmp_path / "r", {"x.py": ""})
        assert executor._plan(job(repo, "true")).node_runs == 2  # the head's: its runs' /tmp share its memory
    finally:
        executor.close()
    with pytest.raises(ExecutorError, match="gpus_per_run = 0"):
        RayExecutor(TaskConfig(root=tmp_path, editable=("x",), run="true"), address=cluster.address)


def test_steps_on_a_node_run_in_the_sandbox(cluster: Cluster, tmp_path: Path) -> None:
    """On a node as here: read-only outside the checkout, no network (unless `network = true`),
    holdout for evaluate only."""
    from autoresearch.executors.sandbox import bwrap_problem

    if bwrap_problem():
        pytest.skip(f"no sandbox here: {bwrap_problem()}")
    outside = tmp_path / "outside.txt"
    port = int(cluster.address.rsplit(":", 1)[1])
    probe = (
        "import os, socket, sys\n"
        "def can(f):\n"
        "    try:\n        f(); return 1\n    except OSError:\n        return 0\n"
        f"write = can(lambda: open({str(outside)!r}, 'w').write('x'))\n"
        "held = can(lambda: open('val.txt').read())\n"
        f"net = can(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2))\n"
        "home = len(os.listdir(os.path.expanduser('~')))\n"
        "print('---'); print('score: 1')\n"
        "print(f'{sys.argv[1]}_write: {write}'); print(f'{sys.argv[1]}_held: {held}')\n"
        "print(f'{sys.argv[1]}_net: {net}'); print(f'{sys.argv[1]}_home: {home}')\n"
    )
    repo = scripts(tmp_path, {"probe.py": probe, "val.txt": "the validation split\n"})
    config = replace(cpu_config(repo, sandbox="auto"), holdout=("val.txt",))
    executor = RayExecutor(config, address=cluster.address, slots=1)
    try:
        run = executor.submit(job(repo, f"{PY} probe.py run")).result()
        evaluate = executor.submit(job(repo, "true", evaluate=f"{PY} probe.py evaluate")).result()
    finally:
        executor.close()
    assert run.status is RunStatus.OK and evaluate.status is RunStatus.OK, (run.reason, evaluate.reason)
    assert run.metrics["run_write"] == 0 and not outside.exists()  # read-only outside its checkout
    assert run.metrics["run_held"] == 0 and evaluate.metrics["evaluate_held"] == 1
    assert run.metrics["run_net"] == 0 and run.metrics["run_home"] == 0
    # `network = true` travels to the node: the same step there reaches the network
    executor = RayExecutor(replace(config, network=True), address=cluster.address, slots=1)
    try:
        online = executor.submit(job(repo, f"{PY} probe.py run")).result()
    finally:
        executor.close()
    assert online.status is RunStatus.OK and online.metrics["run_net"] == 1, online.reason
    assert online.metrics["run_write"] == 0 and online.metrics["run_held"] == 0  # the rest stays shut


def test_kill_all_cancels_the_task_and_kills_its_steps(ray_executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    repo = scripts(tmp_path, {"r.sh": f"echo $$ > {pidfile}; sleep 300\n"})
    future = ray_executor.submit(job(repo, "sh r.sh", timeout=100))
    _wait_for_file(pidfile)
    ray_executor.kill_all()  # type: ignore[attr-defined]
    result = future.result(timeout=30)
    assert result.status is RunStatus.KILLED
    _wait_until(lambda: not _alive(int(pidfile.read_text())), "the step survived ray.cancel")


def _wait_for_file(path: Path, timeout: float = 30) -> None:
    _wait_until(lambda: path.exists() and path.read_text().strip() != "", f"{path} never appeared", timeout)


def _wait_until(check: object, message: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, message
        time.sleep(0.1)


# --- lost workers -------------------------------------------------------------------------------


def _kill_worker_test_repo(tmp_path: Path, *, finish_on_retry: bool) -> tuple[Path, Path]:
    """A run that logs its Ray worker's pid and folder, then sleeps (or finishes, on a retry)."""
    seen = tmp_path / "workers"
    worker = "W=$(awk '{print $4}' /proc/$PPID/stat)\n"  # the step shell's parent's parent
    retry = f"[ -s {seen} ] && {{ echo \"$W $PWD\" >> {seen}; echo ---; echo score: 7; exit 0; }}\n"
    run = worker + (retry if finish_on_retry else "") + f'echo "$W $PWD" >> {seen}; sleep 300\n'
    return scripts(tmp_path, {"r.sh": run}), seen


def _kill_next_worker(seen: Path, count: int) -> list[str]:
    _wait_until(lambda: seen.exists() and len(seen.read_text().splitlines()) >= count,
                f"attempt {count} never started", timeout=60)  # fmt: skip
    line = seen.read_text().splitlines()[count - 1]
    os.kill(int(line.split()[0]), signal.SIGKILL)
    return line.split()


def test_a_worker_lost_mid_run_is_retried_on_another_node(
    ray_executor: Executor, cluster: Cluster, tmp_path: Path
) -> None:
    repo, seen = _kill_worker_test_repo(tmp_path, finish_on_retry=True)
    future = ray_executor.submit(job(repo, "sh r.sh", timeout=100))
    _pid, first_dir = _kill_next_worker(seen, 1)
    result = future.result(timeout=60)
    assert result.status is RunStatus.OK and result.metric == 7.0, result.reason
    second_dir = seen.read_text().splitlines()[1].split()[1]
    node_of = lambda d: "head" if d.startswith(str(cluster.scratch("head"))) else "worker"  # noqa: E731
    assert node_of(first_dir) != node_of(second_dir)


def test_a_worker_lost_twice_is_a_crash_worker_lost(
    ray_executor: Executor, cluster: Cluster, tmp_path: Path
) -> None:
    repo, seen = _kill_worker_test_repo(tmp_path, finish_on_retry=False)
    future = ray_executor.submit(job(repo, "sh r.sh", timeout=100))
    _kill_next_worker(seen, 1)
    _kill_next_worker(seen, 2)
    result = future.result(timeout=60)
    assert result.status is RunStatus.CRASH and "worker lost" in result.reason
    assert "WorkerCrashedError" in result.reason
    time.sleep(0.5)
    assert _survivors(cluster) == []


def _survivors(cluster: Cluster) -> list[str]:
    """Processes left running in a run folder on a node (steps that outlived their run)."""
    scratch = [str(cluster.scratch(node)) for node in ("head", "worker")]
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(entry / "cwd")
            if any(cwd.startswith(s) for s in scratch) and _alive(int(entry.name)):
                found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()!r}")
        except OSError:
            continue
    return found


# --- data git does not track ---------------------------------------------------------------------

PREP = """\
import os, pathlib, sys
pathlib.Path('data').mkdir(exist_ok=True)
pathlib.Path('data/offset.txt').write_text('4')
with open(sys.argv[1], 'a') as fh:
    fh.write(os.getcwd() + '\\n')
"""
READ = "print('---'); print('score:', int(open('data/offset.txt').read()) + 1)\n"


def test_setup_runs_once_per_node_before_its_first_run(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "setups"
    repo = scripts(tmp_path, {"prep.py": PREP, "read.py": READ})
    config = replace(cpu_config(repo), setup=f"{PY} prep.py {log}", link=("data",))
    executor = RayExecutor(config, address=cluster.address, slots=6)
    try:
        futures = [executor.submit(job(repo, f"sleep 0.5; {PY} read.py", run_index=i)) for i in range(6)]
        results = [f.result() for f in futures]
    finally:
        executor.close()
    assert [r.metric for r in results] == [5.0] * 6, [r.reason for r in results]
    setups = log.read_text().splitlines()
    assert len(setups) == len(set(setups)) == len(executor.setup_nodes) == 2  # both nodes ran some
    assert sorted(p.name for p in (tmp_path / "logs").glob("setup-*.log")) == sorted(
        f"setup-{n[:12]}.log" for n in executor.setup_nodes
    )
    assert not (repo / "data").exists()  # the orchestrator's checkout is not where data came from
    assert not (tmp_path / "logs" / "setup.log").exists()  # the session's own setup log is apart


def test_a_nodes_setup_runs_the_baseline_code_never_a_candidates(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Setup runs outside the sandbox: the first run to reach a node may be a candidate's,
    whose copy of the code setup imports could do anything there. It runs the baseline's."""
    log = tmp_path / "setups"
    repo = scripts(tmp_path, {"prep.py": PREP, "read.py": READ})
    base = git(repo, "rev-parse", "HEAD")
    (repo / "prep.py").write_text(PREP.replace("write_text('4')", "write_text('0')"))
    git(repo, "commit", "-qam", "a candidate that changes what setup runs")
    config = replace(cpu_config(repo), setup=f"{PY} prep.py {log}", link=("data",))
    executor = RayExecutor(config, address=cluster.address, slots=1)
    try:
        result = executor.submit(job(repo, f"{PY} read.py", setup_commit=base)).result()
    finally:
        executor.close()
    assert result.status is RunStatus.OK and result.metric == 5.0, result.reason  # '4' + 1


def test_result_files_count_their_names_and_a_rerun_writes_through_no_link(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Many empty files under long names are held to max_out_mb too; and a link a killed
    local run left in the out folder is not written through when the run is made again."""
    victim = tmp_path / "victim"
    victim.write_text("mine")
    flood = "import os\nout = os.environ['AUTORESEARCH_OUT']\nfor i in range(3000):\n    open(os.path.join(out, 'f' * 200 + str(i)), 'w').close()\nopen(os.path.join(out, 'a_result.txt'), 'w').write('node')\nprint('---'); print('score: 1')\n"
    repo = scripts(tmp_path, {"flood.py": flood})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_result.txt").symlink_to(victim)
    executor = RayExecutor(cpu_config(repo, max_out_mb=0.1), address=cluster.address, slots=1)
    try:
        result = executor.submit(job(repo, f"{PY} flood.py", out_dir=out)).result()
    finally:
        executor.close()
    assert result.status is RunStatus.OK, result.reason
    assert victim.read_text() == "mine" and (out / "a_result.txt").read_text() == "node"
    assert len(list(out.iterdir())) < 400  # 0.1 MB at 256 + 204 bytes a file
    log = (tmp_path / "logs" / "0001-0.log").read_text()
    assert "were not sent back" in log and " more" in log


def test_shared_data_and_protected_data_checked_on_the_node(cluster: Cluster, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "offset.txt").write_text("4")
    repo = scripts(tmp_path, {"read.py": READ})
    config = replace(cpu_config(repo, data="shared", shared=str(shared)), link=("data",))
    executor = RayExecutor(config, address=cluster.address, slots=1)
    digest = sha256_files(Path("/"), [str(repo / "data" / "offset.txt")])  # '' : not here
    good = {str(repo / "data" / "offset.txt"): sha256_files(shared, ["data/offset.txt"])["data/offset.txt"]}
    try:
        ok = executor.submit(job(repo, f"{PY} read.py", protected_data=good)).result()
        bad = executor.submit(job(repo, f"{PY} read.py", protected_data=digest)).result()
    finally:
        executor.close()
    assert ok.status is RunStatus.OK and ok.metric == 5.0, ok.reason
    assert bad.status is RunStatus.CRASH and "differs from the orchestrator's" in bad.reason


# --- sessions through the engine and the CLI ------------------------------------------------------

RAY_TOML = "\n[ray]\ngpus_per_run = 0\n"


def test_a_replay_session_through_ray_records_every_outcome(cluster: Cluster, tmp_path: Path) -> None:
    repo = toy(tmp_path, timeout=2, extra=RAY_TOML)
    names = ["01-improve", "02-worse", "03-crash", "04-hang", "06-tamper", "08-improve-again"]
    patches = write_patch_dir(tmp_path / "patches", {n: PATCHES[n] for n in names})
    config = load_config(repo)
    executor = RayExecutor(config, address=cluster.address, slots=2)
    try:
        engine = Engine(config, ReplayAgent(patches), options=SessionOptions(tag="t"), executor=executor)
        engine.run()
    finally:
        executor.close()
    rows = engine.ledger.experiments(engine.session)
    verdicts = sorted((r.description, r.verdict) for r in rows)
    assert verdicts == sorted([
        ("baseline", "baseline"), ("X 1 -> 2", "keep"), ("Y 2 -> 6", "discard"), ("crash", "crash"),
        ("hang", "timeout"), ("rewrite the harness at run time", "invalid"), ("Y 2 -> 0", "keep"),
    ]), verdicts  # fmt: skip
    by_name = {r.description: r for r in rows}
    assert "hard timeout" in by_name["hang"].reason
    assert "changed protected files: score.py" in by_name["rewrite the harness at run time"].reason
    assert git(repo, "rev-parse", "autoresearch/t") == max(
        (r for r in rows if r.verdict == "keep"), key=lambda r: -(r.metric or 0)
    ).commit
    assert (repo / ".autoresearch" / "logs" / "t" / f"{by_name['crash'].id:04d}-0.log").is_file()
    time.sleep(0.5)
    assert _survivors(cluster) == []
    assert git(repo, "status", "--porcelain") == ""


def cli_run(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "autoresearch", "-C", str(repo), "run", "--tag", "t",
                             "--agent", "replay", *args], env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def ledger_rows(repo: Path) -> list[Experiment]:
    ledger = Ledger(repo / ".autoresearch" / "ledger.db")
    try:
        return ledger.experiments(ledger.session("t"))
    finally:
        ledger.close()


def test_resume_after_the_orchestrator_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    started = tmp_path / "started"
    params = f"X = 1.0\nY = 2.0\nimport time\nopen({str(started)!r}, 'a').write('x')\ntime.sleep(1.5)\n"
    repo = toy(tmp_path, timeout=20, extra=RAY_TOML, files={"params.py": params},
               task='sandbox = "none"')  # the runs mark a file outside their checkout  # fmt: skip
    patches = write_patch_dir(tmp_path / "p", {f"{i:02d}": PATCHES["01-improve"].replace(
        "X = 2.0", f"X = 2.0 + {i} / 100") for i in range(3)})  # fmt: skip
    flags = ["--patches", str(patches), "--executor", "ray", "--ray-address", cluster.address,
             "--slots", "1"]  # fmt: skip
    first = cli_run(repo, *flags)
    _wait_until(lambda: started.exists() and len(started.read_text()) >= 2, "no second run", 90)
    first.kill()
    first.wait()
    time.sleep(1.0)  # Ray ends the dead driver's tasks; the watchdog their steps
    assert _survivors(cluster) == []
    second = cli_run(repo, "--resume", *flags)
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    rows = ledger_rows(repo)
    assert [r.verdict for r in rows].count("baseline") == 1
    assert sorted(r.description for r in rows if r.agent == "replay") == ["X 1 -> 2"] * 3
    assert all(r.verdict != "pending" for r in rows)


def test_a_cluster_that_goes_away_stops_the_session_and_resume_carries_on_locally(
    cluster: Cluster, tmp_path: Path
) -> None:
    base = Path(tempfile.mkdtemp(prefix="ar-ray2-"))
    port = _free_port()
    head = _start_node(base, "head", ["--head", "--port", str(port), "--num-cpus", "1",
                                      "--temp-dir", str(base / "t"), "--include-dashboard=false"])  # fmt: skip
    try:
        _wait_for_port(port)
        started = tmp_path / "started"
        params = f"X = 1.0\nY = 2.0\nimport time\nopen({str(started)!r}, 'a').write('x')\ntime.sleep(6)\n"
        repo = toy(tmp_path, timeout=30, extra=RAY_TOML, files={"params.py": params},
                   task='sandbox = "none"')  # the runs mark a file outside their checkout  # fmt: skip
        patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"],
                                                    "02": PATCHES["08-improve-again"]})  # fmt: skip
        flags = ["--patches", str(patches)]
        first = cli_run(repo, *flags, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
        _wait_until(lambda: started.exists() and len(started.read_text()) >= 2, "no second run", 90)
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster, mid-run
        _out, err = first.communicate(timeout=50)
    finally:
        _stop_node(head)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert first.returncode == 1 and "went away" in err and "--resume" in err, (_out, err)
    second = cli_run(repo, "--resume", *flags, "--executor", "local")
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    rows = ledger_rows(repo)
    assert [(r.description, r.verdict) for r in rows] == [
        ("baseline", "baseline"), ("X 1 -> 2", "interrupted"), ("Y 2 -> 0", "keep"),
    ]  # fmt: skip
    assert "went away" in rows[1].reason


def test_a_task_past_its_deadline_is_cancelled_and_its_steps_killed(
    ray_executor: Executor, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoresearch.executors.ray as ray_module

    monkeypatch.setattr(ray_module, "_deadline", lambda job: 3.0)  # well inside the step's 100 s
    repo = scripts(tmp_path, {"r.sh": "sleep 300\n"})
    result = ray_executor.submit(job(repo, "sh r.sh", timeout=100)).result(timeout=60)
    assert result.status is RunStatus.TIMEOUT and "its Ray task was cancelled" in result.reason
    _wait_until(lambda: _survivors(cluster) == [], "the step outlived its cancelled task")


def test_a_run_no_node_can_hold_fails_instead_of_waiting_for_ever(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU run on a CPU cluster with --slots given: it waited for ever, and a first signal
    waited with it. The session's first lines warn; the run fails after the grace period."""
    from autoresearch.executors import ray as ray_executor

    monkeypatch.setattr(ray_executor, "ROOM_EVERY", 0.2)
    repo = scripts(tmp_path, {"x.py": ""})
    config = TaskConfig(root=repo, editable=("x.py",), run="true", sandbox="none",
                        ray=RayConfig(start_timeout=2.0))  # gpus_per_run = 1  # fmt: skip
    executor = RayExecutor(config, address=cluster.address, slots=1)
    try:
        assert executor.placement.startswith("warning: the Ray cluster at ")
        assert "waits up to 2 s for a node that can hold it" in executor.placement
        result = executor.submit(job(repo, "true")).result(timeout=120)
    finally:
        executor.close()
    assert result.status is RunStatus.CRASH
    assert result.reason.startswith("not started: the Ray cluster at ") and "gpus_per_run = 0" in result.reason
    assert "[ray] start_timeout" in result.reason
    assert RayExecutor(cpu_config(tmp_path / "cpu"), address=cluster.address, slots=1).placement == ""


def test_a_first_signal_cancels_a_run_still_waiting_for_a_node(cluster: Cluster, tmp_path: Path) -> None:
    """Ctrl-C lets started runs finish; one that never reached a node (a GPU run on this CPU
    cluster, --slots given) waited out ``[ray] start_timeout``, 10 minutes by default, first."""
    repo = toy(tmp_path)  # no [ray] table: a run asks for a GPU
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    proc = cli_run(repo, "--patches", str(patches), "--executor", "ray", "--ray-address", cluster.address,
                   "--slots", "1")  # fmt: skip
    assert proc.stderr is not None
    while "baseline: " not in (line := proc.stderr.readline()):
        assert line, proc.communicate(timeout=60)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    [baseline] = ledger_rows(repo)
    assert baseline.verdict == "interrupted" and "not started: the session stopped" in baseline.reason


def test_a_cluster_with_no_room_is_one_clear_error_from_the_command_line(cluster: Cluster, tmp_path: Path) -> None:
    """No [ray] table on a CPU cluster: the default run asks for a GPU (it was an AttributeError
    from the executor's own cleanup)."""
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    proc = cli_run(repo, "--patches", str(patches), "--executor", "ray", "--ray-address", cluster.address)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert "has no room for a run of 1 CPU and 1 GPU" in err and "gpus_per_run = 0" in err
