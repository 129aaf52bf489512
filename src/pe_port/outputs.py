"""The embeddings of many images on disk: a `.npy` with the index of its rows beside it
(`OUT.paths.txt`), or Parquet (columns `path`, `embedding`); written in shards, so that an
interrupted run resumes where it stopped, and renamed into place at the end (atomic).

While a job runs, it writes into the folder `OUT.partial/` beside the output:

    manifest.json       what the job is (its inputs, model and options); a resume must match
    shard-000000.f32    the float32 rows of the shard's embedded images, appended per batch
    shard-000000.json   the shard's inputs in order, each with its error or null; written last,
                        its presence marks the shard finished

A shard being written when a run stopped is written again on resume; finished ones are not.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pe_port.errors import UserError
from pe_port.streaming import Batch

MANIFEST_FORMAT = 1
OUTPUT_SUFFIXES = (".npy", ".parquet")
# Images per shard: what a resume may redo, and one Parquet row group at most.
DEFAULT_SHARD_SIZE = 1024
# A Parquet row group is read whole: keep each to about this size (token features are large).
ROW_GROUP_BYTES = 64 << 20
COPY_CHUNK = 1 << 20


def check_output(output: str | Path, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES) -> Path:
    """An output path ending in one of `suffixes` (default .npy or .parquet) in a writable
    folder; checked before work."""
    path = Path(output)
    if path.suffix not in suffixes:
        raise UserError(f"output {path} must end with {' or '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"output {path} is a folder")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("Parquet output needs pyarrow: "
                            "pip install 'pe-port[parquet]'") from None
    check_writable_dir(path.parent)
    return path


def check_writable_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable")


def index_path(output: Path) -> Path:
    """The paths of a `.npy`'s rows, one per line, in row order."""
    return output.with_name(output.stem + ".paths.txt")


def errors_path(output: Path) -> Path:
    """The inputs left out with `on_error="skip"`: `path<TAB>error` per line."""
    return output.with_name(output.stem + ".errors.txt")


def inputs_digest(inputs: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(str(path).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


class EmbeddingJob:
    """Embeddings of `inputs` written to `output` in shards of `shard_size` inputs.

    `options` (model, checkpoint, target, dtype, ...) identify what computes the rows: a
    resumed job must have the same options and inputs, or its finished shards would not fit.
    """

    def __init__(self, output: Path, inputs: list[Path], options: dict,
                 shard_size: int = DEFAULT_SHARD_SIZE, on_error: str = "raise") -> None:
        if shard_size < 1:
            raise UserError(f"shard size must be a positive integer, got {shard_size}")
        self.output = output
        self.inputs = inputs
        self.shard_size = shard_size
        self.on_error = on_error
        self.staging = output.with_name(output.name + ".partial")
        self.manifest = {"format": MANIFEST_FORMAT, "options": options,
                         "shard_size": shard_size, "inputs": len(inputs),
                         "inputs_sha256": inputs_digest(inputs)}

    # ---- the staging folder -----------------------------------------------------------------
    def open(self, resume: bool) -> None:
        """Create the staging folder, or with `resume` take up the one an interrupted run of
        this same job left. Checked before the model loads: a mismatch costs no compile."""
        if not self.staging.exists():
            self.staging.mkdir()
            staged = self.staging / "manifest.json.tmp"
            staged.write_text(json.dumps(self.manifest, indent=1))
            os.replace(staged, self.staging / "manifest.json")
            return
        if not resume:
            raise UserError(f"{self.staging} holds an interrupted run for this output: pass "
                            "--resume to continue it, or delete it to start again")
        differences = self._differences_from(self.staging / "manifest.json")
        if differences:
            raise UserError(f"cannot resume: {self.staging} was made with another "
                            f"{', '.join(differences)}; rerun with the same inputs and "
                            "options, or delete it to start again")
        for leftover in self.staging.glob("*.tmp"):
            leftover.unlink()
        if self.on_error == "raise":
            self._check_finished_shards_hold_no_failure()

    def _differences_from(self, manifest_file: Path) -> list[str]:
        try:
            earlier = json.loads(manifest_file.read_text())
        except (OSError, ValueError):
            raise UserError(f"{self.staging} is not a pe-port staging folder (no readable "
                            "manifest.json); delete it to start again") from None
        if earlier.get("format") != MANIFEST_FORMAT:
            return ["staging format"]
        differences = [f"{key} ({earlier['options'].get(key)!r} -> {value!r})"
                       for key, value in self.manifest["options"].items()
                       if earlier["options"].get(key) != value]
        if (earlier.get("inputs"), earlier.get("inputs_sha256")) != (
                self.manifest["inputs"], self.manifest["inputs_sha256"]):
            differences.append(f"list of inputs ({earlier.get('inputs')} files -> "
                               f"{self.manifest['inputs']})")
        if earlier.get("shard_size") != self.shard_size:
            differences.append(f"shard size ({earlier.get('shard_size')} -> {self.shard_size})")
        return differences

    def _check_finished_shards_hold_no_failure(self) -> None:
        for shard in sorted(self.finished_shards()):
            for _path, error in self._entries(shard):
                if error is not None:
                    raise UserError(f"{error} (skipped by an earlier --on-error skip run; "
                                    "resume with --on-error skip, or delete "
                                    f"{self.staging})")

    def stop(self) -> str:
        """After a failed or interrupted run: keep the staging folder for a resume when a shard
        was finished, else remove it. Returns a note for the user ("" when removed)."""
        done = self.done_count()
        if done == 0:
            shutil.rmtree(self.staging, ignore_errors=True)
            return ""
        for leftover in self.staging.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        return (f"{done:,} of {len(self.inputs):,} images done are kept in {self.staging} "
                "(--resume continues)")

    # ---- shards -----------------------------------------------------------------------------
    @property
    def shard_count(self) -> int:
        return math.ceil(len(self.inputs) / self.shard_size)

    def shard_inputs(self, shard: int) -> list[Path]:
        return self.inputs[shard * self.shard_size:(shard + 1) * self.shard_size]

    def _shard_file(self, shard: int, suffix: str) -> Path:
        return self.staging / f"shard-{shard:06d}{suffix}"

    def finished_shards(self) -> set[int]:
        return {shard for shard in range(self.shard_count)
                if self._shard_file(shard, ".json").exists()}

    def done_count(self) -> int:
        return sum(len(self.shard_inputs(shard)) for shard in self.finished_shards())

    def remaining_inputs(self) -> list[Path]:
        """The inputs of the shards still to do, in order: what the model has to see."""
        finished = self.finished_shards()
        return [path for shard in range(self.shard_count) if shard not in finished
                for path in self.shard_inputs(shard)]

    def _entries(self, shard: int) -> list[tuple[str, str | None]]:
        return [tuple(entry) for entry in
                json.loads(self._shard_file(shard, ".json").read_text())["entries"]]

    def _row_shape(self, shard: int) -> list[int] | None:
        return json.loads(self._shard_file(shard, ".json").read_text())["row_shape"]

    def write(self, batches: Iterable[Batch], progress: Callable[[int], None] = lambda n: None
              ) -> None:
        """Store `batches` (the model's results for `remaining_inputs()`, in order) shard by
        shard; `progress(n)` hears of every `n` inputs done."""
        finished = self.finished_shards()
        todo = iter([shard for shard in range(self.shard_count) if shard not in finished])
        try:
            self._write(batches, todo, progress)
        finally:
            for leftover in self.staging.glob("*.tmp"):
                leftover.unlink(missing_ok=True)

    def _write(self, batches: Iterable[Batch], todo, progress: Callable[[int], None]) -> None:
        writer = None
        for batch in batches:
            self._check_finite(batch)
            while batch.entries:
                if writer is None:
                    shard = next(todo, None)
                    if shard is None:
                        raise AssertionError("more results than inputs")
                    writer = ShardWriter(self, shard)
                room = writer.expected - writer.count
                head, batch = batch.split(room) if len(batch.entries) > room else (
                    batch, Batch([], None))
                writer.add(head)
                progress(len(head.entries))
                if writer.count == writer.expected:
                    writer.close()
                    writer = None
        if writer is not None or next(todo, None) is not None:
            raise AssertionError("fewer results than inputs")

    def _check_finite(self, batch: Batch) -> None:
        if batch.embeddings is None:
            return
        finite = np.isfinite(batch.embeddings.reshape(len(batch.embeddings), -1)).all(axis=1)
        if not finite.all():
            path = batch.paths[int(np.argmin(finite))]
            raise UserError(f"the model produced NaN or Inf for {path}; nothing written to "
                            f"{self.output}")

    # ---- the output -------------------------------------------------------------------------
    def finish(self, metadata: dict | None = None) -> tuple[int, list[tuple[str, str]]]:
        """Join the shards into the output, rename it into place and remove the staging
        folder. Returns the number of rows and the inputs left out with their errors."""
        shards = range(self.shard_count)
        shapes = {tuple(shape) for shape in map(self._row_shape, shards) if shape is not None}
        if not shapes:
            raise UserError(f"none of the {len(self.inputs):,} images could be read; nothing "
                            f"written to {self.output}")
        (row_shape,) = shapes
        entries = [entry for shard in shards for entry in self._entries(shard)]
        failures = [(path, error) for path, error in entries if error is not None]
        rows = len(entries) - len(failures)
        if self.output.suffix == ".parquet":
            self._stage_parquet(row_shape, metadata or {})
        else:
            self._stage_npy(rows, row_shape, entries, failures)
        try:
            for staged, final in self._renames():
                os.replace(staged, final)
            for stale in self._stale_companions():
                stale.unlink(missing_ok=True)
        except OSError as err:
            raise UserError(f"cannot write {self.output}: {err.strerror or err}") from None
        shutil.rmtree(self.staging)
        return rows, failures

    def _stale_companions(self) -> list[Path]:
        """Files beside a `.npy` output that belong to the one it replaced: an errors list from
        an earlier `--on-error skip` run would otherwise name failures of another run."""
        if self.output.suffix == ".parquet" or self.on_error == "skip":
            return []
        return [errors_path(self.output)]

    def _renames(self) -> list[tuple[Path, Path]]:
        """Staged file -> its place; the output itself last: its rename is what commits."""
        pairs = [(self.staging / "paths.out", index_path(self.output)),
                 (self.staging / "errors.out", errors_path(self.output))]
        pairs = [(staged, final) for staged, final in pairs if staged.exists()]
        return pairs + [(self.staging / "output.out", self.output)]

    def _stage_npy(self, rows: int, row_shape: tuple[int, ...],
                   entries: list[tuple[str, str | None]], failures: list) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                  "fortran_order": False, "shape": (rows, *row_shape)}
        with open(self.staging / "output.out", "wb") as out:
            np.lib.format.write_array_header_2_0(out, header)
            for shard in range(self.shard_count):
                with open(self._shard_file(shard, ".f32"), "rb") as rows_file:
                    shutil.copyfileobj(rows_file, out, COPY_CHUNK)
        (self.staging / "paths.out").write_text(
            "".join(f"{path}\n" for path, error in entries if error is None), encoding="utf-8")
        if self.on_error == "skip":
            (self.staging / "errors.out").write_text(
                "".join(f"{path}\t{error}\n" for path, error in failures), encoding="utf-8")

    def _stage_parquet(self, row_shape: tuple[int, ...], metadata: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        width = math.prod(row_shape)
        fields = [pa.field("path", pa.string(), nullable=False),
                  pa.field("embedding", pa.list_(pa.float32(), width))]
        if self.on_error == "skip":
            fields.append(pa.field("error", pa.string()))
        about = {**metadata, "embedding_shape": list(row_shape)}
        schema = pa.schema(fields, metadata={"pe_port": json.dumps(about)})
        group = max(1, ROW_GROUP_BYTES // (4 * width))
        with pq.ParquetWriter(self.staging / "output.out", schema) as writer:
            for shard in range(self.shard_count):
                entries = self._entries(shard)
                rows = np.memmap(self._shard_file(shard, ".f32"), np.float32, "r") if any(
                    error is None for _, error in entries) else np.zeros(0, np.float32)
                rows = rows.reshape(-1, width)
                first_row = 0
                for start in range(0, len(entries), group):
                    chunk = entries[start:start + group]
                    writer.write_table(parquet_table(schema, chunk, rows, first_row))
                    first_row += sum(error is None for _, error in chunk)
                del rows


def parquet_table(schema, entries: list[tuple[str, str | None]], rows: np.ndarray,
                  first_row: int):
    """The Parquet rows of `entries`: an input left out has a null embedding and its error."""
    import pyarrow as pa

    width = rows.shape[1]
    embedded = np.array([error is None for _, error in entries])
    values = np.zeros((len(entries), width), np.float32)
    values[embedded] = rows[first_row:first_row + int(embedded.sum())]
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), width, mask=pa.array(~embedded))
    columns = [pa.array([path for path, _ in entries], pa.string()), embedding]
    if "error" in schema.names:
        columns.append(pa.array([error for _, error in entries], pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


class ShardWriter:
    """One shard being written: rows appended per batch, then its entries (the commit)."""

    def __init__(self, job: EmbeddingJob, shard: int) -> None:
        self.job = job
        self.shard = shard
        self.expected = len(job.shard_inputs(shard))
        self.entries: list[tuple[str, str | None]] = []
        self.row_shape: list[int] | None = None
        self.rows_file = open(job._shard_file(shard, ".f32.tmp"), "wb")  # noqa: SIM115

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, batch: Batch) -> None:
        expected = self.job.shard_inputs(self.shard)[self.count:self.count + len(batch.entries)]
        if [path for path, _ in batch.entries] != list(expected):
            raise AssertionError("results out of input order")
        self.entries += [(str(path), error) for path, error in batch.entries]
        if batch.embeddings is not None:
            self.row_shape = list(batch.embeddings.shape[1:])
            self.rows_file.write(np.ascontiguousarray(batch.embeddings, np.float32).tobytes())

    def close(self) -> None:
        self.rows_file.flush()
        os.fsync(self.rows_file.fileno())
        self.rows_file.close()
        os.replace(self.job._shard_file(self.shard, ".f32.tmp"),
                   self.job._shard_file(self.shard, ".f32"))
        staged = self.job._shard_file(self.shard, ".json.tmp")
        staged.write_text(json.dumps({"row_shape": self.row_shape, "entries": self.entries}))
        os.replace(staged, self.job._shard_file(self.shard, ".json"))
