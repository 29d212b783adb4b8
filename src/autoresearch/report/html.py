"""report.html: one self-contained page that says what a session found and how to adopt it.

No network at all: the plot is an inline PNG, the style a ``<style>`` block, no script, and a
Content-Security-Policy that forbids anything else. Every string from the ledger (the agents
write descriptions, rationales and diffs) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape as _escape
from pathlib import Path

from autoresearch.report._data import Experiment, History, Session, Verdict
from autoresearch.report.text import (
    VERDICT_ORDER,
    agent_text,
    experiments_text,
    remeasured_text,
    terminal_text,
    value_text,
)


def escape(text: str) -> str:
    """``text`` as HTML text, with what reorders or hides what is read (bidi and zero-width
    characters, controls) shown as escapes: a diff cannot display other code than it runs."""
    return _escape(terminal_text(text))

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; text-align: left; }
tr:nth-child(even) td { background: #f6f6f6; } th { border-bottom: 2px solid #ccc; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.v-keep, .v-baseline { color: #1b7a3d; font-weight: 600; } .v-discard, .v-duplicate { color: #777; }
.v-crash, .v-timeout, .v-invalid, .v-interrupted { color: #c62828; } .v-pending { color: #1f5fbf; }
pre.diff { background: #fafafa; border: 1px solid #e3e3e3; padding: .6em; overflow-x: auto;
           font: 12.5px/1.4 ui-monospace, monospace; }
.d-add { color: #116329; background: #e6ffec; display: block; }
.d-del { color: #82071e; background: #ffebe9; display: block; }
.d-hunk { color: #0550ae; display: block; } .d-file { font-weight: 700; display: block; }
.d-ctx { display: block; }
.keep-card { margin: 1em 0 1.6em; } .gain { color: #1b7a3d; font-weight: 600; }
code.cmd { background: #f2f2f2; padding: .15em .4em; display: inline-block; margin: .15em 0; }
img.plot { width: 100%; height: auto; border: 1px solid #eee; }
.muted { color: #777; }
"""


@dataclass(frozen=True)
class KeptChange:
    """A keep and what it gained over the best it replaced."""

    experiment: Experiment
    previous: float | None
    gain: float | None  # improvement in metric units (positive: better)
    in_best: bool = True  # False: a later keep made on an older best replaced it


def kept_changes(history: History, direction: str) -> list[KeptChange]:
    """Every keep with its gain over the previous best, the largest gain first."""
    previous = history.baseline.metric if history.baseline else None
    found = []
    judged = sorted(
        (r for r in history.rows if r.verdict.judged), key=lambda r: (r.finished or 0.0, r.id)
    )
    for row in judged:
        if row.verdict is Verdict.KEEP:
            gain = None
            if row.metric is not None and previous is not None:
                gain = previous - row.metric if direction == "minimize" else row.metric - previous
            found.append(KeptChange(row, previous, gain, row.id in history.lineage))
        previous = row.metric if row.metric is not None else previous
    return sorted(found, key=lambda k: -(k.gain if k.gain is not None else float("-inf")))


def diff_html(diff: str) -> str:
    """A unified diff as escaped HTML: one block per line, classed for the inline style."""
    return "".join(
        f'<span class="{_diff_class(line)}">{escape(line) or " "}</span>'
        for line in diff.splitlines()
    )


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---", "diff --git", "index ")):
        return "d-file"
    return {"+": "d-add", "-": "d-del", "@": "d-hunk"}.get(line[:1], "d-ctx")


def verdict_html(verdict: Verdict) -> str:
    return f'<span class="v-{escape(str(verdict))}">{escape(str(verdict))}</span>'


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"
    )


def summary_rows(session: Session, history: History) -> list[tuple[str, str]]:
    """The headline numbers as (label, text) pairs; shared by the report and the dashboard."""
    best, base = history.best, history.baseline
    done, kept = len(history.done), len(history.kept)
    gain = history.gain(best.metric if best else None)
    rows = [
        (
            "baseline → best",
            f"{value_text(base.metric if base else None)} → "
            f"{value_text(best.metric if best else None)}",
        ),
        ("total gain", "-" if gain is None else f"{gain:+.2f}% vs baseline"),
        *((("re-measured", again),) if (again := remeasured_text(session, history)) else ()),
        ("experiments", experiments_text(history)),
        ("keep rate", f"{kept}/{done} ({kept / done:.0%})" if done else "-"),
        ("wall time", _duration(history.wall_seconds)),
        ("experiments/hour", "-" if history.per_hour is None else f"{history.per_hour:.1f}"),
        (
            "spent",
            f"${history.spend:.2f} (agent ${history.agent_cost:.2f}, "
            f"compute ${history.compute_cost:.2f})",
        ),
        ("$ per kept improvement", f"${history.spend / kept:.2f}" if kept else "-"),
        ("noise (σ between runs)", "unknown" if history.sigma is None else f"{history.sigma:.4g}"),
    ]
    if history.unknown_prices:
        rows.append(("proposals of unknown price", str(history.unknown_prices)))
    return rows


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _counts(history: History) -> str:
    cells = [(str(v), str(history.counts[v])) for v in VERDICT_ORDER if history.counts.get(v)]
    body = "".join(
        f"<tr><td>{verdict_html(Verdict(v))}</td><td class=num>{n}</td></tr>" for v, n in cells
    )
    return f"<table><tr><th>verdict</th><th>experiments</th></tr>{body}</table>"


def _kept_section(session: Session, history: History) -> str:
    changes = kept_changes(history, session.direction)
    if not changes:
        return "<p class=muted>No change was kept: the best is still the baseline.</p>"
    return "".join(_kept_card(session, k) for k in changes)


def _kept_card(session: Session, change: KeptChange) -> str:
    row = change.experiment
    # the metric's own change, signed as the summary's "total gain" is (down is better when minimizing)
    moved = None if row.metric is None or change.previous is None else row.metric - change.previous
    gain = "" if moved is None else f' <span class="gain">{moved:+.6g}</span>'
    parts = [
        f'<div class="keep-card" id="keep-{row.id}"><h3>#{row.id}: {escape(row.description)}{gain}</h3>',
        f"<p class=muted>{escape(value_text(change.previous))} → {escape(value_text(row.metric))}"
        f" · commit <code>{escape(row.commit[:10])}</code> · agent {escape(row.agent)}</p>",
    ]
    if not change.in_best:
        parts.append("<p class=muted>Not in the best code: a later keep, made on an older best "
                     "because it did not apply to this one, measured better and replaced it.</p>")
    if row.rationale:
        parts.append(f"<p>{escape(row.rationale)}</p>")
    if row.diff:
        parts.append(f'<pre class="diff">{diff_html(row.diff)}</pre>')
    return "".join(parts) + "</div>"


def _all_table(history: History) -> str:
    head = "<tr><th>#</th><th>verdict</th><th class=num>metric</th><th>description</th><th>reason</th></tr>"
    body = "".join(
        f"<tr><td class=num>{r.id}</td><td>{verdict_html(r.verdict)}</td>"
        f"<td class=num>{escape(value_text(r.metric))}</td><td>{escape(r.description)}</td>"
        f"<td class=muted>{escape(r.reason if not r.verdict.judged else '')}</td></tr>"
        for r in history.rows
    )
    return f"<table>{head}{body}</table>"


def commands(session: Session) -> list[tuple[str, str]]:
    """What to run to review and adopt the result: (what it does, command)."""
    branch, base = session.branch, session.base_commit[:10]
    return [
        ("every change the session kept, as one diff", f"git diff {base} {branch}"),
        ("the kept commits, one per line", f"git log --oneline {base}..{branch}"),
        ("one experiment in full", f"autoresearch show --tag {session.tag} <experiment>"),
        ("adopt the result on your branch", f"git merge --ff-only {branch}"),
    ]


def _commands_html(session: Session) -> str:
    items = "".join(
        f"<li>{escape(what)}:<br><code class=cmd>{escape(cmd)}</code></li>"
        for what, cmd in commands(session)
    )
    return f"<ul>{items}</ul>"


def report_html(session: Session, history: History, *, png: bytes | None) -> str:
    """The whole report as one HTML document."""
    when = _dt.datetime.fromtimestamp(session.created).strftime("%Y-%m-%d %H:%M")
    image = ""
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        image = f'<img class="plot" alt="progress plot" src="data:image/png;base64,{data}">'
    title = f"autoresearch · {session.tag}"
    sections = [
        f"<h1>{escape(title)}</h1>",
        f"<p class=muted>metric {escape(session.metric)} ({escape(session.direction)}) · branch "
        f"<code>{escape(session.branch)}</code> · {escape(agent_text(session, history))} · started {when} · "
        f"{escape(session.state)}{' — ' + escape(session.stop_reason) if session.stop_reason else ''}</p>",
        "<h2>Summary</h2>",
        _table(summary_rows(session, history)),
        image,
        "<h2>Kept changes, largest gain first</h2>",
        _kept_section(session, history),
        "<h2>Verdicts</h2>",
        _counts(history),
        "<h2>Review and adopt</h2>",
        _commands_html(session),
        "<h2>Every experiment</h2>",
        _all_table(history),
    ]
    return page(title, "".join(sections))


def page(title: str, body: str, *, csp: str = CSP, head: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style>{head}</head>"
        f"<body>{body}</body></html>\n"
    )


def write_report(path: Path, session: Session, history: History, *, png: bytes | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(session, history, png=png), encoding="utf-8")
    return path


__all__ = [
    "KeptChange",
    "commands",
    "diff_html",
    "kept_changes",
    "page",
    "report_html",
    "summary_rows",
    "write_report",
]
