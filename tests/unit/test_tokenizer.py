"""The runtime tokenizer gives the official ids: equal to the plain-Python reference on drawn
strings, equal to ids recorded from the official tokenizer, truncated as the original truncates,
and a missing or wrong vocabulary is a clear error."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pe_port import tokenizer
from pe_port.errors import TokenizerError
from reference.tokenizer import ReferenceTokenizer

# Ids of Meta's `core/vision_encoder/tokenizer.py` (`SimpleTokenizer`, context 32), recorded by
# running it once on these texts; trailing zeros left out.
OFFICIAL_IDS = {
    "a photo of a dog": [320, 1125, 539, 320, 1929],
    "A PHOTO OF A CAT.": [320, 1125, 539, 320, 2368, 269],
    "Hello, World! It's 2024 &amp; we're here &#39;ok&#39;":
        [3306, 267, 1002, 256, 585, 568, 273, 271, 273, 275, 261, 649, 982, 763, 262, 2481, 262],
    "": [],
    "   \n\t ": [],
    "日本語のテキスト 😀🎉 naïve café":
        [39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486, 12832, 3986, 1097, 35689,
         563, 15304],
    "don't stop believin'": [847, 713, 1691, 4972, 530, 262],
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt;": [261, 283, 321, 285, 8911, 34308, 321, 285],
    # With a literal "<" ftfy leaves entities alone: only the second html.unescape gives "&".
    "a <b>dog</b> &amp;amp; a cat": [320, 283, 321, 285, 1929, 34308, 321, 285, 261, 320, 2368],
    "1 < 2 &amp;lt;3": [272, 283, 273, 283, 274],
    "ſ'ſ <start_of_text> !<end_of_text>":
        [129, 379, 6, 129, 379, 49406, 0, 283, 806, 318, 539, 318, 4160, 285],
    "The quick brown fox jumps over the lazy dog 1234567890":
        [518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929, 272, 273, 274, 275, 276, 277, 278,
         279, 280, 271],
    "Ã©tÃ© mojibake": [3459, 39694, 617, 3252, 11878],
    "\u212a\u212b": [74, 127, 354],  # Kelvin and Angstrom signs
}
# The official tokenizer's row for "x" * 300 at context 32: cut to 31 ids, the end id last.
OFFICIAL_LONG_ROW = [49406] + [32035] * 30 + [49407]

# ftfy unescapes HTML itself unless the text has a literal "<": "<b>" makes the two
# html.unescape calls matter.
FRAGMENTS = ["&amp;", "&#39;", "&lt;", "&gt;", "&quot;", "&amp;amp;", "&amp;lt;", "&amp;#39;",
             "&nbsp;", "<b>", "</b>", "<", "'s", "'LL", "'ve",
             "'ſ", "<start_of_text>", "<end_of_text>", "!<end_of_text>", "don't", "2024", "3.14",
             "😀", "👍🏽", "👩‍👩‍👧", "🎉", "Ã©", "\u212a", "İ", "ß", "ς", "ﬁ", "e\u0301", "\u0345",
             " ", "  ", "\t", "\n", "\u00a0", "\u2028", "\u3000", "\u1680", "\u200b", "\x1c",
             "\x85", "日本", "한국어", "Привет", "مرحبا", ".", "!!", "...", "-", "_", "/", "#"]
# One text: free unicode, or a mix of the fragments above with words, or a very long run.
TEXTS = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6),
                       st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True)),
             max_size=20).map("".join),
    st.builds(lambda word, n: " ".join([word] * n),
              st.sampled_from(["dog", "x", "&amp;", "😀", "2"]), st.integers(10, 120)),
)


@pytest.fixture(scope="module")
def reference_tokenizer():
    return ReferenceTokenizer(str(tokenizer.find_vocab()))


@pytest.mark.parametrize("context_length", [32, 72])
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_ids_equal_the_reference_for_drawn_texts(reference_tokenizer, texts, context_length):
    got = tokenizer.tokenize(texts, context_length)
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    assert got.tolist() == reference_tokenizer(texts, context_length)


@pytest.mark.parametrize("text", sorted(OFFICIAL_IDS))
def test_ids_equal_the_official_tokenizer(text):
    row = [49406, *OFFICIAL_IDS[text], 49407]
    assert tokenizer.tokenize(text, 32).tolist() == [row + [0] * (32 - len(row))]


def test_reference_ids_equal_the_official_tokenizer(reference_tokenizer):
    texts = sorted(OFFICIAL_IDS)
    rows = [[49406, *OFFICIAL_IDS[t], 49407] for t in texts]
    assert reference_tokenizer(texts, 32) == [r + [0] * (32 - len(r)) for r in rows]


def test_too_long_text_keeps_its_first_ids_and_ends_with_the_end_id(reference_tokenizer):
    texts = ["a photo of a dog", "x" * 300, "a photo of a dog " * 7]
    ids, truncated = tokenizer.tokenize_with_truncation(texts, 32)
    assert ids[1].tolist() == OFFICIAL_LONG_ROW
    assert truncated == [1, 2]
    full = tokenizer.tokenize(texts[2], 72)[0]
    assert ids[2, :31].tolist() == full[:31].tolist() and ids[2, 31] == tokenizer.END_ID
    assert reference_tokenizer(texts, 32) == ids.tolist()


def test_a_text_that_exactly_fills_the_context_is_not_truncated():
    ids, truncated = tokenizer.tokenize_with_truncation(["dog " * 30], 32)  # 30 ids + start, end
    assert truncated == [] and ids[0, -1] == tokenizer.END_ID and ids[0, -2] != tokenizer.END_ID


def test_a_single_string_is_one_row_and_an_empty_list_none():
    assert tokenizer.tokenize("a dog", 32).shape == (1, 32)
    assert tokenizer.tokenize([], 72).shape == (0, 72)


@pytest.fixture
def no_open_clip(monkeypatch):
    """As if open-clip-torch were not installed (the lookup is cached per process)."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    tokenizer.installed_vocab.cache_clear()
    yield
    tokenizer.installed_vocab.cache_clear()


def test_missing_vocabulary_says_how_to_install_it(monkeypatch, no_open_clip):
    monkeypatch.delenv(tokenizer.VOCAB_ENV, raising=False)
    with pytest.raises(TokenizerError) as e:
        tokenizer.tokenize("a dog", 32)
    assert "pip install --no-deps open-clip-torch==3.3.0" in str(e.value)
    assert tokenizer.VOCAB_ENV in str(e.value)


def test_vocabulary_path_from_the_environment_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(tokenizer.VOCAB_ENV, str(tmp_path / "nothing.txt.gz"))
    with pytest.raises(TokenizerError, match="nothing.txt.gz is not a file"):
        tokenizer.tokenize("a dog", 32)


# mtime=0: the gzip header holds the time otherwise, and two xdist workers that collect a
# second apart would see different test ids (an error that fails the whole run).
@pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b"#version: 0.2\na b\n", mtime=0)],
                         ids=["not-gzip", "other-merges"])
def test_a_vocabulary_that_is_not_clips_is_refused(monkeypatch, tmp_path, content):
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(content)
    monkeypatch.setenv(tokenizer.VOCAB_ENV, str(path))
    with pytest.raises(TokenizerError, match="vocab.txt.gz"):
        tokenizer.tokenize("a dog", 32)
