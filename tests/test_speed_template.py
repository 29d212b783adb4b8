"""The `speed` template: its unit tests pass, bench.py prints its summary, the best constants
keep the output byte for byte, and the tuner searches every constant (no timing here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autoresearch import metrics, templates
from autoresearch.agents._constants import discover

BEST = {  # the fast settings (benchmarks/speed_template_constants.py times them)
    "minitext/tokens.py": {"USE_REGEX": 1, "COUNT_CHUNK_SIZE": 4096},
    "minitext/layout.py": {"WIDTH_CACHE_SIZE": 16384, "ASCII_FAST_PATH": 1},
    "minitext/template.py": {"TEMPLATE_CACHE_SIZE": 16},
}
DEFAULTS = {
    "USE_REGEX": 0,
    "COUNT_CHUNK_SIZE": 1,
    "WIDTH_CACHE_SIZE": 0,
    "ASCII_FAST_PATH": 0,
    "TEMPLATE_CACHE_SIZE": 0,
}
FILES = {
    "README.md",
    "autoresearch.toml",
    "bench.py",
    "program.md",
    "minitext/__init__.py",
    "minitext/layout.py",
    "minitext/template.py",
    "minitext/tokens.py",
    "tests/test_minitext.py",
}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speed")
    templates.write_template("speed", root)
    return root


def copy_of(task: Path, dest: Path) -> Path:
    return Path(shutil.copytree(task, dest / "task"))


def set_constants(task: Path, settings: dict[str, dict[str, int]]) -> None:
    """Rewrite ``NAME = value`` lines in place (a trailing comment is kept)."""
    for rel, values in settings.items():
        path = task / rel
        text = path.read_text(encoding="utf-8")
        for name, value in values.items():
            pattern = rf"(?m)^({name}\s*=\s*)[^#\n]*?(\s*(?:#.*)?)$"
            text, n = re.subn(pattern, rf"\g<1>{value}\2", text)
            assert n == 1, f"{rel}: {name} not found exactly once"
        path.write_text(text, encoding="utf-8")


def unit_tests(task: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-B", "-m", "unittest", "discover", "-s", "tests", "-q"],
        cwd=task,
        capture_output=True,
        text=True,
        timeout=240,
    )


def bench(task: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-B", "bench.py"],
        cwd=task,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return metrics.parse_summary(done.stdout)


def constants_of(task: Path) -> dict[str, int | float | bool | str]:
    found = {}
    for path in sorted((task / "minitext").glob("*.py")):
        found.update({c.name: c.value for c in discover(path.name, path.read_text())})
    return found


def test_speed_is_an_available_template() -> None:
    assert "speed" in templates.available()
    assert templates.presets("speed") == []


def test_the_template_writes_its_files_and_no_bytecode(task: Path) -> None:
    written = {p.relative_to(task).as_posix() for p in task.rglob("*") if p.is_file()}
    assert written == FILES
    source = Path(templates.__file__).parent / "speed"
    assert not [p for p in source.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]


def test_the_template_unit_tests_pass_with_the_standard_library_only(task: Path) -> None:
    assert "pytest" not in (task / "tests" / "test_minitext.py").read_text()
    done = unit_tests(task)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Ran [1-9]\d+ tests", done.stderr), done.stderr


def test_bench_prints_a_summary_with_ops_and_an_integer_checksum(task: Path) -> None:
    summary = bench(task)
    assert summary["ops"] == 750
    assert summary["checksum"] == int(summary["checksum"]) and 0 <= summary["checksum"] < 2**32
    assert bench(task)["checksum"] == summary["checksum"]  # deterministic


def test_the_constants_default_to_the_slow_settings(task: Path) -> None:
    found = constants_of(task)
    assert {name: found[name] for name in DEFAULTS} == DEFAULTS
    assert set(found) == set(DEFAULTS)  # nothing else the tuner would list as left out


def test_the_best_constants_keep_the_checksum_and_the_unit_tests_pass(
    task: Path, tmp_path: Path
) -> None:
    fast = copy_of(task, tmp_path)
    set_constants(fast, BEST)
    assert constants_of(fast) == {n: v for values in BEST.values() for n, v in values.items()}
    assert bench(fast)["checksum"] == bench(task)["checksum"]
    done = unit_tests(fast)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_catch_an_output_change(task: Path, tmp_path: Path) -> None:
    broken = copy_of(task, tmp_path)
    layout = broken / "minitext" / "layout.py"
    text = layout.read_text()
    assert "(1 if i < left else 0)" in text
    layout.write_text(text.replace("(1 if i < left else 0)", "(1 if i >= gaps - left else 0)"))
    done = unit_tests(broken)
    assert done.returncode != 0
    assert "test_justify_widens_the_leftmost_gaps_first" in done.stderr


def test_the_tuner_searches_every_constant_over_a_range_holding_its_fast_value(
    task: Path,
) -> None:
    pytest.importorskip("optuna")
    from autoresearch.agents.tuner import TunerAgent
    from autoresearch.agents.tuner._options import TunerOptions
    from autoresearch.agents.tuner._space import build_space

    options = tomllib.loads((task / "autoresearch.toml").read_text())["agent"]["tuner"]
    assert sorted(options["include"]) == sorted(DEFAULTS)
    editable = {
        p.relative_to(task).as_posix(): p.read_text() for p in (task / "minitext").glob("*.py")
    }
    text = TunerAgent(**options).check(editable)
    assert f"tuner: {len(DEFAULTS)} constants searched" in text, text
    assert "left out" not in text, text
    for name in DEFAULTS:
        assert re.search(rf"^\s+{name}\s", text, re.M), text

    consts = [c for path, src in sorted(editable.items()) for c in discover(path, src)]
    current = {c.name: c.value for c in consts}
    dims, left = build_space(
        consts, TunerOptions.parse(options), current, {k: [v] for k, v in current.items()}
    )
    assert left == []
    best = {name: value for values in BEST.values() for name, value in values.items()}
    for dim in dims:
        assert dim.to_param(best[dim.key]) is not None, (dim.key, dim.distribution)
        assert dim.to_param(DEFAULTS[dim.key]) is not None, (dim.key, dim.distribution)


def test_the_task_config_loads(task: Path) -> None:
    from autoresearch.config import load_config

    config = load_config(task / "autoresearch.toml")
    assert config.editable == ("minitext/*.py",)
    assert config.check == "python -m unittest discover -s tests -q"
    assert config.metric.name == "seconds" and config.metric.direction == "minimize"
