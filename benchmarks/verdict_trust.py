"""Can the verdicts be believed? Real sessions of null edits and real gains under 1% noise.

A toy task whose true value is 100 minus the effects switched on in params.py; each run
reports the true value plus Gaussian noise of sigma 1 (1%) drawn from the run's seed. The
replay agent proposes, interleaved, 200 null edits (a constant nothing reads) and gains
of 1, 2 and 4 sigma. The fake executor stands in for the processes, so only the judge is
measured. Printed side by side for `naive` (upstream's rule) and `sequential`: the share
of null edits kept, the share of each gain size kept, runs per experiment, and the final
best's recorded value minus its true value. Targets for sequential: <= 5% false keeps,
>= 80% of 2-sigma gains kept, |drift| <= 0.5 sigma.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch.agents.replay import ReplayAgent
from autoresearch.config import load_config
from autoresearch.engine import Engine, SessionOptions
from autoresearch.executors._base import Job
from autoresearch.executors.fake import FakeExecutor
from autoresearch.records import Verdict

SIGMA = 1.0
NULLS = 200
GAINS = {1.0: 20, 2.0: 60, 4.0: 20}  # effect in sigmas -> how many
JUDGES = {
    "naive": 'rule = "naive"\nbaseline_runs = 1',
    "sequential": "",  # the defaults
}


def plan(seed: int = 7) -> list[tuple[str, float]]:
    """(name, effect) of every proposal, interleaved; effect 0 is a null edit."""
    items = [(f"N{i}", 0.0) for i in range(NULLS)]
    for size, count in GAINS.items():
        items += [(f"G{len(items) + i}", size * SIGMA) for i in range(count)]
    random.Random(seed).shuffle(items)
    return items


def make_task(root: Path, judge: str, items: list[tuple[str, float]]) -> tuple[Path, Path]:
    repo, patches = root / "task", root / "patches"
    repo.mkdir(parents=True)
    patches.mkdir()
    (repo / "params.py").write_text("".join(f"{name} = 0\n" for name, _ in items))
    (repo / "effects.py").write_text(repr({name: effect for name, effect in items}) + "\n")
    (repo / "program.md").write_text("Lower the score.\n")
    (repo / "autoresearch.toml").write_text(
        '[task]\neditable = ["params.py"]\nprotected = ["effects.py"]\nrun = "true"\n'
        f'time_budget = 60\n[metric]\nname = "score"\n[judge]\n{judge}\n'
    )
    for i, (name, effect) in enumerate(items):
        kind = "null" if effect == 0 else f"gain {effect / SIGMA:g} sigma"
        (patches / f"{i:04d}").write_text(
            f"# {name}: {kind}\nparams.py\n<<<<<<< SEARCH\n{name} = 0\n=======\n{name} = 1\n>>>>>>> REPLACE\n"
        )
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "task"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)
    return repo, patches


def true_value(workdir: Path) -> float:
    effects: dict[str, float] = eval((workdir / "effects.py").read_text())  # our own file
    on = [line.split(" = ")[0] for line in (workdir / "params.py").read_text().splitlines()
          if line.endswith(" = 1")]  # fmt: skip
    return 100.0 - sum(effects[name] for name in on)


def noisy(job: Job) -> float:
    return true_value(job.workdir) + random.Random(job.seed).gauss(0.0, SIGMA)


def session(judge: str, items: list[tuple[str, float]]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, patches = make_task(Path(tmp), judge, items)
        executor = FakeExecutor(noisy)
        engine = Engine(load_config(repo), ReplayAgent(patches), options=SessionOptions(tag="v"),
                        executor=executor)  # fmt: skip
        engine.run()
        executor.close()
        rows = [r for r in engine.history.rows if r.agent != "baseline"]
        best = engine.history.best
        assert best is not None
        truth = true_value_of_commit(repo, best.commit)
    effect = {f"{i:04d}": e for i, (_, e) in enumerate(items)}
    kept = {e: 0 for e in {0.0, *GAINS}}
    total = {e: 0 for e in kept}
    for row in rows:
        size = effect[str(row.meta["patch"])] / SIGMA
        total[size] += 1
        kept[size] += row.verdict is Verdict.KEEP
    runs = sum(len(r.runs) for r in engine.history.rows) / len(engine.history.rows)
    out = {f"kept {size:g}": kept[size] / max(1, total[size]) for size in kept}
    out["runs per experiment"] = runs
    out["drift"] = ((best.metric or 0.0) - truth) / SIGMA
    return out


def true_value_of_commit(repo: Path, commit: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("params.py", "effects.py"):
            text = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=repo, check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
            (Path(tmp) / name).write_text(text)
        return true_value(Path(tmp))


def main() -> int:
    items = plan()
    results = {name: session(judge, items) for name, judge in JUDGES.items()}
    print(f"{NULLS} null edits and gains of 1/2/4 sigma ({GAINS[1.0]}/{GAINS[2.0]}/{GAINS[4.0]}), noise 1%")
    print(f"{'':28}" + "".join(f"{name:>14}" for name in results))
    rows = [("null edits kept", "kept 0"), ("1-sigma gains kept", "kept 1"),
            ("2-sigma gains kept", "kept 2"), ("4-sigma gains kept", "kept 4")]  # fmt: skip
    for label, key in rows:
        print(f"{label:28}" + "".join(f"{r[key]:>13.1%} " for r in results.values()))
    print(f"{'runs per experiment':28}" + "".join(f"{r['runs per experiment']:>14.2f}" for r in results.values()))
    print(f"{'best recorded - true (sigma)':28}" + "".join(f"{r['drift']:>+14.2f}" for r in results.values()))
    seq = results["sequential"]
    met = seq["kept 0"] <= 0.05 and seq["kept 2"] >= 0.80 and abs(seq["drift"]) <= 0.5
    print(f"targets for sequential (<= 5% nulls, >= 80% of 2-sigma gains, |drift| <= 0.5): "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
