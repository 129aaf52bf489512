"""`pe-port demo`: compile PE-Core-T16-384 for this CPU, run it on the shipped sample image, and
compare it with the PyTorch reference (agreement and time of each)."""

from __future__ import annotations

import statistics
import sys
import time
from importlib import resources

import numpy as np
import torch

from pe_port.api import checkpoint_path
from pe_port.checkpoint import CheckpointError, read_vision_weights
from pe_port.compile import cpu_target
from pe_port.config import get_config
from pe_port.preprocess import preprocess
from pe_port.runtime import CompiledTower
from reference import VisionTransformer, randomize_

MODEL = "PE-Core-T16-384"
SEED = 0


def _median_ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def official_weights() -> dict[str, np.ndarray] | None:
    """The official weights from the hub cache or a download; None when neither works."""
    try:
        return read_vision_weights(checkpoint_path(MODEL, None))
    except CheckpointError:
        return None


def run_demo(out=sys.stdout) -> float:
    """Run the demo; returns the relative error between TVM and the PyTorch reference."""
    config = get_config(MODEL)
    reference = VisionTransformer(**config.as_kwargs()).eval()
    weights = official_weights()
    if weights is None:
        print(f"model: {MODEL}  weights: seeded random (seed {SEED}), NOT the official weights "
              "(they are not cached and cannot be downloaded)", file=out)
        weights = {k: v.numpy() for k, v in randomize_(reference, SEED).state_dict().items()}
    else:
        print(f"model: {MODEL}  weights: official checkpoint", file=out)
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})

    sample = resources.files("pe_port") / "assets" / "sample.png"
    images = preprocess([str(sample)], config.image_size)
    print(f"input: {sample.name} -> {images.shape} float32", file=out)

    target = cpu_target()
    start = time.perf_counter()
    tower = CompiledTower(config, target, "float32", weights)
    print(f"compiled for {target.attrs.get('mcpu', 'generic CPU')} in "
          f"{time.perf_counter() - start:.1f} s", file=out)

    tvm_out = tower(images)
    with torch.no_grad():
        torch_out = reference(torch.from_numpy(images)).numpy()
    error = float(np.linalg.norm(tvm_out - torch_out) / np.linalg.norm(torch_out))
    cosine = float(np.sum(tvm_out * torch_out)
                   / (np.linalg.norm(tvm_out) * np.linalg.norm(torch_out)))
    first = [round(float(v), 4) for v in tvm_out[0, :4]]
    print(f"embedding: {tvm_out.shape}, first values {first}", file=out)
    print(f"agreement with the PyTorch reference: relative error {error:.2e}, "
          f"cosine {cosine:.8f}", file=out)

    with torch.no_grad():
        torch_ms = _median_ms(lambda: reference(torch.from_numpy(images)))
    tvm_ms = _median_ms(lambda: tower(images))
    print(f"time per image (median of 3, batch 1, fp32): TVM {tvm_ms:.1f} ms, "
          f"PyTorch eager {torch_ms:.1f} ms ({torch.get_num_threads()} threads)", file=out)
    return error
