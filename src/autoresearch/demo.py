"""``make demo``: a real session with the offline tuner on a built-in task, start to finish.

``python -m autoresearch.demo [--dir autoresearch-demo] [--task auto|toy|gpt]`` creates a
task repository in a folder (replacing an earlier demo there), runs a session through the engine (baseline, then
experiments proposed by the tuner, each committed, run, judged, kept or discarded),
prints one line per experiment as it finishes and the best result, writes
``results.tsv``, re-runs the baseline and the best side by side on fresh seeds to show
how much of the gain holds (``--remeasure N``), and leaves the ledger and the
``autoresearch/demo`` branch to look at. It exits non-zero, saying why, when the session
fails (the baseline fails, the failure stop rule fires, a signal stops it).

Tasks: ``toy`` is a small numeric program whose loss comes from its constants, with
seeded noise (``AUTORESEARCH_SEED``) and a crash region; it takes seconds. ``gpt`` is
the GPT pretraining template at its ``cpu`` size (about half an hour on 2 cores).
``speed`` is the speed template: a small text library whose benchmark's median seconds
the tuner lowers while its tests keep passing (``make demo-speed``). ``auto`` picks
``gpt`` where that template and torch are installed, else ``toy``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from autoresearch import templates
from autoresearch.agents._constants import discover
from autoresearch.agents.tuner import TunerAgent
from autoresearch.config import TaskConfig, load_config
from autoresearch.engine import Engine, ExperimentEvent, SessionOptions, SessionSummary
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.remeasure import Remeasured, remeasure
from autoresearch.report.export import write_tsv

TAG = "demo"
MARKER = "DEMO.md"  # written into every demo folder; only folders holding it are replaced
EXPERIMENTS = {"toy": 20, "gpt": 6, "speed": 12}
REMEASURE = {"toy": 3, "gpt": 3, "speed": 7}  # fresh runs of baseline and best at the end

# --- the toy task -----------------------------------------------------------------------------

TOY_PARAMS = """\
# The constants of a pretend training run. autoresearch's tuner edits this file;
# evaluate.py (protected) turns them into a loss. Lower is better.
LR = 0.01  # learning rate
WD = 0.5  # weight decay
DEPTH = 5  # number of layers
WARMUP = 0.1  # fraction of the budget spent warming up
"""

TOY_EVALUATE = '''\
"""The harness of the demo task (protected: the tuner cannot edit it).

It scores the constants in params.py like a pretend training run: a smooth loss, lowest
(1.0) at LR 0.03, WD 0.2, DEPTH 7, WARMUP 0.05, plus noise seeded by AUTORESEARCH_SEED so
repeated runs differ a little. LR * DEPTH > 0.25 diverges: the run crashes.
"""

import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import params  # noqa: E402

rng = random.Random(int(os.environ.get("AUTORESEARCH_SEED", "0")))
print(f"training with LR={params.LR} WD={params.WD} DEPTH={params.DEPTH} WARMUP={params.WARMUP}")
time.sleep(0.2)  # a pretend training step, so the live table visibly streams
if params.LR * params.DEPTH > 0.25:
    print("step 12: loss is nan (the learning rate is too high for this depth)")
    sys.exit(1)
lr, wd = math.log(params.LR / 0.03), math.log(params.WD / 0.2)
loss = 1.0 + lr**2 + 0.5 * wd**2 + 0.5 * lr * wd + 0.02 * (params.DEPTH - 7) ** 2
loss += 0.3 * math.log(params.WARMUP / 0.05) ** 2 + rng.gauss(0.0, 0.003)
print("---")
print(f"loss: {loss:.6f}")
print(f"depth: {params.DEPTH}")
'''

TOY_TOML = """\
[task]
instructions = "program.md"
editable = ["params.py"]
protected = ["evaluate.py"]
context = ["evaluate.py"]
run = "python evaluate.py"
time_budget = 5
timeout = 30

[metric]
name = "loss"
direction = "minimize"

[judge]
baseline_runs = 2   # the baseline runs twice: the noise between runs is measured

[agent.tuner]
sampler = "tpe"
"""

TOY_PROGRAM = """\
# Demo task

Lower the loss printed by `evaluate.py` by changing the constants in `params.py`.
Too high a learning rate for the depth makes the run diverge.
"""

DEMO_README = """\
# autoresearch demo

Created by `python -m autoresearch.demo` (`make demo`). A session tagged `demo` ran here:
its experiments are commits on the branch `autoresearch/demo` (kept ones) and under
`refs/autoresearch/demo/discarded/` (the rest); the ledger is `.autoresearch/ledger.db`;
`results.tsv` lists every experiment. Delete this folder when done.
"""

# --- the GPT task: which constants the demo tunes when the template has no [agent.tuner] ---

GPT_INCLUDE = ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "WEIGHT_DECAY", "WARMDOWN_RATIO")
GPT_PARAMS = {"WARMDOWN_RATIO": "float:0.1:0.9", "WEIGHT_DECAY": "float:0.0:0.4"}


def gpt_ready() -> bool:
    """The GPT template is installed with a ``cpu`` size and its task file, and torch imports."""
    if "gpt" not in templates.available() or "cpu" not in templates.presets("gpt"):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    from importlib import resources

    root = resources.files("autoresearch.templates") / "gpt"
    toml = "autoresearch.toml"
    return (root / toml).is_file() or (root / templates.PRESETS_DIR / "cpu" / toml).is_file()


def choose_task(task: str) -> str:
    if task == "auto":
        return "gpt" if gpt_ready() else "toy"
    if task == "gpt" and not gpt_ready():
        raise ConfigError("--task gpt: the GPT template or torch is not installed; use --task toy")
    return task


# --- creating the task repository --------------------------------------------------------------


def prepare_folder(dest: Path) -> bool:
    """An empty folder at ``dest``; True when an earlier demo there was replaced.

    Only a folder holding the demo's marker file is ever deleted.
    """
    if not dest.exists() or not any(dest.iterdir()):
        dest.mkdir(parents=True, exist_ok=True)
        return False
    if not (dest / MARKER).is_file():
        raise ConfigError(
            f"{dest}: exists and is not an earlier demo (no {MARKER}); choose another --dir"
        )
    shutil.rmtree(dest)
    dest.mkdir(parents=True)
    return True


def create_toy(dest: Path) -> None:
    files = {
        "params.py": TOY_PARAMS,
        "evaluate.py": TOY_EVALUATE,
        "autoresearch.toml": TOY_TOML,
        "program.md": TOY_PROGRAM,
        MARKER: DEMO_README,
        ".gitignore": "results.tsv\n",
    }
    for name, text in files.items():
        (dest / name).write_text(text, encoding="utf-8")
    _git(dest, "init", "-q")
    _git(dest, "symbolic-ref", "HEAD", "refs/heads/main")
    _commit(dest, "demo task: params.py (tuned) and evaluate.py (harness)")


def create_gpt(dest: Path) -> None:
    create_template(dest, "gpt", size="cpu")


def create_speed(dest: Path) -> None:
    create_template(dest, "speed")


def create_template(dest: Path, name: str, size: str | None = None) -> None:
    templates.init_template(name, dest, size=size, force=True)
    (dest / MARKER).write_text(DEMO_README, encoding="utf-8")
    ignore = dest / ".gitignore"
    old = ignore.read_text(encoding="utf-8") if ignore.exists() else ""
    ignore.write_text(old + ("" if old.endswith("\n") or not old else "\n") + "results.tsv\n")
    _commit(dest, "demo: README and .gitignore")


def _git(dest: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise AutoresearchError(f"git {' '.join(args)} in {dest} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit(dest: Path, message: str) -> None:
    _git(dest, "add", "-A")
    identity = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]
    has_identity = (
        subprocess.run(["git", "config", "user.email"], cwd=dest, capture_output=True).returncode
        == 0
    )
    _git(dest, *([] if has_identity else identity), "commit", "-q", "-m", message)


# --- the session ---------------------------------------------------------------------------------


def tuner_options(config: TaskConfig, task: str, sampler: str | None, seed: int) -> dict[str, Any]:
    """The task's ``[agent.tuner]`` table; for GPT without one, a few learning-rate constants."""
    options = dict(config.agent_options("tuner"))
    if task == "gpt" and not options:
        names = {
            c.name
            for path in _editable_files(config)
            for c in discover(path.name, path.read_text())
        }
        options["include"] = [n for n in GPT_INCLUDE if n in names]
        options["params"] = {k: v for k, v in GPT_PARAMS.items() if k in names}
    if sampler:
        options["sampler"] = sampler
    options["seed"] = seed
    return options


def _editable_files(config: TaskConfig) -> list[Path]:
    return sorted(
        {p for pattern in config.editable for p in config.root.glob(pattern) if p.suffix == ".py"}
    )


def run_session(
    dest: Path, task: str, experiments: int, seed: int, sampler: str | None, out: TextIO
) -> tuple[SessionSummary, str]:
    """Run the demo session in ``dest``; print the live table to ``out``.

    Returns the summary and, when the baseline failed, why.
    """
    from autoresearch.report import text as views

    config = load_config(dest)
    agent = TunerAgent(**tuner_options(config, task, sampler, seed))
    direction = config.metric.direction

    def on_event(event: ExperimentEvent) -> None:
        print(views.event_line(event, direction), file=out, flush=True)

    def on_message(text: str) -> None:
        print(f"  .. {text}", file=out, flush=True)

    options = SessionOptions(tag=TAG, max_experiments=experiments, seed=seed)
    engine = Engine(config, agent, options=options, on_event=on_event, on_message=on_message)
    print(views.EVENT_HEADER.format(metric=config.metric.name), file=out, flush=True)
    summary = engine.run()
    rows = engine.ledger.experiments(engine.session)
    write_tsv(rows, config.metric.name, dest / "results.tsv")
    print("", file=out)
    print(views.summary_text(summary, config.metric.name), file=out)
    return summary, engine.baseline_failure() if summary.baseline_metric is None else ""


def failure(summary: SessionSummary, baseline_failure: str) -> str:
    """Why the demo's session failed ("" when it did not)."""
    if summary.signal:
        return f"the session was stopped by signal {summary.signal}"
    if baseline_failure:
        return baseline_failure
    if "in a row" in summary.stop_reason:  # the failure stop rule: the task is broken
        return f"the session stopped early: {summary.stop_reason}"
    return ""


def check_gain(config: TaskConfig, runs: int, seed: int, out: TextIO) -> Remeasured:
    """The best commit and the baseline re-run side by side on fresh seeds; printed."""
    print(f"\ndemo: re-measuring the baseline and the best, {runs} fresh runs each, interleaved",
          file=out, flush=True)  # fmt: skip

    def on_run(name: str, index: int, value: float | None) -> None:
        shown = "failed" if value is None else f"{value:.6g}"
        print(f"  .. re-run {index + 1} of {2 * runs}: {name} {shown}", file=out, flush=True)

    result = remeasure(config, TAG, runs=runs, seed=seed + 1, on_run=on_run)
    print(result.text(), file=out)
    return result


def _cli() -> str:
    """How to call the CLI from here: on PATH, the venv's script, or ``python -m``."""
    if shutil.which("autoresearch"):
        return "autoresearch"
    beside = Path(sys.executable).parent / "autoresearch"
    return str(beside) if beside.is_file() else f"{sys.executable} -m autoresearch"


def next_steps(dest: Path, summary: SessionSummary) -> str:
    """The commands that show what the session did, each with what it shows."""
    cli = _cli()
    start = _git(dest, "rev-parse", "--abbrev-ref", "HEAD")
    steps = [
        (f"cd {dest}", ""),
        (f"{cli} status", "best result, counts per verdict, last experiments"),
        (f"{cli} log", "one line per experiment"),
        (f"{cli} show 1", "one experiment: rationale, diff, runs, log tail"),
        ("cat results.tsv", "upstream's columns, for analysis notebooks"),
        (f"git log --oneline {summary.branch}", "the kept experiments, one commit each"),
        (f"git diff {start} {summary.branch}", "what the session changed in the end"),
        (f"git for-each-ref refs/autoresearch/{TAG}/discarded", "every discarded candidate"),
        (
            "sqlite3 .autoresearch/ledger.db 'select id, verdict, metric, description from experiments'",
            "",
        ),
        (f"{cli} run --tag {TAG} --resume --max-experiments 40", "carry on where it stopped"),
    ]
    width = max(len(command) for command, note in steps if note)
    lines = ["", "Look around:"]
    lines += [
        f"  {command:<{width}}  # {note}" if note else f"  {command}" for command, note in steps
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("autoresearch-demo"),
        help="folder to create (default: ./autoresearch-demo)",
    )
    parser.add_argument(
        "--task",
        choices=("auto", "toy", "gpt", "speed"),
        default="auto",
        help="which built-in task (default: auto)",
    )
    parser.add_argument(
        "--experiments",
        type=int,
        help=f"experiments after the baseline (default: toy {EXPERIMENTS['toy']}, gpt {EXPERIMENTS['gpt']})",
    )
    parser.add_argument(
        "--sampler",
        choices=("tpe", "random", "cmaes"),
        help="the tuner's Optuna sampler (default: tpe)",
    )
    parser.add_argument("--seed", type=int, default=0, help="session seed (default: 0)")
    parser.add_argument(
        "--remeasure",
        type=int,
        metavar="N",
        help="at the end, re-run the baseline and the best N times each on fresh seeds "
        "(default: 3, speed 7; 0 skips)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    try:
        return _demo(args, out)
    except AutoresearchError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    task = choose_task(args.task)
    dest = args.dir.resolve()
    experiments = args.experiments if args.experiments is not None else EXPERIMENTS[task]
    if prepare_folder(dest):
        print(f"demo: replaced the earlier demo in {dest}", file=out)
    what = {"gpt": "the GPT template (cpu size; about half an hour on 2 cores)",
            "toy": "a toy numeric task",
            "speed": "the speed template (a text library to make faster; a few minutes)"}[task]  # fmt: skip
    print(f"demo: {what} in {dest}; the offline tuner proposes {experiments} experiments", file=out)
    {"gpt": create_gpt, "toy": create_toy, "speed": create_speed}[task](dest)
    summary, baseline_failure = run_session(dest, task, experiments, args.seed, args.sampler, out)
    print(f"results.tsv: {dest / 'results.tsv'}", file=out)
    why = failure(summary, baseline_failure)
    if why:
        print(f"demo: failed: {why}", file=sys.stderr)
        return 128 + summary.signal if summary.signal else 1
    runs = REMEASURE[task] if args.remeasure is None else args.remeasure
    if runs:
        result = check_gain(load_config(dest), runs, args.seed, out)
        if result.ratio is None and not result.nothing_kept:
            print("demo: failed: the re-measure runs produced no metric", file=sys.stderr)
            return 1
    print(next_steps(dest, summary), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
