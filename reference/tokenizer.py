"""OpenAI CLIP's byte-level BPE tokenizer in plain Python: the oracle of the tokenizer tests.

Written here to match the ids of Meta's `core/vision_encoder/tokenizer.py` ("lower" cleaning, no
reduction); it shares nothing with `pe_port.tokenizer` but the vocabulary file, so a slip in
either shows up as different ids.
"""

from __future__ import annotations

import functools
import gzip
import html

import ftfy
import regex

START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
WORD_END = "</w>"
# Lines 1..48894 of the file are merges (line 0 is a header): 49408 tokens in all.
MERGE_LINES = slice(1, 48895)


def byte_alphabet() -> dict[int, str]:
    """Byte value -> the printable character standing for it, in the vocabulary's order.

    Bytes that are printable Latin-1 characters stand for themselves and come first, in byte
    order; the other 68 follow, in byte order, as the code points from 256 on.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def normalise(text: str) -> str:
    """Fix mojibake, unescape HTML twice, squeeze whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ReferenceTokenizer:
    """Token ids of the official tokenizer, from the merges in `vocab_path` (the .txt.gz)."""

    def __init__(self, vocab_path: str) -> None:
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[MERGE_LINES]
        merges = [tuple(line.split()) for line in lines]
        alphabet = list(byte_alphabet().values())
        # The order of the vocabulary is the order of the ids.
        tokens = alphabet + [c + WORD_END for c in alphabet] + [a + b for a, b in merges]
        tokens += [START_OF_TEXT, END_OF_TEXT]
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.rank = {pair: i for i, pair in enumerate(merges)}
        self.byte_char = byte_alphabet()
        self.start_id = self.ids[START_OF_TEXT]
        self.end_id = self.ids[END_OF_TEXT]
        self.pieces = regex.compile(
            rf"{START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|"
            r"[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one tokenizer per test module)
    def merge(self, word: str) -> tuple[str, ...]:
        """BPE of one pre-token (already in the byte alphabet): repeatedly join the best pair."""
        symbols = list(word[:-1]) + [word[-1] + WORD_END]
        while len(symbols) > 1:
            ranked = [(self.rank.get(pair, len(self.rank)), pair)
                      for pair in zip(symbols, symbols[1:], strict=False)]
            best_rank, best = min(ranked)
            if best_rank == len(self.rank):
                break
            joined = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    joined.append(best[0] + best[1])
                    i += 2
                else:
                    joined.append(symbols[i])
                    i += 1
            symbols = joined
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without start and end ids."""
        out = []
        for piece in self.pieces.findall(normalise(text)):
            if piece in (START_OF_TEXT, END_OF_TEXT):
                out.append(self.ids[piece])
                continue
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[s] for s in self.merge(word))
        return out

    def __call__(self, texts: list[str], context_length: int) -> list[list[int]]:
        """Rows of `context_length` ids: start, text, end, zeros; too long keeps end last."""
        rows = []
        for text in texts:
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                ids = ids[: context_length - 1] + [self.end_id]
            rows.append(ids + [0] * (context_length - len(ids)))
        return rows
