#include "tokenizer.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <functional>
#include <queue>

#include "artifact.h"
#include "util.h"

namespace pe {
namespace {

namespace json = tvm::ffi::json;
using tvm::ffi::Any;
using tvm::ffi::TypeIndex;

constexpr char kTablesFormat[] = "pe-port tokenizer tables 1";
// Both files are a few hundred kilobytes; a much larger one is not an export of pe-port.
constexpr size_t kMaxFileBytes = 16 << 20;
constexpr int kMaxTablesDepth = 8;
constexpr char32_t kMaxCodePoint = 0x10FFFF;
constexpr char32_t kCapitalSigma = 0x3A3, kSmallSigma = 0x3C3, kFinalSigma = 0x3C2;
constexpr char kWordEnd[] = "</w>";
// Words BPE-encoded once per run and remembered (a label set repeats its words).
constexpr size_t kMaxCachedWords = 1 << 16;

const std::u32string kStartOfText = U"<start_of_text>", kEndOfText = U"<end_of_text>";
const std::u32string kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};

bool IsSurrogate(char32_t c) { return c >= 0xD800 && c <= 0xDFFF; }
bool IsAsciiDigit(char32_t c) { return c >= '0' && c <= '9'; }
bool IsAsciiHex(char32_t c) {
  return IsAsciiDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool IsAsciiAlnum(char32_t c) {
  return IsAsciiDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Typed reads of tokenizer_tables.json: any surprise is one UserError naming the file.
class Tables {
 public:
  Tables(const std::string& path, const Any& root) : path_(path) {
    if (root.type_index() != TypeIndex::kTVMFFIMap) Bad("the top level", "is not an object");
    root_ = root.cast<json::Object>();
  }

  [[noreturn]] void Bad(const std::string& where, const std::string& what) const {
    Fail("tokenizer tables ", path_, " are invalid: ", where, " ", what,
         " (export the artifact again with `pe-port export`)");
  }

  Any Get(const std::string& key) const {
    auto it = root_.find(tvm::ffi::String(key));
    if (it == root_.end()) Bad(key, "is missing");
    return (*it).second;
  }

  json::Array List(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIArray) Bad(where, "is not a list");
    return value.cast<json::Array>();
  }

  int64_t Int(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIInt) Bad(where, "is not an integer");
    return value.cast<int64_t>();
  }

  std::string Str(const Any& value, const std::string& where) const {
    auto text = value.as<tvm::ffi::String>();
    if (!text) Bad(where, "is not a string");
    return std::string(*text);
  }

  char32_t CodePoint(const Any& value, const std::string& where) const {
    int64_t c = Int(value, where);
    if (c < 0 || c > kMaxCodePoint || IsSurrogate(static_cast<char32_t>(c))) {
      Bad(where, "is not a Unicode scalar value");
    }
    return static_cast<char32_t>(c);
  }

  std::u32string CodePoints(const Any& value, const std::string& where) const {
    std::u32string text;
    for (const Any& c : List(value, where)) text += CodePoint(c, where);
    return text;
  }

  // [[first, last], ...], ascending and disjoint.
  CodePointSet Ranges(const std::string& key) const {
    CodePointSet set;
    int64_t previous_last = -1;
    for (const Any& item : List(Get(key), key)) {
      json::Array range = List(item, key + "[]");
      if (range.size() != 2) Bad(key + "[]", "is not a [first, last] pair");
      char32_t first = CodePoint(range[0], key), last = CodePoint(range[1], key);
      if (first > last || static_cast<int64_t>(first) <= previous_last) {
        Bad(key, "is not ascending and disjoint");
      }
      previous_last = last;
      set.Add(first, last);
    }
    return set;
  }

  // [[key, [code points]], ...] with `read_key` reading the key.
  template <typename Key, typename ReadKey>
  std::unordered_map<Key, std::u32string> Map(const std::string& key, ReadKey read_key) const {
    std::unordered_map<Key, std::u32string> map;
    for (const Any& item : List(Get(key), key)) {
      json::Array pair = List(item, key + "[]");
      if (pair.size() != 2) Bad(key + "[]", "is not a [key, value] pair");
      map[read_key(pair[0])] = CodePoints(pair[1], key + "[]");
    }
    return map;
  }

  std::u32string AsciiName(const Any& value, const std::string& where) const {
    std::string name = Str(value, where);
    std::u32string wide;
    for (unsigned char c : name) {
      if (c > 127) Bad(where, "is not ASCII");
      wide += static_cast<char32_t>(c);
    }
    return wide;
  }

 private:
  std::string path_;
  json::Object root_;
};

std::vector<uint8_t> ReadChecked(const std::string& path, const std::string& what,
                                 uint32_t crc) {
  RequireRegularFile(path, what);
  std::vector<uint8_t> bytes = ReadFile(path, what);
  if (bytes.size() > kMaxFileBytes) {
    Fail(what, " ", path, " is ", bytes.size(), " bytes; pe-port writes under ", kMaxFileBytes);
  }
  if (Crc32(bytes.data(), bytes.size()) != crc) {
    Fail(what, " ", path, " is corrupt or was edited: its CRC-32 does not match the artifact's "
         "metadata (export it again with `pe-port export`)");
  }
  return bytes;
}

// The byte-level alphabet of CLIP's BPE (pe_port.tokenizer.byte_symbols): printable Latin-1
// bytes are their own symbol and come first in the vocabulary; the 68 others follow, mapped to
// 256, 257, ... in byte order.
bool IsOwnSymbol(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
}

std::vector<char32_t> ByteSymbolsInVocabOrder() {
  std::vector<char32_t> own, moved;
  for (int b = 0; b < 256; ++b) {
    if (IsOwnSymbol(b)) own.push_back(static_cast<char32_t>(b));
    else moved.push_back(static_cast<char32_t>(256 + moved.size()));
  }
  own.insert(own.end(), moved.begin(), moved.end());
  return own;
}

}  // namespace

bool CodePointSet::Contains(char32_t c) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), c,
                             [](char32_t value, const auto& range) { return value < range.first; });
  return it != ranges_.begin() && c <= std::prev(it)->second;
}

std::u32string DecodeUtf8(const std::string& text, const std::string& what) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    // Continuation bytes after the lead: 0xC0, 0xC1 and over 0xF4 lead nothing valid.
    int extra = -1;
    if (lead < 0x80) extra = 0;
    else if (lead >= 0xC2 && lead <= 0xDF) extra = 1;
    else if (lead >= 0xE0 && lead <= 0xEF) extra = 2;
    else if (lead >= 0xF0 && lead <= 0xF4) extra = 3;
    if (extra < 0 || (extra > 0 && i + extra >= text.size())) {
      Fail(what, " is not valid UTF-8 (byte ", i, ")");
    }
    char32_t c = extra ? lead & (0x3F >> extra) : lead;
    for (int k = 1; k <= extra; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) Fail(what, " is not valid UTF-8 (byte ", i + k, ")");
      c = (c << 6) | (next & 0x3F);
    }
    const char32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    if (c < smallest[extra] || c > kMaxCodePoint || IsSurrogate(c)) {
      Fail(what, " is not valid UTF-8 (byte ", i, ")");
    }
    out += c;
    i += extra + 1;
  }
  return out;
}

std::string EncodeUtf8(const std::u32string& text) {
  std::string out;
  for (char32_t c : text) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

TokenizerFiles FilesAsTheyAre(const std::string& merges_path, const std::string& tables_path) {
  TokenizerFiles files;
  files.merges_path = merges_path;
  files.tables_path = tables_path;
  const std::vector<uint8_t> merges = ReadFile(merges_path, "BPE merges");
  files.merges_crc32 = Crc32(merges.data(), merges.size());
  const std::vector<uint8_t> tables = ReadFile(tables_path, "tokenizer tables");
  files.tables_crc32 = Crc32(tables.data(), tables.size());
  return files;
}

std::vector<std::u32string> SplitLines(const std::u32string& text) {
  static const std::u32string kBreaks = U"\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029";
  std::vector<std::u32string> lines;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (kBreaks.find(text[i]) == std::u32string::npos) continue;
    lines.push_back(text.substr(start, i - start));
    if (text[i] == U'\r' && i + 1 < text.size() && text[i + 1] == U'\n') ++i;
    start = i + 1;
  }
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

Tokenizer::Tokenizer(const TokenizerFiles& files) : files_(files) {
  ReadMerges();
  ReadTables();
}

void Tokenizer::ReadMerges() {
  const std::string& path = files_.merges_path;
  std::vector<uint8_t> bytes = ReadChecked(path, "BPE merges", files_.merges_crc32);
  const std::u32string text =
      DecodeUtf8(std::string(bytes.begin(), bytes.end()), "BPE merges " + path);
  const std::vector<char32_t> symbols = ByteSymbolsInVocabOrder();
  // Token ids as pe_port.tokenizer numbers them: the symbols, the symbols ending a word, the
  // merges in rank order (a later equal token takes the id, as a Python dict does).
  int32_t id = 0;
  for (char32_t symbol : symbols) vocab_[EncodeUtf8(std::u32string(1, symbol))] = id++;
  for (char32_t symbol : symbols) vocab_[EncodeUtf8(std::u32string(1, symbol)) + kWordEnd] = id++;
  char32_t next_moved = 256;
  for (int b = 0; b < 256; ++b) {
    const char32_t symbol = IsOwnSymbol(b) ? static_cast<char32_t>(b) : next_moved++;
    byte_symbol_[b] = EncodeUtf8(std::u32string(1, symbol));
  }
  int rank = 0;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find(U'\n', line_start);
    if (line_end == std::u32string::npos) Fail("BPE merges ", path, " lacks its last newline");
    const std::u32string line = text.substr(line_start, line_end - line_start);
    const size_t space = line.find(U' ');
    if (space == 0 || space == std::u32string::npos || space + 1 == line.size() ||
        line.find(U' ', space + 1) != std::u32string::npos) {
      Fail("BPE merges ", path, " line ", rank + 1, " is not `left right`");
    }
    const std::string left = EncodeUtf8(line.substr(0, space));
    const std::string right = EncodeUtf8(line.substr(space + 1));
    ranks_[left + " " + right] = rank++;
    vocab_[left + right] = id++;
    line_start = line_end + 1;
  }
  if (rank != files_.num_merges) {
    Fail("BPE merges ", path, " holds ", rank, " merges; the metadata says ", files_.num_merges);
  }
}

void Tokenizer::ReadTables() {
  const std::string& path = files_.tables_path;
  std::vector<uint8_t> bytes = ReadChecked(path, "tokenizer tables", files_.tables_crc32);
  if (JsonDepth(bytes) > kMaxTablesDepth) Fail("tokenizer tables ", path, " nest too deep");
  std::string error;
  Any root = ParseJson(bytes, &error);
  if (!error.empty()) Fail("tokenizer tables ", path, " are not valid JSON: ", error);
  Tables t(path, root);
  if (t.Str(t.Get("format"), "format") != kTablesFormat) {
    t.Bad("format", std::string("is not '") + kTablesFormat + "'");
  }
  letter_ = t.Ranges("letter");
  number_ = t.Ranges("number");
  other_ = t.Ranges("other");
  regex_space_ = t.Ranges("regex_space");
  str_space_ = t.Ranges("str_space");
  sigma_cased_ = t.Ranges("sigma_cased");
  case_ignorable_ = t.Ranges("case_ignorable");
  html_invalid_codepoints_ = t.Ranges("html_invalid_codepoints");
  ftfy_changes_ = t.Ranges("ftfy_changes");
  mojibake_ = t.Ranges("mojibake");
  mojibake_alone_ = t.Ranges("mojibake_alone");
  mojibake_span_ = static_cast<int>(std::min<int64_t>(
      std::max<int64_t>(t.Int(t.Get("mojibake_span"), "mojibake_span"), 0), 64));
  auto code_point = [&](const Any& v) { return t.CodePoint(v, "a key"); };
  for (const auto& [c, matches] : t.Map<char32_t>("fold", code_point)) {
    fold_[c] = std::vector<char32_t>(matches.begin(), matches.end());
  }
  lower_ = t.Map<char32_t>("lower", code_point);
  auto name = [&](const Any& v) { return t.AsciiName(v, "an entity name"); };
  html5_ = t.Map<std::u32string>("html5", name);
  ftfy_entities_ = t.Map<std::u32string>("ftfy_entities", name);
  html_invalid_charrefs_ =
      t.Map<int64_t>("html_invalid_charrefs", [&](const Any& v) { return t.Int(v, "a key"); });
}

// ---- cleaning ----------------------------------------------------------------------------------

std::u32string Tokenizer::FtfyUnescapeOnce(const std::u32string& s) const {
  // ftfy.fixes.unescape_html: `&#?[0-9A-Za-z]{1,24};` replaced by its entity when ftfy knows
  // it, a numeric one by what html.unescape makes of it unless that leaves its ";".
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] == U'&') {
      const size_t start = i + 1 + (i + 1 < s.size() && s[i + 1] == U'#');
      size_t end = start;
      while (end < s.size() && end - start < 25 && IsAsciiAlnum(s[end])) ++end;
      const size_t length = end - start;
      if (length >= 1 && length <= 24 && end < s.size() && s[end] == U';') {
        const std::u32string entity = s.substr(i, end + 1 - i);
        auto known = ftfy_entities_.find(entity);
        if (known != ftfy_entities_.end()) {
          out += known->second;
        } else if (start == i + 2) {
          const std::u32string decoded = HtmlUnescape(entity);
          out += decoded.find(U';') == std::u32string::npos ? decoded : entity;
        } else {
          out += entity;
        }
        i = end + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

std::u32string Tokenizer::FtfyHtml(const std::u32string& text) const {
  // ftfy.fix_text works line by line; from the first line holding a "<" on, HTML is left
  // alone. Within a line it repeats its fixes until nothing changes.
  std::u32string out;
  bool unescape = true;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find(U'\n', pos);
    end = end == std::u32string::npos ? text.size() : end + 1;
    std::u32string segment = text.substr(pos, end - pos);
    if (segment.find(U'<') != std::u32string::npos) unescape = false;
    while (unescape) {
      std::u32string next = FtfyUnescapeOnce(segment);
      if (next == segment) break;
      segment.swap(next);
    }
    out += segment;
    pos = end;
  }
  return out;
}

std::u32string Tokenizer::HtmlUnescape(const std::u32string& s) const {
  // Python's html.unescape: `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`.
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] != U'&' || i + 1 >= s.size()) {
      out += s[i++];
      continue;
    }
    if (s[i + 1] == U'#') {
      const bool hex = i + 3 < s.size() && (s[i + 2] == U'x' || s[i + 2] == U'X') &&
                       IsAsciiHex(s[i + 3]);
      const size_t start = i + (hex ? 3 : 2);
      size_t end = start;
      uint64_t number = 0;
      while (end < s.size() && (hex ? IsAsciiHex(s[end]) : IsAsciiDigit(s[end]))) {
        const char32_t d = s[end++];
        const uint64_t digit = IsAsciiDigit(d) ? d - U'0' : (d | 0x20) - U'a' + 10;
        number = std::min<uint64_t>(number * (hex ? 16 : 10) + digit, uint64_t{1} << 32);
      }
      if (end == start) {  // "&#" without digits: no reference
        out += s[i++];
        continue;
      }
      if (end < s.size() && s[end] == U';') ++end;
      auto invalid = html_invalid_charrefs_.find(static_cast<int64_t>(number));
      if (invalid != html_invalid_charrefs_.end()) {
        out += invalid->second;
      } else if (number > kMaxCodePoint || IsSurrogate(static_cast<char32_t>(number))) {
        out += U'\uFFFD';
      } else if (!html_invalid_codepoints_.Contains(static_cast<char32_t>(number))) {
        out += static_cast<char32_t>(number);
      }
      i = end;
      continue;
    }
    static const std::u32string kStops = U"\t\n\f <&#;";
    size_t end = i + 1;
    while (end < s.size() && end - (i + 1) < 32 && kStops.find(s[end]) == std::u32string::npos) {
      ++end;
    }
    if (end == i + 1) {
      out += s[i++];
      continue;
    }
    if (end < s.size() && s[end] == U';') ++end;
    const std::u32string name = s.substr(i + 1, end - (i + 1));
    auto known = html5_.find(name);
    if (known != html5_.end()) {
      out += known->second;
    } else {
      // The longest known prefix of at least two characters ("&ampx" is "&x").
      size_t x = name.size() - 1;
      for (; x >= 2; --x) {
        known = html5_.find(name.substr(0, x));
        if (known != html5_.end()) break;
      }
      out += x >= 2 ? known->second + name.substr(x) : U"&" + name;
    }
    i = end;
  }
  return out;
}

std::u32string Tokenizer::Strip(const std::u32string& text) const {
  size_t first = 0, last = text.size();
  while (first < last && str_space_.Contains(text[first])) ++first;
  while (last > first && str_space_.Contains(text[last - 1])) --last;
  return text.substr(first, last - first);
}

std::u32string Tokenizer::LowerCase(const std::u32string& text) const {
  std::u32string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == kCapitalSigma) {
      // str.lower's one rule with context: final sigma after a cased letter, none following.
      size_t j = i;
      while (j > 0 && case_ignorable_.Contains(text[j - 1])) --j;
      bool final = j > 0 && sigma_cased_.Contains(text[j - 1]);
      size_t k = i + 1;
      while (k < text.size() && case_ignorable_.Contains(text[k])) ++k;
      final = final && (k == text.size() || !sigma_cased_.Contains(text[k]));
      out += final ? kFinalSigma : kSmallSigma;
      continue;
    }
    auto lower = lower_.find(c);
    if (lower != lower_.end()) {
      out += lower->second;
    } else {
      out += c;
    }
  }
  return out;
}

std::u32string Tokenizer::Clean(const std::u32string& text) const {
  // pe_port.tokenizer.clean: ftfy, html.unescape twice, strip, squeeze `\s+`, strip, lower.
  const std::u32string unescaped = Strip(HtmlUnescape(HtmlUnescape(FtfyHtml(text))));
  std::u32string squeezed;
  bool in_space = false;
  for (char32_t c : unescaped) {
    if (regex_space_.Contains(c)) {
      if (!in_space) squeezed += U' ';
      in_space = true;
    } else {
      squeezed += c;
      in_space = false;
    }
  }
  return LowerCase(Strip(squeezed));
}

bool Tokenizer::OutsideScope(const std::string& utf8) const {
  const std::u32string text = FtfyHtml(DecodeUtf8(utf8, "the text"));
  int64_t last_mojibake = -1;
  for (size_t i = 0; i < text.size(); ++i) {
    if (ftfy_changes_.Contains(text[i]) || mojibake_alone_.Contains(text[i])) return true;
    if (mojibake_.Contains(text[i])) {
      if (last_mojibake >= 0 && static_cast<int64_t>(i) - last_mojibake <= mojibake_span_) {
        return true;
      }
      last_mojibake = static_cast<int64_t>(i);
    }
  }
  return false;
}

// ---- pre-tokeniser and BPE ---------------------------------------------------------------------

size_t Tokenizer::MatchLiteral(const std::u32string& text, size_t at,
                               const std::u32string& literal) const {
  // The pattern's IGNORECASE: each literal character matches what `fold` lists for it.
  if (at + literal.size() > text.size()) return 0;
  for (size_t k = 0; k < literal.size(); ++k) {
    const char32_t c = text[at + k];
    auto fold = fold_.find(literal[k]);
    const bool same = fold == fold_.end()
                          ? c == literal[k]
                          : std::find(fold->second.begin(), fold->second.end(), c) !=
                                fold->second.end();
    if (!same) return 0;
  }
  return literal.size();
}

size_t Tokenizer::MatchPiece(const std::u32string& text, size_t at) const {
  // The alternatives of pe_port.tokenizer.PRE_TOKENIZER, tried in order as the regex does.
  for (const std::u32string& special : {kStartOfText, kEndOfText}) {
    if (size_t n = MatchLiteral(text, at, special)) return n;
  }
  for (const std::u32string& contraction : kContractions) {
    if (size_t n = MatchLiteral(text, at, contraction)) return n;
  }
  size_t end = at;
  while (end < text.size() && letter_.Contains(text[end])) ++end;
  if (end > at) return end - at;
  if (number_.Contains(text[at])) return 1;
  while (end < text.size() && other_.Contains(text[end])) ++end;
  return end - at;
}

std::vector<std::u32string> Tokenizer::PreTokenize(const std::u32string& text) const {
  std::vector<std::u32string> pieces;
  for (size_t at = 0; at < text.size();) {
    const size_t n = MatchPiece(text, at);
    if (n == 0) {
      ++at;  // white space: no alternative matches it
      continue;
    }
    pieces.push_back(text.substr(at, n));
    at += n;
  }
  return pieces;
}

std::vector<int32_t> Tokenizer::Bpe(const std::u32string& piece) const {
  auto cached = cache_.find(piece);
  if (cached != cache_.end()) return cached->second;
  // The original's BPE: the word's byte symbols, the last ending the word; merge the pair of
  // lowest rank everywhere, left to right, until no pair has a rank. Done with a heap of
  // (rank, position) so a long word costs n log n, not the n^2 of those rounds: as the merges
  // were learned in order, a pair a merge creates ranks after it, so popping the lowest rank,
  // leftmost first, merges exactly what the original's rounds merge.
  struct Symbol {
    std::string text;
    int prev, next;
  };
  std::vector<Symbol> word;
  for (unsigned char byte : EncodeUtf8(piece)) {
    const int at = static_cast<int>(word.size());
    word.push_back({byte_symbol_[byte], at - 1, at + 1});
  }
  word.back().text += kWordEnd;
  word.back().next = -1;
  using Candidate = std::pair<int, int>;  // (rank, position of the pair's left symbol)
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int left) {
    if (left < 0 || word[left].next < 0) return;
    auto rank = ranks_.find(word[left].text + " " + word[word[left].next].text);
    if (rank != ranks_.end()) heap.emplace(rank->second, left);
  };
  for (int i = 0; i + 1 < static_cast<int>(word.size()); ++i) consider(i);
  while (!heap.empty()) {
    const auto [rank, left] = heap.top();
    heap.pop();
    const int right = word[left].next;
    if (word[left].text.empty() || right < 0) continue;  // merged away since
    auto current = ranks_.find(word[left].text + " " + word[right].text);
    if (current == ranks_.end() || current->second != rank) continue;  // another pair now
    word[left].text += word[right].text;
    word[right].text.clear();
    word[left].next = word[right].next;
    if (word[left].next >= 0) word[word[left].next].prev = left;
    consider(word[left].prev);
    consider(left);
  }
  std::vector<int32_t> ids;
  for (int i = 0; i >= 0; i = word[i].next) {
    auto id = vocab_.find(word[i].text);
    if (id == vocab_.end()) {
      Fail("BPE merges ", files_.merges_path, " give a token without an id; the file is not "
           "CLIP's (export the artifact again)");
    }
    ids.push_back(id->second);
  }
  if (cache_.size() < kMaxCachedWords) cache_.emplace(piece, ids);
  return ids;
}

std::vector<int32_t> Tokenizer::Encode(const std::u32string& text) const {
  std::vector<int32_t> ids;
  for (const std::u32string& piece : PreTokenize(Clean(text))) {
    if (piece == kStartOfText) {
      ids.push_back(files_.start_id);
    } else if (piece == kEndOfText) {
      ids.push_back(files_.end_id);
    } else {
      const std::vector<int32_t> word = Bpe(piece);
      ids.insert(ids.end(), word.begin(), word.end());
    }
  }
  return ids;
}

std::vector<int32_t> Tokenizer::Row(const std::string& utf8, bool* truncated) const {
  const std::vector<int32_t> ids = Encode(DecodeUtf8(utf8, "the text"));
  const size_t context = static_cast<size_t>(files_.context_length);
  std::vector<int32_t> row(context, files_.pad_id);
  row[0] = files_.start_id;
  const size_t kept = std::min(ids.size(), context - 2);
  std::copy(ids.begin(), ids.begin() + kept, row.begin() + 1);
  row[kept + 1] = files_.end_id;
  *truncated = ids.size() > context - 2;
  return row;
}

}  // namespace pe
