"""The compile cache: one library per (config, dtype, functions, target, versions, source).

The key is computed from what determines the library, without building the graph, so a warm
load costs a hash and a `dlopen`. Each entry is `<key>.so` and `<key>.json`; the JSON records
the library's size and SHA-256, written after the library, and an entry whose library does not
match it (truncated, zeroed, replaced) is reported, removed and rebuilt, never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from pe_port.artifact import FeatureVariant

Progress = Callable[[str], None] | None
PACKAGE = Path(__file__).parent
# The files that turn a config into a library; any change to them compiles afresh.
SOURCES = ("model.py", "ops.py", "backends.py", "build.py", "artifact.py", "kernels")


def cache_dir() -> Path:
    """Where compiled libraries are kept: $PE_PORT_CACHE, else ~/.cache/pe_port."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pe_port"
    return Path(os.environ.get("PE_PORT_CACHE", default))


@functools.cache
def source_fingerprint() -> str:
    """A hash of the model, ops, backends, build and kernel sources."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = PACKAGE / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(config, dtype: str, variants: Sequence[FeatureVariant], target: str,
              backend: str) -> str:
    """The entry name of a library: a hash of everything that determines it. Variants count
    by the function they compile to: layer_idx -2 and 10 of a 12-block tower share a library."""
    import tvm

    from pe_port import __version__

    functions = [variant.function_name(config.layers) for variant in variants]
    text = json.dumps([asdict(config), dtype, functions, target, backend,
                       tvm.__version__, __version__, source_fingerprint()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lookup(key: str, progress: Progress = None) -> Path | None:
    """The library of entry `key` if it is there and intact; a damaged entry is removed."""
    library, record = cache_dir() / f"{key}.so", cache_dir() / f"{key}.json"
    if not library.exists():
        return None
    try:
        expected = json.loads(record.read_text())
        intact = (library.stat().st_size == expected["size"]
                  and _sha256(library) == expected["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if intact:
        return library
    if progress:
        progress(f"cached library {library} is damaged; removing it and compiling again")
    for path in (library, record):
        path.unlink(missing_ok=True)
    return None


def writable_cache_dir(progress: Progress = None) -> Path:
    """`cache_dir()` if a library can be written there; else a temporary folder (said once),
    so a read-only or full cache costs a compile per process, not a failed run."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
            pass
        return folder
    except OSError as err:
        fallback = _fallback_dir()
        if progress:
            progress(f"compile cache {folder} is not writable ({err.strerror}); "
                     f"using {fallback} for this run")
        return fallback


@functools.cache
def _fallback_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="pe_port_cache."))


def store(key: str, write_library: Callable[[Path], None], folder: Path) -> Path:
    """Write a library with `write_library(path)` as entry `key` in `folder`, atomically:
    a reader sees a whole entry or none."""
    folder.mkdir(parents=True, exist_ok=True)
    library, record = folder / f"{key}.so", folder / f"{key}.json"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staged = Path(tmp) / library.name
        write_library(staged)
        meta = {"size": staged.stat().st_size, "sha256": _sha256(staged),
                "python": sys.version.split()[0]}
        staged_record = Path(tmp) / record.name
        staged_record.write_text(json.dumps(meta))
        os.replace(staged, library)
        os.replace(staged_record, record)
    return library


def get_or_build(key: str, write_library: Callable[[Path], None], progress: Progress = None,
                 what: str = "") -> Path:
    """The library of entry `key`, built with `write_library` on a miss."""
    library = lookup(key, progress)
    if library is not None:
        return library
    folder = writable_cache_dir(progress)
    if folder != cache_dir():
        library = lookup_in(folder, key)
        if library is not None:
            return library
    if progress:
        progress(f"compiling {what} (first use; cached afterwards)".replace("  ", " "))
    started = time.monotonic()
    library = store(key, write_library, folder)
    if progress:
        progress(f"compiled in {time.monotonic() - started:.0f} s")
    return library


def lookup_in(folder: Path, key: str) -> Path | None:
    library = folder / f"{key}.so"
    return library if library.exists() and (folder / f"{key}.json").exists() else None
