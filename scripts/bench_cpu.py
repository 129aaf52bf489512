#!/usr/bin/env python3
"""Time PE on this CPU: TVM (this port) against PyTorch eager, torch.compile, ONNX Runtime,
OpenVINO and the traced route (torch.export -> TVM frontend, same build), fp32, each in its own
process.

    .venv/bin/python scripts/bench_cpu.py [--models M ...] [--batches 1 8] [--repeats 5]
                                          [--rounds 1] [--mcpu haswell]

A model is a vision tower by name, `NAME:text` for a PE-Core text tower (batch = texts of 32
tokens) or `NAME:zero-shot` (one image against batch labels; bench/peers.py). Prints one table:
model, batch, ms per runner, ratio of TVM to the best peer (> 1: TVM is faster), TVM's GFLOP/s
and its share of the fp32 matmul ceiling (not for zero-shot, whose label lengths vary).

The ceiling is measured next to each row, just before its runners, not once for the whole run:
on a shared cloud machine the speed of the cores drifts by 10-40% over a run of an hour, and a
ceiling measured at another time measured the neighbours more than the port. With `--rounds R`
each row runs all its runners (and the ceiling) R times in turn and reports each runner's median
over the rounds, so a slow minute falls on every runner of a round rather than on one; the share
of the ceiling is the median of each round's TVM-to-ceiling ratio, both measured within a
minute of each other.

`--mcpu NAME` builds TVM for another LLVM CPU of this architecture, so one machine times the
builds of several vector ISAs: on an AVX-512 machine `--mcpu haswell` times the AVX2 build,
and its ceiling is then measured with the BLAS libraries held to AVX2 (`AVX2_BLAS_ENV`; ONNX
Runtime, which has no such switch, is left out of it). The peers run as they would for a user
of this machine. A CPU whose ISA this one cannot execute is refused before anything runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ and reference/

from bench.measure import cpu_name  # noqa: E402
from bench.peers import (  # noqa: E402
    AVX2_BLAS_ENV,
    MCPU_VARIABLE,
    RUNNERS,
    TEXT,
    VISION,
    measure_in_subprocess,
    model_config,
    split_model,
    text_model_config,
    tvm_cpu_target,
)
from pe_port.params import forward_flops, text_forward_flops  # noqa: E402

DEFAULT_MODELS = ["PE-Core-T16-384", "PE-Core-S16-384", "PE-Core-B16-224", "PE-Spatial-B16-512"]
PEERS = ("eager", "compile", "onnxruntime", "openvino")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    # Zero-shot over 1,000 labels runs for minutes in the peers: one untimed run is enough there.
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each row runs all its runners in turn (median reported)")
    parser.add_argument("--mcpu", help="build TVM for this LLVM CPU instead of this one (e.g. "
                        "haswell: the AVX2 build on an AVX-512 machine; its ceiling is then "
                        "held to AVX2 too)")
    args = parser.parse_args()
    if args.mcpu:
        os.environ[MCPU_VARIABLE] = args.mcpu  # read by the TVM runners' processes
    args.ceiling = ceiling_measurement()  # also refuses a bad --mcpu before anything runs

    rows = []
    for model in args.models:
        for batch in args.batches:
            rounds = [measure_row(model, batch, args, r) for r in range(args.rounds)]
            rows.append((model, batch, median_of_rounds(rounds)))
    print_table(rows, args.runners)
    return 0


def ceiling_measurement() -> tuple[list[str], dict[str, str]]:
    """The ceiling subprocess's arguments and environment: an AVX2 build on a wider x86 CPU
    (`--mcpu`) gets a ceiling whose BLAS libraries are held to AVX2. `tvm_cpu_target` checks
    the CPU asked for: an unknown or unrunnable one stops the run here."""
    from pe_port.build import cpu_target
    from pe_port.kernels.isa import vector_isa

    built, own = vector_isa(tvm_cpu_target()).name, vector_isa(cpu_target()).name
    if built == "avx2" and own == "avx512":
        return ["ceiling", "--without-onnxruntime"], AVX2_BLAS_ENV
    return ["ceiling"], {}


def measure_row(model: str, batch: int, args: argparse.Namespace, round_index: int) -> dict:
    """One round of a row: the matmul ceiling, then every runner, each in its own process."""
    progress(f"bench: {model} batch {batch} round {round_index + 1}: ceiling")
    ceiling_args, ceiling_env = args.ceiling
    times = {"ceiling": measure_in_subprocess(ceiling_args, env=ceiling_env)}
    for runner in args.runners:
        if runner == "tvm-torch-export" and batch != min(args.batches):
            # The traced route runs unscheduled kernels (minutes per pass at batch 8).
            times[runner] = {"skipped": "traced route timed at the smallest batch only"}
            continue
        progress(f"bench: {model} batch {batch} round {round_index + 1}: {runner}")
        # The traced route runs unscheduled kernels: time it once, not `repeats` times.
        repeats = 1 if runner == "tvm-torch-export" else args.repeats
        times[runner] = measure_in_subprocess([runner, model, str(batch), str(repeats),
                                               str(args.warmup)])
    return times


def median_of_rounds(rounds: list[dict]) -> dict:
    """Per runner (and the ceiling), the median over the rounds that measured it, with each
    round's value (None where a round did not); the first round's reason when none did."""
    merged = {}
    for name in rounds[0]:
        results = [r[name] for r in rounds]
        key = "gflops" if name == "ceiling" else "ms"
        per_round = [r.get(key) for r in results]
        values = [v for v in per_round if v is not None]
        if not values:
            merged[name] = results[0]
            continue
        merged[name] = {key: statistics.median(values), "rounds": per_round}
        if name == "ceiling":
            measured = [r["each"] for r in results if key in r]
            merged[name]["each"] = {lib: statistics.median(each[lib] for each in measured)
                                    for lib in measured[0]}
    return merged


def share_of_ceiling(times: dict, flops: int) -> float | None:
    """TVM's GFLOP/s as a share of the ceiling: the median over the rounds of each round's
    pair (both measured within a minute of each other), else the ratio of the medians."""
    tvm, ceiling = times.get("tvm", {}), times["ceiling"]
    if "ms" not in tvm or "gflops" not in ceiling:
        return None
    pairs = [(ms, gflops) for ms, gflops in zip(tvm.get("rounds", [tvm["ms"]]),
                                                ceiling.get("rounds", [ceiling["gflops"]]),
                                                strict=True)
             if ms is not None and gflops is not None]
    if not pairs:
        pairs = [(tvm["ms"], ceiling["gflops"])]
    return statistics.median(flops / ms / 1e6 / gflops for ms, gflops in pairs)


def cpu_description() -> str:
    """The CPU's model name, LLVM's name for it and the vector ISA TVM's kernels are tiled for
    (and the CPU TVM was built for, when `--mcpu` chose another)."""
    from pe_port.build import cpu_target
    from pe_port.kernels.isa import vector_isa

    host, built = cpu_target(), tvm_cpu_target()
    text = f"{cpu_name()} ({host.attrs.get('mcpu', 'generic')}, {vector_isa(host).name})"
    if os.environ.get(MCPU_VARIABLE):
        text += f"; TVM built for {built.attrs['mcpu']} ({vector_isa(built).name})"
        if ceiling_measurement()[1]:
            held = " ".join(f"{name}={value}" for name, value in AVX2_BLAS_ENV.items())
            text += f"; ceiling held to AVX2 ({held}; ONNX Runtime left out)"
    return text


def model_flops(model: str, batch: int) -> int | None:
    """FLOPs of one timed run of `model` (None for zero-shot)."""
    name, tower = split_model(model)
    if tower == VISION:
        cfg = model_config(name)
        return forward_flops(cfg, batch, cfg.image_size, cfg.image_size)
    if tower == TEXT:
        cfg = text_model_config(name)
        return text_forward_flops(cfg, batch, cfg.context_length)
    return None


def print_table(rows, runners: list[str]) -> None:
    ceilings = [times["ceiling"] for _, _, times in rows if "gflops" in times["ceiling"]]
    if ceilings:
        values = [c["gflops"] for c in ceilings]
        libraries = ", ".join(f"{name} {max(c['each'][name] for c in ceilings):.0f}"
                              for name in ceilings[0]["each"])
        span = (f"{min(values):.0f}" if round(min(values)) == round(max(values))
                else f"{min(values):.0f}-{max(values):.0f}")
        ceiling_text = (f"{span} GFLOP/s over the rows, each the median of its rounds; the "
                        f"best 2048^3 matmul of: {libraries} (the best row of each)")
    else:
        ceiling_text = rows[0][2]["ceiling"].get("skipped", "?") if rows else "?"
    print(f"machine: {cpu_description()}, {os.cpu_count()} CPUs; "
          f"fp32 matmul ceiling, measured next to each row: {ceiling_text}")
    header = ["model", "batch"] + [f"{r} ms" for r in runners] + [
        "best peer / TVM", "GFLOP/s", "ceiling GFLOP/s", "% ceiling"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model, batch, times in rows:
        cells = [model, str(batch)]
        for runner in runners:
            result = times[runner]
            cells.append(f"{result['ms']:.1f}" if "ms" in result else "skipped")
        tvm_ms = times.get("tvm", {}).get("ms")
        peers = [times[p]["ms"] for p in PEERS if p in times and "ms" in times[p]]
        flops = model_flops(model, batch)
        cells.append(f"{min(peers) / tvm_ms:.2f}x" if tvm_ms and peers else "-")
        share = share_of_ceiling(times, flops) if flops else None
        if share is not None:
            cells += [f"{flops / tvm_ms / 1e6:.0f}", f"{times['ceiling']['gflops']:.0f}",
                      f"{100 * share:.0f}%"]
        else:
            cells += ["-", "-", "-"]
        print("| " + " | ".join(cells) + " |")
    for model, batch, times in rows:
        for runner, result in times.items():
            if len(result.get("rounds", [])) > 1:
                print(f"rounds {runner} ({model}, batch {batch}): " + ", ".join(
                    "-" if value is None else f"{value:.1f}" for value in result["rounds"]))
            if "skipped" in result:
                print(f"skipped {runner} ({model}, batch {batch}): {result['skipped']}")


if __name__ == "__main__":
    sys.exit(main())
