"""A tower that compiles in seconds, for tests of what happens around the model (batches,
files, memory, Ray) where the model itself is not the subject; and small images to feed it.

Free of PyTorch (unlike `tests/helpers.py`): subprocesses and Ray workers import it cheaply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pe_port.config import PEConfig

# At the native size of the T16 models, so that one decoded image is as large as theirs
# (3 x 384 x 384 float32 = 1.7 MB): holding every image of a folder would show. Patches of 32
# (144 tokens) halve the model's time per image against 16.
TINY_CONFIG = PEConfig(patch_size=32, width=32, layers=1, heads=2, mlp_ratio=2.0,
                       output_dim=16, image_size=384, use_cls_token=True, attn_pooler_heads=2)


def tiny_encoder(seed: int = 0, progress=None):
    """An `Encoder` of TINY_CONFIG with seeded random weights, for this CPU; compiled once per
    compile cache ($PE_PORT_CACHE: once per test session)."""
    from pe_port.build import param_specs, resolve_target
    from pe_port.runtime import Encoder

    rng = np.random.default_rng(seed)
    weights = {name: (0.1 * rng.standard_normal(shape)).astype(np.float32)
               for name, shape in param_specs(TINY_CONFIG, "float32")}
    return Encoder("tiny", TINY_CONFIG, resolve_target("cpu"), "float32", weights, progress)


def write_images(folder: Path, count: int, start: int = 0, suffix: str = ".png",
                 size: tuple[int, int] = (40, 30)) -> list[Path]:
    """`count` small distinct images `folder/img-00000.png`, ...; their paths in name order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), np.uint8)
        paths.append(folder / f"img-{i:05d}{suffix}")
        Image.fromarray(pixels).save(paths[-1])
    return paths
