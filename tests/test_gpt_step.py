"""The GPT template's lean training step: the fused loss, rotary and attention dtypes change no math."""

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
    assert sum(lean[-5:]) == pytest.approx(sum(ref[-5:]), rel=1e-3)
    assert sum(lean[-5:]) < 0.8 * sum(lean[:5])  # it learns
    lean16 = short_run(train, harness, train.forward_loss, bf16=True)
    assert sum(lean16[-5:]) == pytest.approx(sum(ref[-5:]), rel=0.03)
