"""``autoresearch init --bench CMD --test CMD``: a speed or memory task on any repository.

The task it writes: the tests are the ``check`` (a failing test is a crash whose reason
names it), ``autoresearch measure`` on the committed benchmark is the trusted ``evaluate``
(there is no separate run step), the repository's source files are ``editable``, the
benchmark and the tests are ``protected``, a constraint keeps memory from growing for
speed, and the sequential judge accounts for timing noise.
"""

from __future__ import annotations

import ast
import contextlib
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from autoresearch.config import CONFIG_NAME
from autoresearch.errors import ConfigError
from autoresearch.init import _toml_list, _toml_str

METRICS = ("seconds", "cpu_seconds", "peak_rss_mb", "alloc_peak_mb")
_TEST_FILE = re.compile(r"(^|/)(tests?|testing)/|(^|/)test_[^/]*\.py$|_test\.py$|(^|/)conftest\.py$")
_NOT_SOURCE = re.compile(r"(^|/)(setup|noxfile|tasks|fabfile|manage)\.py$|(^|/)(docs?|examples?|bench(marks?)?|scripts?)/")
_SHELL = set("|&;<>()$`*?")

SPEED_TOML = """\
# autoresearch speed task: make the code {goal} without changing what it does.
# Written by `autoresearch init --bench ... --test ...`; edit it as you like.

[task]
instructions = "program.md"
# the source the agent may change (guessed from the repository's tracked files: check them)
editable     = {editable}
# the benchmark and the tests stay byte-identical: the agent cannot change the ruler
protected    = {protected}
context      = {context}
check        = {check}   # a failing test is a crash; its name is in the reason
# the trusted measurement, on a clean checkout of the commit: {repeat} timed runs after one warm-up
evaluate     = {evaluate}
{reference}timeout      = 900                   # hard kill of a step's whole process group
# a candidate is stopped, over budget, once its steps take twice the baseline's (+10 s at least)
budget_allowance = "100%"

[metric]
name        = "{metric}"              # from measure: seconds, cpu_seconds, peak_rss_mb{alloc_note}
direction   = "minimize"
format      = "summary"
constraints = {constraints}

[judge]
rule          = "sequential"         # timing is noisy: screen, confirm on more runs, re-score keeps
baseline_runs = 5
max_runs      = 5
"""

SPEED_BRIEF = """\
# Research brief: make it {goal}

The metric is `{metric}` of the benchmark `{bench}`, measured by `autoresearch measure`
({what}); lower is better. Every experiment must keep the test suite (`{test}`) passing:
a failing test discards the change, with the failing test's name in the reason.

- Change only the editable source files. The benchmark and the tests are protected: an
  edit to them is refused.
- Keep behaviour identical: same outputs, same errors, same public API. A faster wrong
  answer is not a result.
- Good directions: a better algorithm or data structure, less work per item, avoiding
  repeated computation (caching, hoisting), fewer allocations, faster built-ins.
- One idea per experiment, described in a sentence, so the history says what worked.
- Timing is noisy: a change worth less than the noise cannot be kept.{memory}{same}
"""


def init_bench(dest: Path, *, bench: str, test: str, metric: str = "seconds",
               repeat: int = 5, same: Sequence[str] = ()) -> tuple[dict[Path, str], list[str]]:  # fmt: skip
    """The files of a speed task for the repository at ``dest`` (not written yet), and what
    the user should know about the guess (modules protected as the benchmark's workload)."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: one of {', '.join(METRICS)}")
    if not bench.strip():
        raise ConfigError("--bench: give the command of the benchmark, e.g. 'python bench.py'")
    if not test.strip():
        raise ConfigError("--test: give the test command, e.g. 'python -m pytest -q'")
    tracked = _tracked(dest)
    bench_files = _files_named(dest, bench)
    test_files = _files_named(dest, test)
    workload = workload_modules(dest, tracked, bench_files, test_files)
    helpers = helper_modules(dest, tracked, bench_files, test_files)
    protected = sorted({*bench_files, *test_files, *_test_globs(tracked), *workload, *helpers})
    editable = guess_source(tracked, {*bench_files, *workload, *helpers})
    if not editable:
        raise ConfigError(f"{dest}: no tracked Python source outside the tests and the benchmark; "
                          "commit the code first, or write autoresearch.toml by hand")  # fmt: skip
    command = bench if not (_SHELL & set(bench)) else shlex.join(["sh", "-c", bench])
    bad = [key for key in same if not re.fullmatch(r"[A-Za-z_][\w.]*", key)]
    if bad:
        raise ConfigError(f"--same {bad[0]}: a key the benchmark prints in its summary block (letters, digits, '_', '.')")
    flags = f"--repeat {repeat} --warmup 1" + (" --allocations" if metric == "alloc_peak_mb" else "")
    flags += "".join(f" --same {key}" for key in same)
    constraints = guards(metric)
    goal = "faster" if metric in ("seconds", "cpu_seconds") else "use less memory"
    toml = SPEED_TOML.format(
        goal=goal, editable=_toml_list(editable), protected=_toml_list(protected),
        context=_toml_list(bench_files), check=_toml_str(test), repeat=repeat,
        evaluate=_toml_str(f"autoresearch measure {flags} -- {command}"), metric=metric,
        alloc_note=", alloc_peak_mb" if metric == "alloc_peak_mb" else "",
        constraints=_toml_list(constraints),
        reference='reference    = "baseline"            # --same: every run\'s output as the baseline\'s\n'
        if same else "",
    )  # fmt: skip
    files = {dest / CONFIG_NAME: toml}
    if not (dest / "program.md").exists():
        what = {"seconds": "the median wall time of a run", "cpu_seconds": "the median CPU time",
                "peak_rss_mb": "the peak resident memory",
                "alloc_peak_mb": "the peak of memory Python allocated"}[metric]  # fmt: skip
        memory = "".join(GUARD_TEXT[c] for c in constraints)
        keys = ", ".join(f"`{key}`" for key in same)
        checked = (f"\n- Every run of the benchmark gets a secret seed (`AUTORESEARCH_SEED`) and must print "
                   f"the same {keys} as the original code does on it: a different output is a crash."
                   if same else "")  # fmt: skip
        files[dest / "program.md"] = SPEED_BRIEF.format(goal=goal, metric=metric, bench=bench, test=test,
                                                        what=what, memory=memory, same=checked)  # fmt: skip
    notes = [f"protected {path}: the benchmark imports it and the tests do not, so it is taken for the "
             "benchmark's workload (sizes, repeat counts); if it is code to speed up, make it editable"
             for path in workload]  # fmt: skip
    notes += [f"protected {path}: the tests import it and the benchmark does not, so it is taken for the "
              "tests' own code (a reference they check the library against)" for path in helpers]
    return files, notes


def workload_modules(dest: Path, tracked: Sequence[str], bench_files: Sequence[str],
                     test_files: Sequence[str]) -> list[str]:  # fmt: skip
    """The repository's modules the benchmark's Python files import and no test imports:
    ``workloads.py`` with ``REPEAT = 20`` beside the library was editable, and a session kept
    ``REPEAT = 1`` at -53% (its checksum did not count the passes)."""
    bench = [b for b in bench_files if b.endswith(".py")]
    return _imported_only_by(dest, tracked, bench, _test_sources(tracked, test_files), exclude=bench_files)


def helper_modules(dest: Path, tracked: Sequence[str], bench_files: Sequence[str],
                   test_files: Sequence[str]) -> list[str]:  # fmt: skip
    """The repository's modules the tests import and the benchmark does not: the tests' own
    reference code (python-slugify's ``tools/``), which an edit could bend to the library's
    answers. Nothing when the benchmark imports nothing of the repository (it may run the
    library as a program): the two could not be told apart."""
    bench = [b for b in bench_files if b.endswith(".py")]
    if not _imported_only_by(dest, tracked, bench, [], exclude=()):
        return []
    tests = _test_sources(tracked, test_files)
    return _imported_only_by(dest, tracked, tests, bench, exclude=tests)


def _test_sources(tracked: Sequence[str], test_files: Sequence[str]) -> list[str]:
    folders = tuple(f.removesuffix("/**") + "/" for f in test_files if f.endswith("/**"))
    return [p for p in tracked if p.endswith(".py") and (_TEST_FILE.search(p) or p.startswith(folders))]


def _imported_only_by(dest: Path, tracked: Sequence[str], importers: Sequence[str], others: Sequence[str],
                      *, exclude: Sequence[str]) -> list[str]:  # fmt: skip
    """The repository's module files ``importers`` import where nothing of the same package is
    imported by ``others`` (a package the others import is theirs too, all of it)."""
    seen = {name for path in others for name in _imports(dest / path)}
    seen |= {name.rsplit(".", i)[0] for name in seen for i in range(1, name.count(".") + 1)}  # a.b: a
    out: list[str] = []
    for script in importers:
        here = script.rsplit("/", 1)[0] + "/" if "/" in script else ""
        for name in _imports(dest / script):
            parts = name.split(".")
            if any(".".join(parts[:i]) in seen for i in range(1, len(parts) + 1)):
                continue
            base = name.replace(".", "/")
            for candidate in (f"{here}{base}.py", f"{base}.py", f"src/{base}.py", f"{base}/__init__.py"):
                if candidate in tracked and candidate not in exclude and not _TEST_FILE.search(candidate):
                    out.append(candidate)
                    break
    return sorted(set(out))


def _imports(path: Path) -> set[str]:
    """The absolute module names a Python file imports (``from a import b``: ``a`` and ``a.b``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


RSS_GUARD, TIME_GUARD = "peak_rss_mb <= 1.25 * best", "seconds <= 1.25 * best"
GUARD_TEXT = {
    RSS_GUARD: "\n- Memory may not grow for speed: peak RSS above 1.25x the best's is discarded.",
    TIME_GUARD: "\n- Speed may not suffer for memory: a run slower than 1.25x the best's is discarded.",
}


def guards(metric: str) -> list[str]:
    """The constraints that keep a gain on ``metric`` from being paid for in the other kind:
    memory for speed, speed for memory (a memory task kept a 2x slowdown as a gain)."""
    if metric in ("seconds", "cpu_seconds"):
        return [RSS_GUARD]
    return [TIME_GUARD] if metric == "peak_rss_mb" else [RSS_GUARD, TIME_GUARD]


def guess_source(tracked: list[str], exclude: set[str]) -> list[str]:
    """One glob per folder holding tracked Python source (tests, benchmark and tooling left out)."""
    globs = set()
    for path in tracked:
        if not path.endswith(".py") or path in exclude or _TEST_FILE.search(path) or _NOT_SOURCE.search(path):
            continue
        globs.add(f"{path.rsplit('/', 1)[0]}/*.py" if "/" in path else path)  # a top-level file by name
    return sorted(globs)


def _test_globs(tracked: list[str]) -> list[str]:
    found = set()
    for path in tracked:
        if path.endswith(".py") and _TEST_FILE.search(path):
            top = path.split("/")[0]
            found.add(f"{top}/**" if top in ("test", "tests", "testing") else path)
    return sorted(found)


def _tracked(dest: Path) -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{dest}: git ls-files failed: {done.stderr.strip()}")
    return [p for p in done.stdout.split("\0") if p]


def _files_named(dest: Path, command: str, depth: int = 0) -> list[str]:
    """The files and folders of the repository a command names: its script, its test folder,
    the module of ``-m``, and what a script that is not Python names in turn (``./bench.sh``
    running ``python run_bench.py``: the benchmark the agent must not shrink)."""
    try:
        words = shlex.split(command, comments=depth > 0)
    except ValueError as exc:
        raise ConfigError(f"{command!r}: {exc}") from exc
    out: list[str] = []
    for before, word in zip(["", *words], words, strict=False):
        if before == "-m":
            word = _module_file(dest, word)
        path = dest / word
        if not word or word.startswith("-") or ".." in Path(word).parts or not path.exists() or path == dest:
            continue
        if not path.resolve().is_relative_to(dest.resolve()) or (depth and (path.is_dir() or before in _CD)):
            continue  # outside (/dev/null); in a script only files: `cd src` would protect the source
        rel = path.resolve().relative_to(dest.resolve()).as_posix()
        out.append(f"{rel}/**" if path.is_dir() else rel)
        if path.is_file() and path.suffix != ".py" and depth < 2 and path.stat().st_size <= 65536:
            with contextlib.suppress(UnicodeDecodeError, ConfigError, ValueError):
                for line in path.read_text(encoding="utf-8").splitlines():
                    out += _files_named(dest, line, depth + 1)
    return list(dict.fromkeys(out))


_CD = ("cd", "pushd", "source", ".")  # a script's words that name no benchmark file


def _module_file(dest: Path, module: str) -> str:
    """The file of ``python -m module`` in the repository ("" when it is not there)."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__main__.py", f"src/{base}.py", f"src/{base}/__main__.py"):
        if (dest / candidate).is_file():
            return candidate
    return ""


__all__ = ["METRICS", "guess_source", "init_bench"]
