"""`Encoder`: one compiled PE vision tower with its weights, callable like the original module.

The library comes from the compile cache (`cache.py`), keyed without building the graph, so a
warm `pe_port.load` is a hash, a `dlopen` and the weight upload. The weights reach the device
when the encoder first runs: an encoder for a target this machine cannot run (CUDA on a
machine without a GPU) still exports its artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from pe_port.artifact import (
    DEFAULT_FEATURES,
    FeatureVariant,
    check_feature_variants,
    extra_variants,
    transform_function_name,
    write_artifact,
)
from pe_port.backends import for_target
from pe_port.config import PEConfig
from pe_port.errors import DeviceError, InputError, WeightError
from pe_port.preprocess import MEAN, STD, preprocess

Progress = Callable[[str], None] | None


def check_weights(
    expected: list[tuple[str, tuple[int, ...]]], weights: Mapping[str, np.ndarray]
) -> None:
    """Every expected key present with its shape, finite, and no other key; the error names
    every problem."""
    problems = []
    expected_names = {name for name, _ in expected}
    missing = [name for name, _ in expected if name not in weights]
    unexpected = sorted(set(weights) - expected_names)
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for name, shape in expected:
        if name in weights and tuple(weights[name].shape) != shape:
            problems.append(
                f"{name} has shape {tuple(weights[name].shape)}, the config needs {shape}"
            )
    if problems:
        raise WeightError("weights do not match the config: " + "; ".join(problems))
    not_finite = [name for name, _ in expected if not np.isfinite(weights[name]).all()]
    if not_finite:
        raise WeightError(f"weights hold NaN or Inf: {', '.join(not_finite)}")


def check_images(images: np.ndarray, config: PEConfig) -> np.ndarray:
    """Validate `[N, 3, H, W]` float32 pixels, H and W multiples of the patch, all finite."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.float32:
        raise InputError(f"images must be float32, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must have shape (N, 3, H, W), got {images.shape}")
    patch = config.patch_size
    n, _, height, width = images.shape
    if n == 0 or height == 0 or width == 0:
        raise InputError(f"images must not be empty, got shape {images.shape}")
    if height % patch or width % patch:
        raise InputError(
            f"image size {height}x{width} is not a multiple of the patch size {patch}"
        )
    if not np.isfinite(images).all():
        raise InputError("images contain NaN or Inf")
    return images


def to_numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


class Encoder:
    """A compiled PE vision tower with its weights: call it like the official module.

    `__call__` is `forward`, `forward_features` takes the official options; each
    `forward_features` variant other than the default is compiled (or taken from the cache) on
    first use. Build one with `pe_port.load`.
    """

    def __init__(self, name: str, config: PEConfig, target: tvm.target.Target, dtype: str,
                 weights: Mapping[str, np.ndarray], progress: Progress = None) -> None:
        from pe_port.build import param_specs

        self.name = name
        self.config = config
        self.target = target
        self.dtype = dtype
        self.param_specs = param_specs(config, dtype)
        check_weights(self.param_specs, weights)
        self._weights = {n: np.asarray(weights[n], dtype=np.float32) for n, _ in self.param_specs}
        self._progress = progress
        self._device: tvm.runtime.Device | None = None
        self._params: list | None = None
        # Exported function name -> its VM, and the weights in the layout it reads.
        self._vms: dict[str, relax.VirtualMachine] = {}
        self._packed: dict[str, list] = {}

    # ---- libraries --------------------------------------------------------------------------
    def library(self, variants: Sequence[FeatureVariant] = ()) -> Path:
        """The compiled library holding `forward`, `forward_features` and `variants`: from the
        compile cache, built on a miss."""
        from pe_port import cache

        variants = tuple(variants)
        backend = for_target(self.target)
        key = cache.cache_key(self.config, self.dtype, variants, str(self.target), backend.name)

        def write(path: Path) -> None:
            from pe_port.build import build_tower

            build_tower(self.config, self.dtype, self.target, variants).export_library(str(path))

        return cache.get_or_build(key, write, self._progress,
                                  what=f"{self.name} for {self.target.kind.name}")

    @property
    def device(self) -> tvm.runtime.Device:
        """Where the encoder runs; checked on first use (exporting does not need it)."""
        if self._device is None:
            device = for_target(self.target).device(self.target)
            if not device.exist:
                kind = self.target.kind.name
                wanted = "CUDA GPU" if kind == "cuda" else f"{kind} device"
                raise DeviceError(f"target {kind} needs a {wanted} and this machine has none "
                                  "visible (export works without one: a cross-compile)")
            self._device = device
        return self._device

    def prepare(self, feature_variants: Sequence = ()) -> Encoder:
        """Compile or load `forward`, the default `forward_features` and each
        `(layer_idx, norm, strip_cls_token)` of `feature_variants`, all in one library, and
        put the weights on the device: now, not at the first call (what `pe_port.load` does).

        One library for every variant a program will call compiles once; variants first met
        at a call each compile a library of their own.
        """
        layers = self.config.layers
        self._open_library(extra_variants(check_feature_variants(feature_variants, layers),
                                          layers))
        self._function(DEFAULT_FEATURES, "forward")
        return self

    def _open_library(self, variants: tuple[FeatureVariant, ...]) -> None:
        """Load the library of `variants` and serve each function it holds that no library
        opened earlier serves; nothing to do (no hash, no load) when all are served."""
        names = ["forward", "forward_features"]
        names += [variant.function_name(self.config.layers) for variant in variants]
        if all(name in self._vms for name in names):
            return
        library = self.library(variants)
        vm = relax.VirtualMachine(
            relax.VMExecutable(tvm.runtime.load_module(str(library))), self.device)
        for name in names:
            self._vms.setdefault(name, vm)

    def _function(self, variant: FeatureVariant, name: str):
        if name not in self._vms:
            self._open_library(extra_variants([variant], self.config.layers))
        if name not in self._packed:
            if self._params is None:
                np_dtype = to_numpy_dtype(self.dtype)
                self._params = [tvm.runtime.tensor(self._weights[n].astype(np_dtype),
                                                   self.device) for n, _ in self.param_specs]
            transform = self._vms[name][transform_function_name(name)]
            self._packed[name] = list(transform(self._params))
        vm, packed = self._vms[name], self._packed[name]
        return lambda x: vm[name](x, *packed)

    # ---- running ----------------------------------------------------------------------------
    def _run(self, variant: FeatureVariant, name: str, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.config)
        function = self._function(variant, name)
        x = tvm.runtime.tensor(images.astype(to_numpy_dtype(self.dtype)), self.device)
        return function(x).numpy().astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """`(N, 3, H, W)` float32 pre-processed pixels -> what the official `forward` returns."""
        return self._run(DEFAULT_FEATURES, "forward", images)

    def forward_features(self, images: np.ndarray, layer_idx: int = -1, norm: bool = False,
                         strip_cls_token: bool = False) -> np.ndarray:
        """The tokens after block `layer_idx`, as the official `forward_features` returns them."""
        (variant,) = check_feature_variants([(layer_idx, norm, strip_cls_token)],
                                            self.config.layers)
        return self._run(variant, variant.function_name(self.config.layers), images)

    def preprocess(self, paths: Sequence[str | Path], center_crop: bool = False) -> np.ndarray:
        return preprocess(list(paths), self.config.image_size, center_crop)

    def encode_images(self, paths: Sequence[str | Path], center_crop: bool = False) -> np.ndarray:
        """Pre-process image files with the official transform and run `forward`."""
        return self(self.preprocess(paths, center_crop))

    # ---- export -----------------------------------------------------------------------------
    def export(self, out_dir: str | Path, feature_variants: Sequence = (),
               progress: Progress = None) -> Path:
        """Write library, weights and metadata for the C++ runner (`artifact.py`); all or
        nothing, and never over anything but an earlier artifact.

        The library always holds `forward` and the default `forward_features`; each
        `(layer_idx, norm, strip_cls_token)` in `feature_variants` adds that variant. The
        library is copied from the compile cache, not compiled again; the target's device is
        not needed (CUDA artifacts are built on machines without a GPU). `progress` hears
        of a compile, if one is needed (default: what `load` was given).
        """
        import tvm as _tvm

        from pe_port import __version__
        from pe_port.artifact import check_export_destination

        layers = self.config.layers
        variants = extra_variants(check_feature_variants(feature_variants, layers), layers)
        check_export_destination(Path(out_dir).absolute())  # before a compile, not after
        np_dtype = to_numpy_dtype(self.dtype)
        if progress is not None:
            self._progress = progress
        return write_artifact(
            Path(out_dir),
            library=self.library(variants),
            model=self.name,
            config=self.config,
            dtype=self.dtype,
            target=str(self.target),
            versions={"tvm_version": _tvm.__version__, "pe_port_version": __version__},
            variants=variants,
            params=[(n, self._weights[n].astype(np_dtype)) for n, _ in self.param_specs],
            preprocess={"image_size": self.config.image_size, "resize": "bilinear",
                        "mean": [MEAN] * 3, "std": [STD] * 3, "layout": "NCHW"},
        )
