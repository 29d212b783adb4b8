"""Text views for the command line: the event lines of a run, status, log, show."""

from __future__ import annotations

import datetime as _dt
import re
import statistics
from collections.abc import Mapping, Sequence

from autoresearch.config import JudgeConfig, MetricConfig
from autoresearch.engine import ExperimentEvent, SessionSummary
from autoresearch.judge import Judge
from autoresearch.report._data import Experiment, History, Session, Store, Verdict, from_row

EVENT_HEADER = "   #  verdict      {metric:>12}  vs best     description"
VERDICT_ORDER = (*(v for v in Verdict if v is not Verdict.PENDING), Verdict.PENDING)
_WITH_REASON = (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID, Verdict.INTERRUPTED)
_RULES = ("over budget", "constraint")  # a discard for time or a bound, not for its value


def _says_why(row: Experiment) -> bool:
    return row.verdict in _WITH_REASON or (row.verdict is Verdict.DISCARD and row.reason.startswith(_RULES))


# What an agent or a run may write that a terminal would obey or that reorders or hides what
# is read: C0 and C1 controls (ESC, CR, BEL...) but newline and tab, DEL, bidi marks and
# overrides, zero-width and invisible characters, line and paragraph separators, tag characters.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
)


def terminal_text(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape (``\\x1b``):
    a description, diff, reason or log line cannot move the cursor to paint a fake verdict,
    set the title, write the clipboard or reverse a word."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


REASON_CHARS = 240  # of a reason on a line of the session's table (`show` has all of it)


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` on one line (each run of whitespace a space), cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def value_text(value: float | None) -> str:
    """Six decimals as upstream prints them, or six significant digits where those would hide
    the value (below 0.01: 4e-7 is not 0.000000) or run long."""
    if value is None:
        return "-"
    return f"{value:.6f}" if value == 0.0 or 0.01 <= abs(value) < 1e9 else f"{value:.6g}"


def _number(value: float) -> str:
    """A secondary metric: counts and checksums digit for digit, the rest to six digits."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else f"{value:g}"


def agent_text(session: Session, history: History) -> str:
    """``agent X``, or ``agents X, then Y`` for a session resumed with another agent (the
    session's record names only the last)."""
    used = list(dict.fromkeys(r.agent for r in history.rows if r.agent and r.agent != "baseline"))
    if session.agent not in used:
        used.append(session.agent)
    return f"agent {used[0]}" if len(used) == 1 else f"agents {', then '.join(used)}"


def experiments_text(history: History) -> str:
    """``N experiments (+ baseline)``: the agents' judged proposals, as every view counts them."""
    n = len(history.done)
    text = f"{n} experiment{'s' if n != 1 else ''}"
    return text + " (+ baseline)" if any(r.is_baseline for r in history.rows) else text


def event_line(event: ExperimentEvent, direction: str) -> str:
    """One line per recorded experiment, printed as the session runs."""
    row = from_row(event.experiment)
    delta = ""
    if row.metric is not None and event.best is not None and not row.verdict.judged:
        delta = f"{row.metric - event.best:+.4g}"
    elif row.metric is not None and event.parent is not None and row.verdict is Verdict.KEEP:
        delta = f"{row.metric - event.parent:+.4g}"  # against the best it improved on
    marker = " *" if row.verdict is Verdict.KEEP else ""
    text = row.description
    # a failure, or a discard whose value beats the best (over budget, within the noise, a
    # pinned seed): the line alone would not say why
    looks_better = (
        row.verdict is Verdict.DISCARD and row.metric is not None and event.best is not None
        and MetricConfig(direction=direction).better(row.metric, event.best)
    )  # fmt: skip
    if _says_why(row) or looks_better:
        text += f" [{one_line(row.reason)}]"
    return terminal_text(
        f"{row.id:4d}  {row.verdict:<11}  {value_text(row.metric):>12}  {delta:<9}  {text}{marker}"
    )


def summary_text(summary: SessionSummary, metric: str) -> str:
    """What ``run`` prints when the session ends."""
    lines = [f"session {summary.tag!r} stopped: {summary.stop_reason or 'done'}"]
    if summary.best_metric is not None:
        gain = ""
        base = summary.baseline_metric
        if base is not None and base != 0.0:
            change = (summary.best_metric - base) / abs(base) * 100
            gain = f" ({change:+.2f}% vs baseline {value_text(base)})"
        lines.append(
            f"best {metric}: {value_text(summary.best_metric)}{gain} at {summary.best_commit[:10]} "
            f"on branch {summary.branch}"
        )
    lines.append("counts: " + counts_text({Verdict(k): v for k, v in summary.counts.items()}))
    if summary.cost_usd:
        lines.append(f"spend: ${summary.cost_usd:.2f}")
    return terminal_text("\n".join(lines))


def counts_text(counts: Mapping[Verdict, int]) -> str:
    return ", ".join(f"{v} {counts[v]}" for v in VERDICT_ORDER if counts.get(v))


# --- status ------------------------------------------------------------------------------------


def status_text(
    session: Session,
    history: History,
    *,
    max_hours: float | None = None,
    max_cost: float | None = None,
    judge: JudgeConfig | None = None,
) -> str:
    """Best so far, noise, counts, spend, pace and projection, and the last experiments.

    ``max_hours`` and ``max_cost`` default to the stop rules the session runs under.
    """
    max_hours = session.rules.get("max_hours") if max_hours is None else max_hours
    max_cost = session.rules.get("max_cost") if max_cost is None else max_cost
    started = _dt.datetime.fromtimestamp(session.created).strftime("%Y-%m-%d %H:%M")
    lines = [
        f"session {session.tag} (branch {session.branch}, {agent_text(session, history)}, started {started})",
        f"status: {_status(session)}"
        + (f" — {session.stop_reason}" if session.stop_reason else ""),
    ]
    best, baseline = history.best, history.baseline
    if best is not None:
        lines.append(
            f"best {session.metric}: {value_text(best.metric)} "
            f"(experiment {best.id}, {best.commit[:10]})"
        )
    if baseline is not None:
        lines.append(f"baseline: {value_text(baseline.metric)}")
    again = remeasured_text(session, history)
    if again:
        lines.append(f"re-measured: {again}")
    lines.extend(_load_lines(history))
    lines.append(noise_text(history, judge or JudgeConfig()))
    running = ""
    if history.pending:  # a dead orchestrator's are not running: a resume runs them again
        running = f", {len(history.pending)} {'running' if session.alive else 'left pending'}"
    lines.append(f"{experiments_text(history)}{running}: {counts_text(history.counts)}")
    lines.extend(_spend_lines(history))
    lines.extend(_pace_lines(history, max_hours=max_hours, max_cost=max_cost))
    lines.append("last experiments:")
    lines.extend("  " + log_line(r) for r in history.rows[-5:])
    return terminal_text("\n".join(lines))


def remeasured_text(session: Session, history: History) -> str:
    """The latest ``autoresearch remeasure`` reading ("" when there is none)."""
    reading = session.remeasured
    if not reading.get("ratio"):
        return ""
    when = _dt.datetime.fromtimestamp(float(reading.get("at", 0))).strftime("%Y-%m-%d %H:%M")
    held = f", {max(float(reading['held']), 0.0):.0%} of the recorded gain held" if "held" in reading else ""
    best = history.best
    of = "" if best is not None and best.commit == reading.get("best_commit") else " (of an earlier best)"
    return (f"best / baseline = {float(reading['ratio']):.4f}{held}, {int(reading.get('runs', 0))} fresh "
            f"runs each, {when}{of}")  # fmt: skip


WAITED = 1.25  # wall over CPU seconds: a run that waited this much longer than it computed


def _load_lines(history: History) -> list[str]:
    """A warning when the baseline's runs waited (wall over CPU time, as `measure` reports them)
    ``WAITED`` times and more, and the best's did not; or when one of the baseline's runs did
    and its others did not: timed under outside load, it makes every gain look larger, or one
    run swells the noise that real gains must beat."""
    def waited(metrics: Mapping[str, float] | None) -> float | None:
        wall, cpu = (metrics.get(k) for k in ("seconds", "cpu_seconds")) if metrics else (None, None)
        return wall / cpu if wall and cpu else None

    base_row, best_row = history.baseline, history.best
    base, best = waited(base_row.metrics if base_row else None), waited(best_row.metrics if best_row else None)
    if base is not None and best is not None and base >= WAITED and base >= WAITED * best:
        return [f"warning: the baseline's runs took {base:.1f}x their CPU time in wall time, the best's "
                f"{best:.1f}x: the baseline was likely timed under outside load, and the gain looks larger "
                "than it is; `autoresearch remeasure` times both again, side by side"]  # fmt: skip
    runs = [(run.index, waited(run.metrics)) for run in base_row.runs] if base_row else []
    ratios = [(index, ratio) for index, ratio in runs if ratio is not None]
    if len(ratios) < 3:
        return []
    index, worst = max(ratios, key=lambda pair: pair[1])
    usual = statistics.median(ratio for i, ratio in ratios if i != index)
    if worst < WAITED * usual:
        return []
    return [f"warning: run {index} of the baseline took {worst:.1f}x its CPU time in wall time, its other "
            f"runs {usual:.1f}x: it was likely timed under outside load, and the noise it adds hides real "
            "gains; on a busy machine, cpu_seconds is the steadier metric"]  # fmt: skip


def noise_text(history: History, judge: JudgeConfig) -> str:
    """Sigma, the runs behind it, and the smallest effect the judge can confirm with it."""
    noise, standing = history.noise(), history.standing()
    if noise.sigma is None:
        return f"{noise.text()}: a candidate that looks better runs twice before it can be kept"
    margin = Judge(judge, MetricConfig(), budget=1.0, allowance=0.0).margin
    smallest = margin(noise, judge.max_runs, standing.runs if standing else 1)
    if judge.rule == "naive":
        return f"{noise.text()}; a candidate must beat the best by {smallest:.4g} (naive rule)"
    return (f"{noise.text()}; smallest effect detectable with {judge.max_runs} runs: "
            f"{smallest:.4g} ({judge.rule} rule, {judge.confidence:.0%})")  # fmt: skip


def _status(session: Session) -> str:
    if session.state != "not running":
        return session.state
    return (
        "not running (its orchestrator died; "
        f"`autoresearch run --tag {session.tag} --resume` carries on)"
    )


def _spend_lines(history: History) -> list[str]:
    tokens, compute, unknown = history.agent_cost, history.compute_cost, history.unknown_prices
    if not tokens and not compute and not unknown:
        return []
    total = history.spend
    done = len(history.done) or len(history.rows)
    keeps = len(history.kept)
    text = f"spend: ${total:.2f} (agent ${tokens:.2f}, compute ${compute:.2f})"
    text += f"; ${total / done:.3f} per experiment"
    text += f", ${total / keeps:.2f} per kept improvement" if keeps else ""
    if unknown:
        text += f"; {unknown} proposals of unknown price"
    return [text]


def _pace_lines(history: History, *, max_hours: float | None, max_cost: float | None) -> list[str]:
    """Experiments per hour, and where the session ends up at ``max_hours`` / ``max_cost``."""
    rate = history.per_hour
    if rate is None:
        return []
    lines = [f"pace: {rate:.1f} experiments/hour over {history.wall_seconds / 3600:.2f} h"]
    done, hours, spend = len(history.done), history.wall_seconds / 3600, history.spend
    if max_hours is not None:
        left = max(0.0, max_hours - hours)
        dollars = spend + (spend / hours * left if hours > 0 else 0.0)
        lines.append(
            f"projected at --max-hours {max_hours:g}: ~{done + rate * left:.0f} "
            f"experiments, ~${dollars:.2f}"
        )
    if max_cost is not None and spend > 0 and done:
        more = max(0.0, (max_cost - spend) / (spend / done))
        lines.append(
            f"projected at --max-cost ${max_cost:.2f}: ~{done + more:.0f} experiments "
            f"in ~{hours + more / rate:.1f} h"
        )
    return lines


# --- log and show ---------------------------------------------------------------------------


def log_line(row: Experiment) -> str:
    """One line per experiment, whatever its reason holds (``show`` has all of it)."""
    reason = f" [{one_line(row.reason)}]" if _says_why(row) else ""
    if row.verdict is Verdict.PENDING and row.started:  # running (or left by a killed orchestrator)
        reason = f" [started {_dt.datetime.fromtimestamp(row.started).strftime('%H:%M:%S')}]"
    commit = row.commit[:7] or "-------"
    return f"{row.id:4d}  {commit}  {row.verdict:<11}  {value_text(row.metric):>12}  {row.description}{reason}"


def log_text(rows: Sequence[Experiment], metric: str) -> str:
    header = f"   #  commit   verdict      {metric:>12}  description"
    return terminal_text("\n".join([header, *(log_line(r) for r in rows)]))


def show_text(store: Store, session: Session, experiment_id: int) -> str:
    """One experiment: verdict, description, metrics, tokens, rationale, runs, diff, log tail."""
    row = store.experiment(session.tag, experiment_id)
    metric = session.metric
    lines = [
        f"experiment {row.id} of session {session.tag}: {row.verdict}"
        + (f" — {row.reason}" if row.reason else ""),
        f"description: {row.description}",
        f"agent: {row.agent}   commit: {row.commit or '-'}   parent: {row.parent[:10]}",
        f"{metric}: {value_text(row.metric)}",
    ]
    others = {k: v for k, v in row.metrics.items() if k != metric}
    if others:
        lines.append("metrics: " + ", ".join(f"{k}={_number(v)}" for k, v in sorted(others.items())))
    usage = row.usage
    if usage.input_tokens or usage.output_tokens:
        cost = "unknown" if usage.cost_usd is None else f"${usage.cost_usd:.4f}"
        lines.append(
            f"tokens: in {usage.input_tokens} (cached {usage.cached_tokens}), "
            f"out {usage.output_tokens}; cost {cost}"
        )
    if row.rationale:  # the agent's words, indented: a line of its own cannot pass for a run
        lines += ["", "rationale:", *("  " + line for line in row.rationale.splitlines()), ""]
    for run in row.runs:
        reason = f" — {run.reason}" if run.reason else ""
        steps = [f"{name} {run.step_seconds(name) or 0:.1f} s" for name in ("check", "evaluate") if run.step_seconds(name)]
        timed = f"{run.seconds:.1f} s" + (f" (+ {', '.join(steps)})" if steps else "")
        lines.append(
            f"run {run.index}: seed {run.seed}, {run.status}, {metric} "
            f"{value_text(run.metric)}, {timed}, log {run.log_path}{reason}"
        )
    if row.diff:
        lines += ["", "diff:", row.diff]
    if row.runs and row.runs[-1].log_tail:
        lines += ["", "log tail:", row.runs[-1].log_tail]
    return terminal_text("\n".join(lines))


__all__ = [
    "EVENT_HEADER",
    "agent_text",
    "counts_text",
    "event_line",
    "experiments_text",
    "log_line",
    "log_text",
    "remeasured_text",
    "show_text",
    "status_text",
    "summary_text",
    "value_text",
]
