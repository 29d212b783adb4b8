"""Token and compute prices, and what a session has spent.

Model prices are dollars per million tokens (``$/Mtok``): ``input`` (prompt tokens not read
from a cache), ``output``, ``cached`` (prompt tokens read from a cache) and ``cache_write``
(prompt tokens written to a cache; Anthropic bills them at 1.25x input). The built-in table
holds the public list prices of current Anthropic and OpenAI models; the task's
``[cost.models."NAME"]`` tables override it, key by key. A model missing from both has an
unknown cost (``None``) and is warned about once per ``PriceTable``, never an error.

Compute is priced per slot-hour (``[cost] gpu_per_hour`` or ``--gpu-price``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens for one model."""

    input: float
    output: float
    cached: float | None = None  # None: same as input (no cache discount)
    cache_write: float | None = None  # None: same as input


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of one call. ``input`` counts every prompt token, cached and written ones too."""

    input: int = 0
    output: int = 0
    cached: int = 0  # read from a prompt cache
    cache_write: int = 0  # written to a prompt cache


def _p(inp: float, out: float, cached: float, write: float | None = None) -> Price:
    return Price(inp, out, cached, write)


# Public list prices, $/Mtok (standard tier, short prompts), as of late 2026.
# Anthropic: cache reads 0.1x input (Sonnet 5.5: 0.05x), 5-minute cache writes 1.25x input.
# OpenAI: cached input as listed; there is no cache-write surcharge.
PRICES: dict[str, Price] = {
    "claude-fable-5-1": _p(10.0, 50.0, 1.0, 12.5),
    "claude-opus-5-5": _p(4.0, 20.0, 0.4, 5.0),
    "claude-opus-5": _p(5.0, 25.0, 0.5, 6.25),
    "claude-sonnet-5-5": _p(2.0, 10.0, 0.1, 2.5),
    "claude-sonnet-5": _p(2.0, 10.0, 0.2, 2.5),
    "claude-haiku-5-5": _p(0.1, 0.5, 0.01, 0.125),
    "claude-opus-4-8": _p(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-7": _p(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-6": _p(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-5": _p(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1": _p(15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4-6": _p(3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4-5": _p(3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4-5": _p(1.0, 5.0, 0.1, 1.25),
    "gpt-5.5": _p(5.0, 30.0, 0.5),
    "gpt-5.4": _p(2.5, 15.0, 0.25),
    "gpt-5.4-mini": _p(0.75, 4.5, 0.075),
    "gpt-5.4-nano": _p(0.2, 1.25, 0.02),
    "gpt-5.2": _p(1.75, 14.0, 0.175),
    "gpt-5.1": _p(1.25, 10.0, 0.125),
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.4, 0.005),
    "gpt-4.1": _p(2.0, 8.0, 0.5),
    "gpt-4.1-mini": _p(0.4, 1.6, 0.1),
    "gpt-4.1-nano": _p(0.1, 0.4, 0.025),
    "gpt-4o": _p(2.5, 10.0, 1.25),
    "gpt-4o-mini": _p(0.15, 0.6, 0.075),
    "o3": _p(2.0, 8.0, 0.5),
    "o4-mini": _p(1.1, 4.4, 0.275),
}

# Dated snapshots share their family's price: claude-haiku-4-5-20251001, gpt-5-2025-08-07.
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


def _override(base: Price | None, table: Mapping[str, float]) -> Price:
    """``base`` with the keys of one ``[cost.models."NAME"]`` table replaced."""
    if base is None:
        base = Price(input=table.get("input", 0.0), output=table.get("output", 0.0))
    fields = {
        k: float(v) for k, v in table.items() if k in ("input", "output", "cached", "cache_write")
    }
    return replace(base, **fields)


class PriceTable:
    """The built-in prices with the task's overrides; warns once per unknown model."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self._warned: set[str] = set()

    def price(self, model: str) -> Price | None:
        """The price of ``model`` (exact name first, then without a date suffix), or None."""
        for name in (model, _DATE_SUFFIX.sub("", model)):
            if name in self.overrides:
                return _override(PRICES.get(name), self.overrides[name])
            if name in PRICES:
                return PRICES[name]
        return None

    def cost(self, model: str, counts: TokenCounts) -> float | None:
        """Dollars for ``counts`` tokens of ``model``; None (and one warning) when unpriced."""
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price known for model %r: its cost is recorded as unknown; "
                    'add [cost.models."%s"] input/output/cached ($ per Mtok) to autoresearch.toml',
                    model,
                    model,
                )
            return None
        return price_tokens(price, counts)


def price_tokens(price: Price, counts: TokenCounts) -> float:
    """Dollars for ``counts`` at ``price``."""
    cached = price.input if price.cached is None else price.cached
    write = price.input if price.cache_write is None else price.cache_write
    fresh = max(0, counts.input - counts.cached - counts.cache_write)
    total = (
        fresh * price.input
        + counts.cached * cached
        + counts.cache_write * write
        + counts.output * price.output
    )
    return total / 1_000_000


def token_cost(
    model: str,
    counts: TokenCounts,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> float | None:
    """Dollars for one call's tokens, or None when the model has no price (warned)."""
    return PriceTable(overrides).cost(model, counts)


def compute_cost(seconds: float, gpu_per_hour: float) -> float:
    """Dollars for ``seconds`` of one slot at ``gpu_per_hour`` dollars an hour."""
    return max(0.0, seconds) * max(0.0, gpu_per_hour) / 3600.0


@dataclass(frozen=True)
class Spend:
    """What a session has spent so far, for ``status`` and the ``--max-cost`` rule."""

    agent_usd: float = 0.0  # known token costs
    compute_usd: float = 0.0
    unpriced: int = 0  # proposals whose token cost is unknown (not counted above)
    experiments: int = 0
    keeps: int = 0

    @property
    def total_usd(self) -> float:
        return self.agent_usd + self.compute_usd

    @property
    def per_experiment(self) -> float | None:
        return self.total_usd / self.experiments if self.experiments else None

    @property
    def per_keep(self) -> float | None:
        return self.total_usd / self.keeps if self.keeps else None

    def would_exceed(self, limit: float | None, next_usd: float | None = None) -> bool:
        """True when spending ``next_usd`` more (default: one more average experiment)
        would pass ``limit``; never true without a limit."""
        if limit is None:
            return False
        step = self.per_experiment if next_usd is None else next_usd
        return self.total_usd + (step or 0.0) > limit


def format_usd(value: float | None) -> str:
    """``$0.0123``, ``$12.34``, or ``unknown``."""
    if value is None:
        return "unknown"
    return f"${value:.4f}" if abs(value) < 1 else f"${value:,.2f}"


__all__ = [
    "PRICES",
    "Price",
    "PriceTable",
    "Spend",
    "TokenCounts",
    "compute_cost",
    "format_usd",
    "price_tokens",
    "token_cost",
]
