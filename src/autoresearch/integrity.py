"""Hashes of the protected files and data: what must hold byte for byte, and what changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

# Files larger than this are compared by size, unread: a run could turn a protected file into
# a sparse one of terabytes, which would take hours to hash (and a file this big is data that
# the sandbox keeps read-only, not code in a worktree).
HASH_LIMIT = 4 << 30


def sha256_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file under ``root`` ('' for a missing one or one that is not a regular file).

    A symlink is hashed as its target's name, never followed, and files are read in chunks:
    a run that swaps a protected file for a link to /dev/zero or a FIFO cannot hang us. A file
    over ``HASH_LIMIT`` bytes gets ``size N`` instead of its sha256.
    """
    out = {}
    for rel in paths:
        target = root / rel
        if target.is_symlink():
            out[rel] = "link " + os.readlink(target)
        elif not target.is_file():
            out[rel] = ""
        elif (size := target.stat().st_size) > HASH_LIMIT:
            out[rel] = f"size {size}"
        else:
            with target.open("rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def changed(root: Path, expected: Mapping[str, str]) -> list[str]:
    """The paths under ``root`` whose sha256 is no longer the expected one."""
    now = sha256_files(root, expected)
    return sorted(p for p, digest in expected.items() if now[p] != digest)


__all__ = ["HASH_LIMIT", "changed", "sha256_files"]
