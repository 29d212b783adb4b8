"""The task configuration: ``autoresearch.toml`` loaded into frozen dataclasses.

Every validation error names the file, the key, what was found and what is allowed, and
unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.constraints import Constraint
from autoresearch.constraints import parse as parse_constraint
from autoresearch.errors import ConfigError

CONFIG_NAME = "autoresearch.toml"
STATE_DIR = ".autoresearch"  # per-task state: ledger, logs, worktrees, locks
DIRECTIONS = ("minimize", "maximize")
FORMATS = ("summary", "regex", "json")
JUDGE_RULES = ("sequential", "naive")
SANDBOXES = ("auto", "bwrap", "none")  # [task] sandbox: bwrap where it works, or none
STEPS = ("check", "run", "evaluate")  # a run's steps, in order; [task] budget_steps names some
REFERENCES = ("", "baseline")  # [task] reference: no reference checkout, or the session's baseline
ALLOWANCE_FLOOR = 10.0  # seconds: the least a budget_allowance given as a share ("100%") allows
# The [agent.NAME] tables; claude-code, codex and aider are presets of the command agent.
AGENT_NAMES = ("replay", "tuner", "anthropic", "openai", "command", "claude-code", "codex", "aider")
RAY_DATA = ("setup", "shared")  # how a Ray node reaches the data git does not track


@dataclass(frozen=True)
class MetricConfig:
    """Which number decides, and how it is read from a run's output."""

    name: str = "score"
    direction: str = "minimize"
    format: str = "summary"
    pattern: str = ""  # regex with one group, for format = "regex"
    path: str = "result.json"  # file under AUTORESEARCH_OUT, for format = "json"
    constraints: tuple[Constraint, ...] = ()  # bounds on secondary metrics (autoresearch.constraints)

    def better(self, a: float, b: float, min_delta: float = 0.0) -> bool:
        """True when ``a`` beats ``b`` by strictly more than ``min_delta``."""
        return a < b - min_delta if self.direction == "minimize" else a > b + min_delta


@dataclass(frozen=True)
class JudgeConfig:
    """The keep/discard rule's settings (see ``autoresearch.judge``)."""

    rule: str = "sequential"  # sequential | naive
    min_delta: float = 0.0  # a keep must beat the best by strictly more than this
    baseline_runs: int = 5  # runs of the unchanged code: the first noise estimate
    max_runs: int = 5  # sequential: most runs of one candidate, and of a new best's re-score
    confidence: float = 0.95  # sequential: one-sided confidence that a keep is better
    confirm_runs: int = 0  # naive: extra runs of a candidate that looks better
    noise_factor: float = 0.0  # naive: a keep must also beat the best by this many sigmas


@dataclass(frozen=True)
class CostConfig:
    """Prices for cost accounting; model prices override the built-in table."""

    gpu_per_hour: float = 0.0  # dollars per slot-hour of compute
    models: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RayConfig:
    """``[ray]``: what one run asks of a Ray cluster, and how its nodes reach the task's data."""

    gpus_per_run: float = 1.0  # 0 on a CPU cluster
    cpus_per_run: float = 1.0
    data: str = "setup"  # "setup": the task's setup step once per node; "shared": `shared` below
    shared: str = ""  # data = "shared": a folder every node sees, laid out like the task folder
    max_log_mb: float = 16.0  # per step log sent back to the orchestrator (the end is kept)
    max_out_mb: float = 256.0  # AUTORESEARCH_OUT files sent back per run (the rest are left out)
    start_timeout: float = 600.0  # seconds a run waits while no live node can hold it (an autoscaler)


@dataclass(frozen=True)
class TaskConfig:
    """One task: what may be edited, how to run it, what to measure."""

    root: Path  # the folder holding autoresearch.toml
    instructions: str = "program.md"
    editable: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    link: tuple[str, ...] = ()  # untracked paths (data, caches) symlinked into each worktree
    protected_data: tuple[
        str, ...
    ] = ()  # untracked files (e.g. validation data) hashed after setup
    setup: str = ""
    check: str = ""
    run: str = ""
    evaluate: str = ""
    reference: str = ""  # "baseline": evaluate may read a checkout of the baseline (measure --same)
    time_budget: float = 300.0
    timeout: float = 600.0
    budget_allowance: float | None = None  # seconds; None: max(30 s, budget / 2), or with a share:
    budget_allowance_share: float | None = None  # "N%": of the baseline's timed steps, at least 10 s
    budget_steps: tuple[str, ...] = STEPS  # steps whose wall time counts against the budget
    sandbox: str = "auto"  # steps in bubblewrap ("bwrap"), unsandboxed ("none"), or bwrap if it works
    network: bool = False  # whether sandboxed steps may reach the network
    env: tuple[str, ...] = ()  # names of environment variables passed into sandboxed steps
    holdout: tuple[str, ...] = ()  # globs only the evaluate step may read (validation data)
    max_log_mb: float = 64.0  # per step; a longer log keeps its tail
    max_memory_mb: float | None = None  # per step, its processes together; None: no limit
    max_file_kb: float = 1024.0  # an editable file a proposal grows past this is refused
    metric: MetricConfig = field(default_factory=MetricConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    agents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # [agent.<name>]
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def allowance(self) -> float:
        """Seconds a run may exceed the budget before it is discarded as over budget."""
        if self.budget_allowance is not None:
            return self.budget_allowance
        if self.budget_allowance_share is not None:
            return ALLOWANCE_FLOOR  # the share of the baseline's time, but never less than this
        return max(30.0, self.time_budget / 2)

    def agent_options(self, name: str) -> Mapping[str, Any]:
        """The ``[agent.<name>]`` table, empty when absent."""
        return self.agents.get(name, {})


# --- validation helpers -----------------------------------------------------------------


class _Section:
    """Reads typed keys from one table and reports errors with file, key and value."""

    def __init__(self, path: Path, name: str, table: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(table, dict):
            self.fail("", table, "a table")
        self.table: dict[str, Any] = table

    def fail(self, key: str, found: Any, allowed: str) -> None:
        where = f"[{self.name}] {key}".rstrip()
        raise ConfigError(f"{self.path}: {where}: found {found!r}, expected {allowed}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.table:
            if key not in allowed:
                raise ConfigError(
                    f"{self.path}: [{self.name}] unknown key {key!r}; allowed: {', '.join(allowed)}"
                )

    def string(self, key: str, default: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            self.fail(key, value, "a string")
        return str(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, value, "a list of non-empty strings")
        return tuple(value)

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self.table.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, value, "a number")
        if positive and value <= 0:
            self.fail(key, value, "a number > 0")
        if value < 0:
            self.fail(key, value, "a number >= 0")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, value, f"an integer >= {minimum}")
        return int(value)

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in allowed:
            self.fail(key, value, "one of " + ", ".join(repr(a) for a in allowed))
        return value


# --- sections -------------------------------------------------------------------------------

_TASK_KEYS = (
    "instructions", "editable", "protected", "protected_data", "context", "link", "setup", "check", "run",
    "evaluate", "reference", "time_budget", "timeout", "budget_allowance", "budget_steps", "sandbox", "network", "env",
    "holdout", "max_log_mb", "max_memory_mb", "max_file_kb",
)  # fmt: skip
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _relative_paths(sec: _Section, key: str) -> tuple[str, ...]:
    values = sec.strings(key)
    for value in values:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            sec.fail(key, value, "paths relative to the task folder, without '..'")
    return values


def _task(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    sec = _Section(path, "task", raw.get("task", {}))
    sec.check_keys(_TASK_KEYS)
    out: dict[str, Any] = {
        "instructions": sec.string("instructions", "program.md"),
        "editable": _relative_paths(sec, "editable"),
        "protected": _relative_paths(sec, "protected"),
        "context": _relative_paths(sec, "context"),
        "link": _relative_paths(sec, "link"),
        "protected_data": _relative_paths(sec, "protected_data"),
    }
    for key in ("setup", "check", "run", "evaluate"):
        out[key] = sec.string(key, "")
    out["reference"] = sec.choice("reference", "", REFERENCES)
    if out["reference"] and not out["evaluate"].strip():
        sec.fail("reference", out["reference"], "an evaluate step to read it (reference serves measure --same)")
    words = out["evaluate"].split()
    if "--same" in words and "--reference" not in words and not out["reference"]:
        sec.fail("reference", sec.table.get("reference"), '"baseline": evaluate runs `measure --same`, which '
                 "compares every run with the baseline's output")  # fmt: skip
    if not out["editable"]:
        sec.fail("editable", sec.table.get("editable"), "at least one glob the agent may edit")
    if not out["run"].strip() and not out["evaluate"].strip():  # a speed task: evaluate is the run
        sec.fail("run", sec.table.get("run"), "the command that runs one experiment (or an evaluate)")
    out["time_budget"] = sec.number("time_budget", 300.0, positive=True)
    out["timeout"] = sec.number("timeout", max(600.0, 2 * out["time_budget"]), positive=True)
    if out["timeout"] < out["time_budget"] and out["run"].strip():  # no run step: no budget to fit
        sec.fail("timeout", out["timeout"], f"at least time_budget ({out['time_budget']:g})")
    allowance = sec.table.get("budget_allowance")
    share = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", allowance) if isinstance(allowance, str) else None
    if share and float(share.group(1)) > 0:
        out["budget_allowance_share"] = float(share.group(1)) / 100
    elif isinstance(allowance, str):
        sec.fail("budget_allowance", allowance, 'seconds (a number >= 0) or a share of the baseline\'s time ("100%")')
    elif allowance is not None:
        out["budget_allowance"] = sec.number("budget_allowance", 0.0)
    if "budget_steps" in sec.table:
        steps = sec.strings("budget_steps")
        if not steps or any(step not in STEPS for step in steps):
            sec.fail("budget_steps", list(steps), f"a non-empty list of {', '.join(map(repr, STEPS))}")
        out["budget_steps"] = tuple(dict.fromkeys(steps))
    if "max_memory_mb" in sec.table:
        out["max_memory_mb"] = sec.number("max_memory_mb", 0.0, positive=True)
    out["max_file_kb"] = sec.number("max_file_kb", 1024.0, positive=True)
    out.update(_sandbox(sec))
    return out


def _sandbox(sec: _Section) -> dict[str, Any]:
    """The sandbox keys: sandbox, network, env, holdout, max_log_mb."""
    network = sec.table.get("network", False)
    if not isinstance(network, bool):
        sec.fail("network", network, "true or false")
    env = sec.strings("env")
    for name in env:
        if not _ENV_NAME.match(name):
            sec.fail("env", name, "names of environment variables (letters, digits, '_')")
    return {
        "sandbox": sec.choice("sandbox", "auto", SANDBOXES),
        "network": network,
        "env": env,
        "holdout": _relative_paths(sec, "holdout"),
        "max_log_mb": sec.number("max_log_mb", 64.0, positive=True),
    }


def _metric(path: Path, raw: dict[str, Any]) -> MetricConfig:
    sec = _Section(path, "metric", raw.get("metric", {}))
    sec.check_keys(("name", "direction", "format", "pattern", "path", "constraints"))
    name = sec.string("name", "")
    if not name.strip():
        sec.fail("name", sec.table.get("name"), "the metric's name, e.g. 'val_bpb'")
    fmt = sec.choice("format", "summary", FORMATS)
    pattern = sec.string("pattern", "")
    if fmt == "regex":
        _check_pattern(sec, pattern)
    result_path = sec.string("path", "result.json")
    bad_path = (
        not result_path.strip()
        or Path(result_path).is_absolute()
        or ".." in Path(result_path).parts
    )
    if fmt == "json" and bad_path:
        sec.fail("path", result_path, "a file name relative to AUTORESEARCH_OUT")
    direction = sec.choice("direction", "minimize", DIRECTIONS)
    raw_constraints = sec.table.get("constraints", [])
    if not isinstance(raw_constraints, list) or not all(isinstance(c, str) for c in raw_constraints):
        sec.fail("constraints", raw_constraints, "a list of strings like 'peak_rss_mb <= 1.05 * best'")
    bounds = []
    for text in raw_constraints:
        try:
            bounds.append(parse_constraint(text))
        except ValueError as exc:
            sec.fail("constraints", text, str(exc).removeprefix(f"{text!r}: "))  # not the text twice
    return MetricConfig(name, direction, fmt, pattern, result_path, tuple(bounds))


def _check_pattern(sec: _Section, pattern: str) -> None:
    import re

    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        sec.fail("pattern", pattern, f"a valid regular expression ({exc})")
        return
    if not pattern or groups != 1:
        sec.fail("pattern", pattern, "a regular expression with exactly one group")


def _judge(path: Path, raw: dict[str, Any]) -> JudgeConfig:
    sec = _Section(path, "judge", raw.get("judge", {}))
    sec.check_keys(("rule", "min_delta", "baseline_runs", "max_runs", "confidence",
                    "confirm_runs", "noise_factor"))  # fmt: skip
    confidence = sec.number("confidence", 0.95)
    if not 0.5 <= confidence < 1.0:
        sec.fail("confidence", confidence, "a number in [0.5, 1), e.g. 0.95")
    return JudgeConfig(
        rule=sec.choice("rule", "sequential", JUDGE_RULES),
        min_delta=sec.number("min_delta", 0.0),
        baseline_runs=sec.integer("baseline_runs", 5, minimum=1),
        max_runs=sec.integer("max_runs", 5, minimum=1),
        confidence=confidence,
        confirm_runs=sec.integer("confirm_runs", 0),
        noise_factor=sec.number("noise_factor", 0.0),
    )


def _cost(path: Path, raw: dict[str, Any]) -> CostConfig:
    sec = _Section(path, "cost", raw.get("cost", {}))
    sec.check_keys(("gpu_per_hour", "models"))
    models = sec.table.get("models", {})
    if not isinstance(models, dict):
        sec.fail("models", models, "a table of model name -> {input, output, cached} prices")
    parsed: dict[str, dict[str, float]] = {}
    for model, prices in models.items():
        msec = _Section(path, f"cost.models.{model}", prices)
        msec.check_keys(("input", "output", "cached", "cache_write"))
        parsed[model] = {k: msec.number(k, 0.0) for k in msec.table}
    return CostConfig(gpu_per_hour=sec.number("gpu_per_hour", 0.0), models=parsed)


def _agents(path: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sec = _Section(path, "agent", raw.get("agent", {}))
    sec.check_keys(AGENT_NAMES)
    for name, table in sec.table.items():
        _Section(path, f"agent.{name}", table)  # each backend validates its own keys
    return dict(sec.table)


def _ray(path: Path, raw: dict[str, Any]) -> RayConfig:
    sec = _Section(path, "ray", raw.get("ray", {}))
    sec.check_keys(("gpus_per_run", "cpus_per_run", "data", "shared", "max_log_mb", "max_out_mb",
                    "start_timeout"))  # fmt: skip
    data = sec.choice("data", "setup", RAY_DATA)
    shared = sec.string("shared", "")
    if data == "shared" and not Path(shared).is_absolute():
        sec.fail("shared", shared, "with data = 'shared': an absolute path every node sees")
    if data != "shared" and shared:
        sec.fail("data", data, "'shared' when [ray] shared is set")
    cpus = sec.number("cpus_per_run", 1.0)
    gpus = sec.number("gpus_per_run", 1.0)
    if cpus == 0 and gpus == 0:
        sec.fail("cpus_per_run", cpus, "> 0 when gpus_per_run is 0 (a run needs a CPU or a GPU)")
    return RayConfig(
        gpus_per_run=gpus,
        cpus_per_run=cpus,
        data=data,
        shared=shared,
        max_log_mb=sec.number("max_log_mb", 16.0, positive=True),
        max_out_mb=sec.number("max_out_mb", 256.0),
        start_timeout=sec.number("start_timeout", 600.0, positive=True),
    )


def load_config(path: str | Path) -> TaskConfig:
    """Load ``autoresearch.toml`` (a file, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run `autoresearch init` to create one)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for key in raw:
        if key not in ("task", "metric", "judge", "cost", "agent", "ray"):
            raise ConfigError(
                f"{path}: unknown table [{key}]; allowed: [task], [metric], [judge], [cost], [agent.NAME], [ray]"
            )
    if "task" not in raw:
        raise ConfigError(f"{path}: missing table [task]")
    task = _task(path, raw)  # sections are checked in file order, so the first error is reported
    return TaskConfig(
        root=path.parent.resolve(),
        metric=_metric(path, raw),
        judge=_judge(path, raw),
        cost=_cost(path, raw),
        agents=_agents(path, raw),
        ray=_ray(path, raw),
        **task,
    )
