"""The GPT template's harness against a train.py that tries to game `val_bpb`.

Every variant below rebuilds the same checkpoint (a zero bigram table: the uniform distribution)
with a train.py carrying one attack; `python evaluate.py` (the split harness's metric) must refuse
it (exit code 3, a `harness:` line, no `val_bpb`), fail it (exit code 1, no `val_bpb`) or measure
the honest value anyway, and a sample of them gives the same outcome through `python prepare.py
evaluate`. On CPU the model runs in a process of its own; the attacks on the harness's process
run again with `--in-process` (the model in the harness's process, as on CUDA), where the
runtime guard must refuse them. The evaluations run two at a time in one module fixture: each is
a fresh interpreter (torch import included).
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")

import test_gpt_template as gpt  # noqa: E402
from test_gpt_template import HARNESS_FILES, import_file, repo_task, sh, task_env  # noqa: E402

from autoresearch import metrics, templates  # noqa: E402
from autoresearch.config import load_config  # noqa: E402
from autoresearch.executors.sandbox import Sandbox, bwrap_problem  # noqa: E402

VOCAB = 2048  # the cpu preset's vocabulary
prepared = gpt.prepared  # the cpu-preset task with kjv prepared (once for this module)

TRAIN = """
import torch
import torch.nn.functional as F

class Model(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, idx):
        return self.table[idx]

def build_model(vocab_size):
    return Model(vocab_size)

if __name__ != "__main__":  # the attack: runs when prepare.py imports this file to rebuild
{attack}
"""

REFUSED = {  # attack -> what the refusal names
    "cross_entropy": (
        "_ce = F.cross_entropy\nF.cross_entropy = lambda *a, **k: _ce(*a, **k) * 0.01",
        "torch.nn.functional.cross_entropy",
    ),
    "tensor_sum": (
        "_sum = torch.Tensor.sum\ntorch.Tensor.sum = lambda self, *a, **k: _sum(self, *a, **k) * 0.01",
        "torch.Tensor.sum",
    ),
    "aten_loss": (
        "_l = torch._C._nn.cross_entropy_loss\n"
        "torch._C._nn.cross_entropy_loss = lambda *a, **k: _l(*a, **k) * 0.01",
        "torch._C._nn.cross_entropy_loss",
    ),
    "evaluate_function": (
        "import evaluate\nevaluate.evaluate_bpb = lambda *a, **k: 0.001",
        "evaluate.evaluate_bpb",
    ),
    "evaluate_private_ref": (
        "import evaluate\n_ce = evaluate._cross_entropy\n"
        "evaluate._cross_entropy = lambda *a, **k: _ce(*a, **k) * 0.01",
        "evaluate._cross_entropy",
    ),
    "prepare_function": (  # the data side of the harness is guarded too
        "import prepare\nprepare.pack_rows = lambda *a, **k: iter(())",
        "prepare.pack_rows",
    ),
    "function_mode": (
        "from torch.overrides import TorchFunctionMode\n"
        "class Cheap(TorchFunctionMode):\n"
        "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        out = func(*args, **(kwargs or {}))\n"
        "        return out * 0.01 if func is F.cross_entropy else out\n"
        "Cheap().__enter__()",
        "mode stack",
    ),
    "stdout": (
        "import sys\n"
        "class Out:\n"
        "    def write(self, s): return sys.__stdout__.write(s.replace('val_bpb:', 'ignored:'))\n"
        "    def flush(self): sys.__stdout__.flush()\n"
        "sys.stdout = Out()",
        "sys.stdout",
    ),
    # the causality checks' cuts, all made 0 (only position 0 compared)
    "random_cuts": ("import random\nrandom.Random.randrange = lambda self, *a, **k: 0", "random.Random.randrange"),
    # the guard's own method replaced on its class, then the floor and the check
    "guard_class": (
        "import evaluate\nevaluate.RuntimeGuard.changes = lambda self: []\n"
        "evaluate.check_causality = lambda *a, **k: None\nevaluate.MIN_PLAUSIBLE_BPB = 0.0",
        "evaluate.MIN_PLAUSIBLE_BPB",
    ),
    # a function's code or defaults swapped in place: the same function object
    "defaults_swap": (
        "F.cross_entropy.__defaults__ = F.cross_entropy.__defaults__[:-1] + (0.0,)",
        "torch.nn.functional.cross_entropy.__code__",
    ),
    "harness_method": (  # which targets count, decided by a method of the harness's class
        "import evaluate\n_t = evaluate.ValidationData.targets\n"
        "evaluate.ValidationData.targets = lambda self, *a, **k: _t(self, *a, **k)",
        "evaluate.ValidationData.targets",
    ),
    # patched while the model runs on the validation rows, restored at its next call: only a
    # check after every batch sees it
    "during_forward": (
        "import evaluate\n_ce = evaluate._cross_entropy\n"
        "_forward = Model.forward\n"
        "def forward(self, idx):\n"
        "    evaluate._cross_entropy = _ce\n"
        "    if idx.shape[0] > 2:  # the causality check uses 2 rows; the evaluation more\n"
        "        evaluate._cross_entropy = lambda *a, **k: _ce(*a, **k) * 0.01\n"
        "    return _forward(self, idx)\n"
        "Model.forward = forward",
        "evaluate._cross_entropy",
    ),
}

PEEK = (  # the answer: the next input token, read from the batch
    "_forward = Model.forward\n"
    "def peek(self, idx):\n"
    "    ahead = F.one_hot(torch.roll(idx, -1, 1), self.table.size(0)).float()\n"
    "    return _forward(self, idx) + 50 * ahead\n"
)

LOOKS_AHEAD = {  # attack -> the model looks ahead only where the old probe (2 random rows) did not
    "peek_unless_batch_of_2": PEEK
    + "Model.forward = lambda self, idx: _forward(self, idx) if idx.shape[0] == 2 else peek(self, idx)",
    "peek_without_gradients": PEEK
    + "Model.forward = lambda self, idx: _forward(self, idx) if torch.is_grad_enabled() else peek(self, idx)",
    "peek_on_real_text": PEEK  # real rows start with BOS (the last id); random tokens rarely do
    + "Model.forward = lambda self, idx: peek(self, idx) if bool((idx[:, 0] == 2047).all()) else _forward(self, idx)",
}

# Causal, so every check passes: the validation rows, looked up by the last 16 tokens.
LOOKUP = (
    "_next = {{}}\n"
    "for _row in {rows}:\n"
    "    for _i in range(len(_row) - 1):\n"
    "        _next[tuple(_row[max(0, _i - 15) : _i + 1])] = _row[_i + 1]\n"
    "def forward(self, idx):\n"
    "    logits = self.table[idx].clone()\n"
    "    for b, row in enumerate(idx.tolist()):\n"
    "        for i in range(len(row)):\n"
    "            nxt = _next.get(tuple(row[max(0, i - 15) : i + 1]))\n"
    "            if nxt is not None:\n"
    "                logits[b, i, nxt] += {bump}\n"
    "    return logits\n"
    "Model.forward = forward"
)
# Nearly perfect, from the harness's own rows found in memory: only the plausibility floor
# catches it (the in-process limit the README names).
MEMORY_LOOKUP = "import gc\n_data = next(o for o in gc.get_objects() if type(o).__name__ == 'ValidationData')\n" + LOOKUP.format(
    rows="(_data.inputs(i, i + 1)[0].tolist() + [int(_data.targets(i, i + 1)[0][0, -1])] for i in range(_data.num_rows))",
    bump=30,
)
READS_DISK = {  # attack -> a modest cheat, well above the floor, from the files on disk: they are
    # hidden (Landlock) before train.py's code runs, so opening them fails
    "disk_lookup": "import evaluate, prepare\n" + LOOKUP.format(
        rows="evaluate.validation_rows(prepare.Tokenizer.from_directory()).tolist()", bump=3
    ),
    "source_lookup": (  # kjv's validation chapters, from the installed package's file
        "import prepare\n_val = prepare.kjv_documents()[::prepare.VAL_EVERY]\n"
        "Model.forward = lambda self, idx: self.table[idx] + 1e-3 * len(_val)"
    ),
    # training outside the time budget: a bigram table fitted on the training split while the
    # model is rebuilt (counts: the scoring and the checking process fit the same table, so
    # every causality check passes, and it takes the uniform model's score down by a third)
    "train_while_evaluated": (
        "import prepare, pyarrow.parquet as pq\n"
        "_texts = pq.read_table(prepare.read_manifest()['train'][0][0]).column('text').to_pylist()[:400]\n"
        "_counts = torch.ones(2048, 2048)\n"
        "for _ids in prepare.Tokenizer.from_directory().encode(_texts, prepend=2047):\n"
        "    _ids = torch.tensor(_ids)\n"
        "    _counts.index_put_((_ids[:-1], _ids[1:]), torch.ones(len(_ids) - 1), accumulate=True)\n"
        "_table = _counts.log()\n"
        "Model.forward = lambda self, idx: _table[idx]"
    ),
    # the same from the training split's token cache, what train.py's loader reads
    "train_on_the_token_cache": (
        "import itertools, prepare\n"
        "_counts = torch.ones(2048, 2048)\n"
        "for _ids in itertools.islice(prepare.training_documents(0), 400):\n"
        "    _ids = torch.as_tensor(_ids.astype('int64'))\n"
        "    _counts.index_put_((_ids[:-1], _ids[1:]), torch.ones(len(_ids) - 1), accumulate=True)\n"
        "_table = _counts.log()\n"
        "Model.forward = lambda self, idx: _table[idx]"
    ),
}

MEASURED_HONESTLY = {  # attack -> the harness measures the uniform distribution anyway
    # not an attack: an honest train.py that writes a temporary file (torch.compile's cache does)
    # while the model is rebuilt, in the confined model process
    "temporary_file": (
        "import tempfile\n"
        "with tempfile.NamedTemporaryFile('w+') as _f:\n"
        "    _f.write('cache')\n"
        "    _f.flush()\n"
        "    _f.seek(0)\n"
        "    assert _f.read() == 'cache'"
    ),
    # print a better score after the harness's summary, at interpreter exit
    "atexit": "import atexit\natexit.register(lambda: print('---\\nval_bpb: 0.000100', flush=True))",
    # read the targets through the storage behind the input view (rows of T+1 tokens)
    "storage_peek": (
        "def forward(self, idx):\n"
        "    B, T = idx.shape\n"
        "    full = torch.empty(0, dtype=idx.dtype).set_(idx.untyped_storage())\n"
        "    if idx.stride(0) == T + 1 and full.numel() >= idx.storage_offset() + B * (T + 1):\n"
        "        nxt = torch.as_strided(full, (B, T), idx.stride(), idx.storage_offset() + 1)\n"
        "        return self.table[idx] + 50 * F.one_hot(nxt, self.table.size(0)).float()\n"
        "    return self.table[idx]\n"
        "Model.forward = forward"
    ),
}

REPLAY = """{load}
_forward = Model.forward
def forward(self, idx):
    logits = _forward(self, idx).clone()
    for r, row in enumerate(idx.tolist()):
        for t in range(len(row) - 1):
            logits[r, t, _memo.setdefault(tuple(row[: t + 1]), row[t + 1])] += 3
{save}
    return logits
Model.forward = forward"""

# Closed by the model's own process only: in the harness's process (CUDA, --in-process) they
# work, as the template README says.
SEPARATION_CLOSES = {
    # a kernel registered with torch's dispatcher: the metric's nll_loss, halved
    "dispatcher_kernel": (
        "_lib = torch.library.Library('aten', 'IMPL')\n"
        "def _nll(x, target, weight, reduction, ignore_index):\n"
        "    return -x.gather(1, target.unsqueeze(1)).squeeze(1) * 0.5, torch.zeros((), dtype=x.dtype)\n"
        "_lib.impl('nll_loss_forward', _nll, 'CPU')\n"
        "Model.lib = _lib  # kept alive with the model"
    ),
    # the validation file opened on a thread older than the Landlock restriction (a signal
    # handler run on OpenBLAS's worker: Landlock restricts a thread and those it starts, never
    # the others), then a bigram table fitted on it: causal, above the floor, and far better
    "old_thread": (
        "import ctypes, os, time, prepare, pyarrow as pa, pyarrow.parquet as pq\n"
        "_libc, _fds = ctypes.CDLL(None, use_errno=True), []\n"
        "def _open(signum):\n"
        "    try:\n"
        "        _fds.append(os.open(prepare.read_manifest()['val'][0][0], os.O_RDONLY))\n"
        "    except OSError:\n"
        "        pass\n"
        "_handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(_open)\n"
        "_libc.signal(12, _handler)\n"
        "for _tid in map(int, os.listdir('/proc/self/task')):\n"
        "    if _tid != os.getpid() and not _fds:\n"
        "        _libc.syscall(234, os.getpid(), _tid, 12)  # tgkill: the handler runs on that thread\n"
        "        time.sleep(0.2)\n"
        "_libc.signal(12, 0)\n"
        "if _fds:\n"
        "    with os.fdopen(_fds[0], 'rb') as _f:\n"
        "        _texts = pq.read_table(pa.BufferReader(_f.read())).column('text').to_pylist()\n"
        "    _counts = torch.ones(2048, 2048)\n"
        "    for _ids in prepare.Tokenizer.from_directory().encode(_texts, prepend=2047):\n"
        "        _ids = torch.tensor(_ids)\n"
        "        _counts.index_put_((_ids[:-1], _ids[1:]), torch.ones(len(_ids) - 1), accumulate=True)\n"
        "    _table = _counts.log()\n"
        "    Model.forward = lambda self, idx: _table[idx]"
    ),
    # one token ahead when a prefix is new, remembered, and the same answer when a batch comes
    # back with its future changed: passes checks run by the process that scored
    "replay": REPLAY.format(load="_memo = {}", save=""),
    # the same memory kept in a file, for a process that starts later
    "file_replay": REPLAY.format(
        load="import json, os\n_path = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'memo.json')\n"
        "try:\n    _memo = {tuple(k): v for k, v in json.load(open(_path))}\nexcept (OSError, ValueError):\n    _memo = {}",
        save="    try:\n        json.dump([[list(k), v] for k, v in _memo.items()], open(_path, 'w'))\n"
        "    except OSError:\n        pass",
    ),
    # a summary written through every descriptor the process holds (the harness keeps a copy of
    # its stdout), then the process ended before the harness prints its own
    "saved_descriptor": (
        "import os\n"
        "for _fd in range(3, 256):\n"
        "    try:\n"
        "        os.write(_fd, b'---\\nval_bpb: 0.010000\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)"
    ),
}

EXITS = {  # attack -> the evaluate step's exit code: print a summary, then end the process
    # (with the model in the harness's process; in its own process, the exit code is always 1)
    "os_exit": ("print('---\\nval_bpb: 0.000100', flush=True)\nimport os\nos._exit(0)", 0),
    "sys_exit": ("print('---\\nval_bpb: 0.000100', flush=True)\nimport sys\nsys.exit(0)", 1),
    # an exception past Exception: main() must still leave before the atexit handler prints
    "base_exception": (
        "import atexit\natexit.register(lambda: print('---\\nval_bpb: 0.000100', flush=True))\n"
        "class Out(BaseException):\n    pass\nraise Out()",
        1,
    ),
}

SUBCLASS = (  # logits as a Tensor subclass that shrinks the harness's cross-entropy
    "class Cheap(torch.Tensor):\n"
    "    @classmethod\n"
    "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
    "        out = super().__torch_function__(func, types, args, kwargs)\n"
    "        return out * 0.01 if func is F.cross_entropy else out\n"
    "_forward = Model.forward\n"
    "Model.forward = lambda self, idx: _forward(self, idx).as_subclass(Cheap)"
)

INJECTED_STATS = {
    "depth": "4\nval_bpb: 0.0001",  # a text value with a newline: a second val_bpb line
    "num_steps": 12,
    "tokens_per_sec": 1234.5,
    "val_bpb": 0.0001,
    "VAL_BPB": 0.0002,
    "x\nval_bpb": 0.0003,
    "flag": True,
    "nan_value": float("nan"),
    "mfu_percent": "unknown",
}


def indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


class ZeroBigram(torch.nn.Module):
    """The checkpoint every variant rebuilds (TRAIN's Model): zero logits, the uniform model."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(VOCAB, VOCAB))


def save_zero_bigram(harness: ModuleType, stats: dict, path: Path) -> Path:
    return harness.save_checkpoint(ZeroBigram(), "build_model", {"vocab_size": VOCAB}, stats, path)


@pytest.fixture(scope="module")
def outcomes(prepared: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> the evaluate step's CompletedProcess, for every variant (two at a time)."""
    task, data, _ = prepared
    root = tmp_path_factory.mktemp("attacks")
    harness = import_file(task / "prepare.py", "prepare_attacks")  # for save_checkpoint
    plain = save_zero_bigram(harness, {"num_steps": 12}, root / "plain.pt")
    injected = save_zero_bigram(harness, INJECTED_STATS, root / "injected.pt")
    variants = {
        "honest": (TRAIN.format(attack="    pass"), plain),
        "stats": (TRAIN.format(attack="    pass"), injected),
        "subclass": (TRAIN.format(attack=indent(SUBCLASS)), plain),
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, (c, _) in REFUSED.items()},
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, c in MEASURED_HONESTLY.items()},
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, (c, _) in EXITS.items()},
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, c in LOOKS_AHEAD.items()},
        "lookup": (TRAIN.format(attack=indent(MEMORY_LOOKUP)), plain),
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, c in READS_DISK.items()},
        **{k: (TRAIN.format(attack=indent(c)), plain) for k, c in SEPARATION_CLOSES.items()},
    }

    def evaluate(job: tuple[str, str]) -> tuple[str, object]:
        name, command = job
        code, checkpoint = variants[name]
        folder = root / re.sub(r"\W+", "-", f"{name} {command}")
        folder.mkdir()
        for file in HARNESS_FILES:
            (folder / file).write_bytes((task / file).read_bytes())
        (folder / "train.py").write_text(code)
        # a module the run step could leave next to the harness: it must not shadow the stdlib's
        (folder / "json.py").write_text("raise SystemExit('json.py shadowed the stdlib')\n")
        env = task_env(folder, data, AUTORESEARCH_OUT=str(root / "out"))
        key = {"python evaluate.py": name, "python evaluate.py --in-process": f"{name} in process",
               "python prepare.py evaluate": f"{name} via prepare.py"}[command]  # fmt: skip
        return key, sh(f"{command} --checkpoint {checkpoint}", folder, env)

    jobs = [(name, "python evaluate.py") for name in variants]
    jobs += [(name, "python evaluate.py --in-process") for name in IN_PROCESS]
    jobs += [(name, "python prepare.py evaluate") for name in VIA_PREPARE]
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(evaluate, jobs))


# the attacks run again with the model in the harness's process, as on CUDA
IN_PROCESS = ("honest", *REFUSED, *EXITS, *READS_DISK, *SEPARATION_CLOSES, "lookup", "subclass")
# the same attacks through `python prepare.py evaluate`, the harness's other entry point
VIA_PREPARE = ("honest", "cross_entropy", "evaluate_private_ref", "os_exit", "sys_exit",
               "peek_without_gradients", "lookup", "disk_lookup", "subclass")  # fmt: skip


def val_bpb_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"\s*val_bpb\s*:", line)]


def honest_value(outcomes: dict) -> float:
    done = outcomes["honest"]
    assert done.returncode == 0, done.stdout + done.stderr
    return metrics.parse_summary(done.stdout)["val_bpb"]


def test_the_honest_model_is_measured_with_val_bpb_last(outcomes: dict) -> None:
    done = outcomes["honest"]
    value = honest_value(outcomes)
    assert value == pytest.approx(math.log2(VOCAB) * 0.27, rel=0.2)  # uniform
    assert val_bpb_lines(done.stdout) == [done.stdout.strip().splitlines()[-1]]
    assert metrics.parse_summary(done.stdout)["num_steps"] == 12


def test_stats_cannot_inject_a_val_bpb_line(outcomes: dict) -> None:
    done = outcomes["stats"]
    assert done.returncode == 0, done.stdout + done.stderr
    lines = val_bpb_lines(done.stdout)
    assert len(lines) == 1 and lines[0] == done.stdout.strip().splitlines()[-1]
    summary = metrics.parse_summary(done.stdout)
    assert summary["val_bpb"] == honest_value(outcomes)
    assert "VAL_BPB" not in summary
    assert not any(f"0.000{i}" in done.stdout for i in (1, 2, 3))
    assert summary["num_steps"] == 12 and summary["tokens_per_sec"] == 1234.5
    for dropped in ("depth", "flag", "nan_value", "mfu_percent"):
        assert dropped not in summary and f"{dropped}:" not in done.stdout, dropped


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_patches_in_the_models_own_process_do_not_reach_the_metric(outcomes: dict, attack: str) -> None:
    done = outcomes[attack]
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(val_bpb_lines(done.stdout)) == 1
    assert metrics.parse_summary(done.stdout)["val_bpb"] == honest_value(outcomes)


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_in_the_harness_process_a_train_py_that_patches_the_runtime_is_refused(
    outcomes: dict, attack: str
) -> None:
    done = outcomes[f"{attack} in process"]
    assert done.returncode == 3, done.stdout + done.stderr
    assert "harness: train.py modified" in done.stderr and "refusing to measure" in done.stderr
    assert REFUSED[attack][1] in done.stderr
    assert "val_bpb" not in done.stdout


@pytest.mark.parametrize("attack", sorted(LOOKS_AHEAD))
def test_a_model_that_looks_ahead_only_when_scored_is_refused(outcomes: dict, attack: str) -> None:
    done = outcomes[attack]
    assert done.returncode == 3, done.stdout + done.stderr
    assert re.search(
        r"^harness: causality check failed on a validation batch of 32 x 256", done.stderr, re.M
    )
    assert "val_bpb" not in done.stdout


def test_a_score_below_the_plausible_floor_is_refused(outcomes: dict) -> None:
    """The harness's own rows, found in memory (in its process) and looked up: only the floor
    catches it. In the model's own process there is nothing to find."""
    alone = outcomes["lookup"]
    assert alone.returncode == 1 and "StopIteration" in alone.stderr, alone.stdout + alone.stderr
    assert "val_bpb" not in alone.stdout
    done = outcomes["lookup in process"]
    assert done.returncode == 3, done.stdout + done.stderr
    found = re.search(
        r"^harness: val_bpb (\S+) is below the plausible floor 0.3 for this data", done.stderr, re.M
    )
    assert found and float(found[1]) < 0.3, done.stderr
    assert "the model must have seen the targets" in done.stderr
    assert "val_bpb" not in done.stdout


@pytest.mark.parametrize("where", ["", " in process"])
@pytest.mark.parametrize("attack", sorted(READS_DISK))
def test_train_py_cannot_read_the_validation_files_while_evaluated(
    outcomes: dict, attack: str, where: str
) -> None:
    done = outcomes[attack + where]
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"errno 13\] Permission denied", done.stderr, re.I), done.stderr  # pyarrow's, open()'s
    assert "val_bpb" not in done.stdout
    assert "note: train.py's code could read" not in outcomes["honest" + where].stderr


def test_logits_of_a_tensor_subclass_break_the_contract_or_lose_their_class(outcomes: dict) -> None:
    done = outcomes["subclass in process"]
    assert done.returncode == 1
    assert "a plain floating-point torch.Tensor; got Cheap" in done.stderr
    assert "val_bpb" not in done.stdout
    alone = outcomes["subclass"]  # only their bytes come back from the model's process
    assert metrics.parse_summary(alone.stdout)["val_bpb"] == honest_value(outcomes)


def test_what_the_models_own_process_closes(outcomes: dict) -> None:
    """A replay of memorised calls, a dispatcher kernel, a thread older than the Landlock
    restriction, the harness's saved descriptors: nothing in the harness's process sees them
    (they work there: the first takes a fifth off the score, the second halves it, the third
    reads the validation file, the fourth prints its own summary); from the model's own
    processes they reach nothing."""
    honest = honest_value(outcomes)
    for attack in ("replay", "file_replay"):  # checked by a fresh process, with no memory of it
        done = outcomes[attack]
        assert done.returncode == 3 and "harness: causality check failed" in done.stderr, done.stderr
    inside = outcomes["replay in process"]
    assert metrics.parse_summary(inside.stdout)["val_bpb"] < 0.8 * honest, inside.stdout + inside.stderr
    assert metrics.parse_summary(outcomes["old_thread"].stdout)["val_bpb"] == honest
    inside = outcomes["old_thread in process"]
    assert metrics.parse_summary(inside.stdout)["val_bpb"] < 0.8 * honest, inside.stdout + inside.stderr
    assert metrics.parse_summary(outcomes["dispatcher_kernel"].stdout)["val_bpb"] == honest
    inside = outcomes["dispatcher_kernel in process"]
    assert metrics.parse_summary(inside.stdout)["val_bpb"] == pytest.approx(honest / 2, rel=1e-3)
    alone = outcomes["saved_descriptor"]
    assert alone.returncode == 1 and "val_bpb" not in metrics.parse_summary(alone.stdout + "\n" + alone.stderr)
    assert "model process sent something else than its ready message" in alone.stderr  # it got the pipe
    inside = outcomes["saved_descriptor in process"]
    assert metrics.parse_summary(inside.stdout)["val_bpb"] == 0.01


@pytest.mark.parametrize("attack", sorted(MEASURED_HONESTLY))
def test_attacks_that_are_measured_honestly(outcomes: dict, attack: str) -> None:
    done = outcomes[attack]
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(val_bpb_lines(done.stdout)) == 1
    assert metrics.parse_summary(done.stdout)["val_bpb"] == honest_value(outcomes)


@pytest.mark.parametrize("where", ["", " in process"])
@pytest.mark.parametrize("attack", sorted(EXITS))
def test_train_py_cannot_print_a_summary_and_leave(outcomes: dict, attack: str, where: str) -> None:
    done = outcomes[attack + where]
    assert done.returncode == (EXITS[attack][1] if where else 1), done.stdout + done.stderr
    # the loop reads stdout and stderr together: no val_bpb in either
    assert "val_bpb" not in metrics.parse_summary(done.stdout + "\n" + done.stderr)
    if attack == "sys_exit":
        assert "train.py exited (0) while being evaluated" in done.stderr
        assert "train.py| ---" in done.stderr  # what it printed, shown, prefixed


harness = gpt.harness  # prepare.py imported in-process, data prepared


@pytest.mark.parametrize("name", VIA_PREPARE)
def test_both_entry_points_measure_and_refuse_alike(outcomes: dict, name: str) -> None:
    direct, via = outcomes[name], outcomes[f"{name} via prepare.py"]
    assert via.returncode == direct.returncode, via.stdout + via.stderr
    assert metrics.parse_summary(via.stdout).get("val_bpb") == metrics.parse_summary(
        direct.stdout
    ).get("val_bpb")
    refusal = [line for line in direct.stderr.splitlines() if line.startswith("harness: ")]
    if refusal:  # the same reason (the numbers in it may differ: the probes are random)
        assert via.stderr.count("harness: ") == 1
        assert refusal[0].split(":")[1] in via.stderr


def test_the_template_model_scores_as_the_unguarded_formula(
    prepared: tuple[Path, Path, str], harness: ModuleType, tmp_path: Path
) -> None:
    """The real template train.py passes the guard and scores what the plain formula gives, in
    the evaluation's precision (bf16 autocast where prepare.bf16_is_fast says so), and within
    bf16's noise of the fp32 formula."""
    task, data, _ = prepared
    torch.manual_seed(0)
    train = import_file(task / "train.py", "train_guarded")
    tok = harness.Tokenizer.from_directory()
    config = train.model_config(tok.vocab_size)
    model = train.build_model(**config).eval()
    with torch.no_grad():
        for p in model.parameters():  # a model with an opinion (zero-init projections learn)
            p.add_(torch.randn_like(p) * 0.05)
    checkpoint = harness.save_checkpoint(model, "build_model", config, {}, tmp_path / "m.pt")
    env = task_env(task, data, AUTORESEARCH_OUT=str(tmp_path))
    done = sh(f"python evaluate.py --checkpoint {checkpoint}", task, env)
    assert done.returncode == 0, done.stdout + done.stderr
    got = metrics.parse_summary(done.stdout)["val_bpb"]
    # the formula as it stood before the guard: CE in fp32 over the rows, masked by byte count
    rows = import_file(task / "evaluate.py", "evaluate_formula").validation_rows(tok)
    cpu = torch.device("cpu")

    def formula(bf16: bool) -> float:
        nats = 0.0
        for start in range(0, rows.shape[0], 32):  # the evaluation's batches on CPU: 2**13 tokens
            x, y = rows[start : start + 32, :-1], rows[start : start + 32, 1:]
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x).float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, tok.vocab_size),
                                                   y.reshape(-1), reduction="none")  # fmt: skip
            counted = tok.token_bytes[y.reshape(-1)] > 0
            nats += float((ce * counted).sum(dtype=torch.float64))
        return nats / (math.log(2) * int(tok.token_bytes[rows[:, 1:]].sum()))

    assert got == pytest.approx(formula(harness.bf16_is_fast(cpu)), abs=2e-6)
    assert got == pytest.approx(formula(False), abs=2e-3)  # bf16 or not, the same model
    assert got < math.log2(VOCAB) * 0.27 * 1.3  # not a degenerate model


# --- protected data ------------------------------------------------------------------------


def test_protected_data_covers_validation_and_tokenizer_not_training(
    prepared: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, data, _ = prepared
    paths = json.loads((data / "manifest.json").read_text())
    val_files = {Path(p).resolve() for p, *_ in paths["val"]}
    train_files = {Path(p).resolve() for p, *_ in paths["train"]}
    assert all(p.parent == (data / "val").resolve() for p in val_files)  # their own folder
    wanted = val_files | {(data / n).resolve() for n in ("tokenizer.tiktoken", "tokenizer.json",
                                                         "manifest.json")}  # fmt: skip
    for size in ("cpu", "h100"):
        task = tmp_path / size
        templates.write_template("gpt", task, size=size)
        globs = load_config(task).protected_data
        assert globs and all(g.startswith(".autoresearch/data/") for g in globs), globs
        # the default data folder is .autoresearch/data of the task: match there
        covered = {
            p.resolve()
            for g in globs
            for p in data.glob(g.removeprefix(".autoresearch/data/"))
            if p.is_file()
        }
        assert covered == wanted, size
        assert not covered & train_files


DAEMON = """\
import os, sys
def _daemons():
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found += b"leftover-daemon" in open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            pass
    return found
import ctypes, socket
_libc = ctypes.CDLL(None)
_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_udp.settimeout(0.5)
try:
    _udp.sendto(b"?", ("127.0.0.1", 47123))
    _answers = int(_udp.recv(16) == b"here")
except OSError:
    _answers = 0
print("daemons alive:", _daemons(), "shared memory:", int(_libc.shmget(0x5EED, 0, 0) >= 0),
      "udp answers:", _answers, "init of its own PID namespace:", int(os.getpid() == 1), file=sys.stderr)
_libc.shmget(0x5EED, 4096, 0o1600)  # System V shared memory outlives its process: IPC_CREAT
if not _daemons() and os.fork() == 0:  # one that outlives the process, in a session of its own
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "leftover-daemon"])
    os._exit(0)
if os.fork() == 0:  # one on a UDP port, forking on (a new pid each time) for 3 s: one pass misses it
    os.setsid()
    _udp.bind(("127.0.0.1", 47123))
    import time
    _end = time.time() + 3
    while time.time() < _end:
        if os.fork():
            os._exit(0)
    while True:
        _, _addr = _udp.recvfrom(16)
        _udp.sendto(b"here", _addr)
"""


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap cannot run here: {bwrap_problem()}")
def test_what_the_scoring_process_leaves_is_gone_before_the_checks(tmp_path: Path) -> None:
    """In the sandbox, the causality checks' fresh process finds nothing the scoring one left:
    a daemon in a session of its own, one on a UDP port that keeps forking (a new pid each time,
    so that one pass over /proc misses it), or System V shared memory could hand it the answers
    the scoring one gave."""
    task, env = repo_task(tmp_path)
    (task / "train.py").write_text(TRAIN.format(attack=indent(DAEMON)))
    out = tmp_path / "out"
    out.mkdir()
    checkpoint = save_zero_bigram(import_file(task / "prepare.py", "prepare_daemon"), {}, out / "m.pt")
    box = Sandbox.for_task(load_config(task / "autoresearch.toml"), mode="bwrap")
    argv = box.prefix("evaluate", cwd=task, worktree=task, writable=[out])
    done = sh(" ".join([*map(repr, argv), "python", "evaluate.py", "--checkpoint", str(checkpoint)]),
              task, box.environment(env), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # the scorer, then the checker: neither finds anything
    found = "train.py| daemons alive: 0 shared memory: 0 udp answers: 0 init of its own PID namespace: 1"
    assert done.stderr.count(found) == 2, done.stderr
