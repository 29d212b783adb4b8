"""Task templates: files copied by ``autoresearch init [--template NAME]``.

A template is a folder of package data under ``autoresearch/templates/<name>/``.
Files under ``<name>/_presets/<size>/`` overlay the base files for ``--size <size>``.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from autoresearch.errors import ConfigError

PRESETS_DIR = "_presets"


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


def write_template(name: str, dest: Path, *, size: str | None = None, overwrite: bool = False) -> list[Path]:
    """Copy template ``name`` (with its ``size`` preset) into ``dest``; return the files written."""
    folder = _folder(name)
    sizes = presets(name)
    if size is None:
        size = default_size(name)
    elif size not in sizes:
        allowed = ", ".join(sizes) or "none (this template has no sizes)"
        raise ConfigError(f"template {name!r}: unknown size {size!r}; allowed: {allowed}")
    files = dict(_walk(folder, skip_presets=True))
    if size is not None:
        files.update(_walk(folder / PRESETS_DIR / size, skip_presets=False))
    written = []
    for rel, source in sorted(files.items()):
        target = dest / rel
        if target.exists() and not overwrite:
            raise ConfigError(f"{target}: already exists; not overwriting")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        written.append(target)
    return written


def _folder(name: str) -> Traversable:
    folder = resources.files("autoresearch.templates") / name
    if not folder.is_dir() or name.startswith("_"):
        raise ConfigError(f"unknown template {name!r}; available: {', '.join(available()) or 'none'}")
    return folder


def _walk(folder: Traversable, *, skip_presets: bool, prefix: str = "") -> list[tuple[str, Traversable]]:
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
