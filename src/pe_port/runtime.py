"""`Encoder`: one compiled PE vision tower with its weights, callable like the original module;
for PE-Core models also the text tower (`TextTower`), compiled at its first use, and zero-shot.

The library comes from the compile cache (`cache.py`), keyed without building the graph, so a
warm `pe_port.load` is a hash, a `dlopen` and the weight upload. The weights reach the device
when the encoder first runs: an encoder for a target this machine cannot run (CUDA on a
machine without a GPU) still exports its artifact.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from pe_port.artifact import (
    DEFAULT_FEATURES,
    FeatureVariant,
    TextExport,
    check_feature_variants,
    extra_variants,
    transform_function_name,
    write_artifact,
)
from pe_port.backends import for_target
from pe_port.config import PEConfig, PETextConfig
from pe_port.errors import (
    CheckpointError,
    DeviceError,
    ImageError,
    InputError,
    UserError,
    WeightError,
)
from pe_port.preprocess import MEAN, STD, preprocess
from pe_port.threads import configure_tvm_threads

Progress = Callable[[str], None] | None
# Texts per call of the text tower: bounded memory for thousands of labels.
TEXT_BATCH = 64


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


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (the original's `F.normalize(x, dim=-1)`)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def cached_library(config, dtype: str, variants: tuple[FeatureVariant, ...],
                   target: tvm.target.Target, build: Callable[[], relax.VMExecutable],
                   progress: Progress, what: str) -> Path:
    """The library of a tower from the compile cache (`cache.py`), `build()` on a miss."""
    from pe_port import cache
    from pe_port.build import export_options, target_arch

    key = cache.cache_key(config, dtype, variants, str(target), for_target(target).name)
    options = export_options(target)  # a missing cross linker fails before a compile
    platform_name = target_arch(target) if options else target.kind.name
    return cache.get_or_build(key, lambda path: build().export_library(str(path), **options),
                              progress, what=f"{what} for {platform_name}")


class TextTower:
    """The compiled text tower of a PE-Core model with its weights: token ids -> embeddings.

    Compiled (or taken from the compile cache) and put on the device at its first call.
    """

    def __init__(self, name: str, config: PETextConfig, target: tvm.target.Target, dtype: str,
                 weights: Mapping[str, np.ndarray], progress: Progress = None) -> None:
        from pe_port.build import text_param_specs

        self.name = name
        self.config = config
        self.target = target
        self.dtype = dtype
        self.param_specs = text_param_specs(config, dtype)
        check_weights(self.param_specs, weights)
        self._weights = {n: np.asarray(weights[n], dtype=np.float32) for n, _ in self.param_specs}
        self._progress = progress
        self._run_forward: Callable | None = None

    def library(self) -> Path:
        from pe_port.build import build_text_tower

        return cached_library(self.config, self.dtype, (), self.target,
                              lambda: build_text_tower(self.config, self.dtype, self.target),
                              self._progress, f"{self.name} text tower")

    def _forward(self, device: tvm.runtime.Device) -> Callable:
        if self._run_forward is None:
            vm = relax.VirtualMachine(
                relax.VMExecutable(tvm.runtime.load_module(str(self.library()))), device)
            np_dtype = to_numpy_dtype(self.dtype)
            params = [tvm.runtime.tensor(self._weights[n].astype(np_dtype), device)
                      for n, _ in self.param_specs]
            packed = list(vm[transform_function_name("forward")](params))
            self._run_forward = lambda ids: vm["forward"](tvm.runtime.tensor(ids, device),
                                                          *packed)
        return self._run_forward

    def __call__(self, ids: np.ndarray, device: tvm.runtime.Device) -> np.ndarray:
        """Ids `(N, L)` as `pe_port.tokenizer.tokenize` gives them -> `(N, output_dim)`, what the
        original's `encode_text` returns (not normalised)."""
        ids = self.check_ids(ids)
        # Causal attention: nothing after the last end-of-text id changes a pooled row, so
        # the padding past it is not run.
        ids = ids[:, : int(ids.argmax(axis=1).max()) + 1].astype(np.int32)
        forward = self._forward(device)
        return np.concatenate([forward(ids[i:i + TEXT_BATCH]).numpy().astype(np.float32)
                               for i in range(0, len(ids), TEXT_BATCH)])

    def params_as(self, np_dtype) -> list[tuple[str, np.ndarray]]:
        """`(name, weight)` in the order `forward` takes them, in `np_dtype` (for export)."""
        return [(n, self._weights[n].astype(np_dtype)) for n, _ in self.param_specs]

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        context, vocab = self.config.context_length, self.config.vocab_size
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or not ids.size:
            raise InputError(f"token ids must be a non-empty integer array (N, L), got "
                             f"{ids.dtype} {ids.shape}")
        if ids.shape[1] > context:
            raise InputError(f"token ids have length {ids.shape[1]}; the context of "
                             f"{self.name} is {context}")
        if ids.min() < 0 or ids.max() >= vocab:
            raise InputError(f"token ids must lie in [0, {vocab})")
        return ids


class Encoder:
    """A compiled PE vision tower with its weights: call it like the official module.

    `__call__` is `forward`, `forward_features` takes the official options; each
    `forward_features` variant other than the default is compiled (or taken from the cache) on
    first use. Build one with `pe_port.load`.
    """

    def __init__(self, name: str, config: PEConfig, target: tvm.target.Target, dtype: str,
                 weights: Mapping[str, np.ndarray], progress: Progress = None,
                 text_config: PETextConfig | None = None,
                 text_weights: Callable[[], Mapping[str, np.ndarray]] | None = None) -> None:
        """`text_weights` reads the text tower's weights and `logit_scale` when text is first
        asked for (a PE-Core checkpoint holds both towers); None for vision-only models."""
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
        self.text_config = text_config
        self._read_text_weights = text_weights
        self._text: TextTower | None = None
        self._logit_scale: float | None = None

    # ---- libraries --------------------------------------------------------------------------
    def library(self, variants: Sequence[FeatureVariant] = ()) -> Path:
        """The compiled library holding `forward`, `forward_features` and `variants`: from the
        compile cache, built on a miss."""
        from pe_port.build import build_tower

        variants = tuple(variants)
        return cached_library(
            self.config, self.dtype, variants, self.target,
            lambda: build_tower(self.config, self.dtype, self.target, variants),
            self._progress, self.name)

    @property
    def device(self) -> tvm.runtime.Device:
        """Where the encoder runs; checked on first use (exporting does not need it). Sizes
        TVM's thread pool first (`threads.py`): it is sized once, at the first kernel."""
        if self._device is None:
            from pe_port.build import runs_here, target_arch

            if not runs_here(self.target):
                raise DeviceError(f"target {target_arch(self.target)} is another CPU "
                                  f"architecture than this {platform.machine()} machine's; "
                                  "export works (a cross-compile), running needs that CPU")
            configure_tvm_threads()
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
        device = self.device  # first: a library for another CPU is never loaded
        library = self.library(variants)
        vm = relax.VirtualMachine(
            relax.VMExecutable(tvm.runtime.load_module(str(library))), device)
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

    def encode_images(self, paths: Sequence[str | Path], center_crop: bool = False,
                      batch_size: int | None = None) -> np.ndarray:
        """Pre-process image files with the official transform and run `forward`, in batches
        (`encode_folder`): the memory held is the embeddings and a few batches of pixels."""
        paths = list(paths)
        if not paths:
            raise ImageError("no images given")
        return np.concatenate([embeddings for _, embeddings in self.encode_folder(
            paths, batch_size=batch_size, center_crop=center_crop)])

    def encode_folder(self, inputs: str | Path | Sequence[str | Path],
                      batch_size: int | None = None, recursive: bool = False,
                      center_crop: bool = False, on_error: str = "raise",
                      skipped: list[tuple[Path, str]] | None = None,
                      workers: int | None = None) -> Iterator[tuple[list[Path], np.ndarray]]:
        """`(paths, embeddings)` per batch of images, in order: `forward` of the image files of
        `inputs` (a folder, or files and folders; `recursive` also takes sub-folders).

        Threads decode the next images while the model runs; memory stays flat however many
        images there are. `batch_size` defaults to the target's (`streaming.py`). An
        unreadable image raises `ImageError`, or with `on_error="skip"` is left out and
        appended with its error to `skipped` (a batch where none was readable is not yielded).
        """
        from pe_port.streaming import default_batch_size, embedded_batches, list_images

        items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        batches = embedded_batches(
            self, list_images(items, recursive), self.config.image_size, center_crop,
            batch_size or default_batch_size(self.target.kind.name), on_error, workers)
        for batch in batches:
            if skipped is not None:
                skipped.extend(batch.failures)
            if batch.embeddings is not None:
                yield batch.paths, batch.embeddings

    # ---- text and zero-shot (PE-Core) -----------------------------------------------------
    @property
    def text(self) -> TextTower:
        """The text tower: its weights read, checked (and compiled) at the first use."""
        if self._text is None:
            if self.text_config is None:
                raise UserError(f"{self.name} has no text tower; only PE-Core models do")
            if self._read_text_weights is None:
                raise UserError(f"no checkpoint with a text tower was given for {self.name}")
            from pe_port.checkpoint import LOGIT_SCALE

            weights = dict(self._read_text_weights())
            scale = np.asarray(weights.pop(LOGIT_SCALE, np.nan), dtype=np.float64)
            if scale.size != 1 or not np.isfinite(scale).all():
                raise WeightError(f"{LOGIT_SCALE} must be one finite number, got {scale!r}")
            self._text = TextTower(self.name, self.text_config, self.target, self.dtype,
                                   weights, self._progress)
            self._logit_scale = float(scale.reshape(()))
        return self._text

    @property
    def logit_scale(self) -> float:
        """`logit_scale.exp()` of the checkpoint: the factor of the image-text logits."""
        self.text  # noqa: B018  reads the checkpoint's text side
        return float(np.exp(self._logit_scale))

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """The official tokenizer's ids `(N, context_length)`; a text too long for the context is
        cut as the original cuts it, with a warning naming it."""
        from pe_port.tokenizer import tokenize_with_truncation

        if self.text_config is None:
            raise UserError(f"{self.name} has no text tower; only PE-Core models do")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no texts given")
        ids, truncated = tokenize_with_truncation(texts, self.text_config.context_length)
        for i in truncated:
            warnings.warn(f"text {i} ({texts[i][:40]!r}...) is longer than the "
                          f"{self.text_config.context_length}-token context of {self.name}; "
                          "truncated as the original does", stacklevel=2)
        return ids

    def encode_text(self, texts: str | Sequence[str], normalize: bool = False) -> np.ndarray:
        """Texts -> `(N, output_dim)`, the original's `encode_text`; in batches of TEXT_BATCH."""
        ids = self.tokenize(texts)
        embeddings = self.text(ids, self.device)
        return normalized(embeddings) if normalize else embeddings

    def encode_video(self, frames: np.ndarray, normalize: bool = False) -> np.ndarray:
        """Frames `(B, T, 3, H, W)` -> `(B, output_dim)`: the mean of the frames' embeddings,
        each normalised first when `normalize` (the mean is not normalised again), as the
        original's `encode_video`."""
        frames = np.asarray(frames)
        if frames.ndim != 5:
            raise InputError(f"video frames must have shape (B, T, 3, H, W), got {frames.shape}")
        batch, steps = frames.shape[:2]
        embeddings = self(np.ascontiguousarray(frames.reshape(batch * steps, *frames.shape[2:])))
        if normalize:
            embeddings = normalized(embeddings)
        return embeddings.reshape(batch, steps, -1).mean(axis=1)

    def label_embeddings(self, labels: Sequence[str],
                         templates: Sequence[str] | None = None) -> np.ndarray:
        """One unit vector per label: the normalised embeddings of its prompts (each template
        with `{}` replaced by the label; the label alone without templates) averaged, then
        normalised again, as zero-shot benchmarks of CLIP models do."""
        labels = list(labels)
        templates = list(templates) if templates else ["{}"]
        if not labels or any(not str(label).strip() for label in labels):
            raise InputError("labels must be a non-empty list of non-empty texts")
        prompts = [template.replace("{}", label) for label in labels for template in templates]
        embeddings = self.encode_text(prompts, normalize=True)
        return normalized(embeddings.reshape(len(labels), len(templates), -1).mean(axis=1))

    def zero_shot(self, images: np.ndarray | Sequence[str | Path], labels: Sequence[str],
                  templates: Sequence[str] | None = None, center_crop: bool = False
                  ) -> np.ndarray:
        """Probabilities `(N images, N labels)`: softmax over labels of
        `logit_scale.exp() * image @ label.T` with both sides normalised. `images` are
        pre-processed pixels `(N, 3, H, W)` or image files."""
        label_embeddings = self.label_embeddings(labels, templates)  # bad labels fail first
        image_embeddings = normalized(self(images) if isinstance(images, np.ndarray)
                                      else self.encode_images(images, center_crop))
        return softmax(self.logit_scale * image_embeddings @ label_embeddings.T)

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

        A PE-Core model whose checkpoint holds the text tower also exports it, with the
        tokenizer's merges and tables (`TextExport`); other models and vision-only checkpoints
        give a vision-only artifact.
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
            text=self._text_export(np_dtype),
        )

    def _text_export(self, np_dtype) -> TextExport | None:
        """The text side of the artifact; None without a text tower in model or checkpoint."""
        from pe_port.tokenizer import find_vocab

        if self.text_config is None or self._read_text_weights is None:
            return None
        try:
            tower = self.text
        except CheckpointError:  # a vision-only file (the vision side read it already)
            return None
        return TextExport(library=tower.library(), config=tower.config,
                          params=tower.params_as(np_dtype),
                          logit_scale=self._logit_scale, vocab=find_vocab())
