"""pe_infer's image pipeline (libpng / libjpeg + its own resize) against Pillow's.

`pe_preprocess` runs exactly the C++ code pe_infer uses. Every image kind Pillow opens as L, LA,
RGB, RGBA, P, 1 or I;16 must give the very same pixels as `pe_port.preprocess`, hence the same
model input.
"""

from __future__ import annotations

import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

import pe_port

# (input size, output size) pairs: squash and stretch, each axis up or down, tiny and odd sizes,
# and both orders of the two resize passes (see cpp/src/image.cc).
RESIZES = [((451, 300), (384, 384)), ((300, 451), (64, 64)), ((37, 23), (384, 384)),
           ((640, 480), (17, 33)), ((120, 90), (500, 3)), ((90, 120), (3, 500)),
           ((200, 200), (150, 60)), ((200, 200), (150, 120)), ((1, 1), (5, 7)),
           ((313, 97), (312, 98))]


def run(build, *args):
    done = subprocess.run([str(build / "pe_preprocess"), *map(str, args)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return np.load(next(a for a in args if str(a).endswith(".npy")))


def pil_pixels(image: Image.Image) -> np.ndarray:
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image).astype(np.float32)
    return array[..., None] if array.ndim == 2 else array


def noisy(size, channels, seed):
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 7 + y * 3)[..., None] + np.arange(channels) * 50
    noise = np.random.default_rng(seed).integers(0, 90, (h, w, channels))
    return ((base + noise) % 256).astype(np.uint8)


def make_image(kind, size, seed=0) -> Image.Image:
    pixels = noisy(size, 4, seed)
    if kind == "RGB":
        return Image.fromarray(pixels[..., :3], "RGB")
    if kind == "L":
        return Image.fromarray(pixels[..., 0], "L")
    if kind == "RGBA":
        return Image.fromarray(pixels, "RGBA")
    if kind == "LA":
        return Image.fromarray(pixels[..., :2], "LA")
    if kind == "P":
        return Image.fromarray(pixels[..., :3], "RGB").quantize(40)
    if kind == "1":
        return Image.fromarray(pixels[..., 0] > 120)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["RGB", "L", "RGBA", "LA", "P", "1"])
def test_png_resize_is_pillows(cpp_build, tmp_path, kind):
    for i, (size, out) in enumerate(RESIZES):
        path = tmp_path / f"{kind}-{i}.png"
        make_image(kind, size, seed=i).save(path)
        with Image.open(path) as image:
            expected = pil_pixels(image.resize(out, Image.BILINEAR))
        got = run(cpp_build, path, "--resize", *out, tmp_path / "r.npy")
        np.testing.assert_array_equal(got, expected, err_msg=f"{kind} {size} -> {out}")


@pytest.mark.parametrize("options", [dict(quality=90), dict(quality=75, progressive=True),
                                     dict(quality=95, subsampling=0), dict(grey=True)])
def test_jpeg_decode_and_resize_are_pillows(cpp_build, tmp_path, options):
    path = tmp_path / "a.jpg"
    image = make_image("L" if options.pop("grey", False) else "RGB", (451, 300))
    image.save(path, **options)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(run(cpp_build, path, "--decode", tmp_path / "d.npy"),
                                      pil_pixels(opened))
        for _, out in RESIZES[:6]:
            np.testing.assert_array_equal(
                run(cpp_build, path, "--resize", *out, tmp_path / "r.npy"),
                pil_pixels(opened.resize(out, Image.BILINEAR)))


# ---- PNG variants Pillow cannot write: encoded here (an encoder, for tests only) --------------

def png_bytes(rows: np.ndarray, color_type: int, bit_depth: int, extra: bytes = b"") -> bytes:
    """A PNG of `rows` (height x packed row bytes, big-endian samples), filter 0 on each row."""
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data)))
    height = rows.shape[0]
    width = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    samples = rows.shape[1] * 8 // bit_depth
    header = struct.pack(">IIBBBBB", samples // width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def chunk_bytes(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def special_pngs():
    rng = np.random.default_rng(5)
    h, w = 45, 67
    wide16 = rng.integers(0, 65536, (h, w * 3), dtype=np.uint16).astype(">u2")
    yield "rgb16", png_bytes(wide16.view(np.uint8), 2, 16)
    rgba16 = rng.integers(0, 65536, (h, w * 4), dtype=np.uint16).astype(">u2")
    yield "rgba16", png_bytes(rgba16.view(np.uint8), 6, 16)
    la16 = rng.integers(0, 65536, (h, w * 2), dtype=np.uint16).astype(">u2")
    yield "la16", png_bytes(la16.view(np.uint8), 4, 16)
    for depth in (2, 4):
        packed = rng.integers(0, 256, (h, w * depth // 8 + 1), dtype=np.uint8)
        yield f"grey{depth}", png_bytes(packed, 0, depth)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    yield "grey-trns", png_bytes(grey, 0, 8, chunk_bytes(b"tRNS", b"\x00\x07"))
    rgb = rng.integers(0, 256, (h, w * 3), dtype=np.uint8)
    yield "rgb-trns", png_bytes(rgb, 2, 8, chunk_bytes(b"tRNS", b"\x00\x07\x00\x08\x00\x09"))
    palette = rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes()
    indices = rng.integers(0, 16, (h, w), dtype=np.uint8)
    yield "palette-trns", png_bytes(indices, 3, 8, chunk_bytes(b"PLTE", palette)
                                    + chunk_bytes(b"tRNS", bytes(range(0, 160, 10))))
    packed4 = rng.integers(0, 256, (h, (w + 1) // 2), dtype=np.uint8) & 0x77
    yield "palette4", png_bytes(packed4, 3, 4, chunk_bytes(b"PLTE", palette))


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
@pytest.mark.parametrize("name, data", [pytest.param(n, d, id=n) for n, d in special_pngs()])
def test_other_png_layouts_are_pillows(cpp_build, tmp_path, name, data):
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    for out in ((384, 384), (20, 50)):
        with Image.open(path) as image:
            expected = pil_pixels(image.resize(out, Image.BILINEAR))
        got = run(cpp_build, path, "--resize", *out, tmp_path / "r.npy")
        if got.shape[-1] == 2 and expected.shape[-1] == 4:  # Pillow opens 16-bit LA as RGBA
            assert (expected[..., 0] == expected[..., 1]).all()
            assert (expected[..., 0] == expected[..., 2]).all()
            expected = expected[..., [0, 3]]
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_grey16_png_is_pillows(cpp_build, tmp_path):
    """Pillow opens 16-bit grey as "I;16", resizes the 16-bit values, then clips them at 255."""
    rng = np.random.default_rng(2)
    values = rng.integers(0, 400, (60, 80), dtype=np.uint16).astype(">u2")
    path = tmp_path / "g16.png"
    path.write_bytes(png_bytes(values.view(np.uint8), 0, 16))
    with Image.open(path) as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(run(cpp_build, path, "--decode", tmp_path / "d.npy"),
                                      pil_pixels(image))
        for out in ((70, 10), (10, 70), (384, 384), (79, 59)):  # both orders of the passes
            expected = np.minimum(pil_pixels(image.resize(out, Image.BILINEAR)), 255)
            np.testing.assert_array_equal(
                run(cpp_build, path, "--resize", *out, tmp_path / "r.npy"), expected)
    for size, center_crop in ((384, False), (224, True), (40, False)):
        args = [path, size, tmp_path / "p.npy"] + (["--center-crop"] if center_crop else [])
        np.testing.assert_array_equal(run(cpp_build, *args),
                                      pe_port.preprocess([path], size, center_crop))


@pytest.mark.parametrize("center_crop", [False, True])
def test_preprocess_is_pe_ports(cpp_build, tmp_path, center_crop):
    """The whole transform: resize (or shorter side + centre crop), RGB, [0, 1], mean, std."""
    for i, (size, _) in enumerate(RESIZES):
        for kind in ("RGB", "RGBA", "P"):
            path = tmp_path / f"{kind}-{i}.png"
            make_image(kind, size, seed=i).save(path)
            args = [path, 224, tmp_path / "p.npy"] + (["--center-crop"] if center_crop else [])
            np.testing.assert_array_equal(run(cpp_build, *args),
                                          pe_port.preprocess([path], 224, center_crop),
                                          err_msg=f"{kind} {size}")
