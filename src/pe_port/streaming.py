"""Embedding many image files in bounded memory: which files, decoded how, in what batches.

Files are read in batches. A small pool of threads decodes and pre-processes the next images
(Pillow releases the GIL while it decodes and resizes, TVM while the model runs) while the model
runs on the current batch, and each batch is handed on as soon as it is embedded. At most three
batches of decoded images are held at a time, whatever the number of files.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pe_port.errors import ImageError, UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Images per model call: enough to fill the device, few enough to keep memory small. A GPU
# needs larger batches to reach its throughput; a CPU is as fast per image from about 8.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 32}
ON_ERROR = ("raise", "skip")
# Decoding threads: Pillow decodes one image per thread, and the model wants the cores too.
MAX_DECODE_WORKERS = 4


def default_batch_size(target_kind: str) -> int:
    return DEFAULT_BATCH_SIZE.get(target_kind, DEFAULT_BATCH_SIZE["cpu"])


def list_images(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Files named, and the image files of folders named (sorted by path; with `recursive`,
    those of their sub-folders too); nothing that is not a regular file (a FIFO would block
    the read forever)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = item.rglob("*") if recursive else item.iterdir()
            found = sorted(p for p in candidates
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise UserError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                + ("" if recursive else "; --recursive looks in sub-folders"))
            files.extend(found)
        else:
            files.append(item)
    for path in files:
        if not path.is_file():
            raise UserError(f"input {path} is not a regular file")
    return check_listable(files)


def read_input_list(path: str | Path) -> list[Path]:
    """The image files named by a text file, one path per line (blank lines ignored); a
    relative path is taken from the current folder, as on the command line."""
    listing = Path(path)
    if not listing.is_file():
        raise UserError(f"input list {listing} " + ("is not a regular file" if listing.exists()
                                                   else "does not exist"))
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read input list {listing}: {err}") from None
    files = [Path(line) for line in (raw.strip() for raw in lines) if line]
    if not files:
        raise UserError(f"input list {listing} names no files")
    return files


def check_listable(files: list[Path]) -> list[Path]:
    """The index names one file per line: a path with a line break cannot be written there."""
    for path in files:
        if "\n" in str(path) or "\r" in str(path):
            raise UserError(f"input {str(path)!r} has a line break in its name; rename it")
    return files


@dataclass
class Batch:
    """Consecutive inputs, each with the error that kept it out (None when it was embedded),
    and the embeddings of the embedded ones in their order (None when none was)."""

    entries: list[tuple[Path, str | None]]
    embeddings: np.ndarray | None

    @property
    def paths(self) -> list[Path]:
        return [path for path, error in self.entries if error is None]

    @property
    def failures(self) -> list[tuple[Path, str]]:
        return [(path, error) for path, error in self.entries if error is not None]

    def split(self, count: int) -> tuple[Batch, Batch]:
        """The first `count` entries and the rest, each with its own rows."""
        rows = sum(error is None for _, error in self.entries[:count])
        head, tail = self.entries[:count], self.entries[count:]
        if self.embeddings is None:
            return Batch(head, None), Batch(tail, None)
        return (Batch(head, self.embeddings[:rows] if rows else None),
                Batch(tail, self.embeddings[rows:] if rows < len(self.embeddings) else None))


def decoded_batches(paths: Sequence[Path], image_size: int, center_crop: bool = False,
                    batch_size: int = 8, on_error: str = "raise", workers: int | None = None
                    ) -> Iterator[tuple[list[tuple[Path, str | None]], np.ndarray | None]]:
    """`(entries, pixels)` per `batch_size` consecutive paths, decoded by a thread pool that
    works on the next two batches while the caller handles this one. An unreadable image
    raises its `ImageError` (`on_error="raise"`) or is recorded in its entry ("skip")."""
    from pe_port.preprocess import preprocess_one

    check_batching(batch_size, on_error)
    workers = workers or min(MAX_DECODE_WORKERS, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pe-port-decode")
    pending: deque[tuple[Path, Future]] = deque()
    remaining = iter(paths)

    def top_up() -> None:
        while len(pending) < 2 * batch_size:
            path = next(remaining, None)
            if path is None:
                return
            pending.append((path, pool.submit(preprocess_one, path, image_size, center_crop)))

    try:
        top_up()
        while pending:
            group = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            top_up()
            entries, arrays = [], []
            for path, future in group:
                try:
                    arrays.append(future.result())
                    entries.append((path, None))
                except ImageError as err:
                    if on_error == "raise":
                        raise
                    entries.append((path, str(err)))
            yield entries, (np.stack(arrays) if arrays else None)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def embedded_batches(run: Callable[[np.ndarray], np.ndarray], paths: Sequence[Path],
                     image_size: int, center_crop: bool = False, batch_size: int = 8,
                     on_error: str = "raise", workers: int | None = None) -> Iterator[Batch]:
    """`run` (the model) over the images of `paths`, one `Batch` per `batch_size` inputs."""
    for entries, pixels in decoded_batches(paths, image_size, center_crop, batch_size,
                                           on_error, workers):
        yield Batch(entries, None if pixels is None else run(pixels))


def check_batching(batch_size: int, on_error: str) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
