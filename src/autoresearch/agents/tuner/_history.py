"""What the session's history tells the tuner: trials for Optuna, moves for the local search.

Every proposal records in ``Proposal.meta`` the full configuration it evaluates
(``config``), its parent's (``parent_config``, under ``parent``) and the sampler's
per-trial state (CMA-ES keeps its optimizer there). A row's configuration is its
``config``, or the configuration known for its commit: the parent of a later tuner
proposal, or the current best. So the baseline and experiments by other agents that were
kept become trials too; an LLM agent's discarded experiment, whose values nobody
recorded, does not.

Verdicts, read as strings so that one added later cannot break the tuner:

- ``baseline``/``keep``/``discard``: a trial with the metric the judge recorded (the mean
  of its runs for a confirmed result, the screening run for one screened out);
- ``crash``/``timeout``/``invalid`` (and a discard without a metric): a failed trial,
  recorded the way Optuna's samplers learn from: a violated constraint ``failed`` (TPE
  ranks them below every feasible trial) and the session's worst metric (CMA-ES). Optuna's
  FAIL state would hide them from TPE, which then samples a crash region again and again;
- ``interrupted``: never measured; its configuration may be proposed again;
- ``pending`` (in flight), ``duplicate`` (the judge found the same code measured before) and
  any other verdict: no trial of its own, but its configuration is never proposed again
  (an unknown verdict with a finite metric is a trial with that metric).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoresearch.agents._base import Context, Experiment
from autoresearch.agents._constants import Value

COMPLETE_VERDICTS = ("baseline", "keep", "discard")
FAILED_VERDICTS = ("crash", "timeout", "invalid")
UNMEASURED_VERDICTS = ("interrupted",)
NO_TRIAL_VERDICTS = ("pending", "duplicate")


@dataclass(frozen=True)
class Trial:
    """One history row as an Optuna trial."""

    experiment_id: int
    commit: str
    config: Mapping[str, Value]
    value: float  # the judge's metric; a failed experiment's is the worst metric of the session
    failed: bool  # crash, timeout, invalid: an infeasible trial the sampler learns to avoid
    verdict: str
    system_attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Move:
    """One tuner experiment seen as a step from its parent's configuration."""

    start: Mapping[str, Value]
    end: Mapping[str, Value]
    outcome: str  # better (kept) | tie (within noise) | worse | failed | pending
    gain: float = 0.0  # improvement over the parent's metric, > 0 is better; 0 when unknown

    def changed(self) -> list[str]:
        return [k for k, v in self.end.items() if k in self.start and not same(self.start[k], v)]


def same(a: object, b: object) -> bool:
    """Equal values of the same type (``1 != 1.0 != True`` for the tuner)."""
    return type(a) is type(b) and a == b


def is_tuner_meta(meta: Mapping[str, Any]) -> bool:
    return meta.get("agent") == "tuner" and isinstance(meta.get("config"), Mapping)


def row_configs(context: Context, current: Mapping[str, Value]) -> dict[int, Mapping[str, Value]]:
    """The configuration each history row evaluated, where it is known (by row id)."""
    by_commit: dict[str, Mapping[str, Value]] = {}
    ran: dict[int, Mapping[str, Value]] = {}
    if context.parent:
        by_commit[context.parent] = current
    for row in context.history:
        if is_tuner_meta(row.meta):
            parent = row.meta.get("parent_config")
            if row.meta.get("parent") and isinstance(parent, Mapping):
                by_commit.setdefault(str(row.meta["parent"]), parent)
            config = ran_config(row, by_commit)
            if config is not None:
                ran[row.id] = config
                if row.commit:
                    by_commit[row.commit] = config
    if context.parent:
        by_commit[context.parent] = current
    has_keep = any(str(r.verdict) == "keep" for r in context.history)
    out: dict[int, Mapping[str, Value]] = {}
    for row in context.history:
        if str(row.verdict) in UNMEASURED_VERDICTS:
            continue
        if is_tuner_meta(row.meta):
            if row.id in ran:
                out[row.id] = ran[row.id]
        elif row.commit in by_commit:
            out[row.id] = by_commit[row.commit]
        elif str(row.verdict) == "baseline" and not has_keep:
            out[row.id] = current  # nothing kept since: the best code is the baseline's
    return out


def ran_config(
    row: Experiment, by_commit: Mapping[str, Mapping[str, Value]]
) -> Mapping[str, Value] | None:
    """The configuration a tuner row really ran (None when that cannot be known).

    A proposal made against one best can be applied onto a newer best that the branch moved
    to meanwhile (the engine's pipelining): only the constants it changed are edited, so the
    code that ran is the new parent's configuration with those changes.
    """
    config: Mapping[str, Value] = row.meta["config"]
    proposed_on = str(row.meta.get("parent") or "")
    if not row.parent or not proposed_on or row.parent == proposed_on:
        return config
    start, base = row.meta.get("parent_config"), by_commit.get(row.parent)
    if not isinstance(start, Mapping) or base is None:
        return None
    changed = {k: v for k, v in config.items() if k not in start or not same(start[k], v)}
    return {**base, **changed}


def trials(
    context: Context, configs: Mapping[int, Mapping[str, Value]], sampler: str
) -> list[Trial]:
    """History rows with a known configuration and a measurement, as trials."""
    penalty = worst(context)
    out = []
    for row in context.history:
        value = _trial_value(row)
        if row.id not in configs or value is False:
            continue
        failed = value is None
        state = row.meta.get("sampler_state") if row.meta.get("sampler") == sampler else None
        out.append(
            Trial(
                experiment_id=row.id,
                commit=row.commit,
                config=configs[row.id],
                value=penalty if value is None else value,
                failed=failed,
                verdict=str(row.verdict),
                system_attrs=state if isinstance(state, Mapping) else {},
            )
        )
    return out


def _trial_value(row: Experiment) -> float | bool | None:
    """The trial value of a row: a metric, None for a failed trial, False for no trial."""
    verdict, metric = str(row.verdict), row.metric
    finite = metric is not None and math.isfinite(metric)
    if verdict in COMPLETE_VERDICTS:
        return metric if finite else None
    if verdict in FAILED_VERDICTS:
        return None
    if verdict in UNMEASURED_VERDICTS or verdict in NO_TRIAL_VERDICTS or not finite:
        return False
    return metric


def evaluated(configs: Mapping[int, Mapping[str, Value]], keys: Sequence[str]) -> set[str]:
    """Hashes of every configuration measured, in flight or found a duplicate."""
    return {config_hash(c, keys) for c in configs.values()}


def moves(context: Context, configs: Mapping[int, Mapping[str, Value]]) -> list[Move]:
    """The session's tuner experiments as steps from their parents, classified with the noise."""
    metric_of = _kept_metrics(context.history)
    configs_by_commit = {
        r.commit: configs[r.id] for r in context.history if r.id in configs and r.commit
    }
    tolerance = context.noise or 0.0
    sign = 1.0 if context.direction == "maximize" else -1.0
    out = []
    for row in context.history:
        start = row.meta.get("parent_config")
        parent = str(row.meta.get("parent") or "")
        if row.parent and row.parent != parent:  # applied onto a newer best: it started there
            start, parent = configs_by_commit.get(row.parent), row.parent
        if row.id not in configs or not is_tuner_meta(row.meta) or not isinstance(start, Mapping):
            continue
        verdict = str(row.verdict)
        parent_metric = metric_of.get(parent)
        gain = 0.0
        if row.metric is not None and parent_metric is not None and math.isfinite(row.metric):
            gain = sign * (row.metric - parent_metric)
        outcome = _outcome(verdict, row.metric, parent_metric, gain, tolerance)
        if outcome:
            out.append(Move(start, configs[row.id], outcome, gain))
    return out


def _kept_metrics(history: Sequence[Experiment]) -> dict[str, float]:
    """The metric the judge recorded for each commit that was the best (baseline or kept)."""
    out = {}
    for row in history:
        if row.commit and row.metric is not None and str(row.verdict) in ("baseline", "keep"):
            out[row.commit] = row.metric
    return out


def _outcome(
    verdict: str, metric: float | None, parent: float | None, gain: float, tolerance: float
) -> str:
    if verdict == "keep":  # a keep by less than the noise is a tie: no direction to follow
        return "tie" if parent is not None and 0 <= gain <= tolerance else "better"
    if verdict in FAILED_VERDICTS:
        return "failed"
    if verdict == "pending":
        return "pending"
    if verdict in UNMEASURED_VERDICTS or verdict == "duplicate" or metric is None:
        return ""
    if parent is None or not math.isfinite(metric):
        return "failed" if not math.isfinite(metric) else ""
    return "worse" if gain < -tolerance else "tie"  # not kept: at best within the judge's margin


def worst(context: Context) -> float:
    """The worst finite metric of the session (0.0 when there is none)."""
    values = [r.metric for r in context.history if r.metric is not None and math.isfinite(r.metric)]
    if not values:
        return 0.0
    return min(values) if context.direction == "maximize" else max(values)


def config_hash(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A hash of the values of ``keys`` (a missing key counts as its own value)."""
    items = [[k, config.get(k, "\x00missing")] for k in sorted(keys)]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def derive_seed(seed: int, n_history: int, stream: int = 0) -> int:
    """A seed for one call: the same history gives the same proposal, after a resume too."""
    text = f"{seed}:{n_history}:{stream}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


__all__ = [
    "Move",
    "Trial",
    "config_hash",
    "derive_seed",
    "evaluated",
    "moves",
    "ran_config",
    "row_configs",
    "same",
    "trials",
]
