"""The official image transform: resize, RGB, [0, 1], normalise with mean 0.5 and std 0.5.

The official pipeline is torchvision's `Resize` (which calls Pillow for PIL images) followed by
`ToTensor` and `Normalize`; this does the same steps with Pillow and NumPy alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pe_port.errors import ImageError

MEAN = 0.5
STD = 0.5



def load_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot read image {path}: {err}") from None


def resize(image: Image.Image, size: int, center_crop: bool = False) -> Image.Image:
    """Squash to `size x size`, or resize the shorter side to `size` and crop the centre."""
    if not center_crop:
        return image.resize((size, size), Image.BILINEAR)
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    image = image.resize((new_w, new_h), Image.BILINEAR)
    # torchvision's CenterCrop rounds the offsets to the nearest pixel.
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> np.ndarray:
    """RGB, scaled to [0, 1], normalised, `[3, H, W]` float32."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1).copy()


def preprocess(
    images: list[str | Path | Image.Image], size: int, center_crop: bool = False
) -> np.ndarray:
    """Images (paths or PIL images) to the `[N, 3, size, size]` float32 batch the tower takes."""
    loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
    return np.stack([to_tensor(resize(im, size, center_crop)) for im in loaded])
