"""
GPT pretraining in one file: model, optimizer, training loop, summary. This is the file the
agent edits. The fixed harness is prepare.py (data, tokenizer, loader, device facts) and
evaluate.py (the metric): it scores the checkpoint this script saves, in a separate process
(`python evaluate.py`), from the model's logits. The model's contract: model(idx) -> logits
(B, T, V), causal.

Runs on CUDA (ROCm builds too), Apple MPS or CPU, chosen at run time.
Usage: python train.py    (after `python prepare.py`)
"""

import gc
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import (
    MAX_SEQ_LEN,
    Tokenizer,
    bf16_is_fast,
    device_name,
    make_dataloader,
    peak_flops,
    peak_memory_mb,
    pick_device,
    run_seed,
    save_checkpoint,
    synchronize,
    time_budget,
)  # fmt: skip

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; no command-line flags)
# ---------------------------------------------------------------------------

# Model shape
DEPTH = 4  # transformer blocks
MODEL_DIM = 128  # residual stream width (a multiple of HEAD_DIM)
HEAD_DIM = 32  # channels per attention head (MODEL_DIM // HEAD_DIM heads)
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * MODEL_DIM
WINDOW_PATTERN = "L"  # attention window per layer, cycled: L = full, S = half context
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap), keeps early training stable
ROPE_BASE = 10000.0  # rotary embedding base frequency

# Optimization
TOTAL_BATCH_SIZE = 2**12  # tokens per optimizer step (gradient accumulation makes up the rest)
DEVICE_BATCH_SIZE = 16  # rows of MAX_SEQ_LEN tokens per forward/backward pass
EMBEDDING_LR = 0.6  # AdamW learning rate of the token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW learning rate of the lm_head
MATRIX_LR = 0.06  # Muon learning rate of the transformer's matrices
SCALAR_LR = 0.5  # AdamW learning rate of the per-layer residual and x0 mixing scalars
WEIGHT_DECAY = 0.2  # Muon decoupled weight decay, decayed to 0 with training progress
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
MUON_MOMENTUM = 0.95  # Muon (Nesterov) momentum after its warm-up
MUON_MOMENTUM_START = 0.85  # Muon momentum at step 0, raised linearly over MUON_WARMUP_STEPS
MUON_WARMUP_STEPS = 100  # steps of Muon momentum warm-up
NS_STEPS = 5  # Newton-Schulz iterations orthogonalising each Muon update
WARMUP_RATIO = 0.0  # fraction of the time budget with a linear LR warm-up
WARMDOWN_RATIO = 0.7  # fraction of the time budget at the end with a linear LR decay
FINAL_LR_FRAC = 0.0  # LR at the end of the warm-down, as a fraction of the peak

# Execution
AUTOCAST = "auto"  # "auto" (bf16 where fast: CUDA, AVX512-BF16/AMX CPUs), "bf16", "fp32"
COMPILE = True  # torch.compile the model (CUDA only; elsewhere it costs more than it gains)
STARTUP_STEPS = 2  # first steps left out of the training time (compilation, allocator warm-up)
LOG_EVERY_SECONDS = 5.0  # seconds between progress lines
LOSS_CHUNK_ROWS = 256  # rows of logits per chunk of the eager softcap + cross-entropy

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_embd: int
    head_dim: int
    mlp_ratio: int
    window_pattern: str
    softcap: float
    rope_base: float


def norm(x):
    """RMSNorm without parameters."""
    if x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return RMSNorm.apply(x)
    return F.rms_norm(x, (x.size(-1),))


def _inv_rms(x):  # 1 / sqrt(mean(x^2) + eps) over the last dim (in fp32 for bf16 x), as F.rms_norm
    dtype = torch.promote_types(x.dtype, torch.float32)
    sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype).square_()
    return sq.div_(x.size(-1)).add_(torch.finfo(dtype).eps).rsqrt_()


def _norm_backward(g, y, r):  # y = x * r: dx = r * (g - y * mean(g * y))
    dot = torch.linalg.vecdot(g, y, dim=-1).unsqueeze_(-1).div_(y.size(-1))
    return torch.addcmul(g, y, dot, value=-1).mul_(r)


class RMSNorm(torch.autograd.Function):
    """F.rms_norm in two passes over x forward and three backward (autograd's composite of
    pow, mean, rsqrt and mul takes about ten, and elementwise passes are most of a CPU step)."""

    @staticmethod
    def forward(ctx, x):
        r = _inv_rms(x)
        y = x * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, g):
        y, r = ctx.saved_tensors
        return _norm_backward(g, y, r)


def _rotate(x, cos, sin, sign=1):  # x * cos + sign * swap_halves(x) * sin, in cos's dtype or wider
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, -1), sin, value=sign)


class RotaryNorm(torch.autograd.Function):
    """norm(apply_rotary(x)) in one pass of each: a rotation keeps each head vector's length, so
    the normaliser is computed from x, and the backward rotates by the opposite angle."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        r = _inv_rms(x)
        y = _rotate(x, cos, sin).mul_(r)
        ctx.save_for_backward(y, r, cos, sin)
        return y

    @staticmethod
    def backward(ctx, g):  # the norm's backward in the rotated frame (y = rotate(x * r)), rotated back
        y, r, cos, sin = ctx.saved_tensors
        return _rotate(_norm_backward(g, y, r), cos, sin, sign=-1), None, None


def rotary_norm(x, cos, sin):  # x: (B, T, H, D) -> QK-norm of x rotated
    if x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return RotaryNorm.apply(x, cos, sin)
    return norm(apply_rotary(x, cos, sin))


def has_value_embedding(layer, n_layer):
    """Value embeddings on alternate layers, the last one included."""
    return layer % 2 == (n_layer - 1) % 2


def rotary_tables(seq_len, head_dim, base):
    """cos, sin of shape (1, T, 1, head_dim) for rotary position embeddings, laid out so that
    rotation is x * cos + swap_halves(x) * sin: cos repeated, sin as (sin, -sin)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    cos, sin = freqs.cos(), freqs.sin()
    return (torch.cat([cos, cos], -1)[None, :, None, :],
            torch.cat([sin, -sin], -1)[None, :, None, :])  # fmt: skip


def apply_rotary(x, cos, sin):  # x: (B, T, H, D); cos, sin: (1, T, 1, D) in x's dtype
    """(x1 cos + x2 sin, x2 cos - x1 sin) per half, without a cat: the halves swapped by a view."""
    B, T, H, D = x.shape
    swapped = x.view(B, T, H, 2, D // 2).flip(3).view(B, T, H, D)  # (x2, x1)
    return x * cos + swapped * sin


_flex_attention = None  # torch's flex_attention, once flex_block_masks has imported it


def flex_block_masks(seq_len, windows, device):
    """FlexAttention block masks, causal and at most `window` tokens back, one per window below
    seq_len: built once, eagerly, before the loop (compiled CUDA only: they skip masked blocks)."""
    global _flex_attention
    # imported here, not at the top: it imports torch._dynamo (~1.5 s), which eager runs skip
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    _flex_attention = flex_attention

    def sliding(window):
        return lambda b, h, q, kv: (q >= kv) & (q - kv < window)

    return {w: create_block_mask(sliding(w), None, None, seq_len, seq_len, device=device)
            for w in windows if w < seq_len}  # fmt: skip


def window_mask(seq_len, window, device):
    """How a layer attends without block masks: None = full causal, else a boolean (T, T) mask
    of a sliding window of `window` tokens."""
    if window >= seq_len:
        return None
    pos = torch.arange(seq_len, device=device)
    dist = pos[:, None] - pos[None, :]  # query position minus key position
    return (dist >= 0) & (dist < window)


def attention(q, k, v, mask):  # q, k, v: (B, H, T, D) -> (B, H, T, D)
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return cpu_attention(q, k, v, mask, torch.get_autocast_dtype("cpu"))
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # fused flash kernels
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _flex_attention(q, k, v, block_mask=mask)


def _contiguous(t, dtype):  # t in dtype, contiguous, in one copy
    return t.contiguous() if t.dtype == dtype else t.to(dtype, memory_format=torch.contiguous_format)


def cpu_attention(q, k, v, mask, dtype):
    """Attention as batched matmuls in `dtype` under an additive mask: in bf16 about 1.6x faster,
    forward and backward, than the fp32 flash kernels at these sizes (their bf16 kernels are
    slower still). A masked score is -inf, so its weight is exactly 0. The queries go in two
    halves, the first against the first half of the keys only (causal: the rest are masked),
    which skips a quarter of the scores."""
    B, H, T, D = q.shape
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril_() if mask is None else mask
    bias = torch.zeros(T, T, dtype=dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    q, k, v = (_contiguous(t, dtype).view(B * H, T, D) for t in (q, k, v))
    out = []
    for lo, hi in ((0, T // 2), (T // 2, T)):
        scores = torch.baddbmm(bias[lo:hi, :hi], q[:, lo:hi], k[:, :hi].transpose(1, 2), alpha=D**-0.5)
        out.append(torch.bmm(scores.softmax(-1), v[:, :hi]))  # (B * H, hi - lo, D)
    return torch.cat(out, 1).view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head = config.n_embd // config.head_dim
        self.head_dim = config.head_dim
        C = config.n_embd
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, C, bias=False)
        self.c_v = nn.Linear(C, C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        # value embeddings enter through a per-head gate read from the first 32 channels
        self.gate_channels = min(32, C)
        self.ve_gate = (
            nn.Linear(self.gate_channels, self.n_head, bias=False)
            if has_value_embedding(layer, config.n_layer)
            else None
        )

    def forward(self, x, ve, cos, sin, mask):
        B, T, C = x.shape
        dtype = cos.dtype  # q and k's dtype, chosen by GPT.raw_logits
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).to(dtype)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim).to(dtype)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value residual: v += gate * value_embedding(token), gate in (0, 2)
            gate = torch.sigmoid(self.ve_gate(x[..., : self.gate_channels])).unsqueeze(-1)
            v = torch.addcmul(v, gate, ve.view(B, T, self.n_head, self.head_dim), value=2)
        q, k = rotary_norm(q, cos, sin), rotary_norm(k, cos, sin)  # QK-norm
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        h = self.c_fc(x)
        if torch.compiler.is_compiling():
            return self.c_proj(F.relu(h).square())  # ReLU²
        return self.c_proj(ReluSquared.apply(h))


class ReluSquared(torch.autograd.Function):
    """relu(h)^2 with a two-pass backward, 2 * relu(h) * g (autograd's takes three)."""

    @staticmethod
    def forward(ctx, h):
        r = F.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return torch.mul(g, r).mul_(2)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, mask):
        x = x + self.attn(norm(x), ve, cos, sin, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        V, C, L = config.vocab_size, config.n_embd, config.n_layer
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(L)])
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, C) for i in range(L) if has_value_embedding(i, L)}
        )
        self.lm_head = nn.Linear(C, V, bias=False)  # untied from wte
        self.resid_lambdas = nn.Parameter(torch.ones(L))  # x = resid * x + x0_lambda * x0 per layer
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        windows = {"L": config.seq_len, "S": config.seq_len // 2}
        self.windows = [
            windows[config.window_pattern[i % len(config.window_pattern)]] for i in range(L)
        ]
        self.windows[-1] = config.seq_len
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)  # not saved: rebuilt by the builder
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound with std 1/sqrt(C)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2 * sigmoid(0) = 1
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx):  # idx: (B, T) token ids -> softcapped fp32 logits (B, T, V)
        return softcap(self.raw_logits(idx), self.config.softcap)

    def raw_logits(self, idx, masks=None):  # (B, T) -> lm_head's logits (B, T, V), not capped
        T = idx.size(1)
        # q and k's dtype (rotary, QK-norm): the autocast dtype on accelerators; fp32 on CPU,
        # where cpu_attention then casts q, k and v to bf16 once, for its matmuls
        dtype = torch.float32
        if idx.device.type != "cpu" and torch.is_autocast_enabled(idx.device.type):
            dtype = torch.get_autocast_dtype(idx.device.type)
        cos, sin = self.cos[:, :T].to(dtype), self.sin[:, :T].to(dtype)
        if masks is None:  # eager: boolean masks for sliding windows (cheap at these sizes)
            masks = {w: window_mask(T, w, idx.device) for w in set(self.windows)}
        x = x0 = norm(self.wte(idx))  # (B, T, C), fp32: the residual stream
        for i, block in enumerate(self.blocks):
            x = torch.addcmul(self.resid_lambdas[i] * x, self.x0_lambdas[i], x0)
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks.get(self.windows[i]))
        return self.lm_head(norm(x))  # (B, T, V), bf16 under autocast

    def estimate_flops(self):
        """FLOPs per token of forward + backward: 6 per matrix weight, plus attention."""
        embeddings = self.wte.weight.numel() + sum(
            ve.weight.numel() for ve in self.value_embeds.values()
        )
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matrices = sum(p.numel() for p in self.parameters()) - embeddings - scalars
        attn = sum(12 * self.config.n_embd * min(w, self.config.seq_len) for w in self.windows)
        return 6 * matrices + attn


def model_config(vocab_size):
    """The builder's arguments: saved in the checkpoint so that prepare.py can rebuild the model."""
    return asdict(GPTConfig(
        vocab_size=vocab_size, seq_len=MAX_SEQ_LEN, n_layer=DEPTH, n_embd=MODEL_DIM,
        head_dim=HEAD_DIM, mlp_ratio=MLP_RATIO, window_pattern=WINDOW_PATTERN,
        softcap=LOGIT_SOFTCAP, rope_base=ROPE_BASE,
    ))  # fmt: skip


def softcap(logits, cap):
    """cap * tanh(logits / cap) in fp32: keeps early training stable."""
    if torch.is_grad_enabled():
        return cap * torch.tanh(logits.float() / cap)
    # evaluation: the same ops in place, in one fp32 copy (each (B, T, V) allocation is page faults)
    return logits.to(torch.float32, copy=True).div_(cap).tanh_().mul_(cap)


class SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softcap(logits), chunked over rows: each chunk is converted to fp32
    into one reused buffer, capped and reduced in place while in cache; only the logits (as
    given, bf16 under autocast) and one log-sum-exp per row are kept for the backward, which
    recomputes the cap per chunk. The same math as F.cross_entropy(softcap(logits)) without an
    fp32 (N, V) tensor. Capped logits lie in [-cap, cap]: exp() needs no max subtracted first.
    tanh goes through sigmoid, tanh(u) = 2 sigmoid(2u) - 1 (within 2e-7 of it in fp32), since
    torch's CPU sigmoid is about 8x faster than its tanh; and 1 - tanh^2 = 4 s (1 - s)."""

    @staticmethod
    def forward(ctx, logits, targets, cap, chunk):  # logits (N, V), targets (N,)
        N, V = logits.shape
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        buf = torch.empty((min(chunk, N), V), dtype=torch.float32, device=logits.device)
        for s in range(0, N, chunk):
            z = buf[: min(chunk, N - s)].copy_(logits[s : s + chunk])  # (n, V) fp32
            z.mul_(2 / cap).sigmoid_().mul_(2 * cap).sub_(cap)  # softcap, in place
            picked = z.gather(1, targets[s : s + chunk, None]).squeeze(1)
            lse[s : s + chunk] = z.exp_().sum(-1).log_()
            total += (lse[s : s + chunk] - picked).sum()
        ctx.save_for_backward(logits, targets, lse)
        ctx.cap, ctx.chunk = cap, chunk
        return total / N

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        cap, chunk, (N, V) = ctx.cap, ctx.chunk, logits.shape
        dlogits = torch.empty_like(logits)
        s_buf, p_buf = torch.empty((2, min(chunk, N), V), dtype=torch.float32, device=logits.device)
        scale = 4 * grad / N
        for s in range(0, N, chunk):
            n = min(chunk, N - s)
            sg = s_buf[:n].copy_(logits[s : s + chunk]).mul_(2 / cap).sigmoid_()  # (n, V)
            # softmax: exp(capped - lse), capped = 2 cap sg - cap
            p = torch.mul(sg, 2 * cap, out=p_buf[:n]).sub_(lse[s : s + chunk, None] + cap).exp_()
            p.scatter_add_(1, targets[s : s + chunk, None], p.new_full((n, 1), -1.0))
            # d/dz of cap * tanh(z / cap) is 1 - tanh^2 = 4 sg (1 - sg)
            sg.addcmul_(sg, sg, value=-1).mul_(scale)
            torch.mul(p, sg, out=dlogits[s : s + chunk])  # one rounding
        return dlogits, None, None, None


def forward_loss(model, x, y, masks=None):
    """Mean next-token cross-entropy, for training (the harness computes its own for the metric)."""
    logits = model.raw_logits(x, masks)  # (B, T, V)
    V, cap = logits.size(-1), model.config.softcap
    if torch.compiler.is_compiling():  # inductor fuses the cap into the loss's kernels itself
        return F.cross_entropy(softcap(logits, cap).view(-1, V), y.reshape(-1))
    return SoftcapCrossEntropy.apply(logits.view(-1, V), y.reshape(-1), cap, LOSS_CHUNK_ROWS)


def build_model(**config):
    """Called by prepare.py (by this name, from the checkpoint) to rebuild the model."""
    return GPT(GPTConfig(**config))


# ---------------------------------------------------------------------------
# Optimizer: Muon for the transformer's matrices, AdamW for everything else
# ---------------------------------------------------------------------------


def orthogonalize(G, steps, bf16):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (U V^T of the SVD).

    G: (N, rows, cols), a stack of same-shaped updates. The quintic's coefficients trade exact
    convergence for speed: singular values end up in roughly [0.7, 1.2], which Muon tolerates."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if bf16 else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the smaller Gram matrix
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):  # X = a X + (b A + c A^2) X, the scalings inside the matmuls
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz: SGD with Nesterov momentum whose update is
    replaced by its orthogonalisation. Parameters of one shape are stacked and processed at once."""

    def __init__(self, params, lr, momentum, weight_decay, ns_steps, bf16):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [{"params": [p for p in params if tuple(p.shape) == s]} for s in shapes]
        super().__init__(
            groups,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps},
        )
        self.bf16 = bf16

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = torch.stack([p.grad for p in params])  # (N, rows, cols)
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(grads)
            buf = state["momentum"]
            buf.lerp_(grads, 1 - group["momentum"])
            update = grads.lerp_(buf, group["momentum"])  # Nesterov
            update = orthogonalize(update, group["ns_steps"], self.bf16)
            rows, cols = params[0].shape
            lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # same RMS step for tall matrices
            for p, u in zip(params, update.unbind(0), strict=True):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u.to(p.dtype), alpha=-lr)


def build_optimizers(model, device, bf16):
    """AdamW for embeddings, lm_head and scalars (LRs scaled by 1/sqrt(width / 768)); Muon for
    every matrix inside the blocks."""
    scale = (model.config.n_embd / 768) ** -0.5
    groups = [
        {"params": list(model.lm_head.parameters()), "lr": UNEMBEDDING_LR * scale},
        {
            "params": list(model.wte.parameters()) + list(model.value_embeds.parameters()),
            "lr": EMBEDDING_LR * scale,
        },
        {"params": [model.resid_lambdas], "lr": SCALAR_LR * 0.01},
        {"params": [model.x0_lambdas], "lr": SCALAR_LR},
    ]
    adamw = torch.optim.AdamW(
        groups,
        betas=(ADAM_BETA1, ADAM_BETA2),
        eps=1e-10,
        weight_decay=0.0,
        fused=device.type in ("cuda", "cpu"),  # one kernel per tensor (on CPU, 3x faster)
    )
    muon = Muon(
        model.blocks.parameters(), MATRIX_LR, MUON_MOMENTUM_START, WEIGHT_DECAY, NS_STEPS, bf16
    )
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return adamw, muon


def lr_multiplier(progress):
    """LR factor from the fraction of the time budget used: warm-up, flat, linear warm-down."""
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return frac + (1 - frac) * FINAL_LR_FRAC


def muon_momentum(step):
    frac = min(step / max(MUON_WARMUP_STEPS, 1), 1.0)
    return (1 - frac) * MUON_MOMENTUM_START + frac * MUON_MOMENTUM


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

if __name__ == "__main__":
    t_start = time.time()
    seed = run_seed()
    torch.manual_seed(seed)
    device = pick_device()
    use_bf16 = bf16_is_fast(device) if AUTOCAST == "auto" else AUTOCAST == "bf16"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    tokenizer = Tokenizer.from_directory()
    vocab_size = tokenizer.get_vocab_size()
    config = model_config(vocab_size)
    model = build_model(**config).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    adamw, muon = build_optimizers(model, device, use_bf16)
    compiled = COMPILE and device.type == "cuda"
    # one fused graph for the model and the loss (the softcap, log-softmax and loss fuse)
    loss_fn = torch.compile(forward_loss, dynamic=False) if compiled else forward_loss
    # sliding windows: FlexAttention block masks, built once here, outside the compiled graph
    masks = flex_block_masks(MAX_SEQ_LEN, set(model.windows), device) if compiled else None

    tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, (
        "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN"
    )
    grad_accum = TOTAL_BATCH_SIZE // tokens_per_pass
    loader = make_dataloader(
        tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device, seed=seed
    )
    x, y = next(loader)  # (B, T) inputs and their next-token targets
    budget = time_budget()
    print(
        f"device: {device_name(device)} | autocast: {'bf16' if use_bf16 else 'fp32'} | compile: {compiled} | seed: {seed}"
    )
    print(
        f"model: {num_params / 1e6:.2f}M params, depth {DEPTH}, width {MODEL_DIM}, vocab {vocab_size}, seq {MAX_SEQ_LEN}"
    )
    print(
        f"batch: {TOTAL_BATCH_SIZE} tokens/step ({grad_accum} x {DEVICE_BATCH_SIZE} rows) | budget: {budget:g}s"
    )

    training_time = 0.0  # seconds of timed steps (the first STARTUP_STEPS are not timed)
    timed_tokens = 0
    step = 0
    smooth_loss = 0.0
    last_log = time.time()
    startup_time, loader_wait = time.time() - t_start, loader.wait_seconds  # until the timed steps
    while True:
        synchronize(device)
        t0 = time.time()
        for _ in range(grad_accum):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(model, x, y, masks)
            (loss / grad_accum).backward()
            x, y = next(loader)  # the next batch: packed ahead by the loader's thread

        progress = min(training_time / budget, 1.0)
        lrm = lr_multiplier(progress)
        for opt in (adamw, muon):
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        for group in muon.param_groups:
            group["momentum"] = muon_momentum(step)
            group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)

        loss_value = loss.item()  # also waits for the step to finish
        if not math.isfinite(loss_value) or loss_value > 100:
            print(
                f"FAIL: training loss is {loss_value} at step {step}: diverged; stopping",
                flush=True,
            )
            sys.exit(1)
        synchronize(device)
        dt = time.time() - t0
        if step >= STARTUP_STEPS:
            training_time += dt
            timed_tokens += TOTAL_BATCH_SIZE
        else:  # start-up: to the first timed step (compilation included); wait on timed steps only
            startup_time, loader_wait = time.time() - t_start, loader.wait_seconds
        if step == 0:  # Python's GC causes long stalls; everything allocated so far lives forever
            gc.collect()
            gc.freeze()
            gc.disable()

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        step += 1
        if time.time() - last_log >= LOG_EVERY_SECONDS:
            last_log = time.time()
            debiased = smooth_loss / (1 - 0.9**step)
            print(
                f"step {step:05d} | {100 * progress:5.1f}% | loss {debiased:.4f} | lrm {lrm:.2f} | {dt * 1000:.0f} ms | {TOTAL_BATCH_SIZE / dt:,.0f} tok/s",
                flush=True,
            )
        if step > STARTUP_STEPS and training_time >= budget:
            break

    # -----------------------------------------------------------------------
    # Summary (val_bpb is measured by `python evaluate.py`, not here)
    # -----------------------------------------------------------------------

    tokens_per_sec = timed_tokens / training_time
    peak = peak_flops(device) if use_bf16 else None  # a bf16 peak: fp32 runs report no MFU
    mfu = round(100 * flops_per_token * tokens_per_sec / peak, 2) if peak else "unknown"
    stats = {
        "training_seconds": round(training_time, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "peak_vram_mb": round(peak_memory_mb(device), 1),
        "mfu_percent": mfu,
        "total_tokens_M": round(step * TOTAL_BATCH_SIZE / 1e6, 2),
        "num_steps": step,
        "num_params_M": round(num_params / 1e6, 2),
        "flops_per_token": flops_per_token,
        "depth": DEPTH,
        "tokens_per_sec": round(tokens_per_sec),
        "startup_seconds": round(startup_time, 1),
        "loader_wait_percent": round(100 * (loader.wait_seconds - loader_wait) / training_time, 2),
        "final_train_loss": round(smooth_loss / (1 - 0.9**step), 4),
    }
    path = save_checkpoint(model, "build_model", config, stats)
    print(f"checkpoint: {path}")
    print("---")
    for key, value in stats.items():
        print(f"{key + ':':17s} {value}")
