"""Hostile and damaged inputs to pe_infer's readers: each is read or refused with one line,
never a crash, a hang or an exception other than the one pe_infer reports with exit 2.

The seeded mutator of tests/unit/test_fuzz_inputs.py runs variants of a valid `.npy`, PNG,
JPEG and artifact `metadata.json`, and of the C++ tokenizer's merges and tables, through
`pe_fuzz_inputs` (the very readers pe_infer uses, many inputs per process). `make test` runs
`PE_FUZZ_CASES` (default 150) per format; `make fuzz` runs thousands against a build with
AddressSanitizer and UndefinedBehaviorSanitizer, where any report aborts the process and fails
the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pe_port.artifact import METADATA_CHECKSUM_KEY, seal_metadata, seal_text
from tests.unit.test_fuzz_inputs import CASES_PER_FORMAT as CASES
from tests.unit.test_fuzz_inputs import mutate, valid_image, valid_npy

PER_PROCESS = 400  # inputs per run of the harness (a command line of bounded length)


def run_harness(build: Path, kind: str, inputs: list[Path]) -> list[str]:
    """One line per input, in order; fails on a crash, a sanitizer report or a stray throw."""
    lines = []
    for start in range(0, len(inputs), PER_PROCESS):
        chunk = inputs[start:start + PER_PROCESS]
        done = subprocess.run([str(build / "pe_fuzz_inputs"), kind, *map(str, chunk)],
                              capture_output=True, timeout=600)
        # Messages are ASCII: bytes of a file are shown escaped, never raw (strict decoding).
        done.stdout, done.stderr = done.stdout.decode("ascii"), done.stderr.decode("ascii",
                                                                                  "replace")
        out = done.stdout.splitlines()
        assert done.returncode == 0, (
            f"exit {done.returncode} after {len(out)} of {len(chunk)} {kind} inputs "
            f"(next: {chunk[min(len(out), len(chunk) - 1)]}):\n{done.stderr[-3000:]}")
        lines += out
    assert len(lines) == len(inputs), "a message of more than one line, or a missing one"
    assert all(line == "ok" or line.startswith("refused: ") for line in lines), lines
    return lines


def mutated_files(folder: Path, seed_bytes: bytes, suffix: str, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for i in range(CASES):
        path = folder / f"{i}{suffix}"
        path.write_bytes(mutate(seed_bytes, rng))
        paths.append(path)
    return paths


@pytest.mark.parametrize("fmt", ["npy", "PNG", "JPEG"])
def test_mutated_inputs_are_read_or_refused(cpp_build, tmp_path, fmt):
    original = valid_npy() if fmt == "npy" else valid_image(fmt)
    seed = 1 if fmt == "npy" else 2
    files = mutated_files(tmp_path / fmt, original, f".{fmt.lower()}", seed)
    lines = run_harness(cpp_build, "npy" if fmt == "npy" else "image", files)
    assert any(line.startswith("refused: ") for line in lines)


# Values a tampered metadata.json may hold where a number, string or list belongs.
HOSTILE_VALUES = [-1, 0, 2**63, 2**64 + 1, 1e308, -1e308, float("nan"), float("inf"), "",
                  "x" * 1000, [], {}, None, True, [[[[[[[[[[1]]]]]]]]]], [2**62] * 4]


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    yield path


def _replace(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def tampered_metadata(text: str, rng: np.random.Generator) -> str:
    """A third byte mutations (mostly broken JSON, or refused by the checksum), a third the same
    sealed again with a matching checksum, a third valid JSON with one value replaced, sealed:
    the checks behind the checksum see hostile values too."""
    kind = int(rng.integers(0, 3))
    if kind < 2:
        prefix = text[:text.rindex(f'"{METADATA_CHECKSUM_KEY}"')]
        mutated = mutate(prefix.encode(), rng).decode("latin-1")
        return seal_text(mutated) if kind else mutated + text[len(prefix):]
    meta = json.loads(text)
    meta.pop(METADATA_CHECKSUM_KEY)
    paths = list(_leaves(meta))
    path = paths[int(rng.integers(0, len(paths)))]
    value = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
    return seal_metadata(_replace(meta, path, value))


@pytest.mark.parametrize("exported", ["t16_artifact", "clip_artifact"])
def test_tampered_artifacts_are_read_or_refused(cpp_build, request, exported, tmp_path):
    """The vision-only export, and the CLIP one whose metadata also describes the text tower."""
    artifact = request.getfixturevalue(exported)
    text = (artifact / "metadata.json").read_text()
    rng = np.random.default_rng(3)
    dirs = []
    for i in range(CASES):
        case = tmp_path / str(i)
        case.mkdir()
        for entry in artifact.iterdir():
            if entry.name == "metadata.json":
                continue
            try:
                os.link(entry, case / entry.name)
            except OSError:
                shutil.copyfile(entry, case / entry.name)
        (case / "metadata.json").write_text(tampered_metadata(text, rng), encoding="latin-1")
        dirs.append(case)
    lines = run_harness(cpp_build, "artifact", [artifact, *dirs])
    assert lines[0] == "ok"  # the untouched artifact is read
    assert sum(line.startswith("refused: ") for line in lines) > CASES // 4


# A tokenizer case parses half a megabyte (0.25 s): 10 cases in `make test`, 200 in `make fuzz`.
TOKENIZER_CASES = max(CASES // 15, 10)


def tampered_tables(text: str, rng: np.random.Generator) -> str:
    """Half byte mutations (mostly broken JSON), half valid JSON with one value replaced."""
    if rng.integers(0, 2):
        return mutate(text.encode(), rng).decode("latin-1")
    tables = json.loads(text)
    key = sorted(tables)[int(rng.integers(0, len(tables)))]
    paths = list(_leaves(tables[key]))
    path = paths[int(rng.integers(0, min(len(paths), 50)))]  # the first entries: a hot part
    value = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
    tables[key] = _replace(tables[key], path, value)
    return json.dumps(tables)


def test_tampered_tokenizer_files_are_read_or_refused(cpp_build, tmp_path):
    from pe_port import tokenizer, tokenizer_export

    merges = tokenizer_export.merges_text(tokenizer.find_vocab()).encode("utf-8")
    tables = tokenizer_export.tables_json()
    rng = np.random.default_rng(4)
    valid = tmp_path / "valid"
    valid.mkdir()
    (valid / "merges.txt").write_bytes(merges)
    (valid / "tables.json").write_text(tables)
    dirs = []
    for i in range(TOKENIZER_CASES):
        case = tmp_path / str(i)
        case.mkdir()
        damaged = "merges.txt" if i % 3 == 0 else "tables.json"
        kept = "tables.json" if damaged == "merges.txt" else "merges.txt"
        try:
            os.link(valid / kept, case / kept)
        except OSError:
            shutil.copyfile(valid / kept, case / kept)
        data = (mutate(merges, rng) if damaged == "merges.txt"
                else tampered_tables(tables, rng).encode("latin-1"))
        (case / damaged).write_bytes(data)
        dirs.append(case)
    lines = run_harness(cpp_build, "tokenizer", [valid, *dirs])
    assert lines[0] == "ok"  # the files export writes are read
    assert any(line.startswith("refused: ") for line in lines)
