"""Per-image latency of pe_infer against the Python API, on the same artifact and input.

    .venv/bin/python cpp/scripts/bench_cpp.py [--pe-infer build/cpp/pe_infer] [--runs 20]

Exports PE-Core-T16-384 (seeded random weights: latency does not depend on them) to a temporary
folder, then times batch 1 at 384x384: the model call alone (median of --runs, after a warm-up)
in Python (`Encoder.__call__`) and in pe_infer (`--repeat`), the image path (decode, resize,
normalise, run) of both, and whole processes (`pe-port encode` against `pe_infer`) on one image.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # reference/ (not installed)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "PE-Core-T16-384"
IMAGE = ROOT / "src" / "pe_port" / "assets" / "sample.png"


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up: first-call allocations and thread start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def pe_infer_ms(binary: Path, artifact: Path, source: Path, out: Path, runs: int) -> float:
    done = subprocess.run([str(binary), str(artifact), str(source), str(out), "--repeat",
                           str(runs + 1)], capture_output=True, text=True, check=True)
    return float(re.search(r"median ([0-9.]+) ms", done.stderr).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pe-infer", type=Path, default=ROOT / "build" / "cpp" / "pe_infer")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not args.pe_infer.is_file():
        sys.exit(f"{args.pe_infer} does not exist: run `make cpp` first")

    import torch

    import pe_port
    import reference
    from reference.random_weights import randomize_

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tower = reference.VisionTransformer(**pe_port.get_config(MODEL).as_kwargs())
        torch.save(randomize_(tower, 0).state_dict(), tmp / "ckpt.pt")
        encoder = pe_port.load(MODEL, checkpoint=tmp / "ckpt.pt", progress=None)
        artifact = encoder.export(tmp / "artifact", progress=None)
        pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, 384, 384)).astype(np.float32)
        np.save(tmp / "x.npy", pixels)

        rows = [
            ("model call, (1, 3, 384, 384) float32",
             median_ms(lambda: encoder(pixels), args.runs),
             pe_infer_ms(args.pe_infer, artifact, tmp / "x.npy", tmp / "y.npy", args.runs)),
        ]
        # The image path: Python pre-processes then runs; pe_infer's --repeat times the run only,
        # so its pre-processing is timed from its own report over fresh processes.
        python_image = median_ms(lambda: encoder.encode_images([IMAGE]), args.runs)
        model_ms = pe_infer_ms(args.pe_infer, artifact, IMAGE, tmp / "y.npy", args.runs)
        read_ms, process_ms = [], []
        for _ in range(5):
            start = time.perf_counter()
            done = subprocess.run([str(args.pe_infer), str(artifact), str(IMAGE),
                                   str(tmp / "y.npy")], capture_output=True, text=True, check=True)
            process_ms.append((time.perf_counter() - start) * 1000)
            read_ms.append(float(re.search(r"pre-processed\) in ([0-9.]+) ms",
                                           done.stderr).group(1)))
        rows.append((f"image file ({IMAGE.name}, 400x300 PNG): pre-process + model",
                     python_image, statistics.median(read_ms) + model_ms))
        cli = [sys.executable, "-m", "pe_port.cli", "encode", MODEL, "--checkpoint",
               str(tmp / "ckpt.pt"), "--input", str(IMAGE), "--output", str(tmp / "p.npy")]
        cli_ms = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cli, capture_output=True, check=True)
            cli_ms.append((time.perf_counter() - start) * 1000)
        rows.append(("whole process on the image: `pe-port encode` (imports, checkpoint, "
                     "cached library) vs `pe_infer` (artifact)", statistics.median(cli_ms),
                     statistics.median(process_ms)))

    threads = os.environ.get("TVM_NUM_THREADS", "TVM's default")
    print(f"{MODEL}, batch 1, fp32, TVM_NUM_THREADS={threads}, median of {args.runs} runs\n")
    print("| what | Python API ms | pe_infer ms |\n|---|---|---|")
    for what, python_ms, cpp_ms in rows:
        py = "-" if python_ms is None else f"{python_ms:.1f}"
        print(f"| {what} | {py} | {cpp_ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
