"""Writing files so that a reader never sees half of one: write a temporary file beside the target, then rename.

The product's outputs (PLY, .splat, GLB, MP4) and the corpus and quadruple builds' shards, manifests and cards go
through `replacing`: a crash or a kill leaves either the old file or the new one, plus at most a hidden temporary
that the next run (or `python -m dd3g`'s clean-up) removes. (Training checkpoints are accelerate's folders, staged
and renamed whole by training/common.py.)
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def create_temp_beside(path: PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    """A new, hidden file next to ``path`` -> (fd, its path), created with mode 0666 less the umask.

    Like ``tempfile.mkstemp`` (a random name, O_EXCL), but mkstemp makes 0600 files, and the rename would
    give the output that mode whatever the umask.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        temp = os.path.join(folder, f".{os.path.basename(path)}.{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def fsync_folder(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: PathLike, suffix: str = ".tmp", durable: bool = False, temp: Optional[PathLike] = None) -> Iterator[str]:
    """Yields a temporary path beside ``path`` for the caller to write; on success it is renamed over ``path``.

    On any error (or KeyboardInterrupt) the temporary is removed and the error goes on; ``path`` is untouched.
    ``suffix`` ends the temporary's name (e.g. ".tmp.mp4" where a writer picks its format by the name);
    ``temp`` names it instead (a writer whose leftovers are found by a pattern of their own). ``durable``
    fsyncs the file before the rename and the folder after it (for data a killed run resumes from).
    """
    path = os.fspath(path)
    if temp is None:
        fd, temp = create_temp_beside(path, suffix)
        os.close(fd)
    temp = os.fspath(temp)
    try:
        yield temp
        if durable:
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    if durable:
        fsync_folder(os.path.dirname(os.path.abspath(path)))


def write_atomically(path: PathLike, chunks: Iterable[bytes], durable: bool = False) -> None:
    """Write ``chunks`` to ``path`` through `replacing`."""
    with replacing(path, durable=durable) as temp:
        with open(temp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
