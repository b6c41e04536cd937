"""Checking shipped weight files against the sha256 their conversion script recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: Optional[str], remedy: str) -> None:
    """Raise a ValueError naming the file and the remedy when its sha256 is not `expected` (None skips)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
            f"corrupt or from another conversion; to recreate it, {remedy}."
        )
