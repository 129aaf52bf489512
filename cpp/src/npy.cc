#include "npy.h"

#include <cctype>
#include <cstring>
#include <limits>

#include "util.h"

namespace pe {
namespace {

// Bytes of a file as a message may show them: printable ASCII as is, anything else as \xNN,
// at most 40 characters. A header's bytes are the file's, not text: raw, they could break the
// terminal (or the UTF-8 a caller decodes the message as).
std::string Printable(const std::string& bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return bytes.size() > 40 ? out + "..." : out;
}

// NumPy's name for a dtype description, for messages: '<f8' -> float64.
std::string DtypeName(const std::string& descr) {
  // An item size of one to three digits (a larger one names no NumPy dtype: shown as written).
  if (descr.size() < 3 || descr.size() > 5) return "'" + Printable(descr) + "'";
  int bytes = 0;
  for (size_t i = 2; i < descr.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(descr[i]))) return "'" + Printable(descr) + "'";
    bytes = bytes * 10 + (descr[i] - '0');
  }
  const std::string bits = std::to_string(bytes * 8);
  const std::string order = descr[0] == '>' ? " (big-endian)" : "";
  switch (descr[1]) {
    case 'f': return "float" + bits + order;
    case 'i': return "int" + bits + order;
    case 'u': return "uint" + bits + order;
    case 'c': return "complex" + std::to_string(bytes * 16) + order;
    case 'b': return "bool";
    default: return "'" + Printable(descr) + "'";
  }
}

// The header is a Python dict literal, which NumPy reads with `ast.literal_eval` and then
// requires to hold exactly 'descr' (a string), 'fortran_order' (a bool) and 'shape' (a tuple
// of ints). The same rules here, so that pe_infer reads a file as `np.load` does or refuses
// it: a repeated key takes the last value, an unknown or missing key is an error, and nothing
// but blanks may follow the closing brace.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  NpyHeader Parse() {
    if (text_.find('\0') != std::string::npos) Bad("a NUL byte in the header");
    Expect('{');
    bool seen[3] = {false, false, false};
    while (!Take('}')) {
      const std::string key = String("a key");
      Expect(':');
      if (key == "descr") {
        SkipBlanks();
        if (pos_ < text_.size() && text_[pos_] == '[') {
          Fail("input ", path_, " has a structured dtype; pixels must be float32 (N, 3, H, W)");
        }
        header_.descr = String("the dtype");
        seen[0] = true;
      } else if (key == "fortran_order") {
        const std::string word = Word();
        if (word != "True" && word != "False") Bad("fortran_order is not True or False");
        header_.fortran_order = word == "True";
        seen[1] = true;
      } else if (key == "shape") {
        header_.shape = Tuple();
        seen[2] = true;
      } else {
        Bad("unknown key '" + Printable(key) + "'");
      }
      if (!Take(',')) {
        Expect('}');
        break;
      }
    }
    SkipBlanks();
    if (pos_ != text_.size()) Bad("text after the header's closing brace");
    if (!(seen[0] && seen[1] && seen[2])) Bad("the header lacks descr, fortran_order or shape");
    return header_;
  }

 private:
  [[noreturn]] void Bad(const std::string& why) const {
    Fail("input ", path_, " is not a valid .npy file (", why, ")");
  }

  // Blanks Python allows between the tokens of a bracketed literal.
  void SkipBlanks() {
    while (pos_ < text_.size() && std::strchr(" \t\n\r\f", text_[pos_]) != nullptr) ++pos_;
  }

  bool Take(char c) {
    SkipBlanks();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void Expect(char c) {
    if (!Take(c)) Bad(std::string("expected '") + c + "'");
  }

  // A quoted string without escapes (NumPy writes none; a backslash is refused, not guessed).
  std::string String(const char* what) {
    SkipBlanks();
    const char quote = pos_ < text_.size() ? text_[pos_] : '\0';
    if (quote != '\'' && quote != '"') Bad(std::string(what) + " is not a string");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) Bad("an unterminated string");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    if (value.find_first_of("\\\n") != std::string::npos) Bad("an escape in a string");
    pos_ = end + 1;
    return value;
  }

  std::string Word() {
    SkipBlanks();
    const size_t start = pos_;
    while (pos_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_')) {
      ++pos_;
    }
    return text_.substr(start, pos_ - start);
  }

  // A decimal int literal as Python writes one: no sign, no leading zeros, within int64.
  int64_t Integer() {
    SkipBlanks();
    if (pos_ < text_.size() && text_[pos_] == '-') Bad("a negative dimension");
    const std::string digits = Word();
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
      Bad("a dimension is not an integer");
    }
    if (digits.size() > 1 && digits[0] == '0') Bad("a dimension with leading zeros");
    int64_t value = 0;
    for (char d : digits) {
      if (value > (std::numeric_limits<int64_t>::max() - (d - '0')) / 10) {
        Bad("a dimension past 2^63");
      }
      value = value * 10 + (d - '0');
    }
    return value;
  }

  // `()`, `(n,)`, `(n, m)` or `(n, m,)`: `(n)` is an int in Python, not a tuple.
  std::vector<int64_t> Tuple() {
    Expect('(');
    std::vector<int64_t> dims;
    bool comma = false;
    while (!Take(')')) {
      if (!dims.empty() && !comma) Bad("the shape lacks a comma");
      dims.push_back(Integer());
      comma = Take(',');
    }
    if (dims.size() == 1 && !comma) Bad("the shape is not a tuple");
    return dims;
  }

  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
  NpyHeader header_;
};

}  // namespace

NpyHeader ParseNpyHeader(const std::vector<uint8_t>& bytes, const std::string& path) {
  static const char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) {
    Fail("input ", path, " is not a .npy file (no NumPy magic)");
  }
  int major = bytes[6];
  size_t header_len, start;
  if (major == 1) {
    header_len = bytes[8] | (static_cast<size_t>(bytes[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) Fail("input ", path, " is a truncated .npy file");
    header_len = bytes[8] | (static_cast<size_t>(bytes[9]) << 8) |
                 (static_cast<size_t>(bytes[10]) << 16) | (static_cast<size_t>(bytes[11]) << 24);
    start = 12;
  } else {
    Fail("input ", path, " has .npy format version ", major, ", which pe_infer cannot read");
  }
  if (bytes.size() < start + header_len) Fail("input ", path, " is a truncated .npy file");
  std::string header(reinterpret_cast<const char*>(bytes.data() + start), header_len);
  NpyHeader out = HeaderParser(header, path).Parse();
  out.data_offset = start + header_len;
  return out;
}

FloatArray ReadNpyFloat32(const std::string& path) {
  RequireRegularFile(path, "input");
  std::vector<uint8_t> bytes = ReadFile(path, "input");
  NpyHeader header = ParseNpyHeader(bytes, path);
  if (header.descr != "<f4") {
    Fail("input ", path, " has dtype ", DtypeName(header.descr),
         "; pre-processed pixels must be float32 (N, 3, H, W)");
  }
  uint64_t count = 1;
  for (int64_t dim : header.shape) {
    if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / 8 / dim) {
      Fail("input ", path, " has an impossible shape ", ShapeString(header.shape));
    }
    count *= static_cast<uint64_t>(dim);
  }
  uint64_t need = header.data_offset + count * 4;
  if (bytes.size() < need) {
    Fail("input ", path, " is truncated: shape ", ShapeString(header.shape), " needs ", need,
         " bytes, the file has ", bytes.size());
  }
  FloatArray array;
  array.shape = header.shape;
  array.data.resize(count);
  const uint8_t* src = bytes.data() + header.data_offset;
  if (!header.fortran_order || header.shape.size() < 2) {
    if (count) std::memcpy(array.data.data(), src, count * 4);  // no null pointer at count 0
    return array;
  }
  // Fortran order: element (i0, i1, ...) sits at i0 + d0 * (i1 + d1 * (...)).
  const size_t rank = header.shape.size();
  std::vector<int64_t> index(rank, 0);
  for (uint64_t c = 0; c < count; ++c) {
    uint64_t f = 0;
    for (size_t k = rank; k-- > 0;) f = f * header.shape[k] + index[k];
    std::memcpy(&array.data[c], src + f * 4, 4);
    for (size_t k = rank; k-- > 0;) {  // next C-order index
      if (++index[k] < header.shape[k]) break;
      index[k] = 0;
    }
  }
  return array;
}

std::vector<uint8_t> EncodeNpyFloat32(const std::vector<int64_t>& shape, const float* data) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " +
                       ShapeString(shape) + ", }";
  // Pad with blanks so that the data starts on a 64-byte boundary, ending in a newline.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  uint64_t count = 1;
  for (int64_t dim : shape) count *= static_cast<uint64_t>(dim);
  std::vector<uint8_t> bytes(10 + header.size() + count * 4);
  const uint8_t preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                static_cast<uint8_t>(header.size() & 0xff),
                                static_cast<uint8_t>(header.size() >> 8)};
  std::memcpy(bytes.data(), preamble, sizeof preamble);
  std::memcpy(bytes.data() + 10, header.data(), header.size());
  if (count) std::memcpy(bytes.data() + 10 + header.size(), data, count * 4);
  return bytes;
}

}  // namespace pe
