"""The C++ runner against the Python API: same artifact, same inputs, same outputs.

Builds `cpp/` from a clean folder (conftest), exports PE-Core-T16-384 with seeded random weights,
runs `pe_infer` on a `.npy` and on PNG and JPEG images, and compares with `pe_port`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

import pe_port
from pe_port.artifact import FORMAT_VERSION as EXPORT_FORMAT_VERSION
from pe_port.artifact import METADATA_CHECKSUM_KEY, FeatureVariant, seal_metadata
from pe_port.preprocess import MAX_IMAGE_PIXELS
from tests.cpp.conftest import SMALL_MODEL, VARIANT, run_pe_infer
from tests.helpers import random_images, rel_error
from tests.unit.test_fuzz_inputs import png_declaring, valid_image

# The .npy path runs the same library on the same bits as the Python API: the bound.
NPY_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    path = tmp_path_factory.mktemp("npy") / "pixels.npy"
    np.save(path, random_images(2, 64, 48, seed=3))
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A smooth synthetic photo (not square, so the resize squashes) as PNG and JPEG."""
    folder = tmp_path_factory.mktemp("images")
    y, x = np.mgrid[0:300, 0:451].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 90 * np.cos(y / 23.0),
                    (x + y) % 256], axis=-1)
    noise = np.random.default_rng(0).integers(-20, 21, rgb.shape)
    image = Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8), "RGB")
    image.save(folder / "photo.png")
    image.save(folder / "photo.jpg", quality=90)
    return folder


def test_npy_matches_the_python_api(pe_infer, t16_artifact, t16_encoder, pixels, tmp_path):
    out = tmp_path / "emb.npy"
    done = run_pe_infer(pe_infer, t16_artifact, pixels, out)
    assert done.returncode == 0, done.stderr
    expected = t16_encoder(np.load(pixels))
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == expected.shape == (2, 512)
    assert rel_error(got, expected) <= NPY_TOLERANCE


def test_features_match_the_python_api(pe_infer, t16_artifact, t16_encoder, pixels, tmp_path):
    images = np.load(pixels)
    out = tmp_path / "tok.npy"
    done = run_pe_infer(pe_infer, t16_artifact, pixels, out, "--features")
    assert done.returncode == 0, done.stderr
    assert rel_error(np.load(out), t16_encoder.forward_features(images)) <= NPY_TOLERANCE

    layer_idx, norm, strip = VARIANT
    flags = ["--features", "--layer-idx", layer_idx, "--norm", "--strip-cls"]
    done = run_pe_infer(pe_infer, t16_artifact, pixels, out, *flags, "--threads", 1)
    assert done.returncode == 0, done.stderr
    expected = t16_encoder.forward_features(images, layer_idx=layer_idx, norm=norm,
                                            strip_cls_token=strip)
    assert np.load(out).shape == expected.shape == (2, 12, 192)  # 4x3 patches, no cls token
    assert rel_error(np.load(out), expected) <= NPY_TOLERANCE


def test_a_variant_not_exported_is_a_clear_error(pe_infer, t16_artifact, pixels, tmp_path):
    out = tmp_path / "tok.npy"
    done = run_pe_infer(pe_infer, t16_artifact, pixels, out, "--features", "--layer-idx", "3")
    assert done.returncode == 2 and not out.exists()
    missing = FeatureVariant(3, False, False).function_name(12)
    assert f"has no {missing}" in done.stderr
    assert "forward, forward_features, forward_features_norm1_layer10_strip1" in done.stderr
    assert "--features-variant 3" in done.stderr


@pytest.mark.parametrize("center_crop", [False, True])
@pytest.mark.parametrize("name", ["photo.png", "photo.jpg"])
def test_images_match_the_python_api(pe_infer, cpp_build, t16_artifact, t16_encoder, photo,
                                     name, center_crop, tmp_path):
    """Decoding and the Pillow-equivalent resize give the very same pixels, hence outputs."""
    path = photo / name
    crop = ["--center-crop"] if center_crop else []
    preprocessed = tmp_path / "pre.npy"
    done = subprocess.run([str(cpp_build / "pe_preprocess"), str(path), "384", str(preprocessed),
                           *crop], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(preprocessed),
                                  pe_port.preprocess([path], 384, center_crop))

    out = tmp_path / "emb.npy"
    done = run_pe_infer(pe_infer, t16_artifact, path, out, *crop)
    assert done.returncode == 0, done.stderr
    expected = t16_encoder.encode_images([path], center_crop=center_crop)
    # Same pixels and same library: the .npy bound holds (measured: 0, bit for bit).
    assert rel_error(np.load(out), expected) <= NPY_TOLERANCE


def test_metadata_records_what_pe_infer_checks(t16_artifact):
    meta = json.loads((t16_artifact / "metadata.json").read_text())
    assert meta["format_version"] == EXPORT_FORMAT_VERSION and meta["model"] == SMALL_MODEL
    name = FeatureVariant(*VARIANT).function_name(12)
    assert meta["functions"] == ["forward", "forward_features", name]
    assert meta["feature_variants"] == [
        {"function": name, "layer_idx": 10, "norm": True, "strip_cls_token": True}]
    blob = (t16_artifact / "weights.bin").read_bytes()
    assert len(blob) == meta["weights_nbytes"]
    assert zlib.crc32(blob) == meta["weights_crc32"]
    raw = (t16_artifact / "metadata.json").read_bytes()
    assert zlib.crc32(raw[:raw.rindex(b'"metadata_crc32"')]) == meta[METADATA_CHECKSUM_KEY]


def test_the_model_table_is_pythons(pe_infer):
    done = run_pe_infer(pe_infer, "--list-models")
    assert done.returncode == 0
    table = json.loads(done.stdout)
    assert table == {name: asdict(config) for name, config in pe_port.PE_VISION_CONFIG.items()}


def test_ctest_passes(cpp_build):
    done = subprocess.run(["ctest", "--output-on-failure"], cwd=cpp_build, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- what goes wrong is said clearly, with exit code 2 and no output file -----------------------

def copy_artifact(artifact, tmp_path):
    return shutil.copytree(artifact, tmp_path / "artifact")


def edit_metadata(folder, change, seal=True):
    """Change the metadata as a tamperer would; sealed again (a new checksum) unless `seal` is
    False, so that the checks behind the checksum are reached."""
    meta = json.loads((folder / "metadata.json").read_text())
    change(meta)
    meta.pop(METADATA_CHECKSUM_KEY, None)
    (folder / "metadata.json").write_text(seal_metadata(meta) if seal else json.dumps(meta))


def expect_error(pe_infer, args, message, out):
    done = run_pe_infer(pe_infer, *args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("pe_infer: error: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not out.exists()


def test_missing_or_incomplete_artifact(pe_infer, t16_artifact, pixels, tmp_path):
    out = tmp_path / "o.npy"
    expect_error(pe_infer, [tmp_path / "nothing", pixels, out], "is not a folder", out)
    art = copy_artifact(t16_artifact, tmp_path)
    (art / "weights.bin").unlink()
    expect_error(pe_infer, [art, pixels, out], "weights.bin is missing", out)


@pytest.mark.parametrize("damage, message", [
    ("truncate_weights", "truncated or from another export"),
    ("flip_weight_byte", "are corrupt: their CRC-32"),
    ("truncate_library", "model.so is corrupt: its CRC-32"),
    ("truncate_library_resealed", "model.so is truncated or corrupt"),
    ("text_library_resealed", "model.so is not a shared library"),
    ("no_library_crc", "library_crc32 is missing"),
    ("edited_mean", "is corrupt or was edited: its CRC-32 does not match"),
    ("no_checksum", "has no checksum (metadata_crc32)"),
    ("key_after_checksum", "does not end with its checksum"),
    ("bad_json", "is not valid JSON"),
    ("format_version", f"has format version {EXPORT_FORMAT_VERSION + 1}; this pe_infer reads "
                       f"version {EXPORT_FORMAT_VERSION}"),
    ("unknown_model", "which pe_infer does not know"),
    ("wrong_config", "config differs: width 384 (expected 192)"),
    ("missing_field", "params is missing"),
    ("deep_json", "nests deeper than 16 levels"),
    ("huge_json", "bytes; pe-port writes under"),
    ("infinite_std", "mean and std must be finite numbers"),
    ("huge_image_size", "preprocess.image_size is over 4096"),
    ("repeated_param", "appears twice"),
])
def test_corrupt_artifact(pe_infer, t16_artifact, pixels, tmp_path, damage, message):
    art = copy_artifact(t16_artifact, tmp_path)
    weights, library = art / "weights.bin", art / "model.so"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "flip_weight_byte":
        blob = bytearray(weights.read_bytes())
        blob[len(blob) // 2] ^= 0x40
        weights.write_bytes(bytes(blob))
    elif damage.startswith("truncate_library"):
        library.write_bytes(library.read_bytes()[:5000])
    elif damage == "text_library_resealed":
        library.write_text("not a library")
    elif damage == "no_library_crc":
        edit_metadata(art, lambda m: m.pop("library_crc32"))
    elif damage == "edited_mean":  # a hand edit that keeps the old checksum
        text = (art / "metadata.json").read_text()
        (art / "metadata.json").write_text(text.replace('"mean": [', '"mean": [9, ', 1))
    elif damage == "no_checksum":
        edit_metadata(art, lambda m: None, seal=False)
    elif damage == "key_after_checksum":  # a key the checksum would not cover
        text = (art / "metadata.json").read_text().rstrip().removesuffix("}")
        (art / "metadata.json").write_text(text + ', "dtype": "float16"}')
    elif damage == "bad_json":
        (art / "metadata.json").write_text('{"format_version": 1, "model": ')
    elif damage == "format_version":
        edit_metadata(art, lambda m: m.update(format_version=EXPORT_FORMAT_VERSION + 1))
    elif damage == "unknown_model":
        edit_metadata(art, lambda m: m.update(model="PE-Core-X99"))
    elif damage == "wrong_config":
        edit_metadata(art, lambda m: m["config"].update(width=384))
    elif damage == "missing_field":
        edit_metadata(art, lambda m: m.pop("params"))
    elif damage == "deep_json":  # the JSON parser recursed once per level: a stack overflow
        (art / "metadata.json").write_text("[" * 20000 + "]" * 20000)
    elif damage == "huge_json":
        (art / "metadata.json").write_text('{"pad": "' + "x" * (5 << 20) + '"}')
    elif damage == "infinite_std":  # written as `Infinity`, which TVM's JSON parser accepts
        edit_metadata(art, lambda m: m["preprocess"].update(std=[0.5, float("inf"), 0.5]))
    elif damage == "huge_image_size":  # pe_infer allocated for it: std::bad_alloc, exit 1
        edit_metadata(art, lambda m: m["preprocess"].update(image_size=16 * 100_000))
    elif damage == "repeated_param":
        edit_metadata(art, lambda m: m["params"].insert(1, m["params"][0]))
    if damage.endswith("_resealed"):  # a metadata sealed again over another library
        crc = zlib.crc32(library.read_bytes())
        edit_metadata(art, lambda m: m.update(library_crc32=crc))
    out = tmp_path / "o.npy"
    expect_error(pe_infer, [art, pixels, out], message, out)


def test_bad_inputs(pe_infer, t16_artifact, tmp_path):
    out = tmp_path / "o.npy"
    cases = {
        "f64.npy": (random_images(1, 32, 32, 0).astype(np.float64), "has dtype float64"),
        "rank3.npy": (random_images(1, 32, 32, 0)[0], "must have shape (N, 3, H, W)"),
        "gray.npy": (random_images(1, 32, 32, 0)[:, :1], "must have shape (N, 3, H, W)"),
        "odd.npy": (random_images(1, 40, 32, 0), "is not a multiple of the patch size 16"),
        "nan.npy": (np.full((1, 3, 32, 32), np.nan, np.float32), "contain NaN or Inf"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        expect_error(pe_infer, [t16_artifact, tmp_path / name, out], message, out)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    expect_error(pe_infer, [t16_artifact, tmp_path / "bad.png", out], "cannot read image", out)
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 8)
    expect_error(pe_infer, [t16_artifact, tmp_path / "cut.jpg", out], "cannot read image", out)
    (tmp_path / "a.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    expect_error(pe_infer, [t16_artifact, tmp_path / "a.gif", out], "not a PNG or JPEG", out)
    expect_error(pe_infer, [t16_artifact, tmp_path / "none.png", out], "does not exist", out)


def test_images_past_the_pixel_limit_are_refused_before_decoding(pe_infer, t16_artifact,
                                                                 tmp_path):
    """A few hundred bytes declaring 4.3 gigapixels (issue 12: 12.6 GB for a 782-byte JPEG),
    and a 1 x 20000 strip whose centre-crop resize would be 384 x 7.7 million (9 GB)."""
    out = tmp_path / "o.npy"
    limit = "more than the 100000000 pe_infer reads"
    (tmp_path / "bomb.png").write_bytes(png_declaring(65_500, 65_500))
    (tmp_path / "bomb.jpg").write_bytes(jpeg_declaring(65_500, 65_500))
    for name in ("bomb.png", "bomb.jpg"):
        expect_error(pe_infer, [t16_artifact, tmp_path / name, out], limit, out)
    Image.new("RGB", (1, 20_000)).save(tmp_path / "strip.png")
    expect_error(pe_infer, [t16_artifact, tmp_path / "strip.png", out, "--center-crop"],
                 "resized for the centre crop", out)
    assert MAX_IMAGE_PIXELS == 100_000_000  # the two front ends state the same limit


def jpeg_declaring(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) says `width x height`."""
    data = bytearray(valid_image("JPEG"))
    at = 2  # after the start-of-image marker, walk the segments to the baseline frame header
    while data[at + 1] != 0xC0:
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    data[at + 5:at + 9] = struct.pack(">HH", height, width)  # after length and precision
    return bytes(data)


def test_a_fifo_is_refused_not_waited_on(pe_infer, t16_artifact, tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    out = tmp_path / "o.npy"
    expect_error(pe_infer, [t16_artifact, fifo, out], "is not a regular file", out)


def test_truncated_image(pe_infer, t16_artifact, photo, tmp_path):
    out = tmp_path / "o.npy"
    for name in ("photo.png", "photo.jpg"):
        data = (photo / name).read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[: len(data) // 2])
        expect_error(pe_infer, [t16_artifact, cut, out], f"cannot read image {cut}", out)


def test_unwritable_output(pe_infer, t16_artifact, pixels, tmp_path):
    expect_error(pe_infer, [t16_artifact, pixels, tmp_path / "no" / "o.npy"], "does not exist",
                 tmp_path / "no" / "o.npy")
    expect_error(pe_infer, [t16_artifact, pixels, tmp_path / "o.txt"], "must be a file name "
                 "ending with .npy", tmp_path / "o.txt")
    # A folder that is a file: unwritable for root too (a read-only folder is not, for root).
    (tmp_path / "file").write_text("not a folder")
    expect_error(pe_infer, [t16_artifact, pixels, tmp_path / "file" / "o.npy"],
                 "is not a folder", tmp_path / "file" / "o.npy")


def test_usage_errors(pe_infer, t16_artifact, pixels, tmp_path):
    out = tmp_path / "o.npy"
    expect_error(pe_infer, [t16_artifact, pixels], "expected ARTIFACT_DIR INPUT OUTPUT.npy", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--norm"], "add --features", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--features", "--layer-idx", "12"],
                 "--layer-idx 12 is out of range", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--device", "cuda"],
                 "was compiled for cpu", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--threads", "0"], "--threads needs", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--threads", "100000"],
                 "--threads 100000 is more than this machine's", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--center-crop"], "applies to images", out)
    expect_error(pe_infer, [t16_artifact, pixels, out, "--fast"], "unknown option --fast", out)


# ---- `pe-port export --features-variant` ---------------------------------------------------------

def test_cli_export_adds_feature_variants(t16_checkpoint, t16_artifact, tmp_path):
    from pe_port.cli import main

    out = tmp_path / "art"
    layer_idx, norm, strip = VARIANT
    spec = ",".join([str(layer_idx)] + ["norm"] * norm + ["strip"] * strip)
    assert main(["export", SMALL_MODEL, "--checkpoint", str(t16_checkpoint), "-o", str(out),
                 f"--features-variant={spec}", "--features-variant", "-1"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    expected = json.loads((t16_artifact / "metadata.json").read_text())
    assert meta["functions"] == expected["functions"]  # "-1" is the default forward_features
    assert (out / "weights.bin").read_bytes() == (t16_artifact / "weights.bin").read_bytes()


@pytest.mark.parametrize("spec", ["x", "1,norm,norm", "1,strip,bold", ""])
def test_cli_export_rejects_malformed_variants(t16_checkpoint, tmp_path, capsys, spec):
    from pe_port.cli import main

    out = tmp_path / "art"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", SMALL_MODEL, "--checkpoint", str(t16_checkpoint), "-o", str(out),
              f"--features-variant={spec}"])
    assert exit_info.value.code == 2 and not out.exists()
    assert "--features-variant" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["12", "-13"])
def test_cli_export_rejects_layers_the_model_lacks(t16_checkpoint, tmp_path, capsys, spec):
    from pe_port.cli import main

    out = tmp_path / "art"
    assert main(["export", SMALL_MODEL, "--checkpoint", str(t16_checkpoint), "-o", str(out),
                 f"--features-variant={spec}"]) == 2
    assert "layer_idx must be an integer in [-12, 11]" in capsys.readouterr().err
    assert not out.exists()
