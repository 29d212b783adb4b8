"""The command line as a user runs it: init, run, status, log, show, export, prepare; errors and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import git, make_repo, running, write_patch_dir
from test_engine import PATCHES, toy


def ar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True
    )


def test_run_then_inspect(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(
        tmp_path / "p", {k: PATCHES[k] for k in ("01-improve", "02-worse", "05-outside")}
    )
    done = ar("run", "--tag", "nov26", "--agent", "replay", "--patches", str(patches), cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "   1  keep" in done.stdout and "X 1 -> 2 *" in done.stdout
    assert "best score: 10.000000 (-23.08% vs baseline 13.000000)" in done.stdout

    status = ar("status", cwd=repo).stdout
    assert "session nov26 (branch autoresearch/nov26, agent replay" in status
    assert "best score: 10.000000 (experiment 1" in status
    assert "3 experiments (+ baseline): baseline 1, keep 1, discard 1, invalid 1" in status

    log = ar("log", "--tag", "nov26", cwd=repo).stdout.splitlines()
    assert len(log) == 5 and "discard" in log[3] and "edit the ruler [score.py: protected" in log[4]

    show = ar("show", "1", cwd=repo).stdout
    assert (
        "experiment 1 of session nov26: keep" in show
        and "+X = 2.0" in show
        and "score: 10.000000" in show
    )

    assert ar("export", "--tsv", "out.tsv", cwd=repo).returncode == 0
    assert (repo / "out.tsv").read_text().splitlines()[1].split("\t")[3] == "keep"  # upstream statuses
    assert git(repo, "status", "--porcelain") == "?? out.tsv"

    toml = repo / "autoresearch.toml"  # being edited: the views still read the ledger
    toml.write_text(toml.read_text().replace("timeout = 20", 'timeout = "x"'))
    for command in (("status",), ("log",), ("show", "1"), ("report",)):
        done = ar(*command, cwd=repo)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stderr.startswith("warning: ") and "[task] timeout: found 'x'" in done.stderr
    assert "best score: 10.000000 (experiment 1" in ar("status", cwd=repo).stdout
    assert ar("run", "--tag", "again", "--agent", "replay", "--patches", str(patches), cwd=repo).returncode == 1


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    (repo / "autoresearch.toml").write_text(
        '[task]\neditable = ["a.py"]\nrun = "x"\ntime_budget = "soon"\n'
    )
    done = ar("run", "--tag", "x", "--agent", "replay", "--patches", ".", cwd=repo)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "[task] time_budget: found 'soon'" in done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "Traceback" in ar("--debug", "run", "--agent", "replay", "--patches", ".", cwd=repo).stderr
    )
    assert ar("run", "--agent", "nope", cwd=repo).returncode == 2
    assert ar("status", cwd=tmp_path).returncode == 1


def test_a_typo_in_another_agents_table_and_an_uncommitted_brief_are_warned_of(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text() + '\n[agent.command]\ncmdd = "claude -p"\n')
    git(repo, "commit", "-qam", "a table for later")
    git(repo, "rm", "-q", "--cached", "program.md")
    git(repo, "commit", "-qm", "the brief, untracked")
    patches = write_patch_dir(tmp_path / "p", {k: PATCHES[k] for k in ("01-improve",)})
    done = ar("run", "--tag", "w", "--agent", "replay", "--patches", str(patches), cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "[agent.command] unknown key 'cmdd'; allowed: cmd," in done.stderr
    assert "warning: program.md is not committed" in done.stderr


@pytest.mark.parametrize(("gpus", "error"), [("abc,,x", "'abc' is not a device"), ("0,", "'' is not a device"),
                                             ("0,1,0", "device 0 is named twice")])  # fmt: skip
def test_a_bad_gpus_list_is_refused_before_anything_runs(tmp_path: Path, gpus: str, error: str) -> None:
    repo = toy(tmp_path)
    done = ar("run", "--tag", "g", "--agent", "replay", "--patches", ".", "--gpus", gpus, cwd=repo)
    assert done.returncode == 1 and error in done.stderr, done.stderr
    assert not (repo / ".autoresearch" / "ledger.db").exists()


def test_flag_for_another_agent_is_refused(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    done = ar("run", "--agent", "replay", "--patches", ".", "--model", "x", cwd=repo)
    assert done.returncode == 1 and "--model applies to --agent anthropic / openai" in done.stderr
    done = ar("run", "--agent", "replay", cwd=repo)
    assert done.returncode == 1 and "needs --patches" in done.stderr


def test_a_refused_session_prints_no_table(tmp_path: Path) -> None:
    """The experiments' header comes with the first row, not before the refusal's one line."""
    repo = toy(tmp_path)
    (repo / "params.py").write_text((repo / "params.py").read_text() + "# uncommitted\n")
    done = ar("run", "--agent", "replay", "--patches", ".", cwd=repo)
    assert done.returncode == 1 and "uncommitted" in done.stderr, done.stderr
    assert "verdict" not in done.stdout + done.stderr


def test_init_writes_a_valid_skeleton(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mine", {"train.py": "print('---'); print('score: 1')\n"})
    done = ar("init", cwd=repo)
    assert done.returncode == 0, done.stderr
    from autoresearch.config import load_config

    config = load_config(repo)
    assert config.editable == ("train.py",) and config.metric.name == "score"
    again = ar("init", cwd=repo)
    assert again.returncode == 1 and "already there" in again.stderr


def test_prepare_runs_the_setup_step(tmp_path: Path) -> None:
    repo = toy(tmp_path, task='setup = "echo $AUTORESEARCH_TASK_DIR > prepared.txt"')
    assert ar("prepare", cwd=repo).returncode == 0
    assert (repo / "prepared.txt").read_text().strip() == str(repo.resolve())


def start_in_first_experiment(repo: Path, patches: Path, tag: str) -> subprocess.Popen[str]:
    """Start `autoresearch run` and return once experiment 1's run has started."""
    command = [
        sys.executable,
        "-m",
        "autoresearch",
        "run",
        "--tag",
        tag,
        "--agent",
        "replay",
        "--patches",
        str(patches),
    ]
    proc = subprocess.Popen(
        command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = repo / ".autoresearch" / "logs" / tag / "0001-0.log"
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(
    ("sig", "name", "code"),
    [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143), (signal.SIGHUP, "SIGHUP", 129)],
)
def test_a_signal_finishes_the_experiment_then_stops(tmp_path: Path, sig: int, name: str,
                                                     code: int) -> None:  # fmt: skip
    repo = toy(tmp_path)
    slow = "# slow\nparams.py\n<<<<<<< SEARCH\nY = 2.0\n=======\nY = 2.0\nimport time\ntime.sleep(2)\n>>>>>>> REPLACE\n"
    patches = write_patch_dir(tmp_path / "p", {"01": slow, "02": PATCHES["01-improve"]})
    proc = start_in_first_experiment(repo, patches, "c")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"{name}: finishing the current experiment" in err
    assert f"stopped: interrupted ({name})" in out
    log_lines = ar("log", cwd=repo).stdout.splitlines()
    assert len(log_lines) == 3 and "discard" in log_lines[2]  # finished and recorded; 02 never ran
    assert "pending" not in ar("log", cwd=repo).stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_kills_the_run_and_records_it(tmp_path: Path, sig: int) -> None:
    repo = toy(tmp_path, task='sandbox = "none"')  # the run writes its host pid outside its worktree
    pidfile = tmp_path / "run.pid"
    hang = ("# hang\nparams.py\n<<<<<<< SEARCH\nY = 2.0\n=======\nY = 2.0\nimport os, time\n"
            f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n>>>>>>> REPLACE\n")  # fmt: skip
    patches = write_patch_dir(tmp_path / "p", {"01": hang})
    proc = start_in_first_experiment(repo, patches, "k")
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    time.sleep(0.3)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert "killing the running steps" in err
    assert "interrupted" in ar("log", cwd=repo).stdout.splitlines()[2]
    assert "run step killed: the session stopped it (a second signal)" in ar("show", "1", cwd=repo).stdout
    run_pid = int(pidfile.read_text())
    assert not Path(f"/proc/{run_pid}").exists() or "Z" in Path(f"/proc/{run_pid}/stat").read_text().split()[2]


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_a_signal_while_the_coding_agent_works_stops_the_session_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    """The agent's CLI would work for a minute: the proposal would never run, so the signal
    kills the CLI's processes, records the proposal interrupted and stops at once."""
    repo = toy(tmp_path)
    (tmp_path / "notes").mkdir()
    pidfile = tmp_path / "notes" / "cli.pid"  # outside the checkout: writable for the CLI
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text() + f'\n[agent.command]\nwritable = ["{pidfile.parent}"]\n')
    git(repo, "commit", "-qam", "the CLI notes its pid")
    token = f"cli-sleeps-{os.getpid()}-{time.monotonic_ns()}"
    cmd = f"echo $$ > {pidfile}; exec {sys.executable} -c 'import time; time.sleep(120)' {token}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "run", "--tag", "a", "--agent", "command", "--cmd", cmd],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(pidfile)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # the CLI alone would take 120 s
    assert proc.returncode == 143, err
    assert "stopped: interrupted (SIGTERM)" in out
    assert not running(token)
    log = ar("log", "--tag", "a", cwd=repo).stdout
    assert "interrupted" in log and "pending" not in log
    show = ar("show", "1", "--tag", "a", cwd=repo).stdout
    assert "stopped while the agent was proposing" in show


def test_a_second_signal_while_a_keep_is_re_scored_records_it_interrupted(tmp_path: Path) -> None:
    """The keep's fresh runs are cut short: it is not recorded as a keep on its one selecting
    run, and the branch stays where it was."""
    score = (
        "import os, random, sys, time\n"
        "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
        "import params\n"
        "if os.environ['AUTORESEARCH_EXPERIMENT'] != '0' and os.environ['AUTORESEARCH_RUN'] != '0':\n"
        "    time.sleep(120)  # the keep's fresh runs\n"
        "noise = random.Random(int(os.environ['AUTORESEARCH_SEED'])).gauss(0, 0.01)\n"
        "print('---')\n"
        "print(f'score: {(params.X - 3.0) ** 2 + (params.Y + 1.0) ** 2 + noise:.6f}')\n"
    )
    repo = toy(tmp_path, extra="baseline_runs = 2\n", files={"score.py": score})
    patches = write_patch_dir(tmp_path / "p", {"01": PATCHES["01-improve"]})
    proc = start_in_first_experiment(repo, patches, "r")
    wait_for(repo / ".autoresearch" / "logs" / "r" / "0001-1.log")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    rows = ar("log", "--tag", "r", cwd=repo).stdout.splitlines()
    assert rows[2].split()[2] == "interrupted", rows
    assert git(repo, "rev-parse", "autoresearch/r") == git(repo, "rev-parse", "main")


def test_resume_carries_over_the_agent_and_its_flags(tmp_path: Path) -> None:
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {k: PATCHES[k] for k in ("01-improve", "02-worse")})
    first = ar(
        "run",
        "--tag",
        "r",
        "--agent",
        "replay",
        "--patches",
        str(patches),
        "--max-experiments",
        "1",
        "--slots",
        "2",
        cwd=repo,
    )
    assert first.returncode == 0, first.stderr
    kept = ar("run", "--tag", "r", "--resume", cwd=repo)  # the session's --max-experiments 1 holds
    assert kept.returncode == 0 and "reached --max-experiments 1" in kept.stdout, kept.stderr
    again = ar("run", "--tag", "r", "--resume", "--max-experiments", "5", cwd=repo)
    assert again.returncode == 0, again.stderr
    assert "all 2 patches" in again.stdout
    assert "2 slots" in again.stdout + again.stderr  # --slots 2 carried over, like the agent's flags
    gpus = ar("run", "--tag", "r", "--resume", "--gpus", "0", "--no-share-cpus", cwd=repo)  # slots anew
    assert gpus.returncode == 0, gpus.stderr
    assert [line.split()[2] for line in ar("log", cwd=repo).stdout.splitlines()[1:]] == [
        "baseline",
        "keep",
        "discard",
    ]


def test_an_agent_table_error_names_the_file_the_key_and_the_value(tmp_path: Path) -> None:
    repo = toy(tmp_path, extra="\n[agent.command]\ncmd = 5\n\n[agent.tuner]\nincldue = ['X']\n")
    command = ar("run", "--tag", "a", "--agent", "command", cwd=repo)
    assert command.returncode == 1
    toml = str(repo / "autoresearch.toml")
    assert f"{toml}: [agent.command] cmd: found 5, expected one shell command line" in command.stderr
    tuner = ar("run", "--tag", "b", "--agent", "tuner", cwd=repo)
    assert tuner.returncode == 1 and f"{toml}: [agent.tuner] unknown key 'incldue'" in tuner.stderr
    bare = toy(tmp_path / "bare")
    missing = ar("run", "--tag", "c", "--agent", "command", cwd=bare)
    assert missing.returncode == 1 and "--cmd is missing or empty" in missing.stderr
    assert "Traceback" not in command.stderr + tuner.stderr + missing.stderr


def test_init_from_a_template_names_prepare_only_where_the_task_has_a_setup(tmp_path: Path) -> None:
    speed = ar("init", "--template", "speed", str(tmp_path / "speed"), cwd=tmp_path)
    assert speed.returncode == 0, speed.stderr
    assert "next: cd " in speed.stdout and "autoresearch prepare" not in speed.stdout
    gpt = ar("init", "--template", "gpt", "--size", "cpu", str(tmp_path / "gpt"), cwd=tmp_path)
    assert gpt.returncode == 0, gpt.stderr
    assert "&& autoresearch prepare && autoresearch run --tag" in gpt.stdout


def test_remeasure_with_nothing_kept_runs_nothing_and_says_so(tmp_path: Path) -> None:
    """It re-ran the unchanged code 2N times to report that noise was noise."""
    repo = toy(tmp_path)
    patches = write_patch_dir(tmp_path / "p", {"02-worse": PATCHES["02-worse"]})
    assert ar("run", "--tag", "n", "--agent", "replay", "--patches", str(patches), cwd=repo).returncode == 0
    done = ar("remeasure", "--runs", "2", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "Nothing to re-measure (score): nothing was kept" in done.stdout and "run 1 of" not in done.stdout
