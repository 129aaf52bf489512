#include "npy.h"

#include <cctype>
#include <cstring>
#include <limits>

#include "util.h"

namespace pe {
namespace {

// NumPy's name for a dtype description, for messages: '<f8' -> float64.
std::string DtypeName(const std::string& descr) {
  if (descr.size() < 3) return descr;
  char kind = descr[1];
  std::string bits;
  try {
    bits = std::to_string(std::stoi(descr.substr(2)) * 8);
  } catch (...) {
    return descr;
  }
  std::string order = descr[0] == '>' ? " (big-endian)" : "";
  switch (kind) {
    case 'f': return "float" + bits + order;
    case 'i': return "int" + bits + order;
    case 'u': return "uint" + bits + order;
    case 'c': return "complex" + std::to_string(std::stoi(bits) * 2) + order;
    case 'b': return "bool";
    default: return descr;
  }
}

// The text after `'key':` in a header dict, with leading blanks skipped.
size_t ValueStart(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) Fail("input ", path, " is not a valid .npy file (no '", key, "')");
  at = header.find(':', at);
  if (at == std::string::npos) Fail("input ", path, " is not a valid .npy file");
  ++at;
  while (at < header.size() && std::isspace(static_cast<unsigned char>(header[at]))) ++at;
  return at;
}

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
  NpyHeader out;
  out.data_offset = start + header_len;

  size_t at = ValueStart(header, "descr", path);
  if (at >= header.size() || (header[at] != '\'' && header[at] != '"')) {
    Fail("input ", path, " has a structured dtype; pixels must be float32 (N, 3, H, W)");
  }
  size_t end = header.find(header[at], at + 1);
  if (end == std::string::npos) Fail("input ", path, " is not a valid .npy file");
  out.descr = header.substr(at + 1, end - at - 1);

  at = ValueStart(header, "fortran_order", path);
  if (header.compare(at, 4, "True") == 0) {
    out.fortran_order = true;
  } else if (header.compare(at, 5, "False") != 0) {
    Fail("input ", path, " is not a valid .npy file (bad fortran_order)");
  }

  at = ValueStart(header, "shape", path);
  end = header.find(')', at);
  if (at >= header.size() || header[at] != '(' || end == std::string::npos) {
    Fail("input ", path, " is not a valid .npy file (bad shape)");
  }
  std::string dims = header.substr(at + 1, end - at - 1);
  size_t pos = 0;
  while (pos < dims.size()) {
    while (pos < dims.size() && (std::isspace(static_cast<unsigned char>(dims[pos])) ||
                                 dims[pos] == ',')) {
      ++pos;
    }
    if (pos >= dims.size()) break;
    size_t used = 0;
    long long dim;
    try {
      dim = std::stoll(dims.substr(pos), &used);
    } catch (...) {
      Fail("input ", path, " is not a valid .npy file (bad shape)");
    }
    if (dim < 0) Fail("input ", path, " is not a valid .npy file (negative dimension)");
    out.shape.push_back(dim);
    pos += used;
  }
  return out;
}

FloatArray ReadNpyFloat32(const std::string& path) {
  if (!IsRegularFile(path)) Fail("input ", path, " does not exist");
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
    std::memcpy(array.data.data(), src, count * 4);
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
