"""Open, validate and prepare a user image for DD3G.

Every user-facing entry (pipeline, CLI, app) goes through :func:`preprocess`, so bad input is met
here with an :class:`ImageInputError` whose message says what is wrong and what to do, and the
caller keeps serving. The output follows the project convention: float RGBA in [0, 1], straight
(not premultiplied) alpha, object centred with its alpha box filling ``foreground_ratio`` of the
side; composites go on white unless a call says otherwise.

Background removal uses rembg's small ``u2netp`` model, imported lazily (importing rembg is slow
and plain ``rembg`` without onnxruntime exits the interpreter). The model never downloads at run
time: ``python scripts/fetch_u2netp.py`` puts it in ``$U2NET_HOME`` once.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "ImageInputError",
    "BackgroundRemovalError",
    "PreprocessConfig",
    "PreprocessedImage",
    "load_image",
    "has_transparency",
    "remove_background",
    "preprocess",
    "composite_on",
    "u2netp_model_path",
    "LIBRARY_MAX_PIXELS",
    "SERVER_MAX_PIXELS",
    "WORKING_SIDE",
]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

U2NETP_FILENAME = "u2netp.onnx"
# The md5 rembg 2.0.86 checks for u2netp.onnx (rembg/sessions/u2netp.py); scripts/fetch_u2netp.py
# verifies the same value (plus sha256) when it installs the file.
U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"
# rembg mask values below this (or above 1 - this) are noise, not coverage (see remove_background).
MASK_FLOOR = 8.0 / 255.0
FETCH_HINT = "run `python scripts/fetch_u2netp.py` once to install it"

# Pixel limits, checked from the header before anything is decoded. Pillow holds at most 4 bytes a pixel
# (RGB is stored as RGBX; 16-bit gray as 2 bytes), so a request decodes at most 4 x max_pixels bytes
# (160 MB for the library's limit); everything after that works on a copy of at most WORKING_SIDE squared.
LIBRARY_MAX_PIXELS = 40_000_000
# For servers that preprocess several uploads at once (the app): 64 MB decoded at most per request.
SERVER_MAX_PIXELS = 16_000_000
# Longest side of the working copy: larger images are reduced while they load (JPEG by its decoder). The
# object's box then still spans WORKING_SIDE x (its share of the image) pixels, far more than the model's
# input needs unless the object is a speck in a huge photo.
WORKING_SIDE = 2048
# Rows converted at a time while building the working copy (a 6300-px row band of RGBA is 13 MB).
BAND_ROWS = 512


class ImageInputError(ValueError):
    """The user's image cannot be used; the message says why and, where it helps, what to do."""


class BackgroundRemovalError(RuntimeError):
    """Background removal is unavailable here (model file or rembg missing) or failed."""


@dataclass
class PreprocessConfig:
    size: int = 256  # output side S in pixels
    foreground_ratio: float = 0.85  # longest side of the alpha box / S
    max_pixels: int = LIBRARY_MAX_PIXELS  # decompression-bomb limit, checked from the header before decoding
    working_side: int = WORKING_SIDE  # larger images are reduced to this longest side while loading
    min_side: int = 8  # smaller images carry no usable object
    max_file_bytes: int = 50 * 1024 * 1024
    alpha_threshold: float = 0.5 / 255  # alpha above this belongs to the object's box
    min_foreground_pixels: float = 16.0  # less total alpha (in pixels) than this counts as empty
    remove_background: str = "auto"  # "auto" (only without useful transparency) | "always" | "never"
    detail_size: int = 0  # also keep the same framing at this side (e.g. for the photo surface); 0: not kept

    def __post_init__(self) -> None:
        # Programmer errors, not user input: plain ValueError.
        if self.remove_background not in ("auto", "always", "never"):
            raise ValueError(
                f"remove_background must be 'auto', 'always' or 'never', got {self.remove_background!r}"
            )
        if int(self.size) < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 0.0 < float(self.foreground_ratio) <= 1.0:
            raise ValueError(f"foreground_ratio must be in (0, 1], got {self.foreground_ratio}")
        if not 0.0 <= float(self.alpha_threshold) < 1.0:
            raise ValueError(f"alpha_threshold must be in [0, 1), got {self.alpha_threshold}")
        if self.max_pixels < 1 or self.min_side < 1 or self.max_file_bytes < 1:
            raise ValueError("max_pixels, min_side and max_file_bytes must be positive")
        if int(self.detail_size) < 0:
            raise ValueError(f"detail_size must be >= 0 (0: none), got {self.detail_size}")
        if int(self.working_side) < max(int(self.size), int(self.detail_size)):
            raise ValueError(f"working_side must be >= size and detail_size ({self.size}, {self.detail_size}), got {self.working_side}")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource, config: PreprocessConfig | None = None, max_side: int | None = None
) -> Image.Image:
    """Open and validate ``source`` and return it as a fully decoded RGBA PIL image.

    ``source``: a path (str / PathLike), encoded bytes, a binary file object, a PIL image, or a
    numpy array (HxW, HxWx1..4; uint8, uint16, bool, or float in [0, 1]). EXIF orientation is
    applied; animated images give their first frame. ``max_side``: an image whose longer side is
    larger is reduced by a whole factor (a premultiplied box filter) while it loads, to at most
    ``max_side``; JPEGs then decode at 1/2, 1/4 or 1/8 size directly. Raises :class:`ImageInputError`.
    """
    return _load(source, config or PreprocessConfig(), max_side)[0]


def _load(source: ImageSource, cfg: PreprocessConfig, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGBA image, (width, height) of the full-size image after EXIF orientation)."""
    if isinstance(source, np.ndarray):
        return _from_array(source, cfg, max_side)
    if isinstance(source, torch.Tensor):
        raise ImageInputError(
            "got a torch.Tensor; pass a PIL image, a numpy HxWxC array, encoded bytes or a path"
        )
    if isinstance(source, Image.Image):
        return _decode(source, cfg, "the image", max_side, opened_here=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_file_bytes(len(data), cfg, "the image data")
        return _open_bytes(data, cfg, "the image data", max_side)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), cfg, max_side)
    if hasattr(source, "read"):
        # Read at most one byte past the limit so a huge stream is refused without reading it all.
        data = source.read(cfg.max_file_bytes + 1)
        if isinstance(data, str):
            raise ImageInputError("the file object is open in text mode; open it with 'rb'")
        name = getattr(source, "name", None)
        name = f"'{name}'" if isinstance(name, str) else "the file object"
        _check_file_bytes(len(data), cfg, name, exact=False)  # read stopped one byte past the limit
        return _open_bytes(bytes(data), cfg, name, max_side)
    raise ImageInputError(
        f"unsupported image source of type {type(source).__name__}; pass a path, bytes, a binary "
        "file object, a PIL image or a numpy array"
    )


def _open_path(path: Path, cfg: PreprocessConfig, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    if not path.exists():
        raise ImageInputError(f"image file not found: '{path}'")
    if path.is_dir():
        raise ImageInputError(f"'{path}' is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageInputError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    _check_file_bytes(size, cfg, f"'{path}'")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    return _open_bytes(data, cfg, f"'{path}'", max_side)


def _check_file_bytes(n: int, cfg: PreprocessConfig, name: str, exact: bool = True) -> None:
    if n == 0:
        raise ImageInputError(f"{name} is empty (0 bytes), not an image")
    if n > cfg.max_file_bytes:
        size = _human_bytes(n) if exact else f"more than {_human_bytes(cfg.max_file_bytes)}"
        raise ImageInputError(
            f"{name} is too large: {size} exceeds the {_human_bytes(cfg.max_file_bytes)} file-size "
            "limit; save a smaller or more compressed image"
        )


def _human_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


def _open_bytes(data: bytes, cfg: PreprocessConfig, name: str, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS) fired inside open(), before ours.
        m = _BOMB_PIXELS_RE.search(str(exc))
        claimed = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageInputError(_too_many_pixels_message(name, claimed, cfg)) from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"{name} is not an image Pillow can read: it looks like {_describe_bytes(data)}. "
            "Use a PNG, JPEG or WebP image"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any plugin error on a bad header is bad input
        raise ImageInputError(
            f"{name} has a corrupt image header ({type(exc).__name__}: {exc}); re-save or re-export it"
        ) from exc
    with img:
        # Conversion happens inside the block: closing a Pillow image frees its pixel data.
        return _decode(img, cfg, name, max_side, opened_here=True)


def _too_many_pixels_message(name: str, claimed: str, cfg: PreprocessConfig) -> str:
    return (
        f"{name} is too large: {claimed} exceeds the limit of {cfg.max_pixels:,} pixels "
        "(decompression-bomb protection); downscale it before uploading"
    )


# EXIF orientation tag value -> the transpose that shows the picture upright (the EXIF specification's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the user the image
        return 1


def _decode(
    img: Image.Image, cfg: PreprocessConfig, name: str, max_side: int | None, opened_here: bool
) -> tuple[Image.Image, tuple[int, int]]:
    """Validate size from the header, decode (reduced past ``max_side``), orient upright, make RGBA."""
    w, h = img.size
    if w * h > cfg.max_pixels:
        # Checked before load(): the header alone tells the size, so nothing is decompressed.
        raise ImageInputError(_too_many_pixels_message(name, f"{w}x{h} = {w * h:,} pixels", cfg))
    if min(w, h) < cfg.min_side:
        raise ImageInputError(
            f"{name} is too small: {w}x{h} pixels; each side must be at least {cfg.min_side} pixels"
        )
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP/APNG/multi-page TIFF: use the first frame
    if opened_here and max_side and max(w, h) > max_side:
        # JPEG decodes straight at 1/2, 1/4 or 1/8 size (other formats ignore this). Only on images
        # opened here: draft changes the image object, which a caller's own image must not see.
        shrink = max(w, h) / max_side
        img.draft(None, (max(1, math.floor(w / shrink)), max(1, math.floor(h / shrink))))
    try:
        img.load()  # the full decode, so truncated or corrupt data fails here, not later
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ...
        fmt = f"{img.format} " if img.format else ""
        raise ImageInputError(
            f"{name}: {fmt}image data is truncated or corrupt ({exc}); the file was probably cut "
            "short by an incomplete download or upload: re-save or re-upload it"
        ) from exc
    factor = math.ceil(max(img.size) / max_side) if max_side else 1
    rgba = _to_rgba(img, name, factor)
    orientation = _exif_orientation(img)
    if orientation in _UPRIGHT:
        rgba = rgba.transpose(_UPRIGHT[orientation])
    return rgba, ((h, w) if orientation in _SWAPS_SIDES else (w, h))


def _to_rgba(img: Image.Image, name: str, factor: int = 1) -> Image.Image:
    """The decoded image as 8-bit RGBA, box-reduced by ``factor``.

    Built one band of rows at a time, so nothing full-size exists besides the decoded image itself
    (a 16-bit or float image never becomes a full-size float array). Bands hold whole reduction
    boxes, so the result equals reducing the whole image at once.
    """
    convert = _band_to_rgba(img, name)
    w, h = img.size
    out = Image.new("RGBA", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = factor * max(1, BAND_ROWS // factor)
    for top in range(0, h, rows):
        band = convert(img.crop((0, top, w, min(h, top + rows))))
        # Pillow reduces RGBA premultiplied, so transparent pixels' colours do not bleed into the edge.
        out.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return out


def _band_to_rgba(img: Image.Image, name: str) -> Callable[[Image.Image], Image.Image]:
    """A function turning a band (a crop keeps the mode, palette and info) of ``img`` into RGBA."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # High-bit-depth grayscale. Pillow's convert("L") clips values above 255 (a 16-bit PNG turns
        # almost white), so scale by the value range of the whole image instead.
        to_gray = _high_depth_to_uint8(img, name)
        key = img.info.get("transparency")  # PNG tRNS colour key on raw values
        has_key = isinstance(key, (int, float)) and not isinstance(key, bool)

        def convert(band: Image.Image) -> Image.Image:
            values = np.asarray(band)  # [rows, W] uint16 / int32 / float32
            gray = to_gray(values)  # [rows, W] uint8
            alpha = np.where(values != key, 255, 0).astype(np.uint8) if has_key else np.full_like(gray, 255)
            return Image.fromarray(np.stack([gray, gray, gray, alpha], axis=-1))  # [rows, W, 4]

        return convert
    if mode == "CMYK":
        return _cmyk_to_rgba(img)
    return lambda band: _eight_bit_to_rgba(band, name)


def _eight_bit_to_rgba(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGBA":
        return img
    if mode == "La":
        img = img.convert("LA")  # premultiplied -> straight first; Pillow has no direct path
    try:
        # Handles 1, L, LA, P (+tRNS / PA), RGB (+tRNS colour key), RGBa, RGBX, YCbCr, HSV, LAB.
        return img.convert("RGBA")
    except Exception:  # noqa: BLE001
        try:
            return img.convert("RGB").convert("RGBA")
        except Exception as exc:  # noqa: BLE001
            raise ImageInputError(
                f"{name} uses colour mode {mode!r}, which cannot be converted to RGB; save it as "
                "an 8-bit RGB or RGBA PNG"
            ) from exc


def _high_depth_to_uint8(img: Image.Image, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The rounded map from ``img``'s raw values (a band of them) to 8 bits, fixed by the whole image."""
    mode = img.mode
    if mode.startswith("I;16"):
        return lambda values: ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    w, h = img.size
    lo, hi = math.inf, -math.inf
    for top in range(0, h, BAND_ROWS):
        values = np.asarray(img.crop((0, top, w, min(h, top + BAND_ROWS))))  # [rows, W] int32 / float32
        # min/max propagate NaN and reach +-inf, so they also find non-finite values without a mask.
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageInputError(f"{name} contains NaN or infinite pixel values")
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        offset, scale = 0.0, 255.0  # float data already in [0, 1]
    elif mode == "F" and lo >= 0.0 and hi <= 255.0:
        offset, scale = 0.0, 1.0  # Pillow's usual float range
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        offset, scale = 0.0, 255.0 / 65535.0  # 32-bit container holding 16-bit samples
    else:
        # Anything else (negative values, > 16 bit): stretch the used range to [0, 1].
        offset, scale = lo, (255.0 / (hi - lo) if hi > lo else 0.0)
    return lambda values: np.clip(np.rint((values.astype(np.float64) - offset) * scale), 0, 255).astype(np.uint8)


def _cmyk_to_rgba(img: Image.Image) -> Callable[[Image.Image], Image.Image]:
    icc = img.info.get("icc_profile")
    if icc:
        # The embedded profile is the only correct way to sRGB; a broken one falls back to Pillow's
        # own conversion, R = (1 - C)(1 - K) and so on.
        try:
            from PIL import ImageCms

            to_srgb = ImageCms.buildTransform(
                ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), "CMYK", "RGB"
            )
            return lambda band: ImageCms.applyTransform(band, to_srgb).convert("RGBA")
        except Exception:  # noqa: BLE001
            pass
    return lambda band: band.convert("RGBA")


def _rgba_from_float(arr: np.ndarray) -> Image.Image:
    """[H, W, 4] float in [0, 1] -> RGBA PIL image (rounded, not truncated)."""
    u8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(u8)


def _from_array(arr: np.ndarray, cfg: PreprocessConfig, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    name = "the array"
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        raise ImageInputError(
            f"{name} has shape {tuple(arr.shape)}, which looks channels-first; pass HxWxC "
            "(e.g. arr.transpose(1, 2, 0))"
        )
    if arr.ndim == 2:
        arr = arr[..., None]  # [H, W, 1]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageInputError(
            f"{name} has shape {tuple(arr.shape)}; expected HxW, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    h, w = arr.shape[:2]
    if h * w > cfg.max_pixels:
        raise ImageInputError(_too_many_pixels_message(name, f"{w}x{h} = {w * h:,} pixels", cfg))
    if min(h, w) < cfg.min_side:
        raise ImageInputError(
            f"{name} is too small: {w}x{h} pixels; each side must be at least {cfg.min_side} pixels"
        )
    # Everything is brought to uint8 straight away, a band of rows at a time: a 40 MP float copy would
    # cost ~1 GB.
    if arr.dtype == np.uint8:
        x = arr
    elif arr.dtype == np.uint16:
        x = _rows_to_uint8(arr, lambda rows: (rows.astype(np.uint32) * 255 + 32767) // 65535)  # rounded rescale
    elif arr.dtype == np.bool_:
        x = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        # min/max propagate NaN and reach +-inf: no full-size mask needed.
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageInputError(f"{name} contains NaN or infinite values")
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ImageInputError(
                f"float arrays must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                "divide 8-bit data by 255 (or pass it as uint8)"
            )
        x = _rows_to_uint8(arr, lambda rows: np.clip(np.rint(rows.astype(np.float32) * 255.0), 0, 255))
    else:
        raise ImageInputError(
            f"{name} has dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]"
        )
    c = x.shape[-1]  # x: [H, W, C] uint8
    opaque = np.full(x.shape[:2] + (1,), 255, dtype=np.uint8)  # [H, W, 1]
    if c == 1:
        x = np.concatenate([x, x, x, opaque], axis=-1)
    elif c == 2:  # gray + alpha
        x = np.concatenate([x[..., :1]] * 3 + [x[..., 1:]], axis=-1)
    elif c == 3:
        x = np.concatenate([x, opaque], axis=-1)
    img = Image.fromarray(np.ascontiguousarray(x))  # [H, W, 4]
    if max_side and max(w, h) > max_side:
        img = img.reduce(math.ceil(max(w, h) / max_side))  # premultiplied box filter, as for files
    return img, (w, h)


def _rows_to_uint8(arr: np.ndarray, to_uint8: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``to_uint8`` to [BAND_ROWS, W, C] slices of ``arr`` into one uint8 array: no full-size temporary."""
    out = np.empty(arr.shape, np.uint8)
    for top in range(0, arr.shape[0], BAND_ROWS):
        out[top : top + BAND_ROWS] = to_uint8(arr[top : top + BAND_ROWS])
    return out


def _describe_bytes(data: bytes) -> str:
    """Name what a non-image file most likely is, from its first bytes."""
    head = data[:512]
    low = head.lower().lstrip()
    if not data:
        return "an empty file"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (or a .docx/.npz/other zipped file)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy file (load it with numpy.load and pass the array)"
    if head.startswith(b"\x7fELF") or head.startswith(b"MZ"):
        return "an executable program"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC/HEIF photo, which this Pillow cannot decode (convert it to JPEG or PNG)"
        return "an MP4/MOV video or other ISO media file"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI "):
        return "a WAV/AVI media file"
    if head.startswith((b"ID3", b"OggS", b"fLaC")):
        return "an audio file"
    if b"<svg" in low:
        return "an SVG vector drawing (rasterise it to PNG first)"
    if low.startswith((b"<!doctype html", b"<html")):
        return "an HTML web page (a download that saved an error page?)"
    try:
        # Incremental decoder: a multi-byte character cut at byte 512 is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        kind = "JSON text" if text.lstrip()[:1] in ("{", "[") else "plain text"
        snippet = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"{kind} (starts with {snippet!r})"
    return f"unrecognised binary data (first bytes: {head[:8].hex(' ')})"


# ----------------------------------------------------------------------------------------------
# Transparency and background removal
# ----------------------------------------------------------------------------------------------


def has_transparency(img: Image.Image, min_fraction: float = 0.001) -> bool:
    """True if at least ``min_fraction`` of the pixels (and at least one) have alpha < 255.

    A stray non-opaque pixel or two (an editor artefact) does not count as a cut-out.
    """
    if img.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in img.info:
        return False
    alpha = np.asarray(img.convert("RGBA").getchannel("A"))  # [H, W] uint8
    n = int((alpha < 255).sum())
    return n >= max(1, math.ceil(min_fraction * alpha.size))


def u2netp_model_path() -> Path:
    """Where rembg looks for u2netp.onnx first: ``$U2NET_HOME`` (default ``~/.u2net``)."""
    # Same rule as rembg's legacy_home()/u2net_home(), and what scripts/fetch_u2netp.py writes.
    home = os.getenv("U2NET_HOME") or os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net")
    return Path(os.path.expanduser(home)) / U2NETP_FILENAME


_REMBG_LOCK = threading.Lock()  # the app serves concurrent requests; build the session once
_REMBG_SESSION: Any = None
_REMBG_REMOVE: Any = None


def _rembg_session() -> tuple[Any, Any]:
    """(rembg.remove, u2netp session), created on first use and cached for the process."""
    global _REMBG_SESSION, _REMBG_REMOVE
    with _REMBG_LOCK:
        if _REMBG_SESSION is not None:
            return _REMBG_REMOVE, _REMBG_SESSION
        # Check the model BEFORE rembg sees it: a missing file makes rembg download (offline:
        # ConnectionError), and a damaged one gives an opaque onnxruntime error.
        path = u2netp_model_path()
        if not path.is_file():
            raise BackgroundRemovalError(
                f"background removal needs rembg's u2netp model at '{path}', which is missing; "
                f"{FETCH_HINT} (or give an RGBA image whose background is already transparent)"
            )
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        if md5 != U2NETP_MD5:
            raise BackgroundRemovalError(
                f"'{path}' is damaged (md5 {md5}, expected {U2NETP_MD5}); delete it and {FETCH_HINT}"
            )
        try:
            import rembg  # lazy: slow import; exits the interpreter without onnxruntime
        except (ImportError, SystemExit) as exc:
            raise BackgroundRemovalError(
                "background removal needs rembg with onnxruntime: pip install 'rembg[cpu]'"
            ) from exc
        try:
            session = rembg.new_session("u2netp")
        except Exception as exc:  # noqa: BLE001
            raise BackgroundRemovalError(
                f"could not start rembg's u2netp session from '{path}': {exc}"
            ) from exc
        _REMBG_REMOVE, _REMBG_SESSION = rembg.remove, session
        return _REMBG_REMOVE, _REMBG_SESSION


def remove_background(img: Image.Image) -> Image.Image:
    """Cut the object out with rembg (u2netp). Returns RGBA with the original colours.

    An existing alpha channel is kept: the result's alpha is the product of both.
    Raises :class:`BackgroundRemovalError` if the model or rembg is unavailable.
    """
    if not isinstance(img, Image.Image) or img.mode != "RGBA":
        img = load_image(img)
    remove, session = _rembg_session()
    rgba = np.asarray(img)  # [H, W, 4] uint8
    # rembg sees RGB only; colours hidden under alpha 0 can be anything, so show it the white
    # composite that a person would see.
    a = rgba[..., 3:4].astype(np.float32) / 255.0  # [H, W, 1]
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)  # [H, W, 3]
    shown = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    try:
        mask = remove(shown, session=session, only_mask=True)
    except Exception as exc:  # noqa: BLE001
        raise BackgroundRemovalError(f"background removal failed: {exc}") from exc
    mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0  # [H, W]
    # u2netp predicts at 320 px and rembg upsamples with Lanczos: that leaves a faint halo
    # (alpha <= ~3%) several pixels wide around the object, which would inflate its alpha box
    # by ~4% of the frame, and an interior at 254/255 that lets the background show through.
    # Snap both ends; the soft edge in between is kept.
    mask = np.where(mask < MASK_FLOOR, 0.0, np.where(mask > 1.0 - MASK_FLOOR, 1.0, mask))
    alpha = np.rint(mask * rgba[..., 3].astype(np.float32)).astype(np.uint8)  # [H, W]
    out = rgba.copy()
    out[..., 3] = alpha
    return Image.fromarray(out)


# ----------------------------------------------------------------------------------------------
# Compositing, crop / pad / resize
# ----------------------------------------------------------------------------------------------


def composite_on(
    rgba: torch.Tensor,  # [..., 4, H, W] straight alpha, in [0, 1]
    background: Union[Sequence[float], float, torch.Tensor] = (1.0, 1.0, 1.0),
) -> torch.Tensor:  # [..., 3, H, W]
    """Alpha-composite straight-alpha RGBA over ``background`` (white by default).

    ``background``: an RGB triple / scalar, a [3] tensor, or anything broadcastable to
    [..., 3, H, W] (e.g. a per-sample [B, 3, 1, 1] or a full image).
    """
    if rgba.shape[-3] != 4:
        raise ValueError(f"expected [..., 4, H, W] RGBA, got shape {tuple(rgba.shape)}")
    rgb, alpha = rgba[..., :3, :, :], rgba[..., 3:4, :, :]  # [..., 3, H, W], [..., 1, H, W]
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    if bg.ndim == 1:
        bg = bg.view(3, 1, 1)  # [3, 1, 1]
    return rgb * alpha + bg * (1.0 - alpha)


@dataclass
class PreprocessedImage:
    rgba: torch.Tensor  # [4, S, S] float32 in [0, 1], straight alpha
    background_removed: bool
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    # (left, top, right, bottom) in original pixels; to within the reduction factor for images larger than
    # the config's working_side, which are reduced while loading.
    foreground_box: tuple[int, int, int, int]
    detail_rgba: Optional[torch.Tensor] = None  # [4, D, D] the same framing at the config's detail_size, if asked for

    def composite(self, background: Union[Sequence[float], float, torch.Tensor] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        return composite_on(self.rgba, background)  # [3, S, S]

    def to_pil(self) -> Image.Image:
        arr = self.rgba.permute(1, 2, 0).detach().cpu().numpy()  # [S, S, 4]
        return _rgba_from_float(arr)


def preprocess(source: ImageSource, config: PreprocessConfig | None = None) -> PreprocessedImage:
    """Load, validate, cut out (per ``config.remove_background``), crop, pad and resize.

    The alpha box's longer side becomes ``round(foreground_ratio * size)`` pixels, centred. Images larger
    than ``config.working_side`` are reduced while loading, so memory per call is bounded by the decoded
    image (at most 4 bytes x ``config.max_pixels``) plus a working copy of at most ``working_side`` squared.
    Raises :class:`ImageInputError` for unusable input, :class:`BackgroundRemovalError` when an
    opaque image needs background removal and rembg or its model is missing.
    """
    cfg = config or PreprocessConfig()
    img, original_size = _load(source, cfg, cfg.working_side)  # at most working_side a side

    if cfg.remove_background == "always":
        removed = True
    elif cfg.remove_background == "never":
        removed = False
    else:
        removed = not has_transparency(img)
    if removed:
        img = remove_background(img)

    rgba = np.asarray(img)  # [H, W, 4] uint8
    alpha = rgba[..., 3]  # [H, W] uint8
    cut = math.floor(cfg.alpha_threshold * 255.0)  # uint8 alpha > cut is inside the box
    inside = alpha > cut  # [H, W] bool
    if not inside.any():
        if removed:
            raise ImageInputError(
                "background removal found no object in the image (everything was classed as "
                "background); use an image with a clear, central object, or one with a "
                "transparent background"
            )
        raise ImageInputError(
            "the image is fully transparent (every pixel has alpha 0), so there is no object "
            "to reconstruct; use an image whose object is opaque"
        )
    coverage = float(alpha.sum(dtype=np.float64)) / 255.0  # object area in pixels
    if coverage < cfg.min_foreground_pixels:
        raise ImageInputError(
            f"the image is nearly empty: its visible (non-transparent) part covers only "
            f"{coverage:.1f} pixels (at least {cfg.min_foreground_pixels:g} needed); use an image "
            "where the object is clearly visible"
        )
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    crop = rgba[top:bottom, left:right]  # [h, w, 4] the alpha box
    out = _fit_square(crop, cfg.size, cfg.foreground_ratio)  # [4, S, S]
    detail = _fit_square(crop, cfg.detail_size, cfg.foreground_ratio) if cfg.detail_size else None  # [4, D, D]
    # The box in the full-size image's pixels (exact unless the image was reduced while loading).
    (width, height), (work_w, work_h) = original_size, img.size
    sx, sy = width / work_w, height / work_h
    box = (math.floor(left * sx), math.floor(top * sy), min(width, math.ceil(right * sx)), min(height, math.ceil(bottom * sy)))
    return PreprocessedImage(rgba=out, background_removed=removed, original_size=original_size, foreground_box=box,
                             detail_rgba=detail)


def _premultiply(rgba_u8: np.ndarray) -> torch.Tensor:
    """[h, w, 4] uint8 straight -> [4, h, w] float32 premultiplied."""
    x = torch.from_numpy(np.array(rgba_u8)).permute(2, 0, 1).float() / 255.0  # [4, h, w], own copy
    return torch.cat([x[:3] * x[3:], x[3:]], dim=0)


def _fit_square(crop: np.ndarray, size: int, ratio: float) -> torch.Tensor:
    """Scale the [h, w, 4] uint8 crop so its longer side is round(ratio * size), centred in a
    transparent size x size square. Returns [4, size, size] float32 straight alpha."""
    h, w = crop.shape[:2]
    target = max(1, min(size, round(ratio * size)))  # longer side of the box in output pixels
    scale = target / max(h, w)  # output pixels per input pixel

    if scale <= 0.25:
        # Big input: box-average by an integer factor k first (row chunks, premultiplied) so a
        # 40 MP photo never becomes one 640 MB float tensor; the antialiased resize below then
        # does the last <= 4x with a proper filter. Pad to a multiple of k, split evenly on both
        # sides so the content stays centred (within half a reduced pixel).
        k = int(1.0 / (2.0 * scale))
        ph, pw = -h % k, -w % k
        crop = np.pad(crop, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        rows_per_chunk = max(k, (4096 // k) * k)
        parts = [
            F.avg_pool2d(_premultiply(crop[r : r + rows_per_chunk])[None], k)[0]  # [4, rows/k, W/k]
            for r in range(0, crop.shape[0], rows_per_chunk)
        ]
        premult = torch.cat(parts, dim=1)  # [4, H/k, W/k]
        h_eff, w_eff = crop.shape[0] / k, crop.shape[1] / k  # padded extent, in reduced pixels
        scale = scale * k
    else:
        premult = _premultiply(crop)  # [4, h, w]
        h_eff, w_eff = float(h), float(w)

    nh = max(1, min(size, round(h_eff * scale)))
    nw = max(1, min(size, round(w_eff * scale)))
    # Resizing premultiplied colour keeps transparent pixels' (arbitrary) colour from bleeding
    # into the edge as a dark or coloured fringe. Bicubic + antialias; clamp its overshoot.
    resized = F.interpolate(premult[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
    alpha = resized[3:].clamp(0.0, 1.0)  # [1, nh, nw]
    color = torch.minimum(resized[:3].clamp(min=0.0), alpha)  # [3, nh, nw] premultiplied <= alpha

    out = torch.zeros(4, size, size, dtype=torch.float32)  # [4, S, S] transparent canvas
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[:3, y0 : y0 + nh, x0 : x0 + nw] = color
    out[3:, y0 : y0 + nh, x0 : x0 + nw] = alpha
    # Un-premultiply. Where alpha is 0 the colour is undefined; white there means a consumer that
    # drops alpha still sees the object on the project's white background.
    a = out[3:]  # [1, S, S]
    straight = torch.where(a > 1e-6, out[:3] / a.clamp(min=1e-6), torch.ones_like(out[:3]))
    out[:3] = straight.clamp(0.0, 1.0)
    return out
