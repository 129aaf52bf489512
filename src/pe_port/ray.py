"""Embedding on a Ray cluster (`pip install 'pe-port[ray]'`).

`EmbedBatch` is a callable class for `ray.data.Dataset.map_batches`: each actor loads the
compiled model once (from the compile cache, compiling on a miss) and embeds batches of image
paths (column `path`) or pre-processed pixels (column `pixels`):

    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(EmbedBatch, fn_constructor_kwargs={"model": "PE-Core-B16-224"},
                        batch_size=8, compute=ray.data.ActorPoolStrategy(size=4), num_cpus=2)

`ray_batches` is what `pe-port encode --ray ADDRESS` runs: the same job, its results streamed
back in input order to the driver, which writes them as a local run does (`outputs.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pe_port.errors import UserError
from pe_port.streaming import Batch, check_batching, embedded_batches

# Threads of one CPU actor: TVM's pool in the actor gets as many (Ray sets OMP_NUM_THREADS to
# an actor's CPUs, and `threads.py` reads it). Two keep a batch's matmuls parallel while
# leaving room for more actors, each decoding its own images.
CPUS_PER_ACTOR = 2
# The driver's settings that decide which model an actor loads and where it finds it.
FORWARDED_VARIABLES = ("PE_PORT_CACHE", "PE_PORT_BPE_VOCAB", "HF_HOME", "HF_HUB_CACHE",
                       "HF_HUB_OFFLINE")


class EmbedBatch:
    """`map_batches` callable: `{"path": [...]}` or `{"pixels": (N, 3, H, W)}` in,
    `{"path", "embedding", "error"}` (paths) or `{"embedding"}` (pixels) out.

    An unreadable image raises (`on_error="raise"`), or gets a zero embedding and its error
    (`"skip"`; `error` is "" for the others). `features=(layer_idx, norm, strip_cls_token)`
    gives `forward_features` instead of `forward`. The other arguments are `pe_port.load`'s:
    `checkpoint` must be readable on every node (or None: each node's hub cache).
    """

    def __init__(self, model: str, checkpoint: str | None = None, target: str = "cpu",
                 dtype: str = "float32", arch: str | None = None, center_crop: bool = False,
                 on_error: str = "raise", features: Sequence | None = None) -> None:
        from pe_port.api import load

        check_batching(1, on_error)
        self.encoder = load(model, checkpoint, target, dtype, progress=None, arch=arch)
        self.center_crop = center_crop
        self.on_error = on_error
        self.features = tuple(features) if features is not None else None
        self.row_shape: tuple[int, ...] | None = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if self.features is None:
            return self.encoder(pixels)
        layer_idx, norm, strip_cls_token = self.features
        return self.encoder.forward_features(pixels, layer_idx=layer_idx, norm=norm,
                                             strip_cls_token=strip_cls_token)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "pixels" in batch:
            return {"embedding": self.run(np.ascontiguousarray(batch["pixels"], np.float32))}
        paths = [Path(str(path)) for path in batch["path"]]
        (result,) = embedded_batches(self.run, paths, self.encoder.config.image_size,
                                     self.center_crop, max(1, len(paths)), self.on_error)
        return {"path": np.array([str(path) for path in paths]),
                "embedding": self.rows_with_zeros(result),
                "error": np.array([error or "" for _, error in result.entries])}

    def rows_with_zeros(self, batch: Batch) -> np.ndarray:
        """One row per input: its embedding, or zeros for one left out (every batch of a
        column needs the same shape, even one where no image could be read)."""
        embedded = np.array([error is None for _, error in batch.entries])
        if batch.embeddings is not None:
            self.row_shape = batch.embeddings.shape[1:]
        elif self.row_shape is None:  # learn the shape from a blank image, once
            size = self.encoder.config.image_size
            self.row_shape = self.run(np.zeros((1, 3, size, size), np.float32)).shape[1:]
        rows = np.zeros((len(embedded), *self.row_shape), np.float32)
        if batch.embeddings is not None:
            rows[embedded] = batch.embeddings
        return rows


def connect(address: str) -> None:
    """Join the cluster at `address` ("auto": the one this machine belongs to; "local": a
    new one-machine instance), passing on the settings that pick the model."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'pe-port[ray]'") from None
    env = {name: os.environ[name] for name in FORWARDED_VARIABLES if name in os.environ}
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address,
                     runtime_env={"env_vars": env}, log_to_driver=False,
                     include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot join the Ray cluster at {address}: "
                            f"{str(err).splitlines()[0]}") from None


def ray_batches(address: str, paths: Sequence[Path], embed_options: dict, batch_size: int,
                actors: int | None = None, gpus_per_actor: float = 0.0) -> Iterator[Batch]:
    """Embed `paths` with `EmbedBatch(**embed_options)` actors on the cluster at `address`;
    `Batch`es of at most `batch_size` inputs in input order, as `embedded_batches` gives
    them locally. `actors` defaults to the cluster's CPUs (GPUs) per actor."""
    import ray
    import ray.data

    connect(address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in the order of the index
    context.enable_progress_bars = False  # the driver shows its own
    resources = ray.cluster_resources()
    if actors is None:
        actors = (int(resources.get("GPU", 0) // gpus_per_actor) if gpus_per_actor
                  else int(resources.get("CPU", 1) // CPUS_PER_ACTOR))
    dataset = ray.data.from_items([{"path": str(path)} for path in paths])
    embedded = dataset.map_batches(
        EmbedBatch, fn_constructor_kwargs=embed_options, batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
        num_cpus=0 if gpus_per_actor else CPUS_PER_ACTOR, num_gpus=gpus_per_actor)
    for result in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
        entries = [(Path(str(path)), str(error) or None)
                   for path, error in zip(result["path"], result["error"], strict=True)]
        rows = np.array([error is None for _, error in entries])
        yield Batch(entries, result["embedding"][rows] if rows.any() else None)
