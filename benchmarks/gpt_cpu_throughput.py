"""Tokens/s of the GPT template's cpu-preset training step against a plain minimal GPT step.

Both models have the same shape (depth, width, heads, vocabulary, sequence length, batch) and
run on the same data, alternately, in one process: the ratio says what the template's modern
features (rotary, QK-norm, value embeddings, x0 mixing, softcap, Muon) cost or save per token
against a nanoGPT-style baseline (learned positions, LayerNorm, GELU, tied head, AdamW).
Each round times the two back to back and the median of the rounds' ratios is reported, so a
load that comes and goes on a shared machine moves both sides of a ratio alike. The issue's
target: the template >= 1.0x the minimal GPT.

Usage: python benchmarks/gpt_cpu_throughput.py [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch import templates


class MinimalBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class MinimalGPT(nn.Module):
    """nanoGPT's shape: token + learned position embeddings, pre-LN blocks, tied head."""

    def __init__(self, vocab: int, seq_len: int, depth: int, dim: int, heads: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(MinimalBlock(dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.wte.weight.T  # (B, T, V)


def load_task() -> tuple[ModuleType, ModuleType]:
    """The cpu preset written to a temporary folder; its prepare.py and train.py imported."""
    folder = Path(tempfile.mkdtemp(prefix="gpt-bench-"))
    templates.write_template("gpt", folder, size="cpu")
    sys.path.insert(0, str(folder))
    modules = []
    for name in ("prepare", "train"):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and model")
    parser.add_argument(
        "--rounds", type=int, default=9, help="alternating rounds (median is reported)"
    )
    args = parser.parse_args()
    prepare, train = load_task()
    device = torch.device("cpu")
    bf16 = train.bf16_is_fast(device)
    vocab, T, B = prepare.VOCAB_SIZE, prepare.MAX_SEQ_LEN, train.DEVICE_BATCH_SIZE
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (B, T + 1), generator=gen) for _ in range(4)]

    torch.manual_seed(0)
    model = train.build_model(**train.model_config(vocab))
    adamw, muon = train.build_optimizers(model, device, bf16)
    plain = MinimalGPT(vocab, T, train.DEPTH, train.MODEL_DIM, train.MODEL_DIM // train.HEAD_DIM)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.1)

    def template_step(batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = train.forward_loss(model, batch[:, :-1], batch[:, 1:])
        loss.backward()
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)

    def plain_step(batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = plain(batch[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, vocab), batch[:, 1:].reshape(-1)).backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def tokens_per_sec(step: object) -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(batches[i % len(batches)])  # type: ignore[operator]
        return args.steps * B * T / (time.perf_counter() - t0)

    for step in (template_step, plain_step):  # warm-up: allocator, autocast weight caches
        tokens_per_sec(step)
    ours, theirs, ratios = [], [], []
    for r in range(args.rounds):
        first, second = (template_step, plain_step) if r % 2 == 0 else (plain_step, template_step)
        measured = {first: tokens_per_sec(first), second: tokens_per_sec(second)}
        ours.append(measured[template_step])
        theirs.append(measured[plain_step])
        ratios.append(ours[-1] / theirs[-1])
    a, b = statistics.median(ours), statistics.median(theirs)
    n_ours = sum(p.numel() for p in model.parameters()) / 1e6
    n_plain = sum(p.numel() for p in plain.parameters()) / 1e6
    print(f"shape: depth {train.DEPTH}, width {train.MODEL_DIM}, seq {T}, vocab {vocab}, batch {B} rows; "
          f"{'bf16 autocast' if bf16 else 'fp32'}; {torch.get_num_threads()} threads on {os.cpu_count()} cores")  # fmt: skip
    print(f"template (cpu preset, {n_ours:.2f}M params): {a:10,.0f} tokens/s")
    print(f"minimal GPT ({n_plain:.2f}M params):        {b:10,.0f} tokens/s")
    print(f"ratio template / minimal: {statistics.median(ratios):.2f}x (median of {args.rounds} "
          f"rounds; {min(ratios):.2f}x-{max(ratios):.2f}x; target 1.0x)")  # fmt: skip


if __name__ == "__main__":
    main()
