"""GPU benchmark: parity first, then TVM against PyTorch eager (SDPA), torch.compile and TensorRT.

    python scripts/gpu_bench.py                  # build here, then run (full TVM and a GPU)
    python scripts/gpu_bench.py build --libs D   # compile the towers for CUDA (no GPU needed)
    python scripts/gpu_bench.py run --libs D     # on the GPU machine: TVM's runtime suffices

Two phases because a GPU machine may carry only TVM's runtime: `build` compiles each model's
towers (`--towers`: the vision tower, and the text tower where the model has one, PE-Core) per
dtype (and `--attention` variant) into `D/<model>[-text]-<dtype>-<attention>.so` with a
manifest (config, parameter order, FLOPs); `run` loads them, builds the PyTorch reference with
random weights on the same GPU, and for each tower and dtype checks parity (fp32: relative
error <= 1e-4 against PyTorch fp32; fp16/bf16: at most twice PyTorch's own error in that dtype,
never below two units of roundoff: the measure the parity suite uses), then times every
runner at every batch in the same process and prints one table last, with the GPU's fp16 matmul
ceiling measured in the same run. A text tower's rows are `<model>:text`, its batch a number of
texts filling the context (32 tokens: start id, random word ids, end id last, where the tower
pools). `run` imports neither `pe_port` nor TVM's compiler.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["PE-Core-B16-224", "PE-Core-L14-336", "PE-Spatial-B16-512"]
DTYPES = ["float16", "bfloat16"]
DTYPE_ORDER = ["float32", "float16", "bfloat16"]
BATCHES = [1, 8, 64]
RUNNERS = ["tvm", "eager", "compile", "tensorrt"]
VISION, TEXT = "vision", "text"
TOWERS = [VISION, TEXT]  # a model's text tower is built where it has one (PE-Core)
PARITY_BATCH = 2
# A text is one pooled row: more of them than images make the half-precision error a steadier
# measure, at no cost worth counting (32 tokens each).
TEXT_PARITY_BATCH = 8
FP32_TOLERANCE = 1e-4
# TVM's nvcc flags for a cubin (`tvm.support.nvcc.compile_cuda`, as it ran here for sm_90).
NVCC_FLAGS = ["--cubin", "-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]


# ---- build: here, with TVM's compiler ---------------------------------------------------------

ATTENTION_BACKENDS = {"flash": "gpu", "unfused": "gpu_unfused"}


def build(libs: Path, models: list[str], dtypes: list[str], arch: str | None, device: str,
          attention: list[str], towers: list[str] = TOWERS) -> None:
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from pe_port.build import build as compile_module
    from pe_port.build import cpu_target, cuda_target

    target = cuda_target(arch) if device == "cuda" else cpu_target()
    libs.mkdir(parents=True, exist_ok=True)
    manifest = {"device": device, "target": str(target), "towers": []}
    previous = libs / "manifest.json"
    if previous.is_file():  # several builds into one folder (one model per call): keep the rest
        kept = json.loads(previous.read_text())
        if (kept["device"], kept["target"]) == (manifest["device"], manifest["target"]):
            manifest["towers"] = kept["towers"]
    variants = attention if device == "cuda" else ["cpu"]  # the CPU has its own kernels
    for model, tower in itertools.product(models, towers):
        if tower == TEXT and not has_text_tower(model):
            print(f"skipped {model} text: only PE-Core models have a text tower", flush=True)
            continue
        for dtype, variant in itertools.product(dtypes, variants):
            if variant == "unfused":
                print(f"skipped {model} {dtype} unfused: no dlight rule schedules its "
                      "softmax-and-cast kernel (docs/porting.md)", flush=True)
                continue
            started = time.perf_counter()
            mod, specs, fields = export_for(model, tower, dtype, backend_for(variant, target))
            library = libs / library_name(model, tower, dtype, variant)
            executable = compile_module(mod, target)
            executable.export_library(str(library))
            cubins = (save_cuda_sources(executable, libs, library.stem) if device == "cuda"
                      else [])
            print(f"built {library.name} in {time.perf_counter() - started:.0f} s", flush=True)
            manifest["towers"] = [t for t in manifest["towers"]
                                  if t["library"] != library.name]
            manifest["towers"].append({
                "model": model, "tower": tower, "dtype": dtype, "attention": variant,
                "library": library.name, "params": [name for name, _ in specs],
                "cubins": cubins, **fields})
    manifest["towers"].sort(key=lambda t: (t["model"], tower_of(t),
                                          DTYPE_ORDER.index(t["dtype"]), t["attention"]))
    (libs / "manifest.json").write_text(json.dumps(manifest, indent=1))


def has_text_tower(model: str) -> bool:
    from bench.peers import text_model_config
    from pe_port.errors import ConfigError

    try:
        text_model_config(model)
    except ConfigError:
        return False
    return True


def backend_for(variant: str, target):
    """The ops backend of an attention variant ("cpu": the target's own)."""
    from bench.backends import VARIANTS
    from pe_port.backends import GPU, for_target

    backends = {"gpu": GPU, "gpu_unfused": VARIANTS["gpu_unfused"]}
    return backends.get(ATTENTION_BACKENDS.get(variant), for_target(target))


def export_for(model: str, tower: str, dtype: str, backend) -> tuple:
    """The Relax module of one tower of `model`, its parameters, and what the manifest records
    for `run`: the reference's constructor arguments, the input's size, FLOPs per input (one
    image, or one text of the full context)."""
    from bench.peers import model_config, text_model_config
    from pe_port.build import export_text_tower, export_tower
    from pe_port.params import forward_flops

    if tower == TEXT:
        config = text_model_config(model)
        mod, specs = export_text_tower(config, dtype, backend)
        return mod, specs, text_manifest_fields(config)
    config = model_config(model)
    mod, specs = export_tower(config, dtype, (), backend)
    return mod, specs, {
        "config": config.as_kwargs(), "image_size": config.image_size,
        "flops_per_input": forward_flops(config, 1, config.image_size, config.image_size)}


def text_manifest_fields(config) -> dict:
    """A text tower's manifest fields: FLOPs per text of the full context (what `run` feeds)."""
    from pe_port.params import text_forward_flops

    return {"config": config.as_kwargs(), "context_length": config.context_length,
            "flops_per_input": text_forward_flops(config, 1, config.context_length)}


def library_name(model: str, tower: str, dtype: str, variant: str) -> str:
    """Vision libraries keep the names of earlier runs; a text tower's says so."""
    part = "" if tower == VISION else f"-{tower}"
    return f"{model}{part}-{dtype}-{variant}.so"


def tower_of(entry: dict) -> str:
    """A manifest entry's tower (manifests before the text tower hold vision towers only)."""
    return entry.get("tower", VISION)


def flops_per_input(entry: dict) -> int:
    return entry.get("flops_per_input", entry.get("flops_per_image"))


def cuda_sources(executable) -> list[str]:
    """The CUDA C++ of each CUDA module a built executable imports."""
    def modules(module):
        yield module
        for imported in module.imports:
            yield from modules(imported)

    return [m.inspect_source("cuda") for m in modules(executable.mod) if m.kind == "cuda"]


def save_cuda_sources(executable, libs: Path, stem: str) -> list[dict]:
    """Write the library's CUDA C++ next to `libs` for the `cubins` phase; one entry per CUDA
    module (the cubin's file name and the SHA-256 of the source it answers)."""
    import hashlib

    sources = cuda_source_dir(libs)
    sources.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, source in enumerate(cuda_sources(executable)):
        name = f"{stem}.{index}"
        (sources / f"{name}.cu").write_text(source)
        entries.append({"file": f"{name}.cubin",
                        "sha256": hashlib.sha256(source.encode()).hexdigest()})
    return entries


def cuda_source_dir(libs: Path) -> Path:
    """Beside `libs`, not in it: the sources are large and the GPU machine needs none."""
    return libs.parent / f"{libs.name}_cuda_src"


def precompile_cubins(libs: Path) -> None:
    """Compile each library's saved CUDA C++ to a cubin with nvcc and TVM's flags, all at once
    (no TVM needed: this runs here or on the GPU machine, whichever has the cores).

    TVM 0.27 exports CUDA kernels as source and compiles them when the library is loaded
    (`tvm_callback_cuda_compile`); `run` hands it these cubins instead (`install_cubin_cache`),
    matched by the SHA-256 of the source.
    """
    from concurrent.futures import ThreadPoolExecutor

    manifest = json.loads((libs / "manifest.json").read_text())
    arch = manifest_arch(manifest)
    jobs = []
    for cubins in cubins_by_source(manifest["towers"], libs).values():
        saved = [(source, cubin) for cubin in cubins
                 if (source := cuda_source_dir(libs) / cubin.with_suffix(".cu").name).is_file()]
        if saved and not any(cubin.is_file() for cubin in cubins):
            jobs.append(saved[0])

    def compile_one(job) -> str:
        source, cubin = job
        started = time.perf_counter()
        nvcc_cubin(source, cubin, arch)
        return f"{cubin.name}: nvcc {time.perf_counter() - started:.0f} s"

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        for line in pool.map(compile_one, jobs):
            print(line, flush=True)


def cubins_by_source(towers: list[dict], libs: Path) -> dict[str, list[Path]]:
    """The cubin files of the towers' CUDA modules by the SHA-256 of their source: libraries
    with the same kernels (the text towers of B16 and L14 are one config) need one compile."""
    cubins: dict[str, list[Path]] = {}
    for tower in towers:
        for entry in tower.get("cubins", []):
            cubins.setdefault(entry["sha256"], []).append(libs / entry["file"])
    return cubins


def nvcc_cubin(source: Path, cubin: Path, arch: str) -> None:
    """`source` (CUDA C++) to `cubin` for `arch`, as TVM's own nvcc call would."""
    subprocess.run(["nvcc", *NVCC_FLAGS, "-arch", arch, "-o", str(cubin), str(source)],
                   check=True)


def manifest_arch(manifest: dict) -> str:
    """The "sm_XY" the manifest's libraries were built for."""
    return json.loads(manifest["target"])["arch"]


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
    """A function `input -> output` (images or token ids) running the exported tower on
    `device`."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if device == "cuda":
        load_cuda_runtime(tvm)
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    vm = VirtualMachine(tvm.runtime.load_module(str(libs / tower["library"])), dev)
    params = [tvm.runtime.from_dlpack(state[name].to(torch_dtype).contiguous())
              for name in tower["params"]]
    weights = vm["forward_transform_params"](params)
    forward = vm["forward"]

    def run(x):
        return forward(tvm.runtime.from_dlpack(x), *weights)

    return run, dev.sync


def load_cuda_runtime(tvm) -> None:
    """Register TVM's CUDA runtime (device API, CUDA module loader) with the process.

    `import tvm` loads `libtvm_runtime_cuda.so` only with the compiler; the runtime-only
    import (`TVM_USE_RUNTIME_LIB=1`) skips every backend, and loading a CUDA library then fails
    for want of `ffi.Module.load_from_bytes.cuda`. Its `libcudart.so.13` resolves to the one
    PyTorch has already loaded.
    """
    import ctypes

    loader = "ffi.Module.load_from_bytes.cuda"
    if tvm.get_global_func(loader, allow_missing=True) is not None:
        return
    library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    if tvm.get_global_func(loader, allow_missing=True) is None:
        raise RuntimeError(f"{library} loaded but registered no {loader}")


def install_cubin_cache(tvm, libs: Path, towers: list[dict], arch: str) -> None:
    """Answer TVM's load-time CUDA compile with the cubins made from the saved sources (here by
    `cubins`, or on the GPU machine by scripts/device_run.sh), matched by the SHA-256 of the
    source; on a miss, nvcc with TVM's flags, with a line on the log (the runtime-only TVM has
    no compiler of its own)."""
    import hashlib
    import tempfile

    import tvm_ffi

    cubins = cubins_by_source(towers, libs)

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_or_reuse(code):
        made = [c for c in cubins.get(hashlib.sha256(code.encode()).hexdigest(), [])
                if c.is_file()]
        if made:
            return bytearray(made[0].read_bytes())
        print(f"no prebuilt cubin for {len(code)} bytes of CUDA: nvcc here", flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            source, binary = Path(folder) / "kernels.cu", Path(folder) / "kernels.cubin"
            source.write_text(code)
            nvcc_cubin(source, binary, arch)
            print(f"compiled in {time.perf_counter() - started:.0f} s", flush=True)
            return bytearray(binary.read_bytes())


def tensorrt_runner(reference, x, dtype: str):
    """TensorRT through ONNX on input `x` (images or token ids), or the reason it cannot run
    here."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, "tensorrt does not import (not installable from this workplace's registries)"
    import io

    import torch

    buffer = io.BytesIO()
    # A float copy: `.float()` converts in place, and the caller times the shared reference.
    torch.onnx.export(copy.deepcopy(reference).float(), (as_float(x),), buffer, dynamo=True)
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
    inputs = as_float(x).contiguous()
    context.set_tensor_address(engine.get_tensor_name(0), inputs.data_ptr())
    context.set_tensor_address(out_name, output.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    return (lambda _: context.execute_async_v3(stream)), None


def as_float(x):
    """Images in fp32 (TensorRT builds from the fp32 graph); token ids as they are."""
    return x.float() if x.is_floating_point() else x


def run(libs: Path, models: list[str], dtypes: list[str], batches: list[int],
        runners: list[str], repeats: int, device: str, compile_mode: str,
        results: Path | None, towers: list[str] = TOWERS) -> int:
    """Parity and timings, TVM first (its rows are written before the peers are timed, so a
    call cut short by its time limit still returns them; `table` merges the two writes)."""
    import torch

    sys.path.insert(0, str(ROOT))
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity against true fp32
    torch.backends.cudnn.allow_tf32 = False
    manifest = json.loads((libs / "manifest.json").read_text())
    chosen = [t for t in manifest["towers"]
              if t["model"] in models and t["dtype"] in dtypes and tower_of(t) in towers]
    sync = sync_for(torch, device)
    if device == "cuda" and "tvm" in runners:
        import tvm

        load_cuda_runtime(tvm)
        install_cubin_cache(tvm, libs, chosen, manifest_arch(manifest))
    ceiling = matmul_ceiling(torch, device, repeats)
    machine = describe_device(torch, device)
    print(f"device: {machine}; matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
    rows, failures = {}, 0

    def emit(row: dict) -> None:
        rows[row_key(row)] = row
        print(json.dumps(row), flush=True)
        if results is not None:  # a run split over several calls: one table at the end
            with results.open("a") as out:
                out.write(json.dumps(row) + "\n")

    groups = itertools.groupby(chosen, lambda t: (t["model"], tower_of(t), t["dtype"]))
    for (model, tower_kind, dtype), towers_here in groups:
        towers_here = list(towers_here)
        started = time.perf_counter()
        torch_dtype = getattr(torch, dtype)
        work = workload(torch, towers_here[0], device, torch_dtype, batches)
        half = copy.deepcopy(work.reference).to(torch_dtype)  # what eager, compile, TRT run
        label = model if tower_kind == VISION else f"{model}:{tower_kind}"
        base = {tower["attention"]: {
            "model": label, "dtype": dtype, "attention": tower["attention"],
            "ceiling_tflops": ceiling, "device": machine} for tower in towers_here}
        for tower in towers_here if "tvm" in runners else []:  # one per attention variant
            try:
                tvm_forward, tvm_sync = tvm_runner(tower, libs, device,
                                                   work.reference.state_dict(), torch_dtype)
                with torch.no_grad():
                    error, limit = parity(work, half, tvm_forward)
                status = "ok" if error <= limit else "FAIL"
                print(f"{label} {dtype} {tower['attention']} attention: parity {error:.2e} "
                      f"(limit {limit:.2e}) {status}", flush=True)
                base[tower["attention"]].update(parity=status, parity_error=error,
                                                parity_limit=limit)
                for batch in batches:
                    emit({**base[tower["attention"]], "batch": batch,
                          "gflop": batch * flops_per_input(tower) / 1e9,
                          "tvm": median_ms(tvm_forward, work.for_tvm(work.inputs[batch]),
                                           tvm_sync, repeats)})
            except Exception:  # noqa: BLE001 - report it and go on with the other towers
                status = "FAIL"
                print(f"{label} {dtype} {tower['attention']} attention: TVM failed\n"
                      f"{traceback.format_exc()}", flush=True)
                base[tower["attention"]].update(parity="error")
            failures += status == "FAIL"
        if set(runners) - {"tvm"}:
            compiled = torch.compile(half, mode=compile_mode) if "compile" in runners else None
            with torch.no_grad():
                for batch in batches:
                    peers = time_peers(runners, work.inputs[batch], half, compiled, sync,
                                       repeats, device)
                    for tower in towers_here:
                        key = row_key({**base[tower["attention"]], "batch": batch})
                        emit({**rows.get(key, base[tower["attention"]]), "batch": batch,
                              "gflop": batch * flops_per_input(tower) / 1e9, **peers})
        print(f"{label} {dtype}: {time.perf_counter() - started:.0f} s", flush=True)
        del work, half
        if device == "cuda":
            torch.cuda.empty_cache()
    print_table(list(rows.values()))
    return 1 if failures else 0


@dataclasses.dataclass
class Workload:
    """One tower's PyTorch fp32 reference (random weights, seed 0) and inputs: `parity_input`
    as the reference takes it, `inputs[batch]` for the timings as the PyTorch runners in the
    tower's dtype take them (`for_dtype` makes one such from the other), and `for_tvm`, which
    turns either into what the TVM library takes."""

    reference: Any
    parity_input: Any
    inputs: dict[int, Any]
    for_dtype: Callable
    for_tvm: Callable


def workload(torch, tower: dict, device: str, torch_dtype, batches: list[int]) -> Workload:
    if tower_of(tower) == TEXT:
        return text_workload(torch, tower["config"], device, batches)
    return vision_workload(torch, tower, device, torch_dtype, batches)


def vision_workload(torch, tower: dict, device: str, torch_dtype,
                    batches: list[int]) -> Workload:
    """Images in [-1, 1]; the runners in the tower's dtype take them rounded to it."""
    from reference import VisionTransformer, randomize_

    reference = randomize_(VisionTransformer(**tower["config"]), seed=0).eval().to(device)
    size = tower["image_size"]
    generator = torch.Generator().manual_seed(0)

    def images(batch: int):
        return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1

    def rounded(x):
        return x.to(torch_dtype).contiguous()

    parity_images = images(PARITY_BATCH).to(device)
    inputs = {b: images(b).to(device=device, dtype=torch_dtype) for b in batches}
    return Workload(reference, parity_images, inputs, rounded, rounded)


def text_workload(torch, config: dict, device: str, batches: list[int]) -> Workload:
    """Full-context token ids: int64 for PyTorch in every dtype, int32 for TVM."""
    from reference import TextTransformer, randomize_

    reference = randomize_(TextTransformer(**config), seed=0).eval().to(device)
    generator = torch.Generator().manual_seed(0)

    def texts(batch: int):
        return random_text_ids(torch, config, batch, generator).to(device)

    return Workload(reference, texts(TEXT_PARITY_BATCH), {b: texts(b) for b in batches},
                    lambda ids: ids, lambda ids: ids.to(torch.int32).contiguous())


def random_text_ids(torch, config: dict, batch: int, generator):
    """`batch` texts filling the context as the tokenizer lays them out: the start id
    (vocab - 2), random word ids, the end id (vocab - 1, the largest: where the tower pools)."""
    vocab = config["vocab_size"]
    ids = torch.randint(1, vocab - 2, (batch, config["context_length"]), generator=generator)
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
    return ids


def row_key(row: dict) -> tuple:
    """What one table row is: the rows of a run written twice (TVM, then peers) or over
    several runs merge on this."""
    return (row["model"], row["dtype"], row["attention"], row["batch"], row["device"])


def time_peers(runners, x, half, compiled, sync, repeats: int, device: str) -> dict:
    """Milliseconds of each PyTorch-side runner on `x` (None with a note when it failed);
    torch.compile's first call (the compilation) is timed apart as `compile_first_s`."""
    times = {}
    if "eager" in runners:
        times["eager"] = guarded(times, "eager", lambda: median_ms(half, x, sync, repeats))
    if compiled is not None:
        def first_then_median():
            started = time.perf_counter()
            compiled(x)
            sync()
            times["compile_first_s"] = time.perf_counter() - started
            return median_ms(compiled, x, sync, repeats)

        times["compile"] = guarded(times, "compile", first_then_median)
    if "tensorrt" in runners:
        dtype = str(next(half.parameters()).dtype).removeprefix("torch.")
        trt_run, reason = (tensorrt_runner(half, x, dtype)
                           if device == "cuda" else (None, "needs a CUDA GPU"))
        times["tensorrt"] = median_ms(trt_run, x, sync, repeats) if trt_run else None
        times["tensorrt_note"] = reason
    return times


def guarded(times: dict, name: str, measure):
    """`measure()`, or None with the error in `times[name + "_note"]` and on the log."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - one failed peer must not end the run
        print(f"{name} failed:\n{traceback.format_exc()}", flush=True)
        times[f"{name}_note"] = f"{type(err).__name__}: {err}"[:300]
        return None


def parity(work: Workload, half, tvm_forward) -> tuple[float, float]:
    """TVM's error against PyTorch fp32 on the same device, and the limit it must meet: 1e-4
    in fp32, else twice the error of PyTorch itself in that dtype (`half`)."""
    import torch

    dtype = next(half.parameters()).dtype
    x = work.parity_input
    want = work.reference(x)
    got = torch.from_dlpack(tvm_forward(work.for_tvm(x))).float()
    if dtype == torch.float32:
        return relative_error(got, want), FP32_TOLERANCE
    # As tests.helpers.half_precision_limit: never below two units of roundoff (= eps).
    own = relative_error(half(work.for_dtype(x)).float(), want)
    return relative_error(got, want), max(2 * own, torch.finfo(dtype).eps)


def describe_device(torch, device: str) -> str:
    if device != "cuda":
        return "CPU"
    props = torch.cuda.get_device_properties(0)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True,
                                timeout=30).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return (f"{props.name}, driver {driver}, CUDA {torch.version.cuda}, "
            f"torch {torch.__version__}")


def print_table(rows: list[dict]) -> None:
    """One markdown table: a row per model, dtype, attention variant and batch."""
    merged: dict[tuple, dict] = {}
    for row in rows:  # later writes of a row (its peers, another call) complete earlier ones
        merged[row_key(row)] = {**merged.get(row_key(row), {}), **row}
    rows = list(merged.values())
    peers = [r for r in RUNNERS[1:] if any(r in row for row in rows)]
    devices = sorted({row["device"] for row in rows})
    print(f"\ndevice: {', '.join(devices)}; TFLOP/s and % of the fp16 matmul ceiling of its run")
    header = ["model", "dtype", "attention", "batch", "parity", "tvm ms",
              *[f"{p} ms" for p in peers], "tvm/compile", "TFLOP/s", "% ceiling"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        tvm_ms = row.get("tvm")
        tflops = row["gflop"] / tvm_ms if tvm_ms else None  # GFLOP per ms = TFLOP/s
        speedup = row["compile"] / tvm_ms if row.get("compile") and tvm_ms else None
        cells = [row["model"], row["dtype"], row["attention"], str(row["batch"]),
                 row.get("parity", "-"), fmt(tvm_ms), *[fmt(row.get(p)) for p in peers],
                 f"{speedup:.2f}x" if speedup else "-",
                 f"{tflops:.3g}" if tflops else "-",
                 f"{100 * tflops / row['ceiling_tflops']:.0f}%" if tflops else "-"]
        print("| " + " | ".join(cells) + " |")
    notes = {(key, row[key]) for row in rows for key in row if key.endswith("_note")}
    for key, note in sorted(notes, key=str):
        if note is not None:
            print(f"{key.removesuffix('_note')}: {note}")


def fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", choices=["all", "build", "cubins", "run", "table"],
                        default="all", help="cubins: compile the CUDA kernels of the built "
                        "libraries with nvcc, all at once (else `run` compiles each on load); "
                        "table: "
                        "print the table of the rows in --results")
    parser.add_argument("--libs", type=Path, default=ROOT / "build" / "gpu_bench")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--towers", nargs="+", default=TOWERS, choices=TOWERS,
                        help="vision and/or text (the text tower of each PE-Core model: "
                             "32-token texts)")
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
        build(args.libs, args.models, args.dtypes, args.arch, args.device, args.attention,
              args.towers)
    if args.phase == "cubins":
        precompile_cubins(args.libs)
    if args.phase in ("all", "run"):
        return run(args.libs, args.models, args.dtypes, args.batches, args.runners,
                   args.repeats, args.device, args.compile_mode, args.results, args.towers)
    if args.phase == "table":
        if args.results is None or not args.results.is_file():
            parser.error("table needs --results FILE, written by earlier runs")
        print_table([json.loads(line) for line in args.results.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
