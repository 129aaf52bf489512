"""Embedding a folder of JPEGs end to end: pe-port's streaming encode against the model alone at
the same batch size, and against the obvious PyTorch script (a DataLoader with worker
processes feeding the reference tower). Images per second, after a warm-up.

    .venv/bin/python scripts/bench_folder.py --models PE-Core-T16-384 PE-Core-B16-224 \
        --images 2000 [--batch-size 8] [--device cpu|cuda] [--loader-workers 4]

The goal (issue 15): end to end within 10% of the model-only rate (decoding overlapped), and
faster than the PyTorch script. Weights are seeded random ones in the official format (speed
does not depend on them); the JPEGs are generated 640x480 photos-like images (smooth colour
fields with noise, quality 90), written once per `--work` folder. Prints a Markdown table for
docs/perf.md. Timings mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import cpu_name  # noqa: E402

JPEG_SIZE = (640, 480)
WARMUP_BATCHES = 2


def write_jpegs(folder: Path, count: int) -> Path:
    """`count` JPEGs in `folder` (kept: a second run reuses them)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = JPEG_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        path = folder / f"photo-{i:06d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        phase = rng.uniform(0, 2 * np.pi, 3)
        fields = [127 + 100 * np.sin(x / rng.uniform(30, 200) + y / rng.uniform(30, 200) + p)
                  for p in phase]
        pixels = np.stack(fields, axis=-1) + rng.normal(0, 12, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return folder


def official_weights(name: str, folder: Path) -> tuple[Path, dict]:
    """Seeded random weights of the reference tower: a `.safetensors` for pe-port and the
    state dict for PyTorch."""
    from safetensors.numpy import save_file

    import reference
    from pe_port.config import get_config
    from reference.random_weights import randomize_

    tower = randomize_(reference.VisionTransformer(**get_config(name).as_kwargs()), seed=0)
    state = tower.state_dict()
    path = folder / f"{name}.safetensors"
    save_file({k: v.detach().float().numpy() for k, v in state.items()}, str(path))
    return path, state


def rate(count: int, seconds: float) -> float:
    return count / seconds


def pe_port_end_to_end(encoder, folder: Path, batch_size: int) -> float:
    """`encode_folder` over every image: decode threads overlapping the model."""
    paths = sorted(folder.iterdir())
    list(encoder.encode_folder(paths[:WARMUP_BATCHES * batch_size], batch_size=batch_size))
    start = time.perf_counter()
    done = sum(len(batch) for batch, _ in encoder.encode_folder(paths, batch_size=batch_size))
    return rate(done, time.perf_counter() - start)


def pe_port_model_only(encoder, count: int, batch_size: int) -> float:
    """The model alone on pixels already in memory, as many images at the same batch size."""
    size = encoder.config.image_size
    pixels = np.random.default_rng(0).uniform(-1, 1, (batch_size, 3, size, size))
    pixels = pixels.astype(np.float32)
    for _ in range(WARMUP_BATCHES):
        encoder(pixels)
    calls = max(1, count // batch_size)
    start = time.perf_counter()
    for _ in range(calls):
        encoder(pixels)
    return rate(calls * batch_size, time.perf_counter() - start)


class ImageFiles:
    """The map-style dataset a PyTorch user writes: PIL decode, resize, normalise."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch
        from PIL import Image

        image = Image.open(self.paths[index]).convert("RGB")
        image = image.resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image, np.float32) / 255.0
        return torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1).copy())


def pytorch_dataloader(name: str, state: dict, folder: Path, batch_size: int, workers: int,
                       device: str) -> float:
    import torch

    import reference
    from pe_port.config import get_config

    config = get_config(name)
    tower = reference.VisionTransformer(**config.as_kwargs())
    tower.load_state_dict(state)
    tower = tower.eval().to(device)
    paths = sorted(folder.iterdir())
    loader = torch.utils.data.DataLoader(ImageFiles(paths, config.image_size),
                                         batch_size=batch_size, num_workers=workers,
                                         pin_memory=device == "cuda")
    with torch.inference_mode():
        for pixels in torch.utils.data.DataLoader(
                ImageFiles(paths[:WARMUP_BATCHES * batch_size], config.image_size),
                batch_size=batch_size):
            tower(pixels.to(device))
        start = time.perf_counter()
        done = 0
        for pixels in loader:
            tower(pixels.to(device, non_blocking=True)).cpu()
            done += len(pixels)
    return rate(done, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    import pe_port
    from pe_port.streaming import default_batch_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["PE-Core-T16-384", "PE-Core-B16-224"])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, help="default: pe-port's for the device")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--loader-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--work", type=Path, help="folder for JPEGs and weights (default: temp)")
    parser.add_argument("--skip-pytorch", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_folder."))
    work.mkdir(parents=True, exist_ok=True)
    folder = write_jpegs(work / f"jpegs-{args.images}", args.images)
    batch_size = args.batch_size or default_batch_size(args.device)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"{args.images} JPEGs {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, batch {batch_size}, "
          f"{args.device}, DataLoader workers {args.loader_workers}\n")
    print("| model | pe-port end to end img/s | model only img/s | end to end / model "
          "| PyTorch DataLoader img/s | pe-port / PyTorch |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        weights, state = official_weights(name, work)
        encoder = pe_port.load(name, checkpoint=weights, target=args.device)
        end_to_end = pe_port_end_to_end(encoder, folder, batch_size)
        model_only = pe_port_model_only(encoder, args.images, batch_size)
        torch_rate = None if args.skip_pytorch else pytorch_dataloader(
            name, state, folder, batch_size, args.loader_workers, args.device)
        torch_cells = ("-", "-") if torch_rate is None else (
            f"{torch_rate:.1f}", f"{end_to_end / torch_rate:.2f}x")
        print(f"| {name} | {end_to_end:.1f} | {model_only:.1f} | {end_to_end / model_only:.2f} "
              f"| {torch_cells[0]} | {torch_cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
