"""Stop rules and stop signals: when a session ends, and how it is told to.

The rules a session started with are recorded with it, so ``run --resume`` keeps them
(``--max-hours`` as the time left); flags given on resume override them.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from autoresearch.history import History

DEFAULT_MAX_FAILURES = 10
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


@dataclass(frozen=True)
class StopRules:
    """What ends a session besides the agent running out of ideas."""

    max_experiments: int | None = None  # experiments in the session, baseline excluded
    max_hours: float | None = None  # wall-clock hours, over every invocation of the session
    max_cost: float | None = None  # dollars: agent spend plus compute
    max_failures: int = DEFAULT_MAX_FAILURES  # consecutive crash / timeout / invalid verdicts

    def recorded(self) -> dict[str, Any]:
        return {"max_experiments": self.max_experiments, "max_hours": self.max_hours,
                "max_cost": self.max_cost, "max_failures": self.max_failures}  # fmt: skip


def carried_over(given: Mapping[str, Any], recorded: Mapping[str, Any]) -> StopRules:
    """The rules of a resumed session: each flag given now, else the one it started with."""
    def pick(key: str) -> Any:
        value = given.get(key)
        return recorded.get(key) if value is None else value

    failures = pick("max_failures")
    return StopRules(
        max_experiments=pick("max_experiments"), max_hours=pick("max_hours"),
        max_cost=pick("max_cost"),
        max_failures=DEFAULT_MAX_FAILURES if failures is None else int(failures),
    )


CLOCK_EVERY = 60.0  # seconds between records of the hours used, besides one per experiment


class Clock:
    """Hours a session has run, over all its invocations (what ``--max-hours`` counts)."""

    def __init__(self, hours_before: float = 0.0) -> None:
        self.before, self.started = hours_before, time.monotonic()

    def hours(self) -> float:
        return self.before + (time.monotonic() - self.started) / 3600


def stop_reason(rules: StopRules, history: History, *, clock: Clock, spent: float, ahead: float = 0.0,
                since: float = 0.0) -> str:  # fmt: skip
    """Why no further experiment should start ("" when one may). ``ahead``: the most the next
    experiment and those in flight can still add to ``spent``; ``since``: when this invocation
    started (the failures in a row are counted from there: a resume after that stop, with the
    agent fixed, stopped again at once on the old streak)."""
    done = len(history.finished)
    if rules.max_experiments is not None and done >= rules.max_experiments:
        return f"reached --max-experiments {rules.max_experiments}"
    if rules.max_hours is not None and clock.hours() >= rules.max_hours:
        return f"reached --max-hours {rules.max_hours:g}"
    failures = history.trailing_failures(since)
    if failures >= rules.max_failures:
        last = max((r for r in history.rows if r.verdict.failed), key=lambda r: r.finished or 0.0)
        return f"{failures} crashes/invalid experiments in a row (last: {last.verdict}: {last.reason})"
    if rules.max_cost is not None and spent + ahead > rules.max_cost:
        return (f"--max-cost ${rules.max_cost:.2f}: spent ${spent:.2f}; the next experiment could "
                f"bring it to ${spent + ahead:.2f}")  # fmt: skip
    return ""


class Signals:
    """SIGINT, SIGTERM and SIGHUP: the first finishes what runs and stops, the second kills it,
    the third (the shutdown itself taking too long) ends this process at once.

    The first two act on a thread of their own, started with the handlers: a handler runs on
    the main thread between two of its steps, and one that waited there for a lock the main
    thread holds (an executor closing, a thread being started) would wait forever. The handler
    only hands the work over, through a queue that may be used from a signal handler."""

    def __init__(self, on_first: Callable[[str], None], on_second: Callable[[], None]) -> None:
        self._first, self._second = on_first, on_second
        self.received: int | None = None  # the first signal's number
        self._count = 0
        self._previous: dict[int, Any] = {}
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        threading.Thread(target=self._serve, name="autoresearch-signals", daemon=True).start()
        for sig in _SIGNAL_NAMES:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            self._work.put(None)  # the worker ends once what was handed over is done
        self._previous.clear()

    def _serve(self) -> None:
        """Each signal's work on a thread of its own: a kill must not wait behind a first
        signal's cancel that waits for a lock."""
        while (work := self._work.get()) is not None:
            threading.Thread(target=work, name="autoresearch-signal", daemon=True).start()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count == 1:
            self.received = signum
            name = _SIGNAL_NAMES.get(signal.Signals(signum), f"signal {signum}")
            self._work.put(lambda: self._first(name))
        elif self._count == 2:
            self._work.put(self._second)
        else:  # a third: the user wants out now, whatever the shutdown still had to record
            signal.signal(signum, signal.SIG_DFL)  # not the previous handler: SIGINT's raises, nohup's ignores
            signal.raise_signal(signum)


__all__ = ["CLOCK_EVERY", "Clock", "Signals", "StopRules", "carried_over", "stop_reason"]
