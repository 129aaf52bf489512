"""Embedding a folder: batches in file order equal to one call on all images, memory that does
not grow with the number of images, and shard files that resume where a run stopped.

Model: the tiny tower of `tests/tiny_model.py` (compiled once per session): these tests are
about what happens around the model. The CLI's use of all this: test_encode_folder_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import pe_port
from pe_port.errors import ImageError, UserError
from pe_port.outputs import EmbeddingJob, errors_path, index_path
from pe_port.streaming import Batch, embedded_batches, list_images
from tests.tiny_model import TINY_CONFIG, tiny_encoder, write_images

ROOT = Path(__file__).resolve().parents[2]
SIZE = TINY_CONFIG.image_size


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder().prepare()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 11)


def one_call(encoder, paths) -> np.ndarray:
    """What `encode` did before streaming: every image pre-processed, then one model call."""
    return encoder(pe_port.preprocess(list(paths), SIZE))


def corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return path


# ---- the API ----------------------------------------------------------------------------------

def test_encode_folder_batches_equal_one_call_in_file_order(encoder, images):
    batches = list(encoder.encode_folder(images[0].parent, batch_size=4))
    assert [len(paths) for paths, _ in batches] == [4, 4, 3]
    assert [p for paths, _ in batches for p in paths] == images  # sorted by name
    # Exact: each image's row does not depend on the batch it is in (row-wise kernels).
    np.testing.assert_array_equal(np.concatenate([e for _, e in batches]),
                                  one_call(encoder, images))


def test_encode_images_equals_one_call_for_any_batch_size(encoder, images):
    want = one_call(encoder, images)
    for batch_size in (1, 5, 64):
        np.testing.assert_array_equal(encoder.encode_images(images, batch_size=batch_size), want)


def test_an_unreadable_image_raises_by_default_naming_it(encoder, images, tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="bad.png"):
        list(encoder.encode_folder([images[0], bad, images[1]]))


def test_skip_leaves_out_unreadable_images_and_reports_them(encoder, images, tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    skipped = []
    batches = list(encoder.encode_folder([images[0], bad, images[1]], batch_size=2,
                                         on_error="skip", skipped=skipped))
    assert [p for paths, _ in batches for p in paths] == [images[0], images[1]]
    assert [path for path, _ in skipped] == [bad] and "cannot read image" in skipped[0][1]
    np.testing.assert_array_equal(np.concatenate([e for _, e in batches]),
                                  one_call(encoder, images[:2]))


def test_recursive_also_lists_sub_folders_in_path_order(tmp_path):
    top = write_images(tmp_path / "a", 2)
    nested = write_images(tmp_path / "a" / "sub", 2, start=5, suffix=".jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert list_images([tmp_path / "a"]) == top
    assert list_images([tmp_path / "a"], recursive=True) == sorted(top + nested)


def test_a_folder_of_sub_folders_only_suggests_recursive(tmp_path):
    write_images(tmp_path / "a" / "sub", 1)
    with pytest.raises(UserError, match="--recursive"):
        list_images([tmp_path / "a"])


# ---- memory -----------------------------------------------------------------------------------

PEAK_RSS_SCRIPT = """
import resource, sys
from tests.tiny_model import tiny_encoder
encoder = tiny_encoder().prepare()
for folder in sys.argv[1:]:
    for _ in encoder.encode_folder(folder, batch_size=8):
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
# One-shot encoding held every decoded image: 1.7 MB each at 384x384, so 210 more images are
# 370 MB more, before the model's activations (measured with this script's calls replaced by
# one-shot ones: +1,160 MB). Streaming holds three batches whatever the count; 50 MB covers the
# allocator's and the thread pool's noise (measured: 50 and 400 images within 6 MB).
MEMORY_MARGIN_MB = 50


def peak_rss_mb_after_each(*folders: Path) -> list[int]:
    """The process's peak RSS after encoding each folder in turn, in one fresh process (its
    start is most of the cost). A second call that peaks higher held more images."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, *map(str, folders)],
                            cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    return [int(line) for line in result.stdout.split()]


def test_peak_memory_does_not_grow_with_the_number_of_images(encoder, tmp_path):
    small, large = peak_rss_mb_after_each(write_images(tmp_path / "small", 30)[0].parent,
                                          write_images(tmp_path / "large", 240)[0].parent)
    assert large - small <= MEMORY_MARGIN_MB, f"peak RSS {small} MB for 30, {large} MB for 240"


# ---- shards on disk: resume, skip, Parquet -----------------------------------------------------

OPTIONS = {"model": "tiny", "batch_size": 3}


def run_job(encoder, output: Path, inputs, resume=False, on_error="raise", shard_size=4,
            stop_after_shards=None, options=OPTIONS):
    """A whole job as the CLI runs it; `stop_after_shards` interrupts it as Ctrl-C would."""
    job = EmbeddingJob(output, list(inputs), options, shard_size, on_error)
    job.open(resume)
    seen = []

    def run(pixels):
        seen.append(len(pixels))
        return encoder(pixels)

    def progress(_count):
        if stop_after_shards is not None and len(job.finished_shards()) >= stop_after_shards:
            raise KeyboardInterrupt

    try:
        job.write(embedded_batches(run, job.remaining_inputs(), SIZE, batch_size=3,
                                   on_error=on_error), progress)
    except KeyboardInterrupt:
        job.stop()
        return job, seen
    job.finish({"model": "tiny"})
    return job, seen


def test_npy_output_with_its_index_equals_one_call(encoder, images, tmp_path):
    output = tmp_path / "out.npy"
    run_job(encoder, output, images)
    np.testing.assert_array_equal(np.load(output), one_call(encoder, images))
    assert index_path(output).read_text().splitlines() == [str(p) for p in images]
    assert not (tmp_path / "out.npy.partial").exists()


def test_parquet_holds_the_same_rows_and_paths_as_npy(encoder, images, tmp_path):
    run_job(encoder, tmp_path / "out.npy", images)
    run_job(encoder, tmp_path / "out.parquet", images)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("path").to_pylist() == [str(p) for p in images]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32),
                                  np.load(tmp_path / "out.npy"))
    meta = json.loads(table.schema.metadata[b"pe_port"])
    assert meta == {"model": "tiny", "embedding_shape": [TINY_CONFIG.output_dim]}


def test_parquet_of_token_features_holds_flattened_rows_and_their_shape(encoder, images,
                                                                         tmp_path):
    def features(pixels):
        return encoder.forward_features(pixels, layer_idx=-1)

    job = EmbeddingJob(tmp_path / "tokens.parquet", images[:5], OPTIONS, shard_size=2)
    job.open(resume=False)
    job.write(embedded_batches(features, images[:5], SIZE, batch_size=3))
    job.finish()
    table = pq.read_table(tmp_path / "tokens.parquet")
    shape = json.loads(table.schema.metadata[b"pe_port"])["embedding_shape"]
    rows = np.array(table.column("embedding").to_pylist(), np.float32).reshape(-1, *shape)
    np.testing.assert_array_equal(rows, features(pe_port.preprocess(images[:5], SIZE)))


def test_resume_redoes_no_finished_shard_and_equals_an_uninterrupted_run(
        encoder, images, tmp_path):
    output = tmp_path / "out.npy"
    job, first = run_job(encoder, output, images, stop_after_shards=2)
    assert not output.exists() and job.finished_shards() == {0, 1}
    _, second = run_job(encoder, output, images, resume=True)
    assert sum(second) == len(images) - 8  # the two finished shards of 4 were not run again
    np.testing.assert_array_equal(np.load(output), one_call(encoder, images))
    assert index_path(output).read_text().splitlines() == [str(p) for p in images]


def test_an_interrupted_run_is_not_overwritten_without_resume(encoder, images, tmp_path):
    run_job(encoder, tmp_path / "out.npy", images, stop_after_shards=1)
    with pytest.raises(UserError, match="--resume"):
        run_job(encoder, tmp_path / "out.npy", images)


@pytest.mark.parametrize("change", ["inputs", "options"])
def test_resume_refuses_another_job(change, encoder, images, tmp_path):
    run_job(encoder, tmp_path / "out.npy", images, stop_after_shards=1)
    other = dict(inputs=images[:-1]) if change == "inputs" else dict(
        options={**OPTIONS, "batch_size": 5})
    with pytest.raises(UserError, match="cannot resume.*" + ("inputs" if change == "inputs"
                                                              else "batch_size")):
        run_job(encoder, tmp_path / "out.npy", **{"inputs": images, **other}, resume=True)


def test_a_stopped_run_without_a_finished_shard_leaves_nothing(encoder, images, tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="bad.png"):
        run_job(encoder, tmp_path / "out.npy", [images[0], bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "out.npy.partial"]
    EmbeddingJob(tmp_path / "out.npy", [images[0], bad], OPTIONS).stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]


def test_skip_lists_unreadable_images_beside_npy_and_in_parquet(encoder, images, tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    inputs = [images[0], bad, *images[1:6]]
    for suffix in (".npy", ".parquet"):
        run_job(encoder, tmp_path / f"out{suffix}", inputs, on_error="skip")
    good = [images[0], *images[1:6]]
    assert index_path(tmp_path / "out.npy").read_text().splitlines() == list(map(str, good))
    assert errors_path(tmp_path / "out.npy").read_text().startswith(f"{bad}\tcannot read")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), one_call(encoder, good))
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["path"] == list(map(str, inputs))
    assert table["embedding"][1] is None and "cannot read image" in table["error"][1]
    assert [e for e in table["error"] if e is not None] == [table["error"][1]]


def test_resume_without_skip_refuses_shards_that_skipped_an_image(encoder, images, tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    inputs = [bad, *images]
    run_job(encoder, tmp_path / "out.npy", inputs, on_error="skip", stop_after_shards=1)
    with pytest.raises(UserError, match="bad.png.*--on-error skip"):
        run_job(encoder, tmp_path / "out.npy", inputs, resume=True)


def test_batches_split_across_shard_boundaries_keep_their_rows(encoder):
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    entries = [(Path(f"{i}"), None if i != 1 else "bad") for i in range(6)]
    head, tail = Batch(entries, rows).split(3)
    assert head.paths == [Path("0"), Path("2")] and head.embeddings.tolist() == [[0, 1], [2, 3]]
    assert tail.paths == [Path("3"), Path("4"), Path("5")]
    assert tail.embeddings.tolist() == [[4, 5], [6, 7], [8, 9]]
