"""The C++ text path against the Python API: the tokenizer's ids, text embeddings and zero-shot
probabilities of `pe_infer` equal pe_port's on one artifact.

The artifact is PE-Core-T16-384 exported from a CLIP checkpoint with random weights (every
bias, embedding and the logit scale random; tests/cpp/conftest.py); its two libraries are the
ones tests/unit/test_text_api.py and the other C++ tests load (the compile cache's keys hold no
weights), compiled once per worker. The tokenizer is compared
through `pe_tokenize` on the files export writes, which needs no model at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib

import ftfy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pe_port import tokenizer, tokenizer_export
from pe_port.artifact import TEXT_FILES, is_artifact_dir
from tests.cpp.conftest import run_pe_infer
from tests.helpers import random_images, rel_error
from tests.unit.test_text_api import TEXTS
from tests.unit.test_tokenizer import FRAGMENTS, OFFICIAL_IDS
from tests.unit.test_tokenizer import TEXTS as DRAWN_TEXT

# Same library, same weights, same ids and batches as the Python API: the C++ side adds only
# float32 <-> bytes copies, so the outputs agree to the last bits (measured: 0). 1e-5 leaves
# room for the normalisation and softmax, which C++ computes in float64 and NumPy in float32.
TOLERANCE = 1e-5
CONTEXTS = (32, 72)  # the official contexts: T16..L14, and G14
# Only ftfy's HTML step runs in C++: a text whose ftfy.fix_text is this step's is in scope.
HTML_ONLY = ftfy.TextFixerConfig(
    unescape_html="auto", remove_terminal_escapes=False, fix_encoding=False,
    restore_byte_a0=False, replace_lossy_sequences=False, decode_inconsistent_utf8=False,
    fix_c1_controls=False, fix_latin_ligatures=False, fix_character_width=False,
    uncurl_quotes=False, fix_line_breaks=False, fix_surrogates=False,
    remove_control_chars=False, normalization=None)
LISTED = [
    *OFFICIAL_IDS, *FRAGMENTS, "", "x" * 300, "dog " * 100, "ΟΔΟΣ Σ aΣ' Σ.", "İstanbul ǅ",
    "&ampx &amp &#x41; &#65 &#0; &#128; &#xD800; &#99999999999; &#x;", "&AMP;amp; &NTILDE;",
    "a\nb <c> &amp;", "&amp;lt;\n<b> &amp;amp;", "it's I'M we'LL 'D 'Ve", "3.14e10 ٣ ½ ²",
    "<START_OF_TEXT> <ſtart_of_text> <end_of_text>x", "tab\tand\x0bvertical\x0cfeed",
    "x" * 20000, "ab" * 5000 + " " + "日本語" * 2000,  # long words: BPE by heap, not by rounds
]


def in_scope(text: str) -> bool:
    """Whether ftfy does nothing to `text` but its HTML step."""
    return ftfy.fix_text(text) == ftfy.fix_text(text, HTML_ONLY)


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "merges.txt").write_text(tokenizer_export.merges_text(tokenizer.find_vocab()),
                                       encoding="utf-8")
    (folder / "tables.json").write_text(tokenizer_export.tables_json(), encoding="ascii")
    return folder


def cpp_rows(cpp_build, files, texts: list[str], context: int) -> list[tuple[list[int], bool]]:
    """pe_tokenize's row and out-of-scope flag for each text."""
    done = subprocess.run(
        [str(cpp_build / "pe_tokenize"), str(files / "merges.txt"), str(files / "tables.json"),
         str(tokenizer.NUM_MERGES), str(context), str(tokenizer.START_ID),
         str(tokenizer.END_ID), str(tokenizer.PAD_ID)],
        input="".join(t.encode("utf-8").hex() + "\n" for t in texts),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = []
    for line in done.stdout.splitlines():
        ids, flag = line.split("|")
        rows.append(([int(i) for i in ids.split()], flag.strip() == "1"))
    assert len(rows) == len(texts)
    return rows


def check_rows(cpp_build, files, texts: list[str], context: int) -> None:
    expected = tokenizer.tokenize(texts, context).tolist()
    for text, want, (got, outside) in zip(texts, expected, cpp_rows(cpp_build, files, texts,
                                                                    context), strict=True):
        # Exact in scope; outside it, a difference never goes unflagged.
        if in_scope(text) or not outside:
            assert got == want, f"{text!r}: C++ {got} != Python {want} (flagged: {outside})"


@pytest.mark.parametrize("context", CONTEXTS)
def test_ids_equal_pythons_for_listed_texts(cpp_build, tokenizer_files, context):
    check_rows(cpp_build, tokenizer_files, LISTED, context)


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(texts=st.lists(DRAWN_TEXT, min_size=60, max_size=60), context=st.sampled_from(CONTEXTS))
def test_ids_equal_pythons_for_drawn_texts(cpp_build, tokenizer_files, texts, context):
    """Five draws of 60 texts: 300 texts per run, one process per draw."""
    check_rows(cpp_build, tokenizer_files, texts, context)


def test_out_of_scope_texts_are_flagged(cpp_build, tokenizer_files):
    texts = ["Ã©tÃ© mojibake", "ﬁsh", "e\u0301", "“quoted”", "ＬＯＵＤ", "a\r\nb", "\x85",
             "the Ã© x"]
    assert not any(in_scope(t) for t in texts)
    assert all(outside for _, outside in cpp_rows(cpp_build, tokenizer_files, texts, 32))
    plain = ["a photo of a dog", "&amp; café", "日本語", "naïve"]
    assert not any(outside for _, outside in cpp_rows(cpp_build, tokenizer_files, plain, 32))


# ---- the artifact ------------------------------------------------------------------------------

def test_export_writes_the_text_tower_sealed_by_the_metadata(clip_artifact, t16_artifact):
    meta = json.loads((clip_artifact / "metadata.json").read_text())
    text = meta["text"]
    assert text["config"]["context_length"] == 32 and text["functions"] == ["forward"]
    assert zlib.crc32((clip_artifact / "text_weights.bin").read_bytes()) == text["weights_crc32"]
    assert zlib.crc32((clip_artifact / "text_model.so").read_bytes()) == text["library_crc32"]
    tok = text["tokenizer"]
    for name, key in ((tok["merges"], "merges_crc32"), (tok["tables"], "tables_crc32")):
        assert zlib.crc32((clip_artifact / name).read_bytes()) == tok[key]
    assert (tok["start_id"], tok["end_id"], tok["pad_id"]) == (49406, 49407, 0)
    assert is_artifact_dir(clip_artifact)  # so a later export may replace it
    # A vision-only checkpoint exports as before: no text key, no text file.
    assert "text" not in json.loads((t16_artifact / "metadata.json").read_text())
    assert not any((t16_artifact / name).exists() for name in TEXT_FILES)


def test_text_embeddings_match_the_python_api(pe_infer, clip_artifact, clip_encoder, tmp_path):
    texts = [t for t in TEXTS if t] + [f"a photo of {i} dogs" for i in range(66)]  # 2 batches
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(texts[1:]) + "\n\n", encoding="utf-8")
    out = tmp_path / "text.npy"
    done = run_pe_infer(pe_infer, clip_artifact, "--text", texts[0], "--text-file", text_file,
                        out)
    assert done.returncode == 0, done.stderr
    assert "text 4 ('word word" in done.stderr and "truncated as the original does" in done.stderr
    with pytest.warns(UserWarning, match="truncated"):
        expected = clip_encoder.encode_text(texts)
    assert np.load(out).shape == expected.shape == (len(texts), 512)
    assert rel_error(np.load(out), expected) <= TOLERANCE

    done = run_pe_infer(pe_infer, clip_artifact, "--text", texts[0], out, "--normalize")
    assert done.returncode == 0, done.stderr
    assert rel_error(np.load(out), clip_encoder.encode_text(texts[:1], normalize=True)) \
        <= TOLERANCE


def test_classify_matches_zero_shot(pe_infer, clip_artifact, clip_encoder, tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, random_images(2, 32, 32, seed=3))
    labels, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "a {}"]
    (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")
    probs = tmp_path / "probs.npy"
    done = run_pe_infer(pe_infer, "classify", clip_artifact, pixels, "--labels", ",".join(labels),
                        "--templates", tmp_path / "templates.txt", "--output", probs, "--json",
                        "--top-k", 2)
    assert done.returncode == 0, done.stderr
    expected = clip_encoder.zero_shot(np.load(pixels), labels, templates)
    assert rel_error(np.load(probs), expected) <= TOLERANCE
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == [f"{pixels}[0]", f"{pixels}[1]"]
    for line, row in zip(lines, expected, strict=True):
        best = np.argsort(-row, kind="stable")[:2]
        assert line["labels"] == [labels[i] for i in best]
        np.testing.assert_allclose(line["probabilities"], row[best], atol=1e-6)  # 6 decimals

    done = run_pe_infer(pe_infer, "classify", clip_artifact, pixels, "--labels", "cat, dog")
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0] == f"{pixels}[0]" and len(table) == 6  # two images, two labels each
    assert table[1].endswith("%  cat") or table[1].endswith("%  dog")


# ---- what goes wrong is said clearly, with exit code 2 and no output file ----------------------

def artifact_copy(artifact, tmp_path):
    """The small files copied, the large ones linked: free to damage the copies."""
    copy = tmp_path / "artifact"
    copy.mkdir()
    for entry in artifact.iterdir():
        if entry.name.endswith((".so", ".bin")):
            os.symlink(entry, copy / entry.name)
        else:
            shutil.copyfile(entry, copy / entry.name)
    return copy


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda a: (a / "bpe_merges.txt").unlink(), "BPE merges .*bpe_merges.txt does not exist"),
    (lambda a: flip_byte(a / "bpe_merges.txt"), "BPE merges .* is corrupt or was edited"),
    (lambda a: flip_byte(a / "tokenizer_tables.json"), "tokenizer tables .* is corrupt"),
])
def test_a_missing_or_corrupt_vocabulary_is_one_line(pe_infer, clip_artifact, tmp_path, damage,
                                                      message):
    artifact = artifact_copy(clip_artifact, tmp_path)
    damage(artifact)
    out = tmp_path / "t.npy"
    done = run_pe_infer(pe_infer, artifact, "--text", "a dog", out)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pe_infer: error: ")
    assert re.search(message, done.stderr), done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--text", "  "], "give at least one non-empty text"),
    (["--text-file", "missing.txt"], "text file missing.txt does not exist"),
    (["--text", "a", "--features"], "apply to images, not --text"),
    (["classify", "INPUT", "--labels", "a,,b"], "give at least one non-empty label"),
    (["classify", "INPUT"], "classify needs --labels or --labels-file"),
    (["classify", "INPUT", "--labels", "a", "--templates", "TEMPLATES"],
     "each line needs a {} for the label"),
])
def test_bad_text_input_is_one_line(pe_infer, clip_artifact, tmp_path, args, message):
    (tmp_path / "templates.txt").write_text("a photo\n")
    np.save(tmp_path / "in.npy", random_images(1, 32, 32, seed=0))
    out = tmp_path / "t.npy"
    args = [{"INPUT": tmp_path / "in.npy", "TEMPLATES": tmp_path / "templates.txt"}.get(a, a)
            for a in args]
    if args[0] == "classify":
        argv = ["classify", clip_artifact, *args[1:], "--output", out]
    else:
        argv = [clip_artifact, *args, out]
    done = run_pe_infer(pe_infer, *argv)
    assert done.returncode == 2 and not out.exists(), done.stderr
    assert done.stderr.startswith("pe_infer: error: ") and message in done.stderr, done.stderr


def test_text_on_a_vision_only_artifact_is_one_line(pe_infer, t16_artifact, tmp_path):
    out = tmp_path / "t.npy"
    done = run_pe_infer(pe_infer, t16_artifact, "--text", "a dog", out)
    assert done.returncode == 2 and not out.exists()
    assert "has no text tower: it was exported from a vision-only checkpoint" in done.stderr
