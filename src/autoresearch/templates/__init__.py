"""Task templates: files copied by ``autoresearch init --template NAME`` (see ``autoresearch.init``).

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
    existing = [dest / rel for rel in sorted(files) if (dest / rel).exists()]
    if existing and not overwrite:  # checked before anything is written: all or nothing
        names = ", ".join(str(p) for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise ConfigError(f"not overwriting {names}: already there (pass --force to replace)")
    written = []
    for rel, data in sorted(files.items()):
        target = dest / rel
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
