"""The Python API and the `pe-port` CLI do what the README says, and refuse bad input cleanly.

Model: PE-Core-T16-384 with seeded random weights in an official-format file, run at small
image sizes (the compiled module takes any multiple of the patch) to keep the suite quick.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm
from PIL import Image

import pe_port
from pe_port.artifact import FORMAT_VERSION
from pe_port.cli import main
from tests.conftest import SMALL_MODEL, T16_VARIANT
from tests.helpers import random_images, rel_error
from tests.unit.test_checkpoint import put_in_hub_cache

# The API against the float64 reference: a whole model, fp32 (see tests/parity).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def encoder(t16_checkpoint):
    return pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint)


@pytest.fixture(scope="module")
def reference_tower(t16_state_dict):
    import reference

    tower = reference.VisionTransformer(**pe_port.get_config(SMALL_MODEL).as_kwargs())
    tower.load_state_dict(t16_state_dict, strict=True)
    return tower.double().eval()


def reference_run(tower, images, **features):
    with torch.no_grad():
        x = torch.from_numpy(images).double()
        return (tower.forward_features(x, **features) if features else tower(x)).numpy()


def test_load_and_call_match_the_reference(encoder, reference_tower):
    images = random_images(2, 64, 48, seed=3)
    assert rel_error(encoder(images), reference_run(reference_tower, images)) <= TOLERANCE


def test_forward_features_options_match_the_reference(encoder, reference_tower):
    images = random_images(1, 32, 64, seed=4)
    options = dict(zip(("layer_idx", "norm", "strip_cls_token"), T16_VARIANT, strict=True))
    got = encoder.forward_features(images, **options)
    assert rel_error(got, reference_run(reference_tower, images, **options)) <= TOLERANCE


def test_second_load_uses_the_compiled_library_on_disk(t16_checkpoint, encoder):
    messages = []
    pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=messages.append)
    assert not any("compiling" in m for m in messages)


def test_load_without_checkpoint_uses_the_hub_cache(isolated_caches, t16_checkpoint, encoder):
    put_in_hub_cache(isolated_caches / "hub", SMALL_MODEL, t16_checkpoint.read_bytes())
    from_hub = pe_port.load(SMALL_MODEL)
    images = random_images(1, 32, 32, seed=5)
    np.testing.assert_array_equal(from_hub(images), encoder(images))


def test_encode_images_preprocesses_then_runs_forward(encoder, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (50, 30), (10, 200, 30)).save(path)
    expected = encoder(pe_port.preprocess([path], encoder.config.image_size))
    np.testing.assert_array_equal(encoder.encode_images([path]), expected)


def test_export_writes_library_weights_and_metadata(encoder, tmp_path, t16_state_dict):
    out = encoder.export(tmp_path / "artifact")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"] == SMALL_MODEL and meta["format_version"] == FORMAT_VERSION
    assert (out / "model.so").stat().st_size > 0
    blob = (out / "weights.bin").read_bytes()
    first = meta["params"][0]
    stored = np.frombuffer(blob[first["offset"]: first["offset"] + first["nbytes"]], np.float32)
    np.testing.assert_array_equal(stored.reshape(first["shape"]),
                                  t16_state_dict[first["name"]].numpy())


# ---- CLI -------------------------------------------------------------------------------------

def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pixels_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "pixels.npy"
    np.save(path, random_images(2, 48, 32, seed=9))
    return path


def test_cli_encode_npy_equals_the_api(encoder, t16_checkpoint, pixels_npy, tmp_path):
    out = tmp_path / "emb.npy"
    assert run_cli("encode", SMALL_MODEL, "--checkpoint", t16_checkpoint,
                   "--input", pixels_npy, "--output", out) == 0
    np.testing.assert_array_equal(np.load(out), encoder(np.load(pixels_npy)))


def test_cli_features_pass_every_option(encoder, t16_checkpoint, pixels_npy, tmp_path):
    out = tmp_path / "tokens.npy"
    assert run_cli("encode", SMALL_MODEL, "--checkpoint", t16_checkpoint, "--input",
                   pixels_npy, "--output", out, "--features", "--layer-idx", "10", "--norm",
                   "--strip-cls") == 0
    want = encoder.forward_features(np.load(pixels_npy), layer_idx=10, norm=True,
                                    strip_cls_token=True)
    np.testing.assert_array_equal(np.load(out), want)


def test_cli_encode_a_folder_of_images(encoder, t16_checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40 + i, 30), (i * 90, 20, 200)).save(folder / f"{i}.png")
    out = tmp_path / "emb.npy"
    assert run_cli("encode", SMALL_MODEL, "--checkpoint", t16_checkpoint,
                   "--input", folder, "--output", out) == 0
    assert np.load(out).shape == (2, 512)


def test_cli_list_shows_every_model(capsys):
    assert run_cli("list") == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in pe_port.MODEL_NAMES)


def npy(tmp_path, array, name="bad.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


BAD_INPUTS = {
    "unknown model": (dict(model="PE-Core-X1"), "unknown model.*PE-Core-T16-384"),
    "size not a multiple of the patch": (dict(pixels=random_images(1, 40, 32, 0)),
                                         "not a multiple of the patch size 16"),
    "wrong rank": (dict(pixels=np.zeros((3, 32, 32), np.float32)), r"shape \(N, 3, H, W\)"),
    "wrong channels": (dict(pixels=np.zeros((1, 4, 32, 32), np.float32)), r"\(N, 3, H, W\)"),
    "wrong dtype": (dict(pixels=np.zeros((1, 3, 32, 32), np.float64)), "float64"),
    "NaN": (dict(pixels=np.full((1, 3, 32, 32), np.nan, np.float32)), "NaN or Inf"),
    "Inf": (dict(pixels=np.full((1, 3, 32, 32), np.inf, np.float32)), "NaN or Inf"),
    "missing checkpoint": (dict(checkpoint="missing.pt"), "does not exist"),
    "truncated checkpoint": (dict(checkpoint="truncated"), "corrupt, truncated"),
    "corrupt checkpoint": (dict(checkpoint="corrupt"), "corrupt, truncated"),
    "checkpoint of another model": (dict(model="PE-Core-S16-384"), "does not fit"),
    "unreadable image": (dict(image=b"GIF89a broken"), "cannot read image"),
    "unwritable output": (dict(output="no/such/dir/out.npy"), "does not exist"),
}
if not tvm.cuda(0).exist:
    BAD_INPUTS["cuda without a GPU"] = (dict(args=["--target", "cuda"]), "needs a CUDA GPU")
if platform.machine() != "aarch64":  # before a compile: its library could not load here
    BAD_INPUTS["aarch64 on another CPU"] = (dict(args=["--target", "aarch64"]),
                                            "another CPU architecture.*export works")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input_exits_2_with_one_clear_line(case, t16_checkpoint, tmp_path, capsys):
    change, message = BAD_INPUTS[case]
    checkpoint = {"truncated": lambda: _damaged(tmp_path, t16_checkpoint, half=True),
                  "corrupt": lambda: _damaged(tmp_path, t16_checkpoint, half=False)}.get(
        change.get("checkpoint"), lambda: change.get("checkpoint", t16_checkpoint))()
    if "image" in change:
        source = tmp_path / "broken.png"
        source.write_bytes(change["image"])
    else:
        source = npy(tmp_path, change.get("pixels", random_images(1, 32, 32, 0)))
    output = tmp_path / change.get("output", "out.npy")
    code = run_cli("encode", change.get("model", SMALL_MODEL), "--checkpoint", checkpoint,
                   "--input", source, "--output", output, *change.get("args", []))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pe-port: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    if output.parent.exists():
        assert not output.exists() and not list(output.parent.glob(".out.npy*"))
    else:
        assert not output.parent.parent.exists()  # no folder was made on the way either


def _damaged(tmp_path, checkpoint, half: bool):
    path = tmp_path / ("truncated.pt" if half else "corrupt.pt")
    data = checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2] if half else b"\x00garbage" * 100)
    return path


@pytest.mark.parametrize("module", ["pe_port.cli", "pe_port"])
def test_cli_process_prints_no_traceback(module, tmp_path):
    """Both `python -m pe_port.cli` and `python -m pe_port` are the `pe-port` command."""
    result = subprocess.run(
        [sys.executable, "-m", module, "encode", "PE-Nope", "--input", "x.npy",
         "--output", str(tmp_path / "o.npy")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown model" in result.stderr


# ---- export never deletes what it did not write -----------------------------------------------

def _user_folder(tmp_path):
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "chapters" / "one.txt").write_text("chapter one")
    return folder


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"")
                  for p in folder.rglob("*"))


@pytest.mark.parametrize("kind", ["folder", "file", "symlink", "cwd"])
def test_cli_export_refuses_to_replace_what_is_not_an_artifact(
        kind, t16_checkpoint, tmp_path, capsys, monkeypatch):
    folder = _user_folder(tmp_path)
    target = {"folder": folder, "file": folder / "thesis.txt", "cwd": ".",
              "symlink": tmp_path / "link"}[kind]
    if kind == "symlink":
        target.symlink_to(folder)
    if kind == "cwd":
        monkeypatch.chdir(folder)
    before = _tree(tmp_path)
    code = run_cli("export", SMALL_MODEL, "--checkpoint", t16_checkpoint, "-o", target)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pe-port: error: ") and len(err.splitlines()) == 1, err
    assert _tree(tmp_path) == before  # untouched, and nothing (no .old, no staging) added


def test_export_replaces_an_older_artifact_and_leaves_nothing_behind(encoder, tmp_path):
    old_umask = os.umask(0o022)
    try:
        first = encoder.export(tmp_path / "artifact")
        (tmp_path / "empty").mkdir()
        encoder.export(tmp_path / "empty")  # an empty folder is filled
        (first / "weights.bin").write_bytes(b"stale")
        second = encoder.export(tmp_path / "artifact")
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "empty"]
    assert (second / "weights.bin").read_bytes() != b"stale"
    assert stat.S_IMODE(second.stat().st_mode) == 0o755  # the user's umask, not mkdtemp's 0700


def test_cli_encode_output_gets_the_users_umask(encoder, t16_checkpoint, pixels_npy, tmp_path):
    old_umask = os.umask(0o022)
    try:
        out = tmp_path / "emb.npy"
        assert run_cli("encode", SMALL_MODEL, "--checkpoint", t16_checkpoint,
                       "--input", pixels_npy, "--output", out) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0600
