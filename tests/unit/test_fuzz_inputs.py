"""Hostile and damaged inputs to the Python front end: every one is a `UserError` (one line,
exit 2 from the CLI), never a traceback, a hang or a huge allocation.

A seeded mutator (bit flips, byte overwrites, truncations, insertions) runs a few hundred
variants of a valid `.npy`, PNG and JPEG through the readers the CLI uses; named regressions
cover the cases found by hand (issue 12: malformed `.npy` headers, a header declaring 1 TiB,
a dimension past int64, decompression bombs, a centre-crop strip, FIFOs).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pe_port.cli import _read_npy, main
from pe_port.errors import UserError
from pe_port.preprocess import MAX_IMAGE_PIXELS, load_image, preprocess
from pe_port.streaming import list_images

CASES_PER_FORMAT = int(os.environ.get("PE_FUZZ_CASES", "150"))  # `make fuzz`: thousands


def valid_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    return buffer.getvalue()


def valid_image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 4)
        at = int(rng.integers(0, len(data)))
        if kind == 0:
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            data[at] = int(rng.integers(0, 256))
        elif kind == 2:
            del data[at:]
            if not data:
                data = bytearray(b"\x93")
        else:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    return bytes(data)


def read_or_refuse(read, path: Path) -> None:
    try:
        read(path)
    except UserError as err:
        assert "\n" not in str(err), str(err)


@pytest.mark.parametrize("fmt", ["npy", "PNG", "JPEG"])
def test_mutated_inputs_are_read_or_refused_cleanly(fmt, tmp_path):
    rng = np.random.default_rng({"npy": 1, "PNG": 2, "JPEG": 3}[fmt])
    original = valid_npy() if fmt == "npy" else valid_image(fmt)
    read = _read_npy if fmt == "npy" else (lambda p: preprocess([p], 32))
    path = tmp_path / f"case.{fmt.lower()}"
    for _ in range(CASES_PER_FORMAT):
        path.write_bytes(mutate(original, rng))
        read_or_refuse(read, path)


def npy_with_header(header: str) -> bytes:
    text = header.encode("latin1")
    padding = 64 - (10 + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


@pytest.mark.parametrize("header, message", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 1099511627776), }", "declares"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
     "declares"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3,", "bad header"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1 3 2 2), }", "bad header"),
    ("{'descr': '<f999999999', 'fortran_order': False, 'shape': (1,), }", "bad header"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 2, 2), }", "float64"),
    ("'\\x00", "bad header"),
])
def test_malformed_npy_headers_are_one_error(header, message, tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(npy_with_header(header) + bytes(48))
    with pytest.raises(UserError, match=message):
        _read_npy(path)


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(65_500, 65_500))  # a few hundred bytes, 4.3 gigapixels
    with pytest.raises(UserError, match=f"more than the {MAX_IMAGE_PIXELS:,}"):
        load_image(path)


def test_a_thin_strip_cannot_blow_up_the_centre_crop(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 20_000)).save(path)
    with pytest.raises(UserError, match="resized for the centre crop"):
        preprocess([path], 384, center_crop=True)
    assert preprocess([path], 384).shape == (1, 3, 384, 384)  # squashing is bounded by 384^2


@pytest.mark.parametrize("inside_folder", [False, True])
def test_a_fifo_is_refused_not_waited_on(inside_folder, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    fifo = folder / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        list_images([str(folder if inside_folder else fifo)])
    code = main(["encode", "PE-Core-T16-384", "--input", str(fifo), "--output",
                 str(tmp_path / "o.npy")])
    assert code == 2 and "not a regular file" in capsys.readouterr().err
