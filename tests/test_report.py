"""progress.png and report.html from a recorded session, the plot at 1, 10 and 1,000 experiments, status projection."""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fakes import browser
from fakes.recorded import HOSTILE, KEPT, RLO, TAG, record_session
from fakes.session import run_cli

from autoresearch.engine import ExperimentEvent
from autoresearch.history import History
from autoresearch.records import Experiment, Run, RunStatus, Verdict
from autoresearch.report import make_report
from autoresearch.report._data import Session, Store
from autoresearch.report.html import diff_html, kept_changes, report_html
from autoresearch.report.plot import MAX_LABELS, progress_figure, title_text
from autoresearch.report.text import event_line, log_line, noise_text, status_text, terminal_text

Image = pytest.importorskip("PIL.Image", reason="Pillow comes with matplotlib (the report extra)")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_session(tmp_path_factory.mktemp("report"))


def session_of(direction: str = "minimize") -> Session:
    return Session(
        tag="t",
        branch="autoresearch/t",
        base_commit="a" * 40,
        agent="tuner",
        metric="val_bpb",
        direction=direction,
        created=0.0,
        updated=0.0,
        status="finished",
        stop_reason="",
        rules={},
        gpu_price=2.0,
        alive=False,
    )


def synthetic(n: int, *, keep_every: int = 7) -> list[Experiment]:
    """A baseline and ``n - 1`` experiments over one hour; every ``keep_every``-th keeps."""
    rows = [
        Experiment(
            0, Verdict.BASELINE, 1.0, "baseline", started=0.0, finished=1.0, compute_seconds=60.0
        )
    ]
    best = 1.0
    for i in range(1, n):
        if i % keep_every == 0:
            best -= 0.001
            verdict, value = Verdict.KEEP, best
        elif i % 11 == 0:
            verdict, value = Verdict.CRASH, None
        else:
            verdict, value = Verdict.DISCARD, best + 0.002 * (i % 5) + (5.0 if i % 97 == 0 else 0.0)
        finished = i * 3600.0 / (n - 1)
        rows.append(
            Experiment(
                i,
                verdict,
                value,
                f"change number {i}",
                started=finished - 1,
                finished=finished,
                compute_seconds=60.0,
            )
        )
    return rows


def red_green_pixels(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    green = sum(n for n, (r, g, b) in colors if g > 130 and r < 80 and b < 110)
    red = sum(n for n, (r, g, b) in colors if r > 190 and g < 70 and b < 70)
    return red, green


def test_report_command_writes_png_and_html(recorded: Path, tmp_path: Path) -> None:
    done = run_cli(recorded, "report", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    png, page = tmp_path / "out" / "progress.png", tmp_path / "out" / "report.html"
    assert f"wrote {png}" in done.stdout and f"wrote {page}" in done.stdout
    with Image.open(png) as image:
        image.load()
        assert image.size == (1600, 900)
    red, green = red_green_pixels(png)
    assert red > 20 and green > 200  # crash marks and the keeps / running best are drawn
    default = make_report(recorded)
    assert default[0] == recorded / ".autoresearch" / "reports" / TAG / "progress.png"


def test_html_holds_every_keep_escaped_and_nothing_from_the_network(recorded: Path) -> None:
    store = Store(recorded)
    session = store.session(TAG)
    rows = store.experiments(TAG, details=True)
    page = report_html(session, store.history(session, rows), png=b"\x89PNG fake")
    for row in rows:
        if row.verdict is Verdict.KEEP:
            assert _escaped(row.description) in page
            for line in row.diff.splitlines():
                assert _escaped(line) in page
    assert HOSTILE not in page and "<script" not in page and "<img src=x" not in page
    assert RLO not in page and "&lt;img src=x onerror=alert(1)&gt; \\u202e1 = Y" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    tags = parsed_tags(page)
    assert not {"script", "link", "iframe", "object", "embed"} & {tag for tag, _ in tags}
    links = [v or "" for _, attrs in tags for k, v in attrs if k in ("src", "href", "action")]
    assert links and all(link.startswith("data:") for link in links)
    assert "url(" not in page and "@import" not in page
    assert f"git diff {session.base_commit[:10]} autoresearch/{TAG}" in page
    ranked = [
        k.experiment.description for k in kept_changes(store.history(session, rows), "minimize")
    ]
    assert ranked == [KEPT[1], KEPT[0]] and page.index("keep-5") < page.index("keep-1")
    for label in (
        "baseline → best",
        "total gain",
        "keep rate",
        "wall time",
        "experiments/hour",
        "spent",
        "$ per kept improvement",
        "noise (σ between runs)",
    ):
        assert f"<th>{_escaped(label)}</th>" in page


def parsed_tags(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of ``page`` with its attributes, as a browser's parser sees them."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Parser().feed(page)
    return found


def _escaped(text: str) -> str:
    """``text`` as the page must hold it: escaped, and a bidi override shown, not obeyed."""
    from html import escape

    return escape(text.replace(RLO, "\\u202e"))


def test_report_in_a_real_browser(recorded: Path, tmp_path: Path) -> None:
    _, page = make_report(recorded, out=tmp_path)
    dom = browser.dump_dom(page.as_uri())
    assert "X 1 -&gt; 2" in dom and "&lt;script&gt;alert" in dom and "<script" not in dom
    assert dom.count('class="d-add"') >= 2 and 'alt="progress plot"' in dom
    shot = browser.screenshot(page.as_uri(), tmp_path / "report.png", size="1280,2400")
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
    red, green = red_green_pixels(shot)
    assert red > 0 and green > 0  # the inline plot and the styled verdicts are painted


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_plot_is_sensible_at_any_length(n: int, tmp_path: Path) -> None:
    rows = synthetic(n)
    noisy = (Run(0, 0, 1, RunStatus.OK, 1.0005), Run(0, 1, 2, RunStatus.OK, 0.9995))
    rows[0] = replace(rows[0], runs=noisy)  # the baseline's two runs: the noise is known
    history = History(rows, gpu_price=2.0)
    figure = progress_figure(session_of(), history)
    ax = figure.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("change number")]
    assert 0 < len(labels) <= MAX_LABELS if history.kept else not labels
    if len(history.kept) <= MAX_LABELS:
        assert len(labels) == len(history.kept)
    else:  # spread over the session, not piled on its first keeps
        xs = sorted(t.xy[0] for t in labels)
        assert len(labels) >= MAX_LABELS // 2 and xs[-1] - xs[0] > n / 2
    low, high = ax.get_ylim()
    best = history.best
    assert best is not None and best.metric is not None
    assert low < best.metric < high and low < 1.0 < high  # best and baseline in view
    assert high < 2.0  # a few diverged runs (+5.0) do not flatten the rest
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "running best" in legend and any(t.startswith("best ± noise") for t in legend)
    path = tmp_path / "p.png"
    figure.savefig(path, dpi=100)
    with Image.open(path) as image:
        assert image.size == (1600, 900)


def test_title_counts_keeps_and_gain() -> None:
    history = History(synthetic(10))
    assert (
        title_text(history) == "9 experiments (+ baseline), 1 kept, best 0.999 (-0.10% vs baseline)"
    )
    assert title_text(History([])) == "0 experiments, 0 kept"


def test_characters_that_reorder_or_hide_text_are_shown() -> None:
    """A bidi override, an isolate, an Arabic letter mark, a word joiner and a tag character,
    in a diff line and in the terminal."""
    line = "+if MODE != \"safe\u202e \u2066# only when unsafe\u2069 \u2066\":\u061c\u2060\U000e0041"
    out = diff_html(line)
    for char, shown in (("\u202e", "\\u202e"), ("\u2066", "\\u2066"), ("\u061c", "\\u061c"),
                        ("\u2060", "\\u2060"), ("\U000e0041", "\\U000e0041")):  # fmt: skip
        assert char not in out and shown in out
        assert char not in terminal_text(line) and shown in terminal_text(line)


def test_diff_lines_are_escaped_and_classed() -> None:
    out = diff_html("--- a/x\n+<b>new</b>\n-old\n@@ -1 +1 @@\n ctx")
    assert '<span class="d-add">+&lt;b&gt;new&lt;/b&gt;</span>' in out
    assert '<span class="d-del">-old</span>' in out and 'class="d-hunk"' in out
    assert '<span class="d-file">--- a/x</span>' in out and "<b>" not in out


def test_status_shows_pace_and_projection() -> None:
    rows = synthetic(13, keep_every=4)  # 12 experiments in the first hour
    history = History(rows, gpu_price=2.0, now=3600.0)
    text = status_text(session_of(), history, max_hours=8, max_cost=20.0)
    assert "pace: 12.0 experiments/hour over 1.00 h" in text
    spend = 13 * 60 * 2.0 / 3600  # 13 minutes of compute at $2/h
    assert f"projected at --max-hours 8: ~96 experiments, ~${spend * 8:.2f}" in text
    per = spend / 12
    more = (20.0 - spend) / per
    assert (
        f"projected at --max-cost $20.00: ~{12 + more:.0f} experiments in ~{1 + more / 12:.1f} h"
        in text
    )


def test_every_view_counts_the_same_experiments() -> None:
    """status, the report, the dashboard, the plot and the live line count the agents' judged
    proposals: not a failed baseline, its retry, or a run still in flight."""
    from autoresearch.report.html import summary_rows
    from autoresearch.report.live import Tally

    rows = [Experiment(0, Verdict.CRASH, None, "baseline", agent="baseline"),
            Experiment(1, Verdict.BASELINE, 1.0, "baseline", agent="baseline"),
            Experiment(2, Verdict.KEEP, 0.9, "a", agent="tuner"),
            Experiment(3, Verdict.DISCARD, 1.1, "b", agent="tuner"),
            Experiment(4, Verdict.PENDING, None, "c", agent="tuner")]  # fmt: skip
    history = History(rows)
    status = status_text(replace(session_of(), status="running", alive=True), history)
    assert (
        "2 experiments (+ baseline), 1 running: baseline 1, keep 1, discard 1, crash 1, pending 1"
        in status
    )
    assert dict(summary_rows(session_of(), history))["experiments"] == "2 experiments (+ baseline)"
    dead = replace(session_of(), status="running", alive=False)  # its orchestrator was killed
    assert "2 experiments (+ baseline), 1 left pending: " in status_text(dead, history)
    assert "1 left pending: " in status_text(session_of(), history)  # closed, one left (a third signal)
    when = 1_800_000_000.0
    started = log_line(replace(rows[4], started=when))  # and `log` says since when
    assert started.endswith(" [started " + _dt.datetime.fromtimestamp(when).strftime("%H:%M:%S") + "]")
    assert title_text(history).startswith("2 experiments (+ baseline), 1 kept")
    tally = Tally()
    for row in rows[:4]:
        tally.add(ExperimentEvent(row, 0.9, 1.0))
    assert "· 2 experiments, 1 kept" in tally.line("val_bpb")
    resumed = Tally()  # a resume's view: the session's totals, this invocation's pace
    resumed.add(ExperimentEvent(rows[3], 0.9, 1.0, done=24, kept=3, spend=1.5))
    assert "· 24 experiments, 3 kept · $1.50 · " in resumed.line("val_bpb")
    assert resumed.seen == 1


def test_a_session_resumed_with_another_agent_names_both() -> None:
    from dataclasses import replace as swap

    rows = [Experiment(0, Verdict.BASELINE, 1.0, "baseline", agent="baseline"),
            Experiment(1, Verdict.DISCARD, 1.1, "a", agent="tuner"),
            Experiment(2, Verdict.DISCARD, 1.2, "b", agent="replay")]  # fmt: skip
    session = swap(session_of(), agent="replay")  # the session's record names the last one
    assert "agents tuner, then replay," in status_text(session, History(rows))
    assert "agent tuner," in status_text(swap(session, agent="tuner"), History(rows[:2]))


def test_status_command_on_a_recorded_session(recorded: Path) -> None:
    done = run_cli(recorded, "status", "--max-hours", "8")
    assert done.returncode == 0, done.stderr
    assert (
        "6 experiments (+ baseline): baseline 1, keep 2, discard 1, crash 2, invalid 1"
        in done.stdout
    )
    assert "best score: 2.000000 (experiment 5" in done.stdout


def test_a_session_whose_orchestrator_died_is_never_shown_running() -> None:
    """Recorded running, no lock held: the report, the dashboard and status say it is not."""
    from autoresearch.report.html import report_html

    dead = replace(session_of(), status="running")
    assert dead.state == "not running"
    assert replace(dead, alive=True).state == "running" and session_of().state == "finished"
    page = report_html(dead, History(tuple(synthetic(3))), png=None)
    assert "· not running" in page and "· running" not in page


def test_a_discard_that_reads_better_than_the_best_says_why() -> None:
    """Printed as the session runs: 0.95 against a best of 0.98 reads like a gain; the line says
    why it was not kept. A plain discard and a keep carry no reason."""
    slow = Experiment(4, Verdict.DISCARD, 0.95, "fewer layers",
                      reason="over budget: ran 512.0 s, limit 450.0 s (budget + 150 s)")  # fmt: skip
    worse = Experiment(5, Verdict.DISCARD, 0.99, "more layers", reason="screened out: 0.99 vs best 0.98")
    kept = Experiment(6, Verdict.KEEP, 0.97, "wider", reason="better at 95%: 0.97 vs best 0.98")
    crash = Experiment(7, Verdict.CRASH, None, "typo", reason="exit code 1")
    lines = {r.id: event_line(ExperimentEvent(r, 0.98, 1.0), "minimize") for r in (slow, worse, kept, crash)}
    assert lines[4].endswith("fewer layers [over budget: ran 512.0 s, limit 450.0 s (budget + 150 s)]")
    assert lines[5].endswith("more layers") and lines[6].endswith("wider *")
    assert "-0.01 " in event_line(ExperimentEvent(kept, 0.97, 1.0, parent=0.98), "minimize")  # vs the best it beat
    assert lines[7].endswith("typo [exit code 1]")
    talky = replace(crash, reason="made no change; its output ends:\n" + "line\n" * 200)
    for line in (event_line(ExperimentEvent(talky, 0.98, 1.0), "minimize"), log_line(talky)):  # and `log`
        assert "\n" not in line and "[made no change; its output ends: line line" in line and line.endswith("...]")
    # the direction decides what reads better
    noisy = replace(worse, metric=0.95, reason="within the noise: 0.95 vs best 0.98")
    assert event_line(ExperimentEvent(noisy, 0.98, 1.0), "maximize").endswith("more layers")
    assert event_line(ExperimentEvent(noisy, 0.98, 1.0), "minimize").endswith("[within the noise: 0.95 vs best 0.98]")
    # a discard for time or a bound says so whatever its value: it was not judged on it
    assert event_line(ExperimentEvent(slow, 0.98, 1.0), "maximize").endswith("(budget + 150 s)]")
    assert log_line(slow).endswith("fewer layers [over budget: ran 512.0 s, limit 450.0 s (budget + 150 s)]")


def test_status_warns_when_the_baseline_waited_more_than_the_best() -> None:
    """A baseline timed under outside load (wall 2x its CPU time) made a 16% gain read as 62%."""
    base = Experiment(0, Verdict.BASELINE, 0.637, "baseline", metrics={"seconds": 0.637, "cpu_seconds": 0.31})
    best = Experiment(1, Verdict.KEEP, 0.2405, "a cache", metrics={"seconds": 0.2405, "cpu_seconds": 0.238})
    text = status_text(session_of(), History([base, best]))
    assert "warning: the baseline's runs took 2.1x their CPU time in wall time, the best's 1.0x" in text
    assert "`autoresearch remeasure`" in text
    threads = replace(best, metrics={"seconds": 0.2405, "cpu_seconds": 0.48})  # a best on two threads
    calm = replace(base, metrics={"seconds": 0.30, "cpu_seconds": 0.29})
    assert "warning: the baseline" not in status_text(session_of(), History([calm, threads]))
    assert "warning: the baseline" not in status_text(session_of(), History([calm, best]))
    seen = replace(base, metrics={"seconds": 0.0548, "cpu_seconds": 0.0389})  # a user's -53%, 60% of it held
    fast = replace(best, metrics={"seconds": 0.0258, "cpu_seconds": 0.0255})
    assert "warning: the baseline's runs took 1.4x" in status_text(session_of(), History([seen, fast]))
    # one loaded run of five: the mean barely moved, but sigma did (a real -11% was 'not significant')
    walls = [0.50, 0.51, 0.49, 0.746, 0.50]
    runs = tuple(Run(0, i, i, RunStatus.OK, w, metrics={"seconds": w, "cpu_seconds": 0.50 if i != 3 else 0.53})
                 for i, w in enumerate(walls))  # fmt: skip
    one = replace(base, runs=runs, metrics={"seconds": 0.549, "cpu_seconds": 0.506})
    text = status_text(session_of(), History([one, replace(best, metrics={"seconds": 0.49, "cpu_seconds": 0.48})]))
    assert "warning: run 3 of the baseline took 1.4x its CPU time in wall time, its other runs 1.0x" in text
    steady = replace(one, runs=tuple(replace(r, metrics={"seconds": 0.5, "cpu_seconds": 0.5}) for r in runs))
    assert "warning: run" not in status_text(session_of(), History([steady, best]))


def test_the_noise_line_counts_min_delta_and_says_the_naive_rule_s_margin() -> None:
    from autoresearch.config import JudgeConfig

    base = Experiment(0, Verdict.BASELINE, 1.0, "baseline", runs=tuple(
        Run(0, i, i, RunStatus.OK, 1.0 + 0.01 * i) for i in range(3)))  # fmt: skip
    history = History([base])
    assert "smallest effect detectable with 5 runs: 0.5 (sequential" in noise_text(history, JudgeConfig(min_delta=0.5))
    naive = noise_text(history, JudgeConfig(rule="naive", noise_factor=2.0))
    assert naive.endswith("a candidate must beat the best by 0.02 (naive rule)")
