"""Metric parsing: upstream's summary block, regex and JSON result files, and their failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoresearch.config import MetricConfig
from autoresearch.errors import MetricError
from autoresearch.metrics import parse, parse_summary

UPSTREAM = """step 00953 | loss 3.2 | dt 310ms
---
val_bpb:          0.997900
training_seconds: 300.1
peak_vram_mb:     45060.2
mfu_percent:      39.80
num_params_M:     50.3
depth:            8
device:           cuda
"""


def test_summary_keeps_every_numeric_key() -> None:
    found = parse_summary(UPSTREAM)
    assert found["val_bpb"] == pytest.approx(0.9979)
    assert found["peak_vram_mb"] == pytest.approx(45060.2)
    assert found["depth"] == 8.0
    assert "device" not in found  # not numeric


def test_summary_uses_the_last_block_only() -> None:
    text = "---\nscore: 1.0\nmore output\n---\nscore: 2.0\n"
    assert parse_summary(text)["score"] == 2.0


def test_a_primary_metric_printed_twice_in_one_block_is_an_error() -> None:
    """Which one is the measurement? The last one won: a run printed its loss, then 1e-06."""
    with pytest.raises(MetricError, match=r"metric 'loss' printed 2 times in the summary block \(4, then 1e-06\)"):
        parse(MetricConfig(name="loss"), "---\nloss: 4.0\nsteps: 10\nloss: 0.000001\n")
    found = parse(MetricConfig(name="loss"), "---\nloss: 4.0\nsteps: 10\nsteps: 11\n")  # a secondary: the last
    assert found == {"loss": 4.0, "steps": 11.0}


def test_lines_before_the_separator_do_not_count() -> None:
    with pytest.raises(MetricError, match="missing"):
        parse(MetricConfig(name="val_bpb"), "val_bpb: 0.5\nno separator\n")
    with pytest.raises(MetricError, match=r"^metric 'second' missing from the output \(it reported cpu_seconds, seconds\)$"):
        parse(MetricConfig(name="second"), "---\nseconds: 0.5\ncpu_seconds: 0.4\n")  # a typo: say what is there


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_primary_metric_is_an_error(value: str) -> None:
    with pytest.raises(MetricError, match="not finite"):
        parse(MetricConfig(name="score"), f"---\nscore: {value}\n")


@pytest.mark.parametrize("value", ["-1e308", "1.7e308", "1e101"])
def test_a_primary_metric_beyond_any_measurement_is_an_error(value: str) -> None:
    """Two runs at -1e308 overflowed the judge's sums and stopped the session; one at 1.7e308
    broke the report's plot. Secondary values that far out are left out, as if not reported
    (a constraint on one is broken); a secondary nan stays, as the run reported it."""
    with pytest.raises(MetricError, match=r"out of range .*beyond ±1e\+100"):
        parse(MetricConfig(name="score"), f"---\nscore: {value}\n")
    found = parse(MetricConfig(name="score"), f"---\nscore: -1e100\npeak_mb: {value}\nsteps: nan\n")
    assert found.keys() == {"score", "steps"} and found["score"] == -1e100


def test_regex_takes_the_last_match() -> None:
    config = MetricConfig(name="ms", format="regex", pattern=r"render: ([0-9.]+) ms")
    assert parse(config, "render: 12.5 ms\nrender: 11.0 ms\n") == {"ms": 11.0}
    with pytest.raises(MetricError, match="matched nothing"):
        parse(config, "nothing here")


def test_json_result_file(tmp_path: Path) -> None:
    config = MetricConfig(name="accuracy", direction="maximize", format="json", path="result.json")
    (tmp_path / "result.json").write_text(json.dumps({"accuracy": 0.91, "loss": 0.3, "name": "x"}))
    assert parse(config, "", tmp_path) == {"accuracy": 0.91, "loss": 0.3}
    (tmp_path / "result.json").write_text('{"accuracy": "high"}')
    with pytest.raises(MetricError, match="not a number"):
        parse(config, "", tmp_path)
    (tmp_path / "result.json").unlink()
    with pytest.raises(MetricError, match="was not written"):
        parse(config, "", tmp_path)
