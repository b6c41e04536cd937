"""dd3g.preprocess: every bad-input kind gets its specific message; every accepted mode converts
to the expected RGBA; crop/pad/resize geometry; compositing; one real rembg (u2netp) run."""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from dd3g import preprocess as pp
from helpers import REPO
from dd3g.preprocess import (
    BackgroundRemovalError,
    ImageInputError,
    PreprocessConfig,
    composite_on,
    has_transparency,
    load_image,
    preprocess,
)



# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8, color_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _alpha_box(rgba: torch.Tensor, thr: float = 0.5) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of alpha > thr in a [4, H, W] tensor."""
    ys, xs = torch.nonzero(rgba[3] > thr, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.fixture
def no_rembg(monkeypatch):
    """Fail the test if background removal is attempted."""
    def boom(*a, **k):
        raise AssertionError("remove_background must not be called for this input")
    monkeypatch.setattr(pp, "remove_background", boom)
    monkeypatch.setattr(pp, "_rembg_session", boom)


# ---------------------------------------------------------------------------------------------
# bad input: one test per kind (docs/design.md section 7), asserting the specific message
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match=r"image file not found: '.*nope\.png'"):
        preprocess(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageInputError, match="is a directory, not an image file"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"hello world, this is not a picture\n", r"plain text \(starts with 'hello world"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML web page"),
        (b'{"image": "not really"}', "JSON text"),
        (b"\x00\x01\x02\x03\xfe\xff\x10\x20" * 8, "unrecognised binary data"),
    ],
)
def test_non_image_file_names_what_was_found(tmp_path, content, what):
    path = tmp_path / "photo.png"  # the extension lies; the content decides
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match=r"'.*photo\.png' is not an image Pillow can read: it looks like " + what):
        preprocess(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"is empty \(0 bytes\), not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    buf = io.BytesIO()
    _noise(256, 256).save(buf, format=fmt)  # noise: the pixel data is most of the file
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match=f"{fmt} image data is truncated or corrupt"):
        preprocess(path)
    # Same through bytes and a file object.
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])
    with open(path, "rb") as f, pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(f)


def test_corrupt_png_data(tmp_path):
    # Valid header, garbage in the compressed stream.
    path = tmp_path / "corrupt.png"
    path.write_bytes(_png(32, 32, b"\x78\x9c" + b"\xff" * 200))
    with pytest.raises(ImageInputError, match="PNG image data is truncated or corrupt"):
        load_image(path)


def test_decompression_bomb_header_claims_huge_size(tmp_path):
    # 100 bytes whose header claims 100000 x 100000 = 10 G pixels. Pillow's own hard limit fires
    # inside Image.open; the message must still be ours.
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(100_000, 100_000, zlib.compress(b"")))
    with pytest.raises(ImageInputError,
                       match=r"too large: 10,000,000,000 pixels exceeds the limit of 40,000,000 pixels "
                             r"\(decompression-bomb protection\)"):
        preprocess(path)
    assert Image.MAX_IMAGE_PIXELS == before  # the global is never touched


def test_decompression_bomb_real_blank_image_rejected_before_decoding(tmp_path, monkeypatch):
    # A genuinely decodable 8000 x 6000 blank PNG (48 MP) that compresses to ~50 KB: below Pillow's
    # own limits, above ours. It must be refused from the header, without decoding.
    w, h = 8000, 6000
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)  # filter byte + w gray pixels
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    path = tmp_path / "blank.png"
    path.write_bytes(_png(w, h, idat))
    assert path.stat().st_size < 200_000

    def no_decode(self, *a, **k):
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageInputError,
                       match=r"too large: 8000x6000 = 48,000,000 pixels exceeds the limit of 40,000,000"):
        load_image(path)


def test_too_many_pixels_is_configurable():
    with pytest.raises(ImageInputError, match="exceeds the limit of 1,000 pixels"):
        load_image(np.zeros((40, 40, 3), np.uint8), PreprocessConfig(max_pixels=1000))


def test_file_too_large(tmp_path):
    path = _save(_noise(), tmp_path / "x.png")
    n = path.stat().st_size
    cfg = PreprocessConfig(max_file_bytes=100)
    with pytest.raises(ImageInputError, match=rf"'.*x\.png' is too large: {n:,} bytes exceeds the 100 bytes file-size limit"):
        load_image(path, cfg)
    with open(path, "rb") as f, pytest.raises(ImageInputError, match="too large: more than 100 bytes exceeds"):
        load_image(f, cfg)


@pytest.mark.parametrize("size", [(1, 1), (100, 4)])
def test_too_small(tmp_path, size):
    path = _save(Image.new("RGB", size, (255, 0, 0)), tmp_path / "tiny.png")
    w, h = size
    with pytest.raises(ImageInputError,
                       match=rf"too small: {w}x{h} pixels; each side must be at least 8 pixels"):
        preprocess(path)


def test_fully_transparent_rgba(tmp_path, no_rembg):
    path = _save(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), tmp_path / "clear.png")
    with pytest.raises(ImageInputError, match=r"fully transparent \(every pixel has alpha 0\)"):
        preprocess(path)


def test_nearly_empty_rgba(no_rembg):
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.putpixel((10, 10), (255, 0, 0, 255))
    img.putpixel((11, 10), (255, 0, 0, 255))  # 2 pixels: enough to count as "transparent" input
    with pytest.raises(ImageInputError, match=r"nearly empty: .* covers only 2\.0 pixels"):
        preprocess(img)


@pytest.mark.parametrize(
    "arr, msg",
    [
        (np.zeros((3, 32, 32), np.uint8), "looks channels-first"),
        (np.full((32, 32, 3), 2.0, np.float32), r"float arrays must hold values in \[0, 1\]"),
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((32, 32, 3), np.int64), "has dtype int64"),
        (np.zeros((32, 32, 5), np.uint8), r"shape \(32, 32, 5\)"),
    ],
)
def test_bad_arrays(arr, msg):
    with pytest.raises(ImageInputError, match=msg):
        load_image(arr)


def test_unsupported_source_type():
    with pytest.raises(ImageInputError, match="unsupported image source of type int"):
        load_image(42)


# ---------------------------------------------------------------------------------------------
# accepted modes convert to the expected RGBA
# ---------------------------------------------------------------------------------------------


def _px(img: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert img.mode == "RGBA"
    return img.getpixel(xy)


def test_grayscale_L_and_1(tmp_path):
    assert _px(load_image(_save(Image.new("L", (16, 16), 100), tmp_path / "l.png"))) == (100, 100, 100, 255)
    assert _px(load_image(_save(Image.new("1", (16, 16), 1), tmp_path / "b.png"))) == (255, 255, 255, 255)


def test_LA(tmp_path):
    img = load_image(_save(Image.new("LA", (16, 16), (50, 128)), tmp_path / "la.png"))
    assert _px(img) == (50, 50, 50, 128)


def test_palette_without_transparency(tmp_path):
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    assert _px(load_image(_save(p, tmp_path / "p.png"))) == (10, 200, 30, 255)


def test_palette_with_transparency(tmp_path, no_rembg):
    p = Image.new("P", (32, 32), 0)  # index 0 = transparent background
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    ImageDraw.Draw(p).rectangle((8, 8, 23, 23), fill=1)
    path = _save(p, tmp_path / "pt.png", transparency=0)
    img = load_image(path)
    assert _px(img, (0, 0))[3] == 0
    assert _px(img, (16, 16)) == (10, 200, 30, 255)
    out = preprocess(path)  # transparency honoured: no background removal
    assert not out.background_removed


def test_rgb_with_trns_colour_key(tmp_path):
    img = Image.new("RGB", (16, 16), (10, 20, 30))
    img.putpixel((5, 5), (200, 100, 50))
    loaded = load_image(_save(img, tmp_path / "k.png", transparency=(10, 20, 30)))
    assert _px(loaded, (0, 0))[3] == 0 and _px(loaded, (5, 5)) == (200, 100, 50, 255)


def _cmyk_profile(lightness: int) -> bytes:
    """A minimal ICC v2 CMYK output profile (CMYK -> Lab through a 2-point lut8 'A2B0') that maps every ink
    mix to one grey: L* = lightness / 255 * 100, a* = b* = 0."""
    def s15(x):  # s15Fixed16Number
        return struct.pack(">i", round(x * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    ramp = bytes(range(256))  # identity input and output curves
    identity = b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut8 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + bytes([lightness, 128, 128]) * 16 + ramp * 3
    tags = [(b"A2B0", lut8), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = (struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
              + bytes(12) + b"acsp" + bytes(28) + d50)
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + data


def test_cmyk_without_profile(tmp_path):
    # Pillow's own conversion, R = (1 - C)(1 - K) etc., is what the library relies on.
    cmyk = Image.new("CMYK", (16, 16))
    cmyk.putpixel((0, 0), (0, 255, 255, 0))  # no cyan or black: red
    cmyk.putpixel((1, 0), (0, 0, 0, 128))  # 50% black -> mid gray
    cmyk.putpixel((2, 0), (128, 0, 0, 128))  # (1 - C)(1 - K), not 1 - (C + K) -> black
    img = load_image(_save(cmyk, tmp_path / "c.tif"))
    assert _px(img, (0, 0)) == (255, 0, 0, 255)
    assert _px(img, (1, 0)) == (127, 127, 127, 255)
    assert _px(img, (2, 0)) == (63, 127, 127, 255)


def test_cmyk_embedded_profile_is_used_and_a_broken_one_ignored(tmp_path):
    no_ink = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # white paper without a profile
    assert _px(load_image(_save(no_ink, tmp_path / "plain.tif"))) == (255, 255, 255, 255)
    # The profile says this paper prints black: the profile wins over the naive formula.
    black_paper = load_image(_save(no_ink, tmp_path / "black.tif", icc_profile=_cmyk_profile(0)))
    assert _px(black_paper) == (0, 0, 0, 255)
    full_black = Image.new("CMYK", (16, 16), (0, 0, 0, 255))
    assert _px(load_image(_save(full_black, tmp_path / "white.tif", icc_profile=_cmyk_profile(255)))) == (255, 255, 255, 255)
    # A damaged profile falls back to the formula rather than costing the user the image.
    broken = load_image(_save(no_ink, tmp_path / "broken.tif", icc_profile=b"not an ICC profile" * 10))
    assert _px(broken) == (255, 255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    # Pillow writes Adobe (inverted) CMYK JPEGs; they must come back the right way round.
    img = load_image(_save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100))
    r, g, b, a = _px(img, (8, 8))
    assert r > 240 and g < 15 and b < 15 and a == 255


def test_16bit_grayscale_png_scaled_by_range(tmp_path):
    arr = np.zeros((16, 16), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2], arr[0, 3] = 0, 1000, 32768, 65535
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    img = load_image(path)
    # Pillow's convert("L") would clip 1000 and 32768 to 255.
    assert [_px(img, (x, 0)) for x in range(4)] == [
        (0, 0, 0, 255), (4, 4, 4, 255), (128, 128, 128, 255), (255, 255, 255, 255)]


def test_16bit_grayscale_png_with_trns(tmp_path):
    raw = b"".join(b"\x00" + b"\x12\x34" * 3 + b"\xff\xff" * 5 for _ in range(8))
    data = _png(8, 8, zlib.compress(raw), bit_depth=16, color_type=0)
    # insert a tRNS chunk (gray key 0x1234) before IDAT
    i = data.index(b"IDAT") - 4
    data = data[:i] + _png_chunk(b"tRNS", b"\x12\x34") + data[i:]
    img = load_image(data)
    assert _px(img, (0, 0))[3] == 0 and _px(img, (7, 0)) == (255, 255, 255, 255)


def test_16bit_rgba_png():
    raw = b"".join(b"\x00" + b"\xff\xff\x80\x00\x00\x00\x40\x00" * 8 for _ in range(8))
    img = load_image(_png(8, 8, zlib.compress(raw), bit_depth=16, color_type=6))
    assert _px(img) == (255, 128, 0, 64)


def test_float_mode_F():
    f = Image.fromarray(np.full((16, 16), 0.5, np.float32))
    assert f.mode == "F"
    assert _px(load_image(f)) == (128, 128, 128, 255)


def test_numpy_arrays():
    assert _px(load_image(np.full((16, 16), 0.25, np.float32))) == (64, 64, 64, 255)
    assert _px(load_image(np.full((16, 16, 3), 65535, np.uint16))) == (255, 255, 255, 255)
    assert _px(load_image(np.full((16, 16, 4), (1, 2, 3, 4), np.uint8))) == (1, 2, 3, 4)
    assert _px(load_image(np.full((16, 16, 2), (0.0, 1.0), np.float64))) == (0, 0, 0, 255)


def test_bytes_file_object_and_pil_sources(tmp_path):
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    path = _save(img, tmp_path / "a.png")
    for src in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), img):
        assert _px(load_image(src)) == (1, 2, 3, 255)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # marker at top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(_save(img, tmp_path / "o.png", exif=exif))
    assert loaded.size == (20, 40)
    assert _px(loaded, (19, 0)) == (255, 0, 0, 255)  # top-left went to top-right


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    assert _px(load_image(path))[:3] == (255, 0, 0)


# ---------------------------------------------------------------------------------------------
# memory per call is bounded by design: big images are reduced while loading, never widened to float
# ---------------------------------------------------------------------------------------------


def test_16bit_image_is_never_widened_to_a_full_size_float_array(tmp_path, no_rembg):
    import tracemalloc

    side = 3000
    yy, xx = np.ogrid[:side, :side]
    gray = np.where((xx - 1500) ** 2 + (yy - 1400) ** 2 < 900**2, 9000, 60000).astype(np.uint16)
    path = _save(Image.fromarray(gray), tmp_path / "g16.png")
    tracemalloc.start()  # numpy's buffers are traced; Pillow's decoded image is not
    try:
        out = preprocess(path, PreprocessConfig(remove_background="never", working_side=1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One full-size float32 channel; a float64 [H, W, 4] conversion would need 8 of these.
    assert peak < side * side * 4
    assert out.original_size == (side, side) and out.foreground_box == (0, 0, side, side)
    assert torch.allclose(out.rgba[:3, 128, 128], torch.full((3,), 9000 / 65535), atol=2 / 255)


def test_big_jpeg_is_decoded_at_a_reduced_size(tmp_path, monkeypatch, no_rembg):
    path = _save(_noise(4096, 3072), tmp_path / "big.jpg", quality=90)
    decoded = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self, *a, **k):
        result = real_load(self, *a, **k)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    out = preprocess(path, PreprocessConfig(remove_background="never", working_side=1024))
    assert decoded and max(decoded) == (1024, 768)  # the decoder's 1/4 scale, not 4096 x 3072
    assert out.original_size == (4096, 3072) and out.foreground_box == (0, 0, 4096, 3072)


@pytest.mark.parametrize("source", ["png", "array"])
def test_big_image_is_reduced_before_the_work_and_gives_the_same_result(tmp_path, monkeypatch, source):
    canvas, box = (3000, 2000), (610, 500, 2400, 1705)
    img = Image.new("RGBA", canvas, (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((box[0], box[1], box[2] - 1, box[3] - 1), fill=(10, 200, 30, 255))
    given = _save(img, tmp_path / "big.png") if source == "png" else np.asarray(img)
    seen = []
    real_fit = pp._fit_square
    monkeypatch.setattr(pp, "_fit_square", lambda crop, *a: seen.append(crop.shape) or real_fit(crop, *a))
    full = preprocess(given, PreprocessConfig(working_side=4096))
    small = preprocess(given, PreprocessConfig(working_side=512))
    assert seen[0][:2] == (1205, 1790) and max(seen[1][:2]) <= 512 * 1790 / 3000 + 1  # crops of the working copy
    assert small.original_size == full.original_size == canvas
    factor = 6  # ceil(3000 / 512): the box is exact to within one reduced pixel
    assert full.foreground_box == box
    assert all(abs(a - b) < factor for a, b in zip(small.foreground_box, box))
    assert (small.rgba - full.rgba).abs().mean() < 0.01


def test_server_pixel_limit_is_lower_than_the_library_one(tmp_path):
    assert pp.SERVER_MAX_PIXELS < pp.LIBRARY_MAX_PIXELS == PreprocessConfig().max_pixels
    path = tmp_path / "20mp.png"
    path.write_bytes(_png(5000, 4000, zlib.compress(b"")))  # the header claims 20 MP; no pixel data
    with pytest.raises(ImageInputError, match="truncated or corrupt"):  # the library's limit lets it decode
        load_image(path)
    with pytest.raises(ImageInputError, match="exceeds the limit of 16,000,000 pixels"):
        load_image(path, PreprocessConfig(max_pixels=pp.SERVER_MAX_PIXELS))


# ---------------------------------------------------------------------------------------------
# transparency / background removal decisions
# ---------------------------------------------------------------------------------------------


def _cutout(size=(120, 80), box=(30, 20, 69, 59), color=(200, 30, 40)) -> Image.Image:
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle(box, fill=color + (255,))
    return img


def test_has_transparency():
    assert has_transparency(_cutout())
    assert not has_transparency(Image.new("RGB", (32, 32)))
    assert not has_transparency(Image.new("RGBA", (32, 32), (1, 2, 3, 255)))
    stray = Image.new("RGBA", (100, 100), (1, 2, 3, 255))
    stray.putpixel((0, 0), (0, 0, 0, 0))  # one pixel in 10,000: an artefact, not a cut-out
    assert not has_transparency(stray)


def test_existing_alpha_is_honoured_without_rembg(no_rembg):
    out = preprocess(_cutout())
    assert not out.background_removed
    assert out.rgba.shape == (4, 256, 256) and out.rgba.dtype == torch.float32
    assert out.rgba[3, 0, 0] == 0 and out.rgba[3, 128, 128] == 1
    assert torch.allclose(out.rgba[:3, 128, 128], torch.tensor([200, 30, 40]) / 255, atol=1 / 255)


def test_remove_background_modes(monkeypatch):
    calls = []

    def fake_remove(img):
        calls.append(img.size)
        out = img.copy()
        a = Image.new("L", img.size, 0)
        ImageDraw.Draw(a).ellipse((10, 10, 50, 50), fill=255)
        out.putalpha(a)
        return out

    monkeypatch.setattr(pp, "remove_background", fake_remove)
    opaque = Image.new("RGB", (64, 64), (0, 128, 255))
    out = preprocess(opaque)  # auto + no transparency -> removal
    assert out.background_removed and calls == [(64, 64)]
    out = preprocess(_cutout(), PreprocessConfig(remove_background="always"))
    assert out.background_removed and len(calls) == 2
    out = preprocess(opaque, PreprocessConfig(remove_background="never"))
    assert not out.background_removed and len(calls) == 2
    # The whole opaque frame is the object: its box fills the requested ratio.
    assert _alpha_box(out.rgba) == (19, 19, 237, 237)  # 218 = round(0.85 * 256), centred


def test_rembg_finding_nothing_is_specific(monkeypatch):
    monkeypatch.setattr(pp, "remove_background", lambda img: Image.new("RGBA", img.size, (0, 0, 0, 0)))
    with pytest.raises(ImageInputError, match="background removal found no object"):
        preprocess(Image.new("RGB", (64, 64), (9, 9, 9)))


def test_missing_model_gives_fetch_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    monkeypatch.setattr(pp, "_REMBG_SESSION", None)
    with pytest.raises(BackgroundRemovalError, match=r"u2netp model at .* is missing; run `python scripts/fetch_u2netp\.py`"):
        preprocess(Image.new("RGB", (64, 64), (0, 128, 255)))


def test_damaged_model_is_reported(tmp_path, monkeypatch):
    (tmp_path / "u2netp.onnx").write_bytes(b"not a model")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    monkeypatch.setattr(pp, "_REMBG_SESSION", None)
    with pytest.raises(BackgroundRemovalError, match="is damaged"):
        pp.remove_background(Image.new("RGBA", (64, 64), (0, 128, 255, 255)))


def test_bad_config():
    with pytest.raises(ValueError, match="remove_background must be"):
        PreprocessConfig(remove_background="sometimes")
    with pytest.raises(ValueError, match="foreground_ratio"):
        PreprocessConfig(foreground_ratio=1.5)
    with pytest.raises(ValueError, match="working_side must be >= size"):
        PreprocessConfig(size=256, working_side=128)
    with pytest.raises(ValueError, match="detail_size must be >= 0"):
        PreprocessConfig(detail_size=-1)
    with pytest.raises(ValueError, match="working_side must be >= size and detail_size"):
        PreprocessConfig(size=64, detail_size=512, working_side=256)


def test_the_detail_copy_has_the_same_framing_at_its_own_size(no_rembg):
    img = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((60, 40, 160, 150), fill=(200, 40, 90, 255))
    assert preprocess(img, PreprocessConfig(size=64)).detail_rgba is None  # not asked for, not made
    out = preprocess(img, PreprocessConfig(size=64, detail_size=256))
    assert out.detail_rgba.shape == (4, 256, 256)
    small_box, detail_box = _alpha_box(out.rgba), _alpha_box(out.detail_rgba)
    assert max(abs(4 * s - d) for s, d in zip(small_box, detail_box)) <= 4  # the same box, 4x the pixels
    # Reduced to the student's size, the detail copy is the student's image (to within the two resizes).
    def premultiplied(rgba):  # the colour under a transparent pixel is not defined: compare what shows
        return torch.cat([rgba[:3] * rgba[3:], rgba[3:]])

    def difference(detail):  # mean absolute difference after reducing the detail copy to the student's 64 px
        reduced = torch.nn.functional.interpolate(premultiplied(detail)[None], size=64, mode="area")[0]
        return float((reduced - premultiplied(out.rgba)).abs().mean())

    other_framing = preprocess(img, PreprocessConfig(size=64, detail_size=256, foreground_ratio=0.7)).detail_rgba
    assert difference(out.detail_rgba) < 0.015 < 3 * 0.015 < difference(other_framing)


# ---------------------------------------------------------------------------------------------
# geometry: crop to alpha box, pad to square at the requested ratio, centred
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "canvas, box, size, ratio",
    [
        ((300, 200), (50, 40, 150, 90), 256, 0.85),  # wide box, off-centre
        ((200, 300), (120, 10, 160, 250), 256, 0.85),  # tall box
        ((64, 64), (0, 0, 64, 64), 128, 0.5),  # box is the whole image; upscaling
        ((3000, 2000), (500, 300, 2500, 1300), 256, 0.85),  # big: integer pre-reduction path
    ],
)
def test_crop_pad_ratio_and_centre(canvas, box, size, ratio, no_rembg):
    img = Image.new("RGBA", canvas, (0, 0, 0, 0))
    left, top, right, bottom = box
    ImageDraw.Draw(img).rectangle((left, top, right - 1, bottom - 1), fill=(10, 200, 30, 255))
    opaque = box == (0, 0) + canvas  # no transparency at all: say there is nothing to remove
    mode = "never" if opaque else "auto"
    out = preprocess(img, PreprocessConfig(size=size, foreground_ratio=ratio, remove_background=mode))
    assert out.rgba.shape == (4, size, size)
    assert out.foreground_box == box and out.original_size == canvas
    L, T, R, B = _alpha_box(out.rgba)
    w, h = R - L, B - T
    target = round(ratio * size)
    assert abs(max(w, h) - target) <= 1
    assert abs(min(w, h) - target * min(right - left, bottom - top) / max(right - left, bottom - top)) <= 1.5
    assert abs((L + R) / 2 - size / 2) <= 1 and abs((T + B) / 2 - size / 2) <= 1
    # Interior colour survives the resize.
    cy, cx = (T + B) // 2, (L + R) // 2
    assert torch.allclose(out.rgba[:, cy, cx], torch.tensor([10 / 255, 200 / 255, 30 / 255, 1.0]), atol=2 / 255)


def test_no_dark_fringe_when_downscaling(no_rembg):
    # White disc with a soft edge over transparent *black*: a straight-alpha resize would drag the
    # hidden black into the edge. Premultiplied resizing keeps edge pixels white.
    yy, xx = np.mgrid[:400, :400]
    r = np.hypot(xx - 200 + 0.5, yy - 200 + 0.5)
    alpha = np.clip((150 - r) / 4, 0, 1)
    arr = np.zeros((400, 400, 4), np.float32)
    arr[..., :3] = (alpha > 0)[..., None]  # white only where alpha > 0, black elsewhere
    arr[..., 3] = alpha
    out = preprocess(arr, PreprocessConfig(size=64))
    edge = (out.rgba[3] > 0.01) & (out.rgba[3] < 0.99)
    assert edge.sum() > 20
    assert out.rgba[:3][:, edge].min() > 0.98


def test_output_range_and_straight_alpha(no_rembg):
    out = preprocess(_cutout())
    assert out.rgba.min() >= 0 and out.rgba.max() <= 1
    assert torch.all(out.rgba[:3][:, out.rgba[3] == 0] == 1.0)  # white under fully transparent


# ---------------------------------------------------------------------------------------------
# compositing
# ---------------------------------------------------------------------------------------------


def test_composite_on_white_by_default(no_rembg):
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((8, 8, 55, 55), fill=(255, 0, 0, 128))
    out = preprocess(img)
    rgb = out.composite()  # [3, S, S]
    assert rgb.shape == (3, 256, 256)
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3))  # background -> white
    a = 128 / 255
    assert torch.allclose(rgb[:, 128, 128], torch.tensor([1.0, 1 - a, 1 - a]), atol=1e-3)
    black = out.composite((0, 0, 0))
    assert torch.allclose(black[:, 128, 128], torch.tensor([a, 0.0, 0.0]), atol=1e-3)


def test_composite_on_batched():
    rgba = torch.rand(2, 3, 4, 8, 8)  # [B, V, 4, H, W]
    rgba[..., 3, :, :] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    out = composite_on(rgba)  # [B, V, 3, H, W]
    assert out.shape == (2, 3, 3, 8, 8)
    assert torch.all(out[0] == 1.0) and torch.equal(out[1], rgba[1, :, :3])
    bg = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.4, 0.6]]).view(2, 1, 3, 1, 1)  # per-sample
    out = composite_on(rgba, bg)
    assert torch.allclose(out[0, 0, :, 0, 0], torch.zeros(3))
    assert torch.allclose(composite_on(rgba, 0.5)[0], torch.full((3, 3, 8, 8), 0.5))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 4, H, W\]"):
        composite_on(torch.rand(3, 8, 8))


def test_to_pil_roundtrip(no_rembg):
    out = preprocess(_cutout())
    pil = out.to_pil()
    assert pil.mode == "RGBA" and pil.size == (256, 256)
    assert pil.getpixel((128, 128)) == (200, 30, 40, 255)
    back = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    assert (back - out.rgba).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------------------------
# fetch script (no network when the model is already there) and real rembg
# ---------------------------------------------------------------------------------------------


def _model_present() -> bool:
    return pp.u2netp_model_path().is_file()


MODEL_SKIP = pytest.mark.skipif(
    not _model_present(),
    reason=f"u2netp model not at {pp.u2netp_model_path()}; run `python scripts/fetch_u2netp.py`",
)


@MODEL_SKIP
def test_fetch_script_is_noop_when_model_valid(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("fetch_u2netp", REPO / "scripts" / "fetch_u2netp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.EXPECTED_MD5 == pp.U2NETP_MD5

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the model is already valid")
    monkeypatch.setattr(mod.subprocess, "run", no_pip)
    assert mod.main(["--home", str(pp.u2netp_model_path().parent)]) == 0
    assert capsys.readouterr().out.strip() == str(pp.u2netp_model_path())
    # It also imports rembg (compiling its numba kernels at setup); where that fails it says so and fails.
    monkeypatch.setitem(sys.modules, "rembg", None)  # `import rembg` now raises ImportError
    assert mod.main(["--home", str(pp.u2netp_model_path().parent)]) == 1
    assert "rembg does not import" in capsys.readouterr().err


@MODEL_SKIP
def test_real_rembg_u2netp_separates_disc():
    S, cx, cy, rad = 256, 120.0, 140.0, 64.0
    img = Image.new("RGB", (S, S), (40, 160, 230))  # plain blue background
    ImageDraw.Draw(img).ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=(220, 40, 40))  # red disc
    yy, xx = np.mgrid[:S, :S]
    true = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= rad

    t0 = time.perf_counter()
    cut = pp.remove_background(load_image(img))
    elapsed = time.perf_counter() - t0
    pred = np.asarray(cut)[..., 3] > 127
    iou = (pred & true).sum() / (pred | true).sum()
    assert iou > 0.8, f"IoU {iou:.3f}"
    assert np.array_equal(np.asarray(cut)[..., :3], np.asarray(img))  # colours untouched
    print(f"rembg u2netp: IoU {iou:.3f}, first call {elapsed:.2f} s (import + session + run)")

    out = preprocess(img)  # auto: opaque -> rembg, cached session now
    assert out.background_removed
    # The box (alpha > 0, soft edge included) fills the requested ratio; the solid disc
    # (alpha > 0.5) sits a couple of pixels inside it.
    L, T, R, B = _alpha_box(out.rgba, thr=0.0)
    assert abs(max(R - L, B - T) - round(0.85 * 256)) <= 1
    L, T, R, B = _alpha_box(out.rgba)
    assert 0 <= round(0.85 * 256) - max(R - L, B - T) <= 8
