"""`measure --same KEY` and `[task] reference`: the output is checked, not only the time.

Each evaluate draws a secret workload seed; the baseline's code runs once on it, and every
run must print the same checksum. The attacks below are what an agent that wants a lower
number would try on a speed task whose tests are weaker than its benchmark.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import make_repo
from test_speed import LIB, LOOP, PY, TESTS, Scripted, commit, edit, run_measure, summary

from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.errors import ConfigError
from autoresearch.init import init
from autoresearch.records import Edit, Proposal

# --- measure --same ---------------------------------------------------------------------------------

# prints a checksum of the workload its seed picks; OFFSET = 0 is the right answer
SEEDED_SCRIPT = """\
import os
OFFSET = {offset}
seed = int(os.environ.get("AUTORESEARCH_SEED") or 0)
print("---")
print(f"checksum: {{seed * 7 + 3 + OFFSET}}")
"""


def scripts(tmp_path: Path, offset: int) -> tuple[Path, Path]:
    """A reference folder and a candidate folder, each with its own ``calc.py``."""
    reference, candidate = tmp_path / "reference", tmp_path / "candidate"
    for folder, off in ((reference, 0), (candidate, offset)):
        folder.mkdir()
        (folder / "calc.py").write_text(SEEDED_SCRIPT.format(offset=off))
    return reference, candidate


def measure_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "autoresearch", "measure", *args], capture_output=True, text=True,
                          timeout=120, cwd=folder)  # fmt: skip


def test_same_passes_when_every_run_prints_what_the_reference_prints_on_its_own_secret_seed(
    tmp_path: Path,
) -> None:
    reference, candidate = scripts(tmp_path, offset=0)
    args = ("--repeat", "2", "--warmup", "1", "--same", "checksum", "--reference", str(reference), "--",
            PY, "calc.py")  # fmt: skip
    first, second = measure_in(candidate, *args), measure_in(candidate, *args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    one, two = summary(first.stdout)["checksum"], summary(second.stdout)["checksum"]
    assert one != two  # a seed drawn per call (equal: 1 in 2**31)
    assert one != 3 and (one - 3) % 7 == 0  # the runs got the drawn seed, not AUTORESEARCH_SEED=0
    assert "checked against the reference in" in first.stderr
    printed = re.findall(r"^checksum: (\d+)$", first.stderr, re.M)  # each run's own output
    assert len(printed) == 3 and len(set(printed)) == 3  # a seed of its own for every run, warm-up too
    assert one == int(printed[-1])  # the summary shows the last run's checksum, not a median of them


def test_same_is_a_crash_naming_the_key_and_both_values_when_the_output_differs(tmp_path: Path) -> None:
    reference, candidate = scripts(tmp_path, offset=1)
    done = measure_in(candidate, "--repeat", "3", "--warmup", "0", "--same", "checksum", "--reference",
                      str(reference), "--", PY, "calc.py")  # fmt: skip
    assert done.returncode == 1 and "---" not in done.stdout
    match = re.search(r"checksum is (\d+), the reference printed (\d+) on the same workload", done.stderr)
    assert match is not None, done.stderr
    assert int(match.group(1)) == int(match.group(2)) + 1


def test_same_compares_digests_as_printed(tmp_path: Path) -> None:
    """A sha256 is not a number, and a 64-bit checksum is not a float: both compare character
    for character."""
    reference, candidate = tmp_path / "reference", tmp_path / "candidate"
    body = ("import hashlib, os\nseed = os.environ['AUTORESEARCH_SEED']\nprint('---')\n"
            "print('digest:', hashlib.sha256(seed.encode()).hexdigest())\n"
            "print('wide:', 2**62 + int(seed) * 2 + {k})\n")  # off by one: the same float
    for folder, k in ((reference, 0), (candidate, 1)):
        folder.mkdir()
        (folder / "calc.py").write_text(body.format(k=k))
    args = ("--repeat", "1", "--warmup", "0", "--reference", str(reference))
    digest = measure_in(candidate, *args, "--same", "digest", "--", PY, "calc.py")
    assert digest.returncode == 0, digest.stderr
    wide = measure_in(candidate, *args, "--same", "digest", "--same", "wide", "--", PY, "calc.py")
    assert wide.returncode == 1 and re.search(r"wide is \d{19}, the reference printed \d{19}", wide.stderr)


def test_a_hard_coded_answer_to_the_fixed_workload_is_a_crash(tmp_path: Path) -> None:
    """The answer for seed 0 (what a benchmark without a seed always asks) is not the answer."""
    reference, candidate = scripts(tmp_path, offset=0)
    (candidate / "calc.py").write_text('print("---")\nprint("checksum: 3")\n')
    env = {**os.environ, "AUTORESEARCH_REFERENCE": str(reference)}  # as the engine sets it
    done = subprocess.run([PY, "-m", "autoresearch", "measure", "--repeat", "1", "--warmup", "0", "--same",
                           "checksum", "--", PY, "calc.py"], capture_output=True, text=True, timeout=120,
                          cwd=candidate, env=env)  # fmt: skip
    assert done.returncode == 1 and "checksum is 3, the reference printed" in done.stderr


def test_same_needs_a_reference_that_runs_and_prints_the_key(tmp_path: Path) -> None:
    reference, candidate = scripts(tmp_path, offset=0)
    none = run_measure("--same", "checksum", "--", PY, "-c", "print(1)")
    assert none.returncode == 2 and "no reference to compare with" in none.stderr
    (reference / "calc.py").write_text("import sys\nsys.exit(3)\n")
    broken = measure_in(candidate, "--same", "checksum", "--reference", str(reference), "--", PY, "calc.py")
    assert broken.returncode == 3 and "the reference run (in" in broken.stderr
    (reference / "calc.py").write_text("print('---')\nprint('ops: 1')\n")
    silent = measure_in(candidate, "--same", "checksum", "--reference", str(reference), "--", PY, "calc.py")
    assert silent.returncode == 2 and "--same checksum: the reference run" in silent.stderr


def test_the_same_keys_of_an_evaluate_are_read_from_its_command_line() -> None:
    from autoresearch.measure import same_keys

    assert same_keys("autoresearch measure --repeat 5 --same checksum --same=digest -- python b.py --same x") == (
        "checksum", "digest")  # fmt: skip
    assert same_keys("python evaluate.py --same checksum") == () and same_keys("autoresearch measure 'x") == ()


def test_a_task_whose_evaluate_uses_same_needs_a_reference(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"autoresearch.toml": textwrap.dedent("""\
        [task]
        editable = ["a.py"]
        evaluate = "autoresearch measure --same checksum -- python bench.py"
    """), "a.py": ""})  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[task\] reference: .*expected \"baseline\""):
        load_config(repo)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text() + 'reference = "head"\n')
    with pytest.raises(ConfigError, match=r"\[task\] reference: found 'head'"):
        load_config(repo)


# --- a session: the attacks -------------------------------------------------------------------------

SEEDED_BENCH = """\
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from mylib.core import total

n = 2_000_000 + int(os.environ.get("AUTORESEARCH_SEED") or 0) % 100_000  # the seed picks the size
print("---")
print(f"checksum: {total(n)}")
"""
FIXED_ANSWER = 2_000_000 * 1_999_999 // 2  # total(2_000_000): the answer at seed 0
DEF = "def total(n):\n"


def seeded_library(tmp_path: Path, sandbox: str = "auto") -> Path:
    """The library of test_speed, with a benchmark that reads the seed, made a task with --same."""
    repo = make_repo(tmp_path / "mylib", {
        "src/mylib/__init__.py": "", "src/mylib/core.py": LIB, "tests/__init__.py": "",
        "tests/test_core.py": TESTS, "bench/run.py": SEEDED_BENCH,
    })  # fmt: skip
    init(repo, bench="python bench/run.py", test="python -m unittest discover -s tests -t . -q",
         same=("checksum",))  # fmt: skip
    toml = repo / "autoresearch.toml"
    text = toml.read_text().replace("--repeat 5", "--repeat 2").replace("--warmup 1", "--warmup 0")
    text = text.replace("baseline_runs = 5", "baseline_runs = 2").replace("max_runs      = 5", "max_runs = 2")
    toml.write_text(text.replace("[task]\n", f'[task]\nsandbox = "{sandbox}"\n'))
    commit(repo, "autoresearch speed task")
    return repo


def test_init_same_writes_the_reference_and_the_brief_says_so(tmp_path: Path) -> None:
    repo = seeded_library(tmp_path)
    config = load_config(repo)
    assert config.reference == "baseline" and "--same checksum" in config.evaluate
    assert "secret seed" in (repo / "program.md").read_text()
    with pytest.raises(ConfigError, match="--same a b"):
        init(repo, bench="python bench/run.py", test="true", same=("a b",), force=True)


def test_hard_coded_answers_faked_tests_and_forged_checksums_are_crashes(tmp_path: Path) -> None:
    repo = seeded_library(tmp_path)
    fake_tests = "import unittest\nunittest.TestCase.assertEqual = lambda self, a, b, msg=None: None\n\n\n"
    leave_early = ("import os, sys\nif sys.argv[0].endswith('run.py'):  # the benchmark, not the tests\n"
                   f"    print('---'); print('checksum: {FIXED_ANSWER}'); sys.stdout.flush(); os._exit(0)\n\n\n")  # fmt: skip
    agent = Scripted([
        edit("a table for the benchmark's answer", LOOP, f"    if n > 1000:\n        return {FIXED_ANSWER}\n" + LOOP),
        Proposal("wrong, and the tests told to pass", edits=(
            Edit("src/mylib/core.py", DEF, fake_tests + DEF), Edit("src/mylib/core.py", LOOP, "    return 0\n"))),
        edit("print the checksum and leave", DEF, leave_early + DEF),
        edit("closed form", LOOP, "    return n * (n - 1) // 2\n"),
    ])  # fmt: skip
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="same", lookahead=1))
    engine.run()
    rows = {r.description: r for r in engine.ledger.experiments(engine.session)}
    assert rows["baseline"].verdict == "baseline", rows["baseline"].reason
    for name in ("a table for the benchmark's answer", "wrong, and the tests told to pass",
                 "print the checksum and leave"):  # fmt: skip
        row = rows[name]
        assert row.verdict == "crash", (name, row.verdict, row.reason)
        assert "evaluate step exited with code 1" in row.reason, (name, row.reason)
    kept = rows["closed form"]
    assert kept.verdict == "keep", kept.reason
    printed = [r.metrics["checksum"] for r in kept.runs if r.purpose == "rescore"]  # the value kept rests on
    assert len(set(printed)) == len(printed) > 1  # a workload of its own each: their mean means nothing
    assert kept.metrics["checksum"] == printed[-1], (kept.metrics, printed)
    logs = engine.log_dir
    for row in (rows["a table for the benchmark's answer"], rows["print the checksum and leave"]):
        text = (logs / f"{row.id:04d}-0.evaluate.log").read_text()
        assert f"checksum is {FIXED_ANSWER}, the reference printed" in text


# the check step (the tests import the library) and every timed run try to make the reference
# print what the candidate prints: if they could, the wrong answer would match
REWRITE_REFERENCE = """\
import pathlib, sys
_ref = pathlib.Path(__file__).resolve().parents[3] / "reference-0" / "src" / "mylib" / "core.py"
try:
    _ref.write_text(pathlib.Path(__file__).read_text())
    print("wrote the reference", file=sys.stderr)
except OSError as exc:
    print(f"could not write the reference: {exc.strerror}", file=sys.stderr)


"""


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_a_run_cannot_rewrite_the_reference(tmp_path: Path, sandbox: str) -> None:
    if sandbox == "bwrap":
        from autoresearch.executors.sandbox import bwrap_problem

        if bwrap_problem() is not None:
            pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")
    repo = seeded_library(tmp_path, sandbox=sandbox)
    agent = Scripted([edit("off by n, and the reference made to agree", LOOP,
                           "    return n * (n + 1) // 2\n")])  # fmt: skip
    agent.replies[0] = Proposal(agent.replies[0].description, edits=(
        Edit("src/mylib/core.py", DEF, REWRITE_REFERENCE + DEF),
        Edit("src/mylib/core.py", LOOP, "    if n > 1000:\n        return n * (n + 1) // 2\n" + LOOP)))  # fmt: skip
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="ref", lookahead=1))
    engine.run()
    rows = engine.ledger.experiments(engine.session)
    assert rows[0].verdict == "baseline", rows[0].reason
    attack = rows[1]
    assert attack.verdict == "crash" and "evaluate step exited with code 1" in attack.reason, attack.reason
    evaluate = (engine.log_dir / f"{attack.id:04d}-0.evaluate.log").read_text()
    assert "the reference printed" in evaluate
    if sandbox == "bwrap":  # hidden from the tests, read-only to evaluate
        check = (engine.log_dir / f"{attack.id:04d}-0.check.log").read_text()
        assert "wrote the reference" not in check + evaluate
        assert "could not write the reference: Read-only file system" in evaluate
    else:  # not contained: it wrote, and evaluate put the reference back first
        assert "wrote the reference" in (engine.log_dir / f"{attack.id:04d}-0.check.log").read_text()


MOVE_REFERENCE_HEAD = """\
import pathlib, subprocess, sys
_here = pathlib.Path(__file__).resolve().parents[2]
_ref = _here.parent / "reference-0"
if not sys.argv[0].endswith("run.py") and _ref.is_dir():  # in the tests: the reference becomes me
    _me = subprocess.run(["git", "-C", str(_here), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "-C", str(_ref), "checkout", "-q", "--detach", _me], capture_output=True)
    print("moved the reference to", _me[:10], file=sys.stderr)


"""


def test_an_unsandboxed_step_that_moves_the_reference_head_gains_nothing(tmp_path: Path) -> None:
    repo = seeded_library(tmp_path, sandbox="none")
    agent = Scripted([Proposal("off by n, and the reference moved onto it", edits=(
        Edit("src/mylib/core.py", DEF, MOVE_REFERENCE_HEAD + DEF),
        Edit("src/mylib/core.py", LOOP, "    if n > 1000:\n        return n * (n + 1) // 2\n" + LOOP)))])  # fmt: skip
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="head", lookahead=1))
    engine.run()
    attack = engine.ledger.experiments(engine.session)[1]
    assert attack.verdict in ("crash", "invalid"), (attack.verdict, attack.reason)
    check = (engine.log_dir / f"{attack.id:04d}-0.check.log").read_text()
    assert "moved the reference to" in check  # it did move it: evaluate put it back by sha
