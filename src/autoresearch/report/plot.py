"""progress.png: the metric of every experiment, the keeps and the running best, in one picture.

Discards are grey dots, keeps green with their descriptions, the baseline a blue star and a
dashed line, experiments without a metric (crash, timeout, invalid) red marks along the bottom,
the running best a green step line, and, when the noise is known, the band of one standard
deviation around the best. Drawn with matplotlib's Agg canvas (no display, no pyplot state),
readable at 1600x900 for one experiment as for a thousand.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoresearch.errors import AutoresearchError
from autoresearch.report._data import Experiment, History, Session, Verdict
from autoresearch.report.text import experiments_text

WIDTH, HEIGHT, DPI = 1600, 900, 100
MAX_LABELS = 24  # kept descriptions drawn; beyond this, only the largest steps are labelled
LABEL_CHARS = 48
CLIP_FROM = 20  # experiments with a metric before far-off values are clipped

GREY, GREEN, BLUE, RED = "#9e9e9e", "#1b9e4b", "#1f5fbf", "#d62728"


def title_text(history: History) -> str:
    """``N experiments (+ baseline), K kept, best X (Δ% vs baseline)``."""
    text = f"{experiments_text(history)}, {len(history.kept)} kept"
    best = history.best
    if best is not None and best.metric is not None:
        text += f", best {best.metric:.6g}"
        gain = history.gain(best.metric)
        if gain is not None:
            text += f" ({gain:+.2f}% vs baseline)"
    return text


def progress_figure(
    session: Session, history: History, *, width: int = WIDTH, height: int = HEIGHT
) -> Any:
    """The figure (a ``matplotlib.figure.Figure``), ``width`` x ``height`` pixels."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise AutoresearchError(
            "the plot needs matplotlib: pip install 'autoresearch[report]'"
        ) from exc

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    rows = [r for r in history.rows if r.verdict is not Verdict.PENDING]
    measured = [r for r in rows if r.metric is not None]
    scale = _marker_scale(len(rows))
    _draw_points(ax, measured, scale)
    _draw_failures(ax, [r for r in rows if r.metric is None], scale)
    _draw_best(ax, history, rows)
    _draw_labels(ax, history, session.direction)
    _limits(ax, history, measured, session.direction)
    better = "lower" if session.direction == "minimize" else "higher"
    ax.set_title(title_text(history), fontsize=16, loc="left")
    ax.set_xlabel("experiment #", fontsize=12)
    ax.set_ylabel(f"{session.metric} ({better} is better)", fontsize=12)
    ax.grid(True, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not measured:
        ax.text(
            0.5,
            0.5,
            "no measured experiments yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=14,
            color=GREY,
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=10, framealpha=0.9)
    figure.tight_layout()
    return figure


def _marker_scale(n: int) -> float:
    """Smaller markers for long sessions, so a thousand dots stay dots."""
    return 1.0 if n <= 50 else max(0.25, 50 / n) ** 0.5


def _draw_points(ax: Any, rows: Sequence[Experiment], scale: float) -> None:
    groups = (
        ("discarded", GREY, "o", 30, [r for r in rows if not r.verdict.judged]),
        ("kept", GREEN, "o", 70, [r for r in rows if r.verdict is Verdict.KEEP]),
        ("baseline", BLUE, "*", 220, [r for r in rows if r.verdict is Verdict.BASELINE]),
    )
    for label, color, marker, size, group in groups:
        if group:
            ax.scatter(
                [r.id for r in group],
                [r.metric for r in group],
                s=size * scale,
                c=color,
                marker=marker,
                label=label,
                zorder=3 if group[0].verdict.judged else 2,
                alpha=0.6 if label == "discarded" else 1.0,
                edgecolors="none",
            )


def _draw_failures(ax: Any, rows: Sequence[Experiment], scale: float) -> None:
    """No metric: a red mark at the bottom edge, whatever the y range."""
    if not rows:
        return
    ax.scatter(
        [r.id for r in rows],
        [0.015] * len(rows),
        transform=ax.get_xaxis_transform(),
        marker="x",
        c=RED,
        s=40 * scale,
        label="crash / timeout / invalid",
        zorder=3,
        clip_on=False,
    )


def _draw_best(ax: Any, history: History, rows: Sequence[Experiment]) -> None:
    steps = sorted(
        (r for r in rows if r.verdict.judged and r.metric is not None), key=lambda r: r.id
    )
    if not steps:
        return
    end = max(r.id for r in rows)
    xs = [r.id for r in steps] + [end]
    ys = [r.metric for r in steps] + [steps[-1].metric]
    ax.step(xs, ys, where="post", color=GREEN, linewidth=2, alpha=0.8, label="running best")
    base = history.baseline
    if base is not None and base.metric is not None:
        ax.axhline(base.metric, color=BLUE, linestyle="--", linewidth=1, alpha=0.6)
    best = history.best
    if best is not None and best.metric is not None and history.sigma:
        ax.axhspan(
            best.metric - history.sigma,
            best.metric + history.sigma,
            color=GREEN,
            alpha=0.10,
            label=f"best ± noise (σ {history.sigma:.3g})",
        )


def _draw_labels(ax: Any, history: History, direction: str) -> None:
    """Kept descriptions next to their points; the largest steps first when there are many."""
    kept = [r for r in history.kept if r.metric is not None]
    for row in _labelled(kept, history, direction):
        text = _shorten(row.description, LABEL_CHARS).replace("$", r"\$")  # no mathtext
        ax.annotate(
            text,
            (row.id, row.metric),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
            color="#145c2e",
            rotation=20,
            zorder=4,
        )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _labelled(kept: Sequence[Experiment], history: History, direction: str) -> list[Experiment]:
    if len(kept) <= MAX_LABELS:
        return list(kept)
    previous = history.baseline.metric if history.baseline else None
    steps: list[tuple[float, Experiment]] = []
    for row in sorted(kept, key=lambda r: r.id):
        assert row.metric is not None
        gain = abs(row.metric - previous) if previous is not None else 0.0
        steps.append((gain, row))
        previous = row.metric
    # The largest steps first, each at least a share of the x range away from those taken.
    ids = [r.id for r in history.rows]
    spacing = 0.9 * (max(ids) - min(ids)) / MAX_LABELS
    chosen: list[Experiment] = []
    for _, row in sorted(steps, key=lambda s: (-s[0], s[1].id)):
        if len(chosen) < MAX_LABELS and all(abs(row.id - c.id) >= spacing for c in chosen):
            chosen.append(row)
    return chosen


def _limits(ax: Any, history: History, rows: Sequence[Experiment], direction: str) -> None:
    """Zoom on what matters: every kept value and the baseline; far-off discards are clipped."""
    values = sorted(r.metric for r in rows if r.metric is not None)
    if not values:
        return
    anchors = [r.metric for r in rows if r.verdict.judged and r.metric is not None] or values
    lo, hi = values[0], values[-1]
    if len(values) >= CLIP_FROM:  # a few diverged runs must not flatten everything else
        if direction == "minimize":
            hi = max(max(anchors), values[int(0.9 * (len(values) - 1))])
        else:
            lo = min(min(anchors), values[int(0.1 * (len(values) - 1))])
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    ax.set_ylim(lo - pad, hi + pad)
    clipped = [r for r in rows if r.metric is not None and not lo - pad <= r.metric <= hi + pad]
    if clipped:
        edge = 0.985 if direction == "minimize" else 0.015
        ax.scatter(
            [r.id for r in clipped],
            [edge] * len(clipped),
            transform=ax.get_xaxis_transform(),
            marker="^" if edge > 0.5 else "v",
            c=GREY,
            s=25,
            clip_on=False,
            label=f"off the chart ({len(clipped)})",
        )
    ids = [r.id for r in history.rows]
    margin = 0.5 + len(ids) * 0.01
    ax.set_xlim(min(ids) - margin, max(ids) + margin)


def progress_png(
    session: Session, history: History, *, width: int = WIDTH, height: int = HEIGHT
) -> bytes:
    """progress.png as bytes."""
    buffer = io.BytesIO()
    figure = progress_figure(session, history, width=width, height=height)
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_progress(path: Path, session: Session, history: History) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(progress_png(session, history))
    return path


__all__ = ["progress_figure", "progress_png", "title_text", "write_progress"]
