"""``[metric] constraints``: bounds on secondary metrics that a new best must respect.

A constraint is ``KEY OP BOUND``: ``OP`` one of ``<= < >= > ==``, ``BOUND`` a number, or
``best`` / ``baseline`` optionally scaled (``1.05 * best``, ``best * 0.9``), read from
the recorded values of the current best or the baseline (the mean of every numeric key
of their runs). Examples::

    constraints = ["peak_rss_mb <= 1.05 * best", "peak_vram_mb <= 80000", "checksum == baseline"]

``checksum == baseline`` holds a benchmark to the output it had: a faster wrong answer
(one the tests missed) is discarded.

A candidate that the judge would keep but that breaks a constraint is discarded, and the
reason names the constraint and both values. A candidate whose runs do not report the key
breaks it; a bound on ``best`` that the best never reported is not applied.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_FORM = re.compile(
    r"^\s*(?P<key>[A-Za-z_][\w.\-/]*)\s*(?P<op><=|>=|==|<|>)\s*(?:"
    r"(?P<scale>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*\*\s*(?P<ref>best|baseline)"
    r"|(?P<ref2>best|baseline)\s*\*\s*(?P<scale2>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    r"|(?P<ref3>best|baseline)"
    r"|(?P<number>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}  # fmt: skip


@dataclass(frozen=True)
class Constraint:
    text: str
    key: str
    op: str
    scale: float = 1.0
    reference: str = ""  # "best" | "baseline" | "" (an absolute bound: ``scale``)

    def bound(self, best: Mapping[str, float], baseline: Mapping[str, float]) -> float | None:
        if not self.reference:
            return self.scale
        value = (best if self.reference == "best" else baseline).get(self.key)
        return None if value is None else self.scale * value

    def violation(self, values: Mapping[str, float], best: Mapping[str, float],
                  baseline: Mapping[str, float]) -> str:  # fmt: skip
        """Why ``values`` break this constraint ("" when they do not)."""
        bound = self.bound(best, baseline)
        if bound is None:
            return ""
        value = values.get(self.key)
        if value is None or not math.isfinite(value):
            return f"constraint {self.text!r}: the runs did not report {self.key}"
        if _OPS[self.op](value, bound):
            return ""
        where = f" ({self.reference} {self.key}: {bound / self.scale:.6g})" if self.reference else ""
        return f"constraint {self.text!r} broken: {self.key} {value:.6g}, bound {bound:.6g}{where}"


def parse(text: str) -> Constraint:
    """One constraint; ValueError with the accepted forms when ``text`` is not one."""
    match = _FORM.match(text)
    if match is None:
        raise ValueError(f"{text!r}: KEY OP BOUND, OP one of <= < >= > ==, BOUND a number, "
                         "best, baseline or a scaled one (e.g. 'peak_rss_mb <= 1.05 * best')")  # fmt: skip
    g = match.groupdict()
    reference = g["ref"] or g["ref2"] or g["ref3"] or ""
    scale = g["scale"] or g["scale2"] or g["number"] or "1"
    return Constraint(text.strip(), g["key"], g["op"], float(scale), reference)


def first_violation(constraints: tuple[Constraint, ...], values: Mapping[str, float],
                    best: Mapping[str, float], baseline: Mapping[str, float]) -> str:  # fmt: skip
    for constraint in constraints:
        why = constraint.violation(values, best, baseline)
        if why:
            return why
    return ""


__all__ = ["Constraint", "first_violation", "parse"]
