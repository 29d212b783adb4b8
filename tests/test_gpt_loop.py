"""A loop session on the GPT template through the CLI: replay agent, one patch kept, one discarded."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, write_patch_dir

pytest.importorskip("torch")
pytest.importorskip("rustbpe")

CLI = str(Path(sys.executable).parent / "autoresearch")
LRS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")


def autoresearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    return subprocess.run(
        [CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def set_learning_rates(text: str, value: str) -> str:
    """train.py with every learning rate set to `value`."""
    for name in LRS:
        text, n = re.subn(rf"^{name} = [0-9.]+", f"{name} = {value}", text, flags=re.MULTILINE)
        assert n == 1, name
    return text


def lr_patch(description: str, before: str, after: str) -> str:
    """Search/replace blocks turning every learning-rate line of `before` into that of `after`."""
    blocks = [f"# {description}"]
    for name in LRS:
        old, new = (
            re.search(rf"^{name} = .*$", text, re.MULTILINE).group(0) for text in (before, after)
        )  # type: ignore[union-attr]
        blocks.append(f"train.py\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE")
    return "\n".join(blocks) + "\n"


@pytest.mark.slow
def test_a_session_on_the_gpt_template_keeps_one_patch_and_discards_one(tmp_path: Path) -> None:
    task = tmp_path / "gpt"
    init = autoresearch("init", "--template", "gpt", "--size", "cpu", str(task), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    # A crippled baseline (nothing learns) so that the kept patch wins by a wide margin
    # whatever the machine's load; short budget, generous allowance, one baseline run.
    train = task / "train.py"
    learning, frozen = train.read_text(), set_learning_rates(train.read_text(), "0.0")
    train.write_text(frozen)
    toml = (task / "autoresearch.toml").read_text()
    toml = toml.replace("time_budget = 60", "time_budget = 2").replace("timeout = 180", "timeout = 300")
    toml = toml.replace("budget_allowance = 10", "budget_allowance = 120")
    toml = toml.replace('rule = "sequential"', 'rule = "naive"').replace(
        "baseline_runs = 5", "baseline_runs = 1"
    )  # one run each: this test is about the template in a session, not the judge
    (task / "autoresearch.toml").write_text(toml)
    git(task, "commit", "-qam", "test: short budget, frozen learning rates")
    patches = write_patch_dir(tmp_path / "patches", {
        "01-learn.txt": lr_patch("restore the learning rates", frozen, learning),
        "02-freeze.txt": lr_patch("freeze the learning rates again", learning, frozen),
    })  # fmt: skip

    run = autoresearch(
        "run",
        "--tag",
        "t",
        "--agent",
        "replay",
        "--patches",
        str(patches),
        "--max-experiments",
        "2",
        cwd=task,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    exported = autoresearch(
        "export", "--tag", "t", "--tsv", str(tmp_path / "results.tsv"), cwd=task
    )
    assert exported.returncode == 0, exported.stderr
    with (tmp_path / "results.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["status"] for r in rows] == ["keep", "keep", "discard"], rows  # upstream statuses
    bpb = [float(r["val_bpb"]) for r in rows]
    assert bpb[1] < bpb[0] - 0.2 and bpb[2] > bpb[1]
    head = git(task, "show", "autoresearch/t:train.py")
    assert head == learning.rstrip("\n")  # the branch holds the kept change, not the discarded one
