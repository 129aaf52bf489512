"""A compiled tower with its weights on a device, callable like the original module."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tvm
from tvm import relax

from pe_port.compile import (
    build,
    export_tower,
    features_function_name,
    is_gpu,
    transform_function_name,
)
from pe_port.config import PEConfig
from pe_port.errors import UserError
from pe_port.threads import configure_tvm_threads

configure_tvm_threads()  # before the first kernel: TVM sizes its pool only once


class InputError(UserError):
    """Input the tower cannot take (wrong rank, channels, size, dtype, or non-finite values)."""


class DeviceError(UserError):
    """The target's device is not on this machine."""


class WeightError(UserError):
    """Weights that do not fit the config: missing, unexpected or wrongly shaped keys."""


def check_weights(
    expected: list[tuple[str, tuple[int, ...]]], weights: Mapping[str, np.ndarray]
) -> None:
    """Every expected key present with its shape and no other key; the error names them all."""
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


class CompiledTower:
    """`forward` and `forward_features` of one config, compiled for one target and dtype."""

    def __init__(
        self,
        config: PEConfig,
        target: tvm.target.Target,
        dtype: str,
        weights: Mapping[str, np.ndarray],
        executable: relax.VMExecutable | None = None,
        compile_fn: Callable[[tvm.IRModule, tvm.target.Target], relax.VMExecutable] = build,
    ) -> None:
        self.config = config
        self.target = target
        self.dtype = dtype
        self._compile = compile_fn
        self.device = tvm.cuda(0) if is_gpu(target) else tvm.cpu(0)
        if not self.device.exist:  # before compiling: that takes a while
            raise DeviceError(f"target {target.kind.name} needs a CUDA GPU and this machine has "
                              "none visible (TVM cross-compiles for CUDA without one: "
                              "pe_port.compile.build)")
        mod, self.param_specs = export_tower(config, dtype, target=target)
        check_weights(self.param_specs, weights)
        self.executable = executable if executable is not None else compile_fn(mod, target)
        np_dtype = to_numpy_dtype(dtype)
        self._params = [
            tvm.runtime.tensor(np.asarray(weights[name], dtype=np.float32).astype(np_dtype),
                               self.device)
            for name, _ in self.param_specs
        ]
        # Exported function name -> the VM that holds it, and the weights in the layout it
        # reads (packed on first use; `forward` now, so its first call is not slower).
        self._vms: dict[str, relax.VirtualMachine] = {}
        self._weights: dict[str, list] = {}
        self._load(self.executable, ["forward", "forward_features"])
        self._packed_weights("forward")

    def _load(self, executable: relax.VMExecutable, names: list[str]) -> None:
        vm = relax.VirtualMachine(executable, self.device)
        for name in names:
            self._vms[name] = vm

    def _packed_weights(self, name: str) -> list:
        """The weights as function `name` takes them: its `<name>_transform_params` run once."""
        if name not in self._weights:
            transform = self._vms[name][transform_function_name(name)]
            self._weights[name] = list(transform(self._params))
        return self._weights[name]

    def _function(self, name: str, variant: tuple[bool, int, bool] | None):
        if name not in self._vms:
            mod, _ = export_tower(self.config, self.dtype, feature_variants=(variant,),
                                  target=self.target)
            self._load(self._compile(mod, self.target), [name])
        vm, weights = self._vms[name], self._packed_weights(name)
        return lambda x: vm[name](x, *weights)

    def params_numpy(self) -> list[np.ndarray]:
        """The weights as stored on the device, in the order of `param_specs`."""
        return [param.numpy() for param in self._params]

    def check_images(self, images: np.ndarray) -> np.ndarray:
        return check_images(images, self.config)

    def _run(self, name: str, images: np.ndarray, variant=None) -> np.ndarray:
        images = self.check_images(images)
        x = tvm.runtime.tensor(images.astype(to_numpy_dtype(self.dtype)), self.device)
        out = self._function(name, variant)(x)
        return out.numpy().astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """What the official `forward` returns."""
        return self._run("forward", images)

    def forward_features(
        self,
        images: np.ndarray,
        layer_idx: int = -1,
        norm: bool = False,
        strip_cls_token: bool = False,
    ) -> np.ndarray:
        """What the official `forward_features` returns (tokens of block `layer_idx`)."""
        layers = self.config.layers
        name = features_function_name(norm, layer_idx, strip_cls_token, layers)
        return self._run(name, images, variant=(norm, layer_idx, strip_cls_token))
