#include "util.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>

namespace pe {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

void RequireRegularFile(const std::string& path, const std::string& what) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) Fail(what, " ", path, " does not exist");
    Fail("cannot open ", what, " ", path, ": ", std::strerror(errno));
  }
  if (!S_ISREG(info.st_mode)) Fail(what, " ", path, " is not a regular file");
}

std::string ParentDirectory(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

int LogicalCpus() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return 1;
  return std::max(1, CPU_COUNT(&allowed));
}

int PhysicalCores() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return 1;
  std::set<std::string> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    std::ifstream siblings(Cat("/sys/devices/system/cpu/cpu", cpu,
                               "/topology/thread_siblings_list"));
    std::string line;
    // Without sysfs, count the CPU itself.
    cores.insert(siblings && std::getline(siblings, line) ? line : Cat("cpu", cpu));
  }
  return cores.empty() ? 1 : static_cast<int>(cores.size());
}

std::vector<uint8_t> ReadFile(const std::string& path, const std::string& what) {
  if (IsDirectory(path)) Fail(what, " ", path, " is a folder, not a file");
  FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) Fail("cannot open ", what, " ", path, ": ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, file)) > 0) {
    bytes.insert(bytes.end(), chunk, chunk + got);
  }
  bool failed = std::ferror(file);
  std::fclose(file);
  if (failed) Fail("cannot read ", what, " ", path);
  return bytes;
}

void CheckOutputPath(const std::string& path, const std::string& suffix) {
  if (!EndsWith(path, suffix) || BaseName(path) == suffix) {
    Fail("output ", path, " must be a file name ending with ", suffix);
  }
  if (IsDirectory(path)) Fail("output ", path, " is a folder");
  std::string folder = ParentDirectory(path);
  if (!IsDirectory(folder)) {
    struct stat parent;
    Fail("output folder ", folder,
         stat(folder.c_str(), &parent) == 0 ? " is not a folder" : " does not exist");
  }
  if (access(folder.c_str(), W_OK) != 0) Fail("output folder ", folder, " is not writable");
  struct stat info;
  if (stat(path.c_str(), &info) == 0 && access(path.c_str(), W_OK) != 0) {
    // The rename would replace it anyway, but a read-only file is a sign of a mistake.
    Fail("output ", path, " exists and is not writable");
  }
}

void WriteFileAtomically(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::string staged = ParentDirectory(path) + "/." + BaseName(path) + ".XXXXXX";
  std::vector<char> name(staged.begin(), staged.end());
  name.push_back('\0');
  int fd = mkstemp(name.data());
  if (fd < 0) Fail("cannot write output ", path, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t wrote = write(fd, bytes.data() + done, bytes.size() - done);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      int err = errno;
      close(fd);
      unlink(name.data());
      Fail("cannot write output ", path, ": ", std::strerror(err));
    }
    done += static_cast<size_t>(wrote);
  }
  // mkstemp makes the file 0600; give it the permissions an ordinary new file gets.
  mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  if (close(fd) != 0 || std::rename(name.data(), path.c_str()) != 0) {
    int err = errno;
    unlink(name.data());
    Fail("cannot write output ", path, ": ", std::strerror(err));
  }
}

MappedFile::MappedFile(const std::string& path, const std::string& what) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail("cannot open ", what, " ", path, ": ", std::strerror(errno));
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    close(fd);
    Fail(what, " ", path, " is not a regular file");
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {
    void* mapped = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      int err = errno;
      close(fd);
      Fail("cannot map ", what, " ", path, ": ", std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(mapped);
  }
  close(fd);
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {
uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
float BitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
// Drops the low `shift` bits of `value`, rounding to nearest, ties to even.
uint32_t RoundShift(uint32_t value, int shift) {
  uint32_t kept = value >> shift;
  uint32_t rest = value & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1))) ? 1 : 0);
}
}  // namespace

uint16_t FloatToHalf(float value) {
  uint32_t bits = FloatBits(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  int exponent = static_cast<int>((bits >> 23) & 0xff);
  uint32_t mantissa = bits & 0x7fffff;
  if (exponent == 0xff) {  // inf stays inf, NaN stays a (quiet) NaN
    return static_cast<uint16_t>(sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >> 13) : 0));
  }
  int half_exponent = exponent - 127 + 15;
  if (half_exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00);
  if (half_exponent >= 1) {
    // A carry out of the mantissa correctly bumps the exponent (up to inf).
    uint32_t rounded = RoundShift((static_cast<uint32_t>(half_exponent) << 23) | mantissa, 13);
    return static_cast<uint16_t>(sign | rounded);
  }
  // Subnormal half (or zero): the significand with its implicit bit, in units of 2^-24.
  int shift = 14 - half_exponent;
  if (exponent == 0 || shift > 25) return sign;  // below half the smallest subnormal
  return static_cast<uint16_t>(sign | RoundShift(mantissa | 0x800000, shift));
}

float HalfToFloat(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t exponent = (bits >> 10) & 0x1f;
  uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0x1f) return BitsFloat(sign | 0x7f800000 | (mantissa << 13));
  if (exponent == 0) {
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  return BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToBfloat16(float value) {
  uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>(RoundShift(bits, 16));
}

float Bfloat16ToFloat(uint16_t bits) { return BitsFloat(static_cast<uint32_t>(bits) << 16); }

}  // namespace pe
