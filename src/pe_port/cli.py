"""The `pe-port` command line. A problem with the user's input prints one line and exits with 2.

No file the CLI writes is ever left half-written: outputs are staged and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pe_port.config import DTYPES, MODEL_NAMES
from pe_port.errors import UserError
from pe_port.outputs import check_output, check_writable_dir
from pe_port.streaming import list_images

NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}


def _cmd_list(_args: argparse.Namespace) -> int:
    from pe_port.checkpoint import cached_checkpoint
    from pe_port.config import get_config
    from pe_port.params import parameter_count

    print(f"{'model':<26}{'params':>10}{'native size':>13}  weights")
    for name in MODEL_NAMES:
        config = get_config(name)
        cached = "cached" if cached_checkpoint(name) else "not downloaded"
        size = f"{config.image_size}x{config.image_size}"
        print(f"{name:<26}{parameter_count(config) / 1e6:>9.1f}M{size:>13}  {cached}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from pe_port.checkpoint import download_checkpoint
    from pe_port.config import get_config

    names = list(MODEL_NAMES) if args.all else args.names
    if not names:
        raise UserError("name at least one model, or pass --all")
    for name in names:
        get_config(name)  # an unknown name fails before any download starts
    for name in names:
        print(f"pe-port: downloading {name}", file=sys.stderr, flush=True)
        print(download_checkpoint(name))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from pe_port.config import get_config

    # Everything about the request is checked before the (slow) model load and compile.
    config = get_config(args.model)
    if args.input and _input_kind(args.input) == "npy":
        if args.input_list:
            raise UserError("a .npy input must be given alone")
        return _encode_pixels(args, config)
    if not args.input and not args.input_list:
        raise UserError("give images with --input or --input-list")
    return _encode_image_files(args, config)


def _encode_pixels(args: argparse.Namespace, config) -> int:
    """Pre-processed pixels from a `.npy`: one call, one `.npy` out."""
    from pe_port.api import load
    from pe_port.runtime import check_images

    output = check_output(args.output, (".npy",))
    pixels = check_images(_read_npy(Path(args.input[0])), config)
    encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch)
    result = _model_function(args, encoder)(pixels)
    if not np.isfinite(result).all():
        raise UserError(f"the model produced NaN or Inf for this input ({args.dtype}); "
                        f"nothing written to {output}")
    _save_npy_atomically(output, result)
    print(f"pe-port: wrote {output} {result.shape}", file=sys.stderr)
    return 0


def _model_function(args: argparse.Namespace, encoder):
    if not args.features:
        return encoder
    return lambda pixels: encoder.forward_features(
        pixels, layer_idx=args.layer_idx, norm=args.norm, strip_cls_token=args.strip_cls)


def _encode_image_files(args: argparse.Namespace, config) -> int:
    """Image files in batches, written shard by shard (`outputs.py`): flat memory, progress,
    `--resume` and `--on-error skip`."""
    from pe_port.api import load, stderr_progress
    from pe_port.outputs import EmbeddingJob, errors_path, index_path
    from pe_port.progress import ImageProgress
    from pe_port.streaming import default_batch_size, embedded_batches, read_input_list

    files = list_images(args.input or [], args.recursive)
    if args.input_list:
        files += list_images(read_input_list(args.input_list))
    output = check_output(args.output)
    batch_size = args.batch_size or default_batch_size(args.target)
    on_error = "skip" if args.on_error == "skip" else "raise"
    job = EmbeddingJob(output, files, _job_options(args, batch_size), args.shard_size, on_error)
    job.open(resume=args.resume)
    try:
        # With --ray the model runs elsewhere: here it is checked and compiled into the cache
        # (a local cluster's actors find it there), not put on a device.
        encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch,
                       progress=None if args.quiet else stderr_progress,
                       require_device=not args.ray)
        with ImageProgress(len(files), job.done_count(), args.quiet) as progress:
            if args.ray:
                encoder.library()
                batches = _ray_batches(args, job.remaining_inputs(), batch_size, on_error)
            else:
                batches = embedded_batches(_model_function(args, encoder),
                                           job.remaining_inputs(), config.image_size,
                                           args.center_crop, batch_size, on_error)
            job.write(batches, progress.update)
        rows, failures = job.finish({"model": args.model})
    except UserError as err:
        note = job.stop()
        raise UserError(f"{err}; {note}" if note else str(err)) from None
    except BaseException:  # an interrupt (Ctrl-C): keep what is done for --resume
        note = job.stop()
        if note:
            print(f"pe-port: interrupted; {note}", file=sys.stderr)
        raise
    written = f"{output} ({rows:,} rows)"
    if output.suffix == ".npy":
        written += f", row order in {index_path(output)}"
    if on_error == "skip":
        where = "rows with an error" if output.suffix == ".parquet" else errors_path(output)
        written += f"; {len(failures):,} unreadable images skipped ({where})"
    print(f"pe-port: wrote {written}", file=sys.stderr)
    return 0


def _ray_batches(args: argparse.Namespace, paths: list[Path], batch_size: int, on_error: str):
    from pe_port.ray import ray_batches

    checkpoint = str(Path(args.checkpoint).absolute()) if args.checkpoint else None
    options = {"model": args.model, "checkpoint": checkpoint, "target": args.target,
               "dtype": args.dtype, "arch": args.arch, "center_crop": args.center_crop,
               "on_error": on_error,
               "features": (args.layer_idx, args.norm, args.strip_cls) if args.features else None}
    return ray_batches(args.ray, paths, options, batch_size,
                       gpus_per_actor=1.0 if args.target == "cuda" else 0.0)


def _job_options(args: argparse.Namespace, batch_size: int) -> dict:
    """What decides the rows of an encode: a resume must match all of it."""
    checkpoint = "hub"
    if args.checkpoint:
        path = Path(args.checkpoint).absolute()
        stat = path.stat() if path.is_file() else None
        checkpoint = f"{path} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})" if stat else (
            str(path))
    return {"model": args.model, "checkpoint": checkpoint, "target": args.target,
            "arch": args.arch, "dtype": args.dtype, "center_crop": args.center_crop,
            "features": [args.layer_idx, args.norm, args.strip_cls] if args.features else None,
            "batch_size": batch_size}


# ---- text (PE-Core): encode-text, classify, search ---------------------------------------------

def _read_lines(path: str, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what} file {file} " + ("is not a regular file" if file.exists()
                                                  else "does not exist"))
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} file {file}: {err}") from None
    return [line for line in lines if line]


def _texts(given: list[str] | None, path: str | None, what: str) -> list[str]:
    texts = list(given or []) + (_read_lines(path, what) if path else [])
    texts = [text.strip() for text in texts]
    if not texts or any(not text for text in texts):
        raise UserError(f"give at least one non-empty {what}")
    return texts


def _cmd_encode_text(args: argparse.Namespace) -> int:
    from pe_port.api import load
    from pe_port.config import text_config

    text_config(args.model)  # a model without a text tower fails before anything is read
    texts = _texts(args.text, args.text_file, "text")
    output = check_output(args.output, (".npy",))
    encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch)
    result = encoder.encode_text(texts, normalize=args.normalize)
    _save_npy_atomically(output, result)
    print(f"pe-port: wrote {output} {result.shape}", file=sys.stderr)
    return 0


def _labels(args: argparse.Namespace) -> list[str]:
    given = [label for label in (args.labels or "").split(",")] if args.labels else None
    return _texts(given, args.labels_file, "label")


def _cmd_classify(args: argparse.Namespace) -> int:
    import json

    from pe_port.api import load
    from pe_port.config import text_config

    text_config(args.model)
    labels = _labels(args)
    templates = _read_lines(args.templates, "templates") if args.templates else None
    if templates is not None and (not templates or any("{}" not in t for t in templates)):
        raise UserError(f"templates file {args.templates}: each line needs a {{}} for the label")
    files = list_images(args.input)
    encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch)
    probabilities = encoder.zero_shot(files, labels, templates, center_crop=args.center_crop)
    top_k = min(args.top_k, len(labels))
    for path, row in zip(files, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top_k]
        if args.json:
            print(json.dumps({"image": str(path), "labels": [labels[i] for i in best],
                              "probabilities": [round(float(row[i]), 6) for i in best]}))
        else:
            print(path)
            for i in best:
                print(f"  {row[i]:7.2%}  {labels[i]}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from pe_port.api import load
    from pe_port.config import text_config
    from pe_port.runtime import normalized

    text_config(args.model)
    query = _texts([args.query], None, "query")
    files = list_images(args.input)
    encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch)
    images = normalized(encoder.encode_images(files, center_crop=args.center_crop))
    scores = images @ encoder.encode_text(query, normalize=True)[0]
    for i in np.argsort(-scores, kind="stable")[:args.top_k]:
        print(f"{scores[i]:7.4f}  {files[i]}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pe_port.api import load
    from pe_port.artifact import check_export_destination, check_feature_variants
    from pe_port.config import get_config

    out = Path(args.output).absolute()
    check_export_destination(out)  # never replaces anything but an earlier artifact
    check_writable_dir(out.parent)
    check_feature_variants(args.features_variant, get_config(args.model).layers)  # before loading
    # Exporting is a (cross-)compile: the target's device need not be on this machine.
    encoder = load(args.model, args.checkpoint, args.target, args.dtype, arch=args.arch,
                   require_device=False)
    encoder.export(out, feature_variants=args.features_variant)
    print(f"pe-port: exported {args.model} for {encoder.target.kind.name} to {out}",
          file=sys.stderr)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """A `.pt` checkpoint to `.safetensors` (every tensor as float32, without `module.`;
    a CLIP file keeps both towers), so that a deployment never needs PyTorch."""
    from safetensors.numpy import save_file

    from pe_port.checkpoint import read_state_dict, unwrapped

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise UserError(f"output {output} must end with .safetensors")
    if output.is_dir():
        raise UserError(f"output {output} is a folder")
    check_writable_dir(output.parent.absolute())
    weights = unwrapped(read_state_dict(args.checkpoint))
    _write_atomically(output, lambda path: save_file(weights, str(path)))
    print(f"pe-port: wrote {output} ({len(weights)} tensors)", file=sys.stderr)
    return 0


def _feature_variant(text: str) -> tuple[int, bool, bool]:
    """`LAYER_IDX[,norm][,strip]` -> `(layer_idx, norm, strip_cls_token)`."""
    head, *flags = [part.strip() for part in text.split(",")]
    try:
        layer_idx = int(head)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: LAYER_IDX must be an integer") from None
    unknown = sorted(set(flags) - {"norm", "strip"})
    if unknown or len(flags) != len(set(flags)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: after LAYER_IDX only 'norm' and 'strip' may follow, each once")
    return layer_idx, "norm" in flags, "strip" in flags


def _input_kind(inputs: list[str]) -> str:
    if len(inputs) == 1 and inputs[0].endswith(".npy"):
        return "npy"
    for item in inputs:
        if item.endswith(".npy"):
            raise UserError("a .npy input must be given alone")
        if not Path(item).exists():
            raise UserError(f"input {item} does not exist")
    return "images"


def _read_npy(path: Path) -> np.ndarray:
    """A float32 `.npy`, its header checked before any data is read: a malformed header, or
    one declaring more data than the file holds, is one error line, not a traceback or a
    terabyte allocation."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise UserError(f"input {path} {what}")
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"version {version}")
            shape, fortran_order, dtype = read_header(stream, max_header_size=10_000)
            data_offset = stream.tell()
    except Exception as err:  # NumPy raises ValueError, SyntaxError, TokenError, ...
        raise UserError(f"cannot read {path} as a .npy array: bad header "
                        f"({type(err).__name__})") from None
    if dtype != np.float32:
        raise UserError(f"input {path} has dtype {dtype}; pre-processed pixels must be "
                        "float32 (N, 3, H, W)")
    count = 1
    for dim in shape:
        count *= dim
    if count * 4 != path.stat().st_size - data_offset:
        raise UserError(f"input {path} declares shape {shape} ({count * 4:,} bytes of data) "
                        f"but holds {path.stat().st_size - data_offset:,}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"cannot read {path} as a .npy array: {err}") from None
    return np.ascontiguousarray(array) if fortran_order else array


def _save_npy_atomically(path: Path, array: np.ndarray) -> None:
    def write(staged: Path) -> None:
        with open(staged, "wb") as stream:
            np.save(stream, array)

    _write_atomically(path, write)


def _write_atomically(path: Path, write) -> None:
    """`write(staged)` next to `path`, then rename: a failed run leaves no file. The file gets
    the user's umask (mkstemp makes it 0600); a full disk is one error line."""
    from pe_port.artifact import current_umask

    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(staged))
        os.chmod(staged, 0o666 & ~current_umask())
        os.replace(staged, path)
    except OSError as err:
        Path(staged).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pe-port", description="Perception Encoder models compiled with Apache TVM"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="the models, their sizes and cached weights").set_defaults(
        run=_cmd_list)

    download = commands.add_parser("download", help="fetch official checkpoints into the cache")
    download.add_argument("names", nargs="*", metavar="NAME")
    download.add_argument("--all", action="store_true", help="every official model")
    download.set_defaults(run=_cmd_download)

    encode = commands.add_parser("encode", help="run a model on a .npy tensor or images")
    _add_model_arguments(encode)
    encode.add_argument("--input", nargs="+", metavar="IN",
                        help="a float32 (N, 3, H, W) .npy, or image files, or folders")
    _add_folder_options(encode)
    encode.add_argument("--output", required=True, metavar="OUT.npy|OUT.parquet",
                        help="images: a .npy (row order in OUT.paths.txt) or Parquet "
                             "(columns path, embedding)")
    encode.add_argument("--features", action="store_true",
                        help="forward_features instead of forward")
    encode.add_argument("--layer-idx", type=int, default=-1)
    encode.add_argument("--norm", action="store_true", help="apply ln_post to the features")
    encode.add_argument("--strip-cls", action="store_true", help="drop the cls token")
    encode.add_argument("--center-crop", action="store_true",
                        help="resize the shorter side and crop, instead of squashing")
    _add_target_options(encode)
    encode.set_defaults(run=_cmd_encode)

    export = commands.add_parser("export", help="write the artifact for the C++ runner")
    _add_model_arguments(export)
    export.add_argument("-o", "--output", required=True, metavar="DIR")
    export.add_argument(
        "--features-variant", action="append", default=[], type=_feature_variant,
        metavar="LAYER_IDX[,norm][,strip]",
        help="also compile forward_features for this layer (e.g. -2,norm,strip); repeatable. "
             "forward and the default forward_features are always exported")
    _add_target_options(export)
    export.set_defaults(run=_cmd_export)

    encode_text = commands.add_parser(
        "encode-text", help="embed texts with a PE-Core model's text tower")
    _add_model_arguments(encode_text)
    encode_text.add_argument("--text", action="append", metavar="TEXT", help="repeatable")
    encode_text.add_argument("--text-file", metavar="FILE", help="one text per line")
    encode_text.add_argument("--output", required=True, metavar="OUT.npy")
    encode_text.add_argument("--normalize", action="store_true", help="unit-length rows")
    _add_target_options(encode_text)
    encode_text.set_defaults(run=_cmd_encode_text)

    classify = commands.add_parser(
        "classify", help="zero-shot: which label fits each image (PE-Core models)")
    _add_model_arguments(classify)
    classify.add_argument("--labels", metavar="A,B,C", help="comma-separated labels")
    classify.add_argument("--labels-file", metavar="FILE", help="one label per line")
    classify.add_argument("--templates", metavar="FILE",
                          help="prompt templates, one per line, {} for the label "
                               "(default: the label alone)")
    classify.add_argument("--input", required=True, nargs="+", metavar="IMAGE",
                          help="image files or folders")
    classify.add_argument("--top-k", type=_positive_int, default=5)
    classify.add_argument("--json", action="store_true", help="one JSON line per image")
    classify.add_argument("--center-crop", action="store_true")
    _add_target_options(classify)
    classify.set_defaults(run=_cmd_classify)

    search = commands.add_parser("search", help="rank images by a text query (PE-Core models)")
    _add_model_arguments(search)
    search.add_argument("--query", required=True)
    search.add_argument("--input", required=True, nargs="+", metavar="IMAGE",
                        help="image files or folders")
    search.add_argument("--top-k", type=_positive_int, default=10)
    search.add_argument("--center-crop", action="store_true")
    _add_target_options(search)
    search.set_defaults(run=_cmd_search)

    convert = commands.add_parser(
        "convert", help="a .pt checkpoint to .safetensors (then no PyTorch is needed)")
    convert.add_argument("checkpoint", metavar="CKPT.pt")
    convert.add_argument("output", metavar="OUT.safetensors")
    convert.set_defaults(run=_cmd_convert)
    return parser


def _add_folder_options(encode: argparse.ArgumentParser) -> None:
    from pe_port.outputs import DEFAULT_SHARD_SIZE
    from pe_port.streaming import DEFAULT_BATCH_SIZE

    encode.add_argument("--input-list", metavar="FILE", help="image paths, one per line")
    encode.add_argument("--recursive", action="store_true",
                        help="also the images in sub-folders of a folder")
    encode.add_argument("--batch-size", type=_positive_int, metavar="N",
                        help="images per model call (default: "
                             + ", ".join(f"{n} on {t}" for t, n in DEFAULT_BATCH_SIZE.items())
                             + ")")
    encode.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="an unreadable image: stop with no output (default), or skip it "
                             "and list it (OUT.errors.txt, or the Parquet error column)")
    encode.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUT.partial/")
    encode.add_argument("--shard-size", type=_positive_int, default=DEFAULT_SHARD_SIZE,
                        metavar="N", help="images per staged shard: what a resume may redo")
    encode.add_argument("--quiet", action="store_true", help="no progress on stderr")
    encode.add_argument("--ray", metavar="ADDRESS",
                        help="run on a Ray cluster: `auto`, ray://HOST:PORT, or `local` (a new "
                             "one-machine instance); needs "
                             "pip install 'pe-port[ray]'")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--checkpoint", help="a .pt or .safetensors file (default: the hub)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="cpu", choices=["cpu", "aarch64", "cuda"],
                        help="cpu: this machine's CPU; aarch64: 64-bit Arm with NEON "
                             "(cross-compiled on other machines: export only); cuda: NVIDIA")
    parser.add_argument("--arch", metavar="sm_XY",
                        help="the GPU generation of a cuda target (default: this machine's "
                             "GPU, else sm_90), e.g. sm_87 for Jetson Orin")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pe-port: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warn_in_one_line  # e.g. a text cut to the context
            return args.run(args)
    except UserError as err:
        print(f"pe-port: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
