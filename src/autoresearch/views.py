"""Text views of the ledger for the command line: the live table, status, log, show."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from autoresearch.config import TaskConfig
from autoresearch.cost import compute_cost
from autoresearch.engine import ExperimentEvent, SessionSummary
from autoresearch.init import task_notes
from autoresearch.ledger import ExperimentRow, Ledger, SessionLock, SessionRow, best_row
from autoresearch.workspace import STATE_DIR

EVENT_HEADER = "   #  verdict      {metric:>12}  vs best     description"
VERDICT_ORDER = (
    "baseline",
    "keep",
    "discard",
    "crash",
    "timeout",
    "invalid",
    "interrupted",
    "pending",
)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def event_line(event: ExperimentEvent, direction: str) -> str:
    """One line of the live table, printed as each experiment is recorded."""
    row = event.experiment
    delta = ""
    if (
        row.metric is not None
        and event.best is not None
        and row.verdict not in ("baseline", "keep")
    ):
        delta = f"{row.metric - event.best:+.4g}"
    marker = " *" if row.verdict == "keep" else ""
    text = (
        row.description
        if row.verdict not in ("crash", "timeout", "invalid")
        else f"{row.description} [{row.reason}]"
    )
    return f"{row.id:4d}  {row.verdict:<11}  {_value(row.metric):>12}  {delta:<9}  {text}{marker}"


def summary_text(summary: SessionSummary, metric: str) -> str:
    lines = [f"session {summary.tag!r} stopped: {summary.stop_reason or 'done'}"]
    if summary.best_metric is not None:
        gain = ""
        if summary.baseline_metric not in (None, 0.0) and summary.baseline_metric is not None:
            change = (
                (summary.best_metric - summary.baseline_metric) / abs(summary.baseline_metric) * 100
            )
            gain = f" ({change:+.2f}% vs baseline {summary.baseline_metric:.6f})"
        lines.append(f"best {metric}: {summary.best_metric:.6f}{gain} at {summary.best_commit[:10]} "
                     f"on branch {summary.branch}")  # fmt: skip
    lines.append("counts: " + _counts(summary.counts))
    if summary.cost_usd:
        lines.append(f"spend: ${summary.cost_usd:.2f}")
    return "\n".join(lines)


def _counts(counts: dict[str, int] | object) -> str:
    assert isinstance(counts, dict)
    return ", ".join(f"{k} {counts[k]}" for k in VERDICT_ORDER if counts.get(k))


def status_text(config: TaskConfig, ledger: Ledger, session: SessionRow) -> str:
    rows = ledger.experiments(session)
    best = best_row(rows)
    baseline = next((r for r in rows if r.verdict == "baseline"), None)
    started = _dt.datetime.fromtimestamp(session.created).strftime("%Y-%m-%d %H:%M")
    lines = [
        f"session {session.tag} (branch {session.branch}, agent {session.agent}, started {started})",
        f"status: {_status(config, session)}"
        + (f" — {session.stop_reason}" if session.stop_reason else ""),
    ]
    if best is not None:
        lines.append(
            f"best {config.metric.name}: {_value(best.metric)} (experiment {best.id}, {best.commit[:10]})"
        )
    if baseline is not None:
        noise = f", noise {session.noise:.4g}" if session.noise is not None else ""
        lines.append(f"baseline: {_value(baseline.metric)}{noise}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    lines.append(f"experiments: {len(rows)} ({_counts(counts)})")
    lines.extend(
        _spend_lines(float(session.config.get("gpu_price", config.cost.gpu_per_hour)), rows)
    )
    lines.append("last experiments:")
    lines.extend("  " + _log_line(r) for r in rows[-5:])
    lines.extend(f"warning: {note}" for note in task_notes(config.root))  # from `init`
    return "\n".join(lines)


def _status(config: TaskConfig, session: SessionRow) -> str:
    if (
        session.status != "running"
        or SessionLock(config.root / STATE_DIR, session.tag).held_elsewhere()
    ):
        return session.status
    return f"not running (its orchestrator died; `autoresearch run --tag {session.tag} --resume` carries on)"


def _spend_lines(gpu_per_hour: float, rows: Sequence[ExperimentRow]) -> list[str]:
    tokens = sum(r.cost_usd or 0.0 for r in rows)
    compute = compute_cost(sum(r.compute_seconds for r in rows), gpu_per_hour)
    unknown = sum(1 for r in rows if r.cost_usd is None)
    if not tokens and not compute and not unknown:
        return []
    total = tokens + compute
    done = [r for r in rows if r.agent != "baseline"] or list(rows)
    keeps = sum(1 for r in rows if r.verdict == "keep")
    text = f"spend: ${total:.2f} (agent ${tokens:.2f}, compute ${compute:.2f})"
    text += f"; ${total / len(done):.3f} per experiment"
    text += f", ${total / keeps:.2f} per kept improvement" if keeps else ""
    if unknown:
        text += f"; {unknown} proposals of unknown price"
    return [text]


def _log_line(row: ExperimentRow) -> str:
    reason = (
        f" [{row.reason}]" if row.verdict in ("crash", "timeout", "invalid", "interrupted") else ""
    )
    return f"{row.id:4d}  {row.commit[:7] or '-------'}  {row.verdict:<11}  {_value(row.metric):>12}  {row.description}{reason}"


def log_text(rows: Sequence[ExperimentRow], metric: str) -> str:
    header = f"   #  commit   verdict      {metric:>12}  description"
    return "\n".join([header, *(_log_line(r) for r in rows)])


def show_text(ledger: Ledger, session: SessionRow, experiment_id: int, metric: str) -> str:
    row = ledger.experiment(session, experiment_id)
    proposal = ledger.proposal(session, experiment_id)
    lines = [
        f"experiment {row.id} of session {session.tag}: {row.verdict}"
        + (f" — {row.reason}" if row.reason else ""),
        f"description: {row.description}",
        f"agent: {row.agent}   commit: {row.commit or '-'}   parent: {row.parent[:10]}",
        f"{metric}: {_value(row.metric)}",
    ]
    others = {k: v for k, v in row.metrics.items() if k != metric}
    if others:
        lines.append("metrics: " + ", ".join(f"{k}={v:g}" for k, v in sorted(others.items())))
    if proposal is not None and (proposal.input_tokens or proposal.output_tokens):
        cost = "unknown" if proposal.cost_usd is None else f"${proposal.cost_usd:.4f}"
        lines.append(f"tokens: in {proposal.input_tokens} (cached {proposal.cached_tokens}), "
                     f"out {proposal.output_tokens}; cost {cost}")  # fmt: skip
    if proposal is not None and proposal.rationale:
        lines += ["", "rationale:", proposal.rationale]
    for run in ledger.runs(session, experiment_id):
        lines.append(f"run {run.idx}: seed {run.seed}, {run.status}, {metric} {_value(run.metric)}, "
                     f"{run.seconds:.1f} s, log {run.log_path}" + (f" — {run.reason}" if run.reason else ""))  # fmt: skip
    if proposal is not None and proposal.diff:
        lines += ["", "diff:", proposal.diff]
    runs = ledger.runs(session, experiment_id)
    if runs and runs[-1].log_tail:
        lines += ["", "log tail:", runs[-1].log_tail]
    return "\n".join(lines)
