"""The public Python API: `pe_port.load(name)` gives an encoder that behaves like the original."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pe_port.checkpoint import (
    cached_checkpoint,
    download_checkpoint,
    read_text_weights,
    read_vision_weights,
)
from pe_port.config import DTYPES, PE_TEXT_CONFIG, get_config
from pe_port.errors import CheckpointError, UserError, WeightError
from pe_port.runtime import Encoder


def stderr_progress(message: str) -> None:
    print(f"pe-port: {message}", file=sys.stderr, flush=True)


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
    arch: str | None = None,
    require_device: bool = True,
    feature_variants: Sequence = (),
) -> Encoder:
    """Load an official PE model, compiled for `target` ("cpu", "cuda" or a TVM dict).

    PE-Core models also embed text (`encode_text`, `zero_shot`): their text tower is read from
    the same checkpoint and compiled when first used.

    `checkpoint` is a `.safetensors` or `.pt` path (a `.pt` needs PyTorch), or None for the
    official file from the Hugging Face hub (its cache; `HF_HUB_OFFLINE=1` uses the cache only).
    Compiled libraries are cached on disk: a second `load` of the same model neither builds the
    graph nor compiles. `arch` picks the GPU generation of a CUDA target ("sm_87", "sm_90").
    `require_device=False` gives an encoder for a target this machine cannot run, for `export`.
    `feature_variants`, `(layer_idx, norm, strip_cls_token)` triples, are compiled into the
    same library as `forward` (one compile, not one per variant at its first call).
    """
    from pe_port.build import resolve_target

    config = get_config(name)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {DTYPES}")
    resolved = resolve_target(target, arch)
    path = checkpoint_path(name, checkpoint)
    weights = read_vision_weights(path)
    try:
        encoder = Encoder(name, config, resolved, dtype, weights, progress,
                          text_config=PE_TEXT_CONFIG.get(name),
                          text_weights=lambda: read_text_weights(path))
    except WeightError as err:
        raise CheckpointError(f"checkpoint {path} does not fit {name}: {err}") from None
    if require_device:
        encoder.device  # noqa: B018  fails before a compile on a machine without the device
        encoder.prepare(feature_variants)
    return encoder
