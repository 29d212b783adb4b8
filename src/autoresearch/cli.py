"""The command line: a thin layer over the library (argument handling and printing only).

Exit codes: 0 ok, 1 error (one line on stderr; ``--debug`` shows the traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoresearch import __version__, templates, views
from autoresearch.agents import AGENT_NAMES, get_agent
from autoresearch.config import CONFIG_NAME, TaskConfig, load_config
from autoresearch.engine import (
    Engine,
    ExperimentEvent,
    SessionOptions,
    resume_defaults,
    run_setup,
)
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.executors._base import Executor
from autoresearch.executors.local import LocalExecutor, StepRunner
from autoresearch.ledger import Ledger, SessionRow, export_tsv
from autoresearch.workspace import STATE_DIR

# Flags of `run` that configure an agent, and the agents that take them.
_AGENT_FLAGS = {
    "patches": ("replay",),
    "sampler": ("tuner",),
    "model": ("anthropic", "openai"),
    "base_url": ("anthropic", "openai"),
    "cmd": ("command",),
}


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
        "init", help="write autoresearch.toml and program.md, or a whole task from a template"
    )
    p.add_argument("dest", nargs="?", type=Path, help="folder (default: the task folder)")
    p.add_argument(
        "--template", choices=templates.available(), help="create a task from a built-in template"
    )
    p.add_argument("--size", help="template size preset (gpt: cpu | h100; default: by hardware)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

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
    p.add_argument("--model", help="anthropic / openai: model name")
    p.add_argument(
        "--base-url", help="anthropic / openai: API base URL (OpenAI-compatible servers)"
    )
    p.add_argument("--cmd", help='command: CLI to run, e.g. "claude -p {prompt_file}"')
    p.add_argument("--seed", type=int, help="session seed; run seeds derive from it (default: 0)")
    p.add_argument("--max-experiments", type=int, help="stop after this many experiments")
    p.add_argument("--max-hours", type=float, help="stop after this many hours")
    p.add_argument(
        "--max-failures", type=int, default=10, help="stop after this many failures in a row"
    )
    p.add_argument(
        "--max-cost", type=float, help="stop before agent + compute spend passes this (USD)"
    )
    p.add_argument("--gpu-price", type=float, help="compute price per slot-hour (USD)")
    p.add_argument("--slots", type=int, help="experiments run at once (default: 1; "
                   "ray: what the cluster holds)")  # fmt: skip
    p.add_argument("--gpus", help="comma-separated GPU ids, one per slot (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--no-setup", action="store_true", help="skip the task's setup step")
    _executor_flags(p)

    for name, text in (("status", "best so far, counts per verdict, spend, last experiments"),
                       ("log", "one line per experiment")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("--tag", help="session (default: the most recent)")
    p = sub.add_parser("show", help="one experiment: description, diff, verdict, metrics, log tail")
    p.add_argument("experiment", type=int)
    p.add_argument("--tag", help="session (default: the most recent)")
    p = sub.add_parser("export", help="write results.tsv (upstream's columns)")
    p.add_argument("--tag", help="session (default: the most recent)")
    p.add_argument(
        "--tsv", type=Path, default=Path("results.tsv"), help="output file (default: results.tsv)"
    )
    sub.add_parser("prepare", help="run the task's setup step now")
    return parser


def _executor_flags(p: argparse.ArgumentParser) -> None:
    """Where runs happen: this machine, or a Ray cluster."""
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: subprocesses here (default); ray: tasks on a Ray cluster")  # fmt: skip
    p.add_argument("--ray-address", default="auto",
                   help="ray: the cluster (auto, ray://host:10001, or host:port; default: auto)")  # fmt: skip


def _executor(args: argparse.Namespace, config: TaskConfig) -> Executor:
    if args.executor == "ray":
        if args.gpus:
            raise ConfigError("--gpus applies to --executor local; on Ray set [ray] gpus_per_run")
        from autoresearch.executors.ray import RayExecutor  # Ray is an optional extra

        return RayExecutor(config, address=args.ray_address, slots=args.slots)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    return LocalExecutor(args.slots or 1, gpus=gpus)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except AutoresearchError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the user named cannot be written, a full disk, ...
        if args.debug:
            traceback.print_exc()
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autoresearch log | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    dest = (args.dest or args.dir).resolve()
    if args.template:
        written = templates.init_template(args.template, dest, size=args.size, force=args.force)
        print(f"created {dest} from template {args.template!r} ({len(written)} files, committed)")
        print(f"next: cd {dest} && autoresearch prepare && autoresearch run --tag {_default_tag()}")
        return 0
    written = templates.init_plain(dest, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(
        f"next: edit {CONFIG_NAME} (editable files, run command, metric), commit, then `autoresearch run`"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    tag = args.tag or _default_tag()
    if args.resume:
        _carry_over(args, config, tag)
    args.agent = args.agent or "tuner"
    args.seed = 0 if args.seed is None else args.seed
    agent = get_agent(args.agent, **_agent_options(args, config))
    flags = {f: getattr(args, f) for f in _AGENT_FLAGS if getattr(args, f) is not None}
    if "patches" in flags:
        flags["patches"] = str(Path(flags["patches"]).resolve())
    options = SessionOptions(
        tag=tag, max_experiments=args.max_experiments, max_hours=args.max_hours,
        max_failures=args.max_failures, max_cost=args.max_cost, gpu_price=args.gpu_price,
        resume=args.resume, seed=args.seed, run_setup=not args.no_setup, agent_flags=flags,
    )  # fmt: skip
    executor = _executor(args, config)
    engine = Engine(config, agent, options=options, executor=executor, on_event=_print_event(config),
                    on_message=lambda text: print(text, file=sys.stderr, flush=True))  # fmt: skip
    print(views.EVENT_HEADER.format(metric=config.metric.name), flush=True)
    try:
        summary = engine.run()
    finally:
        executor.close()
    print(views.summary_text(summary, config.metric.name))
    return 0


def _carry_over(args: argparse.Namespace, config: TaskConfig, tag: str) -> None:
    """On --resume, default the agent, its flags and the seed to those the session started with."""
    previous = resume_defaults(config, tag)
    if previous is None:
        return
    if args.agent is None or args.agent == previous.agent:
        args.agent = previous.agent
        for flag, value in previous.agent_flags.items():
            if flag in _AGENT_FLAGS and getattr(args, flag) is None:
                setattr(args, flag, value)
    if args.seed is None:
        args.seed = previous.seed


def _agent_options(args: argparse.Namespace, config: TaskConfig) -> dict[str, Any]:
    options = dict(config.agent_options(args.agent))
    for flag, agents in _AGENT_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if args.agent not in agents:
            raise ConfigError(
                f"--{flag.replace('_', '-')} applies to --agent {' / '.join(agents)}, not {args.agent}"
            )
        options[flag] = value
    if args.agent == "replay" and "patches" not in options:
        raise ConfigError(
            "--agent replay needs --patches DIR (or [agent.replay] patches in the toml)"
        )
    if args.agent == "tuner":
        options.setdefault("seed", args.seed)
    if args.agent in ("anthropic", "openai") and config.cost.models:
        options.setdefault("prices", config.cost.models)
    return options


def _print_event(config: TaskConfig) -> Callable[[ExperimentEvent], None]:
    def show(event: ExperimentEvent) -> None:
        print(views.event_line(event, config.metric.direction), flush=True)

    return show


def _ledger(args: argparse.Namespace) -> tuple[TaskConfig, Ledger, SessionRow]:
    config = load_config(args.dir)
    path = config.root / STATE_DIR / "ledger.db"
    if not path.exists():
        raise AutoresearchError(f"no ledger at {path}: run `autoresearch run` first")
    ledger = Ledger(path)
    return config, ledger, ledger.session(args.tag)


def cmd_status(args: argparse.Namespace) -> int:
    config, ledger, session = _ledger(args)
    print(views.status_text(config, ledger, session))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    config, ledger, session = _ledger(args)
    print(views.log_text(ledger.experiments(session), config.metric.name))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config, ledger, session = _ledger(args)
    print(views.show_text(ledger, session, args.experiment, config.metric.name))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    config, ledger, session = _ledger(args)
    count = export_tsv(ledger.experiments(session), config.metric.name, args.tsv)
    print(f"wrote {count} experiments of session {session.tag!r} to {args.tsv}")
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
    "export": cmd_export, "prepare": cmd_prepare,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
