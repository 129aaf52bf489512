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
# The largest image (width x height) read, checked from the file's header before decoding: a
# few hundred bytes of PNG or JPEG can declare gigapixels. The C++ runner states the same.
MAX_IMAGE_PIXELS = 100_000_000


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file; refuses non-regular files (a FIFO would block) and images over
    `MAX_IMAGE_PIXELS` before decoding them."""
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ImageError(f"image {path} {what}")
    try:
        with Image.open(path) as image:
            check_pixel_count(image.size, path)
            image.load()
            return image.copy()
    except Image.DecompressionBombError:  # Pillow's own limit, above ours: same answer
        raise ImageError(f"image {path} declares more than the {MAX_IMAGE_PIXELS:,} pixels "
                         "pe-port reads") from None
    except (OSError, ValueError, MemoryError) as err:
        raise ImageError(f"cannot read image {path}: {err}") from None


def check_pixel_count(size: tuple[int, int], what) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"image {what} is {width}x{height} pixels, more than the "
                         f"{MAX_IMAGE_PIXELS:,} pe-port reads")


def resize(image: Image.Image, size: int, center_crop: bool = False) -> Image.Image:
    """Squash to `size x size`, or resize the shorter side to `size` and crop the centre."""
    if not center_crop:
        return image.resize((size, size), Image.BILINEAR)
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    # The resize before the crop holds the whole shorter-side-scaled image: bound it too (a
    # 1 x 20000 strip would become 384 x 7.7 million).
    check_pixel_count((new_w, new_h), "resized for the centre crop")
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
    """Images (paths or PIL images) to the `[N, 3, size, size]` float32 batch the tower takes;
    one decoded image at a time is held."""
    if not images:
        raise ImageError("no images given")
    batch = np.empty((len(images), 3, size, size), np.float32)
    for i, image in enumerate(images):
        batch[i] = preprocess_one(image, size, center_crop)
    return batch


def preprocess_one(image: str | Path | Image.Image, size: int,
                   center_crop: bool = False) -> np.ndarray:
    """One image (a path or a PIL image) to the `[3, size, size]` float32 the tower takes."""
    loaded = image if isinstance(image, Image.Image) else load_image(image)
    return to_tensor(resize(loaded, size, center_crop))
