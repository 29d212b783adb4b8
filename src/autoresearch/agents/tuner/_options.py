"""The tuner's settings: ``[agent.tuner]`` (CLI flags merged over it), validated once.

Range strings (``params``): ``"log:LO:HI"`` (log-uniform; ints stay ints), ``"float:LO:HI"``,
``"int:LO:HI"`` or ``"choice:A,B,C"`` (values typed like the constant). Every error names
the key, what was found and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoresearch.errors import ConfigError

SAMPLERS = ("tpe", "random", "cmaes")
OPTIONS = ("params", "include", "exclude", "first", "sampler", "seed", "storage", "local_trials")
SPEC_FORMS = "'log:LO:HI', 'float:LO:HI', 'int:LO:HI' or 'choice:A,B,C'"
LOCAL_TRIALS = 10  # default: experiments of local moves before the sampler explores globally

Fail = Callable[[str], ConfigError]


@dataclass(frozen=True)
class ParamSpec:
    """One parsed range string from ``[agent.tuner] params``."""

    kind: str  # log | float | int | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    text: str = ""


def parse_spec(name: str, spec: object) -> ParamSpec:
    """Parse ``"log:1e-4:1e-1"`` etc.; a ``ConfigError`` names the constant otherwise."""

    def fail(why: str) -> ConfigError:
        return ConfigError(
            f"[agent.tuner] params.{name}: bad range {spec!r}: {why}; expected {SPEC_FORMS}"
        )

    if not isinstance(spec, str):
        raise fail("not a string")
    kind, _, rest = spec.strip().partition(":")
    if kind == "choice":
        return _parse_choice(rest, spec, fail)
    if kind not in ("log", "float", "int"):
        raise fail(f"unknown kind {kind!r}")
    parts = rest.split(":")
    if len(parts) != 2:
        raise fail("give exactly two bounds")
    low, high = (_bound(p, kind, fail) for p in parts)
    if not low < high:
        raise fail("the low bound must be below the high bound")
    if kind == "log" and low <= 0:
        raise fail("log ranges need bounds > 0")
    return ParamSpec(kind, low, high, text=spec)


def _parse_choice(rest: str, spec: str, fail: Fail) -> ParamSpec:
    choices = tuple(c.strip() for c in rest.split(","))
    if not rest.strip() or not all(choices):
        raise fail("empty choice")
    if len(set(choices)) != len(choices):
        raise fail("repeated choice")
    return ParamSpec("choice", choices=choices, text=spec)


def _bound(text: str, kind: str, fail: Fail) -> float:
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise fail(
            f"{text.strip()!r} is not {'an integer' if kind == 'int' else 'a number'}"
        ) from None
    if not math.isfinite(value):
        raise fail(f"{text.strip()!r} is not finite")
    return value


@dataclass(frozen=True)
class TunerOptions:
    """The tuner's settings, validated (CLI flags merged over ``[agent.tuner]``)."""

    params: Mapping[str, ParamSpec]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    first: tuple[str, ...] = ()  # local moves try these constants before the others, in this order
    sampler: str = "tpe"
    seed: int | None = None
    storage: str | None = None
    local_trials: int = LOCAL_TRIALS

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> TunerOptions:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"[agent.tuner] unknown key {unknown[0]!r}; allowed: {', '.join(OPTIONS)}"
            )
        params = options.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"[agent.tuner] params: found {params!r}, expected a table NAME = 'range'"
            )
        return cls(
            params={str(k): parse_spec(str(k), v) for k, v in params.items()},
            include=_names(options, "include"),
            exclude=_names(options, "exclude"),
            first=_names(options, "first"),
            sampler=_sampler(options.get("sampler")),
            seed=_integer(options, "seed", None),
            storage=_storage(options.get("storage")),
            local_trials=_local_trials(options),
        )


def _sampler(value: object) -> str:
    sampler = value or "tpe"
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"[agent.tuner] sampler: found {sampler!r}, expected one of {', '.join(SAMPLERS)}"
        )
    return str(sampler)


def _integer(options: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = options.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"[agent.tuner] {key}: found {value!r}, expected an integer")
    return value


def _local_trials(options: Mapping[str, Any]) -> int:
    value = _integer(options, "local_trials", LOCAL_TRIALS)
    if value is None or value < 0:
        raise ConfigError(
            f"[agent.tuner] local_trials: found {value!r}, expected an integer >= 0 "
            "(0: the sampler from the first experiment)"
        )
    return value


def _storage(value: object) -> str | None:
    storage = value or None
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(
            f"[agent.tuner] storage: found {storage!r}, expected an Optuna storage URL"
        )
    return storage


def _names(options: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = options.get(key) or ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"[agent.tuner] {key}: found {value!r}, expected a list of constant names"
        )
    return tuple(value)


__all__ = ["LOCAL_TRIALS", "SAMPLERS", "ParamSpec", "TunerOptions", "parse_spec"]
