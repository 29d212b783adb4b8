"""Hashes of the protected files and data: what must hold byte for byte, and what changed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path


def sha256_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file under ``root`` ('' for a missing one)."""
    out = {}
    for rel in paths:
        target = root / rel
        out[rel] = hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else ""
    return out


def changed(root: Path, expected: Mapping[str, str]) -> list[str]:
    """The paths under ``root`` whose sha256 is no longer the expected one."""
    now = sha256_files(root, expected)
    return sorted(p for p, digest in expected.items() if now[p] != digest)


__all__ = ["changed", "sha256_files"]
