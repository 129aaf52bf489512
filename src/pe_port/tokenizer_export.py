"""What the C++ tokenizer (`cpp/src/tokenizer.cc`) reads: the BPE merges and Unicode tables.

Both are generated at export time from the very libraries the Python tokenizer runs (`regex`,
`str.lower`, `html`, `ftfy`), so the C++ side matches them by construction and nothing of them
is pasted into the repository:

- `bpe_merges.txt`: the merges of CLIP's vocabulary file (`tokenizer.read_merges`, checksum
  checked), one `left right` pair per line in rank order, UTF-8;
- `tokenizer_tables.json`: code-point sets as `[first, last]` ranges and maps as
  `[code point, [code points]]` pairs (ASCII JSON, integers only):
  - `letter`, `number`, `other`: what `[\\p{L}]`, `[\\p{N}]` and `[^\\s\\p{L}\\p{N}]` of the
    pre-tokeniser match with its IGNORECASE flag (which adds U+0345 to the letters);
  - `fold`: per ASCII character of the pre-tokeniser's literals, the code points it matches
    under IGNORECASE ("s" also matches U+017F, "ſ");
  - `regex_space` (the `\\s` of the whitespace squeeze) and `str_space` (`str.strip`);
  - `lower`: `str.lower` where it changes a code point (some give two: U+0130), and for its
    one rule with context, the final sigma, `sigma_cased` and `case_ignorable`;
  - `html5`, `html_invalid_charrefs`, `html_invalid_codepoints`: what `html.unescape` uses;
    `ftfy_entities`: the entities ftfy's own HTML step decodes (it repeats until nothing
    changes);
  - `ftfy_changes` and `mojibake`: the scope check. ftfy's other fixes (mojibake repair,
    ligatures, character width, quotes, control characters, NFC) are not reproduced in C++;
    pe_infer warns about a text (its ids may differ from pe-port's) that holds a code point
    ftfy changes on its own or that NFC may compose with the one before it (`ftfy_changes`),
    one that ftfy's mojibake heuristic (`ftfy.badness.BADNESS_RE`) flags next to ASCII alone
    (`mojibake_alone`: C1 controls, "Â", "Ã", "Œ", "œ"), or two of the code points that
    heuristic names (`mojibake`) at most `MOJIBAKE_SPAN` apart: every other alternative of
    it needs two of them within that span. ftfy fixes nothing else of a text without those.
"""

from __future__ import annotations

import functools
import html
import html.entities
import json
import sys
import unicodedata
from pathlib import Path

import ftfy
import ftfy.badness
import ftfy.chardata
import regex

from pe_port import tokenizer

TABLES_FORMAT = "pe-port tokenizer tables 1"
MERGES_FILE = "bpe_merges.txt"
TABLES_FILE = "tokenizer_tables.json"
# The classes of tokenizer.PRE_TOKENIZER, matched with its flags.
_CLASSES = {"letter": r"[\p{L}]", "number": r"[\p{N}]", "other": r"[^\s\p{L}\p{N}]"}
_LITERALS = f"{tokenizer.START_OF_TEXT}{tokenizer.END_OF_TEXT}'s't're've'm'll'd"
# The widest distance of two non-ASCII code points in one match of ftfy's heuristic ("ГўВЂВ").
MOJIBAKE_SPAN = 6
# Code points per ftfy.fix_text call while looking for the ones it changes.
_FTFY_CHUNK = 512


@functools.cache
def _all_code_points() -> str:
    """Every code point but the surrogates (UTF-8 text never holds one)."""
    return "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


def ranges(code_points) -> list[list[int]]:
    """Sorted code points as `[first, last]` runs."""
    runs: list[list[int]] = []
    for c in sorted(set(code_points)):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return runs


def _matching(pattern: str, flags: int = 0) -> list[int]:
    return [ord(c) for c in regex.findall(pattern, _all_code_points(), flags)]


def _as_code_points(text: str) -> list[int]:
    return [ord(c) for c in text]


def _ftfy_changes() -> list[int]:
    """Code points that `ftfy.fix_text` changes alone, or that NFC may join to the one before:
    chunks of code points between spaces first, then one by one inside a chunk that changed."""
    assigned = [c for c in _all_code_points() if c.isascii() or unicodedata.category(c) != "Cn"]
    changed = []
    for start in range(0, len(assigned), _FTFY_CHUNK):
        chunk = assigned[start:start + _FTFY_CHUNK]
        if ftfy.fix_text(" ".join(chunk)) != " ".join(chunk):
            changed += [ord(c) for c in chunk if ftfy.fix_text(c) != c]
    composes = [ord(c) for c in assigned if unicodedata.combining(c)]
    for c in assigned:  # the second part of a two-part canonical composite
        parts = unicodedata.decomposition(c).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            composes.append(int(parts[1], 16))
    hangul_vowels_and_finals = [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]
    return changed + composes + hangul_vowels_and_finals


def _final_sigma_context() -> dict[str, list[list[int]]]:
    """What `str.lower` reads around a capital sigma, which it lowers to "ς" at a word's end:
    the code points it skips (`case_ignorable`), and those that count as a letter when met
    first (`sigma_cased`), probed through `str.lower` itself."""
    all_chars = _all_code_points()
    cased = [ord(c) for c in all_chars if (c + "Σ").lower()[-1] == "ς"]
    after_cased = {ord(c) for c in all_chars if ("A" + c + "Σ").lower()[-1] == "ς"}
    return {"sigma_cased": ranges(cased),
            "case_ignorable": ranges(after_cased - set(cased))}


@functools.cache
def _mojibake() -> tuple[list[int], list[int]]:
    """The non-ASCII code points of ftfy's mojibake heuristic (`BADNESS_RE`: its literals and
    the members of its classes), and those of them it flags next to ASCII alone."""
    pattern = regex.sub(r"#[^\n]*", "", ftfy.badness.BADNESS_RE.pattern)  # verbose comments
    found = {ord(c) for c in regex.sub(r"\[[^\]]*\]", "", pattern) if ord(c) > 127}
    for bracket in regex.findall(r"\[[^\]^][^\]]*\]", pattern):
        found.update(ord(c) for c in regex.findall(bracket, _all_code_points()) if ord(c) > 127)
    contexts = ("{}", "{} ", " {} ", "a{} ", "a{}a", ".{} ", "a {} ")
    alone = [c for c in sorted(found)
             if any(ftfy.badness.is_bad(context.format(chr(c))) for context in contexts)]
    return sorted(found), alone


@functools.cache
def tables_json() -> str:
    """The text of tokenizer_tables.json (built once per process: about a second)."""
    all_chars = _all_code_points()
    tables = {
        "format": TABLES_FORMAT,
        "generated_with": {"python": sys.version.split()[0],
                           "unicodedata": unicodedata.unidata_version,
                           "regex": regex.__version__, "ftfy": ftfy.__version__},
        "pre_tokenizer": tokenizer.PRE_TOKENIZER.pattern,
        **{name: ranges(_matching(pattern, regex.IGNORECASE))
           for name, pattern in _CLASSES.items()},
        "fold": [[ord(c), _matching(regex.escape(c), regex.IGNORECASE)]
                 for c in sorted(set(_LITERALS))],
        "regex_space": ranges(_matching(r"\s")),
        "str_space": ranges(ord(c) for c in all_chars if c.isspace()),
        "lower": [[ord(c), _as_code_points(c.lower())] for c in all_chars if c.lower() != c],
        **_final_sigma_context(),
        "html5": [[name, _as_code_points(value)]
                  for name, value in sorted(html.entities.html5.items())],
        "html_invalid_charrefs": [[number, _as_code_points(value)] for number, value
                                  in sorted(html._invalid_charrefs.items())],
        "html_invalid_codepoints": ranges(html._invalid_codepoints),
        "ftfy_entities": [[name, _as_code_points(value)]
                          for name, value in sorted(ftfy.chardata.HTML_ENTITIES.items())],
        "ftfy_changes": ranges(_ftfy_changes()),
        "mojibake": ranges(_mojibake()[0]),
        "mojibake_span": MOJIBAKE_SPAN,
        "mojibake_alone": ranges(_mojibake()[1]),
    }
    return json.dumps(tables, separators=(",", ":")) + "\n"


def merges_text(vocab: Path) -> str:
    """The text of bpe_merges.txt: the merges of `vocab` (its checksum checked), in rank order."""
    return "".join(f"{left} {right}\n" for left, right in tokenizer.read_merges(vocab))


def tokenizer_metadata(context_length: int) -> dict:
    """The `text.tokenizer` object of metadata.json (without the files' checksums)."""
    return {"merges": MERGES_FILE, "num_merges": tokenizer.NUM_MERGES, "tables": TABLES_FILE,
            "vocab_sha256": tokenizer.VOCAB_SHA256, "context_length": context_length,
            "start_id": tokenizer.START_ID, "end_id": tokenizer.END_ID,
            "pad_id": tokenizer.PAD_ID}
