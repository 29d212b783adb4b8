"""Fake Claude Code, Codex and aider executables that behave like the real CLIs.

Each fake parses the real CLI's flags (an unknown flag is an error, as there), reads the
brief the way the real one does, and plays one step of a plan (a JSON list in the file named
by ``FAKE_CLI_PLAN``; one step per call, the last one repeated) as its model: files to
write, a shell command to run, the final reply, tokens and cost. Around that it does what
the real CLI does on its own: Claude Code refuses edits without an edit permission mode and
shell commands in print mode (``permission_denials``); Codex's default sandbox is read-only
and ``--full-auto`` is gone; aider writes its chat and input history files, adds ``.aider*``
to ``.gitignore``, and commits its edits unless told not to. Every call's arguments are
appended to ``FAKE_CLI_PLAN.argv`` (one JSON list a line).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

PRELUDE = r'''
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

PLAN = Path(os.environ["FAKE_CLI_PLAN"])
with open(str(PLAN) + ".argv", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")


def next_step():
    counter = Path(str(PLAN) + ".n")
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    steps = json.loads(PLAN.read_text())
    step = steps[min(n, len(steps) - 1)]
    time.sleep(step.get("sleep", 0))
    return step


def description_path(prompt):
    """Where the brief asks for the description (our brief's wording)."""
    found = re.search(r"line of the file (\S+?),", prompt)
    return found.group(1) if found else None


def inside(path, folders):
    path = Path(path).resolve()
    return any(path == f or f in path.parents for f in folders)


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
'''

CLAUDE = r"""
if sys.argv[1:3] == ["auth", "status"]:  # the real one's answer; signed out: exit status 1
    signed_out = os.environ.get("FAKE_CLAUDE_SIGNED_OUT") == "1"
    print(json.dumps({"loggedIn": not signed_out, "authMethod": "none" if signed_out else "api_key",
                      "apiProvider": "firstParty"}, indent=2))
    sys.exit(1 if signed_out else 0)
parser = argparse.ArgumentParser(prog="claude")
parser.add_argument("prompt", nargs="?")
parser.add_argument("-p", "--print", action="store_true")
parser.add_argument("--permission-mode", default="default",
                    choices=["default", "acceptEdits", "plan", "bypassPermissions"])
parser.add_argument("--dangerously-skip-permissions", action="store_true")
parser.add_argument("--add-dir", nargs="+", default=[])
parser.add_argument("--output-format", default="text", choices=["text", "json", "stream-json"])
parser.add_argument("--model")
args = parser.parse_args()
if not args.print:
    sys.exit("claude: raw mode is not supported without a terminal")
skip = args.dangerously_skip_permissions or args.permission_mode == "bypassPermissions"
if skip and os.geteuid() == 0:
    sys.exit("--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons")
prompt = args.prompt if args.prompt is not None else sys.stdin.read()
if not prompt.strip():
    sys.exit("Error: Input must be provided either through stdin or as a prompt argument when using --print")
step = next_step()
allowed = [Path.cwd().resolve(), *(Path(d).resolve() for d in args.add_dir)]
may_edit = skip or args.permission_mode == "acceptEdits"
writes = dict(step.get("files", {}))
if step.get("describe") and description_path(prompt):
    writes[description_path(prompt)] = step["describe"]
denials = []
for i, (path, text) in enumerate(writes.items()):
    if may_edit and inside(path, allowed):
        write(path, text)
    else:
        tool = "Edit" if Path(path).exists() else "Write"
        denials.append({"tool_name": tool, "tool_use_id": f"toolu_{i:02d}",
                        "tool_input": {"file_path": str(Path(path).resolve()), "content": text}})
if step.get("bash"):
    if skip:
        subprocess.run(step["bash"], shell=True)
    else:
        denials.append({"tool_name": "Bash", "tool_use_id": "toolu_99",
                        "tool_input": {"command": step["bash"], "description": "Run it"}})
usage = step.get("usage", {})
subtype = step.get("subtype", "success")
result = {
    "type": "result", "subtype": subtype, "is_error": step.get("is_error", subtype != "success"),
    "duration_ms": 2140, "duration_api_ms": 1980, "num_turns": 4,
    "result": step.get("reply", ""), "session_id": "5b0c6c1e-0000-4000-8000-000000000000",
    "total_cost_usd": step.get("cost", 0.0),
    "usage": {"input_tokens": usage.get("input", 0),
              "cache_creation_input_tokens": usage.get("cache_write", 0),
              "cache_read_input_tokens": usage.get("cached", 0),
              "output_tokens": usage.get("output", 0),
              "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"},
    "permission_denials": denials,
}
if args.output_format == "json":
    print(json.dumps(result))
else:
    print(step.get("reply", ""))
sys.exit(step.get("exit", 0))
"""

CODEX = r"""
def emit(event):
    print(json.dumps(event), flush=True)


if sys.argv[1:2] != ["exec"]:
    sys.exit("fake codex: only `codex exec` runs without a terminal")
parser = argparse.ArgumentParser(prog="codex exec")
parser.add_argument("prompt", nargs="?")
parser.add_argument("--json", action="store_true")
parser.add_argument("-s", "--sandbox", default="read-only",
                    choices=["read-only", "workspace-write", "danger-full-access"])
parser.add_argument("-o", "--output-last-message")
parser.add_argument("-m", "--model")
parser.add_argument("--skip-git-repo-check", action="store_true")
args, unknown = parser.parse_known_args(sys.argv[2:])
if unknown:
    print(f"error: unexpected argument '{unknown[0]}' found", file=sys.stderr)
    sys.exit(2)
if not args.skip_git_repo_check and not any((p / ".git").exists() for p in [Path.cwd(), *Path.cwd().parents]):
    sys.exit("Not inside a trusted directory and --skip-git-repo-check was not specified.")
prompt = sys.stdin.read() if args.prompt in (None, "-") else args.prompt
step = next_step()
writable = {"read-only": [], "workspace-write": [Path.cwd().resolve(), Path("/tmp").resolve(),
                                                  Path(tempfile.gettempdir()).resolve()],
            "danger-full-access": [Path("/")]}[args.sandbox]
if args.json:
    emit({"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"})
    emit({"type": "turn.started"})
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Planning the change**"}})
writes = dict(step.get("files", {}))
if step.get("describe") and description_path(prompt):
    writes[description_path(prompt)] = step["describe"]
for i, (path, text) in enumerate(writes.items(), start=1):
    if inside(path, writable):
        kind = "update" if Path(path).exists() else "add"
        write(path, text)
        item = {"id": f"item_{i}", "type": "file_change", "status": "completed",
                "changes": [{"path": str(Path(path).resolve()), "kind": kind}]}
    elif args.sandbox == "read-only":
        continue  # as in Codex 0.17x: the refused command reaches the model, not the events
    else:
        item = {"id": f"item_{i}", "type": "command_execution", "status": "failed", "exit_code": 1,
                "command": f"bash -lc 'cat > {path}'",
                "aggregated_output": f"bash: line 1: {path}: Operation not permitted\n"}
    if args.json:
        emit({"type": "item.completed", "item": item})
if step.get("fail"):
    if args.json:
        emit({"type": "turn.failed", "error": {"message": step["fail"]}})
    sys.exit(1)
reply = step.get("reply", "")
if args.json:
    emit({"type": "item.completed", "item": {"id": "item_9", "type": "agent_message", "text": reply}})
    usage = step.get("usage", {})
    emit({"type": "turn.completed", "usage": {"input_tokens": usage.get("input", 0),
          "cached_input_tokens": usage.get("cached", 0), "output_tokens": usage.get("output", 0)}})
else:
    print(f"codex\n{reply}\ntokens used: 1234")
if args.output_last_message:
    Path(args.output_last_message).write_text(reply)
sys.exit(step.get("exit", 0))
"""

AIDER = r"""
def say(line, history=None):
    print(line, flush=True)
    if history is not None:
        with open(history, "a") as fh:
            fh.write(f"> {line}  \n")


parser = argparse.ArgumentParser(prog="aider")
parser.add_argument("files", nargs="*")
parser.add_argument("--model")
parser.add_argument("--edit-format")
parser.add_argument("--yes-always", action="store_true")
for flag in ("gitignore", "auto-commits", "pretty", "stream", "check-update", "show-release-notes",
             "analytics", "show-model-warnings", "detect-urls", "suggest-shell-commands"):
    parser.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument("--chat-history-file", default=".aider.chat.history.md")
parser.add_argument("--input-history-file", default=".aider.input.history")
parser.add_argument("--map-tokens", type=int, default=1024)
parser.add_argument("--message-file")
parser.add_argument("--read", action="append", default=[])
args = parser.parse_args()
root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True).stdout.strip())
if not args.message_file:
    sys.exit("fake aider: the chat needs a terminal; pass --message-file")
message = Path(args.message_file).read_text()
step = next_step()
history = args.chat_history_file if os.path.isabs(args.chat_history_file) else root / args.chat_history_file
with open(args.input_history_file, "a") as fh:
    fh.write(message)
if args.gitignore:
    with open(root / ".gitignore", "a") as fh:
        fh.write(".aider*\n")
if args.map_tokens:
    write(root / ".aider.tags.cache.v4" / "cache.db", "tags")
with open(history, "a") as fh:
    fh.write("\n# aider chat started at 2026-12-01 23:59:59\n\n")
say("Aider v0.86.1", history)
say(f"Main model: {args.model or 'gpt-4o'} with {args.edit_format or 'whole'} edit format", history)
say("Git repo: .git with 4 files", history)
say("Repo-map: disabled" if not args.map_tokens else f"Repo-map: using {args.map_tokens} tokens", history)
for name in args.files:
    say(f"Added {name} to the chat.", history)
for name in args.read:
    say(f"Added {name} to the chat (read only).", history)
with open(history, "a") as fh:
    fh.write("\n" + "\n".join("#### " + line + "  " for line in message.splitlines()) + "\n")
reply = step.get("reply", "")
print(reply, flush=True)
with open(history, "a") as fh:
    fh.write("\n" + reply.strip() + "\n\n")
edited = []
if step.get("malformed"):
    say("The LLM did not conform to the edit format.", history)
    say("Only 3 reflections allowed, stopping.", history)
for name, text in step.get("files", {}).items():
    if name in args.read:
        say(f"Skipping edits to {name}, it is read-only.", history)
        continue
    if name not in args.files:
        say(f"Allow edits to {name} which was not previously added to chat? (Y)es/(N)o [Yes]: y", history)
    write(name, text)
    edited.append(name)
    say(f"Applied edit to {name}", history)
usage = step.get("usage", {})
if args.auto_commits and edited:
    subprocess.run(["git", "add", *edited], check=True)
    subject = "feat: " + reply.strip().splitlines()[0]
    subprocess.run(["git", "commit", "-qm", subject], check=True)
    sha = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    say(f"Commit {sha} {subject}", history)
say(f"Tokens: {usage.get('sent', '0')} sent, {usage.get('received', '0')} received. "
    f"Cost: ${step.get('cost', 0):.4f} message, ${step.get('cost', 0):.4f} session.", history)
sys.exit(step.get("exit", 0))
"""

SOURCES = {"claude": CLAUDE, "codex": CODEX, "aider": AIDER}


def install(folder: Path, name: str) -> Path:
    """Write the fake ``name`` (claude, codex or aider) as an executable in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + PRELUDE + SOURCES[name])
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_plan(path: Path, steps: list[dict[str, Any]]) -> Path:
    """The fakes' plan; ``FAKE_CLI_PLAN`` must name it (see ``plan_env``)."""
    path.write_text(json.dumps(steps))
    return path


def calls(plan: Path) -> list[list[str]]:
    """The arguments of every call made with ``plan``, oldest first."""
    argv = Path(f"{plan}.argv")
    return [json.loads(line) for line in argv.read_text().splitlines()] if argv.exists() else []


def plan_env(plan: Path) -> dict[str, str]:
    return {"FAKE_CLI_PLAN": str(plan), "PATH": os.environ.get("PATH", "")}
