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
from pe_port.build import cpu_target, export_tower, param_specs
from pe_port.config import MODEL_NAMES, custom_config, get_config
from pe_port.params import parameter_count
from pe_port.runtime import Encoder
from tests.helpers import numpy_weights, random_images, reference_model

CONFIG = custom_config(layers=1)


@pytest.fixture(scope="module")
def weights():
    return numpy_weights(reference_model(CONFIG, seed=11))


def test_warm_load_does_not_build_the_graph(weights, monkeypatch):
    images = random_images(1, 32, 32, seed=0)
    first = Encoder("custom", CONFIG, cpu_target(), "float32", weights).prepare()(images)

    def no_export(*args, **kwargs):
        raise AssertionError("a warm load built the graph")

    monkeypatch.setattr(build, "export_tower", no_export)
    monkeypatch.setattr(build.VisionTransformer, "export_tvm", no_export)
    warm = Encoder("custom", CONFIG, cpu_target(), "float32", weights).prepare()(images)
    np.testing.assert_array_equal(warm, first)


def replace_file(path, data: bytes) -> None:
    """Damage as another process (or the disk) would: a new file at the path. Not in place:
    this process has the library mapped since the test above, and truncating a mapped file
    makes its next page access a SIGBUS."""
    staged = path.with_name(path.name + ".damaged")
    staged.write_bytes(data)
    os.replace(staged, path)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "bit flipped", "no record"])
def test_a_damaged_entry_is_reported_removed_and_rebuilt(weights, damage, capsys):
    encoder = Encoder("custom", CONFIG, cpu_target(), "float32", weights, progress=print)
    library = encoder.library()
    data = library.read_bytes()
    record = library.with_suffix(".json")
    if damage == "truncated":
        replace_file(library, data[: len(data) // 3])
    elif damage == "zeroed":
        replace_file(library, bytes(len(data)))
    elif damage == "bit flipped":
        middle = len(data) // 2
        replace_file(library, data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])
    else:
        record.unlink()
    capsys.readouterr()
    images = random_images(1, 16, 16, seed=1)
    out = Encoder("custom", CONFIG, cpu_target(), "float32", weights, progress=print)(images)
    assert np.isfinite(out).all()
    said = capsys.readouterr().out
    assert "damaged" in said and "compiling" in said, said
    expected = json.loads(record.read_text())
    assert library.stat().st_size == expected["size"]


def test_unwritable_cache_falls_back_to_a_temporary_one(weights, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PE_PORT_CACHE", str(blocker / "cache"))  # fails even as root
    encoder = Encoder("custom", custom_config(layers=1, width=48, heads=3), cpu_target(),
                      "float32", numpy_weights(reference_model(
                          custom_config(layers=1, width=48, heads=3), seed=1)), progress=print)
    assert np.isfinite(encoder(random_images(1, 16, 16, seed=2))).all()
    said = capsys.readouterr().out
    assert "not writable" in said and str(blocker) in said


def test_cache_key_changes_with_everything_that_determines_the_library():
    base = dict(config=CONFIG, dtype="float32", variants=(), target="llvm", backend="cpu")
    keys = {cache.cache_key(**base)}
    for change in [dict(config=custom_config(layers=2)), dict(dtype="float16"),
                   dict(variants=(pe_port.artifact.FeatureVariant(0, True, False),)),
                   dict(target="cuda"), dict(backend="generic")]:
        keys.add(cache.cache_key(**{**base, **change}))
    assert len(keys) == 6
    assert cache.cache_key(**base) == cache.cache_key(**base)


@pytest.mark.parametrize("name", ["PE-Core-T16-384", "PE-Spatial-B16-512", "PE-Lang-L14-448"])
def test_parameter_list_without_the_graph_is_the_exported_one(name):
    assert param_specs(get_config(name)) == export_tower(get_config(name), "float32")[1]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_without_torch_or_tvm(name):
    config = get_config(name)
    assert parameter_count(config) == sum(math.prod(shape) for _, shape in param_specs(config))
