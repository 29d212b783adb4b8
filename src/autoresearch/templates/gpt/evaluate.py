"""
The fixed harness of the GPT task, part two: the metric. DO NOT EDIT: the agent edits train.py
only; this file, prepare.py and preset.toml are protected (byte-identical after every run).

`python evaluate.py` (or `python prepare.py evaluate`, the same step) scores the checkpoint that
train.py saved: bits per byte on the validation split, computed here from the model's logits.
train.py's code rebuilds the model: off CUDA in a child process of its own (ModelProcess: its
logits come back as bytes through a pipe), on CUDA in this process, which then guards itself,
best effort: private references, a snapshot of the runtime checked after train.py ran
(RuntimeGuard), train.py's output quarantined. Either way the process running train.py's code
cannot open the validation files (Landlock, where the kernel has it), causality is checked on the
scored batches, and a score below a floor is refused (see README.md, "What the harness
guarantees"). It runs in bf16 where the device is fast at it (prepare.bf16_is_fast), the
cross-entropy always in fp32.

Usage:
    python evaluate.py                      # score $AUTORESEARCH_OUT/model.pt; prints val_bpb last
    python evaluate.py --checkpoint PATH
    python evaluate.py --in-process         # the model in this process, as on CUDA (tests)
"""

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, so a file the run step left
# there (json.py, torch.py...) would shadow the modules the harness imports. Drop it.
# ruff: noqa: E402
_here = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__" and sys.path and os.path.realpath(sys.path[0]) == os.path.realpath(_here):
    del sys.path[0]
if __name__ == "__main__":  # train.py's `import evaluate` must get this very module
    sys.modules["evaluate"] = sys.modules["__main__"]


def _own_namespaces():
    """The model's process in namespaces of its own, before anything else: user (for the right
    to make the others), PID (this process becomes their init: when it ends, the kernel kills
    everything it started, however it forked), IPC and network (no System V IPC, message queue,
    UDP or socket a later process could reach). The process that called this waits for its
    child there, which returns. Returns '' or why not (user namespaces may be disabled)."""
    import contextlib
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(0x10000000 | 0x20000000 | 0x08000000 | 0x40000000) != 0:  # USER PID IPC NET
        return f"no namespaces of its own: {os.strerror(ctypes.get_errno())}"
    with contextlib.suppress(OSError):  # the same ids inside (files, caches keyed by user)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    child = os.fork()
    if child:  # outside: wait, and leave as it did
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        os._exit(code if code >= 0 else 128 - code)
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL if the waiting process is killed
    return ""


_LANDLOCK_SYSCALLS = (444, 445, 446)  # create_ruleset, add_rule, restrict_self: one number on every arch
_PR_SET_NO_NEW_PRIVS = 38


def _apply_ruleset(ruleset):
    """Restrict this thread, and what it starts, with a Landlock ruleset, for good. Raises
    OSError."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 or libc.syscall(_LANDLOCK_SYSCALLS[2], ruleset, 0) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _restrict_at_start(argv):
    """The model's process (ModelProcess's child) takes namespaces of its own and applies the
    Landlock ruleset the harness built for it (`--ruleset FD`) first thing, while it has one
    thread, before numpy or torch can start another: Landlock restricts the thread that asks and
    those it starts later, never the ones already running. Returns '' or why the validation
    files stay readable to it, or what it can leave behind for a later process."""
    if not sys.platform.startswith("linux"):
        return ""
    threads = len(os.listdir("/proc/self/task"))
    notes = [f"it had {threads} threads when it started"] if threads != 1 else []
    notes += [note] if (note := _own_namespaces()) else []
    if "--ruleset" in argv:  # else the harness could not build one, and says so itself
        ruleset = int(argv[argv.index("--ruleset") + 1])
        try:
            _apply_ruleset(ruleset)
        except OSError as exc:
            notes.append(f"Landlock: {exc.strerror}")
        os.close(ruleset)
    return "; ".join(notes)


_LANDLOCK_NOTE = _restrict_at_start(sys.argv) if __name__ == "__main__" and "--serve-model" in sys.argv else ""

import argparse
import contextlib
import ctypes
import functools
import importlib.util
import math
import random
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path
from types import FunctionType, ModuleType

import numpy as np
import torch
import torch.nn.functional as F

# Private references to what the metric is computed with, taken when the harness is imported,
# before train.py runs in this process (see `evaluate`): patching torch.nn.functional or
# torch.Tensor from train.py does not reach these names (and RuntimeGuard reports the patch).
_cross_entropy = F.cross_entropy
_autocast = torch.autocast
_frombuffer = torch.frombuffer
_Tensor = torch.Tensor
_tensor_item = torch.Tensor.item
_tensor_sum = torch.Tensor.sum
_float64 = torch.float64
_LN2 = math.log(2)
_isfinite = math.isfinite
_stdout, _stderr = sys.stdout, sys.stderr
_enumerate_threads = threading.enumerate
_urandom = os.urandom
_Random = random.Random


def _load_prepare():
    """prepare.py of this folder, as module `prepare` (the one train.py's `import prepare` gets)."""
    if "prepare" in sys.modules:
        return sys.modules["prepare"]
    spec = importlib.util.spec_from_file_location("prepare", Path(_here) / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare"] = module
    spec.loader.exec_module(module)
    return module


prepare = _load_prepare()
HERE = prepare.HERE
MAX_SEQ_LEN = prepare.MAX_SEQ_LEN  # tokens per row
EVAL_TOKENS = prepare.EVAL_TOKENS  # validation tokens scored
MIN_PLAUSIBLE_BPB = prepare.MIN_PLAUSIBLE_BPB  # a val_bpb below it is refused

# ---------------------------------------------------------------------------
# The validation rows (the metric's data: computed here, never by the model)
# ---------------------------------------------------------------------------


def validation_rows(tokenizer, tokens=EVAL_TOKENS, seq_len=MAX_SEQ_LEN):
    """The fixed validation rows, (N, seq_len + 1): the same for every run of this preset.
    The metric's own (`evaluate`): train.py must not read the validation split."""
    n = max(1, tokens // seq_len)
    packed = prepare.pack_rows(prepare.tokenized_documents(tokenizer, "val"), seq_len + 1)
    rows = [row for _, row in zip(range(n), packed, strict=False)]
    if len(rows) < n:
        print(
            f"note: the validation split holds {len(rows)} rows of {seq_len} tokens, fewer than {n}; scoring all of them"
        )
    if not rows:
        raise SystemExit("the validation split is empty")
    return torch.from_numpy(np.stack(rows))


class ValidationData:
    """The validation rows and which targets count, frozen as immutable bytes.

    `evaluate` builds it before train.py is imported. The model is handed a fresh copy of each
    batch's inputs only (its own storage: nothing behind the view to peek at); the targets and
    their byte mask are rebuilt from these bytes after the model has returned, and the total byte
    count is a plain int computed up front. That keeps the targets out of the model's arguments,
    not out of its reach: isolation inside one process is best effort. The model's code runs in
    this process and can walk the stack or scan memory to find these bytes (the files on disk
    it cannot open where Landlock works: hide_data_files). The causality checks and the
    plausibility floor (MIN_PLAUSIBLE_BPB) are tripwires for that; only a metric computed in
    another process than the model's would close it (README.md, "What the harness guarantees")."""

    def __init__(self, rows, token_bytes):
        rows = rows.detach().to("cpu", torch.int64).contiguous()
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"validation rows must be (N, T+1); got {tuple(rows.shape)}")
        token_bytes = token_bytes.detach().to("cpu", torch.int64)
        sizes = token_bytes[rows[:, 1:]]
        self.num_rows, self.row_len = rows.shape
        self.vocab = int(token_bytes.numel())
        self.total_bytes = int(sizes.sum())
        self._rows = rows.numpy().tobytes()
        self._counted = (sizes > 0).numpy().tobytes()
        if self.total_bytes <= 0:
            raise SystemExit("the validation rows hold no bytes to score")

    def _fresh(self, data, start, stop, width, dtype):
        size = np.dtype(dtype).itemsize * width
        chunk = bytearray(data[start * size : stop * size])
        return _frombuffer(chunk, dtype=getattr(torch, dtype)).view(stop - start, width)

    def inputs(self, start, stop):
        """Tokens [0, T) of rows [start, stop): a new contiguous tensor."""
        rows = self._fresh(self._rows, start, stop, self.row_len, "int64")
        return rows[:, :-1].clone(memory_format=torch.contiguous_format)

    def targets(self, start, stop):
        """Tokens [1, T+1) of rows [start, stop), and whether each target counts (has bytes)."""
        rows = self._fresh(self._rows, start, stop, self.row_len, "int64")
        counted = self._fresh(self._counted, start, stop, self.row_len - 1, "bool")
        return rows[:, 1:].clone(memory_format=torch.contiguous_format), counted


def check_logits(logits, B, T, vocab_size):
    """The model's contract: model(idx) -> logits of shape (B, T, V) with V >= the vocabulary, a
    plain floating-point torch.Tensor (a subclass could intercept the harness's own calls)."""
    if (
        type(logits) is not _Tensor
        or logits.layout != torch.strided
        or not logits.dtype.is_floating_point
        or logits.ndim != 3
        or tuple(logits.shape[:2]) != (B, T)
        or logits.shape[2] < vocab_size
    ):
        shape = (
            f"{type(logits).__name__} {tuple(logits.shape)} {logits.dtype}"
            if isinstance(logits, torch.Tensor)
            else type(logits).__name__
        )
        raise ModelContractError(
            f"model(idx) must return logits of shape ({B}, {T}, >={vocab_size}), a plain floating-point torch.Tensor; got {shape}"
        )


class ModelContractError(Exception):
    """The model broke the harness's contract (wrong output, or train.py exited)."""


class MeasurementRefused(Exception):
    """The harness will not report a val_bpb for this model (printed as a `harness:` line)."""


class CausalityError(MeasurementRefused):
    """The model's logits at positions <= t depend on tokens after t, or on other rows."""


CAUSALITY_PROBES = 2  # scored batches, picked at random, re-run with their future changed
# A fresh checker (off CUDA) re-runs every scored batch while their logits fit in this; past it,
# as many as fit, picked at random (the cpu preset's four batches: 67 MB each in fp32)
CHECKED_LOGITS_BYTES = 1 << 30
# Nats of log-probability a causal model's logits may move when the future changes. Exact math
# (fp32), and any precision on CPU, where kernels give a causal model the same bits whatever
# the rest of the batch holds (measured under bf16: 0.0): 1e-3. bf16/fp16 on an accelerator,
# where kernels may pick other tilings or reduction orders: 0.1.
CAUSALITY_TOLERANCE = (1e-3, 0.1)  # [low precision on an accelerator]: a tuple, not to be mutated
LOGPROB_FLOOR = -30.0  # log-probabilities are compared above this (noise of improbable tokens)


def _forward(model, x, device, autocast, vocab):
    """model(x) with the evaluation's settings; the checked logits of the real vocabulary."""
    with _autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x.to(device, copy=True))  # a copy: x stays the harness's
    check_logits(logits, x.shape[0], x.shape[1], vocab)
    return logits[..., :vocab]


@torch.no_grad()
def evaluate_bpb(
    model, tokenizer, rows, device, batch_size=16, autocast=False, guard=None, rng=None, probes=None,
    fresh=None,
):  # fmt: skip
    """Bits per byte of `model` on validation `rows` (N, T+1), or on a frozen ValidationData.

    Cross-entropy is taken here in fp32 from the logits, in nats, summed over targets; the byte
    count is the exact bytes of each target token; special tokens (0 bytes) are left out of both.
    Each batch's sum comes back to the CPU before the model runs again (they are added up in
    row order at the end, so the score does not depend on the order batches ran in); `guard` (a
    RuntimeGuard) is checked after every batch.

    Causality is checked on the evaluation's own batches, with their exact shapes and settings
    (batch size, sequence length, autocast, no_grad, real text), each re-run with its future
    changed against the logits it was scored with: first a full batch picked at random, scored
    and checked before any other batch runs; then `probes` more scored batches picked at random
    inside the scoring loop (from `rng`, by default seeded by os.urandom: the model cannot tell
    which). A model that fails is refused (CausalityError).

    `fresh`: a function that ends `model` and returns a new one, in a process that never saw a
    scored batch (ModelProcess). The checks then all run after the scoring, on that one: a model
    that looked ahead while scored and remembered what it answered, to answer the same when a
    batch comes back with its future changed, has nothing to remember there. They cover every
    scored batch (unless `probes` says otherwise, or their logits pass CHECKED_LOGITS_BYTES): a
    model that looks ahead on some batches only cannot hope the draw misses them.
    """
    data = rows if isinstance(rows, ValidationData) else ValidationData(rows, tokenizer.token_bytes)
    vocab = data.vocab
    rng = rng if rng is not None else _Random(_urandom(16))
    starts = list(range(0, data.num_rows, batch_size))
    full = [s for s in starts if s + batch_size <= data.num_rows] or starts
    first = rng.choice(full)
    rest = [s for s in starts if s != first]
    if probes is None and fresh is not None:
        kept_bytes = batch_size * (data.row_len - 1) * vocab * 4  # fp32 at most
        probes = max(CAUSALITY_PROBES, CHECKED_LOGITS_BYTES // kept_bytes - 1)
    probes = CAUSALITY_PROBES if probes is None else probes
    probed = {first, *rng.sample(rest, min(probes, len(rest)))}
    nats_of = {}  # start -> summed nats of the batch's counted targets
    later = {}  # start -> logits kept for the fresh model's checks
    for start in [first, *rest]:
        stop = min(start + batch_size, data.num_rows)
        logits = _forward(model, data.inputs(start, stop), device, autocast, vocab)
        # kept apart from what the model returned: it must not rewrite it before the check
        kept = logits.clone() if start in probed else None
        logits = logits.float()
        y, counted = (t.to(device) for t in data.targets(start, stop))
        nats = _cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="none")
        nats_of[start] = _tensor_item(_tensor_sum(nats * counted.reshape(-1), dtype=_float64))
        del logits, nats
        if kept is not None and fresh is None:
            check_causality(model, data, start, batch_size, device, autocast, rng, base=kept)
        elif kept is not None:
            later[start] = kept
        if guard is not None:
            guard.check()
    if fresh is not None:
        prober = fresh()
        for start, kept in later.items():  # in scoring order: the first batch first
            check_causality(prober, data, start, batch_size, device, autocast, rng, base=kept)
    return sum(nats_of[s] for s in starts) / (_LN2 * data.total_bytes)


def _donor_rows(data, start, stop, T, rng):
    """Other real validation text for the rows [start, stop): rows from outside the batch, else
    the batch's own rows moved by one (a lone row: itself, rotated)."""
    B = stop - start
    others = [i for i in range(data.num_rows) if not start <= i < stop]
    if len(others) >= B:
        picked = rng.sample(others, B)
    elif B > 1:
        picked = [start + (r + 1) % B for r in range(B)]
    else:
        return data.inputs(start, stop).roll(T // 2 + 1, dims=1)
    return torch.cat([data.inputs(i, i + 1) for i in picked])


@torch.no_grad()
def check_causality(model, data, start, batch_size, device, autocast=False, rng=None, base=None):
    """Changing a row's tokens after position t, or other rows of the batch, must not change its
    logits at positions <= t. Checked on the real batch [start, start + batch_size) of `data` (a
    ValidationData), exactly as it is scored: in the copy, each row's tokens after a random cut
    are replaced by other real tokens, and about a quarter of the rows entirely; the kept rows'
    log-probabilities at positions <= their cut are compared (`base`: the batch's logits, if
    already computed). A difference beyond CAUSALITY_TOLERANCE raises CausalityError."""
    rng = rng if rng is not None else _Random(_urandom(16))
    stop = min(start + batch_size, data.num_rows)
    x = data.inputs(start, stop)
    B, T = x.shape
    if base is None:
        base = _forward(model, x, device, autocast, data.vocab).clone()
    donor = _donor_rows(data, start, stop, T, rng)
    whole = set(rng.sample(range(B), (B + 3) // 4)) if B > 1 else set()
    cuts = {r: rng.randrange(max(T - 1, 1)) for r in range(B) if r not in whole}
    changed = x.clone()
    for r in range(B):
        first = 0 if r in whole else cuts[r] + 1
        changed[r, first:] = donor[r, first:]
    out = _forward(model, changed, device, autocast, data.vocab)
    low = device.type != "cpu" and (autocast or base.dtype.itemsize < 4 or out.dtype.itemsize < 4)
    worst, where = 0.0, None
    for r, t in cuts.items():
        a = torch.log_softmax(base[r, : t + 1].float(), -1).clamp_min(LOGPROB_FLOOR)
        b = torch.log_softmax(out[r, : t + 1].float(), -1).clamp_min(LOGPROB_FLOOR)
        diff = _tensor_item((a - b).abs().max())
        if not diff <= worst:  # NaN included
            worst, where = diff, (r, t)
            if not diff <= CAUSALITY_TOLERANCE[low]:
                break
    if not worst <= CAUSALITY_TOLERANCE[low]:
        r, t = where
        raise CausalityError(
            f"causality check failed on a validation batch of {B} x {T} tokens: changing the "
            f"tokens after position {t} of row {r}, and {len(whole)} other row(s) of the batch, "
            f"changed its log-probabilities at positions <= {t} (max difference {worst:.3g} "
            f"nats, tolerance {CAUSALITY_TOLERANCE[low]:g}); the model looks ahead or across "
            "rows: refusing to measure"
        )


# ---------------------------------------------------------------------------
# The runtime guard. On CUDA (or --in-process) `evaluate` imports train.py to rebuild the model
# in this process, so train.py's module-level code (and the model's code) runs inside it and
# could patch what the metric is computed with (F.cross_entropy, torch.Tensor methods, this
# module's functions, print...).
# The metric path uses private references taken at import (above); RuntimeGuard snapshots the
# namespaces it depends on before train.py is imported and compares them after the model is
# built and after every batch: any difference is refused. Best effort: see the README.
# ---------------------------------------------------------------------------


class HarnessTampered(MeasurementRefused):
    """train.py changed the runtime the metric is computed with: the run is not measured."""


GUARDED_MODULES = (
    "builtins", "math", "sys", "gc", "threading", "numpy", "torch", "torch.nn.functional",
    "torch._C", "torch._C._nn", "torch._tensor", "torch.functional", "torch.overrides",
    "torch.nn.modules.module", "torch.autograd.grad_mode", "torch.amp.autocast_mode",
    "torch.serialization", "random",
)  # fmt: skip
GUARDED_CLASSES = {
    "torch.Tensor": torch.Tensor,
    "torch.nn.Module": torch.nn.Module,
    "torch.autocast": torch.autocast,
    "torch.no_grad": torch.no_grad,
    "random.Random": random.Random,  # the causality checks' draws: randrange, sample, choice
}
# Changes that torch makes by itself: importing torch._dynamo (train.py's @torch.compiler.disable)
# wraps torch.manual_seed; running a torch.compile'd function patches nn.Module's constructor.
# The metric does not use them (building modules is train.py's business anyway).
ALLOWED_CHANGES = frozenset({
    "torch.manual_seed", "torch.nn.Module.__init__", "torch.nn.Module.__setstate__",
    "torch.nn.Module.___needs_generation_tag_patch",
})  # fmt: skip


def _mode_stacks():
    """Lengths of torch's function-mode and dispatch-mode stacks (a mode intercepts every op)."""
    return (
        torch._C._len_torch_function_stack() if hasattr(torch._C, "_len_torch_function_stack") else 0,
        torch._C._len_torch_dispatch_stack() if hasattr(torch._C, "_len_torch_dispatch_stack") else 0,
    )  # fmt: skip


class RuntimeGuard:
    """A snapshot of the namespaces the metric depends on (each attribute's object, held so its
    id cannot be reused; the classes this harness and prepare.py define included), the code of
    every Python function in them (a function's __code__ can be swapped in place), the
    trace/profile hooks, torch's mode stacks and the live threads."""

    def __init__(self):
        spaces = {name: sys.modules[name] for name in GUARDED_MODULES if name in sys.modules}
        spaces.update(GUARDED_CLASSES)
        for label, module in (("evaluate", sys.modules[__name__]), ("prepare", prepare)):
            spaces.update({f"{label}.{name}": value for name, value in vars(module).items()
                           if isinstance(value, type) and value.__module__ == module.__name__})
        live = {label: space.__dict__ for label, space in spaces.items()}
        live["evaluate"] = globals()  # this harness's own functions and private references
        live["prepare"] = prepare.__dict__  # the data, tokenizer and device functions it uses
        self._spaces = {label: (now, dict(now)) for label, now in live.items()}
        self._code = {f"{label}.{key}": (f, _code_of(f, label)) for label, (_, before) in self._spaces.items()
                      for key, f in before.items() if type(f) is FunctionType}  # fmt: skip
        self._hooks = (sys.gettrace(), sys.getprofile())
        self._modes = _mode_stacks()
        self._threads = frozenset(_enumerate_threads())
        # Bound now, in the instance: a class attribute train.py replaces later (changes = a
        # function that finds nothing) is not what guard.check() and guard.changes() run.
        self.changes, self.check = self._changes, self._check

    def _changes(self):
        """What differs from the snapshot, as 'torch.nn.functional.cross_entropy' etc."""
        found = []
        for label, (now, before) in self._spaces.items():
            for key in before.keys() - now.keys():
                found.append(f"{label}.{key} (deleted)")
            for key, value in list(now.items()):
                if key not in before:
                    # importing a submodule adds it: fine
                    if type(value) is not ModuleType and f"{label}.{key}" not in ALLOWED_CHANGES:
                        found.append(f"{label}.{key} (added)")
                elif value is not before[key] and f"{label}.{key}" not in ALLOWED_CHANGES:
                    found.append(f"{label}.{key}")
        found += [f"{name}.__code__" for name, (f, code) in self._code.items()
                  if not _same(_code_of(f, name), code)]  # fmt: skip
        if (sys.gettrace(), sys.getprofile()) != self._hooks:
            found.append("sys.settrace/setprofile (a hook runs inside the harness)")
        if _mode_stacks() != self._modes:
            found.append("torch's mode stack (a TorchFunctionMode/TorchDispatchMode is active)")
        if any(type(t) is not _tqdm_monitor() for t in set(_enumerate_threads()) - self._threads):
            found.append("threading (it left a thread running)")
        return sorted(found)

    def _check(self):
        found = self.changes()
        if found:
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            raise HarnessTampered(
                f"train.py modified {', '.join(found[:5])}{more}; refusing to measure"
            )


def _code_of(f, label):
    """What a Python function runs: its code and defaults (the objects, held), and for this
    harness's and prepare.py's own functions their closure cells' contents too (torch's may
    change their own cells as they run)."""
    held = (f.__code__, f.__defaults__, f.__kwdefaults__)
    if not label.startswith(("evaluate", "prepare")):
        return held
    return held + tuple(_contents(c) for c in f.__closure__ or ())


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _contents


def _same(now, before):
    return len(now) == len(before) and all(a is b for a, b in zip(now, before, strict=True))


def _tqdm_monitor():
    """tqdm's monitor thread class (torch.compile's progress bars start one), if loaded."""
    module = sys.modules.get("tqdm._monitor")
    return getattr(module, "TMonitor", None) if module is not None else None


class Quarantine:
    """While train.py's code runs in this process, file descriptors 1 and 2 point to a temporary
    file; afterwards its lines are copied to stderr prefixed with `train.py| `, which no summary
    parser reads as `key: value`. So train.py cannot print a summary of its own and then end the
    process (os._exit(0)) before the harness prints the real one."""

    def __enter__(self):
        _stdout.flush()
        _stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc_info):
        for stream in (_stdout, _stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        relay(self._file)
        return False


def relay(file):
    """What train.py's code printed (an open temporary file), copied to stderr line by line with
    a `train.py| ` prefix, which no summary parser reads as `key: value`; the file is closed."""
    file.seek(0)
    text = file.read().decode("utf-8", errors="replace")
    file.close()
    for line in text.splitlines():
        _stderr.write(f"train.py| {line}\n")
    _stderr.flush()


# ---------------------------------------------------------------------------
# The data files, unreadable once read. The metric's data is in memory before train.py runs in
# this process; from then on this process (and whatever it starts) cannot open the validation
# files, the raw text they were cut from, or the training split (a model that trained while it
# is evaluated would train outside the time budget): Landlock (Linux >= 5.13), which nothing in
# the process can undo. Landlock only grants: every path beside the ones on the way to a
# hidden file stays readable, what is on the way is listed and granted one by one.
# ---------------------------------------------------------------------------

_LANDLOCK_READ_FILE = 1 << 2
# What a confined process may not do at all (no rule grants it), by the ABI that brought it:
# write, create or remove files (1), link or rename across folders (2), truncate (3); bind or
# connect TCP (4); reach abstract unix sockets or signal processes outside its domain (6).
_LANDLOCK_WRITES = {1: 0b1111111110010, 2: 1 << 13, 3: 1 << 14}
_LANDLOCK_NET_TCP = 0b11  # ABI 4
_LANDLOCK_SCOPES = 0b11  # ABI 6
_LANDLOCK_RULE_PATH_BENEATH = 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


PACKAGE_ARCHIVES = ("/var/cache/apt/archives",)  # copies of public text: one machine's held the KJV as a .deb


def hidden_while_evaluated():
    """What the model's code may not read while it is evaluated: the validation text
    (data_dir()/val, the targets of data_dir()/val_sources, the package archives of
    PACKAGE_ARCHIVES), and the training split, its files (the manifest's) and its token cache
    (data_dir()/tokens, what train.py's loader reads): a model that trained on it while it is
    evaluated would train outside the time budget."""
    data = prepare.data_dir()
    sources = data / prepare.VAL_SOURCES_DIR
    links = list(sources.iterdir()) if sources.is_dir() else []
    try:
        training = [entry[0] for entry in prepare.read_manifest()["train"]]
    except (SystemExit, OSError, ValueError, KeyError, TypeError, IndexError):
        training = []  # no manifest: no training split to hide (prepare.py has not run)
    found = (data / prepare.VAL_DIR, *links, *PACKAGE_ARCHIVES, data / prepare.TOKENS_DIR, *training)
    return [p for p in found if os.path.lexists(p)]


def readable_around(hidden):
    """Paths whose trees hold none of `hidden` (resolved paths): granted, they leave the whole
    file system readable but `hidden`, and what is created later in the folders above them."""
    above = {parent for path in hidden for parent in path.parents}
    todo, found = [Path("/")], []
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path in hidden or entry.is_symlink():  # a link is read where it points
                    continue
                (todo if path in above else found).append(path)
    return found


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _checked(result):
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def landlock_ruleset(paths, confine=False, writable=None):
    """A Landlock ruleset (a descriptor) that, once applied, leaves the file system readable but
    `paths` (files or folders). `confine`: and leaves nothing else to the process that could
    outlive it or reach another one: no file written, created or removed, no TCP, no abstract
    unix socket or signal outside its domain (each as far as the kernel's Landlock ABI goes),
    but beneath the folder `writable` and to /dev/null. Raises OSError where Landlock is not
    available (not Linux, an old kernel, a container that filters it)."""
    hidden = {Path(os.path.realpath(p)) for p in paths}
    if not sys.platform.startswith("linux"):
        raise OSError("Landlock is a Linux feature")
    libc = _libc()
    create, add, _ = _LANDLOCK_SYSCALLS
    abi = _checked(libc.syscall(create, None, 0, 1)) if confine else 1  # 1: LANDLOCK_CREATE_RULESET_VERSION
    fs = _LANDLOCK_READ_FILE | sum(bits for since, bits in _LANDLOCK_WRITES.items() if confine and abi >= since)
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net (ABI 4), scoped (ABI 6)
    fields = [fs, *([_LANDLOCK_NET_TCP] if abi >= 4 else []), *([_LANDLOCK_SCOPES] if abi >= 6 else [])]
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    ruleset = _checked(libc.syscall(create, ctypes.byref(attr), ctypes.sizeof(attr), 0))

    def grant(path, allowed):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = _PathBeneath(allowed, fd)
            _checked(libc.syscall(add, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0))
        finally:
            os.close(fd)

    try:
        for path in readable_around(hidden):
            with contextlib.suppress(FileNotFoundError):  # gone since it was listed
                grant(path, _LANDLOCK_READ_FILE)
        if confine:
            grant(os.devnull, _LANDLOCK_READ_FILE | 1 << 1)  # WRITE_FILE: writes to it go nowhere
            if writable is not None:
                grant(writable, fs)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def forbid_reading(paths):
    """Make `paths` unreadable to this thread, and every thread and process it starts, for good.
    Threads already running are not restricted (Landlock asks each thread): in the harness's
    process (CUDA), pools started while the data was read stay unrestricted."""
    ruleset = landlock_ruleset(paths)
    try:
        _apply_ruleset(ruleset)
    finally:
        os.close(ruleset)


def hide_data_files(scratch):
    """The data files (hidden_while_evaluated) made unreadable before train.py's code runs here
    (forbid_reading).
    Temporary files go to `scratch`, a fresh folder made before, and so readable (one made
    later in a folder above a hidden file, /tmp when the task lives there, could not be read
    back). Returns None, or why the files stay readable."""
    tempfile.tempdir = os.environ["TMPDIR"] = scratch
    try:
        forbid_reading(hidden_while_evaluated())
    except OSError as exc:
        return f"Landlock: {exc.strerror or exc}"
    return None


# ---------------------------------------------------------------------------
# The model in a process of its own. Off CUDA, train.py's code never runs in the process that
# computes the metric: `evaluate.py --serve-model FD` (the child) first applies the Landlock
# ruleset the harness built for it (the validation files, which it never holds, and the training
# split unreadable; no writes), rebuilds the model, then answers batches: token ids down its
# stdin, logits back up descriptor FD as raw bytes, which the harness turns into a tensor of its
# own. Whatever train.py patches, registers or prints in the child stays there. The causality
# checks run in a second child, started once the scoring one has ended and its leftovers are
# gone (evaluate_bpb's `fresh`, ModelProcess.close). On CUDA the logits of an evaluation
# (hundreds of GB for the h100 preset) cannot travel by pipe: the model runs in the harness's
# process, behind the in-process guards above.
# ---------------------------------------------------------------------------

_MAGIC = b"GPTE"
_REQUEST = struct.Struct("<4sqq")  # magic, B, T; then B*T int64 token ids
_READY = struct.Struct("<4sq")  # magic, length of the note that follows (what it could not do)
_REPLY = struct.Struct("<4sqqqq")  # magic, B, T, V, dtype code; then B*T*V logits
_WIRE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # dtype code = index
_PR_SET_DUMPABLE = 4
CHILD_EXIT_SECONDS = 10.0  # for the model's process to leave once its input is closed


def _read_exact(fd, size):
    """`size` bytes from `fd` (a bytearray), or fewer if it reached its end."""
    data, done = bytearray(size), 0
    view = memoryview(data)
    while done < size:
        got = os.readv(fd, [view[done:]])
        if not got:
            return data[:done]
        done += got
    return data


def _wide_pipe():
    """os.pipe() with the largest buffer this user may set (fewer switches per batch of logits)."""
    ends = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        for end in ends:
            fcntl.fcntl(end, fcntl.F_SETPIPE_SZ, 1 << 20)
    return ends


def _write_all(fd, data):
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class ModelProcess:
    """train.py's model in a child process, called like the model: model(idx) -> logits, a new
    tensor built here from the bytes the child sent (checked: the shape asked for, the logits of
    the `vocab` real tokens, one of _WIRE_DTYPES). The child's stdout and stderr go to
    a file in `scratch`, relayed with a `train.py| ` prefix when it is closed. Before starting
    it, this process makes itself non-dumpable: a process of the same user cannot read its
    memory or open its descriptors through /proc (the child's Landlock domain forbids ptrace of
    it too). The child takes namespaces of its own (_own_namespaces: what it starts dies with it)
    and is confined (landlock_ruleset's `confine`): it writes only to a temporary folder of its
    own, removed when it is closed, so it leaves nothing behind for a later one."""

    def __init__(self, checkpoint, train_path, device, autocast, vocab, scratch):
        self.vocab, self._closed, self.leftovers = vocab, False, 0
        self._output = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115 (closed by relay)
        self._scratch = tempfile.mkdtemp(prefix="model-", dir=scratch)  # its TMPDIR
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        # The cross-entropy here is small next to the model's forward there: one thread, whose
        # spinning workers would otherwise take the cores from the child between batches.
        torch.set_num_threads(1)
        try:  # applied by the child before anything else (see _restrict_at_start)
            ruleset, self.note = landlock_ruleset(hidden_while_evaluated(), confine=True, writable=self._scratch), ""
        except OSError as exc:
            ruleset = None
            self.note = f"train.py's code could read the validation files from disk (Landlock: {exc.strerror or exc})"
        requests, self._requests = os.pipe()
        self._replies, replies = _wide_pipe()
        argv = [sys.executable, str(HERE / "evaluate.py"), "--serve-model", str(replies),
                "--checkpoint", str(checkpoint), "--train", str(train_path), "--device", device.type,
                "--vocab", str(vocab)]  # fmt: skip
        argv += ["--autocast"] if autocast else []
        argv += ["--ruleset", str(ruleset)] if ruleset is not None else []
        try:
            self._proc = subprocess.Popen(
                argv, stdin=requests, stdout=self._output, stderr=self._output,
                pass_fds=(replies, *([ruleset] if ruleset is not None else [])),
                env={**os.environ, "TMPDIR": self._scratch},
                start_new_session=True,  # a group of its own: close() kills what it leaves
            )  # fmt: skip
        finally:
            for fd in (requests, replies, *([ruleset] if ruleset is not None else [])):
                os.close(fd)
        try:
            magic, size = _READY.unpack(self._read(_READY.size, "rebuilding the model"))
            if magic != _MAGIC or not 0 <= size <= 4096:
                raise ModelContractError("train.py's model process sent something else than its ready message")
            # what the child could not do to itself, in its own words: shown, not trusted
            told = self._read(size, "rebuilding the model").decode("utf-8", errors="replace")
            self.note = self.note or (f"the model's process: {told}" if told else "")
        except BaseException:
            self.close()
            raise

    def _read(self, size, doing):
        data = _read_exact(self._replies, size)
        if len(data) < size:
            try:
                code = self._proc.wait(CHILD_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                code = "still running"
            raise ModelContractError(
                f"train.py's model process stopped answering while {doing} (exit code {code}); "
                "what it printed is above (train.py| lines)"
            )
        return data

    def __call__(self, idx):
        B, T = idx.shape
        tokens = idx.to("cpu", torch.int64).contiguous()
        _write_all(self._requests, _REQUEST.pack(_MAGIC, B, T) + tokens.numpy().tobytes())
        magic, b, t, v, code = _REPLY.unpack(self._read(_REPLY.size, "scoring"))
        if magic != _MAGIC or (b, t, v) != (B, T, self.vocab) or not 0 <= code < len(_WIRE_DTYPES):
            raise ModelContractError(
                f"model(idx) must return logits of shape ({B}, {T}, >={self.vocab}); its process "
                f"sent a reply for ({b}, {t}, {v}), dtype code {code}"
            )
        dtype = _WIRE_DTYPES[code]
        body = self._read(b * t * v * dtype.itemsize, "scoring")
        return _frombuffer(body, dtype=dtype).view(b, t, v)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def close(self):
        """Close its input (it leaves), kill what is left of it, relay what it printed."""
        if self._closed:
            return
        self._closed = True
        os.close(self._requests)
        try:
            self._proc.wait(CHILD_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            os.killpg(self._proc.pid, 9)  # what it started in its group
        self.leftovers = clear_leftovers()
        shutil.rmtree(self._scratch, ignore_errors=True)
        os.close(self._replies)
        relay(self._output)


def clear_leftovers(seconds=2.0):
    """In the sandbox's private PID and IPC namespaces (the evaluate step in bubblewrap), every
    process but this one and its ancestors is killed, and every System V IPC object and POSIX
    message queue removed: what a model's process left to answer for a later one (a daemon on a
    UDP port, shared memory) is gone. Where the model's process had namespaces of its own there
    is nothing left; without them, processes that fork faster than they are killed can outrun
    one pass, so passes repeat for up to `seconds`. Returns how many were still alive then (0
    outside the sandbox: nothing else is touched there, those are the user's)."""
    if os.environ.get("AUTORESEARCH_SANDBOX") != "bwrap" or not _in_bwrap():
        return 0
    ours, deadline, alive = _ancestors(), time.monotonic() + seconds, 1
    while alive and time.monotonic() < deadline:
        alive = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in ours and _running(entry):
                alive += 1
                with contextlib.suppress(OSError):
                    os.kill(int(entry), 9)
    libc = _libc()
    for kind, remove in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as table:
            for line in table.readlines()[1:]:
                ipc_id = int(line.split()[1])
                remove(ipc_id, 0, 0) if kind == "sem" else remove(ipc_id, 0, None)  # IPC_RMID
    with contextlib.suppress(OSError):
        for name in os.listdir("/dev/mqueue"):
            os.unlink(f"/dev/mqueue/{name}")
    return alive


def _running(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _in_bwrap():
    """Process 1 of this PID namespace is bubblewrap, or this process (`--as-pid-1`)."""
    try:
        with open("/proc/1/comm") as comm:
            return os.getpid() == 1 or comm.read().strip() == "bwrap"
    except OSError:
        return False


def _ancestors():
    """This process's pid and its ancestors'."""
    found, pid = set(), os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def serve_model(reply_fd, checkpoint, train_path, device, autocast, vocab):
    """The child of ModelProcess (already restricted: _restrict_at_start): rebuild the model,
    then answer requests on stdin until it closes. Runs train.py's code: nothing it sends is
    trusted."""
    note = _LANDLOCK_NOTE.encode()
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        model = build_from_checkpoint(ckpt, train_path, device)
    except SystemExit as exc:
        raise ModelContractError(f"train.py exited ({exc.code!r}) while being evaluated") from None
    _write_all(reply_fd, _READY.pack(_MAGIC, len(note)) + note)
    while header := _read_exact(0, _REQUEST.size):
        _, B, T = _REQUEST.unpack(header)
        x = torch.frombuffer(_read_exact(0, B * T * 8), dtype=torch.int64).view(B, T)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x.to(device))
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[2] < vocab:
            raise ModelContractError(
                f"model(idx) must return logits of shape ({B}, {T}, >={vocab}); got {logits!r:.200}"
            )
        logits = logits[..., :vocab].detach().to("cpu")  # what the harness scores
        if logits.dtype not in _WIRE_DTYPES:
            logits = logits.float()
        logits = torch.Tensor.contiguous(logits.as_subclass(torch.Tensor))
        header = _REPLY.pack(_MAGIC, *logits.shape, _WIRE_DTYPES.index(logits.dtype))
        _write_all(reply_fd, header)
        _write_all(reply_fd, logits.view(torch.uint8).numpy())


# ---------------------------------------------------------------------------
# Rebuilding the model and the `evaluate` step
# ---------------------------------------------------------------------------

_STAT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def summary_stats(stats):
    """The checkpoint's statistics that are safe to print: identifier keys (not a metric the
    harness prints) and finite int/float values. Anything else (text, bools, keys or values with
    newlines that would inject summary lines) is dropped."""
    if not isinstance(stats, dict):
        return {}
    reserved = {"val_bpb", "eval_tokens", "eval_seconds"}
    return {
        key: value
        for key, value in stats.items()
        if type(key) is str
        and _STAT_KEY.match(key)
        and key.lower() not in reserved
        and type(value) in (int, float)
        and _isfinite(value)
    }


def load_train_module(path):
    """train.py as a module; its training code sits under `if __name__ == "__main__"`. Its
    `import prepare` (and `import evaluate`) get the modules this process measures with, so a
    patch to them is seen by RuntimeGuard."""
    folder = str(Path(path).resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location("train", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def build_from_checkpoint(ckpt, train_path, device):
    """Rebuild the model with train.py's builder named in the checkpoint; load its weights."""
    module = load_train_module(train_path)
    builder = getattr(module, ckpt["builder"], None)
    if not callable(builder):
        raise ModelContractError(
            f"train.py has no function {ckpt['builder']!r} to rebuild the model"
        )
    model = builder(**ckpt["config"])
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def evaluate(checkpoint_path=None, train_path=None, batch_size=None, in_process=None):
    """The task's `evaluate` step: freeze the data, rebuild the model from train.py in a process
    of its own (ModelProcess; in this one on CUDA, or with `in_process`: the validation files
    hidden, the runtime snapshotted and checked), check causality, score, refuse a score below
    the plausibility floor; print the summary, `val_bpb` last."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        return _evaluate(checkpoint_path, train_path, batch_size, in_process, scratch)


def _evaluate(checkpoint_path, train_path, batch_size, in_process, scratch):
    t0 = time.time()
    checkpoint_path = Path(checkpoint_path or prepare.out_dir() / "model.pt")
    if not checkpoint_path.is_file():
        raise SystemExit(
            f"no checkpoint at {checkpoint_path}: train.py must save one (prepare.save_checkpoint)"
        )
    device = prepare.pick_device()
    # Everything the metric needs is read before train.py runs in this process.
    tokenizer = prepare.Tokenizer.from_directory()
    data = ValidationData(validation_rows(tokenizer), tokenizer.token_bytes)
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    stats = summary_stats(ckpt.get("stats"))
    on_cuda = device.type == "cuda"
    batch_size = batch_size or max(1, (2**16 if on_cuda else 2**13) // MAX_SEQ_LEN)
    bf16 = prepare.bf16_is_fast(device)  # the model runs under bf16 autocast where that is fast
    rng = _Random(_urandom(16))  # which batches and cuts the causality checks use
    train_path = train_path or HERE / "train.py"
    if not (on_cuda if in_process is None else in_process):
        with contextlib.ExitStack() as stack:
            start = functools.partial(ModelProcess, checkpoint_path, train_path, device, bf16, data.vocab, scratch)
            scorer = stack.enter_context(start())
            note = scorer.note

            def fresh():  # the scorer ended, with all it left; one that saw no scored batch
                scorer.close()
                if scorer.leftovers:
                    raise MeasurementRefused(
                        f"train.py's model process left {scorer.leftovers} process(es) that would "
                        "not die; the causality checks cannot run apart from them"
                    )
                return stack.enter_context(start())

            # causality is checked on the scored batches themselves, by a fresh process
            val_bpb = evaluate_bpb(scorer, None, data, device, batch_size, bf16, None, rng, fresh=fresh)
    else:
        val_bpb, readable = _evaluate_in_process(ckpt, train_path, device, data, batch_size, bf16, rng, scratch)
        note = f"train.py's code could read the validation files from disk ({readable})" if readable else ""
    if note:
        _stderr.write(f"note: {note}\n")
    if val_bpb < MIN_PLAUSIBLE_BPB:
        raise MeasurementRefused(
            f"val_bpb {val_bpb:.4f} is below the plausible floor {MIN_PLAUSIBLE_BPB:g} for this "
            "data (preset.toml's min_plausible_bpb); the model must have seen the targets"
        )
    lines = ["---"]
    lines += [f"{key + ':':17s} {value}" for key, value in stats.items()]  # train.py's: informative
    lines += [
        f"eval_tokens:      {data.num_rows * (data.row_len - 1)}",
        f"eval_seconds:     {time.time() - t0:.1f}",
        f"val_bpb:          {val_bpb:.6f}",  # the metric: last, so nothing before it can override
    ]
    _stdout.write("\n".join(lines) + "\n")
    _stdout.flush()
    return val_bpb


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _evaluate_in_process(ckpt, train_path, device, data, batch_size, bf16, rng, scratch):
    """The model rebuilt and run in this process (CUDA): (val_bpb, why the files stay readable)."""
    readable = hide_data_files(scratch)
    guard = RuntimeGuard()
    with Quarantine():  # train.py's code runs in here: its output cannot pass for the summary
        try:
            model = build_from_checkpoint(ckpt, train_path, device)
            guard.check()
            # causality is checked inside, on the scored batches themselves
            val_bpb = evaluate_bpb(model, None, data, device, batch_size, bf16, guard, rng)
        except SystemExit as exc:
            raise ModelContractError(
                f"train.py exited ({exc.code!r}) while being evaluated"
            ) from None
    guard.check()
    return val_bpb, readable


def main(argv=None, exit_process=False):
    """The `evaluate` step: the summary on stdout, `val_bpb` last; exit code 0, 1 (train.py's
    model failed or broke the contract) or 3 (refused: tampering, looking ahead, implausible)."""
    parser = argparse.ArgumentParser(description="Score train.py's checkpoint: val_bpb.")
    parser.add_argument(
        "--checkpoint", help="checkpoint path (default: $AUTORESEARCH_OUT/model.pt)"
    )
    parser.add_argument(
        "--in-process", action="store_true",
        help="run train.py's model in this process, as on CUDA (the harness's own tests)",
    )  # fmt: skip
    parser.add_argument("--serve-model", type=int, help=argparse.SUPPRESS)  # ModelProcess's child
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ruleset", type=int, help=argparse.SUPPRESS)  # applied at the very start
    args = parser.parse_args(argv)
    code = 0
    if args.serve_model is not None:
        try:
            serve_model(args.serve_model, args.checkpoint, args.train, torch.device(args.device),
                        args.autocast, args.vocab)  # fmt: skip
        except BaseException:  # shown to the harness, prefixed, after the evaluation
            traceback.print_exc()
            code = 1
        _stdout.flush()
        _stderr.flush()
        os._exit(code)
    try:
        evaluate(args.checkpoint, in_process=args.in_process or None)
    except ModelContractError as exc:
        _stderr.write(f"FAIL: {exc}\n")
        code = 1
    except MeasurementRefused as exc:  # tampering, looking ahead, an implausible score
        _stderr.write(f"harness: {exc}\n")
        code = 3
    except BaseException:  # train.py's model failed (or raised past Exception): a crash
        traceback.print_exc(file=_stderr)
        code = 1
    if exit_process:
        # Leave now: atexit handlers, finalizers or threads that train.py left behind must
        # not get to print after the summary (the loop reads the last `val_bpb:` line).
        _stdout.flush()
        _stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main(exit_process=True))
