// The PE-Core text tokenizer: the ids of pe_port.tokenizer, from the files `pe-port export`
// writes next to the text tower (bpe_merges.txt and tokenizer_tables.json, generated from the
// libraries the Python tokenizer runs: src/pe_port/tokenizer_export.py).
//
// The pipeline is the original's: ftfy, HTML unescaped twice, white space squeezed, lower case,
// the pre-tokeniser's regex, byte-level BPE, start and end ids, padding, truncation keeping the
// end id. Of ftfy, only its HTML step is reproduced (it unescapes entities until nothing
// changes, unless a line holds a "<"); its other fixes (mojibake, ligatures, width, quotes,
// control characters, NFC) are not. `OutsideScope` says when a text may be one of those.
#ifndef PE_INFER_TOKENIZER_H_
#define PE_INFER_TOKENIZER_H_

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pe {

// What the artifact's metadata says of its tokenizer files (`text.tokenizer`).
struct TokenizerFiles {
  std::string merges_path, tables_path;
  uint32_t merges_crc32 = 0, tables_crc32 = 0;
  int num_merges = 0;
  int context_length = 0;
  int start_id = 0, end_id = 0, pad_id = 0;
};

// The two files with the CRC-32s they have now: for tools that read them without an artifact's
// metadata (pe_tokenize, pe_fuzz_inputs); the counts and ids are left to the caller.
TokenizerFiles FilesAsTheyAre(const std::string& merges_path, const std::string& tables_path);

// Sorted, disjoint [first, last] ranges of code points.
class CodePointSet {
 public:
  void Add(char32_t first, char32_t last) { ranges_.emplace_back(first, last); }
  bool Contains(char32_t c) const;

 private:
  std::vector<std::pair<char32_t, char32_t>> ranges_;
};

// UTF-8 <-> code points. Invalid UTF-8 (overlong forms, surrogates, truncated sequences) is a
// UserError naming `what`.
std::u32string DecodeUtf8(const std::string& text, const std::string& what);
std::string EncodeUtf8(const std::u32string& text);

// The lines of `text` as Python's str.splitlines cuts them (\n, \r, \r\n, \v, \f, \x1c-\x1e,
// \x85, U+2028, U+2029), without their ends.
std::vector<std::u32string> SplitLines(const std::u32string& text);

class Tokenizer {
 public:
  // Reads both files and checks them against the metadata (CRC-32, format, counts); a missing
  // or corrupt file is a UserError naming it.
  explicit Tokenizer(const TokenizerFiles& files);

  // One row of `context_length` ids: start, the text's ids, end, then pad ids. A text too long
  // keeps its first context_length - 1 ids and the end id; `truncated` says so.
  std::vector<int32_t> Row(const std::string& utf8, bool* truncated) const;
  // The text's ids without start and end.
  std::vector<int32_t> Encode(const std::u32string& text) const;

  // The steps, exposed for tests. ftfy's HTML step; html.unescape; the whole cleaning.
  std::u32string FtfyHtml(const std::u32string& text) const;
  std::u32string HtmlUnescape(const std::u32string& text) const;
  std::u32string Clean(const std::u32string& text) const;
  // The pieces of the pre-tokeniser (its `findall`) of a cleaned text.
  std::vector<std::u32string> PreTokenize(const std::u32string& text) const;
  // Whether ftfy may change `text` in a way this tokenizer does not reproduce (then its ids
  // may differ from pe-port's): see src/pe_port/tokenizer_export.py.
  bool OutsideScope(const std::string& utf8) const;
  // Python's str.strip() (what the CLIs do to each text and line).
  std::u32string Strip(const std::u32string& text) const;
  bool IsStrSpace(char32_t c) const { return str_space_.Contains(c); }

  int context_length() const { return files_.context_length; }

 private:
  void ReadMerges();
  void ReadTables();
  std::u32string FtfyUnescapeOnce(const std::u32string& text) const;
  std::u32string LowerCase(const std::u32string& text) const;
  size_t MatchLiteral(const std::u32string& text, size_t at, const std::u32string& literal) const;
  size_t MatchPiece(const std::u32string& text, size_t at) const;
  std::vector<int32_t> Bpe(const std::u32string& piece) const;

  TokenizerFiles files_;
  // The BPE: merge ranks by "left right", token ids by token.
  std::unordered_map<std::string, int> ranks_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::string byte_symbol_[256];  // UTF-8 of the symbol of each byte
  mutable std::unordered_map<std::u32string, std::vector<int32_t>> cache_;
  // The Unicode tables.
  CodePointSet letter_, number_, other_, regex_space_, str_space_;
  CodePointSet sigma_cased_, case_ignorable_;  // str.lower's final sigma
  CodePointSet ftfy_changes_, mojibake_, mojibake_alone_;
  int mojibake_span_ = 0;
  std::unordered_map<char32_t, std::vector<char32_t>> fold_;  // literal char -> its matches
  std::unordered_map<char32_t, std::u32string> lower_;
  std::unordered_map<std::u32string, std::u32string> html5_, ftfy_entities_;
  std::unordered_map<int64_t, std::u32string> html_invalid_charrefs_;
  CodePointSet html_invalid_codepoints_;
};

}  // namespace pe

#endif  // PE_INFER_TOKENIZER_H_
