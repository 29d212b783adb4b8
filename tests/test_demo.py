"""`make demo`: the toy demo runs a real tuner session and leaves the ledger, results.tsv and branch."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from autoresearch import demo
from autoresearch.config import load_config
from autoresearch.errors import ConfigError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_toy_demo_runs_a_session_and_leaves_everything_to_look_at(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    out = io.StringIO()
    assert demo.main(["--dir", str(dest), "--task", "toy", "--experiments", "4"], out=out) == 0
    text = out.getvalue()
    table = [line for line in text.splitlines() if line[:4].strip().isdigit()]
    assert [int(line.split()[0]) for line in table] == [0, 1, 2, 3, 4]  # one line per experiment
    assert table[0].split()[1] == "baseline"
    assert all(line.split()[1] in ("keep", "discard", "crash") for line in table[1:])
    assert "best loss:" in text and "on branch autoresearch/demo" in text
    assert (
        f"cd {dest}" in text and "status" in text and "git log --oneline autoresearch/demo" in text
    )

    tsv = (dest / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tloss\tmemory_gb\tstatus\tdescription"
    assert len(tsv) == 6 and tsv[1].split("\t")[3] == "keep"  # upstream's statuses: the baseline is a keep
    assert (dest / ".autoresearch" / "ledger.db").is_file()
    head = git(dest, "show", "autoresearch/demo:params.py")
    assert head.startswith("# The constants of a pretend training run.")
    assert git(dest, "status", "--porcelain") == ""  # results.tsv is ignored, the tree is clean


def test_an_earlier_demo_is_replaced_any_other_folder_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    args = ["--dir", str(dest), "--task", "toy", "--experiments", "1"]
    assert demo.main(args, out=io.StringIO()) == 0
    (dest / "left-over.txt").write_text("from the first demo")
    out = io.StringIO()
    assert demo.main(args, out=out) == 0
    assert "replaced the earlier demo" in out.getvalue()
    assert not (dest / "left-over.txt").exists()
    assert git(dest, "rev-list", "--count", "main") == "1"  # a fresh repository
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert demo.main(["--dir", str(other), "--task", "toy"], out=io.StringIO()) == 1
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert (other / "notes.txt").read_text() == "keep me"


def test_auto_picks_toy_without_the_gpt_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "gpt_ready", lambda: False)
    assert demo.choose_task("auto") == "toy"
    with pytest.raises(ConfigError, match="--task gpt"):
        demo.choose_task("gpt")
    monkeypatch.setattr(demo, "gpt_ready", lambda: True)
    assert demo.choose_task("auto") == "gpt"


def test_gpt_tuner_options_keep_to_constants_that_exist(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("MATRIX_LR = 0.04\nWEIGHT_DECAY = 0.2\nDEPTH = 4\n")
    (tmp_path / "autoresearch.toml").write_text('[task]\neditable = ["train.py"]\nrun = "python train.py"\n'
                                                '[metric]\nname = "val_bpb"\n')  # fmt: skip
    options = demo.tuner_options(load_config(tmp_path), "gpt", None, 3)
    assert options == {
        "include": ["MATRIX_LR", "WEIGHT_DECAY"],
        "params": {"WEIGHT_DECAY": "float:0.0:0.4"},
        "seed": 3,
    }


def test_the_demo_re_measures_the_best_and_the_baseline_side_by_side(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    out = io.StringIO()
    args = ["--dir", str(dest), "--task", "toy", "--experiments", "6", "--remeasure", "2"]
    assert demo.main(args, out=out) == 0
    text = out.getvalue()
    reruns = [line for line in text.splitlines() if ".. re-run" in line]
    assert [line.split(": ")[1].split()[0] for line in reruns] == ["baseline", "best", "best", "baseline"]
    assert "Re-measured on fresh seeds (loss, minimize):" in text and "best / baseline = " in text
    ratio = float(text.split("best / baseline = ")[1].split(";")[0])
    fresh = [float(line.rsplit(" ", 1)[1]) for line in reruns]
    base, best = (fresh[0] + fresh[3]) / 2, (fresh[1] + fresh[2]) / 2
    assert ratio == pytest.approx(best / base, rel=1e-3)
    assert not (dest / ".autoresearch" / "worktrees" / "demo").exists()  # cleaned up after


def test_the_demo_fails_with_a_reason_when_its_session_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "TOY_EVALUATE", "import sys\nprint('the harness is broken')\nsys.exit(3)\n")
    code = demo.main(["--dir", str(tmp_path / "demo"), "--task", "toy", "--experiments", "2"],
                     out=io.StringIO())  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "demo: failed: the baseline failed (crash" in err


def test_remeasure_without_a_measured_baseline_says_so(tmp_path: Path) -> None:
    from autoresearch.errors import AutoresearchError
    from autoresearch.remeasure import remeasure

    dest = tmp_path / "demo"
    assert demo.main(["--dir", str(dest), "--task", "toy", "--experiments", "1", "--remeasure", "0"],
                     out=io.StringIO()) == 0  # fmt: skip
    with pytest.raises(AutoresearchError, match="no session 'other'"):
        remeasure(load_config(dest), "other")
    with pytest.raises(AutoresearchError, match="at least once"):
        remeasure(load_config(dest), "demo", runs=0)


def test_the_remeasure_command_reads_the_most_recent_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoresearch.cli import main

    dest = tmp_path / "demo"
    assert demo.main(["--dir", str(dest), "--task", "toy", "--experiments", "3", "--remeasure", "0"],
                     out=io.StringIO()) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["--dir", str(dest), "remeasure", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "re-measuring session 'demo'" in out and "run 2 of 2: best" in out
    ratio = out.split("best / baseline = ")[1][:6]
    assert main(["--dir", str(dest), "status"]) == 0  # the reading is kept with the session
    assert f"re-measured: best / baseline = {ratio}" in capsys.readouterr().out
    assert main(["--dir", str(dest), "report"]) == 0
    page = next((dest / ".autoresearch" / "reports").rglob("*.html")).read_text()
    assert f"best / baseline = {ratio}" in page
    assert main(["--dir", str(dest), "run", "--tag", "demo", "--resume", "--max-experiments", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["--dir", str(dest), "status"]) == 0  # a resume keeps the reading
    assert f"re-measured: best / baseline = {ratio}" in capsys.readouterr().out


def test_the_speed_demo_runs_the_speed_template_session(tmp_path: Path) -> None:
    dest = tmp_path / "speed"
    out = io.StringIO()
    args = ["--dir", str(dest), "--task", "speed", "--experiments", "1", "--remeasure", "1"]
    assert demo.main(args, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "the speed template" in text and "Re-measured on fresh seeds (seconds, minimize):" in text
    config = load_config(dest)
    assert config.evaluate.startswith("autoresearch measure") and config.check
    assert git(dest, "status", "--porcelain") == ""
