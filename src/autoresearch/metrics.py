"""Reading the metric from a run: one parser, three formats.

- ``summary`` (upstream-compatible): after a line ``---``, lines ``key: value``; every
  numeric value is kept, the primary one decides.
- ``regex``: a pattern with one group, the last match wins.
- ``json``: a JSON object in a file under ``AUTORESEARCH_OUT``; numeric top-level keys.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from autoresearch.config import MetricConfig
from autoresearch.errors import MetricError

# Beyond this a number is no measurement: the judge's sums of squares and the plot's limits
# overflow near 1e308, and a run that prints -1e308 only wants to look infinitely better.
MAX_MAGNITUDE = 1e100
SUMMARY_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*:\s*(\S+)\s*$")


def parse_summary(text: str) -> dict[str, float]:
    """Numeric ``key: value`` lines after the last ``---`` line (later keys win)."""
    found: dict[str, float] = {}
    for key, value in _summary_lines(text):
        found[key] = value
    return found


def _summary_lines(text: str) -> list[tuple[str, float]]:
    """Every numeric ``key: value`` line after the last ``---`` line, in order."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return []
    found = []
    for line in lines[starts[-1] + 1 :]:
        match = SUMMARY_LINE.match(line)
        value = _number(match.group(2)) if match else None
        if match and value is not None:
            found.append((match.group(1), value))
    return found


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("%,"))
    except ValueError:
        return None


def _from_regex(text: str, pattern: str, name: str) -> dict[str, float]:
    matches = re.findall(pattern, text, flags=re.MULTILINE)
    if not matches:
        raise MetricError(f"metric {name!r}: pattern {pattern!r} matched nothing in the output")
    value = _number(str(matches[-1]))
    if value is None:
        raise MetricError(f"metric {name!r}: {matches[-1]!r} is not a number")
    return {name: value}


def link_on(out_dir: Path, rel: str) -> Path | None:
    """The first symlink on the way from ``out_dir`` to ``out_dir / rel``, or None. A step can
    point one at any file of this machine: it is never followed."""
    path = out_dir
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None


def _result_path(out_dir: Path, rel: str, name: str) -> Path:
    """``out_dir / rel``, refused when it goes through a link (its numbers would become the
    metric)."""
    link = link_on(out_dir, rel)
    if link is not None:
        raise MetricError(
            f"metric {name!r}: result file {rel} goes through a link "
            f"({link.relative_to(out_dir)}); it must be a plain file"
        )
    return out_dir / rel


def _from_json(path: Path, name: str) -> dict[str, float]:
    if not path.is_file():
        raise MetricError(f"metric {name!r}: result file {path.name} was not written")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetricError(f"metric {name!r}: result file {path.name} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MetricError(f"metric {name!r}: result file {path.name} holds no JSON object")
    found = {}
    for key, value in data.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[str(key)] = float(value)
        elif key == name:
            raise MetricError(f"metric {name!r}: {value!r} in {path.name} is not a number")
    return found


def parse(config: MetricConfig, output: str, out_dir: Path | None = None) -> dict[str, float]:
    """All metrics found; the primary one is present and finite, or ``MetricError``."""
    if config.format == "regex":
        found = _from_regex(output, config.pattern, config.name)
    elif config.format == "json":
        found = _from_json(_result_path(out_dir or Path("."), config.path, config.name), config.name)
    else:
        found = parse_summary(output)
        printed = [value for key, value in _summary_lines(output) if key == config.name]
        if len(printed) > 1:  # which one is the measurement is anyone's guess
            shown = ", then ".join(f"{v:g}" for v in printed[:3]) + (", ..." if len(printed) > 3 else "")
            raise MetricError(f"metric {config.name!r} printed {len(printed)} times in the summary "
                              f"block ({shown}): print it once")  # fmt: skip
    if config.name not in found:
        keys = ", ".join(sorted(found)[:12]) + (", ..." if len(found) > 12 else "")
        there = f" (it reported {keys})" if found else ""
        raise MetricError(f"metric {config.name!r} missing from the output{there}")
    value = found[config.name]
    if not math.isfinite(value):
        raise MetricError(f"metric {config.name!r} is not finite ({value})")
    if abs(value) > MAX_MAGNITUDE:
        raise MetricError(f"metric {config.name!r} is out of range ({value:g}: beyond ±{MAX_MAGNITUDE:g})")
    return {k: v for k, v in found.items() if not math.isfinite(v) or abs(v) <= MAX_MAGNITUDE}


__all__ = ["MAX_MAGNITUDE", "SUMMARY_LINE", "link_on", "parse", "parse_summary"]
