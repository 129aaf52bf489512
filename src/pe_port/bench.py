"""CPU benchmark runners: the port next to PyTorch eager, torch.compile, ONNX Runtime and the
traced route (torch.export -> TVM's frontend, same build). Each runner times one configuration
in its own process, because the frameworks' thread pools disturb each other in one process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RUNNERS = ("tvm", "eager", "compile", "onnxruntime", "tvm-torch-export")
SMALL_MODEL = "tiny"  # a 2-block custom tower: the smoke test's stand-in for official models


def model_config(name: str):
    from pe_port.config import custom_config, get_config

    if name == SMALL_MODEL:
        return custom_config(width=64, heads=1, layers=2, image_size=64, patch_size=16)
    return get_config(name)


def _reference(config):
    import torch

    from reference import VisionTransformer, randomize_

    torch.manual_seed(0)
    return randomize_(VisionTransformer(**config.as_kwargs()), seed=0).eval()


def _images(config, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    size = config.image_size
    return rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


def make_runner(runner: str, model: str, batch: int) -> Callable[[], object]:
    """A zero-argument function that runs one forward pass of `model` at `batch`."""
    import torch

    config = model_config(model)
    images = _images(config, batch)
    reference = _reference(config)
    if runner == "tvm":
        from pe_port.compile import cpu_target
        from pe_port.runtime import CompiledTower

        weights = {k: v.numpy() for k, v in reference.state_dict().items()}
        tower = CompiledTower(config, cpu_target(), "float32", weights)
        return lambda: tower(images)
    x = torch.from_numpy(images)
    if runner == "eager":
        return _no_grad(reference, x)
    if runner == "compile":
        return _no_grad(torch.compile(reference), x)
    if runner == "onnxruntime":
        return _onnxruntime(reference, x)
    if runner == "tvm-torch-export":
        return _traced_tvm(reference, x)
    raise ValueError(f"unknown runner {runner!r}; one of {RUNNERS}")


def _no_grad(module, x):
    import torch

    def run():
        with torch.no_grad():
            return module(x)

    return run


def _onnxruntime(reference, x):
    import onnxruntime as ort
    import torch

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(reference, (x,), str(path), dynamo=True, external_data=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}
    return lambda: session.run(None, feed)


def _traced_tvm(reference, x):
    """The route the port avoids: trace with torch.export, import, build for this CPU."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from pe_port.compile import build, cpu_target

    with torch.no_grad():
        program = torch.export.export(reference, (x,))
    mod = from_exported_program(program, keep_params_as_input=False)
    vm = relax.VirtualMachine(build(mod, cpu_target()), tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    return lambda: vm["main"](data)


def time_runner(runner: str, model: str, batch: int, repeats: int) -> dict:
    """Median wall time of `repeats` runs after two warm-up runs, in this process."""
    run = make_runner(runner, model, batch)
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times), "runs": repeats}


def matmul_ceiling(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of PyTorch's (MKL) fp32 matmul at `size`^3: the machine's practical ceiling."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure_in_subprocess(args: list[str], timeout: float = 1800) -> dict:
    """Run `python -m pe_port.bench ARGS` and return the JSON it prints, or the error."""
    result = subprocess.run([sys.executable, "-m", "pe_port.bench", *args], capture_output=True,
                            text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": tail[:160]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _worker(argv: list[str]) -> None:
    if argv[0] == "ceiling":
        print(json.dumps({"gflops": matmul_ceiling()}))
        return
    runner, model, batch, repeats = argv[0], argv[1], int(argv[2]), int(argv[3])
    print(json.dumps(time_runner(runner, model, batch, repeats)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
