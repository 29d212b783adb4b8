"""The live view: a running experiment's progress line on a real pty before it finishes; plain lines otherwise."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import TOY_PARAMS, TOY_TOML, make_repo, write_patch_dir
from fakes.recorded import TAG, record_session
from fakes.session import run_cli

from autoresearch.ledger import Ledger
from autoresearch.report.live import LiveView, LogTail, PlainView, wants_live

rich_console = pytest.importorskip("rich.console", reason="rich is in the report extra")

MARK = "step 3/10 loss 1.25 LIVEMARK"
GATED_SCORE = """\
import os, pathlib, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import params

print("warming up", flush=True)
print("{mark}", flush=True)
release, deadline = pathlib.Path({release!r}), time.time() + 240
while not release.exists() and time.time() < deadline:  # the test lets it finish
    time.sleep(0.05)
score = (params.X - 3.0) ** 2 + (params.Y + 1.0) ** 2
print("---")
print(f"score: {{score:.6f}}")
"""


def gated_task(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A toy task whose run prints a progress line, then waits for a release file."""
    release = tmp_path / "release"
    toml = TOY_TOML.replace("{python}", sys.executable).replace("timeout = 20", "timeout = 300")
    # The release file lives in the test's folder, which a sandboxed run cannot see.
    toml = toml.replace("[task]\n", '[task]\nsandbox = "none"\n')
    repo = make_repo(
        tmp_path / "task",
        {
            "params.py": TOY_PARAMS,
            "program.md": "Minimise.\n",
            "autoresearch.toml": toml,
            "score.py": GATED_SCORE.format(mark=MARK, release=str(release)),
        },
    )
    patches = write_patch_dir(
        tmp_path / "patches",
        {
            "01": "# X 1 -> 2\nparams.py\n<<<<<<< SEARCH\nX = 1.0\n=======\nX = 2.0\n>>>>>>> REPLACE\n",
        },
    )
    return repo, patches, release


class Terminal:
    """``autoresearch ARGS`` on a pty of 120 columns, its output read as it comes."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the CLI
            os.execvpe(sys.executable, [sys.executable, "-m", "autoresearch", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.output = ""

    def read_until(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} never appeared; output so far:\n{self.output[-3000:]}"
                )
            if not self._read(0.2):
                raise AssertionError(f"the CLI exited before {text!r}:\n{self.output[-3000:]}")
        return self.output

    def finish(self, timeout: float = 180) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not finish:\n{self.output[-3000:]}")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def _read(self, wait: float) -> bool:
        """False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the pty
            return False
        self.output += chunk.decode("utf-8", errors="replace")
        return bool(chunk)


def test_live_view_shows_the_running_experiments_progress_line(tmp_path: Path) -> None:
    repo, patches, release = gated_task(tmp_path)
    term = Terminal(
        "-C",
        str(repo),
        "run",
        "--tag",
        "live",
        "--agent",
        "replay",
        "--patches",
        str(patches),
        "--max-experiments",
        "1",
    )
    before = term.read_until(MARK)
    assert "13.000000" not in before  # the baseline has not finished: its line is not printed yet
    assert "ETA" in before and "best score" in before  # the slot's budget and the footer
    release.touch()
    assert term.finish() == 0
    assert "13.000000" in term.output and "10.000000" in term.output  # the event lines came after
    assert "session 'live' stopped" in term.output


def test_quiet_in_a_terminal_prints_plain_lines(tmp_path: Path) -> None:
    repo, patches, release = gated_task(tmp_path)
    release.touch()
    term = Terminal(
        "-C",
        str(repo),
        "run",
        "--tag",
        "q",
        "--agent",
        "replay",
        "--patches",
        str(patches),
        "--max-experiments",
        "1",
        "--quiet",
    )
    assert term.finish() == 0
    assert "\x1b[?25l" not in term.output and MARK not in term.output  # no live region drawn
    assert "   #  verdict" in term.output and "   1  keep" in term.output


def test_a_pipe_gets_plain_lines(tmp_path: Path) -> None:
    repo, patches, release = gated_task(tmp_path)
    release.touch()
    done = run_cli(
        repo,
        "run",
        "--tag",
        "p",
        "--agent",
        "replay",
        "--patches",
        str(patches),
        "--max-experiments",
        "1",
        env={"CI": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    assert done.stdout.splitlines()[0].startswith("   #  verdict")
    assert "   0  baseline        13.000000" in done.stdout


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_only_on_a_terminal_without_quiet_or_ci() -> None:
    assert wants_live(FakeTTY(), env={})
    assert not wants_live(FakeTTY(), env={"CI": "true"})
    assert not wants_live(FakeTTY(), quiet=True, env={})
    assert not wants_live(io.StringIO(), env={})


def test_log_tail_follows_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    tail = LogTail(log)
    assert tail.poll() == ""  # not there yet
    log.write_text("loading\nstep 1\n")
    assert tail.poll() == "step 1"
    with log.open("a") as fh:
        fh.write("step 2 | 10%\rstep 2 | 20%")  # a carriage-return progress bar, mid-line
    assert tail.poll() == "step 2 | 20%"
    with log.open("a") as fh:
        fh.write(" more\n\n\n")
    assert tail.poll() == "step 2 | 20% more"
    log.write_text("restarted\n")  # replaced by a shorter file
    assert tail.poll() == "restarted"


def render(view: LiveView) -> str:
    view.console.print(view.render())
    text = view.console.file.getvalue()
    view.console.file.seek(0)
    view.console.file.truncate()
    return str(text)


@pytest.mark.parametrize("width", [40, 72, 160])
def test_the_table_fits_the_terminal(width: int, tmp_path: Path) -> None:
    console = rich_console.Console(
        file=io.StringIO(), width=width, force_terminal=True, color_system=None
    )
    view = LiveView(metric="val_bpb", direction="minimize", console=console)
    log = tmp_path / "0003-0.log"
    log.write_text("step 00120 (41.2%) | loss: 3.2101 | lrm: 1.00 | dt: 310ms | tok/sec: 52,000\n")
    view.experiment_started(0, 3, "raise the learning rate a little", log, 300.0)
    out = render(view)
    assert all(len(line) <= width for line in out.splitlines())
    assert "step 0" in out and "run" in out and "best val_bpb" in out
    if width >= 100:
        assert "tok/sec: 52,000" in out and "raise the learning rate" in out and "ETA 0" in out


def test_plain_view_prints_each_experiment_as_it_is_recorded(tmp_path: Path) -> None:
    repo = record_session(tmp_path)
    ledger = Ledger(repo / ".autoresearch" / "ledger.db")
    from autoresearch.engine import ExperimentEvent

    session = ledger.session(TAG)
    rows = ledger.experiments(session)
    out, err = io.StringIO(), io.StringIO()
    with PlainView(
        metric="score", direction="minimize", gpu_price=3600.0, out=out, err=err
    ) as view:
        for row in rows:
            view.experiment_finished(ExperimentEvent(row, 2.0, 13.0))
        view.message("a note")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("   #  verdict") and len(lines) == 1 + len(rows)
    assert "keep" in lines[2] and lines[2].endswith("*") and err.getvalue() == "a note\n"
    assert view.tally.done == 6 and view.tally.kept == 2
    assert view.tally.spend == pytest.approx(sum(r.compute_seconds for r in rows))


