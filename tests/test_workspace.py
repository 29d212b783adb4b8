"""Workspace: session branch, dirty-tree refusal, allowlist (paths, symlinks, .git), commits and refs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import git

from autoresearch.agents._base import Edit, Proposal
from autoresearch.config import load_config
from autoresearch.errors import EditRejected, ProposalError, WorkspaceError
from autoresearch.workspace import Allowlist, Workspace, glob_regex


def workspace(repo: Path, tag: str = "t") -> Workspace:
    return Workspace(load_config(repo), tag)


def test_start_creates_the_branch_and_excludes_state(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    head = ws.start()
    assert git(toy_repo, "rev-parse", "autoresearch/t") == head
    assert ".autoresearch/" in (toy_repo / ".git" / "info" / "exclude").read_text()
    assert git(toy_repo, "branch", "--show-current") == "main"  # the user's checkout is untouched


def test_refuses_a_dirty_tree_naming_the_files(toy_repo: Path) -> None:
    (toy_repo / "params.py").write_text("X = 9\n")
    (toy_repo / "score.py").write_text("print(1)\n")
    with pytest.raises(WorkspaceError, match=r"uncommitted changes: .*params\.py, .*score\.py"):
        workspace(toy_repo).start()


def test_untracked_files_do_not_block_a_session(toy_repo: Path) -> None:
    (toy_repo / "results.tsv").write_text("commit\n")  # e.g. a previous export
    assert workspace(toy_repo).start() == git(toy_repo, "rev-parse", "HEAD")


def test_refuses_to_reuse_a_tag(toy_repo: Path) -> None:
    workspace(toy_repo).start()
    with pytest.raises(WorkspaceError, match="tag 't' is in use"):
        workspace(toy_repo).start()
    assert workspace(toy_repo).resume() == git(toy_repo, "rev-parse", "HEAD")


def test_bad_tag_is_refused(toy_repo: Path) -> None:
    with pytest.raises(WorkspaceError, match="tag 'a b'"):
        workspace(toy_repo, "a b")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("score.py", "protected"),
        ("autoresearch.toml", "protected"),
        ("other.py", "not editable"),
        ("../params.py", "escapes"),
        ("/etc/passwd", "absolute"),
        (".git/config", "inside .git"),
        ("sub/../../x.py", "escapes"),
        ("params\x00.py", "control characters"),
    ],
)
def test_allowlist_rejects(path: str, reason: str) -> None:
    allow = Allowlist(editable=("params.py", "*.py"), protected=("score.py",))
    if path == "other.py":
        allow = Allowlist(editable=("params.py",), protected=("score.py",))
    found = allow.reason(path)
    assert found is not None and reason in found


def test_globs() -> None:
    assert glob_regex("src/**/*.py").match("src/a/b/c.py")
    assert glob_regex("src/**/*.py").match("src/c.py")
    assert not glob_regex("src/*.py").match("src/a/c.py")
    assert glob_regex("*.py").match("deep/down/x.py")  # no slash: matches names anywhere
    assert not glob_regex("*.py", anywhere=False).match("deep/down/x.py")  # ... or at the top only
    assert glob_regex("**/*.py", anywhere=False).match("deep/down/x.py")


def test_an_editable_name_is_the_file_at_the_top_a_protected_one_any_file_so_named() -> None:
    """``editable = ["train.py"]`` let an agent add ``sub/train.py`` and ``train.py/train.py``
    (the second crashed the session); a protected name still protects every copy."""
    allow = Allowlist(editable=("train.py", "lib/*.py"), protected=("bench.py",))
    assert allow.reason("train.py") is None and allow.reason("lib/a.py") is None
    for path in ("sub/train.py", "train.py/train.py", "lib/sub/a.py"):
        assert "not editable" in (allow.reason(path) or ""), path
    assert "protected" in (Allowlist(("**/*.py",), ("bench.py",)).reason("tools/bench.py") or "")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (Edit("params.py/inner.py", content="A = 1\n"), "params.py/inner.py: params.py is a file, not a folder"),
        (Edit("sub", content="A = 1\n"), "sub: cannot be written: Is a directory"),
    ],
)
def test_an_edit_through_a_file_or_onto_a_folder_is_rejected_not_a_crash(toy_repo: Path, edit: Edit, reason: str) -> None:
    (toy_repo / "sub").mkdir()
    (toy_repo / "sub" / "m.py").write_text("B = 1\n")
    git(toy_repo, "add", "sub")
    git(toy_repo, "commit", "-qm", "a folder")
    ws = Workspace(load_config(toy_repo), "t")
    ws.allow = Allowlist(("**",), ws.config.protected)
    ws.checkout(0, ws.start())
    with pytest.raises(EditRejected) as info:
        ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 2.0"), edit)))
    assert str(info.value) == reason
    ws.checkout(0, ws.head())
    assert "X = 1.0\n" in (ws.slot_dir(0) / "params.py").read_text()  # the slot is clean again


def test_apply_commit_and_refs(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    base = ws.start()
    ws.checkout(0, base)
    changed = ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 2.0"),)))
    assert changed == ["params.py"]
    sha, diff = ws.commit(0, "try X = 2")
    assert "-X = 1.0\n+X = 2.0" in diff
    assert git(toy_repo, "show", f"{sha}:params.py").count("X = 2.0") == 1
    assert git(toy_repo, "rev-parse", "autoresearch/t") == base  # committing never moves the branch
    ws.keep_discarded(1, sha)
    assert ws.discarded_refs() == {1: sha}
    assert (toy_repo / "params.py").read_text().count("X = 1.0") == 1  # user checkout untouched


def test_rejected_edit_writes_nothing(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    proposal = Proposal(
        "x", edits=(Edit("params.py", "X = 1.0", "X = 5.0"), Edit("score.py", content="print(0)\n"))
    )
    with pytest.raises(EditRejected, match="protected"):
        ws.apply(0, proposal)
    assert "X = 1.0" in (ws.slot_dir(0) / "params.py").read_text()


def test_a_file_grown_past_max_file_kb_is_rejected(toy_repo: Path) -> None:
    """Trained weights written into the editable file (an agent that can run code while it
    proposes, e.g. Codex in its workspace sandbox, could train for its whole turn) are refused."""
    toml = toy_repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("[task]\n", "[task]\nmax_file_kb = 64\n", 1))
    git(toy_repo, "commit", "-qam", "a 64 KB limit")
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    weights = "WEIGHTS = '" + "A" * 100_000 + "'\n"
    with pytest.raises(EditRejected, match=r"params.py: the proposal makes it 97.8 KB, over \[task\] max_file_kb = 64"):
        ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 1.0\n" + weights),)))
    ws.checkout(0, ws.head())
    patch = "--- a/params.py\n+++ b/params.py\n@@ -2,2 +2,3 @@\n X = 1.0\n Y = 2.0\n+" + weights
    with pytest.raises(EditRejected, match="max_file_kb"):  # a patch, as the CLI agents' edits come
        ws.apply(0, Proposal("p", patch=patch))
    ws.checkout(0, ws.head())  # eight new files of 1,000 KB each ran: the limit holds for all together
    toml.write_text(toml.read_text().replace('editable = ["params.py"]', 'editable = ["*.py"]'))
    git(toy_repo, "commit", "-qam", "every file editable")
    ws = workspace(toy_repo)
    ws.checkout(0, git(toy_repo, "rev-parse", "HEAD"))
    tables = tuple(Edit(f"tab{i}.py", content="T = '" + "A" * 30_000 + "'\n") for i in range(3))
    with pytest.raises(EditRejected, match=r"^the proposal grows 3 files by 87.9 KB in all, over \[task\] max_file_kb = 64"):
        ws.apply(0, Proposal("tables", edits=tables))
    assert ws.apply(0, Proposal("two", edits=tables[:2])) == ["tab0.py", "tab1.py"]
    from autoresearch.edits import too_large  # net: a 60 KB module split in three is no growth

    assert too_large({"big.py": (0, 61_440), "a.py": (20_480, 0), "b.py": (20_480, 0), "c.py": (20_480, 0)}, 64) is None
    # a file already past the limit may still be edited, as long as the edit does not grow it
    (toy_repo / "params.py").write_text("X = 1.0\nY = 2.0\n" + weights)
    git(toy_repo, "commit", "-qam", "a big file of the task's own")
    ws = workspace(toy_repo)
    ws.checkout(0, git(toy_repo, "rev-parse", "HEAD"))
    assert ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 3.0"),))) == ["params.py"]


def test_symlinked_path_is_rejected(toy_repo: Path) -> None:
    os.symlink("score.py", toy_repo / "link.py")
    git(toy_repo, "add", "link.py")
    git(toy_repo, "commit", "-qm", "link")
    ws = Workspace(load_config(toy_repo), "t")
    ws.config = type(ws.config)(**{**ws.config.__dict__, "editable": ("*.py",)})
    ws.allow = Allowlist(("*.py",), ws.config.protected)
    ws.checkout(0, ws.start())
    with pytest.raises(EditRejected, match="symlink"):
        ws.apply(0, Proposal("x", edits=(Edit("link.py", content="print('pwned')\n"),)))


def test_unified_diff_patch_is_checked_and_applied(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    good = "--- a/params.py\n+++ b/params.py\n@@ -2,2 +2,2 @@\n-X = 1.0\n+X = 3.0\n Y = 2.0\n"
    assert ws.apply(0, Proposal("p", patch=good)) == ["params.py"]
    ws.checkout(0, ws.head())
    bad = "--- a/score.py\n+++ b/score.py\n@@ -1 +1 @@\n-import json, math, os, sys\n+import os\n"
    with pytest.raises(EditRejected, match="protected"):
        ws.apply(0, Proposal("p", patch=bad))
    stale = "--- a/params.py\n+++ b/params.py\n@@ -2,1 +2,1 @@\n-X = 7.0\n+X = 3.0\n"
    with pytest.raises(ProposalError, match="does not apply"):
        ws.apply(0, Proposal("p", patch=stale))
    corrupt = "--- a/params.py\n+++ b/params.py\n@@ -1,3 +1,3 @@\n nothing\n-foo\n+bar\n"
    with pytest.raises(ProposalError, match=r"the patch is malformed: .*corrupt patch"):
        ws.apply(0, Proposal("p", patch=corrupt))  # the agent's reply: a verdict, not a stop


def test_a_proposal_that_changes_nothing_is_rejected(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 1.0"),)))
    with pytest.raises(EditRejected, match="changes nothing"):
        ws.commit(0, "no-op")


def test_crlf_files_stay_crlf(toy_repo: Path) -> None:
    (toy_repo / "params.py").write_bytes(b"X = 1.0\r\nY = 2.0\r\n")
    git(toy_repo, "commit", "-qam", "crlf")
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    assert ws.read_files(0, ["params.py"])["params.py"] == "X = 1.0\r\nY = 2.0\r\n"
    ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 4.0"),)))
    _, diff = ws.commit(0, "crlf edit")
    assert (ws.slot_dir(0) / "params.py").read_bytes() == b"X = 4.0\r\nY = 2.0\r\n"
    assert "-X = 1.0\r\n+X = 4.0\r\n" in diff


def test_commit_refuses_stray_files_left_in_the_worktree(toy_repo: Path) -> None:
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 2.0"),)))
    (ws.slot_dir(0) / "score.py").write_text(
        "print('---'); print('score: 0')\n"
    )  # e.g. a CLI agent
    with pytest.raises(EditRejected, match=r"score\.py: protected"):
        ws.commit(0, "sneaky")


def test_lf_blocks_edit_crlf_files_without_mixing_line_endings(toy_repo: Path) -> None:
    (toy_repo / "params.py").write_bytes(b"X = 1.0\r\nY = 2.0\r\n")
    git(toy_repo, "commit", "-qam", "crlf")
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    ws.apply(
        0, Proposal("x", edits=(Edit("params.py", "X = 1.0\nY = 2.0\n", "X = 2.0\nY = 0.0\n"),))
    )
    assert (ws.slot_dir(0) / "params.py").read_bytes() == b"X = 2.0\r\nY = 0.0\r\n"


def test_an_edit_to_a_file_that_is_not_utf8_is_a_clear_rejection(toy_repo: Path) -> None:
    (toy_repo / "params.py").write_bytes(b"# caf\xe9\nX = 1.0\nY = 2.0\n")
    git(toy_repo, "commit", "-qam", "latin-1")
    ws = workspace(toy_repo)
    ws.checkout(0, ws.start())
    with pytest.raises(ProposalError, match="not UTF-8 text"):
        ws.apply(0, Proposal("x", edits=(Edit("params.py", "X = 1.0", "X = 2.0"),)))


def plant_repository(folder: Path, marker: Path) -> None:
    """What a run can do in its task folder: a repository of its own whose config runs a command
    (a clean filter on every file) wherever git obeys it; and state kept in ``lib/.git``."""
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q", ".")
    git(folder, "config", "filter.pwn.clean", f"sh -c 'touch {marker}; cat'")
    (folder / ".git" / "info").mkdir(exist_ok=True)
    (folder / ".git" / "info" / "attributes").write_text("* filter=pwn\n")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "planted")
    (folder / "lib" / ".git").mkdir(parents=True)
    (folder / "lib" / ".git" / "state").write_text("42\n")


def test_a_repository_planted_in_the_task_folder_is_never_obeyed(tmp_path: Path) -> None:
    """The task lives in a subfolder of its repository, as in a monorepo: git run from that
    folder would find a planted ``.git`` before the worktree's own. The workspace names its
    repository outright, so the planted config never runs, and the next checkout removes it."""
    from conftest import TOY_PARAMS, TOY_SCORE, TOY_TOML, make_repo

    toml = TOY_TOML.replace("{python}", "python3")
    repo = make_repo(tmp_path / "mono", {"sub/params.py": TOY_PARAMS, "sub/score.py": TOY_SCORE,
                                         "sub/program.md": "m\n", "sub/autoresearch.toml": toml})  # fmt: skip
    ws = workspace(repo / "sub")
    base = ws.start()
    marker = tmp_path / "PWNED"
    task = ws.checkout(0, base)
    plant_repository(task, marker)
    marker.unlink(missing_ok=True)
    (task / "params.py").write_text("X = 3.0\nY = 2.0\n")
    sha, diff = ws.commit(0, "after a run planted a repository")
    assert not marker.exists()
    assert git(repo, "rev-parse", f"{sha}^") == base  # a commit of the real repository
    assert "X = 3.0" in diff and ".git" not in diff
    assert ws.read_files(0, ["*.py"]).keys() == {"params.py", "score.py"}
    ws.checkout(0, base)
    assert not (task / ".git").exists() and not (task / "lib" / ".git").exists()
    assert (ws.slot_root(0) / ".git").is_file()  # the worktree's own stays
    assert not marker.exists()


def test_a_new_module_that_would_shadow_an_installed_one_is_refused(toy_repo: Path) -> None:
    """A ``statistics.py`` next to a trusted ``evaluate.py`` would run inside it on its first
    ``import statistics``; a new module of its own name is fine, and so is an edit of a file
    that the task already had."""
    (toy_repo / "autoresearch.toml").write_text(
        (toy_repo / "autoresearch.toml").read_text().replace('["params.py"]', '["*.py", "**/*.py"]')
    )
    git(toy_repo, "commit", "-qam", "everything editable")
    ws = workspace(toy_repo)
    base = ws.start()
    for path in ("statistics.py", "lib/json/__init__.py", "numpy.py"):
        ws.checkout(0, base)
        ws.apply(0, Proposal("shadow", edits=(Edit(path, content="x = 1\n"),)))
        with pytest.raises(EditRejected, match=rf"{path}: a new module named .* would shadow"):
            ws.commit(0, "shadow")
    for path in ("lib/conftest.py", "conftest.py"):  # tests that pass without running
        ws.checkout(0, base)
        ws.apply(0, Proposal("implicit", edits=(Edit(path, content="x = 1\n"),)))
        with pytest.raises(EditRejected, match=rf"{path}: a new .* would be loaded by Python or pytest"):
            ws.commit(0, "implicit")
    # a package or an extension beside a module of the task is imported in its place: the
    # protected score.py (a workload) was replaced by a new score/__init__.py, kept at -75%
    from autoresearch.edits import new_file_reason

    assert "beside lib/w.py would be imported in its place" in (new_file_reason("lib/w.abi3.so", ["lib/w.py"]) or "")
    assert new_file_reason("lib/w/__init__.py", ["w.py", "lib/x.py"]) is None  # another folder, another name
    for pyc in ("__pycache__/score.cpython-311.pyc", "lib/w.pyc"):  # loaded in place of a source it names
        assert "compiled bytecode is loaded in place of the source" in (new_file_reason(pyc) or "")
    for path in ("score/__init__.py", "params/__init__.py"):
        ws.checkout(0, base)
        ws.apply(0, Proposal("twin", edits=(Edit(path, content="x = 1\n"),)))
        with pytest.raises(EditRejected, match=rf"{path}: a new module '(score|params)' beside (score|params).py would"):
            ws.commit(0, "twin")
    ws.checkout(0, base)
    ws.apply(0, Proposal("own", edits=(Edit("helpers.py", content="x = 1\n"), Edit("lib/params.py", content="x = 1\n"))))
    ws.commit(0, "a module of its own")


def test_the_fingerprint_sees_a_git_file_pointed_elsewhere(tmp_path: Path) -> None:
    """The workspace finds git's folder once; a step that points the repository's `.git` file at
    an identical copy of that folder (whose hooks it then owns) still changes the fingerprint."""
    import shutil

    from conftest import make_repo

    toml = '[task]\neditable = ["params.py"]\nrun = "true"\n[metric]\nname = "score"\n'
    repo = make_repo(tmp_path / "task", {"params.py": "X = 1\n", "autoresearch.toml": toml})
    admin = tmp_path / "admin"
    shutil.move(repo / ".git", admin)
    (repo / ".git").write_text(f"gitdir: {admin}\n")
    workspace = Workspace(load_config(repo), "t")
    before = workspace.fingerprint()
    assert workspace.fingerprint() == before
    shutil.copytree(admin, tmp_path / "copy")
    (repo / ".git").write_text(f"gitdir: {tmp_path / 'copy'}\n")
    assert workspace.fingerprint() != before


def test_a_repository_in_a_folder_made_unlistable_is_still_removed(tmp_path: Path) -> None:
    """``chmod 111`` on the folder above a planted ``.git`` hid it from the walk (as its owner,
    not root) and from git clean: the next turn's git obeyed that repository's config. Links
    are never followed, and the worktree's own ``.git`` stays."""
    from autoresearch.git import remove_nested_git

    root = tmp_path / "worktree"
    (root / ".git").mkdir(parents=True)
    planted = root / "task" / "sub" / ".git"
    (planted / "locked").mkdir(parents=True)
    (planted / "config").write_text("[filter \"x\"]\n\tclean = touch ran\n")
    (planted / "locked").chmod(0)
    (root / "task" / "sub").chmod(0o111)
    outside = tmp_path / "outside"
    (outside / ".git").mkdir(parents=True)
    (root / "task" / "link").symlink_to(outside)
    (root / "task" / "file.git").write_text("")
    remove_nested_git(root)
    assert not planted.exists() and (root / ".git").is_dir()
    assert (outside / ".git").is_dir() and (root / "task" / "link").is_symlink()
    assert (root / "task" / "sub").stat().st_mode & 0o700 == 0o700


def test_a_file_both_editable_and_protected_is_a_config_error(toy_repo: Path) -> None:
    """Protected wins: every proposal was invalid until the failure stop rule. A glob that also
    matches a protected file is a carve-out, and fine."""
    from autoresearch.errors import ConfigError

    repo = toy_repo
    toml = repo / "autoresearch.toml"
    text = toml.read_text()
    toml.write_text(text.replace('protected = ["score.py"]', 'protected = ["score.py", "params.py"]'))
    with pytest.raises(ConfigError, match=r"\[task\] editable names params.py, which \[task\] protected covers"):
        Workspace(load_config(repo), "t")
    toml.write_text(text.replace('editable = ["params.py"]', 'editable = ["*.py"]'))
    Workspace(load_config(repo), "t")


def test_the_agent_is_shown_the_editable_files_less_the_protected_ones(toy_repo: Path) -> None:
    """``editable = ["*.py"]`` with ``score.py`` protected: the tuner searched score.py's
    constants, and every proposal that changed them was refused."""
    toml = toy_repo / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('editable = ["params.py"]', 'editable = ["*.py"]'))
    git(toy_repo, "commit", "-qam", "every Python file editable")
    ws = Workspace(load_config(toy_repo), "t")
    ws.checkout(0, ws.start())
    assert set(ws.read_files(0, ws.config.editable)) == {"params.py", "score.py"}
    assert set(ws.editable_files(0)) == {"params.py"}
    assert ws.shallow_globs() == []
    (toy_repo / "sub").mkdir()
    (toy_repo / "sub" / "deep.py").write_text("A = 1\n")
    git(toy_repo, "add", "sub")
    git(toy_repo, "commit", "-qm", "a subfolder")
    assert ws.shallow_globs() == [("*.py", ["sub/deep.py"])]  # "*.py" once matched it too: said at start
    assert ws.untracked(["autoresearch.toml", "params.py", "absent.md"]) == []
    (toy_repo / "notes.md").write_text("x\n")
    assert ws.untracked(["notes.md", "params.py", "./params.py"]) == ["notes.md"]
