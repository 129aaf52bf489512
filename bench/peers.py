"""CPU benchmark runners: the port next to PyTorch eager, torch.compile, ONNX Runtime, OpenVINO
and the traced route (torch.export -> TVM's frontend, same build). Each runner times one
configuration in its own process, because the frameworks' thread pools disturb each other in one
process.

A model is a model name for its vision tower, `NAME:text` for the text tower of a PE-Core model
(the batch is the number of texts, each the full 32-token context), or `NAME:zero-shot` for
zero-shot classification of one image over `batch` labels: the label texts through the text
tower, the image through the vision tower, normalised logits and the softmax.
"""

from __future__ import annotations

import json
import os
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
VISION, TEXT, ZERO_SHOT = "vision", "text", "zero-shot"
# Zero-shot labels as prompts like "a photo of a {label}." tokenise to 7-12 ids with start and end.
LABEL_LENGTHS = (7, 13)
# An LLVM CPU name the TVM runners build for instead of this CPU (`bench_cpu.py --mcpu`).
MCPU_VARIABLE = "PE_PORT_BENCH_MCPU"


# Holds the ceiling's BLAS libraries to AVX2 on a wider CPU, for the AVX2 build's ceiling
# (`bench_cpu.py --mcpu haswell` on an AVX-512 machine). ONNX Runtime's MLAS has no such switch
# and is left out of that ceiling.
AVX2_BLAS_ENV = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
                 "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def tvm_cpu_target():
    """The target the TVM runners build for: this CPU, or the LLVM CPU named in
    `PE_PORT_BENCH_MCPU` (e.g. `haswell`, to time the AVX2 build on an AVX-512 machine). A name
    LLVM does not know, or a CPU whose vector ISA this one cannot execute, is refused."""
    import tvm
    from tvm.target import codegen

    from pe_port.build import cpu_target, host_triple
    from pe_port.kernels.isa import runs_on, vector_isa

    mcpu = os.environ.get(MCPU_VARIABLE)
    if not mcpu:
        return cpu_target()
    if not codegen.llvm_is_valid_cpu(mcpu, host_triple()):
        raise SystemExit(f"{MCPU_VARIABLE}={mcpu}: not an LLVM CPU of {host_triple()}")
    target = tvm.target.Target({"kind": "llvm", "mtriple": host_triple(), "mcpu": mcpu})
    wanted, own = vector_isa(target), vector_isa(cpu_target())
    if not runs_on(wanted, own):
        raise SystemExit(f"{MCPU_VARIABLE}={mcpu}: a build for {wanted.name} cannot run on this "
                         f"{own.name} CPU")
    return target


def split_model(model: str) -> tuple[str, str]:
    """`"PE-Core-B16-224:text"` -> `("PE-Core-B16-224", "text")`; a bare name is the vision
    tower."""
    name, _, part = model.partition(":")
    part = part or VISION
    if part not in (VISION, TEXT, ZERO_SHOT):
        raise ValueError(f"unknown tower {part!r} in {model!r}; one of {TEXT}, {ZERO_SHOT}")
    return name, part


def model_config(name: str):
    from pe_port.config import custom_config, get_config

    if name == SMALL_MODEL:
        return custom_config(width=64, heads=1, layers=2, image_size=64, patch_size=16)
    return get_config(name)


def text_model_config(name: str):
    from pe_port.config import custom_text_config, text_config

    if name == SMALL_MODEL:
        return custom_text_config(context_length=32, vocab_size=512)
    return text_config(name)


def _reference(config):
    import torch

    from reference import VisionTransformer, randomize_

    torch.manual_seed(0)
    return randomize_(VisionTransformer(**config.as_kwargs()), seed=0).eval()


def _images(config, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    size = config.image_size
    return rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


def _text_reference(config):
    from reference import TextTransformer, randomize_

    return randomize_(TextTransformer(**config.as_kwargs()), seed=0).eval()


def text_ids(config, batch: int, lengths: tuple[int, int] | None = None) -> np.ndarray:
    """Token ids `(batch, context)` as the tokenizer lays them out: start id, random word ids, end
    id (the largest id, where the tower pools), zero padding. Every row fills the context unless
    `lengths` gives the range its lengths are drawn from."""
    rng = np.random.default_rng(0)
    context, vocab = config.context_length, config.vocab_size
    sizes = rng.integers(*lengths, batch) if lengths else np.full(batch, context)
    ids = np.zeros((batch, context), np.int64)
    for row, size in enumerate(sizes):
        ids[row, 0] = vocab - 2
        ids[row, 1:size - 1] = rng.integers(1, vocab - 2, size - 2)
        ids[row, size - 1] = vocab - 1
    return ids


def make_runner(runner: str, model: str, batch: int) -> Callable[[], object]:
    """A zero-argument function that runs one forward pass of `model` at `batch`."""
    name, tower = split_model(model)
    if tower == TEXT:
        config = text_model_config(name)
        return _make_text_runner(runner, name, config, text_ids(config, batch))
    if tower == ZERO_SHOT:
        return _make_zero_shot_runner(runner, name, batch)
    return _make_vision_runner(runner, model, batch)


def _make_zero_shot_runner(runner: str, name: str, labels: int) -> Callable[[], np.ndarray]:
    """One image against `labels` label texts: both towers, then the softmax over labels (the
    logit scale is a constant: it costs the same everywhere)."""
    config = text_model_config(name)
    embed_labels = _make_text_runner(runner, name, config, text_ids(config, labels,
                                                                     LABEL_LENGTHS))
    embed_image = _make_vision_runner(runner, name, 1)

    def run() -> np.ndarray:
        texts, image = _unit_rows(embed_labels()), _unit_rows(embed_image())
        logits = 100.0 * image @ texts.T
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return probs / probs.sum(axis=1, keepdims=True)

    return run


def _unit_rows(output) -> np.ndarray:
    """A runner's output (tensor, array, ONNX Runtime list, OpenVINO result) as unit rows."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    elif hasattr(output, "to_tuple"):  # OpenVINO's OVDict
        output = output.to_tuple()[0]
    array = np.asarray(output.numpy() if hasattr(output, "numpy") else output, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def _make_text_runner(runner: str, name: str, config, ids: np.ndarray) -> Callable[[], object]:
    import torch

    reference = _text_reference(config)
    if runner == "tvm":
        import tvm

        from pe_port.runtime import TextTower
        from pe_port.threads import configure_tvm_threads

        configure_tvm_threads()
        weights = {k: v.numpy() for k, v in reference.state_dict().items()}
        tower = TextTower(name, config, tvm_cpu_target(), "float32", weights)
        device = tvm.cpu()
        return lambda: tower(ids, device)
    return _make_torch_runner(runner, reference, torch.from_numpy(ids))


def _make_vision_runner(runner: str, model: str, batch: int) -> Callable[[], object]:
    import torch

    config = model_config(model)
    images = _images(config, batch)
    reference = _reference(config)
    if runner == "tvm":
        from pe_port.runtime import Encoder

        weights = {k: v.numpy() for k, v in reference.state_dict().items()}
        encoder = Encoder(model, config, tvm_cpu_target(), "float32", weights).prepare()
        return lambda: encoder(images)
    return _make_torch_runner(runner, reference, torch.from_numpy(images))


def _make_torch_runner(runner: str, reference, x) -> Callable[[], object]:
    """`reference` on input `x` the way each peer runs a PyTorch module."""
    import torch

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

    from pe_port.build import build

    with torch.no_grad():
        program = torch.export.export(reference, (x,))
    mod = from_exported_program(program, keep_params_as_input=False)
    vm = relax.VirtualMachine(build(mod, tvm_cpu_target()), tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    return lambda: vm["main"](data)


def time_runner(runner: str, model: str, batch: int, repeats: int, warmup: int = 3) -> dict:
    """Median wall time of `repeats` runs after `warmup` untimed ones, in this process."""
    run = make_runner(runner, model, batch)
    return {"ms": 1000 * median_seconds(run, repeats, warmup), "runs": repeats}


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


def matmul_ceiling(size: int = 2048, repeats: int = 10, with_onnxruntime: bool = True) -> dict:
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
        if with_onnxruntime:
            candidates["onnxruntime"] = _onnxruntime_matmul(a, b)
    except ImportError:
        pass
    flops = 2 * size**3
    each = {name: flops / median_seconds(run, repeats) / 1e9 for name, run in candidates.items()}
    best = max(each, key=each.get)
    return {"gflops": each[best], "library": best, "each": each}


def measure_in_subprocess(args: list[str], timeout: float = 1800,
                          env: dict[str, str] | None = None) -> dict:
    """Run `python -m bench.peers ARGS` (with `env` added to the environment) and return the
    JSON it prints, or the error."""
    result = subprocess.run([sys.executable, "-m", "bench.peers", *args], capture_output=True,
                            text=True, timeout=timeout, check=False, cwd=REPO,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": tail[:160]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _worker(argv: list[str]) -> None:
    if argv[0] == "ceiling":
        print(json.dumps(matmul_ceiling(with_onnxruntime="--without-onnxruntime" not in argv)))
        return
    runner, model, batch, repeats = argv[0], argv[1], int(argv[2]), int(argv[3])
    warmup = int(argv[4]) if len(argv) > 4 else 3
    print(json.dumps(time_runner(runner, model, batch, repeats, warmup)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
