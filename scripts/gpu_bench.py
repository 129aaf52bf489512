"""GPU benchmark: parity first, then TVM against PyTorch eager (SDPA), torch.compile and TensorRT.

    python scripts/gpu_bench.py                  # build here, then run (full TVM and a GPU)
    python scripts/gpu_bench.py build --libs D   # compile the towers for CUDA (no GPU needed)
    python scripts/gpu_bench.py run --libs D     # on the GPU machine: TVM's runtime suffices

Two phases because a GPU machine may carry only TVM's runtime: `build` compiles each model and
dtype (and `--attention` variant) into `D/<model>-<dtype>-<attention>.so` with a manifest
(config, parameter order, FLOPs); `run` loads them, builds the PyTorch reference with random
weights on the same GPU, and for each model and dtype checks parity (fp32: relative error
<= 1e-4 against PyTorch fp32; fp16/bf16: at most twice PyTorch's own error in that dtype, never
below two units of roundoff: the measure the parity suite uses), then times every
runner at every batch in the same process and prints one table last, with the GPU's fp16 matmul
ceiling measured in the same run. `run` imports neither `pe_port` nor TVM's compiler.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["PE-Core-B16-224", "PE-Core-L14-336", "PE-Spatial-B16-512"]
DTYPES = ["float16", "bfloat16"]
BATCHES = [1, 8, 64]
RUNNERS = ["tvm", "eager", "compile", "tensorrt"]
PARITY_BATCH = 2
FP32_TOLERANCE = 1e-4


# ---- build: here, with TVM's compiler ---------------------------------------------------------

ATTENTION_BACKENDS = {"flash": "gpu", "unfused": "gpu_unfused"}


def build(libs: Path, models: list[str], dtypes: list[str], arch: str | None, device: str,
          attention: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from pe_port.bench import model_config
    from pe_port.compile import build as compile_module
    from pe_port.compile import cpu_target, cuda_target, export_tower
    from pe_port.params import forward_flops

    target = cuda_target(arch) if device == "cuda" else cpu_target()
    libs.mkdir(parents=True, exist_ok=True)
    manifest = {"device": device, "target": str(target), "towers": []}
    for model in models:
        config = model_config(model)
        variants = attention if device == "cuda" else ["cpu"]  # the CPU has its own kernels
        for dtype, variant in itertools.product(dtypes, variants):
            if (dtype, variant) == ("bfloat16", "unfused"):
                print(f"skipped {model} bfloat16 unfused: TVM fails to lower the bf16 softmax "
                      "(BF16 legalization after dlight's reduction schedule)", flush=True)
                continue
            started = time.perf_counter()
            backend = ATTENTION_BACKENDS.get(variant)
            mod, specs = export_tower(config, dtype, target=target, backend=backend)
            library = libs / f"{model}-{dtype}-{variant}.so"
            compile_module(mod, target).export_library(str(library))
            print(f"built {library.name} in {time.perf_counter() - started:.0f} s", flush=True)
            manifest["towers"].append({
                "model": model, "dtype": dtype, "attention": variant, "library": library.name,
                "config": config.as_kwargs(), "image_size": config.image_size,
                "params": [name for name, _ in specs],
                "flops_per_image": forward_flops(config, 1, config.image_size,
                                                 config.image_size),
            })
    (libs / "manifest.json").write_text(json.dumps(manifest, indent=1))


# ---- run: on the GPU, TVM runtime and PyTorch only ---------------------------------------------

def median_ms(fn, x, sync, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of `fn(x)`, each call waited for with `sync`."""
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def matmul_ceiling(torch, device: str, repeats: int) -> float:
    """TFLOP/s of the best `n`^3 matmul PyTorch runs here (fp16 on the GPU, fp32 on a CPU)."""
    size, dtype = (8192, torch.float16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = median_ms(lambda pair: pair[0] @ pair[1], (a, b), sync_for(torch, device), repeats)
    return 2 * size**3 / (ms * 1e-3) / 1e12


def sync_for(torch, device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def relative_error(actual, expected) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm())


def tvm_runner(tower: dict, libs: Path, device: str, state: dict, torch_dtype):
    """A function `images -> output` running the exported tower on `device`."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    vm = VirtualMachine(tvm.runtime.load_module(str(libs / tower["library"])), dev)
    params = [tvm.runtime.from_dlpack(state[name].to(torch_dtype).contiguous())
              for name in tower["params"]]
    weights = vm["forward_transform_params"](params)
    forward = vm["forward"]

    def run(images):
        return forward(tvm.runtime.from_dlpack(images), *weights)

    return run, dev.sync


def tensorrt_runner(reference, images, dtype: str):
    """TensorRT through ONNX, or the reason it cannot run here."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, "tensorrt does not import (not installable from this workplace's registries)"
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(reference.float(), (images.float(),), buffer, dynamo=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(buffer.getvalue()):
        return None, f"TensorRT could not parse the ONNX graph: {parser.get_error(0)}"
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16 if dtype == "float16" else trt.BuilderFlag.BF16)
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    out_name = engine.get_tensor_name(engine.num_io_tensors - 1)
    output = torch.empty(tuple(context.get_tensor_shape(out_name)), device="cuda")
    inputs = images.float().contiguous()
    context.set_tensor_address(engine.get_tensor_name(0), inputs.data_ptr())
    context.set_tensor_address(out_name, output.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    return (lambda _: context.execute_async_v3(stream)), None


def run(libs: Path, models: list[str], dtypes: list[str], batches: list[int],
        runners: list[str], repeats: int, device: str, compile_mode: str,
        results: Path | None) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    from reference import VisionTransformer, randomize_

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity against true fp32
    torch.backends.cudnn.allow_tf32 = False
    manifest = json.loads((libs / "manifest.json").read_text())
    chosen = [t for t in manifest["towers"] if t["model"] in models and t["dtype"] in dtypes]
    sync = sync_for(torch, device)
    ceiling = matmul_ceiling(torch, device, repeats)
    machine = describe_device(torch, device)
    print(f"device: {machine}; matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
    rows, failures = [], 0
    for (model, dtype), towers in itertools.groupby(chosen, lambda t: (t["model"], t["dtype"])):
        towers = list(towers)
        torch_dtype = getattr(torch, dtype)
        reference = randomize_(VisionTransformer(**towers[0]["config"]), seed=0)
        reference = reference.eval().to(device)
        half = copy.deepcopy(reference).to(torch_dtype)  # what eager, compile, TensorRT run
        compiled = torch.compile(half, mode=compile_mode) if "compile" in runners else None
        size = towers[0]["image_size"]
        generator = torch.Generator().manual_seed(0)
        images = (torch.rand(PARITY_BATCH, 3, size, size, generator=generator) * 2 - 1)
        inputs = {batch: (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1)
                  .to(device=device, dtype=torch_dtype) for batch in batches}
        with torch.no_grad():
            peers = {batch: time_peers(runners, inputs[batch], half, compiled, sync, repeats,
                                       device) for batch in batches}
        for tower in towers:  # one per attention variant
            tvm_forward, tvm_sync = tvm_runner(tower, libs, device, reference.state_dict(),
                                               torch_dtype)
            with torch.no_grad():
                error, limit = parity(reference, half, tvm_forward, images.to(device))
            status = "ok" if error <= limit else "FAIL"
            failures += status == "FAIL"
            print(f"{model} {dtype} {tower['attention']} attention: parity {error:.2e} "
                  f"(limit {limit:.2e}) {status}", flush=True)
            for batch in batches:
                row = {"model": model, "dtype": dtype, "attention": tower["attention"],
                       "batch": batch, "parity": status,
                       "gflop": batch * tower["flops_per_image"] / 1e9,
                       "tvm": median_ms(tvm_forward, inputs[batch], tvm_sync, repeats),
                       **peers[batch], "ceiling_tflops": ceiling, "device": machine}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if results is not None:  # a run split over several calls: one table at the end
                    with results.open("a") as out:
                        out.write(json.dumps(row) + "\n")
    print_table(rows)
    return 1 if failures else 0


def time_peers(runners, x, half, compiled, sync, repeats: int, device: str) -> dict:
    """Milliseconds of each PyTorch-side runner on `x`; TensorRT's with why it is absent."""
    times = {}
    if "eager" in runners:
        times["eager"] = median_ms(half, x, sync, repeats)
    if compiled is not None:
        times["compile"] = median_ms(compiled, x, sync, repeats)
    if "tensorrt" in runners:
        trt_run, reason = (tensorrt_runner(half, x, str(x.dtype).removeprefix("torch."))
                           if device == "cuda" else (None, "needs a CUDA GPU"))
        times["tensorrt"] = median_ms(trt_run, x, sync, repeats) if trt_run else None
        times["tensorrt_note"] = reason
    return times


def parity(reference, half, tvm_forward, images) -> tuple[float, float]:
    """TVM's error against PyTorch fp32 on the same device, and the limit it must meet: 1e-4
    in fp32, else twice the error of PyTorch itself in that dtype (`half`)."""
    import torch

    dtype = next(half.parameters()).dtype
    want = reference(images)
    got = torch.from_dlpack(tvm_forward(images.to(dtype).contiguous())).float()
    if dtype == torch.float32:
        return relative_error(got, want), FP32_TOLERANCE
    # As tests.helpers.half_precision_limit: never below two units of roundoff (= eps).
    own = relative_error(half(images.to(dtype)).float(), want)
    return relative_error(got, want), max(2 * own, torch.finfo(dtype).eps)


def describe_device(torch, device: str) -> str:
    if device != "cuda":
        return "CPU"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, CUDA {torch.version.cuda}, torch {torch.__version__}"


def print_table(rows: list[dict]) -> None:
    """One markdown table: a row per model, dtype, attention variant and batch."""
    peers = [r for r in RUNNERS[1:] if any(r in row for row in rows)]
    devices = sorted({row["device"] for row in rows})
    print(f"\ndevice: {', '.join(devices)}; TFLOP/s and % of the fp16 matmul ceiling of its run")
    header = ["model", "dtype", "attention", "batch", "parity", "tvm ms",
              *[f"{p} ms" for p in peers], "tvm/compile", "TFLOP/s", "% ceiling"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        tflops = row["gflop"] / row["tvm"]  # GFLOP per ms = TFLOP/s
        speedup = row["compile"] / row["tvm"] if row.get("compile") else None
        cells = [row["model"], row["dtype"], row["attention"], str(row["batch"]), row["parity"],
                 f"{row['tvm']:.2f}", *[fmt(row.get(p)) for p in peers],
                 f"{speedup:.2f}x" if speedup else "-", f"{tflops:.3g}",
                 f"{100 * tflops / row['ceiling_tflops']:.0f}%"]
        print("| " + " | ".join(cells) + " |")
    notes = {row.get("tensorrt_note") for row in rows} - {None}
    for note in notes:
        print(f"tensorrt: {note}")


def fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", choices=["all", "build", "run", "table"],
                        default="all", help="table: print the table of the rows in --results")
    parser.add_argument("--libs", type=Path, default=ROOT / "build" / "gpu_bench")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--dtypes", nargs="+", default=DTYPES,
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=BATCHES)
    parser.add_argument("--runners", nargs="+", default=RUNNERS, choices=RUNNERS)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--attention", nargs="+", default=["flash"],
                        choices=list(ATTENTION_BACKENDS),
                        help="GPU attention: the flash kernel, and/or two matmuls around a "
                             "float32 softmax (one table row each)")
    parser.add_argument("--arch", default=None,
                        help="CUDA compute capability to build for, e.g. sm_80 (default: this "
                             "machine's GPU, else sm_90)")
    parser.add_argument("--compile-mode", default="max-autotune",
                        help="torch.compile mode (max-autotune takes minutes per model)")
    parser.add_argument("--results", type=Path, default=None,
                        help="append each row to this JSON-lines file (to split a run)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke test of this script on a machine without a GPU")
    args = parser.parse_args(argv)
    if args.phase in ("all", "build"):
        build(args.libs, args.models, args.dtypes, args.arch, args.device, args.attention)
    if args.phase in ("all", "run"):
        return run(args.libs, args.models, args.dtypes, args.batches, args.runners,
                   args.repeats, args.device, args.compile_mode, args.results)
    if args.phase == "table":
        if args.results is None or not args.results.is_file():
            parser.error("table needs --results FILE, written by earlier runs")
        print_table([json.loads(line) for line in args.results.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
