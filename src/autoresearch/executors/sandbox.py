"""The sandbox: every step (check, run, evaluate) in bubblewrap, seeing its worktree and little else.

Inside, the file system is read-only except the slot's worktree, ``AUTORESEARCH_OUT`` and a
private ``/tmp``. The user's checkout (its ``.git`` and ``.autoresearch/`` with the ledger,
logs, locks and other runs), ``$HOME``, ``/run`` and apt's package archives are empty; the Python environment, the
prepared data (``.autoresearch/data``), the task's ``link`` targets and ``protected_data``
are bound back read-only. The worktree's own ``.git`` is unreadable, so git inside a step
fails: the run cannot commit, move the session branch or plant hooks. There is no network
unless ``[task] network = true``, a new PID and IPC namespace (the step's death kills
everything it started), no capabilities, the kernel's settings read-only (``/proc/sys``:
as root, a core pattern would start a program outside the sandbox), a seccomp filter (no
kernel keyrings: root's keys are the host's; no io_uring, whose kernel threads leave a slot's
CPUs; posix_fadvise and madvise's page-outs do nothing), fresh copies of ``/dev``'s nodes per step where the session
runs as root (``device_copies``), and an allowlisted environment (never the agents' keys). The folders a step
may write are its worktree (not in ``evaluate``), ``AUTORESEARCH_OUT``, ``/tmp``, ``/dev/shm``
and ``/dev/mqueue``; everything else is read-only, the emptied folders and ``/dev`` too.
Inside, ``AUTORESEARCH_SANDBOX=bwrap`` says so (``autoresearch measure`` then empties those
scratch folders between its runs).
``[task] holdout`` files are visible to ``evaluate`` only; ``check`` and ``run`` get
"Permission denied" when they open them.

``confined`` is the agents' lighter cell: their CLI writes only its checkout and state, in a
PID namespace of its own, without capabilities and without a session of its own.

Without bubblewrap (``sandbox = "none"``, or ``auto`` where it does not work) the same
``Sandbox`` object is a tripwire only: :meth:`Sandbox.changes` reports a changed Python
environment, ``.git`` admin files or user checkout after a step, which the executor turns
into an ``invalid`` run.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import hashlib
import os
import platform
import shutil
import site
import stat
import struct
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoresearch.config import SANDBOXES, TaskConfig
from autoresearch.edits import task_paths
from autoresearch.errors import ConfigError, WorkspaceError
from autoresearch.git import Git, git_fingerprint
from autoresearch.process import AGENT_KEYS, DEVICE_NODES, MARKER, SANDBOXED

MODES = SANDBOXES
DATA_DIR = ".autoresearch/data"  # prepared data shared by every worktree (read-only inside)
HOME_INSIDE = "/tmp/home"  # $HOME of a step: in its private /tmp
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")
ENV_NAMES = (
    "PATH", "LANG", "LANGUAGE", "TERM", "TZ", "LD_LIBRARY_PATH", "PYTHONUNBUFFERED",
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS",
)  # fmt: skip
ENV_PREFIXES = ("AUTORESEARCH_", "LC_")
# Downloaded packages: copies of public text a task may hold out (one machine's apt cache held
# the King James Bible, the GPT template's default data, as a .deb). No step needs them.
PACKAGE_ARCHIVES = ("/var/cache/apt/archives",)
PROBE_TIMEOUT = 10.0
SECCOMP_FD = 9  # the filter reaches bwrap on this descriptor (see :meth:`Sandbox.prefix`)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox steps here, or None when it can (probed once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    probe = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
             "--unshare-net", "--die-with-parent", "--cap-drop", "ALL", "true"]  # fmt: skip
    try:
        done = subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not start: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return f"bwrap fails here: {said[-1] if said else f'exit {done.returncode}'}"
    return None


def resolve_mode(mode: str) -> tuple[str, str]:
    """The mode steps run in (``bwrap`` or ``none``) and the warning to show ('' when sandboxed)."""
    if mode not in MODES:
        raise ConfigError(f"[task] sandbox: found {mode!r}, expected one of {', '.join(MODES)}")
    if mode == "none":
        return "none", (
            'WARNING: [task] sandbox = "none": steps run unsandboxed, as you; the run can read '
            "your files and API keys of this machine's processes and reach the network. "
            "Tampering with git, the Python environment or your checkout is only detected."
        )
    problem = bwrap_problem()
    if problem is None:
        return "bwrap", ""
    if mode == "bwrap":
        raise ConfigError(f'[task] sandbox = "bwrap", but {problem}')
    return "none", (
        f"WARNING: steps run UNSANDBOXED: {problem}. The run can read your files, other "
        "processes' environments and the network; tampering is only detected. Install "
        'bubblewrap, or set [task] sandbox = "none" to silence this warning.'
    )


def python_roots() -> tuple[Path, ...]:
    """The folders of the Python environment steps run on (the venv and its base installation).

    The user site (``~/.local``) counts too where this interpreter reads it, and the folder
    autoresearch is imported from (``src/`` of an editable install).
    """
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    roots.add(Path(sys.executable).resolve().parent.parent)
    # where autoresearch itself is imported from: an editable install's source folder (under
    # /tmp in a CI clone, say) lies outside the venv; steps run `autoresearch measure`
    roots.add(Path(__file__).resolve().parents[2])
    if site.ENABLE_USER_SITE and site.USER_BASE:
        roots.add(Path(site.USER_BASE))
    return tuple(sorted(p.resolve() for p in roots if p.is_dir()))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# Calls a filter can refuse, by machine: for the 64-bit ABI and the 32-bit one its processes
# can also call, the audit arch seccomp sees and the calls' numbers.
_URING = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}  # one number everywhere
_UNIFIED = {**_URING, "process_madvise": 440}  # from 424 on, every ABI numbers its calls alike
_CALLS = {
    "x86_64": ((0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "setsid": 112,
                             "sched_setaffinity": 203, "fadvise64": 221, "fadvise64_64": 221, "madvise": 28, **_UNIFIED}),
               (0x40000003, {"add_key": 286, "request_key": 287, "keyctl": 288, "setsid": 66,
                             "sched_setaffinity": 241, "fadvise64": 250, "fadvise64_64": 272, "madvise": 219, **_UNIFIED})),
    "aarch64": ((0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "setsid": 157,
                              "sched_setaffinity": 122, "fadvise64": 223, "fadvise64_64": 223, "madvise": 233, **_UNIFIED}),
                (0x40000028, {"add_key": 309, "request_key": 310, "keyctl": 311, "setsid": 66,
                              "sched_setaffinity": 241, "fadvise64": 270, "fadvise64_64": 270, "madvise": 220, **_UNIFIED})),
}  # fmt: skip
KEYRING_CALLS = {"add_key": 1, "request_key": 1, "keyctl": 1}  # EPERM
# io_uring's kernel threads (a submission queue polled on a CPU of the caller's choice, async
# workers) run where the task's own CPUs do not bind them: one from a slot pinned to CPU 1 ran
# on CPU 0 and halved the other slot's speed. ENOSYS, as on a kernel without it: what uses it
# falls back to plain calls.
URING_CALLS = dict.fromkeys(_URING, 38)  # ENOSYS


@dataclass(frozen=True)
class WhenArg:
    """A call that returns ``errno`` only when its argument number ``arg`` (its low 32 bits) is
    one of ``values``; else it runs."""

    errno: int
    arg: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.values:  # the program's last test jumps on to allow: there must be one
            raise ValueError("WhenArg needs at least one value")


# posix_fadvise(POSIX_FADV_DONTNEED) and madvise(MADV_COLD, MADV_PAGEOUT) on a mapped file drop
# pages from the page cache every slot shares, read-only files included: a run evicted the
# other slot's Python environment and slowed its imports. Advice may be ignored: they do
# nothing and return 0 (madvise's other advice runs: allocators need it).
ADVICE_CALLS: dict[str, int | WhenArg] = {
    "fadvise64": 0, "fadvise64_64": 0, "madvise": WhenArg(0, 2, (20, 21)),
    "process_madvise": WhenArg(0, 3, (20, 21)),  # the same advice, on a process's own pidfd
}  # fmt: skip
STEP_CALLS: dict[str, int | WhenArg] = {**KEYRING_CALLS, **URING_CALLS, **ADVICE_CALLS}
# A step on its slot's CPUs (``Job.cpus``) keeps them: setting its CPUs does nothing and returns
# 0 (a run that spread onto the other slots' cores would be timed on more than its share).
PINNED_CALLS = {**STEP_CALLS, "sched_setaffinity": 0}
# An agent's CLI: its processes stay in its session, so in the kernel's autogroup that runs at
# nice 19 (a process in a session of its own would compete with the runs as an equal, whatever
# its nice). setsid does nothing and returns 0, so that what calls it still works.
AGENT_CALLS = {**STEP_CALLS, "setsid": 0}


def keyring_filter(machine: str | None = None) -> bytes | None:
    """The steps' seccomp program: the keyring calls fail with EPERM, io_uring's with ENOSYS,
    all else runs.

    Kernel keyrings are per user, not per namespace: without this, a step (root in a
    container) could read the host's keys or keep a cache between runs.
    """
    return seccomp_filter(STEP_CALLS, machine)


def seccomp_filter(errnos: Mapping[str, int | WhenArg], machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program: each call named in ``errnos`` returns that errno without
    running (0: it does nothing and returns 0), or does so only for the arguments a ``WhenArg``
    names; all else runs. ``None`` for a machine not in the table (the command then runs
    without a filter)."""
    abis = _CALLS.get(machine or platform.machine())
    if abis is None:
        return None
    ld, jeq, and_, ret = 0x20, 0x15, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_ALU|AND|K, BPF_RET|K
    ops: list[tuple[int, int | str, int | str, int]] = [(ld, 0, 0, 4)]  # A = seccomp_data.arch
    at: dict[str, int] = {}
    for n, (arch, numbers) in enumerate(abis):
        calls = [(numbers[name], f"errno {rule}" if isinstance(rule, int) else f"{name} on {arch}")
                 for name, rule in errnos.items()]  # fmt: skip
        end: int | str = len(ops) + 3 + len(calls) if n < len(abis) - 1 else "allow"  # the next ABI's test
        ops += [(jeq, len(ops) + 1, end, arch), (ld, 0, 0, 0), (and_, 0, 0, 0xBFFFFFFF)]  # A = nr, x32 bit off
        ops += [(jeq, label, "allow" if i == len(calls) - 1 else len(ops) + i + 1, nr)
                for i, (nr, label) in enumerate(calls)]  # fmt: skip
    for arch, _numbers in abis:  # A = the argument's low word (little-endian), tested against each value
        for name, rule in errnos.items():
            if isinstance(rule, WhenArg):  # before the returns: a jump only goes forward
                at[f"{name} on {arch}"] = len(ops)
                ops.append((ld, 0, 0, 16 + 8 * rule.arg))
                ops += [(jeq, f"errno {rule.errno}", "allow" if i == len(rule.values) - 1 else len(ops) + i + 1, value)
                        for i, value in enumerate(rule.values)]  # fmt: skip
    at["allow"] = len(ops)
    ops.append((ret, 0, 0, 0x7FFF0000))  # ALLOW
    for errno in sorted({rule if isinstance(rule, int) else rule.errno for rule in errnos.values()}):
        at[f"errno {errno}"] = len(ops)
        ops.append((ret, 0, 0, 0x00050000 | errno))  # ERRNO
    program = b""
    for pc, (code, jt, jf, k) in enumerate(ops):
        # jt and jf are where to go (an index or a label; 0 on a non-jump), written as offsets
        offsets = [0 if code != jeq else (at[t] if isinstance(t, str) else t) - pc - 1 for t in (jt, jf)]
        program += struct.pack("=HBBI", code, *offsets, k)
    return program


@functools.cache
def _filter_file(errnos: tuple[tuple[str, int | WhenArg], ...]) -> str | None:
    program = seccomp_filter(dict(errnos))
    if program is None:
        return None
    fd, path = tempfile.mkstemp(prefix="autoresearch-seccomp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(program)
    return path


def _with_filter(argv: list[str], errnos: Mapping[str, int | WhenArg]) -> list[str]:
    """``argv`` (bwrap's) with the seccomp program for ``errnos``: ``/bin/sh`` opens the
    program's file on descriptor 9 for bwrap and execs it. ``argv`` as it is without one."""
    path = _filter_file(tuple(errnos.items()))
    if path is None:
        return argv
    return ["/bin/sh", "-c", f'exec "$@" {SECCOMP_FD}<"$0"', path, argv[0],
            "--seccomp", str(SECCOMP_FD), *argv[1:]]  # fmt: skip


# --- a command confined: an agent's CLI -----------------------------------------------------------

# Kernel settings a process may write as root even without capabilities: /proc/sys (a core
# pattern that pipes to a program starts that program as root, outside every namespace),
# /proc/sysrq-trigger. bubblewrap's own cover of /proc leaves them writable as root.
PROC_WRITABLE = ("/proc/sys", "/proc/sysrq-trigger")
_CONFINED = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm",
             "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--cap-drop", "ALL")  # fmt: skip


@contextlib.contextmanager
def device_copies(near: Path) -> Iterator[list[str]]:
    """bwrap arguments, after ``--dev /dev``, that bind fresh copies of its device nodes, made
    for one step and removed after it: what the step does to their mode or times (it owns
    them as root) reaches no other step and not the host (chmod 000 on the host's /dev/null
    broke every later step; times set with utime held state from run to run). ``near``: a folder whose file system
    allows device nodes (else the temporary folder, /var/tmp or $HOME). Nothing where this process is not root:
    the host's nodes are then another user's, and only root could make the copies."""
    folder = _device_folder(near) if os.geteuid() == 0 else None
    try:
        yield [] if folder is None else _device_binds(folder)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _device_folder(near: Path) -> Path | None:
    for parent in (near, Path(tempfile.gettempdir()), Path("/var/tmp"), Path.home()):  # /tmp is often nodev
        with contextlib.suppress(OSError):
            if parent.is_dir() and not os.statvfs(parent).f_flag & os.ST_NODEV:  # nodes there would not open
                return Path(tempfile.mkdtemp(prefix="autoresearch-dev-", dir=parent))
    return None


def _device_binds(folder: Path) -> list[str]:
    argv: list[str] = []
    for name in DEVICE_NODES:
        try:
            host = os.stat(f"/dev/{name}")
            if not stat.S_ISCHR(host.st_mode):
                continue
            copy = folder / name
            os.mknod(copy, stat.S_IFCHR | 0o600, host.st_rdev)
            os.chmod(copy, stat.S_IMODE(host.st_mode))
        except OSError:  # no such node here, or no right to make one (a container): bwrap's own
            continue
        argv += ["--dev-bind", str(copy), f"/dev/{name}"]
    return argv


def proc_read_only() -> list[str]:
    """bwrap arguments, after ``--proc /proc``, that make ``PROC_WRITABLE`` read-only."""
    return [arg for path in PROC_WRITABLE if os.path.exists(path) for arg in ("--ro-bind", path, path)]


@functools.cache
def _confining_bwrap() -> str | None:
    """bubblewrap's path, where it can confine a command here (probed once); else None."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    probe = _with_filter([exe, *_CONFINED, *proc_read_only(), "true"], AGENT_CALLS)
    try:
        done = subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if done.returncode == 0 else None


def can_confine() -> bool:
    """Whether ``confined`` gives more than nothing here."""
    return _confining_bwrap() is not None


def confined(writable: Iterable[Path], readonly: Iterable[Path] = (), hidden: Iterable[Path] = (),
             devices: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The argv prefix that confines a command (an agent's CLI) on this machine.

    A PID and an IPC namespace of its own: when the command ends, the kernel kills all it
    started, however it left the group and the marker behind (``setsid env -i``). No
    capabilities even as root, a minimal ``/dev`` (no disks), the kernel's settings
    read-only, no keyrings, and no session of its own for any of its processes
    (``AGENT_CALLS``). The file system read-only but for the existing paths of ``writable``
    (less what of them ``readonly`` names) and a private ``/dev/shm``; ``/tmp`` too is
    read-only (give the command a ``TMPDIR`` among ``writable``); ``hidden`` paths are empty and
    unreadable; ``devices``: its own copies of ``/dev``'s nodes (``device_copies``). Network
    and user are shared.
    Empty where bubblewrap is missing or cannot run here: then the process group and the
    marker are all there is, and the command can write wherever its user can.
    """
    exe = _confining_bwrap()
    if exe is None:
        return []
    paths = sorted({p.resolve() for p in writable if p.exists()}, key=lambda p: len(p.parts))
    kept = sorted({p.absolute() for p in readonly if p.exists()}, key=lambda p: len(p.parts))
    argv = [exe, *_CONFINED, *devices, *proc_read_only(), *(a for p in paths for a in ("--bind", str(p), str(p))),
            *(a for p in kept for a in ("--ro-bind", str(p), str(p)))]  # fmt: skip
    file, folder = _agent_placeholders()
    for path in sorted({p.absolute() for p in hidden if p.exists()}, key=lambda p: len(p.parts)):
        argv += ["--ro-bind", str(folder if path.is_dir() and not path.is_symlink() else file), str(path)]
    return _with_filter(argv, AGENT_CALLS)


@functools.cache
def _agent_placeholders() -> tuple[Path, Path]:
    file, folder = _placeholders()
    atexit.register(shutil.rmtree, file.parent, True)
    return file, folder


def _placeholders() -> tuple[Path, Path]:
    """An unreadable file and folder, bound over what a step may not open."""
    folder = Path(tempfile.mkdtemp(prefix="autoresearch-sandbox-"))
    hidden_file, hidden_dir = folder / "hidden", folder / "hidden.d"
    hidden_file.touch()
    hidden_dir.mkdir()
    for path in (hidden_file, hidden_dir):
        path.chmod(0)
    return hidden_file, hidden_dir


class Sandbox:
    """How the steps of one task run: the bwrap argv and environment, and the tripwires.

    ``repo`` is the user's checkout (hidden inside), ``task_root`` the task folder in it;
    ``python`` the environments steps may use (read-only inside, fingerprinted outside).
    """

    def __init__(
        self,
        *,
        task_root: Path,
        repo: Path,
        mode: str = "auto",
        network: bool = False,
        env: Sequence[str] = (),
        holdout: Sequence[str] = (),
        readable: Sequence[str] = (),
        python: Sequence[Path] | None = None,
        user_checkout: bool = True,
        hidden: Sequence[Path] = (),
        slots: int = 1,
    ) -> None:
        self.mode, self.warning = resolve_mode(mode)
        self.task_root, self.repo = task_root.resolve(), repo.resolve()
        self.network, self.holdout, self.readable = network, tuple(holdout), tuple(readable)
        self.env_names = _checked_env_names(env)
        self.python = tuple(python) if python is not None else python_roots()
        self._hidden: tuple[Path, Path] | None = None
        self.user_checkout = user_checkout  # False on a Ray node: ``repo`` is the run's own scratch copy
        self.hidden = tuple(p.resolve() for p in hidden)  # emptied too (a Ray node's other runs)
        self.slots = max(1, slots)  # steps at once: their scratch folders share the memory

    @classmethod
    def for_task(cls, config: TaskConfig, **overrides: object) -> Sandbox:
        """The sandbox ``[task]`` asks for (``sandbox``, ``network``, ``env``, ``holdout``)."""
        settings: dict[str, object] = {
            "task_root": config.root, "repo": _toplevel(config.root), "mode": config.sandbox,
            "network": config.network, "env": config.env, "holdout": config.holdout,
            "readable": (*config.link, *config.protected_data),
        }  # fmt: skip
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return self.mode == "bwrap"

    # --- inside: the environment and the argv --------------------------------------------

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """What a sandboxed step sees of ``env``: the allowlist, $HOME inside. Unchanged without bwrap."""
        if not self.enabled:
            return {k: v for k, v in env.items() if k != SANDBOXED}
        keep = {k: v for k, v in env.items() if self._allowed(k)}
        keep.update(HOME=HOME_INSIDE, TMPDIR="/tmp")
        keep[SANDBOXED] = "bwrap"
        return keep

    def _allowed(self, name: str) -> bool:
        return (
            name in ENV_NAMES
            or name in self.env_names
            or name == MARKER
            or name.startswith(ENV_PREFIXES)
        )

    def prefix(
        self, step: str, *, cwd: Path, worktree: Path, writable: Sequence[Path],
        readonly: Sequence[Path] = (), first: bool = False, pinned: bool = False,
        devices: Sequence[str] = (),
    ) -> list[str]:  # fmt: skip
        """The bwrap argv that runs one step (the command follows it); [] without bwrap.

        ``worktree`` (the slot's checkout) is visible, writable when it is in ``writable``
        (with ``AUTORESEARCH_OUT``); its ``.git`` is unreadable, and ``evaluate`` alone may
        read the holdout files. ``readonly`` checkouts (the reference) are visible, read-only,
        their ``.git`` unreadable too. ``first``: the command is the sandbox's pid 1, with no
        bwrap reaper above it (``measure``, which nothing inside can open, signal or kill).
        ``pinned``: the step cannot change its CPUs (``PINNED_CALLS``). ``devices``: the step's
        own copies of ``/dev``'s nodes (``device_copies``). The argv starts with
        ``/bin/sh``, which opens the seccomp filter on descriptor 9 for bwrap and execs it.
        """
        if not self.enabled:
            return []
        exe = shutil.which("bwrap") or "bwrap"
        argv = [exe, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--cap-drop", "ALL"]  # fmt: skip
        argv += ["--as-pid-1"] if first else []
        argv += [] if self.network else ["--unshare-net"]
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", *devices, "--proc", "/proc", *proc_read_only()]
        argv += [arg for dev in _gpu_devices() for arg in ("--dev-bind", dev, dev)]
        size = _scratch_size(SCRATCH_SHARE * self.slots)
        argv += [*size, "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue"]
        argv += [*size, "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
        hidden = [str(path) for path in self._hidden_roots()]
        argv += [arg for path in hidden for arg in ("--tmpfs", path)]
        argv += [arg for path in self._readable_roots() for arg in ("--ro-bind", path, path)]
        argv += [] if worktree in writable else ["--ro-bind", str(worktree), str(worktree)]
        argv += [arg for path in writable for arg in ("--bind", str(path), str(path))]
        argv += [arg for path in readonly for arg in ("--ro-bind", str(path), str(path))]
        argv += [arg for path in (worktree, *readonly) for arg in self._unreadable(path / ".git")]
        argv += self._holdout_binds(step, cwd)
        # the emptied folders and /dev stay empty: what is bound inside them keeps its own mode
        # (a hidden root bound back itself, as a Ray node's scratch checkout is, keeps the bind's mode)
        bound = {str(worktree), *map(str, writable), *map(str, readonly), *self._readable_roots()}
        argv += [arg for path in ("/dev", *hidden) if path not in bound for arg in ("--remount-ro", path)]
        argv += ["--chdir", str(cwd)]
        return _with_filter(argv, PINNED_CALLS if pinned else STEP_CALLS)

    def _hidden_roots(self) -> list[Path]:
        """Empty inside: the user's checkout, $HOME, /run (sockets), the package archives;
        shallow ones first."""
        roots = {self.repo, Path.home().resolve(), *self.hidden}
        roots |= {Path("/run")} if Path("/run").is_dir() and not self.network else set()
        roots |= {p for p in map(Path, PACKAGE_ARCHIVES) if p.is_dir()}
        return sorted((p for p in roots if p != Path("/")), key=lambda p: len(p.parts))

    def _readable_roots(self) -> list[str]:
        """Bound back read-only: the Python environments, prepared data, links, protected data."""
        hidden = self._hidden_roots()
        paths = {*self.python, *self._task_paths((DATA_DIR, *self.readable))}
        if os.environ.get("AUTORESEARCH_DATA_DIR"):
            paths.add(Path(os.environ["AUTORESEARCH_DATA_DIR"]).resolve())
        shown = [p for p in paths if p.exists() and not any(_inside(h, p) for h in hidden)]
        return [str(p) for p in sorted(shown, key=lambda p: len(p.parts))]

    def _task_paths(self, patterns: Iterable[str], *roots: Path) -> set[Path]:
        return task_paths(patterns, self.task_root, *roots)

    def _holdout_binds(self, step: str, cwd: Path) -> list[str]:
        paths = sorted(self._task_paths(self.holdout, cwd), key=lambda p: len(p.parts))
        if step == "evaluate":
            return [arg for path in paths for arg in ("--ro-bind", str(path), str(path))]
        return [arg for path in paths for arg in self._unreadable(path)]

    def _unreadable(self, path: Path) -> list[str]:
        if not path.exists() and not path.is_symlink():
            return []
        if self._hidden is None:
            self._hidden = _placeholders()
            weakref.finalize(self, shutil.rmtree, self._hidden[0].parent, True)
        source = self._hidden[1] if path.is_dir() and not path.is_symlink() else self._hidden[0]
        return ["--ro-bind", str(source), str(path)]

    # --- outside: the tripwires -------------------------------------------------------------

    def fingerprint(self, worktree: Path | None = None) -> dict[str, str]:
        """What a step must leave alone: git's admin files, the Python env, the user's checkout."""
        prints = git_fingerprint(self.repo, worktrees=[worktree] if worktree else [])
        prints.update(python_fingerprint(self.python))
        if not self.enabled and self.user_checkout:  # inside bwrap the checkout is not even visible
            prints["the user's checkout"] = _checkout_status(self.repo)
        return prints

    @staticmethod
    def changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
        """The names whose fingerprint differs."""
        return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _checked_env_names(names: Sequence[str]) -> tuple[str, ...]:
    secret = [n for n in names if n in AGENT_KEYS]
    if secret:
        raise ConfigError(
            f"[task] env: {', '.join(secret)} would hand an agent's API key to the code it wrote; "
            "remove it"
        )
    return tuple(names)


SCRATCH_SHARE = 4  # a step's /tmp and /dev/shm hold at most a quarter of the memory each (per slot)


@functools.cache
def _scratch_size(share: int = SCRATCH_SHARE) -> list[str]:
    """bwrap's ``--size`` for a step's writable tmpfs (/tmp, /dev/shm): the memory over
    ``share``, where bwrap has the option (0.6 on).

    What a tmpfs holds is memory no process owns, so the out-of-memory killer picks another
    (the orchestrator, say); the kernel's default, half the memory each, lets the two fill it
    all. With ``SCRATCH_SHARE`` times the slots, all the slots' together hold at most half.
    """
    exe = shutil.which("bwrap")
    try:
        usage = subprocess.run([exe or "bwrap", "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    return ["--size", str(total // share)] if "--size" in usage.stdout + usage.stderr else []


def _gpu_devices() -> list[str]:
    return sorted(p for pattern in GPU_DEVICES for p in glob.glob(pattern))


def _toplevel(folder: Path) -> Path:
    try:
        return Path(Git(folder)("rev-parse", "--show-toplevel")).resolve()
    except (WorkspaceError, OSError):  # not a repository: the task folder is all there is to hide
        return folder.resolve()


def python_fingerprint(roots: Iterable[Path]) -> dict[str, str]:
    """What a planted ``.pth`` file or a replaced interpreter changes (cheap: no full tree walk).

    Per root: the names in ``bin/`` and in each ``site-packages`` (``__pycache__`` aside), and
    the inode, size and ctime of every ``bin/`` entry, ``*.pth`` and ``*customize.py`` file.
    In-place edits deep inside installed packages are not covered (the sandbox stops those).
    """
    prints = {}
    for root in roots:
        digest = hashlib.sha256()
        folders = [root / "bin", *sorted(root.glob("lib*/python*/site-packages"))]
        for folder in (f for f in folders if f.is_dir()):
            names = sorted(n for n in os.listdir(folder) if n != "__pycache__")
            digest.update(f"{folder}\0{names}\n".encode())
            for name in names:
                if folder.name == "bin" or name.endswith((".pth", "customize.py")):
                    digest.update(f"{name}\0{_stat(folder / name)}\n".encode())
        prints[f"the Python environment {root}"] = digest.hexdigest()
    return prints


def _stat(path: Path) -> str:
    try:
        link, target = path.lstat(), path.stat()
    except OSError:
        return "missing"
    return f"{link.st_ino} {link.st_ctime_ns} {target.st_ino} {target.st_size} {target.st_ctime_ns}"


def _checkout_status(repo: Path) -> str:
    code, out, err = Git(repo).run("status", "--porcelain", "-z", "--untracked-files=no")
    return hashlib.sha256(f"{code}\0{out}\0{err}".encode()).hexdigest()


__all__ = ["MODES", "Sandbox", "bwrap_problem", "keyring_filter", "python_fingerprint", "resolve_mode"]
