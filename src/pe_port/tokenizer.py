"""The PE-Core text tokenizer: OpenAI CLIP's byte-level BPE, with the ids of the official one.

Cleaning (`ftfy`, HTML unescaping, whitespace, lower case) and the pre-tokeniser regex run in
Python with the libraries the original uses; the byte-to-symbol mapping and the BPE merges run in
Hugging Face `tokenizers`, built once per process from the merges of the vocabulary file. The
whole pipeline in `tokenizers` (a Split pre-tokenizer) gives other ids: its regex engine
(Oniguruma) puts about 1,500 code points in other Unicode classes than the `regex` module does
(U+0345, recent letters), and the original counts its special tokens only where its
left-to-right scan meets them ("!<end_of_text>" is "!<", "end", ...), while tokenizers' added
tokens are cut out before the pre-tokenizer, wherever they are.

The vocabulary, `bpe_simple_vocab_16e6.txt.gz`, is not shipped with pe-port: it comes from
`$PE_PORT_BPE_VOCAB`, else the installed `open-clip-torch` wheel (read as a file; `open_clip` is
never imported).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import importlib.util
import os
from pathlib import Path

import ftfy
import numpy as np
import regex
import tokenizers

from pe_port.errors import InputError, TokenizerError

VOCAB_ENV = "PE_PORT_BPE_VOCAB"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
INSTALL_VOCAB = "pip install --no-deps open-clip-torch==3.3.0"
# SHA-256 of the decompressed file: another vocabulary would give other ids without any error.
VOCAB_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"
NUM_MERGES = 48894  # lines 1..48894 of the file; line 0 is a header
START_OF_TEXT, END_OF_TEXT = "<start_of_text>", "<end_of_text>"
START_ID, END_ID, PAD_ID = 49406, 49407, 0
WORD_END = "</w>"

# The original's pre-tokeniser: special tokens, English contractions, letter runs, single
# digits, runs of anything else but whitespace.
PRE_TOKENIZER = regex.compile(
    rf"{START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]"
    r"|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_SPECIAL_IDS = {START_OF_TEXT: START_ID, END_OF_TEXT: END_ID}


def clean(text: str) -> str:
    """The original's "lower" cleaning: ftfy, HTML unescaped twice, whitespace squeezed, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def byte_symbols() -> list[str]:
    """The 256 one-character symbols of the byte-level vocabulary, in vocabulary (id) order.

    Printable Latin-1 bytes are their own symbol and come first; the 68 other bytes (controls,
    space, NBSP, soft hyphen) follow in byte order, mapped to the code points from 256 on.
    """
    own = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
           *range(ord("®"), ord("ÿ") + 1)]
    moved = sorted(set(range(256)) - set(own))
    return [chr(b) for b in own] + [chr(256 + i) for i in range(len(moved))]


def find_vocab() -> Path:
    """The vocabulary file: `$PE_PORT_BPE_VOCAB`, else the one in the open-clip-torch wheel."""
    configured = os.environ.get(VOCAB_ENV)
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise TokenizerError(f"{VOCAB_ENV}={configured} is not a file; point it at "
                                 f"{VOCAB_FILE}, or unset it to use the one of open-clip-torch")
        return path
    path = installed_vocab()
    if path is not None:
        return path
    raise TokenizerError(
        f"the text tokenizer needs CLIP's BPE vocabulary {VOCAB_FILE}, which the open-clip-torch "
        f"wheel ships: install it with `{INSTALL_VOCAB}` (pe-port reads the file and never "
        f"imports open_clip), or set {VOCAB_ENV} to the path of the file"
    )


@functools.cache
def installed_vocab() -> Path | None:
    """The vocabulary file of the installed open-clip-torch wheel, found once per process."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    return None


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The BPE merges of the vocabulary file, in rank order, after checking its checksum."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise TokenizerError(f"cannot read the BPE vocabulary {path}: {e}") from None
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise TokenizerError(f"{path} is not CLIP's {VOCAB_FILE} (its SHA-256 differs); "
                             f"install the right one with `{INSTALL_VOCAB}`")
    lines = data.decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]


@functools.cache
def _bpe(path: Path) -> tokenizers.Tokenizer:
    """A tokenizers BPE over pre-split words: bytes to symbols, then merges by rank."""
    merges = read_merges(path)
    symbols = byte_symbols()
    tokens = symbols + [s + WORD_END for s in symbols] + [a + b for a, b in merges]
    model = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                  end_of_word_suffix=WORD_END)
    bpe = tokenizers.Tokenizer(model)
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                            use_regex=False)
    return bpe


def encode(texts: list[str]) -> list[list[int]]:
    """The ids of each text, without the start and end ids."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {i} is a {type(text).__name__}, not a str")
    bpe = _bpe(find_vocab())
    pieces = [PRE_TOKENIZER.findall(clean(text)) for text in texts]
    words = [[p for p in row if p not in _SPECIAL_IDS] for row in pieces]
    try:
        # One text is encoded alone: encode_batch wakes tokenizers' thread pool.
        encodings = (bpe.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
                     if len(words) > 1
                     else [bpe.encode(w, is_pretokenized=True, add_special_tokens=False)
                           for w in words])
    except TypeError as e:  # a lone surrogate has no UTF-8 bytes
        raise InputError(f"a text is not valid Unicode: {e}") from None
    out = []
    for row, row_words, encoding in zip(pieces, words, encodings, strict=True):
        ids_of_word = [[] for _ in row_words]
        for token_id, word in zip(encoding.ids, encoding.word_ids, strict=True):
            ids_of_word[word].append(token_id)
        next_word = iter(ids_of_word)
        ids = []
        for piece in row:
            ids.extend([_SPECIAL_IDS[piece]] if piece in _SPECIAL_IDS else next(next_word))
        out.append(ids)
    return out


def tokenize_with_truncation(
    texts: str | list[str], context_length: int
) -> tuple[np.ndarray, list[int]]:
    """`tokenize`, and the indices of the texts that were cut to fit the context."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(context_length, int) or context_length < 1:
        raise InputError(f"context_length must be a positive integer, got {context_length!r}")
    ids = np.full((len(texts), context_length), PAD_ID, dtype=np.int64)
    truncated = []
    for i, tokens in enumerate(encode(list(texts))):
        row = [START_ID, *tokens, END_ID]
        if len(row) > context_length:
            row = row[: context_length - 1] + [END_ID]
            truncated.append(i)
        ids[i, : len(row)] = row
    return ids, truncated


def tokenize(texts: str | list[str], context_length: int) -> np.ndarray:
    """int64 ids `(n, context_length)` as the official tokenizer gives them.

    Each row: the start id, the text's ids, the end id, then zeros; a text too long for the
    context keeps its first `context_length - 1` ids and the end id (as the original does).
    """
    return tokenize_with_truncation(texts, context_length)[0]
