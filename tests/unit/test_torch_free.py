"""A deployment needs no PyTorch: with `torch` blocked from import, `pe-port list`, `encode` and
`export` from a `.safetensors` checkpoint work, and a `.pt` one is a clear error that says what
to do (install the extra, or `pe-port convert`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pe_port.cli import main
from tests.conftest import SMALL_MODEL
from tests.helpers import random_images

# Run as `python -c`: a meta-path finder that refuses torch, then the CLI.
BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
from pe_port.cli import main
code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
sys.exit(code)
"""


def cli_without_torch(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *map(str, argv)],
                          capture_output=True, text=True, check=False, timeout=900)


@pytest.fixture(scope="module")
def safetensors_checkpoint(t16_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "t16.safetensors"
    assert main(["convert", str(t16_checkpoint), str(out)]) == 0
    return out


def test_list_needs_no_torch():
    result = cli_without_torch("list")
    assert result.returncode == 0, result.stderr
    assert SMALL_MODEL in result.stdout and "M" in result.stdout


def test_encode_and_export_from_safetensors_need_no_torch(safetensors_checkpoint, t16_checkpoint,
                                                          tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, random_images(1, 32, 48, seed=3))
    out = tmp_path / "emb.npy"
    result = cli_without_torch("encode", SMALL_MODEL, "--checkpoint", safetensors_checkpoint,
                               "--input", pixels, "--output", out)
    assert result.returncode == 0, result.stderr
    with_torch = tmp_path / "with_torch.npy"
    assert main(["encode", SMALL_MODEL, "--checkpoint", str(t16_checkpoint), "--input",
                 str(pixels), "--output", str(with_torch)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(with_torch))
    result = cli_without_torch("export", SMALL_MODEL, "--checkpoint", safetensors_checkpoint,
                               "-o", tmp_path / "artifact")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "artifact" / "model.so").is_file()


def test_a_pt_checkpoint_without_torch_says_what_to_do(t16_checkpoint, tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, random_images(1, 32, 32, seed=4))
    result = cli_without_torch("encode", SMALL_MODEL, "--checkpoint", t16_checkpoint,
                               "--input", pixels, "--output", tmp_path / "o.npy")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs PyTorch" in result.stderr and "pe-port convert" in result.stderr


def test_convert_keeps_every_vision_tensor(safetensors_checkpoint, t16_state_dict):
    from safetensors.numpy import load_file

    converted = load_file(str(safetensors_checkpoint))
    assert converted.keys() == t16_state_dict.keys()
    for name, value in t16_state_dict.items():
        np.testing.assert_array_equal(converted[name], value.numpy())
