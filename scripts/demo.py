"""`make demo`: load PE-Core-T16-384 for this CPU, run it on the shipped sample image, and compare
it with the PyTorch reference (agreement and time of each).

Uses the official weights when they are in the hub cache (or can be downloaded); otherwise
seeded random weights, and says so. Run from the repository: it imports `reference/` and
`bench/`, which the installed package does not ship.
"""

from __future__ import annotations

import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pe_port  # noqa: E402
from bench.measure import median_seconds, relative_error  # noqa: E402
from pe_port.api import checkpoint_path  # noqa: E402
from pe_port.checkpoint import read_vision_weights  # noqa: E402
from pe_port.errors import CheckpointError  # noqa: E402
from reference import VisionTransformer, randomize_  # noqa: E402

MODEL = "PE-Core-T16-384"
SEED = 0


def official_checkpoint() -> Path | None:
    """The official checkpoint from the hub cache or a download; None when neither works."""
    try:
        return checkpoint_path(MODEL, None)
    except CheckpointError as err:
        print(f"pe-port: {err}", file=sys.stderr)
        return None


def main(out=sys.stdout) -> float:
    """Run the demo; returns the relative error between TVM and the PyTorch reference."""
    config = pe_port.get_config(MODEL)
    reference = VisionTransformer(**config.as_kwargs()).eval()
    checkpoint = official_checkpoint()
    if checkpoint is None:
        print(f"model: {MODEL}  weights: seeded random (seed {SEED}), NOT the official weights "
              "(they are not cached and cannot be downloaded)", file=out)
        randomize_(reference, SEED)
        from safetensors.torch import save_file

        checkpoint = Path(tempfile.mkdtemp()) / "random.safetensors"
        save_file(reference.state_dict(), str(checkpoint))
    else:
        print(f"model: {MODEL}  weights: official checkpoint", file=out)
        weights = read_vision_weights(checkpoint)
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})

    sample = resources.files("pe_port") / "assets" / "sample.png"
    images = pe_port.preprocess([str(sample)], config.image_size)
    print(f"input: {sample.name} -> {images.shape} float32", file=out)

    start = time.perf_counter()
    encoder = pe_port.load(MODEL, checkpoint=checkpoint)
    print(f"loaded for {encoder.target.attrs.get('mcpu', 'generic CPU')} in "
          f"{time.perf_counter() - start:.1f} s", file=out)

    tvm_out = encoder(images)
    with torch.no_grad():
        torch_out = reference(torch.from_numpy(images)).numpy()
    error = relative_error(tvm_out, torch_out)
    cosine = float(np.sum(tvm_out * torch_out)
                   / (np.linalg.norm(tvm_out) * np.linalg.norm(torch_out)))
    first = [round(float(v), 4) for v in tvm_out[0, :4]]
    print(f"embedding: {tvm_out.shape}, first values {first}", file=out)
    print(f"agreement with the PyTorch reference: relative error {error:.2e}, "
          f"cosine {cosine:.8f}", file=out)

    with torch.no_grad():
        torch_ms = 1e3 * median_seconds(lambda: reference(torch.from_numpy(images)), 3, 1)
    tvm_ms = 1e3 * median_seconds(lambda: encoder(images), 3, 1)
    print(f"time per image (median of 3, batch 1, fp32): TVM {tvm_ms:.1f} ms, "
          f"PyTorch eager {torch_ms:.1f} ms ({torch.get_num_threads()} threads)", file=out)
    return error


if __name__ == "__main__":
    sys.exit(0 if main() <= 1e-4 else 1)
