"""Task templates: files copied by ``autoresearch init [--template NAME]``.

A template is a folder of package data under ``autoresearch/templates/<name>/``.
Files under ``<name>/_presets/<size>/`` overlay the base files for ``--size <size>``; a
preset file ``<name>.constants.toml`` instead sets module-level UPPER_CASE constants of the
base ``<name>.py`` (one train.py for every size, only its hyperparameters differ).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from autoresearch.errors import ConfigError

PRESETS_DIR = "_presets"
CONSTANTS_SUFFIX = ".constants.toml"


def available() -> list[str]:
    """Names of the built-in templates."""
    root = resources.files("autoresearch.templates")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def presets(name: str) -> list[str]:
    """Size presets of one template (empty when it has none)."""
    folder = _folder(name) / PRESETS_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def default_size(name: str) -> str | None:
    """``h100`` where CUDA is available and the template has that preset, else ``cpu``."""
    sizes = presets(name)
    if not sizes:
        return None
    try:
        import torch

        on_gpu = bool(torch.cuda.is_available())
    except ImportError:
        on_gpu = False
    return "h100" if on_gpu and "h100" in sizes else ("cpu" if "cpu" in sizes else sizes[0])


def write_template(
    name: str, dest: Path, *, size: str | None = None, overwrite: bool = False
) -> list[Path]:
    """Copy template ``name`` (with its ``size`` preset) into ``dest``; return the files written."""
    folder = _folder(name)
    sizes = presets(name)
    if size is None:
        size = default_size(name)
    elif size not in sizes:
        allowed = ", ".join(sizes) or "none (this template has no sizes)"
        raise ConfigError(f"template {name!r}: unknown size {size!r}; allowed: {allowed}")
    files = {rel: item.read_bytes() for rel, item in _walk(folder, skip_presets=True)}
    if size is not None:
        for rel, item in _walk(folder / PRESETS_DIR / size, skip_presets=False):
            if rel.endswith(CONSTANTS_SUFFIX):
                base = rel.removesuffix(CONSTANTS_SUFFIX) + ".py"
                files[base] = _set_constants(
                    base, files[base].decode("utf-8"), item.read_text()
                ).encode()
            else:
                files[rel] = item.read_bytes()
    written = []
    for rel, data in sorted(files.items()):
        target = dest / rel
        if target.exists() and not overwrite:
            raise ConfigError(f"{target}: already exists; not overwriting")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def _set_constants(path: str, text: str, toml_text: str) -> str:
    """``text`` with the constants named in ``toml_text`` set; every other byte unchanged."""
    import tomllib

    from autoresearch.agents._constants import discover, rewrite

    wanted = tomllib.loads(toml_text)
    found = {c.name: c for c in discover(path, text)}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ConfigError(
            f"template preset sets {', '.join(missing)}, which {path} does not define"
        )
    return rewrite(text, {found[name]: value for name, value in wanted.items()})


def _folder(name: str) -> Traversable:
    folder = resources.files("autoresearch.templates") / name
    if not folder.is_dir() or name.startswith("_"):
        raise ConfigError(
            f"unknown template {name!r}; available: {', '.join(available()) or 'none'}"
        )
    return folder


def _walk(
    folder: Traversable, *, skip_presets: bool, prefix: str = ""
) -> list[tuple[str, Traversable]]:
    out: list[tuple[str, Traversable]] = []
    for item in folder.iterdir():
        if item.name in ("__pycache__",) or (skip_presets and item.name == PRESETS_DIR):
            continue
        rel = f"{prefix}{item.name}"
        if item.is_dir():
            out.extend(_walk(item, skip_presets=False, prefix=rel + "/"))
        elif not item.name.endswith((".pyc", ".pyo")):
            out.append((rel, item))
    return out


PLAIN_TOML = """\
# autoresearch task: what the agent may edit, how one experiment runs, what is measured.
# Reference: the README's "autoresearch.toml" section.

[task]
instructions = "program.md"          # the agent's brief; you edit it, the agent does not
editable     = ["train.py"]          # globs the agent may change; everything else is read-only
protected    = []                    # files that must stay byte-identical (your harness)
context      = []                    # read-only files shown to LLM agents
setup        = ""                    # once per session, before the baseline (data, caches)
check        = ""                    # optional fast gate before each run (tests, lint)
run          = "python train.py"     # one experiment; gets AUTORESEARCH_TIME_BUDGET and _SEED
evaluate     = ""                    # optional trusted step after the run; the metric is read from it
time_budget  = 300                   # seconds the run should take
timeout      = 600                   # hard kill of the run's whole process group

[metric]
name      = "score"                  # the key printed after a `---` line: `score: 0.123`
direction = "minimize"               # or "maximize"
format    = "summary"                # summary | regex | json
"""

PLAIN_PROGRAM = """\
# Research brief

Goal: make `score` (printed by the run) as low as possible.

- Edit only the files listed as editable in autoresearch.toml.
- Each experiment runs under a fixed time budget; a change that runs longer is discarded.
- Prefer simple changes; a small gain that adds a lot of complexity is not worth it.
- Ideas worth trying: ...
"""


def init_plain(dest: Path, *, force: bool = False) -> list[Path]:
    """Write an ``autoresearch.toml`` and ``program.md`` skeleton into ``dest``; asks nothing."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("autoresearch.toml", PLAIN_TOML), ("program.md", PLAIN_PROGRAM)):
        target = dest / name
        if target.exists() and not force:
            raise ConfigError(f"{target}: already exists (pass --force to overwrite)")
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def init_template(
    name: str, dest: Path, *, size: str | None = None, force: bool = False
) -> list[Path]:
    """Create ``dest`` as a git repository holding template ``name``, committed."""
    import subprocess

    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest}: exists and is not empty (pass --force to write into it)")
    dest.mkdir(parents=True, exist_ok=True)
    written = write_template(name, dest, size=size, overwrite=force)
    from autoresearch.workspace import Git

    git = Git(dest)
    if not (dest / ".git").exists():
        git("init", "-q")
    git("add", "-A")
    env_identity = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]
    has_identity = bool(git("config", "user.email", check=False))
    args = ([] if has_identity else env_identity) + [
        "commit",
        "-q",
        "-m",
        f"autoresearch template {name}",
    ]
    done = subprocess.run(["git", *args], cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{dest}: could not commit the template: {done.stderr.strip()}")
    return written
