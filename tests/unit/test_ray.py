"""On a local Ray instance (`ray.init(num_cpus=2)`), `pe-port encode --ray` (`EmbedBatch`
actors) gives exactly the rows of the single-process run, in input order, unreadable images
included.

Ray starts once for the module (its start is most of the cost); skipped without Ray
(`pip install 'pe-port[ray]'`). Model: PE-Core-T16-384 with random weights, as .safetensors
(no PyTorch in the actors).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pe_port.cli import main
from tests.conftest import SMALL_MODEL
from tests.tiny_model import write_images

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pe-port[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance; its start time is printed (`-s`) for the record."""
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {name: os.environ[name] for name in
                                       ("PE_PORT_CACHE", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}})
    print(f"\nray.init: {time.monotonic() - started:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(t16_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "t16.safetensors"
    assert main(["convert", str(t16_checkpoint), str(path)]) == 0
    return path


def test_cli_ray_equals_the_local_run_in_input_order(local_ray, weights, tmp_path):
    images = write_images(tmp_path / "photos", 6)
    bad = tmp_path / "photos" / "img-00004.png"
    bad.write_bytes(b"not a png")  # in the middle of the second batch
    argv = ["encode", SMALL_MODEL, "--checkpoint", str(weights), "--quiet", "--batch-size", "3",
            "--on-error", "skip", "--input", str(tmp_path / "photos")]
    started = time.monotonic()
    assert main([*argv, "--output", str(tmp_path / "local.npy")]) == 0
    print(f"\nlocal run: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    assert main([*argv, "--output", str(tmp_path / "ray.npy"), "--ray", "local"]) == 0
    print(f"Ray run: {time.monotonic() - started:.1f} s")
    # Exact: every row is computed by the same library on the same pixels.
    np.testing.assert_array_equal(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "local.npy"))
    for index in ("paths", "errors"):
        assert (tmp_path / f"ray.{index}.txt").read_text() == (
            tmp_path / f"local.{index}.txt").read_text()
    assert (tmp_path / "ray.paths.txt").read_text().splitlines() == [
        str(p) for p in images if p != bad]
