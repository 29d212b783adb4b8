"""Running a whole session on the toy task with a given agent, for the backend tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from conftest import TOY_PARAMS

from autoresearch.agents._base import Agent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.records import Experiment

BEST_PARAMS = TOY_PARAMS.replace("X = 1.0", "X = 3.0").replace("Y = 2.0", "Y = -1.0")


def run_toy_session(
    repo: Path, agent: Agent, max_experiments: int, **options: object
) -> tuple[Engine, list[Experiment]]:
    """Run a session tagged ``t`` on ``repo``; the engine and its ledger rows."""
    opts = SessionOptions(tag="t", max_experiments=max_experiments, **options)  # type: ignore[arg-type]
    engine = Engine(load_config(repo), agent, options=opts)
    engine.run()
    return engine, engine.ledger.experiments(engine.session)


def run_cli(
    repo: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m autoresearch -C repo ARGS`` with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "autoresearch", "-C", str(repo), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files_under(path: Path) -> list[Path]:
    """Every regular file under ``path``."""
    return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
