"""The artifact format: what `export` writes for the C++ runner, and the names it uses.

An artifact is a folder of three files, and four more for a PE-Core model exported with its text
tower:

- `model.so`: the compiled library (`export_library`), one Relax VM holding `forward`, the
  default `forward_features`, any extra feature variant, and for each of them
  `<function>_transform_params` (the weight packing, run once at load);
- `weights.bin`: the parameters in the artifact's dtype, concatenated in the order the
  functions take them;
- `metadata.json`: format version, model name and config, dtype, target, versions, the
  exported functions, pre-processing, the parameter table (name, shape, offset, nbytes),
  CRC-32s of the two other files, and last its own CRC-32 (`seal_metadata`);
- with the text tower (`TextExport`): `text_model.so` (its `forward`, token ids int32 `(N, L)`,
  L at most the context, to the embedding, and `forward_transform_params`),
  `text_weights.bin`, and what the C++ tokenizer reads (`tokenizer_export.py`):
  `bpe_merges.txt` and `tokenizer_tables.json`. metadata.json then has a `text` object: the
  text config, the text parameter table, `weights_nbytes`, `weights_crc32` and
  `library_crc32` of the text files, `logit_scale` (the checkpoint's; the logits' factor is its
  exp) and `tokenizer` (file names, their CRC-32s, the merges count, the vocabulary's SHA-256,
  context length and the start, end and pad ids). Without it, the artifact is vision only.

The C++ runner (`cpp/src/artifact.cc`) reads the same format and checks `FORMAT_VERSION`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pe_port.config import PEConfig, PETextConfig
from pe_port.errors import ArtifactError, UserError

# Bumped whenever the layout changes; the C++ runner refuses other versions.
# 2: one weight transform per function (`<name>_transform_params`).
# 3: metadata.json ends with its own CRC-32; the three checksums are required. The optional
#    `text` object (PE-Core's text tower) came later within 3: a reader that does not know it
#    runs the vision files as before, so older pe_infer builds keep reading new artifacts.
FORMAT_VERSION = 3
TEXT_FILES = ("text_model.so", "text_weights.bin", "bpe_merges.txt", "tokenizer_tables.json")
ARTIFACT_FILES = frozenset({"model.so", "weights.bin", "metadata.json", *TEXT_FILES})


class TextExport(NamedTuple):
    """The text tower of a PE-Core artifact: what `write_artifact` needs besides the vision."""

    library: Path
    config: PETextConfig
    params: Sequence[tuple[str, np.ndarray]]  # in the order `forward` takes them
    logit_scale: float  # as the checkpoint holds it: the log of the logits' factor
    vocab: Path  # CLIP's BPE vocabulary file, read by `tokenizer.read_merges`


class FeatureVariant(NamedTuple):
    """The arguments of `forward_features` that change the graph; each variant other than
    the default is its own compiled function."""

    layer_idx: int = -1
    norm: bool = False
    strip_cls_token: bool = False

    def stop_layer(self, layers: int) -> int:
        """The index of the last block run, in [0, layers)."""
        return (layers + self.layer_idx) % layers

    def function_name(self, layers: int) -> str:
        """The exported name of this variant; the default keeps the plain `forward_features`."""
        stop = self.stop_layer(layers)
        if (self.norm, stop, self.strip_cls_token) == (False, layers - 1, False):
            return "forward_features"
        return f"forward_features_norm{int(self.norm)}_layer{stop}_strip{int(self.strip_cls_token)}"


DEFAULT_FEATURES = FeatureVariant()


def transform_function_name(function: str) -> str:
    """The function that puts the weights in the layout `function` reads (run once, at load)."""
    return f"{function}_transform_params"


def check_feature_variants(variants: Iterable, layers: int) -> tuple[FeatureVariant, ...]:
    """`(layer_idx, norm, strip_cls_token)` triples, checked; `layer_idx` in [-layers, layers)."""
    checked = []
    for variant in variants:
        if not (isinstance(variant, tuple | list) and len(variant) == 3):
            raise UserError(f"feature variant {variant!r} is not (layer_idx, norm, strip_cls)")
        idx, norm, strip = variant
        if isinstance(idx, bool) or not isinstance(idx, int) or not -layers <= idx < layers:
            raise UserError(f"feature variant {variant!r}: layer_idx must be an integer in "
                            f"[{-layers}, {layers - 1}] (the model has {layers} blocks)")
        if not (isinstance(norm, bool) and isinstance(strip, bool)):
            raise UserError(f"feature variant {variant!r}: norm and strip_cls must be booleans")
        checked.append(FeatureVariant(idx, norm, strip))
    return tuple(checked)


def extra_variants(variants: Iterable[FeatureVariant], layers: int) -> tuple[FeatureVariant, ...]:
    """The variants that need a function of their own: not the default, each name once."""
    by_name = {v.function_name(layers): v for v in variants}
    by_name.pop(DEFAULT_FEATURES.function_name(layers), None)
    return tuple(by_name[name] for name in sorted(by_name))


# ---- writing ----------------------------------------------------------------------------------

def write_artifact(
    out_dir: Path,
    *,
    library: Path,
    model: str,
    config: PEConfig,
    dtype: str,
    target: str,
    versions: dict[str, str],
    variants: Sequence[FeatureVariant],
    params: Sequence[tuple[str, np.ndarray]],
    preprocess: dict,
    text: TextExport | None = None,
) -> Path:
    """Write the artifact into `out_dir`, all or nothing; `library` is copied, not rebuilt.

    `out_dir` must be new, empty, or an earlier artifact (`check_export_destination`);
    `params` are `(name, array)` in the order the functions take them, already in `dtype`.
    """
    out_dir = Path(out_dir).absolute()
    check_export_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        shutil.copyfile(library, staging / "model.so")
        entries, weights_nbytes, weights_crc = _write_weights(staging / "weights.bin", params)
        layers = config.layers
        metadata = {
            "format_version": FORMAT_VERSION,
            "model": model,
            "config": asdict(config),
            "dtype": dtype,
            "target": target,
            **versions,
            "functions": ["forward", "forward_features",
                          *(v.function_name(layers) for v in variants)],
            "feature_variants": [
                {"function": v.function_name(layers), "layer_idx": v.stop_layer(layers),
                 "norm": v.norm, "strip_cls_token": v.strip_cls_token}
                for v in variants
            ],
            "preprocess": preprocess,
            "weights_nbytes": weights_nbytes,
            "weights_crc32": weights_crc,
            "library_crc32": zlib.crc32((staging / "model.so").read_bytes()),
            "params": entries,
        }
        if text is not None:
            metadata["text"] = _write_text(staging, text)
        (staging / "metadata.json").write_text(seal_metadata(metadata), encoding="ascii")
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# The last key of metadata.json: the CRC-32 of every byte of the file before that key. A reader
# checks it on the raw bytes, without writing the JSON again the way Python does (C++ cannot).
METADATA_CHECKSUM_KEY = "metadata_crc32"


def seal_metadata(metadata: dict) -> str:
    """The text of metadata.json: `metadata` as indented JSON, then its checksum as last key."""
    body = json.dumps(metadata, indent=2)  # ASCII only: non-ASCII is escaped
    return seal_text(body.removesuffix("\n}") + ",\n  ")


def seal_text(prefix: str) -> str:
    """`prefix` (an unclosed JSON object ending where a key may follow) closed with the
    checksum of its bytes; tests also seal hostile prefixes to reach the checks behind it."""
    crc = zlib.crc32(prefix.encode("latin-1"))
    return f'{prefix}"{METADATA_CHECKSUM_KEY}": {crc}\n}}\n'


def _write_text(staging: Path, text: TextExport) -> dict:
    """The text tower's files, and the `text` object of the metadata describing them."""
    from pe_port import tokenizer_export

    model_so, weights_bin, merges, tables = (staging / name for name in TEXT_FILES)
    shutil.copyfile(text.library, model_so)
    entries, weights_nbytes, weights_crc = _write_weights(weights_bin, text.params)
    merges.write_bytes(tokenizer_export.merges_text(text.vocab).encode("utf-8"))
    tables.write_bytes(tokenizer_export.tables_json().encode("ascii"))
    return {
        "config": asdict(text.config),
        "functions": ["forward"],
        "logit_scale": float(text.logit_scale),
        "tokenizer": {**tokenizer_export.tokenizer_metadata(text.config.context_length),
                      "merges_crc32": zlib.crc32(merges.read_bytes()),
                      "tables_crc32": zlib.crc32(tables.read_bytes())},
        "weights_nbytes": weights_nbytes,
        "weights_crc32": weights_crc,
        "library_crc32": zlib.crc32(model_so.read_bytes()),
        "params": entries,
    }


def _write_weights(path: Path, params: Sequence[tuple[str, np.ndarray]]):
    entries, offset, crc = [], 0, 0
    with open(path, "wb") as blob:
        for name, value in params:
            data = np.ascontiguousarray(value).tobytes()
            blob.write(data)
            crc = zlib.crc32(data, crc)
            entries.append({"name": name, "shape": list(value.shape), "offset": offset,
                            "nbytes": len(data)})
            offset += len(data)
    return entries, offset, crc


# ---- the destination: never replace what export did not write ---------------------------------

def is_artifact_dir(folder: Path) -> bool:
    """A folder that `export` wrote: the artifact files, metadata saying so, nothing else."""
    try:
        names = {entry.name for entry in folder.iterdir()}
        metadata = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError):
        return False
    return (names <= ARTIFACT_FILES and isinstance(metadata, dict)
            and "format_version" in metadata and "pe_port_version" in metadata)


def check_export_destination(out_dir: Path) -> None:
    """`export` writes a new folder, fills an empty one or replaces an older artifact; any
    other folder, a file or a link at `out_dir` may hold the user's data and is left alone."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ArtifactError(f"{out_dir} exists and is not a folder; give a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_artifact_dir(out_dir):
        raise ArtifactError(f"{out_dir} is a folder that is not a pe-port artifact; export "
                            "writes only a new or empty folder or one an earlier export wrote")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished artifact into place; an older one is replaced only once this is
    complete, and removed file by file (never a recursive delete of what `out_dir` holds)."""
    if out_dir.exists():
        check_export_destination(out_dir)  # again: it may have changed during the export
    if not out_dir.exists() or not any(out_dir.iterdir()):
        os.replace(staging, out_dir)  # rename(2) also replaces an empty folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    os.replace(out_dir, old)  # the old artifact moves over the empty temporary folder
    os.replace(staging, out_dir)
    for name in ARTIFACT_FILES:
        (old / name).unlink(missing_ok=True)
    old.rmdir()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
