"""Token and compute prices: the built-in table, toml overrides, unknown models, spend and budgets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import make_repo

from autoresearch.config import load_config
from autoresearch.cost import (
    PRICES,
    Price,
    PriceTable,
    Spend,
    TokenCounts,
    compute_cost,
    format_usd,
    token_cost,
)


def test_cached_and_cache_write_tokens_are_priced_apart() -> None:
    counts = TokenCounts(input=10_000, output=1_000, cached=6_000, cache_write=2_000)
    # claude-opus-5-5: $4 input, $0.40 cache read, $5 cache write, $20 output per Mtok
    assert token_cost("claude-opus-5-5", counts) == pytest.approx(
        (2_000 * 4 + 6_000 * 0.4 + 2_000 * 5 + 1_000 * 20) / 1e6
    )


def test_dated_snapshot_uses_its_family_price() -> None:
    table = PriceTable()
    assert table.price("claude-haiku-4-5-20251001") == PRICES["claude-haiku-4-5"]
    assert table.price("gpt-5.4-mini-2026-03-17") == PRICES["gpt-5.4-mini"]
    assert table.price("gpt-5-pro") is None  # no guessing from a prefix


def test_every_price_is_sane() -> None:
    for model, price in PRICES.items():
        assert 0 < price.input <= price.output, model
        assert price.cached is not None and price.cached < price.input, model


def test_toml_overrides_replace_keys_and_add_models(tmp_path: Path) -> None:
    toml = """
[task]
editable = ["a.py"]
run = "true"

[metric]
name = "score"

[cost]
gpu_per_hour = 2.74

[cost.models."gpt-5.4"]
output = 20.0

[cost.models."llama3.1:8b"]
input = 0
output = 0
"""
    repo = make_repo(tmp_path / "r", {"autoresearch.toml": toml, "a.py": ""})
    config = load_config(repo)
    table = PriceTable(config.cost.models)
    assert table.price("gpt-5.4") == Price(2.5, 20.0, 0.25, None)
    assert table.cost("llama3.1:8b", TokenCounts(input=10**6, output=10**6)) == 0.0
    assert compute_cost(3600, config.cost.gpu_per_hour) == pytest.approx(2.74)


def test_unknown_model_is_none_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="autoresearch.cost"):
        assert table.cost("mystery-model", TokenCounts(input=5)) is None
        assert table.cost("mystery-model", TokenCounts(input=5)) is None
    assert len(caplog.records) == 1 and "mystery-model" in caplog.records[0].getMessage()


def test_compute_cost() -> None:
    assert compute_cost(300, 2.74) == pytest.approx(2.74 / 12)
    assert compute_cost(300, 0.0) == 0.0
    assert compute_cost(-5, 2.0) == 0.0


def test_spend_per_experiment_per_keep_and_budget() -> None:
    spend = Spend(agent_usd=1.5, compute_usd=4.5, experiments=10, keeps=2)
    assert spend.total_usd == 6.0 and spend.per_experiment == 0.6 and spend.per_keep == 3.0
    assert not spend.would_exceed(None)
    assert not spend.would_exceed(6.6)  # one more average experiment lands exactly on it
    assert spend.would_exceed(6.5)
    assert spend.would_exceed(7.0, next_usd=1.5)
    assert Spend().per_experiment is None and Spend().per_keep is None


def test_format_usd() -> None:
    assert format_usd(None) == "unknown"
    assert format_usd(0.01234) == "$0.0123"
    assert format_usd(1234.5) == "$1,234.50"
