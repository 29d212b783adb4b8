"""The command line: a thin layer over the library (argument handling and printing only).

Exit codes: 0 ok, 1 error (one line on stderr; ``--debug`` shows the traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoresearch import __version__, measure, templates
from autoresearch.agents import AGENT_FLAGS, AGENT_NAMES, agent_options, get_agent, table_warnings
from autoresearch.config import CONFIG_NAME, STATE_DIR, TaskConfig, load_config
from autoresearch.engine import (
    Engine,
    SessionOptions,
    resume_defaults,
    run_setup,
)
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.executors._base import Executor
from autoresearch.executors.local import LocalExecutor
from autoresearch.executors.sandbox import Sandbox, resolve_mode
from autoresearch.init import init as init_task
from autoresearch.init import task_notes
from autoresearch.process import StepRunner
from autoresearch.report import Store, export, live, make_report, text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch", description="An autonomous research loop."
    )
    parser.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "-C", "--dir", type=Path, default=Path("."), help="the task folder (default: .)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="make a folder a task (also an upstream autoresearch checkout), or create one from a template",
    )
    p.add_argument("dest", nargs="?", type=Path, help="folder (default: the task folder)")
    p.add_argument(
        "--template", choices=templates.available(), help="create a task from a built-in template"
    )
    p.add_argument("--size", help="template size preset (gpt: cpu | h100; default: by hardware)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument(
        "--git", action="store_true", help="run `git init` when the folder is not in a repo"
    )
    p.add_argument("--bench", metavar="CMD", help="a speed task: the benchmark command to measure")
    p.add_argument("--test", metavar="CMD", help="a speed task: the tests every change must pass")
    p.add_argument("--metric", default="seconds", choices=("seconds", "cpu_seconds", "peak_rss_mb", "alloc_peak_mb"),
                   help="a speed task: what measure's summary decides (default: seconds)")  # fmt: skip
    p.add_argument("--same", action="append", default=[], metavar="KEY",
                   help="a speed task: a key (a checksum) the benchmark prints that every run must print "
                   "as the baseline does, on a secret AUTORESEARCH_SEED (repeatable)")  # fmt: skip

    p = sub.add_parser("run", help="run a session: baseline, then experiments until a stop rule")
    p.add_argument(
        "--tag", help="session name; branch autoresearch/<tag> (default: today, e.g. nov26)"
    )
    p.add_argument(
        "--resume", action="store_true", help="carry on a session after a crash or Ctrl-C"
    )
    p.add_argument("--agent", choices=AGENT_NAMES, help="who proposes experiments (default: tuner; "
                   "with --resume: the session's agent and its flags)")  # fmt: skip
    p.add_argument("--patches", help="replay: folder of patches, used in name order")
    p.add_argument("--sampler", choices=("tpe", "random", "cmaes"), help="tuner: Optuna sampler")
    p.add_argument("--model", help="anthropic / openai / claude-code / codex / aider: model name")
    p.add_argument(
        "--base-url", help="anthropic / openai: API base URL (OpenAI-compatible servers)"
    )
    p.add_argument("--cmd", help='command: CLI to run, e.g. "aider --message-file {prompt_file}"')
    p.add_argument("--seed", type=int, help="session seed; run seeds derive from it (default: 0)")
    p.add_argument("--max-experiments", type=int, help="stop after this many experiments")
    p.add_argument("--max-hours", type=float, help="stop after this many hours")
    p.add_argument("--max-failures", type=int, help="stop after this many failures in a row (10)")
    p.add_argument(
        "--max-cost", type=float, help="stop before agent + compute spend passes this (USD)"
    )
    p.add_argument("--gpu-price", type=float, help="compute price per slot-hour (USD)")
    p.add_argument("--slots", type=int, help="experiments run at once (default: 1, one per GPU; "
                   "ray: what the cluster holds)")  # fmt: skip
    p.add_argument("--gpus", help="comma-separated GPU ids, one slot each (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--share-cpus", action=argparse.BooleanOptionalAction,
                   help="slots share every CPU (default: each slot runs on whole cores of its own)")  # fmt: skip
    p.add_argument("--lookahead", type=int,
                   help="proposals the agent keeps ready while runs train (default: one per slot)")  # fmt: skip
    p.add_argument("--no-setup", action="store_true", help="skip the task's setup step")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="plain lines, one per experiment, instead of the live view",
    )
    _executor_flags(p)

    for name, about in (("status", "best so far, counts per verdict, spend, last experiments"),
                        ("log", "one line per experiment")):  # fmt: skip
        p = sub.add_parser(name, help=about)
        p.add_argument("--tag", help="session (default: the most recent)")
    p = sub.add_parser("show", help="one experiment: description, diff, verdict, metrics, log tail")
    p.add_argument("experiment", type=int)
    p.add_argument("--tag", help="session (default: the most recent)")
    sub.add_parser("prepare", help="run the task's setup step now")
    p = sub.add_parser("measure", help="time a command: medians of wall and CPU seconds, peak RSS")
    measure.add_arguments(p)
    p = sub.add_parser("remeasure",
                       help="re-run the baseline and the best side by side on fresh seeds")  # fmt: skip
    p.add_argument("--tag", help="session (default: the most recent)")
    p.add_argument("--runs", type=int, default=3, help="fresh runs of each (default: 3)")
    _report_parsers(sub)
    return parser


# --- the morning after: report, serve, export, log --json, status projection ----------------


def _report_parsers(sub: Any) -> None:
    """Options of the commands that look at a session from outside (autoresearch.report)."""
    status, log = sub.choices["status"], sub.choices["log"]
    status.add_argument(
        "--max-hours", type=float, help="project experiments and $ at this many hours"
    )
    status.add_argument(
        "--max-cost", type=float, help="project experiments and hours at this spend"
    )
    log.add_argument("--json", action="store_true", help="every experiment with its runs, as JSON")
    p = sub.add_parser("export", help="results.tsv (upstream's columns and statuses), runs.json")
    p.add_argument("--tag", help="session (default: the most recent)")
    p.add_argument(
        "--tsv", type=Path, help="write results.tsv here (default without --json: results.tsv)"
    )
    p.add_argument(
        "--verdicts",
        action="store_true",
        help="our verdicts in the status column instead of upstream's keep|discard|crash",
    )
    p.add_argument(
        "--json", type=Path, help="write every experiment, run, metric, cost and timing here"
    )
    p = sub.add_parser("report", help="progress.png and a self-contained report.html")
    p.add_argument("--tag", help="session (default: the most recent)")
    p.add_argument("--out", type=Path, help="folder (default: .autoresearch/reports/<tag>)")
    p = sub.add_parser("serve", help="a local read-only dashboard that updates while sessions run")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port)")
    p.add_argument(
        "--token", help="required in every request; generated when binding beyond loopback"
    )


def _executor_flags(p: argparse.ArgumentParser) -> None:
    """Where runs happen: this machine, or a Ray cluster."""
    p.add_argument("--executor", choices=("local", "ray"),
                   help="local: subprocesses here (default); ray: tasks on a Ray cluster")  # fmt: skip
    p.add_argument("--ray-address",
                   help="ray: the cluster (auto, ray://host:10001, or host:port; default: auto)")  # fmt: skip


def _executor(args: argparse.Namespace, config: TaskConfig) -> Executor:
    if args.executor == "ray":
        if args.gpus or args.share_cpus:
            raise ConfigError("--gpus and --share-cpus apply to --executor local; on Ray set "
                              "[ray] gpus_per_run and cpus_per_run")  # fmt: skip
        from autoresearch.executors.ray import RayExecutor  # Ray is an optional extra

        return RayExecutor(config, address=args.ray_address or "auto", slots=args.slots)
    gpus = _gpus(args.gpus) if args.gpus else None
    return LocalExecutor(args.slots, gpus=gpus, sandbox=Sandbox.for_task(config),
                         max_log_mb=config.max_log_mb, share_cpus=bool(args.share_cpus))  # fmt: skip


def _gpus(text: str) -> list[str]:
    """``--gpus 0,1``: one slot per device, each named once (an index, or a GPU-/MIG- UUID)."""
    gpus = [g.strip() for g in text.split(",")]
    bad = next((g for g in gpus if not re.fullmatch(r"\d+|(GPU|MIG)-[\w/-]+", g)), None)
    if bad is not None:
        raise ConfigError(f"--gpus {text}: {bad!r} is not a device (an index such as 0, or a GPU-/MIG- UUID)")
    twice = next((g for g in gpus if gpus.count(g) > 1), None)
    if twice is not None:
        raise ConfigError(f"--gpus {text}: device {twice} is named twice; two slots on one device "
                          "would time each other's runs")  # fmt: skip
    return gpus


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(_COMMANDS[args.command](args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader gone by now is the BrokenPipeError below
        return code
    except AutoresearchError as exc:
        if args.debug:
            traceback.print_exc()
        print(text.terminal_text(f"autoresearch: error: {exc}"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `autoresearch log | head` (before OSError: it is one)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file the user named cannot be written, a full disk, ...
        if args.debug:
            traceback.print_exc()
        print(text.terminal_text(f"autoresearch: error: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


# --- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    dest = (args.dest or args.dir).resolve()
    result = init_task(dest, template=args.template, size=args.size, force=args.force, git=args.git,
                       bench=args.bench, test=args.test, metric=args.metric, same=args.same)  # fmt: skip
    if result.kind == "template":
        print(
            f"created {dest} from template {args.template!r} ({len(result.written)} files, committed)"
        )
        prepare = "autoresearch prepare && " if load_config(dest).setup.strip() else ""  # a task with data
        print(f"next: cd {dest} && {prepare}autoresearch run --tag {_default_tag()}")
        return 0
    if result.kind == "upstream":
        print(f"{dest}: an upstream autoresearch checkout; the task runs it unmodified")
    for path in result.written:
        print(f"wrote {path}")
    guessed = ", ".join(result.editable) or "(nothing found)"
    print(f"editable: {guessed}" + (" (guessed from the folder)" if result.kind in ("plain", "speed") else ""))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print("next:")
    for step in result.next_steps:
        print(f"  {step}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    tag = args.tag or _default_tag()
    if args.resume:
        _carry_over(args, config, tag)
    args.agent = args.agent or "tuner"
    args.seed = 0 if args.seed is None else args.seed
    flags = _agent_flags(args)
    try:
        agent = get_agent(args.agent, **agent_options(args.agent, config, flags, seed=args.seed))
    except ConfigError as exc:  # an error in the task file's [agent.<name>] table: name the file
        if not str(exc).startswith("[agent."):
            raise
        raise ConfigError(f"{config.root / CONFIG_NAME}: {exc}") from exc
    for warning in table_warnings(config, args.agent):
        print(f"warning: {config.root / CONFIG_NAME}: {warning}", file=sys.stderr)

    if "patches" in flags:
        flags["patches"] = str(Path(flags["patches"]).resolve())
    options = SessionOptions(
        tag=tag, max_experiments=args.max_experiments, max_hours=args.max_hours,
        max_failures=args.max_failures, max_cost=args.max_cost, gpu_price=args.gpu_price,
        resume=args.resume, seed=args.seed, run_setup=not args.no_setup, agent_flags=flags,
        lookahead=args.lookahead, run_flags=_run_flags(args),
    )  # fmt: skip
    executor = _executor(args, config)
    view = _view(args, config)
    engine = Engine(config, agent, options=options, executor=executor,
                    on_event=view.experiment_finished, on_message=view.message,
                    on_run=lambda run: view.experiment_started(
                        slot=run.slot, experiment_id=run.experiment_id, description=run.description,
                        log_path=run.log_path, budget=run.time_budget))  # fmt: skip
    try:
        with view:
            summary = engine.run()
    finally:
        executor.close()
    try:
        print(text.summary_text(summary, config.metric.name), flush=True)
    except BrokenPipeError:  # the reader went away (run | head): the exit code still tells
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if summary.signal:
        return 128 + summary.signal
    return 1 if summary.baseline_metric is None else 0  # no baseline: nothing was measured


def _view(args: argparse.Namespace, config: TaskConfig) -> live.View:
    """The live view on a terminal; plain lines with --quiet, under CI, or into a pipe."""
    price = args.gpu_price if args.gpu_price is not None else config.cost.gpu_per_hour
    return live.make_view(metric=config.metric.name, direction=config.metric.direction,
                          gpu_price=price, quiet=args.quiet)  # fmt: skip


def _carry_over(args: argparse.Namespace, config: TaskConfig, tag: str) -> None:
    """On --resume, default the agent, its flags, the seed, the executor and the slots to those
    the session started with."""
    previous = resume_defaults(config, tag)
    if previous is None:
        return
    if args.agent is None or args.agent == previous.agent:
        args.agent = previous.agent
        for flag, value in previous.agent_flags.items():
            if flag in AGENT_FLAGS and getattr(args, flag) is None:
                setattr(args, flag, value)
    if args.seed is None:
        args.seed = previous.seed
    recorded = dict(previous.run_flags)
    if args.executor is not None and args.executor != recorded.get("executor", "local"):
        recorded = {k: v for k, v in recorded.items() if k == "lookahead"}  # slots of another kind
    if args.slots is not None or args.gpus is not None:  # the slots given anew: none of the old
        recorded = {k: v for k, v in recorded.items() if k not in ("slots", "gpus")}
    for flag, value in recorded.items():
        if flag in RUN_FLAGS and getattr(args, flag) is None:
            setattr(args, flag, value)


def _agent_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(args, f) for f in AGENT_FLAGS if getattr(args, f) is not None}


# Where and how many runs go at once: recorded, and what --resume does not repeat is carried over
RUN_FLAGS = ("executor", "ray_address", "slots", "gpus", "share_cpus", "lookahead")


def _run_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(args, f) for f in RUN_FLAGS if getattr(args, f) is not None}


def _store(args: argparse.Namespace) -> tuple[TaskConfig, Store]:
    config = load_config(args.dir)
    return config, _ledger(config.root)


def _readable(args: argparse.Namespace) -> tuple[TaskConfig | None, Store]:
    """The ledger for a view that only reads it (None for a task file that does not load)."""
    config, root = _view_config(args)
    return config, _ledger(root)


def _ledger(root: Path) -> Store:
    store = Store(root)
    if not store.exists():
        raise AutoresearchError(f"no ledger at {store.path}: run `autoresearch run` first")
    return store


def _view_config(args: argparse.Namespace) -> tuple[TaskConfig | None, Path]:
    """The task and its folder for a view: it works while autoresearch.toml is being edited
    and does not load (said once, on stderr), where a session needs it whole."""
    try:
        config = load_config(args.dir)
        return config, config.root
    except ConfigError as exc:
        path = Path(args.dir)
        root = (path if path.is_dir() else path.parent).resolve()
        if not (root / CONFIG_NAME).is_file():
            raise
        print(f"warning: {exc}", file=sys.stderr)
        return None, root


def cmd_status(args: argparse.Namespace) -> int:
    config, store = _readable(args)
    session = store.session(args.tag)
    history = store.history(session)
    print(text.status_text(session, history, max_hours=args.max_hours, max_cost=args.max_cost,
                           judge=config.judge if config else None))  # fmt: skip
    if config is None:
        return 0
    warnings = [resolve_mode(config.sandbox)[1], *task_notes(config.root)]  # task_notes: from init
    for warning in filter(None, warnings):
        print(f"warning: {warning}")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    _, store = _readable(args)
    session = store.session(args.tag)
    if args.json:
        sys.stdout.write(export.json_text(session, store.experiments(session.tag, details=True)))
        return 0
    print(text.log_text(store.experiments(session.tag), session.metric))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _, store = _readable(args)
    print(text.show_text(store, store.session(args.tag), args.experiment))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _, store = _readable(args)
    session = store.session(args.tag)
    tsv = args.tsv if args.tsv is not None or args.json is not None else Path("results.tsv")
    if tsv is not None:
        rows = store.experiments(session.tag)
        count = export.write_tsv(rows, session.metric, tsv, verdicts=args.verdicts)
        kind = "our verdicts" if args.verdicts else "upstream's statuses"
        print(f"wrote {count} experiments of session {session.tag!r} to {tsv} ({kind})")
    if args.json is not None:
        rows = store.experiments(session.tag, details=True)
        args.json.write_text(export.json_text(session, rows), encoding="utf-8")
        print(f"wrote {len(rows)} experiments of session {session.tag!r} to {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _, store = _readable(args)
    png, page = make_report(store.root, tag=args.tag, out=args.out)
    print(f"wrote {png}\nwrote {page}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from autoresearch.report import serve

    _, root = _view_config(args)
    try:
        server = serve.Dashboard(root, host=args.host, port=args.port, token=args.token)
    except OSError as exc:  # "[Errno 98] Address already in use" alone named neither
        raise AutoresearchError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}; "
                                "pick another --port (0: any free one)") from exc
    print(f"dashboard of {root} at {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    if not config.setup.strip():
        print("this task has no setup step")
        return 0
    log = config.root / STATE_DIR / "logs" / "prepare.log"
    print(f"setup: {config.setup} (log: {log})", flush=True)
    runner = StepRunner()
    env = {"AUTORESEARCH_TASK_DIR": str(config.root)}
    worker = threading.Thread(target=_follow, args=(log, runner), daemon=True)
    worker.start()
    try:
        run_setup(config, log, runner, env)
    finally:
        runner.kill_all()  # also tells the follower to finish
        worker.join()
    return 0


def cmd_remeasure(args: argparse.Namespace) -> int:
    """How much of the session's gain holds on seeds none of its runs used."""
    from autoresearch.remeasure import remeasure

    config, store = _store(args)
    tag = store.session(args.tag).tag
    print(f"re-measuring session {tag!r}: baseline and best, {args.runs} fresh runs each",
          flush=True)  # fmt: skip

    def on_run(name: str, index: int, value: float | None) -> None:
        shown = "failed" if value is None else f"{value:.6g}"
        print(f"  run {index + 1} of {2 * args.runs}: {name} {shown}", flush=True)

    result = remeasure(config, tag, runs=args.runs, on_run=on_run)
    print(result.text())
    return 0 if result.ratio is not None or result.nothing_kept else 1


def _follow(log: Path, runner: StepRunner) -> None:
    """Print ``log`` as it grows until ``runner`` is done (the setup step's live output)."""
    while not log.exists() and not runner.killed:
        time.sleep(0.05)
    with log.open("rb") as fh:
        while True:
            done = runner.killed
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            if done:
                return
            time.sleep(0.1)


def _default_tag() -> str:
    return _dt.date.today().strftime("%b%d").lower()


_COMMANDS = {
    "init": cmd_init, "run": cmd_run, "status": cmd_status, "log": cmd_log, "show": cmd_show,
    "export": cmd_export, "prepare": cmd_prepare, "report": cmd_report, "serve": cmd_serve,
    "remeasure": cmd_remeasure, "measure": measure.main,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
