"""Speed and memory tasks on any repository: `measure`, `init --bench`, constraints, the test gate."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import make_repo

from autoresearch.agents import Agent, Context, Proposal
from autoresearch.config import load_config
from autoresearch.constraints import parse
from autoresearch.engine import Engine, SessionOptions
from autoresearch.errors import AgentExhausted, ConfigError
from autoresearch.init import init
from autoresearch.records import Edit

PY = sys.executable


def run_measure(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "autoresearch", "measure", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def summary(text: str) -> dict[str, float]:
    from autoresearch.metrics import parse_summary

    return parse_summary(text)


# --- measure --------------------------------------------------------------------------------------


def test_measure_times_a_command_of_known_duration(tmp_path: Path) -> None:
    done = run_measure("--repeat", "3", "--warmup", "1", "--", PY, "-c", "import time; time.sleep(0.3)")
    assert done.returncode == 0, done.stderr
    values = summary(done.stdout)
    assert values["runs"] == 3
    assert values["seconds"] >= 0.3  # a sleep takes at least its time, however busy the machine
    assert values["cpu_seconds"] < values["seconds"]  # sleeping uses (almost) no CPU
    assert values["seconds_mad"] >= 0 and values["peak_rss_mb"] > 1
    assert done.stdout.splitlines()[0] == "---"  # the block is all of stdout


def test_measure_reports_the_cpu_of_the_whole_process_tree_and_the_peak_memory(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text("import sys\nx = bytearray(200 * 2**20)\nn = 0\nfor i in range(3_000_000):\n    n += i\n")
    parent = f"import subprocess, sys; subprocess.run([sys.executable, {str(child)!r}], check=True)"
    values = summary(run_measure("--repeat", "1", "--warmup", "0", "--", PY, "-c", parent).stdout)
    assert values["peak_rss_mb"] >= 200  # the child's 200 MB, not the parent's few
    assert values["cpu_seconds"] > 0.05  # the child's loop is counted


def test_the_peak_memory_of_a_helper_that_left_the_tree_and_exited_counts(tmp_path: Path) -> None:
    """A helper handed to measure (its parent exits at once) uses 200 MB and is gone before the
    run ends: its /proc status is gone too, so its peak is taken from its reaping."""
    helper = tmp_path / "helper.py"
    helper.write_text("x = bytearray(200 * 2**20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n")
    spawn = f"import subprocess, sys; subprocess.Popen([sys.executable, {str(helper)!r}])"  # orphaned
    main = (f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {spawn!r}]); "
            "time.sleep(3)")  # fmt: skip
    values = summary(run_measure("--repeat", "1", "--warmup", "0", "--", PY, "-c", main).stdout)
    assert values["peak_rss_mb"] >= 200


NO_WAIT = """\
import ctypes, os, signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
else:  # SA_NOCLDWAIT, which /proc does not show: the children are reaped for us all the same
    class Action(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]
    assert ctypes.CDLL(None).sigaction(signal.SIGCHLD, ctypes.byref(Action(None, flags=2)), None) == 0
if os.fork() == 0:  # the work, in a child whose CPU time and memory the kernel drops
    x = bytearray(150 * 2**20)
    for i in range(0, len(x), 4096):
        x[i] = 1
    end = time.process_time() + 0.6
    while time.process_time() < end:
        pass
    os._exit(0)
time.sleep(0.2)
while os.path.exists("/proc/%d" % os.getpid()) and any(
        open(f"/proc/{p}/stat").read().split(") ")[1].split()[1] == str(os.getpid())
        for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")):
    time.sleep(0.05)
"""


def test_work_forked_into_children_the_kernel_reaps_still_counts(tmp_path: Path) -> None:
    """With SIGCHLD ignored the kernel reaps the children and drops their times: a benchmark
    that forked its work was timed at -86% CPU and 27 MB for 409. Ignoring it is a crash; with
    SA_NOCLDWAIT (invisible in /proc) the watch's view of the children counts."""
    (tmp_path / "nowait.py").write_text(NO_WAIT)
    ignored = run_measure("--repeat", "1", "--warmup", "0", "--", PY, str(tmp_path / "nowait.py"), "ignore")
    assert ignored.returncode == 2 and "ignored SIGCHLD: the kernel drops the CPU time" in ignored.stderr
    hidden = run_measure("--repeat", "1", "--warmup", "0", "--", PY, str(tmp_path / "nowait.py"), "nocldwait")
    assert hidden.returncode == 0, hidden.stderr
    values = summary(hidden.stdout)
    assert values["cpu_seconds"] >= 0.3 and values["peak_rss_mb"] >= 150, values


HOLDERS = """\
import os, time
x = bytearray({parent} * 2**20)  # the parent's, shared with the workers it forks
for i in range(0, len(x), 4096):
    x[i] = 1
pids = []
for _ in range({workers}):
    pid = os.fork()
    if pid == 0:
        own = bytearray({own} * 2**20)  # each worker's own
        for i in range(0, len(own), 4096):
            own[i] = 1
        total = sum(x[i] for i in range(0, len(x), 4096))
        time.sleep(1.5)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""


@pytest.mark.parametrize(("parent", "workers", "own", "low", "high"),
                         [(0, 2, 120, 230, 400), (200, 4, 0, 200, 400)], ids=["shards", "shared"])  # fmt: skip
def test_memory_held_by_several_processes_counts_together_and_once(
    tmp_path: Path, parent: int, workers: int, own: int, low: float, high: float
) -> None:
    """A 30 MB table split over two forked shards halved the largest process's peak: kept at
    -36% peak_rss_mb while the run held more in all. An honest fork's shared pages count once."""
    script = tmp_path / "forks.py"
    script.write_text(HOLDERS.format(parent=parent, workers=workers, own=own))
    values = summary(run_measure("--repeat", "1", "--warmup", "0", "--", PY, str(script)).stdout)
    assert low <= values["peak_rss_mb"] < high, values


def test_measure_takes_the_median_of_what_the_command_prints(tmp_path: Path) -> None:
    script = tmp_path / "own.py"
    counter = tmp_path / "n"
    script.write_text(textwrap.dedent(f"""\
        from pathlib import Path
        p = Path({str(counter)!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        print("---")
        print(f"inner_ms: {{[50, 10, 30, 99][n]}}")
    """))
    done = run_measure("--repeat", "3", "--warmup", "1", "--metric", "inner_ms", "--", PY, str(script))
    assert done.returncode == 0, done.stderr
    assert summary(done.stdout)["inner_ms"] == 30  # runs 2-4 print 10, 30, 99 (run 1 is the warm-up)
    assert "inner_ms: 50" in done.stderr  # the command's own output went to stderr
    counter.unlink()
    missing = run_measure("--repeat", "1", "--warmup", "0", "--metric", "speed", "--", PY, str(script))
    assert missing.returncode != 0 and "--metric speed: the command did not print it" in missing.stderr


def test_a_crashing_command_is_a_crash_not_a_number() -> None:
    done = run_measure("--repeat", "3", "--", PY, "-c", "import sys; print('bad input'); sys.exit(4)")
    assert done.returncode == 4
    assert "---" not in done.stdout and "exited with 4" in done.stderr and "bad input" in done.stderr


def test_allocations_trace_a_python_command(tmp_path: Path) -> None:
    script = tmp_path / "alloc.py"
    script.write_text("data = [str(i) for i in range(300_000)]\nprint(len(data))\n")
    done = run_measure("--repeat", "1", "--warmup", "0", "--allocations", "--", PY, str(script))
    assert done.returncode == 0, done.stderr
    assert summary(done.stdout)["alloc_peak_mb"] > 10  # 300k small strings and a list
    refused = run_measure("--allocations", "--", "sh", "-c", "true")
    assert refused.returncode != 0 and "python SCRIPT" in refused.stderr
    # a library that stops or resets the trace at import was kept at -100% alloc_peak_mb
    for call in ("tracemalloc.stop()", "tracemalloc.reset_peak()", "import _tracemalloc; _tracemalloc.stop()",
                 "tracemalloc.stop.__closure__[0].cell_contents()"):  # the original, from the guard
        script.write_text(f"import os, tracemalloc\ndata = [str(i) for i in range(300_000)]\n{call}\n"
                          "assert 'AUTORESEARCH_MEASURE_ALLOC' not in os.environ\n")  # fmt: skip
        hidden = run_measure("--repeat", "1", "--warmup", "0", "--allocations", "--", PY, str(script))
        assert hidden.returncode == 2 and "alloc_peak_mb would not see its allocations" in hidden.stderr, (call, hidden.stderr)
    script.write_text("import os\ndata = [str(i) for i in range(300_000)]\nos._exit(0)\n")  # before the report
    early = run_measure("--repeat", "1", "--warmup", "0", "--allocations", "--", PY, str(script))
    assert early.returncode == 2 and "ended before measure could read its allocations" in early.stderr


def test_a_measured_command_that_hangs_meets_the_step_timeout(tmp_path: Path) -> None:
    repo = library(tmp_path, bench="import time\ntime.sleep(120)\n")
    toml = repo / "autoresearch.toml"
    toml.write_text(re.sub(r"timeout\s*=\s*\d+", "timeout = 3", toml.read_text()))
    commit(repo, "a 3 s timeout")
    engine = Engine(load_config(repo), Scripted([]), options=SessionOptions(tag="hang"))
    engine.run()
    row = engine.ledger.experiments(engine.session)[0]
    assert row.verdict == "timeout" and "evaluate step hit the hard timeout" in row.reason


# --- constraints ------------------------------------------------------------------------------------


def test_constraints_parse_and_bound_against_the_best() -> None:
    c = parse("peak_rss_mb <= 1.05 * best")
    assert (c.key, c.op, c.scale, c.reference) == ("peak_rss_mb", "<=", 1.05, "best")
    assert c.violation({"peak_rss_mb": 104}, {"peak_rss_mb": 100}, {}) == ""
    why = c.violation({"peak_rss_mb": 110}, {"peak_rss_mb": 100}, {})
    assert "'peak_rss_mb <= 1.05 * best' broken: peak_rss_mb 110, bound 105" in why
    assert "did not report peak_rss_mb" in c.violation({}, {"peak_rss_mb": 100}, {})
    assert parse("alloc_peak_mb < best * 2").scale == 2
    assert parse("peak_vram_mb <= 8e4").violation({"peak_vram_mb": 9e4}, {}, {})
    assert parse("x >= baseline").violation({"x": 1}, {}, {"x": 2})
    assert parse("checksum == baseline").violation({"checksum": 7}, {}, {"checksum": 8})
    assert not parse("checksum == baseline").violation({"checksum": 8}, {}, {"checksum": 8})
    for bad in ("peak <= ", "peak != 3", "<= best", "peak <= best + 1"):
        with pytest.raises(ValueError, match="KEY OP BOUND"):
            parse(bad)


def test_a_broken_constraint_in_the_toml_is_a_clear_error(tmp_path: Path) -> None:
    repo = library(tmp_path)
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('constraints = ["peak_rss_mb <= 1.25 * best"]',
                                             'constraints = ["peak_rss_mb <= lots"]'))  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[metric\] constraints: found 'peak_rss_mb <= lots'"):
        load_config(repo)


# --- init --bench ---------------------------------------------------------------------------------

LIB = """\
def total(n):
    \"\"\"The sum 0 + 1 + ... + (n - 1).\"\"\"
    out = 0
    for i in range(n):
        out += i
    return out
"""

TESTS = """\
import os, sys, unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from mylib.core import total  # noqa: E402


class TotalTests(unittest.TestCase):
    def test_total_of_ten(self):
        self.assertEqual(total(10), 45)

    def test_total_of_nothing(self):
        self.assertEqual(total(0), 0)
"""

BENCH = """\
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from mylib.core import total

print(total(5_000_000))
"""


def library(tmp_path: Path, bench: str = BENCH) -> Path:
    """A small library repository made a speed task by `init --bench --test`, committed."""
    repo = make_repo(tmp_path / "mylib", {
        "src/mylib/__init__.py": "", "src/mylib/core.py": LIB, "tests/__init__.py": "",
        "tests/test_core.py": TESTS, "bench/run.py": bench, "setup.py": "# packaging\n",
    })  # fmt: skip
    init(repo, bench="python bench/run.py", test="python -m unittest discover -s tests -t . -q")
    toml = repo / "autoresearch.toml"
    text = toml.read_text().replace("--repeat 5", "--repeat 2").replace("--warmup 1", "--warmup 0")
    toml.write_text(text.replace("baseline_runs = 5", "baseline_runs = 3").replace("max_runs      = 5", "max_runs = 3"))
    (repo / "src" / "mylib" / "__init__.py").write_text("")
    commit(repo, "autoresearch speed task")
    return repo


def commit(repo: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True)


def test_init_bench_writes_a_speed_task_from_the_repository(tmp_path: Path) -> None:
    repo = library(tmp_path)
    config = load_config(repo)
    assert config.editable == ("src/mylib/*.py",)  # not the tests, the benchmark or setup.py
    assert set(config.protected) >= {"bench/run.py", "tests/**"}
    assert config.check == "python -m unittest discover -s tests -t . -q"
    assert config.run == "" and config.evaluate.startswith("autoresearch measure --repeat 2")
    assert config.evaluate.endswith("-- python bench/run.py")
    assert config.metric.name == "seconds" and config.judge.rule == "sequential"
    assert config.budget_allowance_share == 1.0 and config.allowance == 10.0  # a hang costs 2x, not +150 s
    assert [c.text for c in config.metric.constraints] == ["peak_rss_mb <= 1.25 * best"]
    brief = (repo / "program.md").read_text()
    assert "faster" in brief and "python bench/run.py" in brief
    with pytest.raises(ConfigError, match="go together"):
        init(repo, bench="python bench/run.py", force=True)
    with pytest.raises(ConfigError, match="--metric"):
        init(repo, bench="python bench/run.py", test="true", metric="speed", force=True)


def test_init_bench_protects_what_a_wrapper_script_or_a_module_runs(tmp_path: Path) -> None:
    """``./bench.sh`` running ``python run_bench.py`` left run_bench.py editable: a shrunken
    workload was kept at -45%. ``python -m benchmarks.work`` left the module editable too."""
    repo = make_repo(tmp_path / "r", {
        "src/fastlib.py": LIB, "src/helpers.py": "X = 1\n", "run_bench.py": "import fastlib\n", "test_fastlib.py": "",
        "bench.sh": "#!/bin/sh\n# the benchmark\ncd src && cd ..\nexec python run_bench.py --n 100000 > /dev/null 2>&1\n",
        "benchmarks/__init__.py": "", "benchmarks/work.py": "import fastlib\n",
    })  # fmt: skip
    init(repo, bench="sh bench.sh", test="python -m unittest -q")  # not /dev/null, not the folder it cds to
    config = load_config(repo)
    assert {"bench.sh", "run_bench.py"} <= set(config.protected) and "src/**" not in config.protected, config.protected
    assert config.editable == ("src/*.py",)
    init(repo, bench="python -m benchmarks.work", test="python -m unittest -q", force=True)
    config = load_config(repo)
    assert "benchmarks/work.py" in config.protected and "run_bench.py" not in config.protected


def test_init_bench_protects_the_workload_module_the_benchmark_imports_and_the_tests_do_not(tmp_path: Path) -> None:
    """``workloads.py`` (``REPEAT = 20``) beside the library was editable: ``REPEAT = 1`` was
    kept at -53%. A module of a package the tests import stays code under test."""
    repo = make_repo(tmp_path / "r", {
        "fastmath.py": LIB, "workloads.py": "REPEAT = 20\n", "pkg/__init__.py": "", "pkg/core.py": LIB,
        "lib/__init__.py": "", "lib/core.py": LIB, "lib/fast.py": LIB, "tools/__init__.py": "", "tools/ref.py": LIB,
        "bench.py": "import fastmath, workloads\nfrom pkg.core import total\nfrom lib.fast import total as t\nimport os\n",
        "tests/test_fast.py": "import fastmath\nimport pkg\nfrom lib.core import total\nfrom tools import ref\n",
    })  # fmt: skip
    done = subprocess.run([PY, "-m", "autoresearch", "init", "--bench", "python bench.py", "--test",
                           "python -m unittest discover -s tests"], cwd=repo, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = load_config(repo)
    assert "workloads.py" in config.protected and "workloads.py" not in config.editable, config
    assert set(config.editable) == {"fastmath.py", "pkg/*.py", "lib/*.py"}
    assert "pkg/core.py" not in config.protected and "lib/fast.py" not in config.protected  # lib: tested
    assert "warning: protected workloads.py: the benchmark imports it and the tests do not" in done.stdout
    # the tests' reference code (python-slugify's tools/) was editable: an edit could bend it
    assert {"tools/ref.py", "tools/__init__.py"} <= set(config.protected) and "tools/*.py" not in config.editable
    assert "warning: protected tools/ref.py: the tests import it and the benchmark does not" in done.stdout


def test_init_bench_from_the_command_line_prints_what_it_guessed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"fast.py": LIB, "test_fast.py": "", "bench.py": "print(1)\n"})
    done = subprocess.run([PY, "-m", "autoresearch", "init", "--bench", "python bench.py", "--test",
                           "python -m unittest -q", "--metric", "alloc_peak_mb"],
                          cwd=repo, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "editable: fast.py (guessed from the folder)" in done.stdout
    config = load_config(repo)
    assert "--allocations" in config.evaluate and config.metric.name == "alloc_peak_mb"
    assert [c.text for c in config.metric.constraints] == ["peak_rss_mb <= 1.25 * best", "seconds <= 1.25 * best"]
    assert "Speed may not suffer for memory" in (repo / "program.md").read_text()
    assert "no --same KEY: a run's output is not compared" in done.stdout  # less work would time faster
    same = subprocess.run([PY, "-m", "autoresearch", "init", "--bench", "python bench.py", "--test",
                           "python -m unittest -q", "--same", "checksum", "--force"],
                          cwd=repo, capture_output=True, text=True)  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "no --same KEY" not in same.stdout
    rss = subprocess.run([PY, "-m", "autoresearch", "init", "--bench", "python bench.py", "--test",
                          "python -m unittest -q", "--metric", "peak_rss_mb", "--force"],
                         cwd=repo, capture_output=True, text=True)  # fmt: skip
    assert rss.returncode == 0, rss.stderr  # a memory task kept a 2x slowdown as a gain
    assert [c.text for c in load_config(repo).metric.constraints] == ["seconds <= 1.25 * best"]


# --- a session on the library -------------------------------------------------------------------


class Scripted(Agent):
    name = "scripted"

    def __init__(self, replies: list[Proposal]) -> None:
        self.replies = replies

    def propose(self, context: Context) -> Proposal:
        if not self.replies:
            raise AgentExhausted("done")
        return self.replies.pop(0)


def edit(description: str, old: str, new: str, path: str = "src/mylib/core.py") -> Proposal:
    return Proposal(description, edits=(Edit(path, old, new),))


LOOP = "    out = 0\n    for i in range(n):\n        out += i\n    return out\n"


def test_a_night_on_the_library_keeps_only_a_real_speedup(tmp_path: Path) -> None:
    repo = library(tmp_path)
    agent = Scripted([
        edit("faster, with 64 MB of ballast", LOOP,
             "    ballast = [0] * (8 * 2**20)\n    return sum(range(n)) + ballast[0]\n"),
        edit("closed form, off by n", LOOP, "    return n * (n + 1) // 2\n"),
        edit("slower", LOOP, "    import time\n    time.sleep(0.5)\n" + LOOP),
        edit("hangs", LOOP, "    import time\n    time.sleep(600)\n" + LOOP),
        edit("change the benchmark", "total(5_000_000)", "total(10)", path="bench/run.py"),
        edit("closed form", LOOP, "    return n * (n - 1) // 2\n"),
    ])  # fmt: skip
    engine = Engine(load_config(repo), agent, options=SessionOptions(tag="speed", lookahead=1))
    engine.run()
    rows = {r.description: r for r in engine.ledger.experiments(engine.session)}
    memory = rows["faster, with 64 MB of ballast"]
    assert memory.verdict == "discard"
    assert "constraint 'peak_rss_mb <= 1.25 * best' broken: peak_rss_mb" in memory.reason
    broken = rows["closed form, off by n"]
    assert broken.verdict == "crash"
    assert "check step exited" in broken.reason and "test_total_of_ten" in broken.reason
    assert rows["slower"].verdict == "discard"
    hangs, base = rows["hangs"], rows["baseline"]  # stopped at twice the baseline's time, +10 s at least
    assert hangs.verdict == "discard" and "past the budget" in hangs.reason, hangs.reason
    took = sum(statistics.fmean(r.step_seconds(step) or 0.0 for r in base.runs) for step in ("check", "evaluate"))
    assert f"(baseline's {took:.1f} s + {round(max(10.0, took), 1):g} s)" in hangs.reason, (took, hangs.reason)
    assert rows["change the benchmark"].verdict == "invalid"
    assert "protected" in rows["change the benchmark"].reason
    fast = rows["closed form"]
    assert fast.verdict == "keep"
    assert fast.metric is not None and rows["baseline"].metric is not None
    assert fast.metric < rows["baseline"].metric
    assert "return n * (n - 1) // 2" in subprocess.run(
        ["git", "show", "autoresearch/speed:src/mylib/core.py"], cwd=repo, capture_output=True,
        text=True, check=True).stdout  # fmt: skip


NOISY = """\
import os, random, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from mylib.core import total

total(1000)
rng = random.Random(int(os.environ["AUTORESEARCH_SEED"]))
print("---")
print(f"work_ms: {100 + rng.gauss(0, 1):.4f}")  # the inner loop's own timing, 1% noise
"""


def test_null_patches_under_timing_noise_are_not_kept(tmp_path: Path) -> None:
    """The sequential judge on measure's median of the benchmark's own noisy number."""
    repo = library(tmp_path, bench=NOISY)
    toml = repo / "autoresearch.toml"
    text = toml.read_text().replace('name        = "seconds"', 'name        = "work_ms"')
    toml.write_text(text.replace("constraints = [", "constraints = [] # ["))
    commit(repo, "the benchmark's own number")
    nulls = [edit(f"reword the docstring ({i})", "The sum", f"The sum{' ' * (i + 1)}") for i in range(6)]
    engine = Engine(load_config(repo), Scripted(nulls), options=SessionOptions(tag="null"))
    engine.run()
    rows = engine.ledger.experiments(engine.session)
    assert len(rows) == 7 and rows[0].verdict == "baseline"
    assert [r.verdict for r in rows[1:]] == ["discard"] * 6


def test_what_a_run_leaves_running_is_killed_before_the_next_run(tmp_path: Path) -> None:
    """A warm-up that leaves a daemon (double fork, new session) to serve the timed runs."""
    pids = tmp_path / "pids"
    daemon = textwrap.dedent(f"""\
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open({str(pids)!r}, "a") as fh:
                    fh.write(f"{{os.getpid()}}\\n")
                time.sleep(120)
            os._exit(0)
        time.sleep(0.2)
    """)
    done = run_measure("--repeat", "2", "--warmup", "1", "--", PY, "-c", daemon)
    assert done.returncode == 0, done.stderr
    left = [int(p) for p in pids.read_text().split()]
    assert len(left) == 3
    for pid in left:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split(") ")[1][0] == "Z"


def test_a_command_cannot_print_measures_own_keys(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text("import time\ndata = list(range(100_000))\ntime.sleep(0.2)\nprint('---')\n"
                    "print('seconds: 0.0001')\nprint('alloc_peak_mb: 0')\nprint('peak_rss_mb: 0')\n")  # fmt: skip
    values = summary(run_measure("--repeat", "1", "--warmup", "0", "--allocations", "--", PY, str(fake)).stdout)
    assert values["seconds"] >= 0.2 and values["peak_rss_mb"] > 1 and values["alloc_peak_mb"] > 0



# --- nothing of one run is there for the next ---------------------------------------------------

CACHES = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
given = sys.argv[1]  # the AUTORESEARCH_OUT measure was given (a run's own is fresh)
hits = []
for path in ("/tmp/measure-cache", "/dev/shm/measure-cache", os.path.expanduser("~/.measure-cache"),
             os.path.join(given, "cache")):
    if os.path.exists(path):
        hits.append(path)
    else:
        open(path, "w").write("the answer")
if libc.shmget(0x5EED, 4096, 0) >= 0:  # System V shared memory outlives its process
    hits.append("shm")
else:
    libc.shmget(0x5EED, 4096, 0o1000 | 0o600)  # IPC_CREAT
mq = libc.mq_open(b"/measure-cache", 0o2, 0o600, None)  # O_RDWR: there already?
if mq >= 0:
    hits.append("mqueue")
else:
    libc.mq_open(b"/measure-cache", 0o100 | 0o2, 0o600, None)  # O_CREAT
print("hits:", hits, file=sys.stderr)
print("---")
print(f"hits: {len(hits)}")
"""


def sandboxed(tmp_path: Path, devices: Sequence[str] = ()) -> tuple[list[str], dict[str, str], Path]:
    """The argv prefix and environment of an evaluate step in the sandbox, and its AUTORESEARCH_OUT."""
    from autoresearch.executors.sandbox import Sandbox, bwrap_problem

    if bwrap_problem() is not None:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_problem()}")
    repo, work, out = tmp_path / "repo", tmp_path / "repo" / "work", tmp_path / "repo" / "out"
    work.mkdir(parents=True)
    out.mkdir()
    box = Sandbox(task_root=repo, repo=repo, mode="bwrap")
    prefix = box.prefix("evaluate", cwd=work, worktree=work, writable=[out], first=True, devices=devices)
    env = box.environment({"PATH": f"{Path(PY).parent}:/usr/bin:/bin", "AUTORESEARCH_OUT": str(out)})
    return prefix, env, out


def test_a_warm_up_leaves_no_cache_for_the_timed_runs_in_the_sandbox(tmp_path: Path) -> None:
    prefix, env, out = sandboxed(tmp_path)
    script = tmp_path / "repo" / "work" / "caches.py"
    script.write_text(CACHES)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "3", "--warmup", "1",
                           "--", PY, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert summary(done.stdout)["hits"] == 0, done.stderr  # /tmp, /dev/shm, $HOME, System V, mqueue
    assert done.stderr.count("hits: []") == 4
    assert list(out.iterdir()) == []  # what a run added to the given AUTORESEARCH_OUT is gone


def test_a_run_that_sets_a_device_nodes_times_is_a_crash(tmp_path: Path) -> None:
    """The step's /dev nodes are its runs' to share: times set with utime (or a mode) carried a
    counter from the warm-up to each timed run."""
    from autoresearch.executors.sandbox import device_copies

    with device_copies(tmp_path) as devices:  # as the engine runs a step
        prefix, env, _out = sandboxed(tmp_path, devices)
        code = "import os; os.utime('/dev/full')"  # touch: any user may, on a node all may write
        done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "2", "--warmup", "1",
                               "--", PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "---" not in done.stdout
    assert "a run changed the mode or times of /dev/full" in done.stderr


TERMINAL = """\
import os, sys
hits = 0
for path in ("/dev/pts", "/dev/pts/ptmx"):
    if os.stat(path).st_mtime_ns == 12345:
        hits += 1
    try:
        os.utime(path, ns=(12345, 12345))
    except OSError as exc:
        print(path, exc, file=sys.stderr)
print("---")
print(f"hits: {hits}")
"""


def test_the_sandboxs_terminals_carry_nothing_to_the_next_run(tmp_path: Path) -> None:
    """bwrap's devpts is the step's own, writable: a warm-up kept a 64-bit answer in the times
    of /dev/pts/ptmx and the timed runs read it (95% faster, --same passing)."""
    prefix, env, _out = sandboxed(tmp_path)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "3", "--warmup", "1",
                           "--", PY, "-c", TERMINAL], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert summary(done.stdout)["hits"] == 0, done.stderr


def test_a_run_that_changes_measures_own_priority_is_a_crash(tmp_path: Path) -> None:
    """A run is measure's child and user: it could set measure's nice, out-of-memory score
    or core dump filter, which every later run inherited or read."""
    prefix, env, _out = sandboxed(tmp_path)
    attempts = [("import os; os.setpriority(os.PRIO_PROCESS, 1, 7)", "nice")]  # its user may
    if os.geteuid() == 0:  # measure is not dumpable: its /proc files are root's
        attempts.append(("open('/proc/1/oom_score_adj', 'w').write('333')", "oom_score_adj"))
    for code, what in attempts:
        done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "2", "--warmup", "0",
                               "--", PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode != 0 and "---" not in done.stdout, done.stderr
        assert f"a run changed measure's own {what}" in done.stderr


def test_a_run_that_changes_what_measure_was_given_is_a_crash(tmp_path: Path) -> None:
    given = tmp_path / "out"
    given.mkdir()
    (given / "checkpoint.pt").write_text("weights")
    code = f"open({str(given / 'checkpoint.pt')!r}, 'a').write(' and a cached answer')"
    done = subprocess.run([PY, "-m", "autoresearch", "measure", "--repeat", "1", "--warmup", "0", "--",
                           PY, "-c", code], env={**os.environ, "AUTORESEARCH_OUT": str(given)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "---" not in done.stdout
    assert "a run changed checkpoint.pt in AUTORESEARCH_OUT" in done.stderr


def test_the_cpu_of_a_worker_left_running_is_counted(tmp_path: Path) -> None:
    """The work is handed to an orphaned worker, which stays: its CPU is the run's all the same."""
    worker = textwrap.dedent("""\
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:  # orphaned: never waited for by the benchmark
                start = time.process_time()
                while time.process_time() - start < 0.6:
                    pass
                os.write(w, b"done")
                time.sleep(60)
            os._exit(0)
        os.wait()
        os.read(r, 4)
    """)
    values = summary(run_measure("--repeat", "1", "--warmup", "0", "--", PY, "-c", worker).stdout)
    assert values["cpu_seconds"] >= 0.55


def test_a_key_printed_twice_is_a_crash(tmp_path: Path) -> None:
    """Code the benchmark imports prints its own summary first: measure takes neither."""
    forged = "print('---'); print('checksum: 1234'); print('---'); print('checksum: 99'); print('ops: 3')"
    done = run_measure("--repeat", "1", "--warmup", "0", "--", PY, "-c", forged)
    assert done.returncode != 0 and "---" not in done.stdout
    assert "printed checksum more than once" in done.stderr
    honest = run_measure("--repeat", "1", "--warmup", "0", "--", PY, "-c", "print('---'); print('ops: 3')")
    assert summary(honest.stdout)["ops"] == 3


def test_a_run_in_the_sandbox_cannot_open_measures_memory(tmp_path: Path) -> None:
    """It would rewrite the start time of its own timing (measure is not dumpable; no capabilities)."""
    prefix, env, _ = sandboxed(tmp_path)
    probe = ("import os\nfor name in ('mem', 'environ'):\n    try:\n"
             "        open(f'/proc/{os.getppid()}/{name}', 'rb').read(1); print('opened', name)\n"
             "    except OSError as exc:\n        print('refused', name, exc.strerror)\n")  # fmt: skip
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "1", "--warmup", "0",
                           "--", PY, "-c", probe], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused mem Permission denied" in done.stderr and "refused environ" in done.stderr
    assert "opened" not in done.stderr


# what a run reaches above it: the step's first process, its output pipe, its memory
REACH = """\
import os, signal
def attempt(name, action):
    try:
        action(); print("reached", name)
    except OSError as exc:
        print("refused", name, exc.strerror)
attempt("pipe", lambda: open("/proc/1/fd/1", "w").write("---\\\\nseconds: 0.0001\\\\n"))
attempt("mem", lambda: open("/proc/1/mem", "r+b", buffering=0))
attempt("maps", lambda: open("/proc/1/maps").read())
os.kill(1, signal.SIGKILL)  # ignored: the namespace's first process takes no SIGKILL from inside
print("parent", os.getppid())
print("---"); print("alive: 1")
"""


def test_in_the_sandbox_measure_is_the_first_process_and_nothing_above_a_run_is_reachable(
    tmp_path: Path,
) -> None:
    prefix, env, _ = sandboxed(tmp_path)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "2", "--warmup", "0",
                           "--", PY, "-c", REACH], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    values = summary(done.stdout)
    assert values["alive"] == 1 and values["runs"] == 2  # measure outlived the SIGKILL
    assert "reached" not in done.stderr and done.stderr.count("parent 1") == 2
    for name in ("pipe", "mem", "maps"):
        assert f"refused {name} Permission denied" in done.stderr


def test_in_the_sandbox_measure_refuses_to_run_below_a_shell(tmp_path: Path) -> None:
    from autoresearch.executors._steps import is_measure, plain_argv

    def measure_argv(command: str) -> list[str] | None:
        argv = plain_argv(command)
        return argv if argv and is_measure(argv) else None

    prefix, env, _ = sandboxed(tmp_path)
    prefix.remove("--as-pid-1")
    done = subprocess.run([*prefix, "/bin/sh", "-c", f"{PY} -m autoresearch measure -- true; true"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "measure must be the step's command itself" in done.stderr and "---" not in done.stdout
    assert measure_argv("autoresearch measure --repeat 3 --same checksum -- python bench.py") is not None
    assert measure_argv("python -m autoresearch measure -- python b.py") is not None
    assert measure_argv("cd bench && autoresearch measure -- python b.py") is None
    assert measure_argv("autoresearch measure -- python $HOME/b.py") is None  # the shell would expand it
    assert measure_argv("autoresearch measure --metric=ops -- python b.py") is not None
    assert plain_argv("X=1 autoresearch measure -- python b.py") is None and plain_argv("") is None
    assert plain_argv("python prepare.py evaluate") == ["python", "prepare.py", "evaluate"]
    # what init --bench writes for a benchmark with shell syntax: the shell is below measure
    shelled = "autoresearch measure --repeat 5 --warmup 1 -- sh -c 'cd bench && python run.py'"
    assert measure_argv(shelled) == ["autoresearch", "measure", "--repeat", "5", "--warmup", "1", "--",
                                     "sh", "-c", "cd bench && python run.py"]  # fmt: skip
    assert measure_argv("python bench.py") is None


LOCKED = """\
import os
stash = "/tmp/.stash"
print("found:", sorted(os.listdir(stash)) if os.path.isdir(stash) else [])
os.makedirs(stash + "/inner", exist_ok=True)
open(stash + "/inner/answer", "w").write("42")
os.chmod(stash + "/inner", 0o500)
os.chmod(stash, 0o500)  # no write permission: without capabilities nobody may delete from it
print("---"); print("ok: 1")
"""


def test_a_folder_a_run_locks_is_emptied_all_the_same(tmp_path: Path) -> None:
    prefix, env, _ = sandboxed(tmp_path)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "2", "--warmup", "1",
                           "--", PY, "-c", LOCKED], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("found: []") == 3  # the warm-up's locked stash was gone for each timed run


MARKS = """\
import os
roots = ["/tmp", "/dev/shm", os.path.dirname(os.environ["TMPDIR"])]  # kept between runs
found = []
for root in roots:
    st = os.stat(root)
    if "user.answer" in os.listxattr(root):
        found.append(root + " xattr")
    if int(st.st_mtime) == 123456789:
        found.append(root + " mtime")
    if st.st_mode & 0o7777 == 0o1751:
        found.append(root + " mode")
    os.setxattr(root, "user.answer", b"42")
    os.utime(root, (123456789, 123456789))
    os.chmod(root, 0o1751)
print("found:", found)
print("---"); print("ok: 1")
"""


def test_a_run_leaves_nothing_in_the_attributes_of_the_folders_kept_between_runs(tmp_path: Path) -> None:
    """An extended attribute, a time or a mode on /tmp would carry an answer to the next run."""
    prefix, env, _ = sandboxed(tmp_path)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "2", "--warmup", "1",
                           "--", PY, "-c", MARKS], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("found: []") == 3, done.stderr


CHAIN_C = r"""
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(void) {  /* bind the survivor's socket, then fork and exit as fast as C can: a new pid each time */
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    memcpy(a.sun_path + 1, "measure-test-survivor", 21);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    bind(s, (struct sockaddr *) &a, sizeof(sa_family_t) + 22); listen(s, 1);
    if (fork()) return 0;
    for (;;) if (fork()) _exit(0);
}
"""
FORKS = """\
import os, socket, subprocess, sys
try:  # a survivor of an earlier run answers on an abstract socket
    probe = socket.socket(socket.AF_UNIX); probe.connect("\\0measure-test-survivor")
    print("survivor found")
except OSError:
    print("no survivor")
sys.stdout.flush()
subprocess.run([sys.argv[1]], check=True)
print("---"); print("ok: 1")
"""


def test_a_process_that_keeps_changing_its_pid_does_not_outlive_its_run(tmp_path: Path) -> None:
    """Listing children and killing them chases a pid that is gone by then; as the sandbox's
    first process measure kills everything else at once."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: a fork chain in Python is too slow to outrun the kill")
    prefix, env, _ = sandboxed(tmp_path)
    chain = tmp_path / "repo" / "work" / "chain"
    source = tmp_path / "chain.c"
    source.write_text(CHAIN_C)
    subprocess.run([compiler, "-O2", "-o", str(chain), str(source)], check=True)
    done = subprocess.run([*prefix, PY, "-m", "autoresearch", "measure", "--repeat", "3", "--warmup", "1",
                           "--", PY, "-c", FORKS, str(chain)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no survivor") == 4 and "survivor found" not in done.stderr
