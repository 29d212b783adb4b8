"""The offline tuner: numeric constants searched with Optuna, no network, no API key.

On every call the tuner re-reads the tunable constants of the editable files at the
current best commit (``agents._constants``), builds the search space (``_space``), turns
the session's history into trials and moves (``_history``) and proposes the next
configuration; the edit changes only the targeted literals (``_edits``).

It starts where the code is. The baseline (the code as it is) is the study's first trial;
the first ``local_trials`` experiments (default 10) are local moves from the best so far,
one or two constants at a time, every constant once before any twice (``_local``); then
the sampler (``_study``: TPE, random, or CMA-ES started at the best with a small step)
explores the whole space, with every experiment so far as its history. Values are the ones
the judge recorded; differences within the measured noise are ties for the local search.

Determinism: every random choice is seeded from ``(seed, len(history))`` and the tuner
sees only the ledger's history, so the same history gives the same proposal, in one
process or after a resume. A configuration already evaluated, in flight, or found a
duplicate by the judge is never proposed again; ``AgentExhausted`` ends the session when
nothing new is left.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Mapping, Sequence
from typing import Any

from autoresearch.agents._base import Agent, Context, Proposal
from autoresearch.agents._constants import Constant, Value, discover, render
from autoresearch.agents.tuner._edits import make_edits
from autoresearch.agents.tuner._history import (
    config_hash,
    derive_seed,
    evaluated,
    moves,
    row_configs,
    same,
    trials,
)
from autoresearch.agents.tuner._local import local_move
from autoresearch.agents.tuner._options import SAMPLERS, ParamSpec, TunerOptions, parse_spec
from autoresearch.agents.tuner._space import (
    Dimension,
    LeftOut,
    build_space,
    describe_space,
    keyed,
    space_text,
)
from autoresearch.agents.tuner._study import (
    Sampled,
    Study,
    check_storage,
    fallback,
    make_sampler,
    mirror,
    require_cmaes,
)
from autoresearch.errors import AgentExhausted, ConfigError

DESCRIBE_LIMIT = 8  # changes named in the one-line description


class TunerAgent(Agent):
    """Proposes new values for the task's UPPER_CASE constants: local moves, then Optuna."""

    name = "tuner"

    def __init__(self, **options: Any) -> None:
        self.options = TunerOptions.parse(options)
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("the tuner agent needs optuna: pip install 'autoresearch[tuner]'")
        if self.options.sampler == "cmaes":
            require_cmaes()
        if self.options.storage:
            check_storage(self.options.storage)
        self._checked_names = False

    def check(self, editable: Mapping[str, str]) -> str:
        """Validate the options against the code; return the search space to print. Nothing to
        search is an error here, before the session's setup and baseline run."""
        consts, dims, left = self._code_space(editable)
        if not dims:
            raise ConfigError(_nothing_to_tune(editable, consts, left))
        return space_text(dims, left, self._plan())

    def describe(self, editable: Mapping[str, str]) -> str:
        """The search space (name, kind, range, value now) and what is left out, and why."""
        _, dims, left = self._code_space(editable)
        return space_text(dims, left, self._plan())

    def _code_space(self, editable: Mapping[str, str]) -> tuple[list[Constant], list[Dimension], list[LeftOut]]:
        """The constants of the code and the search space around their values now."""
        consts = _constants_of(editable)
        self._check_names(consts, editable)
        current = {key: const.value for key, const in keyed(consts).items()}
        dims, left = build_space(
            consts, self.options, current, {k: [v] for k, v in current.items()}
        )
        return consts, list(dims), list(left)

    def _plan(self) -> str:
        sampler = self.options.sampler
        if not self.options.local_trials:
            return f"{sampler} sampler from the first experiment"
        first = f" ({', '.join(self.options.first)} first)" if self.options.first else ""
        return (
            f"local moves{first} for {self.options.local_trials} experiments, "
            f"then the {sampler} sampler"
        )

    def propose(self, context: Context) -> Proposal:
        consts, dims, left, configs = self._space(context)
        if not dims:
            raise AgentExhausted(_nothing_to_tune(context.editable, consts, left))
        best = {d.key: d.const.value for d in dims}
        return self._propose(context, dims, left, best, configs)

    def finish(self, context: Context) -> None:
        """With ``storage``: the last experiments' results go there too (a proposal mirrors
        only what was measured before it)."""
        if not self.options.storage:
            return
        _consts, dims, _left, configs = self._space(context)
        if dims:
            mirror(self.options.storage, context, dims, trials(context, configs, self.options.sampler))

    def _space(
        self, context: Context
    ) -> tuple[list[Constant], list[Dimension], list[LeftOut], dict[int, Mapping[str, Value]]]:
        """The constants of the code, the search space over them, what is left out, and the
        configuration each experiment of the history ran."""
        consts = _constants_of(context.editable)
        self._check_names(consts, context.editable)
        current = {key: const.value for key, const in keyed(consts).items()}
        configs = row_configs(context, current)
        anchors = next(iter(configs.values()), current)
        seen: dict[str, list[Value]] = {}
        for config in [current, *configs.values()]:
            for key, value in config.items():
                seen.setdefault(key, []).append(value)
        dims, left = build_space(consts, self.options, anchors, seen)
        return consts, dims, left, configs

    def _propose(
        self,
        context: Context,
        dims: list[Dimension],
        left: list[LeftOut],
        best: dict[str, Value],
        configs: Mapping[int, Mapping[str, Value]],
    ) -> Proposal:
        seed = self.options.seed if self.options.seed is not None else context.seed
        keys = [d.key for d in dims]
        done = evaluated(configs, keys) | {config_hash(best, keys)}
        trial_list = trials(context, configs, self.options.sampler)
        if self.options.storage:
            mirror(self.options.storage, context, dims, trial_list)
        found, how = self._local(context, dims, best, configs, done, seed)
        if found is None:
            sampler = make_sampler(
                self.options.sampler, derive_seed(seed, len(context.history)), dims, best
            )
            study = Study(context, dims, sampler)
            study.add(trial_list)
            found, how = study.sample(done), f"{self.options.sampler} sampler"
        if found is None:
            found = fallback(dims, done, derive_seed(seed, len(context.history), 1))
            how = "random search (the sampler only repeated itself)"
        if found is None:
            raise AgentExhausted(
                f"tuner: all configurations of the search space have been evaluated "
                f"({len(done)} so far): {describe_space(dims)}"
            )
        return _proposal(context, dims, left, best, found, how, seed)

    def _local(
        self,
        context: Context,
        dims: Sequence[Dimension],
        best: dict[str, Value],
        configs: Mapping[int, Mapping[str, Value]],
        done: set[str],
        seed: int,
    ) -> tuple[Sampled | None, str]:
        """A local move while the session is in its first ``local_trials`` tuner experiments."""
        made = sum(_is_local(r.meta) for r in context.history)
        if made >= self.options.local_trials:
            return None, ""
        rng = random.Random(derive_seed(seed, len(context.history), 2))
        move = local_move(dims, best, moves(context, configs), done, rng, context.noise or 0.0)
        if move is None:
            return None, ""
        return Sampled(move.config, -1, {}), f"local move ({move.why()})"

    def _check_names(self, consts: Sequence[Constant], editable: Mapping[str, str]) -> None:
        """Names in params/include/exclude/first must exist (checked on this process's first call)."""
        if self._checked_names:
            return
        self._checked_names = True
        known = {c.name for c in consts} | {f"{c.path}:{c.name}" for c in consts}
        for where, names in (
            ("params", list(self.options.params)),
            ("include", list(self.options.include)),
            ("exclude", list(self.options.exclude)),
            ("first", list(self.options.first)),
        ):
            missing = [n for n in names if n not in known]
            if missing:
                raise ConfigError(
                    f"[agent.tuner] {where}: {', '.join(missing)} not found among the module-level "
                    f"UPPER_CASE constants of {', '.join(sorted(editable)) or 'the editable files'}"
                    f" (found: {', '.join(sorted({c.name for c in consts})) or 'none'})"
                )


def _is_local(meta: Mapping[str, Any]) -> bool:
    return meta.get("agent") == "tuner" and meta.get("sampler") == "local"


def _constants_of(editable: Mapping[str, str]) -> list[Constant]:
    """The tunable constants of the editable Python files, in path order."""
    return [
        c
        for path, text in sorted(editable.items())
        if path.endswith(".py")
        for c in discover(path, text)
    ]


def _nothing_to_tune(editable: Mapping[str, str], consts: Sequence[Constant], left: Sequence[LeftOut]) -> str:
    files = ", ".join(sorted(p for p in editable if p.endswith(".py"))) or "none: no file matches [task] editable"
    text = f"tuner: no tunable constants in the editable Python files ({files})"
    if left:
        text += f"; left out: {_left_text(left)}"
    elif not consts:
        text += ": it tunes module-level UPPER_CASE assignments of int, float or bool literals"
    return text + "; list ranges under [agent.tuner] params to tune others"


def _left_text(left: Sequence[LeftOut]) -> str:
    return ", ".join(f"{x.key} ({x.const.kind} {x.const.source}: {x.reason})" for x in left)


def _proposal(
    context: Context,
    dims: Sequence[Dimension],
    left: Sequence[LeftOut],
    best: Mapping[str, Value],
    found: Sampled,
    how: str,
    seed: int,
) -> Proposal:
    config = found.config
    changed = [d for d in dims if not same(config[d.key], best[d.key])]
    changes = [f"{d.key} {d.const.source} -> {render(config[d.key], d.const)}" for d in changed]
    description = ", ".join(changes[:DESCRIBE_LIMIT])
    if len(changes) > DESCRIBE_LIMIT:
        description += f", +{len(changes) - DESCRIBE_LIMIT} more"
    noise = f", noise {context.noise:.3g}" if context.noise else ""
    rationale = (
        f"{how} (seed {seed}) over {len(dims)} constants, "
        f"{len(context.history)} recorded experiments{noise}. Space: {describe_space(dims)}."
    )
    if left:
        rationale += f" Left out: {_left_text(left)}."
    sampler = how.split(" ")[0] if not how.startswith("random search") else "fallback"
    meta: dict[str, Any] = {
        "agent": "tuner",
        "sampler": sampler,
        "seed": seed,
        "params": {d.key: config[d.key] for d in changed},
        "config": dict(config),
        "config_hash": config_hash(config, [d.key for d in dims]),
        "parent": context.parent,
        "parent_config": dict(best),
        "trial": found.trial,
    }
    if found.state:
        meta["sampler_state"] = dict(found.state)
    edits = make_edits(context.editable, {d.const: config[d.key] for d in changed})
    return Proposal(description, rationale, edits, meta=meta)


__all__ = [
    "SAMPLERS",
    "Dimension",
    "LeftOut",
    "ParamSpec",
    "TunerAgent",
    "TunerOptions",
    "build_space",
    "parse_spec",
]
