// Errors, file helpers and number formats shared by pe_infer, pe_preprocess and the unit tests.
#ifndef PE_INFER_UTIL_H_
#define PE_INFER_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pe {

// A problem with what the user gave (a path, an artifact, an input): one line, exit code 2.
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& message) : std::runtime_error(message) {}
};

// Builds a message from anything streamable: Fail("size ", n, " is odd").
template <typename... Parts>
std::string Cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename... Parts>
[[noreturn]] void Fail(const Parts&... parts) {
  throw UserError(Cat(parts...));
}

// "(2, 3, 64, 64)", as NumPy prints a shape.
std::string ShapeString(const std::vector<int64_t>& shape);

bool EndsWith(const std::string& text, const std::string& suffix);
bool IsDirectory(const std::string& path);
bool IsRegularFile(const std::string& path);
// A UserError unless `path` is a regular file, saying which it is: "WHAT PATH does not exist",
// "cannot open WHAT PATH: Permission denied", or "... is not a regular file" (a FIFO would
// block the reader, a folder cannot be read).
void RequireRegularFile(const std::string& path, const std::string& what);
std::string ParentDirectory(const std::string& path);  // "." for a bare file name
std::string BaseName(const std::string& path);

// The CPUs this process may run on.
int LogicalCpus();
// Physical cores among them (SMT siblings counted once).
int PhysicalCores();

// A whole file in memory; a missing or unreadable file is a UserError naming `what`.
std::vector<uint8_t> ReadFile(const std::string& path, const std::string& what);

// Checks that `path` can be created: ends in `suffix`, is not a folder, its folder exists and is
// writable. Done before any work so that a bad output fails fast.
void CheckOutputPath(const std::string& path, const std::string& suffix);

// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
// reader never sees half a file and a failure leaves nothing behind.
void WriteFileAtomically(const std::string& path, const std::vector<uint8_t>& bytes);

// A read-only view of a file mapped into memory.
class MappedFile {
 public:
  MappedFile(const std::string& path, const std::string& what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// IEEE conversions with round-to-nearest-even, as NumPy's and ml_dtypes' astype do.
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);
uint16_t FloatToBfloat16(float value);
float Bfloat16ToFloat(uint16_t bits);

}  // namespace pe

#endif  // PE_INFER_UTIL_H_
