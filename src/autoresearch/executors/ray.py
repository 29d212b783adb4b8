"""The Ray executor: each run is a Ray task on a cluster; its code travels as the commit.

The orchestrator (this process: ledger, git, agents) packs the experiment's commit with
``git archive`` and puts it in the object store. A Ray task on some node unpacks it into a
scratch folder and runs the same steps as the local executor, through the same step code
(process groups, the hard timeout, protected-file hashes, the sandbox where the node has
one). It sends back the ``RunResult``, the step logs and the ``AUTORESEARCH_OUT`` files,
both capped, which land in the job's ``log_dir`` and ``out_dir`` here.

Data git does not track reaches a node in one of two ways (``[ray] data``): ``setup`` runs
the task's setup step once per node, before that node's first run, in a node folder that
outlives the runs; ``shared`` names a folder every node mounts.

Failures are verdicts, not hangs: a worker or node lost mid-run is retried once on another
node, then recorded as a crash, "worker lost"; a task that does not come back in time is
cancelled (``ray.cancel(force=True)``) and a watchdog on its node kills the step's process
group; a cluster that goes away makes ``slots()`` and ``submit()`` raise ``ExecutorError``.
Nothing secret travels: the agents' keys are stripped from the job and the runtime env.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoresearch.config import RayConfig, TaskConfig
from autoresearch.errors import ConfigError, ExecutorError
from autoresearch.executors._base import Executor, Job, RunResult, RunStatus

# The step code every executor shares.
from autoresearch.executors._steps import execute, run_environment
from autoresearch.executors.sandbox import Sandbox
from autoresearch.git import git_argv, remove_tree
from autoresearch.integrity import sha256_files
from autoresearch.process import StepRunner, kill_orphans, without_secrets

SETUP_TIMEOUT = 24 * 3600.0  # the task's setup step on a node (downloads, tokenizers)
MARGIN = 60.0  # seconds past the steps' own hard timeouts before the Ray task is cancelled
POLL = 0.5  # seconds between looks at a task in flight (kill_all, a lost cluster)
ROOM_EVERY = 5.0  # seconds between looks at the cluster's room while a run waits to start
STOPPED = "killed: the session stopped it"
NOT_STARTED = "not started: the session stopped while it waited for a node that can hold it"
CHECK_EVERY = 1.0  # seconds between checks that the cluster's head still answers
LOST_AFTER = 3  # failed checks in a row before the cluster counts as gone
SCRATCH_ENV = "AUTORESEARCH_RAY_SCRATCH"  # a node's scratch folder (default: $TMPDIR/autoresearch-ray)
ARCHIVES_KEPT = 8  # commits whose archives stay in the object store (repeat runs reuse them)
FILE_COST = 256  # bytes a result file counts for besides its contents: its name, its record
LEFT_OUT_SHOWN = 20  # result files over max_out_mb named in the log; the rest counted
# Ray's errors for a task whose worker process or node died under it.
LOST_ERRORS = (
    "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
    "OwnerDiedError", "ObjectReconstructionFailedError",
)  # fmt: skip


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ExecutorError("--executor ray needs Ray: pip install 'autoresearch[ray]'") from exc


# --- what travels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a node needs besides the job: where the task sits in the archive, and its data."""

    task_rel: str  # the task folder inside the repository ('' at the root)
    task_key: str  # names this task's folder on a node
    links: tuple[str, ...]  # the task's `link` paths, relative to the task folder
    data: str  # "setup" | "shared"
    shared: str
    setup: str
    protected_data: tuple[tuple[str, str], ...]  # (task-relative or absolute path, sha256)
    max_log: int  # bytes
    max_out: int  # bytes
    sandbox: str = "auto"  # [task] sandbox, resolved on each node: bwrap where the node has it
    network: bool = False
    env_names: tuple[str, ...] = ()
    holdout: tuple[str, ...] = ()
    readable: tuple[str, ...] = ()  # task-relative globs bound back read-only (links, protected data)
    node_runs: int = 1  # the most runs a node holds at once: their scratch folders share its memory


@dataclass(frozen=True)
class _Started:
    node: str


@dataclass(frozen=True)
class _SetupRecord:
    node: str
    returncode: int | None
    log: bytes


@dataclass(frozen=True)
class _Shipment:
    node: str
    result: RunResult
    logs: Mapping[str, bytes]  # step log file name -> its (capped) bytes
    outs: Mapping[str, bytes]  # AUTORESEARCH_OUT-relative path -> bytes
    left_out: tuple[str, ...]  # out files over [ray] max_out_mb


# --- the node side: one Ray task ------------------------------------------------------------


def _work(plan: _Plan, job: Job, archive: bytes, reference: bytes | None = None,
          setup: bytes | None = None) -> Iterator[object]:  # fmt: skip
    """The Ray task. Yields ``_Started``, the setup record (None: nothing ran), the shipment.

    ``setup`` is the session's baseline commit, whose code the node's setup step runs: it
    runs outside the sandbox, so never in a candidate's files (``archive``)."""
    node = str(_import_ray().get_runtime_context().get_node_id())
    yield _Started(node)
    root = _scratch_root()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{job.name}-", dir=_mkdir(root / "runs")))
    watchdog = _Watchdog(_mkdir(run_dir / "logs"))
    try:
        record = _ensure_setup(plan, job, root, run_dir, setup or archive, node)
        yield record
        if record is not None and record.returncode != 0:
            yield _Shipment(node, _setup_failed(job, record), {}, {}, ())
            return
        result = _run_here(plan, job, root, run_dir, archive, reference)
        yield _ship(plan, node, result, run_dir)
    finally:
        watchdog.done()
        shutil.rmtree(run_dir, ignore_errors=True)


def _scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "autoresearch-ray")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _task_dir(plan: _Plan, root: Path) -> Path:
    """The task folder on this node that holds the untracked data (AUTORESEARCH_TASK_DIR)."""
    if plan.data == "shared":
        return Path(plan.shared)
    return root / "tasks" / plan.task_key / "repo" / plan.task_rel


def _ensure_setup(plan: _Plan, job: Job, root: Path, run_dir: Path, archive: bytes,
                  node: str) -> _SetupRecord | None:  # fmt: skip
    """Run the task's setup step in this node's task folder unless it already succeeded here."""
    if plan.data == "shared" or not plan.setup.strip():
        return None
    home = _mkdir(root / "tasks" / plan.task_key)
    marker, wanted = home / "setup.done", hashlib.sha256(plan.setup.encode()).hexdigest()
    with (home / "setup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # runs on this node wait for one setup
        if marker.is_file() and marker.read_text() == wanted:
            return None
        _unpack(archive, home / "repo")
        task_dir = _task_dir(plan, root)
        env = run_environment(replace(job, env=_node_env(job, task_dir)))
        env.pop("AUTORESEARCH_OUT", None)
        log = run_dir / "logs" / "setup.log"  # the watchdog kills it if this worker dies
        step = StepRunner().step("setup", plan.setup, task_dir, env, log, SETUP_TIMEOUT)
        if step.returncode == 0:
            marker.write_text(wanted)
        return _SetupRecord(node, step.returncode, _capped(log, plan.max_log))


def _setup_failed(job: Job, record: _SetupRecord) -> RunResult:
    reason = f"setup step on node {record.node[:12]} exited with code {record.returncode}"
    text = record.log.decode("utf-8", errors="replace")
    return RunResult(job.experiment_id, job.run_index, job.seed, RunStatus.CRASH, reason=reason,
                     log_tail="\n".join(text.splitlines()[-40:]))  # fmt: skip


def _run_here(plan: _Plan, job: Job, root: Path, run_dir: Path, archive: bytes,
              reference: bytes | None = None) -> RunResult:  # fmt: skip
    """Unpack the commit (and the reference's) into ``run_dir`` and run the job's steps there."""
    repo = run_dir / "repo"
    _unpack(archive, repo)
    reference_commit = ""
    if reference is not None:  # a git checkout too, so evaluate can put it back as it was
        _unpack(reference, run_dir / "reference")
        reference_commit = _commit_here(run_dir / "reference")
    commit = _commit_here(repo)  # evaluate runs on a clean checkout: the step code resets to this
    task_dir = _task_dir(plan, root)
    workdir = repo / plan.task_rel
    _link(plan, task_dir, workdir)
    here = replace(
        job, commit=commit, workdir=workdir, log_dir=run_dir / "logs", out_dir=run_dir / "out", reset_root=repo,
        env=_node_env(job, task_dir), protected_data=_node_data(plan, task_dir),
        reference_root=run_dir / "reference" if reference is not None else None,
        reference_commit=reference_commit,
    )  # fmt: skip
    changed = _changed(here.protected_data)
    if changed:  # before the run: a node whose data differs cannot measure anything
        reason = (f"protected data on this node differs from the orchestrator's: "
                  f"{', '.join(changed)}; prepare it again there")  # fmt: skip
        return RunResult(job.experiment_id, job.run_index, job.seed, RunStatus.CRASH, reason=reason)
    try:  # the same sandbox as a local run, around this node's scratch checkout
        sandbox = Sandbox(task_root=workdir, repo=repo, mode=plan.sandbox, network=plan.network,
                          env=plan.env_names, holdout=plan.holdout, readable=plan.readable,
                          user_checkout=False, hidden=[root / "runs"], slots=plan.node_runs)  # fmt: skip
    except ConfigError as exc:  # sandbox = "bwrap" and this node has no working bwrap
        return RunResult(job.experiment_id, job.run_index, job.seed, RunStatus.CRASH,
                         reason=f"on node {socket.gethostname()}: {exc}")  # fmt: skip
    return execute(here, StepRunner(), sandbox=sandbox)


def _unpack(archive: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(_mkdir(dest), filter="tar")


def _commit_here(repo: Path) -> str:
    """Commit the unpacked tree; its sha is what evaluate resets to on this node."""
    git = [*git_argv(), "-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost",
           "-c", "commit.gpgSign=false"]  # fmt: skip
    for args in (["init", "-q"], ["add", "-A", "-f"],
                 ["commit", "-q", "--no-verify", "--allow-empty", "-m", "run"]):  # fmt: skip
        done = subprocess.run([*git, *args], cwd=repo, capture_output=True)
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip()
            raise ExecutorError(f"cannot make a git checkout of the run in {repo}: {message}")
    head = subprocess.run([*git, "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return head.stdout.strip()


def _link(plan: _Plan, task_dir: Path, workdir: Path) -> None:
    for rel in plan.links:
        source, target = task_dir / rel, workdir / rel
        if source.exists() and not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())


def _node_env(job: Job, task_dir: Path) -> dict[str, str]:
    return {**_without_secrets(job.env), "AUTORESEARCH_TASK_DIR": str(task_dir)}


def _node_data(plan: _Plan, task_dir: Path) -> dict[str, str]:
    return {
        path if Path(path).is_absolute() else str(task_dir / path): digest
        for path, digest in plan.protected_data
    }


def _changed(expected: Mapping[str, str]) -> list[str]:
    now = sha256_files(Path("/"), expected)
    return sorted(p for p, digest in expected.items() if now[p] != digest)


def _ship(plan: _Plan, node: str, result: RunResult, run_dir: Path) -> _Shipment:
    steps = [p for p in sorted((run_dir / "logs").glob("*.log")) if p.name != "setup.log"]
    logs = {p.name: _capped(p, plan.max_log) for p in steps}  # setup's log went with its record
    outs, left_out = _collect(run_dir / "out", plan.max_out)
    return _Shipment(node, result, logs, outs, left_out)


def _capped(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of ``path``, saying so when the start was cut."""
    if not path.is_file():
        return b""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - limit))
        data = fh.read()
    if size <= limit:
        return data
    return f"[autoresearch: the first {size - limit} bytes of this log were left out]\n".encode() + data


def _collect(out: Path, limit: int) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """The run's result files, in path order, until ``limit`` bytes; the names of the rest.

    A file counts its name and ``FILE_COST`` besides its bytes, so that ten thousand empty
    files under long names do not slip under the limit; ``LEFT_OUT_SHOWN`` names at most."""
    files: dict[str, bytes] = {}
    left_out: list[str] = []
    total = more = 0
    for path in sorted(out.rglob("*")) if out.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        size, rel = path.stat().st_size, path.relative_to(out).as_posix()
        cost = size + len(rel.encode()) + FILE_COST
        if total + cost > limit:
            if len(left_out) < LEFT_OUT_SHOWN:
                left_out.append(f"{rel} ({size} bytes)")
            else:
                more += 1
            continue
        files[rel], total = path.read_bytes(), total + cost
    return files, (*left_out, f"{more} more") if more else tuple(left_out)


_WATCH = (
    "import sys\n"
    "from pathlib import Path\n"
    "from {module} import kill_orphans\n"
    "if sys.stdin.buffer.read() != b'done':\n"
    "    kill_orphans(Path(sys.argv[1]))\n"
)


# Started by a short-lived parent (util-linux `setsid --fork`, else this), so the watchdog is no
# child of the worker: Ray kills a dying worker's children (the step's group leader among them)
# but not the rest of the step's group.
_DETACH = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"


class _Watchdog:
    """A process beside the worker: if the worker dies (node lost, ``ray.cancel(force=True)``)
    its end of the pipe closes, and the watchdog kills the process groups of the running steps
    (the step code leaves a ``.pid`` file beside each step's log while it runs)."""

    def __init__(self, logs: Path) -> None:
        code = _WATCH.format(module=kill_orphans.__module__)
        detach = ["setsid", "--fork"] if shutil.which("setsid") else [sys.executable, "-c", _DETACH]
        self._read, self._write = os.pipe()
        subprocess.run([*detach, sys.executable, "-c", code, str(logs)], stdin=self._read,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)  # fmt: skip
        os.close(self._read)

    def done(self) -> None:
        """The steps ended on their own: nothing to kill."""
        with contextlib.suppress(OSError):
            os.write(self._write, b"done")
        os.close(self._write)


def _without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    return without_secrets(env)


# --- the orchestrator side ------------------------------------------------------------------


class _Lost(Exception):
    """The task's worker or node died under it."""

    def __init__(self, node: str, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


class _Stopped(Exception):
    """The run ends here without a result from the node (killed, timed out, cluster gone)."""

    def __init__(self, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class RayExecutor(Executor):
    """Runs jobs as Ray tasks on the cluster at ``address``, ``slots`` at a time.

    ``slots`` defaults to the runs the cluster can hold at once, by ``[ray] cpus_per_run``
    and ``gpus_per_run``. Connects with ``ray.init(address=...)`` unless this process is
    already connected; ``runtime_env`` is passed to it without the agents' keys.
    """

    def __init__(self, config: TaskConfig, *, address: str = "auto", slots: int | None = None,
                 runtime_env: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self._config, self._settings, self._address = config, config.ray, address
        self._lost = ""
        self._ray = _import_ray()
        self._own = _connect(self._ray, address, runtime_env)
        self._slots = self.capacity() if slots is None else slots
        if self._slots < 1:
            why = self._no_room(slots=True)  # asked of the cluster: before letting it go
            self._close_ray()
            raise ExecutorError(why)
        self._task = self._ray.remote(_work)
        self._pool = ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="autoresearch-ray")
        self._lock = threading.Lock()
        self._running: set[Any] = set()  # generators of the tasks in flight
        self._archives: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._killed = self._closed = self._draining = False
        self.setup_nodes: dict[str, int | None] = {}  # node id -> its setup step's exit code
        self._watch = _HeadWatch(self._ray, address, self._lose)

    # --- the Executor interface ---------------------------------------------------------------

    def slots(self) -> int:
        self._check_cluster()
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        self._check_cluster()
        if self._closed:
            raise ExecutorError("the ray executor is closed")
        return self._pool.submit(self._run, job)

    def kill_all(self) -> None:
        """Kill every running task now (a second Ctrl-C); later runs are killed at once too."""
        self._killed = True
        with self._lock:
            running = list(self._running)
        for gen in running:
            self._cancel(gen)

    def cancel_waiting(self) -> None:
        """A first signal: runs still waiting for a node are cancelled (they never started, and
        an autoscaler may take minutes); started runs finish."""
        self._draining = True

    def close(self) -> None:
        self._closed = True
        self.kill_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._watch.stop()
        self._close_ray()

    @property
    def placement(self) -> str:
        """What the session's first lines say: a warning when no live node can hold a run."""
        if self.capacity() > 0:
            return ""
        return (f"warning: {self._no_room()}. A run waits up to {self._settings.start_timeout:g} s "
                "for a node that can hold it (an autoscaler's; [ray] start_timeout), then fails")  # fmt: skip

    def capacity(self) -> int:
        """Runs the cluster's live nodes can hold at once."""
        return sum(_fits(n.get("Resources", {}), self._settings) for n in self._alive_nodes())

    # --- one run ------------------------------------------------------------------------------

    def _run(self, job: Job) -> RunResult:
        plan, archive = self._plan(job), self._archive(job.workdir, job.commit)
        reference = setup = None
        if job.reference_root is not None:
            reference = self._archive(job.reference_root, job.reference_commit or _head(job.reference_root))
        if plan.data == "setup" and plan.setup.strip() and job.setup_commit:
            setup = self._archive(job.workdir, job.setup_commit)
        losses: list[str] = []
        avoid = ""
        for _attempt in range(2):
            try:
                return self._attempt(job, plan, (archive, reference, setup), avoid)
            except _Lost as lost:
                losses.append(lost.why)
                avoid = lost.node
            except _Stopped as stop:
                return _bare(job, stop.status, stop.reason)
        return _bare(job, RunStatus.CRASH, "worker lost: " + "; retried, then ".join(losses))

    def _attempt(self, job: Job, plan: _Plan, archives: tuple[Any, Any, Any], avoid: str) -> RunResult:
        """One try on a node; ``archives``: the commit's, the reference's and the setup's."""
        s = self._settings
        gen = self._task.options(
            num_returns="streaming", num_cpus=s.cpus_per_run, num_gpus=s.gpus_per_run,
            max_retries=0, **self._elsewhere(avoid),
        ).remote(plan, replace(job, env=_without_secrets(job.env)), *archives)  # fmt: skip
        with self._tracked(gen):
            started: _Started = self._next(gen, None, "", room=True)
            record: _SetupRecord | None = self._next(gen, SETUP_TIMEOUT, started.node)
            if record is not None:
                self._record_setup(job, record)
            shipment: _Shipment = self._next(gen, _deadline(job), started.node)
        return _deliver(job, shipment)

    def _next(self, gen: Any, timeout: float | None, node: str, *, room: bool = False) -> Any:
        """The task's next value; raises ``_Lost`` or ``_Stopped`` instead of hanging. ``room``:
        the task has not started, and fails after ``[ray] start_timeout`` without a node to hold it."""
        self._wait(gen, timeout, room=room)
        errors = self._ray.exceptions
        try:
            return self._ray.get(next(gen))
        except errors.TaskCancelledError as exc:
            raise _Stopped(RunStatus.KILLED, self._lost or STOPPED) from exc
        except tuple(getattr(errors, name) for name in LOST_ERRORS) as exc:
            if not self._watch.answers():
                self._lose(f"its head does not answer ({type(exc).__name__})")
                raise _Stopped(RunStatus.KILLED, self._lost) from exc
            raise _Lost(node, f"{type(exc).__name__} on node {node[:12] or '?'}") from exc
        except errors.RayTaskError as exc:
            raise ExecutorError(f"the Ray task failed on node {node[:12] or '?'}: {exc}") from exc
        except StopIteration as exc:
            raise ExecutorError("the Ray task ended without a result") from exc

    def _wait(self, gen: Any, timeout: float | None, *, room: bool = False) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        no_room_since, looked = None, 0.0
        while True:
            if self._killed or self._lost:
                self._cancel(gen)
                raise _Stopped(RunStatus.KILLED, self._lost or STOPPED)
            if room and self._draining:
                self._cancel(gen)
                raise _Stopped(RunStatus.KILLED, NOT_STARTED)
            if room and time.monotonic() - looked >= ROOM_EVERY:  # no node can hold it: not forever
                looked = time.monotonic()
                no_room_since = None if self.capacity() > 0 else no_room_since or looked
                grace = self._settings.start_timeout
                if no_room_since is not None and looked - no_room_since >= grace:
                    self._cancel(gen)
                    raise _Stopped(RunStatus.CRASH, f"not started: {self._no_room()} (waited "
                                   f"{grace:g} s for a node that can hold it: [ray] start_timeout)")  # fmt: skip
            left = POLL if end is None else min(POLL, end - time.monotonic())
            if left <= 0:
                self._cancel(gen)
                raise _Stopped(RunStatus.TIMEOUT, f"the run did not come back within {timeout:g} s "
                               "(its steps' hard timeouts and a margin); its Ray task was cancelled")  # fmt: skip
            try:
                ready, _ = self._ray.wait([gen], timeout=left)
            except ConnectionError as exc:  # a ray:// client whose server went away
                self._lose(str(exc))
                continue
            if ready:
                return

    def _cancel(self, gen: Any) -> None:
        with contextlib.suppress(Exception):  # a task already gone, a cluster already gone
            self._ray.cancel(gen, force=True)

    @contextlib.contextmanager
    def _tracked(self, gen: Any) -> Iterator[None]:
        with self._lock:
            self._running.add(gen)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(gen)

    def _elsewhere(self, avoid: str) -> dict[str, Any]:
        """Ray options that keep a retry off the node that lost the first try, if another fits."""
        if not avoid:
            return {}
        others = [n for n in self._alive_nodes() if n.get("NodeID") != avoid
                  and _fits(n.get("Resources", {}), self._settings) > 0]  # fmt: skip
        return {"label_selector": {"ray.io/node-id": f"!{avoid}"}} if others else {}

    def _record_setup(self, job: Job, record: _SetupRecord) -> None:
        self.setup_nodes[record.node] = record.returncode
        _mkdir(job.log_dir)
        (job.log_dir / f"setup-{record.node[:12]}.log").write_bytes(record.log)

    # --- what is sent -----------------------------------------------------------------------

    def _plan(self, job: Job) -> _Plan:
        s, root = self._settings, self._config.root.resolve()
        _toplevel, task_rel = _repo_of(job.workdir)
        data = tuple((_relative_to(Path(p), root), d) for p, d in job.protected_data.items())
        return _Plan(
            task_rel=task_rel, task_key=_task_key(root), links=self._config.link, data=s.data,
            shared=s.shared, setup=self._config.setup, protected_data=data,
            max_log=int(s.max_log_mb * 2**20), max_out=int(s.max_out_mb * 2**20),
            sandbox=self._config.sandbox, network=self._config.network, env_names=self._config.env,
            holdout=self._config.holdout,
            readable=(*self._config.link, *self._config.protected_data),
            node_runs=max((_fits(n.get("Resources", {}), s) for n in self._alive_nodes()), default=1),
        )  # fmt: skip

    def _archive(self, workdir: Path, commit: str) -> Any:
        """The commit as a tar in the object store (kept for the commit's next runs)."""
        toplevel, _rel = _repo_of(workdir)
        key = (toplevel, commit)
        with self._lock:
            if key in self._archives:
                self._archives.move_to_end(key)
                return self._archives[key]
        ref = self._ray.put(_git_archive(Path(toplevel), commit))
        with self._lock:
            self._archives[key] = ref
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)
        return ref

    # --- the cluster ------------------------------------------------------------------------

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive")]

    def _no_room(self, slots: bool = False) -> str:
        """Why no run can start; ``slots``: say that --slots lets an autoscaler add nodes."""
        s = self._settings
        have = self._ray.cluster_resources()
        return (f"the Ray cluster at {self._address} has no room for a run of {s.cpus_per_run:g} CPU "
                f"and {s.gpus_per_run:g} GPU (it has {have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU); "
                "on a CPU cluster set [ray] gpus_per_run = 0" + (", or pass --slots for nodes an autoscaler "
                "adds" if slots else ""))  # fmt: skip

    def _lose(self, why: str) -> None:
        self._lost = self._lost or (
            f"the Ray cluster at {self._address} went away ({why}); everything is recorded: "
            "carry on with --resume (the same or another --ray-address, or --executor local)"
        )

    def _check_cluster(self) -> None:
        if self._lost:
            raise ExecutorError(self._lost)

    def _close_ray(self) -> None:
        if self._own and not self._lost:
            with contextlib.suppress(Exception):
                self._ray.shutdown()


def _connect(ray: Any, address: str, runtime_env: Mapping[str, Any] | None) -> bool:
    """Connect this process to the cluster; True when this call did (and close() should end it)."""
    if ray.is_initialized():
        return False
    env = dict(runtime_env or {})
    if "env_vars" in env:
        env["env_vars"] = _without_secrets(env["env_vars"])
    try:
        ray.init(address=address, runtime_env=env or None, log_to_driver=False,
                 logging_level="WARNING")  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ExecutorError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    return True


def _fits(resources: Mapping[str, float], s: RayConfig) -> int:
    """How many runs fit on a node with ``resources``."""
    counts = [int(resources.get(name, 0.0) // need)
              for name, need in (("CPU", s.cpus_per_run), ("GPU", s.gpus_per_run)) if need > 0]  # fmt: skip
    return min(counts)


def _deadline(job: Job) -> float:
    steps = sum(1 for command in (job.check, job.run, job.evaluate) if command.strip())
    return steps * job.timeout + MARGIN


def _repo_of(workdir: Path) -> tuple[str, str]:
    """The repository root holding ``workdir``, and ``workdir`` inside it ('' at the root)."""
    done = subprocess.run(["git", "rev-parse", "--show-toplevel", "--show-prefix"], cwd=workdir,
                          capture_output=True, text=True)  # fmt: skip
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise ExecutorError(f"the ray executor sends the job's commit, but {workdir} is not in a "
                            f"git repository: {done.stderr.strip()}")  # fmt: skip
    return lines[0], (lines[1] if len(lines) > 1 else "").rstrip("/")


def _head(checkout: Path) -> str:
    """The commit a checkout (the reference's) is at."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExecutorError(f"cannot read the commit of the reference checkout {checkout}: {done.stderr.strip()}")
    return done.stdout.strip()


def _git_archive(toplevel: Path, commit: str) -> bytes:
    done = subprocess.run(["git", "archive", "--format=tar", commit], cwd=toplevel,
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", errors="replace").strip()
        raise ExecutorError(f"cannot archive commit {commit[:10]} of {toplevel}: {message}")
    return done.stdout


def _task_key(root: Path) -> str:
    """Names this task's folder on every node: the task's name and where it lives here."""
    digest = hashlib.sha256(f"{socket.gethostname()}\0{root}".encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in root.name)[:40]
    return f"{name}-{digest}"


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)  # outside the task folder: the same absolute path on every node


def _deliver(job: Job, shipment: _Shipment) -> RunResult:
    """Write the node's logs and result files where the local executor would have: into an
    emptied out folder, so nothing an earlier run of the same name left there (a link to a
    file of this machine) is written through."""
    if job.out_dir.is_symlink() or job.out_dir.is_file():
        job.out_dir.unlink()
    if job.out_dir.exists():
        remove_tree(job.out_dir)
    log_dir, out_dir = _mkdir(job.log_dir), _mkdir(job.out_dir)
    for name, data in shipment.logs.items():
        (log_dir / Path(name).name).write_bytes(data)
    for rel, data in shipment.outs.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue
        _mkdir((out_dir / rel).parent)
        (out_dir / rel).write_bytes(data)
    result = shipment.result
    steps = tuple(replace(s, log_path=log_dir / s.log_path.name) for s in result.steps)
    log_path = log_dir / result.log_path.name if result.log_path else None
    if shipment.left_out and log_path is not None:
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"\n[autoresearch: result files over [ray] max_out_mb were not sent back from "
                     f"node {shipment.node[:12]} (gone with its scratch folder): "
                     f"{', '.join(shipment.left_out)}]\n")  # fmt: skip
    return replace(result, steps=steps, log_path=log_path)


def _bare(job: Job, status: RunStatus, reason: str) -> RunResult:
    """A result for a run that sent nothing back."""
    return RunResult(job.experiment_id, job.run_index, job.seed, status, reason=reason)


class _HeadWatch:
    """Checks that the cluster's head (its GCS) still answers; calls ``on_lost`` when it stops.

    A Ray driver whose head is gone exits the whole process after a minute; noticing in a few
    seconds lets the session stop with everything recorded. Not used for ray:// clients,
    whose calls raise ``ConnectionError`` themselves.
    """

    def __init__(self, ray: Any, address: str, on_lost: Callable[[str], None]) -> None:
        self._on_lost, self._stop = on_lost, threading.Event()
        self._target = None if address.startswith("ray://") else _gcs_address(ray)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="autoresearch-ray-head")
        if self._target is not None:
            self._thread.start()

    def answers(self) -> bool:
        if self._target is None:
            return True
        try:
            with socket.create_connection(self._target, timeout=2.0):
                return True
        except OSError:
            return False

    def _loop(self) -> None:
        misses = 0
        while not self._stop.wait(CHECK_EVERY):
            misses = 0 if self.answers() else misses + 1
            if misses >= LOST_AFTER:
                self._on_lost(f"its head at {self._target[0]}:{self._target[1]} does not answer")  # type: ignore[index]
                return

    def stop(self) -> None:
        self._stop.set()


def _gcs_address(ray: Any) -> tuple[str, int] | None:
    try:
        host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
        return host, int(port)
    except (AttributeError, ValueError):
        return None


__all__ = ["RayExecutor"]
