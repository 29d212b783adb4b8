"""The command backend: fake coding-agent CLIs (edit, new file, protected file, hang, fail) in a real checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import git, make_repo, running
from fakes.contexts import make_context
from fakes.session import BEST_PARAMS, run_toy_session

from autoresearch.agents import Agent, get_agent
from autoresearch.agents._base import Context, Experiment
from autoresearch.agents.command import CommandAgent
from autoresearch.errors import AgentUnavailable, ConfigError, ProposalError
from autoresearch.executors.sandbox import can_confine


def script(tmp_path: Path, name: str, body: str) -> str:
    """A fake CLI: a Python script; returns the command line that runs it."""
    path = tmp_path / name
    path.write_text("import os, sys, time, subprocess\n" + textwrap.dedent(body))
    return f"{sys.executable} {path}"


def notes(tmp_path: Path) -> Path:
    """A folder outside the checkout that the fake CLIs below may write in (``writable``)."""
    folder = tmp_path / "notes"
    folder.mkdir(exist_ok=True)
    return folder


def context_in(repo: Path) -> Context:
    return make_context(workdir=repo, parent=git(repo, "rev-parse", "HEAD"))


def assert_clean(repo: Path, head: str) -> None:
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "rev-parse", "HEAD") == head


EDIT_X = """
open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
with open(sys.argv[2], "w") as f:
    f.write("set X to 3.0\\n\\nthe minimum is at X = 3\\n")
print("done")
"""


def test_edit_becomes_a_patch_and_the_checkout_is_left_clean(
    toy_repo: Path, tmp_path: Path
) -> None:
    head = git(toy_repo, "rev-parse", "HEAD")
    cmd = script(tmp_path, "cli.py", EDIT_X) + " {prompt_file} {description_file}"
    proposal = CommandAgent(cmd, timeout=30).propose(context_in(toy_repo))
    assert proposal.description == "set X to 3.0"
    assert proposal.rationale == "the minimum is at X = 3"
    assert "-X = 1.0\n+X = 3.0" in proposal.patch and not proposal.edits
    assert proposal.usage.cost_usd is None  # a CLI's spend is unknown unless it reports it
    assert_clean(toy_repo, head)
    subprocess.run(
        ["git", "apply", "--check", "-"], cwd=toy_repo, input=proposal.patch, text=True, check=True
    )


def test_prompt_file_holds_the_brief(toy_repo: Path, tmp_path: Path) -> None:
    copy = notes(tmp_path) / "seen.md"
    body = f"""
    import shutil
    shutil.copy(sys.argv[1], {str(copy)!r})
    open("params.py", "a").write("# touched\\n")
    """
    CommandAgent(script(tmp_path, "cli.py", body) + " {prompt_file}", timeout=30,
                 writable=[str(copy.parent)]).propose(context_in(toy_repo))  # fmt: skip
    brief = copy.read_text()
    assert "Minimise the score" in brief and "params.py" in brief and "| 3 | keep |" in brief
    assert "description" in brief


def test_prompt_on_stdin_and_description_from_last_output_line(
    toy_repo: Path, tmp_path: Path
) -> None:
    copy = notes(tmp_path) / "stdin.md"
    body = f"""
    open({str(copy)!r}, "w").write(sys.stdin.read())
    open("params.py", "w").write("X = 2.0\\nY = 2.0\\n")
    print("thinking...")
    print("Moved X halfway to 3")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30,
                            writable=[str(copy.parent)]).propose(context_in(toy_repo))  # fmt: skip
    assert "Minimise the score" in copy.read_text()
    assert proposal.description == "Moved X halfway to 3"


def test_inline_prompt_placeholder_is_one_quoted_argument(toy_repo: Path, tmp_path: Path) -> None:
    body = """
    assert len(sys.argv) == 2 and "Minimise the score" in sys.argv[1], sys.argv
    open("params.py", "a").write("# ok\\n")
    print("appended a comment")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body) + " {prompt}", timeout=30).propose(
        context_in(toy_repo)
    )
    assert proposal.description == "appended a comment"


def test_commit_by_the_cli_is_diffed_against_the_parent_and_undone(
    toy_repo: Path, tmp_path: Path
) -> None:
    head = git(toy_repo, "rev-parse", "HEAD")
    body = """
    open("params.py", "w").write("X = 3.0\\nY = -1.0\\n")
    subprocess.run(["git", "commit", "-qam", "Set X and Y to their optimum"], check=True)
    os.makedirs("lib", exist_ok=True)
    open("lib/helper.py", "w").write("H = 1\\n")
    print("Commit 316aa5f Set X and Y to their optimum")
    """
    context = make_context(workdir=toy_repo, parent=head, editable_globs=("params.py", "lib/*.py"))
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context)
    assert "+Y = -1.0" in proposal.patch and "+++ b/lib/helper.py" in proposal.patch
    assert proposal.description == "Set X and Y to their optimum"  # its commit, not a status line
    assert_clean(toy_repo, head)
    assert not (toy_repo / "lib").exists()


def test_new_files_outside_editable_are_dropped_not_rejected(
    toy_repo: Path, tmp_path: Path
) -> None:
    head = git(toy_repo, "rev-parse", "HEAD")
    body = """
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    open(".aider.chat.history.md", "w").write("# chat\\n")
    os.makedirs("__pycache__", exist_ok=True)
    open("__pycache__/params.cpython-311.pyc", "wb").write(b"\\0")
    open("sitecustomize.py", "w").write("import os\\n")
    subprocess.run(["git", "add", "sitecustomize.py"], check=True)
    subprocess.run(["git", "commit", "-qm", "add a startup hook"], check=True)
    print("set X to 3")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(
        context_in(toy_repo)
    )
    assert proposal.patch.count("diff --git") == 1 and "+++ b/params.py" in proposal.patch
    assert proposal.meta["dropped"] == [
        ".aider.chat.history.md",
        "__pycache__/params.cpython-311.pyc",
        "sitecustomize.py",  # committed by the CLI, still new and not editable
    ]
    assert_clean(toy_repo, head)


def test_only_dropped_files_is_no_change_and_says_so(toy_repo: Path, tmp_path: Path) -> None:
    body = 'open(".aider.chat.history.md", "w").write("# chat\\n")\nprint("done")\n'
    with pytest.raises(ProposalError) as info:
        CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context_in(toy_repo))
    assert str(info.value).startswith(
        "command made no change to the files (it only created files that match no editable "
        "glob, which were dropped: .aider.chat.history.md); output tail:\ndone"
    )


def test_a_sparse_file_past_max_file_kb_is_refused_before_it_is_diffed(toy_repo: Path, tmp_path: Path) -> None:
    """A CLI can make a 300 MB file in an instant (``truncate``); diffing it wrote 300 MB into
    the patch and the slot before the size check refused it."""
    body = 'os.truncate("params.py", 300 * 2**20)\nprint("bigger")\n'
    context = replace(context_in(toy_repo), max_file_kb=64.0)
    with pytest.raises(ProposalError, match=r"^params.py: the command makes it 307200.0 KB, over \[task\] max_file_kb = 64"):
        CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context)
    assert_clean(toy_repo, git(toy_repo, "rev-parse", "HEAD"))
    small = 'open("params.py", "a").write("Z = 1.0\\n")\nprint("one more")\n'
    assert "+Z = 1.0" in CommandAgent(script(tmp_path, "ok.py", small), timeout=30).propose(context).patch


def test_protected_file_edit_is_in_the_patch_for_the_workspace_to_reject(
    toy_repo: Path, tmp_path: Path
) -> None:
    body = """
    open("score.py", "a").write("score = 0\\n")
    print("improve the score directly")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(
        context_in(toy_repo)
    )
    assert "+++ b/score.py" in proposal.patch
    assert git(toy_repo, "status", "--porcelain") == ""


def test_untracked_files_present_before_are_left_alone(toy_repo: Path, tmp_path: Path) -> None:
    (toy_repo / "data").mkdir()
    (toy_repo / "data" / "shard.bin").write_bytes(b"\0" * 10)
    body = """
    open("params.py", "a").write("# x\\n")
    open("scratch.txt", "w").write("notes")
    print("x")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(
        context_in(toy_repo)
    )
    assert "data/shard.bin" not in proposal.patch and "scratch.txt" not in proposal.patch
    assert proposal.meta["dropped"] == ["scratch.txt"]  # new, and matches no editable glob
    assert (toy_repo / "data" / "shard.bin").exists() and not (toy_repo / "scratch.txt").exists()


def test_hung_cli_is_killed_with_its_children(toy_repo: Path, tmp_path: Path) -> None:
    token = f"cli-child-{os.getpid()}-{time.monotonic_ns()}"
    body = f"""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {token}"])
    open("params.py", "a").write("# half done\\n")
    print("working", flush=True)
    time.sleep(60)
    """
    head = git(toy_repo, "rev-parse", "HEAD")
    start = time.monotonic()
    with pytest.raises(  # 5 s: time enough to start and print on a busy machine
        ProposalError, match=r"timed out after 5 s and was killed; output tail:\nworking"
    ):
        CommandAgent(script(tmp_path, "cli.py", body), timeout=5).propose(context_in(toy_repo))
    assert time.monotonic() - start < 40  # not the minute it would sleep
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and running(token):
        time.sleep(0.05)
    assert not running(token)
    assert_clean(toy_repo, head)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_failing_cli_is_invalid_and_keys_are_not_echoed(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-for-cli-123")
    body = """
    open("params.py", "a").write("# x\\n")
    print("using key", os.environ["ANTHROPIC_API_KEY"])
    sys.exit(3)
    """
    with pytest.raises(ProposalError, match="exited with status 3") as info:
        CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context_in(toy_repo))
    assert "sk-ant-secret-for-cli-123" not in str(info.value) and "using key ***" in str(info.value)
    assert git(toy_repo, "status", "--porcelain") == ""


def test_no_change_is_invalid(toy_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ProposalError, match="made no change"):
        CommandAgent(script(tmp_path, "cli.py", "print('nothing to do')\n"), timeout=30).propose(
            context_in(toy_repo)
        )


def test_reported_cost_from_a_json_result_line(toy_repo: Path, tmp_path: Path) -> None:
    result = {
        "type": "result",
        "result": "Tuned X.\nset X to 3.0",
        "total_cost_usd": 0.042,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 900,
            "cache_creation_input_tokens": 90,
            "output_tokens": 55,
        },
    }
    body = f"""
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print({json.dumps(json.dumps(result))})
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(
        context_in(toy_repo)
    )
    assert proposal.description == "set X to 3.0"
    usage = proposal.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.cost_usd) == (
        1000,
        900,
        55,
        0.042,
    )


def test_shell_features_and_literal_braces_survive(toy_repo: Path, tmp_path: Path) -> None:
    cli = script(
        tmp_path, "cli.py", 'open("params.py", "a").write(sys.argv[1] + "\\n")\nprint("ok")\n'
    )
    cmd = cli + ' "$(head -c 9 {prompt_file})${UNSET_VAR:-}"'
    proposal = CommandAgent(cmd, timeout=30).propose(context_in(toy_repo))
    assert "+# Researc" in proposal.patch


def test_a_program_that_is_not_there_is_refused_before_the_baseline(toy_repo: Path, tmp_path: Path) -> None:
    """A typo'd CLI ran the whole baseline, then failed at every proposal until the stop rule."""
    from fakes.session import run_cli

    done = run_cli(toy_repo, "run", "--tag", "t", "--agent", "command", "--cmd", "nonexistent-cli {prompt_file}")
    assert done.returncode == 1 and "'nonexistent-cli' (the first word of --cmd) is not on PATH" in done.stderr
    assert not (toy_repo / ".autoresearch" / "ledger.db").exists() or "baseline" not in run_cli(toy_repo, "log").stdout
    for fine in (f"FOO=1 {sys.executable} x.py", "cd sub && nonexistent-cli", "./not-yet-there.sh", "true"):
        CommandAgent(fine).check({})
    with pytest.raises(ConfigError, match="is not an executable file"):
        CommandAgent("/nonexistent/cli {prompt}").check({})
    with pytest.raises(ConfigError, match=r"\[agent.command\] shell"):
        CommandAgent("true", shell="/bin/nonexistent-shell").check({})


def test_a_typo_in_an_agents_table_names_the_key_and_what_is_allowed() -> None:
    """It was a TypeError's text ("__init__() got an unexpected keyword argument")."""
    with pytest.raises(ConfigError, match=r"^\[agent.command\] unknown key 'writeable'; allowed: cmd, .*writable"):
        get_agent("command", cmd="true", writeable=["~/.x/"])
    with pytest.raises(ConfigError, match=r"^\[agent.codex\] unknown key 'timout'; allowed: .*sandbox, .*timeout"):
        get_agent("codex", timout=60)  # an option its base class takes counts, a typo does not


def test_settings_and_missing_workdir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cmd is missing or empty"):
        CommandAgent(" ")
    with pytest.raises(AgentUnavailable, match="no work directory"):
        CommandAgent("true").propose(make_context())
    agent = get_agent("command", cmd="aider --message-file {prompt_file}", timeout=5)
    assert (
        isinstance(agent, CommandAgent)
        and isinstance(agent, Agent)
        and agent.name == "command"
        and agent.timeout == 5
    )


def test_task_in_a_subfolder_gets_task_relative_paths(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mono", {"README.md": "top\n", "task/params.py": "X = 1.0\n"})
    head = git(repo, "rev-parse", "HEAD")
    inside = script(
        tmp_path, "inside.py", 'open("params.py", "w").write("X = 3.0\\n")\nprint("set X")\n'
    )
    proposal = CommandAgent(inside, timeout=30).propose(
        make_context(workdir=repo / "task", parent=head)
    )
    assert "+++ b/params.py" in proposal.patch and "task/" not in proposal.patch
    outside = script(
        tmp_path, "outside.py", 'open("../README.md", "a").write("x\\n")\nprint("x")\n'
    )
    with pytest.raises(ProposalError, match=r"outside the task folder: README\.md"):
        CommandAgent(outside, timeout=30).propose(make_context(workdir=repo / "task", parent=head))
    assert_clean(repo, head)


# --- a whole session -------------------------------------------------------------------------


def test_full_session_with_a_fake_cli(toy_repo: Path, tmp_path: Path) -> None:
    counter = notes(tmp_path) / "calls"
    body = f"""
    n = int(open({str(counter)!r}).read()) + 1 if os.path.exists({str(counter)!r}) else 1
    open({str(counter)!r}, "w").write(str(n))
    text = open("params.py").read()
    if n == 1:
        open("params.py", "w").write(text.replace("X = 1.0", "X = 3.0"))
        open(sys.argv[1], "w").write("set X to 3.0\\n\\nX is squared away from 3\\n")
    elif n == 2:
        open("score.py", "a").write("score = 0\\n")
        print("rewrite the ruler")
    elif n == 3:
        open("params.py", "w").write("X = 0\\n")
        time.sleep(60)
    else:
        open("params.py", "w").write(text.replace("Y = 2.0", "Y = -1.0"))
        open(sys.argv[1], "w").write("set Y to -1\\n")
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body) + " {description_file}", timeout=6,
                         writable=[str(counter.parent)])  # fmt: skip
    engine, rows = run_toy_session(toy_repo, agent, max_experiments=4)
    assert [(r.id, r.verdict) for r in rows] == [
        (0, "baseline"),
        (1, "keep"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "keep"),
    ]
    by_id = {r.id: r for r in rows}
    assert [by_id[i].description for i in (1, 4)] == ["set X to 3.0", "set Y to -1"]
    assert "protected" in by_id[2].reason and "timed out after 6 s" in by_id[3].reason
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST_PARAMS.strip()
    proposal = engine.ledger.experiment(engine.session, 1)
    assert (
        "+X = 3.0" in proposal.diff
        and proposal.rationale == "X is squared away from 3"
    )


def test_cli_that_ignores_a_large_stdin(toy_repo: Path, tmp_path: Path) -> None:
    history = tuple(Experiment(i, "discard", 1.0, "x" * 150) for i in range(1, 2000))
    body = 'open("params.py", "a").write("# x\\n")\nprint("did not read stdin")\n'
    agent = CommandAgent(script(tmp_path, "cli.py", body), timeout=30, history_tokens=100_000)
    ctx = make_context(workdir=toy_repo, parent=git(toy_repo, "rev-parse", "HEAD"), history=history)
    assert agent.propose(ctx).description == "did not read stdin"


def test_permission_denials_in_a_json_result_are_the_reason(toy_repo: Path, tmp_path: Path) -> None:
    result = {
        "type": "result",
        "result": "I could not edit params.py.",
        "permission_denials": [
            {"tool_name": "Edit", "tool_use_id": "t1", "tool_input": {"file_path": "params.py"}}
        ],
        "total_cost_usd": 0.01,
    }
    body = f"print({json.dumps(json.dumps(result))})\n"
    with pytest.raises(ProposalError) as info:
        CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context_in(toy_repo))
    assert str(info.value).startswith(
        "command made no change to the files; the CLI was refused permission 1 time(s): "
        "Edit(params.py) (permission_denials in its JSON output)"
    )
    assert info.value.usage is not None and info.value.usage.cost_usd == 0.01  # still paid for


def test_the_cli_runs_as_a_step_with_its_pid_file_in_the_session_logs(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-in-the-agent-log")
    seen = notes(tmp_path) / "seen"
    pidfile = toy_repo / ".autoresearch" / "logs" / "t" / "agent-1.pid"
    body = f"""
    fields = open({str(pidfile)!r}).read().split()
    open({str(seen)!r}, "w").write(str(fields[2] == os.environ["AUTORESEARCH_STEP"]))
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("key", os.environ["OPENAI_API_KEY"])
    print("set X to 3.0")
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), writable=[str(seen.parent)])
    _, rows = run_toy_session(toy_repo, agent, 1)
    assert [r.verdict for r in rows] == ["baseline", "keep"]
    assert seen.read_text() == "True"  # a resumed session finds and kills what is left running
    assert not pidfile.exists()
    log = pidfile.with_suffix(".log")
    assert log.read_text() == "key ***\nset X to 3.0\n" and rows[1].meta["log"] == str(log)
    assert not log.is_symlink()  # the raw output (with the key) stayed in a private folder


def test_the_cli_runs_at_the_lowest_priority(toy_repo: Path, tmp_path: Path) -> None:
    """What it runs while it proposes (tests, a script, a CPU burner) must not take the CPU from
    the runs it overlaps: the baseline's, the best's fresh runs."""
    seen = notes(tmp_path) / "seen"
    body = f"""
    import subprocess
    child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
    open({str(seen)!r}, "w").write(f"{{os.nice(0)}} {{child.stdout.strip()}}")
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), timeout=30, writable=[str(seen.parent)])
    agent.propose(context_in(toy_repo))
    assert seen.read_text() == "19 19"


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups here")
def test_what_the_cli_starts_stays_in_its_autogroup_at_nice_19(toy_repo: Path, tmp_path: Path) -> None:
    """With the kernel's autogroups, a process in a session of its own competes with the runs as
    an equal whatever its nice: three such busy loops halved a run's work. The CLI's session
    runs at autogroup nice 19, and a child that asks for a session of its own stays in it."""
    seen = notes(tmp_path) / "seen"
    body = f"""
    import subprocess
    probe = "import os; print(os.getsid(0), open('/proc/self/autogroup').read().split()[-1])"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           start_new_session=True)
    open({str(seen)!r}, "w").write(f"{{os.getsid(0)}} {{child.stdout.strip()}} {{child.stderr}}")
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), timeout=30, writable=[str(seen.parent)])
    agent.propose(context_in(toy_repo))
    mine, childs, nice = seen.read_text().split()
    assert childs == mine and nice == "19"


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot make a PID namespace here")
def test_what_the_cli_started_dies_with_its_turn_however_it_left(
    toy_repo: Path, tmp_path: Path
) -> None:
    """A daemon in a session of its own, without the step's environment and handed to init:
    neither the group nor the marker finds it. It would go on using the CPU while the best's
    fresh runs are timed (a red-team helper's daemon got a no-op kept that way)."""
    token = f"cli-daemon-{os.getpid()}-{time.monotonic_ns()}"
    body = f"""
    daemon = "import time\\nwhile True: time.sleep(0.05)  # {token}"
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve(sys.executable, [sys.executable, "-c", daemon], {{}})
        os._exit(0)
    time.sleep(0.5)
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    """
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(
        context_in(toy_repo)
    )
    assert "X = 3.0" in proposal.patch
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and running(token):
        time.sleep(0.05)
    assert not running(token)


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
def test_the_cli_writes_only_its_checkout_and_what_it_is_given(toy_repo: Path, tmp_path: Path) -> None:
    """Each write a red-team CLI used to get a no-op kept, from inside a real session's turn:
    a filter in git's global config (the orchestrator's git ran it, outside any namespace), the
    run slot's worktree, a ``.pth`` in the runs' Python, an object in git's store, the
    checkout's ``.git`` file, and (as root) the kernel's core pattern. All refused; the
    proposal itself, a commit of the CLI's own and its notes still work."""
    import site

    home = tmp_path / "home"
    home.mkdir()
    pth = Path(site.getsitepackages()[0]) / "zz_autoresearch_test.pth"
    objects = toy_repo / ".git" / "objects"
    attempts = {
        "gitconfig": "git config --global filter.x.clean 'touch /tmp/filter-ran'",
        "slot": "echo 'X = 3.0' >> ../0/params.py",
        "pth": f"echo 'import os' > {pth}",
        "object": f"mkdir -p {objects}/ab && echo x > {objects}/ab/{'c' * 38}",
        "gitfile": "echo 'gitdir: /tmp/elsewhere' > .git",
        "core_pattern": "cat /proc/sys/kernel/core_pattern > core && cat core > /proc/sys/kernel/core_pattern",
        "disk": "ls /dev | grep -E '^(sd|vd|nvme|xvd)' | head -1 | grep -q .",  # no disk to write
    }
    body = f"""
    import json
    results = {{}}
    for name, line in {attempts!r}.items():
        done = subprocess.run(line, shell=True, capture_output=True, text=True)
        results[name] = done.returncode
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    subprocess.run(["git", "commit", "-qam", "set X to 3.0 (a commit of its own)"], check=True)
    open({str(notes(tmp_path) / "results.json")!r}, "w").write(json.dumps(results))
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), env={"HOME": str(home)},
                         writable=[str(notes(tmp_path))])  # fmt: skip
    try:
        _, rows = run_toy_session(toy_repo, agent, 1)
    finally:
        pth.unlink(missing_ok=True)
    results = json.loads((notes(tmp_path) / "results.json").read_text())
    assert all(code != 0 for code in results.values()), results
    assert [r.verdict for r in rows] == ["baseline", "keep"], [r.reason for r in rows]
    assert rows[1].description == "set X to 3.0 (a commit of its own)"
    assert not (home / ".gitconfig").exists() and not (objects / "ab").exists()
    assert git(toy_repo, "show", "autoresearch/t:params.py") == "X = 3.0\nY = 2.0"


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
def test_the_cli_changes_only_its_own_device_nodes(toy_repo: Path, tmp_path: Path) -> None:
    """As root, the CLI owned the host's /dev nodes: a chmod 000 on /dev/null would break
    every later step and the user's shell. It gets copies of its own."""
    from autoresearch.executors.sandbox import device_copies

    with device_copies(tmp_path) as copies:
        if os.geteuid() == 0 and not copies:
            pytest.skip("no file system here allows device nodes: no copies to give the CLI")
    before = os.stat("/dev/full")
    body = f"""
    import os
    try:
        os.utime("/dev/full", ns=(10**9, 10**9))
        os.chmod("/dev/full", 0)
        said = "changed"
    except OSError as exc:
        said = f"refused: {{exc}}"
    open({str(notes(tmp_path) / "said")!r}, "w").write(said)
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), writable=[str(notes(tmp_path))])
    try:
        _, rows = run_toy_session(toy_repo, agent, 1)
    finally:  # put the host's node back should the CLI have reached it
        if os.stat("/dev/full").st_mode != before.st_mode:
            os.chmod("/dev/full", before.st_mode & 0o7777)
        if os.stat("/dev/full").st_mtime_ns != before.st_mtime_ns:
            os.utime("/dev/full", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat("/dev/full").st_ctime_ns == before.st_ctime_ns, "the host's /dev/full was changed"
    said = (notes(tmp_path) / "said").read_text()
    assert said == "changed" if os.geteuid() == 0 else said.startswith("refused"), said
    assert [r.verdict for r in rows] == ["baseline", "keep"], [r.reason for r in rows]


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
def test_a_repository_the_cli_makes_never_runs_its_filter_outside(toy_repo: Path, tmp_path: Path) -> None:
    """A folder the editable globs match, made a repository whose config has a clean filter:
    the orchestrator's diff ran it, as the orchestrator, outside every namespace."""
    outside = tmp_path / "outside"
    outside.mkdir()
    body = f"""
    clean = {{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}}
    def nested(*args):
        subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", *args], cwd="lib/sub",
                       env=clean, check=True)
    os.makedirs("lib/sub")
    nested("init", "-q")
    open("lib/sub/f", "w").write("1\\n")
    open("lib/sub/.gitattributes", "w").write("f filter=x\\n")
    nested("add", "f", ".gitattributes")
    nested("commit", "-qm", "f")
    nested("config", "filter.x.clean", "sh -c 'touch {outside}/ran; cat'")
    time.sleep(1.1)
    os.utime("lib/sub/f")  # same size, a newer time: a status there hashes it again
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    """
    context = make_context(workdir=toy_repo, parent=git(toy_repo, "rev-parse", "HEAD"),
                           editable_globs=("params.py", "lib/**"))  # fmt: skip
    proposal = CommandAgent(script(tmp_path, "cli.py", body), timeout=30).propose(context)
    assert not (outside / "ran").exists()
    assert "+X = 3.0" in proposal.patch and "+++ b/lib/sub/f" in proposal.patch
    assert "lib/sub/.git/" not in proposal.patch
    assert not (toy_repo / "lib").exists()


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
def test_links_and_fifos_the_cli_leaves_are_not_read_through(toy_repo: Path, tmp_path: Path) -> None:
    """Its output file made a FIFO hung the session for ever; its description file made a link
    to a file only the orchestrator may read put that file into the commit."""
    secret = notes(tmp_path) / "secret"
    secret.write_text("only the orchestrator reads this\n")
    body = f"""
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    folder = os.path.dirname(sys.argv[1])
    os.unlink(os.path.join(folder, "output.log"))
    os.mkfifo(os.path.join(folder, "output.log"))
    os.symlink({str(secret)!r}, sys.argv[1])
    trap = os.path.join(folder, "trap")
    os.mkdir(trap)
    os.symlink({str(secret)!r}, os.path.join(trap, "link"))
    os.chmod(trap, 0o500)
    """
    start = time.monotonic()
    agent = CommandAgent(script(tmp_path, "cli.py", body) + " {description_file}", timeout=30)
    proposal = agent.propose(context_in(toy_repo))
    assert time.monotonic() - start < 20
    assert "only the orchestrator" not in proposal.description
    assert oct(secret.stat().st_mode & 0o777) == "0o644"  # the cleanup did not chmod through a link


@pytest.mark.skipif(not can_confine(), reason="bubblewrap cannot confine a command here")
def test_the_ledger_and_the_holdout_are_empty_for_the_cli(toy_repo: Path, tmp_path: Path) -> None:
    """A shared lock on the ledger's files made the session's next write fail; the holdout is
    the evaluate step's alone."""
    (toy_repo / "hold").mkdir()
    (toy_repo / "hold" / "answers.txt").write_text("X = 3.0, Y = -1.0\n")
    toml = toy_repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("[task]\n", '[task]\nholdout = ["hold/*"]\n'))
    (toy_repo / ".gitignore").write_text("hold/\n")
    git(toy_repo, "add", "-A")
    git(toy_repo, "commit", "-qm", "a holdout")
    seen = notes(tmp_path) / "seen"
    body = f"""
    import fcntl
    found = []
    for path in ({str(toy_repo / "hold" / "answers.txt")!r}, {str(toy_repo / ".autoresearch" / "ledger.db")!r}):
        try:
            with open(path, "rb") as fh:
                found.append(len(fh.read()))
                fcntl.lockf(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            found.append(exc.strerror)
    open({str(seen)!r}, "a").write(repr(found) + "\\n")
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    time.sleep(1)
    """
    agent = CommandAgent(script(tmp_path, "cli.py", body), writable=[str(seen.parent)])
    _, rows = run_toy_session(toy_repo, agent, 2)
    assert [r.verdict for r in rows][:2] == ["baseline", "keep"], [r.reason for r in rows]
    for line in seen.read_text().splitlines():
        assert "18" not in line and all(not isinstance(v, int) or v == 0 for v in eval(line)), line


def test_without_a_pid_namespace_the_session_says_so_and_the_group_still_dies(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoresearch.config import load_config
    from autoresearch.engine import Engine, SessionOptions

    monkeypatch.setattr("autoresearch.engine.can_confine", lambda: False)
    monkeypatch.setattr("autoresearch.agents._cli.confined", lambda *a: [])
    token = f"cli-child-{os.getpid()}-{time.monotonic_ns()}"
    body = f"""
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {token}"])
    open("params.py", "w").write("X = 3.0\\nY = 2.0\\n")
    print("set X to 3.0")
    """
    messages: list[str] = []
    agent = CommandAgent(script(tmp_path, "cli.py", body), timeout=30)
    Engine(load_config(toy_repo), agent, options=SessionOptions(tag="t", max_experiments=1),
           on_message=messages.append).run()  # fmt: skip
    assert any("cannot confine the command agent" in m for m in messages), messages
    assert not running(token)  # the group and the marker are enough for a child that stayed


def test_a_cli_left_running_is_killed_by_the_orphan_sweep_of_a_resume(
    toy_repo: Path, tmp_path: Path
) -> None:
    import threading

    from autoresearch.process import kill_orphans

    worktree = toy_repo / ".autoresearch" / "worktrees" / "t-0"
    git(toy_repo, "worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    logs = toy_repo / ".autoresearch" / "logs" / "t"
    body = 'print("thinking", flush=True)\ntime.sleep(60)\n'
    agent = CommandAgent(script(tmp_path, "cli.py", body), timeout=60)
    context = make_context(workdir=worktree, parent=git(toy_repo, "rev-parse", "HEAD"), tag="t",
                           log_dir=logs)  # fmt: skip
    failures: list[BaseException] = []

    def propose() -> None:
        try:
            agent.propose(context)
        except ProposalError as exc:
            failures.append(exc)

    worker = threading.Thread(target=propose)
    start = time.monotonic()
    worker.start()
    while not (logs / "agent-5.pid").exists() and time.monotonic() - start < 20:
        time.sleep(0.05)
    assert kill_orphans(logs)  # what `run --resume` does first
    worker.join(timeout=20)
    assert time.monotonic() - start < 30
    assert "command exited with status -9" in str(failures[0])
