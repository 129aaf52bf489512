"""The public Python API: `pe_port.load(name)` gives an encoder that behaves like the original."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pe_port.checkpoint import (
    CheckpointError,
    cached_checkpoint,
    download_checkpoint,
    read_vision_weights,
)
from pe_port.compile import DTYPES, cached_build, resolve_target
from pe_port.config import PEConfig, get_config
from pe_port.errors import UserError
from pe_port.preprocess import MEAN, STD, preprocess
from pe_port.runtime import CompiledTower, WeightError, to_numpy_dtype

# Bumped whenever the layout of an exported directory changes; the C++ runner checks it.
EXPORT_FORMAT_VERSION = 1


def stderr_progress(message: str) -> None:
    print(f"pe-port: {message}", file=sys.stderr, flush=True)


class Encoder:
    """A compiled PE vision tower with its weights: call it like the official module."""

    def __init__(self, name: str, config: PEConfig, tower: CompiledTower) -> None:
        self.name = name
        self.config = config
        self.tower = tower

    @property
    def dtype(self) -> str:
        return self.tower.dtype

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """`(N, 3, H, W)` float32 pre-processed pixels -> what the official `forward` returns."""
        return self.tower(images)

    def forward_features(
        self,
        images: np.ndarray,
        layer_idx: int = -1,
        norm: bool = False,
        strip_cls_token: bool = False,
    ) -> np.ndarray:
        """The tokens after block `layer_idx`, as the official `forward_features` returns them."""
        return self.tower.forward_features(images, layer_idx, norm, strip_cls_token)

    def preprocess(self, paths: Sequence[str | Path], center_crop: bool = False) -> np.ndarray:
        return preprocess(list(paths), self.config.image_size, center_crop)

    def encode_images(self, paths: Sequence[str | Path], center_crop: bool = False) -> np.ndarray:
        """Pre-process image files with the official transform and run `forward`."""
        return self(self.preprocess(paths, center_crop))

    def export(self, out_dir: str | Path) -> Path:
        """Write library, weights and metadata for the C++ runner; all or nothing."""
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            self._write_artifact(staging)
            _replace_dir(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return out_dir

    def _write_artifact(self, folder: Path) -> None:
        self.tower.executable.export_library(str(folder / "model.so"))
        np_dtype = to_numpy_dtype(self.dtype)
        entries, offset = [], 0
        with open(folder / "weights.bin", "wb") as blob:
            for (name, shape), value in zip(self.tower.param_specs, self.tower.params_numpy(),
                                            strict=True):
                data = np.ascontiguousarray(value.astype(np_dtype)).tobytes()
                blob.write(data)
                entries.append({"name": name, "shape": list(shape), "offset": offset,
                                "nbytes": len(data)})
                offset += len(data)
        metadata = {
            "format_version": EXPORT_FORMAT_VERSION,
            "model": self.name,
            "config": asdict(self.config),
            "dtype": self.dtype,
            "target": str(self.tower.target),
            "functions": ["forward", "forward_features"],
            "preprocess": {"image_size": self.config.image_size, "resize": "bilinear",
                           "mean": [MEAN] * 3, "std": [STD] * 3, "layout": "NCHW"},
            "params": entries,
        }
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move a finished directory into place, replacing an older one only once it is complete."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def checkpoint_path(name: str, checkpoint: str | Path | None) -> Path:
    """The given checkpoint, else the cached or freshly downloaded official one."""
    if checkpoint is not None:
        return Path(checkpoint)
    return Path(cached_checkpoint(name) or download_checkpoint(name))


def load(
    name: str,
    checkpoint: str | Path | None = None,
    target: str | dict = "cpu",
    dtype: str = "float32",
    progress: Callable[[str], None] | None = stderr_progress,
) -> Encoder:
    """Load an official PE vision model, compiled for `target` ("cpu", "cuda" or a TVM dict).

    `checkpoint` is a `.pt` / `.safetensors` path, or None for the official file from the
    Hugging Face hub (its cache; `HF_HUB_OFFLINE=1` uses the cache only). Compiled libraries
    are cached on disk, so a second `load` of the same model does not recompile.
    """
    config = get_config(name)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {DTYPES}")
    resolved = resolve_target(target)
    path = checkpoint_path(name, checkpoint)
    weights = read_vision_weights(path)
    try:
        tower = CompiledTower(config, resolved, dtype, weights,
                              compile_fn=lambda mod, t: cached_build(mod, t, progress))
    except WeightError as err:
        raise CheckpointError(f"checkpoint {path} does not fit {name}: {err}") from None
    return Encoder(name, config, tower)
