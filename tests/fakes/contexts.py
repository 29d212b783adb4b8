"""A ready ``Context`` for agent tests: the toy task after a baseline, a keep and a crash."""

from __future__ import annotations

from autoresearch.agents._base import Context, Experiment
from autoresearch.records import Verdict


def make_context(**over: object) -> Context:
    """The toy task's context; keyword arguments replace fields."""
    fields: dict[str, object] = {
        "instructions": "Minimise the score by changing the constants in params.py.",
        "editable": {"params.py": "X = 1.0\nY = 2.0\n"},
        "readonly": {"score.py": "print('score')\n"},
        "history": (
            Experiment(1, Verdict.BASELINE, 5.0, "baseline"),
            Experiment(2, Verdict.DISCARD, 6.0, "set Y to 3"),
            Experiment(3, Verdict.KEEP, 1.0, "set X to 3.0"),
            Experiment(4, Verdict.CRASH, None, "break everything", reason="NameError: Z"),
        ),
        "metric_name": "score",
        "direction": "minimize",
        "best_metric": 1.0,
        "baseline_metric": 5.0,
        "noise": 0.01,
        "editable_globs": ("params.py",),
        "experiment_id": 5,
        "time_budget": 5.0,
    }
    fields.update(over)
    return Context(**fields)  # type: ignore[arg-type]
