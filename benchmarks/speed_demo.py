"""The speed template's session with the offline tuner: a speedup that holds when re-measured.

Runs `python -m autoresearch.demo --task speed` (the tuner over the template's constants,
its tests as the gate, `autoresearch measure` as the metric), then re-runs the baseline and
the best commit side by side on fresh seeds (interleaved, N each) and prints the recorded
and the re-measured median seconds with their ratios.

Targets: the re-measured speedup is real (>= 1.2x) and within 10% of what the session
recorded.

Usage: python benchmarks/speed_demo.py [--experiments N] [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from autoresearch import demo
from autoresearch.config import load_config
from autoresearch.ledger import Ledger
from autoresearch.records import Verdict
from autoresearch.remeasure import remeasure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=12, help="tuner experiments (default: 12)")
    parser.add_argument("--runs", type=int, default=7, help="re-measure runs of each (default: 7)")
    parser.add_argument("--dir", type=Path, help="folder to create (default: a temporary one)")
    args = parser.parse_args()
    dest = (args.dir or Path(tempfile.mkdtemp(prefix="speed-demo-")) / "demo").resolve()
    out = io.StringIO()
    code = demo.main(["--dir", str(dest), "--task", "speed", "--experiments", str(args.experiments),
                      "--remeasure", "0"], out=out)  # fmt: skip
    print(out.getvalue())
    if code != 0:
        sys.exit(f"the speed demo failed (exit {code})")
    config = load_config(dest)
    ledger = Ledger(dest / ".autoresearch" / "ledger.db")
    rows = ledger.experiments(ledger.session(demo.TAG))
    kept = sum(r.verdict is Verdict.KEEP for r in rows)
    result = remeasure(config, demo.TAG, runs=args.runs, seed=7)
    print(result.text())
    if result.ratio is None:
        sys.exit("the re-measure runs produced no metric")
    if result.nothing_kept:
        sys.exit("nothing was kept: target not met")
    recorded = result.recorded_baseline / result.recorded_best
    fresh = 1 / result.ratio
    close = abs(fresh - recorded) / recorded
    print(f"{len(rows) - 1} experiments, {kept} kept")
    print(f"speedup recorded by the session: {recorded:.3f}x; re-measured side by side: {fresh:.3f}x")
    print(f"target >= 1.2x re-measured: {'met' if fresh >= 1.2 else 'not met'}; "
          f"within 10% of the recorded: {close:.1%} ({'met' if close <= 0.10 else 'not met'})")  # fmt: skip


if __name__ == "__main__":
    main()
