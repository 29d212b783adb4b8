"""A recorded session for the report tests: a real replay session on the toy task.

Its experiments: baseline 13, keep 10, discard 50, crash, invalid (edits the harness),
keep 2 (a description and diff with HTML in them), crash (nan). Compute is priced, so
there is spend to show.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import TOY_PARAMS, TOY_SCORE, TOY_TOML, make_repo, write_patch_dir

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions

TAG = "night"
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"
RLO = "\u202e"  # right-to-left override: "Trojan Source"


def _sr(search: str, replace: str, title: str, path: str = "params.py") -> str:
    return f"# {title}\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


PATCHES = {
    "01-improve": _sr("X = 1.0", "X = 2.0", "X 1 -> 2"),
    "02-worse": _sr("Y = 2.0", "Y = 6.0", "Y 2 -> 6"),
    "03-crash": _sr("Y = 2.0", "Y = 2.0\nraise RuntimeError('diverged')", "diverge on purpose"),
    "04-outside": _sr("score = (", "score = 0 * (", "edit the ruler", path="score.py"),
    # the comment ends in a right-to-left override: shown as is, the line reads otherwise
    "05-improve": _sr("Y = 2.0", f"Y = 0.0  # <img src=x onerror=alert(1)> {RLO}1 = Y", f"Y 2 -> 0 {HOSTILE}"),
    "06-nan": _sr("X = 2.0", "X = float('nan')", "nan"),
}
KEPT = ("X 1 -> 2", f"Y 2 -> 0 {HOSTILE}")


def toy_task(root: Path) -> Path:
    toml = TOY_TOML.replace("{python}", sys.executable)
    files = {
        "params.py": TOY_PARAMS,
        "score.py": TOY_SCORE,
        "program.md": "Minimise.\n",
        "autoresearch.toml": toml,
    }
    return make_repo(root / "task", files)


def record_session(root: Path, patches: dict[str, str] | None = None, tag: str = TAG) -> Path:
    """The toy task at ``root/task`` with session ``tag`` run over ``patches``; the task folder."""
    repo = toy_task(root)
    folder = write_patch_dir(root / "patches", patches or PATCHES)
    options = SessionOptions(tag=tag, gpu_price=2.74)
    engine = Engine(load_config(repo), ReplayAgent(folder), options=options)
    engine.run()
    engine.ledger.close()
    return repo
