"""The terminal while a session runs: what each slot is doing, and how the night is going.

``LiveView`` takes calls from the engine (``experiment_started``, ``step``,
``experiment_finished``, ``message``) and tails each running experiment's log file itself,
so the run's last progress line shows while it trains. On a terminal it draws a ``rich``
Live table (one line per slot: experiment, step, elapsed / ETA of the budget, the log's
last line; under it best so far, spend and experiments/hour); ``PlainView`` prints one
line per experiment instead (``--quiet``, ``CI`` set, or stdout not a terminal).

Until the engine reports starts and steps, ``LedgerFollower`` derives them from the
ledger's pending experiments and the log files the runs write.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from autoresearch.cost import compute_cost
from autoresearch.engine import ExperimentEvent
from autoresearch.report._data import Verdict, from_row
from autoresearch.report.text import EVENT_HEADER, event_line, terminal_text, value_text

TAIL_BYTES = 64 * 1024  # the most of a log read at once
STEPS = ("check", "run", "evaluate")


class View(Protocol):
    """What the engine calls while a session runs (both views implement it)."""

    def experiment_started(
        self, slot: int, experiment_id: int, description: str, log_path: Path | str, budget: float
    ) -> None: ...
    def step(self, slot: int, name: str) -> None: ...
    def experiment_finished(self, event: ExperimentEvent) -> None: ...
    def message(self, text: str) -> None: ...
    def __enter__(self) -> View: ...
    def __exit__(self, *exc: object) -> None: ...


def wants_live(stream: IO[str], *, quiet: bool = False, env: dict[str, str] | None = None) -> bool:
    """The live view only on a terminal, and neither with ``--quiet`` nor under CI."""
    env = dict(os.environ) if env is None else env
    return not quiet and not env.get("CI") and stream.isatty()


# --- tailing a growing log ------------------------------------------------------------------


class LogTail:
    """The last non-empty line of a file that is still being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self.last = ""

    def poll(self) -> str:
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size < self._offset:  # truncated or replaced: start over
                    self._offset, self._partial = 0, ""
                start = max(self._offset, size - TAIL_BYTES)
                fh.seek(start)
                chunk = fh.read(size - start)
        except OSError:
            return self.last
        self._offset = start + len(chunk)
        self._take(chunk.decode("utf-8", errors="replace"))
        return self.last

    def _take(self, text: str) -> None:
        lines = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = lines.pop()  # an unfinished line: shown, but kept to complete
        for line in (*lines, self._partial):
            if line.strip():
                self.last = line.strip()


# --- the state behind both views --------------------------------------------------------------


@dataclass
class Slot:
    """One running experiment as the view knows it."""

    experiment_id: int
    description: str
    log_path: Path
    budget: float
    started: float = field(default_factory=time.time)
    step: str = ""  # reported by the engine; else inferred from the log files present
    step_started: float = field(default_factory=time.time)
    seen_step: str = ""
    tails: dict[Path, LogTail] = field(default_factory=dict)

    def current(self) -> tuple[str, Path]:
        """The step running now and its log: the reported one, or the newest log that exists."""
        if self.step:
            return self.step, _step_log(self.log_path, self.step)
        found = [(n, _step_log(self.log_path, n)) for n in STEPS]
        present = [(n, p) for n, p in found if p.exists()]
        name, path = present[-1] if present else ("starting", self.log_path)
        if name != self.seen_step:  # first seen now: the step's clock starts
            self.seen_step, self.step_started = name, time.time()
        return name, path

    def last_line(self) -> str:
        _, path = self.current()
        tail = self.tails.setdefault(path, LogTail(path))
        return terminal_text(tail.poll())  # the run wrote it: no escape reaches the terminal


def _step_log(run_log: Path, step: str) -> Path:
    """``0003-0.log`` is the run step's log; the others are ``0003-0.check.log`` and so on."""
    return run_log if step == "run" else run_log.with_name(f"{run_log.stem}.{step}.log")


class Tally:
    """Best, spend and counts from the experiments seen finishing (the session's totals when
    the events carry them: a resume goes on from them); the pace is this invocation's."""

    def __init__(self, *, gpu_price: float = 0.0) -> None:
        self.gpu_price = gpu_price
        self.best: float | None = None
        self.baseline: float | None = None
        self.spend = 0.0
        self.done = 0
        self.kept = 0
        self.seen = 0  # experiments finished since this view started
        self.started = time.time()

    def add(self, event: ExperimentEvent) -> None:
        row = from_row(event.experiment)
        self.best, self.baseline = event.best, event.baseline
        self.spend += (row.cost_usd or 0.0) + compute_cost(row.compute_seconds, self.gpu_price)
        if not row.is_baseline:  # as History.done counts
            self.done += 1
            self.seen += 1
        self.kept += row.verdict is Verdict.KEEP
        if event.done is not None:
            self.done = event.done
        if event.kept is not None:
            self.kept = event.kept
        if event.spend is not None:
            self.spend = event.spend

    def per_hour(self) -> float | None:
        hours = (time.time() - self.started) / 3600
        return self.seen / hours if self.seen and hours > 0 else None

    def line(self, metric: str) -> str:
        gain = ""
        if self.best is not None and self.baseline:
            gain = f" ({(self.best - self.baseline) / abs(self.baseline) * 100:+.2f}% vs baseline)"
        rate = self.per_hour()
        pace = f"{rate:.1f}/h" if rate is not None else "-"
        return (
            f"best {metric} {value_text(self.best)}{gain} · {self.done} experiments, "
            f"{self.kept} kept · ${self.spend:.2f} · {pace}"
        )


def clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    whole = max(0, int(seconds))
    hours, minutes, secs = whole // 3600, whole // 60 % 60, whole % 60
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def budget_text(slot: Slot, now: float) -> str:
    """Elapsed time of the experiment, and what is left of the run step's budget."""
    step, _ = slot.current()
    elapsed = now - slot.started
    if step != "run" or not slot.budget:
        return clock(elapsed)
    ran = now - slot.step_started
    left = slot.budget - ran
    if left < 0:
        return f"{clock(elapsed)} · over {clock(-left)}"
    return f"{clock(elapsed)} · ETA {clock(left)}"


# --- the views -------------------------------------------------------------------------------


class _Base:
    def __init__(self, *, metric: str, direction: str, gpu_price: float = 0.0) -> None:
        self.metric, self.direction = metric, direction
        self.slots: dict[int, Slot] = {}
        self.tally = Tally(gpu_price=gpu_price)
        self._lock = threading.Lock()
        self._headed = False  # the event lines' header is printed

    def experiment_started(
        self, slot: int, experiment_id: int, description: str, log_path: Path | str, budget: float
    ) -> None:
        with self._lock:
            old = self.slots.get(slot)
            state = Slot(experiment_id, terminal_text(description), Path(log_path), budget)
            if old is not None and old.experiment_id == experiment_id:
                state.started = old.started  # another run of the same experiment
            self.slots[slot] = state

    def step(self, slot: int, name: str) -> None:
        with self._lock:
            state = self.slots.get(slot)
            if state is not None:
                state.step, state.step_started = name, time.time()

    def experiment_finished(self, event: ExperimentEvent) -> None:
        with self._lock:
            self.tally.add(event)
            for number, state in list(self.slots.items()):
                if state.experiment_id == event.experiment.id:
                    del self.slots[number]

    def running(self) -> dict[int, Slot]:
        with self._lock:
            return dict(self.slots)


class PlainView(_Base):
    """One line per experiment on ``out``, messages on ``err``: for logs, CI and pipes."""

    def __init__(
        self,
        *,
        metric: str,
        direction: str,
        gpu_price: float = 0.0,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
    ) -> None:
        super().__init__(metric=metric, direction=direction, gpu_price=gpu_price)
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self._gone: set[IO[str]] = set()  # streams whose reader went away

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def experiment_finished(self, event: ExperimentEvent) -> None:
        if not self._headed:  # the table's header with its first row: not before a refusal
            self._print(EVENT_HEADER.format(metric=self.metric), self.out)
        self._headed = True
        super().experiment_finished(event)
        self._print(event_line(event, self.direction), self.out)

    def message(self, text: str) -> None:
        self._print(terminal_text(text), self.err)

    def _print(self, line: str, stream: IO[str]) -> None:
        """A reader that went away (``run ... | head``) ends the output, not the session."""
        if stream in self._gone:
            return
        try:
            print(line, file=stream, flush=True)
        except (BrokenPipeError, ValueError):  # ValueError: a stream closed under us
            self._gone.add(stream)


class LiveView(_Base):
    """The rich Live table: finished experiments scroll above it, running ones in it."""

    def __init__(
        self,
        *,
        metric: str,
        direction: str,
        gpu_price: float = 0.0,
        console: Any = None,
        refresh_per_second: float = 4,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(metric=metric, direction=direction, gpu_price=gpu_price)
        self.console = console or Console()
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            transient=True,
            refresh_per_second=refresh_per_second,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def experiment_finished(self, event: ExperimentEvent) -> None:
        if not self._headed:  # the table's header with its first row: not before a refusal
            self.console.print(EVENT_HEADER.format(metric=self.metric), highlight=False)
        self._headed = True
        super().experiment_finished(event)
        self.console.print(event_line(event, self.direction), highlight=False, markup=False,
                           emoji=False)  # fmt: skip

    def message(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(terminal_text(text), style="dim"), emoji=False)

    def render(self) -> Any:
        """The slots and the footer; two lines per slot on a narrow terminal."""
        from rich.console import Group
        from rich.text import Text

        width, now = self.console.width, time.time()
        running = sorted(self.running().items())
        body = (
            self._table(running, now, wide=width >= 100)
            if width >= 72
            else self._lines(running, now)
        )
        footer = Text(self.tally.line(self.metric), style="bold", no_wrap=True, overflow="ellipsis")
        return Group(body, footer)

    def _table(self, running: list[tuple[int, Slot]], now: float, *, wide: bool) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, expand=True, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("slot", no_wrap=True, width=4)
        table.add_column("#", no_wrap=True, justify="right", width=5)
        if wide:
            table.add_column("experiment", no_wrap=True, overflow="ellipsis", ratio=1, max_width=40)
        table.add_column("step", no_wrap=True, width=8)
        table.add_column("time", no_wrap=True, min_width=5)
        table.add_column("last line", no_wrap=True, overflow="ellipsis", ratio=2)
        for number, slot in running:
            cells = [str(number), str(slot.experiment_id)]
            cells += [slot.description] if wide else []
            cells += [slot.current()[0], budget_text(slot, now), slot.last_line()]
            table.add_row(*(Text(c) for c in cells))
        return table

    def _lines(self, running: list[tuple[int, Slot]], now: float) -> Any:
        from rich.console import Group
        from rich.text import Text

        lines = []
        for number, slot in running:
            head = f"[{number}] #{slot.experiment_id} {slot.current()[0]} {budget_text(slot, now)}"
            lines.append(Text(head, no_wrap=True, overflow="ellipsis"))
            lines.append(Text("  " + slot.last_line(), no_wrap=True, overflow="ellipsis"))
        return Group(*lines)


def _run_index(path: Path) -> int:
    head = path.name.split(".")[0]
    try:
        return int(head.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def make_view(
    *,
    metric: str,
    direction: str,
    gpu_price: float = 0.0,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> View:
    """``LiveView`` on a terminal (with the ``report`` extra installed), else ``PlainView``."""
    stream = stream or sys.stdout
    if wants_live(stream, quiet=quiet) and importlib.util.find_spec("rich") is not None:
        return LiveView(metric=metric, direction=direction, gpu_price=gpu_price)
    return PlainView(metric=metric, direction=direction, gpu_price=gpu_price, out=stream)


__all__ = [

    "LiveView",
    "LogTail",
    "PlainView",
    "View",
    "make_view",
    "wants_live",
]
