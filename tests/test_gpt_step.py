"""The GPT template's lean training step: the fused loss, the hand-written backward passes
(RMSNorm, rotary + QK-norm, ReLU²), the CPU attention and the Newton-Schulz matmuls change no math."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")

import test_gpt_template as gpt  # noqa: E402
from test_gpt_template import import_file  # noqa: E402

F = torch.nn.functional
prepared = gpt.prepared  # the cpu-preset task with kjv prepared (once for this module)
harness = gpt.harness  # its prepare.py, imported in-process (train.py's `import prepare`)


@pytest.fixture
def train(prepared: tuple[Path, Path, str], harness: ModuleType) -> ModuleType:
    return import_file(prepared[0] / "train.py", "train_step")


def reference_loss(logits: torch.Tensor, y: torch.Tensor, cap: float) -> torch.Tensor:
    """The loss as train.py wrote it before: fp32 softcapped logits, then F.cross_entropy."""
    capped = cap * torch.tanh(logits.float() / cap)
    return F.cross_entropy(capped.view(-1, capped.size(-1)), y.reshape(-1))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_the_fused_loss_equals_the_reference_forward_and_backward(
    train: ModuleType, dtype: torch.dtype, tol: float, chunk: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    N, V, cap = 300, 97, 15.0
    raw = (torch.randn(N, V, generator=gen) * 20).to(dtype)  # big enough for the cap to matter
    y = torch.randint(0, V, (N,), generator=gen)
    a = raw.clone().requires_grad_()
    b = raw.clone().requires_grad_()
    fused = train.SoftcapCrossEntropy.apply(a, y, cap, chunk)
    ref = reference_loss(b, y, cap)
    assert fused.dtype == torch.float32
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)  # same fp32 math
    (fused * 3).backward()
    (ref * 3).backward()
    assert a.grad is not None and b.grad is not None and a.grad.dtype == dtype
    scale = float(b.grad.float().abs().max())
    assert float((a.grad.float() - b.grad.float()).abs().max()) <= tol * scale


def test_the_training_loss_is_the_models_logits_loss(train: ModuleType) -> None:
    torch.manual_seed(0)
    model = train.build_model(**train.model_config(2048))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randint(0, 2048, (2, 64))
    y = torch.randint(0, 2048, (2, 64))
    fused = train.forward_loss(model, x, y)
    ref = F.cross_entropy(model(x).view(-1, 2048), y.reshape(-1))  # model(x): the harness's logits
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_rotary_without_cat_is_the_half_split_formula_exactly(train: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    T, D = 40, 16
    x = torch.randn(2, T, 3, D, generator=gen)
    cos, sin = train.rotary_tables(T, D, 10000.0)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv)[None, :, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    want = torch.cat([x1 * freqs.cos() + x2 * freqs.sin(), x2 * freqs.cos() - x1 * freqs.sin()], -1)
    assert torch.equal(train.apply_rotary(x, cos, sin), want)


def grads_of(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn's output and its inputs' gradients for a fixed random output gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def composite_rotary_norm(train: ModuleType):
    return lambda x, cos, sin: F.rms_norm(train.apply_rotary(x, cos, sin), (x.size(-1),))


def test_the_hand_written_backward_passes_equal_autograds(train: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    T, D = 24, 16
    x = torch.randn(3, T, 2, D, generator=gen) * 3
    cos, sin = train.rotary_tables(T, D, 10000.0)
    pairs = [
        (train.RMSNorm.apply, lambda t: F.rms_norm(t, (D,)), (x,)),
        (train.RotaryNorm.apply, composite_rotary_norm(train), (x, cos, sin)),
        (train.ReluSquared.apply, lambda t: F.relu(t).square(), (x,)),
    ]
    for lean, reference, inputs in pairs:
        (out, grads), (want, want_grads) = grads_of(lean, *inputs), grads_of(reference, *inputs)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[0], want_grads[0], rtol=1e-4, atol=1e-4)
    # the model's entry points take the hand-written path on CPU in fp32, the formula otherwise
    leaf = x.clone().requires_grad_()
    assert "RMSNorm" in train.norm(leaf).grad_fn.name()
    assert "RotaryNorm" in train.rotary_norm(leaf, cos, sin).grad_fn.name()
    assert "RMSNorm" not in train.norm(leaf.double()).grad_fn.name()


@pytest.mark.parametrize("window", [None, 5])
def test_cpu_attention_is_causal_attention(train: ModuleType, window: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 3, 17, 8  # an odd length: halves of 8 and 9 queries
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    mask = None if window is None else train.window_mask(T, window, torch.device("cpu"))

    def reference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(a, b, c, is_causal=mask is None, attn_mask=mask)

    def lean(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return train.cpu_attention(a, b, c, mask, torch.float32)

    (out, grads), (want, want_grads) = grads_of(lean, q, k, v), grads_of(reference, q, k, v)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    out16 = train.cpu_attention(q, k, v, mask, torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), want, rtol=0.05, atol=0.05)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1], v2[:, :, -1] = 100.0, 100.0  # the last key reaches no earlier query
    assert torch.equal(train.cpu_attention(q, k2, v2, mask, torch.bfloat16)[:, :, :-1], out16[:, :, :-1])


def test_newton_schulz_in_fused_matmuls_is_the_quintic(train: ModuleType) -> None:
    G = torch.randn(3, 12, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(train.orthogonalize(G, 5, bf16=False).double(), X, rtol=1e-4, atol=1e-5)  # fp32
    tall = train.orthogonalize(G.mT.contiguous().float(), 5, bf16=False)  # iterated on X^T
    torch.testing.assert_close(tall.double(), X.mT, rtol=1e-4, atol=1e-4)


# How far two fp32 runs of 20 steps may end apart when their math differs only by rounding:
# training amplifies it (the reference's own curve moves 0.1% when the cap is 1e-5 larger, 0.3%
# at 1e-4), while a wrong backward moves it by more (RMSNorm's without its projection term: 3.6%).
FP32_CURVE = 5e-3


def short_run(train: ModuleType, harness: ModuleType, loss_fn, bf16: bool, steps: int = 20):
    """Losses of `steps` optimizer steps of the cpu preset's model, 4 rows a step, seed 0."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    tok = harness.Tokenizer.from_directory()
    model = train.build_model(**train.model_config(tok.vocab_size))
    adamw, muon = train.build_optimizers(model, cpu, bf16)
    loader = harness.make_dataloader(tok, 4, harness.MAX_SEQ_LEN, seed=0)
    losses = []
    try:
        for _ in range(steps):
            x, y = next(loader)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model, x, y)
            loss.backward()
            adamw.step()
            muon.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        loader.close()
    return losses


def test_a_short_run_learns_as_the_reference_step_does(
    train: ModuleType, harness: ModuleType
) -> None:
    """20 steps with the lean step and with the reference (model(x) + F.cross_entropy): the same
    curve in fp32, and within bf16's noise under autocast."""

    def reference(model, x, y):
        return F.cross_entropy(model(x).view(-1, model.config.vocab_size), y.reshape(-1))

    lean = short_run(train, harness, train.forward_loss, bf16=False)
    ref = short_run(train, harness, reference, bf16=False)
    assert lean[0] == pytest.approx(ref[0], rel=1e-5)
    assert sum(lean[-5:]) == pytest.approx(sum(ref[-5:]), rel=FP32_CURVE)
    assert sum(lean[-5:]) < 0.8 * sum(lean[:5])  # it learns
    lean16 = short_run(train, harness, train.forward_loss, bf16=True)
    assert sum(lean16[-5:]) == pytest.approx(sum(ref[-5:]), rel=0.03)


def test_the_lean_ops_learn_as_the_formulas_they_replace(
    train: ModuleType, harness: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 steps with the hand-written ops, then with autograd's formulas swapped back in (and
    fp32 flash attention for cpu_attention): the same curve in fp32, within bf16's noise."""
    lean = short_run(train, harness, train.forward_loss, bf16=False)
    lean16 = short_run(train, harness, train.forward_loss, bf16=True)
    monkeypatch.setattr(train, "norm", lambda x: F.rms_norm(x, (x.size(-1),)))
    monkeypatch.setattr(train, "rotary_norm", composite_rotary_norm(train))
    monkeypatch.setattr(train.ReluSquared, "apply", lambda h: F.relu(h).square())

    def flash(q, k, v, mask, dtype):  # the fp32 kernels the template used before cpu_attention
        v = v.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, is_causal=mask is None, attn_mask=mask)

    monkeypatch.setattr(train, "cpu_attention", flash)
    ref = short_run(train, harness, train.forward_loss, bf16=False)
    ref16 = short_run(train, harness, train.forward_loss, bf16=True)
    assert lean[0] == pytest.approx(ref[0], rel=1e-5)
    assert sum(lean[-5:]) == pytest.approx(sum(ref[-5:]), rel=FP32_CURVE)
    assert sum(lean16[-5:]) == pytest.approx(sum(ref16[-5:]), rel=0.03)
    assert sum(lean16[-5:]) < 0.8 * sum(lean16[:5])


def test_every_shape_the_cpu_tuner_may_choose_trains(
    prepared: tuple[Path, Path, str], train: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cpu preset's tuner searches the shape (HEAD_DIM, DEPTH, MLP_RATIO): every HEAD_DIM
    choice and each end of the int ranges builds a model whose step runs and whose loss is
    finite (a choice MODEL_DIM cannot hold would crash every such run)."""
    import tomllib

    from autoresearch.agents.tuner._options import parse_spec

    config = tomllib.loads((prepared[0] / "autoresearch.toml").read_text())["agent"]["tuner"]
    shape = {"HEAD_DIM", "DEPTH", "MLP_RATIO"}
    assert shape <= set(config["include"]) and "MODEL_DIM" not in config["include"]
    assert set(config["first"]) <= shape
    specs = {name: parse_spec(name, config["params"][name]) for name in shape}
    head_dims = [int(c) for c in specs["HEAD_DIM"].choices]
    assert len(head_dims) > 1
    settings = [{"HEAD_DIM": h} for h in head_dims] + [
        {name: int(end)} for name in ("DEPTH", "MLP_RATIO") for end in (specs[name].low, specs[name].high)
    ]
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 2048, (2, train.MAX_SEQ_LEN + 1), generator=gen)
    for setting in settings:
        for name, value in setting.items():
            monkeypatch.setattr(train, name, value)
        torch.manual_seed(0)
        model = train.build_model(**train.model_config(2048))
        assert model.blocks[0].attn.n_head == train.MODEL_DIM // train.HEAD_DIM
        assert len(model.blocks) == train.DEPTH
        adamw, muon = train.build_optimizers(model, torch.device("cpu"), False)
        loss = train.forward_loss(model, batch[:, :-1], batch[:, 1:])
        loss.backward()
        adamw.step()
        muon.step()
        assert torch.isfinite(loss), setting
        monkeypatch.undo()
