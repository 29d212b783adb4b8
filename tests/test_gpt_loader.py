"""The GPT template's training loader: today's batches for a seed, deterministic, training split only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")

import test_gpt_template as gpt  # noqa: E402

prepared = gpt.prepared  # the cpu-preset task with kjv prepared (once for this module)
harness = gpt.harness  # its prepare.py, imported in-process


def reference_pack_rows(docs: Iterator[list[int]], row_len: int, buffer_size: int = 256):
    """The loader's packing as it was before the token cache: best fit by a linear scan."""
    buffer: list[list[int]] = []
    exhausted = False
    while True:
        row: list[int] = []
        while len(row) < row_len:
            while not exhausted and len(buffer) < buffer_size:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                else:
                    buffer.append(doc)
            if not buffer:
                return
            space = row_len - len(row)
            fits = [i for i, d in enumerate(buffer) if len(d) <= space]
            if fits:
                row.extend(buffer.pop(max(fits, key=lambda i: len(buffer[i]))))
            else:
                doc = buffer.pop(min(range(len(buffer)), key=lambda i: len(buffer[i])))
                row.extend(doc[:space])
                if len(doc) - space > 1:
                    buffer.append([doc[0], *doc[space:]])
        yield row


def reference_batches(prepare: ModuleType, B: int, T: int, seed: int) -> Iterator[torch.Tensor]:
    """(B, T+1) batches as the loader made them before: text read and tokenized on the fly."""
    tok = prepare.Tokenizer.from_directory()
    texts = (text for text, _epoch in prepare.iter_documents("train", seed))
    docs = ([tok.bos_token_id, *tok.encode(text)] for text in texts)
    rows = reference_pack_rows(docs, T + 1)
    while True:
        yield torch.tensor([next(rows) for _ in range(B)])


@pytest.mark.parametrize(("B", "T", "seed"), [(4, 64, 0), (3, 200, 7), (2, 1500, 1)])
def test_the_loader_serves_the_batches_of_the_reference_pipeline(
    harness: ModuleType, B: int, T: int, seed: int
) -> None:
    tok = harness.Tokenizer.from_directory()
    loader = harness.make_dataloader(tok, B, T, "train", seed=seed)
    expected = reference_batches(harness, B, T, seed)
    try:
        for _ in range(12):
            x, y = next(loader)
            want = next(expected)
            assert torch.equal(x, want[:, :-1]) and torch.equal(y, want[:, 1:])
            assert x.dtype == y.dtype == torch.long
    finally:
        loader.close()


def test_pack_rows_matches_the_reference_on_random_documents(harness: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 90, (400,), generator=gen).tolist()
    docs, token = [], 1
    for n in lengths:
        docs.append([0, *range(token, token + n)])
        token += n
    for row_len, buffer in ((17, 4), (64, 16), (300, 256)):
        got = [r.tolist() for r in harness.pack_rows(iter(docs), row_len, buffer_size=buffer)]
        assert got == list(reference_pack_rows(iter(docs), row_len, buffer)), (row_len, buffer)


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    loaders = [harness.make_dataloader(tok, 4, 128, seed=s) for s in (5, 5, 6)]
    try:
        a, b, c = ([next(loader)[0] for _ in range(6)] for loader in loaders)
    finally:
        for loader in loaders:
            loader.close()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_an_epoch_of_the_loader_is_the_training_split_exactly(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    train = []
    for text, epoch in harness.iter_documents("train"):  # one epoch, in file order
        if epoch > 1:
            break
        train.append(tuple(tok.encode(text, prepend=tok.bos_token_id)))
    val = {tuple(tok.encode(t, prepend=tok.bos_token_id)) for t, _ in harness.iter_documents("val")}
    docs = harness.training_documents(seed=3)
    epoch = [tuple(int(i) for i in next(docs)) for _ in range(len(train))]
    assert sorted(epoch) == sorted(train)  # every training document once, shuffled
    assert epoch != train
    assert not set(epoch) & val  # no validation document
    assert not {tuple(int(i) for i in next(docs)) for _ in range(50)} & val  # nor in the next epoch


def test_the_token_cache_holds_the_training_split_only(
    prepared: tuple[Path, Path, str], harness: ModuleType
) -> None:
    _, data, _ = prepared
    tok = harness.Tokenizer.from_directory()
    manifest = harness.read_manifest()
    cached = b"".join(Path(p).read_bytes() for p, _offsets, _sizes in manifest["tokens"]["files"])
    assert manifest["tokens"]["dtype"] == "uint16"
    ids = np.frombuffer(cached, dtype=np.uint16).tolist()
    text = tok.decode([i for i in ids if i != tok.bos_token_id])
    val = [doc for doc, _ in harness.iter_documents("val")]
    assert len(val) == 60 and not any(doc in text for doc in val)  # no validation chapter
    assert next(harness.iter_documents("train"))[0] in text  # a training chapter is
    assert all(Path(p).parent == data / "tokens" for p, *_ in manifest["tokens"]["files"])


def test_the_loader_thread_surfaces_errors_and_the_end_of_the_rows(harness: ModuleType) -> None:
    def rows(n: int, fail: bool) -> Iterator[list[int]]:
        for i in range(n):
            yield [i] * 9
        if fail:
            raise OSError("disk gone")

    cpu = torch.device("cpu")
    loader = harness.TrainLoader(rows(4, fail=False), 2, 8, cpu, prefetch=1)
    assert [int(x[0, 0]) for x, _ in loader] == [0, 2]  # two full batches, then the end
    assert loader.batches == 2 and loader.wait_seconds >= 0.0
    failing = harness.TrainLoader(rows(2, fail=True), 2, 8, cpu)
    next(failing)
    with pytest.raises(OSError, match="disk gone"):
        next(failing)
    with pytest.raises(StopIteration):
        next(failing)


def test_a_closed_loader_stops_its_thread(harness: ModuleType) -> None:
    tok = harness.Tokenizer.from_directory()
    loader = harness.make_dataloader(tok, 2, 32, seed=0, prefetch=2)
    next(loader)
    loader.close()
    loader._thread.join(timeout=10)
    assert not loader._thread.is_alive()
