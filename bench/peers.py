"""CPU benchmark runners: the port next to PyTorch eager, torch.compile, ONNX Runtime, OpenVINO
and the traced route (torch.export -> TVM's frontend, same build). Each runner times one
configuration in its own process, because the frameworks' thread pools disturb each other in one
process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.measure import median_seconds

REPO = Path(__file__).resolve().parent.parent
RUNNERS = ("tvm", "eager", "compile", "onnxruntime", "openvino", "tvm-torch-export")
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
        from pe_port.build import cpu_target
        from pe_port.runtime import Encoder

        weights = {k: v.numpy() for k, v in reference.state_dict().items()}
        encoder = Encoder(model, config, cpu_target(), "float32", weights).prepare()
        return lambda: encoder(images)
    x = torch.from_numpy(images)
    if runner == "eager":
        return _no_grad(reference, x)
    if runner == "compile":
        return _no_grad(torch.compile(reference), x)
    if runner == "onnxruntime":
        return _onnxruntime(reference, x)
    if runner == "openvino":
        return _openvino(reference, x)
    if runner == "tvm-torch-export":
        return _traced_tvm(reference, x)
    raise ValueError(f"unknown runner {runner!r}; one of {RUNNERS}")


def _no_grad(module, x):
    import torch

    def run():
        with torch.no_grad():
            return module(x)

    return run


def _onnx_file(reference, x) -> Path:
    """The reference exported to ONNX (the dynamo exporter), the file both ONNX peers run."""
    import torch

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(reference, (x,), str(path), dynamo=True, external_data=False)
    return path


def _onnxruntime(reference, x):
    import onnxruntime as ort

    path = _onnx_file(reference, x)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}
    return lambda: session.run(None, feed)


def _openvino(reference, x):
    """OpenVINO's CPU plugin on the same ONNX file, held to fp32 (on CPUs with bf16 or AMX it
    would otherwise compute in bf16), tuned for latency, on every core."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(_onnx_file(reference, x)), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    data = x.numpy()
    return lambda: request.infer({0: data})


def _traced_tvm(reference, x):
    """The route the port avoids: trace with torch.export, import, build for this CPU."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from pe_port.build import build, cpu_target

    with torch.no_grad():
        program = torch.export.export(reference, (x,))
    mod = from_exported_program(program, keep_params_as_input=False)
    vm = relax.VirtualMachine(build(mod, cpu_target()), tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    return lambda: vm["main"](data)


def time_runner(runner: str, model: str, batch: int, repeats: int) -> dict:
    """Median wall time of `repeats` runs after warm-up runs, in this process."""
    run = make_runner(runner, model, batch)
    return {"ms": 1000 * median_seconds(run, repeats), "runs": repeats}


def _onnxruntime_matmul(a: np.ndarray, b: np.ndarray) -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def spec(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape))

    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
                              [spec("A"), spec("B")], [spec("C")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": a, "B": b})


def matmul_ceiling(size: int = 2048, repeats: int = 10) -> dict:
    """The machine's practical fp32 matmul ceiling: the best GFLOP/s of `size`^3 matmuls by the
    BLAS libraries at hand (PyTorch's, NumPy's OpenBLAS, ONNX Runtime's MLAS), all cores.

    They differ by 2x on some CPUs (PyTorch's oneDNN/MKL path skips AVX-512 on AMD), so taking
    one library's number would make the ceiling, and any percentage of it, arbitrary.
    """
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    candidates = {"pytorch": lambda: ta @ tb, "numpy": lambda: a @ b}
    try:
        candidates["onnxruntime"] = _onnxruntime_matmul(a, b)
    except ImportError:
        pass
    flops = 2 * size**3
    each = {name: flops / median_seconds(run, repeats) / 1e9 for name, run in candidates.items()}
    best = max(each, key=each.get)
    return {"gflops": each[best], "library": best, "each": each}


def measure_in_subprocess(args: list[str], timeout: float = 1800) -> dict:
    """Run `python -m bench.peers ARGS` and return the JSON it prints, or the error."""
    result = subprocess.run([sys.executable, "-m", "bench.peers", *args], capture_output=True,
                            text=True, timeout=timeout, check=False, cwd=REPO)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": tail[:160]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _worker(argv: list[str]) -> None:
    if argv[0] == "ceiling":
        print(json.dumps(matmul_ceiling()))
        return
    runner, model, batch, repeats = argv[0], argv[1], int(argv[2]), int(argv[3])
    print(json.dumps(time_runner(runner, model, batch, repeats)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
