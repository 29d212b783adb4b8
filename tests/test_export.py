"""results.tsv with upstream's statuses (its notebook finds the top hits), --verdicts, runs.json and log --json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fakes.recorded import KEPT, TAG, record_session
from fakes.session import run_cli

from autoresearch.judge import Verdict as JudgeVerdict
from autoresearch.report._data import Store, Verdict
from autoresearch.report.export import experiments_from_json, upstream_status


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_session(tmp_path_factory.mktemp("export"))


def notebook_top_hits(path: Path, metric: str) -> tuple[list[tuple[str, float]], float]:
    """Upstream's analysis steps (``read_csv(sep="\\t")``, keep rows, running best) without pandas.

    The kept rows in order; the first is the baseline; a row that beats the running best is
    a hit, by how much. Returns the hits, largest first, and the total delta (best - baseline).
    """
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    kept = [r for r in rows if r["status"] == "keep"]
    baseline = float(kept[0][metric])
    best, hits = baseline, []
    for row in kept[1:]:
        value = float(row[metric])
        if value < best:
            hits.append((row["description"], best - value))
            best = value
    return sorted(hits, key=lambda h: -h[1]), best - baseline


def test_upstream_notebook_finds_the_top_hits(recorded: Path) -> None:
    done = run_cli(recorded, "export", "--tsv", str(recorded / "results.tsv"))
    assert done.returncode == 0, done.stderr
    assert "wrote 7 experiments of session 'night'" in done.stdout
    tsv = recorded / "results.tsv"
    hits, total = notebook_top_hits(tsv, "score")
    assert [d for d, _ in hits] == [KEPT[1], KEPT[0]]  # Y 2->0 gained 8, X 1->2 gained 3
    assert [g for _, g in hits] == pytest.approx([8.0, 3.0])
    assert total == pytest.approx(-11.0)
    statuses = [line.split("\t")[3] for line in tsv.read_text().splitlines()[1:]]
    assert statuses == ["keep", "keep", "discard", "crash", "crash", "keep", "crash"]
    crash_values = [
        line.split("\t")[1] for line in tsv.read_text().splitlines()[1:] if "\tcrash\t" in line
    ]
    assert crash_values == ["0.000000"] * 3


def test_verdicts_flag_keeps_ours(recorded: Path) -> None:
    done = run_cli(recorded, "export", "--tsv", str(recorded / "ours.tsv"), "--verdicts")
    assert done.returncode == 0, done.stderr
    lines = (recorded / "ours.tsv").read_text().splitlines()
    assert lines[0] == "commit\tscore\tmemory_gb\tstatus\tdescription"
    assert [line.split("\t")[3] for line in lines[1:]] == [
        "baseline",
        "keep",
        "discard",
        "crash",
        "invalid",
        "keep",
        "crash",
    ]


def test_every_verdict_has_an_upstream_status() -> None:
    assert {str(v) for v in JudgeVerdict} <= {
        str(v) for v in Verdict
    }  # the mirror covers the judge
    for verdict in Verdict:
        if verdict is not Verdict.PENDING:
            assert upstream_status(verdict, 1.0) in ("keep", "discard", "crash")
    assert upstream_status(Verdict.DUPLICATE, None) == "crash"


def test_json_round_trips_and_log_json_prints_the_same(recorded: Path) -> None:
    done = run_cli(recorded, "export", "--json", str(recorded / "runs.json"))
    assert done.returncode == 0, done.stderr
    document = json.loads((recorded / "runs.json").read_text())
    again = experiments_from_json(document)
    assert again == Store(recorded).experiments(TAG, details=True)
    first = document["experiments"][1]
    assert first["verdict"] == "keep" and first["metric"] == 10.0 and "+X = 2.0" in first["diff"]
    assert first["runs"][0]["status"] == "ok" and first["runs"][0]["seconds"] > 0
    assert first["compute_seconds"] > 0 and first["usage"]["cost_usd"] == 0.0
    assert first["compute_cost_usd"] == pytest.approx(first["compute_seconds"] * 2.74 / 3600)
    assert document["session"]["tag"] == TAG and document["session"]["gpu_price"] == 2.74
    logged = run_cli(recorded, "log", "--json")
    assert logged.returncode == 0, logged.stderr
    assert json.loads(logged.stdout) == document


def test_a_description_with_quotes_swallows_no_rows(tmp_path: Path) -> None:
    """A description that starts with a quote opened a quoted field for upstream's reader, and
    the next description with a quote closed it: the rows between vanished into one cell."""
    from autoresearch.records import Experiment
    from autoresearch.report.export import write_tsv

    said = ['"quoted start', "plain", "crash here", 'ends with a "quote"', '"', "last"]
    rows = [Experiment(i, "discard", 1.0 + i, d, commit=f"{i:07d}") for i, d in enumerate(said)]
    write_tsv(rows, "score", tmp_path / "r.tsv")
    with (tmp_path / "r.tsv").open(newline="") as fh:
        read = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["description"].removeprefix("'") for r in read] == said


def test_tiny_and_huge_values_keep_their_digits(tmp_path: Path) -> None:
    """Six decimals printed a metric of 4e-7 as 0.000000: a gain no view could show."""
    from autoresearch.records import Experiment
    from autoresearch.report.export import tsv_text
    from autoresearch.report.text import value_text

    rows = [Experiment(0, "baseline", 4.2e-7, "b", commit="a" * 7),
            Experiment(1, "keep", 3.1e-7, "k", commit="b" * 7),
            Experiment(2, "discard", 0.123456789, "d", commit="c" * 7)]  # fmt: skip
    values = [line.split("\t")[1] for line in tsv_text(rows, "s").splitlines()[1:]]
    assert [float(v) for v in values[:2]] == [4.2e-7, 3.1e-7] and values[2] == "0.123457"
    assert (
        value_text(2.5e12) == "2.5e+12"
        and value_text(0.0) == "0.000000"
        and value_text(-0.004) == "-0.004"
    )


def test_memory_gb_is_the_gpus_or_else_the_ram_a_run_peaked_at() -> None:
    """A speed task's rows all read 0.0: its runs report peak_rss_mb, not peak_vram_mb."""
    from autoresearch.records import Experiment
    from autoresearch.report.export import tsv_text

    rows = [Experiment(0, "baseline", 1.0, "gpu", commit="a" * 7, metrics={"peak_vram_mb": 45056.0, "peak_rss_mb": 9.0}),
            Experiment(1, "keep", 0.9, "cpu", commit="b" * 7, metrics={"peak_rss_mb": 27.6}),
            Experiment(2, "crash", None, "none", commit="c" * 7)]  # fmt: skip
    assert [line.split("\t")[2] for line in tsv_text(rows, "s").splitlines()[1:]] == ["44.0", "0.027", "0.0"]


def test_json_of_another_tool_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not an autoresearch runs\.json"):
        experiments_from_json({"experiments": []})


def test_what_an_agent_or_a_run_writes_is_inert_in_every_view(tmp_path: Path) -> None:
    """Escape sequences cannot paint a fake verdict on the terminal, a NUL does not stop the
    session, '$' does not break the plot, a run's 'nan' keeps the JSON strict, and a description
    is no spreadsheet formula."""
    import sqlite3

    from conftest import write_patch_dir
    from test_cli import ar
    from test_engine import sr, toy

    fake = "\x1b[1A\x1b[2K 1 abc1234 keep 0.100000 \x1b]0;pwned\x07"
    score = ("import sys, os\nsys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
             "import params\nprint('---')\nprint(f'score: {(params.X - 3.0) ** 2:.6f}')\n"
             "print('odd: nan')\nprint('\\x1b]0;pwned\\x07 trained')\n")  # fmt: skip
    repo = toy(tmp_path, files={"score.py": score})
    patches = write_patch_dir(tmp_path / "p", {
        "01": sr("params.py", "X = 1.0", "X = 2.0", f"=HYPERLINK(1) ${{\\foo}}$ {fake}"),
        "02": sr("params.py", "Y = 2.0", "Y = 3.0", "a NUL \x00 in it"),
    })  # fmt: skip
    run = ar("run", "--tag", "t", "--agent", "replay", "--patches", str(patches), cwd=repo)
    assert run.returncode == 0, run.stderr
    for view in (ar("log", cwd=repo), ar("show", "1", cwd=repo), ar("status", cwd=repo)):
        assert view.returncode == 0 and "\x1b" not in view.stdout, view.stdout
    assert "\\x1b]0;pwned\\x07 trained" in ar("show", "1", cwd=repo).stdout  # the run's log, shown
    verdicts = sqlite3.connect(repo / ".autoresearch" / "ledger.db").execute(
        "SELECT verdict FROM experiments ORDER BY id").fetchall()
    assert [v for (v,) in verdicts] == ["baseline", "keep", "discard"]  # the NUL: just a discard
    report = ar("report", "--out", str(tmp_path / "r"), cwd=repo)
    assert report.returncode == 0, report.stderr
    exported = ar("export", "--json", str(tmp_path / "e.json"), "--tsv", str(tmp_path / "e.tsv"), cwd=repo)
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "e.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert document["experiments"][1]["runs"][0]["metrics"]["odd"] is None
    assert "\t'=HYPERLINK(1)" in (tmp_path / "e.tsv").read_text()
