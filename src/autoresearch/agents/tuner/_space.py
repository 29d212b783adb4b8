"""The search space: which constants are searched, over what range, and why others are not.

Per constant (``key`` is the NAME, or ``path:NAME`` when two editable files define the
same name), a range from ``params`` wins; otherwise a default around the session's
baseline value ``x``:

- floats log-uniform in ``[x/4, 4x]`` (uniform in ``[4x, x/4]`` when negative); ``0.0``
  uniform in ``[0, 0.1]`` (a ratio, a dropout, a warm-up fraction switched off);
- ints in ``[x/2, 2x]`` (powers of two choose among ``x/2, x, 2x``); ``0`` chooses among
  ``0, 1`` and ``1`` among ``0, 1, 2`` (flags and small counts);
- bools flip; strings need ``choice:...`` and are left out with that reason.

A default range widens to cover every value the session already evaluated, so a study
rebuilt after a keep still holds all of its history. Every constant the tuner found is
either searched or listed in ``LeftOut`` with the reason; ``space_text`` prints both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoresearch.agents._constants import Constant, Value, round_float
from autoresearch.agents.tuner._options import ParamSpec, TunerOptions
from autoresearch.errors import ConfigError

FLOAT_DIGITS = 3  # proposed floats are rounded to this many significant digits
ZERO_FLOAT_HIGH = 0.1  # the default range of a 0.0 float is [0, ZERO_FLOAT_HIGH]


@dataclass(frozen=True)
class Dimension:
    """One searched constant: its key, where it is, and its Optuna distribution."""

    key: str
    const: Constant
    distribution: Any  # optuna.distributions.BaseDistribution
    first: int | None = None  # its place in ``[agent.tuner] first``; None when not listed there

    def to_param(self, value: Any) -> Any:
        """``value`` as this distribution's parameter, or None when it lies outside."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        dist = self.distribution
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = isinstance(dist, CategoricalDistribution) and value in dist.choices
            return value if ok and type(value) is type(self.const.value) else None
        if isinstance(dist, CategoricalDistribution):
            return value if value in dist.choices and not isinstance(value, bool) else None
        param: float = float(value) if isinstance(dist, FloatDistribution) else value
        if not isinstance(dist, FloatDistribution):
            if float(value) != int(value):
                return None
            param = int(value)
        return param if dist.low <= param <= dist.high else None

    def from_param(self, param: Any) -> Value:
        """A sampled parameter as the value written into the code."""
        from optuna.distributions import CategoricalDistribution

        if isinstance(self.distribution, CategoricalDistribution):
            return param  # type: ignore[no-any-return]
        if isinstance(self.const.value, float):
            low, high = self.distribution.low, self.distribution.high
            return float(min(max(round_float(float(param), FLOAT_DIGITS), low), high))
        return int(min(max(round(param), self.distribution.low), self.distribution.high))

    @property
    def numeric(self) -> bool:
        """A float or int range (not a choice): what CMA-ES searches."""
        from optuna.distributions import CategoricalDistribution

        return not isinstance(self.distribution, CategoricalDistribution)


@dataclass(frozen=True)
class LeftOut:
    """A constant the tuner found and does not search, and why."""

    key: str
    const: Constant
    reason: str


def build_space(
    consts: Sequence[Constant],
    options: TunerOptions,
    anchors: Mapping[str, Value],
    seen: Mapping[str, list[Value]],
) -> tuple[list[Dimension], list[LeftOut]]:
    """The searched dimensions, and the constants left out with their reasons."""
    dims, left = [], []
    for key, const in keyed(consts).items():
        if options.include and not _named(key, const, options.include):
            left.append(LeftOut(key, const, "not in [agent.tuner] include"))
            continue
        if _named(key, const, options.exclude):
            left.append(LeftOut(key, const, "in [agent.tuner] exclude"))
            continue
        spec = _lookup(key, const, options.params)
        if spec is not None:
            dist = _spec_distribution(key, const, spec)
        else:
            dist = default_distribution(anchors.get(key, const.value), seen.get(key, []))
        if dist is None:
            name = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'  # TOML: a path:NAME key is quoted
            left.append(LeftOut(key, const, f"a string: give [agent.tuner] params = {{ {name} = 'choice:A,B' }}"))
            continue
        place = next((i for i, name in enumerate(options.first) if _named(key, const, [name])), None)
        dims.append(Dimension(key, const, dist, place))
    _check_first(options.first, left)
    return dims, left


def _check_first(first: Sequence[str], left: Sequence[LeftOut]) -> None:
    """A name in ``first`` must be searched: ordering a constant the tuner leaves out would be
    ignored without a word, and the user meant it to be tried early."""
    for name in first:
        out = next((lo for lo in left if _named(lo.key, lo.const, [name])), None)
        if out is not None:
            raise ConfigError(
                f"[agent.tuner] first: {name} is not searched ({out.reason}); "
                f"search it or take it out of first"
            )


def keyed(consts: Sequence[Constant]) -> dict[str, Constant]:
    """Constants by key: NAME, or ``path:NAME`` where a name is defined in several files."""
    counts: dict[str, int] = {}
    for const in consts:
        counts[const.name] = counts.get(const.name, 0) + 1
    return {(c.name if counts[c.name] == 1 else f"{c.path}:{c.name}"): c for c in consts}


def _named(key: str, const: Constant, names: Sequence[str]) -> bool:
    return key in names or const.name in names or f"{const.path}:{const.name}" in names


def _lookup(key: str, const: Constant, params: Mapping[str, ParamSpec]) -> ParamSpec | None:
    for name in (key, f"{const.path}:{const.name}", const.name):
        if name in params:
            return params[name]
    return None


def _spec_distribution(key: str, const: Constant, spec: ParamSpec) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    def fail(why: str) -> ConfigError:
        return ConfigError(f"[agent.tuner] params.{key}: range {spec.text!r} {why}")

    kind = const.kind
    if spec.kind == "choice":
        return CategoricalDistribution(tuple(_typed_choice(c, kind, fail) for c in spec.choices))
    if kind in ("bool", "str"):
        raise fail(f"does not fit the {kind} constant {key} = {const.source}; use 'choice:...'")
    if kind == "int":
        if spec.kind == "float" or spec.low != int(spec.low) or spec.high != int(spec.high):
            raise fail(f"is not an integer range for the int constant {key} = {const.source}")
        return IntDistribution(int(spec.low), int(spec.high), log=spec.kind == "log")
    if spec.kind == "int":
        return IntDistribution(int(spec.low), int(spec.high))
    return FloatDistribution(spec.low, spec.high, log=spec.kind == "log")


def _typed_choice(text: str, kind: str, fail: Any) -> Value:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise fail(
            f"has {text!r}, which is not {'an integer' if kind == 'int' else 'a number'}"
        ) from None
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise fail(f"has {text!r}; a bool constant takes true or false")
        return text.lower() == "true"
    return text


def default_distribution(anchor: Value, seen: Sequence[Value]) -> Any:
    """The default range around ``anchor`` covering ``seen``; None for a string."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(anchor, bool):
        return CategoricalDistribution((False, True))
    if isinstance(anchor, str):
        return None
    numbers = [v for v in seen if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(anchor, int):
        return _default_int(anchor, [int(v) for v in numbers if float(v) == int(v)])
    return _default_float(anchor, [float(v) for v in numbers])


def _default_int(x: int, seen: list[int]) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if x in (0, 1):  # a flag or a small count: a choice
        return CategoricalDistribution(tuple(sorted({0, 1, 2 * x, *seen})))
    if x >= 2 and x & (x - 1) == 0 and all(v > 0 and v & (v - 1) == 0 for v in seen):
        return CategoricalDistribution(tuple(sorted({x // 2, x, 2 * x, *seen})))
    low, high = (max(x // 2, 1), 2 * x) if x > 0 else (2 * x, -((-x) // 2))
    return IntDistribution(min(low, *seen) if seen else low, max(high, *seen) if seen else high)


def _default_float(x: float, seen: list[float]) -> Any:
    from optuna.distributions import FloatDistribution

    if x == 0:
        low, high = 0.0, ZERO_FLOAT_HIGH
    else:
        low, high = (x / 4, 4 * x) if x > 0 else (4 * x, x / 4)
    low, high = min(low, *seen) if seen else low, max(high, *seen) if seen else high
    return FloatDistribution(low, high, log=low > 0)


def range_text(dist: Any) -> str:
    """``log[0.01, 0.16]``, ``int[4, 16]``, ``{L, SSSL}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(str(c) for c in dist.choices) + "}"
    kind = ("log" if dist.log else "") + ("" if isinstance(dist, FloatDistribution) else "int")
    return f"{kind or 'float'}[{dist.low:.4g}, {dist.high:.4g}]"


def describe_space(dims: Sequence[Dimension]) -> str:
    """``LR log[0.01, 0.16], DEPTH int[4, 16], WINDOW {L, SSSL}``: one line."""
    return ", ".join(f"{d.key} {range_text(d.distribution)}" for d in dims)


def space_text(dims: Sequence[Dimension], left: Sequence[LeftOut], how: str) -> str:
    """The search space as a table (name, kind, range, value now), then what is left out."""
    lines = [f"tuner: {len(dims)} constants searched ({how}):"]
    width = max([len(d.key) for d in dims] + [len(x.key) for x in left] + [4])
    for dim in dims:
        kind, span = dim.const.kind, range_text(dim.distribution)
        lines.append(f"  {dim.key:<{width}}  {kind:<5}  {span:<24}  now {dim.const.source}")
    by_reason: dict[str, list[str]] = {}
    for item in left:
        name = f"{item.key} ({item.const.kind} {item.const.source})"
        by_reason.setdefault(item.reason, []).append(name)
    if by_reason:
        lines.append(f"tuner: {len(left)} constants left out:")
        lines += [f"  {reason}: {', '.join(names)}" for reason, names in by_reason.items()]
    return "\n".join(lines)


__all__ = [
    "Dimension",
    "LeftOut",
    "build_space",
    "default_distribution",
    "describe_space",
    "keyed",
    "range_text",
    "space_text",
]
