"""The compile cache: a warm load never builds the graph, a damaged entry is rebuilt, an
unwritable cache location still gives a working encoder."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import pe_port
from pe_port import build, cache
from pe_port.build import export_tower, param_specs
from pe_port.config import MODEL_NAMES, custom_config, get_config
from pe_port.params import parameter_count
from tests.conftest import SMALL_MODEL
from tests.helpers import random_images

CONFIG = custom_config(layers=1)


def test_warm_load_does_not_build_the_graph(t16_checkpoint, monkeypatch):
    """The second load of a model: a hash and a dlopen (the suite's other T16 tests share the
    library, so this adds no compile)."""
    images = random_images(1, 32, 32, seed=0)
    first = pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=None)(images)

    def no_export(*args, **kwargs):
        raise AssertionError("a warm load built the graph")

    monkeypatch.setattr(build, "export_tower", no_export)
    monkeypatch.setattr(build.VisionTransformer, "export_tvm", no_export)
    warm = pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=None)(images)
    np.testing.assert_array_equal(warm, first)


def replace_file(path, data: bytes) -> None:
    """Damage as another process (or the disk) would: a new file at the path. Not in place:
    a process that has the library mapped gets a SIGBUS at its next page access of a file
    truncated under it."""
    staged = path.with_name(path.name + ".damaged")
    staged.write_bytes(data)
    os.replace(staged, path)


LIBRARY_BYTES = bytes(range(256)) * 64


class CountingWriter:
    """A stand-in for the compiler (a real compile is minutes of a 2-core machine): writes
    known bytes as the library and counts its calls. `lookup` never loads what it checks."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path) -> None:
        self.calls += 1
        path.write_bytes(LIBRARY_BYTES)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "bit flipped", "no record"])
def test_a_damaged_entry_is_reported_removed_and_rebuilt(damage, capsys):
    key, write = f"damage-{damage.replace(' ', '-')}", CountingWriter()
    library = cache.get_or_build(key, write)
    data, record = library.read_bytes(), library.with_suffix(".json")
    if damage == "truncated":
        replace_file(library, data[: len(data) // 3])
    elif damage == "zeroed":
        replace_file(library, bytes(len(data)))
    elif damage == "bit flipped":
        middle = len(data) // 2
        replace_file(library, data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])
    else:
        record.unlink()
    assert cache.get_or_build(key, write, progress=print) == library
    said = capsys.readouterr().out
    assert "damaged" in said and "compiling" in said, said
    assert write.calls == 2
    assert library.read_bytes() == LIBRARY_BYTES
    assert json.loads(record.read_text())["size"] == len(LIBRARY_BYTES)


def test_a_compile_says_that_it_compiles_then_how_long_it_took():
    said = []
    cache.get_or_build("timed", CountingWriter(), progress=said.append, what="tiny")
    assert said[0].startswith("compiling tiny") and said[1].startswith("compiled in "), said


def test_an_intact_entry_is_not_rebuilt():
    write = CountingWriter()
    first = cache.get_or_build("intact", write)
    assert cache.get_or_build("intact", write) == first and write.calls == 1


def test_unwritable_cache_falls_back_to_a_temporary_one(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PE_PORT_CACHE", str(blocker / "cache"))  # fails even as root
    write = CountingWriter()
    library = cache.get_or_build("fallback", write, progress=print)
    assert library.read_bytes() == LIBRARY_BYTES and blocker not in library.parents
    said = capsys.readouterr().out
    assert "not writable" in said and str(blocker) in said
    assert cache.get_or_build("fallback", write) == library and write.calls == 1


def test_cache_key_changes_with_everything_that_determines_the_library():
    base = dict(config=CONFIG, dtype="float32", variants=(), target="llvm", backend="cpu")
    keys = {cache.cache_key(**base)}
    for change in [dict(config=custom_config(layers=2)), dict(dtype="float16"),
                   dict(variants=(pe_port.artifact.FeatureVariant(0, True, False),)),
                   dict(target="cuda"), dict(backend="generic")]:
        keys.add(cache.cache_key(**{**base, **change}))
    assert len(keys) == 6
    assert cache.cache_key(**base) == cache.cache_key(**base)


def test_variants_count_by_the_function_they_compile_to():
    config = custom_config(layers=3)
    same = [cache.cache_key(config, "float32", (pe_port.artifact.FeatureVariant(idx, True, True),),
                            "llvm", "cpu") for idx in (-2, 1)]
    assert same[0] == same[1]


@pytest.mark.parametrize("name", ["PE-Core-T16-384", "PE-Spatial-B16-512", "PE-Lang-L14-448"])
def test_parameter_list_without_the_graph_is_the_exported_one(name):
    assert param_specs(get_config(name)) == export_tower(get_config(name), "float32")[1]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_without_torch_or_tvm(name):
    config = get_config(name)
    assert parameter_count(config) == sum(math.prod(shape) for _, shape in param_specs(config))
