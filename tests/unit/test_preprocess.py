"""The pre-processing equals the official transform, redone independently here step by step."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pe_port.preprocess import ImageError, load_image, preprocess


def independent_transform(image: Image.Image, size: int, center_crop: bool) -> np.ndarray:
    """torchvision's Resize -> convert("RGB") -> ToTensor -> Normalize(0.5, 0.5), by hand."""
    w, h = image.size
    if center_crop:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_size = (size, new_long) if w <= h else (new_long, size)
        image = image.resize(new_size, resample=Image.Resampling.BILINEAR)
        top = int(round((image.size[1] - size) / 2.0))
        left = int(round((image.size[0] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), resample=Image.Resampling.BILINEAR)
    chw = np.array(image.convert("RGB")).astype(np.float64).transpose(2, 0, 1) / 255.0
    return ((chw - 0.5) / 0.5).astype(np.float32)


def drawn_image(seed: int, width: int, height: int, mode: str) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    width=st.integers(8, 90),
    height=st.integers(8, 90),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P"]),
    size=st.sampled_from([16, 32, 48]),
    center_crop=st.booleans(),
)
def test_preprocess_equals_the_official_steps(seed, width, height, mode, size, center_crop,
                                              tmp_path_factory):
    image = drawn_image(seed, width, height, mode)
    path = tmp_path_factory.mktemp("img") / "image.png"
    image.save(path)
    got = preprocess([path], size, center_crop)
    want = independent_transform(Image.open(path), size, center_crop)
    assert got.shape == (1, 3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, atol=1e-6)  # float32 rounding of the same steps


def test_batch_stacks_in_the_given_order(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 10), colour).save(paths[-1])
    batch = preprocess(paths, 16)
    assert batch.shape == (2, 3, 16, 16)
    assert batch[0, 0].min() == 1.0 and batch[1, 2].min() == 1.0 and batch[0, 2].max() == -1.0


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        load_image(path)


def test_package_preprocess_stays_the_function():
    """`pe_port.preprocess` is the function even after its module is imported by name (a lazy
    attribute of the package was once replaced by the module `pe_port.preprocess`)."""
    import importlib

    import pe_port

    importlib.import_module("pe_port.preprocess")
    importlib.import_module("pe_port.runtime")
    assert pe_port.preprocess is preprocess
