"""Local moves: the tuner's first experiments start from where the code is.

From the incumbent (the best code so far), a local move changes one constant, or two:

- a float on a log range by x2 or /2 (then by sqrt 2 when both sides were worse); on a linear
  range by a quarter of its width (then an eighth);
- an int by a quarter of its range, at least 1 and at most half its value (+-2 from 5 in
  [2, 10]), then by 1; from 8 up by x2 or /2, then by 1; +-1 then x2 or /2 where that is 1;
- a choice to its neighbours (ordered numbers) or to each other choice; a bool flips.

Each candidate is scored from the moves already made (see ``_history.Move``): a step in the
direction of the last keep goes on in that direction; otherwise the search goes breadth
first, every constant one step before any constant a second (``UNTRIED``): in code written
with care most constants sit near their best, and the one that does not is found sooner
that way. On equal evidence rates come first, then other floats, ints and choices (``PRIOR``),
unless ``[agent.tuner] first`` names constants to come before them. A side that was worse
or crashed is not tried again, and its other side is tried next once every constant had
its step; a step already tried and found within the noise of the best (a tie) is not
chased further on its own, but two favourable ties are tried together. Differences below
the noise are ties, never directions. A worse or tied step made while the other constants
had other values counts for less (``STALE``): after a keep elsewhere it may pay off, as a
weight decay does once the learning rate moved.

Three measured values of one constant (the incumbent's and two more, the other constants as
they are now) give a parabola (on the log scale for a log range). Its vertex is a step of its
own, tried as a continuation would be when it lies beyond the incumbent and after the untried
constants when it lies between two measured values; the constant's other steps then wait.
Where the vertex is the incumbent's value or one measured already, or where the parabola
promises a gain no bigger than the noise (one run would not tell it from luck), the constant
is done. A parabola is fitted only where the three values differ by more than twice the
noise. Without three such values, the values measured before another constant moved are
fitted (stale): a constant done there stays done; a vertex elsewhere is tried after the
untried constants, the constant's other steps scored as they were, since the best value of
one constant moves with the others. Candidates with the same score are ordered by the seeded
``rng``, so each seed walks its own way.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from autoresearch.agents._constants import Value
from autoresearch.agents.tuner._history import Move, config_hash, same
from autoresearch.agents.tuner._space import Dimension

MAX_PAIR_SINGLES = 6  # the best single steps combined into two-constant moves
BIG_INT = 8  # from here on an int steps by x2 first, +-1 second

# score of a step whose side (same constant, same direction, from the same value) was ...
SAME_SIDE = {"worse": -3.0, "failed": -4.0, "tie": -1.0, "pending": -0.5}
OTHER_SIDE = {"worse": 0.5, "failed": 0.5}
FINER = {"worse": -0.5, "failed": -2.0, "tie": -0.5}  # ... by a bigger step than this one
CONTINUE = 3.0  # ... the direction of the keep that made the incumbent
UNTRIED = 1.0  # ... a constant no experiment has changed yet (below CONTINUE, above the rest)
CAME_FROM = -2.0  # back to the value the keep that made the incumbent came from
# Rates and scales (log ranges) move a metric most, then linear floats, ints, choices: on
# equal evidence, the tuner tries them in this order. The constants ``[agent.tuner] first``
# names come before all of them, in the order listed (FIRST for the first, less FIRST_STEP
# for each after it, never below FIRST_FLOOR).
PRIOR = {"log": 0.3, "float": 0.2, "int": 0.1, "choice": 0.0}
FIRST, FIRST_STEP, FIRST_FLOOR = 0.6, 0.02, 0.32  # steps above the jitter (0.01), below UNTRIED
FAILED_VALUE = -3.0  # the same value crashed before (from anywhere)
DONE = -4.0  # every step of a constant whose fitted parabola has its vertex where it is
FIT_INSIDE = -0.5  # a vertex between two measured neighbours: after the untried constants
STALE = 0.3  # the weight of a worse or tied step made where other constants had other values


@dataclass(frozen=True)
class Step:
    """One constant's candidate new value, one step from the incumbent's."""

    key: str
    value: Value
    direction: int  # +1 up, -1 down, 0 for an unordered choice
    rank: int  # 0 the first step size, 1 the second
    label: str  # "x2", "+1", "-> SSSL": for the rationale


@dataclass(frozen=True)
class LocalMove:
    """A proposed local move: the new configuration and why."""

    config: dict[str, Value]
    steps: tuple[Step, ...]
    score: float

    def why(self) -> str:
        return " and ".join(f"{s.key} {s.label}" for s in self.steps)


def local_move(
    dims: Sequence[Dimension],
    best: Mapping[str, Value],
    history: Sequence[Move],
    evaluated: set[str],
    rng: random.Random,
    noise: float = 0.0,
) -> LocalMove | None:
    """The best-scored move of one or two constants not evaluated yet, or None."""
    keys = [d.key for d in dims]
    singles = [(s, _score(s, dims, best, history)) for d in dims for s in steps(d, best[d.key])]
    singles = _fitted(singles, dims, best, history, noise)
    candidates = [LocalMove({**best, s.key: s.value}, (s,), score) for s, score in singles]
    candidates += _pairs(singles, best, history)
    fresh = [c for c in candidates if config_hash(c.config, keys) not in evaluated]
    if not fresh:
        return None
    jitter = [rng.random() * 0.01 for _ in fresh]
    return max(zip(fresh, jitter, strict=True), key=lambda cj: cj[0].score + cj[1])[0]


# --- steps -----------------------------------------------------------------------------------


def steps(dim: Dimension, x: Value) -> list[Step]:
    """The candidate values of one constant around ``x``, inside its range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dist = dim.distribution
    if isinstance(dist, CategoricalDistribution):
        return _choice_steps(dim, x, [c for c in dist.choices if isinstance(c, int | float | str)])
    if isinstance(x, bool) or not isinstance(x, int | float):
        return []
    raw = _float_steps(x, dist) if isinstance(dist, FloatDistribution) else _int_steps(int(x), dist)
    out, seen = [], {float(x)}
    for value, rank, label in raw:
        clipped = dim.from_param(value)
        assert isinstance(clipped, int | float)
        if float(clipped) not in seen:
            seen.add(float(clipped))
            out.append(Step(dim.key, clipped, _sign(float(clipped) - float(x)), rank, label))
    return out


def _float_steps(x: float, dist: object) -> list[tuple[float, int, str]]:
    low, high, log = dist.low, dist.high, dist.log  # type: ignore[attr-defined]
    if log and x > 0:
        r2 = math.sqrt(2)
        return [(x * 2, 0, "x2"), (x / 2, 0, "/2"), (x * r2, 1, "x1.41"), (x / r2, 1, "/1.41")]
    out = []
    for rank, width in ((0, (high - low) / 4), (1, (high - low) / 8)):
        out += [(x + width, rank, f"+{width:.3g}"), (x - width, rank, f"-{width:.3g}")]
    return out


def _int_steps(x: int, dist: object) -> list[tuple[float, int, str]]:
    unit = [(x + 1, 0, "+1"), (x - 1, 0, "-1")]
    double = [(x * 2, 0, "x2"), (x // 2 if x > 0 else x / 2, 0, "/2")]
    if abs(x) >= BIG_INT:
        return double + [(v, 1, label) for v, _, label in unit]
    width = dist.high - dist.low  # type: ignore[attr-defined]
    k = max(1, min(round(width / 4), abs(x) // 2))  # a quarter of the range, as for floats
    if k == 1:
        return unit + [(v, 1, label) for v, _, label in double]
    return [(x + k, 0, f"+{k}"), (x - k, 0, f"-{k}")] + [(v, 1, label) for v, _, label in unit]


def _choice_steps(dim: Dimension, x: Value, choices: list[Value]) -> list[Step]:
    others = [c for c in choices if not same(c, x)]
    if not _ordered(choices) or isinstance(x, bool):
        return [Step(dim.key, c, 0, 0, f"-> {c}") for c in others]
    ordered = sorted(choices, key=float)
    i = next((j for j, c in enumerate(ordered) if same(c, x)), -1)
    near = {ordered[j] for j in (i - 1, i + 1) if 0 <= j < len(ordered)} if i >= 0 else set()
    return [_choice_step(dim.key, x, c, 0 if c in near else 1) for c in others]


def _choice_step(key: str, x: Value, choice: Value, rank: int) -> Step:
    return Step(key, choice, _sign(float(choice) - float(x)), rank, f"-> {choice}")


def _ordered(choices: Sequence[Value]) -> bool:
    return all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


# --- scores ----------------------------------------------------------------------------------


def _score(
    step: Step, dims: Sequence[Dimension], best: Mapping[str, Value], history: Sequence[Move]
) -> float:
    score = _prior(next(d for d in dims if d.key == step.key)) - float(step.rank)
    moved = [move for move in history if step.key in move.changed()]
    if not moved:
        score += UNTRIED
    blocked = False  # this side was tried from here and was no better: no more continuing
    for move in moved:
        score += _evidence(step, move, best, _weight(step.key, move, best))
        blocked = blocked or _blocks(step, move, best)
    if blocked:
        score -= sum(_continuation(step, m, best) for m in moved)
    return score


def _weight(key: str, move: Move, best: Mapping[str, Value]) -> float:
    """How much ``move`` says about a step of ``key`` from the incumbent now.

    A move of two constants says half as much as one of ``key`` alone. A step found worse or
    tied where the other constants had other values is stale: constants interact (the best
    weight decay moves with the learning rate), so after another constant was kept it is
    worth trying again. A crash is not stale: it stays a crash.
    """
    weight = 1.0 if len(move.changed()) == 1 else 0.5
    if move.outcome in ("worse", "tie") and not _same_context(move, best, key):
        weight *= STALE
    return weight


def _same_context(move: Move, best: Mapping[str, Value], key: str) -> bool:
    """``move`` started where every constant but ``key`` had the incumbent's value."""
    return all(same(move.start[k], v) for k, v in best.items() if k != key and k in move.start)


def _evidence(step: Step, move: Move, best: Mapping[str, Value], weight: float) -> float:
    """What one past move says about ``step``: > 0 try it, < 0 do not."""
    start, end = move.start[step.key], move.end[step.key]
    direction, here = _direction(start, end), best[step.key]
    score = FAILED_VALUE * weight if move.outcome == "failed" and same(end, step.value) else 0.0
    if _brought_here(move, step.key, here):
        if step.direction == -direction != 0 and not _closer(here, step.value, start):
            score += CAME_FROM  # back to where the keep came from, or beyond
        return score + _continuation(step, move, best)
    if not same(start, here):
        return score
    if step.direction == 0:
        return score + (SAME_SIDE.get(move.outcome, 0.0) * weight if same(end, step.value) else 0)
    if direction == step.direction:
        finer = not same(end, step.value) and _closer(here, step.value, end)
        return score + (FINER if finer else SAME_SIDE).get(move.outcome, 0.0) * weight
    if direction == -step.direction:
        return score + OTHER_SIDE.get(move.outcome, 0.0) * weight
    return score


def _brought_here(move: Move, key: str, here: Value) -> bool:
    """A keep that moved ``key`` to the incumbent's value."""
    start, end = move.start[key], move.end[key]
    return move.outcome == "better" and same(end, here) and not same(start, here)


def _continuation(step: Step, move: Move, best: Mapping[str, Value]) -> float:
    """The bonus for going on in the direction of a keep that brought the constant here."""
    here = best[step.key]
    if step.direction == 0 or not _brought_here(move, step.key, here):
        return 0.0
    start = move.start[step.key]
    if _direction(start, here) != step.direction:
        return 0.0
    return CONTINUE + (0.5 if _similar_step(start, here, step.value) else 0.0)


def _similar_step(start: Value, here: Value, value: Value) -> bool:
    """``here -> value`` is about as big a step as ``start -> here`` (ratio or difference)."""
    a, b, c = float(start), float(here), float(value)
    if min(a, b, c) > 0 and not isinstance(here, int):
        return abs(math.log(c / b) - math.log(b / a)) < 0.1
    return abs((c - b) - (b - a)) <= 0.1 * abs(b - a)


def _blocks(step: Step, move: Move, best: Mapping[str, Value]) -> bool:
    start, end = move.start[step.key], move.end[step.key]
    from_here = same(start, best[step.key]) and move.outcome in ("worse", "failed", "tie")
    return from_here and step.direction != 0 and _direction(start, end) == step.direction


def _closer(here: Value, value: Value, other: Value) -> bool:
    """``value`` lies between ``here`` and ``other``: a finer step than the one tried."""
    return abs(float(value) - float(here)) < abs(float(other) - float(here))


def _prior(dim: Dimension) -> float:
    """Which constant goes first on equal evidence: the ``first`` list, then by family."""
    if dim.first is not None:
        return max(FIRST_FLOOR, FIRST - FIRST_STEP * dim.first)
    return PRIOR.get(_family(dim), 0.0)


def _family(dim: Dimension) -> str:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dist = dim.distribution
    if isinstance(dist, FloatDistribution):
        return "log" if dist.log else "float"
    return "choice" if isinstance(dist, CategoricalDistribution) else "int"


def _direction(a: Value, b: Value) -> int:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return _sign(float(b) - float(a)) if numbers else 0


def _pairs(
    singles: Sequence[tuple[Step, float]], best: Mapping[str, Value], history: Sequence[Move]
) -> list[LocalMove]:
    """Two-constant moves: two continuations of a keep, or two favourable ties, together."""
    ties = _tried_ties(best, history)
    usable = [(s, v) for s, v in singles if s.rank == 0 and (v >= CONTINUE or _id(s) in ties)]
    usable = sorted(usable, key=lambda sv: -sv[1])[:MAX_PAIR_SINGLES]
    out = []
    for (a, sa), (b, sb) in itertools.combinations(usable, 2):
        if a.key == b.key:
            continue
        if sa >= CONTINUE and sb >= CONTINUE:
            score = (sa + sb) / 2 + 1.0
        elif _id(a) in ties and _id(b) in ties:
            score = -0.25 + 0.5 * (ties[_id(a)] > 0) + 0.5 * (ties[_id(b)] > 0)
        else:
            continue
        out.append(LocalMove({**best, a.key: a.value, b.key: b.value}, (a, b), score))
    return out


def _tried_ties(best: Mapping[str, Value], history: Sequence[Move]) -> dict[tuple[str, str], float]:
    """Single steps from the incumbent already measured as ties, with their gain."""
    out = {}
    for move in history:
        changed = move.changed()
        if move.outcome == "tie" and len(changed) == 1 and _starts_here(move, best):
            key = changed[0]
            out[(key, repr(move.end[key]))] = move.gain
    return out


# --- a parabola along one constant ----------------------------------------------------------


def _fitted(
    singles: list[tuple[Step, float]],
    dims: Sequence[Dimension],
    best: Mapping[str, Value],
    history: Sequence[Move],
    noise: float,
) -> list[tuple[Step, float]]:
    """Steps rescored where three measured points along a constant give a parabola.

    The constant's own steps wait (``DONE``) and its vertex, where that is new, is a step of
    its own. A parabola through points measured before another constant moved (stale) tells
    that a constant is done; its vertex elsewhere is tried late, the other steps as they were.
    """
    out = list(singles)
    for dim in dims:
        fit = _vertex(dim, best, history, noise, True) or _vertex(dim, best, history, noise, False)
        if fit is None:
            continue
        here = best[dim.key]
        moved = not same(fit.value, here)
        if not (fit.stale and moved):
            out = [(s, v + (DONE if s.key == dim.key else 0.0)) for s, v in out]
        if moved:
            direction = _sign(float(fit.value) - float(here))
            step = Step(dim.key, fit.value, direction, 0, f"-> {fit.value} (fit)")
            late = fit.inside or fit.stale
            score = _prior(dim) + (FIT_INSIDE if late else CONTINUE)
            out.append((step, score))
    return out


@dataclass(frozen=True)
class Fit:
    """The lowest point of a parabola along one constant."""

    value: Value  # the vertex; the incumbent's value when the constant is done
    inside: bool  # measured points on both sides of the incumbent
    stale: bool  # fitted on points measured where other constants had other values


def _vertex(
    dim: Dimension,
    best: Mapping[str, Value],
    history: Sequence[Move],
    noise: float,
    context: bool,
) -> Fit | None:
    """The lowest point of the parabola through the incumbent and its two nearest measured
    neighbours along ``dim``.

    With ``context`` only points measured with the other constants as they are now count.
    None without three points, without upward curvature or where the points differ by no more
    than twice the noise. The vertex goes no further than the nearest point is from the
    incumbent. It is the incumbent's value (done) near the incumbent or a measured point, and
    where the parabola promises no more than the noise: a smaller gain is not seen in one run.
    """
    warp = _warp(dim, best[dim.key])
    if warp is None:
        return None
    points = sorted((warp(x), f) for x, f in _axis(dim.key, best, history, context).items())
    here = warp(best[dim.key])
    left = [p for p in points if p[0] < here][-2:]
    right = [p for p in points if p[0] > here][:2]
    bracketed = bool(left and right)
    near = [left[-1], right[0]] if bracketed else (left or right)
    if len(near) < 2:
        return None
    (x0, f0), (x1, f1), (x2, f2) = sorted([*near, (here, 0.0)])
    curve = ((f2 - f1) / (x2 - x1) - (f1 - f0) / (x1 - x0)) / (x2 - x0)
    if curve <= 0 or max(f0, f1, f2) - min(f0, f1, f2) <= 2 * noise:
        return None
    slope = (f1 - f0) / (x1 - x0) - curve * (x0 + x1)
    top = -slope / (2 * curve)
    reach = min(abs(x - here) for x, _ in near)  # no further out than one step so far
    low, high = (x0, x2) if bracketed else (here - reach, here + reach)
    top = min(max(top, low), high)
    gain = -(f0 + (f1 - f0) / (x1 - x0) * (top - x0) + curve * (top - x0) * (top - x1))
    measured = any(abs(top - x) < reach / 4 for x, _ in [*points, (here, 0.0)])
    value = best[dim.key] if measured or gain <= noise else dim.from_param(_unwarp(dim, top))
    return Fit(value, bracketed, not context)


def _axis(
    key: str, best: Mapping[str, Value], history: Sequence[Move], context: bool
) -> dict[Value, float]:
    """Values of ``key`` measured (by single-constant moves) and their metric relative to the
    incumbent's, > 0 worse: moves from the incumbent's value and from each value the keeps
    that led to it started at (with ``context``, only where the others were as now)."""
    starts = {repr(best[key]): 0.0}  # the values kept on the way here, back through each keep
    for move in reversed(history):
        end = repr(move.end[key]) if key in move.end else ""
        kept = move.outcome == "better" and move.changed() == [key] and end in starts
        if kept and (_same_context(move, best, key) or not context):
            starts.setdefault(repr(move.start[key]), starts[end] + move.gain)
    out: dict[Value, float] = {}
    for move in history:
        begin = repr(move.start[key]) if key in move.start else ""
        usable = move.outcome in ("better", "worse", "tie") and move.changed() == [key]
        if usable and begin in starts and (_same_context(move, best, key) or not context):
            out[move.start[key]] = starts[begin]
            out[move.end[key]] = starts[begin] - move.gain
    out.pop(best[key], None)
    return out


def _warp(dim: Dimension, x: Value) -> Callable[[Value], float] | None:
    """The scale a parabola is fitted on: log for a log range, linear for other numbers."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dist = dim.distribution
    if isinstance(dist, CategoricalDistribution) or isinstance(x, bool):
        return None
    if not isinstance(x, int | float):
        return None
    if isinstance(dist, FloatDistribution) and dist.log:
        return lambda v: math.log(float(v))
    return float


def _unwarp(dim: Dimension, t: float) -> float:
    from optuna.distributions import FloatDistribution

    dist = dim.distribution
    return math.exp(t) if isinstance(dist, FloatDistribution) and dist.log else t


def _id(step: Step) -> tuple[str, str]:
    return step.key, repr(step.value)


def _starts_here(move: Move, best: Mapping[str, Value]) -> bool:
    return all(same(move.start[k], v) for k, v in best.items() if k in move.start)


__all__ = ["LocalMove", "Step", "local_move", "steps"]
