"""Tokens/s of the GPT template's training loader alone, against the loader it replaced.

Writes the h100 preset (rows of 2048 tokens, 64 rows a batch) to a temporary folder, prepares
the offline `kjv` data with a 2048-token BPE (seconds; kjv chapters are ~1k such tokens), and
drains batches as fast as it can from both, alternately, in one process:
  - the template's loader (`make_dataloader`): a background thread packing rows from the token
    cache written at setup, best fit by bisect;
  - the previous design: text read and tokenized on the fly, best fit by a linear scan, in the
    training thread (the same batches, as tests/test_gpt_loader.py checks).
The issue's target: the loader alone sustains >= 8M tokens/s on this 2-core machine (the h100
preset trains at ~1.7M tokens/s on an H100, upstream's reference run).

Usage: python benchmarks/gpt_loader.py [--batches N] [--rounds R]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from autoresearch import templates

TARGET = 8e6  # tokens/s


def previous_loader(prepare: ModuleType, B: int, T: int, seed: int) -> Iterator[torch.Tensor]:
    """The loader before the token cache: tokenize in batches of 64 documents, pack by scan."""
    tok = prepare.Tokenizer.from_directory()

    def docs() -> Iterator[list[int]]:
        texts = prepare.iter_documents("train", seed)
        while True:
            chunk = [text for _, (text, _epoch) in zip(range(64), texts, strict=False)]
            yield from tok.encode(chunk, prepend=tok.bos_token_id)

    buffer: list[list[int]] = []
    source = docs()

    def rows() -> Iterator[list[int]]:
        while True:
            row: list[int] = []
            while len(row) < T + 1:
                while len(buffer) < 256:
                    buffer.append(next(source))
                space = T + 1 - len(row)
                fits = [i for i, d in enumerate(buffer) if len(d) <= space]
                if fits:
                    row.extend(buffer.pop(max(fits, key=lambda i: len(buffer[i]))))
                else:
                    doc = buffer.pop(min(range(len(buffer)), key=lambda i: len(buffer[i])))
                    row.extend(doc[:space])
                    if len(doc) - space > 1:
                        buffer.append([doc[0], *doc[space:]])
            yield row

    packed = rows()
    while True:
        yield torch.tensor([next(packed) for _ in range(B)], dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches drained per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gpt-loader-")) / "task"
    templates.write_template("gpt", folder, size="h100")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env["AUTORESEARCH_DATA_DIR"] = str(folder / "data")
    done = subprocess.run(
        [sys.executable, "prepare.py", "--data", "kjv", "--vocab-size", "2048"],
        cwd=folder, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"prepare failed: {done.stderr}")
    os.environ["AUTORESEARCH_DATA_DIR"] = env["AUTORESEARCH_DATA_DIR"]
    spec = importlib.util.spec_from_file_location("prepare", folder / "prepare.py")
    assert spec is not None and spec.loader is not None
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    B, T = 64, prepare.MAX_SEQ_LEN
    tok = prepare.Tokenizer.from_directory()
    # one batch ahead at most: the rate measured is the thread's, not a queue filled in advance
    ours = prepare.make_dataloader(tok, B, T, seed=1, prefetch=1)
    theirs = previous_loader(prepare, B, T, seed=1)

    def drain(loader: Iterator[object]) -> float:
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(loader)
        return args.batches * B * T / (time.perf_counter() - t0)

    next(ours), next(theirs)  # warm-up: thread start, first epoch order, page cache
    a, b = [], []
    for _ in range(args.rounds):
        a.append(drain(ours))
        b.append(drain(theirs))
    ours.close()
    new, old = statistics.median(a), statistics.median(b)
    print(
        f"shape: {B} rows x {T} tokens a batch (h100 preset); kjv, BPE vocab 2048; {os.cpu_count()} cores"
    )
    print(f"template loader (thread + token cache): {new:14,.0f} tokens/s")
    print(f"previous loader (tokenize + scan):      {old:14,.0f} tokens/s")
    print(f"ratio template / previous: {new / old:.1f}x; target {TARGET / 1e6:g}M tokens/s: "
          f"{'met' if new >= TARGET else 'NOT met'} ({new / TARGET:.2f}x of it)")  # fmt: skip


if __name__ == "__main__":
    main()
