"""`pe-port encode` on image files: the rows equal the API's one call on all images, their
order is written beside them, and --input-list, --recursive, Parquet, --on-error, --resume and
the progress lines do what `pe-port encode --help` says.

Model: PE-Core-T16-384 with random weights (the library the other t16 tests compile); few
images, since each costs a 384x384 forward.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

import pe_port
from pe_port import outputs
from pe_port.cli import main
from pe_port.progress import ImageProgress
from tests.conftest import SMALL_MODEL
from tests.tiny_model import write_images


@pytest.fixture(scope="module")
def encoder(t16_checkpoint):
    return pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=None)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("photos"), 5)


def encode(checkpoint, *argv) -> int:
    return main(["encode", SMALL_MODEL, "--checkpoint", str(checkpoint), "--quiet",
                 *map(str, argv)])


def one_call(encoder, paths) -> np.ndarray:
    return encoder(pe_port.preprocess(list(paths), encoder.config.image_size))


def test_folder_rows_equal_one_call_and_their_paths_are_indexed(
        encoder, t16_checkpoint, images, tmp_path):
    out = tmp_path / "emb.npy"
    assert encode(t16_checkpoint, "--input", images[0].parent, "--output", out,
                  "--batch-size", 2) == 0
    np.testing.assert_array_equal(np.load(out), one_call(encoder, images))  # exact: row-wise
    assert (tmp_path / "emb.paths.txt").read_text().splitlines() == list(map(str, images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.paths.txt"]


def test_parquet_output_equals_npy(encoder, t16_checkpoint, images, tmp_path):
    out = tmp_path / "emb.parquet"
    assert encode(t16_checkpoint, "--input", *images[:3], "--output", out) == 0
    table = pq.read_table(out)
    assert table.column_names == ["path", "embedding"]
    assert table.column("path").to_pylist() == list(map(str, images[:3]))
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32),
                                  one_call(encoder, images[:3]))


def test_input_list_and_recursive_folders_add_up_in_order(t16_checkpoint, images, tmp_path):
    nested = write_images(tmp_path / "more" / "deeper", 1, start=50)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[4]}\n\n{images[0]}\n")
    out = tmp_path / "emb.npy"
    assert encode(t16_checkpoint, "--input", tmp_path / "more", "--recursive",
                  "--input-list", listing, "--output", out) == 0
    assert (tmp_path / "emb.paths.txt").read_text().splitlines() == list(
        map(str, [*nested, images[4], images[0]]))


def test_a_corrupt_image_fails_with_one_line_naming_it_and_no_output(
        t16_checkpoint, images, tmp_path, capsys):
    bad = tmp_path / "in" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    code = encode(t16_checkpoint, "--input", images[0], bad, "--output", tmp_path / "e.npy")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pe-port: error: ") and len(err.splitlines()) == 1
    assert "bad.jpg" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging


def test_skip_goes_on_and_lists_the_corrupt_image(encoder, t16_checkpoint, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "emb.npy"
    assert encode(t16_checkpoint, "--input", images[0], bad, "--output", out,
                  "--on-error", "skip") == 0
    np.testing.assert_array_equal(np.load(out), one_call(encoder, images[:1]))
    assert (tmp_path / "emb.paths.txt").read_text() == f"{images[0]}\n"
    assert (tmp_path / "emb.errors.txt").read_text().startswith(f"{bad}\tcannot read image")
    # A later run into the same output without failures leaves no errors list of this one.
    assert encode(t16_checkpoint, "--input", images[0], "--output", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "emb.npy", "emb.paths.txt"]


def test_resume_after_an_interrupt_finishes_with_the_same_rows(
        encoder, t16_checkpoint, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.npy"
    close = outputs.ShardWriter.close

    def close_then_interrupt(writer):
        close(writer)
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.ShardWriter, "close", close_then_interrupt)
    argv = ["--input", *images[:4], "--output", out, "--shard-size", 2, "--batch-size", 2]
    assert encode(t16_checkpoint, *argv) == 130
    assert "2 of 4 images done are kept" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(outputs.ShardWriter, "close", close)
    assert encode(t16_checkpoint, *argv) == 2  # not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    assert encode(t16_checkpoint, *argv, "--resume") == 0
    np.testing.assert_array_equal(np.load(out), one_call(encoder, images[:4]))
    assert not (tmp_path / "emb.npy.partial").exists()


def test_progress_off_a_terminal_is_periodic_lines_and_a_summary():
    stream = io.StringIO()
    with ImageProgress(10, done=2, stream=stream, interval=0.0) as progress:
        progress.update(4)
        progress.update(4)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("pe-port: 6/10 images (60%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("pe-port: encoded 8 images in ")


def test_quiet_progress_prints_nothing():
    stream = io.StringIO()
    with ImageProgress(10, stream=stream, quiet=True, interval=0.0) as progress:
        progress.update(10)
    assert stream.getvalue() == ""
