// Reading and writing NumPy .npy files of float32 (format versions 1.0, 2.0 and 3.0).
#ifndef PE_INFER_NPY_H_
#define PE_INFER_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace pe {

struct FloatArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
};

// Reads a little-endian float32 array (C or Fortran order; the result is C order). Any other
// dtype, a malformed header or a truncated file is a UserError that names the file.
FloatArray ReadNpyFloat32(const std::string& path);

// The bytes of a version 1.0 .npy file holding `data` as '<f4' with `shape`, C order.
std::vector<uint8_t> EncodeNpyFloat32(const std::vector<int64_t>& shape, const float* data);

// Parses only the header: its dtype description, order and shape, and where the data starts.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};
NpyHeader ParseNpyHeader(const std::vector<uint8_t>& bytes, const std::string& path);

}  // namespace pe

#endif  // PE_INFER_NPY_H_
