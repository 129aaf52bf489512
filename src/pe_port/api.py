"""The public Python API: `pe_port.load(name)` gives an encoder that behaves like the original."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tvm

from pe_port import __version__
from pe_port.checkpoint import (
    CheckpointError,
    cached_checkpoint,
    download_checkpoint,
    read_vision_weights,
)
from pe_port.compile import (
    DTYPES,
    build,
    cached_build,
    export_tower,
    features_function_name,
    resolve_target,
)
from pe_port.config import PEConfig, get_config
from pe_port.errors import UserError
from pe_port.preprocess import MEAN, STD, preprocess
from pe_port.runtime import CompiledTower, WeightError, to_numpy_dtype

# Bumped whenever the layout of an exported directory changes; the C++ runner checks it.
EXPORT_FORMAT_VERSION = 2  # 2: one weight transform per function (`<name>_transform_params`)


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

    def export(
        self,
        out_dir: str | Path,
        feature_variants: Sequence[tuple[int, bool, bool]] = (),
        progress: Callable[[str], None] | None = stderr_progress,
    ) -> Path:
        """Write library, weights and metadata for the C++ runner; all or nothing.

        The library always holds `forward` and the default `forward_features`. Each
        `(layer_idx, norm, strip_cls_token)` in `feature_variants` (the arguments of
        `forward_features`, in its order) adds that variant, compiled afresh (or from the cache).
        """
        variants = check_feature_variants(feature_variants, self.config.layers)
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            self._write_artifact(staging, variants, progress)
            _replace_dir(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return out_dir

    def _write_artifact(
        self,
        folder: Path,
        variants: tuple[tuple[int, bool, bool], ...] = (),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        layers = self.config.layers
        names = {features_function_name(norm, idx, strip, layers): (idx, norm, strip)
                 for idx, norm, strip in variants}
        names.pop("forward_features", None)  # the default variant is always there
        target = self.tower.target
        mod, specs = export_tower(
            self.config, self.dtype, target=target,
            feature_variants=tuple((norm, idx, strip) for idx, norm, strip in names.values()))
        if specs != self.tower.param_specs:
            raise RuntimeError("feature variants changed the parameter list")  # a bug
        executable = cached_build(mod, target, progress) if names else self.tower.executable
        if any(lib.kind == "library" for lib in executable.mod.imports):
            # The compile cache hands back libraries loaded from disk, whose machine code TVM
            # cannot export again: compile the same module afresh for the artifact.
            if progress:
                progress(f"compiling {self.name} for the artifact")
            executable = build(mod, target)
        executable.export_library(str(folder / "model.so"))
        library_crc = zlib.crc32((folder / "model.so").read_bytes())
        np_dtype = to_numpy_dtype(self.dtype)
        entries, offset, crc = [], 0, 0
        with open(folder / "weights.bin", "wb") as blob:
            for (name, shape), value in zip(self.tower.param_specs, self.tower.params_numpy(),
                                            strict=True):
                data = np.ascontiguousarray(value.astype(np_dtype)).tobytes()
                blob.write(data)
                crc = zlib.crc32(data, crc)
                entries.append({"name": name, "shape": list(shape), "offset": offset,
                                "nbytes": len(data)})
                offset += len(data)
        metadata = {
            "format_version": EXPORT_FORMAT_VERSION,
            "model": self.name,
            "config": asdict(self.config),
            "dtype": self.dtype,
            "target": str(self.tower.target),
            "tvm_version": tvm.__version__,
            "pe_port_version": __version__,
            "functions": ["forward", "forward_features", *names],
            "feature_variants": [
                {"function": name, "layer_idx": (layers + idx) % layers, "norm": norm,
                 "strip_cls_token": strip}
                for name, (idx, norm, strip) in names.items()
            ],
            "preprocess": {"image_size": self.config.image_size, "resize": "bilinear",
                           "mean": [MEAN] * 3, "std": [STD] * 3, "layout": "NCHW"},
            "weights_nbytes": offset,
            "weights_crc32": crc,
            "library_crc32": library_crc,
            "params": entries,
        }
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))


def check_feature_variants(
    variants: Sequence[tuple[int, bool, bool]], layers: int
) -> tuple[tuple[int, bool, bool], ...]:
    """`(layer_idx, norm, strip_cls_token)` triples, checked; `layer_idx` in [-layers, layers)."""
    checked = []
    for variant in variants:
        if not (isinstance(variant, tuple | list) and len(variant) == 3):
            raise UserError(f"feature variant {variant!r} is not (layer_idx, norm, strip_cls)")
        idx, norm, strip = variant
        if isinstance(idx, bool) or not isinstance(idx, int) or not -layers <= idx < layers:
            raise UserError(f"feature variant {variant!r}: layer_idx must be an integer in "
                            f"[{-layers}, {layers - 1}] (the model has {layers} blocks)")
        if not (isinstance(norm, bool) and isinstance(strip, bool)):
            raise UserError(f"feature variant {variant!r}: norm and strip_cls must be booleans")
        checked.append((idx, norm, strip))
    return tuple(checked)


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
