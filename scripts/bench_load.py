"""Start-up and compile time, as a user waits for them: `pe-port encode` of one image in a fresh
process, cold (empty compile cache) and warm (cached library), against the floor of
`python -c "import tvm, numpy"`. Median of `--runs` warm runs; one cold run per model.

    .venv/bin/python scripts/bench_load.py --models PE-Core-T16-384 PE-Core-B16-224

Checkpoints are seeded random weights in the official format, converted to `.safetensors`
(what a deployment uses). Prints a Markdown table for docs/perf.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import cpu_name  # noqa: E402


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def checkpoint_for(name: str, folder: Path) -> Path:
    from safetensors.numpy import save_file

    from pe_port.build import param_specs
    from pe_port.config import get_config

    rng = np.random.default_rng(0)
    weights = {n: (0.02 * rng.standard_normal(shape)).astype(np.float32)
               for n, shape in param_specs(get_config(name))}
    path = folder / f"{name}.safetensors"
    save_file(weights, str(path))
    return path


def main() -> None:
    import os

    from pe_port.config import get_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["PE-Core-T16-384", "PE-Core-B16-224"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_load."))
    env = {**os.environ, "PE_PORT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    floor = statistics.median(timed([sys.executable, "-c", "import tvm, numpy"], env)
                              for _ in range(args.runs))
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"floor `python -c \"import tvm, numpy\"`: {floor:.2f} s (median of {args.runs})\n")
    print("| model | cold encode s | warm encode s | warm / floor |")
    print("|---|---|---|---|")
    for name in args.models:
        size = get_config(name).image_size
        pixels = work / f"{name}.npy"
        np.save(pixels, np.zeros((1, 3, size, size), np.float32))
        encode = [str(ROOT / ".venv" / "bin" / "pe-port"), "encode", name, "--checkpoint",
                  str(checkpoint_for(name, work)), "--input", str(pixels),
                  "--output", str(work / "out.npy")]
        cold = timed(encode, env)
        warm = statistics.median(timed(encode, env) for _ in range(args.runs))
        print(f"| {name} | {cold:.1f} | {warm:.2f} | {warm / floor:.2f}x |")


if __name__ == "__main__":
    main()
