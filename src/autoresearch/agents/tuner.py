"""The offline tuner: numeric constants searched with Optuna, no network, no API key.

On every call the tuner re-reads the tunable constants of the editable files at the
current best commit (see ``_constants``), rebuilds an Optuna study from the session's
history and asks its sampler for the next configuration. The edit changes only the
targeted literals; everything else in the files stays byte for byte.

The search space, per constant (``key`` is the NAME, or ``path:NAME`` when two editable
files define the same name):

- a range from ``params``: ``"log:LO:HI"`` (log-uniform; ints stay ints), ``"float:LO:HI"``,
  ``"int:LO:HI"`` or ``"choice:A,B,C"`` (values typed like the constant);
- otherwise a default around the session's baseline value ``x``: floats log-uniform in
  ``[x/4, 4x]`` (uniform in ``[4x, x/4]`` when negative; 0.0 is skipped), ints in
  ``[x/2, 2x]`` (powers of two choose among ``x/2, x, 2x``), bools flip, strings are left
  alone. A default range widens to cover every value the session already evaluated, so
  a study rebuilt after a keep still holds all of its history.

History -> trials. Every proposal records in ``Proposal.meta`` the full configuration it
evaluates (``config``), its parent's (``parent_config``, under ``parent``) and the
sampler's per-trial state (CMA-ES keeps its optimizer there). A row's configuration is its
``config``, or the configuration known for its commit: the parent of a later tuner
proposal, or the current best. So the baseline and experiments by other agents that
were kept become trials too; an LLM agent's discarded experiment, whose values nobody
recorded, does not. ``keep``/``discard``/``baseline`` rows are trials with their metric.
``crash``/``timeout``/``invalid`` rows (and a discard without a metric) are failed trials,
recorded the way Optuna's samplers can learn from: a violated constraint ``failed``
(TPE ranks them below every feasible trial) and the session's worst metric as the value
(CMA-ES). Optuna's FAIL state would hide them from TPE, which then samples a crash region
again and again. ``interrupted`` rows were never measured and are skipped.

Determinism: the sampler is seeded from ``(seed, len(history))`` and sees only the
ledger's history, so the same history gives the same proposal, in one process or after a
resume. ``storage`` (an Optuna/SQLAlchemy URL; ``sqlite:///.autoresearch/ledger.db`` puts
it in the ledger's file, relative to the current folder) keeps a copy of the session's
trials in a study named ``autoresearch-tuner-<session>-<space>``, for optuna-dashboard and
other Optuna tools; it is brought up to date on every call and changes no proposal. A configuration already
evaluated (hash of its values) is never proposed again: the sampler is asked again, then
a seeded enumeration of a finite space (or random draws of an infinite one) takes over,
and ``AgentExhausted`` ends the session when nothing new is left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoresearch.agents._base import Agent, Context, Edit, Proposal
from autoresearch.agents._constants import (
    Constant,
    Value,
    discover,
    render,
    rewrite,
    round_float,
    statement_lines,
)
from autoresearch.edits import apply_edits
from autoresearch.errors import AgentExhausted, ConfigError, ProposalError

SAMPLERS = ("tpe", "random", "cmaes")
OPTIONS = ("params", "include", "exclude", "sampler", "seed", "storage")
SPEC_FORMS = "'log:LO:HI', 'float:LO:HI', 'int:LO:HI' or 'choice:A,B,C'"
FLOAT_DIGITS = 3  # proposed floats are rounded to this many significant digits
TPE_STARTUP = 8  # random trials before TPE models the history (Optuna's default is 10)
SAMPLER_TRIES = 32  # asks before a duplicate-avoiding fallback takes over
RANDOM_TRIES = 2000
ENUMERATE_LIMIT = 200_000
DESCRIBE_LIMIT = 8  # changes named in the one-line description
COMPLETE_VERDICTS = ("baseline", "keep", "discard")
FAILED_CONSTRAINT = "failed"  # > 0: the experiment crashed, timed out or was invalid
FAILED_VERDICTS = ("crash", "timeout", "invalid")


# --- range strings ---------------------------------------------------------------------------


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
        choices = tuple(c.strip() for c in rest.split(","))
        if not rest.strip() or not all(choices):
            raise fail("empty choice")
        if len(set(choices)) != len(choices):
            raise fail("repeated choice")
        return ParamSpec("choice", choices=choices, text=spec)
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


def _bound(text: str, kind: str, fail: Any) -> float:
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise fail(
            f"{text.strip()!r} is not {'an integer' if kind == 'int' else 'a number'}"
        ) from None
    if not math.isfinite(value):
        raise fail(f"{text.strip()!r} is not finite")
    return value


# --- the search space ------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched constant: its key, where it is, and its Optuna distribution."""

    key: str
    const: Constant
    distribution: Any  # optuna.distributions.BaseDistribution

    def to_param(self, value: Any) -> Any:
        """``value`` as this distribution's parameter, or None when it lies outside."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        dist = self.distribution
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = isinstance(dist, CategoricalDistribution) and value in dist.choices
            return value if ok and _same_type(value, self.const.value) else None
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
        return int(param)


def _same_type(a: object, b: object) -> bool:
    return type(a) is type(b)


def build_space(
    consts: Sequence[Constant],
    options: TunerOptions,
    anchors: Mapping[str, Value],
    seen: Mapping[str, list[Value]],
) -> tuple[list[Dimension], list[str]]:
    """The searched dimensions, and notes on the constants left out (for the rationale)."""
    dims, notes = [], []
    for key, const in keyed(consts).items():
        if (options.include and not _named(key, const, options.include)) or _named(
            key, const, options.exclude
        ):
            continue
        spec = _lookup(key, const, options.params)
        if spec is not None:
            dist = _spec_distribution(key, const, spec)
        else:
            dist = _default_distribution(anchors.get(key, const.value), seen.get(key, []))
        if dist is None:
            notes.append(f"{key} ({const.kind} {const.source}: no default range)")
            continue
        dims.append(Dimension(key, const, dist))
    return dims, notes


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


def _default_distribution(anchor: Value, seen: Sequence[Value]) -> Any:
    from optuna.distributions import CategoricalDistribution

    if isinstance(anchor, bool):
        return CategoricalDistribution((False, True))
    if isinstance(anchor, str) or anchor == 0:
        return None
    numbers = [v for v in seen if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(anchor, int):
        return _default_int(anchor, [int(v) for v in numbers if float(v) == int(v)])
    if isinstance(anchor, float):
        return _default_float(anchor, [float(v) for v in numbers])
    return None


def _default_int(x: int, seen: list[int]) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if x >= 2 and x & (x - 1) == 0 and all(v > 0 and v & (v - 1) == 0 for v in seen):
        return CategoricalDistribution(tuple(sorted({x // 2, x, 2 * x, *seen})))
    low, high = (x // 2 if x > 0 else 2 * x), (2 * x if x > 0 else -((-x) // 2))
    if x > 0:
        low = max(low, 1)
    return IntDistribution(min(low, *seen) if seen else low, max(high, *seen) if seen else high)


def _default_float(x: float, seen: list[float]) -> Any:
    from optuna.distributions import FloatDistribution

    low, high = (x / 4, 4 * x) if x > 0 else (4 * x, x / 4)
    low, high = min(low, *seen) if seen else low, max(high, *seen) if seen else high
    return FloatDistribution(low, high, log=low > 0)


def describe_space(dims: Sequence[Dimension]) -> str:
    """``LR log[0.01, 0.16], DEPTH int[4, 16], WINDOW {L, SSSL}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    parts = []
    for dim in dims:
        dist = dim.distribution
        if isinstance(dist, CategoricalDistribution):
            parts.append(f"{dim.key} {{{', '.join(str(c) for c in dist.choices)}}}")
        else:
            kind = ("log" if dist.log else "") + (
                "" if isinstance(dist, FloatDistribution) else "int"
            )
            parts.append(f"{dim.key} {kind or 'float'}[{dist.low:.4g}, {dist.high:.4g}]")
    return ", ".join(parts)


# --- the agent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunerOptions:
    """The tuner's settings, validated (CLI flags merged over ``[agent.tuner]``)."""

    params: Mapping[str, ParamSpec]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sampler: str = "tpe"
    seed: int | None = None
    storage: str | None = None

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
        sampler = options.get("sampler") or "tpe"
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"[agent.tuner] sampler: found {sampler!r}, expected one of {', '.join(SAMPLERS)}"
            )
        seed = options.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"[agent.tuner] seed: found {seed!r}, expected an integer")
        storage = options.get("storage") or None
        if storage is not None and not isinstance(storage, str):
            raise ConfigError(
                f"[agent.tuner] storage: found {storage!r}, expected an Optuna storage URL"
            )
        return cls(
            params={str(k): parse_spec(str(k), v) for k, v in params.items()},
            include=_names(options, "include"),
            exclude=_names(options, "exclude"),
            sampler=sampler,
            seed=seed,
            storage=storage,
        )


def _names(options: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = options.get(key) or ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"[agent.tuner] {key}: found {value!r}, expected a list of constant names"
        )
    return tuple(value)


@dataclass(frozen=True)
class _Trial:
    """One history row as an Optuna trial."""

    experiment_id: int
    commit: str
    config: Mapping[str, Value]
    value: float  # a failed experiment's is the worst metric of the session
    failed: bool  # crash, timeout, invalid: an infeasible trial the sampler learns to avoid
    verdict: str
    system_attrs: Mapping[str, Any]


class TunerAgent(Agent):
    """Proposes new values for the task's UPPER_CASE constants, guided by an Optuna sampler."""

    name = "tuner"

    def __init__(self, **options: Any) -> None:
        self.options = TunerOptions.parse(options)
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("the tuner agent needs optuna: pip install 'autoresearch[tuner]'")
        if self.options.sampler == "cmaes":
            _require_cmaes()
        if self.options.storage:
            _check_storage(self.options.storage)
        self._checked_names = False

    def check(self, editable: Mapping[str, str]) -> None:
        """Validate the options against the code before the session spends time on setup."""
        consts = _constants_of(editable)
        self._check_names(consts, editable)
        current = {key: const.value for key, const in keyed(consts).items()}
        build_space(consts, self.options, current, {k: [v] for k, v in current.items()})

    def propose(self, context: Context) -> Proposal:
        consts = _constants_of(context.editable)
        self._check_names(consts, context.editable)
        current = {key: const.value for key, const in keyed(consts).items()}
        configs = _row_configs(context, current)
        anchors = next(iter(configs.values()), current)
        seen: dict[str, list[Value]] = {}
        for config in [current, *configs.values()]:
            for key, value in config.items():
                seen.setdefault(key, []).append(value)
        dims, notes = build_space(consts, self.options, anchors, seen)
        if not dims:
            raise AgentExhausted(_nothing_to_tune(context, consts, notes))
        best = {d.key: d.const.value for d in dims}
        return self._propose(context, dims, notes, best, configs)

    def _propose(
        self,
        context: Context,
        dims: list[Dimension],
        notes: list[str],
        best: dict[str, Value],
        configs: Mapping[int, Mapping[str, Value]],
    ) -> Proposal:
        seed = self.options.seed if self.options.seed is not None else context.seed
        keys = [d.key for d in dims]
        evaluated = {config_hash(c, keys) for c in configs.values()} | {config_hash(best, keys)}
        trials = _trials(context, configs, self.options.sampler)
        sampler = _make_sampler(self.options.sampler, _derive_seed(seed, len(context.history)))
        study = _Study(context, dims, sampler)
        study.add(trials)
        found = study.sample(evaluated)
        if self.options.storage:
            _mirror(self.options.storage, context, dims, trials)
        how = f"{self.options.sampler} sampler"
        if found is None:
            found, how = _fallback(dims, evaluated, _derive_seed(seed, len(context.history), 1))
        if found is None:
            raise AgentExhausted(
                f"tuner: all configurations of the search space have been evaluated "
                f"({len(evaluated)} so far): {describe_space(dims)}"
            )
        config, trial_number, state = found
        return _proposal(context, dims, notes, best, config, how, seed, trial_number, state)

    def _check_names(self, consts: Sequence[Constant], editable: Mapping[str, str]) -> None:
        """Names in params/include/exclude must exist (checked on this process's first call)."""
        if self._checked_names:
            return
        self._checked_names = True
        known = {c.name for c in consts} | {f"{c.path}:{c.name}" for c in consts}
        for where, names in (
            ("params", list(self.options.params)),
            ("include", list(self.options.include)),
            ("exclude", list(self.options.exclude)),
        ):
            missing = [n for n in names if n not in known]
            if missing:
                raise ConfigError(
                    f"[agent.tuner] {where}: {', '.join(missing)} not found among the module-level "
                    f"UPPER_CASE constants of {', '.join(sorted(editable)) or 'the editable files'}"
                    f" (found: {', '.join(sorted({c.name for c in consts})) or 'none'})"
                )


def _constants_of(editable: Mapping[str, str]) -> list[Constant]:
    """The tunable constants of the editable Python files, in path order."""
    return [
        c
        for path, text in sorted(editable.items())
        if path.endswith(".py")
        for c in discover(path, text)
    ]


def _require_cmaes() -> None:
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            "[agent.tuner] sampler 'cmaes' needs the cmaes package: pip install cmaes"
        )


def _nothing_to_tune(context: Context, consts: Sequence[Constant], notes: Sequence[str]) -> str:
    files = ", ".join(sorted(p for p in context.editable if p.endswith(".py"))) or "none"
    text = f"tuner: no tunable constants in the editable Python files ({files})"
    if notes:
        text += f"; left out: {', '.join(notes)}"
    elif not consts:
        text += ": it tunes module-level UPPER_CASE assignments of int, float or bool literals"
    return text + "; list ranges under [agent.tuner] params to tune others"


def config_hash(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A hash of the values of ``keys`` (a missing key counts as its own value)."""
    items = [[k, config.get(k, "\x00missing")] for k in sorted(keys)]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _derive_seed(seed: int, n_history: int, stream: int = 0) -> int:
    text = f"{seed}:{n_history}:{stream}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


# --- history -> trials -------------------------------------------------------------------------


def _row_configs(context: Context, current: Mapping[str, Value]) -> dict[int, Mapping[str, Value]]:
    """The configuration each history row evaluated, where it is known (by row id)."""
    by_commit: dict[str, Mapping[str, Value]] = {}
    for row in context.history:
        meta = row.meta
        if _is_tuner_meta(meta):
            if meta.get("parent") and isinstance(meta.get("parent_config"), Mapping):
                by_commit.setdefault(str(meta["parent"]), meta["parent_config"])
            if row.commit:
                by_commit[row.commit] = meta["config"]
    if context.parent:
        by_commit[context.parent] = current
    has_keep = any(r.verdict == "keep" for r in context.history)
    out: dict[int, Mapping[str, Value]] = {}
    for row in context.history:
        if row.verdict == "interrupted":
            continue
        if _is_tuner_meta(row.meta):
            out[row.id] = row.meta["config"]
        elif row.commit in by_commit:
            out[row.id] = by_commit[row.commit]
        elif row.verdict == "baseline" and not has_keep:
            out[row.id] = current  # nothing kept since: the best code is the baseline's
    return out


def _is_tuner_meta(meta: Mapping[str, Any]) -> bool:
    return meta.get("agent") == "tuner" and isinstance(meta.get("config"), Mapping)


def _trials(
    context: Context, configs: Mapping[int, Mapping[str, Value]], sampler: str
) -> list[_Trial]:
    """History rows with a known configuration, as trials (interrupted rows are left out)."""
    penalty = _worst(context)
    out = []
    for row in context.history:
        if row.id not in configs or row.verdict not in COMPLETE_VERDICTS + FAILED_VERDICTS:
            continue
        value = row.metric if row.verdict in COMPLETE_VERDICTS else None
        failed = value is None or not math.isfinite(value)
        state = row.meta.get("sampler_state") if row.meta.get("sampler") == sampler else None
        out.append(_Trial(
            row.id, row.commit, configs[row.id], penalty if failed or value is None else value, failed,
            row.verdict, state if isinstance(state, Mapping) else {},
        ))  # fmt: skip
    return out


def _worst(context: Context) -> float:
    """The worst finite metric of the session (0.0 when there is none)."""
    values = [r.metric for r in context.history if r.metric is not None and math.isfinite(r.metric)]
    if not values:
        return 0.0
    return min(values) if context.direction == "maximize" else max(values)


# --- the study ---------------------------------------------------------------------------------


class _Study:
    """An Optuna study of the session's trials, asked for new configurations.

    With ``storage`` it lives in that database (named per session and search space) and
    mirrors the history there; the sampler only ever sees the trials of this session's
    ledger, so a proposal is the same with or without a storage.
    """

    def __init__(
        self,
        context: Context,
        dims: Sequence[Dimension],
        sampler: Any,
        storage: str | None = None,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dims = list(dims)
        self.distributions = {d.key: d.distribution for d in dims}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                study_name=study_name(context, dims) if storage else None,
                direction="maximize" if context.direction == "maximize" else "minimize",
                load_if_exists=True,
            )

    def add(self, trials: Sequence[_Trial]) -> None:
        """Add the trials the study does not hold yet (a stored study keeps earlier ones)."""
        from optuna.trial import TrialState, create_trial

        held = {
            (t.user_attrs.get("experiment_id"), t.user_attrs.get("commit"))
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }
        for trial in trials:
            params = self._params(trial.config)
            if not params or (trial.experiment_id, trial.commit) in held:
                continue
            self.study.add_trial(create_trial(
                state=TrialState.COMPLETE, value=trial.value, params=params,
                distributions={k: self.distributions[k] for k in params},
                user_attrs={"experiment_id": trial.experiment_id, "commit": trial.commit,
                            "verdict": trial.verdict},
                system_attrs=dict(trial.system_attrs),
                constraints={FAILED_CONSTRAINT: 1.0 if trial.failed else 0.0},
            ))  # fmt: skip

    def _params(self, config: Mapping[str, Value]) -> dict[str, Any]:
        params = {}
        for dim in self.dims:
            if dim.key in config:
                param = dim.to_param(config[dim.key])
                if param is not None:
                    params[dim.key] = param
        return params

    def _reject(self, number: int) -> None:
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.tell(number, state=TrialState.FAIL)

    def sample(self, evaluated: set[str]) -> tuple[dict[str, Value], int, dict[str, Any]] | None:
        """A configuration not in ``evaluated``: (values, trial number, sampler state)."""
        keys = list(self.distributions)
        for _ in range(SAMPLER_TRIES):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self.study.ask(self.distributions)
            config = {d.key: d.from_param(trial.params[d.key]) for d in self.dims}
            digest = config_hash(config, keys)
            if digest not in evaluated:
                trial.set_user_attr("config_hash", digest)
                state = dict(self.study.get_trials(deepcopy=False)[trial.number].system_attrs)
                return config, trial.number, state
            trial.set_user_attr("duplicate", True)
            self._reject(trial.number)
        return None


def study_name(context: Context, dims: Sequence[Dimension]) -> str:
    """``autoresearch-tuner-<session>-<space>``: one stored study per session and search space."""
    session = str(getattr(context, "tag", "") or "")
    if not session:
        session = next((r.commit[:12] for r in context.history if r.commit), "") or "session"
    space = hashlib.sha256(describe_space(dims).encode()).hexdigest()[:8]
    return f"autoresearch-tuner-{session}-{space}"


def _mirror(
    storage: str, context: Context, dims: Sequence[Dimension], trials: Sequence[_Trial]
) -> None:
    """Copy the session's trials into the Optuna storage (for optuna-dashboard and friends)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        _Study(context, dims, None, storage).add(trials)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"[agent.tuner] storage {storage!r}: {exc}") from exc


def _check_storage(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"[agent.tuner] storage: {url!r} is not a database URL (e.g. sqlite:///tuner.db): {exc}"
        ) from exc


def _make_sampler(name: str, seed: int) -> Any:
    from optuna.samplers import CmaEsSampler, RandomSampler, TPESampler

    if name == "random":
        return RandomSampler(seed=seed)
    if name == "cmaes":
        return CmaEsSampler(
            seed=seed, n_startup_trials=1,
            independent_sampler=RandomSampler(seed=seed), warn_independent_sampling=False,
        )  # fmt: skip
    return TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True)


def _fallback(
    dims: Sequence[Dimension], evaluated: set[str], seed: int
) -> tuple[tuple[dict[str, Value], int, dict[str, Any]] | None, str]:
    """A seeded walk over the space for a configuration not yet evaluated."""
    rng = random.Random(seed)
    keys = [d.key for d in dims]
    for config in _candidates(dims, rng):
        if config_hash(config, keys) not in evaluated:
            return (config, -1, {}), "random search (the sampler only repeated itself)"
    return None, ""


def _candidates(dims: Sequence[Dimension], rng: random.Random) -> Iterator[dict[str, Value]]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values: list[list[Any]] = []
    for dim in dims:
        dist = dim.distribution
        if isinstance(dist, CategoricalDistribution):
            values.append(list(dist.choices))
        elif isinstance(dist, IntDistribution) and dist.high - dist.low < ENUMERATE_LIMIT:
            values.append(list(range(dist.low, dist.high + 1, dist.step)))
        else:
            values = []
            break
    if values and math.prod(len(v) for v in values) <= ENUMERATE_LIMIT:
        grid = list(itertools.product(*values))
        rng.shuffle(grid)
        for combo in grid:
            yield {d.key: d.from_param(v) for d, v in zip(dims, combo, strict=True)}
        return
    for _ in range(RANDOM_TRIES):
        yield {d.key: d.from_param(_draw(d.distribution, rng)) for d in dims}


def _draw(dist: Any, rng: random.Random) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return rng.choice(list(dist.choices))
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        return rng.uniform(dist.low, dist.high)
    return rng.randint(dist.low, dist.high)


# --- the proposal ------------------------------------------------------------------------------


def _proposal(
    context: Context,
    dims: Sequence[Dimension],
    notes: Sequence[str],
    best: Mapping[str, Value],
    config: Mapping[str, Value],
    how: str,
    seed: int,
    trial_number: int,
    state: Mapping[str, Any],
) -> Proposal:
    changed = [d for d in dims if not _equal(config[d.key], best[d.key])]
    changes = [f"{d.key} {d.const.source} -> {render(config[d.key], d.const)}" for d in changed]
    description = ", ".join(changes[:DESCRIBE_LIMIT])
    if len(changes) > DESCRIBE_LIMIT:
        description += f", +{len(changes) - DESCRIBE_LIMIT} more"
    rationale = (
        f"{how} (seed {seed}) over {len(dims)} constants, "
        f"{len(context.history)} recorded experiments. Space: {describe_space(dims)}."
    )
    if notes:
        rationale += f" Left out: {', '.join(notes)}."
    meta: dict[str, Any] = {
        "agent": "tuner",
        "sampler": how.split(" ")[0] if trial_number >= 0 else "fallback",
        "seed": seed,
        "params": {d.key: config[d.key] for d in changed},
        "config": dict(config),
        "config_hash": config_hash(config, [d.key for d in dims]),
        "parent": context.parent,
        "parent_config": dict(best),
        "trial": trial_number,
    }
    if state:
        meta["sampler_state"] = dict(state)
    edits = make_edits(context.editable, {d.const: config[d.key] for d in changed})
    return Proposal(description, rationale, edits, meta=meta)


def _equal(a: Value, b: Value) -> bool:
    return type(a) is type(b) and a == b


def make_edits(files: Mapping[str, str], changes: Mapping[Constant, Value]) -> tuple[Edit, ...]:
    """Search/replace edits (one per group of touched lines) that change only the literals.

    Falls back to a whole-file edit where the search blocks would not apply exactly once
    (the same line text elsewhere in the file): the result must equal ``rewrite``'s.
    """
    edits: list[Edit] = []
    by_path: dict[str, dict[Constant, Value]] = {}
    for const, value in changes.items():
        by_path.setdefault(const.path, {})[const] = value
    for path, file_changes in sorted(by_path.items()):
        text = files[path]
        expected = rewrite(text, file_changes)
        blocks = _line_blocks(text, file_changes)
        try:
            ok = apply_edits({path: text}, blocks).get(path) == expected
        except ProposalError:
            ok = False
        edits.extend(blocks if ok else [Edit(path, content=expected)])
    return tuple(edits)


def _line_blocks(text: str, changes: Mapping[Constant, Value]) -> list[Edit]:
    groups: list[tuple[int, int, list[Constant]]] = []
    for const in sorted(changes, key=lambda c: c.start):
        start, end = statement_lines(text, const)
        if groups and start < groups[-1][1]:
            groups[-1] = (groups[-1][0], max(end, groups[-1][1]), [*groups[-1][2], const])
        else:
            groups.append((start, end, [const]))
    edits = []
    for start, end, consts in groups:
        local = {dataclasses.replace(c, start=c.start - start, end=c.end - start): changes[c]
                 for c in consts}  # fmt: skip
        edits.append(
            Edit(consts[0].path, search=text[start:end], replace=rewrite(text[start:end], local))
        )
    return edits


__all__ = [
    "SAMPLERS",
    "Dimension",
    "ParamSpec",
    "TunerAgent",
    "TunerOptions",
    "build_space",
    "parse_spec",
]
