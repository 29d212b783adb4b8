"""``autoresearch init``: make a folder a task, all or nothing.

Three cases, chosen from the folder:

- ``--template NAME``: a new git repository holding a built-in template, committed;
- an upstream karpathy/autoresearch checkout (``prepare.py``, ``train.py`` printing
  ``val_bpb``, ``program.md``): a task that runs it unmodified, with a brief of its own
  (``brief.md``) that keeps upstream's research guidance and drops the loop mechanics that
  our loop does itself, and warnings about what upstream's layout cannot guarantee;
- ``--bench CMD --test CMD``: a speed or memory task on the repository
  (``autoresearch.speedtask``): the tests gate, ``autoresearch measure`` is the metric;
- any other folder in a git repository: a skeleton ``autoresearch.toml`` and brief, with
  ``editable`` guessed from the folder.

Nothing is written unless everything can be: an existing file is never replaced without
``force``, and the files appear together or not at all. A folder that is not in a git
repository is refused (or gets ``git init`` with ``git=True``). The toml's ``# warning:``
lines are the task's notes; ``autoresearch status`` shows them (``task_notes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoresearch import templates
from autoresearch.config import CONFIG_NAME
from autoresearch.errors import ConfigError

BRIEF_NAME = "brief.md"  # our brief, next to upstream's program.md (which is left alone)
NOTE_PREFIX = "# warning: "


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did, for the command line to print."""

    root: Path
    kind: str  # "template" | "upstream" | "plain" | "speed"
    written: tuple[Path, ...]
    editable: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    next_steps: tuple[str, ...] = ()


def init(
    dest: Path,
    *,
    template: str | None = None,
    size: str | None = None,
    force: bool = False,
    git: bool = False,
    bench: str | None = None,
    test: str | None = None,
    metric: str = "seconds",
    same: Sequence[str] = (),
) -> InitResult:
    """Make ``dest`` a task (see the module's docstring)."""
    dest = dest.resolve()
    if template is not None:
        if bench is not None or test is not None or same:
            raise ConfigError("--bench/--test make a task of your repository; --template makes a new one")
        return _from_template(template, dest, size=size, force=force)
    if not dest.is_dir():
        raise ConfigError(f"{dest}: no such folder")
    _ensure_repository(dest, git=git)
    if bench is not None or test is not None:
        if bench is None or test is None:
            raise ConfigError("--bench and --test go together: the benchmark, and the tests it must keep passing")
        return _speed(dest, bench=bench, test=test, metric=metric, same=same, force=force)
    if is_upstream(dest):
        return _adopt_upstream(dest, force=force)
    return _plain(dest, force=force)


def task_notes(root: Path) -> list[str]:
    """The ``# warning:`` lines of a task's autoresearch.toml (written by ``init``)."""
    path = root / CONFIG_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [
        line.removeprefix(NOTE_PREFIX).strip() for line in lines if line.startswith(NOTE_PREFIX)
    ]


# --- git ---------------------------------------------------------------------------------------


def _ensure_repository(dest: Path, *, git: bool) -> None:
    inside = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=dest, capture_output=True, text=True
    )
    if inside.returncode == 0 and inside.stdout.strip() == "true":
        return
    if not git:
        raise ConfigError(
            f"{dest}: not inside a git repository; autoresearch keeps every experiment as a git "
            "commit. Run `git init` there first, or pass --git to `autoresearch init`"
        )
    done = subprocess.run(["git", "init", "-q"], cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{dest}: git init failed: {done.stderr.strip()}")


# --- writing all or nothing --------------------------------------------------------------------


def write_all(files: Mapping[Path, str], *, force: bool) -> tuple[Path, ...]:
    """Write every file or none: existing ones are refused unless ``force``; on a failure
    half way, the files already moved in are taken back (and the replaced ones restored)."""
    existing = [p for p in files if p.exists() or p.is_symlink()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise ConfigError(f"not overwriting {names}: already there (pass --force to replace)")
    staged = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged[path] = path.with_name(f".{path.name}.autoresearch-new")
            staged[path].write_text(text, encoding="utf-8")
        _move_in(staged)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return tuple(files)


def _move_in(staged: Mapping[Path, Path]) -> None:
    done: list[tuple[Path, Path | None]] = []  # (target, its backup)
    try:
        for target, tmp in staged.items():
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.autoresearch-old")
                os.replace(target, backup)
            done.append((target, backup))
            os.replace(tmp, target)
    except OSError:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
                if backup is not None:
                    os.replace(backup, target)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


# --- a template --------------------------------------------------------------------------------


def _from_template(name: str, dest: Path, *, size: str | None, force: bool) -> InitResult:
    written = templates.init_template(name, dest, size=size, force=force)
    return InitResult(
        root=dest,
        kind="template",
        written=tuple(written),
        editable=("train.py",) if (dest / "train.py").exists() else (),
        next_steps=(f"cd {dest}", "autoresearch prepare", "autoresearch run"),
    )


# --- any folder --------------------------------------------------------------------------------

_NOT_SOURCE = re.compile(r"^(setup|conftest|noxfile|test_.*|.*_test)\.py$")
_NOT_PACKAGE = {"tests", "test", "docs", "examples", "benchmarks", "scripts"}


def guess_editable(root: Path) -> tuple[str, ...]:
    """What the agent may edit, guessed from the folder: ``train.py`` when present, else the
    package's source (``src/<pkg>/`` or ``<pkg>/``), else the top-level Python files."""
    if (root / "train.py").is_file():
        return ("train.py",)
    packages = sorted(p.parent.name for p in root.glob("src/*/__init__.py"))
    if packages:
        return tuple(f"src/{name}/**/*.py" for name in packages)
    packages = sorted(
        p.parent.name for p in root.glob("*/__init__.py") if p.parent.name not in _NOT_PACKAGE
    )
    if packages:
        return tuple(f"{name}/**/*.py" for name in packages)
    return tuple(sorted(p.name for p in root.glob("*.py") if not _NOT_SOURCE.match(p.name)))


PLAIN_TOML = """\
# autoresearch task: what the agent may edit, how one experiment runs, what is measured.
# Reference: the README's "autoresearch.toml" section.

[task]
# the agent's brief; you edit it, the agent does not
instructions = {brief}
# globs the agent may change (guessed by `autoresearch init` from the folder: check them)
editable     = {editable}
protected    = []                    # files that must stay byte-identical (your harness)
context      = []                    # read-only files shown to LLM agents
setup        = ""                    # once per session, before the baseline (data, caches)
check        = ""                    # optional fast gate before each run (tests, lint)
# one experiment; it gets AUTORESEARCH_TIME_BUDGET and AUTORESEARCH_SEED
run          = {run}
evaluate     = ""                    # optional trusted step after the run; the metric is read from it
time_budget  = 300                   # seconds the run should take
timeout      = 600                   # hard kill of the run's whole process group

[metric]
name      = "score"                  # the key printed after a `---` line: `score: 0.123`
direction = "minimize"               # or "maximize"
format    = "summary"                # summary | regex | json

[judge]
rule          = "sequential"         # runs are evidence: screen, confirm on more runs, re-score keeps
baseline_runs = 5                    # the unchanged code's runs: the first noise estimate
"""

PLAIN_BRIEF = """\
# Research brief

Goal: make `score` (printed by the run) as low as possible.

- Edit only the files listed as editable in autoresearch.toml.
- Each experiment runs under a fixed time budget; a change that runs longer is discarded.
- Prefer simple changes; a small gain that adds a lot of complexity is not worth it.
- Ideas worth trying: ...
"""


def _plain(dest: Path, *, force: bool) -> InitResult:
    """A skeleton; an existing program.md is the brief as it is (never replaced)."""
    editable = guess_editable(dest)
    run = "python train.py" if editable == ("train.py",) else ""
    toml = PLAIN_TOML.format(
        brief=_toml_str("program.md"), editable=_toml_list(editable), run=_toml_str(run)
    )
    files = {dest / CONFIG_NAME: toml}
    if not (dest / "program.md").exists():
        files[dest / "program.md"] = PLAIN_BRIEF
    warnings = [] if editable else ["no Python source found: set `editable` in autoresearch.toml"]
    if not run:
        warnings.append("set `run` (the command of one experiment) in autoresearch.toml")
    return InitResult(
        root=dest,
        kind="plain",
        written=write_all(files, force=force),
        editable=editable,
        warnings=tuple(warnings),
        next_steps=(
            f"edit {CONFIG_NAME} (editable files, run command, metric) and program.md",
            f"git add {CONFIG_NAME} program.md && git commit -m 'autoresearch task'",
            "autoresearch run",
        ),
    )


def _speed(dest: Path, *, bench: str, test: str, metric: str, same: Sequence[str], force: bool) -> InitResult:
    """A speed or memory task on the repository (``autoresearch.speedtask``)."""
    from autoresearch.config import load_config
    from autoresearch.speedtask import init_bench

    files, notes = init_bench(dest, bench=bench, test=test, metric=metric, same=same)
    written = write_all(files, force=force)
    editable = load_config(dest).editable
    return InitResult(
        root=dest,
        kind="speed",
        written=written,
        editable=editable,
        warnings=tuple(notes),
        next_steps=(
            f"check `editable` and `protected` in {CONFIG_NAME} (the benchmark and tests must be protected)",
            *(() if same else (
                "no --same KEY: a run's output is not compared with the unchanged code's, so less "
                "work (a smaller size constant in the editable code) times faster; if the benchmark "
                "prints a checksum of its result, run init again with --same KEY --force",)),
            f"git add {CONFIG_NAME} program.md && git commit -m 'autoresearch speed task'",
            "autoresearch run --tag speed1 --max-hours 8   # the tuner needs UPPER_CASE constants; "
            "an LLM agent (--agent claude-code) edits any code",
        ),
    )


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


# --- an upstream karpathy/autoresearch checkout ---------------------------------------------------


def is_upstream(root: Path) -> bool:
    """The upstream layout: prepare.py, program.md, and a train.py that reports ``val_bpb``."""
    train = root / "train.py"
    if not all((root / name).is_file() for name in ("prepare.py", "program.md", "train.py")):
        return False
    try:
        return "val_bpb" in train.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


UPSTREAM_WARNINGS = (
    "the metric val_bpb is computed by train.py, the file the agent edits, so it is not a "
    "trusted measurement; `autoresearch init --template gpt DIR` makes a task whose protected "
    "harness computes it",
    "upstream's train.py ignores AUTORESEARCH_SEED (its seed is fixed): repeated runs differ "
    "by timing noise only, and the noise estimate is optimistic",
)

UPSTREAM_TOML = """\
# autoresearch task adopted from an upstream karpathy/autoresearch checkout: it runs the
# checkout unmodified. Written by `autoresearch init`; edit it as you like.
{notes}
[task]
instructions = {brief}                 # our loop's brief; upstream's program.md is left as it is
editable = ["train.py"]                   # the agent's file
protected = {protected}
context = {context}
link = [".venv"]                          # the task's virtual environment, shared by every worktree
setup = {setup}             # once per session: data and tokenizer (skips what exists)
run = {run}                 # trains for upstream's fixed 5 minutes, prints the summary
time_budget = 300                         # upstream's TIME_BUDGET (fixed in prepare.py)
timeout = 900                             # hard kill of the whole process group
sandbox = "none"                          # upstream reads its data from ~/.cache/autoresearch,
                                          # which the sandbox hides (and train.py measures itself)

[metric]
name = "val_bpb"                          # read from the `---` summary that train.py prints
direction = "minimize"
format = "summary"

[judge]
rule = "sequential"                       # screen on one run, confirm on more, re-score a keep
baseline_runs = 5                         # the baseline's runs: the first noise estimate
"""

_LOOP_HEADING = re.compile(r"setup|output|log|loop|result|never stop|forever", re.I)
_LOOP_LINE = re.compile(
    r"\bgit (commit|reset|checkout|branch)|results\.tsv|\bLOOP\b|NEVER STOP|branch|"
    r"run\.log|tee |grep |first run|baseline",
    re.I,
)

UPSTREAM_BRIEF_HEAD = """\
# Research brief

This task is upstream's autoresearch setup, driven by autoresearch's loop. The loop itself
is not your job: autoresearch branches, commits, runs `train.py` under the time budget,
reads `val_bpb` from its summary, keeps or reverts the change and logs the result. Make one
focused change to `train.py` per experiment; do not commit, reset, run the training or
write results files yourself.

The research guidance below is kept from the checkout's program.md.
"""


def upstream_brief(program: str) -> str:
    """Our brief from upstream's program.md: its research guidance, without the loop
    mechanics (setup, branches, commits, logging, the loop itself) that our loop does."""
    kept: list[str] = []
    for heading, body in _sections(program):
        if heading and _LOOP_HEADING.search(heading):
            continue
        paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
        text = "\n\n".join(p.strip() for p in paragraphs if not _LOOP_LINE.search(p))
        if text:
            kept.append(f"{heading}\n\n{text}" if heading else text)
    guidance = "\n\n".join(kept).strip()
    return UPSTREAM_BRIEF_HEAD + ("\n" + guidance + "\n" if guidance else "")


def _sections(text: str) -> list[tuple[str, str]]:
    """(``## heading``, body) pairs; the text before the first ``##`` has the heading ""."""
    out: list[tuple[str, str]] = []
    heading, body = "", list[str]()
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((heading, "\n".join(body)))
            heading, body = line.strip(), []
        elif not line.startswith("# "):  # the title: ours replaces it
            body.append(line)
    out.append((heading, "\n".join(body)))
    return out


def _runner(root: Path) -> tuple[str, list[str]]:
    """``uv run`` when uv is installed; else the checkout's venv python; else ``python``."""
    if shutil.which("uv"):
        return "uv run", []
    venv = root / ".venv" / "bin" / "python"
    if venv.exists():
        return shlex.quote(str(venv)), [f"uv not found: the runs use {venv}"]
    return "python", ["neither uv nor .venv found: the runs use `python` from PATH"]


def _adopt_upstream(dest: Path, *, force: bool) -> InitResult:
    runner, notes = _runner(dest)
    protected = [n for n in ("prepare.py", "pyproject.toml", "uv.lock") if (dest / n).exists()]
    context = [n for n in ("README.md", "prepare.py") if (dest / n).exists()]
    warnings = (*UPSTREAM_WARNINGS, *notes)
    toml = UPSTREAM_TOML.format(
        notes="".join(f"{NOTE_PREFIX}{w}\n" for w in warnings),
        brief=_toml_str(BRIEF_NAME),
        protected=_toml_list(protected),
        context=_toml_list(context),
        setup=_toml_str(f"{runner} prepare.py"),
        run=_toml_str(f"{runner} train.py"),
    )
    program = (dest / "program.md").read_text(encoding="utf-8", errors="replace")
    files = {dest / CONFIG_NAME: toml, dest / BRIEF_NAME: upstream_brief(program)}
    return InitResult(
        root=dest,
        kind="upstream",
        written=write_all(files, force=force),
        editable=("train.py",),
        warnings=warnings,
        next_steps=(
            f"read {BRIEF_NAME} (the agent's brief) and {CONFIG_NAME}",
            f"git add {CONFIG_NAME} {BRIEF_NAME} && git commit -m 'autoresearch task'",
            "autoresearch prepare   # upstream's prepare.py: data and tokenizer, once",
            "autoresearch run --agent claude-code   # or codex, aider, anthropic, openai, tuner",
        ),
    )


__all__ = [
    "BRIEF_NAME",
    "InitResult",
    "guess_editable",
    "init",
    "is_upstream",
    "task_notes",
    "upstream_brief",
    "write_all",
]
