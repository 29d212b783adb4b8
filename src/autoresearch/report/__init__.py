"""What a session looks like from outside: text views, the live view, plots, report, dashboard, export.

Every module reads the ledger through ``_data`` only: ``text`` (status, log, show), ``live``
(the terminal view of a running session), ``plot`` (progress.png), ``html`` (report.html),
``serve`` (a local read-only dashboard) and ``export`` (results.tsv, runs.json).
"""

from __future__ import annotations

from pathlib import Path

from autoresearch.config import STATE_DIR
from autoresearch.report._data import Store, ledger_path


def make_report(
    task_root: Path, *, tag: str | None = None, out: Path | None = None
) -> tuple[Path, Path]:
    """Write ``progress.png`` and ``report.html`` for session ``tag`` (default: the latest).

    ``out`` defaults to ``.autoresearch/reports/<tag>/`` in the task folder. Returns both paths.
    """
    from autoresearch.errors import AutoresearchError
    from autoresearch.report import html, plot

    store = Store(task_root)
    if not store.exists():
        raise AutoresearchError(
            f"no ledger at {ledger_path(task_root)}: run `autoresearch run` first"
        )
    session = store.session(tag)
    rows = store.experiments(session.tag, details=True)
    history = store.history(session, rows)
    folder = out if out is not None else task_root / STATE_DIR / "reports" / session.tag
    png = plot.progress_png(session, history)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "progress.png").write_bytes(png)
    page = html.write_report(folder / "report.html", session, history, png=png)
    return folder / "progress.png", page


__all__ = ["Store", "make_report"]
