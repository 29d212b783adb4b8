"""autoresearch.toml loading: valid files, defaults, and malformed files with their messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.config import load_config
from autoresearch.errors import ConfigError

GOOD = """
[task]
editable = ["train.py", "src/**/*.py"]
protected = ["prepare.py"]
run = "python train.py"
time_budget = 60

[metric]
name = "val_bpb"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "autoresearch.toml"
    path.write_text(text)
    return path


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.root == tmp_path.resolve()
    assert config.editable == ("train.py", "src/**/*.py")
    assert config.metric.name == "val_bpb" and config.metric.direction == "minimize"
    assert config.time_budget == 60.0 and config.timeout == 600.0
    assert config.allowance == 30.0  # max(30 s, budget / 2)
    assert config.judge.min_delta == 0.0 and config.judge.baseline_runs == 5
    assert config.judge.rule == "sequential" and config.judge.max_runs == 5
    assert config.max_memory_mb is None
    limited = load_config(write(tmp_path, GOOD.replace("time_budget = 60", "time_budget = 60\nmax_memory_mb = 8192")))
    assert limited.max_memory_mb == 8192.0
    assert config.max_file_kb == 1024.0
    assert config.budget_steps == ("check", "run", "evaluate")  # every step runs the candidate's code
    alone = load_config(write(tmp_path, GOOD.replace("time_budget = 60", 'time_budget = 60\nbudget_steps = ["run"]')))
    assert alone.budget_steps == ("run",)


@pytest.mark.parametrize(("value", "seconds", "share"), [("150", 150.0, None), ("0", 0.0, None),
                                                        ('"100%"', 10.0, 1.0), ('" 50 %"', 10.0, 0.5)])  # fmt: skip
def test_budget_allowance_is_seconds_or_a_share_of_the_baselines_time(
    tmp_path: Path, value: str, seconds: float, share: float | None
) -> None:
    config = load_config(write(tmp_path, GOOD.replace("time_budget = 60", f"time_budget = 60\nbudget_allowance = {value}")))
    assert config.allowance == seconds and config.budget_allowance_share == share


@pytest.mark.parametrize("value", ['"0%"', '"lots"', '"-5%"', "-1", "true"])
def test_a_bad_budget_allowance_says_what_is_expected(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, GOOD.replace("time_budget = 60", f"time_budget = 60\nbudget_allowance = {value}"))
    with pytest.raises(ConfigError, match=r"\[task\] budget_allowance: found .*expected"):
        load_config(path)


def test_folder_path_finds_the_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    assert load_config(tmp_path).run == "python train.py"


def test_agent_tables_are_passed_through(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, GOOD + '\n[agent.tuner]\nparams = { LR = "log:1e-4:1e-1" }\n')
    )
    assert config.agent_options("tuner") == {"params": {"LR": "log:1e-4:1e-1"}}
    assert config.agent_options("openai") == {}


BAD = [
    ("missing", None, "not found"),
    ("not toml", "[task\n", "not valid TOML"),
    ("no task table", '[metric]\nname = "x"\n', "missing table [task]"),
    ("unknown table", GOOD + "[tasks]\nx = 1\n", "unknown table [tasks]"),
    (
        "bad constraint",
        GOOD.replace("[metric]", '[metric]\nconstraints = ["peak_rss <= 1.25 * bestt"]'),
        "[metric] constraints: found 'peak_rss <= 1.25 * bestt', expected KEY OP BOUND",
    ),
    (
        "unknown task key",
        GOOD.replace("[task]", '[task]\neditible = ["x"]'),
        "[task] unknown key 'editible'",
    ),
    (
        "editable empty",
        GOOD.replace('["train.py", "src/**/*.py"]', "[]"),
        "[task] editable: found [], expected at least one glob",
    ),
    (
        "editable wrong type",
        GOOD.replace('["train.py", "src/**/*.py"]', "3"),
        "[task] editable: found 3, expected a list",
    ),
    (
        "escaping path",
        GOOD.replace('["prepare.py"]', '["../x.py"]'),
        "[task] protected: found '../x.py', expected paths relative",
    ),
    (
        "no run",
        GOOD.replace('run = "python train.py"', ""),
        "[task] run: found None, expected the command",
    ),
    (
        "negative budget",
        GOOD.replace("time_budget = 60", "time_budget = -5"),
        "[task] time_budget: found -5, expected a number > 0",
    ),
    (
        "budget string",
        GOOD.replace("time_budget = 60", 'time_budget = "5m"'),
        "[task] time_budget: found '5m', expected a number",
    ),
    (
        "timeout below budget",
        GOOD.replace("time_budget = 60", "time_budget = 60\ntimeout = 10"),
        "[task] timeout: found 10.0, expected at least time_budget",
    ),
    (
        "memory limit zero",
        GOOD.replace("time_budget = 60", "time_budget = 60\nmax_memory_mb = 0"),
        "[task] max_memory_mb: found 0, expected a number > 0",
    ),
    (
        "unknown budget step",
        GOOD.replace("time_budget = 60", 'time_budget = 60\nbudget_steps = ["run", "train"]'),
        "[task] budget_steps: found ['run', 'train'], expected a non-empty list of 'check', 'run', 'evaluate'",
    ),
    (
        "file size limit negative",
        GOOD.replace("time_budget = 60", "time_budget = 60\nmax_file_kb = -1"),
        "[task] max_file_kb: found -1, expected a number > 0",
    ),
    (
        "bad direction",
        GOOD + 'direction = "lower"\n',
        "[metric] direction: found 'lower', expected one of 'minimize', 'maximize'",
    ),
    (
        "bad format",
        GOOD + 'format = "xml"\n',
        "[metric] format: found 'xml', expected one of 'summary', 'regex', 'json'",
    ),
    (
        "regex without group",
        GOOD + 'format = "regex"\npattern = "val: [0-9.]+"\n',
        "[metric] pattern: found 'val: [0-9.]+', expected a regular expression with exactly one group",
    ),
    (
        "broken regex",
        GOOD + 'format = "regex"\npattern = "val: ([0-9.]+"\n',
        "expected a valid regular expression",
    ),
    ("no metric name", GOOD.replace('name = "val_bpb"', ""), "[metric] name: found None"),
    ("unknown judge key", GOOD + "[judge]\nmin_detla = 0.1\n", "[judge] unknown key 'min_detla'"),
    (
        "baseline runs zero",
        GOOD + "[judge]\nbaseline_runs = 0\n",
        "[judge] baseline_runs: found 0, expected an integer >= 1",
    ),
    (
        "bool as number",
        GOOD + "[judge]\nmin_delta = true\n",
        "[judge] min_delta: found True, expected a number",
    ),
    (
        "agent not a table",
        GOOD + "[agent]\ntuner = 3\n",
        "[agent.tuner]: found 3, expected a table",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_key_and_value(
    tmp_path: Path, case: str, text: str | None, message: str
) -> None:
    path = tmp_path / "autoresearch.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
