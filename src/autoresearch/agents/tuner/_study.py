"""The Optuna side: a study of the session's trials, its samplers, and a fallback walk.

The study is rebuilt from the ledger's history on every call, so the same history gives
the same proposal, in one process or after a resume. With ``storage`` (an Optuna/SQLAlchemy
URL) a copy of the trials is kept in a study named ``autoresearch-tuner-<session>-<space>``
for optuna-dashboard and other Optuna tools; it changes no proposal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoresearch.agents._base import Context
from autoresearch.agents._constants import Value
from autoresearch.agents.tuner._history import Trial, config_hash
from autoresearch.agents.tuner._space import Dimension, describe_space
from autoresearch.errors import ConfigError

TPE_STARTUP = 8  # random trials before TPE models the history (Optuna's default is 10)
CMA_SIGMA = 0.1  # CMA-ES's first step, in the [0, 1]-scaled space: a small one
SAMPLER_TRIES = 32  # asks before a duplicate-avoiding fallback takes over
RANDOM_TRIES = 2000
ENUMERATE_LIMIT = 200_000
FAILED_CONSTRAINT = "failed"  # > 0: the experiment crashed, timed out or was invalid


@dataclass(frozen=True)
class Sampled:
    """A configuration the study proposes, with its trial number and sampler state."""

    config: dict[str, Value]
    trial: int  # -1 from the fallback walk
    state: Mapping[str, Any]


class Study:
    """An Optuna study of the session's trials, asked for new configurations.

    With ``storage`` it lives in that database (named per session and search space) and
    mirrors the history there; the sampler only ever sees the trials of this session's
    ledger, so a proposal is the same with or without a storage.
    """

    def __init__(
        self, context: Context, dims: Sequence[Dimension], sampler: Any, storage: str | None = None
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

    def add(self, trials: Sequence[Trial]) -> None:
        """Add the trials the study does not hold yet (a stored study keeps earlier ones)."""
        from optuna.trial import TrialState, create_trial

        held = {
            (t.user_attrs.get("experiment_id"), t.user_attrs.get("commit"))
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }
        for trial in trials:
            params = self.params(trial.config)
            if not params or (trial.experiment_id, trial.commit) in held:
                continue
            attrs = {"experiment_id": trial.experiment_id, "commit": trial.commit}
            attrs["verdict"] = trial.verdict
            self.study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=trial.value,
                    params=params,
                    distributions={k: self.distributions[k] for k in params},
                    user_attrs=attrs,
                    system_attrs=dict(trial.system_attrs),
                    constraints={FAILED_CONSTRAINT: 1.0 if trial.failed else 0.0},
                )
            )

    def params(self, config: Mapping[str, Value]) -> dict[str, Any]:
        """``config`` as Optuna parameters (values outside the space left out)."""
        params = {}
        for dim in self.dims:
            if dim.key in config:
                param = dim.to_param(config[dim.key])
                if param is not None:
                    params[dim.key] = param
        return params

    def sample(self, evaluated: set[str]) -> Sampled | None:
        """A configuration not in ``evaluated``, or None when the sampler only repeats itself."""
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
                return Sampled(config, trial.number, state)
            trial.set_user_attr("duplicate", True)
            self._reject(trial.number)
        return None

    def _reject(self, number: int) -> None:
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.tell(number, state=TrialState.FAIL)


def study_name(context: Context, dims: Sequence[Dimension]) -> str:
    """``autoresearch-tuner-<session>-<space>``: one stored study per session and search space."""
    session = str(getattr(context, "tag", "") or "")
    if not session:
        session = next((r.commit[:12] for r in context.history if r.commit), "") or "session"
    space = hashlib.sha256(describe_space(dims).encode()).hexdigest()[:8]
    return f"autoresearch-tuner-{session}-{space}"


def make_sampler(
    name: str, seed: int, dims: Sequence[Dimension], incumbent: Mapping[str, Value]
) -> Any:
    """The named Optuna sampler; CMA-ES starts at the incumbent with a small step."""
    from optuna.samplers import CmaEsSampler, RandomSampler, TPESampler

    if name == "random":
        return RandomSampler(seed=seed)
    if name == "cmaes":
        x0 = {d.key: d.to_param(incumbent[d.key]) for d in dims if d.numeric}
        with warnings.catch_warnings():
            # Optuna 4.9 deprecated x0 and sigma0 with no replacement that starts at a point;
            # pyproject keeps optuna below 6, where they are to be removed.
            warnings.filterwarnings("ignore", r"`(x0|sigma0)` has been deprecated", FutureWarning)
            return CmaEsSampler(
                x0={k: v for k, v in x0.items() if v is not None} or None,
                sigma0=CMA_SIGMA,
                seed=seed,
                n_startup_trials=1,
                independent_sampler=RandomSampler(seed=seed),
                warn_independent_sampling=False,
            )
    return TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True)


def require_cmaes() -> None:
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            "[agent.tuner] sampler 'cmaes' needs the cmaes package: pip install cmaes"
        )


def mirror(
    storage: str, context: Context, dims: Sequence[Dimension], trials: Sequence[Trial]
) -> None:
    """Copy the session's trials into the Optuna storage (for optuna-dashboard and friends)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        Study(context, dims, None, storage).add(trials)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"[agent.tuner] storage {storage!r}: {exc}") from exc


def check_storage(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"[agent.tuner] storage: {url!r} is not a database URL (e.g. sqlite:///tuner.db): {exc}"
        ) from exc


# --- the fallback walk -------------------------------------------------------------------------


def fallback(dims: Sequence[Dimension], evaluated: set[str], seed: int) -> Sampled | None:
    """A seeded walk over the space for a configuration not yet evaluated."""
    rng = random.Random(seed)
    keys = [d.key for d in dims]
    for config in _candidates(dims, rng):
        if config_hash(config, keys) not in evaluated:
            return Sampled(config, -1, {})
    return None


def _candidates(dims: Sequence[Dimension], rng: random.Random) -> Iterator[dict[str, Value]]:
    grid = _grid(dims)
    if grid is not None:
        rng.shuffle(grid)
        for combo in grid:
            yield {d.key: d.from_param(v) for d, v in zip(dims, combo, strict=True)}
        return
    for _ in range(RANDOM_TRIES):
        yield {d.key: d.from_param(_draw(d.distribution, rng)) for d in dims}


def _grid(dims: Sequence[Dimension]) -> list[tuple[Any, ...]] | None:
    """Every configuration of a finite, small space; None for others."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values: list[list[Any]] = []
    for dim in dims:
        dist = dim.distribution
        if isinstance(dist, CategoricalDistribution):
            values.append(list(dist.choices))
        elif isinstance(dist, IntDistribution) and dist.high - dist.low < ENUMERATE_LIMIT:
            values.append(list(range(dist.low, dist.high + 1, dist.step)))
        else:
            return None
    if math.prod(len(v) for v in values) > ENUMERATE_LIMIT:
        return None
    return list(itertools.product(*values))


def _draw(dist: Any, rng: random.Random) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return rng.choice(list(dist.choices))
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        return rng.uniform(dist.low, dist.high)
    return rng.randint(dist.low, dist.high)


__all__ = ["Sampled", "Study", "check_storage", "fallback", "make_sampler", "mirror"]
