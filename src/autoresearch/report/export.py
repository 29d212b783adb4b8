"""Files for other tools: upstream's ``results.tsv``, and every experiment as JSON.

``results.tsv`` has upstream's columns (``commit <metric> memory_gb status description``:
peak GPU memory, or peak RSS where the runs used no GPU) and,
by default, upstream's statuses, so its analysis notebook finds the top hits: the baseline
counts as ``keep`` (it is the first kept state), a run that produced no metric as ``crash``
(with metric 0, as upstream writes it). ``verdicts=True`` writes our verdicts instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from autoresearch.cost import compute_cost
from autoresearch.records import Experiment, Run, RunPurpose, RunStatus, Usage, Verdict
from autoresearch.report._data import Session
from autoresearch.report.text import value_text

JSON_VERSION = 1

_UPSTREAM = {
    Verdict.BASELINE: "keep",
    Verdict.KEEP: "keep",
    Verdict.DISCARD: "discard",
    Verdict.CRASH: "crash",
    Verdict.TIMEOUT: "crash",
    Verdict.INVALID: "crash",
    Verdict.INTERRUPTED: "crash",
}


class TsvRow(Protocol):
    """What a results.tsv line needs (an ``Experiment``, or the ledger's row)."""

    @property
    def verdict(self) -> str: ...
    @property
    def metric(self) -> float | None: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def commit(self) -> str: ...
    @property
    def description(self) -> str: ...


def upstream_status(verdict: Verdict, metric: float | None) -> str:
    """keep | discard | crash; a duplicate is a discard when it carries a metric."""
    if verdict is Verdict.DUPLICATE:
        return "discard" if metric is not None else "crash"
    return _UPSTREAM[verdict]


def _inert(cell: str) -> str:
    """A text cell a spreadsheet will not run as a formula (``=``, ``+``, ``-``, ``@`` first)
    and a CSV reader will not take for a quoted field (``"`` first: it would run on to the
    next description with a quote, and the rows in between would vanish into one cell)."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", '"') else cell


def tsv_text(rows: Sequence[TsvRow], metric: str, *, verdicts: bool = False) -> str:
    """The results.tsv text; pending experiments are left out."""
    lines = [f"commit\t{metric}\tmemory_gb\tstatus\tdescription"]
    for row in rows:
        verdict = Verdict(row.verdict)
        if verdict is Verdict.PENDING:
            continue
        status = str(verdict) if verdicts else upstream_status(verdict, row.metric)
        measured = row.metric is not None and status != "crash"
        value = value_text(row.metric) if measured and row.metric is not None else "0.000000"
        memory = row.metrics.get("peak_vram_mb", row.metrics.get("peak_rss_mb", 0.0)) / 1024  # no GPU: RAM
        description = _inert(" ".join(row.description.split()))
        shown = f"{memory:.1f}" if memory >= 1 or memory == 0 else f"{memory:.3f}"  # a benchmark's 27 MB
        lines.append(f"{row.commit[:7] or '-'}\t{value}\t{shown}\t{status}\t{description}")
    return "\n".join(lines) + "\n"


def write_tsv(rows: Sequence[TsvRow], metric: str, path: Path, *, verdicts: bool = False) -> int:
    """Write results.tsv to ``path``; returns how many experiments it holds."""
    text = tsv_text(rows, metric, verdicts=verdicts)
    path.write_text(text, encoding="utf-8")
    return text.count("\n") - 1


# --- JSON -------------------------------------------------------------------------------------


def json_document(session: Session, rows: Sequence[Experiment]) -> dict[str, Any]:
    """Every experiment with its runs, metrics, usage, cost and timing."""
    price = session.gpu_price or 0.0
    return {
        "version": JSON_VERSION,
        "session": {
            "tag": session.tag,
            "branch": session.branch,
            "base_commit": session.base_commit,
            "agent": session.agent,
            "metric": session.metric,
            "direction": session.direction,
            "created": session.created,
            "updated": session.updated,
            "status": session.status,
            "stop_reason": session.stop_reason,
            "rules": dict(session.rules),
            "gpu_price": session.gpu_price,
        },
        "experiments": [_experiment_json(r, price) for r in rows],
    }


def json_text(session: Session, rows: Sequence[Experiment]) -> str:
    """Strict JSON: a non-finite number a run printed (``nan``, ``inf``) is ``null``; bare
    ``NaN`` would make jq, ``JSON.parse`` and most parsers refuse the whole document."""
    document = _finite(json_document(session, rows))
    return json.dumps(document, indent=1, default=str, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _experiment_json(row: Experiment, gpu_price: float) -> dict[str, Any]:
    compute = compute_cost(row.compute_seconds, gpu_price)
    return {
        "id": row.id,
        "verdict": str(row.verdict),
        "metric": row.metric,
        "description": row.description,
        "commit": row.commit,
        "parent": row.parent,
        "reason": row.reason,
        "agent": row.agent,
        "metrics": dict(row.metrics),
        "rationale": row.rationale,
        "diff": row.diff,
        "meta": dict(row.meta),
        "usage": {
            "input_tokens": row.usage.input_tokens,
            "cached_tokens": row.usage.cached_tokens,
            "output_tokens": row.usage.output_tokens,
            "cost_usd": row.usage.cost_usd,
        },
        "compute_cost_usd": compute,
        "started": row.started,
        "finished": row.finished,
        "compute_seconds": row.compute_seconds,
        "tree": row.tree,
        "runs": [_run_json(run) for run in row.runs],
    }


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "index": run.index,
        "seed": run.seed,
        "status": str(run.status),
        "purpose": str(run.purpose),
        "metric": run.metric,
        "metrics": dict(run.metrics),
        "seconds": run.seconds,
        "check_seconds": run.check_seconds,
        "evaluate_seconds": run.evaluate_seconds,
        "reason": run.reason,
        "log_path": run.log_path,
        "log_tail": run.log_tail,
    }


def experiments_from_json(document: Mapping[str, Any]) -> list[Experiment]:
    """The experiments of a ``json_document`` (what ``--json`` wrote), as records again."""
    if document.get("version") != JSON_VERSION:
        raise ValueError(f"not an autoresearch runs.json (version {document.get('version')!r})")
    return [_experiment_of(item) for item in document["experiments"]]


def _experiment_of(item: Mapping[str, Any]) -> Experiment:
    runs = tuple(
        Run(experiment_id=item["id"], **{**run, "status": RunStatus(run["status"]),
                                          "purpose": RunPurpose(run["purpose"])})
        for run in item["runs"]
    )
    fields = {k: v for k, v in item.items() if k not in ("usage", "runs", "compute_cost_usd")}
    fields["verdict"] = Verdict(fields["verdict"])
    return Experiment(**fields, usage=Usage(**item["usage"]), runs=runs)


__all__ = [
    "experiments_from_json",
    "json_document",
    "json_text",
    "tsv_text",
    "upstream_status",
    "write_tsv",
]
