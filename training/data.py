"""Atomic, resumable parquet shards for the datasets the training scripts build (corpus, quadruples).

Layout of a dataset folder (`datasets.load_dataset("parquet", data_files="DIR/data/*.parquet")` reads it, and so
does `load_shards(DIR)`):

    DIR/build.json                                      the settings that define the content (the manifest)
    DIR/README.md                                       the dataset card, written once every shard exists
    DIR/data/shard-000000000-000000255.parquet          items 0..255 (first and last global item index)
    DIR/data/shard-000000256-000000511.parquet          ...

A builder enumerates *items* 0..total-1. Each item's content depends only on its global index (and the manifest),
never on which process made it or when. Item i lives in shard i // shard_size; process k of K makes only the shards
s with s % K == k, so a K-process build merges to exactly the 1-process result. An item may be skipped (a broken
user file): the shard then holds fewer rows and lists the skipped indices and reasons in its parquet metadata.

Atomicity: a shard is generated completely in memory, written to `data/.tmp-shard-...partial` in the same folder,
fsynced and `os.replace`d to its final name. A shard is complete iff its final file exists, so a killed build
leaves complete shards and at most a stray temp file, which the next run of the owning process deletes. The
reader still validates every shard (name, row count, the `index` column) and says which file is bad.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from dd3g.files import replacing, write_atomically

DATA_DIR = "data"
MANIFEST_NAME = "build.json"
CARD_NAME = "README.md"
SHARD_PATTERN = re.compile(r"^shard-(\d{9})-(\d{9})\.parquet$")
TEMP_PATTERN = re.compile(r"^\.tmp-shard-(\d{9})-(\d{9})\.parquet\.[0-9]+\.partial$")
SHARD_METADATA_KEY = b"dd3g_shard"
MAX_REASON_CHARS = 300

PathLike = Union[str, os.PathLike]


class ShardError(ValueError):
    """A shard file that is not what its name and metadata promise (the message names the file)."""


class ManifestMismatch(ValueError):
    """A rerun with settings that would change the content of an existing partial build."""


# ---------------------------------------------------------------------------------------------- images
def rgba_to_png(rgba: torch.Tensor) -> bytes:
    """RGBA [4, H, W] float in [0, 1] (straight alpha) -> PNG bytes, uint8 by rounding to nearest."""
    if rgba.dim() != 3 or rgba.shape[0] != 4:
        raise ValueError(f"expected RGBA [4, H, W], got {tuple(rgba.shape)}")
    u8 = rgba.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)  # [4, H, W]
    return uint8_to_png(u8.permute(1, 2, 0).numpy())


def uint8_to_png(rgba: np.ndarray) -> bytes:
    """[H, W, 4] uint8 -> PNG bytes (deterministic for a given Pillow/zlib)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_rgba(data: bytes) -> torch.Tensor:
    """PNG (or any Pillow image) bytes -> RGBA [4, H, W] float32 in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGBA"))  # [H, W, 4] uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def image_bytes(value) -> bytes:
    """The encoded bytes of a stored `datasets.Image` value (undecoded dict or raw bytes)."""
    if isinstance(value, dict):
        return value["bytes"]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected stored image bytes, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------- layout
def data_dir(folder: PathLike) -> Path:
    return Path(folder) / DATA_DIR


def shard_name(items: range) -> str:
    return f"shard-{items.start:09d}-{items.stop - 1:09d}.parquet"


def shard_ranges(total: int, shard_size: int) -> List[range]:
    """The item ranges of all shards: [0, s), [s, 2s), ..., the last one possibly shorter."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [range(first, min(first + shard_size, total)) for first in range(0, total, shard_size)]


def assigned_shards(total: int, shard_size: int, process_index: int = 0, num_processes: int = 1) -> List[range]:
    """The shards process k of K makes: shard number s with s % K == k."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process index {process_index} is not in [0, {num_processes})")
    return [r for s, r in enumerate(shard_ranges(total, shard_size)) if s % num_processes == process_index]


def _parse(name: str, pattern: re.Pattern) -> Optional[range]:
    match = pattern.match(name)
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return range(first, last + 1) if last >= first else None


def completed_rows(folder: PathLike) -> List[range]:
    """The item ranges covered by complete shards (final files), sorted; temp files are ignored."""
    folder = data_dir(folder)
    if not folder.is_dir():
        return []
    found = [r for r in (_parse(p.name, SHARD_PATTERN) for p in folder.iterdir()) if r is not None]
    return sorted(found, key=lambda r: r.start)


def clean_temp_files(folder: PathLike, owned: Optional[Callable[[range], bool]] = None) -> int:
    """Delete temp files left by a killed run (only those of shards `owned` says this process makes)."""
    folder = data_dir(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        items = _parse(path.name, TEMP_PATTERN)
        if items is not None and (owned is None or owned(items)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class Skipped:
    """What a generator returns for an item that yields no row (e.g. a broken user file)."""

    reason: str


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write to a temp file beside `path`, fsync, then rename over it (and fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, [data], durable=True)
    return path


def write_shard(
    folder: PathLike,
    items: range,
    rows: Sequence[dict],
    features,  # datasets.Features; every row has an int `index` in `items`
    skipped: Optional[Dict[int, str]] = None,
) -> Path:
    """Write one complete shard atomically (temp file in data/, fsync, os.replace). Returns the final path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    skipped = {int(k): str(v)[:MAX_REASON_CHARS] for k, v in (skipped or {}).items()}
    indices = [int(r["index"]) for r in rows]
    if indices != sorted(set(indices)) or any(i not in items for i in indices):
        raise ValueError(f"rows of shard {shard_name(items)} must have increasing, unique indices inside {items}")
    if set(indices) & set(skipped) or len(indices) + len(skipped) != len(items):
        raise ValueError(f"shard {shard_name(items)}: {len(indices)} rows + {len(skipped)} skipped != {len(items)} items")
    table = pa.Table.from_pylist([features.encode_example(r) for r in rows], schema=features.arrow_schema)
    info = {"first": items.start, "last": items.stop - 1, "num_rows": len(rows), "skipped": {str(k): v for k, v in sorted(skipped.items())}}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_METADATA_KEY: json.dumps(info).encode()})
    folder = data_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / shard_name(items)
    # The temporary's name is TEMP_PATTERN's: a killed build's leftover is found and removed by the next run.
    with replacing(final, durable=True, temp=folder / f".tmp-{final.name}.{os.getpid()}.partial") as tmp:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")  # PNG bytes barely compress; zstd is cheap for the rest
    return final


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardInfo:
    path: Path
    items: range  # the global item indices this shard covers
    num_rows: int
    skipped: Dict[int, str] = field(default_factory=dict)


def read_shard_info(path: PathLike) -> ShardInfo:
    """Parse and check one shard's name and parquet footer (no row data is read)."""
    import pyarrow.parquet as pq

    path = Path(path)
    items = _parse(path.name, SHARD_PATTERN)
    if items is None:
        raise ShardError(f"{path}: not a shard file name (expected shard-FIRST-LAST.parquet)")
    hint = "delete it and rerun the build to remake that shard"
    try:
        meta = pq.read_metadata(path)
        info = json.loads(meta.schema.to_arrow_schema().metadata[SHARD_METADATA_KEY])
    except Exception as exc:  # noqa: BLE001 - any unreadable footer is a bad shard
        raise ShardError(f"{path}: unreadable shard ({type(exc).__name__}: {exc}); {hint}") from exc
    skipped = {int(k): v for k, v in info.get("skipped", {}).items()}
    if (info.get("first"), info.get("last")) != (items.start, items.stop - 1):
        raise ShardError(f"{path}: its metadata says items {info.get('first')}..{info.get('last')}, its name {items.start}..{items.stop - 1}; {hint}")
    if meta.num_rows != info.get("num_rows") or meta.num_rows + len(skipped) != len(items):
        raise ShardError(f"{path}: {meta.num_rows} rows + {len(skipped)} skipped items, expected {len(items)} items; {hint}")
    return ShardInfo(path, items, meta.num_rows, skipped)


def read_manifest(folder: PathLike) -> Optional[dict]:
    path = Path(folder) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def validate_shards(folder: PathLike, require_complete: bool = True) -> List[ShardInfo]:
    """Every shard's footer checked, no overlaps; with `require_complete`, all shards the manifest plans exist."""
    infos = [read_shard_info(data_dir(folder) / shard_name(r)) for r in completed_rows(folder)]
    for a, b in zip(infos, infos[1:]):
        if b.items.start < a.items.stop:
            raise ShardError(f"shards overlap: {a.path.name} and {b.path.name} (a build with another --shard-size?)")
    if require_complete:
        manifest = read_manifest(folder)
        if manifest is None:
            if not infos:
                raise FileNotFoundError(f"{folder}: no dataset here (no {MANIFEST_NAME}, no {DATA_DIR}/shard-*.parquet)")
        else:
            planned = shard_ranges(int(manifest["total"]), int(manifest["shard_size"]))
            have = {(i.items.start, i.items.stop) for i in infos}
            missing = [r for r in planned if (r.start, r.stop) not in have]
            if missing or len(infos) != len(planned):
                raise ShardError(
                    f"{folder}: the build is incomplete ({len(planned) - len(missing)} of {len(planned)} shards); "
                    "rerun the same build command to finish it"
                )
    return infos


def _read_table(info: ShardInfo, columns=None):
    import pyarrow.parquet as pq

    table = pq.read_table(info.path, columns=columns)
    if "index" in table.column_names:
        index = table.column("index").to_pylist()
        expected = sorted(set(info.items) - set(info.skipped))
        if index != expected:
            raise ShardError(f"{info.path}: its `index` column does not list items {info.items.start}..{info.items.stop - 1} in order")
    return table


def load_shards(folder: PathLike, decode: bool = True, keep_in_memory: Optional[bool] = None, require_complete: bool = True):
    """The dataset in `folder` as one `datasets.Dataset`, rows sorted by global index, every shard validated.

    decode=False keeps images as {"bytes", "path"} dicts (the stored PNG bytes). keep_in_memory: read the
    parquet files straight into memory (default when they total under 2 GiB); otherwise go through
    `datasets.load_dataset("parquet")`, which memory-maps a cached Arrow copy.
    """
    import datasets
    import pyarrow as pa

    infos = validate_shards(folder, require_complete)
    if not infos:
        raise FileNotFoundError(f"{folder}: no complete shards")
    if keep_in_memory is None:
        keep_in_memory = sum(i.path.stat().st_size for i in infos) < 2 * 2**30
    if keep_in_memory:
        table = pa.concat_tables([_read_table(i) for i in infos])
        ds = datasets.Dataset(table)
    else:
        for info in infos:
            _read_table(info, columns=["index"])
        ds = datasets.load_dataset("parquet", data_files=[str(i.path) for i in infos], split="train")
    if not decode:
        for name, feature in ds.features.items():
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
            elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image):
                ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return ds


class ShardReader:
    """Positional access to the rows of a complete dataset folder, one shard in memory at a time (raw values)."""

    def __init__(self, folder: PathLike, columns: Optional[Sequence[str]] = None):
        self.folder = Path(folder)
        self.columns = list(columns) if columns is not None else None
        self.infos = validate_shards(folder, require_complete=True)
        self.starts = np.cumsum([0] + [i.num_rows for i in self.infos])
        self._cached: Optional[tuple] = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, k: int) -> List[dict]:
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, _read_table(self.infos[k], self.columns).to_pylist())
        return self._cached[1]

    def row(self, position: int) -> dict:
        if not 0 <= position < len(self):
            raise IndexError(f"row {position} out of range [0, {len(self)})")
        k = int(np.searchsorted(self.starts, position, side="right")) - 1
        return self._shard(k)[position - int(self.starts[k])]

    def fingerprint(self) -> str:
        """A hash of the shard names, sizes and footers: shards are immutable, so this identifies the data."""
        digest = hashlib.sha256()
        for info in self.infos:
            digest.update(f"{info.path.name}:{info.path.stat().st_size}:{info.num_rows}\n".encode())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- building
def check_manifest(folder: PathLike, manifest: dict) -> dict:
    """Write the manifest of a new build, or check that a rerun asks for the same content."""
    manifest = json.loads(json.dumps(manifest))  # normalise (tuples -> lists)
    existing = read_manifest(folder)
    if existing is not None:
        differing = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
        if differing:
            detail = "; ".join(f"{k}: {existing.get(k)!r} there, {manifest.get(k)!r} now" for k in differing)
            raise ManifestMismatch(
                f"{folder} holds a build with other settings ({detail}); rerun with the same settings to resume it, "
                "or choose a new output folder"
            )
        return existing
    write_bytes_atomic(Path(folder) / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


@dataclass
class BuildReport:
    written_rows: int = 0  # rows written by this run
    written_shards: int = 0
    processed_items: int = 0  # items generated by this run (rows + skipped, incl. a discarded partial shard)
    skipped: Dict[int, str] = field(default_factory=dict)  # skipped by this run
    stopped_early: bool = False  # --stop-after fired before this process's shards were done
    complete: bool = False  # every shard of the whole build exists (all processes)


def build_shards(
    folder: PathLike,
    total: int,
    shard_size: int,
    features,
    generate: Callable[[List[int]], List[Union[dict, Skipped]]],
    batch_size: int = 1,
    process_index: int = 0,
    num_processes: int = 1,
    stop_after: Optional[int] = None,
    progress: bool = True,
    desc: str = "rows",
    deadline: Optional[float] = None,
) -> BuildReport:
    """Make this process's missing shards. `generate(indices)` returns a row (with `index`) or `Skipped` per index.

    Batches are aligned to the shard start, so the batch an item is generated in (which can matter for float
    rounding in batched networks) does not depend on the number of processes or on resuming.
    stop_after: stop once this run has generated that many items; an unfinished shard is dropped, as a kill would.
    deadline: a time.time() value; no shard is started that the last shard's duration says would end after it,
    so a time-boxed run (a GPU call) ends at a shard boundary with nothing lost, and a rerun goes on.
    """
    import time

    from tqdm.auto import tqdm

    mine = assigned_shards(total, shard_size, process_index, num_processes)
    owned = {(r.start, r.stop) for r in mine}
    clean_temp_files(folder, owned=lambda r: (r.start, r.stop) in owned)
    done = {(r.start, r.stop) for r in completed_rows(folder)}
    todo = [r for r in mine if (r.start, r.stop) not in done]
    report = BuildReport()
    bar = tqdm(total=sum(len(r) for r in mine), initial=sum(len(r) for r in mine) - sum(len(r) for r in todo),
               desc=desc, disable=not progress, file=sys.stderr)
    try:
        shard_seconds = 0.0
        for items in todo:
            if deadline is not None and time.time() + shard_seconds > deadline:
                report.stopped_early = True
                return report
            shard_start = time.time()
            rows, skipped = [], {}
            for start in range(items.start, items.stop, batch_size):
                batch = list(range(start, min(start + batch_size, items.stop)))
                results = generate(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"generator returned {len(results)} results for {len(batch)} items")
                for index, result in zip(batch, results):
                    if isinstance(result, Skipped):
                        skipped[index] = result.reason
                    else:
                        rows.append({**result, "index": index})
                report.processed_items += len(batch)
                bar.update(len(batch))
                if stop_after is not None and report.processed_items >= stop_after and batch[-1] != items.stop - 1:
                    report.stopped_early = True
                    return report
            write_shard(folder, items, rows, features, skipped)
            shard_seconds = time.time() - shard_start
            report.written_rows += len(rows)
            report.written_shards += 1
            report.skipped.update(skipped)
            if stop_after is not None and report.processed_items >= stop_after and items is not todo[-1]:
                report.stopped_early = True
                return report
    finally:
        bar.close()
        planned = {(r.start, r.stop) for r in shard_ranges(total, shard_size)}
        report.complete = planned <= {(r.start, r.stop) for r in completed_rows(folder)}
    return report


# ---------------------------------------------------------------------------------------------- cards and the Hub
def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def write_card(folder: PathLike, front_matter: dict, body: str) -> Path:
    """README.md with a YAML header (the Hub reads license, task, size and data files from it)."""
    import yaml

    header = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True).strip()
    return write_bytes_atomic(Path(folder) / CARD_NAME, f"---\n{header}\n---\n\n{body.strip()}\n".encode())


def card_configs() -> list:
    return [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/shard-*.parquet"}]}]


def push_to_hub(folder: PathLike, repo_id: str, private: bool = False, api=None) -> str:
    """Upload the card, manifest and shards as a dataset repo. The token comes from the environment or the login
    cache (never printed); without one, or offline, this stops with a clear message."""
    import huggingface_hub

    if api is None:
        if huggingface_hub.get_token() is None:
            raise SystemExit(
                f"--push-to-hub {repo_id}: no Hugging Face token found; run `hf auth login` or set HF_TOKEN, then rerun "
                "(the dataset is complete on disk; the rerun only uploads)"
            )
        api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
            allow_patterns=[CARD_NAME, MANIFEST_NAME, f"{DATA_DIR}/shard-*.parquet"],
            commit_message="Upload dataset built with DD3G",
        )
    except Exception as exc:  # noqa: BLE001 - offline, auth, permissions: all end the same way
        raise SystemExit(
            f"--push-to-hub {repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the network, the token's write access and the repo name, then rerun (shards on disk are kept)"
        ) from exc
    return f"https://huggingface.co/datasets/{repo_id}"


def file_sha256(paths: Iterable[Path], root: Optional[Path] = None) -> str:
    """One hash over several files' relative names and contents (e.g. a teacher folder's weights)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        name = path.relative_to(root).as_posix() if root else path.name
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def finalize(out: PathLike, make_card: Callable, repo_id: Optional[str] = None, private: bool = False) -> Optional[str]:
    """Once every shard of a build exists: write its card (``make_card(infos) -> (front matter, body)``), then push
    to the Hub repo ``repo_id`` if one is given. Returns the Hub URL when pushed."""
    infos = validate_shards(out, require_complete=True)
    front, body = make_card(infos)
    write_card(out, front, body)
    return push_to_hub(out, repo_id, private=private) if repo_id else None
