"""Hashes of the protected files and data: what must hold byte for byte, and what changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def sha256_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file under ``root`` ('' for a missing one or one that is not a regular file).

    A symlink is hashed as its target's name, never followed, and files are read in chunks:
    a run that swaps a protected file for a link to /dev/zero or a FIFO cannot hang us.
    """
    out = {}
    for rel in paths:
        target = root / rel
        if target.is_symlink():
            out[rel] = "link " + os.readlink(target)
        elif target.is_file():
            with target.open("rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
        else:
            out[rel] = ""
    return out


def changed(root: Path, expected: Mapping[str, str]) -> list[str]:
    """The paths under ``root`` whose sha256 is no longer the expected one."""
    now = sha256_files(root, expected)
    return sorted(p for p, digest in expected.items() if now[p] != digest)


__all__ = ["changed", "sha256_files"]
